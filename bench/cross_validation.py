"""Cross-validation by photo, pooled: the held-out folds' ``per_photo.csv`` (evaluate.py, each
fold scored by the model that did not train on it) summed into one precision / recall / Dice.

    python bench/cross_validation.py FOLD0/per_photo.csv FOLD1/per_photo.csv FOLD2/per_photo.csv

Each photo's true and false positives come from its crack and predicted pixel counts and its
recall (4 decimals: at most half a pixel off per 10,000 crack pixels). A photo in two files is an
error: folds hold out disjoint photos.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crackseg.metrics import Counts  # noqa: E402


def fold_counts(path: Path) -> dict[str, Counts]:
    """``{photo: its pixel counts}`` of one evaluate.py per_photo.csv."""
    counts = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            crack, predicted = int(row["crack_px"]), int(row["pred_px"])
            tp = round(float(row["recall"]) * crack)
            counts[row["photo"]] = Counts(tp, predicted - tp, crack - tp)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("per_photo", nargs="+", type=Path, help="each held-out fold's per_photo.csv")
    args = parser.parse_args(argv)
    every: dict[str, Counts] = {}
    for path in args.per_photo:
        fold = fold_counts(path)
        twice = sorted(set(fold) & set(every))
        if twice:
            sys.exit(f"error: {path} scores photos another fold scored already: {', '.join(twice)}")
        every.update(fold)
        print(_line(str(path), fold))
    print(_line("pooled", every))


def _line(name: str, photos: dict[str, Counts]) -> str:
    pooled = sum(photos.values(), Counts())
    return (f"{name}: {len(photos)} photos, {pooled.tp + pooled.fn} crack px, precision {pooled.precision:.3f}"
            f" / recall {pooled.recall:.3f}, Dice {pooled.dice:.3f}")


if __name__ == "__main__":
    main()
