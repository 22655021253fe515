"""A batch of synthetic JPEG photos through predict.py's loop, sequential and pipelined, against
the prediction-only time of the same photos.

    python bench/batch_bench.py [--count 4] [--size 2000x1500] [--big 0] [--big-size 11664x8750]
                                [--modes false true] [--shards 2] [hydra overrides of predict.py ...]

Each mode runs ``crackseg.tasks.predict.predict`` (measure=true) in its own child process, so its
peak RSS is its own; the prediction-only reference predicts the decoded photos, one after the
other, with nothing read, written or measured, in another child. Reported per mode: photos/s end
to end, its ratio to the prediction-only throughput (the share of the model's speed the batch
keeps), the share of the wall time the model was busy, and peak RSS (of the run's process; not of
its writer processes). ``--shards N`` also runs
``predict.py`` as a user does, once unsharded and once as N shards at the same time through Hydra's
submitit_local launcher (wall time of each command, process start and model load included), and
checks that both wrote the same per-photo files. The LAST line printed is one JSON object.
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
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def _peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # KiB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _render_one(path: Path, seed: int, width: int, height: int) -> None:
    from crackseg.data import synthetic
    from crackseg.io import write_image

    photo, _, _ = synthetic.render(seed, width, height)
    write_image(path, photo, jpeg_quality=92)


def _render(folder: Path, sizes: list[tuple[int, int]]) -> None:
    """The synthetic photos as JPEG files, rendered in parallel (a 102-MP photo takes ~20 s alone)."""
    from concurrent.futures import ProcessPoolExecutor

    workers = min(len(sizes), os.cpu_count() or 1, 8)  # 8: a 102-MP render holds a few GiB
    with ProcessPoolExecutor(workers) as pool:
        jobs = [pool.submit(_render_one, folder / f"photo_{i:03d}.jpg", i, w, h) for i, (w, h) in enumerate(sizes)]
        for job in jobs:
            job.result()


def _config(photos: Path, output: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("predict", overrides=[f"input={photos}", f"output={output}", "measure=true", *overrides])


def _run_batch(photos: Path, output: Path, pipeline: str, overrides: list[str]) -> dict:
    """predict.py's loop in this process; the time spent in the model's stage is summed."""
    import crackseg.tasks.predict as predicting

    busy = [0.0]
    predict_one = predicting._predict_one

    def timed(*args):
        started = time.perf_counter()
        try:
            return predict_one(*args)
        finally:
            busy[0] += time.perf_counter() - started

    predicting._predict_one = timed
    pipeline, *options = pipeline.split(",")  # e.g. "true,writers=4"
    cfg = _config(photos, output, [f"pipeline={pipeline}", *options, *overrides])
    started = time.perf_counter()
    failed = predicting.predict(cfg)
    wall = time.perf_counter() - started
    return {"wall_s": round(wall, 2), "model_busy_s": round(busy[0], 2), "failed": failed,
            "peak_rss_gib": round(_peak_rss_gib(), 3)}


def _run_prediction_only(photos: Path, output: Path, overrides: list[str]) -> dict:
    """The photos decoded first (untimed), then only the predictor, one photo after the other."""
    from crackseg.inference.backends import predictor_from_config
    from crackseg.io import read_photo

    cfg = _config(photos, output, overrides)
    predictor, thresholds = predictor_from_config(cfg)
    predictor(read_photo(sorted(photos.glob("*.jpg"))[0])[:256, :256])  # warm-up (sessions, allocators)
    wall = 0.0
    for path in sorted(photos.glob("*.jpg")):
        photo = read_photo(path)
        threshold = thresholds(*photo.shape[:2])
        started = time.perf_counter()
        predictor(photo, cascade_threshold=threshold if cfg.cascade else None)
        wall += time.perf_counter() - started
        del photo
    return {"wall_s": round(wall, 2), "peak_rss_gib": round(_peak_rss_gib(), 3)}


def _run_command(photos: Path, output: Path, overrides: list[str], shards: int) -> float:
    """predict.py as a user runs it (sharded: N jobs of a submitit_local sweep); its wall time."""
    sweep = ["-m", "hydra/launcher=submitit_local", f"shard.count={shards}",
             f"shard.index={','.join(map(str, range(shards)))}"] if shards > 1 else []
    command = [sys.executable, str(ROOT / "predict.py"), *sweep[:1], f"input={photos}", f"output={output}",
               "measure=true", f"paths.log_dir={output.parent / 'logs'}", *sweep[1:], *overrides]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return round(time.perf_counter() - started, 2)


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("summary.csv", "report.html") and p.parent.name != "shards"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--size", default="2000x1500")
    parser.add_argument("--big", type=int, default=0, help="photos of --big-size added to the batch")
    parser.add_argument("--big-size", default="11664x8750")
    parser.add_argument("--modes", nargs="+", default=["false", "true"],
                        help="pipeline= values to run, each with options after commas (true,writers=4)")
    parser.add_argument("--shards", type=int, default=0, help="also N shards at once vs one predict.py run")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "PHOTOS", "OUTPUT"), help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.child:
        kind, photos, output = args.child
        result = (_run_prediction_only(Path(photos), Path(output), overrides) if kind == "prediction_only"
                  else _run_batch(Path(photos), Path(output), kind, overrides))
        print(json.dumps(result))
        return

    size = tuple(int(v) for v in args.size.lower().split("x"))
    big = tuple(int(v) for v in args.big_size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        _render(photos, [size] * args.count + [big] * args.big)
        megapixels = (args.count * size[0] * size[1] + args.big * big[0] * big[1]) / 1e6
        results = {}
        for kind in ["prediction_only", *args.modes]:
            output = Path(tmp) / ("out_" + kind.replace(",", "_").replace("=", "_"))  # no Hydra syntax in the path
            command = [sys.executable, __file__, "--child", kind, str(photos), str(output), *overrides]
            printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[kind] = json.loads(printed.strip().splitlines()[-1])
            print(kind, results[kind], flush=True)
        if args.shards > 1:
            whole, sharded = Path(tmp) / "cli_whole", Path(tmp) / "cli_sharded"
            results["shards"] = {"unsharded_s": _run_command(photos, whole, overrides, 1),
                                 f"{args.shards}_shards_at_once_s": _run_command(photos, sharded, overrides, args.shards)}
            results["shards"]["same_outputs"] = _outputs(whole) == _outputs(sharded)
            print("shards", results["shards"], flush=True)
    photos_n = args.count + args.big
    reference = results["prediction_only"]["wall_s"]
    report = {"photos": photos_n, "megapixels": round(megapixels, 1), "cpus": os.cpu_count(), "overrides": overrides,
              "prediction_only_s": reference}
    for mode in args.modes:
        run = results[mode]
        report[f"pipeline={mode}"] = {
            **run, "photos_per_s": round(photos_n / run["wall_s"], 4),
            "of_prediction_only_throughput": round(reference / run["wall_s"], 3),
            "model_busy_share": round(run["model_busy_s"] / run["wall_s"], 3),
        }
    if "shards" in results:
        report["shards"] = results["shards"]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
