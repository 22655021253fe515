"""The batch's crack outputs, from the per-photo ``<stem>_cracks.json`` of every photo of the
summary (measured in this run or an earlier one): ``cracks.csv`` and ``report.html``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from crackseg.io import atomic_write_bytes, write_csv
from crackseg.report.crack_outputs import read_crack_document
from crackseg.report.html import render_report
from crackseg.report.photo_outputs import output_paths

CRACK_FIELDS = ["photo", "id", "type", "width_class", "unit", "length", "max_width", "mean_width", "p90_width",
                "orientation_deg", "branches", "ends", "junctions", "cells", "pixels", "bbox_x", "bbox_y", "bbox_w",
                "bbox_h", "centroid_x", "centroid_y"]


def write_batch_outputs(output_dir: Path, rows: list[dict], settings: dict) -> None:
    """Write ``cracks.csv`` (one row per crack) and ``report.html`` for the photos of ``rows``."""
    entries = []
    for row in rows:
        paths = output_paths(output_dir, Path(row["photo"]).stem)
        document = read_crack_document(paths["cracks"]) if row["status"] != "failed" else None
        thumb = paths["thumb"].read_bytes() if document and paths["thumb"].is_file() else None
        status = f"{row['status']}: {row['detail']}" if row.get("detail") else row["status"]
        entries.append({"photo": row["photo"], "status": status, "document": document, "thumb": thumb,
                        "overlay": paths["widths"].name})
    write_cracks_csv(output_dir / "cracks.csv", entries)
    generated = datetime.now().isoformat(timespec="seconds")
    atomic_write_bytes(output_dir / "report.html", render_report(entries, settings, generated).encode())


def write_cracks_csv(path: Path, entries: list[dict]) -> None:
    rows = [{**crack, "photo": entry["photo"], **dict(zip(("bbox_x", "bbox_y", "bbox_w", "bbox_h"), crack["bbox"])),
             "centroid_x": crack["centroid"][0], "centroid_y": crack["centroid"][1]}
            for entry in entries for crack in (entry["document"]["cracks"] if entry["document"] else [])]
    write_csv(path, CRACK_FIELDS, rows)
