import json
import os

import cv2
import numpy as np
import pytest

from crackseg.io import (
    ImageReadError, atomic_write_bytes, binarize_mask, claimed, read_mask, read_pair, read_photo, remove_stale_temp_files,
    write_image, write_json_streamed,
)


def test_read_photo_returns_rgb_uint8(tmp_path):
    bgr = np.zeros((5, 7, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "p.png"), bgr)
    photo = read_photo(tmp_path / "p.png")
    assert photo.shape == (5, 7, 3) and photo.dtype == np.uint8
    assert (photo[..., 0] == 200).all() and (photo[..., 2] == 0).all()


def test_grayscale_16bit_and_rgba_photos_are_converted(tmp_path):
    cv2.imwrite(str(tmp_path / "g.png"), np.full((4, 6), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "d.png"), np.full((4, 6), 40000, np.uint16))
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([np.full((4, 6, 3), 70, np.uint8), np.zeros((4, 6), np.uint8)]))
    assert (read_photo(tmp_path / "g.png") == 90).all()
    assert (read_photo(tmp_path / "d.png") == 40000 >> 8).all()
    twelve_bit = np.array([[0, 4095], [2048, 100]], np.uint16)  # a 12-bit sensor's data in a 16-bit file
    cv2.imwrite(str(tmp_path / "t.png"), twelve_bit)
    assert (read_photo(tmp_path / "t.png")[..., 0] == twelve_bit >> 4).all()
    cv2.imwrite(str(tmp_path / "f.png"), np.array([[0, 1023]], np.uint16))  # 10-bit
    assert read_photo(tmp_path / "f.png")[..., 0].tolist() == [[0, 255]]
    rgba = read_photo(tmp_path / "a.png")
    assert rgba.shape == (4, 6, 3) and (rgba == 70).all()  # alpha dropped, colour kept


@pytest.mark.parametrize(
    "raw, expected",
    [
        (np.array([[0, 1], [1, 0]], np.uint8), [[0, 1], [1, 0]]),
        (np.array([[0, 255], [255, 0]], np.uint8), [[0, 1], [1, 0]]),
        (np.array([[3, 250], [200, 90]], np.uint8), [[0, 1], [1, 0]]),  # JPEG noise
        (np.array([[0, 65535], [40000, 100]], np.uint16), [[0, 1], [1, 0]]),
        (np.array([[[0, 0, 0], [255, 0, 0]], [[0, 0, 255], [0, 0, 0]]], np.uint8), [[0, 1], [1, 0]]),  # RGB
        (np.array([[0, 100], [100, 0]], np.uint8), [[0, 1], [1, 0]]),  # 0/100: the higher value is crack
        (np.array([[40, 40], [80, 40]], np.uint8), [[0, 0], [1, 0]]),
        (np.array([[255, 255], [255, 255]], np.uint8), [[1, 1], [1, 1]]),
        (np.array([[100, 100], [100, 100]], np.uint8), [[0, 0], [0, 0]]),
    ],
)
def test_binarize_mask(raw, expected):
    out = binarize_mask(raw)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_masks_of_more_than_two_values_are_cut_halfway_with_a_warning(tmp_path, caplog):
    write_image(tmp_path / "m.png", np.array([[0, 10], [90, 100]], np.uint8))
    with caplog.at_level("WARNING", logger="crackseg.io"):
        np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), [[0, 0], [1, 1]])
    assert "m.png" in caplog.text and ">= 50" in caplog.text


def test_bad_files_raise_errors_naming_the_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    write_image(tmp_path / "ok.jpg", np.full((64, 64, 3), 128, np.uint8))
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    for name, problem in [("missing.jpg", "not found"), ("empty.jpg", "empty"), ("junk.png", "corrupt"), ("cut.jpg", "truncated")]:
        with pytest.raises(ImageReadError, match=problem) as err:
            read_photo(tmp_path / name)
        assert name in str(err.value)


def test_mask_of_another_size_is_rejected(tmp_path):
    write_image(tmp_path / "p.png", np.zeros((10, 12, 3), np.uint8))
    write_image(tmp_path / "m.png", np.zeros((10, 11), np.uint8))
    with pytest.raises(ImageReadError, match=r"11x10 differs from its photo's 12x10.*m\.png"):
        read_pair(tmp_path / "p.png", tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").shape == (10, 11)


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    pixels = np.zeros((4, 8, 3), np.uint8)
    pixels[:, :4] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    photo = read_photo(tmp_path / "r.jpg")
    assert photo.shape == (8, 4, 3)
    assert photo[:3].mean() > 200 and photo[-3:].mean() < 50  # white half now on top


def test_atomic_writes_replace_whole_files_with_usual_permissions(tmp_path):
    target = tmp_path / "out" / "result.json"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    mask = os.umask(0)
    os.umask(mask)
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]  # no temporary file left


def test_a_streamed_json_is_the_text_json_dumps_writes(tmp_path):
    items = [{"points": [[1, 2], [3, 4]], "area": 0.5}, {"name": "b\u00e9"}]
    for head in ({"width": 3, "threshold": 0.25}, {}):
        write_json_streamed(tmp_path / "a.json", head, "items", iter(items))
        assert (tmp_path / "a.json").read_text() == json.dumps({**head, "items": items})
    write_json_streamed(tmp_path / "a.json", {"n": 0}, "items", iter([]))
    assert json.loads((tmp_path / "a.json").read_text()) == {"n": 0, "items": []}


