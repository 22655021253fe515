from pathlib import Path

import numpy as np
import pytest

from omegaconf import OmegaConf

from crackseg.data.folder import data_sources, distractor_mask, find_splits, match_pairs, source_splits
from crackseg.io import ImageReadError, write_image


def _write(root, sub, stems, mask=True):  # photos as distinct as their stems: a copy would count once
    for stem in stems:
        photo = np.random.default_rng(list(stem.encode())).integers(0, 256, (8, 8, 3), np.uint8)
        write_image(root / "images" / sub / f"{stem}.jpg", photo)
        if mask:
            write_image(root / "masks" / sub / f"{stem}.png", np.zeros((8, 8), np.uint8))


def test_train_and_val_folders_are_used_as_they_are(tmp_path):
    _write(tmp_path, "train", ["a", "b"])
    _write(tmp_path, "val", ["c"])
    train, val = find_splits(tmp_path)
    assert [p.stem for p, _ in train] == ["a", "b"] and [p.stem for p, _ in val] == ["c"]
    assert all(p.stem == m.stem for p, m in train + val)


@pytest.mark.parametrize("sub", ["train", ""])
def test_missing_val_is_carved_by_photo_with_a_seed(tmp_path, sub):
    stems = [f"p{i}" for i in range(10)]
    _write(tmp_path, sub, stems)
    train, val = find_splits(tmp_path, val_fraction=0.3, seed=5)
    assert len(val) == 3 and len(train) == 7
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert find_splits(tmp_path, val_fraction=0.3, seed=5) == (train, val)
    assert find_splits(tmp_path, val_fraction=0.3, seed=6)[1] != val


