"""Campaigns: folder trees mirrored into the output, shards that add up to one unsharded run
(one after the other, killed and re-run, or at the same time through Hydra's submitit launcher)."""

import csv
import html
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from crackseg.campaign import find_photos, shard
from crackseg.io import write_image
from crackseg.report.__main__ import main as rebuild_report
from crackseg.tasks.predict import predict
from tests.conftest import ROOT, predict_cfg

TREE = ["cardA/DSC_0001.png", "cardA/DSC_0002.png", "cardB/DSC_0001.png", "cardB/deep/DSC_0003.png", "top.png"]
TIMING = {"seconds", "measure_seconds"}


def _tree(root, keys=TREE, size=(60, 80)):
    """Photos at ``keys`` under ``root``, each with a red (crack) line at its own height."""
    for i, key in enumerate(keys):
        photo = np.full((*size, 3), 90, np.uint8)
        photo[5 + 7 * (i % 7) : 8 + 7 * (i % 7), 4:-4, 0] = 255
        write_image(root / key, photo)
    return root


def _files(folder, leave_out=("summary.csv", "report.html", "shards")):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).parts[0] not in leave_out}


def _summary(folder):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader((folder / "summary.csv").open())]


def test_photos_of_a_tree_are_named_by_their_relative_path(tmp_path):
    site = _tree(tmp_path / "site")
    (site / "cardA" / "._DSC_0001.png").write_bytes(b"macOS resource fork")
    _tree(site / ".trash", ["old.png"])
    assert [p.key for p in find_photos(str(site))] == ["top.png"]
    photos = find_photos(str(site), recursive=True)
    assert [p.key for p in photos] == TREE
    assert photos[2].path == site / "cardB" / "DSC_0001.png"
    assert photos[2].output_dir(tmp_path / "out") == tmp_path / "out" / "cardB"
    assert [p.key for p in find_photos(f"{site}/**/DSC_0001.png")] == ["cardA/DSC_0001.png", "cardB/DSC_0001.png"]
    assert [p.key for p in find_photos(f"{site}/card*/*.png")] == TREE[:3]
    assert [p.key for p in find_photos(str(site / "cardB" / "DSC_0001.png"))] == ["DSC_0001.png"]
    shards = [shard(photos, i, 3) for i in range(3)]
    assert sorted(p.key for s in shards for p in s) == TREE and [len(s) for s in shards] == [2, 2, 1]

    _tree(site, ["cardA/DSC_0002.jpg"])
    with pytest.raises(ValueError, match="same name in one folder.*cardA/DSC_0002.jpg and cardA/DSC_0002.png"):
        find_photos(str(site), recursive=True)


def test_a_tree_predicted_into_itself_mirrors_its_folders_and_resumes(red_checkpoint, tmp_path):
    site = _tree(tmp_path / "site")
    cfg = predict_cfg(ckpt=str(red_checkpoint), input=str(site), output=str(site), recursive=True, tile=32)
    for run in range(2):
        assert predict(cfg) == 0
        rows = _summary(site)
        assert [r["photo"] for r in rows] == TREE  # the outputs of the first run are not photos
        assert {r["status"] for r in rows} == ({"ok"} if run == 0 else {"skipped"})
    masks = [(site / key).with_name(f"{key.split('/')[-1][:-4]}_mask.png") for key in TREE]
    assert all(m.is_file() for m in masks) and masks[0].read_bytes() != masks[2].read_bytes()
    assert [r["crack_pixels"] for r in rows] == [str(3 * 72)] * len(TREE)
    assert {r["photo"] for r in csv.DictReader((site / "cracks.csv").open())} == set(TREE)
    report = (site / "report.html").read_text()
    assert "href='./cardB/deep/DSC_0003_widths.jpg'" in report and (site / "cardB/deep/DSC_0003_widths.jpg").is_file()
    assert ">cardA/DSC_0001.png<" in report and ">cardB/DSC_0001.png<" in report


def test_two_shards_one_after_the_other_make_the_unsharded_outputs(red_checkpoint, tmp_path):
    site = _tree(tmp_path / "site")
    common = dict(ckpt=str(red_checkpoint), input=str(site), recursive=True, tile=32)
    assert predict(predict_cfg(**common, output=str(tmp_path / "whole"))) == 0
    sharded = tmp_path / "sharded"
    for index in range(2):
        assert predict(predict_cfg(**common, output=str(sharded), shard={"index": index, "count": 2})) == 0
        covered = [r["photo"] for r in _summary(sharded)]
        assert covered == (TREE[::2] if index == 0 else TREE)  # the summary holds every finished shard
    assert _files(sharded) == _files(tmp_path / "whole")
    assert _summary(sharded) == _summary(tmp_path / "whole")
    (sharded / "summary.csv").unlink()
    (sharded / "shards" / "shard-7-of-2.json").write_text("{not json")  # a stray file is left out
    rebuild_report([str(sharded)])
    assert _summary(sharded) == _summary(tmp_path / "whole")
    assert _report_body(sharded) == _report_body(tmp_path / "whole").replace(str(tmp_path / "whole"), str(sharded))


