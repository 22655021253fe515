"""Batch prediction from a composed Hydra config: the body of ``predict.py``."""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omegaconf import DictConfig
from tqdm import tqdm

from crackseg.campaign import CampaignPhoto, find_photos, shard
from crackseg.inference.backends import PhotoThresholds, predictor_from_config
from crackseg.inference.predictor import Predictor
from crackseg.tiling import TileCounts
from crackseg.io import (
    ImageReadError, claimed, file_fingerprint, read_mask, read_photo, remove_stale_temp_files, unchanged_fingerprint,
)
from crackseg.measure import JointRule
from crackseg.options import check_inference_options
from crackseg.report.batch import CLAIMED_ELSEWHERE, publish
from crackseg.report.crack_outputs import read_crack_document, summary_fields
from crackseg.report.photo_outputs import (
    MEASUREMENT_OUTPUTS, output_paths, probability_image, read_contours_head, record_source, saved_prediction_fields,
)
from crackseg.tasks.write_photo import WriteTask, WriterProcesses, write_outputs

log = logging.getLogger(__name__)


def measure_settings(cfg: DictConfig) -> dict:
    """What a photo's measurement depends on besides its mask; stored in its ``_cracks.json``."""
    return {"mm_per_px": None if cfg.mm_per_px is None else float(cfg.mm_per_px),
            "min_crack_length_px": float(cfg.min_crack_length_px), "joint_rule": joint_rule_settings(cfg)}


def joint_rule_settings(cfg: DictConfig) -> dict | None:
    """``cfg.joint_rule`` as plain floats, or None (no instance is taken for a joint)."""
    return None if cfg.joint_rule is None else {k: float(v) for k, v in vars(JointRule(**cfg.joint_rule)).items()}


def dropped_joints(cfg: DictConfig) -> dict | None:
    """The joint rule whose joints leave the crack mask (stored with the mask), or None: none leave it."""
    return None if cfg.keep_joints else joint_rule_settings(cfg)


def predict(cfg: DictConfig) -> int:
    """Predict (and measure) every input photo (of this run's shard) into ``cfg.output``, its
    outputs in the mirror of its folder; returns how many photos failed.

    A photo whose outputs all exist is skipped; one whose prediction exists but whose measurement
    is missing or was made with other measurement settings is measured again from its saved mask;
    one whose mask left out other joints has them split again from its saved mask and joints; one
    whose mask was made at another threshold or of a photo file that has changed since (or is of
    another size: outputs from before files were fingerprinted) is predicted again.
    Each photo is claimed with a lock file while it is worked on, so runs started on the same
    output share the photos instead of each doing them all. The campaign's summary.csv (and
    cracks.csv, report.html) cover the photos of every shard that has finished.
    """
    check_inference_options(cfg)
    output_dir = Path(cfg.output)
    photos = find_photos(str(cfg.input), output_dir, cfg.recursive)
    campaign_size, photos = len(photos), shard(photos, cfg.shard.index, cfg.shard.count)
    settings = measure_settings(cfg)
    predictor, thresholds = predictor_from_config(cfg)
    for folder in sorted({output_dir} | {photo.output_dir(output_dir) for photo in photos}):
        for path in remove_stale_temp_files(folder):
            log.info("removed %s, left by a run killed while writing", path)
    in_shard = f" (shard {cfg.shard.index} of {cfg.shard.count}: {campaign_size} in all)" if cfg.shard.count > 1 else ""
    log.info("%d photo(s)%s -> %s on %s (%s), scales %s, tile %d", len(photos), in_shard, output_dir, predictor.device,
             type(predictor.model).__name__, predictor.describe_scales(), predictor.tile)

    writers = _writers(cfg.pipeline, cfg.writers, predictor.device)
    rows = _predict_photos(photos, output_dir, cfg, predictor, thresholds, settings, writers)
    log.info("thresholds by scales: %s", {k: round(t, 4) for k, t in thresholds.used.items()})
    failed = sum(r["status"] == "failed" for r in rows)
    photos_in_summary = publish(output_dir, rows, _report_settings(cfg, predictor, thresholds, settings),
                                cfg.measure, cfg.shard.index, cfg.shard.count)
    log.info("done: %d ok, %d skipped, %d failed; summary of %d photo(s): %s", sum(r["status"] == "ok" for r in rows),
             sum(r["status"] == "skipped" for r in rows), failed, photos_in_summary, output_dir / "summary.csv")
    elsewhere = [r["photo"] for r in rows if r.get("detail") == CLAIMED_ELSEWHERE]
    if elsewhere:
        log.warning("%d photo(s) left to other runs that hold their locks (%s%s): done when those runs end; the lock "
                    "of a run that died on another machine is taken over after 6 hours (or delete its .<stem>.lock)",
                    len(elsewhere), ", ".join(elsewhere[:3]), ", ..." if len(elsewhere) > 3 else "")
    return failed


