"""Batch prediction from a composed Hydra config: the body of ``predict.py``."""

from __future__ import annotations

import glob
import logging
import time
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from crackseg.inference.predictor import Predictor, load_model, resolve_device
from crackseg.io import IMAGE_SUFFIXES, ImageReadError, read_photo
from crackseg.report.writers import output_paths, write_photo_outputs, write_summary

log = logging.getLogger(__name__)


def find_photos(spec: str) -> list[Path]:
    """Photos named by a folder (its images, not recursive), a file, or a glob pattern."""
    path = Path(spec)
    if path.is_dir():
        photos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        photos = [path]
    else:
        photos = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise FileNotFoundError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) found for input={spec}")
    return photos


def predict(cfg: DictConfig) -> int:
    """Predict every input photo into ``cfg.output``; returns how many photos failed."""
    photos = find_photos(str(cfg.input))
    device = resolve_device(cfg.device)
    model = load_model(cfg.ckpt, device)
    threshold = float(cfg.threshold if cfg.threshold is not None else model.hparams.threshold)
    predictor = Predictor(model, cfg.scales, cfg.tile, cfg.overlap, cfg.batch_size, cfg.blend, cfg.precision)
    output_dir = Path(cfg.output)
    output_dir.mkdir(parents=True, exist_ok=True)
    log.info("%d photo(s) -> %s on %s, scales %s, threshold %.3f", len(photos), output_dir, device, list(cfg.scales), threshold)

    stems = [p.stem for p in photos]
    duplicates = {s for s in stems if stems.count(s) > 1}
    if duplicates:
        raise ValueError(f"photos with the same name would overwrite each other's outputs: {sorted(duplicates)}")

    rows, failed = [], 0
    for photo_path in tqdm(photos, desc="photos", unit="photo", disable=len(photos) == 1):
        paths = output_paths(output_dir, photo_path.stem, cfg.save_prob)
        row = {"photo": str(photo_path)}
        if not cfg.overwrite and all(p.is_file() for p in paths.values()):
            rows.append({**row, "status": "skipped: outputs exist"})
            continue
        started = time.perf_counter()
        try:
            photo = read_photo(photo_path)
            height, width = photo.shape[:2]
            with tqdm(total=predictor.tiles_for(height, width), desc=photo_path.name, unit="tile", leave=False) as bar:
                prob = predictor(photo, progress=bar.update)
            row.update(write_photo_outputs(paths, photo, prob, threshold))
            row["status"] = "ok"
        except ImageReadError as err:
            failed += 1
            row["status"] = f"failed: {err}"
            log.error("%s", err)
        row["seconds"] = round(time.perf_counter() - started, 2)
        rows.append(row)
    write_summary(output_dir / "summary.csv", rows)
    log.info("done: %d ok, %d skipped, %d failed; summary: %s", sum(r["status"] == "ok" for r in rows),
             sum(r["status"].startswith("skipped") for r in rows), failed, output_dir / "summary.csv")
    return failed
