"""Readers for the industrial datasets, each as the dataset is distributed (see docs/datasets.md).

A reader is `read(root, split, classes) -> list[Record]`: it lists files and pairs every anomalous
image with its mask by file name (never by sorted position); `load_index` then checks the files.
"""

from __future__ import annotations

import csv
import pathlib
import re
from collections.abc import Sequence

from zsad_jax.data import checks, images
from zsad_jax.data.records import (
    NORMAL_DEFECT,
    DatasetError,
    Record,
    find_mask,
    list_images,
    list_subdirs,
    require_dir,
    stem_index,
)


def read_defect_folders(split_dir: pathlib.Path, gt_root: pathlib.Path | None, class_name: str,
                        dataset: str, *, normal_names: tuple[str, ...] = (NORMAL_DEFECT,),
                        mask_suffixes: tuple[str, ...] = ("_mask",), masks_required: bool = True,
                        ignore: tuple[str, ...] = (), unpaired_masks: bool = False) -> list[Record]:
    """`split_dir/<defect>/<stem>.<ext>` with masks `gt_root/<defect>/<stem><suffix>.<ext>`.

    Folders named in `normal_names` hold normal images (their defect is recorded as "good").
    With `masks_required=False`, anomalous images without a mask get `mask_path=None`, but a
    defect folder where only some images have masks is an error (pixel metrics would be wrong).
    With `unpaired_masks=True`, a mask under `gt_root` that pairs with no image (misnamed, e.g.
    `000-mask.png`; left from a removed image; in a folder no defect folder matches) is an error
    naming every such file; masks under `gt_root/<normal name>` are not read.
    """
    records, unpaired = [], []
    defect_dirs = [d for d in list_subdirs(split_dir) if d.name not in ignore]
    for defect_dir in defect_dirs:
        files = stem_index(defect_dir, dataset)
        if defect_dir.name in normal_names:
            records += [Record(str(p.resolve()), None, 0, class_name, NORMAL_DEFECT, dataset)
                        for p in files.values()]
            continue
        mask_dir = gt_root / defect_dir.name if gt_root is not None else None
        masks = stem_index(mask_dir, dataset) if mask_dir and mask_dir.is_dir() else {}
        paired = {stem: find_mask(masks, stem, mask_suffixes) for stem in files}
        missing = [files[s] for s, m in paired.items() if m is None]
        if unpaired_masks:
            orphans = _unpaired_in_folder(masks, paired.values(), defect_dir, missing,
                                          mask_suffixes)
            unpaired += orphans
            if orphans:
                continue  # reported below, with this folder's images that lack a mask
        if missing and (masks_required or len(missing) < len(files)):
            expected = f"{mask_dir}/{missing[0].stem}{mask_suffixes[0]}.png"
            raise DatasetError(
                f"[{dataset}] {len(missing)} anomalous image(s) of class {class_name!r}, defect "
                f"{defect_dir.name!r} have no mask, e.g. {missing[0]} (expected {expected}; "
                f"masks are paired by file name)")
        records += [Record(str(p.resolve()), str(paired[s].resolve()) if paired[s] else None, 1,
                           class_name, defect_dir.name, dataset) for s, p in files.items()]
    if unpaired_masks and gt_root is not None and gt_root.is_dir():
        unpaired += _masks_outside_defects(gt_root, split_dir, {d.name for d in defect_dirs},
                                           normal_names)
    if unpaired:
        names = " or ".join(f"<stem>{s}.<ext>" for s in mask_suffixes)
        raise DatasetError(
            f"[{dataset}] {len(unpaired)} mask(s) of class {class_name!r} pair with no image (the "
            f"mask of image {split_dir.name}/<defect>/<stem>.<ext> is "
            f"{gt_root}/<defect>/{{{names}}}):{checks.listing(unpaired, None)}")
    return records


