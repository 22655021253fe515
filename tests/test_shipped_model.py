"""The model shipped in models/: what a fresh clone predicts with when no ckpt is given."""

import csv
import json

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from crackseg import metrics
from crackseg.models.checkpoints import load_model
from crackseg.io import read_mask, read_pair, write_image
from crackseg.models.thresholds import read_thresholds
from crackseg.tasks.predict import predict
from tests.conftest import ROOT, SHARED_DATA, needs_shared

SHIPPED = ROOT / "models" / "crackseg-general.ckpt"


def test_the_shipped_model_is_small_loads_and_carries_a_threshold_per_scale_set():
    assert SHIPPED.stat().st_size < 12e6
    stored = torch.load(SHIPPED, weights_only=True)
    assert set(stored) == {"hyper_parameters", "state_dict"}
    model = load_model(SHIPPED)
    assert model.tile == 256
    thresholds = read_thresholds(SHIPPED)
    assert set(thresholds) == {"1", "1,2,0.5"} and all(0 < e["threshold"] < 1 for e in thresholds.values())
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for command in ("predict", "evaluate"):
            assert compose(command, overrides=["input=x"] if command == "predict" else []).ckpt == str(SHIPPED)


@needs_shared("cracksight")
def test_default_prediction_finds_the_crack_of_a_real_photo_and_the_cascade_changes_no_pixel(tmp_path):
    stem = "image_0000625"  # a cracksight val photo (never trained on), 1280x960
    photo, truth = read_pair(SHARED_DATA / "cracksight" / "images" / "val" / f"{stem}.jpg",
                             SHARED_DATA / "cracksight" / "masks" / "val" / f"{stem}.png")
    write_image(tmp_path / "in" / "wall.png", photo[:512, :640])
    masks = {}
    for cascade in (True, False):
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("predict", overrides=[f"input={tmp_path / 'in'}", f"output={tmp_path / str(cascade)}",
                                                "backend=torch", f"cascade={cascade}", "measure=false"])
        assert predict(cfg) == 0
        masks[cascade] = read_mask(tmp_path / str(cascade) / "wall_mask.png").astype(bool)
        row = next(csv.DictReader((tmp_path / str(cascade) / "summary.csv").open()))
        assert (int(row["tiles_skipped"]) > 0) == cascade
    assert np.array_equal(masks[True], masks[False])
    dice = metrics.confusion(masks[True], truth[:512, :640].astype(bool)).dice
    assert dice > 0.6
    contours = json.loads((tmp_path / "True" / "wall_contours.json").read_text())
    assert contours["threshold"] == read_thresholds(SHIPPED)["1,2,0.5"]["threshold"]
