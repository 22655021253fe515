"""The one place that reads photos and masks from disk and validates them, and the safe ways
to write: atomic writes (bytes, streams, CSV tables), the clean-up after a killed run,
per-photo lock files.

Everything downstream trusts what the readers return:
photos are ``uint8`` RGB ``(H, W, 3)``, masks are ``uint8`` ``(H, W)`` with values 0/1.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
JPEG_MAX_SIDE = 65_500  # libjpeg's limit, as OpenCV encodes
SENSOR_BITS = (10, 12, 14, 16)  # sensors' bit depths, stored in 16-bit files

# Keep depth and colour as stored, but let OpenCV apply the EXIF orientation
# (IMREAD_UNCHANGED would skip it) and drop any alpha channel.
_READ_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


_PILLOW_LIMIT_LIFTED = threading.Lock()


class ImageReadError(ValueError):
    """A photo or mask that cannot be used; the message names the file and the problem."""


def _check_with_pillow(path: Path, what: str, max_megapixels: float | None) -> None:
    """Refuse a file whose header claims more than ``max_megapixels`` (read by Pillow: OpenCV has no
    header-only read), or that Pillow finds ending before its header or image data does: OpenCV cannot
    tell, libjpeg fills a cut JPEG with grey and only prints a warning. What Pillow cannot read for
    another reason is left to OpenCV."""
    from PIL import Image

    with _PILLOW_LIMIT_LIFTED:  # one check at a time, so each restores the limit it found
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # max_megapixels is the limit, checked below
        try:
            with Image.open(path) as image:
                width, height = image.size
                if max_megapixels is not None and width * height > max_megapixels * 1e6:
                    raise ImageReadError(f"{what} is {width}x{height} ({width * height / 1e6:.0f} MP), above "
                                         f"max_megapixels={max_megapixels:g}: {path}")
                if image.format == "PNG":
                    image.verify()  # reads every chunk to the end and checks its CRC, decoding no pixel
                else:
                    image.draft("L", (1, 1))  # a JPEG is still read to its end, but decoded gray at 1/8 scale
                    image.load()
        except ImageReadError:
            raise
        except Exception as err:  # noqa: BLE001 - what Pillow cannot read, OpenCV may: it decides next
            if "truncated" in str(err).lower():  # Pillow's words for a file that ends too early
                raise ImageReadError(f"{what} is truncated or incomplete (Pillow: {err}): {path}") from err
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _read(path: str | Path, what: str, max_megapixels: float | None = None) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{what} is an empty file: {path}")
    _check_with_pillow(path, what, max_megapixels)
    array = cv2.imread(str(path), _READ_FLAGS)
    if array is None or array.size == 0:
        raise ImageReadError(f"{what} is not a readable image (corrupt, or a format OpenCV cannot decode): {path}")
    return array


def _to_uint8(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        bits = next(b for b in SENSOR_BITS if int(array.max()) < 1 << b)
        if bits < 16:
            log.info("%s: 16-bit pixels all below 2^%d, read as %d-bit sensor data", path, bits, bits)
        return (array >> (bits - 8)).astype(np.uint8)
    raise ImageReadError(f"{what} has unsupported pixel type {array.dtype}: {path}")


def read_photo(path: str | Path, max_megapixels: float | None = None) -> np.ndarray:
    """Read a photo as ``uint8`` RGB ``(H, W, 3)``.

    EXIF orientation is applied; grayscale becomes 3 equal channels; 16-bit is scaled to
    8-bit by the top 8 bits of the smallest sensor depth (10, 12, 14 or 16 bits) that holds its
    brightest pixel (a 12-bit camera's file is not read nearly black); an alpha channel is
    dropped. A photo whose header claims more than ``max_megapixels`` is refused before decoding,
    and one its decoder finds truncated is refused.
    """
    array = _to_uint8(_read(path, "photo", max_megapixels), Path(path), "photo")
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB, dst=array)  # in place: no second copy of a large photo


def binarize_mask(array: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """0/1 ``uint8`` from the mask's own values: a 0/1 mask as it is; a two-valued mask (0/255,
    0/100, 16-bit...) with its higher value as crack; a mask of more values (JPEG noise) cut
    halfway between its lowest and highest value, with a warning naming ``path``; a one-valued
    mask above 1 is crack when in the upper half of its type's range. RGB: any channel counts."""
    if array.ndim == 3:
        array = array.max(axis=2)
    if array.size == 0:
        return array.astype(np.uint8)
    low, high = array.min(), array.max()
    if high <= 1:
        return (array > 0).astype(np.uint8)
    if low == high:
        half = (np.iinfo(array.dtype).max + 1) // 2 if array.dtype.kind in "ui" else 0.5
        return np.full(array.shape, high >= half, np.uint8)
    cut = low + (high - low) / 2
    if np.count_nonzero((array != low) & (array != high)):
        log.warning("mask has values between %s and %s (JPEG noise?); crack where >= %s: %s", low, high, cut, path)
    return (array >= cut).astype(np.uint8)


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask as 0/1 ``uint8`` ``(H, W)``; ``shape`` (H, W) is checked when given."""
    mask = binarize_mask(_read(path, "mask"), path)
    if shape is not None and mask.shape != tuple(shape):
        raise ImageReadError(
            f"mask size {mask.shape[1]}x{mask.shape[0]} differs from its photo's "
            f"{shape[1]}x{shape[0]}: {path}"
        )
    return mask


def read_pair(photo_path: str | Path, mask_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    photo = read_photo(photo_path)
    return photo, read_mask(mask_path, photo.shape[:2])


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # tempfile.mkstemp's names in atomic_write


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it to ``path``: never
    half-written, and streamed (no copy of the data in memory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_digest(path: str | Path) -> str:
    """The first 24 hex digits of the SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:24]


