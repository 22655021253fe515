"""Tile index over large photos, balanced tile sampling, and the tile / whole-photo datasets."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from crackseg.data.cache import CachedPair
from crackseg.inference.tiling import tile_starts


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
    ):
        if not 0 <= crack_fraction <= 1:
            raise ValueError(f"crack_fraction must be in [0, 1], got {crack_fraction}")
        if len(crack) == 0:
            raise ValueError("no tiles to sample from")
        if not 0 <= rank < num_replicas or num_samples < num_replicas:
            raise ValueError(f"rank {rank} of {num_replicas} cannot share {num_samples} tiles")
        self.crack_ids = torch.from_numpy(np.flatnonzero(crack))
        self.background_ids = torch.from_numpy(np.flatnonzero(~crack))
        self.num_samples = num_samples
        self.crack_fraction = crack_fraction
        self.seed = seed
        self.rank = rank
        self.num_replicas = num_replicas
        self.epoch = 0
        self.hard_ids = torch.empty(0, dtype=torch.long)
        self.hard_fraction = 0.0

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

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n_crack = int(round(self.num_samples * self.crack_fraction))
        if len(self.crack_ids) == 0:
            n_crack = 0
        elif len(self.background_ids) == 0:
            n_crack = self.num_samples
        n_background = self.num_samples - n_crack
        n_hard = int(round(n_background * self.hard_fraction))
        chosen = torch.cat([
            self._draw(self.crack_ids, n_crack, generator),
            self._draw(self.hard_ids, n_hard, generator),
            self._draw(self.background_ids, n_background - n_hard, generator),
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


class TileDataset(Dataset):
    """Tile ``i`` of the index, augmented: ``{"image": uint8 (3, t, t), "mask": float (1, t, t),
    "tile": i}``.

    An albumentations ``transform`` keeps its own random state, deaf to global seeds: it is
    seeded once per process (loader workers included) from torch's generator, which
    ``seed_everything(workers=True)`` seeds per rank and worker, so augmentation is reproducible
    and differs between workers.
    """

    def __init__(self, pairs: Sequence[CachedPair], index: TileIndex, transform: Callable | None = None):
        self.arrays = _PhotoArrays(pairs)
        self.index = index
        self.transform = transform
        self._seeded_in: int | None = None  # the process that seeded the transform

    def _seed_transform(self) -> None:
        if self._seeded_in != os.getpid() and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(int(torch.randint(2**31, ())))
            self._seeded_in = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        photo_id, y, x = self.index.positions[i]
        image, mask = self.arrays[int(photo_id)]
        t = self.index.tile
        image, mask = image[y : y + t, x : x + t], mask[y : y + t, x : x + t]
        if image.shape[:2] != (t, t):  # photo smaller than a tile
            pad = ((0, t - image.shape[0]), (0, t - image.shape[1]))
            image = np.pad(image, (*pad, (0, 0)), mode="reflect")
            mask = np.pad(mask, pad, mode="reflect")
        if self.transform is not None:
            self._seed_transform()
            out = self.transform(image=np.ascontiguousarray(image), mask=np.ascontiguousarray(mask))
            image, mask = out["image"], out["mask"]
        return {**_to_tensors(image, mask), "tile": i}


class PhotoDataset(Dataset):
    """Whole photos for sliding-window validation: ``{"image", "mask", "name"}``."""

    def __init__(self, pairs: Sequence[CachedPair]):
        self.arrays = _PhotoArrays(pairs)

    def __len__(self) -> int:
        return len(self.arrays.pairs)

    def __getitem__(self, i: int) -> dict:
        image, mask = self.arrays[i]
        return {**_to_tensors(np.array(image), np.array(mask)), "name": self.arrays.pairs[i].source.stem}
