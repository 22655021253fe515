"""Decoded-photo cache: each photo is decoded once into ``.npy`` files that are memory-mapped.

A 24-megapixel JPEG takes a fraction of a second to decode; a 256x256 crop of a memory-map
takes microseconds. The OS page cache bounds memory (mapped pages are reclaimable) and is
shared by all loader workers. Entries are keyed by the source files' path, size and mtime.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crackseg.io import atomic_write, read_pair


def _fingerprint(*paths: Path) -> str:
    h = hashlib.sha1()
    for path in paths:
        stat = path.stat()
        h.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


@dataclass(frozen=True)
class CachedPair:
    """Paths of one photo's decoded arrays; open them with :meth:`open` in each process."""

    source: Path
    image_npy: Path
    mask_npy: Path
    height: int
    width: int

    def open(self) -> tuple[np.ndarray, np.ndarray]:
        """``(image (H, W, 3) uint8, mask (H, W) uint8 0/1)`` as read-only memory-maps."""
        return np.load(self.image_npy, mmap_mode="r"), np.load(self.mask_npy, mmap_mode="r")


def cache_pair(photo: str | Path, mask: str | Path, cache_dir: str | Path) -> CachedPair:
    """Decode and validate ``photo`` + ``mask`` once; later calls reuse the cached arrays."""
    photo, mask = Path(photo), Path(mask)
    entry = Path(cache_dir) / _fingerprint(photo, mask)
    image_npy, mask_npy = entry / "image.npy", entry / "mask.npy"
    if not (image_npy.is_file() and mask_npy.is_file()):
        image, labels = read_pair(photo, mask)
        entry.mkdir(parents=True, exist_ok=True)
        atomic_write(mask_npy, lambda f: np.save(f, labels))
        atomic_write(image_npy, lambda f: np.save(f, image))
    height, width = np.load(mask_npy, mmap_mode="r").shape
    return CachedPair(photo, image_npy, mask_npy, height, width)
