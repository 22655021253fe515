"""Per-photo prediction outputs, each written atomically: mask, probability, overlay, contours;
and the batch's summary.csv."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from crackseg.io import atomic_write_bytes, write_csv, write_image

SUMMARY_FIELDS = ["photo", "width", "height", "crack_pixels", "crack_fraction", "contours", "cracks", "total_length",
                  "max_width", "unit", "tiles", "tiles_skipped", "seconds", "measure_seconds", "status", "detail"]
MEASUREMENT_OUTPUTS = ("cracks", "geojson", "widths", "thumb")  # written by crackseg.report.crack_outputs


IMAGE_OUTPUT_SUFFIXES = ("_mask.png", "_overlay.jpg", "_prob.png", "_widths.jpg", "_thumb.jpg")


def photo_stem_of_output(path: Path) -> str | None:
    """The stem of the photo whose output image ``path`` would be (by name), else None."""
    return next((path.name[: -len(s)] for s in IMAGE_OUTPUT_SUFFIXES if path.name.endswith(s)), None)


def output_paths(output_dir: Path, stem: str, save_prob: bool = True, measure: bool = True) -> dict[str, Path]:
    paths = {
        "mask": output_dir / f"{stem}_mask.png",
        "overlay": output_dir / f"{stem}_overlay.jpg",
        "contours": output_dir / f"{stem}_contours.json",
    }
    if save_prob:
        paths["prob"] = output_dir / f"{stem}_prob.png"
    if measure:
        paths |= {
            "cracks": output_dir / f"{stem}_cracks.json",
            "geojson": output_dir / f"{stem}.geojson",
            "widths": output_dir / f"{stem}_widths.jpg",
            "thumb": output_dir / f"{stem}_thumb.jpg",
        }
    return paths


def find_contours(mask: np.ndarray) -> list[dict]:
    """Outer outline of every connected crack region: polygon (x, y source pixels), area, bbox."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    result = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        result.append({
            "points": contour[:, 0, :].tolist(),
            "area": float(cv2.contourArea(contour)),
            "pixels": int(mask[y : y + h, x : x + w].sum()),
            "bbox": [int(x), int(y), int(w), int(h)],
        })
    return sorted(result, key=lambda c: (c["bbox"][1], c["bbox"][0]))


def draw_overlay(photo: np.ndarray, contours: list[dict]) -> np.ndarray:
    """The photo with crack contours drawn in red, lines thick enough to see on large photos."""
    overlay = photo.copy()
    thickness = max(1, round(max(photo.shape[:2]) / 1500))
    polygons = [np.asarray(c["points"], np.int32).reshape(-1, 1, 2) for c in contours]
    cv2.drawContours(overlay, polygons, -1, (255, 0, 0), thickness, lineType=cv2.LINE_AA)
    return overlay


def write_photo_outputs(paths: dict[str, Path], photo: np.ndarray, prob: np.ndarray, mask: np.ndarray,
                        threshold: float) -> dict:
    """Write the prediction outputs of one photo (``mask``: ``prob >= threshold``); returns its
    summary row fields (without timing)."""
    contours = find_contours(mask)
    if "prob" in paths:
        write_image(paths["prob"], cv2.convertScaleAbs(prob, alpha=255))  # rounds and saturates, no float copy
    write_image(paths["overlay"], draw_overlay(photo, contours), jpeg_quality=90)
    document = {"width": int(photo.shape[1]), "height": int(photo.shape[0]), "threshold": threshold, "contours": contours}
    atomic_write_bytes(paths["contours"], json.dumps(document).encode())
    write_image(paths["mask"], mask.astype(np.uint8) * 255)  # last: its presence marks a finished photo
    crack_pixels = int(mask.sum())
    return {
        "width": photo.shape[1],
        "height": photo.shape[0],
        "crack_pixels": crack_pixels,
        "crack_fraction": round(crack_pixels / mask.size, 6),
        "contours": len(contours),
    }


def saved_prediction_fields(paths: dict[str, Path]) -> dict:
    """The summary row fields of :func:`write_photo_outputs`, from the files it wrote (for a
    photo skipped as done): the crack pixels counted on the saved mask."""
    document = json.loads(paths["contours"].read_text())
    mask = cv2.imread(str(paths["mask"]), cv2.IMREAD_GRAYSCALE)
    crack_pixels = int(np.count_nonzero(mask))
    return {"width": document["width"], "height": document["height"], "crack_pixels": crack_pixels,
            "crack_fraction": round(crack_pixels / mask.size, 6), "contours": len(document["contours"])}


def write_summary(path: Path, rows: list[dict]) -> None:
    write_csv(path, SUMMARY_FIELDS, rows)
