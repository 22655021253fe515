"""End-to-end training runs on tiny data (and a smoke run on real data when it is there)."""

import json

import pytest
import torch

from crackseg.models.checkpoints import CheckpointError
from crackseg.tasks.train import train
from tests.conftest import ROOT, SHARED_DATA, TINY_MODEL, needs_shared, train_cfg as _train_cfg

def test_one_epoch_writes_checkpoints_tensorboard_and_summary(tmp_path, tiny_dataset):
    cfg = _train_cfg(
        tmp_path, "data=folder", f"data.root={tiny_dataset}", "data.tile=64", "data.tiles_per_epoch=16",
        "data.batch_size=4", "trainer.max_epochs=2", "trainer.accumulate_grad_batches=2",
    )
    best = train(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0 <= best <= 1 and summary["val_dice_best"] == pytest.approx(best)
    assert summary["epochs"] == 2 and summary["train_tiles"] == 2 * 16
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert summary["best_ckpt"].startswith(str(tmp_path / "checkpoints"))
    events = list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    checkpoint = torch.load(summary["best_ckpt"], map_location="cpu", weights_only=False)
    assert "classic_unet" in checkpoint["hyper_parameters"]["net_config"]
    assert checkpoint["hyper_parameters"]["threshold"] == 0.5

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()
    assert {"train/loss", "val/loss", "val/dice", "val/dice_best", "val/iou"} <= set(tags["scalars"])
    assert "val/photo_0" in tags["images"]


def test_the_plateau_schedule_steps_on_validations_that_come_every_other_epoch(tmp_path, tiny_dataset):
    cfg = _train_cfg(
        tmp_path, "data=folder", f"data.root={tiny_dataset}", "data.tile=64", "data.tiles_per_epoch=8",
        "data.batch_size=4", "trainer.max_epochs=4", "trainer.check_val_every_n_epoch=2", "optim=adam_plateau",
    )
    train(cfg)  # was: no val/dice after the first epoch, a traceback
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs"] == 4 and "val/dice" in summary["metrics"]


@pytest.mark.parametrize("callbacks", ["default", "ema"])
def test_validation_scores_are_what_evaluate_reports_for_the_same_checkpoint(tmp_path, tiny_dataset, callbacks):
    from hydra import compose, initialize_config_dir

    from crackseg.tasks.evaluate import evaluate

    train(_train_cfg(tmp_path, "data=folder", f"data.root={tiny_dataset}", "data.tile=64", "data.tiles_per_epoch=8",
                     "data.batch_size=4", "trainer.max_epochs=1", "model.threshold=0.3", f"callbacks={callbacks}",
                     *(["callbacks.ema.decay=0.5"] if callbacks == "ema" else [])))
    summary = json.loads((tmp_path / "summary.json").read_text())
    if callbacks == "ema":  # the checkpoint's weights are the average, the raw ones are kept beside them to resume
        saved = torch.load(summary["best_ckpt"], map_location="cpu", weights_only=False)
        assert any(not torch.equal(value, saved["current_model_state"][name])
                   for name, value in saved["state_dict"].items() if name.endswith(".weight"))
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt={summary['best_ckpt']}", "data=folder", f"data.root={tiny_dataset}",
                                             f"output={tmp_path / 'eval'}", "scales=[1]", "backend=torch",
                                             "threshold=0.3", "save_threshold=false",
                                             "keep_joints=true"])  # validation in training scores the mask as it is
    reported = evaluate(cfg)
    assert 0 < reported["dice"] < 1 and 0 < reported["precision"] < 1
    for name in ("dice", "iou", "precision", "recall"):
        assert summary["metrics"][f"val/{name}"] == pytest.approx(reported[name], abs=1e-4)


