"""Dataset readers on fixture trees with each dataset's real naming conventions; bad-input errors."""

from __future__ import annotations

import logging
import re
import warnings

import fixtures_data as fx
import numpy as np
import pytest
from PIL import Image

from zsad_jax import data
from zsad_jax.data import registry


def _index(name, root, **kw):
    return fx.as_expected(data.load_index(name, root, **kw), root)


@pytest.mark.parametrize("name,classes,gray", [
    ("mvtec", ("bottle", "grid"), ("grid",)),
    ("mpdd", ("bracket_black", "tubes"), ()),
    ("dtd", ("Woven_001", "Blotchy_099"), ()),
])
def test_mvtec_layout(tmp_path, name, classes, gray):
    expected = fx.make_mvtec_like(tmp_path, classes, gray_classes=gray)
    assert _index(name, tmp_path, classes=classes) == expected
    train = data.load_index(name, tmp_path, split="train", classes=classes)
    assert len(train) == 2 * len(classes) and {r.label for r in train} == {0}
    assert {r.mask_path for r in train} == {None}


def test_masks_paired_by_name_not_position(tmp_path):
    """A missing image in the middle must not shift masks: each mask's signature is checked."""
    fx.make_mvtec_like(tmp_path, ("bottle",), defects=("scratch",))
    extra = tmp_path / "bottle/test/scratch/005.png"
    fx.save(extra, fx.image_array(5))
    fx.save(tmp_path / "bottle/ground_truth/scratch/005_mask.png", fx.mask_array(9))
    (tmp_path / "bottle/test/scratch/000.png").unlink()  # its mask stays, unused
    records = [r for r in data.load_index("mvtec", tmp_path, classes=["bottle"]) if r.label]
    assert [(r.image_path.rsplit("/", 1)[1], int(data.load_mask(r.mask_path).sum()))
            for r in records] == [("001.png", 2), ("005.png", 9)]


def test_missing_mask_is_an_error(tmp_path):
    fx.make_mvtec_like(tmp_path, ("bottle",), defects=("scratch",))
    (tmp_path / "bottle/ground_truth/scratch/001_mask.png").unlink()
    with pytest.raises(data.DatasetError, match=r"\[mvtec\].*no mask.*001\.png.*001_mask\.png"):
        data.load_index("mvtec", tmp_path, classes=["bottle"])


def test_visa_csv(tmp_path):
    expected = fx.make_visa(tmp_path)
    assert _index("visa", tmp_path, classes=["candle", "pcb1"]) == expected
    records = data.load_index("visa", tmp_path, classes=["candle"])
    anomalous = [r for r in records if r.label]
    # VisA masks hold defect ids 1..9: binarized with > 0 (ids 1 and 2 here).
    assert [int(data.load_mask(r.mask_path, "visa").sum()) for r in anomalous] == [2, 3]
    assert len(data.load_index("visa", tmp_path, split="train", classes=["pcb1"])) == 2


def test_visa_csv_row_pointing_to_missing_file(tmp_path):
    fx.make_visa(tmp_path)
    (tmp_path / "pcb1/Data/Images/Anomaly/001.JPG").unlink()
    with pytest.raises(data.DatasetError, match=r"\[visa\].*1cls\.csv:\d+: image .*001\.JPG "
                                                r"does not exist"):
        data.load_index("visa", tmp_path, classes=["candle", "pcb1"])


def test_btad_formats_per_class(tmp_path):
    expected = fx.make_btad(tmp_path)
    assert _index("btad", tmp_path) == expected
    assert len(data.load_index("btad", tmp_path, split="train")) == 3


def test_ksdd2_labels_from_masks(tmp_path):
    expected = fx.make_ksdd2(tmp_path)
    for split in ("train", "test"):
        assert _index("ksdd2", tmp_path, split=split) == expected[split]


def test_dagm(tmp_path):
    expected = fx.make_dagm(tmp_path)
    for split in ("train", "test"):
        assert _index("dagm", tmp_path, split=split, classes=["Class1", "Class2"]) == \
            expected[split]


