"""The compiled predictor (torch.compile, frozen weights) predicts what the eager one does."""

import hydra
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from crackseg.inference.predictor import Predictor
from tests.conftest import ROOT, TINY_MODEL


@pytest.mark.slow
def test_compiled_predictor_matches_eager(tmp_path):
    torch.manual_seed(0)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path}", *TINY_MODEL])
    model = hydra.utils.instantiate(cfg.model, net_config=OmegaConf.to_yaml(cfg.model.net)).net.eval()
    photo = np.random.default_rng(0).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    eager = Predictor(model, tile=32, batch_size=4)(photo)
    compiled = Predictor(model, tile=32, batch_size=4, compile=True)
    np.testing.assert_allclose(compiled(photo), eager, atol=1e-4)
    np.testing.assert_allclose(compiled(photo[:40]), Predictor(model, tile=32, batch_size=4)(photo[:40]),
                               atol=1e-4)  # another photo size reuses the one compiled tile shape
