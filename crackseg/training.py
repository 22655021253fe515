"""Training from a composed Hydra config: the body of ``train.py``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from crackseg.io import atomic_write_bytes

log = logging.getLogger(__name__)


def _instantiate_all(group: DictConfig | None) -> list:
    return [hydra.utils.instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def train(cfg: DictConfig) -> float:
    """Fit the model on the data, write ``summary.json`` in the run folder, return val/dice_best."""
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    model = hydra.utils.instantiate(cfg.model, _convert_="all", net_config=OmegaConf.to_yaml(cfg.model.net, resolve=True))
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    seconds = time.perf_counter() - started

    checkpoint = trainer.checkpoint_callback
    best = float(model.val_dice_best.compute()) if model.val_dice_best.update_called else float("nan")
    summary = {
        "best_ckpt": str(checkpoint.best_model_path) if checkpoint else None,
        "last_ckpt": str(checkpoint.last_model_path) if checkpoint else None,
        "val_dice_best": best,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "epochs": trainer.current_epoch,
        "train_seconds": round(seconds, 1),
        "train_tiles": trainer.global_step * cfg.data.batch_size,
    }
    if trainer.is_global_zero:
        atomic_write_bytes(output_dir / "summary.json", json.dumps(summary, indent=2).encode())
        log.info("best checkpoint: %s", summary["best_ckpt"])
        log.info("best val/dice: %.4f", best)
    return best
