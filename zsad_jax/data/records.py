"""Records (one image of a dataset index) and the errors raised while building an index."""

from __future__ import annotations

import dataclasses
import pathlib

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NORMAL_DEFECT = "good"


class DatasetError(ValueError):
    """A dataset folder that cannot be indexed; the message names the dataset, file and problem."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One image of a dataset index.

    `mask_path` is None for normal images and for classification-only datasets; `label` is 0 for
    normal, 1 for anomalous; `defect` is "good" for normal images, else the defect type (or the
    dataset's generic anomalous folder name). Paths are absolute strings (JSON-able).
    """

    image_path: str
    mask_path: str | None
    label: int
    class_name: str
    defect: str
    dataset: str

    def __post_init__(self):
        if self.label not in (0, 1):
            raise DatasetError(f"[{self.dataset}] {self.image_path}: label must be 0 or 1, "
                               f"got {self.label!r}")


def is_image_file(path: pathlib.Path) -> bool:
    return (path.is_file() and not path.name.startswith(".")
            and path.suffix.lower() in IMAGE_EXTENSIONS)


def list_images(directory: pathlib.Path) -> list[pathlib.Path]:
    """Image files directly inside `directory`, sorted by name (hidden files and others ignored)."""
    return sorted((p for p in directory.iterdir() if is_image_file(p)), key=lambda p: p.name)


def list_subdirs(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted((p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def require_dir(path: pathlib.Path, dataset: str, what: str) -> pathlib.Path:
    if not path.is_dir():
        parent = path.parent
        found = ([p.name for p in list_subdirs(parent)] if parent.is_dir() else [])
        hint = f" Found in {parent}: {', '.join(found) or 'nothing'}." if parent.is_dir() else ""
        raise DatasetError(f"[{dataset}] missing {what}: {path} is not a directory.{hint}")
    return path


def stem_index(directory: pathlib.Path, dataset: str) -> dict[str, pathlib.Path]:
    """{stem: image file} of a folder; two files with one stem (`1.png`, `1.jpg`) is an error."""
    index: dict[str, pathlib.Path] = {}
    for path in list_images(directory):
        if path.stem in index:
            raise DatasetError(f"[{dataset}] duplicate id {path.stem!r} in {directory}: "
                               f"{index[path.stem].name} and {path.name}")
        index[path.stem] = path
    return index


def find_mask(masks: dict[str, pathlib.Path], stem: str, suffixes: tuple[str, ...]
              ) -> pathlib.Path | None:
    """The mask of image `stem` in a `stem_index`, trying `<stem><suffix>` for each suffix."""
    for suffix in suffixes:
        if stem + suffix in masks:
            return masks[stem + suffix]
    return None


def check_unique(records: list[Record], dataset: str) -> None:
    """Each image appears once in an index."""
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.image_path in seen:
            raise DatasetError(f"[{dataset}] duplicate id: {r.image_path} is listed twice "
                               f"(entries {seen[r.image_path]} and {i})")
        seen[r.image_path] = i
