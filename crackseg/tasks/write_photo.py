"""The write stage of predict.py: a predicted photo's outputs and its measurement. Free of torch,
so that writer processes start fast; in processes, the measurement's Python work no longer holds
the GIL against the thread that feeds the model (as writer threads did on a GPU: BENCHMARKS.md)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path

import numpy as np

from crackseg.io import write_image
from crackseg.measure import JointRule, measure_mask, split_joints
from crackseg.report.crack_outputs import write_crack_outputs
from crackseg.report.photo_outputs import MEASUREMENT_OUTPUTS, output_paths, write_photo_outputs


@dataclass
class WriteTask:
    """What the write stage needs of one photo: its output ``paths`` (``output_paths``), the photo,
    ``prob_image`` (``probability_image``; None unless ``_prob.png`` is written) and mask (with its
    joints); ``write_mask``: the mask's files are written (a new prediction, or a saved mask whose
    joints are split again), else only its measurement; ``drop_joints``: the rule whose joints
    leave the mask, or None; ``source``: the photo file's fingerprint, recorded with the mask."""

    paths: dict[str, Path]
    stem: str
    photo: np.ndarray
    prob_image: np.ndarray | None
    mask: np.ndarray
    write_mask: bool
    threshold: float
    settings: dict
    measure: bool
    drop_joints: dict | None
    source: dict | None = None


def write_outputs(task: WriteTask) -> dict:
    """The mask's outputs (``task.write_mask``), then the measurement's; the instances the joint
    rule takes for joints leave the mask unless ``task.drop_joints`` is None. A mask written again
    first loses its old file (the mark of a finished prediction), joints and measurement, so a run
    stopped midway leaves the photo to be predicted again, never an old measurement beside a new
    mask. Returns the photo's summary fields. Takes ``task.prob_image`` (freed once written)."""
    paths, mask, settings, row = task.paths, task.mask, task.settings, {}
    prob_image, task.prob_image = task.prob_image, None
    if task.write_mask:
        every_output = output_paths(paths["mask"].parent, task.stem, joints=True)  # measure=false keeps old ones too
        for key in ("mask", "joints", *MEASUREMENT_OUTPUTS):
            every_output[key].unlink(missing_ok=True)
    cracks, measuring = None, time.perf_counter()
    if task.measure or task.drop_joints is not None:  # joints are told from cracks by their measures
        cracks = _measure(mask, settings)
    measure_seconds = time.perf_counter() - measuring
    joints = split_joints(mask, cracks) if task.drop_joints is not None else None
    if cracks is not None:
        cracks = _at_least(cracks, settings["min_crack_length_px"])
    if task.write_mask:
        if joints is not None and joints.any():
            write_image(paths["joints"], joints.astype(np.uint8) * 255)
        row.update(write_photo_outputs(paths, task.photo, prob_image, mask, task.threshold, task.drop_joints,
                                       task.source))
        prob_image = None
    if task.measure:
        measuring = time.perf_counter()
        row.update(write_crack_outputs(paths, task.photo, cracks, settings))
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
    :func:`write_outputs`; their log records go to this process's handlers, they leave Ctrl-C to
    this process (which lets them finish the photos they hold) and end with it. A process that
    dies (killed out of memory, say) breaks the pool: the photos it held at that moment fail, and
    a fresh pool takes the next ones (and one that found the pool already broken)."""

    def __init__(self, count: int):
        context = multiprocessing.get_context("spawn")
        self._count, self._context, self._lock = count, context, threading.Lock()
        self._records = context.Queue()
        self._listener = QueueListener(self._records, *logging.getLogger().handlers, respect_handler_level=True)
        self._listener.start()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self._count, mp_context=self._context, initializer=_start_writer,
                                   initargs=(self._records, logging.getLogger().level))

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                self._pool = self._new_pool()
        broken.shutdown(wait=False)

    def write_outputs(self, task: WriteTask) -> dict:
        pool = self._pool
        try:
            future = pool.submit(write_outputs, task)
        except BrokenProcessPool:  # broken before this photo reached it: a fresh pool takes it
            self._replace(pool)
            pool = self._pool
            future = pool.submit(write_outputs, task)
        try:
            return future.result()
        except BrokenProcessPool:
            self._replace(pool)
            raise

    def close(self) -> None:
        try:
            self._pool.shutdown()
        finally:
            self._listener.stop()


def _start_writer(records, level: int) -> None:
    """A writer process's set-up: its log records to the parent, Ctrl-C ignored (the parent stops
    the run), and an exit as soon as the parent is gone (killed, say)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    root = logging.getLogger()
    root.handlers[:] = [QueueHandler(records)]
    root.setLevel(level)
    parent = multiprocessing.parent_process()
    threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True).start()