def test_bad_folders_raise_clear_errors(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        find_splits(tmp_path / "nope")
    (tmp_path / "images" / "train").mkdir(parents=True)
    with pytest.raises(ImageReadError, match="no photos"):
        match_pairs(tmp_path / "images" / "train", tmp_path / "masks" / "train")
    _write(tmp_path, "train", ["a"])
    _write(tmp_path, "train", ["b"], mask=False)
    with pytest.raises(ImageReadError, match=r"1 photo\(s\) without a mask.*b\.jpg"):
        find_splits(tmp_path)
    write_image(tmp_path / "images" / "train" / "a.png", np.zeros((8, 8, 3), np.uint8))  # a.jpg's twin
    with pytest.raises(ImageReadError, match=r"same stem in .*train: a\.jpg and a\.png"):
        find_splits(tmp_path)


def test_sources_complete_their_settings_and_hold_out_test_photos(tmp_path):
    _write(tmp_path / "a", "train", ["x1", "x2", "x3", "x4", "x5", "shared"])
    _write(tmp_path / "a", "test", ["shared", "t1"])
    _write(tmp_path / "b", "train", ["y1"])
    _write(tmp_path / "b", "val", ["y2"])
    data = OmegaConf.create({"root": None, "val_fraction": 0.4, "split_seed": 0, "sources": {
        "a": {"root": str(tmp_path / "a"), "holdout_split": "test"}, "b": {"root": str(tmp_path / "b"), "weight": 2}}})
    sources = data_sources(data)
    assert list(sources) == ["a", "b"] and sources["b"]["weight"] == 2 and sources["a"]["weight"] == 1.0
    assert sources["a"]["val_fraction"] == 0.4 and sources["b"]["holdout_split"] is None
    carved_val_held_out = 0
    for seed in range(8):  # val is carved first, then test photos leave train and val
        train, val = source_splits({**sources["a"], "split_seed": seed})
        carved_train, carved_val = find_splits(tmp_path / "a", val_fraction=0.4, seed=seed)
        assert train == [pair for pair in carved_train if pair[0].stem != "shared"]
        assert val == [pair for pair in carved_val if pair[0].stem != "shared"]
        carved_val_held_out += "shared" in {p.stem for p, _ in carved_val}
    assert carved_val_held_out  # some seeds carve the test photo into val
    assert [p.stem for p, _ in source_splits(sources["b"])[1]] == ["y2"]
    fold = next(k for k in range(6) if find_splits(tmp_path / "a", seed=0, fold=(k, 6))[1][0][0].stem == "shared")
    with pytest.raises(ValueError, match=r"every val photo of .*a is also in its test split"):
        source_splits({**sources["a"], "val_fold": [fold, 6]})
    _write(tmp_path / "c", "train", ["t1", "t2"])
    _write(tmp_path / "c", "val", ["v1"])
    _write(tmp_path / "c", "test", ["t1", "t2"])
    with pytest.raises(ValueError, match=r"every train photo of .*c is also in its test split"):
        source_splits({**sources["a"], "root": str(tmp_path / "c")})
    assert list(data_sources(OmegaConf.create({"root": str(tmp_path / "b")}))) == ["data"]
    with pytest.raises(ValueError, match="source 'c' needs a root"):
        data_sources(OmegaConf.create({"sources": {"c": {"weight": 1}}}))
    with pytest.raises(ValueError, match="takes only"):
        data_sources(OmegaConf.create({"sources": {"c": {"root": "r", "tile": 3}}}))


def test_a_photo_twice_in_a_split_counts_once_and_the_carve_stays_as_it_was(tmp_path, caplog):
    import logging
    import shutil

    from crackseg.data.folder import split_sources

    _write(tmp_path, "train", [f"p{i}" for i in range(9)])
    _write(tmp_path, "test", ["t0", "t1"])
    copies = {"p8": "p3", "t1": "t0"}  # p8 and t1: the same bytes as p3 and t0 (hea12d's CPFD_06 and 05)
    for copy, original in copies.items():
        sub = "test" if copy.startswith("t") else "train"
        shutil.copy(tmp_path / "images" / sub / f"{original}.jpg", tmp_path / "images" / sub / f"{copy}.jpg")
    data = OmegaConf.create({"root": str(tmp_path), "val_fraction": 0.34, "split_seed": 0})
    with caplog.at_level(logging.WARNING, logger="crackseg.data.folder"):
        for k in range(3):  # wherever the carve puts p3 and p8, each split holds p3's photo once
            train, val = source_splits({**data_sources(data)["data"], "val_fold": (k, 3)})
            carved = find_splits(tmp_path, seed=0, fold=(k, 3))
            both_in = [split for split in carved if {"p3", "p8"} <= {p.stem for p, _ in split}]
            assert [len(split) for split in (train, val)] == [len(split) - (split in both_in) for split in carved]
            assert all(pair in split for kept, split in zip((train, val), carved) for pair in kept)
        test = split_sources(data, "test")["data"]
    assert [p.stem for p, _ in test] == ["t0"]
    assert f"{tmp_path / 'images' / 'test' / 't1.jpg'} is left out of test: it is a copy of " \
           f"{tmp_path / 'images' / 'test' / 't0.jpg'} (the same bytes)" in caplog.text


def test_a_train_photo_that_copies_a_val_photo_is_left_out_of_training(tiny_dataset, tmp_path, caplog):
    import logging
    import shutil

    from crackseg.data.datamodule import CrackDataModule

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    [val_photo] = (root / "images" / "val").glob("*.jpg")
    shutil.copy(val_photo, root / "images" / "train" / "copy.jpg")
    shutil.copy(root / "masks" / "val" / f"{val_photo.stem}.png", root / "masks" / "train" / "copy.png")
    datamodule = CrackDataModule(str(root), cache_dir=str(tmp_path / "cache"), tile=64)
    with caplog.at_level(logging.WARNING, logger="crackseg.data.datamodule"):
        datamodule.setup()
    train_stems = {p.source.stem for p in datamodule.train_pairs}
    assert len(train_stems) == 4 and "copy" not in train_stems
    assert f"copy.jpg is left out of training: it is a copy of the val photo {val_photo}" in caplog.text


def test_a_training_set_made_only_of_val_copies_stops_clearly(tiny_dataset, tmp_path):
    import shutil

    from crackseg.data.datamodule import CrackDataModule

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    [val_photo] = (root / "images" / "val").glob("*.jpg")
    for photo in (root / "images" / "train").glob("*.jpg"):
        shutil.copy(val_photo, photo)
    with pytest.raises(ImageReadError, match="every train photo of .* is a copy of a val photo"):
        CrackDataModule(str(root), cache_dir=str(tmp_path / "cache"), tile=64).setup()


def test_val_folds_partition_the_photos_and_fold_0_is_the_fraction_carve(tmp_path):
    _write(tmp_path, "train", [f"p{i:02d}" for i in range(15)])
    folds = [find_splits(tmp_path, seed=0, fold=(k, 3)) for k in range(3)]
    vals = [{p.stem for p, _ in val} for _, val in folds]
    assert [len(v) for v in vals] == [5, 5, 5] and set.union(*vals) == {f"p{i:02d}" for i in range(15)}
    for (train, val), fold_val in zip(folds, vals):
        assert {p.stem for p, _ in train} == set().union(*vals) - fold_val and train == sorted(train)
    assert folds[0] == find_splits(tmp_path, val_fraction=0.34, seed=0)  # hea12d's carve is its fold 0 of 3
    with pytest.raises(ValueError, match=r"val_fold must be \[k, n\]"):
        find_splits(tmp_path, fold=(3, 3))
    with pytest.raises(ValueError, match=r"val_fold must be \[k, n\]"):
        find_splits(tmp_path, fold=(0, 16))
    _write(tmp_path, "val", ["v"])
    with pytest.raises(ValueError, match="has its own"):
        find_splits(tmp_path, fold=(0, 3))


def test_train_photos_keeps_a_seeded_subset_of_train_and_all_of_val(tmp_path):
    _write(tmp_path, "train", [f"p{i}" for i in range(10)])
    _write(tmp_path, "val", ["v1", "v2"])
    data = OmegaConf.create({"root": str(tmp_path), "train_photos": 4})
    train, val = source_splits(data_sources(data)["data"])
    all_train, all_val = find_splits(tmp_path)
    assert len(train) == 4 and set(train) < set(all_train) and val == all_val
    assert source_splits(data_sources(data)["data"]) == (train, val)
    assert source_splits(data_sources(OmegaConf.merge(data, {"split_seed": 1}))["data"])[0] != train
    assert source_splits(data_sources(OmegaConf.merge(data, {"train_photos": 50}))["data"])[0] == all_train
    with pytest.raises(ValueError, match="train_photos must be at least 1"):
        source_splits(data_sources(OmegaConf.merge(data, {"train_photos": 0}))["data"])


def test_distractor_masks_are_found_in_split_and_flat_layouts(tmp_path, monkeypatch):
    joint = np.zeros((20, 30), np.uint8)
    joint[10, 5:25] = 255
    for rel in ("distractors/val/a.png", "distractors/b.png"):
        write_image(tmp_path / rel, joint)
    monkeypatch.chdir(tmp_path)  # a relative dataset root (data.root=.)
    for photo in (Path("images/val/a.jpg"), Path("images/b.jpg"), tmp_path / "images" / "b.jpg"):
        widened = distractor_mask(photo, (20, 30), margin=1)
        assert widened.sum() == 3 * 22 and widened[9:12, 4:26].all(), photo
    assert distractor_mask(Path("images/c.jpg"), (20, 30)) is None
