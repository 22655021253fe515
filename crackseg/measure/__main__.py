"""Print the cracks of a mask as JSON: ``python -m crackseg.measure MASK.png [--mm-per-px X]``."""

from __future__ import annotations

import argparse
import json
import sys

from crackseg.io import ImageReadError, read_mask
from crackseg.measure import JointRule, measure_mask


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m crackseg.measure", description=__doc__)
    parser.add_argument("mask", help="a crack mask (any non-zero pixel, or >= half the range, is crack)")
    parser.add_argument("--mm-per-px", type=_positive, help="lengths and widths in mm instead of px")
    parser.add_argument("--min-length-px", type=float, default=0.0, help="leave out shorter cracks")
    parser.add_argument("--geometry", action="store_true", help="add skeleton and outline polygons")
    parser.add_argument("--joints", action="store_true", help="type long, thin, straight, even instances 'joint' (predict.py's default joint_rule)")
    args = parser.parse_args(argv)
    try:
        cracks = measure_mask(read_mask(args.mask), args.min_length_px, JointRule() if args.joints else None)
    except ImageReadError as err:
        sys.exit(f"error: {err}")
    print(json.dumps([c.to_dict(args.mm_per_px, args.geometry) for c in cracks], indent=1))


if __name__ == "__main__":
    main()
