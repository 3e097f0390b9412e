"""meta.json roots (AnomalyCLIP / VisualAD / AdaCLIP / Bayes-PFL), written as their scripts write
them (fixtures_data.meta_*): reading, the layout choice, and every pairing check."""

from __future__ import annotations

import json
import pathlib
import re

import fixtures_data as fx
import ml_collections
import pytest

from zsad_jax import data
from zsad_jax.data import meta_json, protocols


def _index(name, root, **kw):
    return fx.as_expected(data.load_index(name, root, **kw), root)


def _with_defect(expected, defect, class_name=None):
    """`expected` with anomalous images' defect (and every class name) replaced."""
    return {k: (label, class_name or cls, defect if label else d, mask)
            for k, (label, cls, d, mask) in expected.items()}


def test_mvtec_meta_json_reads_like_the_native_layout(tmp_path):
    expected = fx.make_mvtec_like(tmp_path, ("bottle", "grid"))
    fx.meta_defect_folders(tmp_path, ("bottle", "grid"))
    assert _index("mvtec", tmp_path, layout="meta_json") == expected
    train = data.load_index("mvtec", tmp_path, split="train", layout="meta_json")
    assert len(train) == 4 and {(r.label, r.mask_path, r.defect) for r in train} == {(0, None, "good")}
    only = data.load_index("mvtec", tmp_path, classes=["grid"], layout="meta_json")
    assert {r.class_name for r in only} == {"grid"}


def test_auto_reads_the_native_layout_when_found_else_meta_json(tmp_path):
    """Precedence: a native layout beats a meta.json in "auto"; an explicit choice beats both."""
    fx.make_mvtec_like(tmp_path, ("bottle",))
    info = fx.meta_defect_folders(tmp_path, ("bottle",))
    info["test"]["bottle"] = info["test"]["bottle"][:1]  # the meta.json lists 1 of 6 test images
    fx.write_meta(tmp_path, info)
    assert len(data.load_index("mvtec", tmp_path, classes=["bottle"])) == 6
    assert len(data.load_index("mvtec", tmp_path, classes=["bottle"], layout="native")) == 6
    assert len(data.load_index("mvtec", tmp_path, layout="meta_json")) == 1
    # VisualAD's SDD: `electrical commutators/{train,test}` + meta.json, no kos01.. folders.
    sdd = tmp_path / "sdd"
    expected = fx._mvtec_class(sdd, "electrical commutators", defects=("defect",), mask_suffix="")
    fx.meta_defect_folders(sdd, ("electrical commutators",))
    assert _index("sdd", sdd) == expected
    assert len(data.load_index("sdd", sdd, split="train")) == 2  # the meta.json's splits


def test_folder_meta_json_wins_in_auto(tmp_path):
    """`folder`'s native layout is any folder tree, so a meta.json at its root is read."""
    fx.make_mvtec_like(tmp_path, ("widget",))
    info = fx.meta_defect_folders(tmp_path, ("widget",))
    info["test"]["widget"] = info["test"]["widget"][-2:]
    fx.write_meta(tmp_path, info)
    assert len(data.load_index("folder", tmp_path)) == 2
    assert len(data.load_index("folder", tmp_path, layout="native")) == 6


def test_mask_missing_mispaired_by_position_is_named(tmp_path):
    """A missing mask plus the mask of a removed image: the scripts' positional pairing gives
    000.png <- 001_mask.png and 001.png <- 002_mask.png; both must be named."""
    fx.make_mvtec_like(tmp_path, ("bottle",), defects=("scratch",))
    gt = tmp_path / "bottle/ground_truth/scratch"
    (gt / "000_mask.png").unlink()
    fx.save(gt / "002_mask.png", fx.mask_array(5))
    info = fx.meta_defect_folders(tmp_path, ("bottle",))
    pairs = {e["img_path"]: e["mask_path"] for e in info["test"]["bottle"] if e["anomaly"]}
    assert pairs["bottle/test/scratch/000.png"] == "bottle/ground_truth/scratch/001_mask.png"
    with pytest.raises(data.DatasetError) as caught:
        data.load_index("mvtec", tmp_path, layout="meta_json")
    message = str(caught.value)
    assert re.search(r"\[mvtec\] .*meta\.json: 2 problem\(s\)", message)
    assert re.search(r"mask \S+/001_mask\.png is paired with image \S+/000\.png", message)
    assert re.search(r"mask \S+/002_mask\.png is paired with image \S+/001\.png", message)


