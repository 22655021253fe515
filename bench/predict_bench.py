"""Multi-scale prediction of one large synthetic photo: crackseg's tiler against the plain route.

    python bench/predict_bench.py [--size 4000x3000] [--model unet] [--scales 1 2 0.5]
                                  [--tile 256] [--overlap 0.25] [--batch-size 8]
                                  [--skip model_only monai] [--device auto] [--precision fp32] [--compile]
                                  [--backend auto|torch|onnxruntime]

Routes, each in its own process so that its peak RSS is its own:
- crackseg: ``Predictor`` (tiles resampled from the source, accumulated at source resolution),
  with the model in PyTorch or, as predict.py runs it on the CPU by default, exported to ONNX
  (in a process of its own, before the timed routes) and run by ONNX Runtime;
- model-only: a forward of as many random tiles of the same shape in full batches, with the same
  backend (the floor);
- monai: the plain route a user would otherwise take: per scale, resize the whole photo, MONAI
  ``sliding_window_inference`` (gaussian, same tile/overlap/batch) with the model in PyTorch's
  default NCHW layout, resize back, average (``pip install monai``).
The model is the composed ``conf/model/<model>.yaml`` with random weights: speed does not
depend on them. ``working_set_gib`` is the peak RSS above the RSS once the model is built (the
torch + model baseline both routes share). On a GPU (``--device cuda``) each route's peak GPU memory is reported too. With
``--compile`` the crackseg and model-only routes run the torch.compile'd model; the one-time
compilation is reported apart (``warm_up_s``). The LAST line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT))


def _status_gib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 2**20  # KiB
    raise RuntimeError(f"no {key} in /proc/self/status (Linux only)")


def _peak_rss_gib() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: the latter survives execve, so
    a route started by a parent that rendered a large photo would report the parent's peak."""
    return _status_gib("VmHWM")


def _rss_gib() -> float:
    """Current RSS: taken once the model is built, the baseline both routes share."""
    return _status_gib("VmRSS")


def _device(name: str):
    from crackseg.inference.backends import resolve_device

    return resolve_device(name)


