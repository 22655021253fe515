import random

import albumentations as A
import cv2
import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from crackseg.data.cache import cache_pair
from crackseg.data.folder import find_splits
from crackseg.data.sampling import BalancedTileSampler, PhotoDataset, TileDataset, TileIndex, read_rescaled_tile
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


def test_a_resumed_fit_draws_its_epoch_when_the_loader_is_made(tiny_dataset, tmp_path):
    """Lightning makes the train iterator (workers prefetch their first batches) before it sets
    the sampler's epoch; on resume it is not made again, so the loader must start at the epoch."""
    from types import SimpleNamespace

    from crackseg.data.datamodule import CrackDataModule

    datamodule = CrackDataModule(str(tiny_dataset), cache_dir=str(tmp_path), tile=64, num_workers=0)
    datamodule.setup()
    uninterrupted = datamodule.train_dataloader().sampler
    first_epoch = list(uninterrupted)
    uninterrupted.set_epoch(3)
    datamodule.trainer = SimpleNamespace(current_epoch=3, global_rank=0, world_size=1)
    resumed = datamodule.train_dataloader().sampler
    assert resumed is not uninterrupted and list(resumed) == list(uninterrupted) != first_epoch


def test_sampler_shares_each_class_between_groups_by_weight():
    crack = np.zeros(1000, bool)
    crack[::10] = True  # 100 crack tiles
    groups = np.repeat([0, 1, 2], [500, 400, 100])
    sampler = BalancedTileSampler(crack, num_samples=600, crack_fraction=0.5, seed=3, groups=groups,
                                  group_weights=[2, 1, 0])
    drawn = np.array(list(sampler))
    for is_crack in (True, False):
        share = np.bincount(groups[drawn[crack[drawn] == is_crack]], minlength=3)
        assert share.tolist() == [200, 100, 0]  # 300 per class, 2:1, none from the weight-0 group
    # a group without crack tiles: its weight goes to the crack draws of the others
    crack_in_0 = np.zeros(1000, bool)
    crack_in_0[:50] = True
    drawn = np.array(list(BalancedTileSampler(crack_in_0, 400, 0.5, groups=groups, group_weights=[1, 1, 1])))
    assert crack_in_0[drawn].sum() == 200 and np.bincount(groups[drawn[~crack_in_0[drawn]]]).tolist() == [67, 66, 67]
    with pytest.raises(ValueError, match="one group per tile"):
        BalancedTileSampler(crack, 10, groups=groups[:10])
    with pytest.raises(ValueError, match="weight per group"):
        BalancedTileSampler(crack, 10, groups=groups, group_weights=[1, 1])


def test_rescaled_tile_shows_the_photo_resized_around_the_same_centre():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    mask = np.zeros((300, 400), np.uint8)
    mask[100:110, :] = 1  # a 10 px horizontal band
    same_image, same_mask = read_rescaled_tile(image, mask, 50, 60, 64, 1.0)
    assert np.array_equal(same_image, image[50:114, 60:124]) and np.array_equal(same_mask, mask[50:114, 60:124])
    # 0.5x: a 128 px window around the tile's centre (82, 92), area-downsampled; the band halves
    small_image, small_mask = read_rescaled_tile(image, mask, 50, 60, 64, 0.5)
    expected = cv2.resize(image[18:146, 28:156], (64, 64), interpolation=cv2.INTER_AREA)
    assert np.array_equal(small_image, expected)
    assert small_mask.dtype == np.uint8 and set(np.unique(small_mask)) == {0, 1}
    assert np.flatnonzero(small_mask[:, 0]).tolist() == list(range(41, 46))  # rows 100-109 -> (100-18)/2 ..
    # 2x: a 32 px window (rows 86-117 around the centre 102), bilinear up; the band doubles
    big_image, big_mask = read_rescaled_tile(image, mask, 70, 60, 64, 2.0)
    assert big_image.shape == (64, 64, 3) and np.flatnonzero(big_mask[:, 0]).tolist() == list(range(28, 48))
    # near the border the window stays inside the photo; a photo smaller than it is reflect-padded
    corner_image, _ = read_rescaled_tile(image, mask, 0, 0, 64, 0.5)
    assert np.array_equal(corner_image, cv2.resize(image[:128, :128], (64, 64), interpolation=cv2.INTER_AREA))
    tiny_image, tiny_mask = read_rescaled_tile(image[:40, :50], mask[:40, :50], 0, 0, 64, 0.5)
    assert tiny_image.shape == (64, 64, 3) and tiny_mask.shape == (64, 64)


