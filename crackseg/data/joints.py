"""Joints that look real, pasted onto real training tiles and labelled background (issue 15).

The method's named failure is joints and block borders taken for cracks. Real joints come only
from a few photos (hea12d, masonry); :class:`PasteJoints` draws them onto any tile, on its own
texture: long, straight or gently bowed strokes of constant width (what tells a joint from a
crack), as open sawn grooves with chamfered edges, sealant-filled joints, slab borders with a
brightness step, or thin formwork seams, mostly along the photo's axes, sometimes as a grid.
Crack pixels keep their own look (a crack crossing a joint stays a crack); the mask is unchanged.
Hand-written: albumentations has no joint or line-stroke transform.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np

KINDS = ("groove", "sealant", "border", "seam")


def _stroke(rng: np.random.Generator, size: int, angle: float) -> np.ndarray:
    """Points of a line through the tile at ``angle`` (radians), reaching past its edges, bowed
    by up to 3 % of the tile's side (a gently curved joint) half of the time."""
    centre = rng.uniform(0.15, 0.85, 2) * size
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    t = np.linspace(-1, 1, 33)[:, None]
    bow = rng.uniform(-0.02, 0.02) * size * 1.5 if rng.random() < 0.5 else 0.0
    points = centre + t * direction * size * 1.5 + (1 - t**2) * bow * normal
    return np.round(points * 16).astype(np.int32)  # 4 fractional bits for cv2's shift


def _line(points: np.ndarray, size: int, width: int) -> np.ndarray:
    """A float (size, size) map, 1 on a stroke of constant ``width`` along ``points``."""
    line = np.zeros((size, size), np.float32)
    cv2.polylines(line, [points], False, 1.0, max(1, int(width)), cv2.LINE_AA, shift=4)
    return line


def _side(points: np.ndarray, size: int) -> np.ndarray:
    """A float (size, size) map, 1 on one side of the stroke (the other slab)."""
    ends = points[[0, -1]].astype(np.int64)
    direction = ends[1] - ends[0]
    far = (np.array([-direction[1], direction[0]]) * 4).astype(np.int64)
    polygon = np.concatenate([points.astype(np.int64), (ends[::-1] + far)]).astype(np.int32)
    side = np.zeros((size, size), np.float32)
    cv2.fillPoly(side, [polygon], 1.0, cv2.LINE_AA, shift=4)
    return side


