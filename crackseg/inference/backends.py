"""The model predict.py and evaluate.py run: a checkpoint in PyTorch, or in ONNX Runtime on the
CPU (a file written by export.py, or a checkpoint exported once into a cache)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from crackseg.inference.onnx import OnnxModel, cached_export
from crackseg.inference.predictor import Predictor
from crackseg.models.checkpoints import CheckpointError, load_model
from crackseg.models.nets import CrackSegNet
from crackseg.models.thresholds import resolve_threshold

log = logging.getLogger(__name__)


def load_for_prediction(
    path: str | Path,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "fp32",
    compile: bool = False,
    onnx_cache: str | Path | None = None,
) -> CrackSegNet | OnnxModel:
    """The model predict.py and evaluate.py run. ``torch``: the checkpoint in PyTorch on ``device``.
    ``onnxruntime`` (CPU): a file written by export.py, or a checkpoint exported once into the
    folder ``onnx_cache`` (cached by its content). ``auto``: onnxruntime for a ``.onnx`` file and
    for a checkpoint run on the CPU in fp32 uncompiled when there is an ``onnx_cache`` (2.6x
    faster per photo, BENCHMARKS.md; PyTorch, with a warning, if the export fails), else torch."""
    if backend not in ("auto", "torch", "onnxruntime"):
        raise ValueError(f"backend must be auto, torch or onnxruntime, got {backend!r}")
    exported = Path(path).suffix.lower() == ".onnx"
    route = backend
    if backend == "auto":
        eager_cpu_fp32 = resolve_device(device).type == "cpu" and precision == "fp32" and not compile
        route = "onnxruntime" if exported or (eager_cpu_fp32 and onnx_cache is not None) else "torch"
    if route == "torch":
        return load_model(path, resolve_device(device))
    if device not in ("auto", "cpu"):
        raise ValueError(f"backend=onnxruntime runs on the CPU: use device=cpu or auto, not {device}")
    if exported:
        return OnnxModel(path)
    if onnx_cache is None:
        raise ValueError(f"backend=onnxruntime with a checkpoint needs an onnx_cache folder to export it to: {path}")
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return OnnxModel(cached_export(path, onnx_cache))
    except CheckpointError:  # a checkpoint crackseg cannot load, or an unreadable cached file: say which
        raise
    except Exception as err:  # noqa: BLE001 - any exporter or runtime failure: PyTorch still predicts
        if backend == "onnxruntime":
            raise
        log.warning("running PyTorch: the ONNX export of %s failed (%s: %s)", path, type(err).__name__, err)
        return load_model(path)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def predictor_from_config(cfg: DictConfig, cascade: bool = False) -> tuple[Predictor, float]:
    """The predictor of the inference options (conf/inference/default.yaml) and its threshold
    (given, else chosen on validation data at these scales, else the trained one); ``cascade``
    skips the tiles that cannot change the mask at that threshold."""
    model = load_for_prediction(cfg.ckpt, cfg.backend, cfg.device, cfg.precision, cfg.compile, cfg.onnx_cache)
    threshold = resolve_threshold(cfg.ckpt, model.threshold, cfg.threshold, cfg.scales)
    tile = int(cfg.tile if cfg.tile is not None else model.tile)
    predictor = Predictor(model, cfg.scales, tile, cfg.overlap, cfg.batch_size, cfg.blend, cfg.precision, cfg.compile,
                          cascade_threshold=threshold if cascade else None)
    return predictor, threshold
