"""Accuracy of a checkpoint on a dataset split: ``python evaluate.py ckpt=PATH data=NAME data.split=val``."""

import json
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from crackseg.tasks.evaluate import evaluate
    from crackseg.models.checkpoints import CheckpointError
    from crackseg.io import ImageReadError

    try:
        result = evaluate(cfg)
    except (CheckpointError, ImageReadError, FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
