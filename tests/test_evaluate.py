"""evaluate.py end to end with a model whose predictions are known exactly."""

import csv
import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from crackseg.data.folder import split_pairs
from crackseg.tasks.evaluate import evaluate
from crackseg import metrics
from crackseg.models.checkpoints import load_model
from crackseg.models.thresholds import (
    ThresholdFileError, read_thresholds, resolve_threshold, threshold_path, write_threshold,
)
from crackseg.io import file_digest, write_image
from tests.conftest import ROOT


def _photo_and_mask(rng, shape=(70, 90)):
    """A photo whose red pixels are the model's predictions and a mask that differs from them."""
    pred = np.zeros(shape, bool)
    truth = np.zeros(shape, bool)
    x = int(rng.integers(10, 80))
    truth[:, x : x + 3] = True
    pred[:, x + 1 : x + 4] = True  # one column off
    pred[int(rng.integers(0, 60)), : int(rng.integers(1, 30))] = True  # a false line
    photo = np.full((*shape, 3), 60, np.uint8)
    photo[..., 0] = np.where(pred, 255, 0)
    return photo, truth, pred


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    expected = {}
    for split, n in (("train", 2), ("val", 2), ("test", 3)):
        for i in range(n):
            photo, truth, pred = _photo_and_mask(rng)
            write_image(root / "images" / split / f"{split}{i}.png", photo)
            write_image(root / "masks" / split / f"{split}{i}.png", truth.astype(np.uint8) * 255)
            expected.setdefault(split, []).append((truth, pred))
    (root / "distractors" / "test").mkdir(parents=True)
    joint = np.zeros((70, 90), np.uint8)
    joint[:, :5] = 255  # a border strip the false lines cross
    write_image(root / "distractors" / "test" / "test0.png", joint)
    return root, expected


def _cfg(ckpt, root, out, *overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("evaluate", overrides=[f"ckpt={ckpt}", "data=folder", f"data.root={root}", f"output={out}",
                                              "tile=32", "scales=[1]", "backend=torch", *overrides])


def test_metrics_equal_the_counts_of_the_known_predictions(red_checkpoint, dataset, tmp_path):
    root, expected = dataset
    result = evaluate(_cfg(red_checkpoint, root, tmp_path, "data.split=test", "save_threshold=false"))
    exact = sum((metrics.confusion(p, t) for t, p in expected["test"]), metrics.Counts())
    tolerant = sum((metrics.tolerance_counts(p, t, 2) for t, p in expected["test"]), metrics.ToleranceCounts())
    assert result["photos"] == 3
    assert result["dice"] == pytest.approx(exact.dice, abs=1e-4) and result["iou"] == pytest.approx(exact.iou, abs=1e-4)
    assert result["f1_2px"] == pytest.approx(tolerant.f1, abs=1e-4) and result["f1_2px"] > result["dice"]
    assert result["ods"] >= result["dice"] - 1e-4 and result["ois"] >= result["ods"] - 1e-4
    first_truth, first_pred = expected["test"][0]
    assert result["distractor_fp_px_per_mp"] > 0  # the first photo's false line crosses its border strip
    rows = list(csv.DictReader((tmp_path / "per_photo.csv").open()))
    assert [r["photo"].split("/")[-1] for r in rows] == ["test0.png", "test1.png", "test2.png"]
    assert float(rows[0]["dice"]) == pytest.approx(metrics.confusion(first_pred, first_truth).dice, abs=1e-4)
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["pr_curve"]["precision"]) == metrics.LEVELS and (tmp_path / "pr_curve.png").stat().st_size > 0
    assert not threshold_path(red_checkpoint).exists()


