"""The dataset registry (`DATASETS`) and `load_index`, the one entry point to every reader."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Callable, Sequence

from zsad_jax.data import checks, industrial, medical, meta_json
from zsad_jax.data.records import DatasetError, Record

log = logging.getLogger(__name__)

MVTEC_CLASSES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather",
                 "metal_nut", "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
VISA_CLASSES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
                "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum")
MPDD_CLASSES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate",
                "tubes")
DTD_CLASSES = ("Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114",
               "Perforated_037", "Stratified_154", "Woven_001", "Woven_068", "Woven_104",
               "Woven_125", "Woven_127")
DAGM_CLASSES = tuple(f"Class{k}" for k in range(1, 11))


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is and how it is read.

    classes: the declared classes (empty: discovered from the folder, for `folder`/`synthetic`).
    has_masks: pixel labels exist (pixel metrics applicable). all_anomalous: every image is
    anomalous (image metrics not applicable). classification_only = not has_masks.
    official_split: the dataset defines train/test; otherwise `split="test"` is every image.
    layout: the native layout(s) for humans. reader(root, split, classes) reads a native layout.
    native_found(root): whether a native layout is there (a cheap look at folder names, for
    choosing between it and a meta.json); None for `folder`, whose layout is any folder tree.
    """

    name: str
    title: str
    description: str
    classes: tuple[str, ...]
    has_masks: bool
    all_anomalous: bool
    official_split: bool
    splits: tuple[str, ...]
    layout: str
    prepare: str
    reader: Callable[[pathlib.Path, str, Sequence[str]], list[Record]]
    native_found: Callable[[pathlib.Path], bool] | None = None

    @property
    def classification_only(self) -> bool:
        return not self.has_masks


def _mvtec_reader(dataset: str):
    def read(root, split, classes):
        return industrial.read_mvtec_layout(root, split, classes, dataset)
    return read


def _globs(*patterns: str) -> Callable[[pathlib.Path], bool]:
    """root -> whether any of the glob `patterns` (relative to root) matches."""
    return lambda root: any(next(root.glob(p), None) is not None for p in patterns)


_MVTEC_FOUND = _globs("*/test", "*/train")
_MVTEC_LAYOUT = ("<root>/<class>/train/good/*.png, <root>/<class>/test/{good,<defect>}/*.png, "
                 "<root>/<class>/ground_truth/<defect>/<id>_mask.png")

_COLONDB_LAYOUTS = medical.images_masks_layouts("colondb", "<root>/images/<n>.png + <root>/masks/<n>.png")
_KVASIR_LAYOUTS = medical.images_masks_layouts("kvasir", "<root>/images/<id>.jpg + <root>/masks/<id>.jpg")

