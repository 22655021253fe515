"""Model export from a composed Hydra config: the body of ``export.py``."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from crackseg.inference.onnx import export_onnx
from crackseg.inference.predictor import load_model

log = logging.getLogger(__name__)


def export(cfg: DictConfig) -> Path:
    """Export the checkpoint ``cfg.ckpt`` to ``cfg.out`` (default ``<ckpt stem>.onnx`` beside it)."""
    if cfg.format != "onnx":
        raise ValueError(f"format must be onnx, got {cfg.format!r}")
    model = load_model(cfg.ckpt)
    out = Path(cfg.out) if cfg.out is not None else Path(cfg.ckpt).with_suffix(".onnx")
    export_onnx(model, out, cfg.opset)
    log.info("exported %s -> %s (threshold %.3f, tile %d)", cfg.ckpt, out, model.hparams.threshold, model.hparams.val_tile)
    return out
