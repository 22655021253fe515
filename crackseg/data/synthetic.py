"""Synthetic concrete photos with exact crack masks: the built-in default data.

Writes the layout of the real datasets (``images/<split>/<stem>.jpg`` +
``masks/<split>/<stem>.png``, 0/255) plus ``distractors/<split>/<stem>.png``: the pixels of
joints, formwork seams and slab borders, which look like cracks but are labelled background
(the method's named failure mode), so false positives on them can be measured.

    python -m crackseg.data.synthetic --out DIR --n 20 --size 1024x768 --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import cv2
import numpy as np

from crackseg.io import atomic_write_bytes, write_image

MANIFEST = "synthetic.json"
VERSION = 3  # bump when the rendering changes: cached datasets are then regenerated


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    small = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _surface(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Concrete-like float RGB surface in [0, 255]: texture, pores, speckle, lighting."""
    gray = np.full((h, w), rng.uniform(105, 175), np.float32)
    for cell, amp in ((256, 10), (64, 7), (16, 5), (4, 4)):
        gray += amp * rng.uniform(0.5, 1.5) * _smooth_noise(rng, h, w, cell)
    gray += rng.normal(0, 4, (h, w)).astype(np.float32)  # aggregate speckle
    for _ in range(int(h * w / rng.uniform(1500, 6000))):  # pores and air voids
        center = (int(rng.integers(w)), int(rng.integers(h)))
        axes = (int(rng.integers(1, 5)), int(rng.integers(1, 4)))
        cv2.ellipse(gray, center, axes, rng.uniform(0, 180), 0, 360, float(rng.uniform(25, 80)), -1)
    for _ in range(int(rng.integers(0, 4))):  # stains: soft blobs, darker or lighter
        blob = np.zeros((h // 8 + 1, w // 8 + 1), np.float32)  # drawn and blurred at 1/8 size: fast
        center = (int(rng.integers(w)) // 8, int(rng.integers(h)) // 8)
        axes = (int(rng.integers(w // 20, w // 4)) // 8 + 1, int(rng.integers(h // 20, h // 4)) // 8 + 1)
        cv2.ellipse(blob, center, axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
        blob = cv2.resize(cv2.GaussianBlur(blob, (0, 0), max(axes) / 3), (w, h), interpolation=cv2.INTER_LINEAR)
        gray *= 1 + rng.uniform(-0.25, 0.12) * blob
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 1 + rng.uniform(-0.25, 0.25) * (xx / w - 0.5) + rng.uniform(-0.25, 0.25) * (yy / h - 0.5)
    gray *= light
    tint = rng.uniform(0.93, 1.07, 3).astype(np.float32)
    return gray[..., None] * tint


def _shadow(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Multiplicative map of a soft-edged shadow cast over part of the photo."""
    poly = np.array([[rng.integers(-w // 2, w), rng.integers(-h // 2, h)] for _ in range(4)], np.int32)
    poly = np.concatenate([poly, poly[:1] + [w, h]])
    region = np.zeros((h, w), np.float32)
    cv2.fillPoly(region, [cv2.convexHull(poly)], 1.0)
    region = cv2.GaussianBlur(region, (0, 0), rng.uniform(3, 25))
    return 1 - rng.uniform(0.15, 0.4) * region


def _straight_line(rng: np.random.Generator, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """End points of a nearly horizontal or vertical line across the whole photo."""
    tilt = math.tan(math.radians(rng.uniform(-2, 2)))
    if rng.random() < 0.5:
        y = rng.uniform(0.1, 0.9) * h
        return (-10, int(y - tilt * w / 2)), (w + 10, int(y + tilt * w / 2))
    x = rng.uniform(0.1, 0.9) * w
    return (int(x - tilt * h / 2), -10), (int(x + tilt * h / 2), h + 10)


def _distractors(rng: np.random.Generator, photo: np.ndarray, distractor: np.ndarray) -> None:
    """Draw joints, formwork seams and slab borders in place; record their pixels."""
    h, w = distractor.shape
    for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):
        kind = rng.choice(["joint", "seam", "border"])
        p0, p1 = _straight_line(rng, h, w)
        line = np.zeros((h, w), np.uint8)
        width = {"joint": rng.integers(4, 11), "seam": rng.integers(1, 3), "border": rng.integers(2, 5)}[kind]
        cv2.line(line, p0, p1, 1, int(width))
        if kind == "border":  # a brightness step between two slabs, with a groove
            side = np.zeros((h, w), np.uint8)
            normal = (p1[1] - p0[1], p0[0] - p1[0])
            far = [(p0[0] + normal[0] * 4, p0[1] + normal[1] * 4), (p1[0] + normal[0] * 4, p1[1] + normal[1] * 4)]
            cv2.fillPoly(side, [np.array([p0, p1, far[1], far[0]], np.int32)], 1)
            photo *= (1 + rng.uniform(-0.18, 0.18) * side)[..., None]
        depth = {"joint": rng.uniform(0.3, 0.55), "seam": rng.uniform(0.1, 0.3), "border": rng.uniform(0.3, 0.5)}[kind]
        soft = cv2.GaussianBlur(line.astype(np.float32), (0, 0), 1.0)
        photo *= (1 - depth * soft)[..., None]
        distractor |= line


def _crack_path(rng: np.random.Generator, start: np.ndarray, angle: float, steps: int) -> np.ndarray:
    """A jagged random walk around a heading: points of a crack's centre line."""
    heading, turn = angle, 0.0
    points = [start]
    for _ in range(steps):
        turn = 0.7 * turn + rng.normal(0, 0.08)
        angle += turn + 0.08 * (heading - angle)  # meanders, but keeps its general course
        points.append(points[-1] + 3.0 * np.array([math.cos(angle), math.sin(angle)]))
    return np.array(points)


def _draw_crack(rng, mask, start, angle, length, max_width, depth_budget) -> None:
    h, w = mask.shape
    steps = max(4, int(length / 3))
    points = _crack_path(rng, start, angle, steps)
    t = np.linspace(0, 1, len(points))
    wobble = np.interp(t, np.linspace(0, 1, 8), rng.uniform(0.5, 1.3, 8))
    taper = np.clip(np.minimum(t, 1 - t) * 6, 0.25, 1.0)
    widths = np.clip(max_width * wobble * taper, 1, 12)
    for i in range(len(points) - 1):
        p0 = tuple(int(round(v)) for v in points[i])
        p1 = tuple(int(round(v)) for v in points[i + 1])
        cv2.line(mask, p0, p1, 1, int(round(widths[i])))
        if depth_budget > 0 and rng.random() < 0.012:  # a branch, narrower and shorter
            side = rng.choice([-1, 1]) * rng.uniform(0.35, 1.0)
            heading = math.atan2(*(points[i + 1] - points[i])[::-1]) + side
            _draw_crack(rng, mask, points[i], heading, length * rng.uniform(0.15, 0.45),
                        max(1.0, widths[i] * 0.6), depth_budget - 1)


def _cracks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    diag = math.hypot(h, w)
    for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):
        start = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        _draw_crack(rng, mask, start, rng.uniform(0, 2 * math.pi), diag * rng.uniform(0.3, 0.9),
                    rng.uniform(1.5, 8.0), depth_budget=2)
    return mask


def render(seed: int | list[int], width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One photo: ``(photo uint8 RGB, crack mask 0/1, distractor mask 0/1)``, deterministic by seed."""
    rng = np.random.default_rng(seed)
    photo = _surface(rng, height, width)
    if rng.random() < 0.4:
        photo *= _shadow(rng, height, width)[..., None]
    distractor = np.zeros((height, width), np.uint8)
    _distractors(rng, photo, distractor)
    cracks = _cracks(rng, height, width)
    soft = np.maximum(cracks, cv2.GaussianBlur(cracks.astype(np.float32), (0, 0), 0.8))  # dark core, soft rim
    core = cv2.GaussianBlur(cv2.erode(cracks, np.ones((3, 3), np.uint8)).astype(np.float32), (0, 0), 1.0)
    darkness = rng.uniform(0.35, 0.6) * soft + rng.uniform(0.1, 0.25) * core
    photo *= (1 - np.clip(darkness, 0, 0.85))[..., None]
    distractor[cracks > 0] = 0
    return np.clip(photo, 0, 255).astype(np.uint8), cracks, distractor


def generate(out: str | Path, n: int, width: int = 1024, height: int = 768, seed: int = 0,
             val_fraction: float = 0.2) -> Path:
    """Write ``n`` photos (the last ``val_fraction`` of them in ``val``) under ``out``.

    The manifest is written last, so a folder without it is incomplete. Photos of an earlier
    generation there that this one does not write (another n or split) are removed.
    """
    out = Path(out)
    n_val = int(round(n * val_fraction))
    written = {("val" if index >= n - n_val else "train", f"synth_{index:05d}") for index in range(n)}
    for kind in ("images", "masks", "distractors"):
        for old in (out / kind).glob("*/synth_*.*"):
            if (old.parent.name, old.stem) not in written:
                old.unlink()
    for index in range(n):
        split = "val" if index >= n - n_val else "train"
        stem = f"synth_{index:05d}"
        rng_seed = [seed, index]
        photo, cracks, distractor = render(rng_seed, width, height)
        quality = int(np.random.default_rng(rng_seed + [1]).integers(85, 96))
        write_image(out / "images" / split / f"{stem}.jpg", photo, jpeg_quality=quality)
        write_image(out / "masks" / split / f"{stem}.png", cracks * 255)
        write_image(out / "distractors" / split / f"{stem}.png", distractor * 255)
    manifest = {"version": VERSION, "n": n, "width": width, "height": height, "seed": seed, "val_fraction": val_fraction}
    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=2).encode())
    return out


def ensure(out: str | Path, **params) -> Path:
    """Generate into ``out`` unless a complete dataset with the same parameters is there."""
    manifest = Path(out) / MANIFEST
    if manifest.is_file():
        existing = json.loads(manifest.read_text())
        if existing == {**existing, **params, "version": VERSION}:
            return Path(out)
    return generate(out, **params)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"size must look like 1024x768, got {text!r}") from err
    return w, h


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--n", type=int, default=20, help="number of photos")
    parser.add_argument("--size", type=_size, default=(1024, 768), help="WxH")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    args = parser.parse_args(argv)
    generate(args.out, args.n, *args.size, seed=args.seed, val_fraction=args.val_fraction)
    print(f"wrote {args.n} photos to {args.out}")


if __name__ == "__main__":
    main()
