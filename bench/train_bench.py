"""Where a training run's time goes: the fit loop's tiles/s against the net's own step (issue 16, part 3).

    python bench/train_bench.py [hydra overrides, e.g. experiment=cracksight data.tiles_per_epoch=256]

Runs ``train()`` on the composed config (one epoch, validation on ``--val-photos`` whole photos)
under Lightning's ``SimpleProfiler``, then, in the same process, the bare step of the same net
(forward, loss, backward, optimizer step on one batch already in memory: the model's own work).
Reports the fit loop's training tiles/s (the train epoch's wall time, validation excluded),
the bare step's tiles/s, their ratio, seconds per validated photo, and the profiler's actions
that took the most time. The LAST line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT))

import hydra  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from crackseg.tasks.train import train  # noqa: E402


class EpochClock(pl.Callback):
    """Wall time of the training epochs and validation passes (sanity check excluded)."""

    def __init__(self):
        self.train_s = self.val_s = 0.0
        self.val_photos = 0
        self._val_in_epoch = 0.0
        self.profile: dict[str, float] = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self._train_started = time.perf_counter()
        self._val_in_epoch = 0.0

    def on_train_epoch_end(self, trainer, pl_module):  # runs after the epoch's validation
        self.train_s += time.perf_counter() - self._train_started - self._val_in_epoch

    def on_validation_epoch_start(self, trainer, pl_module):
        self._val_started = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module):
        seconds = time.perf_counter() - self._val_started
        self._val_in_epoch = 0.0 if trainer.sanity_checking else seconds
        if not trainer.sanity_checking:
            self.val_s += seconds
            self.val_photos += sum(trainer.num_val_batches)

    def on_fit_end(self, trainer, pl_module):
        self.profile = {name: sum(d) for name, d in trainer.profiler.recorded_durations.items()}


def random_batch(batch_size: int, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of random RGB tiles in [0, 255] and masks with ~5 % crack pixels."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (batch_size, 3, tile, tile), generator=generator).float()
    mask = (torch.rand(batch_size, 1, tile, tile, generator=generator) > 0.95).float()
    return image, mask


def train_step(model, optimizer, image: torch.Tensor, mask: torch.Tensor) -> None:
    """The model's own work per batch: forward, loss, backward, optimizer step."""
    loss = model.loss(model(image), mask)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def bare_step_rate(cfg, steps: int) -> float:
    """Tiles/s of :func:`train_step` of the configured net on one batch in memory."""
    model = hydra.utils.instantiate(cfg.model, net_config="")
    optimizer = model.optimizer_factory(params=model.parameters())
    model.train()
    image, mask = random_batch(cfg.data.batch_size, cfg.data.tile)
    for step in range(steps + 2):
        if step == 2:
            started = time.perf_counter()
        train_step(model, optimizer, image, mask)
    return steps * cfg.data.batch_size / (time.perf_counter() - started)


def main(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"paths.output_dir={tmp}", "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1",
            f"trainer.limit_val_batches={args.val_photos}", "trainer.num_sanity_val_steps=0", "+trainer.profiler=simple",
            *args.overrides])
        clock = EpochClock()
        started = time.perf_counter()
        train(cfg, callbacks=[clock])
        fit_s = time.perf_counter() - started
    tiles = cfg.data.tiles_per_epoch
    bare = bare_step_rate(cfg, args.bare_steps)
    fit_rate = tiles / clock.train_s
    top = sorted(clock.profile.items(), key=lambda item: -item[1])[: args.top]
    return {
        "overrides": args.overrides, "torch_threads": torch.get_num_threads(), "tiles": tiles,
        "fit_s": round(fit_s, 1), "train_epoch_s": round(clock.train_s, 1),
        "fit_tiles_per_s": round(fit_rate, 2), "bare_step_tiles_per_s": round(bare, 2),
        "fit_to_bare": round(fit_rate / bare, 3),
        "val_photos": clock.val_photos, "val_s_per_photo": round(clock.val_s / max(clock.val_photos, 1), 1),
        "profile_s": {name: round(seconds, 1) for name, seconds in top},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val-photos", type=int, default=2, help="whole val photos predicted (0: no validation)")
    parser.add_argument("--bare-steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=14, help="profiler actions listed")
    parser.add_argument("overrides", nargs="*")
    print(json.dumps(main(parser.parse_args())))
