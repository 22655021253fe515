"""Per-photo prediction outputs, each written atomically: mask, probability, overlay, contours;
and the batch's summary.csv."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import cv2
import numpy as np

from crackseg.io import (
    ImageReadError, atomic_write, json_streamed_head, read_mask, write_csv, write_image, write_json_streamed,
)

SUMMARY_FIELDS = ["photo", "width", "height", "threshold", "crack_pixels", "crack_fraction", "contours", "cracks",
                  "total_length", "max_width", "unit", "joints", "tiles", "tiles_skipped", "seconds", "measure_seconds",
                  "status", "detail"]
MEASUREMENT_OUTPUTS = ("cracks", "geojson", "widths", "thumb")  # written by crackseg.report.crack_outputs


IMAGE_OUTPUT_SUFFIXES = ("_mask.png", "_joints.png", "_overlay.jpg", "_prob.png", "_widths.jpg", "_thumb.jpg")


def photo_stem_of_output(path: Path) -> str | None:
    """The stem of the photo whose output image ``path`` would be (by name), else None."""
    return next((path.name[: -len(s)] for s in IMAGE_OUTPUT_SUFFIXES if path.name.endswith(s)), None)


def output_folder(output_dir: Path, photo: str) -> Path:
    """Where the outputs of the photo with key ``photo`` (its path relative to the input, with
    ``/``) go: ``output_dir`` plus the photo's folder."""
    return Path(output_dir).joinpath(*PurePosixPath(photo).parent.parts)


def output_paths(output_dir: Path, stem: str, save_prob: bool = True, measure: bool = True,
                 joints: bool = False) -> dict[str, Path]:
    """A photo's output files; ``joints``: the joints left out of its mask have their own."""
    paths = {
        "mask": output_dir / f"{stem}_mask.png",
        "overlay": output_dir / f"{stem}_overlay.jpg",
        "contours": output_dir / f"{stem}_contours.json",
    }
    if joints:
        paths["joints"] = output_dir / f"{stem}_joints.png"
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
    """Outer outline of every connected crack region (8-connected; regions inside another's holes
    too) as OpenCV returns it ((N, 1, 2) int32 x, y source pixels), top to bottom, then left to right."""
    contours, hierarchy = cv2.findContours(_as_uint8(mask), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    outer = [c for c, parent in zip(contours, hierarchy[0, :, 3]) if parent < 0]  # not a hole's outline
    corners = np.array([cv2.boundingRect(c)[:2] for c in outer], np.int64).reshape(-1, 2)
    return [outer[i] for i in np.lexsort((corners[:, 0], corners[:, 1]))]


def region_pixels(mask: np.ndarray, contours: list[np.ndarray]) -> list[int]:
    """The pixel count of the region each of ``contours`` outlines (a box would also count the
    pixels of regions inside it)."""
    if not contours:
        return []
    _, labels, stats, _ = cv2.connectedComponentsWithStats(_as_uint8(mask), connectivity=8)
    return [int(stats[labels[c[0, 0, 1], c[0, 0, 0]], cv2.CC_STAT_AREA]) for c in contours]


def _as_uint8(mask: np.ndarray) -> np.ndarray:
    return mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8)


def contour_record(contour: np.ndarray, pixels: int) -> dict:
    """A contour as ``_contours.json`` holds it: polygon, area, pixels (of its region), bbox."""
    x, y, w, h = cv2.boundingRect(contour)
    return {"points": contour[:, 0, :].tolist(), "area": float(cv2.contourArea(contour)), "pixels": int(pixels),
            "bbox": [int(x), int(y), int(w), int(h)]}


def write_contours(path: Path, mask: np.ndarray, contours: list[np.ndarray], threshold: float,
                   joints: dict | None = None, source: dict | None = None) -> None:
    """``_contours.json``, streamed: a mask of half a million specks never holds its polygons as
    Python lists (2.8 KB per contour, measured) nor the whole text in memory. ``joints``: the rule
    whose joints were left out of the mask (None: none were); ``source``: the photo's
    ``file_fingerprint``."""
    head = {"width": int(mask.shape[1]), "height": int(mask.shape[0]), "threshold": threshold, "count": len(contours),
            "joints": joints, "source": source}
    records = (contour_record(c, n) for c, n in zip(contours, region_pixels(mask, contours)))
    write_json_streamed(path, head, "contours", records)


def draw_overlay(photo: np.ndarray, contours: list[np.ndarray]) -> np.ndarray:
    """The photo with crack contours drawn in red, lines thick enough to see on large photos."""
    overlay = photo.copy()
    thickness = max(1, round(max(photo.shape[:2]) / 1500))
    cv2.drawContours(overlay, contours, -1, (255, 0, 0), thickness, lineType=cv2.LINE_AA)
    return overlay