_INFOS = [
    DatasetInfo("mvtec", "MVTec-AD", "15 industrial object/texture classes, pixel masks",
                MVTEC_CLASSES, True, False, True, ("train", "test"), _MVTEC_LAYOUT,
                "download mvtec_anomaly_detection.tar.xz from mvtec.com and extract it",
                _mvtec_reader("mvtec"), _MVTEC_FOUND),
    DatasetInfo("visa", "VisA", "12 industrial classes (PCBs, food, capsules), pixel masks",
                VISA_CLASSES, True, False, True, ("train", "test"),
                "<root>/split_csv/1cls.csv (object,split,label,image,mask), "
                "<root>/<class>/Data/Images/{Normal,Anomaly}/*.JPG, "
                "<root>/<class>/Data/Masks/Anomaly/*.png",
                "download VisA_20220922.tar from the amazon-science/spot-diff release and extract "
                "it (no conversion script needed)", industrial.read_visa,
                _globs("split_csv/1cls.csv")),
    DatasetInfo("mpdd", "MPDD", "6 metal-part classes, MVTec layout, pixel masks", MPDD_CLASSES,
                True, False, True, ("train", "test"), _MVTEC_LAYOUT,
                "download MPDD (VUT Brno) and extract it", _mvtec_reader("mpdd"), _MVTEC_FOUND),
    DatasetInfo("btad", "BTAD", "3 industrial products (01, 02, 03), pixel masks",
                ("01", "02", "03"), True, False, True, ("train", "test"),
                "<root>/<01|02|03>/train/ok/*, <root>/<cls>/test/{ok,ko}/*, "
                "<root>/<cls>/ground_truth/ko/<id>.<png|bmp>",
                "download btad.zip (BeanTech / Univ. Udine) and extract it",
                industrial.read_btad, _MVTEC_FOUND),
    DatasetInfo("ksdd2", "KolektorSDD2", "commutator surfaces with fine cracks, pixel masks",
                ("commutator",), True, False, True, ("train", "test"),
                "<root>/{train,test}/<id>.png with <id>_GT.png (all-zero for normal images)",
                "download KolektorSDD2.zip (ViCoS, Univ. Ljubljana) and extract it",
                industrial.read_ksdd2, _globs("train", "test")),
    DatasetInfo("dagm", "DAGM 2007", "10 synthetic texture classes with defects, pixel masks",
                DAGM_CLASSES, True, False, True, ("train", "test"),
                "<root>/Class<k>/{Train,Test}/<id>.PNG, "
                "<root>/Class<k>/<Split>/Label/<id>_label.PNG",
                "download Class1..Class10.zip (HCI Heidelberg DAGM 2007) and extract each into "
                "<root>", industrial.read_dagm, _globs("Class*/Train", "Class*/Test")),
    DatasetInfo("dtd", "DTD-Synthetic", "12 texture classes with synthetic defects, MVTec layout",
                DTD_CLASSES, True, False, True, ("train", "test"), _MVTEC_LAYOUT,
                "download DTD-Synthetic (Aota et al., Zero-shot versus many-shot) and extract it",
                _mvtec_reader("dtd"), _MVTEC_FOUND),
    DatasetInfo("rsdd", "RSDDs", "rail surfaces (Type-I express, Type-II heavy haul), JPEG masks",
                tuple(industrial.RSDD_TYPES), True, True, False, ("test",),
                "<root>/Type-I RSDDs dataset/{Rail surface images,GroundTruth}/<id>.jpg, "
                "<root>/Type-II RSDDs dataset/...",
                "download RSDDs dataset.rar (Yu et al. 2018) and extract it",
                industrial.read_rsdd, _globs("[Tt]ype-[Ii]*")),
    DatasetInfo("sdd", "KolektorSDD", "commutator surfaces (50 items x 8 parts), pixel masks",
                ("commutator",), True, False, False, ("test",),
                "<root>/kos<01..50>/Part<k>.jpg with Part<k>_label.bmp",
                "download KolektorSDD.zip (ViCoS, Univ. Ljubljana) and extract it",
                industrial.read_sdd, _globs("kos[0-9]*")),
    DatasetInfo("brainmri", "BrainMRI", "brain MRI slices, tumor yes/no (classification only)",
                ("brain",), False, False, False, ("test",), medical.describe(medical.BRAINMRI_LAYOUTS),
                "download Kaggle 'brain-mri-images-for-brain-tumor-detection' and extract it",
                medical.read_brainmri, medical.layout_found(medical.BRAINMRI_LAYOUTS)),
    DatasetInfo("br35h", "Br35H", "brain MRI, tumor yes/no (classification only)", ("brain",),
                False, False, False, ("test",), medical.describe(medical.BR35H_LAYOUTS),
                "download Kaggle 'brain-tumor-detection' (Br35H) and extract it",
                medical.read_br35h, medical.layout_found(medical.BR35H_LAYOUTS)),
    DatasetInfo("headct", "HeadCT", "head CT slices, hemorrhage yes/no (classification only)",
                ("head",), False, False, False, ("test",), medical.describe(medical.HEADCT_LAYOUTS),
                "download Kaggle 'head-ct-hemorrhage' and extract it", medical.read_headct,
                medical.layout_found(medical.HEADCT_LAYOUTS)),
    DatasetInfo("clinicdb", "CVC-ClinicDB", "colonoscopy polyps (all anomalous), masks",
                ("colon",), True, True, False, ("test",), medical.describe(medical.CLINICDB_LAYOUTS),
                "download CVC-ClinicDB (polyp.grand-challenge.org) and extract it",
                medical.read_clinicdb, medical.layout_found(medical.CLINICDB_LAYOUTS)),
    DatasetInfo("colondb", "CVC-ColonDB", "colonoscopy polyps (all anomalous), masks",
                ("colon",), True, True, False, ("test",), medical.describe(_COLONDB_LAYOUTS),
                "extract CVC-ColonDB from the PraNet TestDataset archive",
                medical.read_layouts(_COLONDB_LAYOUTS, "colondb"),
                medical.layout_found(_COLONDB_LAYOUTS)),
    DatasetInfo("kvasir", "Kvasir-SEG", "GI-tract polyps (all anomalous), JPEG masks",
                ("colon",), True, True, False, ("test",), medical.describe(_KVASIR_LAYOUTS),
                "download kvasir-seg.zip (Simula) and extract it",
                medical.read_layouts(_KVASIR_LAYOUTS, "kvasir"), medical.layout_found(_KVASIR_LAYOUTS)),
    DatasetInfo("isic", "ISIC 2016", "skin lesions (all anomalous), segmentation masks",
                ("skin",), True, True, True, ("train", "test"), medical.describe(medical.ISIC_LAYOUTS),
                "download the ISBI 2016 Part 1 data and ground-truth zips (ISIC archive) and "
                "extract them into <root>", medical.read_isic,
                medical.layout_found(medical.ISIC_LAYOUTS)),
    DatasetInfo("folder", "your own data", "any folder of classes with good/defect sub-folders",
                (), True, False, False, ("train", "test"),
                "<root>/<class>/{good,<defect>...}/*, optional "
                "<root>/<class>/ground_truth/<defect>/<stem>[_mask].png (or an MVTec layout per "
                "class)", "put your images in that layout", industrial.read_folder),
    DatasetInfo("synthetic", "synthetic textures", "generated by data.make_synthetic (MVTec "
                "layout; skimage textures + procedural anomalies)", (), True, False, True,
                ("train", "test"), _MVTEC_LAYOUT, "python -c 'from zsad_jax import data; "
                "data.make_synthetic(\"<root>\")'", _mvtec_reader("synthetic"), _MVTEC_FOUND),
]
DATASETS: dict[str, DatasetInfo] = {info.name: info for info in _INFOS}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def pick_classes(available: Sequence[str], classes: Sequence[str] | str | None, dataset: str,
                 where) -> list[str]:
    """`classes` (default: all of `available`), each checked to be one of `available`."""
    if classes is None:
        if not available:
            raise DatasetError(f"[{dataset}] no class folders in {where}")
        return list(available)
    if isinstance(classes, str):
        classes = [classes]
    if unknown := [c for c in classes if c not in available]:
        raise DatasetError(f"[{dataset}] unknown class(es) {unknown}; available in {where}: "
                           f"{', '.join(available) or 'none'}")
    return list(classes)


