"""Checks of the user's options, run once before any model is loaded or photo read: each
problem is one line naming the option, its value and what is allowed."""

from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from crackseg.tiling import scale_factor

NET_MULTIPLE = 32  # the largest size multiple of the nets crackseg builds (smp U-Net: 32, classic: 16)


class OptionError(ValueError):
    """An option with a value it cannot take."""


def _fail(name: str, value, allowed: str) -> None:
    raise OptionError(f"{name}={value!r}: {allowed}")


def _number(name: str, value, low: float | None = None, high: float | None = None, integer: bool = False,
            open_high: bool = False) -> None:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        _fail(name, value, f"must be {kind}")
    if (low is not None and value < low) or (high is not None and (value >= high if open_high else value > high)):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}{')' if open_high else ']'}"
        _fail(name, value, f"must be {kind} {bounds}")


def _choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(name, value, f"must be one of {', '.join(choices)}")


def check_tile(name: str, tile) -> None:
    _number(name, tile, NET_MULTIPLE, integer=True)
    if tile % NET_MULTIPLE:
        _fail(name, tile, f"must be a multiple of {NET_MULTIPLE} (the nets' size multiple), e.g. 256 or 512")


def check_tile_scales(tile: int, scales, whose: str = "") -> None:
    """Every upscaled tile maps onto whole source pixels: ``tile`` a multiple of each scale k > 1."""
    biggest = max((scale_factor(s)[1] for s in scales if scale_factor(s)[0]), default=1)
    if tile % biggest:
        _fail("scales", list(scales), f"the tile{whose} ({tile}) must be a multiple of the largest scale {biggest}")


def check_writable_folder(name: str, folder) -> None:
    """The folder exists or can be made, and a file can be written in it."""
    path = Path(str(folder))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _fail(name, str(folder), f"cannot be made as a folder ({err.strerror})")
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        _fail(name, str(folder), "must be a folder this user can write in")


def check_inference_options(cfg: DictConfig) -> None:
    """The options predict.py and evaluate.py share (and predict's own where present)."""
    scales = cfg.scales
    if not isinstance(scales, (list, ListConfig)) or not scales:
        _fail("scales", scales, "must be a non-empty list such as [1, 2, 0.5]")
    for scale in scales:
        try:
            _number("scales", scale, 0)
            scale_factor(scale)
        except ValueError:
            _fail("scales", list(scales), "each scale must be an integer k or 1/k (e.g. 1, 2, 0.5)")
    if cfg.tile is not None:
        check_tile("tile", cfg.tile)
        check_tile_scales(cfg.tile, scales)
    if cfg.upscale_below_px is not None:
        _number("upscale_below_px", cfg.upscale_below_px, 1, integer=True)
    if cfg.threshold is not None:
        _number("threshold", cfg.threshold, 0, 1)
    _number("overlap", cfg.overlap, 0, 1, open_high=True)
    _number("batch_size", cfg.batch_size, 1, integer=True)
    _choice("blend", cfg.blend, ("gaussian", "constant"))
    _choice("backend", cfg.backend, ("auto", "torch", "onnxruntime"))
    _choice("precision", cfg.precision, ("auto", "fp32", "fp16", "bf16", "int8"))
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(cfg.device)):
        _fail("device", cfg.device, "must be auto, cpu, cuda or cuda:N")
    if "save_threshold" in cfg and not (isinstance(cfg.save_threshold, bool) or cfg.save_threshold == "replace"):
        _fail("save_threshold", cfg.save_threshold, "must be true, false or replace")
    if "threshold_rule" in cfg:
        _choice("threshold_rule", cfg.threshold_rule, ("dataset_mean", "pooled", "recall"))
    if cfg.get("threshold_rule") == "recall":
        min_recall = cfg.get("min_recall")
        if isinstance(min_recall, bool) or not isinstance(min_recall, (int, float)) or not 0 < min_recall <= 1:
            _fail("min_recall", min_recall, "must be a number in (0, 1]")
    if "tolerance" in cfg:
        _number("tolerance", cfg.tolerance, 0)
    if "min_crack_length_px" in cfg:
        _number("min_crack_length_px", cfg.min_crack_length_px, 0)
    if cfg.get("mm_per_px") is not None and (isinstance(cfg.mm_per_px, bool) or not isinstance(cfg.mm_per_px, (int, float))
                                             or not cfg.mm_per_px > 0):
        _fail("mm_per_px", cfg.mm_per_px, "must be a number > 0 (or null for pixels)")
    if "max_megapixels" in cfg:
        _number("max_megapixels", cfg.max_megapixels, 0)
    if "pipeline" in cfg and not (cfg.pipeline == "auto" or isinstance(cfg.pipeline, bool)):
        _fail("pipeline", cfg.pipeline, "must be auto, true or false")
    if "writers" in cfg and cfg.writers != "auto" and (isinstance(cfg.writers, bool) or not isinstance(cfg.writers, int)
                                                      or cfg.writers < 1):
        _fail("writers", cfg.writers, "must be auto or an integer >= 1")
    if "recursive" in cfg and not isinstance(cfg.recursive, bool):
        _fail("recursive", cfg.recursive, "must be true or false")
    if "keep_joints" in cfg and not isinstance(cfg.keep_joints, bool):
        _fail("keep_joints", cfg.keep_joints, "must be true or false")
    if cfg.get("joint_rule") is not None:
        _check_joint_rule(cfg.joint_rule)
    if "shard" in cfg:
        _check_shard(cfg)
    check_writable_folder("output", cfg.output)


