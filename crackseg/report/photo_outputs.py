"""Per-photo prediction outputs, each written atomically: mask, probability, overlay, contours;
and the batch's summary.csv."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from crackseg.io import ImageReadError, read_mask, write_csv, write_image, write_json_streamed

SUMMARY_FIELDS = ["photo", "width", "height", "crack_pixels", "crack_fraction", "contours", "cracks", "total_length",
                  "max_width", "unit", "tiles", "tiles_skipped", "seconds", "measure_seconds", "status", "detail"]
MEASUREMENT_OUTPUTS = ("cracks", "geojson", "widths", "thumb")  # written by crackseg.report.crack_outputs


IMAGE_OUTPUT_SUFFIXES = ("_mask.png", "_overlay.jpg", "_prob.png", "_widths.jpg", "_thumb.jpg")


def photo_stem_of_output(path: Path) -> str | None:
    """The stem of the photo whose output image ``path`` would be (by name), else None."""
    return next((path.name[: -len(s)] for s in IMAGE_OUTPUT_SUFFIXES if path.name.endswith(s)), None)


def output_folder(output_dir: Path, photo: str) -> Path:
    """Where the outputs of the photo with key ``photo`` (its path relative to the input, with
    ``/``) go: ``output_dir`` plus the photo's folder."""
    return Path(output_dir).joinpath(*PurePosixPath(photo).parent.parts)


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


def find_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Outer outline of every connected crack region as OpenCV returns it ((N, 1, 2) int32 x, y
    source pixels), top to bottom, then left to right."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    corners = np.array([cv2.boundingRect(c)[:2] for c in contours], np.int64).reshape(-1, 2)
    return [contours[i] for i in np.lexsort((corners[:, 0], corners[:, 1]))]


def contour_record(contour: np.ndarray, mask: np.ndarray) -> dict:
    """A contour as ``_contours.json`` holds it: polygon, area, pixels (of the mask in its box), bbox."""
    x, y, w, h = cv2.boundingRect(contour)
    return {"points": contour[:, 0, :].tolist(), "area": float(cv2.contourArea(contour)),
            "pixels": int(np.count_nonzero(mask[y : y + h, x : x + w])), "bbox": [int(x), int(y), int(w), int(h)]}


def write_contours(path: Path, mask: np.ndarray, contours: list[np.ndarray], threshold: float) -> None:
    """``_contours.json``, streamed: a mask of half a million specks never holds its polygons as
    Python lists (2.8 KB per contour, measured) nor the whole text in memory."""
    head = {"width": int(mask.shape[1]), "height": int(mask.shape[0]), "threshold": threshold, "count": len(contours)}
    write_json_streamed(path, head, "contours", (contour_record(c, mask) for c in contours))


def draw_overlay(photo: np.ndarray, contours: list[np.ndarray]) -> np.ndarray:
    """The photo with crack contours drawn in red, lines thick enough to see on large photos."""
    overlay = photo.copy()
    thickness = max(1, round(max(photo.shape[:2]) / 1500))
    cv2.drawContours(overlay, contours, -1, (255, 0, 0), thickness, lineType=cv2.LINE_AA)
    return overlay


def write_photo_outputs(paths: dict[str, Path], photo: np.ndarray, prob: np.ndarray, mask: np.ndarray,
                        threshold: float) -> dict:
    """Write the prediction outputs of one photo (``mask``: ``prob >= threshold``); returns its
    summary row fields (without timing)."""
    contours = find_contours(mask)
    if "prob" in paths:
        write_image(paths["prob"], cv2.convertScaleAbs(prob, alpha=255))  # rounds and saturates, no float copy
    write_image(paths["overlay"], draw_overlay(photo, contours), jpeg_quality=90)
    write_contours(paths["contours"], mask, contours, threshold)
    write_image(paths["mask"], mask.astype(np.uint8) * 255)  # last: its presence marks a finished photo
    crack_pixels = int(np.count_nonzero(mask))
    return {
        "width": photo.shape[1],
        "height": photo.shape[0],
        "crack_pixels": crack_pixels,
        "crack_fraction": round(crack_pixels / mask.size, 6),
        "contours": len(contours),
    }


def saved_prediction_fields(paths: dict[str, Path], mask: np.ndarray | None = None, head: dict | None = None) -> dict:
    """The summary row fields of :func:`write_photo_outputs`, from the files it wrote (for a
    photo skipped as done): the crack pixels counted on the saved mask (``mask`` and the
    contours file's ``head``: when already read)."""
    head = read_contours_head(paths["contours"]) if head is None else head
    mask = read_mask(paths["mask"]) if mask is None else mask
    crack_pixels = int(np.count_nonzero(mask))
    return {"width": head["width"], "height": head["height"], "crack_pixels": crack_pixels,
            "crack_fraction": round(crack_pixels / mask.size, 6), "contours": head["count"]}


def read_contours_head(path: Path) -> dict:
    """Size, threshold and contour count of a ``_contours.json``, from its first bytes (a file of half a
    million contours is not parsed); a file without a count (older runs) is read whole."""
    with open(path, "rb") as file:
        start = file.read(512).decode("utf-8", "replace")
    found = re.match(r'\{"width": (\d+), "height": (\d+), "threshold": ([^,]+), "count": (\d+),', start)
    if found:
        width, height, threshold, count = found.groups()
        return {"width": int(width), "height": int(height), "threshold": float(threshold), "count": int(count)}
    try:
        document = json.loads(Path(path).read_text())
        return {"width": document["width"], "height": document["height"], "threshold": float(document["threshold"]),
                "count": len(document["contours"])}
    except (ValueError, KeyError, TypeError) as err:
        raise ImageReadError(f"unreadable saved contours ({type(err).__name__}: {err}); delete the file or "
                             f"predict with overwrite=true: {path}") from err


def write_summary(path: Path, rows: list[dict]) -> None:
    write_csv(path, SUMMARY_FIELDS, rows)
