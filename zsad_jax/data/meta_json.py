"""Datasets described by a `meta.json` at their root, as AnomalyCLIP, VisualAD, AdaCLIP and Bayes-PFL
write it (`generate_dataset_json/<dataset>.py`), read and checked pair by pair.

Format:

    {"train": {cls: [entry, ...], ...}, "test": {cls: [entry, ...], ...}}
    entry = {"img_path": str, "mask_path": str, "cls_name": str, "specie_name": str, "anomaly": 0 | 1}

* split keys are matched case-insensitively (the DAGM script writes "Train"/"Test");
* paths are relative to the root. A path that starts with the root's own folder name and is not
  found below the root is read from the root's parent (Bayes-PFL writes `<root name>/<class>/...`).
  Absolute paths (the colon and brain scripts write `<root>/images/...`) are used when they exist,
  else re-rooted: the longest tail of at least folder/file that exists under the root (the
  dataset was moved since its meta.json was written);
* `mask_path` "" means no mask: a normal image, or an anomalous image of a classification-only set
  (HeadCT, BrainMRI, Br35H);
* `specie_name` is the defect type (Record.defect; "good" for every normal image, "anomaly" for an
  anomalous one with an empty specie_name, as the VisA and colon scripts write);
* an entry with an empty `img_path` and `mask_path` (Bayes-PFL's placeholder for an empty folder)
  is skipped; other keys (Bayes-PFL's `dataset_name`) are ignored.

The scripts pair masks to images by sorted position, which mispairs silently when a mask is
missing and another file (a stray `.DS_Store`, the mask of a removed image) takes its place. So
every entry is checked: keys and values, files exist, `anomaly` agrees with `mask_path`, the mask's
file name belongs to its image (`<stem><suffix>.<ext>`, suffix one of `MASK_SUFFIXES`, compared
case-insensitively), image and mask sizes agree (file headers), and a class does not mix anomalous
images with and without masks. Every problem is named in one DatasetError.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from zsad_jax.data import checks
from zsad_jax.data.records import NORMAL_DEFECT, DatasetError, Record

META_JSON = "meta.json"
ENTRY_KEYS = ("img_path", "mask_path", "cls_name", "specie_name", "anomaly")
MASK_SUFFIXES = ("", "_mask", "_gt", "_label", "_segmentation")
GENERIC_DEFECT = "anomaly"


def has_meta_json(root: pathlib.Path) -> bool:
    return (root / META_JSON).is_file()


def load_meta(root: pathlib.Path, dataset: str) -> dict:
    """The parsed `<root>/meta.json`: {split: {class: [entry, ...]}}; its shape is checked."""
    path = root / META_JSON
    if not path.is_file():
        raise DatasetError(f"[{dataset}] {path} does not exist")
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"[{dataset}] {path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise DatasetError(f"[{dataset}] {path} must hold {{split: {{class: [entry, ...]}}}}, "
                           f"found a {type(meta).__name__}")
    for split, classes in meta.items():
        if not isinstance(classes, dict):
            raise DatasetError(f"[{dataset}] {path}: split {split!r} must map class names to lists "
                               f"of entries, found a {type(classes).__name__}")
        for name, entries in classes.items():
            if not isinstance(entries, list):
                raise DatasetError(f"[{dataset}] {path}: {split}/{name} must be a list of entries, "
                                   f"found a {type(entries).__name__}")
    return meta


def split_key(meta: dict, split: str, dataset: str, path: pathlib.Path) -> str:
    """The key of `split` in `meta`, matched case-insensitively ("test" finds "Test")."""
    keys = [k for k in meta if k.lower() == split.lower()]
    if len(keys) != 1:
        found = ", ".join(repr(k) for k in meta) or "none"
        problem = "has no" if not keys else "has more than one"
        raise DatasetError(f"[{dataset}] {path} {problem} {split!r} split (splits: {found})")
    return keys[0]


def meta_classes(meta: dict, split: str, dataset: str, path: pathlib.Path) -> list[str]:
    """The classes `meta` lists under `split`, in file order."""
    key = split_key(meta, split, dataset, path)
    if not meta[key]:
        raise DatasetError(f"[{dataset}] {path}: split {key!r} lists no classes")
    return list(meta[key])


def resolve_path(root: pathlib.Path, text: str) -> pathlib.Path:
    """The file an entry's path names, `root` being the resolved dataset root (see module doc).

    Returns the first candidate that exists, else the plain reading (`root/text`, or `text` when
    absolute) so that the caller reports a missing file.
    """
    path = pathlib.Path(text.replace("\\", "/"))
    if path.is_absolute():
        if path.exists():
            return path
        parts = path.parts[1:]
        tails = (root.joinpath(*parts[k:]) for k in range(len(parts) - 1))
        return next((p for p in tails if p.exists()), path)
    direct = root / path
    if not direct.exists() and len(path.parts) > 1 and path.parts[0] == root.name:
        below = root.joinpath(*path.parts[1:])
        if below.exists():
            return below
    return direct


def mask_belongs(image: pathlib.Path, mask: pathlib.Path) -> bool:
    """The mask's stem is the image's stem plus one of `MASK_SUFFIXES` (case-insensitive)."""
    image_stem, mask_stem = image.stem.lower(), mask.stem.lower()
    return any(mask_stem == image_stem + suffix for suffix in MASK_SUFFIXES)


def _not_a_file(path: pathlib.Path) -> str:
    return "is a folder, not a file" if path.is_dir() else "does not exist"


def _entry_record(entry, class_name: str, root: pathlib.Path, dataset: str, where: str
                  ) -> tuple[Record | None, list[str]]:
    """One entry -> (its Record, []) or (None, the problems found); (None, []) for a placeholder."""
    if not isinstance(entry, dict):
        return None, [f"{where}: an entry must be an object, found {entry!r}"]
    if missing := [k for k in ENTRY_KEYS if k not in entry]:
        return None, [f"{where}: missing key(s) {', '.join(missing)} in {entry}"]
    image_text, mask_text, cls, specie, anomaly = (entry[k] for k in ENTRY_KEYS)
    if not all(isinstance(v, str) for v in (image_text, mask_text, cls, specie)):
        return None, [f"{where}: img_path, mask_path, cls_name and specie_name must be strings, "
                      f"found {entry}"]
    if not image_text and not mask_text:
        return None, []
    problems = []
    if not (isinstance(anomaly, int) and anomaly in (0, 1)):
        problems.append(f"{where} ({image_text}): anomaly must be 0 or 1, found {anomaly!r}")
    if cls != class_name:
        problems.append(f"{where} ({image_text}): cls_name {cls!r} differs from its class key "
                        f"{class_name!r}")
    image = resolve_path(root, image_text)
    if not image.is_file():
        problems.append(f"{where}: image {image_text!r} {_not_a_file(image)} (looked at {image})")
    mask = resolve_path(root, mask_text) if mask_text else None
    if mask is not None and anomaly == 0:
        problems.append(f"{where}: normal image {image_text} (anomaly 0) lists a mask {mask_text} "
                        f"(normal images have mask_path \"\")")
    elif mask is not None and not mask.is_file():
        problems.append(f"{where}: mask {mask_text!r} of image {image_text} {_not_a_file(mask)} "
                        f"(looked at {mask})")
    if problems:
        return None, problems
    record = Record(str(image.resolve()), str(mask.resolve()) if mask else None, int(anomaly),
                    class_name, (specie or GENERIC_DEFECT) if anomaly else NORMAL_DEFECT, dataset)
    return record, []


def _mixed_masks(records: Sequence[Record], class_name: str) -> list[str]:
    """A class whose anomalous images have masks except some: each image without one."""
    anomalous = [r for r in records if r.label == 1]
    without = [r.image_path for r in anomalous if r.mask_path is None]
    if not without or len(without) == len(anomalous):
        return []
    return [f"class {class_name!r}: anomalous image {p} has no mask (mask_path \"\") while "
            f"{len(anomalous) - len(without)} other(s) of its class have one" for p in without]


def pair_problems(records: Sequence[Record], dataset: str) -> list[str]:
    """Masks whose file name does not belong to their image, or whose size (header) differs."""
    paired = [r for r in records if r.mask_path]
    problems = [f"mask {r.mask_path} is paired with image {r.image_path}: the names do not match "
                f"(a mask is named <image stem>[_mask|_GT|_label|_Segmentation].<ext>)"
                for r in paired
                if not mask_belongs(pathlib.Path(r.image_path), pathlib.Path(r.mask_path))]
    sizes = checks.probe_files([r.image_path for r in paired], [r.mask_path for r in paired],
                               "header", dataset)
    for r in paired:
        image, mask = sizes[r.image_path], sizes[r.mask_path]
        if image.size is None or mask.size is None:
            problems += [f"{p}: {sizes[p].problem}" for p in (r.image_path, r.mask_path)
                         if sizes[p].size is None]
        elif image.size != mask.size:
            problems.append(checks.size_mismatch(r.mask_path, mask.size, r.image_path, image.size))
    return problems


def read_meta_json(meta: dict, root: pathlib.Path, split: str, classes: Sequence[str],
                   dataset: str) -> list[Record]:
    """Records of `classes` (keys of meta's `split`), every entry checked (see module doc).

    Raises one DatasetError naming every problem found.
    """
    root = root.resolve()
    path = root / META_JSON
    key = split_key(meta, split, dataset, path)
    records: list[Record] = []
    problems: list[str] = []
    for name in classes:
        found, before = [], len(problems)
        for i, entry in enumerate(meta[key][name]):
            record, entry_problems = _entry_record(entry, name, root, dataset, f"{key}/{name}[{i}]")
            problems += entry_problems
            found += [record] if record else []
        if not found and len(problems) == before:
            problems.append(f"{key}/{name}: the class lists no images")
        problems += _mixed_masks(found, name)
        records += found
    problems += pair_problems(records, dataset)
    if problems:
        raise DatasetError(f"[{dataset}] {path}: {len(problems)} problem(s) in the listed images "
                           f"and masks:{checks.listing(problems, None)}")
    return records
