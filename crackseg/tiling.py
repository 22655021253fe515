"""The one tiler: tile positions for training and sliding-window stitching for inference.

Hand-written rather than MONAI's ``sliding_window_inference`` because the training tile
index must share its grid, and multi-scale prediction accumulates straight into a
source-resolution map instead of materialising every rescaled photo.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def scale_factor(scale: float) -> tuple[bool, int]:
    """``(upscale, k)`` for a scale ``k`` or ``1/k`` with integer ``k``; other scales are refused
    because their tiles would not map onto whole source pixels."""
    if scale >= 1 and float(scale).is_integer():
        return True, int(scale)
    if 0 < scale < 1 and abs(1 / scale - round(1 / scale)) < 1e-6:
        return False, int(round(1 / scale))
    raise ValueError(f"scales must be integers or 1/integers (e.g. 1, 2, 0.5), got {scale}")


def _crop(pixels: torch.Tensor, y: int, x: int, height: int, width: int) -> torch.Tensor:
    """``pixels[y:y+height, x:x+width]`` of an ``(H, W, C)`` photo, replicating edge pixels
    outside it: a view inside the photo, a small gather at its borders."""
    rows, cols = pixels.shape[:2]
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + height, rows), min(x + width, cols)
    crop = pixels[y0:y1, x0:x1]
    if (y1 - y0, x1 - x0) == (height, width):
        return crop
    local_rows = torch.arange(y - y0, y - y0 + height, device=pixels.device).clamp_(0, y1 - y0 - 1)
    local_cols = torch.arange(x - x0, x - x0 + width, device=pixels.device).clamp_(0, x1 - x0 - 1)
    return crop[local_rows][:, local_cols]


def _gather(pixels: torch.Tensor, origins: Sequence[tuple[int, int]], height: int, width: int) -> torch.Tensor:
    """Float crops ``(B, C, height, width)`` (channels-last memory) of an ``(H, W, C)`` photo at
    the top-left ``origins``. Sliced in the photo's own pixel-interleaved layout and converted
    once per batch: 4-10x faster on the CPU than per-tile channel-first copies, two kernels a
    batch on a GPU."""
    return torch.stack([_crop(pixels, y, x, height, width) for y, x in origins]).permute(0, 3, 1, 2).float()


class _ScaleGeometry:
    """Maps the tiles of one scale to source pixels.

    Upscale by k: a tile at (y, x) of the k-times photo shows the source box of side tile/k at
    (y/k, x/k), bilinearly upsampled with a one-pixel margin so that it equals the same crop of
    the whole upsampled photo. Downscale by k: the tile shows the source box of side tile*k at
    (y*k, x*k), averaged over k x k blocks (area interpolation). Predictions go back the same
    way (block average, resp. bilinear), straight into source resolution.
    """

    def __init__(self, scale: float, tile: int, stride: int, height: int, width: int):
        self.up, self.k = scale_factor(scale)
        k = self.k
        if self.up and tile % k:
            raise ValueError(f"tile {tile} must be a multiple of the scale {scale}")
        self.tile, self.height, self.width = tile, height, width
        if self.up:
            stride = max(k, stride - stride % k)
            scaled = (height * k, width * k)
            self.footprint = tile // k
        else:
            scaled = (-(-height // k), -(-width // k))
            self.footprint = tile * k
        self.positions = tile_grid(max(scaled[0], tile), max(scaled[1], tile), tile, stride)

    def source_origin(self, y: int, x: int) -> tuple[int, int]:
        return (y // self.k, x // self.k) if self.up else (y * self.k, x * self.k)

    def tile_inputs(self, pixels: torch.Tensor, positions: Sequence[tuple[int, int]]) -> torch.Tensor:
        """The model's input tiles ``(B, C, tile, tile)`` at ``positions`` of this scale, from an
        ``(H, W, C)`` photo: one crop per tile, then one resampling for the whole batch."""
        origins = [self.source_origin(y, x) for y, x in positions]
        k = self.k
        if self.up and k == 1:
            return _gather(pixels, origins, self.tile, self.tile)
        if self.up:
            crops = _gather(pixels, [(sy - 1, sx - 1) for sy, sx in origins], self.footprint + 2, self.footprint + 2)
            big = F.interpolate(crops, scale_factor=k, mode="bilinear", align_corners=False)
            return big[:, :, k : k + self.tile, k : k + self.tile]
        return F.avg_pool2d(_gather(pixels, origins, self.footprint, self.footprint), k)

    def to_source(self, tiles: torch.Tensor) -> torch.Tensor:
        """Predictions or weights ``(B, K, tile, tile)`` at source resolution ``(B, K, f, f)``."""
        if self.k == 1:
            return tiles
        if self.up:
            return F.avg_pool2d(tiles, self.k)
        return F.interpolate(tiles, scale_factor=self.k, mode="bilinear", align_corners=False)


def count_tiles(height: int, width: int, tile: int, overlap: float, scales: Sequence[float]) -> int:
    """Tiles a ``height`` x ``width`` photo costs over all ``scales``."""
    stride = stride_for(tile, overlap)
    return sum(len(_ScaleGeometry(s, tile, stride, height, width).positions) for s in scales)


class _RowBand:
    """Blended sums over a band of source rows. Tiles arrive row by row, so once the tiles
    reach row ``r`` every row above it is final and is flushed into the output: memory holds
    a band a few tiles high, not a full-size map per scale."""

    def __init__(self, channels: int, rows: int, width: int, device: torch.device, offset: int = 0):
        self.offset = offset  # source row of the band's first row
        self.total = torch.zeros((channels, rows, width), device=device)
        self.norm = torch.zeros((rows, width), device=device)

    def add(self, sy: int, sx: int, pred: torch.Tensor, weights: torch.Tensor) -> None:
        """Blend one tile in. One tile at a time: in-place adds on views of the band are 5-6x
        faster on the CPU than one ``index_add_`` for a batch (BENCHMARKS.md, the tiler)."""
        h, w = weights.shape
        row = sy - self.offset
        missing = row + h - self.norm.shape[0]
        if missing > 0:
            self.total = torch.cat([self.total, self.total.new_zeros((self.total.shape[0], missing, self.total.shape[2]))], 1)
            self.norm = torch.cat([self.norm, self.norm.new_zeros((missing, self.norm.shape[1]))])
        self.total[:, row : row + h, sx : sx + w].addcmul_(pred, weights)
        self.norm[row : row + h, sx : sx + w] += weights

    def flush(self, until: int, out: torch.Tensor) -> None:
        """Add the blended rows ``[offset, until)`` to ``out`` and drop them from the band
        (pixels no tile covered, where the cascade skipped tiles, add 0)."""
        n = min(until, self.offset + self.norm.shape[0]) - self.offset  # rows past the band got no tile
        if n <= 0:
            return
        out[:, self.offset : self.offset + n] += self.total[:, :n] / self.norm[:n].clamp_min(1e-30)
        keep = self.norm.shape[0] - n
        self.total[:, :keep] = self.total[:, n:].clone()
        self.norm[:keep] = self.norm[n:].clone()
        self.total[:, keep:] = 0
        self.norm[keep:] = 0
        self.offset = until


@dataclass
class TileCounts:
    """Tiles a prediction ran through the model, and tiles the cascade skipped."""

    computed: int = 0
    skipped: int = 0


def _open_tiles(geometry: _ScaleGeometry, positions: list[tuple[int, int]], so_far: torch.Tensor,
                bound: float) -> list[tuple[int, int]]:
    """The tiles whose source footprint holds a pixel where ``so_far`` (the sum of the scales
    computed) reaches ``bound``: only there can this and the later scales still make crack.
    One column-maximum and one sliding maximum per row of tiles, one device sync in all."""
    f = geometry.footprint
    origins = [geometry.source_origin(y, x) for y, x in positions]
    peaks = []
    for sy, row in itertools.groupby(origins, key=lambda origin: origin[0]):
        columns = so_far[:, sy : sy + f].amax(dim=(0, 1))  # rows past the photo's end are cut off
        box_max = F.max_pool1d(F.pad(columns[None], (0, f - 1), value=-math.inf), f, stride=1)[0]
        peaks.append(box_max[[sx for _, sx in row]])
    open_ = torch.cat(peaks) >= bound
    return [position for position, keep in zip(positions, open_.tolist()) if keep]


@torch.no_grad()
def sliding_window(
    image: torch.Tensor,
    predict: TilePredictor,
    tile: int = 256,
    overlap: float = 0.25,
    batch_size: int = 8,
    blend: str = "gaussian",
    scales: Sequence[float] = (1,),
    progress: Callable[[int], None] | None = None,
    full_batches: bool = False,
    threshold: float | None = None,
    counts: TileCounts | None = None,
) -> torch.Tensor:
    """Predict a ``(C, H, W)`` photo tile by tile at each scale and return the per-pixel mean
    over scales of the blended predictions, at source resolution: ``(K, H, W)`` float32.

    ``predict`` maps float tiles ``(B, C, tile, tile)`` (the photo's value range) to
    ``(B, K, tile, tile)`` and runs on the photo's device. No rescaled photo is materialised:
    each tile is resampled from the source and its prediction accumulated straight into
    the output at source resolution through a band of rows (:class:`_RowBand`), so memory is
    one map of the photo's size, whatever the scales.
    Borders and photos smaller than a tile are handled by replicating edge pixels.
    ``progress(n)`` is called after every batch with its number of tiles.
    ``full_batches`` pads each scale's last batch to ``batch_size`` (outputs of the padding are
    dropped), so the model sees one input shape: on CUDA every new shape costs a fresh choice
    of convolution kernels.

    Scales run cheapest first (fewest tiles). ``threshold``: the cascade. Every value is in
    [0, 1], so where the scales computed so far sum below ``n * threshold`` minus the number of
    scales left, the mean stays below the threshold whatever they say: a tile of a later scale
    whose footprint holds only such pixels is skipped. ``mean >= threshold`` is then exactly what
    the full computation gives (a pixel that can still be crack is covered only by computed
    tiles), while the returned mean is exact only there; elsewhere it lacks the skipped tiles'
    share and stays below the threshold. ``counts`` is filled with the tiles computed and skipped.
    """
    height, width = image.shape[-2:]
    pixels = image.permute(1, 2, 0)  # the layout photos are decoded in
    stride = stride_for(tile, overlap)
    weights = blend_weights(tile, blend).to(image.device)[None, None]
    geometries = sorted((_ScaleGeometry(s, tile, stride, height, width) for s in scales), key=lambda g: len(g.positions))
    counts = counts if counts is not None else TileCounts()
    out: torch.Tensor | None = None
    for done, geometry in enumerate(geometries):
        source_weights = geometry.to_source(weights)[0, 0]
        positions, band = geometry.positions, None
        bound = len(scales) * threshold - (len(scales) - done) - 1e-4 if threshold is not None else -1.0
        if out is not None and bound > 0:  # 1e-4: float sums never make the cascade skip a tile it needs
            positions = _open_tiles(geometry, positions, out, bound)
            counts.skipped += len(geometry.positions) - len(positions)
            if progress is not None:
                progress(len(geometry.positions) - len(positions))
        counts.computed += len(positions)
        for start in range(0, len(positions), batch_size):
            chunk = positions[start : start + batch_size]
            tiles = geometry.tile_inputs(pixels, chunk)
            if full_batches and len(chunk) < batch_size:
                tiles = torch.cat([tiles, tiles[-1:].expand(batch_size - len(chunk), -1, -1, -1)])
            pred = geometry.to_source(predict(tiles)[: len(chunk)].float())
            if out is None:
                out = torch.zeros((pred.shape[1], height, width), device=image.device)
            if band is None:  # from the first tile's row: the cascade may open none above it
                band = _RowBand(pred.shape[1], min(2 * geometry.footprint, height), width, image.device,
                                geometry.source_origin(*chunk[0])[0])
            for (y, x), p in zip(chunk, pred):
                sy, sx = geometry.source_origin(y, x)
                h, w = min(geometry.footprint, height - sy), min(geometry.footprint, width - sx)
                if h > 0 and w > 0:
                    band.add(sy, sx, p[:, :h, :w], source_weights[:h, :w])
            following = positions[start + batch_size] if start + batch_size < len(positions) else None
            band.flush(min(geometry.source_origin(*following)[0], height) if following else height, out)
            if progress is not None:
                progress(len(chunk))
    return out.div_(len(scales))