def joint_layer(rng: np.random.Generator, size: int, max_joints: int = 2,
                width: tuple[int, int] = (3, 14)) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draws 1..``max_joints`` joints over a ``size`` tile: ``(gain, alpha, colour, lines)`` such
    that the pasted tile is ``image * gain * (1 - alpha) + colour * alpha`` (float32 (size, size)
    maps and an RGB colour); ``lines`` (bool) marks the joints' strokes (a border's groove)."""
    lines = np.zeros((size, size), bool)
    gain = np.ones((size, size), np.float32)
    alpha = np.zeros((size, size), np.float32)
    colour = np.zeros(3, np.float32)
    axis = rng.integers(2) * np.pi / 2
    grid = rng.random() < 0.25  # two joints crossing at right angles: a slab or block corner
    for i in range(int(rng.integers(1, max_joints + 1))):
        if rng.random() < 0.8:  # along the photo's axes, as joints are photographed
            angle = axis + (np.pi / 2 if grid and i == 1 else 0) + np.radians(rng.uniform(-3, 3))
        else:
            angle = rng.uniform(0, np.pi)
        points = _stroke(rng, size, angle)
        kind = KINDS[int(rng.choice(4, p=[0.35, 0.25, 0.25, 0.15]))]
        w = int(rng.integers(width[0], width[1] + 1))
        soft = lambda m: cv2.GaussianBlur(m, (0, 0), rng.uniform(0.5, 1.2))  # noqa: E731
        if kind == "groove":  # open sawn joint: a dark core between lighter chamfers
            chamfer = _line(points, size, w + 2 * int(rng.integers(1, 4)))
            core = stroke = _line(points, size, w)
            gain *= 1 + soft(chamfer - core) * rng.uniform(-0.1, 0.25) - soft(core) * rng.uniform(0.3, 0.65)
        elif kind == "sealant":  # filled with bitumen or silicone: a flat colour of its own
            grey = rng.choice([rng.uniform(25, 70), rng.uniform(120, 200)])
            colour = np.clip(grey * (1 + rng.uniform(-0.08, 0.08, 3)), 0, 255).astype(np.float32)
            stroke = _line(points, size, w)
            alpha = np.maximum(alpha, soft(stroke) * rng.uniform(0.75, 0.95))
        elif kind == "border":  # slab edge: a brightness step with a narrow groove
            gain *= 1 + soft(_side(points, size)) * rng.uniform(-0.2, 0.2)
            stroke = _line(points, size, int(rng.integers(1, 4)))
            gain *= 1 - soft(stroke) * rng.uniform(0.25, 0.5)
        else:  # formwork seam: a thin line, darker or raised and lighter
            stroke = _line(points, size, int(rng.integers(1, 3)))
            gain *= 1 + soft(stroke) * rng.choice([-1, 1]) * rng.uniform(0.1, 0.3)
        lines |= stroke > 0.5
    return gain, alpha, colour, lines


def composite(image: np.ndarray, gain: np.ndarray, alpha: np.ndarray, colour: np.ndarray,
              keep: np.ndarray) -> np.ndarray:
    """``image * gain * (1 - alpha) + colour * alpha`` as uint8, except at the ``keep`` pixels."""
    channels = image.shape[2]
    scaled = cv2.multiply(image.astype(np.float32), cv2.merge([gain * (1 - alpha)] * channels))
    tinted = cv2.add(scaled, cv2.merge([alpha * c for c in colour[:channels]]))
    pasted = cv2.convertScaleAbs(tinted)  # rounds and saturates to uint8; values are >= 0
    np.copyto(pasted, image, where=keep[..., None])
    return pasted


def _layer_for(rng: np.random.Generator, height: int, width: int, max_joints: int,
               widths: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    gain, alpha, colour, lines = joint_layer(rng, max(height, width), max_joints, widths)
    crop = np.s_[:height, :width]
    return np.ascontiguousarray(gain[crop]), np.ascontiguousarray(alpha[crop]), colour, lines[crop]


def paste_joints(image: np.ndarray, keep: np.ndarray, rng: np.random.Generator, max_joints: int = 2,
                 width: tuple[int, int] = (3, 14)) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (H, W, C) uint8 with 1..``max_joints`` joints pasted on it, the ``keep`` pixels
    (cracks) untouched, and the joints' stroke pixels outside ``keep``."""
    gain, alpha, colour, lines = _layer_for(rng, *keep.shape, max_joints, width)
    return composite(image, gain, alpha, colour, keep), lines & ~keep


class PasteJoints(A.DualTransform):
    """Pastes 1..``max_joints`` realistic joints (see the module) onto the image, background in
    the mask, with probability ``p``; pixels of the mask's cracks are left as they were."""

    class InitSchema(A.core.transforms_interface.BaseTransformInitSchema):
        max_joints: int
        width: tuple[int, int]

    def __init__(self, max_joints: int = 2, width: tuple[int, int] = (3, 14), p: float = 0.5):
        super().__init__(p=p)
        if max_joints < 1 or not 1 <= width[0] <= width[1]:
            raise ValueError(f"need max_joints >= 1 and width [lo, hi] with 1 <= lo <= hi, got {max_joints}, {width}")
        self.max_joints = max_joints
        self.width = tuple(width)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        gain, alpha, colour, _ = _layer_for(self.random_generator, height, width, self.max_joints, self.width)
        keep = data["mask"] > 0 if "mask" in data else np.zeros((height, width), bool)
        return {"gain": gain, "alpha": alpha, "colour": colour, "keep": keep}

    def apply(self, img: np.ndarray, gain: np.ndarray, alpha: np.ndarray, colour: np.ndarray, keep: np.ndarray,
              **params: Any) -> np.ndarray:
        return composite(img, gain, alpha, colour, keep)

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        return mask

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_joints", "width")
