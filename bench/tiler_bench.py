"""The tiler's own work beside the model's: how much of a photo's prediction is not the model (issue 17).

    python bench/tiler_bench.py [--ckpt models/crackseg-general.ckpt] [--rounds 3]
                                [--photo-size 3000x2000] [--device cpu|cuda]

The ``Predictor`` runs predict.py's default route (scales 1/2/0.5, the exact cascade at the
checkpoint's stored multi-scale threshold) and one scale, on the same crop of the first cracksight
val photo (../shared/data). The model call is timed inside the run (on a GPU with a
synchronisation before the clock stops), so each route reports its wall time, the model's share
of it, the rest (``host_s``: cropping and resampling tiles, choosing the cascade's tiles,
blending and stitching) and ``overhead`` = wall / model (1 is the floor). CPU routes: ONNX Runtime
fp32 and, when the checkpoint has a calibration, int8 (predict.py's default on a CPU with VNNI);
``--device cuda``: the PyTorch model in fp32 and fp16. Rounds alternate between routes.
The LAST line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from bench.predict_bench import _sync  # noqa: E402
from crackseg.data.folder import split_sources  # noqa: E402
from crackseg.inference.onnx import OnnxModel, cached_export  # noqa: E402
from crackseg.inference.predictor import Predictor  # noqa: E402
from crackseg.inference.quantize import cached_int8, calibration_path  # noqa: E402
from crackseg.io import read_photo  # noqa: E402
from crackseg.models.checkpoints import load_model  # noqa: E402
from crackseg.models.thresholds import read_thresholds  # noqa: E402
from crackseg.tiling import TileCounts  # noqa: E402

CACHE = ROOT / ".cache" / "onnx"


class Timed:
    """A model call clocked (synchronised on a GPU), its seconds summed in ``seconds``."""

    def __init__(self, forward, device: torch.device):
        self.forward, self.device, self.seconds = forward, device, 0.0

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        started = _sync(self.device)
        out = self.forward(tiles)
        self.seconds += _sync(self.device) - started
        return out


def routes_for(ckpt: Path, device: torch.device) -> dict[str, tuple[object, str | None]]:
    """Route name -> (model, autocast precision for a PyTorch model)."""
    if device.type == "cuda":
        net = load_model(ckpt).to(device).eval()
        return {"torch_fp32": (net, "fp32"), "torch_fp16": (net, "fp16")}
    routes = {"ort_fp32": (OnnxModel(cached_export(ckpt, CACHE)), None)}
    if calibration_path(ckpt).is_file():
        routes["ort_int8"] = (OnnxModel(cached_int8(ckpt, CACHE)), None)
    return routes


def run(ckpt: Path, photo, device: torch.device, rounds: int) -> dict:
    thresholds = read_thresholds(ckpt)
    predictors: dict[str, tuple[Timed, Predictor]] = {}
    for name, (model, precision) in routes_for(ckpt, device).items():
        for key in ("1,2,0.5", "1"):
            predictor = Predictor(model, [float(s) for s in key.split(",")], model.tile, precision=precision)
            predictor._forward = timed = Timed(predictor._forward, device)  # the model call, clocked
            predictors[f"{name}@{key}"] = (timed, predictor)
    for _, predictor in predictors.values():  # warm-up
        predictor(photo[:512, :512])
    samples: dict[str, list[tuple[float, float]]] = {case: [] for case in predictors}
    counts: dict[str, TileCounts] = {}
    order = list(predictors)
    for round_ in range(rounds):
        for case in order if round_ % 2 == 0 else order[::-1]:
            timed, predictor = predictors[case]
            timed.seconds, counts[case] = 0.0, TileCounts()
            started = time.perf_counter()
            predictor(photo, counts=counts[case], cascade_threshold=thresholds[case.split("@")[1]]["threshold"])
            samples[case].append((time.perf_counter() - started, timed.seconds))
    result = {}
    for case, pairs in samples.items():
        wall, model_s = statistics.median(w for w, _ in pairs), statistics.median(m for _, m in pairs)
        result[case] = {"wall_s": round(wall, 2), "model_s": round(model_s, 2), "host_s": round(wall - model_s, 2),
                        "overhead": round(wall / model_s, 3), "tiles": counts[case].computed,
                        "skipped": counts[case].skipped}
    return result


def main(args: argparse.Namespace) -> dict:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        data = compose("evaluate", overrides=["data=cracksight"]).data
    width, height = map(int, args.photo_size.split("x"))
    photo = read_photo(split_sources(data, "val")["data"][0][0])[:height, :width]
    device = torch.device(args.device)
    return {"ckpt": args.ckpt, "photo": [*photo.shape[:2]], "device": str(device), "rounds": args.rounds,
            "torch_threads": torch.get_num_threads(), "routes": run(Path(args.ckpt), photo, device, args.rounds)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=str(ROOT / "models" / "crackseg-general.ckpt"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--photo-size", default="3000x2000", help="WxH crop of the first cracksight val photo")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    print(json.dumps(main(parser.parse_args())))
