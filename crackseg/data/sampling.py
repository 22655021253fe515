"""Tile index over large photos, balanced tile sampling, and the tile / whole-photo datasets."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from crackseg.data.cache import CachedPair
from crackseg.tiling import tile_starts


@dataclass(frozen=True)
class TileIndex:
    """Every tile of every photo: ``positions[i] = (photo, y, x)``, ``crack[i]`` its label."""

    positions: np.ndarray  # (N, 3) int64
    crack: np.ndarray  # (N,) bool
    tile: int

    def __len__(self) -> int:
        return len(self.positions)

    @classmethod
    def build(cls, pairs: Sequence[CachedPair], tile: int, stride: int, min_crack_pixels: int = 1) -> TileIndex:
        """Overlapping tiles covering each photo, borders included (photos smaller than a tile
        give one tile, padded when read); a tile is ``crack`` with >= ``min_crack_pixels``."""
        positions, crack = [], []
        for photo_id, pair in enumerate(pairs):
            _, mask = pair.open()
            counts = cv2.integral(np.ascontiguousarray(mask))  # (H+1, W+1) cumulative sums
            for y in tile_starts(pair.height, tile, stride):
                for x in tile_starts(pair.width, tile, stride):
                    y1, x1 = min(y + tile, pair.height), min(x + tile, pair.width)
                    pixels = counts[y1, x1] - counts[y, x1] - counts[y1, x] + counts[y, x]
                    positions.append((photo_id, y, x))
                    crack.append(pixels >= min_crack_pixels)
        return cls(np.array(positions, np.int64).reshape(-1, 3), np.array(crack, bool), tile)


class BalancedTileSampler(Sampler[int]):
    """Draws ``num_samples`` tile indices per epoch, a ``crack_fraction`` of them crack tiles.

    Fresh tiles every epoch (seeded by ``seed`` and the epoch, which Lightning sets); a class
    is drawn without replacement while it has enough tiles, with replacement otherwise.
    Without crack tiles (or background tiles) the other class fills the epoch.
    ``set_hard_negatives`` makes a share of the background draws come from given tiles.

    ``groups`` (one int per tile, e.g. its dataset) with ``group_weights``: each class's draw is
    shared between the groups that have tiles of that class, in proportion to their weights.

    Distributed training: every rank draws the same epoch (same seed and epoch) and keeps its
    strided share, ``num_samples // num_replicas`` tiles, so the ranks split one epoch's draw
    between them (the remainder of the division is dropped: equal shares keep ranks in step).
    """

    def __init__(
        self,
        crack: np.ndarray,
        num_samples: int,
        crack_fraction: float = 0.5,
        seed: int = 0,
        rank: int = 0,
        num_replicas: int = 1,
        groups: np.ndarray | None = None,
        group_weights: Sequence[float] | None = None,
    ):
        if not 0 <= crack_fraction <= 1:
            raise ValueError(f"crack_fraction must be in [0, 1], got {crack_fraction}")
        if len(crack) == 0:
            raise ValueError("no tiles to sample from")
        crack = np.asarray(crack, bool)
        if not 0 <= rank < num_replicas or num_samples < num_replicas:
            raise ValueError(f"rank {rank} of {num_replicas} cannot share {num_samples} tiles")
        groups = np.zeros(len(crack), np.int64) if groups is None else np.asarray(groups, np.int64)
        weights = np.ones(groups.max() + 1) if group_weights is None else np.asarray(group_weights, float)
        if len(groups) != len(crack) or len(weights) <= groups.max() or (weights < 0).any():
            raise ValueError(f"need one group per tile and a non-negative weight per group, got {len(groups)} "
                             f"groups for {len(crack)} tiles and weights {list(weights)}")
        self.crack_ids = self._by_group(np.flatnonzero(crack), groups, weights)
        self.background_ids = self._by_group(np.flatnonzero(~crack), groups, weights)
        self.num_samples = num_samples
        self.crack_fraction = crack_fraction
        self.seed = seed
        self.rank = rank
        self.num_replicas = num_replicas
        self.epoch = 0
        self.hard_ids = torch.empty(0, dtype=torch.long)
        self.hard_fraction = 0.0

    @staticmethod
    def _by_group(ids: np.ndarray, groups: np.ndarray, weights: np.ndarray) -> list[tuple[torch.Tensor, float]]:
        """``ids`` split by group, each with its weight (groups without such tiles or weight left out)."""
        split = [(torch.from_numpy(ids[groups[ids] == g]), float(w)) for g, w in enumerate(weights)]
        return [(g_ids, w) for g_ids, w in split if len(g_ids) and w > 0]

    def set_hard_negatives(self, ids: Sequence[int], fraction: float) -> None:
        """Draw ``fraction`` of each epoch's background tiles from ``ids`` (hard negatives)."""
        if not 0 <= fraction <= 1:
            raise ValueError(f"hard-negative fraction must be in [0, 1], got {fraction}")
        self.hard_ids = torch.as_tensor(list(ids), dtype=torch.long)
        self.hard_fraction = fraction if len(self.hard_ids) else 0.0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // self.num_replicas

    @staticmethod
    def _draw(ids: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        if n <= len(ids):
            return ids[torch.randperm(len(ids), generator=generator)[:n]]
        return ids[torch.randint(len(ids), (n,), generator=generator)]

    @classmethod
    def _draw_groups(cls, groups: list[tuple[torch.Tensor, float]], n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` tiles shared between ``groups`` by weight (rounded so that the shares sum to ``n``)."""
        if not groups:
            return torch.empty(0, dtype=torch.long)
        cumulative = np.cumsum([w for _, w in groups]) / sum(w for _, w in groups)
        ends = np.round(cumulative * n).astype(int)
        counts = np.diff(ends, prepend=0)
        return torch.cat([cls._draw(ids, int(k), generator) for (ids, _), k in zip(groups, counts)])

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n_crack = int(round(self.num_samples * self.crack_fraction))
        if not self.crack_ids:
            n_crack = 0
        elif not self.background_ids:
            n_crack = self.num_samples
        n_background = self.num_samples - n_crack
        n_hard = int(round(n_background * self.hard_fraction))
        chosen = torch.cat([
            self._draw_groups(self.crack_ids, n_crack, generator),
            self._draw(self.hard_ids, n_hard, generator),
            self._draw_groups(self.background_ids, n_background - n_hard, generator),
        ])
        chosen = chosen[torch.randperm(len(chosen), generator=generator)]
        return iter(chosen[self.rank : len(self) * self.num_replicas : self.num_replicas].tolist())


def _to_tensors(image: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),  # uint8 (3, H, W)
        "mask": torch.from_numpy(np.ascontiguousarray(mask[None])).float(),  # (1, H, W) 0/1
    }


class _PhotoArrays:
    """Opens each photo's memory-maps lazily, once per process (loader workers included)."""

    def __init__(self, pairs: Sequence[CachedPair]):
        self.pairs = list(pairs)
        self._open: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self):
        return {"pairs": self.pairs, "_open": {}}

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._open:
            self._open[i] = self.pairs[i].open()
        return self._open[i]


def read_rescaled_tile(
    image: np.ndarray, mask: np.ndarray, y: int, x: int, tile: int, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The ``tile`` x ``tile`` crop at ``(y, x)`` as the photo would look resized by ``scale``:
    a window of ``tile / scale`` source pixels around the same centre (see :func:`read_window`)."""
    return read_window(image, mask, *centred_window(y, x, tile, scale), tile)


def centred_window(y: int, x: int, tile: int, scale: float) -> tuple[int, int, int]:
    """``(top, left, size)`` of the source window that shows the tile at ``(y, x)`` at ``scale``."""
    window = max(1, int(round(tile / scale)))
    return int(round(y + (tile - window) / 2)), int(round(x + (tile - window) / 2)), window


def read_window(image: np.ndarray, mask: np.ndarray, top: int, left: int, window: int, tile: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The ``window`` x ``window`` source pixels at ``(top, left)`` (kept inside the photo,
    reflect-padded where the photo is smaller) resized to ``tile``, resampled like prediction's
    scales (area down, bilinear up); the mask is resampled as a coverage fraction and thresholded
    at 0.5. Hand-written: albumentations' crops work inside a tile and cannot zoom out beyond it."""
    height, width = mask.shape
    top = min(max(top, 0), max(height - window, 0))
    left = min(max(left, 0), max(width - window, 0))
    image, mask = image[top : top + window, left : left + window], mask[top : top + window, left : left + window]
    if image.shape[:2] != (window, window):  # photo smaller than the window
        pad = ((0, window - image.shape[0]), (0, window - image.shape[1]))
        image = np.pad(image, (*pad, (0, 0)), mode="reflect")
        mask = np.pad(mask, pad, mode="reflect")
    if window == tile:
        return image, mask
    interpolation = cv2.INTER_AREA if window > tile else cv2.INTER_LINEAR
    image = cv2.resize(np.ascontiguousarray(image), (tile, tile), interpolation=interpolation)
    coverage = cv2.resize(mask.astype(np.float32), (tile, tile), interpolation=interpolation)
    return image, (coverage >= 0.5).astype(np.uint8)


class TileDataset(Dataset):
    """Tile ``i`` of the index, augmented: ``{"image": uint8 (3, t, t), "mask": float (1, t, t),
    "tile": i}``.

    ``scale_range=(lo, hi)``: each tile shows its photo resized by a factor drawn log-uniformly
    in ``[lo, hi]`` (:func:`read_rescaled_tile`), so the model learns the scales the method
    predicts at; ``None`` reads every tile at 1x. A crack tile enlarged (a window smaller than
    the tile) shows a window placed at random around one of its crack pixels, drawn at random:
    around the tile's centre, half of them at 2x would show no crack.

    An albumentations ``transform`` keeps its own random state, deaf to global seeds: it is
    given one generator, shared by its transforms, once per process (loader workers included)
    from torch's generator, which ``seed_everything(workers=True)`` seeds per rank and worker, so
    augmentation is reproducible and differs between workers. The scale and the window are
    drawn from that torch generator.
    """

    def __init__(self, pairs: Sequence[CachedPair], index: TileIndex, transform: Callable | None = None,
                 scale_range: Sequence[float] | None = None):
        if scale_range is not None and not (len(scale_range) == 2 and 0 < scale_range[0] <= scale_range[1]):
            raise ValueError(f"scale_range must be [lo, hi] with 0 < lo <= hi, got {scale_range}")
        self.arrays = _PhotoArrays(pairs)
        self.index = index
        self.transform = transform
        self.log_scale_range = None if scale_range is None else (float(np.log(scale_range[0])), float(np.log(scale_range[1])))
        self._seeded_in: int | None = None  # the process that seeded the transform

    def _seed_transform(self) -> None:
        if self._seeded_in != os.getpid() and hasattr(self.transform, "set_random_state"):
            # one stream shared by every child transform: albumentations' set_random_seed gives each
            # child its own generator from the same seed, so equal draws (two flips) fire together
            seed = int(torch.randint(2**31, ()))
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
            self._seeded_in = os.getpid()

    def _draw_scale(self) -> float:
        if self.log_scale_range is None:
            return 1.0
        return float(torch.empty(()).uniform_(*self.log_scale_range).exp())

    def __len__(self) -> int:
        return len(self.index)

    def _crack_window(self, mask: np.ndarray, y: int, x: int, window: int) -> tuple[int, int] | None:
        """Where a window of a crack tile holding one of its crack pixels starts (None: no crack)."""
        ys, xs = np.nonzero(mask[y : y + self.index.tile, x : x + self.index.tile])
        if not len(ys):
            return None
        k = int(torch.randint(len(ys), ()))
        dy, dx = torch.randint(window, (2,)).tolist()
        return y + int(ys[k]) - dy, x + int(xs[k]) - dx

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        photo_id, y, x = (int(v) for v in self.index.positions[i])
        image, mask = self.arrays[photo_id]
        tile = self.index.tile
        top, left, window = centred_window(y, x, tile, self._draw_scale())
        if window < tile and self.index.crack[i]:
            top, left = self._crack_window(mask, y, x, window) or (top, left)
        image, mask = read_window(image, mask, top, left, window, tile)
        if self.transform is not None:
            self._seed_transform()
            out = self.transform(image=np.ascontiguousarray(image), mask=np.ascontiguousarray(mask))
            image, mask = out["image"], out["mask"]
        return {**_to_tensors(image, mask), "tile": i}


class PhotoDataset(Dataset):
    """Whole photos for sliding-window validation: ``{"image", "mask", "name", "source"}``
    (``source``: the index in ``sources`` of the dataset the photo comes from, 0 without)."""

    def __init__(self, pairs: Sequence[CachedPair], sources: Sequence[int] | None = None):
        self.arrays = _PhotoArrays(pairs)
        self.sources = list(sources) if sources is not None else [0] * len(self.arrays.pairs)

    def __len__(self) -> int:
        return len(self.arrays.pairs)

    def __getitem__(self, i: int) -> dict:
        image, mask = self.arrays[i]
        return {**_to_tensors(np.array(image), np.array(mask)), "name": self.arrays.pairs[i].source.stem,
                "source": self.sources[i]}
