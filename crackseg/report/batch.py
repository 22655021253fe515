"""A batch's (or a whole campaign's) tables and report: ``summary.csv`` (one row per photo),
``cracks.csv`` (one row per crack) and ``report.html``, built from the per-photo
``<stem>_cracks.json`` files and from the shard summaries of every run that wrote into the
output folder (``shards/shard-I-of-N.json``: each run's rows; an unsharded run is shard 0 of 1)."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path, PurePosixPath

from crackseg.io import atomic_write_bytes, rewrite_lock, write_csv
from crackseg.report.crack_outputs import read_crack_document
from crackseg.report.html import render_report
from crackseg.report.photo_outputs import output_folder, output_paths, write_summary

log = logging.getLogger(__name__)

CRACK_FIELDS = ["photo", "id", "type", "width_class", "unit", "length", "max_width", "mean_width", "p90_width",
                "orientation_deg", "branches", "ends", "junctions", "cells", "pixels", "bbox_x", "bbox_y", "bbox_w",
                "bbox_h", "centroid_x", "centroid_y"]
SHARDS = "shards"
CLAIMED_ELSEWHERE = "another run is predicting it"


def shard_summary_path(output_dir: Path, index: int, count: int) -> Path:
    return Path(output_dir) / SHARDS / f"shard-{index}-of-{count}.json"


def publish(output_dir: Path, rows: list[dict], settings: dict, measure: bool, index: int = 0, count: int = 1) -> int:
    """Save this run's ``rows`` as shard ``index`` of ``count``, then rebuild the campaign's tables
    and report from every shard summary of ``count`` present; returns the campaign's photo count.
    Runs of one shard share its summary: a photo this run left to another run keeps the row that
    run saved (its outcome, a failure included), under a lock while the summary is rewritten."""
    path = shard_summary_path(output_dir, index, count)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rewrite_lock(path):
        saved = _read_shard_summary(path) if path.is_file() else None
        if saved is not None:
            theirs = {row["photo"]: row for row in saved["rows"] if row.get("detail") != CLAIMED_ELSEWHERE}
            rows = [theirs.get(row["photo"], row) if row.get("detail") == CLAIMED_ELSEWHERE else row for row in rows]
        document = {"shard": {"index": index, "count": count}, "measure": measure, "settings": settings, "rows": rows}
        atomic_write_bytes(path, json.dumps(document).encode())
    return rebuild(output_dir, count)


def rebuild(output_dir: Path, count: int | None = None) -> int:
    """(Re)write ``summary.csv``, and with measurement ``cracks.csv`` and ``report.html``, from
    the shard summaries of ``count`` shards (default: the count of the newest one); returns the
    number of photos. Shards ending together need no lock: each rebuilds until the shard
    summaries it read are still all there unchanged, so the last one to finish covers all."""
    output_dir = Path(output_dir)
    while True:
        read = _shard_summaries(output_dir, count)
        if not read:
            raise FileNotFoundError(f"no shard summaries ({SHARDS}/shard-I-of-N.json) in {output_dir}: "
                                    "it holds no predict.py run")
        documents = [d for d in map(_read_shard_summary, read) if d is not None]  # oldest first
        if not documents:
            raise FileNotFoundError(f"no readable shard summary in {output_dir / SHARDS}")
        rows = merge_rows(documents)
        write_summary(output_dir / "summary.csv", rows)
        if documents[-1]["measure"]:
            write_batch_outputs(output_dir, rows, campaign_settings(documents))
        if _shard_summaries(output_dir, count) == read:
            return len(rows)


def _read_shard_summary(path: Path) -> dict | None:
    try:
        document = json.loads(path.read_text())
        if isinstance(document.get("rows"), list) and isinstance(document.get("settings"), dict):
            return document
    except (OSError, ValueError, AttributeError):
        pass
    log.warning("%s is not a shard summary written by predict.py: left out of the campaign's tables", path)
    return None


def merge_rows(documents: list[dict]) -> list[dict]:
    """The rows of all shard summaries (oldest first), one per photo sorted by photo: a later
    row replaces an earlier one unless it only says another run had the photo."""
    merged: dict[str, dict] = {}
    for document in documents:
        for row in document["rows"]:
            if row["photo"] not in merged or row.get("detail") != CLAIMED_ELSEWHERE:
                merged[row["photo"]] = row
    return [merged[photo] for photo in sorted(merged)]


def campaign_settings(documents: list[dict]) -> dict:
    """The settings of the runs behind the shard summaries (oldest first), for the report: a dict
    setting (the threshold of each scale set) merges key by key, as each run used only those its
    photos needed; a setting the runs differ in shows each distinct value, oldest first."""
    return _merge_setting([document["settings"] for document in documents])


def _merge_setting(values: list):
    if all(isinstance(value, dict) for value in values):
        keys = dict.fromkeys(key for value in values for key in value)
        return {key: _merge_setting([value[key] for value in values if key in value]) for key in keys}
    distinct = [value for i, value in enumerate(values) if value not in values[:i]]
    return distinct[0] if len(distinct) == 1 else " | ".join(map(str, distinct)) + " (the runs differ)"


def _shard_summaries(output_dir: Path, count: int | None) -> dict[Path, tuple[int, int]]:
    """Shard summary files of ``count`` shards (None: the newest file's count), oldest first, with
    their (mtime, size) signature."""
    stats = {path: path.stat() for path in (output_dir / SHARDS).glob("shard-*-of-*.json")}
    files = {path: (st.st_mtime_ns, st.st_size) for path, st in sorted(stats.items(), key=lambda item: item[1].st_mtime_ns)}
    if count is None and files:
        count = int(next(reversed(files)).stem.rsplit("-", 1)[1])
    return {path: signature for path, signature in files.items() if path.stem.endswith(f"-of-{count}")}


def write_batch_outputs(output_dir: Path, rows: list[dict], settings: dict) -> None:
    """Write ``cracks.csv`` (one row per crack) and ``report.html`` for the photos of ``rows``."""
    entries = []
    for row in rows:
        paths = output_paths(output_folder(output_dir, row["photo"]), PurePosixPath(row["photo"]).stem)
        document = read_crack_document(paths["cracks"], geometry=False) if row["status"] != "failed" else None
        status = f"{row['status']}: {row['detail']}" if row.get("detail") else row["status"]
        entries.append({"photo": row["photo"], "status": status, "document": document, "thumb": paths["thumb"],
                        "overlay": paths["widths"].relative_to(output_dir).as_posix()})
    write_cracks_csv(output_dir / "cracks.csv", entries)
    generated = datetime.now().isoformat(timespec="seconds")
    atomic_write_bytes(output_dir / "report.html", render_report(entries, settings, generated).encode())


def write_cracks_csv(path: Path, entries: list[dict]) -> None:
    rows = [{**crack, "photo": entry["photo"], **dict(zip(("bbox_x", "bbox_y", "bbox_w", "bbox_h"), crack["bbox"])),
             "centroid_x": crack["centroid"][0], "centroid_y": crack["centroid"][1]}
            for entry in entries for crack in (entry["document"]["cracks"] if entry["document"] else [])]
    write_csv(path, CRACK_FIELDS, rows)