def test_val_evaluation_stores_the_ods_threshold_for_prediction(red_checkpoint, dataset, tmp_path, caplog):
    ckpt = tmp_path / "red.ckpt"  # its own copy: the threshold file it writes stays in tmp_path
    ckpt.write_bytes(red_checkpoint.read_bytes())
    root, _ = dataset
    result = evaluate(_cfg(ckpt, root, tmp_path, "data.split=val"))
    stored = json.loads(threshold_path(ckpt).read_text())["by_scales"]["1"]
    assert stored["threshold"] == result["ods_threshold"] and stored["photos"] == 2 and stored["scales"] == [1]
    assert stored["upscale_below_px"] is None  # at [1] every photo is predicted alike, whatever its size
    trained = load_model(ckpt).threshold
    with caplog.at_level(logging.WARNING, logger="crackseg.models.thresholds"):
        assert resolve_threshold(ckpt, trained, None, [1.0]) == stored["threshold"]
        assert not caplog.records
        test = evaluate(_cfg(ckpt, root, tmp_path / "ms", "data.split=test", "scales=[1,2]"))
    assert test["thresholds"] == {"1,2": trained}  # none chosen at these scales
    assert f"{threshold_path(ckpt)} has thresholds chosen at scales [1], not [1,2]" in caplog.text
    # a val evaluation at other scales adds their threshold and keeps the first
    ms = evaluate(_cfg(ckpt, root, tmp_path / "ms_val", "data.split=val", "scales=[1,2]"))
    assert read_thresholds(ckpt) == {
        "1": stored, "1,2": {"threshold": ms["ods_threshold"], "scales": [1.0, 2.0], "rule": "dataset_mean",
                             "dice": ms["chosen"]["1,2"]["dice"], "ods": ms["ods"], "split": ms["split"], "photos": 2,
                             "upscale_below_px": 768, "precision": "fp32", "model_sha256": [file_digest(ckpt)]}}
    assert resolve_threshold(ckpt, trained, None, [1, 2]) == ms["ods_threshold"]
    assert resolve_threshold(ckpt, trained, 0.25, [1, 2]) == 0.25