@dataclass
class _PhotoJob:
    """One photo on its way through the stages; ``done`` once it is skipped or failed."""

    source: CampaignPhoto
    paths: dict[str, Path]
    row: dict
    claim: ExitStack = field(default_factory=ExitStack)
    done: bool = False
    remeasure: bool = False  # its prediction exists: measure the saved mask
    resplit: bool = False  # ...and split its joints again: they were told by another rule (or kept)
    saved: dict | None = None  # the head of its saved _contours.json (size, threshold, count, joints, source), once read
    fingerprint: dict | None = None  # of the photo file its mask is made of (taken before it is read)
    threshold: float | None = None  # of the scales it is predicted at (they depend on its size)
    photo: np.ndarray | None = None
    prob: np.ndarray | None = None
    mask: np.ndarray | None = None
    seconds: float = 0.0


def _writers(pipeline, writers, device) -> int:
    """How many photos are written and measured at once beside the model (writer processes); 0: no
    pipeline (one photo at a time). ``pipeline=auto`` pipelines on a GPU or where the CPU has cores
    to spare (on a small CPU the model already keeps every core busy); ``writers=auto`` is 1 on a
    CPU, and on a GPU one per 4 cores, at most 4 (a GPU predicts a 12-MP photo faster than one core
    measures it)."""
    cuda, cores = str(device).startswith("cuda"), os.cpu_count() or 1
    if not ((cuda or cores > 2) if pipeline == "auto" else pipeline):
        return 0
    if writers != "auto":
        return writers
    return min(4, max(1, cores // 4)) if cuda else 1


def _predict_photos(photos: list[CampaignPhoto], output_dir: Path, cfg: DictConfig, predictor: Predictor,
                    threshold_at: PhotoThresholds, settings: dict, writers: int) -> list[dict]:
    """Every photo's summary row, in order. Pipelined (``writers`` > 0), photo k+1 is read (a reader
    thread) while the model predicts photo k and up to ``writers`` earlier photos are written and
    measured (writer processes, each fed by a thread): at most ``writers`` + 2 photos in this
    process's memory, plus a copy in each writer; else one photo at a time, all in this process.
    Any failure fails its photo only."""
    started: list[_PhotoJob] = []

    def jobs():
        for photo in tqdm(photos, desc="photos", unit="photo", disable=len(photos) <= 1):
            started.append(_start(photo, output_dir, cfg, settings, threshold_at))
            yield started[-1]

    def load(job: _PhotoJob) -> _PhotoJob:
        return _stage(job, lambda j: _read(j, cfg.max_megapixels))

    def compute(job: _PhotoJob) -> _PhotoJob:
        return _stage(job, lambda j: _predict_one(j, predictor, threshold_at(*j.photo.shape[:2]), cfg.cascade))

    def finish(job: _PhotoJob, processes: WriterProcesses | None = None) -> dict:
        _stage(job, lambda j: _write(j, cfg, settings, processes))
        job.claim.close()
        job.photo = job.prob = job.mask = None
        return job.row | ({"seconds": round(job.seconds, 2)} if job.row["status"] != "skipped" else {})

    try:
        if not writers:
            return [finish(compute(load(job))) for job in jobs()]
        rows, queue, writing = [], jobs(), deque()
        with ExitStack() as stack:
            processes = WriterProcesses(writers)
            stack.callback(processes.close)
            reader = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="read"))
            writer = stack.enter_context(ThreadPoolExecutor(writers, thread_name_prefix="write"))
            loading = _submit_next(reader, load, queue)
            while loading is not None:
                job = loading.result()
                loading = _submit_next(reader, load, queue)  # photo k+1 is read...
                compute(job)  # ...while photo k is predicted...
                while len(writing) >= writers:
                    rows.append(writing.popleft().result())
                writing.append(writer.submit(finish, job, processes))  # ...and written while the next are predicted
            rows.extend(w.result() for w in writing)
        return rows
    finally:  # a run stopped midway gives back its claims
        for job in started:
            job.claim.close()


