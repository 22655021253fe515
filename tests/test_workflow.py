"""Sweeps, distributed training, resuming a killed run, reproducibility."""

import json
import math
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from crackseg import sweeps
from crackseg.data.sampling import BalancedTileSampler
from crackseg.tasks.train import AtomicCheckpointIO, train
from tests.conftest import ROOT, TINY_MODEL, train_cfg as _train_cfg

TINY_SYNTHETIC = ["data.synthetic.width=300", "data.synthetic.height=200", "data.batch_size=4"]


def _train_py(tmp_path: Path, *overrides: str) -> list[str]:
    """``train.py`` on tiny data and a tiny model, everything under ``tmp_path``."""
    return [
        sys.executable, str(ROOT / "train.py"), f"paths.log_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
        "data.num_workers=0", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", *TINY_MODEL, *overrides,
    ]


def _run(command: list[str], timeout: float = 600) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]


# -- sweeps -----------------------------------------------------------------------------------


def test_optuna_sweep_runs_trials_each_in_its_own_folder(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _run(_train_py(
        tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}",
        "trainer.fast_dev_run=true", "data.synthetic.n=3", *TINY_SYNTHETIC,  # tiles of 256 or 512 px
    ))
    summaries = [json.loads((sweep / str(job) / "summary.json").read_text()) for job in (0, 1)]
    scores = [s["val_dice_best"] for s in summaries]
    assert all(0 <= score <= 1 for score in scores)  # fast_dev_run validates one photo: a number
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.best_value == pytest.approx(max(scores))
    assert set(results.best_params) == {
        "model.optimizer.lr", "model.net.dropout", "loss", "data.tile", "data.crack_fraction",
    }
    for job in (0, 1):
        config = OmegaConf.load(sweep / str(job) / ".hydra" / "config.yaml")
        overrides = dict(o.split("=", 1) for o in OmegaConf.load(sweep / str(job) / ".hydra" / "overrides.yaml"))
        assert config.model.optimizer.lr == pytest.approx(float(overrides["model.optimizer.lr"]))
        assert 1e-4 <= config.model.optimizer.lr <= 1e-2 and 0 <= config.model.net.dropout <= 0.5

    sweeps.main([str(sweep)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["job", "val_dice_best"] and "model.optimizer.lr" in lines[0]
    assert sorted(line.split()[0] for line in lines[1:]) == ["0", "1"]


def test_sweep_table_puts_the_best_first_and_unfinished_jobs_last(tmp_path):
    for job, overrides, score in [(0, ["lr=0.1", "tile=256"], 0.5), (1, ["lr=0.2", "tile=256"], None),
                                  (2, ["lr=0.3", "tile=256"], 0.75), (3, ["lr=0.4", "tile=256"], math.nan),
                                  (10, ["lr=0.5", "tile=256"], None)]:
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(overrides), tmp_path / str(job) / ".hydra" / "overrides.yaml")
        if score is not None:
            summary = {"val_dice_best": score, "epochs": 3, "train_seconds": 12.3}
            (tmp_path / str(job) / "summary.json").write_text(json.dumps(summary))
    rows = sweeps.trials(tmp_path)
    assert [row["job"] for row in rows] == ["2", "0", "1", "3", "10"]
    assert list(rows[0]) == ["job", "val_dice_best", "epochs", "train_seconds", "lr"]  # tile never varies
    table = sweeps.format_table(rows).splitlines()
    assert table[1].split() == ["2", "0.75", "3", "12.3", "0.3"] and table[3].split() == ["1", "-", "-", "-", "0.2"]


# -- distributed training ---------------------------------------------------------------------


def test_sampler_ranks_split_each_epoch_draw():
    crack = np.zeros(300, bool)
    crack[:40] = True
    for world_size in (2, 3):
        share = 64 // world_size
        for epoch in (0, 1):
            samplers = [BalancedTileSampler(crack, 64, 0.5, 7)]
            samplers += [BalancedTileSampler(crack, 64, 0.5, 7, rank, world_size) for rank in range(world_size)]
            for sampler in samplers:
                sampler.set_epoch(epoch)
            full, *shares = [list(sampler) for sampler in samplers]
            assert [len(sampler) for sampler in samplers[1:]] == [len(tiles) for tiles in shares] == [share] * world_size
            for rank, tiles in enumerate(shares):  # strided shares of the one draw: each drawn tile once
                assert tiles == full[rank : share * world_size : world_size]
    with pytest.raises(ValueError):
        BalancedTileSampler(crack, 64, rank=2, num_replicas=2)


class RankProbe(pl.Callback):
    """Writes ``probe_rank<r>.json`` in ``folder``: the tiles this rank's sampler yields, the val
    photos it predicts, and the val metrics it ends each epoch with."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.record = {"tiles": {}, "val_photos": [], "val": []}

    def on_train_epoch_start(self, trainer, pl_module):
        sampler = trainer.train_dataloader.sampler
        self.record["sampler"] = type(sampler).__name__
        self.record["tiles"][trainer.current_epoch] = list(sampler)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.record["val_photos"] += batch["name"]

    def on_train_epoch_end(self, trainer, pl_module):  # after this epoch's validation
        self.record["val"].append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})

    def on_fit_end(self, trainer, pl_module):
        self.record.update(
            crack=trainer.datamodule.train_index.crack.tolist(),
            val_dice_best=float(pl_module.val_dice_best.max_value),
        )
        (self.folder / f"probe_rank{trainer.global_rank}.json").write_text(json.dumps(self.record))


@pytest.mark.slow
def test_two_process_ddp_splits_tiles_and_photos_and_syncs_metrics(tmp_path):
    run = tmp_path / "run"
    tiles_per_epoch = 32
    _run(_train_py(
        tmp_path, "trainer=ddp", "trainer.devices=2", f"hydra.run.dir={run}", "trainer.max_epochs=2",
        "data.synthetic.n=10", "data.tile=64", f"data.tiles_per_epoch={tiles_per_epoch}", *TINY_SYNTHETIC,
        "+callbacks.probe._target_=tests.test_workflow.RankProbe", f"+callbacks.probe.folder={run}",
        # the mining callback gathers every rank's views (none hard here, so the draws stay the plain ones)
        "callbacks=hard_negatives", "callbacks.hard_negative_mining.min_pixels=100000",
    ))
    probes = [json.loads((run / f"probe_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert probes[0]["sampler"] == probes[1]["sampler"] == "BalancedTileSampler"  # not wrapped by Lightning
    crack = np.array(probes[0]["crack"])
    for epoch in ("0", "1"):
        draw = BalancedTileSampler(crack, tiles_per_epoch, 0.5, seed=42)
        draw.set_epoch(int(epoch))
        shares = [p["tiles"][epoch] for p in probes]
        assert shares[0] == list(draw)[0::2] and shares[1] == list(draw)[1::2]  # each drawn tile once
    assert probes[0]["tiles"]["0"] != probes[0]["tiles"]["1"]  # fresh tiles each epoch

    photos = [p["val_photos"] for p in probes]
    assert len(photos[0]) == len(photos[1]) == 2 and not set(photos[0]) & set(photos[1])  # 2 photos each epoch
    assert probes[0]["val"] == probes[1]["val"] and len(probes[0]["val"]) == 2  # synced, incl. val/loss
    assert probes[0]["val_dice_best"] == probes[1]["val_dice_best"]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["train_tiles"] == 2 * tiles_per_epoch
    assert summary["val_dice_best"] == pytest.approx(probes[0]["val_dice_best"])
    assert len(list((run / "tensorboard").rglob("events.out.tfevents.*"))) == 1  # rank 0 logs alone


# -- resume -----------------------------------------------------------------------------------


def test_checkpoints_are_replaced_whole(tmp_path):
    path = tmp_path / "last.ckpt"
    checkpoint_io = AtomicCheckpointIO()
    checkpoint_io.save_checkpoint({"epoch": 1}, path)
    with pytest.raises(TypeError):
        checkpoint_io.save_checkpoint({"epoch": 2, "unpicklable": threading.Lock()}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_resuming_keeps_val_dice_best(tmp_path, tiny_dataset):
    data = ("data=folder", f"data.root={tiny_dataset}", "data.tile=64", "data.tiles_per_epoch=8", "data.batch_size=4")
    train(_train_cfg(tmp_path, *data, "trainer.max_epochs=1", "ckpt_path=last"))  # nothing to resume: fresh
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["state_dict"]["val_dice_best.max_value"] >= 0
    checkpoint["state_dict"]["val_dice_best.max_value"] = torch.tensor(0.99)  # beyond a tiny model's reach
    torch.save(checkpoint, last)

    best = train(_train_cfg(tmp_path, *data, "trainer.max_epochs=2", "ckpt_path=last"))
    assert best == pytest.approx(0.99)  # survived the sanity check and the new epoch
    assert json.loads((tmp_path / "summary.json").read_text())["resumed_from"] == str(last)


def _scalars(events_file: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events_file)).Reload()
    return [event.value for event in accumulator.Scalars(tag)] if tag in accumulator.Tags()["scalars"] else []


@pytest.mark.slow
def test_a_killed_run_resumes_where_it_stopped_and_finishes(tmp_path, tiny_dataset):
    epochs, tiles_per_epoch, batch_size = 3, 120, 4
    command = _train_py(
        tmp_path, "run_name=bridge", "ckpt_path=last", "data=folder", f"data.root={tiny_dataset}", "data.tile=64",
        f"data.tiles_per_epoch={tiles_per_epoch}", f"data.batch_size={batch_size}", f"trainer.max_epochs={epochs}",
    )
    run = tmp_path / "train" / "runs" / "bridge"
    last = run / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL and not (run / "summary.json").exists()
    for checkpoint_file in run.glob("checkpoints/*.ckpt"):  # never half-written
        torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    killed_epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    assert killed_epoch < epochs - 1

    _run(command)  # the same command again
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"] == str(last) and summary["epochs"] == epochs
    final = torch.load(last, map_location="cpu", weights_only=False)
    steps = epochs * tiles_per_epoch // batch_size
    assert final["epoch"] == epochs - 1 and final["global_step"] == steps
    assert final["lr_schedulers"][0]["last_epoch"] == epochs  # the scheduler went on counting
    assert all(int(state["step"]) == steps for state in final["optimizer_states"][0]["state"].values())
    killed_events, resumed_events = sorted((run / "tensorboard").glob("events.out.tfevents.*"),
                                           key=lambda p: float(p.name.split(".")[3]))
    assert set(_scalars(resumed_events, "epoch")) == set(range(killed_epoch + 1, epochs))  # no epoch redone
    assert killed_epoch in _scalars(killed_events, "epoch")


# -- reproducibility --------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_val_metrics(tmp_path, tiny_dataset):
    data = ("data=folder", f"data.root={tiny_dataset}", "data.tile=64", "data.tiles_per_epoch=16",
            "data.batch_size=4", "data.num_workers=1", "trainer.max_epochs=2")
    metrics = []
    for run in ("a", "b"):
        train(_train_cfg(tmp_path / run, *data, "seed=3"))
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        metrics.append({k: v for k, v in summary["metrics"].items() if k.startswith("val/")})
    assert metrics[0] == metrics[1] and "val/loss" in metrics[0]
