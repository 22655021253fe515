"""Crack measurement of one large synthetic photo, against the time its prediction takes.

    python bench/measure_bench.py [--size 11664x8750] [--seed 0] [--predict-seconds 699]
                                  [--mm-per-px X] [--min-length-px 10] [--speckle 0.1]

The photo and its true crack mask come from ``crackseg.data.synthetic.render``, rendered in a
child process so that this process's peak RSS is the measurement's own. Timed here, as
predict.py runs them: ``write_photo_outputs`` (mask, probability map, contours, overlay; the
8-bit probability image held as predict.py's writer holds it), then ``measure_mask`` (skeletons, graphs, lengths,
widths of every crack), then ``write_crack_outputs`` (JSON, GeoJSON, full-size width overlay JPEG,
thumbnail). ``--speckle F`` adds blobs of a few to tens of pixels over a fraction F of the
mask, as a barely trained model flags (0.1 at 102 MP: about half a million regions).
``--predict-seconds`` is the prediction time of a photo of this size to compare with (699 s:
11664x8750 at scales 1/2/0.5 on the 2-core development CPU, BENCHMARKS.md). The LAST line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20  # KiB
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def _reset_peak() -> None:
    """Start VmHWM afresh from the current RSS (Linux: /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def _render(folder: Path, width: int, height: int, seed: int, speckle: float) -> None:
    import cv2

    from crackseg.data import synthetic

    photo, cracks, _ = synthetic.render(seed, width, height)
    np.save(folder / "photo.npy", photo)
    del photo
    if speckle:
        field = np.random.default_rng(seed).standard_normal((height, width), dtype=np.float32)
        field = cv2.GaussianBlur(field, (0, 0), 1.5)
        cracks |= field > np.quantile(field[::7, ::7], 1 - speckle)
    np.save(folder / "mask.npy", cracks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="11664x8750")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--predict-seconds", type=float, default=699.0)
    parser.add_argument("--mm-per-px", type=float)
    parser.add_argument("--min-length-px", type=float, default=10.0)
    parser.add_argument("--speckle", type=float, default=0.0, help="fraction of the mask covered by specks")
    parser.add_argument("--render-into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.render_into:
        _render(args.render_into, width, height, args.seed, args.speckle)
        return

    from crackseg.measure import measure_mask
    from crackseg.report.crack_outputs import write_crack_outputs
    from crackseg.report.photo_outputs import output_paths, probability_image, write_photo_outputs

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--size", args.size, "--seed", str(args.seed),
                        "--speckle", str(args.speckle), "--render-into", str(folder)], check=True)
        print(f"rendered {args.size} in {time.perf_counter() - started:.0f} s", flush=True)
        photo, mask = np.load(folder / "photo.npy"), np.load(folder / "mask.npy")
        rss_before = _rss_gib("VmRSS")

        prob = probability_image(mask.astype(np.float32))  # predict.py holds the probability image while writing
        _reset_peak()
        started = time.perf_counter()
        row = write_photo_outputs(output_paths(folder, "photo"), photo, prob, mask, 0.5)
        prediction_outputs_s = time.perf_counter() - started
        prediction_outputs_peak = _rss_gib("VmHWM")
        del prob
        _reset_peak()
        started = time.perf_counter()
        cracks = measure_mask(mask, args.min_length_px)
        measure_s = time.perf_counter() - started
        settings = {"mm_per_px": args.mm_per_px, "min_crack_length_px": args.min_length_px}
        started = time.perf_counter()
        write_crack_outputs(output_paths(folder, "photo"), photo, cracks, settings)
        outputs_s = time.perf_counter() - started

    total_s = measure_s + outputs_s
    print(json.dumps({
        "size": args.size, "seed": args.seed, "speckle": args.speckle, "crack_pixels": row["crack_pixels"],
        "regions": row["contours"], "prediction_outputs_s": round(prediction_outputs_s, 2), "cracks": len(cracks),
        "branches": sum(c.branches for c in cracks), "total_length_px": round(sum(c.length for c in cracks), 1),
        "measure_s": round(measure_s, 2), "outputs_s": round(outputs_s, 2), "total_s": round(total_s, 2),
        "predict_s": args.predict_seconds, "measure_over_predict": round(total_s / args.predict_seconds, 4),
        "rss_before_gib": round(rss_before, 3), "prediction_outputs_peak_rss_gib": round(prediction_outputs_peak, 3),
        "measure_peak_rss_gib": round(_rss_gib("VmHWM"), 3),
    }))


if __name__ == "__main__":
    main()
