"""The one tiler: tile positions for training and sliding-window stitching for inference.

Hand-written rather than MONAI's ``sliding_window_inference`` because the training tile
index must share its grid, and multi-scale prediction accumulates straight into a
source-resolution map instead of materialising every rescaled photo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

TilePredictor = Callable[[torch.Tensor], torch.Tensor]


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` every ``stride`` covering ``[0, length)``.

    The last tile is aligned to the end, so every pixel is covered and no tile leaves the
    photo; a photo shorter than a tile gets a single tile at 0 (to be padded).
    """
    if tile <= 0 or stride <= 0 or stride > tile:
        raise ValueError(f"need 0 < stride <= tile, got tile={tile}, stride={stride}")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def tile_grid(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """Top-left ``(y, x)`` of every tile of the grid, row by row."""
    return [(y, x) for y in tile_starts(height, tile, stride) for x in tile_starts(width, tile, stride)]


def stride_for(tile: int, overlap: float) -> int:
    """Stride for a fractional ``overlap`` in [0, 1) between neighbouring tiles."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return max(1, int(round(tile * (1 - overlap))))


def blend_weights(tile: int, mode: str = "gaussian", sigma_scale: float = 0.125) -> torch.Tensor:
    """Per-pixel weights ``(tile, tile)`` for stitching overlaps: ``gaussian`` or ``constant``."""
    if mode == "constant":
        return torch.ones(tile, tile)
    if mode != "gaussian":
        raise ValueError(f"blend must be 'gaussian' or 'constant', got {mode!r}")
    coords = torch.arange(tile, dtype=torch.float64) - (tile - 1) / 2
    g = torch.exp(-0.5 * (coords / (sigma_scale * tile)) ** 2)
    w = torch.outer(g, g)
    w = w / w.max()
    return w.clamp_min(1e-3).float()  # photo borders are covered by one tile: keep them weighted


def _pad_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    pad_h, pad_w = height - image.shape[-2], width - image.shape[-1]
    if pad_h <= 0 and pad_w <= 0:
        return image
    pad = (0, max(pad_w, 0), 0, max(pad_h, 0))
    mode = "reflect" if pad_h < image.shape[-2] and pad_w < image.shape[-1] else "replicate"
    return F.pad(image.float()[None], pad, mode=mode)[0].to(image.dtype)


def _batches(positions: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for i in range(0, len(positions), size):
        yield positions[i : i + size]


@torch.no_grad()
def sliding_window(
    image: torch.Tensor,
    predict: TilePredictor,
    tile: int = 256,
    overlap: float = 0.25,
    batch_size: int = 8,
    blend: str = "gaussian",
) -> torch.Tensor:
    """Predict a ``(C, H, W)`` image tile by tile and stitch the blended result ``(K, H, W)``.

    ``predict`` maps a batch of tiles ``(B, C, tile, tile)`` to ``(B, K, tile, tile)``; it runs
    on the image's device. Photos smaller than a tile are padded and cropped back.
    """
    height, width = image.shape[-2:]
    padded = _pad_to(image, max(height, tile), max(width, tile))
    positions = tile_grid(padded.shape[-2], padded.shape[-1], tile, stride_for(tile, overlap))
    weights = blend_weights(tile, blend).to(image.device)
    out: torch.Tensor | None = None
    norm = torch.zeros(padded.shape[-2:], device=image.device)
    for chunk in _batches(positions, batch_size):
        tiles = torch.stack([padded[:, y : y + tile, x : x + tile] for y, x in chunk])
        pred = predict(tiles).float()
        if out is None:
            out = torch.zeros((pred.shape[1], *padded.shape[-2:]), device=image.device)
        for (y, x), p in zip(chunk, pred):
            out[:, y : y + tile, x : x + tile] += p * weights
            norm[y : y + tile, x : x + tile] += weights
    return (out / norm)[:, :height, :width]
