"""Per-photo crack measurement outputs: JSON, GeoJSON, width-coloured overlay and thumbnail.

Width classes colour each skeleton pixel by the crack's local width: with ``mm_per_px``
< 0.1 mm, 0.1-0.3 mm, 0.3-1 mm, >= 1 mm (0.3 mm: a common code limit); without it
< 2 px, 2-4 px, 4-8 px, >= 8 px.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from crackseg.io import write_image, write_json_streamed
from crackseg.measure import JOINT, TYPES, Crack

MM_BOUNDS = (0.1, 0.3, 1.0)
PX_BOUNDS = (2.0, 4.0, 8.0)
CLASS_COLOURS = ((0, 190, 0), (255, 215, 0), (255, 120, 0), (220, 0, 0))  # RGB, narrow to wide
JOINT_COLOUR = (0, 120, 255)  # RGB: instances taken for joints, under the cracks
THUMB_SIZE = 800  # px, the longer side
THUMB_LABELS = 40  # the widest cracks get their number on the thumbnail


def width_classes(mm_per_px: float | None) -> list[str]:
    """The classes' labels, narrow to wide."""
    bounds, unit = (MM_BOUNDS, "mm") if mm_per_px else (PX_BOUNDS, "px")
    low, high = f"{bounds[0]:g}", f"{bounds[-1]:g}"
    return [f"< {low} {unit}"] + [f"{a:g}-{b:g} {unit}" for a, b in zip(bounds, bounds[1:])] + [f">= {high} {unit}"]


def width_class(width_px: np.ndarray | float, mm_per_px: float | None) -> np.ndarray:
    """Class index (0: narrowest) of widths in px."""
    bounds = np.array(MM_BOUNDS) / mm_per_px if mm_per_px else np.array(PX_BOUNDS)
    return np.searchsorted(bounds, width_px, side="right")


def crack_records(cracks: list[Crack], mm_per_px: float | None, geometry: bool = True) -> Iterator[dict]:
    """Each crack as ``<stem>_cracks.json`` holds it, made one at a time."""
    classes = width_classes(mm_per_px)
    for crack in cracks:
        yield {**crack.to_dict(mm_per_px, geometry),
               "width_class": classes[int(width_class(crack.max_width, mm_per_px))]}


def document_head(cracks: list[Crack], shape: tuple[int, int], settings: dict) -> dict:
    """``<stem>_cracks.json`` but its ``cracks``: size, unit, settings, width classes and totals."""
    mm_per_px = settings.get("mm_per_px")
    classes = width_classes(mm_per_px)
    return {
        "width": int(shape[1]), "height": int(shape[0]), "unit": "mm" if mm_per_px else "px", "settings": settings,
        "width_classes": classes, "totals": totals(list(crack_records(cracks, mm_per_px, geometry=False)), classes),
    }


def crack_document(cracks: list[Crack], shape: tuple[int, int], settings: dict) -> dict:
    """Everything ``<stem>_cracks.json`` holds: measures, geometry, totals and the settings."""
    return {**document_head(cracks, shape, settings), "cracks": list(crack_records(cracks, settings.get("mm_per_px")))}


def totals(records: list[dict], classes: list[str]) -> dict:
    """Count, total length, largest width, and counts by width class (of max width) of the cracks;
    counts by type, joints included."""
    types = {t: sum(r["type"] == t for r in records) for t in TYPES}
    records = [r for r in records if r["type"] != JOINT]
    return {
        "cracks": len(records),
        "total_length": round(sum(r["length"] for r in records), 3),
        "max_width": max((r["max_width"] for r in records), default=0.0),
        "types": types,
        "width_classes": {c: sum(r["width_class"] == c for r in records) for c in classes},
    }


def geojson(document: dict) -> dict:
    """FeatureCollection in pixel coordinates (x right, y down, pixel centres): per crack its
    skeleton (MultiLineString, a LineString per branch) and outline (Polygon with its cells as
    holes), each with the crack's measures as properties."""
    return {**geojson_head(document), "features": [f for r in document["cracks"] for f in geojson_features(r)]}


def geojson_head(document: dict) -> dict:
    return {"type": "FeatureCollection", "unit": document["unit"], "mm_per_px": document["settings"].get("mm_per_px"),
            "image_size": [document["width"], document["height"]]}


def geojson_features(record: dict) -> list[dict]:
    """The two features of one crack record: its skeleton and its outline."""
    properties = {k: v for k, v in record.items() if k not in ("skeleton", "outline")}
    lines = [line if len(line) > 1 else line * 2 for line in record["skeleton"]]
    return [{"type": "Feature", "id": f"{record['id']}-skeleton", "properties": {**properties, "part": "skeleton"},
             "geometry": {"type": "MultiLineString", "coordinates": lines}},
            {"type": "Feature", "id": f"{record['id']}-outline", "properties": {**properties, "part": "outline"},
             "geometry": {"type": "Polygon", "coordinates": [_ring(r) for r in record["outline"]]}}]


