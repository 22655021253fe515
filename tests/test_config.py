import subprocess
import sys

import hydra
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from crackseg.data.datamodule import CrackDataModule
from crackseg.io import write_image
from crackseg.models.module import CrackSegModule
from tests.conftest import ROOT


def _compose(*overrides, output_dir="unused-run-folder"):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={output_dir}", *overrides])


def _options(group):
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("data", _options("data"))
def test_every_data_option_composes(data):
    cfg = _compose(f"data={data}", "data.root=/some/where" if data == "folder" else "data.tile=128")
    datamodule = hydra.utils.instantiate(cfg.data)
    assert isinstance(datamodule, CrackDataModule)
    assert (OmegaConf.select(cfg, "data.root") or OmegaConf.select(cfg, "data.sources")) and datamodule.hparams.tile in (128, 256)


@pytest.mark.parametrize("model", _options("model"))
@pytest.mark.parametrize("loss", _options("loss"))
def test_every_model_and_loss_builds_a_module_that_trains(model, loss):
    cfg = _compose(f"model={model}", f"loss={loss}", "data.tile=64")
    if model == "unet_classic":
        cfg.model.net.base_channels = 8
    module = hydra.utils.instantiate(cfg.model, net_config=OmegaConf.to_yaml(cfg.model.net))
    assert isinstance(module, CrackSegModule) and module.hparams.val_tile == 64
    optimizers = module.configure_optimizers()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    masks = (torch.rand(2, 1, 64, 64) > 0.9).float()
    loss_value = module.loss(module(images), masks)
    assert loss_value.ndim == 0 and torch.isfinite(loss_value)
    assert optimizers["optimizer"].param_groups[0]["lr"] > 0


@pytest.mark.parametrize(
    "overrides",
    [[f"optim={o}"] for o in _options("optim")]
    + [[f"trainer={t}"] for t in _options("trainer")]
    + [[f"experiment={e}"] for e in _options("experiment")]
    + [[f"debug={d}"] for d in _options("debug")]
    + [["trainer.max_epochs=3", "data.tile=512"]],
)
def test_other_groups_build_a_trainer_and_an_optimizer_schedule(overrides, tmp_path):
    cfg = _compose(*overrides, output_dir=tmp_path)
    OmegaConf.resolve(cfg)
    if cfg.trainer.accelerator != "gpu":  # a GPU trainer cannot be built here; test_workflow runs DDP on the CPU
        trainer = hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs == (1 if cfg.trainer.fast_dev_run else cfg.trainer.max_epochs)
        assert trainer.accelerator.__class__.__name__ == "CPUAccelerator"
        assert trainer.world_size == cfg.trainer.devices
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = hydra.utils.instantiate(cfg.model.optimizer)(params=[weight])
    if cfg.model.scheduler is not None:
        scheduler = hydra.utils.instantiate(cfg.model.scheduler)(optimizer=optimizer)
        optimizer.step(), scheduler.step(*([0.5] if "Plateau" in type(scheduler).__name__ else []))
    assert optimizer.param_groups[0]["lr"] > 0


def test_default_config_trains_on_the_builtin_data():
    cfg = _compose()
    assert cfg.data.synthetic.n > 0 and set(cfg.model.loss.losses) == {"bce", "dice"}
    assert cfg.callbacks.model_checkpoint.monitor == "val/dice"


@pytest.mark.parametrize("script", ["evaluate", "predict", "export"])
def test_each_command_runs_in_its_default_run_folder(script, tmp_path):
    """Every entry point shares conf/hydra/default.yaml: outputs/<task_name>/runs/<run_name>."""
    missing, photo = tmp_path / "none.ckpt", tmp_path / "p.png"
    write_image(photo, np.zeros((8, 8, 3), np.uint8))
    args = [f"ckpt={missing}", f"paths.log_dir={tmp_path / 'outputs'}"] + ([f"input={photo}"] if script == "predict" else [])
    result = subprocess.run([sys.executable, str(ROOT / f"{script}.py"), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and f"checkpoint not found: {missing}" in result.stderr
    assert len(list((tmp_path / "outputs" / script / "runs").iterdir())) == 1


@pytest.mark.parametrize("script, overrides, tasks", [
    ("train", ["trainer.devices=4", "trainer.num_nodes=2"], (2, 4, 4)),  # one task per GPU, Lightning's ranks
    ("predict", ["ckpt=x", "input=x", "output=x", "shard.count=8"], (1, 1, 1)),  # one job per shard
])
def test_the_slurm_launcher_sizes_each_job_for_its_script(script, overrides, tasks):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(script, overrides=[*overrides, "hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == tasks
    assert launcher._target_.endswith("SlurmLauncher")
