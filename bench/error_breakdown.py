"""Where a model's pixel errors lie: in whole instances or at the edges of found cracks.

    python bench/error_breakdown.py PREDICT_OUTPUT MASK_DIR [--photos STEM ...]

Reads every ``<stem>_mask.png`` that predict.py wrote in PREDICT_OUTPUT and the true mask
``MASK_DIR/<stem>.png``; pooled over the photos it prints precision and recall, and splits

- the false crack pixels into those of predicted instances (8-connected) that touch no true
  crack within ``--tolerance`` px (separate false detections: what a per-instance
  crack-or-joint classifier could remove; of them, instances at least 100 px long) and the rest
  (a found crack drawn wider than its label);
- the missed crack pixels into those of true instances no prediction comes within the tolerance
  of (wholly missed cracks), those within the tolerance of a prediction (drawn too thin) and
  the rest (gaps along found cracks).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from crackseg.io import read_mask
from crackseg.metrics import within_distance  # the neighbourhood of f1_2px

LONG_PX = 100


def _untouched(mask: np.ndarray, other_near: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: whether its instance of ``mask`` touches no pixel of ``other_near``; and
    whether it is also at least ``LONG_PX`` long (bounding box)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    alone = np.bincount(labels[other_near], minlength=count) == 0
    alone[0] = False
    long = alone & (np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]) >= LONG_PX)
    return alone[labels], long[labels]


def breakdown(pairs: list[tuple[Path, Path]], tolerance: int = 2) -> dict:
    counts = dict.fromkeys(["tp", "fp", "fn", "fp_separate", "fp_separate_long", "fn_missed", "fn_near"], 0)
    for predicted_path, truth_path in pairs:
        truth = read_mask(truth_path).astype(bool)
        pred = read_mask(predicted_path, truth.shape).astype(bool)
        false, missed = pred & ~truth, truth & ~pred
        separate, separate_long = _untouched(pred, within_distance(truth, tolerance))
        missed_whole, _ = _untouched(truth, within_distance(pred, tolerance))
        near_pred = within_distance(pred, tolerance)
        counts["tp"] += int((pred & truth).sum())
        counts["fp"] += int(false.sum())
        counts["fn"] += int(missed.sum())
        counts["fp_separate"] += int((false & separate).sum())
        counts["fp_separate_long"] += int((false & separate_long).sum())
        counts["fn_missed"] += int((missed & missed_whole).sum())
        counts["fn_near"] += int((missed & near_pred & ~missed_whole).sum())
    fp, fn = max(counts["fp"], 1), max(counts["fn"], 1)
    return {
        "photos": len(pairs), **counts,
        "precision": round(counts["tp"] / max(counts["tp"] + counts["fp"], 1), 3),
        "recall": round(counts["tp"] / max(counts["tp"] + counts["fn"], 1), 3),
        "false_in_separate_instances": round(counts["fp_separate"] / fp, 3),
        "false_in_separate_instances_100px": round(counts["fp_separate_long"] / fp, 3),
        "missed_in_whole_instances": round(counts["fn_missed"] / fn, 3),
        "missed_near_a_prediction": round(counts["fn_near"] / fn, 3),
        "missed_in_gaps": round((counts["fn"] - counts["fn_missed"] - counts["fn_near"]) / fn, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", type=Path, help="a predict.py output folder (<stem>_mask.png)")
    parser.add_argument("masks", type=Path, help="the folder of the true masks (<stem>.png)")
    parser.add_argument("--photos", nargs="*", help="only these stems")
    parser.add_argument("--tolerance", type=int, default=2, help="px (default 2)")
    args = parser.parse_args()
    pairs = []
    for predicted in sorted(args.predictions.glob("*_mask.png")):
        stem = predicted.name.removesuffix("_mask.png")
        if args.photos is None or stem in args.photos:
            pairs.append((predicted, args.masks / f"{stem}.png"))
    if not pairs:
        raise SystemExit(f"no <stem>_mask.png (of the photos asked for) in {args.predictions}")
    print(json.dumps(breakdown(pairs, args.tolerance), indent=1))


if __name__ == "__main__":
    main()