def resolve_classes(info: DatasetInfo, root: pathlib.Path,
                    classes: Sequence[str] | None) -> list[str]:
    """The classes to read: the declared ones (or those found in `root`) unless given."""
    available = list(info.classes) or industrial.discover_classes(root, info.name)
    return pick_classes(available, classes, info.name, root)


LAYOUTS = ("auto", "native", "meta_json")


def choose_layout(info: DatasetInfo, root: pathlib.Path, layout: str = "auto") -> str:
    """"native" or "meta_json": how to read `root`.

    An explicit "native" or "meta_json" wins (an error if that layout is not there). "auto": the
    native layout when it is found; else `<root>/meta.json` when it exists; else "native" (whose
    reader then says what is missing). For `folder`, whose native layout is any folder tree, a
    meta.json wins in "auto".
    """
    if layout not in LAYOUTS:
        raise DatasetError(f"[{info.name}] layout {layout!r} (config.data.layouts.{info.name}) is "
                           f"not one of {', '.join(LAYOUTS)}")
    has_meta = meta_json.has_meta_json(root)
    if layout == "meta_json":
        if not has_meta:
            raise DatasetError(
                f"[{info.name}] layout 'meta_json' asks for {root / meta_json.META_JSON}, which does "
                f"not exist (write it with the generate_dataset_json scripts of AnomalyCLIP/"
                f"VisualAD, or use layout 'auto' or 'native')")
        return layout
    generic = info.native_found is None
    native = generic or info.native_found(root)
    if layout == "native" and not native:
        hint = " (a meta.json is there: use layout 'meta_json' or 'auto')" if has_meta else ""
        raise DatasetError(f"[{info.name}] layout 'native' asks for {info.title} as distributed, "
                           f"which is not in {root}: expected {info.layout}{hint}")
    if layout == "auto" and has_meta and (generic or not native):
        return "meta_json"
    if has_meta:
        log.info("[%s] %s: reading the native layout, not its meta.json (set "
                 "config.data.layouts.%s='meta_json' to read that)", info.name, root, info.name)
    return "native"


