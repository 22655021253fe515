"""Photo/mask pairs from a dataset folder.

Layout: ``images/<split>/<stem>.<ext>`` + ``masks/<split>/<stem>.<ext>`` matched by stem, or a
flat ``images/`` + ``masks/`` that is split by photo (never by tile) with a seeded ratio; the
synthetic generator's joints and borders labelled background in ``distractors/<split>/``.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from crackseg.data import synthetic
from crackseg.io import IMAGE_SUFFIXES, ImageReadError, file_digest, read_mask
from crackseg.options import OptionError

Pair = tuple[Path, Path]

log = logging.getLogger(__name__)


def _images(folder: Path) -> list[Path]:
    """The images of ``folder``; two of one stem (p0.jpg and p0.png) are refused: pairing is by stem."""
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    by_stem: dict[str, Path] = {}
    for image in images:
        if (other := by_stem.setdefault(image.stem, image)) is not image:
            raise ImageReadError(f"two images of the same stem in {folder}: {other.name} and {image.name} "
                                 "(photos and masks are paired by stem: keep one)")
    return images


def match_pairs(image_dir: Path, mask_dir: Path) -> list[Pair]:
    """Every photo in ``image_dir`` with the mask of the same stem in ``mask_dir``."""
    if not image_dir.is_dir():
        raise ImageReadError(f"photo folder not found: {image_dir}")
    photos = _images(image_dir)
    if not photos:
        raise ImageReadError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    masks = {p.stem: p for p in _images(mask_dir)} if mask_dir.is_dir() else {}
    missing = [p for p in photos if p.stem not in masks]
    if missing:
        raise ImageReadError(
            f"{len(missing)} photo(s) without a mask of the same stem in {mask_dir}, "
            f"e.g. {missing[0]}"
        )
    return [(p, masks[p.stem]) for p in photos]


def split_by_photo(pairs: list[Pair], val_fraction: float, seed: int,
                   fold: Sequence[int] | None = None) -> tuple[list[Pair], list[Pair]]:
    """Seeded ``(train, val)`` split of whole photos; at least one photo on each side.
    ``fold``: ``(k, n)``: the photos in the seeded order cut into ``n`` folds, the ``k``-th (from 0)
    is val, for cross-validation by photo (fold 0 starts the same order as the fraction's carve)."""
    if len(pairs) < 2:
        raise ImageReadError(f"cannot split {len(pairs)} photo(s) into train and val: {pairs}")
    order = np.random.default_rng(seed).permutation(len(pairs))
    if fold is None:
        n_val = min(len(pairs) - 1, max(1, int(round(len(pairs) * val_fraction))))
        val_at = order[:n_val]
    else:
        k, n = fold
        if not 2 <= n <= len(pairs) or not 0 <= k < n:
            raise OptionError(f"val_fold must be [k, n] with 2 <= n <= {len(pairs)} photos and 0 <= k < n, got {list(fold)}")
        val_at = np.array_split(order, n)[k]
    in_val = set(val_at.tolist())
    val = sorted(pairs[i] for i in in_val)
    train = sorted(pairs[i] for i in range(len(pairs)) if i not in in_val)
    return train, val


def find_splits(
    root: str | Path, train_split: str = "train", val_split: str = "val", val_fraction: float = 0.2, seed: int = 0,
    fold: Sequence[int] | None = None,
) -> tuple[list[Pair], list[Pair]]:
    """``(train, val)`` pairs under ``root``.

    Uses ``images/<train_split>`` and ``images/<val_split>`` when both exist; without the
    validation folder, validation photos are carved out of the training ones (or out of a
    flat ``images/``) by photo, with ``val_fraction`` and ``seed``, or as fold ``fold = (k, n)``.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageReadError(f"dataset folder not found: {root}")
    train_dir, val_dir = root / "images" / train_split, root / "images" / val_split
    if train_dir.is_dir() and val_dir.is_dir():
        if fold is not None:
            raise OptionError(f"val_fold carves val photos out of train, but {root} has its own {val_dir}")
        return match_pairs(train_dir, root / "masks" / train_split), match_pairs(val_dir, root / "masks" / val_split)
    if train_dir.is_dir():
        return split_by_photo(match_pairs(train_dir, root / "masks" / train_split), val_fraction, seed, fold)
    if (root / "images").is_dir() and _images(root / "images"):
        return split_by_photo(match_pairs(root / "images", root / "masks"), val_fraction, seed, fold)
    raise ImageReadError(f"no images/{train_split}/ or flat images/ folder with photos in {root}")


SOURCE_KEYS = ("root", "train_split", "val_split", "val_fraction", "val_fold", "split_seed", "holdout_split",
               "train_photos", "weight")


def data_sources(data) -> dict[str, dict]:
    """``{name: settings}`` of the datasets a data config (or the data module's arguments)
    names: its ``sources``, each completed from the config's own split settings, or the one
    dataset at ``root`` (named ``data``)."""
    defaults = {"root": data.get("root"), "train_split": data.get("train_split", "train"),
                "val_split": data.get("val_split", "val"), "val_fraction": data.get("val_fraction", 0.2),
                "val_fold": data.get("val_fold"), "split_seed": data.get("split_seed", 0),
                "holdout_split": data.get("holdout_split"), "train_photos": data.get("train_photos"), "weight": 1.0}
    sources = data.get("sources")
    if sources is None:
        return {"data": defaults}
    settings = {}
    for name, source in sources.items():
        unknown = set(source) - set(SOURCE_KEYS)
        if "root" not in source or unknown:
            raise OptionError(f"data source {name!r} needs a root and takes only {list(SOURCE_KEYS)}, got {dict(source)}")
        settings[name] = {**defaults, **source}
    return settings


def source_splits(source: dict) -> tuple[list[Pair], list[Pair]]:
    """``(train, val)`` pairs of one dataset's settings (:func:`data_sources`); photos whose stem
    is also in the ``holdout_split`` folder are left out of both (after the val carve, so a
    carve that took none of them is the same with or without it); then a photo twice in a split
    counts once (after the carve, so folds stay as they were); then at most ``train_photos`` of
    the train ones are kept (drawn with ``split_seed``)."""
    train, val = find_splits(source["root"], source["train_split"], source["val_split"], source["val_fraction"],
                             source["split_seed"], source["val_fold"])
    if source["holdout_split"]:
        root, split = Path(source["root"]), source["holdout_split"]
        held_out = {p.stem for p, _ in match_pairs(root / "images" / split, root / "masks" / split)}
        train = [(p, m) for p, m in train if p.stem not in held_out]
        val = [(p, m) for p, m in val if p.stem not in held_out]
        for name, kept in (("train", train), ("val", val)):
            if not kept:
                raise OptionError(f"every {name} photo of {root} is also in its {split} split (holdout_split)"
                                  + (": choose another split_seed or val_fold" if name == "val" else ""))
    train, val = _counted_once(train, source["train_split"]), _counted_once(val, source["val_split"])
    limit = source["train_photos"]
    if limit is not None:
        if limit < 1:
            raise OptionError(f"train_photos must be at least 1, got {limit} (for {source['root']})")
        order = np.random.default_rng(source["split_seed"]).permutation(len(train))
        train = sorted(train[i] for i in order[:limit])
    return train, val


def without_copies(pairs: list[Pair], others: Iterable[Pair] = ()) -> tuple[list[Pair], list[tuple[Path, Path]]]:
    """``pairs`` less each photo whose bytes equal those of a photo of ``others`` or of an earlier
    photo of ``pairs``: a copy would count one photo twice (and a train copy of a val photo makes its
    score a training score). Returns the kept pairs and each dropped ``(copy, original)``. Only
    photos of a size seen twice are read and hashed."""
    others = list(others)
    status = {photo: photo.stat() for photo, _ in [*others, *pairs]}
    sizes = Counter(s.st_size for s in status.values())

    def key(photo: Path) -> str | Path:
        size, mtime_ns = status[photo].st_size, status[photo].st_mtime_ns
        return _digest(photo, size, mtime_ns) if sizes[size] > 1 else photo

    originals = {key(p): p for p, _ in reversed(others)}  # the first of several equal others
    kept, dropped = [], []
    for pair in pairs:
        if (original := originals.setdefault(key(pair[0]), pair[0])) is pair[0]:
            kept.append(pair)
        else:
            dropped.append((pair[0], original))
    return kept, dropped


@functools.lru_cache(maxsize=4096)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    """The photo's :func:`file_digest`, read once per process while its size and time stay the same."""
    return file_digest(path)


_told: set[tuple[Path, Path]] = set()


def _counted_once(pairs: list[Pair], split: str) -> list[Pair]:
    """``pairs`` with each photo counted once (a dataset may hold the same photo twice), saying so
    once per process."""
    kept, copies = without_copies(pairs)
    for copy, original in copies:
        if (copy, original) not in _told:
            _told.add((copy, original))
            log.warning("%s is left out of %s: it is a copy of %s (the same bytes)", copy, split, original)
    return kept


def split_sources(data, split: str) -> dict[str, list[Pair]]:
    """The ``(photo, mask)`` pairs of ``split`` per dataset, each photo once (:func:`source_splits`):
    the data config's train/val splits (carved out of train when there is no val folder) or any
    other folder; with several datasets (``data.sources``), each dataset that has the split.
    (Training also leaves out train copies of val photos: ``CrackDataModule.setup``.)"""
    if data.get("synthetic"):
        synthetic.ensure(data.root, **data.synthetic)
    sources = data_sources(data)
    pairs = {}
    for name, source in sources.items():
        root = Path(source["root"])
        split_dir = root / "images" / split
        if split == source["train_split"] or (split == source["val_split"] and not split_dir.is_dir()):
            train, val = source_splits(source)
            pairs[name] = train if split == source["train_split"] else val
        elif split_dir.is_dir() or len(sources) == 1:
            pairs[name] = _counted_once(match_pairs(split_dir, root / "masks" / split), split)
    return pairs


def split_pairs(data, split: str) -> list[Pair]:
    """The pairs of :func:`split_sources`, all datasets together."""
    return [pair for pairs in split_sources(data, split).values() for pair in pairs]


def distractor_mask(photo: Path, shape: tuple[int, int], margin: int = 2) -> np.ndarray | None:
    """Joints and borders labelled background (``<root>/distractors/<split>/<stem>.png``, as the
    synthetic generator writes them; ``<root>/distractors/<stem>.png`` beside a flat ``images/``),
    widened by ``margin`` px; None when the file is absent."""
    images = photo.parent if photo.parent.name == "images" else photo.parent.parent
    path = images.parent / "distractors" / photo.parent.relative_to(images) / f"{photo.stem}.png"
    if not path.is_file():
        return None
    mask = read_mask(path, shape).astype(np.uint8)
    return cv2.dilate(mask, np.ones((2 * margin + 1,) * 2, np.uint8)) > 0