def test_scale_range_draws_log_uniform_scales_reproducibly(pairs):
    index = TileIndex.build(pairs, 64, 48)
    with pytest.raises(ValueError, match="scale_range"):
        TileDataset(pairs, index, scale_range=[2, 0.5])
    dataset = TileDataset(pairs, index, scale_range=[0.5, 2])
    torch.manual_seed(0)
    scales = np.array([dataset._draw_scale() for _ in range(2000)])
    assert 0.5 <= scales.min() and scales.max() <= 2
    assert abs(np.mean(scales < 1) - 0.5) < 0.05  # log-uniform: as many zoomed out as in
    torch.manual_seed(0)
    first = dataset[3]["image"]
    torch.manual_seed(0)
    assert torch.equal(dataset[3]["image"], first)
    assert TileDataset(pairs, index)._draw_scale() == 1.0


def test_an_enlarged_crack_tile_shows_its_crack(tmp_path):
    from crackseg.data.cache import CachedPair

    image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    mask = np.zeros((128, 128), np.uint8)
    mask[2:6, 2:6] = 1  # in the corner of the first tile, outside its central 32 px window
    np.save(tmp_path / "image.npy", image), np.save(tmp_path / "mask.npy", mask)
    pair = CachedPair(tmp_path / "p.png", tmp_path / "image.npy", tmp_path / "mask.npy", 128, 128)
    index = TileIndex.build([pair], 64, 64)
    assert index.crack.tolist() == [True, False, False, False]
    dataset = TileDataset([pair], index, scale_range=[2, 2])
    torch.manual_seed(0)
    crack = [dataset[0]["mask"] for _ in range(50)]
    assert all(m.sum() > 0 for m in crack) and len({m.nonzero()[0].tolist()[1] for m in crack}) > 1
    background = dataset[3]  # tiles without cracks stay centred
    assert torch.equal(background["image"].permute(1, 2, 0),
                       torch.from_numpy(read_rescaled_tile(image, mask, 64, 64, 64, 2.0)[0]))


def test_training_augmentation_keeps_photo_and_mask_aligned(pairs):
    cfg = OmegaConf.load(ROOT / "conf" / "data" / "folder.yaml").augment
    augment = hydra.utils.instantiate(cfg)
    assert isinstance(augment, A.Compose)
    rng = np.random.default_rng(0)
    mask = (rng.random((64, 64)) > 0.7).astype(np.uint8)
    mask[20:40, 10:50] = 1
    for seed in range(20):
        augment.set_random_state(np.random.default_rng(seed), random.Random(seed))  # as TileDataset does
        out = augment(image=np.repeat(mask[..., None] * 255, 3, axis=2).astype(np.uint8), mask=mask)
        image = out["image"].astype(np.int32).mean(axis=2)
        # brightness/contrast and blur change the values, not where the crack is
        if out["mask"].any() and (~out["mask"].astype(bool)).any():
            assert image[out["mask"] == 1].mean() > image[out["mask"] == 0].mean() + 60
        assert set(np.unique(out["mask"])) <= {0, 1}


def test_augmentations_are_drawn_independently_of_each_other(pairs):
    index = TileIndex.build(pairs[:1], 64, 64)
    dataset = TileDataset(pairs[:1], index, A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]))
    plain = TileDataset(pairs[:1], index)[0]["image"]
    torch.manual_seed(0)
    seen = set()
    for _ in range(100):
        image = dataset[0]["image"]
        seen.add(next(name for name, flipped in [("none", plain), ("h", plain.flip(2)), ("v", plain.flip(1)),
                                                 ("hv", plain.flip(1).flip(2))] if torch.equal(image, flipped)))
    assert seen == {"none", "h", "v", "hv"}  # two flips of equal p were drawn together: only none and hv


def test_photo_dataset_returns_whole_photos(pairs):
    sample = PhotoDataset(pairs)[1]
    assert sample["image"].shape == (3, 168, 200) and sample["image"].dtype == torch.uint8
    assert sample["mask"].shape == (1, 168, 200) and sample["name"] == pairs[1].source.stem
