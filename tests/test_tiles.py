import albumentations as A
import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from crackseg.data.cache import cache_pair
from crackseg.data.folder import find_splits
from crackseg.data.tiles import BalancedTileSampler, PhotoDataset, TileDataset, TileIndex
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def pairs(tiny_dataset, tmp_path_factory):
    train, _ = find_splits(tiny_dataset)
    cache = tmp_path_factory.mktemp("cache")
    return [cache_pair(p, m, cache) for p, m in train]


def test_cache_returns_the_validated_arrays_and_reuses_them(tiny_dataset, tmp_path):
    from crackseg.io import read_pair

    (photo, mask), = find_splits(tiny_dataset)[1]
    first = cache_pair(photo, mask, tmp_path)
    stamp = first.image_npy.stat().st_mtime_ns
    image, labels = cache_pair(photo, mask, tmp_path).open()
    expected_image, expected_labels = read_pair(photo, mask)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(labels, expected_labels)
    assert first.image_npy.stat().st_mtime_ns == stamp
    assert (first.height, first.width) == (168, 200)


def test_tile_index_covers_each_photo_and_counts_crack_tiles(pairs):
    tile, stride = 64, 48
    index = TileIndex.build(pairs, tile, stride, min_crack_pixels=5)
    for photo_id, pair in enumerate(pairs):
        _, mask = pair.open()
        covered = np.zeros(mask.shape, bool)
        rows = index.positions[:, 0] == photo_id
        for (_, y, x), crack in zip(index.positions[rows], index.crack[rows]):
            covered[y : y + tile, x : x + tile] = True
            assert crack == (mask[y : y + tile, x : x + tile].sum() >= 5)
        assert covered.all()
    assert 0 < index.crack.sum() < len(index)


def test_photos_smaller_than_a_tile_give_one_padded_tile(pairs):
    index = TileIndex.build(pairs[:1], 256, 128)
    assert index.positions.tolist() == [[0, 0, 0]]
    sample = TileDataset(pairs[:1], index)[0]
    assert sample["image"].shape == (3, 256, 256) and sample["mask"].shape == (1, 256, 256)
    image, mask = pairs[0].open()
    assert torch.equal(sample["image"][:, :168, :200], torch.from_numpy(np.array(image)).permute(2, 0, 1))


def test_sampler_draws_the_crack_fraction_and_fresh_tiles_each_epoch():
    crack = np.zeros(1000, bool)
    crack[:50] = True
    sampler = BalancedTileSampler(crack, num_samples=400, crack_fraction=0.5, seed=1)
    first = list(sampler)
    assert len(first) == 400 and sum(crack[first]) == 200
    assert len(set(i for i in first if not crack[i])) == 200  # background without replacement
    assert list(sampler) == first  # same epoch, same draw
    sampler.set_epoch(1)
    assert list(sampler) != first
    only_background = BalancedTileSampler(np.zeros(10, bool), num_samples=8, crack_fraction=0.5)
    assert len(list(only_background)) == 8


def test_training_augmentation_keeps_photo_and_mask_aligned(pairs):
    cfg = OmegaConf.load(ROOT / "conf" / "data" / "folder.yaml").augment
    augment = hydra.utils.instantiate(cfg)
    assert isinstance(augment, A.Compose)
    rng = np.random.default_rng(0)
    mask = (rng.random((64, 64)) > 0.7).astype(np.uint8)
    mask[20:40, 10:50] = 1
    for seed in range(20):
        augment.set_random_seed(seed)
        out = augment(image=np.repeat(mask[..., None] * 255, 3, axis=2).astype(np.uint8), mask=mask)
        image = out["image"].astype(np.int32).mean(axis=2)
        # brightness/contrast and blur change the values, not where the crack is
        if out["mask"].any() and (~out["mask"].astype(bool)).any():
            assert image[out["mask"] == 1].mean() > image[out["mask"] == 0].mean() + 60
        assert set(np.unique(out["mask"])) <= {0, 1}


def test_photo_dataset_returns_whole_photos(pairs):
    sample = PhotoDataset(pairs)[1]
    assert sample["image"].shape == (3, 168, 200) and sample["image"].dtype == torch.uint8
    assert sample["mask"].shape == (1, 168, 200) and sample["name"] == pairs[1].source.stem
