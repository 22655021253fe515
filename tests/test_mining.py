"""Hard-negative mining: the sampler's hard share and the callback that fills it."""

from types import SimpleNamespace
from unittest.mock import Mock

import numpy as np
import pytest
import torch

from crackseg.data.mining import HardNegativeMining
from crackseg.data.sampling import BalancedTileSampler
from crackseg.tasks.train import train
from tests.conftest import train_cfg as _train_cfg


def _labels() -> np.ndarray:
    crack = np.zeros(1000, bool)
    crack[:100] = True
    return crack


def test_sampler_draws_its_hard_share_from_the_hard_tiles():
    sampler = BalancedTileSampler(_labels(), num_samples=400, crack_fraction=0.5, seed=0)
    uniform = np.bincount(list(sampler), minlength=1000)
    sampler.set_hard_negatives([500, 501], fraction=0.4)
    drawn = np.bincount(list(sampler), minlength=1000)
    assert drawn[:100].sum() == 200  # the crack share is unchanged
    assert drawn[500] + drawn[501] >= 80 > uniform[500] + uniform[501]  # 40 % of the 200 background draws
    sampler.set_hard_negatives([], fraction=0.4)
    assert sampler.hard_fraction == 0 and len(list(sampler)) == 400
    with pytest.raises(ValueError, match="fraction"):
        sampler.set_hard_negatives([1], fraction=1.5)


def test_callback_keeps_the_worst_background_tiles_by_their_latest_score():
    crack = _labels()
    sampler = BalancedTileSampler(crack, num_samples=40)
    datamodule = SimpleNamespace(is_crack_tile=lambda tile: bool(crack[tile]), draw_hard_negatives=sampler.set_hard_negatives)
    trainer = SimpleNamespace(datamodule=datamodule, world_size=1)
    mining = HardNegativeMining(fraction=0.5, pool=2, min_pixels=10)
    for tiles, false_px in (([5, 300, 400, 500], [99, 50, 5, 20]), ([500, 600], [0, 30])):
        mining.on_train_batch_end(trainer, Mock(), {"false_crack_px": torch.tensor(false_px)},
                                  {"tile": torch.tensor(tiles)}, 0)
    mining.on_train_epoch_start(trainer, Mock())
    # tile 5 is a crack tile, 400 is below min_pixels, 500 was learnt; the pool keeps the worst two
    assert sampler.hard_ids.tolist() == [300, 600] and sampler.hard_fraction == 0.5
    restored = HardNegativeMining()
    restored.load_state_dict(mining.state_dict())
    assert restored.false_crack_px == mining.false_crack_px


def test_every_rank_passes_the_same_hard_tiles_to_its_sampler(monkeypatch):
    """The sampler draws one epoch for all ranks and gives each a share: the hard tiles must agree."""
    import crackseg.data.mining as mining_module

    crack = _labels()
    ranks = []
    for _ in range(2):
        sampler = BalancedTileSampler(crack, num_samples=40)
        datamodule = SimpleNamespace(is_crack_tile=lambda tile: bool(crack[tile]), draw_hard_negatives=sampler.set_hard_negatives)
        ranks.append((SimpleNamespace(datamodule=datamodule, world_size=2), HardNegativeMining(pool=3, min_pixels=10), sampler))
    for (trainer, mining, _), (tiles, false_px) in zip(ranks, (([300, 400], [50, 40]), ([400, 600], [60, 20]))):
        mining.on_train_batch_end(trainer, Mock(), {"false_crack_px": torch.tensor(false_px)}, {"tile": torch.tensor(tiles)}, 0)
    gathered = [dict(m.this_epoch) for _, m, _ in ranks]  # what all_gather_object hands every rank
    monkeypatch.setattr(mining_module, "_every_rank", lambda trainer, views: gathered)
    for trainer, mining, _ in ranks:
        mining.on_train_epoch_start(trainer, Mock())
    # both ranks: 400 at its worse view (60), then 300 and 600
    assert ranks[0][2].hard_ids.tolist() == ranks[1][2].hard_ids.tolist() == [400, 300, 600]
    assert ranks[0][1].false_crack_px == ranks[1][1].false_crack_px == {300: 50, 400: 60, 600: 20}


def test_training_with_hard_negative_mining(tmp_path, tiny_dataset):
    cfg = _train_cfg(tmp_path, "data=folder", f"data.root={tiny_dataset}", "data.tile=64", "data.tiles_per_epoch=16",
                     "data.batch_size=4", "trainer.max_epochs=2", "callbacks=hard_negatives",
                     "callbacks.hard_negative_mining.min_pixels=1")
    train(cfg)
    mining = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    scores = next(v for k, v in mining.items() if "HardNegativeMining" in k)["false_crack_px"]
    assert scores and all(isinstance(t, int) for t in scores)  # background tiles seen and scored
