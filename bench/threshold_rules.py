"""How well thresholds chosen on validation by different rules transfer to test sets.

    python bench/threshold_rules.py VAL_REPORT TEST_REPORT [TEST_REPORT ...] [--masks DIR ...]

VAL_REPORT is evaluate.py's report.json of a (pooled) val split, each TEST_REPORT one of the
same model and scales on a test split. Each rule picks one threshold from the val report:

- ``pooled``: the best F1 of the pooled pixel counts (what evaluate.py stores today);
- ``image_mean``: the best mean per-photo F1 (the leaderboards' ODS, taken on val);
- ``photo_median``: the median of each val photo's own best threshold;
- ``dataset_mean``: the best mean of the datasets' F1 curves, each dataset weighing the same
  (needs ``source_pr_curves``: reports of several datasets written since they were added).

For each test report it prints the F1 at each rule's threshold against the test's own best.
``--masks`` prints, per mask folder, the crack share of the pixels and the labels' width (crack
pixels per skeleton pixel, per photo): a shift between val and test labels moves the best
threshold whatever the rule.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from skimage.morphology import skeletonize

from crackseg.io import read_mask
from crackseg.metrics import LEVELS


def _f1(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """F1 along a stored PR curve (reports keep precision and recall; metrics.f1 takes scalars)."""
    precision, recall = np.asarray(precision), np.asarray(recall)
    return np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)


def val_rules(report: dict) -> dict[str, float]:
    """Each rule's threshold from a val report."""
    rules = {"pooled": report["ods_threshold"], "image_mean": report["leaderboard"]["ods_threshold"],
             "photo_median": float(np.median([row["best_threshold"] for row in report["per_photo"]]))}
    curves = report.get("source_pr_curves")
    if curves:
        mean_f1 = np.mean([_f1(c["precision"], c["recall"]) for c in curves.values()], axis=0)
        rules["dataset_mean"] = float(np.argmax(mean_f1) / LEVELS)
    return rules


def test_f1(report: dict) -> np.ndarray:
    """A test report's pooled F1 at every threshold level."""
    return _f1(report["pr_curve"]["precision"], report["pr_curve"]["recall"])


def label_widths(mask_dir: Path) -> tuple[int, float, float]:
    """Photos, mean crack share and median label width (crack px per skeleton px) of a folder."""
    shares, widths = [], []
    for path in sorted(mask_dir.glob("*.png")):
        mask = read_mask(path).astype(bool)
        shares.append(mask.mean())
        length = np.count_nonzero(skeletonize(mask))
        if length >= 20:  # a few pixels of label say nothing about its width
            widths.append(mask.sum() / length)
    if not shares:
        raise SystemExit(f"error: no *.png masks in {mask_dir}")
    return len(shares), float(np.mean(shares)), float(np.median(widths)) if widths else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("val_report", type=Path)
    parser.add_argument("test_reports", type=Path, nargs="+")
    parser.add_argument("--masks", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    val = json.loads(args.val_report.read_text())
    rules = val_rules(val)
    result = {"val": val["split"], "scales": val["scales"], "rules": rules, "tests": {}, "labels": {}}
    print(f"{args.val_report} ({val['split']}, scales {val['scales']}): "
          + ", ".join(f"{name} {t:.3f}" for name, t in rules.items()))
    for path in args.test_reports:
        test = json.loads(path.read_text())
        if test["scales"] != val["scales"]:
            raise SystemExit(f"error: {path} was evaluated at scales {test['scales']}, the val report at {val['scales']}")
        f1 = test_f1(test)
        best = int(np.argmax(f1))
        scores = {name: round(float(f1[int(round(t * LEVELS))]), 4) for name, t in rules.items()}
        result["tests"][test["split"]] = {"best_threshold": best / LEVELS, "best_f1": round(float(f1[best]), 4), **scores}
        print(f"  {test['split']}: own best {best / LEVELS:.3f} F1 {f1[best]:.4f}; "
              + ", ".join(f"{name} {f1_at:.4f}" for name, f1_at in scores.items()))
    for mask_dir in args.masks:
        photos, share, width = label_widths(mask_dir)
        result["labels"][str(mask_dir)] = {"masks": photos, "crack_share": round(share, 4), "median_width_px": round(width, 2)}
        print(f"{mask_dir}: {photos} masks, crack share {share:.2%}, median label width {width:.1f} px")
    print(json.dumps(result))

if __name__ == "__main__":
    main()
