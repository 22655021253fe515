"""The model predict.py and evaluate.py run: a checkpoint in PyTorch, or in ONNX Runtime on the
CPU (a file written by export.py, or a checkpoint exported once into a cache, in fp32 or int8)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig

from crackseg.inference.onnx import OnnxModel, cached_export
from crackseg.inference.predictor import Predictor
from crackseg.inference.quantize import cached_int8, calibration_path, cpu_has_vnni
from crackseg.models.checkpoints import CheckpointError, load_model
from crackseg.models.nets import CrackSegNet
from crackseg.models.thresholds import key_scales, read_thresholds, resolve_threshold, scales_key
from crackseg.options import OptionError, check_tile_scales

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
    for a checkpoint run on the CPU uncompiled in fp32 or int8 when there is an ``onnx_cache``
    (2.6x faster per photo, BENCHMARKS.md; PyTorch, with a warning, if the export fails), else torch.
    ``precision=int8``: the checkpoint quantised in ONNX Runtime from the calibration stored beside
    it; ``auto``: int8 where that is possible and the CPU has VNNI (1.25-1.6x faster), else fp32."""
    if backend not in ("auto", "torch", "onnxruntime"):
        raise ValueError(f"backend must be auto, torch or onnxruntime, got {backend!r}")
    exported = Path(path).suffix.lower() == ".onnx"
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    chosen = precision
    if precision == "auto":
        int8 = (on_cpu and backend != "torch" and not exported and not compile and onnx_cache is not None
                and calibration_path(path).is_file() and cpu_has_vnni())
        chosen = "int8" if int8 else "fp32"
    route = backend
    if backend == "auto":
        eager_cpu = on_cpu and chosen in ("fp32", "int8") and not compile
        route = "onnxruntime" if exported or (eager_cpu and onnx_cache is not None) else "torch"
    if chosen == "int8" and (route == "torch" or exported or compile):
        raise ValueError("precision=int8 quantises a checkpoint for ONNX Runtime on the CPU (backend=auto or "
                         "onnxruntime, compile=false); an .onnx file runs as it was exported")
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
    if chosen == "int8":
        try:
            return OnnxModel(cached_int8(path, onnx_cache))
        except CheckpointError as err:
            if precision == "int8":
                raise
            log.warning("running fp32: %s", err)
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
    chosen = torch.device(device)
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise OptionError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                          f"(use device=cpu or auto)")
    return chosen


def predictor_from_config(cfg: DictConfig) -> tuple[Predictor, PhotoThresholds]:
    """The predictor of the inference options (conf/inference/default.yaml) and each photo's
    threshold: given, else the one chosen on validation data at the scales it is predicted at, else
    the trained one."""
    model = load_for_prediction(cfg.ckpt, cfg.backend, cfg.device, cfg.precision, cfg.compile, cfg.onnx_cache)
    tile = int(cfg.tile if cfg.tile is not None else model.tile)
    check_tile_scales(tile, cfg.scales, "" if cfg.tile is not None else f" of {cfg.ckpt}")
    precision = None if cfg.precision == "auto" else cfg.precision  # None: the model's own (ONNX), or fp32
    predictor = Predictor(model, cfg.scales, tile, cfg.overlap, cfg.batch_size, cfg.blend, precision, cfg.compile,
                          cfg.upscale_below_px)
    stored = read_thresholds(cfg.ckpt) if cfg.threshold is None else {}  # read once: an unreadable file stops here
    embedded = getattr(model, "thresholds", None)
    return predictor, PhotoThresholds(
        predictor, lambda scales: resolve_threshold(cfg.ckpt, model.threshold, cfg.threshold, scales, embedded, stored))


class PhotoThresholds:
    """A photo's threshold: that of the scales ``predictor`` predicts a photo of its size at, resolved
    once per scale set when a photo first needs it (a warning about a missing one names a set in use)."""

    def __init__(self, predictor: Predictor, resolve: Callable[[list[float]], float]):
        self.predictor, self._resolve = predictor, resolve
        self.used: dict[str, float] = {}  # by scales key

    def __call__(self, height: int, width: int) -> float:
        key = scales_key(self.predictor.scales_for(height, width))
        if key not in self.used:
            self.used[key] = self._resolve(key_scales(key))
        return self.used[key]
