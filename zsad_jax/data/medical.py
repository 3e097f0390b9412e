"""Readers for the medical datasets, each as distributed (see docs/datasets.md).

Classification-only sets (BrainMRI, Br35H, HeadCT) give records without masks; segmentation-only
sets (CVC-ClinicDB, CVC-ColonDB, Kvasir-SEG, ISIC 2016) hold only anomalous images, each with a
mask paired by file name.
"""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Sequence

from zsad_jax.data.records import (
    NORMAL_DEFECT,
    DatasetError,
    Record,
    list_subdirs,
    require_dir,
    stem_index,
)


def _find_dir_with(root: pathlib.Path, names: Sequence[str], dataset: str) -> pathlib.Path:
    """`root`, or the single folder below it (up to 2 levels), that holds all of `names` (the
    archives of some sets unpack to an extra wrapping folder)."""
    require_dir(root, dataset, "dataset root")
    candidates = [root]
    for _ in range(3):
        for folder in candidates:
            if all((folder / n).is_dir() for n in names):
                return folder
        candidates = [d for c in candidates for d in list_subdirs(c)]
    raise DatasetError(f"[{dataset}] no folder holding {', '.join(names)} found in {root} "
                       f"(searched 2 levels deep)")


def _yes_no(root: pathlib.Path, classes: Sequence[str], dataset: str) -> list[Record]:
    base = _find_dir_with(root, ("yes", "no"), dataset)
    records = []
    for folder, label in (("no", 0), ("yes", 1)):
        files = stem_index(base / folder, dataset)
        if not files:
            raise DatasetError(f"[{dataset}] {base / folder} holds no images")
        records += [Record(str(p.resolve()), None, label, classes[0],
                           "tumor" if label else NORMAL_DEFECT, dataset) for p in files.values()]
    return records


def read_brainmri(root: pathlib.Path, split: str, classes: Sequence[str]) -> list[Record]:
    """BrainMRI (Kaggle "brain-mri-images-for-brain-tumor-detection"): `{yes,no}/*`."""
    return _yes_no(root, classes, "brainmri")


def read_br35h(root: pathlib.Path, split: str, classes: Sequence[str]) -> list[Record]:
    """Br35H: `{yes,no}/*.jpg` (the unlabeled `pred/` folder is ignored)."""
    return _yes_no(root, classes, "br35h")


def read_headct(root: pathlib.Path, split: str, classes: Sequence[str]) -> list[Record]:
    """HeadCT (Kaggle "head-ct-hemorrhage"): `labels.csv` (id, hemorrhage) and
    `head_ct/[head_ct/]<id:03d>.png`."""
    require_dir(root, "headct", "dataset root")
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        raise DatasetError(f"[headct] missing {csv_path} (columns: id, hemorrhage)")
    image_dir = root / "head_ct"
    if (image_dir / "head_ct").is_dir():
        image_dir = image_dir / "head_ct"
    require_dir(image_dir, "headct", "image folder head_ct/")
    records = []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # BOM-tolerant
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "id" not in columns or "hemorrhage" not in columns:
            raise DatasetError(f"[headct] {csv_path}: need columns id, hemorrhage; found {columns}")
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
            where = f"{csv_path}:{line}"
            if not row["id"].isdigit() or row["hemorrhage"] not in ("0", "1"):
                raise DatasetError(f"[headct] {where}: bad row {row} (id must be an integer, "
                                   f"hemorrhage 0 or 1)")
            image = image_dir / f"{int(row['id']):03d}.png"
            if not image.is_file():
                raise DatasetError(f"[headct] {where}: image {image} does not exist")
            label = int(row["hemorrhage"])
            records.append(Record(str(image.resolve()), None, label, classes[0],
                                  "hemorrhage" if label else NORMAL_DEFECT, "headct"))
    if not records:
        raise DatasetError(f"[headct] {csv_path} has no rows")
    return records


def _image_mask_pairs(image_dir: pathlib.Path, mask_dir: pathlib.Path, class_name: str,
                      dataset: str, mask_suffix: str = "") -> list[Record]:
    images = stem_index(image_dir, dataset)
    masks = stem_index(mask_dir, dataset)
    if not images:
        raise DatasetError(f"[{dataset}] no images in {image_dir}")
    records = []
    for stem, path in images.items():
        mask = masks.get(stem + mask_suffix)
        if mask is None:
            raise DatasetError(f"[{dataset}] image {path} has no mask "
                               f"(expected {mask_dir}/{stem}{mask_suffix}.<ext>)")
        records.append(Record(str(path.resolve()), str(mask.resolve()), 1, class_name, "lesion",
                              dataset))
    return records


def read_clinicdb(root: pathlib.Path, split: str, classes: Sequence[str]) -> list[Record]:
    """CVC-ClinicDB: `Original/<n>.tif` + `Ground Truth/<n>.tif` (or the PNG copy under `PNG/`)."""
    base = _find_dir_with(root, ("Original", "Ground Truth"), "clinicdb")
    return _image_mask_pairs(base / "Original", base / "Ground Truth", classes[0], "clinicdb")


def read_images_masks(dataset: str):
    """CVC-ColonDB, Kvasir-SEG: `images/<id>.<ext>` + `masks/<id>.<ext>`."""

    def read(root: pathlib.Path, split: str, classes: Sequence[str]) -> list[Record]:
        base = _find_dir_with(root, ("images", "masks"), dataset)
        return _image_mask_pairs(base / "images", base / "masks", classes[0], dataset)

    return read


ISIC_SPLITS = {"train": "Training", "test": "Test"}


def read_isic(root: pathlib.Path, split: str, classes: Sequence[str]) -> list[Record]:
    """ISIC 2016 task 1: `ISBI2016_ISIC_Part1_<Test|Training>_Data/ISIC_<id>.jpg` +
    `ISBI2016_ISIC_Part1_<Test|Training>_GroundTruth/ISIC_<id>_Segmentation.png`."""
    name = ISIC_SPLITS[split]
    data = f"ISBI2016_ISIC_Part1_{name}_Data"
    truth = f"ISBI2016_ISIC_Part1_{name}_GroundTruth"
    base = _find_dir_with(root, (data, truth), "isic")
    return _image_mask_pairs(base / data, base / truth, classes[0], "isic", "_Segmentation")
