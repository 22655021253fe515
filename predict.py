"""Predict crack masks of photos: ``python predict.py ckpt=PATH input=DIR|FILE|GLOB output=DIR``."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from crackseg.models.checkpoints import CheckpointError
    from crackseg.tasks.predict import predict

    try:
        failed = predict(cfg)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    if failed:
        sys.exit(f"{failed} photo(s) failed: see summary.csv")


if __name__ == "__main__":
    main()