def test_every_problem_is_named_in_one_error(tmp_path):
    fx.make_mvtec_like(tmp_path, ("bottle",))
    info = fx.meta_defect_folders(tmp_path, ("bottle",))
    entries = {e["img_path"]: e for e in info["test"]["bottle"]}
    entries["bottle/test/good/000.png"]["img_path"] = "bottle/test/good/gone.png"
    entries["bottle/test/good/001.png"]["mask_path"] = "bottle/ground_truth/scratch/000_mask.png"
    entries["bottle/test/scratch/000.png"]["anomaly"] = 2
    entries["bottle/test/scratch/001.png"]["cls_name"] = "bottel"
    info["test"]["bottle"].append({"img_path": "bottle/test/good/000.png", "anomaly": 0})
    fx.write_meta(tmp_path, info)
    fx.save(tmp_path / "bottle/ground_truth/crack/000_mask.png", fx.mask_array(2, shape=(10, 16)))
    (tmp_path / "bottle/ground_truth/crack/001_mask.png").unlink()
    with pytest.raises(data.DatasetError) as caught:
        data.load_index("mvtec", tmp_path, layout="meta_json")
    message = str(caught.value)
    assert re.search(r"\[mvtec\] \S+meta\.json: 7 problem\(s\)", message)
    for pattern in (r"test/bottle\[\d\]: image 'bottle/test/good/gone\.png' does not exist",
                    r"normal image bottle/test/good/001\.png \(anomaly 0\) lists a mask",
                    r"\(bottle/test/scratch/000\.png\): anomaly must be 0 or 1, found 2",
                    r"\(bottle/test/scratch/001\.png\): cls_name 'bottel' differs",
                    r"missing key\(s\) mask_path, cls_name, specie_name",
                    r"mask 'bottle/ground_truth/crack/001_mask\.png' of image \S+ does not exist",
                    r"crack/000_mask\.png: mask is 10x16 \(HxW\) but its image \S+/crack/000\.png "
                    r"is 12x16"):
        assert re.search(pattern, message), pattern


def test_class_mixing_images_with_and_without_masks(tmp_path):
    fx.make_mvtec_like(tmp_path, ("bottle",), defects=("scratch",))
    info = fx.meta_defect_folders(tmp_path, ("bottle",))
    next(e for e in info["test"]["bottle"] if e["anomaly"])["mask_path"] = ""
    fx.write_meta(tmp_path, info)
    with pytest.raises(data.DatasetError, match=r"class 'bottle': anomalous image \S+/scratch/"
                                                r"000\.png has no mask \(mask_path \"\"\) while 1 "
                                                r"other\(s\) of its class have one"):
        data.load_index("mvtec", tmp_path, layout="meta_json")


def test_colon_absolute_paths_and_a_moved_root(tmp_path):
    """clinicDB.py writes `<root>/images/<n>` (absolute); a moved dataset is re-rooted."""
    old = tmp_path / "CVC-ClinicDB"
    expected = _with_defect(fx.make_clinicdb_images_masks(old), "anomaly")
    fx.meta_images_masks(old)
    assert json.loads((old / "meta.json").read_text())["test"]["colon"][0]["img_path"] == \
        f"{old}/images/1.png"
    assert _index("clinicdb", old, layout="meta_json") == expected
    moved = old.rename(tmp_path / "clinicdb")
    assert _index("clinicdb", moved, layout="meta_json") == expected


def test_headct_brainmri_br35h_meta_without_masks(tmp_path):
    """head_ct.py (`brain/test/<specie>`, class "brain"), brainmri.py (absolute, wrapper folder)
    and br35.py (`<root>//<specie>/<img>`): mask "" for every image, "no" is normal."""
    root = tmp_path / "headct"
    expected = fx.make_headct_folders(root)
    info = fx.meta_defect_folders(root, ("brain",), phases=("test",), masks=False)
    assert info["train"] == {}
    assert _index("headct", root, layout="meta_json") == _with_defect(expected, "hemorrhage",
                                                                        "brain")
    for wrapper in ("brain_tumor_dataset", ""):
        root = tmp_path / f"brain{wrapper}"
        expected = fx.make_yes_no(root, wrapper=wrapper)
        fx.meta_yes_no(root, wrapper)
        assert _index("brainmri", root, layout="meta_json") == _with_defect(expected, "yes")


def test_isbi_meta_masks_with_segmentation_suffix(tmp_path):
    """isbi.py: `skin/test/<specie>/<img>`, masks listed from the flat ground-truth folder."""
    expected = fx.make_isic_skin(tmp_path)
    fx.meta_defect_folders(tmp_path, ("skin",), phases=("test",),
                           gt="ISBI2016_ISIC_Part1_Test_GroundTruth/")
    assert _index("isic", tmp_path, layout="meta_json") == expected


def test_visa_and_dagm_meta(tmp_path):
    """visa.py (specie_name "", paths from 1cls.csv) and DAGM.py (split keys "Train"/"Test")."""
    expected = fx.make_visa(tmp_path / "visa")
    fx.meta_visa(tmp_path / "visa")
    assert _index("visa", tmp_path / "visa", layout="meta_json") == expected
    expected = fx.make_dagm(tmp_path / "dagm")
    fx.meta_dagm(tmp_path / "dagm")
    for split in ("train", "test"):
        assert _index("dagm", tmp_path / "dagm", split=split, layout="meta_json") == \
            _with_defect(expected[split], "anomaly")