def test_command_prints_the_result_as_its_last_line_and_fails_clearly(red_checkpoint, dataset, tmp_path):
    root, _ = dataset
    args = [sys.executable, str(ROOT / "evaluate.py"), f"ckpt={red_checkpoint}", "data=folder", f"data.root={root}",
            "data.split=test", "tile=32", "save_threshold=false", f"onnx_cache={tmp_path / 'onnx'}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"dice", "iou", "precision", "recall", "f1_2px", "ods", "ois", "thresholds", "photos"} <= result.keys()
    assert result["scales"] == [1, 2, 0.5] and (tmp_path / "run" / "report.json").is_file()
    missing = subprocess.run(args[:2] + [f"ckpt={tmp_path / 'none.ckpt'}"] + args[3:], capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode != 0 and "none.ckpt" in missing.stderr
    no_split = subprocess.run(args[:5] + ["data.split=nope"] + args[6:], capture_output=True, text=True, cwd=ROOT)
    assert no_split.returncode != 0 and "nope" in no_split.stderr


def test_splits_are_the_ones_training_saw(dataset, tmp_path):
    root, _ = dataset
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        data = compose("evaluate", overrides=["ckpt=x", "data=folder", f"data.root={root}"]).data
    assert [p.name for p, _ in split_pairs(data, "val")] == ["val0.png", "val1.png"]
    assert [p.name for p, _ in split_pairs(data, "test")] == ["test0.png", "test1.png", "test2.png"]
    only_val = tmp_path / "only_val"
    for kind in ("images", "masks"):
        shutil.copytree(root / kind / "val", only_val / kind / "val")
    data.root = str(only_val)
    assert len(split_pairs(data, "val")) == 2  # no train folder needed
    carved = tmp_path / "carved"
    for kind in ("images", "masks"):
        shutil.copytree(root / kind / "test", carved / kind / "train")
    data.root = str(carved)
    train, val = split_pairs(data, "train"), split_pairs(data, "val")
    assert len(train) + len(val) == 3 and not {p for p, _ in train} & {p for p, _ in val}


def test_several_datasets_are_evaluated_together_and_each_on_its_own(red_checkpoint, dataset, tmp_path):
    root, expected = dataset
    only_test = tmp_path / "b"  # a second dataset whose val photos are the first's test photos
    for kind in ("images", "masks"):
        shutil.copytree(root / kind / "test", only_test / kind / "val")
    sources = f"+data.sources={{a: {{root: '{root}'}}, b: {{root: '{only_test}'}}}}"
    result = evaluate(_cfg(red_checkpoint, root, tmp_path / "run", "data.root=null", sources, "save_threshold=false"))
    a = sum((metrics.confusion(p, t) for t, p in expected["val"]), metrics.Counts())
    b = sum((metrics.confusion(p, t) for t, p in expected["test"]), metrics.Counts())
    assert result["photos"] == 5 and result["dice"] == pytest.approx((a + b).dice, abs=1e-4)
    assert result["sources"]["a"]["photos"] == 2 and result["sources"]["a"]["dice"] == pytest.approx(a.dice, abs=1e-4)
    assert result["sources"]["b"]["recall"] == pytest.approx(b.recall, abs=1e-4)
    assert result["split"] == "a+b:val"
    curves = json.loads((tmp_path / "run" / "report.json").read_text())["source_pr_curves"]
    for name in ("a", "b"):  # each dataset's own curve, whose best F1 is its ODS
        precision, recall = np.array(curves[name]["precision"]), np.array(curves[name]["recall"])
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        assert f1.max() == pytest.approx(result["sources"][name]["ods"], abs=1e-4)
    rows = list(csv.DictReader((tmp_path / "run" / "per_photo.csv").open()))
    assert [r["source"] for r in rows] == ["a", "a", "b", "b", "b"]


class RedIsProbability(torch.nn.Module):
    """Crack probability = the red channel (input in [0, 1])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logit(x[:, :1].clamp(1e-6, 1 - 1e-6))


@pytest.mark.parametrize("rule, threshold", [("dataset_mean", 27 / 256), ("pooled", 129 / 256), ("recall", 77 / 256)])
def test_the_threshold_rule_chooses_the_stored_threshold(tmp_path, rule, threshold):
    ckpt = tmp_path / "graded.ckpt"
    net_config = OmegaConf.to_yaml({"_target_": "tests.test_evaluate.RedIsProbability"})
    torch.save({"state_dict": {}, "hyper_parameters": {"net_config": net_config, "mean": [0, 0, 0], "std": [1, 1, 1],
                                                         "threshold": 0.5, "channels_last": False}}, ckpt)
    # large: half crack at 0.90, half background at 0.50; small: one crack column at 0.30 on background at 0.10.
    # Pooled counts follow the large one (best above 0.50, missing the faint column); each dataset
    # weighing the same, both are best in (0.10, 0.30], where the recall rule (mean recall >= 0.8) takes the
    # most precise threshold, the highest
    truth = np.zeros((32, 40), bool)
    for name, crack, background, rows in (("large", 230, 128, slice(0, 16)), ("small", 77, 26, slice(0, 32))):
        mask = truth.copy()
        mask[rows, : 40 if name == "large" else 1] = True
        photo = np.zeros((32, 40, 3), np.uint8)
        photo[..., 0] = np.where(mask, crack, background)
        write_image(tmp_path / name / "images" / "val" / "a.png", photo)
        write_image(tmp_path / name / "masks" / "val" / "a.png", mask.astype(np.uint8) * 255)
    sources = f"+data.sources={{large: {{root: '{tmp_path / 'large'}'}}, small: {{root: '{tmp_path / 'small'}'}}}}"
    result = evaluate(_cfg(ckpt, tmp_path / "large", tmp_path / "run", "data.root=null", sources, f"threshold_rule={rule}"))
    assert result["ods_threshold"] == 129 / 256 and result["chosen"]["1"]["threshold"] == threshold
    expected = metrics.Counts(640, 0, 32) if rule == "pooled" else metrics.Counts(640 + 32, 640, 0)
    assert result["chosen"]["1"]["dice"] == pytest.approx(expected.dice, abs=1e-4)
    stored_rule = "recall>=0.8" if rule == "recall" else rule
    assert read_thresholds(ckpt)["1"]["threshold"] == threshold and read_thresholds(ckpt)["1"]["rule"] == stored_rule


def test_each_scale_set_gets_its_threshold_chosen_on_the_photos_predicted_at_it(tmp_path):
    ckpt = tmp_path / "graded.ckpt"
    net_config = OmegaConf.to_yaml({"_target_": "tests.test_evaluate.RedIsProbability"})
    torch.save({"state_dict": {}, "hyper_parameters": {"net_config": net_config, "mean": [0, 0, 0], "std": [1, 1, 1],
                                                         "threshold": 0.5, "channels_last": False}}, ckpt)
    # a small photo (predicted at 1 and 2): cracks at 0.90 on 0.50; a large one (at 1 only): 0.30 on 0.10
    for name, (height, width), crack, background in (("small", (32, 40), 230, 128), ("large", (48, 64), 77, 26)):
        mask = np.zeros((height, width), bool)
        mask[: height // 2] = True
        photo = np.zeros((height, width, 3), np.uint8)
        photo[..., 0] = np.where(mask, crack, background)
        write_image(tmp_path / "data" / "images" / "val" / f"{name}.png", photo)
        write_image(tmp_path / "data" / "masks" / "val" / f"{name}.png", mask.astype(np.uint8) * 255)
    result = evaluate(_cfg(ckpt, tmp_path / "data", tmp_path / "run", "scales=[1,2]", "upscale_below_px=48"))
    rows = {r["photo"].split("/")[-1]: r for r in csv.DictReader((tmp_path / "run" / "per_photo.csv").open())}
    assert rows["small.png"]["scales"] == "1,2" and rows["large.png"]["scales"] == "1"
    assert result["thresholds"] == {"1,2": 0.5, "1": 0.5}  # none chosen yet: the trained one
    assert result["chosen"]["1"]["threshold"] == 27 / 256 and result["chosen"]["1"]["photos"] == 1
    assert 128 / 256 < result["chosen"]["1,2"]["threshold"] <= 230 / 256  # above the small photo's background
    stored = read_thresholds(ckpt)
    assert {k: (e["threshold"], e["photos"]) for k, e in stored.items()} == {
        k: (c["threshold"], 1) for k, c in result["chosen"].items()}
    again = evaluate(_cfg(ckpt, tmp_path / "data", tmp_path / "again", "scales=[1,2]", "upscale_below_px=48",
                          "save_threshold=false"))
    assert again["thresholds"] == {k: c["threshold"] for k, c in result["chosen"].items()} and again["dice"] == 1
    # chosen on the small photos only, 1,2's threshold is not replaced by one chosen on every photo
    evaluate(_cfg(ckpt, tmp_path / "data", tmp_path / "all", "scales=[1,2]", "upscale_below_px=null"))
    assert read_thresholds(ckpt) == stored


def test_threshold_files_of_the_older_one_threshold_layout_still_apply(tmp_path):
    model = tmp_path / "m.ckpt"
    threshold_path(model).write_text(json.dumps({"threshold": 0.3}))  # no scales recorded: any scales
    assert resolve_threshold(model, 0.5, None, [1]) == resolve_threshold(model, 0.5, None, [1, 2]) == 0.3
    threshold_path(model).write_text(json.dumps({"threshold": 0.4, "scales": [1]}))
    assert resolve_threshold(model, 0.5, None, [1]) == 0.4 and resolve_threshold(model, 0.5, None, [1, 2]) == 0.5
    assert read_thresholds(model) == {"1": {"threshold": 0.4, "scales": [1]}}


def test_thresholds_belong_to_a_set_of_scales_in_any_order(tmp_path):
    model = tmp_path / "m.ckpt"  # the mean over scales does not depend on their order
    write_threshold(model, 0.38, [1, 2, 0.5], {"split": "val"})
    assert resolve_threshold(model, 0.5, None, [0.5, 1, 2]) == resolve_threshold(model, 0.5, None, [2, 0.5, 1]) == 0.38
    assert resolve_threshold(model, 0.5, None, [1, 2]) == resolve_threshold(model, 0.5, None, [1, 1, 2, 0.5]) == 0.5
    write_threshold(model, 0.33, [1, 3, 1 / 3], {"split": "val"})  # keys keep 6 digits: 0.333333
    assert resolve_threshold(model, 0.5, None, [1 / 3, 1, 3]) == 0.33
    threshold_path(model).unlink()
    write_threshold(model, 0.38, [1, 2, 0.5], {"split": "val"})
    write_threshold(model, 0.4, [2, 1, 0.5], {"split": "val"})  # the same set: replaces, one entry
    assert read_thresholds(model) == {"1,2,0.5": {"threshold": 0.4, "scales": [2.0, 1.0, 0.5], "split": "val"}}
    threshold_path(model).write_text(json.dumps({"by_scales": {"one,two": {"threshold": 0.4}}}))
    with pytest.raises(ThresholdFileError, match="unreadable threshold file .*m.threshold.json"):
        resolve_threshold(model, 0.5, None, [1])


def test_thresholds_chosen_for_other_weights_no_longer_apply(tmp_path, caplog):
    model = tmp_path / "m.ckpt"
    model.write_bytes(b"weights of the first training")
    write_threshold(model, 0.38, [1, 2, 0.5], {"split": "val"})
    write_threshold(model, 0.41, [1], {"split": "val"})
    assert read_thresholds(model)["1"]["model_sha256"] == [file_digest(model)]
    assert resolve_threshold(model, 0.5, None, [1]) == 0.41
    model.write_bytes(b"weights of a second training, saved to the same file")
    with caplog.at_level(logging.WARNING, logger="crackseg.models.thresholds"):
        assert resolve_threshold(model, 0.5, None, [1]) == 0.5  # the trained threshold, not the stale one
    assert "thresholds at scales [1] and [1,2,0.5] were chosen for other weights" in caplog.text
    write_threshold(model, 0.3, [1], {"split": "test"})  # a stale entry is no reason to keep anything
    assert {k: e["threshold"] for k, e in read_thresholds(model).items()} == {"1": 0.3}
    assert sorted(json.loads(threshold_path(model).read_text())["by_scales"]) == ["1", "1,2,0.5"]  # for the old file


def test_evaluations_storing_thresholds_at_once_keep_each_others(tmp_path):
    import threading

    from crackseg.io import claimed

    model = tmp_path / "m.ckpt"
    write_threshold(model, 0.4, [1], {"split": "val"})
    with claimed(tmp_path / ".m.threshold.json.lock"):  # another evaluation is rewriting the file
        writer = threading.Thread(target=write_threshold, args=(model, 0.38, [1, 2, 0.5], {"split": "val"}))
        writer.start()
        writer.join(0.3)
        assert writer.is_alive()  # it waits instead of reading the file being rewritten
        entries = read_thresholds(model)
        entries["1"]["threshold"] = 0.41
        threshold_path(model).write_text(json.dumps({"by_scales": entries}))
    writer.join(5)
    assert {k: e["threshold"] for k, e in read_thresholds(model).items()} == {"1": 0.41, "1,2,0.5": 0.38}


def test_a_threshold_chosen_on_other_data_is_kept_unless_replaced(tmp_path, caplog):
    model = tmp_path / "shipped.ckpt"  # e.g. the shipped model, evaluated on the synthetic default data
    write_threshold(model, 0.38, [1, 2, 0.5], {"split": "general:val"})
    assert write_threshold(model, 0.38, [1], {"split": "general:val"}) == threshold_path(model)
    with caplog.at_level(logging.WARNING, logger="crackseg.models.thresholds"):
        assert write_threshold(model, 0.9, [1, 2, 0.5], {"split": "synthetic:val"}) is None
    assert "kept the threshold 0.3800 chosen on general:val (rule pooled, upscale_below_px None) at scales [1,2,0.5]" \
        in caplog.text
    assert resolve_threshold(model, 0.5, None, [1, 2, 0.5]) == 0.38
    write_threshold(model, 0.4, [1, 2, 0.5], {"split": "general:val"})  # the same data again: replaced
    assert resolve_threshold(model, 0.5, None, [1, 2, 0.5]) == 0.4
    write_threshold(model, 0.9, [1, 2, 0.5], {"split": "synthetic:val"}, replace=True)
    assert read_thresholds(model)["1,2,0.5"]["threshold"] == 0.9 and read_thresholds(model)["1"]["threshold"] == 0.38
    # the same data chosen by another rule is kept too (an entry without a rule was chosen by pooled)
    assert write_threshold(model, 0.3, [1], {"split": "general:val", "rule": "dataset_mean"}) is None
    assert write_threshold(model, 0.3, [1], {"split": "general:val", "rule": "pooled"}) == threshold_path(model)
    # ...and so is one chosen on other photos of the split (those upscale_below_px gives each scale set)
    assert write_threshold(model, 0.2, [1], {"split": "general:val", "upscale_below_px": 768}) is None


def test_the_mask_is_scored_without_the_joints_predict_leaves_out(red_checkpoint, tmp_path):
    truth = np.zeros((160, 256), bool)
    for x in range(20, 236):  # a wavy crack, predicted exactly
        y = int(60 + 12 * np.sin(x / 15))
        truth[y : y + 3, x] = True
    pred = truth.copy()
    pred[120:126, 20:236] = True  # a straight joint of constant width, not a crack
    photo = np.full((*truth.shape, 3), 60, np.uint8)
    photo[..., 0] = np.where(pred, 255, 0)
    root = tmp_path / "data"
    write_image(root / "images" / "test" / "slab.png", photo)
    write_image(root / "masks" / "test" / "slab.png", truth.astype(np.uint8) * 255)
    dropped = evaluate(_cfg(red_checkpoint, root, tmp_path / "out", "data.split=test", "save_threshold=false"))
    assert dropped["dice"] == 1.0 and dropped["joints"] == {"px": 6 * 216, "crack_px": 0}
    (row,) = csv.DictReader((tmp_path / "out" / "per_photo.csv").open())
    assert int(row["joint_px"]) == 6 * 216
    kept = evaluate(_cfg(red_checkpoint, root, tmp_path / "kept", "data.split=test", "save_threshold=false", "keep_joints=true"))
    assert kept["dice"] == pytest.approx(metrics.confusion(pred, truth).dice, abs=1e-4) and kept["dice"] < 0.9
    assert kept["joints"] is None and kept["ods"] == dropped["ods"]  # the sweep is before the rule
    no_rule = evaluate(_cfg(red_checkpoint, root, tmp_path / "none", "data.split=test", "save_threshold=false", "joint_rule=null"))
    assert no_rule["dice"] == kept["dice"] and no_rule["joints"] is None
