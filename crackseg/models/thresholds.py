"""Thresholds chosen on validation data, stored beside a model file, one per scale set.

``<model stem>.threshold.json`` holds ``{"by_scales": {"1,2,0.5": {"threshold": t, ...}, "1": ...}}``:
multi-scale averaging changes the probabilities, so each scale set has its own best threshold.
A file in the older one-threshold layout (``{"threshold": t, "scales": [...]}``) reads as one entry.
Each entry records the SHA-256 of the model files it was chosen for (``model_sha256``, a list: a
checkpoint and its export beside it share one file): once a file holds other weights (retrained or
copied over), the entries no longer apply to it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from crackseg.io import atomic_write_bytes, file_digest, rewrite_lock

log = logging.getLogger(__name__)

ANY_SCALES = "*"  # an old file that did not record its scales
MODEL_KEY = "model_sha256"


class ThresholdFileError(ValueError):
    """A threshold file that cannot be read."""


def threshold_path(model_path: str | Path) -> Path:
    """Where evaluate.py stores the thresholds it chose on validation data: beside the model."""
    return Path(model_path).with_suffix(".threshold.json")


def scales_key(scales: Sequence[float]) -> str:
    return ",".join(f"{float(s):g}" for s in scales)


def key_scales(key: str) -> list[float]:
    """The scales of a scales key (``"1,2,0.5"`` -> ``[1.0, 2.0, 0.5]``); ValueError for another string."""
    return [float(s) for s in key.split(",")]


def check_key(key: str) -> None:
    """ValueError unless ``key`` is a scales key or ``ANY_SCALES``."""
    if key != ANY_SCALES:
        key_scales(key)


def find_entry(entries: dict[str, dict], scales: Sequence[float]) -> str | None:
    """The key of ``entries`` chosen at ``scales`` in any order (their mean does not depend on it),
    else the old layout's ``ANY_SCALES``, else None."""
    wanted = sorted(float(s) for s in scales)
    for key in entries:  # keys keep 6 digits (1/3 -> 0.333333)
        stored = sorted(key_scales(key)) if key != ANY_SCALES else []
        if len(stored) == len(wanted) and all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(stored, wanted)):
            return key
    return ANY_SCALES if ANY_SCALES in entries else None


def read_thresholds(model_path: str | Path) -> dict[str, dict]:
    """``{scales key: entry}`` stored beside ``model_path`` for the weights it holds (empty when there
    is no file); entries chosen for other weights are left out, with a warning."""
    return _entries(model_path)[1]


def _entries(model_path: str | Path) -> tuple[dict[str, dict], dict[str, dict], str | None]:
    """The threshold file read once: every entry, those chosen for the weights ``model_path`` holds,
    and its hash (None when no entry records one, or there is no model file)."""
    every = _read_all(model_path)
    digest = _digest(model_path) if any(MODEL_KEY in e for e in every.values()) else None
    stale = sorted(k for k, e in every.items() if not _chosen_for(e, digest))
    if stale:
        log.warning("%s: the thresholds at scales %s were chosen for other weights than %s holds now (it was retrained "
                    "or replaced): not used; evaluate the val split again", threshold_path(model_path),
                    " and ".join(f"[{k}]" for k in stale), model_path)
    return every, {k: e for k, e in every.items() if k not in stale}, digest


def _read_all(model_path: str | Path) -> dict[str, dict]:
    """Every entry of the threshold file beside ``model_path``, whatever weights it was chosen for."""
    path = threshold_path(model_path)
    if not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text())
        if "by_scales" not in stored:  # the one-threshold layout
            stored = {"by_scales": {scales_key(stored["scales"]) if stored.get("scales") else ANY_SCALES: stored}}
        entries = {str(k): dict(v) for k, v in stored["by_scales"].items()}
        for key, entry in entries.items():
            entry["threshold"] = float(entry["threshold"])
            check_key(key)
            if not isinstance(entry.get(MODEL_KEY, []), list):
                raise ValueError(f"{MODEL_KEY} must be a list of file hashes")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ThresholdFileError(f"unreadable threshold file {path}: {err}") from err
    return entries


def _chosen_for(entry: dict, digest: str | None) -> bool:
    """Whether ``entry`` applies to the model file of hash ``digest`` (an entry without hashes: any)."""
    return MODEL_KEY not in entry or digest in entry[MODEL_KEY]


def _digest(model_path: str | Path) -> str | None:
    return file_digest(model_path) if Path(model_path).is_file() else None


def _chosen_by(entry: dict) -> tuple:
    """The split, rule and photo-size rule a threshold was chosen by (defaults: the older entries')."""
    return entry.get("split"), entry.get("rule", "pooled"), entry.get("upscale_below_px")


