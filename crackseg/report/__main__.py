"""Rebuild a prediction output folder's summary.csv, cracks.csv and report.html from the shard
summaries of the runs that wrote into it: ``python -m crackseg.report OUTPUT [--shards N]``."""

from __future__ import annotations

import argparse
import sys

from crackseg.report.batch import rebuild


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m crackseg.report", description=__doc__)
    parser.add_argument("output", help="the output folder of predict.py (all shards of a campaign write into one)")
    parser.add_argument("--shards", type=int, help="use the summaries of this shard.count (default: the newest run's)")
    args = parser.parse_args(argv)
    try:
        photos = rebuild(args.output, args.shards)
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    print(f"{args.output}: summary.csv and report of {photos} photo(s)")


if __name__ == "__main__":
    main()
