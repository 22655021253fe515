"""Export a trained model: ``python export.py ckpt=PATH format=onnx out=FILE``."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from crackseg.tasks.export import export
    from crackseg.models.checkpoints import CheckpointError

    try:
        print(export(cfg))
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