def test_rsdd_jpeg_masks(tmp_path):
    expected = fx.make_rsdd(tmp_path)
    assert _index("rsdd", tmp_path) == expected
    mask_path = tmp_path / "Type-I RSDDs dataset/GroundTruth/rail_1.jpg"
    raw = np.asarray(Image.open(mask_path))
    assert ((raw > 0) & (raw < 128)).any(), "fixture should have JPEG ringing"
    mask = data.load_mask(mask_path, "rsdd")
    truth = np.zeros_like(mask)
    truth[2:8, 3:10] = True
    assert (mask != truth).sum() <= 2  # mid-level threshold, not > 0


def test_sdd(tmp_path):
    expected = fx.make_sdd(tmp_path)
    assert _index("sdd", tmp_path) == expected


def test_brainmri_wrapper_folder_and_br35h(tmp_path):
    expected = fx.make_yes_no(tmp_path / "brain", wrapper="brain_tumor_dataset")
    got = data.load_index("brainmri", tmp_path / "brain")
    assert fx.as_expected(got, tmp_path / "brain") == expected
    expected = fx.make_yes_no(tmp_path / "br35h", extra="pred")
    assert _index("br35h", tmp_path / "br35h") == expected
    assert not data.DATASETS["br35h"].has_masks


def test_headct(tmp_path):
    expected = fx.make_headct(tmp_path)
    assert _index("headct", tmp_path) == expected


def test_headct_row_to_missing_file(tmp_path):
    fx.make_headct(tmp_path)
    (tmp_path / "head_ct/head_ct/002.png").unlink()
    with pytest.raises(data.DatasetError, match=r"labels\.csv:4: image .*002\.png"):
        data.load_index("headct", tmp_path)


@pytest.mark.parametrize("folder", ["brain", "headct"])
def test_headct_repository_layouts(tmp_path, folder):
    """AnomalyCLIP/VisualAD `brain/test/{good,<defect>}` and AdaCLIP `headct/test/...`."""
    expected = fx.make_headct_folders(tmp_path, folder)
    assert _index("headct", tmp_path) == expected


def test_clinicdb_images_masks_and_isic_skin_layouts(tmp_path):
    expected = fx.make_clinicdb_images_masks(tmp_path / "clinicdb")
    assert _index("clinicdb", tmp_path / "clinicdb") == expected
    expected = fx.make_isic_skin(tmp_path / "isic")
    fx.save(tmp_path / "isic/skin/test/good/ISIC_0000100.jpg", fx.image_array(7), "JPEG")
    expected["skin/test/good/ISIC_0000100.jpg"] = (0, "skin", "good", None)
    assert _index("isic", tmp_path / "isic") == expected
    with pytest.raises(data.DatasetError, match=r"(?s)\[isic\] no known layout of the 'train' "
                                                r"split.*ISBI2016_ISIC_Part1_Training_Data"):
        data.load_index("isic", tmp_path / "isic", split="train")


@pytest.mark.parametrize("name,paths", [
    ("headct", ["<root>/labels.csv", "<root>/head_ct/", "<root>/brain/test/{good,<defect>}/*",
                "<root>/headct/test/"]),
    ("clinicdb", ["<root>/Original/", "<root>/Ground Truth/", "<root>/images/", "<root>/masks/"]),
    ("isic", ["<root>/ISBI2016_ISIC_Part1_Test_Data/", "<root>/ISBI2016_ISIC_Part1_Test_GroundTruth/",
              "<root>/skin/test/<specie>/", "<root>/skin/ISBI2016_ISIC_Part1_Test_GroundTruth/"]),
])
def test_medical_error_lists_every_layout(tmp_path, name, paths):
    fx.save(tmp_path / "unrelated/0.png", fx.image_array(0))
    with pytest.raises(data.DatasetError, match=rf"\[{name}\] no known layout") as caught:
        data.load_index(name, tmp_path)
    message = str(caught.value)
    for path in paths:
        assert path in message, path


