import albumentations as A
import numpy as np
import pytest

from crackseg.data.datamodule import CrackDataModule
from crackseg.data.joints import PasteJoints, paste_joints


def _textured_tile(seed: int, size: int = 96) -> np.ndarray:
    return np.random.default_rng(seed).integers(90, 170, (size, size, 3), dtype=np.uint8)


def test_pasted_joints_cross_the_tile_and_leave_the_mask_alone():
    paste = PasteJoints(p=1.0)
    for seed in range(12):
        paste.set_random_seed(seed)
        image, mask = _textured_tile(seed), np.zeros((96, 96), np.uint8)
        out = paste(image=image, mask=mask)
        assert out["image"].shape == image.shape and out["image"].dtype == np.uint8
        np.testing.assert_array_equal(out["mask"], mask)  # joints are background
        changed = np.abs(out["image"].astype(int) - image).max(axis=2) > 8
        assert changed.mean() > 0.005  # (a slab border changes a whole side)
        # a joint is long: it runs from one edge of the tile to another
        edges = [changed[0].any(), changed[-1].any(), changed[:, 0].any(), changed[:, -1].any()]
        assert sum(edges) >= 2


def test_crack_pixels_keep_their_look_under_a_joint():
    paste = PasteJoints(max_joints=2, width=(10, 14), p=1.0)
    mask = np.zeros((96, 96), np.uint8)
    mask[:, 40:46] = 1  # a crack across the whole tile: every joint crosses it
    for seed in range(8):
        paste.set_random_seed(seed)
        image = _textured_tile(seed)
        out = paste(image=image, mask=mask)
        np.testing.assert_array_equal(out["image"][mask == 1], image[mask == 1])
        assert (out["image"][mask == 0] != image[mask == 0]).any()


def test_joints_are_reproducible_under_the_compose_seed():
    compose = A.Compose([PasteJoints(p=1.0)])
    image, mask = _textured_tile(0), np.zeros((96, 96), np.uint8)
    draws = []
    for seed in (5, 5, 6):
        compose.set_random_seed(seed)
        draws.append(compose(image=image, mask=mask)["image"])
    np.testing.assert_array_equal(draws[0], draws[1])
    assert (draws[0] != draws[2]).any()


def test_bad_joint_options_are_refused():
    with pytest.raises(ValueError, match="max_joints"):
        PasteJoints(max_joints=0)
    with pytest.raises(ValueError, match="width"):
        PasteJoints(width=(5, 2))


def test_datamodule_pastes_joints_before_its_augmentation(tmp_path):
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    datamodule = CrackDataModule(str(tmp_path), cache_dir=str(tmp_path / "cache"), augment=flip, paste_joints=0.3)
    first, then = datamodule.augment.transforms
    assert isinstance(first, PasteJoints) and first.p == 0.3 and then is flip
    assert CrackDataModule(str(tmp_path), cache_dir=str(tmp_path), augment=flip).augment is flip
    with pytest.raises(ValueError, match="paste_joints"):
        CrackDataModule(str(tmp_path), cache_dir=str(tmp_path), paste_joints=1.5)


def test_paste_joints_on_a_wide_photo_returns_the_strokes_it_drew():
    image = np.full((60, 140, 3), 128, np.uint8)
    keep = np.zeros((60, 140), bool)
    keep[:, 70:74] = True
    drawn = 0
    for seed in range(6):
        pasted, lines = paste_joints(image, keep, np.random.default_rng(seed), max_joints=3)
        assert pasted.shape == image.shape and lines.shape == keep.shape
        np.testing.assert_array_equal(pasted[keep], image[keep])
        assert not (lines & keep).any()
        # the strokes are where the photo changed
        changed = np.abs(pasted.astype(int) - image).max(axis=2) > 0
        if lines.any():
            assert changed[lines].mean() > 0.9
            drawn += 1
    assert drawn >= 3
