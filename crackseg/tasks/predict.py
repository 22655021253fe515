"""Batch prediction from a composed Hydra config: the body of ``predict.py``."""

from __future__ import annotations

import glob
import logging
import time
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from crackseg.inference.backends import predictor_from_config
from crackseg.inference.predictor import Predictor
from crackseg.tiling import TileCounts
from crackseg.io import IMAGE_SUFFIXES, ImageReadError, claimed, read_mask, read_photo, remove_stale_temp_files
from crackseg.measure import measure_mask
from crackseg.options import check_inference_options
from crackseg.report.batch import write_batch_outputs
from crackseg.report.crack_outputs import read_crack_document, summary_fields, write_crack_outputs
from crackseg.report.photo_outputs import (
    MEASUREMENT_OUTPUTS, output_paths, photo_stem_of_output, saved_prediction_fields, write_photo_outputs, write_summary,
)

log = logging.getLogger(__name__)


def find_photos(spec: str, output_dir: Path | None = None) -> list[Path]:
    """Photos named by a folder (its images, not recursive), a file, or a glob pattern; a
    folder or glob leaves out what an earlier run wrote (files in ``output_dir`` named like the
    outputs of another photo found), so ``output`` may be the input folder itself."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        photos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        photos = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    if output_dir is not None:
        output_dir, stems = output_dir.resolve(), {p.stem for p in photos}
        photos = [p for p in photos if not (photo_stem_of_output(p) in stems and output_dir in p.resolve().parents)]
    if not photos:
        raise FileNotFoundError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) found for input={spec}")
    return photos


def measure_settings(cfg: DictConfig) -> dict:
    """What a photo's measurement depends on besides its mask; stored in its ``_cracks.json``."""
    return {"mm_per_px": None if cfg.mm_per_px is None else float(cfg.mm_per_px),
            "min_crack_length_px": float(cfg.min_crack_length_px)}


def predict(cfg: DictConfig) -> int:
    """Predict (and measure) every input photo into ``cfg.output``; returns how many photos failed.

    A photo whose outputs all exist is skipped; one whose prediction exists but whose measurement
    is missing or was made with other measurement settings is measured again from its saved mask.
    Each photo is claimed with a lock file while it is worked on, so runs started on the same
    output share the photos instead of each doing them all.
    """
    check_inference_options(cfg)
    photos = find_photos(str(cfg.input), Path(cfg.output))
    settings = measure_settings(cfg)
    predictor, threshold = predictor_from_config(cfg, cascade=cfg.cascade)
    output_dir = Path(cfg.output)
    output_dir.mkdir(parents=True, exist_ok=True)
    for path in remove_stale_temp_files(output_dir):
        log.info("removed %s, left by a run killed while writing", path)
    log.info("%d photo(s) -> %s on %s (%s), scales %s, tile %d, threshold %.3f", len(photos), output_dir,
             predictor.device, type(predictor.model).__name__, list(cfg.scales), predictor.tile, threshold)

    stems = [p.stem for p in photos]
    duplicates = {s for s in stems if stems.count(s) > 1}
    if duplicates:
        raise ValueError(f"photos with the same name would overwrite each other's outputs: {sorted(duplicates)}")

    rows = []
    for photo_path in tqdm(photos, desc="photos", unit="photo", disable=len(photos) == 1):
        with claimed(output_dir / f".{photo_path.stem}.lock") as mine:  # parallel runs share the photos
            if mine:
                rows.append(_photo_row(photo_path, output_dir, cfg, predictor, threshold, settings))
            else:
                rows.append({"photo": str(photo_path), "status": "skipped", "detail": "another run is predicting it"})
    failed = sum(r["status"] == "failed" for r in rows)
    write_summary(output_dir / "summary.csv", rows)
    if cfg.measure:
        write_batch_outputs(output_dir, rows, _report_settings(cfg, predictor.tile, threshold, settings))
    log.info("done: %d ok, %d skipped, %d failed; summary: %s", sum(r["status"] == "ok" for r in rows),
             sum(r["status"] == "skipped" for r in rows), failed, output_dir / "summary.csv")
    return failed


def _photo_row(photo_path: Path, output_dir: Path, cfg: DictConfig, predictor: Predictor, threshold: float,
               settings: dict) -> dict:
    """Predict and measure one photo (or skip what is done); its summary row. Any failure fails
    this photo only: ``status`` is ok, skipped or failed, ``detail`` says why."""
    paths = output_paths(output_dir, photo_path.stem, cfg.save_prob, cfg.measure)
    row = {"photo": str(photo_path)}
    predicted = not cfg.overwrite and all(p.is_file() for k, p in paths.items() if k not in MEASUREMENT_OUTPUTS)
    document = _measured(paths, settings) if predicted and cfg.measure else None
    if predicted and (document or not cfg.measure):
        return {**row, **saved_prediction_fields(paths), **(summary_fields(document) if document else {}),
                "status": "skipped", "detail": "outputs exist"}
    started = time.perf_counter()
    try:
        photo = read_photo(photo_path, cfg.max_megapixels)
        if predicted:
            mask = read_mask(paths["mask"], photo.shape[:2])
            row["detail"] = "measured the saved mask"
        else:
            height, width = photo.shape[:2]
            counts = TileCounts()
            with tqdm(total=predictor.tiles_for(height, width), desc=photo_path.name, unit="tile", leave=False) as bar:
                prob = predictor(photo, progress=bar.update, counts=counts)
            row["tiles"], row["tiles_skipped"] = counts.computed + counts.skipped, counts.skipped
            mask = prob >= threshold
            row.update(write_photo_outputs(paths, photo, prob, mask, threshold))
            del prob
        if cfg.measure:
            measuring = time.perf_counter()
            cracks = measure_mask(mask, settings["min_crack_length_px"])
            row.update(write_crack_outputs(paths, photo, cracks, settings))
            row["measure_seconds"] = round(time.perf_counter() - measuring, 2)
        row["status"] = "ok"
    except ImageReadError as err:
        row["status"], row["detail"] = "failed", str(err)
        log.error("%s", err)
    except Exception as err:  # noqa: BLE001 - whatever goes wrong with one photo fails that photo only
        row["status"], row["detail"] = "failed", f"{type(err).__name__}: {err}"
        log.exception("%s failed", photo_path)
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def _measured(paths: dict[str, Path], settings: dict) -> dict | None:
    """The photo's crack document when all its measurement outputs exist with these settings."""
    if not all(paths[k].is_file() for k in MEASUREMENT_OUTPUTS):
        return None
    document = read_crack_document(paths["cracks"])
    return document if document and document.get("settings") == settings else None


def _report_settings(cfg: DictConfig, tile: int, threshold: float, settings: dict) -> dict:
    return {"checkpoint": cfg.ckpt, "input": cfg.input, "output": cfg.output, "scales": list(cfg.scales), "cascade": cfg.cascade,
            "tile": tile, "overlap": cfg.overlap, "blend": cfg.blend, "threshold": threshold,
            "device": cfg.device, "precision": cfg.precision, **settings}