def test_several_datasets_train_together_each_validated_and_fine_tuning_starts_from_a_model(tmp_path, tiny_dataset):
    from crackseg.data import synthetic

    other = synthetic.generate(tmp_path / "other", n=3, width=160, height=128, seed=5)
    sources = f"+data.sources={{tiny: {{root: '{tiny_dataset}'}}, other: {{root: '{other}', weight: 2}}}}"
    common = ["data=folder", "data.root=null", sources, "data.tile=64", "data.tiles_per_epoch=16",
              "data.batch_size=4", "data.scale_range=[0.5,2]", "trainer.max_epochs=1"]
    first = train(_train_cfg(tmp_path / "first", *common))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(next((tmp_path / "first" / "tensorboard").rglob("events.*")).parent)).Reload()
    assert {"val/tiny/dice", "val/other/dice", "val/dice"} <= set(scalars.Tags()["scalars"])
    assert 0 <= first <= 1
    ckpt = json.loads((tmp_path / "first" / "summary.json").read_text())["best_ckpt"]
    # fine-tuning starts from those weights: with a zero learning rate they stay exactly as they were
    cfg = _train_cfg(tmp_path / "tuned", *common, f"init_from={ckpt}", "model.optimizer.lr=0",
                     "model.scheduler=null", "model.net.dropout=0")
    train(cfg)
    tuned = torch.load(tmp_path / "tuned" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    start = torch.load(ckpt, weights_only=False)["state_dict"]
    assert all(torch.equal(tuned[k], start[k]) for k in start if k.startswith("net.") and "running" not in k
               and "num_batches" not in k)
    with pytest.raises(CheckpointError, match="init_from=.*differs from the configured model.net"):
        train(_train_cfg(tmp_path / "bad", *common, f"init_from={ckpt}", "model.net.base_channels=8"))


def test_fast_dev_run_on_the_default_builtin_data(tmp_path):
    cfg = _train_cfg(tmp_path, "trainer.fast_dev_run=true", "data.synthetic.n=3", "data.synthetic.width=300",
                     "data.synthetic.height=200", "data.tile=128")
    train(cfg)
    assert (tmp_path / "cache" / "synthetic").is_dir()
    assert (tmp_path / "summary.json").is_file()


@pytest.mark.slow
@needs_shared("cracksight")
def test_smoke_run_on_cracksight(tmp_path):
    cfg = _train_cfg(
        tmp_path, "data=cracksight", f"paths.shared_data_dir={SHARED_DATA}", "data.tiles_per_epoch=8",
        f"data.cache_dir={ROOT / '.cache' / 'decoded'}",  # decoded photos are reused across runs
        "data.batch_size=4", "trainer.max_epochs=1", "trainer.limit_val_batches=1", "model.val_batch_size=32",
    )
    best = train(cfg)
    assert 0 <= best <= 1
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_cli_stops_on_bad_training_data_with_the_message_and_no_traceback(tmp_path):
    import subprocess
    import sys

    import numpy as np

    from crackseg.io import write_image

    for split, stems in (("train", ["a", "b"]), ("val", ["c"])):
        for stem in stems:  # photos that differ (a copy of a val photo is left out of training)
            write_image(tmp_path / "blank" / "images" / split / f"{stem}.png", np.full((40, 40, 3), ord(stem), np.uint8))
            write_image(tmp_path / "blank" / "masks" / split / f"{stem}.png", np.zeros((40, 40), np.uint8))
    (tmp_path / "blank" / "masks" / "val" / "c.png").rename(tmp_path / "c.png")
    args = [sys.executable, str(ROOT / "train.py"), "data=folder", f"hydra.run.dir={tmp_path / 'run'}",
            f"paths.cache_dir={tmp_path / 'cache'}", *TINY_MODEL, "data.tile=32"]
    missing = subprocess.run([*args, f"data.root={tmp_path / 'blank'}"], capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode == 1 and "without a mask" in missing.stderr and "c.png" in missing.stderr
    (tmp_path / "c.png").rename(tmp_path / "blank" / "masks" / "val" / "c.png")
    blank = subprocess.run([*args, f"data.root={tmp_path / 'blank'}"], capture_output=True, text=True, cwd=ROOT)
    assert blank.returncode == 1 and "no crack pixel in any mask" in blank.stderr
    fold = subprocess.run([*args, f"data.root={tmp_path / 'blank'}", "data.val_fold=[0,2]"], capture_output=True,
                          text=True, cwd=ROOT)  # an option the data folder refuses
    assert fold.returncode == 1 and "val_fold carves val photos out of train" in fold.stderr
    assert "Traceback" not in missing.stderr + blank.stderr + fold.stderr