def test_two_runs_on_one_output_keep_each_others_outcomes_in_the_summary(tmp_path):
    from crackseg.report.batch import CLAIMED_ELSEWHERE, publish

    def row(photo, status, detail=""):
        return {"photo": photo, "status": status, "detail": detail, "width": 80, "height": 60}

    elsewhere = ("skipped", CLAIMED_ELSEWHERE)
    first = [row("a.png", "failed", "truncated photo: a.png"), row("b.png", *elsewhere), row("c.png", "ok")]
    second = [row("a.png", *elsewhere), row("b.png", "ok"), row("c.png", *elsewhere)]
    publish(tmp_path, first, {}, False)  # two unsharded runs sharing the photos end one after the other
    publish(tmp_path, second, {}, False)
    assert [(r["photo"], r["status"], r["detail"]) for r in _summary(tmp_path)] == [
        ("a.png", "failed", "truncated photo: a.png"), ("b.png", "ok", ""), ("c.png", "ok", "")]
    publish(tmp_path, [row("b.png", "skipped", "outputs exist")], {}, False)  # a later run of fewer photos
    assert [(r["photo"], r["status"]) for r in _summary(tmp_path)] == [("b.png", "skipped")]
    assert not list((tmp_path / "shards").glob(".*.lock"))


def test_a_sharded_campaigns_report_shows_the_settings_of_every_shard(tmp_path):
    from crackseg.report.batch import campaign_settings, publish

    def failed(photo):
        return {"photo": photo, "status": "failed", "detail": "unreadable", "width": 80, "height": 60}

    # shard 0 held only large photos, shard 1 only small ones, with another tile
    first = {"scales": [1, 2, 0.5], "thresholds": {"1,0.5": 0.5}, "tile": 256}
    second = {"scales": [1, 2, 0.5], "thresholds": {"1,2,0.5": 0.336}, "tile": 384}
    publish(tmp_path, [failed("a.png")], first, True, 0, 2)
    publish(tmp_path, [failed("b.png")], second, True, 1, 2)
    assert campaign_settings([{"settings": first}, {"settings": second}]) == {
        "scales": [1, 2, 0.5], "thresholds": {"1,0.5": 0.5, "1,2,0.5": 0.336}, "tile": "256 | 384 (the runs differ)"}
    report = (tmp_path / "report.html").read_text()
    assert html.escape(str({"1,0.5": 0.5, "1,2,0.5": 0.336})) in report
    assert "256 | 384 (the runs differ)" in report


def _report_body(folder):
    return (folder / "report.html").read_text().split("Generated")[0] + (folder / "report.html").read_text().split(
        " by crackseg.")[1]


def _predict_command(checkpoint, site, output, *overrides):
    return [sys.executable, str(ROOT / "predict.py"), f"ckpt={checkpoint}", f"input={site}", f"output={output}",
            "recursive=true", "tile=32", "backend=torch", *overrides]


def test_a_killed_shard_run_again_completes_the_campaign(red_checkpoint, tmp_path):
    site = _tree(tmp_path / "site", [f"f{i // 4}/p{i}.png" for i in range(16)], size=(300, 400))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(_predict_command(red_checkpoint, site, out, "shard.count=2", "shard.index=0",
                                                f"hydra.run.dir={tmp_path / 'run'}"), cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(out.rglob("*_mask.png")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and not (out / "shards" / "shard-0-of-2.json").exists()
    for left in out.rglob(".*.tmp"):  # killed mid-write, if it was: run again later than a writer could still be busy
        os.utime(left, (time.time() - 3600,) * 2)
    done_before = len(list(out.rglob("*_mask.png")))
    assert 0 < done_before < 8
    common = dict(ckpt=str(red_checkpoint), input=str(site), recursive=True, tile=32)
    for index in (1, 0):
        assert predict(predict_cfg(**common, output=str(out), shard={"index": index, "count": 2})) == 0
    assert predict(predict_cfg(**common, output=str(tmp_path / "whole"))) == 0
    assert _files(out) == _files(tmp_path / "whole")
    rows, whole = _summary(out), _summary(tmp_path / "whole")
    assert {r["status"] for r in rows} <= {"ok", "skipped"}
    assert sum(r["detail"] in ("outputs exist", "measured the saved mask") for r in rows) == done_before
    run_facts = TIMING | {"status", "detail", "tiles", "tiles_skipped"}
    assert [{k: v for k, v in r.items() if k not in run_facts} for r in rows] == [
        {k: v for k, v in r.items() if k not in run_facts} for r in whole]
    assert not list(out.rglob(".*.lock")) and not list(out.rglob(".*.tmp"))


def test_shards_launched_together_through_submitit_make_the_unsharded_outputs(red_checkpoint, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    site = _tree(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for output, sweep in (("whole", []), ("sharded", ["hydra/launcher=submitit_local", "shard.count=2",
                                                      "shard.index=0,1"])):
        command = _predict_command(red_checkpoint, site, tmp_path / output, f"paths.log_dir={tmp_path / 'logs'}", *sweep)
        subprocess.run(command[:2] + ["-m"] * bool(sweep) + command[2:], cwd=ROOT, env=env, check=True,
                       capture_output=True)
    assert sorted(p.name for p in (tmp_path / "sharded" / "shards").iterdir()) == ["shard-0-of-2.json",
                                                                                    "shard-1-of-2.json"]
    assert _files(tmp_path / "sharded") == _files(tmp_path / "whole")
    assert _summary(tmp_path / "sharded") == _summary(tmp_path / "whole")
