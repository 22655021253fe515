"""ONNX Runtime against PyTorch eager (channels_last, as ``Predictor`` runs it) on the CPU.

    python bench/onnx_bench.py [--model unet] [--batch-size 8] [--tile 256] [--rounds 5]
                               [--photo 1024x768] [--scales 1] [--compile]

The composed ``conf/model/<model>.yaml`` with random weights (speed does not depend on them)
is exported with ``export_onnx``; then, in this one process, rounds alternate between the two
backends so that load on the machine hits both alike: per round one batch of random tiles
through each, and (``--photo``, ``0`` to skip) the whole ``Predictor`` on one random photo.
Ratios are PyTorch time / ONNX Runtime time (> 1: ONNX Runtime is faster), from the medians.
``--compile`` adds the batch through ``Predictor(compile=True)``'s torch.compile'd model (its
compilation, minutes, is reported apart as ``compile_s``).
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

import hydra  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from crackseg.inference.onnx import OnnxModel, export_onnx  # noqa: E402
from crackseg.inference.predictor import Predictor  # noqa: E402


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(args: argparse.Namespace) -> dict:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}", f"data.tile={args.tile}"])
    model = hydra.utils.instantiate(cfg.model, net_config="").net.eval()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        onnx_model = OnnxModel(export_onnx(model, Path(tmp) / "model.onnx"))
        export_s = time.perf_counter() - started
    tiles = torch.rand(args.batch_size, 3, args.tile, args.tile, generator=torch.Generator().manual_seed(0)) * 255
    backends = {"torch": model, "onnxruntime": onnx_model}
    runs = {name: lambda m=m: m(tiles) for name, m in backends.items()}
    if args.compile:
        compiled = Predictor(model, compile=True)._forward
        with torch.no_grad():
            compile_s = _seconds(lambda: compiled(tiles))
        runs["torch_compiled"] = lambda: compiled(tiles)
    if args.photo != "0":
        width, height = map(int, args.photo.split("x"))
        photo = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        predictors = {name: Predictor(m, args.scales, args.tile, 0.25, args.batch_size) for name, m in backends.items()}
        runs.update({f"{name}_photo": lambda p=p: p(photo) for name, p in predictors.items()})
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for name, run in runs.items():  # warm-up
            run()
        for _ in range(args.rounds):
            for name, run in runs.items():
                times[name].append(_seconds(run))
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "model": args.model, "batch": [args.batch_size, 3, args.tile, args.tile], "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(), "onnxruntime_version": __import__("onnxruntime").__version__,
        "export_s": round(export_s, 1),
        "torch_batch_s": round(median["torch"], 3), "onnxruntime_batch_s": round(median["onnxruntime"], 3),
        "batch_speedup": round(median["torch"] / median["onnxruntime"], 2),
    }
    if args.compile:
        result.update({"compile_s": round(compile_s, 1), "torch_compiled_batch_s": round(median["torch_compiled"], 3),
                       "compiled_batch_speedup": round(median["torch"] / median["torch_compiled"], 2)})
    if args.photo != "0":
        result.update({
            "photo": args.photo, "scales": args.scales, "tiles": predictors["torch"].tiles_for(height, width),
            "torch_photo_s": round(median["torch_photo"], 2), "onnxruntime_photo_s": round(median["onnxruntime_photo"], 2),
            "photo_speedup": round(median["torch_photo"] / median["onnxruntime_photo"], 2),
        })
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--photo", default="1024x768", help="WxH of the end-to-end photo; 0 to skip")
    parser.add_argument("--scales", type=float, nargs="+", default=[1])
    parser.add_argument("--compile", action="store_true", help="also the torch.compile'd model (minutes)")
    print(json.dumps(main(parser.parse_args())))
