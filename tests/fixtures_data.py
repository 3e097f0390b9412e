"""Tiny fixture trees for every dataset layout, with each dataset's real naming conventions.

Each `make_<name>(root)` writes a few small images (and masks) and returns the expected index as
{relative image path: (label, class_name, defect, relative mask path or None)} so tests compare
readers to ground truth written here. Masks carry a per-image signature (the number of positive
pixels), so a mask paired with the wrong image is detected.
"""

from __future__ import annotations

import csv
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
