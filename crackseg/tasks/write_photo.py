"""The write stage of predict.py: a predicted photo's outputs and its measurement. Free of torch,
so that writer processes start fast; in processes, the measurement's Python work no longer holds
the GIL against the thread that feeds the model (measured on a GPU: BENCHMARKS.md)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from crackseg.io import write_image
from crackseg.measure import JointRule, measure_mask, split_joints
from crackseg.report.crack_outputs import write_crack_outputs
from crackseg.report.photo_outputs import MEASUREMENT_OUTPUTS, output_paths, write_photo_outputs


def write_outputs(paths: dict[str, Path], stem: str, photo: np.ndarray, prob: np.ndarray | None, mask: np.ndarray, *,
                  remeasure: bool, threshold: float, settings: dict, measure: bool, drop_joints: dict | None) -> dict:
    """The prediction's outputs (unless re-measuring a saved mask), then the measurement's; the
    instances the joint rule ``drop_joints`` takes for joints leave the mask (None: none leave it).
    A photo predicted again first loses its old mask (the mark of a finished prediction) and
    measurement, so a run stopped midway leaves it to be done again, never the old measurement
    beside a new mask. Returns the photo's summary fields."""
    row = {}
    if not remeasure:
        every_output = output_paths(paths["mask"].parent, stem, joints=True)  # measure=false keeps old ones too
        for key in ("mask", "joints", *MEASUREMENT_OUTPUTS):
            every_output[key].unlink(missing_ok=True)
    cracks, measuring = None, time.perf_counter()
    if measure or drop_joints is not None:  # joints are told from cracks by their measures
        cracks = _measure(mask, settings)
    measure_seconds = time.perf_counter() - measuring
    joints = split_joints(mask, cracks) if drop_joints is not None else None
    if cracks is not None:
        cracks = _at_least(cracks, settings["min_crack_length_px"])
    if not remeasure:
        if joints is not None and joints.any():
            write_image(paths["joints"], joints.astype(np.uint8) * 255)
        row.update(write_photo_outputs(paths, photo, prob, mask, threshold, drop_joints))
    if measure:
        measuring = time.perf_counter()
        row.update(write_crack_outputs(paths, photo, cracks, settings))
        row["measure_seconds"] = round(measure_seconds + time.perf_counter() - measuring, 2)
    return row | {"status": "ok"}


def _measure(mask: np.ndarray, settings: dict) -> list:
    """The mask's instances typed by the joint rule, measured down to the rule's length even where
    ``min_crack_length_px`` is longer: which joints leave the mask does not depend on it."""
    rule = None if settings["joint_rule"] is None else JointRule(**settings["joint_rule"])
    shortest = settings["min_crack_length_px"] if rule is None else min(settings["min_crack_length_px"], rule.min_length_px)
    return measure_mask(mask, shortest, rule)


def _at_least(cracks: list, min_length_px: float) -> list:
    """The cracks (and joints) at least ``min_length_px`` long, numbered again from 1."""
    kept = [c for c in cracks if c.length >= min_length_px]
    for number, crack in enumerate(kept, 1):
        crack.id = number
    return kept


class WriterProcesses:
    """``count`` spawned processes (not forked: the parent holds CUDA and threads) that run
    :func:`write_outputs`. A process that dies (killed out of memory, say) fails the photos the
    pool held at that moment, and a fresh pool takes the next ones."""

    def __init__(self, count: int):
        self._count, self._lock = count, threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self._count, mp_context=multiprocessing.get_context("spawn"))

    def write_outputs(self, **task) -> dict:
        pool = self._pool
        try:
            return pool.submit(write_outputs, **task).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = self._new_pool()
            pool.shutdown(wait=False)
            raise

    def close(self) -> None:
        self._pool.shutdown()