def _sync(device) -> float:
    """perf_counter after the device has finished its queued work."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _gpu_peak_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _model(name: str, channels_last: bool = True):
    import hydra
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}", f"model.channels_last={channels_last}", "paths.output_dir=/tmp"])
    return hydra.utils.instantiate(cfg.model, net_config=OmegaConf.to_yaml(cfg.model.net)).net.eval()


def _predicting_model(args, device):
    """The model a route predicts with: the composed one in PyTorch, or its ONNX export."""
    if args.backend == "onnxruntime":
        from crackseg.inference.onnx import OnnxModel

        return OnnxModel(args.onnx)
    return _model(args.model).to(device)


def route_export(args) -> dict:
    from crackseg.inference.onnx import export_onnx

    model = _model(args.model)
    model.tile = args.tile
    started = time.perf_counter()
    export_onnx(model, args.onnx)
    return {"export_s": time.perf_counter() - started, "peak_rss_gib": _peak_rss_gib()}


def route_crackseg(args) -> dict:
    import torch

    from crackseg.inference.predictor import Predictor
    from crackseg.io import read_photo

    device = _device(args.device)
    photo = read_photo(args.photo)
    predictor = Predictor(_predicting_model(args, device), args.scales, args.tile, args.overlap, args.batch_size,
                          precision=args.precision, compile=args.compile)
    baseline = _rss_gib()
    started = _sync(device)
    if predictor.full_batches:  # warm-up: CUDA context and kernel choice, compilation, ONNX Runtime's first run
        predictor(photo[: args.tile, : args.tile])
    warm_up = _sync(device) - started
    started = _sync(device)
    prob = predictor(photo)
    wall = _sync(device) - started
    tiles = predictor.tiles_for(*photo.shape[:2])
    del prob
    return {"wall_s": wall, "warm_up_s": warm_up, "tiles": tiles, "peak_rss_gib": _peak_rss_gib(),
            "baseline_rss_gib": baseline, "threads": torch.get_num_threads(),
            "gpu_peak_gib": _gpu_peak_gib(device), "device": str(device)}


def route_model_only(args) -> dict:
    import torch

    from crackseg.inference.predictor import Predictor

    device = _device(args.device)
    predict_tiles = Predictor(_predicting_model(args, device), precision=args.precision,
                              compile=args.compile)._predict_tiles
    batch = torch.randint(0, 256, (args.batch_size, 3, args.tile, args.tile), dtype=torch.uint8, device=device).float()
    with torch.no_grad():
        predict_tiles(batch)  # warm-up
        started = _sync(device)
        for _ in range(0, args.tiles, args.batch_size):  # full batches, as the tiler feeds a GPU
            predict_tiles(batch)
        wall = _sync(device) - started
    return {"wall_s": wall}


def route_monai(args) -> dict:
    import cv2
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from crackseg.io import read_photo

    device = _device(args.device)
    photo = read_photo(args.photo)
    model = _model(args.model, channels_last=False).to(device)  # PyTorch's default layout, as a user runs it
    baseline = _rss_gib()
    height, width = photo.shape[:2]
    started = _sync(device)
    mean = np.zeros((height, width), np.float32)
    for scale in args.scales:
        size = (round(width * scale), round(height * scale))
        scaled = cv2.resize(photo, size, interpolation=cv2.INTER_LINEAR if scale >= 1 else cv2.INTER_AREA)
        inputs = torch.from_numpy(scaled).permute(2, 0, 1)[None].to(device).float()
        del scaled
        with torch.no_grad():
            prob = sliding_window_inference(inputs, (args.tile, args.tile), args.batch_size,
                                            lambda x: torch.sigmoid(model(x)), overlap=args.overlap, mode="gaussian")
        del inputs
        mean += cv2.resize(prob[0, 0].cpu().numpy(), (width, height), interpolation=cv2.INTER_LINEAR)
        del prob
    mean /= len(args.scales)
    return {"wall_s": _sync(device) - started, "peak_rss_gib": _peak_rss_gib(), "baseline_rss_gib": baseline,
            "gpu_peak_gib": _gpu_peak_gib(device)}


ROUTES = {"export": route_export, "crackseg": route_crackseg, "model_only": route_model_only, "monai": route_monai}


def _run_route(route: str, args, extra: list[str]) -> dict:
    command = [sys.executable, __file__, "--route", route, "--photo", str(args.photo), "--model", args.model,
               "--tile", str(args.tile), "--overlap", str(args.overlap), "--batch-size", str(args.batch_size),
               "--device", args.device, "--precision", args.precision, *(["--compile"] if args.compile else []),
               "--backend", args.backend, "--onnx", str(args.onnx),
               "--scales", *map(str, args.scales), *extra]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--model", default="unet")
    parser.add_argument("--scales", type=float, nargs="+", default=[1, 2, 0.5])
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip", nargs="+", default=[], choices=["model_only", "monai"],
                        help="leave routes out (e.g. for a memory-only run at full scale)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the crackseg route (warm-up reported apart)")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"],
                        help="the crackseg and model-only routes' model; auto: as predict.py (ONNX Runtime on "
                             "the CPU in fp32 without --compile, else PyTorch)")
    parser.add_argument("--route", choices=ROUTES, help=argparse.SUPPRESS)
    parser.add_argument("--onnx", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--photo", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tiles", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.scales = [int(s) if float(s).is_integer() else s for s in args.scales]

    if args.route:
        print(json.dumps(ROUTES[args.route](args)))
        return

    from crackseg.data.synthetic import render
    from crackseg.io import write_image

    if args.backend == "auto":
        on_cpu = args.device == "cpu" or (args.device == "auto" and _device("auto").type == "cpu")
        args.backend = "onnxruntime" if on_cpu and args.precision == "fp32" and not args.compile else "torch"
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        args.photo, args.onnx = Path(tmp) / "photo.jpg", Path(tmp) / "model.onnx"
        write_image(args.photo, render(0, width, height)[0], jpeg_quality=92)
        export = _run_route("export", args, []) if args.backend == "onnxruntime" else None
        ours = _run_route("crackseg", args, [])
        floor = None if "model_only" in args.skip else _run_route("model_only", args, ["--tiles", str(ours["tiles"])])
        monai = None if "monai" in args.skip else _run_route("monai", args, [])
    result = {
        "size": f"{width}x{height}",
        "device": ours["device"],
        "precision": args.precision,
        "compile": args.compile,
        "backend": args.backend,
        "scales": args.scales,
        "model": args.model,
        "tiles": ours["tiles"],
        "torch_threads": ours["threads"],
        "wall_s": round(ours["wall_s"], 2),
        "warm_up_s": round(ours["warm_up_s"], 2),
        "export_s": export and round(export["export_s"], 1),
        "export_peak_rss_gib": export and round(export["peak_rss_gib"], 3),
        "model_only_s": floor and round(floor["wall_s"], 2),
        "overhead_ratio": floor and round(ours["wall_s"] / floor["wall_s"], 3),
        "source_mp_per_s": round(width * height / 1e6 / ours["wall_s"], 3),
        "peak_rss_gib": round(ours["peak_rss_gib"], 3),
        "monai_wall_s": monai and round(monai["wall_s"], 2),
        "monai_peak_rss_gib": monai and round(monai["peak_rss_gib"], 3),
    }
    if ours["gpu_peak_gib"] is not None:
        result["gpu_peak_gib"] = round(ours["gpu_peak_gib"], 3)
        result["monai_gpu_peak_gib"] = monai and round(monai["gpu_peak_gib"], 3)
    result["working_set_gib"] = round(ours["peak_rss_gib"] - ours["baseline_rss_gib"], 3)
    if monai:
        result["monai_working_set_gib"] = round(monai["peak_rss_gib"] - monai["baseline_rss_gib"], 3)
        result["wall_vs_monai"] = round(ours["wall_s"] / monai["wall_s"], 3)
        result["rss_vs_monai"] = round(ours["peak_rss_gib"] / monai["peak_rss_gib"], 3)
        result["working_set_vs_monai"] = round(result["working_set_gib"] / result["monai_working_set_gib"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
