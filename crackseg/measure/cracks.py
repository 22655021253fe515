"""Measure every crack of a binary mask: length, width profile, orientation, type and geometry.

A crack is a connected component (8-connected) of the mask, so a branched crack or a network is
one crack. Each is measured on its own bounding-box crop:

- skeleton: scikit-image ``skeletonize``; holes whose outline encloses at most ``SMALL_HOLE_PX``
  square px are filled first (segmentation noise, not cells of a network); spurs are pruned: end
  branches whose tip sticks out of the crack by less than 1.5 times its width at their junction
  (bumps of the outline);
- length: the centre line of every branch, simplified to ``SIMPLIFY_PX`` (Douglas-Peucker: the
  pixel staircase of a 30 degree line would add 7 %), plus, at each free end, the distance
  straight on to the crack's outline (the skeleton stops about a half-width short of the tip);
- width: 2 x the distance from the centre line to the crack's edge at every skeleton pixel, from
  OpenCV's exact Euclidean distance transform, at sub-pixel precision (see ``_widths``: exact
  for pixel-aligned cracks of odd and even widths). Pixels inside a junction's inscribed circle
  are left out of the profile (a junction is wider than the cracks that meet there);
- orientation: principal axis of the crack's pixels, degrees counter-clockwise from the image's
  horizontal as seen (0: horizontal, 90: vertical, 45: rising to the right), in [0, 180);
- type, in this order: ``joint`` when a ``JointRule`` is given and the instance is long, thin, straight
  and of constant width (see joints.py); ``map`` when the crack encloses ``MAP_CELLS`` or more cells (a network);
  ``branched`` when its skeleton has a junction; otherwise by orientation: ``horizontal`` or
  ``vertical`` within ``AXIS_TOLERANCE_DEG`` of the axis, ``diagonal`` in between.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from skimage.morphology import skeletonize

from crackseg.measure.joints import JOINT, JointRule, is_joint, split_joints
from crackseg.measure.skeleton import Branch, SkeletonGraph, crossings_at, skeleton_graph

SMALL_HOLE_PX = 64
SIMPLIFY_PX = 1.0
AXIS_TOLERANCE_DEG = 22.5
MAP_CELLS = 2
PRUNE_ROUNDS = 5
TIP_DIRECTION_PX = 5
TIP_STEP_PX = 0.25
TANGENT_PX = 3
TYPES = ("horizontal", "vertical", "diagonal", "branched", "map", JOINT)


@dataclass
class Crack:
    """One crack. Lengths and widths in px; geometry in source pixel coordinates (x, y)."""

    id: int
    length: float
    max_width: float
    mean_width: float
    p90_width: float
    orientation_deg: float
    type: str
    branches: int
    ends: int
    junctions: int
    cells: int
    pixels: int
    bbox: tuple[int, int, int, int]  # x, y, w, h
    centroid: tuple[float, float]
    skeleton: list[np.ndarray] = field(repr=False)  # simplified centre line of each branch, (N, 2)
    outline: list[np.ndarray] = field(repr=False)  # outer ring, then the rings of its cells
    profile: np.ndarray = field(repr=False)  # (N, 3) x, y, width of the skeleton pixels outside junctions

    def to_dict(self, mm_per_px: float | None = None, geometry: bool = True) -> dict:
        """JSON-ready measures: in mm when ``mm_per_px`` is given, else px (``unit`` says which)."""
        scale, digits = (mm_per_px, 3) if mm_per_px else (1.0, 2)
        record = {
            "id": self.id, "type": self.type, "unit": "mm" if mm_per_px else "px",
            **{k: round(getattr(self, k) * scale, digits) for k in ("length", "max_width", "mean_width", "p90_width")},
            "orientation_deg": self.orientation_deg, "branches": self.branches, "ends": self.ends,
            "junctions": self.junctions, "cells": self.cells, "pixels": self.pixels,
            "bbox": list(self.bbox), "centroid": list(self.centroid),
        }
        if geometry:
            record["skeleton"] = [np.round(line, 1).tolist() for line in self.skeleton]
            record["outline"] = [ring.tolist() for ring in self.outline]
        return record


def measure_mask(mask: np.ndarray, min_length_px: float = 0.0, joint_rule: JointRule | None = None) -> list[Crack]:
    """Every crack of a 2-D mask (non-zero: crack) at least ``min_length_px`` long, top to bottom;
    with ``joint_rule``, those it takes for joints typed ``joint``."""
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    binary = mask.view(np.uint8) if mask.dtype == bool else (mask > 0).astype(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    cracks = []
    for label in range(1, count):
        x, y, w, h, pixels = (int(v) for v in stats[label])
        if math.sqrt(2) * pixels + 2 < min_length_px:  # no longer than a diagonal chain of its pixels
            continue
        component = np.pad(labels[y : y + h, x : x + w] == label, 1)  # a background border for the skeleton
        crack = _measure_component(component, (x - 1, y - 1), min_length_px, joint_rule)
        if crack is not None:
            crack.pixels, crack.bbox = pixels, (x, y, w, h)
            crack.centroid = tuple(round(float(v), 1) for v in centroids[label])
            cracks.append(crack)
    cracks.sort(key=lambda c: (c.bbox[1], c.bbox[0]))
    for number, crack in enumerate(cracks, 1):
        crack.id = number
    return cracks


def take_joints(mask: np.ndarray, rule: JointRule) -> np.ndarray:
    """Move the instances ``rule`` takes for joints out of the boolean ``mask``, in place, and return
    them: predict.py's ``keep_joints=false`` for callers that need no measurements."""
    return split_joints(mask, measure_mask(mask, rule.min_length_px, rule))


