"""Export a trained model to ONNX, and run the exported model with ONNX Runtime on the CPU.

The exported graph is :class:`CrackSegNet`'s forward: float tiles ``(N, 3, H, W)`` in [0, 255] in,
crack probabilities ``(N, 1, H, W)`` out (normalisation and sigmoid inside), with dynamic N, H
and W. The model's threshold and tile size (and ``int8`` for a quantised one) travel as ONNX
metadata (``metadata_props``), with the thresholds chosen on validation per scale set when the
export had them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from crackseg.io import atomic_write_bytes, file_digest
from crackseg.models.checkpoints import CheckpointError, load_model
from crackseg.models.nets import CrackSegNet
from crackseg.models.thresholds import check_key

log = logging.getLogger(__name__)

THRESHOLD_KEY, TILE_KEY, PRECISION_KEY = "crackseg.threshold", "crackseg.tile", "crackseg.precision"
THRESHOLDS_KEY = "crackseg.thresholds"  # {scales key: threshold chosen on validation} (crackseg.models.thresholds)
INPUT_NAME, OUTPUT_NAME = "tiles", "probabilities"


def export_onnx(model: CrackSegNet, path: str | Path, opset: int = 18, atol: float = 1e-4,
                thresholds: dict[str, float] | None = None) -> Path:
    """Write ``model`` to ``path`` as ONNX (torch.export-based exporter) with its trained threshold,
    its tile and ``thresholds`` (chosen on validation, by scales key) as metadata; the file is
    checked against PyTorch on a tile of another size first."""
    import onnx

    logging.getLogger("onnx_ir.passes.common.initializer_deduplication").setLevel(logging.WARNING)  # a line per weight
    path, tile = Path(path), model.tile
    model = model.cpu().eval()
    example = torch.rand(2, 3, tile, tile, generator=torch.Generator().manual_seed(0)) * 255
    dynamic = torch.export.Dim.DYNAMIC
    program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes={"tiles": {0: dynamic, 2: dynamic, 3: dynamic}}, verbose=False)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {THRESHOLD_KEY: repr(float(model.threshold)), TILE_KEY: str(tile),
                                        **({THRESHOLDS_KEY: json.dumps(thresholds)} if thresholds else {})})
    data = proto.SerializeToString()
    check = torch.rand(1, 3, tile - 3, tile + 5, generator=torch.Generator().manual_seed(1)) * 255  # another batch, height and width
    with torch.no_grad():
        expected = model(check).numpy()
    error = float(np.abs(OnnxModel.from_bytes(data, path).run(check.numpy()) - expected).max())
    if not error <= atol:
        raise RuntimeError(f"the exported model differs from PyTorch by {error:.2g} (> {atol}): {path}")
    atomic_write_bytes(path, data)
    return path


def cached_export(ckpt: str | Path, cache_dir: str | Path) -> Path:
    """The ONNX file of checkpoint ``ckpt`` in ``cache_dir``, exported on first use and named by
    the hash of the checkpoint's bytes (a changed checkpoint is exported again); its metadata
    holds the trained threshold (the ones chosen on validation stay beside the checkpoint)."""
    path = Path(cache_dir) / f"{Path(ckpt).stem}-{file_digest(ckpt)}.onnx"
    if not path.is_file():
        model = load_model(ckpt)
        log.info("exporting %s to ONNX once for CPU prediction (about a minute; backend=torch skips it): %s", ckpt, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(model, path)
    return path


class OnnxModel:
    """An exported crackseg model in an ONNX Runtime session (CPU), called like the
    :class:`CrackSegNet` it was exported from (tensors in and out), so :class:`Predictor` runs it."""

    device = torch.device("cpu")

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"ONNX model not found: {path}")
        self._init(path.read_bytes(), path)

    @classmethod
    def from_bytes(cls, data: bytes, path: str | Path) -> OnnxModel:
        model = cls.__new__(cls)
        model._init(data, Path(path))
        return model

    def _init(self, data: bytes, path: Path) -> None:
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT raises its own classes for every kind of bad file
            raise CheckpointError(f"not a readable ONNX model: {path} ({err})") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        inputs = self.session.get_inputs()
        if THRESHOLD_KEY not in meta or TILE_KEY not in meta or [i.name for i in inputs] != [INPUT_NAME]:
            raise CheckpointError(f"not an ONNX model exported by crackseg (export.py): {path}")
        self.threshold, self.tile = float(meta[THRESHOLD_KEY]), int(meta[TILE_KEY])
        try:
            self.thresholds = {str(k): float(t) for k, t in json.loads(meta.get(THRESHOLDS_KEY, "{}")).items()}
            for key in self.thresholds:
                check_key(key)  # a scales key, or an older threshold file's one for any scales
        except (ValueError, TypeError, AttributeError) as err:
            raise CheckpointError(f"unreadable {THRESHOLDS_KEY} metadata in {path}: {err}") from err
        self.precision = meta.get(PRECISION_KEY, "fp32")

    def run(self, tiles: np.ndarray) -> np.ndarray:
        return self.session.run(None, {INPUT_NAME: np.ascontiguousarray(tiles, dtype=np.float32)})[0]

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(tiles.cpu().numpy()))