def file_fingerprint(path: str | Path) -> dict:
    """A file's size, times and digest: what tells a changed file from the one something was made
    of (:func:`unchanged_fingerprint`)."""
    stat = Path(path).stat()
    return {"bytes": stat.st_size, **_times(stat), "sha256": file_digest(path)}


def _times(stat: os.stat_result) -> dict:
    # ctime as well: an edit that puts the modification time back (exiftool -P) still changes it
    return {"mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}


def unchanged_fingerprint(path: str | Path, fingerprint: dict) -> dict | None:
    """``fingerprint`` with the file's times now when ``path`` still holds the bytes it was taken
    of (the same size and times, or the same digest: read only when a time differs, a copy of the
    file, say); None when the file changed."""
    stat = Path(path).stat()
    if stat.st_size != fingerprint["bytes"]:
        return None
    times = _times(stat)
    if all(fingerprint.get(key) == value for key, value in times.items()):
        return fingerprint
    return fingerprint | times if file_digest(path) == fingerprint["sha256"] else None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def json_streamed_head(head: dict, key: str) -> bytes:
    """The text :func:`write_json_streamed` writes before the first item."""
    return (json.dumps(head)[:-1] + (", " if head else "") + f"{json.dumps(key)}: [").encode()


def write_json_streamed(path: str | Path, head: dict, key: str, items: Iterable) -> None:
    """``{**head, key: list(items)}`` as JSON, written atomically one item at a time (the same
    text as ``json.dumps``, without the whole list or text in memory)."""
    def write(file: BinaryIO) -> None:
        file.write(json_streamed_head(head, key))
        for i, item in enumerate(items):
            file.write(((", " if i else "") + json.dumps(item)).encode())
        file.write(b"]}")

    atomic_write(path, write)


def write_csv(path: str | Path, fieldnames: Sequence[str], rows: Iterable[dict]) -> None:
    """A CSV table of ``rows`` (keys beyond ``fieldnames`` left out), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def remove_stale_temp_files(folder: str | Path, older_than_s: float = 600) -> list[Path]:
    """Delete the temporary files :func:`atomic_write_bytes` leaves in ``folder`` when a run is
    killed mid-write (``.<name>.<8 random characters>.tmp``), once untouched for ``older_than_s``
    (a running writer's file is fresh); returns what was deleted."""
    folder, now, removed = Path(folder), time.time(), []
    for path in folder.glob(".*.tmp") if folder.is_dir() else []:
        if not _TEMP_NAME.fullmatch(path.name):  # a user's own hidden .tmp file
            continue
        try:
            if path.is_file() and now - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # another run removed it first
            continue
    return removed


@contextmanager
def claimed(lock: str | Path, stale_after_s: float = 6 * 3600) -> Iterator[bool]:
    """Hold the lock file ``lock`` while the block runs; yields whether this process got it.
    A lock left by a run that died (its process gone, on this machine; or untouched for
    ``stale_after_s`` when written on another) is taken over."""
    lock = Path(lock)
    owner = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            stale_owner = _stale_owner(lock, stale_after_s)
            if stale_owner is None or not _remove_stale_lock(lock, stale_owner):
                yield False
                return
            continue
        with os.fdopen(fd, "w") as f:
            f.write(owner)
        try:
            yield True
        finally:
            lock.unlink(missing_ok=True)
        return
    yield False


@contextmanager
def rewrite_lock(path: str | Path, wait_s: float = 60.0) -> Iterator[None]:
    """Hold the lock of a small shared file while it is read and rewritten (milliseconds), so
    runs updating it at once keep each other's changes; after ``wait_s`` without it (a run on
    another machine died holding it) go on, with a warning."""
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    deadline = time.monotonic() + wait_s
    while True:
        with claimed(lock) as mine:
            if mine or time.monotonic() > deadline:
                if not mine:
                    log.warning("%s stayed locked for %.0f s: rewriting %s without it", lock, wait_s, path)
                yield
                return
        time.sleep(0.05)


def _stale_owner(lock: Path, stale_after_s: float) -> str | None:
    """The owner written in ``lock`` if that run is dead (see :func:`claimed`), else None."""
    try:
        text = lock.read_text()
        host, pid = text.split()
        age = time.time() - lock.stat().st_mtime
    except (OSError, ValueError):  # vanished, or caught half-written: not stale
        return None
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return text
        except PermissionError:  # alive, another user's
            return None
        return None
    return text if age > stale_after_s else None


def _remove_stale_lock(lock: Path, stale_owner: str) -> bool:
    """Remove ``lock`` if it still is ``stale_owner``'s; False if a live run holds it now.

    Renamed first, then checked: of two runs taking over the same stale lock, the second may
    rename the first one's fresh lock away, and puts it back (a link, which fails if the lock
    exists again)."""
    taken = lock.with_name(f"{lock.name}.{os.getpid()}.stale")
    try:
        os.replace(lock, taken)
    except FileNotFoundError:  # another run removed it first: try to create it again
        return True
    try:
        if taken.read_text() == stale_owner:
            return True
        try:
            os.link(taken, lock)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            os.replace(taken, lock)
        return False
    finally:
        taken.unlink(missing_ok=True)


def write_image(path: str | Path, image: np.ndarray, jpeg_quality: int = 95) -> None:
    """Atomically write an RGB or single-channel ``uint8`` image; format from the suffix. A JPEG
    holds at most 65,500 px a side: a longer image (a line-scan's overlay) is shrunk to fit."""
    path = Path(path)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    if jpeg and max(image.shape[:2]) > JPEG_MAX_SIDE:
        factor = JPEG_MAX_SIDE / max(image.shape[:2])
        size = (max(1, int(image.shape[1] * factor)), max(1, int(image.shape[0] * factor)))
        log.warning("%s: %dx%d px is more than a JPEG holds (%d a side): written at %dx%d", path, image.shape[1],
                    image.shape[0], JPEG_MAX_SIDE, *size)
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if jpeg else []
    ok, buf = cv2.imencode(path.suffix, image, params)
    if not ok:
        raise ValueError(f"could not encode image as {path.suffix}: {path}")
    atomic_write_bytes(path, buf.tobytes())
