import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def needs_shared(name: str):
    """Skip unless ../shared/data/<name> (real data, absent from a user's fresh clone) exists."""
    return pytest.mark.skipif(not (SHARED_DATA / name).is_dir(), reason=f"{SHARED_DATA / name} absent")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Five 200x168 synthetic photos: four train, one val."""
    from crackseg.data import synthetic

    return synthetic.generate(tmp_path_factory.mktemp("synthetic"), n=5, width=200, height=168, seed=3)


class RedIsCrack(torch.nn.Module):
    """Crack probability ~1 where the red channel is high, ~0 elsewhere (input in [0, 1])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] - 0.5) * 100


@pytest.fixture(scope="session")
def red_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint whose predictions are known exactly: red pixels are cracks."""
    path = tmp_path_factory.mktemp("ckpt") / "red.ckpt"
    net_config = OmegaConf.to_yaml({"_target_": "tests.conftest.RedIsCrack"})
    torch.save({"state_dict": {}, "hyper_parameters": {"net_config": net_config, "mean": [0, 0, 0], "std": [1, 1, 1],
                                                         "threshold": 0.5, "channels_last": False}}, path)
    return path


TINY_MODEL = ["model=unet_classic", "model.net.base_channels=4", "model.net.depth=2", "model.log_images=1"]


def train_cfg(tmp_path, *overrides):
    """train.py's config for a tiny CPU run writing into ``tmp_path``."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.output_dir={tmp_path}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                "data.num_workers=0",
                "trainer.accelerator=cpu",
                "trainer.enable_progress_bar=false",
                *TINY_MODEL,
                *overrides,
            ],
        )


@pytest.fixture(scope="session")
def checkpoint(tiny_dataset, tmp_path_factory) -> Path:
    """A tiny U-Net trained one epoch on the tiny dataset (shared by every test that predicts)."""
    from crackseg.tasks.train import train

    out = tmp_path_factory.mktemp("run")
    cfg = train_cfg(out, "data=folder", f"data.root={tiny_dataset}", "data.tile=64", "data.tiles_per_epoch=8",
                    "data.batch_size=4", "trainer.max_epochs=1")
    train(cfg)
    return out / "checkpoints" / "last.ckpt"


def predict_cfg(**overrides):
    """predict.py's config (PyTorch, 64 px tiles, one photo at a time whatever the machine's cores:
    the pipeline's tests ask for it) with ``overrides`` set."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("predict", overrides=["ckpt=x", "input=x", "output=x", "tile=64", "batch_size=4", "backend=torch",
                                            "pipeline=false"])
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def copy_photos(tiny_dataset, folder, n=2):
    """The first ``n`` train photos of the tiny dataset, copied into ``folder``."""
    for src in sorted((tiny_dataset / "images" / "train").glob("*.jpg"))[:n]:
        folder.mkdir(exist_ok=True)
        (folder / src.name).write_bytes(src.read_bytes())
    return folder
