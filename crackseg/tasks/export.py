"""Model export from a composed Hydra config: the body of ``export.py``."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from crackseg.inference.onnx import export_onnx
from crackseg.inference.quantize import (
    calibrate, calibration_path, calibration_tiles, carry_calibration, valid_calibration,
)
from crackseg.models.checkpoints import load_model, save_slim_checkpoint
from crackseg.models.thresholds import carry_thresholds, find_entry, read_thresholds

log = logging.getLogger(__name__)


FORMATS = {"onnx": ".onnx", "fp16": ".fp16.ckpt", "int8": ".int8.onnx"}
DEFAULT_SCALES = (1, 2, 0.5)  # prediction's default scales: the threshold logged


def export(cfg: DictConfig) -> Path:
    """Export the checkpoint ``cfg.ckpt`` to ``cfg.out`` (default beside it: ``<ckpt stem>.onnx``,
    ``<ckpt stem>.fp16.ckpt`` for ``format=fp16``, the net's weights alone in half precision (with
    the checkpoint's int8 calibration, if any), or
    ``<ckpt stem>.int8.onnx`` for ``format=int8``, calibrated on train tiles of ``cfg.data``; its
    calibration is also stored beside the checkpoint, where precision=auto|int8 finds it).
    The thresholds chosen on validation go with it (``<out stem>.threshold.json``, and in an ONNX
    file's metadata)."""
    if cfg.format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {cfg.format!r}")
    if cfg.format == "int8" and cfg.get("data") is None:
        raise ValueError("format=int8 calibrates on training tiles: name the model's training data, e.g. data=general")
    out = Path(cfg.out) if cfg.out is not None else Path(cfg.ckpt).with_suffix(FORMATS[cfg.format])
    if out.resolve() == Path(cfg.ckpt).resolve():
        raise ValueError(f"out={out} is the checkpoint itself: an export would overwrite it, choose another path")
    model = load_model(cfg.ckpt)
    chosen = read_thresholds(cfg.ckpt)  # read (and checked) before anything is written
    # an fp16 checkpoint keeps its source's int8 calibration, so precision=auto still runs it in
    # int8 where the CPU has VNNI
    calibration = valid_calibration(cfg.ckpt) if cfg.format == "fp16" else None
    thresholds = {key: entry["threshold"] for key, entry in chosen.items()}
    if cfg.format == "onnx":
        export_onnx(model, out, cfg.opset, thresholds=thresholds)
    elif cfg.format == "int8":
        _export_int8(cfg, model, out, thresholds)
    else:
        save_slim_checkpoint(model, out)
        if carry_calibration(cfg.ckpt, out, calibration):
            log.info("int8 calibration -> beside %s", out)
    if carry_thresholds(cfg.ckpt, out):
        log.info("thresholds chosen on validation -> beside %s", out)
    default = find_entry(chosen, DEFAULT_SCALES)
    log.info("exported %s -> %s (threshold %.3f at scales %s, tile %d)", cfg.ckpt, out,
             chosen[default]["threshold"] if default else model.threshold, list(DEFAULT_SCALES), model.tile)
    return out


def _export_int8(cfg: DictConfig, model, out: Path, thresholds: dict[str, float]) -> None:
    from crackseg.data.folder import split_pairs

    pairs = split_pairs(cfg.data, "train")
    tiles = calibration_tiles(pairs, cfg.calibration_tiles, model.tile)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", cfg.opset, thresholds=thresholds)
        calibrate(fp32, tiles, calibration_path(cfg.ckpt), out, cfg.ckpt)
    log.info("int8 calibration on %d train tiles of %d photos: %s", len(tiles), len(pairs), calibration_path(cfg.ckpt))
