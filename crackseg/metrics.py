"""Crack segmentation metrics from streamed counts: exact, tolerance and threshold-swept.

Conventions (also in the README): a pixel is predicted crack when ``prob >= threshold``.
Ratios whose denominator is zero count as perfect (1.0) when nothing was missed: precision
with no predicted pixel, recall with no crack pixel, Dice/IoU/F1 with both empty.

Threshold sweeps use 256 probability levels (``level = floor(prob * 256)``): the counts at
every threshold ``k / 256`` are exact and come from two histograms per photo, so a dataset is
swept without holding any probability map. Hand-written rather than torchmetrics' binned PR
curve, which compares every pixel with every threshold (T x N work for a 24-megapixel photo).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

LEVELS = 256
THRESHOLDS = np.arange(LEVELS) / LEVELS  # sweep: predicted crack iff level >= k, i.e. prob >= k / 256


def _ratio(num: float, den: float, empty: float = 1.0) -> float:
    return float(num / den) if den else empty


def f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall, empty=0.0)


@dataclass
class Counts:
    """Pixel counts of the crack class."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp, empty=1.0 if self.fn == 0 else 0.0)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def dice(self) -> float:
        """Sørensen–Dice = pixel F1 at 0 px tolerance."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def iou(self) -> float:
        return _ratio(self.tp, self.tp + self.fp + self.fn)


def confusion(pred: np.ndarray, truth: np.ndarray) -> Counts:
    """Exact pixel counts of two boolean masks of the same shape."""
    tp = int(np.count_nonzero(pred & truth))
    return Counts(tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(truth)) - tp)


@dataclass
class ToleranceCounts:
    """Relaxed matching within ``tolerance`` px (Euclidean): a predicted pixel is correct when a
    crack pixel lies within the tolerance, a crack pixel is found when a predicted pixel does.
    Many-to-one matches are allowed (no one-to-one assignment)."""

    matched_pred: int = 0
    pred: int = 0
    matched_truth: int = 0
    truth: int = 0

    def __add__(self, other: ToleranceCounts) -> ToleranceCounts:
        return ToleranceCounts(self.matched_pred + other.matched_pred, self.pred + other.pred,
                               self.matched_truth + other.matched_truth, self.truth + other.truth)

    @property
    def precision(self) -> float:
        return _ratio(self.matched_pred, self.pred, empty=1.0 if self.truth == 0 else 0.0)

    @property
    def recall(self) -> float:
        return _ratio(self.matched_truth, self.truth)

    @property
    def f1(self) -> float:
        if self.pred == 0 and self.truth == 0:
            return 1.0
        return f1(self.precision, self.recall)


def within_distance(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels at Euclidean distance <= ``tolerance`` from a pixel of ``mask``."""
    if tolerance <= 0 or not mask.any():
        return mask.copy()
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return distance <= tolerance


def tolerance_counts(pred: np.ndarray, truth: np.ndarray, tolerance: float) -> ToleranceCounts:
    return ToleranceCounts(
        int(np.count_nonzero(pred & within_distance(truth, tolerance))), int(np.count_nonzero(pred)),
        int(np.count_nonzero(truth & within_distance(pred, tolerance))), int(np.count_nonzero(truth)),
    )


