"""Tiny fixture trees for every dataset layout, with each dataset's real naming conventions.

Each `make_<name>(root)` writes a few small images (and masks) and returns the expected index as
{relative image path: (label, class_name, defect, relative mask path or None)} so tests compare
readers to ground truth written here. Masks carry a per-image signature (the number of positive
pixels), so a mask paired with the wrong image is detected.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib

import numpy as np
from PIL import Image

H, W = 12, 16


def image_array(seed: int, gray: bool = False, shape=(H, W)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=shape if gray else (*shape, 3), dtype=np.uint8)


def mask_array(positives: int, value: int = 255, shape=(H, W)) -> np.ndarray:
    """A mask whose first `positives` pixels (row-major) are `value`."""
    flat = np.zeros(shape[0] * shape[1], np.uint8)
    flat[:positives] = value
    return flat.reshape(shape)


def save(path: pathlib.Path, array: np.ndarray, fmt: str | None = None, **kw) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt, **kw)
    return path


Expected = dict[str, tuple[int, str, str, str | None]]


def _mvtec_class(root, name, ext=".png", gray=False, defects=("scratch",), n_good=2, n_bad=2,
                 mask_suffix="_mask", train=2, seed=0) -> Expected:
    expected: Expected = {}
    for i in range(train):
        save(root / name / "train" / "good" / f"{i:03d}{ext}", image_array(seed + i, gray))
    for i in range(n_good):
        rel = f"{name}/test/good/{i:03d}{ext}"
        save(root / rel, image_array(seed + 10 + i, gray))
        expected[rel] = (0, name, "good", None)
    for d, defect in enumerate(defects):
        for i in range(n_bad):
            rel = f"{name}/test/{defect}/{i:03d}{ext}"
            save(root / rel, image_array(seed + 20 + 10 * d + i, gray))
            mrel = f"{name}/ground_truth/{defect}/{i:03d}{mask_suffix}.png"
            save(root / mrel, mask_array(1 + i + 3 * d))
            expected[rel] = (1, name, defect, mrel)
    return expected


def make_mvtec_like(root: pathlib.Path, classes: tuple[str, ...], gray_classes=(),
                    defects=("scratch", "crack")) -> Expected:
    expected: Expected = {}
    for k, name in enumerate(classes):
        expected |= _mvtec_class(root, name, gray=name in gray_classes, defects=defects,
                                 seed=100 * k)
    return expected


def make_visa(root: pathlib.Path, classes=("candle", "pcb1")) -> Expected:
    """`split_csv/1cls.csv` + `<class>/Data/Images/{Normal,Anomaly}/*.JPG`, masks with ids 1..9."""
    expected: Expected = {}
    rows = []
    for k, name in enumerate(classes):
        for i in range(2):
            rel = f"{name}/Data/Images/Normal/{i:04d}.JPG"
            save(root / rel, image_array(k * 10 + i), "JPEG", quality=95)
            rows.append([name, "train", "normal", rel, ""])
            rel = f"{name}/Data/Images/Normal/{i + 2:04d}.JPG"
            save(root / rel, image_array(k * 10 + i + 2), "JPEG", quality=95)
            rows.append([name, "test", "normal", rel, ""])
            expected[rel] = (0, name, "good", None)
        for i in range(2):
            rel = f"{name}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{name}/Data/Masks/Anomaly/{i:03d}.png"
            save(root / rel, image_array(k * 10 + 5 + i), "JPEG", quality=95)
            save(root / mrel, mask_array(2 + i, value=1 + i))  # defect-class ids, not 255
            rows.append([name, "test", "anomaly", rel, mrel])
            expected[rel] = (1, name, "anomaly", mrel)
    write_csv(root / "split_csv" / "1cls.csv", ["object", "split", "label", "image", "mask"],
              rows, encoding="utf-8-sig")  # with a byte-order mark, as some copies have
    return expected


def write_csv(path: pathlib.Path, header, rows, encoding="utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def make_btad(root: pathlib.Path) -> Expected:
    """01: bmp images + png masks; 02: png + png; 03: bmp + bmp."""
    formats = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}
    expected: Expected = {}
    for k, (name, (img_ext, mask_ext)) in enumerate(formats.items()):
        save(root / name / "train" / "ok" / f"0000{img_ext}", image_array(k))
        rel = f"{name}/test/ok/0000{img_ext}"
        save(root / rel, image_array(k + 10))
        expected[rel] = (0, name, "good", None)
        for i in range(2):
            rel = f"{name}/test/ko/{i:04d}{img_ext}"
            mrel = f"{name}/ground_truth/ko/{i:04d}{mask_ext}"
            save(root / rel, image_array(k + 20 + i))
            save(root / mrel, mask_array(3 + i))
            expected[rel] = (1, name, "ko", mrel)
    return expected


def make_ksdd2(root: pathlib.Path) -> dict[str, Expected]:
    """`{train,test}/<id>.png` + `<id>_GT.png` (all-zero GT for normal images)."""
    out = {}
    for s, split in enumerate(("train", "test")):
        expected: Expected = {}
        for i in range(4):
            ident = f"{10000 + 10 * s + i}"
            rel = f"{split}/{ident}.png"
            save(root / rel, image_array(s * 10 + i))
            positives = 2 + i if i % 2 else 0
            save(root / split / f"{ident}_GT.png", mask_array(positives))
            expected[rel] = ((1, "commutator", "defect", f"{split}/{ident}_GT.png") if positives
                             else (0, "commutator", "good", None))
        out[split] = expected
    return out


def make_dagm(root: pathlib.Path, classes=("Class1", "Class2")) -> dict[str, Expected]:
    """`Class<k>/{Train,Test}/<id>.PNG`, `Label/<id>_label.PNG` for defective ones, Labels.txt."""
    out = {"train": {}, "test": {}}
    for k, name in enumerate(classes):
        for split in ("Train", "Test"):
            (root / name / split / "Label").mkdir(parents=True, exist_ok=True)
            (root / name / split / "Label" / "Labels.txt").write_text("1\n")
            for i in range(3):
                ident = f"{i + 1:04d}"
                rel = f"{name}/{split}/{ident}.PNG"
                save(root / rel, image_array(k * 10 + i, gray=True))
                if i == 1:
                    mrel = f"{name}/{split}/Label/{ident}_label.PNG"
                    save(root / mrel, mask_array(4 + k))
                    out[split.lower()][rel] = (1, name, "defect", mrel)
                else:
                    out[split.lower()][rel] = (0, name, "good", None)
    return out


def make_rsdd(root: pathlib.Path) -> Expected:
    """`Type-I RSDDs dataset/{Rail surface images,GroundTruth}/<id>.jpg` (JPEG masks)."""
    expected: Expected = {}
    for k, (kind, name) in enumerate((("I", "rail_type1"), ("II", "rail_type2"))):
        base = root / f"Type-{kind} RSDDs dataset"
        for i in range(2):
            rel = f"{base.name}/Rail surface images/rail_{i + 1}.jpg"
            mrel = f"{base.name}/GroundTruth/rail_{i + 1}.jpg"
            save(root / rel, image_array(k * 10 + i, gray=True), "JPEG")
            mask = np.zeros((H, W), np.uint8)
            mask[2:8, 3:10] = 255
            save(root / mrel, mask, "JPEG", quality=60)
            expected[rel] = (1, name, "defect", mrel)
    return expected


def make_sdd(root: pathlib.Path) -> Expected:
    """`kos<NN>/Part<k>.jpg` + `Part<k>_label.bmp`."""
    expected: Expected = {}
    for f, folder in enumerate(("kos01", "kos02")):
        for i in range(2):
            rel = f"{folder}/Part{i}.jpg"
            mrel = f"{folder}/Part{i}_label.bmp"
            save(root / rel, image_array(f * 10 + i, gray=True), "JPEG")
            positives = 5 if (f + i) % 2 else 0
            save(root / mrel, mask_array(positives))
            expected[rel] = ((1, "commutator", "defect", mrel) if positives
                             else (0, "commutator", "good", None))
    return expected


def make_yes_no(root: pathlib.Path, wrapper: str = "", extra: str = "") -> Expected:
    """BrainMRI / Br35H: `{yes,no}/*` (mixed extensions), optionally under a wrapper folder."""
    base = root / wrapper if wrapper else root
    expected: Expected = {}
    names = {"yes": ["Y1.jpg", "y2.JPG", "Y3.png"], "no": ["N1.jpg", "no 2.jpeg"]}
    for folder, files in names.items():
        for i, name in enumerate(files):
            fmt = "PNG" if name.endswith(".png") else "JPEG"
            rel = str(pathlib.Path(wrapper, folder, name)) if wrapper else f"{folder}/{name}"
            save(base / folder / name, image_array(i, gray=i == 0), fmt)
            expected[rel] = ((1, "brain", "tumor", None) if folder == "yes"
                             else (0, "brain", "good", None))
    if extra:
        save(base / extra / "pred0.jpg", image_array(99), "JPEG")
    return expected


def make_headct(root: pathlib.Path) -> Expected:
    """`labels.csv` (id, hemorrhage) + `head_ct/head_ct/<id:03d>.png`."""
    expected: Expected = {}
    rows = []
    for i in range(4):
        label = int(i < 2)
        rel = f"head_ct/head_ct/{i:03d}.png"
        save(root / rel, image_array(i, gray=True))
        rows.append([i, label])
        expected[rel] = (label, "head", "hemorrhage" if label else "good", None)
    write_csv(root / "labels.csv", ["id", " hemorrhage"], rows)
    return expected


def make_pairs(root: pathlib.Path, image_dir: str, mask_dir: str, class_name: str,
               img_ext: str, mask_ext: str, mask_suffix: str = "", names=("1", "2", "3"),
               jpeg_masks: bool = False) -> Expected:
    expected: Expected = {}
    for i, stem in enumerate(names):
        rel = f"{image_dir}/{stem}{img_ext}"
        mrel = f"{mask_dir}/{stem}{mask_suffix}{mask_ext}"
        save(root / rel, image_array(i))
        save(root / mrel, mask_array(2 + i), "JPEG" if jpeg_masks else None)
        expected[rel] = (1, class_name, "lesion", mrel)
    return expected


def make_clinicdb(root):
    return make_pairs(root, "Original", "Ground Truth", "colon", ".tif", ".tif")


def make_colondb(root):
    return make_pairs(root, "images", "masks", "colon", ".png", ".png")


def make_kvasir(root):
    return make_pairs(root, "images", "masks", "colon", ".jpg", ".jpg",
                      names=("cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4"),
                      jpeg_masks=True)


def make_isic(root):
    return make_pairs(root, "ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth",
                      "skin", ".jpg", ".png", "_Segmentation",
                      names=("ISIC_0000003", "ISIC_0000012"))


def make_folder(root: pathlib.Path) -> Expected:
    """`<class>/{good,<defect>}` with masks for one class, none for the other."""
    expected: Expected = {}
    for i in range(2):
        rel = f"widget/good/{i}.png"
        save(root / rel, image_array(i))
        expected[rel] = (0, "widget", "good", None)
        rel = f"widget/dent/{i}.jpg"
        save(root / rel, image_array(10 + i), "JPEG")
        mrel = f"widget/ground_truth/dent/{i}_mask.png"
        save(root / mrel, mask_array(2 + i))
        expected[rel] = (1, "widget", "dent", mrel)
        rel = f"gizmo/good/g{i}.png"
        save(root / rel, image_array(20 + i))
        expected[rel] = (0, "gizmo", "good", None)
        rel = f"gizmo/bent/b{i}.png"
        save(root / rel, image_array(30 + i))
        expected[rel] = (1, "gizmo", "bent", None)
    return expected


def as_expected(records, root: pathlib.Path) -> Expected:
    """Records -> the `Expected` form (paths relative to root)."""
    root = root.resolve()

    def rel(p):
        return str(pathlib.Path(p).relative_to(root)) if p else None

    return {rel(r.image_path): (r.label, r.class_name, r.defect, rel(r.mask_path))
            for r in records}


# ---- the medical layouts of the zero-shot repositories (AnomalyCLIP / VisualAD / AdaCLIP) ------
def make_headct_folders(root: pathlib.Path, folder: str = "brain") -> Expected:
    """HeadCT as `<folder>/test/{good,<defect>}/<id>.png` (no masks); `brain` (AnomalyCLIP,
    VisualAD) or `headct` (AdaCLIP, which also leaves an empty `train/good`)."""
    expected: Expected = {}
    for i, defect in enumerate(("good", "good", "hemorrhage", "hemorrhage")):
        rel = f"{folder}/test/{defect}/{i:03d}.png"
        save(root / rel, image_array(i, gray=True))
        expected[rel] = (int(defect != "good"), "head", defect, None)
    if folder == "headct":
        (root / folder / "train" / "good").mkdir(parents=True)
    return expected


def make_clinicdb_images_masks(root: pathlib.Path) -> Expected:
    """CVC-ClinicDB as AnomalyCLIP/VisualAD keep it: `images/<n>.png` + `masks/<n>.png`."""
    return make_pairs(root, "images", "masks", "colon", ".png", ".png")


def make_isic_skin(root: pathlib.Path, specie: str = "anomaly") -> Expected:
    """ISIC as AnomalyCLIP/VisualAD lay it out: `skin/test/<specie>/ISIC_<id>.jpg` with masks
    `skin/ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_<id>_Segmentation.png`."""
    expected = make_pairs(root, f"skin/test/{specie}", "skin/ISBI2016_ISIC_Part1_Test_GroundTruth",
                          "skin", ".jpg", ".png", "_Segmentation",
                          names=("ISIC_0000003", "ISIC_0000012"))
    return {k: (label, cls, specie, mask) for k, (label, cls, _, mask) in expected.items()}


# ---- meta.json as the generate_dataset_json scripts write it ----------------------------------
# Written like AnomalyCLIP's / VisualAD's scripts: os.listdir order for species, images and masks
# each sorted and paired BY POSITION, `json.dumps(info, indent=4) + "\n"` into <root>/meta.json.
def meta_entry(img_path: str, mask_path: str, cls_name: str, specie_name: str, anomaly: int,
               **extra) -> dict:
    return dict(img_path=img_path, mask_path=mask_path, cls_name=cls_name,
                specie_name=specie_name, anomaly=anomaly, **extra)


def write_meta(root: pathlib.Path, info: dict) -> dict:
    (root / "meta.json").write_text(json.dumps(info, indent=4) + "\n")
    return info


def meta_defect_folders(root: pathlib.Path, classes, phases=("train", "test"), normal="good",
                        gt="ground_truth", masks=True, cls_prefix="") -> dict:
    """mvtec.py / mpdd.py / btad.py (normal "ok") / DTD.py / SDD.py / isbi-like folders:
    `<cls>/<phase>/<specie>/<img>`, masks `<cls>/<gt>/<specie>/` (or `<cls>/<gt>/` when `gt`
    ends with "/": isbi.py) paired by sorted position; head_ct.py with masks=False."""
    info = {"train": {}, "test": {}}
    for cls in classes:
        for phase in phases:
            entries = []
            for specie in os.listdir(root / cls / phase):
                abnormal = specie != normal
                names = sorted(os.listdir(root / cls / phase / specie))
                mask_dir = gt.rstrip("/") if gt.endswith("/") else f"{gt}/{specie}"
                mask_names = (sorted(os.listdir(root / cls / mask_dir))
                              if abnormal and masks else None)
                for k, name in enumerate(names):
                    mask = f"{cls_prefix}{cls}/{mask_dir}/{mask_names[k]}" if mask_names else ""
                    entries.append(meta_entry(f"{cls_prefix}{cls}/{phase}/{specie}/{name}",
                                              mask if abnormal else "", cls, specie, int(abnormal)))
            info[phase][cls] = entries
    return write_meta(root, info)


def meta_visa(root: pathlib.Path) -> dict:
    """visa.py: the rows of split_csv/1cls.csv; specie_name "" and mask "" for normal rows."""
    info = {"train": {}, "test": {}}
    with open(root / "split_csv" / "1cls.csv", newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            abnormal = row["label"] == "anomaly"
            info[row["split"]].setdefault(row["object"], []).append(meta_entry(
                row["image"], row["mask"] if abnormal else "", row["object"], "", int(abnormal)))
    return write_meta(root, info)


def meta_images_masks(root: pathlib.Path, cls: str = "colon") -> dict:
    """clinicDB.py / colonDB.py / kvasir.py: `cls_dir = root` as given (absolute), so paths are
    `<root>/images/<name>` and `<root>/masks/<name>`, paired by sorted position; test only."""
    names, masks = sorted(os.listdir(root / "images")), sorted(os.listdir(root / "masks"))
    entries = [meta_entry(f"{root}/images/{n}", f"{root}/masks/{masks[k]}", cls, "", 1)
               for k, n in enumerate(names)]
    return write_meta(root, {"train": {}, "test": {cls: entries}})


def meta_yes_no(root: pathlib.Path, wrapper: str = "brain_tumor_dataset") -> dict:
    """brainmri.py (`<root>/brain_tumor_dataset/<specie>/<img>`) and br35.py (`cls_dir =
    f'{root}/'`, so `<root>//<specie>/<img>`): absolute paths, "no" is normal, mask ""."""
    cls_dir = f"{root}/{wrapper}" if wrapper else f"{root}/"
    entries = []
    for specie in os.listdir(cls_dir):
        if not os.path.isdir(f"{cls_dir}/{specie}"):
            continue
        for name in sorted(os.listdir(f"{cls_dir}/{specie}")):
            entries.append(meta_entry(f"{cls_dir}/{specie}/{name}", "", "brain", specie,
                                      int(specie != "no")))
    return write_meta(root, {"train": {}, "test": {"brain": entries}})


def meta_dagm(root: pathlib.Path, classes=("Class1", "Class2")) -> dict:
    """DAGM.py: split keys "Train"/"Test"; `Label/<id>_label.PNG` masks; specie_name ""."""
    info = {"Train": {}, "Test": {}}
    for cls in classes:
        for phase in ("Train", "Test"):
            images = sorted(f for f in os.listdir(root / cls / phase) if f.endswith(".PNG"))
            labels = sorted(f for f in os.listdir(root / cls / phase / "Label") if f.endswith(".PNG"))
            defective = [f.split("_")[0] + ".PNG" for f in labels]
            normal = sorted(set(images) - set(defective))
            info[phase][cls] = (
                [meta_entry(f"{cls}/{phase}/{f}", "", cls, "", 0) for f in normal]
                + [meta_entry(f"{cls}/{phase}/{f}", f"{cls}/{phase}/Label/{m}", cls, "", 1)
                   for f, m in zip(defective, labels, strict=True)])
    return write_meta(root, info)


def meta_bayes_pfl(root: pathlib.Path, classes) -> dict:
    """Bayes-PFL's make_meta.py (its file placed at <root>/meta.json): paths start with the root's
    folder name, masks named like their image (`.bmp` -> `.png`), an extra `dataset_name` key, and
    a placeholder entry (empty paths) for an empty folder outside the test split."""
    info = {"train": {}, "test": {}}
    for cls in classes:
        for phase in ("train", "test"):
            entries = []
            for specie in sorted(os.listdir(root / cls / phase)):
                abnormal = specie != "good"
                names = sorted(os.listdir(root / cls / phase / specie))
                if not names and phase != "test":
                    entries.append(meta_entry("", "", cls, specie, int(abnormal), dataset_name=""))
                for name in names:
                    mask = f"{root.name}/{cls}/ground_truth/{specie}/{name.replace('.bmp', '.png')}"
                    entries.append(meta_entry(f"{root.name}/{cls}/{phase}/{specie}/{name}",
                                              mask if abnormal else "", cls, specie, int(abnormal),
                                              dataset_name=name.split("_")[0]))
            info[phase][cls] = entries
    return write_meta(root, info)
