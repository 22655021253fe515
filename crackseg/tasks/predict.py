"""Batch prediction from a composed Hydra config: the body of ``predict.py``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from crackseg.campaign import CampaignPhoto, find_photos, shard
from crackseg.inference.backends import predictor_from_config
from crackseg.inference.predictor import Predictor
from crackseg.tiling import TileCounts
from crackseg.io import ImageReadError, claimed, read_mask, read_photo, remove_stale_temp_files
from crackseg.measure import measure_mask
from crackseg.options import check_inference_options
from crackseg.report.batch import CLAIMED_ELSEWHERE, publish
from crackseg.report.crack_outputs import read_crack_document, summary_fields, write_crack_outputs
from crackseg.report.photo_outputs import (
    MEASUREMENT_OUTPUTS, output_paths, saved_prediction_fields, write_photo_outputs,
)

log = logging.getLogger(__name__)


def measure_settings(cfg: DictConfig) -> dict:
    """What a photo's measurement depends on besides its mask; stored in its ``_cracks.json``."""
    return {"mm_per_px": None if cfg.mm_per_px is None else float(cfg.mm_per_px),
            "min_crack_length_px": float(cfg.min_crack_length_px)}


def predict(cfg: DictConfig) -> int:
    """Predict (and measure) every input photo (of this run's shard) into ``cfg.output``, its
    outputs in the mirror of its folder; returns how many photos failed.

    A photo whose outputs all exist is skipped; one whose prediction exists but whose measurement
    is missing or was made with other measurement settings is measured again from its saved mask.
    Each photo is claimed with a lock file while it is worked on, so runs started on the same
    output share the photos instead of each doing them all. The campaign's summary.csv (and
    cracks.csv, report.html) cover the photos of every shard that has finished.
    """
    check_inference_options(cfg)
    output_dir = Path(cfg.output)
    photos = find_photos(str(cfg.input), output_dir, cfg.recursive)
    campaign_size, photos = len(photos), shard(photos, cfg.shard.index, cfg.shard.count)
    settings = measure_settings(cfg)
    predictor, threshold = predictor_from_config(cfg, cascade=cfg.cascade)
    for folder in sorted({output_dir} | {photo.output_dir(output_dir) for photo in photos}):
        for path in remove_stale_temp_files(folder):
            log.info("removed %s, left by a run killed while writing", path)
    in_shard = f" (shard {cfg.shard.index} of {cfg.shard.count}: {campaign_size} in all)" if cfg.shard.count > 1 else ""
    log.info("%d photo(s)%s -> %s on %s (%s), scales %s, tile %d, threshold %.3f", len(photos), in_shard, output_dir,
             predictor.device, type(predictor.model).__name__, list(cfg.scales), predictor.tile, threshold)

    rows = []
    for photo in tqdm(photos, desc="photos", unit="photo", disable=len(photos) <= 1):
        folder = photo.output_dir(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with claimed(folder / f".{photo.stem}.lock") as mine:  # parallel runs share the photos
            if mine:
                rows.append(_photo_row(photo, folder, cfg, predictor, threshold, settings))
            else:
                rows.append({"photo": photo.key, "status": "skipped", "detail": CLAIMED_ELSEWHERE})
    failed = sum(r["status"] == "failed" for r in rows)
    photos_in_summary = publish(output_dir, rows, _report_settings(cfg, predictor.tile, threshold, settings),
                                cfg.measure, cfg.shard.index, cfg.shard.count)
    log.info("done: %d ok, %d skipped, %d failed; summary of %d photo(s): %s", sum(r["status"] == "ok" for r in rows),
             sum(r["status"] == "skipped" for r in rows), failed, photos_in_summary, output_dir / "summary.csv")
    return failed


def _photo_row(source: CampaignPhoto, folder: Path, cfg: DictConfig, predictor: Predictor, threshold: float,
               settings: dict) -> dict:
    """Predict and measure one photo into ``folder`` (or skip what is done); its summary row. Any
    failure fails this photo only: ``status`` is ok, skipped or failed, ``detail`` says why."""
    photo_path = source.path
    paths = output_paths(folder, source.stem, cfg.save_prob, cfg.measure)
    row = {"photo": source.key}
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
            row |= {**saved_prediction_fields(paths), "detail": "measured the saved mask"}
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
