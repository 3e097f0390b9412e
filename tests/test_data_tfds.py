"""TFDS builder round trip: prepare a fixture tree, read it back through the grain pipeline."""

from __future__ import annotations

import sys

import fixtures_data as fx
import numpy as np

from zsad_jax import data
from zsad_jax.backbones import ImageView

VIEWS = {"v": ImageView(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))}


def test_tfds_round_trip(tmp_path):
    assert "tensorflow" not in sys.modules or "zsad_jax.data.tfds" in sys.modules
    from zsad_jax.data import tfds as zsad_tfds

    root = tmp_path / "raw"
    fx.make_btad(root)
    from zsad_jax.data.tfds.__main__ import main

    assert main(["btad", "--manual_dir", str(root), "--data_dir", str(tmp_path / "tfds")]) == 0
    assert list((tmp_path / "tfds").rglob("*.array_record*"))
    for split in ("train", "test"):
        folder = data.load_index("btad", root, split=split)
        prepared = zsad_tfds.records("btad", split, data_dir=tmp_path / "tfds")
        assert len(prepared) == len(folder)
        by_path = {str(root.resolve() / r.image_path): r for r in prepared}
        assert set(by_path) == {r.image_path for r in folder}
        folder.sort(key=lambda r: r.image_path)
        tfds_sorted = [by_path[r.image_path] for r in folder]
        for a, b in zip(folder, tfds_sorted, strict=True):
            assert (a.label, a.class_name, a.defect, a.dataset) == \
                (b.label, b.class_name, b.defect, b.dataset)
            assert (a.mask_path is None) == (b.mask_path is None)
        x = next(data.eval_batches(folder, VIEWS, 12, batch_size=len(folder)))
        y = next(data.eval_batches(tfds_sorted, VIEWS, 12, batch_size=len(folder)))
        np.testing.assert_array_equal(x["images"]["v"], y["images"]["v"])
        np.testing.assert_array_equal(x["masks"], y["masks"])
        np.testing.assert_array_equal(x["labels"], y["labels"])
    loader = data.TrainLoader(prepared, VIEWS, 12, global_batch_size=2, seed=0)
    assert next(loader)["images"]["v"].shape == (2, 16, 16, 3)
    assert "Type-I RSDDs dataset" in zsad_tfds.ZsadAnomaly.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_importing_data_does_not_import_tensorflow():
    import subprocess

    code = ("import sys, zsad_jax.data, zsad_jax.data.pipeline; "
            "assert 'tensorflow' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
