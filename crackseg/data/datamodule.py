"""LightningDataModule: balanced overlapping tiles for training, whole photos for validation."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, DistributedSampler

from crackseg.data import synthetic
from crackseg.data.cache import CachedPair, cache_pair
from crackseg.data.folder import data_sources, source_splits, without_copies
from crackseg.data.joints import PasteJoints
from crackseg.data.sampling import BalancedTileSampler, PhotoDataset, TileDataset, TileIndex
from crackseg.io import ImageReadError
from crackseg.options import OptionError

log = logging.getLogger(__name__)


class CrackDataModule(pl.LightningDataModule):
    """Reads a dataset folder (see :mod:`crackseg.data.folder`), decodes each photo once into
    the cache, indexes overlapping tiles and samples ``tiles_per_epoch`` of them per epoch with
    a ``crack_fraction`` of crack tiles. Validation yields whole photos (batch of one).

    ``synthetic``: generator parameters; the dataset is generated into ``root`` when missing.
    ``scale_range``: training tiles show their photo rescaled log-uniformly in ``[lo, hi]``.
    ``holdout_split``: train photos whose stem is also in ``images/<holdout_split>/`` (a test
    split) are left out of training, and so is any train photo whose bytes equal a val photo's.
    ``val_fold``: ``[k, n]`` carves val as the k-th of n folds by photo (cross-validation)
    instead of ``val_fraction``; ``train_photos``: train on at most that many photos (seeded).
    ``paste_joints``: the probability that a training tile gets realistic joints pasted on it,
    labelled background (:class:`~crackseg.data.joints.PasteJoints`, before ``augment``).

    ``sources``: several datasets trained together instead of ``root``: ``{name: {root, weight,
    and any of train_split, val_split, val_fraction, val_fold, split_seed, holdout_split,
    train_photos}}``. Each class's tiles (crack,
    background) are shared between the datasets by ``weight`` (default 1); validation runs on
    every dataset's val photos (``val/dice`` pooled over all, ``val/<name>/dice`` each).

    Distributed training shards both loaders itself (the trainer runs with
    ``use_distributed_sampler=False``): each rank takes its share of the epoch's tiles and of
    the val photos; with a photo count not divisible by the world size, a few photos are
    validated twice (``DistributedSampler`` padding keeps every rank validating).
    """

    def __init__(
        self,
        root: str | None,
        cache_dir: str,
        train_split: str = "train",
        val_split: str = "val",
        val_fraction: float = 0.2,
        val_fold: list[int] | None = None,
        split_seed: int = 0,
        tile: int = 256,
        stride: int | None = None,
        min_crack_pixels: int = 1,
        crack_fraction: float = 0.5,
        tiles_per_epoch: int = 2000,
        batch_size: int = 8,
        num_workers: int = 2,
        augment: Callable | None = None,
        sampler_seed: int = 0,
        synthetic: dict | None = None,
        scale_range: list[float] | None = None,
        sources: dict[str, dict] | None = None,
        holdout_split: str | None = None,
        train_photos: int | None = None,
        paste_joints: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["augment"], logger=False)
        if not 0 <= paste_joints <= 1:
            raise ValueError(f"paste_joints is a probability in [0, 1], got {paste_joints}")
        if paste_joints > 0:
            augment = A.Compose([PasteJoints(p=paste_joints), *([augment] if augment is not None else [])])
        self.augment = augment
        if (root is None) == (sources is None):
            raise OptionError("give the data as either root or sources, not both")
        self.train_pairs: list[CachedPair] = []
        self.val_pairs: list[CachedPair] = []
        self.val_sources: list[int] = []
        self.train_index: TileIndex | None = None
        self.tile_sources: np.ndarray | None = None  # the source of each train tile

    @property
    def source_names(self) -> list[str]:
        return list(data_sources(self.hparams))

    @property
    def stride(self) -> int:
        return self.hparams.stride or self.hparams.tile // 2

    def prepare_data(self) -> None:
        if self.hparams.synthetic is not None:
            synthetic.ensure(self.hparams.root, **self.hparams.synthetic)

    def setup(self, stage: str | None = None) -> None:
        if self.train_index is not None:
            return
        hp = self.hparams
        cache = Path(hp.cache_dir)
        train_photo_sources = []
        splits = [source_splits(source) for source in data_sources(hp).values()]
        all_val = [pair for _, val in splits for pair in val]
        for i, (source, (train, val)) in enumerate(zip(data_sources(hp).values(), splits)):
            train, copies = without_copies(train, all_val)  # train is distinct already: copies are of val photos
            for copy, held in copies:
                log.warning("%s is left out of training: it is a copy of the val photo %s", copy, held)
            if copies and not train:
                raise ImageReadError(f"every train photo of {source['root']} is a copy of a val photo, e.g. "
                                     f"{copies[0][0]} of {copies[0][1]}: nothing is left to train on")
            self.train_pairs += [cache_pair(p, m, cache) for p, m in train]
            self.val_pairs += [cache_pair(p, m, cache) for p, m in val]
            train_photo_sources += [i] * len(train)
            self.val_sources += [i] * len(val)
            log.info("%s: %d train photos, %d val photos", source["root"], len(train), len(val))
        self.train_index = TileIndex.build(self.train_pairs, hp.tile, self.stride, hp.min_crack_pixels)
        self.tile_sources = np.asarray(train_photo_sources, np.int64)[self.train_index.positions[:, 0]]
        log.info("%d train tiles (%d with cracks)", len(self.train_index), int(self.train_index.crack.sum()))
        if self.train_pairs and not self.train_index.crack.any():
            roots = ", ".join(str(s["root"]) for s in data_sources(hp).values())
            raise ImageReadError(f"no crack pixel in any mask of the training photos of {roots}: are the masks "
                                 f"the labels (crack = their higher value)?")

    def is_crack_tile(self, tile: int) -> bool:
        """Whether training tile ``tile`` (an index of ``train_index``, a batch's ``tile``) has cracks."""
        return bool(self.train_index.crack[tile])

    def draw_hard_negatives(self, tiles: list[int], fraction: float) -> None:
        """From the next epoch on, draw ``fraction`` of the background tiles from ``tiles``."""
        self.sampler.set_hard_negatives(tiles, fraction)

    @property
    def _rank_and_world_size(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        rank, world_size = self._rank_and_world_size
        self.sampler = BalancedTileSampler(
            self.train_index.crack, hp.tiles_per_epoch, hp.crack_fraction, hp.sampler_seed, rank, world_size,
            groups=self.tile_sources, group_weights=[float(s["weight"]) for s in data_sources(hp).values()],
        )
        if self.trainer:  # a resumed fit's first epoch is drawn here (worker prefetch), before Lightning's set_epoch
            self.sampler.set_epoch(self.trainer.current_epoch)
        return DataLoader(
            TileDataset(self.train_pairs, self.train_index, self.augment, hp.scale_range),
            batch_size=hp.batch_size,
            sampler=self.sampler,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        dataset = PhotoDataset(self.val_pairs, self.val_sources)
        rank, world_size = self._rank_and_world_size
        sampler = DistributedSampler(dataset, world_size, rank, shuffle=False) if world_size > 1 else None
        return DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=min(1, self.hparams.num_workers))