def level_histograms(prob: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(2, LEVELS)`` counts of probability levels over crack pixels (row 0) and background (row 1)."""
    levels = np.minimum(prob * LEVELS, LEVELS - 1).astype(np.uint8)
    return np.stack([np.bincount(levels[truth], minlength=LEVELS), np.bincount(levels[~truth], minlength=LEVELS)])


def sweep(histograms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tp, fp, fn)`` at every threshold of ``THRESHOLDS`` from ``level_histograms``."""
    crack, background = histograms.astype(np.int64)
    tp = np.cumsum(crack[::-1])[::-1]
    fp = np.cumsum(background[::-1])[::-1]
    return tp, fp, crack.sum() - tp


def sweep_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Pixel F1 per threshold; 1.0 where truth and prediction are both empty."""
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)


def counts_at(histograms: list[np.ndarray], threshold: float) -> Counts:
    """The pooled counts of all photos at ``threshold`` (a grid threshold ``k / LEVELS``)."""
    tp, fp, fn = sweep(np.sum(histograms, axis=0))
    level = int(round(threshold * LEVELS))
    return Counts(int(tp[level]), int(fp[level]), int(fn[level]))


def ods(histograms: list[np.ndarray]) -> tuple[float, float, Counts]:
    """Optimal dataset scale: the one threshold whose counts, pooled over every photo, give the
    best F1. Returns ``(f1, threshold, pooled counts)``."""
    tp, fp, fn = sweep(np.sum(histograms, axis=0))
    best = int(np.argmax(sweep_f1(tp, fp, fn)))
    counts = Counts(int(tp[best]), int(fp[best]), int(fn[best]))
    return counts.dice, float(THRESHOLDS[best]), counts


def _pooled_by_dataset(histograms_by_dataset: list[list[np.ndarray]], rule: str) -> list[np.ndarray]:
    """Each dataset's histograms pooled; datasets without crack pixels left out unless none has any."""
    pooled = [np.sum(histograms, axis=0) for histograms in histograms_by_dataset if len(histograms)]
    if not pooled:
        raise ValueError(f"{rule} needs at least one dataset with photos")
    return [h for h in pooled if h[0].sum()] or pooled


def dataset_mean(histograms_by_dataset: list[list[np.ndarray]]) -> tuple[float, float]:
    """The threshold whose F1, taken over each dataset's pooled counts and then averaged over the
    datasets, is best: every dataset weighs the same, whatever its photos' pixel count (pooled
    counts let a few large photos choose). Equals ``ods`` for one dataset. A dataset without
    crack pixels has no say (its F1 is 0 until nothing at all is predicted) unless no dataset has
    any. Returns ``(mean f1, threshold)``."""
    curves = [sweep_f1(*sweep(h)) for h in _pooled_by_dataset(histograms_by_dataset, "dataset_mean")]
    mean_f1 = np.mean(curves, axis=0)
    best = int(np.argmax(mean_f1))
    return float(mean_f1[best]), float(THRESHOLDS[best])


def dataset_mean_at_recall(histograms_by_dataset: list[list[np.ndarray]], min_recall: float) -> tuple[float, float]:
    """The most precise threshold whose recall, averaged over the datasets as in ``dataset_mean``,
    is at least ``min_recall``: an operating point for inspections that must find that share of
    the crack pixels. A dataset where nothing is predicted has precision 0 (it misses its cracks).
    Returns ``(mean precision, threshold)``."""
    precisions, recalls = [], []
    for h in _pooled_by_dataset(histograms_by_dataset, "the recall rule"):
        tp, fp, fn = sweep(h)
        precisions.append(tp / np.maximum(tp + fp, 1))
        recalls.append(np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 1.0))
    precision = np.mean(precisions, axis=0)
    best = most_precise_reaching(precision, np.mean(recalls, axis=0), min_recall)
    return float(precision[best]), float(THRESHOLDS[best])


def most_precise_reaching(precision: np.ndarray, recall: np.ndarray, min_recall: float) -> int:
    """The threshold level of best precision among those with recall >= ``min_recall`` (in (0, 1];
    at level 0 every pixel is crack, so one always does), the highest among equals."""
    reaching = np.flatnonzero(recall >= min_recall)
    return int(reaching[len(reaching) - 1 - np.argmax(precision[reaching][::-1])])


def ois(histograms: list[np.ndarray]) -> tuple[float, list[float]]:
    """Optimal image scale: each photo at its own best-F1 threshold, then the counts of all
    photos at those thresholds pooled into one F1. Returns ``(f1, per-photo thresholds)``. Among
    equal F1 the highest threshold: a photo without cracks, F1 0 wherever a pixel is predicted
    (probabilities of 1 stay on at every threshold), predicts as little as it can."""
    pooled, thresholds = Counts(), []
    for hist in histograms:
        tp, fp, fn = sweep(hist)
        f1 = sweep_f1(tp, fp, fn)
        best = len(f1) - 1 - int(np.argmax(f1[::-1]))
        pooled += Counts(int(tp[best]), int(fp[best]), int(fn[best]))
        thresholds.append(float(THRESHOLDS[best]))
    return pooled.dice, thresholds


def precision_recall_curve(histograms: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled precision and recall at every threshold of ``THRESHOLDS``; where nothing is
    predicted precision is 1 (a PR curve's usual end point; ``Counts.precision`` says 0 when
    cracks were missed there)."""
    tp, fp, fn = sweep(np.sum(histograms, axis=0))
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 1.0)
    return precision, recall


def leaderboard(histograms: list[np.ndarray]) -> dict[str, float]:
    """The crack literature's protocol (DeepCrack and its leaderboards), image-averaged: ``ods``
    the best over thresholds of the mean per-photo F1, ``ois`` the mean of each photo's best F1,
    ``miou`` the mean per-photo IoU of crack and background averaged, at the ``ods`` threshold.
    Leaderboards tune these thresholds on the test set itself: an optimistic figure, reported
    for comparison with published tables, beside the val-chosen one."""
    f1_curves, miou_curves = [], []
    for hist in histograms:
        tp, fp, fn = sweep(hist)
        tn = hist[1].sum() - fp
        f1_curves.append(sweep_f1(tp, fp, fn))
        crack_iou = np.where(tp + fp + fn > 0, tp / np.maximum(tp + fp + fn, 1), 1.0)
        background_iou = np.where(tn + fp + fn > 0, tn / np.maximum(tn + fp + fn, 1), 1.0)
        miou_curves.append((crack_iou + background_iou) / 2)
    mean_f1 = np.mean(f1_curves, axis=0)
    best = int(np.argmax(mean_f1))
    return {"ods": float(mean_f1[best]), "ods_threshold": float(THRESHOLDS[best]),
            "ois": float(np.mean([curve.max() for curve in f1_curves])),
            "miou": float(np.mean([curve[best] for curve in miou_curves]))}