def _ring(points: list[list[int]]) -> list[list[int]]:
    """A closed GeoJSON ring (at least 4 positions, even for a one- or two-pixel outline)."""
    ring = points + [points[0]]
    while len(ring) < 4:
        ring.insert(-1, points[-1])
    return ring


def draw_widths(photo: np.ndarray, cracks: list[Crack], mm_per_px: float | None, size: tuple[int, int] | None = None,
                thickness: int | None = None) -> np.ndarray:
    """The photo (resized to ``size`` (W, H) when given) with every skeleton pixel painted in the
    colour of its width class, lines ``thickness`` px wide; where lines overlap the wider class wins.
    Joints are painted in ``JOINT_COLOUR``, under any crack."""
    height, width = photo.shape[:2]
    image = photo.copy() if size is None else cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
    scale = image.shape[1] / width
    thickness = thickness or max(3, round(max(height, width) / 1500))
    classes = np.zeros(image.shape[:2], np.uint8)  # 0: nothing, 1: a joint, else class index + 2
    for crack in cracks:
        xs, ys, widths = crack.profile.T
        cols = np.clip(np.round(xs * scale).astype(int), 0, image.shape[1] - 1)
        rows = np.clip(np.round(ys * scale).astype(int), 0, image.shape[0] - 1)
        value = np.ones(len(xs), np.uint8) if crack.type == JOINT else width_class(widths, mm_per_px) + 2
        np.maximum.at(classes, (rows, cols), value.astype(np.uint8))
    classes = cv2.dilate(classes, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (thickness, thickness)))
    painted = classes > 0
    image[painted] = np.array((JOINT_COLOUR, *CLASS_COLOURS), np.uint8)[classes[painted] - 1]
    return image


def draw_thumbnail(photo: np.ndarray, cracks: list[Crack], mm_per_px: float | None) -> np.ndarray:
    """A small width overlay, the widest cracks numbered (their ``id``) next to their centre line."""
    height, width = photo.shape[:2]
    scale = min(1.0, THUMB_SIZE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    thumb = draw_widths(photo, cracks, mm_per_px, size, thickness=2)
    for crack in sorted((c for c in cracks if c.type != JOINT), key=lambda c: -c.max_width)[:THUMB_LABELS]:
        points = crack.profile[:, :2] if len(crack.profile) else np.array([crack.centroid])
        x, y = points[np.argmin(np.hypot(*(points - crack.centroid).T))] * scale
        org = (int(min(x + 4, size[0] - 14)), int(max(y - 4, 10)))
        for colour, weight in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # white on a black edge
            cv2.putText(thumb, str(crack.id), org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, weight, cv2.LINE_AA)
    return thumb


def write_crack_outputs(paths: dict[str, Path], photo: np.ndarray, cracks: list[Crack], settings: dict) -> dict:
    """Write one photo's measurement outputs; returns its summary row fields. The JSON files are
    streamed a crack at a time (tens of thousands of cracks never sit in memory as JSON lists).
    ``<stem>_cracks.json`` goes last: its presence (with the same settings) marks a measured photo."""
    head = document_head(cracks, photo.shape[:2], settings)
    mm_per_px = settings.get("mm_per_px")
    features = (f for record in crack_records(cracks, mm_per_px) for f in geojson_features(record))
    write_json_streamed(paths["geojson"], geojson_head(head), "features", features)
    write_image(paths["widths"], draw_widths(photo, cracks, mm_per_px), jpeg_quality=90)
    write_image(paths["thumb"], draw_thumbnail(photo, cracks, mm_per_px), jpeg_quality=85)
    write_json_streamed(paths["cracks"], head, "cracks", crack_records(cracks, mm_per_px))
    return summary_fields(head)


def summary_fields(document: dict) -> dict:
    """The crack columns of summary.csv from a ``<stem>_cracks.json`` document."""
    return {"width": document["width"], "height": document["height"], "unit": document["unit"],
            **{k: document["totals"][k] for k in ("cracks", "total_length", "max_width")},
            "joints": document["totals"]["types"].get(JOINT, 0)}


def read_crack_document(path: Path, geometry: bool = True) -> dict | None:
    """A ``<stem>_cracks.json`` document (without the cracks' skeletons and outlines unless
    ``geometry``), or None when missing or unreadable (then re-measured)."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not geometry and isinstance(document, dict):
        for record in document.get("cracks", []):
            record.pop("skeleton", None)
            record.pop("outline", None)
    return document
