"""predict.py: checkpoint loading, outputs, resumable batches, bad input."""

import csv
import html
import json
import logging
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from crackseg.inference.predictor import Predictor
from crackseg.models.checkpoints import CheckpointError, load_model
from crackseg.models.thresholds import ThresholdFileError, threshold_path, write_threshold
from crackseg.tiling import count_tiles
from crackseg.io import ImageReadError, file_digest, read_mask, write_image
from crackseg.models.module import CrackSegModule
from crackseg.tasks.predict import predict
from crackseg.report.photo_outputs import (
    contour_record, find_contours, output_paths, probability_image, read_contours_head, record_source, region_pixels,
    saved_prediction_fields, write_photo_outputs,
)
from tests.conftest import ROOT, copy_photos as _copy_photos, predict_cfg as _predict_cfg


def test_checkpoint_loads_without_the_training_config(checkpoint):
    model = load_model(checkpoint)
    assert not model.training and model.threshold == 0.5 and model.tile == 64
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 40, 50, dtype=torch.uint8)).shape == (1, 1, 40, 50)


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_model(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}, "hook": Predictor}, tmp_path / "code.ckpt")  # a pickled class: code
    with pytest.raises(CheckpointError, match="would run code when loaded") as err:
        load_model(tmp_path / "code.ckpt")
    assert "weights_only" not in str(err.value)
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a crackseg checkpoint"):
        load_model(tmp_path / "other.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"net_config": "_target_: gone.Net"}}, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match="cannot build the net"):
        load_model(tmp_path / "old.ckpt")


def test_single_scale_prediction_is_the_validation_tiler(checkpoint, tiny_dataset):
    model = load_model(checkpoint)
    photo = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    prob = Predictor(model, scales=[1], tile=64, overlap=0.25)(photo)
    validating = CrackSegModule(net=model.net, loss=torch.nn.BCEWithLogitsLoss(), optimizer=None, val_tile=64).eval()
    expected = validating.predict_photo(torch.from_numpy(photo).permute(2, 0, 1))[0].numpy()
    np.testing.assert_allclose(prob, expected, atol=1e-6)
    multi = Predictor(model, scales=[1, 2, 0.5], tile=64)(photo)
    assert multi.shape == (70, 90) and multi.dtype == np.float32 and 0 <= multi.min() <= multi.max() <= 1


def test_photos_from_upscale_below_px_are_predicted_without_the_scales_above_1(checkpoint):
    predictor = Predictor(load_model(checkpoint), scales=[1, 2, 0.5], tile=64, upscale_below_px=100)
    assert predictor.scales_for(99, 500) == [1, 2, 0.5] and predictor.scales_for(100, 100) == [1, 0.5]
    assert predictor.tiles_for(120, 150) == count_tiles(120, 150, 64, 0.25, [1, 0.5])
    upscaling_only = Predictor(load_model(checkpoint), scales=[2], tile=64, upscale_below_px=100)
    assert upscaling_only.scales_for(200, 200) == [2]
    assert Predictor(load_model(checkpoint), scales=[1, 2], tile=64).scales_for(5000, 5000) == [1, 2]
    photo = np.random.default_rng(0).integers(0, 256, (100, 130, 3), dtype=np.uint8)
    np.testing.assert_array_equal(predictor(photo), Predictor(load_model(checkpoint), scales=[1, 0.5], tile=64)(photo))


def test_each_photo_is_predicted_at_its_sizes_scales_and_their_threshold(red_checkpoint, tmp_path):
    ckpt = tmp_path / "red.ckpt"
    ckpt.write_bytes(red_checkpoint.read_bytes())
    write_threshold(ckpt, 0.3, [1, 2, 0.5], {"split": "val"})
    write_threshold(ckpt, 0.6, [1, 0.5], {"split": "val"})
    sizes = {"small": (150, 190), "large": (170, 200)}
    for name, (height, width) in sizes.items():
        photo = np.full((height, width, 3), 90, np.uint8)
        photo[40:43, 10:170, 0] = 255  # a thin red crack
        write_image(tmp_path / "in" / f"{name}.png", photo)
    out = tmp_path / "out"
    cfg = _predict_cfg(ckpt=str(ckpt), input=str(tmp_path / "in"), output=str(out), tile=32, upscale_below_px=160,
                       measure=False)
    assert predict(cfg) == 0
    rows = {r["photo"].split("/")[-1]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert int(rows["small.png"]["tiles"]) == count_tiles(150, 190, 32, 0.25, [1, 2, 0.5])
    assert int(rows["large.png"]["tiles"]) == count_tiles(170, 200, 32, 0.25, [1, 0.5])
    assert (rows["small.png"]["threshold"], rows["large.png"]["threshold"]) == ("0.3", "0.6")  # summary.csv says
    assert {name: read_contours_head(out / f"{name}_contours.json")["threshold"] for name in sizes} == {
        "small": 0.3, "large": 0.6}
    assert predict(cfg) == 0  # each photo's saved mask is at its own threshold: both skipped
    assert all(r["status"] == "skipped" for r in csv.DictReader((out / "summary.csv").open()))
    cfg.upscale_below_px = None  # every photo at every scale: the large one at 0.3 now
    assert predict(cfg) == 0
    rows = {r["photo"].split("/")[-1]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["small.png"]["status"] == "skipped" and rows["large.png"]["status"] == "ok"
    assert read_contours_head(out / "large_contours.json")["threshold"] == 0.3
    threshold_path(ckpt).write_text("{not json")  # one clear error before any photo, not a failure per photo
    with pytest.raises(ThresholdFileError, match="unreadable threshold file"):
        predict(cfg)


def test_batch_writes_outputs_reports_bad_photos_and_resumes(checkpoint, tiny_dataset, tmp_path):
    photos = tmp_path / "in"
    for src in sorted((tiny_dataset / "images" / "train").glob("*.jpg"))[:2]:
        (photos / src.name).parent.mkdir(exist_ok=True)
        (photos / src.name).write_bytes(src.read_bytes())
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    cfg = _predict_cfg(ckpt=str(checkpoint), input=str(photos), output=str(out), threshold=0.3)
    assert predict(cfg) == 1

    rows = {r["photo"].split("/")[-1]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["broken.jpg"]["status"] == "failed" and "broken.jpg" in rows["broken.jpg"]["detail"]
    good = [name for name in rows if name != "broken.jpg"]
    assert len(good) == 2
    for name in good:
        stem = name[:-4]
        assert rows[name]["status"] == "ok" and rows[name]["width"] == "200"
        mask = read_mask(out / f"{stem}_mask.png", (168, 200))
        contours = json.loads((out / f"{stem}_contours.json").read_text())
        assert contours["threshold"] == 0.3 and len(contours["contours"]) == int(rows[name]["contours"])
        assert int(rows[name]["crack_pixels"]) == int(mask.sum())
        assert (out / f"{stem}_overlay.jpg").is_file()
        prob_image = cv2.imread(str(out / f"{stem}_prob.png"), cv2.IMREAD_UNCHANGED)  # 0.3 * 255 = 76.5
        joints = out / f"{stem}_joints.png"  # (this barely trained model's one blob is straight and even)
        predicted = mask | (read_mask(joints, (168, 200)) if joints.is_file() else False)
        assert prob_image.dtype == np.uint8 and predicted.any() and np.array_equal(prob_image >= 77, predicted)
    assert not list(out.glob(".*.tmp")) and not list(out.glob("broken*"))

    stamp = (out / f"{good[0][:-4]}_mask.png").stat().st_mtime_ns
    first_rows = rows
    assert predict(cfg) == 1  # the broken photo still fails; the others are skipped
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert sum(r["status"] == "skipped" for r in rows) == 2
    for row in rows:  # a resumed batch's summary says what an uninterrupted one does
        name = row["photo"].split("/")[-1]
        for key in ("width", "height", "crack_pixels", "crack_fraction", "contours", "cracks", "total_length"):
            assert row[key] == first_rows[name][key], (name, key)
    assert (out / f"{good[0][:-4]}_mask.png").stat().st_mtime_ns == stamp
    cfg.overwrite = True
    predict(cfg)
    assert (out / f"{good[0][:-4]}_mask.png").stat().st_mtime_ns != stamp
    cfg.overwrite, cfg.threshold = False, 0.4  # masks made at another threshold are not reused
    assert predict(cfg) == 1
    rows = {r["photo"].split("/")[-1]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert all(rows[name]["status"] == "ok" for name in good)
    assert all(json.loads((out / f"{name[:-4]}_contours.json").read_text())["threshold"] == 0.4 for name in good)


def test_cascade_writes_the_same_masks_and_counts_the_skipped_tiles(red_checkpoint, tmp_path):
    photos = tmp_path / "in"
    for i in range(2):
        photo = np.full((150, 190, 3), 90, np.uint8)
        photo[40 + 30 * i : 43 + 30 * i, 10:170, 0] = 255  # a thin red crack
        write_image(photos / f"p{i}.png", photo)
    masks = {}
    for cascade in (True, False):
        out = tmp_path / f"cascade_{cascade}"
        assert predict(_predict_cfg(ckpt=str(red_checkpoint), input=str(photos), output=str(out), tile=32,
                                    threshold=0.5, cascade=cascade, measure=False, keep_joints=True)) == 0
        rows = list(csv.DictReader((out / "summary.csv").open()))
        assert all(int(r["tiles"]) == count_tiles(150, 190, 32, 0.25, [1, 2, 0.5]) for r in rows)
        skipped = [int(r["tiles_skipped"]) for r in rows]
        assert all(n > 0.4 * count_tiles(150, 190, 32, 0.25, [2]) for n in skipped) if cascade else skipped == [0, 0]
        masks[cascade] = [(out / f"p{i}_mask.png").read_bytes() for i in range(2)]
    assert masks[True] == masks[False]
    assert all(read_mask(tmp_path / "cascade_True" / f"p{i}_mask.png", (150, 190)).sum() > 300 for i in range(2))


def test_output_inside_the_input_folder_is_not_taken_for_photos(red_checkpoint, tmp_path):
    photo = np.full((60, 80, 3), 90, np.uint8)
    photo[30:33, :, 0] = 255
    write_image(tmp_path / "site" / "wall.jpg", photo)
    write_image(tmp_path / "site" / "other_mask.png", photo)  # a user's photo named like an output: kept
    cfg = _predict_cfg(ckpt=str(red_checkpoint), input=str(tmp_path / "site"), output=str(tmp_path / "site"), tile=32)
    files = []
    for _ in range(2):
        assert predict(cfg) == 0
        rows = list(csv.DictReader((tmp_path / "site" / "summary.csv").open()))
        assert sorted(r["photo"].split("/")[-1] for r in rows) == ["other_mask.png", "wall.jpg"]
        files.append(sorted(p.name for p in (tmp_path / "site").iterdir()))
    assert files[0] == files[1] and "wall_mask.png" in files[0] and "other_mask_mask.png" in files[0]
    (tmp_path / "site" / "wall.jpg").unlink()  # its outputs stay: still not photos
    assert predict(cfg) == 0
    assert [r["photo"] for r in csv.DictReader((tmp_path / "site" / "summary.csv").open())] == ["other_mask.png"]
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == sorted(set(files[0]) - {"wall.jpg"})


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG file whose header claims ``width`` x ``height`` RGB pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("pipeline", [False, True])
def test_one_bad_photo_fails_alone_whatever_goes_wrong(red_checkpoint, tmp_path, monkeypatch, pipeline):
    photos = tmp_path / "in"
    for name in ("a", "b", "c"):
        photo = np.full((60, 80, 3), 90, np.uint8)
        photo[30:33, :, 0] = 255
        write_image(photos / f"{name}.png", photo)
    (photos / "huge.png").write_bytes(_png_claiming(60000, 60000))
    import crackseg.tasks.write_photo as writing

    out = tmp_path / "out"
    if pipeline:  # written in a writer process: its error comes back to fail b alone
        (out / "b_cracks.json").mkdir(parents=True)
        error = f"IsADirectoryError: [Errno 21] Is a directory: '{out / 'b_cracks.json'}'"
    else:
        measure = writing.measure_mask

        def measure_fails_on_b(mask, *args):
            measure_fails_on_b.calls += 1
            if measure_fails_on_b.calls == 2:  # the second photo, b.png
                raise RuntimeError("a bug in measuring")
            return measure(mask, *args)

        measure_fails_on_b.calls = 0
        monkeypatch.setattr(writing, "measure_mask", measure_fails_on_b)
        error = "RuntimeError: a bug in measuring"
    assert predict(_predict_cfg(ckpt=str(red_checkpoint), input=str(photos), output=str(out), tile=32,
                                pipeline=pipeline)) == 2
    status = {r["photo"].split("/")[-1]: (r["status"], r["detail"]) for r in csv.DictReader((out / "summary.csv").open())}
    assert status["a.png"] == status["c.png"] == ("ok", "")
    assert status["b.png"] == ("failed", error)
    assert status["huge.png"][0] == "failed" and "60000x60000 (3600 MP), above max_megapixels=250" in status["huge.png"][1]
    assert "huge.png" in status["huge.png"][1]
    assert f"failed: {error}" in html.unescape((out / "report.html").read_text())
    assert (out / "report.html").is_file()


@pytest.mark.parametrize("pipeline, writers, device, cores, expected", [
    (False, "auto", "cuda", 16, 0), ("auto", "auto", "cpu", 2, 0), ("auto", "auto", "cpu", 8, 1),
    ("auto", "auto", "cuda", 16, 4), ("auto", "auto", "cuda:1", 64, 4), ("auto", "auto", "cuda", 4, 1),
    (True, "auto", "cpu", 2, 1), (True, 3, "cpu", 2, 3), ("auto", 2, "cpu", 2, 0),
])
def test_writers_follow_the_pipeline_option_the_device_and_the_cores(monkeypatch, pipeline, writers, device, cores,
                                                                    expected):
    import crackseg.tasks.predict as predicting

    monkeypatch.setattr(predicting.os, "cpu_count", lambda: cores)
    assert predicting._writers(pipeline, writers, device) == expected


@pytest.mark.parametrize("writers", [1, 3])
def test_the_pipeline_reads_ahead_and_writes_behind_the_model_with_the_same_outputs(red_checkpoint, tmp_path,
                                                                                  monkeypatch, writers):
    import threading

    import crackseg.tasks.predict as predicting

    photos = tmp_path / "in"
    for i in range(4):
        photo = np.full((60, 80, 3), 90, np.uint8)
        photo[10 + 10 * i : 13 + 10 * i, :, 0] = 255
        write_image(photos / f"p{i}.png", photo)
    (photos / "p2_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    names = ["p0", "p1", "p2", "p2_broken", "p3"]
    cfg = _predict_cfg(ckpt=str(red_checkpoint), input=str(photos), tile=32, pipeline=False, output=str(tmp_path / "seq"))
    assert predict(cfg) == 1

    events = {(stage, n): threading.Event() for stage in ("read", "predict", "write") for n in names}
    seen = {"read": set(), "write": set(), "processes": set(), "overlapped": []}
    read, predict_one, write = predicting._read, predicting._predict_one, predicting._write

    def wait_for(stage, job, ahead=1):  # the next photo's stage has started (only in a pipeline)
        later = names.index(job.source.stem) + ahead
        if later < len(names):
            seen["overlapped"].append(events[stage, names[later]].wait(timeout=20))

    def reading(job, *args):
        seen["read"].add(threading.current_thread().name.split("_")[0])
        events["read", job.source.stem].set()
        return read(job, *args)

    def predicting_one(job, *args):
        events["predict", job.source.stem].set()
        wait_for("read", job)  # photo k+1 is being read while photo k is predicted
        return predict_one(job, *args)

    def writing(job, *args):
        seen["write"].add(threading.current_thread().name.split("_")[0])
        seen["processes"].add(type(args[-1]).__name__)
        events["write", job.source.stem].set()
        if writers > 1 and job.source.stem == "p0":  # p1 is written while p0 still is
            seen["written_together"] = events["write", "p1"].wait(timeout=20)
        if job.source.stem != "p2":  # (the next photo, p2_broken, fails when read: nothing to predict)
            wait_for("predict", job)  # photo k is written while photo k+1 is predicted
        return write(job, *args)

    monkeypatch.setattr(predicting, "_read", reading)
    monkeypatch.setattr(predicting, "_predict_one", predicting_one)
    monkeypatch.setattr(predicting, "_write", writing)
    cfg.pipeline, cfg.writers, cfg.output = True, writers, str(tmp_path / "pipe")
    assert predict(cfg) == 1
    assert seen["read"] == {"read"} and seen["write"] == {"write"} and all(seen["overlapped"])
    assert seen["processes"] == {"WriterProcesses"}  # each writer thread hands its photo to a process
    assert seen.get("written_together", False) == (writers > 1)
    assert len(seen["overlapped"]) == 5
    files = {folder: {p.name: p.read_bytes() for p in (tmp_path / folder).glob("p*")} for folder in ("seq", "pipe")}
    assert files["seq"] == files["pipe"] and len(files["seq"]) == 4 * 8
    summaries = [[{k: v for k, v in r.items() if k not in ("seconds", "measure_seconds")}
                  for r in csv.DictReader((tmp_path / folder / "summary.csv").open())] for folder in ("seq", "pipe")]
    assert summaries[0] == summaries[1] and [r["status"] for r in summaries[0]] == ["ok", "ok", "ok", "failed", "ok"]
    assert not list((tmp_path / "pipe").glob(".*.lock"))


def test_a_writer_process_that_dies_fails_its_photo_and_fresh_writers_take_the_next(tmp_path):
    import threading
    import time
    from concurrent.futures.process import BrokenProcessPool

    from crackseg.report.photo_outputs import output_paths
    from crackseg.tasks.write_photo import WriterProcesses, WriteTask

    def task(stem, size=60):
        photo = np.full((size, size, 3), 90, np.uint8)
        prob = np.zeros((size, size), np.float32)
        prob[30:33, 5:55] = 0.9
        return WriteTask(output_paths(tmp_path, stem, True, True, joints=True), stem, photo,
                         probability_image(prob), prob >= 0.5,
                         write_mask=True, threshold=0.5, measure=True, drop_joints=None,
                         settings={"mm_per_px": None, "min_crack_length_px": 10.0, "joint_rule": None})

    def busy_seconds(process):  # user + system CPU time of a process
        return sum(map(int, open(f"/proc/{process.pid}/stat").read().rsplit(")", 1)[1].split()[11:13])) / 100

    def kill_when(pool, condition):  # killed as the kernel kills one out of memory
        (process,) = pool._processes.values()
        deadline = time.monotonic() + 20
        while not condition(process) and time.monotonic() < deadline:
            time.sleep(0.002)
        process.kill()

    processes = WriterProcesses(1)
    try:
        assert processes.write_outputs(task("a"))["cracks"] == 1
        pool, idle = processes._pool, busy_seconds(next(iter(processes._pool._processes.values())))
        killer = threading.Thread(target=kill_when, args=(pool, lambda p: busy_seconds(p) > idle + 0.05))
        killer.start()  # the writer dies while it holds b (a large photo: its transfer and writing take a while)
        with pytest.raises(BrokenProcessPool):
            processes.write_outputs(task("b", size=4000))
        killer.join()
        assert processes.write_outputs(task("c"))["status"] == "ok"  # a fresh writer
        kill_when(processes._pool, lambda p: True)  # idle this time: the pool is found broken when d comes
        deadline = time.monotonic() + 20
        while not processes._pool._broken and time.monotonic() < deadline:
            time.sleep(0.01)
        assert processes.write_outputs(task("d"))["status"] == "ok"  # it never reached the dead writer
    finally:
        processes.close()
    assert not (tmp_path / "b_mask.png").exists()
    assert all((tmp_path / f"{stem}_mask.png").is_file() and (tmp_path / f"{stem}_cracks.json").is_file() for stem in "cd")


def test_a_full_disk_fails_the_photo_leaves_nothing_half_written_and_a_rerun_completes(red_checkpoint, tmp_path,
                                                                                      monkeypatch):
    import errno
    import os

    import crackseg.io

    photos, out = tmp_path / "in", tmp_path / "out"
    for name in ("a", "b"):
        write_image(photos / f"{name}.png", np.full((60, 80, 3), 90, np.uint8))
    replace = os.replace

    def disk_full_for_b(src, dst):
        if str(dst).endswith("b_mask.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        replace(src, dst)

    monkeypatch.setattr(crackseg.io.os, "replace", disk_full_for_b)
    cfg = _predict_cfg(ckpt=str(red_checkpoint), input=str(photos), output=str(out), tile=32, measure=False)
    assert predict(cfg) == 1
    status = {r["photo"].split("/")[-1]: (r["status"], r["detail"]) for r in csv.DictReader((out / "summary.csv").open())}
    assert status["a.png"] == ("ok", "") and status["b.png"][0] == "failed" and "No space left on device" in status["b.png"][1]
    assert not (out / "b_mask.png").exists() and not list(out.glob(".*.tmp"))
    monkeypatch.setattr(crackseg.io.os, "replace", replace)  # space again: the rerun finishes the batch
    assert predict(cfg) == 0 and (out / "b_mask.png").is_file()


def test_a_photo_predicted_again_and_stopped_midway_is_never_left_with_its_old_measurement(red_checkpoint, tmp_path,
                                                                                          monkeypatch):
    import json

    import crackseg.tasks.write_photo as write_module

    photos, out = tmp_path / "in", tmp_path / "out"
    photo = np.full((60, 80, 3), 90, np.uint8)
    photo[15:19, 5:75, 0] = 255  # a crack at any threshold to the red model
    photo[40:44, 5:75, 0] = 135  # a crack at 0.5 (probability 0.95), not at 0.99
    write_image(photos / "a.png", photo)
    cfg = _predict_cfg(ckpt=str(red_checkpoint), input=str(photos), output=str(out), tile=32, threshold=0.5,
                       scales=[1])
    assert predict(cfg) == 0
    assert len(json.loads((out / "a_cracks.json").read_text())["cracks"]) == 2
    cfg.threshold = 0.99  # predicted again; its measurement fails (as a run killed while measuring)

    def broken(*args, **kwargs):
        raise MemoryError("killed while measuring")

    monkeypatch.setattr(write_module, "measure_mask", broken)
    assert predict(cfg) == 1
    # neither the old mask nor its measurement is left (the new mask waits for the joints, told apart by measuring)
    assert not (out / "a_cracks.json").exists() and not (out / "a_mask.png").exists()
    monkeypatch.undo()
    assert predict(cfg) == 0  # the rerun measures the new mask instead of skipping the photo as done
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert rows[0]["status"] == "ok" and len(json.loads((out / "a_cracks.json").read_text())["cracks"]) == 1
    cfg.threshold, cfg.measure = 0.5, False  # predicted again without measuring: the old measurement goes too
    assert predict(cfg) == 0 and not (out / "a_cracks.json").exists()
    cfg.measure = True
    assert predict(cfg) == 0 and len(json.loads((out / "a_cracks.json").read_text())["cracks"]) == 2
    cfg.threshold = 0.99  # predicted again, killed while writing its measurement: the new mask stays, unmeasured
    monkeypatch.setattr(write_module, "write_crack_outputs", broken)
    assert predict(cfg) == 1 and not (out / "a_cracks.json").exists() and (out / "a_mask.png").is_file()
    monkeypatch.undo()
    assert predict(cfg) == 0 and len(json.loads((out / "a_cracks.json").read_text())["cracks"]) == 1
    assert next(csv.DictReader((out / "summary.csv").open()))["detail"] == "measured the saved mask"


def test_a_photo_another_run_is_predicting_is_left_to_it(red_checkpoint, tmp_path, caplog):
    from crackseg.io import claimed

    photos, out = tmp_path / "in", tmp_path / "out"
    for name in ("a", "b"):
        write_image(photos / f"{name}.png", np.full((60, 80, 3), 90, np.uint8))
    cfg = _predict_cfg(ckpt=str(red_checkpoint), input=str(photos), output=str(out), tile=32, measure=False)
    out.mkdir()
    with claimed(out / ".b.lock"), caplog.at_level(logging.WARNING):  # as a second predict.py would hold it
        assert predict(cfg) == 0
    assert "1 photo(s) left to other runs that hold their locks (b.png)" in caplog.text
    status = {r["photo"].split("/")[-1]: (r["status"], r["detail"]) for r in csv.DictReader((out / "summary.csv").open())}
    assert status == {"a.png": ("ok", ""), "b.png": ("skipped", "another run is predicting it")}
    assert not (out / "b_mask.png").exists() and not list(out.glob(".*.lock"))
    assert predict(cfg) == 0 and (out / "b_mask.png").is_file()


def test_contours_of_a_known_mask():
    mask = np.zeros((50, 80), np.uint8)
    mask[10:20, 5:45] = 1
    mask[30:45, 60:63] = 1
    mask[2:5, 70:72] = 1  # higher: first
    found = find_contours(mask)
    contours = [contour_record(c, n) for c, n in zip(found, region_pixels(mask, found))]
    assert [c["bbox"] for c in contours] == [[70, 2, 2, 3], [5, 10, 40, 10], [60, 30, 3, 15]]
    assert [c["pixels"] for c in contours] == [6, 400, 45]
    assert contours[1]["area"] == pytest.approx(39 * 9)  # polygon through the pixel centres
    assert sorted(map(tuple, contours[1]["points"])) == [(5, 10), (5, 19), (44, 10), (44, 19)]


def test_a_crack_inside_a_cell_of_map_cracking_has_its_own_contour_and_pixels():
    mask = np.zeros((60, 60), bool)
    mask[5:55, 5:55] = True
    mask[7:53, 7:53] = False  # a closed cell, 2 px walls
    mask[25:27, 15:45] = True  # a crack inside it
    l_shape = np.zeros((60, 60), bool)
    l_shape[5:55, 5:7] = l_shape[53:55, 5:55] = True
    l_shape[20:22, 20:30] = True  # inside the L's box, not touching it
    for cracks, pixels in [(mask, [60, 384]), (l_shape, [20, 196])]:
        found = find_contours(cracks)
        assert sorted(region_pixels(cracks, found)) == pixels


def test_the_probability_image_holds_each_probability_at_the_nearest_of_256_levels(tmp_path):
    prob = np.array([[0.0, 0.2, 0.5019, 0.998, 1.0, 1e-3]], np.float32)
    image = probability_image(prob)
    assert image.dtype == np.uint8 and image.tolist() == [[0, 51, 128, 254, 255, 0]]
    paths = output_paths(tmp_path, "p")
    with pytest.raises(TypeError, match=r"probability_image\(prob\) \(uint8\), got float32"):
        write_photo_outputs(paths, np.zeros((1, 6, 3), np.uint8), prob, prob >= 0.5, 0.5)
    assert not list(tmp_path.iterdir())


def test_a_saved_prediction_is_summarised_from_the_head_of_its_contours_file(tmp_path):
    mask = np.zeros((50, 80), np.uint8)
    mask[10:20, 5:45] = mask[30:45, 60:63] = 1
    paths = output_paths(tmp_path, "p")
    write_photo_outputs(paths, np.zeros((50, 80, 3), np.uint8), mask * 255, mask.astype(bool), 0.5)
    expected = {"width": 80, "height": 50, "threshold": 0.5, "crack_pixels": 445, "crack_fraction": round(445 / 4000, 6),
                "contours": 2}
    assert saved_prediction_fields(paths) == expected
    assert json.loads(paths["contours"].read_text())["count"] == 2
    document = json.loads(paths["contours"].read_text())
    del document["count"]  # as written before the count was stored: read whole
    paths["contours"].write_text(json.dumps(document))
    assert saved_prediction_fields(paths) == expected
    paths["contours"].write_text('{"width": 80, "heig')  # damaged outside crackseg: names the file and the remedy
    with pytest.raises(ImageReadError, match=f"unreadable saved contours .*overwrite=true: {paths['contours']}"):
        saved_prediction_fields(paths)
    paths["contours"].write_text(json.dumps(document))
    paths["mask"].write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=str(paths["mask"])):
        saved_prediction_fields(paths)


def test_a_new_source_record_rewrites_only_the_contours_heads_fingerprint(tmp_path):
    mask = np.zeros((60, 400), bool)
    mask[10:50:4, 5:395:3] = True  # 390 specks: contours well past the head's first KiB
    paths = output_paths(tmp_path, "p")
    joints, source = {"min_length_px": 400.0}, {"bytes": 12, "mtime_ns": 1, "sha256": "ab" * 12}
    write_photo_outputs(paths, np.zeros((60, 400, 3), np.uint8), mask.astype(np.uint8) * 255, mask, 0.25, joints, source)
    document = json.loads(paths["contours"].read_text())
    copied = source | {"mtime_ns": 10**18, "ctime_ns": 10**18 + 1}  # a longer head: the contours move
    assert record_source(paths["contours"], copied)
    assert json.loads(paths["contours"].read_text()) == document | {"source": copied}
    assert read_contours_head(paths["contours"])["source"] == copied
    for text in (json.dumps(document | {"source": None}), json.dumps(document, indent=1)):  # none; another layout
        paths["contours"].write_text(text)
        assert not record_source(paths["contours"], source) and paths["contours"].read_text() == text


def test_scales_the_models_tile_cannot_take_and_a_missing_gpu_are_refused_before_any_photo(red_checkpoint, tmp_path):
    from crackseg.options import OptionError

    copy = tmp_path / "red.ckpt"
    copy.write_bytes(red_checkpoint.read_bytes())
    write_image(tmp_path / "in" / "p.png", np.zeros((40, 40, 3), np.uint8))
    cfg = _predict_cfg(ckpt=str(copy), input=str(tmp_path / "in"), output=str(tmp_path / "out"), tile=None,
                       scales=[1, 3])
    with pytest.raises(OptionError, match=f"scales=\\[1, 3\\]: the tile of {copy} \\(256\\) must be a multiple of"):
        predict(cfg)
    cfg.scales, cfg.device = [1], f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(OptionError, match=f"device='cuda:{torch.cuda.device_count()}': this machine has"):
        predict(cfg)
    assert not list((tmp_path / "out").glob("p_*"))


def test_cli_exits_non_zero_on_a_missing_checkpoint(tmp_path):
    write_image(tmp_path / "p.png", np.zeros((8, 8, 3), np.uint8))
    result = subprocess.run(
        [sys.executable, str(ROOT / "predict.py"), f"ckpt={tmp_path / 'none.ckpt'}", f"input={tmp_path}",
         f"output={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0 and "checkpoint not found" in result.stderr


def test_batch_measures_cracks_and_writes_the_report(checkpoint, tiny_dataset, tmp_path):
    photos, out = _copy_photos(tiny_dataset, tmp_path / "in"), tmp_path / "out"
    cfg = _predict_cfg(ckpt=str(checkpoint), input=str(photos), output=str(out), threshold=0.3, min_crack_length_px=0)
    assert predict(cfg) == 0
    summary = {r["photo"].split("/")[-1][:-4]: r for r in csv.DictReader((out / "summary.csv").open())}
    crack_rows = list(csv.DictReader((out / "cracks.csv").open()))
    for stem, row in summary.items():
        document = json.loads((out / f"{stem}_cracks.json").read_text())
        assert document["unit"] == row["unit"] == "px" and document["settings"]["mm_per_px"] is None
        assert int(row["cracks"]) + int(row["joints"]) == len(document["cracks"]) == sum(r["photo"] == row["photo"] for r in crack_rows)
        assert float(row["measure_seconds"]) >= 0
        assert json.loads((out / f"{stem}.geojson").read_text())["type"] == "FeatureCollection"
        assert (out / f"{stem}_widths.jpg").is_file() and (out / f"{stem}_thumb.jpg").is_file()
    report = (out / "report.html").read_text()
    assert report.count("data:image/jpeg;base64,") == 2 and "src='http" not in report and "<script" not in report

    cfg.mm_per_px = 0.5  # other units: measured again from the saved masks, not predicted again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*_mask.png")}
    assert predict(cfg) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*_mask.png")} == stamps
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["status"], r["detail"]) for r in rows] == [("ok", "measured the saved mask")] * 2 and {r["unit"] for r in rows} == {"mm"}
    assert [(r["crack_pixels"], r["contours"]) for r in rows] == [(s["crack_pixels"], s["contours"]) for s in summary.values()]
    assert {r["unit"] for r in csv.DictReader((out / "cracks.csv").open())} <= {"mm"}

    (photos / "third.jpg").write_bytes(next((tiny_dataset / "images" / "val").glob("*.jpg")).read_bytes())
    assert predict(cfg) == 0  # resumed: the report still covers every photo of the summary
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert sorted((r["status"], r["detail"]) for r in rows) == [("ok", ""), ("skipped", "outputs exist"), ("skipped", "outputs exist")]
    assert all(r["cracks"] != "" and r["unit"] == "mm" for r in rows)
    report = (out / "report.html").read_text()
    assert report.count("data:image/jpeg;base64,") == 3 and "mm_per_px" in report


def test_batch_without_measurement_and_bad_mm_per_px(checkpoint, tiny_dataset, tmp_path):
    photos, out = _copy_photos(tiny_dataset, tmp_path / "in", n=1), tmp_path / "out"
    cfg = _predict_cfg(ckpt=str(checkpoint), input=str(photos), output=str(out), measure=False)
    assert predict(cfg) == 0
    assert not list(out.glob("*_cracks.json")) and not (out / "report.html").exists()
    assert predict(cfg) == 0 and next(csv.DictReader((out / "summary.csv").open()))["status"] == "skipped"
    cfg.mm_per_px = -1
    with pytest.raises(ValueError, match="mm_per_px=-1: must be a number > 0"):
        predict(cfg)


def test_a_changed_photo_is_predicted_again_and_a_touched_one_skipped(red_checkpoint, tmp_path, monkeypatch):
    import os

    import crackseg.io

    def wall(row):
        photo = np.full((64, 96, 3), 90, np.uint8)
        photo[row:row + 4, 10:90, 0] = 255
        return photo

    source, out = tmp_path / "in" / "wall.bmp", tmp_path / "out"  # bmp: the same size whatever is drawn
    write_image(source, wall(30))
    cfg = _predict_cfg(ckpt=str(red_checkpoint), input=str(tmp_path / "in"), output=str(out), tile=32, scales=[1])

    def run():
        assert predict(cfg) == 0
        row = next(csv.DictReader((out / "summary.csv").open()))
        return row["status"], row["detail"], read_mask(out / "wall_mask.png")

    assert run()[2][30:34, 10:90].all()
    contours = out / "wall_contours.json"
    document = json.loads(contours.read_text())
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))  # the same bytes, copied
    assert run()[:2] == ("skipped", "outputs exist")
    recorded = json.loads(contours.read_text())  # the copy's times, so it is not hashed again; the rest as it was
    times = {"mtime_ns": source.stat().st_mtime_ns, "ctime_ns": source.stat().st_ctime_ns}
    assert recorded == document | {"source": document["source"] | times}
    with monkeypatch.context() as patch:
        patch.setattr(crackseg.io, "file_digest", lambda path: pytest.fail(f"{path} hashed again"))
        assert run()[:2] == ("skipped", "outputs exist")
    edited = tmp_path / "edited.bmp"
    write_image(edited, wall(50))
    source.write_bytes(edited.read_bytes())  # edited in place, its size and modification time kept
    os.utime(source, ns=(source.stat().st_atime_ns, times["mtime_ns"]))
    assert source.stat().st_size == document["source"]["bytes"] and run()[2][50:54, 10:90].all()
    write_image(source, wall(40))  # another photo under the same name
    status, detail, mask = run()
    assert (status, detail) == ("ok", "") and mask[40:44, 10:90].all() and not mask[30:34].any()
    assert read_contours_head(contours)["source"]["sha256"] == file_digest(source)

    document = json.loads(contours.read_text())  # outputs written before photos were fingerprinted
    del document["source"]
    contours.write_text(json.dumps(document))
    write_image(source, wall(20))
    cfg.keep_joints = True  # split again: the mask's photo stays unknown, not taken for the one now there
    assert run()[:2] == ("ok", "split the saved mask's joints again") and read_contours_head(contours)["source"] is None
    write_image(source, np.ascontiguousarray(wall(40).transpose(1, 0, 2)))  # the photo turned
    cfg.mm_per_px = 0.5  # would measure the saved mask again, which no longer fits the photo
    status, detail, mask = run()
    assert (status, detail, mask.shape) == ("ok", "", (96, 64))


def test_joints_leave_the_mask_into_their_own_file_and_stay_in_the_measurements(red_checkpoint, tmp_path, monkeypatch):
    import cv2

    photo = np.full((120, 300, 3), 90, np.uint8)
    photo[20:26, 20:280, 0] = 255  # long, straight, constant width: a joint
    wander = np.stack([np.arange(20, 280), 80 + 12 * np.sin(np.arange(260) / 20)], 1).astype(np.int32)
    cv2.polylines(photo, [wander], False, (255, 90, 90), 4)  # a crack that wanders
    write_image(tmp_path / "in" / "wall.png", photo)
    joint = np.zeros((120, 300), bool)
    joint[20:26, 20:280] = True
    out = tmp_path / "out"
    cfg = _predict_cfg(ckpt=str(red_checkpoint), input=str(tmp_path / "in"), output=str(out), tile=32, scales=[1])

    def outputs():
        document = json.loads((out / "wall_cracks.json").read_text())
        row = next(csv.DictReader((out / "summary.csv").open()))
        return read_mask(out / "wall_mask.png"), sorted(c["type"] for c in document["cracks"]), row

    assert predict(cfg) == 0
    mask, types, row = outputs()
    assert np.array_equal(read_mask(out / "wall_joints.png"), joint) and not (mask & joint).any() and mask.sum() > 500
    assert types == ["diagonal", "joint"] or types == ["horizontal", "joint"]
    report = (out / "report.html").read_text()
    assert (row["cracks"], row["joints"]) == ("1", "1") and ">joint<" in report and "1 crack(s)" in report
    assert "; 1 joint(s)." in report
    cfg.mm_per_px = 0.5  # measured again from the saved mask and joints: the joint is still reported
    assert predict(cfg) == 0
    assert outputs()[1] == types and outputs()[2]["detail"] == "measured the saved mask"
    before = {p.name: p.read_bytes() for p in out.glob("wall*")}

    def model_called(*args, **kwargs):
        raise AssertionError("the model was run again")

    monkeypatch.setattr(Predictor, "__call__", model_called)  # from here on the saved masks are split again
    split_again = ("ok", "split the saved mask's joints again", "")
    cfg.keep_joints = True  # the mask was made without the joints: they go back in
    assert predict(cfg) == 0
    mask, kept_types, row = outputs()
    assert np.array_equal(mask & joint, joint) and not (out / "wall_joints.png").exists() and kept_types == types
    assert (row["status"], row["detail"], row["tiles"]) == split_again and int(row["crack_pixels"]) == mask.sum()
    cfg.keep_joints = False  # and out again: every file as it was
    assert predict(cfg) == 0
    assert {p.name: p.read_bytes() for p in out.glob("wall*")} == before
    cfg.joint_rule.min_length_px = 400  # another rule: the 260 px joint is no longer one
    assert predict(cfg) == 0
    mask, types, row = outputs()
    assert np.array_equal(mask & joint, joint) and not (out / "wall_joints.png").exists() and "joint" not in types
    assert (row["status"], row["detail"], row["tiles"], row["joints"]) == (*split_again, "0")
