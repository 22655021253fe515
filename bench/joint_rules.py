"""How many labelled cracks a joint rule takes for joints: the rule's cost, without a model (issue 15).

    python bench/joint_rules.py [--rules 100,0.99,0.3,30 150,0.98,0.3 ...] [--data cracksight:train ...]

Every crack instance of the masks of the given splits (../shared/data) is measured with each rule
(``measure_mask(joint_rule=...)``, predict.py's ``min_crack_length_px`` of 10); reported per rule and
split: the share of labelled crack pixels in instances typed ``joint`` (which predict.py would take
out of the mask) and how many instances. A labelled mask is drawn by hand, so its cracks are no
straighter than the photo's; a model's masks may be smoother (see bench/pasted_joints_bench.py for
the rule on predictions, and for how many joints it catches). The LAST line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from crackseg.data.folder import split_sources  # noqa: E402
from crackseg.io import read_mask  # noqa: E402
from crackseg.measure import JOINT, JointRule, measure_mask  # noqa: E402

SPLITS = ["cracksight:train", "cracksight:val", "deepcrack:train", "deepcrack:test", "cfd:train", "cfd:test",
          "hea12d:train", "masonry:train", "masonry:val"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", nargs="+", default=["100,0.99,0.3,0", "100,0.99,0.3,30", "100,0.985,0.3,30"],
                        help="MIN_LENGTH_PX,MIN_STRAIGHTNESS,MAX_WIDTH_VARIATION[,MIN_BRANCH_PX[,MIN_ELONGATION]] ...")
    parser.add_argument("--data", nargs="+", default=SPLITS, help="NAME:SPLIT ...")
    args = parser.parse_args(argv)
    rules = {text: JointRule(*map(float, text.split(","))) for text in args.rules}
    results = {text: {} for text in rules}
    for entry in args.data:
        name, split = entry.split(":")
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            data = compose("evaluate", overrides=[f"data={name}"]).data
        masks = [read_mask(mask) > 0 for source in split_sources(data, split).values() for _, mask in source]
        crack_px = sum(int(np.count_nonzero(m)) for m in masks)
        for text, rule in rules.items():
            joints = [c for m in masks for c in measure_mask(m, 10, rule) if c.type == JOINT]
            results[text][entry] = {"masks": len(masks), "joint_instances": len(joints),
                                    "crack_px_taken": round(sum(c.pixels for c in joints) / max(crack_px, 1), 4)}
            print(f"{text} {entry}: {results[text][entry]}", flush=True)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