@pytest.mark.parametrize("name", ["clinicdb", "colondb", "kvasir", "isic"])
def test_segmentation_only_sets(tmp_path, name):
    expected = getattr(fx, f"make_{name}")(tmp_path)
    assert _index(name, tmp_path) == expected
    info = data.DATASETS[name]
    assert info.all_anomalous and info.has_masks
    records = data.load_index(name, tmp_path)
    assert data.has_pixel_labels(records) and not data.has_both_labels(records)


def test_kvasir_jpeg_mask_threshold(tmp_path):
    fx.make_kvasir(tmp_path)
    for r in data.load_index("kvasir", tmp_path):
        assert 1 <= data.load_mask(r.mask_path, "kvasir").sum() <= 5


def test_folder(tmp_path):
    expected = fx.make_folder(tmp_path)
    assert _index("folder", tmp_path) == expected
    records = data.load_index("folder", tmp_path)
    assert data.has_pixel_labels([r for r in records if r.class_name == "widget"])
    assert not data.has_pixel_labels([r for r in records if r.class_name == "gizmo"])


def test_folder_partial_masks_is_an_error(tmp_path):
    fx.make_folder(tmp_path)
    (tmp_path / "widget/ground_truth/dent/1_mask.png").unlink()
    with pytest.raises(data.DatasetError, match=r"\[folder\].*widget.*dent.*no mask"):
        data.load_index("folder", tmp_path)


def test_folder_misnamed_masks_are_an_error(tmp_path):
    """`0-mask.png` pairs with no image: today's silent "no masks" becomes an error naming it."""
    fx.make_folder(tmp_path)
    gt = tmp_path / "widget/ground_truth/dent"
    for i in range(2):
        (gt / f"{i}_mask.png").rename(gt / f"{i}-mask.png")
    with pytest.raises(data.DatasetError) as caught:
        data.load_index("folder", tmp_path)
    message = str(caught.value)
    assert re.search(r"\[folder\] 2 mask\(s\) of class 'widget' pair with no image", message)
    assert re.search(r"dent/0-mask\.png: no image \S+/widget/dent/0-mask\.<ext>; images of 'dent' "
                     r"without a mask: 0\.jpg, 1\.jpg", message)
    assert "<stem>_mask.<ext> or <stem>.<ext>" in message


@pytest.mark.parametrize("mvtec_layout", [False, True])
def test_folder_masks_without_images_are_an_error(tmp_path, mvtec_layout):
    if mvtec_layout:
        fx.make_mvtec_like(tmp_path, ("widget",), defects=("dent",))
        gt, images = tmp_path / "widget/ground_truth", "widget/test"
    else:
        fx.make_folder(tmp_path)
        gt, images = tmp_path / "widget/ground_truth", "widget"
    fx.save(gt / "dent/7_mask.png", fx.mask_array(3))  # its image was removed
    fx.save(gt / "dents/0_mask.png", fx.mask_array(3))  # no defect folder "dents"
    with pytest.raises(data.DatasetError) as caught:
        data.load_index("folder", tmp_path, classes=["widget"])
    message = str(caught.value)
    assert "2 mask(s) of class 'widget' pair with no image" in message
    assert re.search(rf"dent/7_mask\.png: no image \S+/{images}/dent/7\.<ext>", message)
    assert re.search(rf"dents/0_mask\.png: no defect folder \S+/{images}/dents/", message)
    if mvtec_layout:  # masks belong to the test split: the train split is still readable
        assert len(data.load_index("folder", tmp_path, split="train", classes=["widget"])) == 2


