"""Cross-validation by photo, pooled: the held-out folds' ``per_photo.csv`` (evaluate.py, each
fold scored by the model that did not train on it) summed into one precision / recall / Dice.

    python bench/cross_validation.py FOLD0/per_photo.csv FOLD1/per_photo.csv FOLD2/per_photo.csv [--at-recall 0.8]

Each photo's true and false positives come from its crack and predicted pixel counts and its
recall (4 decimals: at most half a pixel off per 10,000 crack pixels). A photo in two files is an
error: folds hold out disjoint photos.

``--at-recall R`` also pools the folds' precision-recall curves (report.json beside each
per_photo.csv) at thresholds aiming at recall R (of those reaching it, the most precise): one
threshold common to all folds, tuned on the held-out photos themselves (an upper bound: could the
models meet a target at any single threshold?), and each fold at the threshold its other folds'
photos pick (cross-fitted: what choosing it on other photos of the kind gives). These curves score
the probabilities before the joint rule, the per_photo.csv counts after it (evaluate.py). The last
line is the pooled figures as one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crackseg.metrics import THRESHOLDS, Counts, most_precise_reaching  # noqa: E402


def fold_counts(path: Path) -> dict[str, Counts]:
    """``{photo: its pixel counts}`` of one evaluate.py per_photo.csv."""
    counts = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            crack, predicted = int(row["crack_px"]), int(row["pred_px"])
            tp = round(float(row["recall"]) * crack)
            counts[row["photo"]] = Counts(tp, predicted - tp, crack - tp)
    return counts


def curve_counts(report: Path, crack_px: int) -> np.ndarray:
    """``(2, thresholds)`` true and false positives of one fold at every threshold, from its
    report.json's pooled PR curve."""
    if not report.is_file():
        sys.exit(f"error: {report} is missing: --at-recall reads the PR curve evaluate.py writes beside per_photo.csv")
    curve = json.loads(report.read_text())["pr_curve"]
    precision, recall = np.array(curve["precision"]), np.array(curve["recall"])
    if len(recall) != len(THRESHOLDS):
        sys.exit(f"error: {report}: its PR curve has {len(recall)} thresholds, expected {len(THRESHOLDS)}")
    tp = recall * crack_px
    return np.stack([tp, np.where(tp > 0, tp / np.maximum(precision, 1e-12) - tp, 0.0)])


def level_for_recall(curve: np.ndarray, crack_px: int, min_recall: float) -> int:
    """The threshold level evaluate.py's ``threshold_rule=recall`` takes on these counts (one dataset)."""
    tp, fp = curve
    return most_precise_reaching(tp / np.maximum(tp + fp, 1e-12), tp / crack_px, min_recall)


def recall_operating_points(curves: list[np.ndarray], crack_px: list[int], min_recall: float) -> dict[str, dict]:
    """Pooled precision / recall at thresholds aiming at ``min_recall``: ``best_single_threshold``,
    one for all folds tuned on their photos; ``cross_fitted``, each fold at the one its other folds'
    photos pick (no fold's threshold sees its own photos)."""
    def point(tp: float, fp: float, levels: list[int]) -> dict:
        return {"precision": tp / max(tp + fp, 1e-12), "recall": tp / sum(crack_px),
                "thresholds": [float(THRESHOLDS[k]) for k in levels]}

    pooled = sum(curves)
    level = level_for_recall(pooled, sum(crack_px), min_recall)
    points = {"min_recall": min_recall, "best_single_threshold": point(*pooled[:, level], [level])}
    if len(curves) > 1:
        levels = [level_for_recall(pooled - curve, sum(crack_px) - crack, min_recall)
                  for curve, crack in zip(curves, crack_px)]
        points["cross_fitted"] = point(*sum(curve[:, k] for curve, k in zip(curves, levels)), levels)
    return points


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("per_photo", nargs="+", type=Path, help="each held-out fold's per_photo.csv")
    parser.add_argument("--at-recall", type=float, metavar="R",
                        help="also pool the folds' PR curves (report.json beside each file) "
                             "at thresholds aiming at recall R")
    args = parser.parse_args(argv)
    if args.at_recall is not None and not 0 < args.at_recall <= 1:
        parser.error(f"--at-recall {args.at_recall}: must be in (0, 1]")
    every: dict[str, Counts] = {}
    curves, crack_px = [], []
    for path in args.per_photo:
        if not path.is_file():
            sys.exit(f"error: {path} is not a file (evaluate.py writes per_photo.csv into its output folder)")
        fold = fold_counts(path)
        twice = sorted(set(fold) & set(every))
        if twice:
            sys.exit(f"error: {path} scores photos another fold scored already: {', '.join(twice)}")
        every.update(fold)
        print(_line(str(path), pooled_figures(fold)))
        if args.at_recall is not None:
            crack_px.append(sum(c.tp + c.fn for c in fold.values()))
            if not crack_px[-1]:
                sys.exit(f"error: {path}: no crack pixels, so no recall to aim at")
            curves.append(curve_counts(path.parent / "report.json", crack_px[-1]))
    result = pooled_figures(every)
    print(_line("pooled", result))
    if args.at_recall is not None:
        result["at_recall"] = points = recall_operating_points(curves, crack_px, args.at_recall)
        for name in ("best_single_threshold", "cross_fitted"):
            if name in points:
                point = points[name]
                print(f"recall >= {args.at_recall:g} (before the joint rule), {name.replace('_', ' ')}: precision "
                      f"{point['precision']:.3f} / recall {point['recall']:.3f} at "
                      + " / ".join(f"{t:.3f}" for t in point["thresholds"]))
    print(json.dumps(result))


def pooled_figures(photos: dict[str, Counts]) -> dict:
    """Photo and crack pixel count, precision, recall and Dice of these photos' pooled counts."""
    pooled = sum(photos.values(), Counts())
    return {"photos": len(photos), "crack_px": pooled.tp + pooled.fn, "precision": pooled.precision,
            "recall": pooled.recall, "dice": pooled.dice}


def _line(name: str, figures: dict) -> str:
    return (f"{name}: {figures['photos']} photos, {figures['crack_px']} crack px, precision {figures['precision']:.3f}"
            f" / recall {figures['recall']:.3f}, Dice {figures['dice']:.3f}")


if __name__ == "__main__":
    main()