def test_bayes_pfl_meta(tmp_path):
    """Paths start with the root's folder name; `dataset_name` key; an empty train folder's
    placeholder entry is skipped (so that class's train split is empty: an error)."""
    root = tmp_path / "HeadCT"
    expected = fx._mvtec_class(root, "head ct", ext=".bmp", defects=("anomaly",), mask_suffix="",
                               train=0)
    (root / "head ct/train/good").mkdir(parents=True)
    info = fx.meta_bayes_pfl(root, ("head ct",))
    assert info["train"]["head ct"][0]["img_path"] == ""
    assert info["test"]["head ct"][-1]["img_path"].startswith("HeadCT/head ct/test/")
    assert _index("folder", root) == expected
    with pytest.raises(data.DatasetError, match=r"train/head ct: the class lists no images"):
        data.load_index("folder", root, split="train")


def test_explicit_layouts_and_bad_meta_files(tmp_path):
    fx.make_mvtec_like(tmp_path, ("bottle",))
    with pytest.raises(data.DatasetError, match=r"\[mvtec\] layout 'meta_json' asks for \S+"
                                                r"meta\.json, which does not exist"):
        data.load_index("mvtec", tmp_path, classes=["bottle"], layout="meta_json")
    with pytest.raises(data.DatasetError, match=r"layout 'csv' \(config\.data\.layouts\.mvtec\) "
                                                r"is not one of auto, native, meta_json"):
        data.load_index("mvtec", tmp_path, classes=["bottle"], layout="csv")
    clinic = tmp_path / "clinic"  # AdaCLIP's ClinicDB: MVTec-like folders + meta.json
    fx._mvtec_class(clinic, "ClinicDB", defects=("polyp",), mask_suffix="")
    fx.meta_defect_folders(clinic, ("ClinicDB",))
    with pytest.raises(data.DatasetError, match=r"layout 'native' asks for CVC-ClinicDB as "
                                                r"distributed.*Original.*a meta\.json is there"):
        data.load_index("clinicdb", clinic, layout="native")
    assert len(data.load_index("clinicdb", clinic)) == 4
    with pytest.raises(data.DatasetError, match=r"meta\.json has no 'val' split \(splits: 'train', "
                                                r"'test'\)"):
        data.load_index("clinicdb", clinic, split="val")
    with pytest.raises(data.DatasetError, match=r"unknown class\(es\) \['colon'\]; available in "
                                                r"\S+meta\.json: ClinicDB"):
        data.load_index("clinicdb", clinic, classes=["colon"])
    (clinic / "meta.json").write_text('{"test": {"ClinicDB": [}')
    with pytest.raises(data.DatasetError, match=r"meta\.json is not valid JSON"):
        data.load_index("clinicdb", clinic)
    (clinic / "meta.json").write_text('{"test": {"ClinicDB": {}}}')
    with pytest.raises(data.DatasetError, match=r"test/ClinicDB must be a list of entries"):
        data.load_index("clinicdb", clinic)


def test_protocols_pass_config_data_layouts(tmp_path):
    fx.make_mvtec_like(tmp_path / "mvtec", ("bottle",))
    config = ml_collections.ConfigDict({"data": {"data_dir": str(tmp_path), "roots": {},
                                                 "layouts": {"mvtec": "meta_json"}}})
    source = protocols.Source("mvtec", classes=("bottle",))
    with pytest.raises(data.DatasetError, match=r"layout 'meta_json'"):
        protocols._load(source, config, tmp_path)
    config.data.layouts.mvtec = "native"
    assert len(protocols._load(source, config, tmp_path)) == 6


def test_mask_names_and_paths():
    image = pathlib.Path("a/000.png")
    for name in ("000.png", "000_mask.png", "000_GT.PNG", "000_label.png", "000_Segmentation.png"):
        assert meta_json.mask_belongs(image, pathlib.Path(name)), name
    for name in ("001_mask.png", "000-mask.png", ".DS_Store", "0000.png"):
        assert not meta_json.mask_belongs(image, pathlib.Path(name)), name


def test_resolve_path(tmp_path):
    root = tmp_path / "data" / "kvasir"
    fx.save(root / "images/1.png", fx.image_array(0))
    found = root / "images/1.png"
    assert meta_json.resolve_path(root, "images/1.png") == found
    assert meta_json.resolve_path(root, "kvasir/images/1.png") == found  # Bayes-PFL prefix
    assert meta_json.resolve_path(root, "/elsewhere/Kvasir/images/1.png") == found  # moved
    assert meta_json.resolve_path(root, str(found)) == found
    fx.save(root / "1.png", fx.image_array(0))  # a tail is at least folder/file
    assert meta_json.resolve_path(root, "/elsewhere/x/2.png") == pathlib.Path("/elsewhere/x/2.png")
    assert meta_json.resolve_path(root, "/elsewhere/x/1.png") == pathlib.Path("/elsewhere/x/1.png")
    assert meta_json.resolve_path(root, "images/9.png") == root / "images/9.png"
