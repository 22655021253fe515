"""A sweep folder as a table of trials, best first: ``python -m crackseg.sweeps SWEEP_DIR``.

``SWEEP_DIR`` is a multirun folder (``outputs/train/multiruns/<date>_<time>``): one job folder
per trial, each with ``.hydra/overrides.yaml`` and, once it finished, ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from omegaconf import OmegaConf

COLUMNS = ("job", "val_dice_best", "epochs", "train_seconds")


def trials(sweep_dir: str | Path) -> list[dict]:
    """One row per job, best val/dice_best first (unfinished and failed jobs, without a
    score, last): the columns above, then the overrides that differ between jobs."""
    rows = []
    for overrides_file in Path(sweep_dir).glob("*/.hydra/overrides.yaml"):
        job = overrides_file.parents[1]
        summary_file = job / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        overrides = dict(o.partition("=")[::2] for o in OmegaConf.load(overrides_file))
        rows.append({"job": job.name, **{k: summary.get(k) for k in COLUMNS[1:]}, **overrides})
    if not rows:
        raise FileNotFoundError(f"no job folders (*/.hydra/overrides.yaml) in {sweep_dir}")
    keys = {k for row in rows for k in row} - set(COLUMNS)
    varying = sorted(k for k in keys if len({row.get(k) for row in rows}) > 1)

    def score(row: dict) -> float:
        value = row["val_dice_best"]
        return value if value is not None and not math.isnan(value) else -math.inf

    rows.sort(key=lambda row: (-score(row), len(row["job"]), row["job"]))  # then 0, 1, ..., 10
    return [{k: row.get(k) for k in (*COLUMNS, *varying)} for row in rows]


def format_table(rows: list[dict]) -> str:
    """Aligned text columns; numbers to 4 significant digits, a missing value as ``-``."""

    def cell(value) -> str:
        if value is None:
            return "-"
        try:
            number = float(value)
        except ValueError:
            return str(value)
        return str(value) if number.is_integer() and "." not in str(value) else f"{number:.4g}"

    cells = [list(rows[0])] + [[cell(v) for v in row.values()] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    print(format_table(trials(parser.parse_args(argv).sweep_dir)))


if __name__ == "__main__":
    main()
