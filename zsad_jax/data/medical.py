"""Readers for the medical datasets, as distributed and as the zero-shot repositories lay them out
(see docs/datasets.md).

Each dataset has a tuple of `Layout`s, tried in order; the first found (at the root or in a
wrapping folder up to 2 levels below it) is read, and when none is found the error lists every
layout looked for. Classification-only sets (BrainMRI, Br35H, HeadCT) give records without masks;
segmentation-only sets (CVC-ClinicDB, CVC-ColonDB, Kvasir-SEG, ISIC 2016) hold only anomalous
images (the AnomalyCLIP/VisualAD ISIC layout may add a `good` folder), each with a mask paired by
file name.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import pathlib
from collections.abc import Callable, Sequence

from zsad_jax.data.industrial import read_defect_folders
from zsad_jax.data.records import (
    NORMAL_DEFECT,
    DatasetError,
    Record,
    list_subdirs,
    require_dir,
    stem_index,
)


@dataclasses.dataclass(frozen=True)
class Layout:
    """One form a dataset takes on disk.

    needs: paths (relative to a base folder: the root, or a wrapping folder up to 2 levels below
    it) that must all exist. read(base, class_name) -> records. expected: the layout for humans
    (paths as `<root>/...`). source: who lays the dataset out so. splits: the splits it holds.
    """

    source: str
    expected: str
    needs: tuple[str, ...]
    read: Callable[[pathlib.Path, str], list[Record]]
    splits: tuple[str, ...] = ("test",)

    def describe(self) -> str:
        return f"{self.expected} ({self.source})"


def describe(layouts: Sequence[Layout]) -> str:
    """Every layout, for DatasetInfo.layout: "<a> (source); or <b> (source)" (one: "<a>")."""
    if len(layouts) == 1:
        return layouts[0].expected
    return "; or ".join(layout.describe() for layout in layouts)


def find_base(root: pathlib.Path, needs: Sequence[str]) -> pathlib.Path | None:
    """`root`, or the first folder below it (up to 2 levels), holding all of `needs` (the archives
    of some sets unpack to an extra wrapping folder); None if there is none."""
    candidates = [root]
    for _ in range(3):
        for folder in candidates:
            if all((folder / n).exists() for n in needs):
                return folder
        candidates = [d for c in candidates for d in list_subdirs(c)]
    return None


def layout_found(layouts: Sequence[Layout]) -> Callable[[pathlib.Path], bool]:
    """root -> whether any of `layouts` (of any split) is there."""
    return lambda root: root.is_dir() and any(find_base(root, layout.needs) is not None
                                              for layout in layouts)


def read_layouts(layouts: Sequence[Layout], dataset: str):
    """A reader `read(root, split, classes)` using the first of `layouts` (in order) found for the
    split; when none is found, the error lists every layout looked for."""

    def read(root: pathlib.Path, split: str, classes: Sequence[str]) -> list[Record]:
        require_dir(root, dataset, "dataset root")
        candidates = [layout for layout in layouts if split in layout.splits]
        for layout in candidates:
            if (base := find_base(root, layout.needs)) is not None:
                return layout.read(base, classes[0])
        looked = "".join(f"\n  - {layout.describe()}" for layout in candidates)
        raise DatasetError(f"[{dataset}] no known layout of the {split!r} split found in {root} "
                           f"(a wrapping folder up to 2 levels deep is allowed). Looked for:{looked}")

    return read


def _nonempty(records: list[Record], dataset: str, where: pathlib.Path) -> list[Record]:
    if not records:
        raise DatasetError(f"[{dataset}] no images under {where}")
    return records


def _yes_no(base: pathlib.Path, class_name: str, dataset: str) -> list[Record]:
    records = []
    for folder, label in (("no", 0), ("yes", 1)):
        files = stem_index(base / folder, dataset)
        if not files:
            raise DatasetError(f"[{dataset}] {base / folder} holds no images")
        records += [Record(str(p.resolve()), None, label, class_name,
                           "tumor" if label else NORMAL_DEFECT, dataset) for p in files.values()]
    return records


def _yes_no_layouts(dataset: str, expected: str) -> tuple[Layout, ...]:
    return (Layout("as downloaded", expected, ("yes", "no"),
                   functools.partial(_yes_no, dataset=dataset)),)


BRAINMRI_LAYOUTS = _yes_no_layouts("brainmri", "<root>/{yes,no}/*")
BR35H_LAYOUTS = _yes_no_layouts("br35h", "<root>/{yes,no}/*.jpg (pred/ ignored)")
# BrainMRI (Kaggle "brain-mri-images-for-brain-tumor-detection"): `{yes,no}/*`;
# Br35H: `{yes,no}/*.jpg` (the unlabeled `pred/` folder is ignored).
read_brainmri = read_layouts(BRAINMRI_LAYOUTS, "brainmri")
read_br35h = read_layouts(BR35H_LAYOUTS, "br35h")


def _headct_kaggle(base: pathlib.Path, class_name: str) -> list[Record]:
    """HeadCT (Kaggle "head-ct-hemorrhage"): `labels.csv` (id, hemorrhage) and
    `head_ct/[head_ct/]<id:03d>.png`."""
    csv_path = base / "labels.csv"
    image_dir = base / "head_ct"
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
            records.append(Record(str(image.resolve()), None, label, class_name,
                                  "hemorrhage" if label else NORMAL_DEFECT, "headct"))
    if not records:
        raise DatasetError(f"[headct] {csv_path} has no rows")
    return records


def _headct_folders(base: pathlib.Path, class_name: str, folder: str) -> list[Record]:
    """HeadCT as AnomalyCLIP/VisualAD (`brain/`) or AdaCLIP (`headct/`) lay it out:
    `<folder>/test/{good,<defect>}/*`, no masks."""
    test_dir = base / folder / "test"
    return _nonempty(read_defect_folders(test_dir, None, class_name, "headct",
                                         masks_required=False), "headct", test_dir)


HEADCT_LAYOUTS = (
    Layout("Kaggle download", "<root>/labels.csv (id, hemorrhage) + <root>/head_ct/[head_ct/]<id:03d>.png",
           ("labels.csv", "head_ct"), _headct_kaggle),
    Layout("AnomalyCLIP/VisualAD", "<root>/brain/test/{good,<defect>}/*", ("brain/test",),
           functools.partial(_headct_folders, folder="brain")),
    Layout("AdaCLIP", "<root>/headct/test/{good,defect}/*", ("headct/test",),
           functools.partial(_headct_folders, folder="headct")),
)
read_headct = read_layouts(HEADCT_LAYOUTS, "headct")


def _image_mask_pairs(image_dir: pathlib.Path, mask_dir: pathlib.Path, class_name: str,
                      dataset: str, mask_suffix: str = "", defect: str = "lesion") -> list[Record]:
    """Every image of `image_dir` is anomalous, with mask `mask_dir/<stem><mask_suffix>.<ext>`."""
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
        records.append(Record(str(path.resolve()), str(mask.resolve()), 1, class_name, defect,
                              dataset))
    return records


def _pairs_in(image_dir: str, mask_dir: str, dataset: str, mask_suffix: str = ""):
    """A Layout reader: `<base>/<image_dir>/*` with masks `<base>/<mask_dir>/<stem><suffix>.*`."""
    def read(base: pathlib.Path, class_name: str) -> list[Record]:
        return _image_mask_pairs(base / image_dir, base / mask_dir, class_name, dataset,
                                 mask_suffix)
    return read


def images_masks_layouts(dataset: str, expected: str) -> tuple[Layout, ...]:
    """CVC-ColonDB, Kvasir-SEG: `images/<id>.<ext>` + `masks/<id>.<ext>`."""
    return (Layout("as downloaded", expected, ("images", "masks"),
                   _pairs_in("images", "masks", dataset)),)


CLINICDB_LAYOUTS = (
    Layout("as downloaded",
           "<root>/Original/<n>.tif + <root>/Ground Truth/<n>.tif (or the same under PNG/)",
           ("Original", "Ground Truth"), _pairs_in("Original", "Ground Truth", "clinicdb")),
    Layout("AnomalyCLIP/VisualAD, PraNet", "<root>/images/<n>.png + <root>/masks/<n>.png",
           ("images", "masks"), _pairs_in("images", "masks", "clinicdb")),
)
read_clinicdb = read_layouts(CLINICDB_LAYOUTS, "clinicdb")


ISIC_GROUND_TRUTH = "ISBI2016_ISIC_Part1_{}_GroundTruth"


def _isic_skin(base: pathlib.Path, class_name: str) -> list[Record]:
    """ISIC as AnomalyCLIP/VisualAD lay it out: `skin/test/<specie>/ISIC_<id>.jpg` (a `good`
    folder holds normal images) with masks `skin/ISBI2016_ISIC_Part1_Test_GroundTruth/
    ISIC_<id>_Segmentation.png`."""
    test_dir, truth = base / "skin" / "test", base / "skin" / ISIC_GROUND_TRUTH.format("Test")
    records = []
    for folder in list_subdirs(test_dir):
        if folder.name == NORMAL_DEFECT:
            records += [Record(str(p.resolve()), None, 0, class_name, NORMAL_DEFECT, "isic")
                        for p in stem_index(folder, "isic").values()]
        else:
            records += _image_mask_pairs(folder, truth, class_name, "isic", "_Segmentation",
                                         defect=folder.name)
    return _nonempty(records, "isic", test_dir)


def _isbi_layout(split_name: str, split: str) -> Layout:
    data, truth = f"ISBI2016_ISIC_Part1_{split_name}_Data", ISIC_GROUND_TRUTH.format(split_name)
    return Layout("ISIC archive", f"<root>/{data}/ISIC_<id>.jpg + <root>/{truth}/ISIC_<id>_Segmentation.png",
                  (data, truth), _pairs_in(data, truth, "isic", "_Segmentation"), (split,))


ISIC_LAYOUTS = (
    _isbi_layout("Test", "test"),
    _isbi_layout("Training", "train"),
    Layout("AnomalyCLIP/VisualAD",
           f"<root>/skin/test/<specie>/ISIC_<id>.jpg + <root>/skin/{ISIC_GROUND_TRUTH.format('Test')}/"
           f"ISIC_<id>_Segmentation.png", ("skin/test", f"skin/{ISIC_GROUND_TRUTH.format('Test')}"),
           _isic_skin),
)
read_isic = read_layouts(ISIC_LAYOUTS, "isic")