def _submit_next(executor: ThreadPoolExecutor, fn, queue) -> Future | None:
    job = next(queue, None)
    return None if job is None else executor.submit(fn, job)


def _start(source: CampaignPhoto, output_dir: Path, cfg: DictConfig, settings: dict,
           threshold_at: PhotoThresholds) -> _PhotoJob:
    """Claim the photo (parallel runs share the photos) and decide what is left to do for it."""
    folder = source.output_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = output_paths(folder, source.stem, cfg.save_prob, cfg.measure, joints=True)  # joints: written when any
    job = _PhotoJob(source, paths, {"photo": source.key})
    if job.claim.enter_context(claimed(folder / f".{source.stem}.lock")):
        return _stage(job, lambda j: _plan(j, cfg, settings, threshold_at))
    job.row |= {"status": "skipped", "detail": CLAIMED_ELSEWHERE}
    job.done = True
    return job


def _plan(job: _PhotoJob, cfg: DictConfig, settings: dict, threshold_at: PhotoThresholds) -> None:
    """Skip a photo whose outputs all exist at its threshold (``threshold_at(height, width)``: of
    the scales a photo of its saved size is predicted at); re-measure one whose measurement is
    missing or stale; split again one whose mask left out other joints (its saved mask and joints
    are the thresholded prediction: no need to predict it again); predict again one whose mask was
    made at another threshold or of a photo file that has changed since."""
    paths = job.paths
    job.remeasure = not cfg.overwrite and all(p.is_file() for k, p in paths.items()
                                               if k not in (*MEASUREMENT_OUTPUTS, "joints"))  # joints: when any
    if job.remeasure:
        job.saved = read_contours_head(paths["contours"])
        recorded = job.saved["source"]
        if recorded is not None:
            job.saved["source"] = unchanged_fingerprint(job.source.path, recorded)
        if recorded is not None and job.saved["source"] is None:
            log.info("%s: predicted again (the photo file changed since its outputs were made)", job.source.path)
            job.remeasure = False
        elif job.saved["threshold"] != (threshold := threshold_at(job.saved["height"], job.saved["width"])):
            log.info("%s: predicted again (its saved mask was made at threshold %.4f, this run's is %.4f)",
                     job.source.path, job.saved["threshold"], threshold)
            job.remeasure = False
        elif job.saved["joints"] != dropped_joints(cfg):
            log.info("%s: joints split again from its saved mask (which left out the joints of rule %s; this run's: %s)",
                     job.source.path, job.saved["joints"], dropped_joints(cfg))
            job.resplit = True
        if job.remeasure and not job.resplit and job.saved["source"] != recorded:  # a re-split writes it anyway
            _record_new_times(job)
    document = _measured(paths, settings) if job.remeasure and not job.resplit and cfg.measure else None
    if job.remeasure and not job.resplit and (document or not cfg.measure):
        job.row |= {**saved_prediction_fields(paths, head=job.saved), **(summary_fields(document) if document else {}),
                    "status": "skipped", "detail": "outputs exist"}
        job.done = True


def _record_new_times(job: _PhotoJob) -> None:
    """Record the times of a photo file whose bytes are those its outputs were made of (a copy,
    a ``touch``, a ``chmod``), so the next run does not read it to hash it again."""
    try:
        record_source(job.paths["contours"], job.saved["source"])
    except OSError as err:
        log.warning("%s: its new file times could not be recorded (%s); it is hashed again next run",
                    job.source.path, err)


def _stage(job: _PhotoJob, stage) -> _PhotoJob:
    """Run ``stage(job)`` unless the job is done, timed; a failure fails this photo only."""
    if job.done:
        return job
    started = time.perf_counter()
    try:
        stage(job)
    except ImageReadError as err:
        job.row |= {"status": "failed", "detail": str(err)}
        job.done = True
        log.error("%s", err)
    except Exception as err:  # noqa: BLE001 - whatever goes wrong with one photo fails that photo only
        job.row |= {"status": "failed", "detail": f"{type(err).__name__}: {err}"}
        job.done = True
        log.exception("%s failed", job.source.path)
    job.seconds += time.perf_counter() - started
    return job