def _unpaired_in_folder(masks: dict[str, pathlib.Path], used, defect_dir: pathlib.Path,
                        missing: Sequence[pathlib.Path], suffixes: tuple[str, ...]) -> list[str]:
    """Masks of one defect folder that no image uses, each with the image name it would need."""
    used = {p for p in used if p is not None}
    lacking = (f"; images of {defect_dir.name!r} without a mask: "
               f"{', '.join(p.name for p in missing)}" if missing else "")
    lines = []
    for stem, mask in masks.items():
        if mask in used:
            continue
        image_stem = next((stem[:-len(s)] for s in suffixes if s and stem.endswith(s)), stem)
        lines.append(f"{mask}: no image {defect_dir}/{image_stem}.<ext>{lacking}")
    return lines


def _masks_outside_defects(gt_root: pathlib.Path, split_dir: pathlib.Path, defects: set[str],
                           normal_names: tuple[str, ...]) -> list[str]:
    """Masks lying directly in `gt_root`, or in a sub-folder that names no defect folder."""
    lines = [f"{p}: masks go in {gt_root}/<defect>/" for p in list_images(gt_root)]
    for folder in list_subdirs(gt_root):
        if folder.name in defects or folder.name in normal_names:
            continue
        lines += [f"{p}: no defect folder {split_dir}/{folder.name}/ (defect folders: "
                  f"{', '.join(sorted(defects)) or 'none'})" for p in list_images(folder)]
    return lines


def _nonempty(records: list[Record], dataset: str, class_name: str, where) -> list[Record]:
    if not records:
        raise DatasetError(f"[{dataset}] class {class_name!r} is empty: no images under {where}")
    return records


def read_mvtec_layout(root: pathlib.Path, split: str, classes: Sequence[str], dataset: str,
                      masks_required: bool = True, unpaired_masks: bool = False) -> list[Record]:
    """MVTec-AD (and MPDD, DTD-Synthetic, synthetic): `<class>/<split>/<defect>/*.png`,
    masks `<class>/ground_truth/<defect>/<stem>_mask.png`. `unpaired_masks`: see
    `read_defect_folders` (masks belong to the test split: pass it for split "test" only)."""
    records = []
    for name in classes:
        class_dir = require_dir(root / name, dataset, f"class {name!r}")
        split_dir = require_dir(class_dir / split, dataset, f"split {split!r} of class {name!r}")
        found = read_defect_folders(split_dir, class_dir / "ground_truth", name, dataset,
                                    mask_suffixes=("_mask", ""), masks_required=masks_required,
                                    unpaired_masks=unpaired_masks)
        records += _nonempty(found, dataset, name, split_dir)
    return records


def read_folder(root: pathlib.Path, split: str, classes: Sequence[str]) -> list[Record]:
    """A user's own data: `<class>/{good,<defect>...}/*` with optional masks
    `<class>/ground_truth/<defect>/<stem>[_mask].png`; or per class an MVTec layout
    (`<class>/{train,test}/...`). A mask that pairs with no image is an error (a misnamed mask
    would otherwise leave its image without one, silently)."""
    records = []
    for name in classes:
        class_dir = require_dir(root / name, "folder", f"class {name!r}")
        if (class_dir / "test").is_dir():
            records += read_mvtec_layout(root, split, [name], "folder", masks_required=False,
                                         unpaired_masks=split == "test")
            continue
        if split != "test":
            raise DatasetError(f"[folder] class {name!r} has no {split!r} split: {class_dir} holds "
                               f"defect folders directly, which form the 'test' split")
        found = read_defect_folders(class_dir, class_dir / "ground_truth", name, "folder",
                                    mask_suffixes=("_mask", ""), masks_required=False,
                                    ignore=("ground_truth",), unpaired_masks=True)
        records += _nonempty(found, "folder", name, class_dir)
    return records


def discover_classes(root: pathlib.Path, dataset: str) -> list[str]:
    require_dir(root, dataset, "dataset root")
    return [p.name for p in list_subdirs(root)]


# ---- VisA ------------------------------------------------------------------------------------
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_LABELS = {"normal": 0, "anomaly": 1}