def _measure_component(component: np.ndarray, offset: tuple[int, int], min_length_px: float,
                       joint_rule: JointRule | None) -> Crack | None:
    """Measures of one crack on its crop (bool, with a one-pixel background border); None when
    it is shorter than ``min_length_px`` (known before its widths, the larger part of the work)."""
    outline = _outline_filling_small_holes(component)
    distance = cv2.distanceTransform(component.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    orientation = _orientation(component)
    skeleton = skeletonize(component)
    graph = _pruned_graph(skeleton, distance)

    lines = [graph.polyline(b) for b in graph.branches]
    simplified = [cv2.approxPolyDP(line[:, None], SIMPLIFY_PX, b.closed)[:, 0] for line, b in zip(lines, graph.branches)]
    length = sum(cv2.arcLength(line[:, None], b.closed) for line, b in zip(simplified, graph.branches))
    tips = 0
    for line, branch in zip(lines, graph.branches):
        for end, node, way in ((line[::-1], branch.nodes[0], -1), (line, branch.nodes[1], 1)):
            if node is None and not branch.closed:
                length += _reach(component, end, _tip_direction(end, orientation, way))
                tips += 1
    if round(float(length), 2) < min_length_px:  # as the length is reported
        return None
    profile = _width_profile(graph, skeleton, distance, orientation)
    widths = profile[:, 2]

    junctions, cells = len(graph.node_centres), len(outline) - 1
    closed = [b.closed for b in graph.branches]
    joint = joint_rule is not None and is_joint(length, simplified, closed, widths, joint_rule)
    shift = np.array(offset)
    return Crack(
        id=0, length=round(float(length), 2), max_width=round(float(widths.max()), 2),
        mean_width=round(float(widths.mean()), 2), p90_width=round(float(np.percentile(widths, 90)), 2),
        orientation_deg=orientation, type=JOINT if joint else crack_type(orientation, junctions, cells),
        branches=len(graph.branches), ends=tips, junctions=junctions, cells=cells,
        pixels=0, bbox=(0, 0, 0, 0), centroid=(0.0, 0.0),  # set by the caller, from the whole mask
        skeleton=[np.vstack([line, line[:1]]) + shift if b.closed else line + shift  # a ring ends where it starts
                  for line, b in zip(simplified, graph.branches)],
        outline=[ring + shift for ring in outline],
        profile=(profile + (*shift, 0)).astype(np.float32),
    )


def _width_profile(graph: SkeletonGraph, skeleton: np.ndarray, distance: np.ndarray, orientation_deg: float) -> np.ndarray:
    """(N, 3) x, y, width of the skeleton pixels outside the junctions' inscribed circles."""
    node_radius = _node_radius(graph, distance)
    parts = []
    for branch in graph.branches:
        line = graph.polyline(branch)
        at = np.arange(len(branch.pixels)) + (branch.nodes[0] is not None)  # the pixels' places in line
        tangent = line[np.minimum(at + TANGENT_PX, len(line) - 1)] - line[np.maximum(at - TANGENT_PX, 0)]
        ys, xs = branch.pixels.T
        away = np.ones(len(ys), bool)
        for node in set(branch.nodes) - {None}:
            cx, cy = graph.node_centres[node]
            away &= np.hypot(xs - cx, ys - cy) > node_radius[node]
        widths = _widths(distance, xs, ys, tangent, orientation_deg)
        if len(widths) >= 3:  # a running median of 3: a pixel-staircase step is not a wide spot
            widths = np.median(np.stack([np.r_[widths[1], widths[:-1]], widths, np.r_[widths[1:], widths[-2]]]), 0)
        parts.append(np.stack([xs, ys, widths], 1)[away])
    profile = np.concatenate(parts) if parts else np.zeros((0, 3))
    if len(profile):
        return profile
    # all of it is junction (a blob): every skeleton pixel, or the crack's widest point
    ys, xs = np.nonzero(skeleton) if skeleton.any() else np.unravel_index([distance.argmax()], distance.shape)
    return np.stack([xs, ys, _widths(distance, xs, ys, np.zeros((len(xs), 2)), orientation_deg)], 1)


def _widths(distance: np.ndarray, xs: np.ndarray, ys: np.ndarray, tangent: np.ndarray, orientation_deg: float) -> np.ndarray:
    """Crack width at centre-line pixels, from the distance d to the nearest background pixel.

    Across the crack d is a tent that peaks on the true centre line, between the two middle
    pixels of an even width: the peak is (d + max(d-, d+) + 1) / 2, with d-, d+ one pixel to
    either side across (``tangent``: along the crack; zero: along its principal axis), and the
    width 2 x (peak - 0.5), the edge lying half a pixel before the background pixel: d + max(d-, d+).
    """
    angle = math.radians(orientation_deg)
    tangent = np.where(tangent.any(axis=1, keepdims=True), tangent, [math.cos(angle), -math.sin(angle)])
    across = tangent[:, ::-1] * (-1, 1) / np.hypot(*tangent.T)[:, None]
    sides = [_bilinear(distance, xs + sign * across[:, 0], ys + sign * across[:, 1]) for sign in (-1, 1)]
    return distance[ys, xs] + np.maximum(*sides)


def _bilinear(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """``image`` at sub-pixel points inside it (cv2.remap caps its output at 32767 rows)."""
    x0 = np.clip(np.floor(xs).astype(int), 0, image.shape[1] - 2)
    y0 = np.clip(np.floor(ys).astype(int), 0, image.shape[0] - 2)
    fx, fy = xs - x0, ys - y0
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def crack_type(orientation_deg: float, junctions: int, cells: int) -> str:
    if cells >= MAP_CELLS:
        return "map"
    if junctions:
        return "branched"
    from_horizontal = min(orientation_deg, 180 - orientation_deg)
    if from_horizontal <= AXIS_TOLERANCE_DEG:
        return "horizontal"
    if from_horizontal >= 90 - AXIS_TOLERANCE_DEG:
        return "vertical"
    return "diagonal"


def _pruned_graph(skeleton: np.ndarray, distance: np.ndarray) -> SkeletonGraph:
    """The skeleton graph once spurs and the stubs they leave in junctions are removed (each
    removal can leave new ones, hence rounds)."""
    for _ in range(PRUNE_ROUNDS):
        graph = skeleton_graph(skeleton)
        node_radius = _node_radius(graph, distance)
        spurs = [b for b in graph.branches if _is_spur(graph, b, distance, node_radius)]
        for branch in spurs:
            skeleton[branch.pixels[:, 0], branch.pixels[:, 1]] = False
        trimmed = _trim_stubs(skeleton, graph.node_pixels, keep_one=len(spurs) == len(graph.branches))
        if not spurs and not trimmed:
            return graph
    return skeleton_graph(skeleton)


def _trim_stubs(skeleton: np.ndarray, pixels: np.ndarray, keep_one: bool) -> bool:
    """Remove ends among a junction's ``pixels`` (stubs: what a pruned spur leaves, or a fork
    within the junction itself); ``keep_one``: nothing else is left of the skeleton, so one pixel
    stays. Returns whether any was removed."""
    ys, xs = pixels.T
    removed = False
    while True:
        kept = skeleton[ys, xs]
        ys, xs = ys[kept], xs[kept]
        ends = np.flatnonzero(crossings_at(skeleton, ys, xs) == 1)
        if keep_one and len(ends) == len(ys):
            ends = ends[1:]
        if not len(ends):
            return removed
        skeleton[ys[ends], xs[ends]] = False
        removed = True


def _node_radius(graph: SkeletonGraph, distance: np.ndarray) -> np.ndarray:
    """Radius of each junction's inscribed circle: the largest distance to the crack's edge (half a
    pixel before the nearest background pixel) over the junction's pixels."""
    radius = np.zeros(len(graph.node_centres), np.float32)
    ys, xs = graph.node_pixels.T
    np.maximum.at(radius, graph.node_ids, distance[ys, xs] - 0.5)
    return radius


def _is_spur(graph: SkeletonGraph, branch: Branch, distance: np.ndarray, node_radius: np.ndarray) -> bool:
    """An end branch whose tip sticks out of the crack by less than 1.5 times its width at the junction."""
    if (branch.nodes[0] is None) == (branch.nodes[1] is None):
        return False
    tip_y, tip_x = branch.pixels[0] if branch.nodes[0] is None else branch.pixels[-1]
    radius = node_radius[branch.nodes[0] if branch.nodes[0] is not None else branch.nodes[1]]
    length = cv2.arcLength(graph.polyline(branch)[:, None], False) + distance[tip_y, tip_x] - 0.5
    return length - radius < 3 * radius


def _tip_direction(line: np.ndarray, orientation_deg: float, way: int) -> np.ndarray:
    """Unit (x, y) direction in which a centre line leaves its last point: that of its last
    ``TIP_DIRECTION_PX`` points; for a single point, along the principal axis (``way``: +1 or -1)."""
    direction = line[-1] - line[max(0, len(line) - 1 - TIP_DIRECTION_PX)]
    if not direction.any():
        angle = math.radians(orientation_deg)
        direction = np.array([math.cos(angle), -math.sin(angle)]) * way
    return direction / np.hypot(*direction)


def _reach(component: np.ndarray, line: np.ndarray, direction: np.ndarray) -> float:
    """From the last point of a centre line straight on to the crack's outline (px): the skeleton
    stops short of the crack's tip by about its half-width."""
    step = direction * TIP_STEP_PX
    position = line[-1].astype(np.float64)
    while component[math.floor(position[1] + 0.5), math.floor(position[0] + 0.5)]:
        position += step
    return float(np.hypot(*(position - line[-1]))) - TIP_STEP_PX / 2


def _outline_filling_small_holes(component: np.ndarray) -> list[np.ndarray]:
    """Fill the crack's small holes in place; returns its outline: the outer ring, then one ring per
    remaining hole (a cell), (N, 2) int (x, y) through the boundary pixels' centres."""
    contours, hierarchy = cv2.findContours(component.view(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    outer = [c for c, h in zip(contours, hierarchy[0]) if h[3] < 0]  # one: the component is 8-connected
    holes = [c for c, h in zip(contours, hierarchy[0]) if h[3] >= 0]
    small = [c for c in holes if cv2.contourArea(c) <= SMALL_HOLE_PX]
    cv2.drawContours(component.view(np.uint8), small, -1, 1, thickness=cv2.FILLED)
    return [ring[:, 0, :] for ring in outer + [c for c in holes if cv2.contourArea(c) > SMALL_HOLE_PX]]


def _orientation(component: np.ndarray) -> float:
    """Principal axis of the pixels, degrees counter-clockwise from horizontal as seen, [0, 180)."""
    m = cv2.moments(component.view(np.uint8), binaryImage=True)
    angle = -0.5 * math.degrees(math.atan2(2 * m["mu11"], m["mu20"] - m["mu02"]))  # image y points down
    return round(angle % 180.0, 1) % 180.0