@pytest.mark.parametrize("layout", ["native", "meta_json"])
def test_all_zero_mask_of_an_anomalous_image_warns(tmp_path, caplog, layout):
    fx.make_mvtec_like(tmp_path, ("bottle",), defects=("scratch",))
    if layout == "meta_json":
        fx.meta_defect_folders(tmp_path, ("bottle",))
    fx.save(tmp_path / "bottle/ground_truth/scratch/001_mask.png", fx.mask_array(0))
    with caplog.at_level(logging.WARNING):
        data.load_index("mvtec", tmp_path, classes=["bottle"], check="header", layout=layout)
    assert not caplog.records  # headers only: masks are not decoded
    with caplog.at_level(logging.WARNING):
        data.load_index("mvtec", tmp_path, classes=["bottle"], layout=layout)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert re.search(r"(?s)\[mvtec\] 1 anomalous image\(s\) have an all-zero mask.*"
                     r"scratch/001_mask\.png \(mask of \S+/scratch/001\.png\)", caplog.text)


def test_registry_lists_every_issue_dataset():
    names = ("mvtec visa mpdd btad ksdd2 dagm dtd rsdd sdd brainmri br35h headct clinicdb "
             "colondb kvasir isic folder").split()
    assert set(names) <= set(data.DATASETS)
    assert len(data.DATASETS["mvtec"].classes) == 15 and len(data.DATASETS["visa"].classes) == 12
    for name in ("brainmri", "br35h", "headct"):
        assert data.DATASETS[name].classification_only
    for info in data.DATASETS.values():
        assert info.description and info.layout and info.prepare
        assert ("train" in info.splits) == info.official_split or info.name == "folder"


# ---- bad input --------------------------------------------------------------------------------
def test_missing_root_and_class_and_split(tmp_path):
    with pytest.raises(data.DatasetError, match=r"\[mvtec\] dataset root .*nope does not exist.*"
                                                r"Expected layout"):
        data.load_index("mvtec", tmp_path / "nope")
    fx.make_mvtec_like(tmp_path, ("bottle",))
    with pytest.raises(data.DatasetError, match=r"\[mvtec\] missing class 'cable'.*Found in .*bottle"):
        data.load_index("mvtec", tmp_path)
    with pytest.raises(data.DatasetError, match=r"unknown class\(es\) \['bottel'\]"):
        data.load_index("mvtec", tmp_path, classes=["bottel"])
    with pytest.raises(data.DatasetError, match=r"\[sdd\] has no 'train' split.*every image"):
        data.load_index("sdd", tmp_path, split="train")
    with pytest.raises(data.DatasetError, match="unknown dataset 'mvtech'"):
        data.load_index("mvtech", tmp_path)


def test_empty_class(tmp_path):
    fx.make_mvtec_like(tmp_path, ("bottle",))
    (tmp_path / "cable/test/good").mkdir(parents=True)
    with pytest.raises(data.DatasetError, match=r"\[mvtec\] class 'cable' is empty"):
        data.load_index("mvtec", tmp_path, classes=["cable"])


