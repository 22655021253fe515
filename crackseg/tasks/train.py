"""Training from a composed Hydra config: the body of ``train.py``."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from crackseg.models.checkpoints import CheckpointError, load_model
from crackseg.io import atomic_write, atomic_write_bytes, remove_stale_temp_files
from crackseg.options import check_training_options

log = logging.getLogger(__name__)
for _name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(lambda record: "litlogger" not in record.getMessage())  # an advert, every run


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, then renames it into place.

    Lightning's own save goes through a temporary file in the system temp folder and
    ``shutil.move``, which copies (and so can leave half a file) when that folder is on another
    filesystem than the run, as it often is on clusters.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_write(path, lambda f: torch.save(checkpoint, f))


def _instantiate_all(group: DictConfig | None) -> list:
    return [hydra.utils.instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def init_net_from(model: pl.LightningModule, path: str | Path) -> None:
    """Start ``model``'s net from the weights of a trained model (a checkpoint, e.g. the shipped
    ``models/crackseg-general.ckpt``) to fine-tune it; the nets must have the same shape."""
    trained = load_model(path)
    try:
        model.net.load_state_dict(trained.state_dict())
    except RuntimeError as err:
        raise CheckpointError(f"init_from={path}: its net differs from the configured model.net "
                              f"(train with the same model config):\n{err}") from err
    log.info("net initialised from %s", path)


def train(cfg: DictConfig, callbacks: Sequence[pl.Callback] = ()) -> float:
    """Fit the model on the data, write ``summary.json`` in the run folder (rank 0), return
    val/dice_best (NaN when no validation ran). ``callbacks``: more, beside the configured ones.

    ``cfg.ckpt_path`` resumes: a checkpoint file, or ``last`` for this run folder's
    ``checkpoints/last.ckpt`` (a fresh start while there is none). ``cfg.init_from`` starts the
    net from a trained model's weights (fine-tuning) with a fresh optimizer and schedule.
    """
    check_training_options(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    for path in remove_stale_temp_files(output_dir / "checkpoints"):
        log.info("removed %s, left by a run killed while writing", path)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    model = hydra.utils.instantiate(cfg.model, _convert_="all", net_config=OmegaConf.to_yaml(cfg.model.net, resolve=True))
    if cfg.get("init_from"):
        init_net_from(model, cfg.init_from)
    callbacks = [*_instantiate_all(cfg.get("callbacks")), *callbacks]
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )

    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    seconds = time.perf_counter() - started

    saved = {c.filename: c.best_model_path for c in trainer.checkpoint_callbacks}  # "last": conf/callbacks
    best = float(model.val_dice_best.max_value)  # -inf until a validation ran; the same on every rank
    best = best if math.isfinite(best) else float("nan")
    summary = {
        "best_ckpt": trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None,
        "last_ckpt": saved.get("last"),
        "resumed_from": trainer.ckpt_path,
        "val_dice_best": best,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "epochs": trainer.current_epoch,
        "train_seconds": round(seconds, 1),
        # since the first epoch (a resumed fit's too); a step is accumulate_grad_batches batches
        "train_tiles": trainer.global_step * trainer.accumulate_grad_batches * cfg.data.batch_size * trainer.world_size,
        "world_size": trainer.world_size,
    }
    if trainer.is_global_zero:
        atomic_write_bytes(output_dir / "summary.json", json.dumps(summary, indent=2).encode())
        log.info("best checkpoint: %s", summary["best_ckpt"])
        log.info("best val/dice: %.4f", best)
    return best
