"""Online hard-negative mining: background tiles the model takes for cracks are drawn more often."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch


class HardNegativeMining(pl.Callback):
    """Remembers, for every background tile trained on, how many of its pixels the model took
    for crack (no extra forward pass), and before each epoch makes the datamodule draw
    ``fraction`` of its background tiles from the ``pool`` worst of them (at least
    ``min_pixels`` false crack pixels). Joints, borders and stains that look like cracks are the
    tiles that end up there.

    Contract (kept by CrackDataModule and CrackSegModule): each training batch carries ``tile``,
    the index of each tile; ``training_step`` returns ``false_crack_px``, per tile the
    background pixels taken for crack; the datamodule has ``is_crack_tile(tile)`` and
    ``draw_hard_negatives(tiles, fraction)``."""

    def __init__(self, fraction: float = 0.5, pool: int = 512, min_pixels: int = 16):
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.fraction, self.pool, self.min_pixels = fraction, pool, min_pixels
        self.false_crack_px: dict[int, int] = {}  # every rank's views, merged at each epoch start
        self.this_epoch: dict[int, int] = {}  # this rank's views since then

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: dict,
                           batch_idx: int) -> None:
        for tile, pixels in zip(batch["tile"].tolist(), outputs["false_crack_px"].tolist()):
            if not trainer.datamodule.is_crack_tile(tile):
                self.this_epoch[tile] = pixels  # the latest view: a tile the model has learnt drops out

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # every rank must pass the same hard tiles: the sampler draws one epoch and gives each rank a share
        merged: dict[int, int] = {}
        for views in _every_rank(trainer, self.this_epoch):
            for tile, pixels in views.items():  # a tile two ranks drew this epoch: the worse view
                merged[tile] = max(pixels, merged.get(tile, pixels))
        self.false_crack_px.update(merged)
        self.this_epoch = {}
        hard = sorted((t for t, px in self.false_crack_px.items() if px >= self.min_pixels),
                      key=self.false_crack_px.get, reverse=True)[: self.pool]
        trainer.datamodule.draw_hard_negatives(hard, self.fraction)
        pl_module.log("train/hard_negatives", float(len(hard)))

    def state_dict(self) -> dict[str, Any]:
        return {"false_crack_px": {**self.false_crack_px, **self.this_epoch}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.false_crack_px, self.this_epoch = dict(state_dict["false_crack_px"]), {}


def _every_rank(trainer: pl.Trainer, views: dict[int, int]) -> list[dict[int, int]]:
    """``views`` of every rank, in rank order (this rank's alone outside distributed training)."""
    if getattr(trainer, "world_size", 1) == 1:
        return [views]
    gathered: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, views)
    return gathered

