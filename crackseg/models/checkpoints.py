"""Checkpoints: loading a trained model from any checkpoint crackseg wrote, and writing the slim
one that ships (the net's weights and the settings prediction needs)."""

from __future__ import annotations

import pickle
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from crackseg.io import atomic_write
from crackseg.models.nets import CrackSegNet

_SETTINGS = ("mean", "std", "channels_last", "threshold", "val_tile")  # hyper-parameters CrackSegNet takes


class CheckpointError(ValueError):
    """A checkpoint that is missing or was not written by crackseg's training."""


def load_model(path: str | Path, device: str | torch.device = "cpu") -> CrackSegNet:
    """The trained model of a checkpoint (a training one or a slim one), in eval mode on
    ``device``; the net is rebuilt from the config stored in it, so no training config is needed.
    Its threshold is the trained one (the ones chosen on validation data:
    :mod:`crackseg.models.thresholds`)."""
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
    settings = {"tile" if k == "val_tile" else k: hparams[k] for k in _SETTINGS if k in hparams}
    model = CrackSegNet(net, net_config=hparams["net_config"], **settings)
    # the LightningModule's keys: its CrackSegNet is ``net``
    weights = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    try:
        model.load_state_dict(weights, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint weights do not fit its net config: {path}\n{err}") from err
    missing = [k for k in model.state_dict() if k not in weights]
    if missing:
        raise CheckpointError(f"checkpoint lacks {len(missing)} weights of its net, e.g. {missing[0]}: {path}")
    return model.eval().to(device)


def save_slim_checkpoint(model: CrackSegNet, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """What prediction needs of ``model`` and nothing more: its weights (in ``dtype``, half the
    size in fp16) and the settings :func:`load_model` reads, under a training checkpoint's names
    (no optimizer, no training state). For shipping a trained model."""
    if not model.net_config:
        raise ValueError("a model without its net_config cannot be saved: load_model could not rebuild it")
    state = {f"net.{k}": v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    hparams = {**model.normalisation, "channels_last": model.channels_last, "threshold": model.threshold,
               "val_tile": model.tile, "net_config": model.net_config}
    atomic_write(path, lambda f: torch.save({"hyper_parameters": hparams, "state_dict": state}, f))
    return Path(path)
