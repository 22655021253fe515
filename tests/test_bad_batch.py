"""Issue 19's end-to-end check: a batch of every kind of bad photo next to good ones, run as a
user runs it (predict.py in a process of its own, its peak RSS read by that process)."""

import csv
import io
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

from crackseg.io import write_image
from tests.conftest import ROOT
from tests.test_predict import _png_claiming

RUN_AND_REPORT_PEAK = (
    "import resource, runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "finally:\n"
    "    print(f'peak_rss_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n"
)


def _photo(height=60, width=80):
    photo = np.full((height, width, 3), 90, np.uint8)
    photo[height // 2 : height // 2 + 3, 2:-2, 0] = 255  # a red (crack) line
    return photo


def _good_and_bad(folder):
    good = {"a.jpg", "gray16.png", "rgba.png", "exif.jpg", "tiny.png", "javascript:alert(1);x.png",
            "100%#?.png", "tail.jpg"}
    write_image(folder / "a.jpg", _photo())
    Image.fromarray((_photo()[..., 0].astype(np.uint16) * 257)).save(folder / "gray16.png")
    Image.fromarray(np.dstack([_photo(), np.full((60, 80), 255, np.uint8)])).save(folder / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_photo()).save(folder / "exif.jpg", exif=exif.tobytes(), quality=95)
    write_image(folder / "tiny.png", _photo(8, 10))
    write_image(folder / "javascript:alert(1);x.png", _photo())
    write_image(folder / "100%#?.png", _photo())
    (folder / "tail.jpg").write_bytes((folder / "a.jpg").read_bytes() + b"\0" * 5000)

    bad = {"empty.jpg": "empty", "noise.jpg": "not a readable image", "text.png": "not a readable image",
           "cut.jpg": "truncated or incomplete", "cut_png.png": "truncated or incomplete",
           "huge.png": "above max_megapixels=250"}
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / "text.png").write_text("not an image at all")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (folder / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    (folder / "cut_png.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "huge.png").write_bytes(_png_claiming(60000, 60000))
    return good, bad


def test_a_batch_of_every_bad_photo_finishes_the_good_ones_and_reports_the_bad(red_checkpoint, tmp_path):
    photos, out = tmp_path / "in", tmp_path / "out"
    photos.mkdir()
    good, bad = _good_and_bad(photos)
    result = subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT_PEAK, str(ROOT / "predict.py"), f"ckpt={red_checkpoint}",
         f"input={photos}", f"output={out}", "tile=32", "backend=torch", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 1 and f"{len(bad)} photo(s) failed: see summary.csv" in result.stderr
    assert "Traceback" not in result.stderr
    rows = {r["photo"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(rows) == good | set(bad)
    for name in good:
        assert rows[name]["status"] == "ok" and int(rows[name]["crack_pixels"]) > 0, name
    for name, reason in bad.items():
        assert rows[name]["status"] == "failed" and reason in rows[name]["detail"] and name in rows[name]["detail"]
    assert rows["exif.jpg"]["width"] == "60" and rows["exif.jpg"]["height"] == "80"  # turned upright
    report = (out / "report.html").read_text()
    assert report.startswith("<!doctype html>") and report.rstrip().endswith("</html>") and "<script" not in report
    assert report.count("<figure") == len(good)
    assert all(link.startswith(("./", "#")) for link in re.findall(r"href='([^']*)'", report))
    peak_gib = int(re.search(r"peak_rss_kib=(\d+)", result.stderr).group(1)) / 2**20
    assert peak_gib < 2.5  # the bound prediction keeps: nothing bad was decoded to its claimed size
