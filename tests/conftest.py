import os
from pathlib import Path

import pytest
import torch
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
