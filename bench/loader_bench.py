"""Loader-only tiles/s next to training tiles/s, on the composed training config.

    python bench/loader_bench.py [hydra overrides, e.g. data=cracksight data.num_workers=0]

Prints one JSON object as its last line.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT))

import hydra  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402


def main(overrides: list[str], batches: int = 12) -> dict:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/crackseg-bench", *overrides])
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    started = time.perf_counter()
    datamodule.setup("fit")
    setup_s = time.perf_counter() - started
    loader = datamodule.train_dataloader()
    batch_size = cfg.data.batch_size

    def loader_rate() -> float:
        it = iter(loader)
        next(it)  # worker start-up
        started = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * batch_size / (time.perf_counter() - started)

    model = hydra.utils.instantiate(cfg.model, net_config="")
    optimizer = model.optimizer_factory(params=model.parameters())
    model.train()

    def train_rate() -> float:
        it = iter(loader)
        started = None
        for i in range(batches + 2):
            if i == 2:
                started = time.perf_counter()
            batch = next(it)
            loss = model.loss(model(batch["image"]), batch["mask"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return batches * batch_size / (time.perf_counter() - started)

    result = {
        "data": cfg.data.root,
        "tiles_indexed": len(datamodule.train_index),
        "setup_s": round(setup_s, 2),
        "num_workers": cfg.data.num_workers,
        "torch_threads": torch.get_num_threads(),
        "loader_tiles_per_s": round(loader_rate(), 1),
        "train_tiles_per_s": round(train_rate(), 2),
    }
    result["loader_to_train_ratio"] = round(result["loader_tiles_per_s"] / result["train_tiles_per_s"], 1)
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
