import json

import cv2
import numpy as np

from crackseg.data import synthetic
from crackseg.io import read_mask, read_photo


def test_render_is_deterministic_by_seed():
    a = synthetic.render(7, 160, 120)
    b = synthetic.render(7, 160, 120)
    c = synthetic.render(8, 160, 120)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_masks_are_binary_exact_and_cracks_are_darker():
    found = 0
    for seed in range(12):
        photo, cracks, distractor = synthetic.render(seed, 320, 240)
        assert photo.shape == (240, 320, 3) and photo.dtype == np.uint8
        assert set(np.unique(cracks)) <= {0, 1} and set(np.unique(distractor)) <= {0, 1}
        assert not (cracks & distractor).any()  # joints and borders are background
        if cracks.sum() < 50:
            continue
        found += 1
        gray = photo.astype(np.float32).mean(axis=2)
        ring = cv2.dilate(cracks, np.ones((9, 9), np.uint8)) - cracks
        ring[distractor > 0] = 0
        assert gray[cracks > 0].mean() < gray[ring > 0].mean() - 10  # the mask sits on dark pixels
    assert found >= 5  # most photos have cracks


def test_generate_writes_the_dataset_layout(tmp_path):
    synthetic.main(["--out", str(tmp_path), "--n", "5", "--size", "96x64", "--seed", "1"])
    photos = sorted((tmp_path / "images").rglob("*.jpg"))
    assert [p.parent.name for p in photos] == ["train"] * 4 + ["val"]
    for photo in photos:
        split, stem = photo.parent.name, photo.stem
        mask = read_mask(tmp_path / "masks" / split / f"{stem}.png", (64, 96))
        assert read_photo(photo).shape == (64, 96, 3)
        assert np.array_equal(mask, synthetic.render([1, int(stem[-5:])], 96, 64)[1])
        assert (tmp_path / "distractors" / split / f"{stem}.png").is_file()
    assert json.loads((tmp_path / synthetic.MANIFEST).read_text())["n"] == 5


def test_ensure_regenerates_only_when_parameters_change(tmp_path):
    synthetic.ensure(tmp_path, n=2, width=64, height=64, seed=0)
    stamp = (tmp_path / synthetic.MANIFEST).stat().st_mtime_ns
    synthetic.ensure(tmp_path, n=2, width=64, height=64, seed=0)
    assert (tmp_path / synthetic.MANIFEST).stat().st_mtime_ns == stamp
    synthetic.ensure(tmp_path, n=2, width=64, height=64, seed=1)
    assert json.loads((tmp_path / synthetic.MANIFEST).read_text())["seed"] == 1


def test_a_new_generation_leaves_no_photo_of_the_old_one(tmp_path):
    synthetic.ensure(tmp_path, n=5, width=64, height=64, val_fraction=0.4)
    synthetic.ensure(tmp_path, n=4, width=64, height=64, val_fraction=0.25)
    for kind in ("images", "masks", "distractors"):
        assert sorted(p.relative_to(tmp_path / kind).with_suffix("").as_posix() for p in (tmp_path / kind).rglob("*.*")) \
            == ["train/synth_00000", "train/synth_00001", "train/synth_00002", "val/synth_00003"]
