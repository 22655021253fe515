"""Checkpoints: loading a trained model from any checkpoint crackseg wrote, and writing the slim
one that ships (the net's weights and the settings prediction needs)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import torch
from omegaconf import OmegaConf
from torch import nn

from crackseg.io import atomic_write_bytes

if TYPE_CHECKING:
    from crackseg.models.module import CrackSegModule

_MODULE_KEYS = ("threshold", "mean", "std", "val_tile", "val_overlap", "val_batch_size", "channels_last")


class CheckpointError(ValueError):
    """A checkpoint that is missing or was not written by crackseg's training."""


def load_model(path: str | Path, device: str | torch.device = "cpu") -> CrackSegModule:
    """The trained module of a checkpoint, in eval mode on ``device``; the net is rebuilt from
    the config stored in it, so no training config is needed. Its threshold is the trained one
    (the ones chosen on validation data: :mod:`crackseg.models.thresholds`)."""
    from crackseg.models.module import CrackSegModule  # imports Lightning (0.26 GiB RSS): only when needed

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise CheckpointError(f"not a readable PyTorch checkpoint: {path} ({err})") from err
        raise CheckpointError(f"{path} holds Python objects beyond weights and settings, which would run code "
                              f"when loaded: crackseg does not load such files") from None
    except Exception as err:  # noqa: BLE001 - any other unpickling failure means the same to the user
        raise CheckpointError(f"not a readable PyTorch checkpoint: {path} ({err})") from err
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if not hparams.get("net_config") or "state_dict" not in checkpoint:
        raise CheckpointError(f"not a crackseg checkpoint (no net_config or state_dict): {path}")
    net_config = OmegaConf.create(hparams["net_config"])
    if "encoder_weights" in net_config:
        net_config.encoder_weights = None  # the checkpoint has them all: never download or load twice
    try:
        net = hydra.utils.instantiate(net_config)
    except Exception as err:  # noqa: BLE001 - an unknown class or argument: the checkpoint does not fit this code
        raise CheckpointError(f"cannot build the net stored in {path}: {err}") from err
    module = CrackSegModule(net=net, loss=nn.Identity(), optimizer=None, net_config=hparams["net_config"],
                            **{k: hparams[k] for k in _MODULE_KEYS if k in hparams})
    weights = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    try:
        module.load_state_dict(weights, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint weights do not fit its net config: {path}\n{err}") from err
    missing = [k for k in module.state_dict() if k.startswith("net.") and k not in weights]
    if missing:
        raise CheckpointError(f"checkpoint lacks {len(missing)} weights of its net, e.g. {missing[0]}: {path}")
    return module.eval().to(device)


def save_slim_checkpoint(model: CrackSegModule, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """What prediction needs of ``model`` and nothing more: its net's weights (in ``dtype``,
    half the size in fp16) and the settings :func:`load_model` reads (no optimizer, no training
    state). For shipping a trained model; :func:`load_model` reads it like any checkpoint."""
    hparams = {k: model.hparams[k] for k in (*_MODULE_KEYS, "net_config") if k in model.hparams}
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items() if k.startswith("net.")}
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": hparams, "state_dict": state}, buffer)
    atomic_write_bytes(path, buffer.getbuffer())
    return Path(path)
