"""How much a model takes joints for cracks, on real photos with realistic joints pasted in (issue 15).

    python bench/pasted_joints_bench.py [--ckpt models/crackseg-general.ckpt] [--data cracksight:val deepcrack:test]
                                        [--photos 40] [--scales 1 2 0.5] [--seed 0]

hea12d and masonry show real joints, but of two kinds only (pavement slabs, brick mortar). Here
each photo of the given splits (../shared/data) is predicted as it is and with 1-4 joints of
:mod:`crackseg.data.joints` pasted on it (grooves, sealant, slab borders, seams; 3-14 px wide;
crack pixels untouched), at the checkpoint's own threshold for these scales. Reported per dataset:
``joint_flagged``, the share of the pasted joints' pixels predicted crack; ``added_fp_per_joint_px``,
the false-positive pixels the joints added (dilated predictions included) per joint pixel; and the
pooled Dice of the photos without and with joints. A model trained with ``data.paste_joints`` has
seen such joints, so for it this measures what it learnt, not how it generalises: hea12d and
masonry stay the real test. Each figure also after the joint rule of predict.py (``keep_joints=false``:
instances taken for joints leave the mask; ``--joint-rule L S V [B]`` to try another): ``*_rule`` columns,
and ``crack_px_removed``, the share of the clean photos' true-positive pixels the rule took away. The
LAST line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from crackseg import metrics  # noqa: E402
from crackseg.data.folder import split_sources  # noqa: E402
from crackseg.data.joints import paste_joints  # noqa: E402
from crackseg.inference.backends import predictor_from_config  # noqa: E402
from crackseg.io import read_pair  # noqa: E402
from crackseg.measure import JointRule, take_joints  # noqa: E402


def without_joints(mask: np.ndarray, rule: JointRule) -> np.ndarray:
    """``mask`` less the instances ``rule`` takes for joints (predict.py's ``keep_joints=false``)."""
    kept = mask.copy()
    take_joints(kept, rule)
    return kept


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=str(ROOT / "models" / "crackseg-general.ckpt"))
    parser.add_argument("--data", nargs="+", default=["cracksight:val", "deepcrack:test"], help="NAME:SPLIT ...")
    parser.add_argument("--photos", type=int, default=40, help="at most this many photos per split (seeded draw)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1, 2, 0.5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--joint-rule", type=float, nargs="+", metavar="MIN_LENGTH_PX MIN_STRAIGHTNESS MAX_WIDTH_VARIATION [MIN_BRANCH_PX [MIN_ELONGATION]]",
                        help="default: predict.py's")
    args = parser.parse_args(argv)
    rule = JointRule(*args.joint_rule) if args.joint_rule else JointRule()
    scales = [int(s) if float(s).is_integer() else s for s in args.scales]
    results = {"ckpt": args.ckpt, "scales": scales, "joint_rule": vars(rule), "datasets": {}}
    for entry in args.data:
        name, split = entry.split(":")
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("evaluate", overrides=[f"data={name}", f"ckpt={args.ckpt}", f"scales={scales}",
                                                  "upscale_below_px=null"])
        predictor, thresholds = predictor_from_config(cfg)
        pairs = [pair for source in split_sources(cfg.data, split).values() for pair in source]
        rng = np.random.default_rng(args.seed)
        pairs = [pairs[i] for i in sorted(rng.permutation(len(pairs))[: args.photos])]
        clean, pasted_counts, clean_rule, pasted_rule = (metrics.Counts() for _ in range(4))
        joint_px = flagged = flagged_rule = 0
        started = time.perf_counter()
        for photo_path, mask_path in pairs:
            photo, truth = read_pair(photo_path, mask_path)
            truth = truth.astype(bool)
            with_joints, lines = paste_joints(photo, truth, rng, max_joints=4)
            threshold = thresholds(*photo.shape[:2])  # upscale_below_px=null: --scales' for every photo
            pred_clean = predictor(photo) >= threshold
            pred_pasted = predictor(with_joints) >= threshold
            clean += metrics.confusion(pred_clean, truth)
            pasted_counts += metrics.confusion(pred_pasted, truth)
            clean_rule += metrics.confusion(without_joints(pred_clean, rule), truth)
            pasted_kept = without_joints(pred_pasted, rule)
            pasted_rule += metrics.confusion(pasted_kept, truth)
            joint_px += int(lines.sum())
            flagged += int((pred_pasted & lines).sum())
            flagged_rule += int((pasted_kept & lines).sum())
        row = {
            "photos": len(pairs), "threshold": round(threshold, 3), "joint_px": joint_px,
            "joint_flagged": round(flagged / max(joint_px, 1), 4),
            "added_fp_per_joint_px": round((pasted_counts.fp - clean.fp) / max(joint_px, 1), 4),
            "dice_clean": round(clean.dice, 4), "dice_with_joints": round(pasted_counts.dice, 4),
            "precision_clean": round(clean.precision, 4), "precision_with_joints": round(pasted_counts.precision, 4),
            "joint_flagged_rule": round(flagged_rule / max(joint_px, 1), 4),
            "dice_clean_rule": round(clean_rule.dice, 4), "dice_with_joints_rule": round(pasted_rule.dice, 4),
            "precision_clean_rule": round(clean_rule.precision, 4),
            "recall_clean": round(clean.recall, 4), "recall_clean_rule": round(clean_rule.recall, 4),
            "precision_with_joints_rule": round(pasted_rule.precision, 4),
            "crack_px_removed": round((clean.tp - clean_rule.tp) / max(clean.tp, 1), 4),
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(f"{entry}: {row}", flush=True)
        results["datasets"][entry] = row
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
