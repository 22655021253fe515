"""The photos of a prediction campaign: found in a folder (or a folder tree), a file or a glob,
each named by its path relative to the input root (``key``: its outputs mirror it under the
output folder, so DSC_0001.JPG of two camera cards never collide), and split into shards."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from crackseg.io import IMAGE_SUFFIXES
from crackseg.report.photo_outputs import output_folder, photo_stem_of_output

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class CampaignPhoto:
    path: Path  # where it is read from
    key: str  # its path relative to the input root, with "/": its name in summaries and reports

    @property
    def stem(self) -> str:
        return self.path.stem

    def output_dir(self, output: Path) -> Path:
        """The folder of its outputs: ``output`` plus the photo's relative folder."""
        return output_folder(output, self.key)


def find_photos(spec: str, output_dir: Path | None = None, recursive: bool = False) -> list[CampaignPhoto]:
    """Photos named by a folder (its images; with ``recursive`` those of every sub-folder too), a
    file, or a glob pattern (``**`` reaches into sub-folders), sorted by key. Hidden files and
    folders (``.name``, e.g. macOS ``._DSC_0001.JPG``) are left out, and so is what an earlier run
    wrote (a file in the output folder of another photo found, named like one of its outputs, or
    named so beside its photo's ``_contours.json`` once the photo is gone), so ``output`` may be
    the input folder itself."""
    path = Path(spec)
    if path.is_file():
        photos = [CampaignPhoto(path, path.name)]
    elif path.is_dir():
        photos = [CampaignPhoto(p, p.relative_to(path).as_posix()) for p in _images_in(path, recursive)]
    else:
        root = _glob_root(spec)
        found = (Path(p) for p in glob.glob(spec, recursive=True))
        photos = [CampaignPhoto(p, p.relative_to(root).as_posix()) for p in found
                  if p.is_file() and _is_image(p) and not _hidden(p.relative_to(root))]
    if output_dir is not None:
        outputs_of = {(p.output_dir(output_dir).resolve(), p.stem) for p in photos}
        photos = [p for p in photos if (p.path.parent.resolve(), photo_stem_of_output(p.path)) not in outputs_of
                  and not _output_of_a_removed_photo(p.path)]
    if not photos:
        raise FileNotFoundError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) found for input={spec}"
                                + ("" if recursive or not path.is_dir() else " (recursive=true reads its sub-folders)"))
    photos.sort(key=lambda p: p.key)
    _check_unique_outputs(photos)
    return photos


def _output_of_a_removed_photo(path: Path) -> bool:
    """Whether ``path`` is named like an output image and lies beside that photo's contours file."""
    stem = photo_stem_of_output(path)
    return stem is not None and (path.parent / f"{stem}_contours.json").is_file()


def shard(photos: list[CampaignPhoto], index: int, count: int) -> list[CampaignPhoto]:
    """Shard ``index`` of ``count``: every count-th photo of the sorted keys, so each shard gets a
    share of every folder and the partition depends only on the photos."""
    return photos[index::count]


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    if not recursive:
        return [p for p in folder.iterdir() if p.is_file() and _is_image(p) and not p.name.startswith(".")]
    images = []
    for parent, dirs, files in os.walk(folder):  # symlinked folders are not followed (no cycles)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        images += [Path(parent, f) for f in files if not f.startswith(".") and _is_image(Path(f))]
    return images


def _glob_root(spec: str) -> Path:
    """The fixed folder a glob pattern starts from (keys are relative to it)."""
    parts = Path(spec).parts
    fixed = next((i for i, part in enumerate(parts) if _GLOB_CHARS & set(part)), len(parts) - 1)
    return Path(*parts[:fixed]) if fixed else Path(".")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _check_unique_outputs(photos: list[CampaignPhoto]) -> None:
    """Photos of one folder with one stem (a.jpg, a.png) would write the same outputs."""
    seen: dict[tuple[str, str], str] = {}
    clashes = []
    for photo in photos:
        slot = (str(PurePosixPath(photo.key).parent), photo.stem)
        if slot in seen:
            clashes.append(f"{seen[slot]} and {photo.key}")
        seen.setdefault(slot, photo.key)
    if clashes:
        raise ValueError(f"photos with the same name in one folder would overwrite each other's outputs: "
                         f"{'; '.join(clashes)}")
