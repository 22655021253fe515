"""Options are checked before any work, each problem in one line naming the option."""

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from crackseg.options import OptionError, check_inference_options, check_training_options
from tests.conftest import ROOT


def _cfg(name, tmp_path, *overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=["ckpt=x", f"output={tmp_path / 'out'}", *overrides]
                       + (["input=x"] if name == "predict" else []))


@pytest.mark.parametrize("override, message", [
    ("threshold=2", "threshold=2: must be a number in [0, 1]"),
    ("threshold=-1", "threshold=-1: must be a number in [0, 1]"),
    ("batch_size=0", "batch_size=0: must be an integer >= 1"),
    ("upscale_below_px=0", "upscale_below_px=0: must be an integer >= 1"),
    ("scales=[]", "scales=[]: must be a non-empty list"),
    ("scales=[1,1.5]", "each scale must be an integer k or 1/k"),
    ("tile=7", "tile=7: must be an integer >= 32"),
    ("tile=100", "tile=100: must be a multiple of 32"),
    ("overlap=1", "overlap=1: must be a number in [0, 1)"),
    ("blend=box", "blend='box': must be one of gaussian, constant"),
    ("device=gpu", "device='gpu': must be auto, cpu, cuda or cuda:N"),
    ("mm_per_px=0", "mm_per_px=0: must be a number > 0"),
    ("recursive=maybe", "recursive='maybe': must be true or false"),
    ("pipeline=2", "pipeline=2: must be auto, true or false"),
    ("writers=0", "writers=0: must be auto or an integer >= 1"),
    ("writers=many", "writers='many': must be auto or an integer >= 1"),
    ("shard.count=0", "shard.count=0: must be an integer >= 1"),
    ("shard.index=2", "shard.index=2: must be an integer in [0, 1)"),
    ("keep_joints=maybe", "keep_joints='maybe': must be true or false"),
    ("joint_rule.min_straightness=1.5", "joint_rule.min_straightness=1.5: must be a number in [0, 1]"),
    ("joint_rule.min_length_px=-1", "joint_rule.min_length_px=-1: must be a number >= 0"),
    ("joint_rule.min_branch_px=-5", "joint_rule.min_branch_px=-5: must be a number >= 0"),
    ("+joint_rule.min_width_px=3", "must be null or a mapping of some of min_length_px, min_straightness, max_width_variation, min_branch_px, min_elongation"),
])
def test_bad_prediction_options_name_the_option_and_what_is_allowed(tmp_path, override, message):
    for name in ("predict", "evaluate"):
        if name == "evaluate" and override.startswith(("mm_per_px", "recursive", "shard", "pipeline", "writers", "keep_joints", "joint_rule")):
            continue
        with pytest.raises(OptionError) as err:
            check_inference_options(_cfg(name, tmp_path, override))
        assert message in str(err.value)
    check_inference_options(_cfg("predict", tmp_path, "tile=512", "scales=[1,4,0.25]", "threshold=0"))


def test_scales_must_divide_the_tile_given_or_the_models(tmp_path):
    with pytest.raises(OptionError, match=r"scales=\[1, 3\]: the tile \(64\) must be a multiple of the largest scale 3"):
        check_inference_options(_cfg("predict", tmp_path, "tile=64", "scales=[1,3]"))
    check_inference_options(_cfg("predict", tmp_path, "scales=[1,3]"))  # the model's tile: checked once loaded
    with pytest.raises(OptionError, match="save_threshold='maybe': must be true, false or replace"):
        check_inference_options(_cfg("evaluate", tmp_path, "save_threshold=maybe"))
    with pytest.raises(OptionError, match="threshold_rule='median': must be one of dataset_mean, pooled, recall"):
        check_inference_options(_cfg("evaluate", tmp_path, "threshold_rule=median"))
    for min_recall in (0, 1.5, "high", "nan", True):
        with pytest.raises(OptionError, match=r"min_recall=.*: must be a number in \(0, 1\]"):
            check_inference_options(_cfg("evaluate", tmp_path, "threshold_rule=recall", f"min_recall={min_recall}"))


def test_shards_must_share_an_output_folder(tmp_path):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("predict", overrides=["ckpt=x", "input=x", "shard.count=2", "shard.index=1"])
    with pytest.raises(OptionError, match="shard.count=2 needs output=DIR"):
        check_inference_options(cfg)


def test_an_output_that_cannot_be_a_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OptionError, match="output=.*file/sub'?: cannot be made as a folder"):
        check_inference_options(_cfg("predict", tmp_path, f"output={tmp_path / 'file' / 'sub'}"))


@pytest.mark.parametrize("override, message", [
    ("data.tile=100", "data.tile=100: must be a multiple of 32"),
    ("data.batch_size=0", "data.batch_size=0: must be an integer >= 1"),
    ("data.crack_fraction=1.5", "data.crack_fraction=1.5: must be a number in [0, 1]"),
    ("data.min_crack_pixels=0", "data.min_crack_pixels=0: must be an integer >= 1"),
    ("data.paste_joints=2", "data.paste_joints=2: must be a number in [0, 1]"),
    ("data.scale_range=[2,0.5]", "data.scale_range=[2, 0.5]: must be [lo, hi]"),
    ("data.tiles_per_epoch=2", "data.tiles_per_epoch=2: must be an integer >= 4"),
    ("model.threshold=1.5", "model.threshold=1.5: must be a number in [0, 1]"),
    ("model.val_overlap=1", "model.val_overlap=1: must be a number in [0, 1)"),
    ("ckpt_path=missing.ckpt", "ckpt_path='missing.ckpt': must be a training checkpoint file"),
    (f"ckpt_path={ROOT / 'models' / 'crackseg-general.ckpt'}", "holds no training state (a shipped or exported "
     "model?): resume needs a training checkpoint; to start from this model's weights use init_from= instead"),
])
def test_bad_training_options_are_refused(override, message):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[override])
    with pytest.raises(OptionError) as err:
        check_training_options(cfg)
    assert message in str(err.value)


def test_a_training_checkpoint_can_be_resumed_from(checkpoint):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        check_training_options(compose("train", overrides=[f"ckpt_path={checkpoint}"]))


def test_cli_prints_the_option_error_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "predict.py"), "ckpt=none.ckpt", f"input={tmp_path}",
                             "threshold=2", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 1 and "error: threshold=2: must be a number in [0, 1]" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_averaged_run_resumes_only_with_its_averaging_callback(tmp_path, tiny_dataset):
    from crackseg.tasks.train import train
    from tests.conftest import train_cfg

    common = ["data=folder", f"data.root={tiny_dataset}", "data.tile=64", "data.tiles_per_epoch=8", "data.batch_size=4"]
    train(train_cfg(tmp_path, *common, "trainer.max_epochs=1", "callbacks=ema"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    for resume in (f"ckpt_path={last}", "ckpt_path=last"):
        with pytest.raises(OptionError, match="averaged weights \\(callbacks=ema\\): resume with callbacks=ema too"):
            check_training_options(train_cfg(tmp_path, *common, resume))
        check_training_options(train_cfg(tmp_path, *common, resume, "callbacks=ema"))