def _check_joint_rule(rule) -> None:
    """Keys left out take ``JointRule``'s defaults."""
    from crackseg.measure.joints import JointRule  # here: crackseg.measure brings scikit-image, training needs none

    keys = [f.name for f in fields(JointRule)]
    if not isinstance(rule, DictConfig) or not set(rule) <= set(keys):
        _fail("joint_rule", rule, f"must be null or a mapping of some of {', '.join(keys)}")
    for key in rule:
        _number(f"joint_rule.{key}", rule[key], 0, 1 if key == "min_straightness" else None)


def _check_shard(cfg: DictConfig) -> None:
    _number("shard.count", cfg.shard.count, 1, integer=True)
    _number("shard.index", cfg.shard.index, 0, cfg.shard.count, integer=True, open_high=True)
    if cfg.shard.count > 1 and OmegaConf.is_interpolation(cfg, "output"):
        raise OptionError(f"shard.count={cfg.shard.count} needs output=DIR: the shards of a campaign share one "
                          "output folder (the default is each run's own)")


def check_training_options(cfg: DictConfig) -> None:
    """The data options of train.py (the rest are checked by the classes they go to)."""
    data = cfg.data
    check_tile("data.tile", data.tile)
    if data.stride is not None:
        _number("data.stride", data.stride, 1, data.tile, integer=True)
    _number("data.batch_size", data.batch_size, 1, integer=True)
    _number("data.tiles_per_epoch", data.tiles_per_epoch, data.batch_size, integer=True)
    _number("data.crack_fraction", data.crack_fraction, 0, 1)
    _number("data.min_crack_pixels", data.get("min_crack_pixels", 1), 1, integer=True)  # 0: every tile a crack tile
    _number("data.paste_joints", data.get("paste_joints", 0.0), 0, 1)
    _number("data.num_workers", data.num_workers, 0, integer=True)
    scale_range = data.get("scale_range")
    if scale_range is not None and not (isinstance(scale_range, (list, ListConfig)) and len(scale_range) == 2
                                        and all(isinstance(v, (int, float)) for v in scale_range)
                                        and 0 < scale_range[0] <= scale_range[1]):
        _fail("data.scale_range", scale_range, "must be [lo, hi] with 0 < lo <= hi, e.g. [0.5, 2], or null")
    _number("model.threshold", cfg.model.get("threshold", 0.5), 0, 1)
    _number("model.val_overlap", cfg.model.get("val_overlap", 0.25), 0, 1, open_high=True)
    from hydra.utils import get_class  # here: prediction checks its options without Lightning
    from pytorch_lightning.callbacks import WeightAveraging

    averaging = any(issubclass(get_class(c._target_), WeightAveraging)
                    for c in (cfg.get("callbacks") or {}).values() if isinstance(c, DictConfig) and "_target_" in c)
    if cfg.get("ckpt_path") == "last":
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if last.is_file():
            _check_resumable(last, averaging, "ckpt_path=last")
    elif cfg.get("ckpt_path") is not None:
        _check_resumable(cfg.ckpt_path, averaging)


def _check_resumable(path, averaging: bool, name: str = "ckpt_path") -> None:
    """``ckpt_path`` resumes a training: a training checkpoint, not a slim one (those fine-tune); one
    written with averaged weights (``callbacks=ema``) only with a weight-averaging callback again."""
    if not Path(str(path)).is_file():
        _fail("ckpt_path", path, "must be a training checkpoint file to resume from (or last)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - whatever the reason, it cannot be resumed from
        _fail("ckpt_path", path, f"is not a readable training checkpoint ({type(err).__name__})")
    if not isinstance(checkpoint, dict) or "optimizer_states" not in checkpoint:
        _fail(name, path, "holds no training state (a shipped or exported model?): resume needs a "
              "training checkpoint; to start from this model's weights use init_from= instead")
    if "current_model_state" in checkpoint and not averaging:
        _fail(name, path, "was written with averaged weights (callbacks=ema): resume with callbacks=ema too, or the "
              "run would go on from the average with the raw weights' optimiser state")
