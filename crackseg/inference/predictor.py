"""The multi-scale predictor: crack probabilities of whole photos from a model of any backend."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

from crackseg.tiling import TileCounts, count_tiles, sliding_window


class CrackModel(Protocol):
    """What :class:`Predictor` runs: ``crackseg.models.nets.CrackSegNet`` (PyTorch) or
    ``crackseg.inference.onnx.OnnxModel`` (ONNX Runtime). Called on RGB tiles ``(N, 3, H, W)``
    in [0, 255], returns crack probabilities ``(N, 1, H, W)``; ``threshold`` and ``tile``: those
    it was trained with."""

    device: torch.device
    threshold: float
    tile: int

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor: ...


class Predictor:
    """Crack probability ``(H, W)`` float32 of an RGB ``uint8`` photo: the mean over ``scales``
    of gaussian-blended sliding-window predictions, each brought back to source resolution.
    ``upscale_below_px``: a photo whose shorter side has at least that many pixels is predicted at
    the scales up to 1 only (:meth:`scales_for`; None: every photo at every scale).
    ``precision``: autocast for a PyTorch model (default fp32); an exported (ONNX) model runs in
    its own precision (fp32 or int8), uncompiled, on full batches (one input shape)."""

    def __init__(
        self,
        model: CrackModel,
        scales: Sequence[float] = (1, 2, 0.5),
        tile: int = 256,
        overlap: float = 0.25,
        batch_size: int = 8,
        blend: str = "gaussian",
        precision: str | None = None,
        compile: bool = False,
        upscale_below_px: int | None = None,
    ):
        self.exported = not isinstance(model, nn.Module)
        precision = precision or (model.precision if self.exported else "fp32")
        if self.exported and (precision != model.precision or compile):
            raise ValueError(f"an exported (ONNX) model runs in its own precision ({model.precision}) with compile=false")
        if not self.exported and precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16 (autocast), got {precision!r}")
        self.model = model
        self.device = model.device
        self.scales, self.tile, self.overlap = list(scales), tile, overlap
        self.batch_size, self.blend, self.precision = batch_size, blend, precision
        self.upscale_below_px = upscale_below_px
        # one input shape where a new shape costs: compiling, ONNX Runtime, cuDNN's kernel choice
        self.full_batches = compile or self.exported or self.device.type == "cuda"
        self._forward = model
        if compile:  # inductor with frozen weights (BN folded): one compile per process, then faster tiles
            self._forward = torch.compile(model, dynamic=False, options={"freezing": True})

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def _predict_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self._forward(tiles).float()

    @property
    def splits_by_size(self) -> bool:
        """Whether photos of different sizes get different scales (see :meth:`scales_for`)."""
        return (self.upscale_below_px is not None and any(s > 1 for s in self.scales)
                and any(s <= 1 for s in self.scales))

    def describe_scales(self) -> str:
        """For logs: the scales, and which photos get those above 1."""
        if not self.splits_by_size:
            return str(self.scales)
        return f"{self.scales} (those above 1 only on photos whose shorter side is under {self.upscale_below_px} px)"

    def scales_for(self, height: int, width: int) -> list[float]:
        """The scales a photo of this size is predicted at: without those above 1 when its shorter
        side reaches ``upscale_below_px`` (unless no other scale is left, or none is above 1)."""
        if not self.splits_by_size or min(height, width) < self.upscale_below_px:
            return self.scales
        return [s for s in self.scales if s <= 1]

    def tiles_for(self, height: int, width: int) -> int:
        """How many tiles a photo of this size costs over its scales (for progress bars)."""
        return count_tiles(height, width, self.tile, self.overlap, self.scales_for(height, width))

    @torch.no_grad()
    def __call__(self, photo: np.ndarray, progress: Callable[[int], None] | None = None,
                 counts: TileCounts | None = None, cascade_threshold: float | None = None) -> np.ndarray:
        """``cascade_threshold``: skip the tiles that cannot change ``prob >= threshold`` (exact; the
        probability is then exact only where it can reach the threshold, see ``sliding_window``)."""
        image = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1).to(self.device)
        prob = sliding_window(image, self._predict_tiles, self.tile, self.overlap, self.batch_size, self.blend,
                              self.scales_for(*photo.shape[:2]), progress, self.full_batches, cascade_threshold, counts)
        return prob[0].cpu().numpy()