def write_threshold(model_path: str | Path, threshold: float, scales: Sequence[float], details: dict,
                    replace: bool = False) -> Path | None:
    """Store ``threshold`` for ``scales`` beside ``model_path``, keeping the other scale sets'.
    One chosen at these scales on another split (``details["split"]``), by another rule
    (``details["rule"]``; entries without one were chosen by ``pooled``) or on other photos of the
    split (``details["upscale_below_px"]``, which decides the photos of each scale set; entries
    without one: every photo at every scale) is kept unless ``replace``:
    evaluating a model on other data (say the shipped one on synthetic photos) must not silently
    change the threshold prediction uses. The entry holds the hash of the model file and of the
    files sharing this threshold file with it (a checkpoint and its ONNX export beside it).
    Returns the file, or None when nothing was written."""
    path = threshold_path(model_path)
    with rewrite_lock(path):  # evaluations at other scales may update the file at the same time
        every, entries, digest = _entries(model_path)
        key = find_entry(entries, scales)
        key = scales_key(scales) if key in (None, ANY_SCALES) else key
        kept = entries.get(key)
        if kept is not None and not replace and _chosen_by(kept) != _chosen_by(details):
            log.warning("kept the threshold %.4f chosen on %s (rule %s, upscale_below_px %s) at scales [%s] in %s: "
                        "this one (%.4f) was chosen on %s (rule %s, upscale_below_px %s; save_threshold=replace to "
                        "store it)",
                        kept["threshold"], *_chosen_by(kept), key, path, threshold, *_chosen_by(details))
            return None
        entry = {"threshold": float(threshold), "scales": [float(s) for s in scales], **details}
        digest = digest or _digest(model_path)
        if digest:
            entry[MODEL_KEY] = sorted({digest, *(d for e in entries.values() for d in e.get(MODEL_KEY, []))})
        every = {k: e for k, e in every.items() if find_entry({k: e}, scales) in (None, ANY_SCALES) or k == key}
        every[key] = entry
        atomic_write_bytes(path, json.dumps({"by_scales": every}, indent=1).encode())
        return path


def carry_thresholds(source_model: str | Path, target_model: str | Path) -> Path | None:
    """The thresholds chosen for ``source_model`` made to apply to ``target_model`` too, an export of
    the same weights written already: beside it (or, sharing the file, marked with its hash too);
    without any, an earlier export's file there is removed. Returns the file, or None."""
    source, target = threshold_path(source_model), threshold_path(target_model)
    digest = _digest(target_model)
    with rewrite_lock(target):  # read inside: sharing the file, an evaluation may be rewriting it
        every, entries, _ = _entries(source_model)
        if source.resolve() == target.resolve():
            marked = {k: {**e, MODEL_KEY: sorted({digest, *e[MODEL_KEY]})} for k, e in entries.items()
                      if MODEL_KEY in e and digest}
            if marked:
                atomic_write_bytes(target, json.dumps({"by_scales": {**every, **marked}}, indent=1).encode())
            return target if entries else None
        if entries:
            marked = {k: {**{f: v for f, v in e.items() if f != MODEL_KEY}, **({MODEL_KEY: [digest]} if digest else {})}
                      for k, e in entries.items()}
            atomic_write_bytes(target, json.dumps({"by_scales": marked}, indent=1).encode())
            return target
        if target.is_file():
            target.unlink()
            log.warning("removed %s, an earlier export's thresholds: %s has none", target, source_model)
    return None


def resolve_threshold(model_path: str | Path, trained: float, threshold: float | None, scales: Sequence[float],
                      embedded: dict[str, float] | None = None, stored: dict[str, dict] | None = None) -> float:
    """``threshold`` when given, else the one chosen on validation data at these ``scales`` (from
    the file beside the model, or ``stored``: its entries read already, else those ``embedded`` in
    it: an ONNX export's, per scale set), else the ``trained`` one (with a warning when thresholds
    exist only for other scales)."""
    if threshold is not None:
        return float(threshold)
    stored = read_thresholds(model_path) if stored is None else stored
    entries = {**{k: {"threshold": float(t)} for k, t in (embedded or {}).items()}, **stored}
    key = find_entry(entries, scales)
    if key is not None:
        return entries[key]["threshold"]
    others = sorted(entries)
    if others:
        log.warning("%s has thresholds chosen at scales %s, not %s: using the trained threshold %.3f (evaluate the "
                    "val split at these scales to choose one, or set threshold=)", threshold_path(model_path),
                    " and ".join(f"[{k}]" for k in others), f"[{scales_key(scales)}]", trained)
    return float(trained)