def load_index(name: str, root, split: str = "test", classes: Sequence[str] | None = None,
               skip_unreadable: bool = False, check: str = "decode",
               layout: str = "auto") -> list[Record]:
    """Index of dataset `name` as downloaded under `root` -> list of Records, checked.

    split: "test" (for datasets without an official split: every image) or "train".
    classes: a subset of the dataset's classes (default: all). skip_unreadable: undecodable images
    are skipped with a warning giving their count and names instead of raising. check: "decode"
    (default; every image and mask is decoded) or "header" (fast; headers only).
    layout: "auto" (default), "native" (the dataset as distributed) or "meta_json" (the
    `<root>/meta.json` of AnomalyCLIP/VisualAD/AdaCLIP/Bayes-PFL, whose classes and splits are
    then those it lists); see `choose_layout` for "auto".
    Raises DatasetError naming the dataset, file and problem.
    """
    info = dataset_info(name)
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"[{name}] dataset root {root} does not exist. Expected layout: "
                           f"{info.layout}. To prepare it: {info.prepare}.")
    if choose_layout(info, root, layout) == "meta_json":
        log.info("[%s] reading %s", name, root / meta_json.META_JSON)
        meta = meta_json.load_meta(root, name)
        available = meta_json.meta_classes(meta, split, name, root / meta_json.META_JSON)
        picked = pick_classes(available, classes, name, root / meta_json.META_JSON)
        records = meta_json.read_meta_json(meta, root, split, picked, name)
    else:
        if split not in info.splits:
            raise DatasetError(f"[{name}] has no {split!r} split (splits: {', '.join(info.splits)})"
                               + ("" if info.official_split else
                                  "; without an official split, 'test' is every image"))
        records = info.reader(root, split, resolve_classes(info, root, classes))
    return checks.validate(records, name, skip_unreadable=skip_unreadable, check=check)


def has_pixel_labels(records: Sequence[Record]) -> bool:
    """Pixel metrics are applicable: some image is anomalous and every anomalous one has a mask."""
    anomalous = [r for r in records if r.label == 1]
    return bool(anomalous) and all(r.mask_path for r in anomalous)


def has_both_labels(records: Sequence[Record]) -> bool:
    """Image metrics are applicable: normal and anomalous images are both present."""
    return len({r.label for r in records}) == 2
