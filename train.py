"""Train a crack segmenter: ``python train.py [data=...] [model=...] [trainer.max_epochs=N]``."""

import math
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns val/dice_best for sweepers; None when no validation ran, which the Optuna sweeper
    records as a failed trial (a NaN would stop the whole sweep)."""
    from crackseg.models.checkpoints import CheckpointError
    from crackseg.io import ImageReadError
    from crackseg.options import OptionError
    from crackseg.tasks.train import train

    try:
        best = train(cfg)
    except (CheckpointError, ImageReadError, OptionError) as err:  # the user's: the message says it all
        sys.exit(f"error: {err}")
    return None if math.isnan(best) else best


if __name__ == "__main__":
    main()