def _read(job: _PhotoJob, max_megapixels: float) -> None:
    unreadable = None
    if not job.remeasure:
        try:  # before reading it: a photo changed meanwhile is done again next time
            job.fingerprint = file_fingerprint(job.source.path)
        except OSError as err:
            unreadable = err  # read_photo says first what is wrong with the file, where it can
    job.photo = read_photo(job.source.path, max_megapixels)
    if unreadable is not None:
        raise ImageReadError(f"cannot fingerprint the photo file ({unreadable}): {job.source.path}")
    height, width = job.photo.shape[:2]
    if job.remeasure and (job.saved["height"], job.saved["width"]) != (height, width):
        log.info("%s: predicted again (its saved mask is %dx%d, the photo now %dx%d: replaced)", job.source.path,
                 job.saved["width"], job.saved["height"], width, height)
        job.remeasure = job.resplit = False
        job.fingerprint = file_fingerprint(job.source.path)
    if job.remeasure:
        job.fingerprint = job.saved["source"]  # of the photo the saved mask was made of: a re-split keeps it
        job.mask = read_mask(job.paths["mask"], job.photo.shape[:2])
        if job.resplit:  # its fields come from the mask written again
            job.row["detail"] = "split the saved mask's joints again"
        else:
            job.row |= {**saved_prediction_fields(job.paths, job.mask, job.saved), "detail": "measured the saved mask"}
        if job.saved["joints"] is not None and job.paths["joints"].is_file():  # the joints left out of it
            job.mask |= read_mask(job.paths["joints"], job.photo.shape[:2])


def _predict_one(job: _PhotoJob, predictor: Predictor, threshold: float, cascade: bool) -> None:
    """The photo's probability and mask at ``threshold`` (its scales'); ``cascade``: skip the tiles
    that cannot change the mask. A photo whose saved mask is kept keeps it (made at that threshold)."""
    job.threshold = threshold
    if job.remeasure:
        return
    height, width = job.photo.shape[:2]
    counts = TileCounts()
    with tqdm(total=predictor.tiles_for(height, width), desc=job.source.path.name, unit="tile", leave=False) as bar:
        job.prob = predictor(job.photo, progress=bar.update, counts=counts,
                             cascade_threshold=threshold if cascade else None)
    job.row |= {"tiles": counts.computed + counts.skipped, "tiles_skipped": counts.skipped}
    job.mask = job.prob >= threshold


def _write(job: _PhotoJob, cfg: DictConfig, settings: dict, processes: WriterProcesses | None = None) -> None:
    """The photo's outputs and measurement (:func:`write_outputs`), in ``processes`` when given."""
    paths = {k: p for k, p in job.paths.items() if k != "prob"} if job.resplit else job.paths  # its _prob.png stays
    task = WriteTask(paths, job.source.stem, job.photo,
                     probability_image(job.prob) if "prob" in paths and job.prob is not None else None,
                     job.mask, not job.remeasure or job.resplit, job.threshold, settings,
                     cfg.measure, dropped_joints(cfg), job.fingerprint)
    job.prob = None  # freed now: the task holds the 8-bit image, a quarter of the float map, until written
    job.row.update(processes.write_outputs(task) if processes else write_outputs(task))


def _measured(paths: dict[str, Path], settings: dict) -> dict | None:
    """The photo's crack document when all its measurement outputs exist with these settings."""
    if not all(paths[k].is_file() for k in MEASUREMENT_OUTPUTS):
        return None
    document = read_crack_document(paths["cracks"])
    return document if document and document.get("settings") == settings else None


def _report_settings(cfg: DictConfig, predictor: Predictor, thresholds: PhotoThresholds, settings: dict) -> dict:
    return {"checkpoint": cfg.ckpt, "input": cfg.input, "output": cfg.output, "scales": list(cfg.scales),
            "upscale_below_px": cfg.upscale_below_px, "cascade": cfg.cascade, "tile": predictor.tile,
            "overlap": cfg.overlap, "blend": cfg.blend, "thresholds": thresholds.used,
            "device": cfg.device, "precision": predictor.precision, "keep_joints": cfg.keep_joints, **settings}
