"""Model export from a composed Hydra config: the body of ``export.py``."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from crackseg.inference.onnx import export_onnx
from crackseg.models.checkpoints import load_model, save_slim_checkpoint

log = logging.getLogger(__name__)


FORMATS = {"onnx": ".onnx", "fp16": ".fp16.ckpt"}


def export(cfg: DictConfig) -> Path:
    """Export the checkpoint ``cfg.ckpt`` to ``cfg.out`` (default beside it: ``<ckpt stem>.onnx``,
    or ``<ckpt stem>.fp16.ckpt`` for ``format=fp16``, the net's weights alone in half precision)."""
    if cfg.format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {cfg.format!r}")
    model = load_model(cfg.ckpt)
    out = Path(cfg.out) if cfg.out is not None else Path(cfg.ckpt).with_suffix(FORMATS[cfg.format])
    if cfg.format == "onnx":
        export_onnx(model, out, cfg.opset)
    else:
        save_slim_checkpoint(model, out)
    log.info("exported %s -> %s (threshold %.3f, tile %d)", cfg.ckpt, out, model.threshold, model.tile)
    return out