def test_only_our_stale_temporary_files_are_removed(tmp_path):
    import os
    import tempfile
    import time

    fd, name = tempfile.mkstemp(dir=tmp_path, prefix=".a_mask.png.", suffix=".tmp")  # atomic_write's kind
    os.close(fd)
    stale, fresh = tmp_path / os.path.basename(name), tmp_path / ".b_mask.png.z3abcdef.tmp"
    user_files = [tmp_path / name for name in ("notes.tmp", ".config", ".foo.tmp", ".a.png.short.tmp")]
    for path in (stale, fresh, *user_files):
        path.write_bytes(b"x")
    hour_ago = time.time() - 3600
    for path in (stale, *user_files):
        os.utime(path, (hour_ago, hour_ago))
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, *(p.name for p in user_files)])
    assert remove_stale_temp_files(tmp_path / "absent") == []


def test_a_lock_is_held_once_and_taken_over_only_from_a_dead_run(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time

    lock = tmp_path / ".p.lock"
    with claimed(lock) as first:
        with claimed(lock) as second:
            assert first and not second and lock.read_text() == f"{socket.gethostname()} {os.getpid()}"
    assert not lock.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(f"{socket.gethostname()} {int(dead.stdout)}")  # a run killed on this machine
    with claimed(lock) as mine:
        assert mine
    lock.write_text("other-host 1")  # another machine's run: waited for until stale
    with claimed(lock) as mine:
        assert not mine
    old = time.time() - 7 * 3600
    os.utime(lock, (old, old))
    with claimed(lock) as mine:
        assert mine
    assert not list(tmp_path.iterdir())


def test_a_run_late_to_take_over_a_stale_lock_leaves_the_new_owner_holding_it(tmp_path, monkeypatch):
    import os
    import socket

    from crackseg import io

    lock = tmp_path / ".p.lock"
    live = f"{socket.gethostname()} {os.getpid()}"
    lock.write_text(live)  # the first run to take over the stale lock holds it now
    # this run judged the lock stale (its dead owner's) before the first run replaced it
    monkeypatch.setattr(io, "_stale_owner", lambda lock, stale_after_s: "other-host 1")
    with claimed(lock) as mine:
        assert not mine
        assert lock.read_text() == live
    assert [path.name for path in tmp_path.iterdir()] == [lock.name]


def _noise(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_a_jpeg_with_bytes_after_its_end_marker_reads_as_the_clean_one(tmp_path):
    write_image(tmp_path / "clean.jpg", _noise(40, 60))
    (tmp_path / "tail.jpg").write_bytes((tmp_path / "clean.jpg").read_bytes() + b"\0" * 5000)  # no end marker near the end
    np.testing.assert_array_equal(read_photo(tmp_path / "tail.jpg"), read_photo(tmp_path / "clean.jpg"))


def test_a_cut_jpeg_is_refused_even_with_an_end_marker_near_its_cut(tmp_path):
    import io

    from PIL import Image

    thumbnail = io.BytesIO()
    Image.fromarray(_noise(8, 8, 1)).save(thumbnail, "JPEG")  # a whole JPEG inside the file, as an EXIF thumbnail is
    Image.fromarray(_noise(24, 24)).save(tmp_path / "p.jpg", quality=95, comment=thumbnail.getvalue())
    data = (tmp_path / "p.jpg").read_bytes()
    start = data.rindex(b"\xff\xda")  # the photo's own coded data begins here, after the thumbnail
    cut = data[: (start + len(data)) // 2]
    assert b"\xff\xd9" in cut[-4096:]  # an end-of-image marker is still in the last 4 KB
    (tmp_path / "cut.jpg").write_bytes(cut)
    with pytest.raises(ImageReadError, match=r"truncated or incomplete.*cut\.jpg"):
        read_photo(tmp_path / "cut.jpg")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_cut_png_or_tiff_is_refused_as_truncated(tmp_path, suffix):
    from PIL import Image

    Image.fromarray(_noise(30, 40)).save(tmp_path / f"p{suffix}")
    data = (tmp_path / f"p{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=rf"truncated or incomplete.*cut\{suffix}"):
        read_photo(tmp_path / f"cut{suffix}")


def test_photos_read_in_threads_leave_pillows_size_limit_as_it_was(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    write_image(tmp_path / "p.png", _noise(30, 40))
    limit = Image.MAX_IMAGE_PIXELS
    with ThreadPoolExecutor(4) as pool:
        shapes = list(pool.map(lambda _: read_photo(tmp_path / "p.png").shape, range(200)))
    assert shapes == [(30, 40, 3)] * 200 and Image.MAX_IMAGE_PIXELS == limit


def test_random_bytes_named_jpg_are_not_called_a_truncated_jpeg(tmp_path):
    (tmp_path / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ImageReadError, match=r"not a readable image.*noise\.jpg") as err:
        read_photo(tmp_path / "noise.jpg")
    assert "truncated" not in str(err.value)


def test_an_image_longer_than_a_jpeg_holds_is_written_shrunk_to_fit(tmp_path):
    strip = np.zeros((4, 70_000, 3), np.uint8)
    strip[:, 35_000:] = 200
    write_image(tmp_path / "strip.jpg", strip)
    written = read_photo(tmp_path / "strip.jpg")
    assert written.shape[1] <= 65_500 and written.shape[1] > 65_000
    assert written[:, : written.shape[1] // 2 - 2].max() < 10 and written[:, written.shape[1] // 2 + 2 :].min() > 190
    write_image(tmp_path / "strip.png", strip[..., 0])  # PNG holds it whole
    assert read_mask(tmp_path / "strip.png").shape == (4, 70_000)