def test_corrupt_image_error_and_skip(tmp_path):
    fx.make_mvtec_like(tmp_path, ("bottle",))
    bad = tmp_path / "bottle/test/good/001.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    with pytest.raises(data.DatasetError, match=r"(?s)\[mvtec\] 1 unreadable image.*001\.png.*"
                                                r"skip_unreadable"):
        data.load_index("mvtec", tmp_path, classes=["bottle"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = data.load_index("mvtec", tmp_path, classes=["bottle"], skip_unreadable=True)
    assert len(records) == 5 and str(bad.resolve()) not in {r.image_path for r in records}
    assert any(re.search(r"(?s)skipped 1 unreadable image.*001\.png", str(w.message))
               for w in caught)


def test_unreadable_mask_and_size_mismatch(tmp_path):
    fx.make_mvtec_like(tmp_path, ("bottle",), defects=("scratch",))
    mask = tmp_path / "bottle/ground_truth/scratch/000_mask.png"
    mask.write_bytes(b"not a png")
    with pytest.raises(data.DatasetError, match=r"(?s)unreadable mask.*000_mask\.png.*cannot be "
                                                r"decoded"):
        data.load_index("mvtec", tmp_path, classes=["bottle"], skip_unreadable=True)
    fx.save(mask, fx.mask_array(3, shape=(10, 16)))
    with pytest.raises(data.DatasetError, match=r"(?s)000_mask\.png: mask is 10x16 \(HxW\) but its "
                                                r"image .*000\.png is 12x16"):
        data.load_index("mvtec", tmp_path, classes=["bottle"])


def test_duplicate_ids(tmp_path):
    fx.make_mvtec_like(tmp_path, ("bottle",), defects=("scratch",))
    fx.save(tmp_path / "bottle/test/scratch/000.jpg", fx.image_array(3), "JPEG")
    with pytest.raises(data.DatasetError, match=r"duplicate id '000' in .*scratch.*000\.jpg"):
        data.load_index("mvtec", tmp_path, classes=["bottle"])
    record = data.Record("/x.png", None, 0, "c", "good", "folder")
    with pytest.raises(data.DatasetError, match=r"duplicate id: /x\.png is listed twice"):
        registry.checks.validate([record, record], "folder")


# ---- decoding ---------------------------------------------------------------------------------
def test_load_image_modes(tmp_path):
    rgb = fx.image_array(0)
    gray = fx.image_array(1, gray=True)
    fx.save(tmp_path / "rgb.png", rgb)
    fx.save(tmp_path / "gray.png", gray)
    Image.fromarray(np.dstack([rgb, np.full((fx.H, fx.W), 7, np.uint8)])).save(tmp_path / "a.png")
    Image.fromarray(gray).convert("P").save(tmp_path / "p.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    np.testing.assert_allclose(data.load_image(tmp_path / "rgb.png"), rgb / 255.0, atol=1e-7)
    for name in ("gray.png", "p.png", "g16.png"):
        out = data.load_image(tmp_path / name)
        assert out.shape == (fx.H, fx.W, 3) and out.dtype == np.float32, name
        np.testing.assert_allclose(out, np.repeat(gray[..., None], 3, -1) / 255.0, atol=1e-6)
    np.testing.assert_allclose(data.load_image(tmp_path / "a.png"), rgb / 255.0, atol=1e-7)


def test_load_mask_conventions(tmp_path):
    values = np.zeros((fx.H, fx.W), np.uint8)
    values[0, :4] = [1, 9, 127, 128]
    fx.save(tmp_path / "m.png", values)
    assert data.load_mask(tmp_path / "m.png", "visa").sum() == 4  # lossless: > 0
    assert data.load_mask(tmp_path / "m.png", "kvasir").sum() == 1  # JPEG-masked set: > 127
    rgb = np.zeros((fx.H, fx.W, 3), np.uint8)
    rgb[1, 1, 2] = 255
    fx.save(tmp_path / "rgb.png", rgb)
    assert data.load_mask(tmp_path / "rgb.png").sum() == 1


def test_command_line_check(tmp_path, capsys):
    from zsad_jax.data.__main__ import main

    fx.make_btad(tmp_path)
    assert main(["check", "btad", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 01 | 1 | 2 | 2 |" in out and "| **all** | 3 | 6 | 6 |" in out
    (tmp_path / "02/ground_truth/ko/0001.png").unlink()
    assert main(["check", "btad", str(tmp_path)]) == 1
    assert "02/test/ko/0001.png" in capsys.readouterr().err
    fx.make_clinicdb_images_masks(tmp_path / "clinicdb")
    fx.meta_images_masks(tmp_path / "clinicdb")
    assert main(["check", "clinicdb", str(tmp_path / "clinicdb"), "--layout", "meta_json"]) == 0
    out = capsys.readouterr().out
    assert "layout: meta_json" in out and "| colon | 0 | 3 | 3 |" in out
    assert main(["check", "clinicdb", str(tmp_path / "clinicdb")]) == 0
    assert "layout: native" in capsys.readouterr().out