def read_visa(root: pathlib.Path, split: str, classes: Sequence[str]) -> list[Record]:
    """VisA as downloaded: `split_csv/1cls.csv` (object, split, label, image, mask), paths relative
    to the root (`candle/Data/Images/Anomaly/000.JPG`, `candle/Data/Masks/Anomaly/000.png`)."""
    csv_path = root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise DatasetError(f"[visa] missing split file {csv_path} (it ships with the VisA archive "
                           f"as split_csv/1cls.csv)")
    wanted = set(classes)
    records = []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # BOM-tolerant
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if missing := [c for c in VISA_COLUMNS if c not in columns]:
            raise DatasetError(f"[visa] {csv_path}: missing column(s) {missing}; found {columns}")
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
            if row["split"] != split or row["object"] not in wanted:
                continue
            where = f"{csv_path}:{line}"
            if row["label"] not in VISA_LABELS:
                raise DatasetError(f"[visa] {where}: label {row['label']!r} is not one of "
                                   f"{sorted(VISA_LABELS)}")
            label = VISA_LABELS[row["label"]]
            image = root / row["image"]
            if not image.is_file():
                raise DatasetError(f"[visa] {where}: image {image} does not exist")
            mask = None
            if label == 1:
                if not row["mask"]:
                    raise DatasetError(f"[visa] {where}: anomalous image {image} has no mask")
                mask = root / row["mask"]
                if not mask.is_file():
                    raise DatasetError(f"[visa] {where}: mask {mask} does not exist")
            records.append(Record(str(image.resolve()), str(mask.resolve()) if mask else None,
                                  label, row["object"], "anomaly" if label else NORMAL_DEFECT,
                                  "visa"))
    for name in classes:
        if not any(r.class_name == name for r in records):
            raise DatasetError(f"[visa] class {name!r} has no {split!r} rows in {csv_path}")
    return records


# ---- BTAD ------------------------------------------------------------------------------------
def read_btad(root: pathlib.Path, split: str, classes: Sequence[str]) -> list[Record]:
    """BTAD: `<01|02|03>/train/ok`, `test/{ok,ko}`, masks `ground_truth/ko/<stem>.<png|bmp>`
    (image and mask formats differ per class)."""
    records = []
    for name in classes:
        class_dir = require_dir(root / name, "btad", f"class {name!r}")
        split_dir = require_dir(class_dir / split, "btad", f"split {split!r} of class {name!r}")
        found = read_defect_folders(split_dir, class_dir / "ground_truth", name, "btad",
                                    normal_names=("ok",), mask_suffixes=("",))
        records += _nonempty(found, "btad", name, split_dir)
    return records


# ---- KolektorSDD2 / KolektorSDD / RSDD: labels from the mask content -------------------------
def _label_from_mask(image: pathlib.Path, mask: pathlib.Path, class_name: str,
                     dataset: str) -> Record:
    """Anomalous iff the mask has a positive pixel; normal images keep mask_path=None."""
    try:
        positive = bool(images.load_mask(mask, dataset).any())
    except Exception as e:
        raise DatasetError(f"[{dataset}] unreadable mask {mask} (mask of {image}): "
                           f"{type(e).__name__}: {e}") from e
    if positive:
        return Record(str(image.resolve()), str(mask.resolve()), 1, class_name, "defect", dataset)
    return Record(str(image.resolve()), None, 0, class_name, NORMAL_DEFECT, dataset)


def _pair_in_folder(folder: pathlib.Path, mask_suffix: str, class_name: str, dataset: str
                    ) -> list[Record]:
    files = stem_index(folder, dataset)
    masks = {s: p for s, p in files.items() if s.endswith(mask_suffix)}
    records = []
    for stem, path in files.items():
        if stem in masks:
            continue
        mask = masks.get(stem + mask_suffix)
        if mask is None:
            raise DatasetError(f"[{dataset}] image {path} has no mask "
                               f"(expected {folder}/{stem}{mask_suffix}.<ext>)")
        records.append(_label_from_mask(path, mask, class_name, dataset))
    return records


