"""Crack or joint, per instance (issue 15, remedy 3).

Joints between blocks and slab borders are the method's named failure. Seen as instances of the
mask they are long, straight and of constant width, where cracks wander and vary: an instance is
a joint when it is at least ``min_length_px`` long and ``min_elongation`` times its mean width (a
wide gap or spall a few widths long is not a joint), every branch of its centre line at least
``min_branch_px`` long is straight (end-to-end distance over length at least ``min_straightness``;
shorter ones are the bends where joints meet in a grid) and its width varies little
(coefficient of variation of the width profile at most ``max_width_variation``). A crack crossing a
joint makes one instance whose crack branches are not straight: it stays a crack. Calibrated on the
labelled cracks of ../shared/data and on joints pasted onto real photos (BENCHMARKS.md, issue 15).
Hand-written: no library of the field classifies line instances.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

JOINT = "joint"


@dataclass(frozen=True)
class JointRule:
    min_length_px: float = 100.0
    min_straightness: float = 0.99
    max_width_variation: float = 0.3
    min_branch_px: float = 30.0
    min_elongation: float = 10.0

    def __post_init__(self):
        if not (self.min_length_px >= 0 and 0 <= self.min_straightness <= 1 and self.max_width_variation >= 0
                and self.min_branch_px >= 0 and self.min_elongation >= 0):
            raise ValueError(f"a joint rule needs min_length_px >= 0, min_straightness in [0, 1], "
                             f"max_width_variation >= 0, min_branch_px >= 0 and min_elongation >= 0, got {self}")


def straightness(skeleton: list[np.ndarray], closed: list[bool], min_branch_px: float = 0.0) -> float:
    """The least straight branch's end-to-end distance over its length (1: a straight line; a ring: 0),
    over the branches at least ``min_branch_px`` long (all of them when none is)."""
    lengths = [float(np.hypot(*np.diff(line, axis=0).T).sum()) if len(line) > 1 else 0.0 for line in skeleton]
    counted = [i for i, length in enumerate(lengths) if closed[i] or length >= min_branch_px] or range(len(skeleton))
    ratios = []
    for i in counted:
        chord = float(np.hypot(*(skeleton[i][-1] - skeleton[i][0])))
        ratios.append(0.0 if closed[i] else (chord / lengths[i] if lengths[i] > 0 else 1.0))
    return min(ratios, default=1.0)


def width_variation(widths: np.ndarray) -> float:
    """Standard deviation over mean of a width profile."""
    return float(widths.std() / widths.mean()) if len(widths) and widths.mean() > 0 else 0.0


def is_joint(length: float, skeleton: list[np.ndarray], closed: list[bool], widths: np.ndarray, rule: JointRule) -> bool:
    return (length >= rule.min_length_px and length >= rule.min_elongation * float(widths.mean())
            and width_variation(widths) <= rule.max_width_variation
            and straightness(skeleton, closed, rule.min_branch_px) >= rule.min_straightness)


def instance_pixels(mask: np.ndarray, bbox: tuple[int, int, int, int], inside: tuple[int, int]) -> tuple[slice, slice, np.ndarray]:
    """The pixels of the 8-connected instance of ``mask`` through pixel ``inside`` (x, y), as a crop
    of its bounding box ``bbox`` (x, y, w, h): ``(rows, cols, bool crop)``."""
    x, y, w, h = bbox
    rows, cols = slice(y, y + h), slice(x, x + w)
    _, labels = cv2.connectedComponents((mask[rows, cols] > 0).view(np.uint8), connectivity=8)
    return rows, cols, labels == labels[inside[1] - y, inside[0] - x]


def split_joints(mask: np.ndarray, cracks: list) -> np.ndarray:
    """Move the pixels of the instances typed ``joint`` among ``cracks`` (measured on ``mask``) out
    of ``mask``, in place; returns them as a mask of their own."""
    joints = np.zeros(mask.shape, bool)
    for crack in cracks:
        if crack.type == JOINT:
            rows, cols, pixels = instance_pixels(mask, crack.bbox, tuple(crack.outline[0][0]))
            joints[rows, cols] |= pixels
            mask[rows, cols] &= ~pixels
    return joints
