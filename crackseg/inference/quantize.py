"""Static int8 quantisation of an exported model, for ONNX Runtime on the CPU.

ONNX Runtime's own quantiser (QDQ format, per-channel int8 weights, uint8 activations: its advice
for x86 CPUs with VNNI) calibrated once on training tiles. The calibration (activation ranges,
~25 KB) is stored beside the checkpoint as ``<ckpt stem>.int8-calibration.json``, so the int8
model is rebuilt from the checkpoint anywhere, without the data (1.25-1.6x faster per photo than
fp32 on the development CPU, Dice within 0.003 at the default scales: BENCHMARKS.md). Beside ONNX
Runtime's keys the file records the SHA-256 of the checkpoint it was made for (``model_sha256``,
as the threshold files do): a checkpoint retrained or replaced at the same path has other
activation ranges, so its stale calibration is not used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from crackseg.inference.onnx import INPUT_NAME, PRECISION_KEY, cached_export
from crackseg.io import atomic_write_bytes, file_digest, read_pair, rewrite_lock
from crackseg.models.checkpoints import CheckpointError
from crackseg.models.thresholds import MODEL_KEY

log = logging.getLogger(__name__)


def calibration_path(ckpt: str | Path) -> Path:
    """Where ``export.py format=int8`` stores a checkpoint's int8 calibration: beside it."""
    return Path(ckpt).with_suffix(".int8-calibration.json")


def cpu_has_vnni() -> bool:
    """Whether this CPU has 8-bit dot products (VNNI/AMX), where ONNX Runtime's uint8 x int8
    kernels cannot saturate; read from /proc/cpuinfo (False where there is none)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def calibration_tiles(pairs: list[tuple[Path, Path]], count: int, tile: int, seed: int = 0) -> np.ndarray:
    """``count`` RGB tiles ``(N, 3, tile, tile)`` float32 from the photos of ``pairs``: every
    other one centred on a crack pixel, the rest anywhere (padded where a photo is smaller)."""
    if not pairs:
        raise ValueError("no photos to calibrate the int8 model on")
    rng = np.random.default_rng(seed)
    tiles = []
    for index in rng.choice(len(pairs), size=count, replace=count > len(pairs)):
        photo, mask = read_pair(*pairs[index])
        pad = ((0, max(0, tile - photo.shape[0])), (0, max(0, tile - photo.shape[1])))
        photo, mask = np.pad(photo, (*pad, (0, 0)), mode="reflect"), np.pad(mask, pad)
        ys, xs = np.nonzero(mask)
        if len(tiles) % 2 == 0 and len(ys):
            pick = rng.integers(len(ys))
            y, x = ys[pick] - tile // 2, xs[pick] - tile // 2
        else:
            y, x = rng.integers(photo.shape[0] - tile + 1), rng.integers(photo.shape[1] - tile + 1)
        y, x = int(np.clip(y, 0, photo.shape[0] - tile)), int(np.clip(x, 0, photo.shape[1] - tile))
        tiles.append(photo[y : y + tile, x : x + tile].transpose(2, 0, 1))
    return np.stack(tiles).astype(np.float32)


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


def _quantize(fp32: Path, out: Path, calibration: Path, tiles: np.ndarray | None = None) -> None:
    """ONNX Runtime's static quantisation of ``fp32`` into ``out``: calibrated on ``tiles`` into
    the ``calibration`` file, or from that file alone when no tiles are given."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(tiles, max(1, len(tiles) // 8)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    root = logging.getLogger()
    advice = _DropAdvice()  # ORT's advice to pre-process: measured, it changes nothing on this graph
    root.addFilter(advice)
    try:
        with tempfile.TemporaryDirectory() as tmp:  # out appears only whole (atomic_write_bytes)
            quantized = Path(tmp) / "int8.onnx"
            quantize_static(str(fp32), str(quantized), Batches() if tiles is not None else None,
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            calibration_cache_path=calibration)
            model = onnx.load(quantized)
    finally:
        root.removeFilter(advice)
    source = onnx.load(fp32, load_external_data=False)  # the quantiser drops the metadata (threshold, tile)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in source.metadata_props}, PRECISION_KEY: "int8"})
    atomic_write_bytes(out, model.SerializeToString())


def calibrate(fp32: str | Path, tiles: np.ndarray, calibration: str | Path, out: str | Path, ckpt: str | Path) -> Path:
    """Calibrate the exported ``fp32`` model of checkpoint ``ckpt`` on ``tiles``: the ranges go to
    ``calibration`` (marked with the checkpoint's hash), the int8 model to ``out``."""
    calibration, out = Path(calibration), Path(out)
    with tempfile.TemporaryDirectory() as tmp:  # a fresh file: the quantiser would reuse an existing one
        ranges = Path(tmp) / calibration.name
        _quantize(Path(fp32), out, ranges, tiles)
        stored = {**json.loads(ranges.read_text()), MODEL_KEY: [file_digest(ckpt)]}
        atomic_write_bytes(calibration, json.dumps(stored).encode())  # the old calibration stays until then
    return out