def read_ksdd2(root: pathlib.Path, split: str, classes: Sequence[str]) -> list[Record]:
    """KolektorSDD2: `{train,test}/<id>.png` with `<id>_GT.png` (all-zero for normal images)."""
    folder = require_dir(root / split, "ksdd2", f"split {split!r}")
    return _nonempty(_pair_in_folder(folder, "_GT", classes[0], "ksdd2"), "ksdd2", classes[0],
                     folder)


def read_sdd(root: pathlib.Path, split: str, classes: Sequence[str]) -> list[Record]:
    """KolektorSDD: `kos01..kos50/Part<k>.jpg` with `Part<k>_label.bmp`; no official split."""
    require_dir(root, "sdd", "dataset root")
    folders = [d for d in list_subdirs(root) if re.fullmatch(r"kos\d+", d.name)]
    if not folders:
        raise DatasetError(f"[sdd] no kos01..kos50 folders in {root}")
    records = []
    for folder in folders:
        records += _pair_in_folder(folder, "_label", classes[0], "sdd")
    return _nonempty(records, "sdd", classes[0], root)


RSDD_TYPES = {"rail_type1": "I", "rail_type2": "II"}


def read_rsdd(root: pathlib.Path, split: str, classes: Sequence[str]) -> list[Record]:
    """RSDDs: `Type-I RSDDs dataset/{Rail surface images,GroundTruth}/<id>.jpg` (and Type-II);
    JPEG masks with the same file name; no official split."""
    require_dir(root, "rsdd", "dataset root")
    by_type = {}
    for d in list_subdirs(root):
        if m := re.match(r"type-(i+)\b", d.name.lower()):
            by_type[m.group(1).upper()] = d
    records = []
    for name in classes:
        kind = RSDD_TYPES[name]
        if kind not in by_type:
            raise DatasetError(f"[rsdd] class {name!r}: no 'Type-{kind} RSDDs dataset' folder in "
                               f"{root}")
        subdirs = list_subdirs(by_type[kind])
        image_dirs = [d for d in subdirs if "image" in d.name.lower()]
        gt_dirs = [d for d in subdirs if "ground" in d.name.lower()]
        if len(image_dirs) != 1 or len(gt_dirs) != 1:
            raise DatasetError(f"[rsdd] {by_type[kind]} must hold one 'Rail surface images' and "
                               f"one 'GroundTruth' folder; found {[d.name for d in subdirs]}")
        masks = stem_index(gt_dirs[0], "rsdd")
        found = []
        for path in list_images(image_dirs[0]):
            if path.stem not in masks:
                raise DatasetError(f"[rsdd] image {path} has no mask {gt_dirs[0]}/{path.stem}.jpg")
            found.append(_label_from_mask(path, masks[path.stem], name, "rsdd"))
        records += _nonempty(found, "rsdd", name, image_dirs[0])
    return records


# ---- DAGM 2007 -------------------------------------------------------------------------------
def read_dagm(root: pathlib.Path, split: str, classes: Sequence[str]) -> list[Record]:
    """DAGM 2007: `Class<k>/{Train,Test}/<id>.PNG`; defective images have
    `Class<k>/<Split>/Label/<id>_label.PNG` (`Labels.txt` there is not needed)."""
    records = []
    for name in classes:
        class_dir = require_dir(root / name, "dagm", f"class {name!r}")
        split_dir = require_dir(class_dir / split.capitalize(), "dagm",
                                f"split {split.capitalize()!r} of class {name!r}")
        label_dir = split_dir / "Label"
        masks = stem_index(label_dir, "dagm") if label_dir.is_dir() else {}
        found = []
        for stem, path in stem_index(split_dir, "dagm").items():
            mask = masks.get(stem + "_label")
            found.append(Record(str(path.resolve()), str(mask.resolve()) if mask else None,
                                int(mask is not None), name,
                                "defect" if mask else NORMAL_DEFECT, "dagm"))
        records += _nonempty(found, "dagm", name, split_dir)
    return records
