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
    assert set(thresholds) == {"1", "1,2,0.5", "1,0.5"} and all(0 < e["threshold"] < 1 for e in thresholds.values())
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for command in ("predict", "evaluate"):
            assert compose(command, overrides=["input=x"] if command == "predict" else []).ckpt == str(SHIPPED)


@needs_shared("cracksight")
def test_default_prediction_finds_the_crack_of_a_real_photo_and_the_cascade_changes_no_pixel(tmp_path):
    stem = "image_0000625"  # a cracksight val photo (never trained on), 1280x960
    photo, truth = read_pair(SHARED_DATA / "cracksight" / "images" / "val" / f"{stem}.jpg",
                             SHARED_DATA / "cracksight" / "masks" / "val" / f"{stem}.png")
    write_image(tmp_path / "in" / "wall.png", photo[:512, :640])
    masks, skipped = {}, {}
    # the stored threshold, and one above 1/3, where the cascade can skip tiles at three scales
    for threshold in ("null", "0.45"):
        for cascade in (True, False):
            out = tmp_path / f"{threshold}-{cascade}"
            with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
                cfg = compose("predict", overrides=[f"input={tmp_path / 'in'}", f"output={out}", "backend=torch",
                                                    f"cascade={cascade}", f"threshold={threshold}", "measure=false"])
            assert predict(cfg) == 0
            masks[threshold, cascade] = read_mask(out / "wall_mask.png").astype(bool)
            skipped[threshold, cascade] = int(next(csv.DictReader((out / "summary.csv").open()))["tiles_skipped"])
    assert np.array_equal(masks["null", True], masks["null", False])
    assert np.array_equal(masks["0.45", True], masks["0.45", False]) and skipped["0.45", True] > 0
    assert skipped["null", False] == skipped["0.45", False] == 0
    dice = metrics.confusion(masks["null", True], truth[:512, :640].astype(bool)).dice
    assert dice > 0.6
    contours = json.loads((tmp_path / "null-True" / "wall_contours.json").read_text())
    assert contours["threshold"] == read_thresholds(SHIPPED)["1,2,0.5"]["threshold"]