def probability_image(prob: np.ndarray) -> np.ndarray:
    """The probabilities as ``_prob.png`` holds them: 0-255, rounded and saturated (no float copy)."""
    return cv2.convertScaleAbs(prob, alpha=255)


def write_photo_outputs(paths: dict[str, Path], photo: np.ndarray, prob_image: np.ndarray | None, mask: np.ndarray,
                        threshold: float, joints: dict | None = None, source: dict | None = None) -> dict:
    """Write the prediction outputs of one photo (``prob_image``: :func:`probability_image`, needed
    when ``paths`` has "prob"; ``mask``: probabilities >= ``threshold``, less the joints of rule
    ``joints`` when given; ``source``: the photo file's fingerprint); returns its summary row
    fields (without timing)."""
    if "prob" in paths and (prob_image is None or prob_image.dtype != np.uint8):
        raise TypeError(f"_prob.png takes probability_image(prob) (uint8), got {getattr(prob_image, 'dtype', None)}")
    contours = find_contours(mask)
    if "prob" in paths:
        write_image(paths["prob"], prob_image)
    write_image(paths["overlay"], draw_overlay(photo, contours), jpeg_quality=90)
    write_contours(paths["contours"], mask, contours, threshold, joints, source)
    write_image(paths["mask"], mask.astype(np.uint8) * 255)  # last: its presence marks a finished photo
    crack_pixels = int(np.count_nonzero(mask))
    return {
        "width": photo.shape[1],
        "height": photo.shape[0],
        "threshold": threshold,
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
    return {"width": head["width"], "height": head["height"], "threshold": head["threshold"],
            "crack_pixels": crack_pixels, "crack_fraction": round(crack_pixels / mask.size, 6), "contours": head["count"]}


_CONTOURS_HEAD = re.compile(r'\{"width": (\d+), "height": (\d+), "threshold": ([^,]+), "count": (\d+),'
                            r'(?: "joints": (null|\{[^}]*\}),)?(?: "source": (null|\{[^}]*\}),)? "contours": \[')


def _match_head(path: Path) -> re.Match | None:
    """The head of a ``_contours.json`` as crackseg writes it, matched in its first KiB."""
    with open(path, "rb") as file:
        return _CONTOURS_HEAD.match(file.read(1024).decode("utf-8", "replace"))


def _head_of(found: re.Match) -> dict:
    width, height, threshold, count, joints, source = found.groups()
    return {"width": int(width), "height": int(height), "threshold": float(threshold), "count": int(count),
            "joints": json.loads(joints) if joints else None, "source": json.loads(source) if source else None}


def read_contours_head(path: Path) -> dict:
    """Size, threshold, contour count, left-out joints' rule and source photo's fingerprint of a
    ``_contours.json``, from its first bytes (a file of half a million contours is not parsed); a
    file without a count (older runs) is read whole. Older files, without ``joints``, left none
    out; without ``source``, their photo is not known (None)."""
    found = _match_head(path)
    if found:
        return _head_of(found)
    try:
        document = json.loads(Path(path).read_text())
        return {"width": document["width"], "height": document["height"], "threshold": float(document["threshold"]),
                "count": len(document["contours"]), "joints": document.get("joints"), "source": document.get("source")}
    except (ValueError, KeyError, TypeError) as err:
        raise ImageReadError(f"unreadable saved contours ({type(err).__name__}: {err}); delete the file or "
                             f"predict with overwrite=true: {path}") from err


def record_source(path: Path, source: dict) -> bool:
    """Write ``source`` as the photo's fingerprint into a ``_contours.json`` that records one,
    its contours copied as they are (streamed, atomically, synced to disk: it replaces a finished
    output); False, the file left as it is, where it records none or its head has another layout."""
    found = _match_head(path)
    if not found or found.group(6) in (None, "null"):
        return False
    head = json_streamed_head(_head_of(found) | {"source": source}, "contours")

    def write(out: BinaryIO) -> None:
        out.write(head)
        with open(path, "rb") as contours:  # closed before the rename (Windows cannot replace an open file)
            contours.seek(found.end())  # the head is ASCII (json.dumps): its characters are its bytes
            shutil.copyfileobj(contours, out)
        out.flush()
        os.fsync(out.fileno())

    atomic_write(path, write)
    return True


def write_summary(path: Path, rows: list[dict]) -> None:
    write_csv(path, SUMMARY_FIELDS, rows)
