"""CPU routes for a trained model, side by side: seconds per photo and Dice change (issue 16, part 2).

    python bench/cpu_routes_bench.py [--ckpt models/crackseg-general.ckpt] [--rounds 3]
                                     [--photo-size 3000x2000] [--accuracy]

The int8 route needs the checkpoint's calibration (``python export.py ckpt=... format=int8
data=...``; the shipped model has it). Routes, each through the ``Predictor`` (scales [1]) on the
same crop of a cracksight val photo, rounds alternating (and reversed every other round) so that
load on the machine hits all alike:
- ``ort_fp32``: ONNX Runtime fp32, predict.py's CPU route before int8 (the reference);
- ``ort_fp32_1thread``, ``ort_fp32_batch1``, ``ort_fp32_batch16``: threads and batch size;
- ``ort_saved``: the graph optimised once (``ORT_ENABLE_EXTENDED``: the portable level), saved,
  and loaded with optimisation off;
- ``ort_int8``, ``ort_int8_batch16``: the static int8 model (``crackseg.inference.quantize``);
- ``torch_fp32``, ``torch_bf16``: PyTorch eager (channels_last), fp32 and bf16 autocast.
Per route: median seconds, speed-up against ``ort_fp32`` (> 1: faster), session set-up seconds,
and on 16 val tiles the largest probability difference from ``ort_fp32`` and the share of pixels
whose mask changes at the multi-scale threshold. ``--accuracy`` runs evaluate.py's ``evaluate``
for ``ort_fp32``, ``ort_int8`` and ``torch_bf16`` on cracksight val and deepcrack test at the
stored thresholds (scales [1], and 1/2/0.5 for the ONNX Runtime routes): Dice and its change.
The LAST line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from crackseg.data.folder import split_sources  # noqa: E402
from crackseg.inference.onnx import OnnxModel, cached_export  # noqa: E402
from crackseg.inference.predictor import Predictor  # noqa: E402
from crackseg.inference.quantize import cached_int8, calibration_tiles  # noqa: E402
from crackseg.io import read_photo  # noqa: E402
from crackseg.models.checkpoints import load_model  # noqa: E402
from crackseg.models.thresholds import read_thresholds  # noqa: E402

CACHE = ROOT / ".cache" / "onnx"


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=overrides)


def onnx_model(path: Path, threads: int = 0, optimise: bool = True) -> tuple[OnnxModel, float]:
    """``path`` in a session of its own options, and the seconds that session took to set up."""
    model = OnnxModel(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    started = time.perf_counter()
    model.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return model, time.perf_counter() - started


def saved_optimised(fp32: Path, folder: Path) -> Path:
    path = folder / "optimised.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"])
    return path


def speed(ckpt: Path, photo: np.ndarray, tiles: np.ndarray, threshold: float, rounds: int, folder: Path) -> dict:
    fp32, int8 = cached_export(ckpt, CACHE), cached_int8(ckpt, CACHE)
    net = load_model(ckpt)
    models = {"ort_fp32": onnx_model(fp32), "ort_fp32_1thread": onnx_model(fp32, threads=1),
              "ort_saved": onnx_model(saved_optimised(fp32, folder), optimise=False), "ort_int8": onnx_model(int8)}
    predictors = {name: Predictor(model, [1], net.tile) for name, (model, _) in models.items()}
    predictors["ort_fp32_batch1"] = Predictor(models["ort_fp32"][0], [1], net.tile, batch_size=1)
    predictors["ort_fp32_batch16"] = Predictor(models["ort_fp32"][0], [1], net.tile, batch_size=16)
    predictors["ort_int8_batch16"] = Predictor(models["ort_int8"][0], [1], net.tile, batch_size=16)
    predictors["torch_fp32"] = Predictor(net, [1], net.tile)
    predictors["torch_bf16"] = Predictor(net, [1], net.tile, precision="bf16")
    times: dict[str, list[float]] = {name: [] for name in predictors}
    order = list(predictors)
    for name in order:  # warm-up
        predictors[name](photo[:512, :512])
    for round_ in range(rounds):
        for name in order if round_ % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            predictors[name](photo)
            times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(t) for name, t in times.items()}
    batch = torch.from_numpy(tiles)
    with torch.no_grad():
        expected = predictors["ort_fp32"]._predict_tiles(batch).numpy()
        outputs = {name: p._predict_tiles(batch).numpy() for name, p in predictors.items()}
    routes = {}
    for name, seconds in median.items():
        diff = np.abs(outputs[name] - expected)
        changed = (outputs[name] >= threshold) != (expected >= threshold)
        routes[name] = {"photo_s": round(seconds, 2), "speedup": round(median["ort_fp32"] / seconds, 2),
                        "max_prob_diff": float(f"{diff.max():.3g}"), "mask_px_changed": float(f"{changed.mean():.3g}")}
        if name in models:
            routes[name]["session_s"] = round(models[name][1], 3)
    return routes


def accuracy(ckpt: Path, out: Path) -> dict:
    """Dice and wall time of evaluate.py per route; the mask as the model gives it (keep_joints=true:
    the joint rule's measurement would dilute the speed-ups)."""
    routes = {"ort_fp32": ["precision=fp32"], "ort_int8": ["precision=int8"], "torch_bf16": ["backend=torch", "precision=bf16"]}
    results: dict[str, dict] = {}
    from crackseg.tasks.evaluate import evaluate

    for data, split in (("cracksight", "val"), ("deepcrack", "test")):
        for scales in ("1", "1,2,0.5"):
            row = results.setdefault(f"{data}_{split}@{scales}", {})
            for route, options in routes.items():
                if route.startswith("torch") and scales != "1":
                    continue  # eager PyTorch is slower: one scale shows its numerics
                output = out / f"{route}-{data}-{scales.count(',') + 1}scales"
                cfg = _compose("evaluate", [f"ckpt={ckpt}", f"data={data}", f"data.split={split}", f"scales=[{scales}]",
                                            "save_threshold=false", f"output={output}", "keep_joints=true",
                                            "upscale_below_px=null", *options])
                started = time.perf_counter()
                dice = evaluate(cfg)["dice"]
                row[route] = {"dice": round(dice, 4), "seconds": round(time.perf_counter() - started, 1)}
            for entry in row.values():
                entry["dice_change"] = round(entry["dice"] - row["ort_fp32"]["dice"], 4)
                entry["speedup"] = round(row["ort_fp32"]["seconds"] / entry["seconds"], 2)
    return results


def main(args: argparse.Namespace) -> dict:
    ckpt = Path(args.ckpt)
    val = split_sources(_compose("evaluate", ["data=cracksight"]).data, "val")["data"]
    width, height = map(int, args.photo_size.split("x"))
    photo = read_photo(val[0][0])[:height, :width]
    tiles = calibration_tiles(val, 16, load_model(ckpt).tile, seed=1)
    threshold = read_thresholds(ckpt)["1,2,0.5"]["threshold"]
    with tempfile.TemporaryDirectory() as tmp:
        routes = speed(ckpt, photo, tiles, threshold, args.rounds, Path(tmp))
    result = {"ckpt": str(ckpt), "photo": [*photo.shape[:2]], "rounds": args.rounds, "threshold": threshold,
              "onnxruntime": ort.__version__, "torch_threads": torch.get_num_threads(), "routes": routes}
    if args.accuracy:
        result["accuracy"] = accuracy(ckpt, Path(args.out))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=str(ROOT / "models" / "crackseg-general.ckpt"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--photo-size", default="3000x2000", help="WxH crop of the first cracksight val photo")
    parser.add_argument("--accuracy", action="store_true", help="also Dice on cracksight val and deepcrack test")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "cpu_routes"), help="evaluate.py reports (--accuracy)")
    print(json.dumps(main(parser.parse_args())))
