"""Load a trained checkpoint and predict crack probabilities of whole photos at several scales."""

from __future__ import annotations

import contextlib
import io
import pickle
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from crackseg.inference.tiling import TileCounts, count_tiles, sliding_window
from crackseg.io import atomic_write_bytes

if TYPE_CHECKING:
    from crackseg.inference.onnx import OnnxModel
    from crackseg.models.module import CrackSegModule

log = logging.getLogger(__name__)

_MODULE_KEYS = ("threshold", "mean", "std", "val_tile", "val_overlap", "val_batch_size", "channels_last")


class CheckpointError(ValueError):
    """A checkpoint that is missing or was not written by crackseg's training."""


def load_model(path: str | Path, device: str | torch.device = "cpu") -> CrackSegModule:
    """The trained module of a checkpoint, in eval mode on ``device``; the net is rebuilt from
    the config stored in it, so no training config is needed. Its threshold is the trained one
    (the ones chosen on validation data: :mod:`crackseg.models.thresholds`)."""
    from crackseg.models.module import CrackSegModule  # imports Lightning (0.26 GiB RSS): only when needed

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise CheckpointError(f"not a readable PyTorch checkpoint: {path} ({err})") from err
        raise CheckpointError(f"{path} holds Python objects beyond weights and settings, which would run code "
                              f"when loaded: crackseg does not load such files") from None
    except Exception as err:  # noqa: BLE001 - any other unpickling failure means the same to the user
        raise CheckpointError(f"not a readable PyTorch checkpoint: {path} ({err})") from err
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if not hparams.get("net_config") or "state_dict" not in checkpoint:
        raise CheckpointError(f"not a crackseg checkpoint (no net_config or state_dict): {path}")
    net_config = OmegaConf.create(hparams["net_config"])
    if "encoder_weights" in net_config:
        net_config.encoder_weights = None  # the checkpoint has them all: never download or load twice
    try:
        net = hydra.utils.instantiate(net_config)
    except Exception as err:  # noqa: BLE001 - an unknown class or argument: the checkpoint does not fit this code
        raise CheckpointError(f"cannot build the net stored in {path}: {err}") from err
    module = CrackSegModule(net=net, loss=nn.Identity(), optimizer=None, net_config=hparams["net_config"],
                            **{k: hparams[k] for k in _MODULE_KEYS if k in hparams})
    weights = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    try:
        module.load_state_dict(weights, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint weights do not fit its net config: {path}\n{err}") from err
    missing = [k for k in module.state_dict() if k.startswith("net.") and k not in weights]
    if missing:
        raise CheckpointError(f"checkpoint lacks {len(missing)} weights of its net, e.g. {missing[0]}: {path}")
    return module.eval().to(device)


def save_slim_checkpoint(model: CrackSegModule, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """What prediction needs of ``model`` and nothing more: its net's weights (in ``dtype``,
    half the size in fp16) and the settings :func:`load_model` reads (no optimizer, no training
    state). For shipping a trained model; :func:`load_model` reads it like any checkpoint."""
    hparams = {k: model.hparams[k] for k in (*_MODULE_KEYS, "net_config") if k in model.hparams}
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items() if k.startswith("net.")}
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": hparams, "state_dict": state}, buffer)
    atomic_write_bytes(path, buffer.getbuffer())
    return Path(path)


def load_for_prediction(
    path: str | Path,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "fp32",
    compile: bool = False,
    onnx_cache: str | Path | None = None,
) -> CrackSegModule | OnnxModel:
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
    from crackseg.inference.onnx import OnnxModel, cached_export

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


class Predictor:
    """Crack probability ``(H, W)`` float32 of an RGB ``uint8`` photo: the mean over ``scales``
    of gaussian-blended sliding-window predictions, each brought back to source resolution.
    ``cascade_threshold``: skip the tiles that cannot change ``prob >= threshold`` (exact; the
    probability is then exact only where it can reach the threshold, see ``sliding_window``).
    ``model`` is a :class:`CrackSegModule` or an exported one (``crackseg.inference.onnx.OnnxModel``),
    which runs in fp32, uncompiled, on full batches (one input shape)."""

    def __init__(
        self,
        model: CrackSegModule | OnnxModel,
        scales: Sequence[float] = (1, 2, 0.5),
        tile: int = 256,
        overlap: float = 0.25,
        batch_size: int = 8,
        blend: str = "gaussian",
        precision: str = "fp32",
        compile: bool = False,
        cascade_threshold: float | None = None,
    ):
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        self.exported = not isinstance(model, nn.Module)
        if self.exported and (precision != "fp32" or compile):
            raise ValueError("an exported (ONNX) model runs in precision=fp32 with compile=false")
        self.model = model
        self.device = model.device
        self.scales, self.tile, self.overlap = list(scales), tile, overlap
        self.batch_size, self.blend, self.precision = batch_size, blend, precision
        self.cascade_threshold = cascade_threshold
        # one input shape where a new shape costs: compiling, ONNX Runtime, cuDNN's kernel choice
        self.full_batches = compile or self.exported or self.device.type == "cuda"
        self._forward = model.predict_probabilities
        if compile:  # inductor with frozen weights (BN folded): one compile per process, then faster tiles
            self._forward = torch.compile(model.predict_probabilities, dynamic=False, options={"freezing": True})

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def _predict_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self._forward(tiles).float()

    def tiles_for(self, height: int, width: int) -> int:
        """How many tiles a photo of this size costs over all scales (for progress bars)."""
        return count_tiles(height, width, self.tile, self.overlap, self.scales)

    @torch.no_grad()
    def __call__(self, photo: np.ndarray, progress: Callable[[int], None] | None = None,
                 counts: TileCounts | None = None) -> np.ndarray:
        image = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1).to(self.device)
        prob = sliding_window(image, self._predict_tiles, self.tile, self.overlap, self.batch_size,
                              self.blend, self.scales, progress, self.full_batches, self.cascade_threshold, counts)
        return prob[0].cpu().numpy()
