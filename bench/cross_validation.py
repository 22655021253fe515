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


def fold_counts(path: Path) -> dict[str, tuple[int, int, int]]:
    """``{photo: (tp, fp, fn)}`` of one evaluate.py per_photo.csv."""
    counts = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            crack, predicted = int(row["crack_px"]), int(row["pred_px"])
            tp = round(float(row["recall"]) * crack)
            counts[row["photo"]] = (tp, predicted - tp, crack - tp)
    return counts


def pooled(counts: list[tuple[int, int, int]]) -> dict[str, float]:
    tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
    return {"photos": len(counts), "crack_px": tp + fn, "precision": tp / max(tp + fp, 1),
            "recall": tp / max(tp + fn, 1), "dice": 2 * tp / max(2 * tp + fp + fn, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("per_photo", nargs="+", type=Path, help="each held-out fold's per_photo.csv")
    args = parser.parse_args(argv)
    every: dict[str, tuple[int, int, int]] = {}
    for path in args.per_photo:
        fold = fold_counts(path)
        twice = sorted(set(fold) & set(every))
        if twice:
            sys.exit(f"error: {path} scores photos another fold scored already: {', '.join(twice)}")
        every.update(fold)
        print(_line(str(path), pooled(list(fold.values()))))
    print(_line("pooled", pooled(list(every.values()))))


def _line(name: str, figures: dict[str, float]) -> str:
    return (f"{name}: {figures['photos']} photos, {figures['crack_px']} crack px, precision {figures['precision']:.3f}"
            f" / recall {figures['recall']:.3f}, Dice {figures['dice']:.3f}")


if __name__ == "__main__":
    main()
