"""Train a crack segmenter: ``python train.py [data=...] [model=...] [trainer.max_epochs=N]``."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from crackseg.training import train

    return train(cfg)


if __name__ == "__main__":
    main()