def _read_calibration(calibration: Path) -> dict:
    try:
        stored = json.loads(calibration.read_text())
        if not isinstance(stored, dict) or not isinstance(stored.get(MODEL_KEY, []), list):
            raise ValueError(f"{MODEL_KEY} must be a list of file hashes")
        return stored
    except (OSError, ValueError) as err:
        raise CheckpointError(f"unreadable int8 calibration {calibration}: {err}") from err


def _made_for(stored: dict, ckpt: str | Path) -> bool:
    """Whether the calibration ``stored`` was made for the weights ``ckpt`` holds (one without hashes: any)."""
    return MODEL_KEY not in stored or file_digest(ckpt) in stored[MODEL_KEY]


def valid_calibration(ckpt: str | Path) -> dict | None:
    """The int8 calibration stored beside ``ckpt`` when it was made for the weights ``ckpt`` holds
    (or records none), else None (a stale one with a warning); CheckpointError when unreadable."""
    source = calibration_path(ckpt)
    if not source.is_file():
        return None
    stored = _read_calibration(source)
    if not _made_for(stored, ckpt):
        log.warning("%s was made for other weights than %s holds now (retrained or replaced): not used", source, ckpt)
        return None
    return stored


def carry_calibration(ckpt: str | Path, export: str | Path, stored: dict | None) -> Path | None:
    """Make ``stored``, the calibration valid for ``ckpt`` (``valid_calibration``, read before
    ``export`` was written), apply to that export of the same weights in fp16 too (activation ranges
    move by fp16 rounding only): beside it, marked with its hash, or, sharing the file, its hash
    added. Without one, an earlier export's calibration there is removed (it would apply to this
    model). Returns the file, or None."""
    source, target = calibration_path(ckpt), calibration_path(export)
    with rewrite_lock(target):  # sharing the file, an int8 export may be rewriting it
        if source.resolve() == target.resolve():
            current = _read_calibration(target) if stored is not None else {}
            if MODEL_KEY in current:  # one without hashes applies to any weights already
                hashes = sorted({*current[MODEL_KEY], file_digest(export)})
                atomic_write_bytes(target, json.dumps({**current, MODEL_KEY: hashes}).encode())
            return target if stored is not None else None
        if stored is not None:
            atomic_write_bytes(target, json.dumps({**stored, MODEL_KEY: [file_digest(export)]}).encode())
            return target
        if target.is_file():
            target.unlink()
            log.warning("removed %s, an earlier export's int8 calibration: %s has no valid one", target, ckpt)
    return None


def quantize(fp32: str | Path, calibration: str | Path, out: str | Path) -> Path:
    """The int8 model of the exported ``fp32`` model from a stored ``calibration``, into ``out``;
    a calibration made for another model is refused."""
    import onnx

    fp32, calibration = Path(fp32), Path(calibration)
    ranges = _read_calibration(calibration).get("data")
    graph = onnx.load(fp32, load_external_data=False).graph
    tensors = {name for node in graph.node for name in node.output} | {i.name for i in graph.input}
    if not isinstance(ranges, dict) or not ranges or not set(ranges) <= tensors:
        raise CheckpointError(f"the int8 calibration {calibration} was made for another model than {fp32} "
                              f"(make it again: python export.py ckpt=... format=int8 data=...)")
    _quantize(fp32, Path(out), calibration)
    return Path(out)


def cached_int8(ckpt: str | Path, cache_dir: str | Path) -> Path:
    """The int8 ONNX model of checkpoint ``ckpt`` in ``cache_dir``, made on first use from its
    fp32 export and the calibration stored beside it (named by the hashes of both)."""
    calibration = calibration_path(ckpt)
    if not calibration.is_file():
        raise CheckpointError(f"precision=int8 needs the int8 calibration of {ckpt}, {calibration} is missing "
                              f"(make it: python export.py ckpt={ckpt} format=int8 data=<its training data>)")
    if not _made_for(_read_calibration(calibration), ckpt):
        raise CheckpointError(f"the int8 calibration {calibration} was made for other weights than {ckpt} holds now "
                              f"(retrained or replaced): make it again: python export.py ckpt={ckpt} format=int8 "
                              f"data=<its training data>")
    fp32 = cached_export(ckpt, cache_dir)  # named by the checkpoint's hash already
    digest = hashlib.sha256(fp32.name.encode() + calibration.read_bytes()).hexdigest()[:24]
    path = Path(cache_dir) / f"{Path(ckpt).stem}-{digest}-int8.onnx"
    if not path.is_file():
        log.info("quantising %s to int8 once for CPU prediction: %s", ckpt, path)
        quantize(fp32, calibration, path)
    return path
