"""Synthetic data, protocols, and the grain pipeline: layout, determinism, resume, sharding."""

from __future__ import annotations

import hashlib
import json
import logging

import fixtures_data as fx
import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from zsad_jax import data, devices
from zsad_jax.backbones import ImageView
from zsad_jax.data import synthetic

VIEWS = {"clip": ImageView(24, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)),
         "dino": ImageView(16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    data.make_synthetic(root, seed=3, image_size=32, num_train=2, num_test_good=3,
                        num_per_defect=1)
    return root


@pytest.fixture(scope="module")
def records(synth):
    return data.load_index("synthetic", synth)


def _tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_synthetic_layout_and_masks(synth, records):
    assert sorted({r.class_name for r in records}) == sorted(synthetic.TEXTURES)
    per_class = [r for r in records if r.class_name == "brick"]
    assert sorted(r.defect for r in per_class) == sorted(["good"] * 3 + list(synthetic.DEFECTS))
    for r in records:
        if r.label:
            mask = data.load_mask(r.mask_path, "synthetic")
            assert 0 < mask.mean() < 0.5, r.mask_path
    assert len(data.load_index("synthetic", synth, split="train")) == 2 * len(synthetic.TEXTURES)


def test_synthetic_masks_are_pixel_exact(tmp_path):
    """Re-generating the normal crop is not possible, so check the cut-paste rectangle and the
    scratch: every masked pixel of a scratch has the scratch colour."""
    data.make_synthetic(tmp_path, seed=1, image_size=32, classes=("grass",), num_train=0,
                        num_test_good=0, num_per_defect=3)
    for i in range(3):
        image = np.asarray(Image.open(tmp_path / f"grass/test/scratch/{i:03d}.png"))
        mask = data.load_mask(tmp_path / f"grass/ground_truth/scratch/{i:03d}_mask.png")
        colours = np.unique(image[mask].reshape(-1, 3), axis=0)
        assert len(colours) == 1 and colours[0, 0] in (13, 242)
        box = data.load_mask(tmp_path / f"grass/ground_truth/cut_paste/{i:03d}_mask.png")
        rows, cols = np.nonzero(box)
        assert box.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)


def test_synthetic_is_deterministic(tmp_path, synth):
    kw = dict(image_size=32, num_train=2, num_test_good=3, num_per_defect=1)
    data.make_synthetic(tmp_path / "a", seed=3, **kw)
    assert _tree_digest(tmp_path / "a") == _tree_digest(synth)
    data.make_synthetic(tmp_path / "b", seed=4, **kw)
    assert _tree_digest(tmp_path / "b") != _tree_digest(synth)


def _config(**data_fields):
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict(dict(
        protocol="synthetic", data_dir="data", synthetic_seed=0, skip_unreadable=False,
        roots=ml_collections.ConfigDict({n: "" for n in data.DATASETS})))
    c.data.update(data_fields)
    return c


def test_resolve_synthetic_protocol(tmp_path):
    train, evals = data.resolve_protocol(_config(), tmp_path)
    assert (tmp_path / "synthetic" / synthetic.MARKER).is_file()
    assert {r.class_name for r in train} == set(data.PROTOCOLS["synthetic"].train[0].classes)
    assert list(evals) == ["synthetic"]
    assert {r.class_name for r in evals["synthetic"]} == {"grass", "moon"}
    assert all(r.image_path.startswith(str(tmp_path)) for r in train)
    stamp = (tmp_path / "synthetic/brick/test/good/000.png").stat().st_mtime_ns
    data.resolve_protocol(_config(), tmp_path)  # reused, not regenerated
    assert (tmp_path / "synthetic/brick/test/good/000.png").stat().st_mtime_ns == stamp


def test_resolve_protocol_index_check_mode(tmp_path):
    train, _ = data.resolve_protocol(_config(index_check="header"), tmp_path)
    assert train
    with pytest.raises(ValueError, match="'bogus'"):
        data.resolve_protocol(_config(index_check="bogus"), tmp_path)


def test_visa_to_all_protocol(tmp_path, caplog):
    fx.make_visa(tmp_path / "visa", classes=data.DATASETS["visa"].classes)
    fx.make_mvtec_like(tmp_path / "elsewhere", data.DATASETS["mvtec"].classes,
                       defects=("crack",))
    fx.make_btad(tmp_path / "visa_root_sibling" / "btad")
    config = _config(protocol="visa_to_all", data_dir=str(tmp_path))
    config.data.roots.mvtec = str(tmp_path / "elsewhere")
    config.data.roots.btad = str(tmp_path / "visa_root_sibling" / "btad")
    with caplog.at_level(logging.WARNING):
        train, evals = data.resolve_protocol(config, tmp_path / "work")
    assert {r.dataset for r in train} == {"visa"} and len(train) == 12 * 4
    assert sorted(evals) == ["btad", "mvtec"] and len(evals["mvtec"]) == 15 * 4
    assert "mpdd" in caplog.text and "not evaluated" in caplog.text


@pytest.mark.parametrize("spec,required,optional", [
    # AnomalyCLIP / SGNet: MVTec-trained -> VisA and every other dataset; VisA-trained -> MVTec.
    ("sgnet.py", {"mvtec"}, set()),
    ("sgnet.py:mvtec_to_visa", {"visa"}, {"mpdd", "btad", "ksdd2", "dagm", "dtd", "rsdd", "sdd",
                                          "brainmri", "br35h", "headct", "clinicdb", "colondb",
                                          "kvasir", "isic"}),
    # SSVP: VisA-trained -> MVTec-AD + BTAD, KSDD2, RSDD, DAGM, DTD; MVTec-trained -> VisA only.
    ("ssvp.py", {"mvtec"}, {"btad", "ksdd2", "rsdd", "dagm", "dtd"}),
    ("ssvp.py:mvtec_to_visa", {"visa"}, set()),
    # VisualAD: VisA -> MVTec-AD and the others; MVTec -> VisA.
    ("visualad.py", {"mvtec"}, {"mpdd", "btad", "ksdd2", "dagm", "dtd", "rsdd", "sdd", "brainmri",
                                "br35h", "headct", "clinicdb", "colondb", "kvasir", "isic"}),
    ("visualad.py:mvtec_to_visa", {"visa"}, set()),
])
def test_each_method_follows_its_papers_protocol(spec, required, optional):
    from zsad_jax import config_lib

    protocol = data.PROTOCOLS[config_lib.load_config(spec).data.protocol]
    assert {s.dataset for s in protocol.eval} == required
    assert {s.dataset for s in protocol.eval_optional} == optional
    assert not ({s.dataset for s in protocol.train} & (required | optional))


def test_missing_root_error_names_everything(tmp_path):
    config = _config(protocol="mvtec_to_visa", data_dir=str(tmp_path))
    with pytest.raises(data.DatasetError, match=r"dataset 'mvtec' \(MVTec-AD\) not found: looked "
                       r"in .*/mvtec .*Expected layout: .*ground_truth.*To prepare it: .*"
                       r"config.data.roots.mvtec"):
        data.resolve_protocol(config, tmp_path)
    with pytest.raises(data.DatasetError, match="not a protocol"):
        data.resolve_protocol(_config(protocol="visa2mvtec"), tmp_path)


def test_leak_check(records):
    brick = [r for r in records if r.class_name == "brick"]
    with pytest.raises(data.DatasetError, match=r"leak: 1 image\(s\) of evaluation set 'x'"):
        data.check_no_leak(brick, {"x": brick[:1]})
    import dataclasses
    same_class = [dataclasses.replace(brick[0], image_path="/elsewhere.png")]
    with pytest.raises(data.DatasetError, match=r"leak: class\(es\) \['brick'\]"):
        data.check_no_leak(brick, {"x": same_class})
    data.check_no_leak(brick, {"x": [r for r in records if r.class_name == "moon"]})


# ---- pipeline ---------------------------------------------------------------------------------
def _take(loader, n):
    return [next(loader) for _ in range(n)]


def _expected_example(record, mask_size=20):
    image = Image.open(record.image_path).convert("RGB")
    out = {}
    for name, view in VIEWS.items():
        x = np.asarray(image.resize((view.size,) * 2, Image.Resampling.BICUBIC)) / 255.0
        out[name] = ((x - np.asarray(view.mean)) / np.asarray(view.std)).astype(np.float32)
    mask = np.zeros((mask_size,) * 2, np.float32)
    if record.mask_path:
        m = Image.open(record.mask_path).convert("L").resize((mask_size,) * 2,
                                                             Image.Resampling.BILINEAR)
        mask = (np.asarray(m) / 255.0 > 0.5).astype(np.float32)
    return out, mask


def test_train_batches_layout_and_values(records):
    loader = data.TrainLoader(records, VIEWS, 20, global_batch_size=4, seed=0)
    batch = next(loader)
    assert batch["images"]["clip"].shape == (4, 24, 24, 3)
    assert batch["images"]["dino"].shape == (4, 16, 16, 3)
    assert batch["masks"].shape == (4, 20, 20) and batch["masks"].dtype == np.float32
    assert batch["labels"].dtype == np.int32 and batch["class_name"].shape == (4,)
    order = data.pipeline.epoch_permutation(len(records), 0, 0)
    for row, index in enumerate(order[:4]):
        record = records[index]
        images, mask = _expected_example(record)
        for name in VIEWS:
            np.testing.assert_allclose(batch["images"][name][row], images[name], atol=1e-5)
        np.testing.assert_array_equal(batch["masks"][row], mask)
        assert batch["labels"][row] == record.label
        assert batch["class_name"][row] == record.class_name
    assert set(np.unique(batch["masks"])) <= {0.0, 1.0}


def _epoch_paths(loader, records):
    """Record indices of one epoch, recovered from the loader's sampling (padding slots out)."""
    n = loader.steps_per_epoch * loader.host_batch_size
    return [r for r in (loader._example.record_index(i) for i in range(n)) if r >= 0]


def test_shuffle_is_deterministic_per_seed_and_epoch(records):
    a = data.TrainLoader(records, VIEWS, 20, 4, seed=0)
    b = data.TrainLoader(records, VIEWS, 20, 4, seed=0)
    c = data.TrainLoader(records, VIEWS, 20, 4, seed=1)
    first_a, first_b, first_c = next(a), next(b), next(c)
    np.testing.assert_array_equal(first_a["images"]["clip"], first_b["images"]["clip"])
    assert not np.array_equal(first_a["images"]["clip"], first_c["images"]["clip"])
    n = len(records)
    assert a.steps_per_epoch == n // 4
    e0 = data.pipeline.epoch_permutation(n, 0, 0)
    e1 = data.pipeline.epoch_permutation(n, 0, 1)
    assert sorted(e0) == list(range(n)) and not np.array_equal(e0, e1)


def test_resume_exactly_from_json_state(records):
    loader = data.TrainLoader(records, VIEWS, 20, 4, seed=5, prefetch=2)
    _take(loader, 2)
    state = json.loads(json.dumps(loader.get_state()))
    after = _take(loader, 3)
    resumed = data.TrainLoader(records, VIEWS, 20, 4, seed=5, prefetch=0)
    resumed.set_state(state)
    for x, y in zip(after, _take(resumed, 3), strict=True):
        np.testing.assert_array_equal(x["images"]["dino"], y["images"]["dino"])
        np.testing.assert_array_equal(x["masks"], y["masks"])
    other = data.TrainLoader(records, VIEWS, 20, 4, seed=6)
    with pytest.raises(ValueError, match="different loader"):
        other.set_state(state)


def test_worker_processes_give_the_same_stream(records):
    reference = _take(data.TrainLoader(records, VIEWS, 20, 4, seed=2), 3)
    with data.TrainLoader(records, VIEWS, 20, 4, seed=2, num_workers=2) as loader:
        got = _take(loader, 3)
        state = loader.get_state()
    json.dumps(state)
    for x, y in zip(reference, got, strict=True):
        np.testing.assert_array_equal(x["images"]["clip"], y["images"]["clip"])


def test_process_shards_are_disjoint_and_complete(records):
    global_batch = 6
    loaders = [data.TrainLoader(records, VIEWS, 20, global_batch, seed=0, process_index=p,
                                process_count=3) for p in range(3)]
    shares = [_epoch_paths(loader, records) for loader in loaders]
    flat = [i for share in shares for i in share]
    steps = len(records) // global_batch
    assert all(len(s) == steps * 2 for s in shares)
    assert len(set(flat)) == len(flat) == steps * global_batch
    order = data.pipeline.epoch_permutation(len(records), 0, 0)
    for step in range(steps):  # global batch k = shares of the processes in process order
        rows = [i for s in shares for i in s[2 * step: 2 * step + 2]]
        assert rows == list(order[step * global_batch:(step + 1) * global_batch])
    batch = next(loaders[1])
    assert batch["images"]["clip"].shape[0] == 2
    with pytest.raises(ValueError, match="multiple of process_count"):
        data.TrainLoader(records, VIEWS, 20, 4, seed=0, process_count=3)


def test_last_partial_batch_kept_with_drop_last_false(records):
    """drop_last=False (PyTorch DataLoader's default): every record once an epoch, the last step
    holds the remainder; with several processes each takes its share of it."""
    records = records[: len(records) // 2 * 2]          # an even count: an even remainder
    n = len(records)
    global_batch = next(g for g in (4, 6, 8, 10) if n % g and n % g % 2 == 0)
    remainder = n % global_batch
    kept = data.TrainLoader(records, VIEWS, 20, global_batch, seed=0, drop_last=False)
    assert kept.steps_per_epoch == n // global_batch + 1
    sizes = [len(next(kept)["labels"]) for _ in range(kept.steps_per_epoch + 1)]
    assert sizes == [global_batch] * (kept.steps_per_epoch - 1) + [remainder, global_batch]
    assert sorted(_epoch_paths(kept, records)) == list(range(n))    # each record once an epoch
    assert data.TrainLoader(records, VIEWS, 20, global_batch, seed=0).steps_per_epoch == \
        n // global_batch
    halves = [data.TrainLoader(records, VIEWS, 20, global_batch, seed=0, process_index=p,
                               process_count=2, drop_last=False) for p in range(2)]
    paths = [i for loader in halves for i in _epoch_paths(loader, records)]
    assert sorted(paths) == list(range(n))
    last = [len(_epoch_paths(loader, records)) - (loader.steps_per_epoch - 1) * global_batch // 2
            for loader in halves]
    assert last == [remainder // 2] * 2


def test_eval_batches_order_padding_and_sharding(records):
    subset = records[:7]
    batches = list(data.eval_batches(subset, VIEWS, 20, batch_size=4))
    assert len(batches) == 2
    assert batches[1]["valid"].tolist() == [True, True, True, False]
    paths = [p for b in batches for p, v in zip(b["image_path"], b["valid"], strict=True) if v]
    assert paths == [r.image_path for r in subset]
    assert batches[0]["native_size"].tolist() == [[32, 32]] * 4
    assert batches[1]["native_size"][3].tolist() == [0, 0]
    assert batches[1]["class_name"][3] == "" and batches[1]["mask_path"][3] == ""
    for b in batches:
        for m, r in zip(b["mask_path"], b["valid"], strict=True):
            assert r or m == ""
    shards = [list(data.eval_batches(subset, VIEWS, 20, 4, process_index=p, process_count=2))
              for p in range(2)]
    assert [len(s) for s in shards] == [2, 2]
    merged = [p for k in range(2) for s in shards
              for p, v in zip(s[k]["image_path"], s[k]["valid"], strict=True) if v]
    assert merged == [r.image_path for r in subset]
    np.testing.assert_array_equal(shards[1][0]["images"]["clip"][:2],
                                  batches[0]["images"]["clip"][2:])


def test_place_batch(records):
    batch = next(data.TrainLoader(records, VIEWS, 20, 4, seed=0))
    mesh = jax.make_mesh((1,), ("data",))
    out = devices.place_batch(batch, mesh)
    assert set(out) == {"images", "masks", "labels"}
    assert isinstance(out["images"]["clip"], jax.Array)
    np.testing.assert_array_equal(np.asarray(out["masks"]), batch["masks"])
    assert out["labels"].sharding.spec == jax.sharding.PartitionSpec("data")


def test_high_bit_depth_image_through_pipeline(tmp_path):
    gray = fx.image_array(0, gray=True)
    fx.save(tmp_path / "c/good/0.png", gray)
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "c/good/1.png")
    recs = data.load_index("folder", tmp_path)
    batch = next(data.eval_batches(recs, {"v": ImageView(8, (0, 0, 0), (1, 1, 1))}, 8, 2))
    np.testing.assert_allclose(batch["images"]["v"][0], batch["images"]["v"][1], atol=2 / 255)


def test_place_batch_keeps_method_keys_and_bf16_drops_strings():
    import ml_dtypes

    mesh = jax.make_mesh((1,), ("data",))
    feats = (np.arange(12, dtype=np.float32).reshape(2, 6) / 7).astype(ml_dtypes.bfloat16)
    host = {"labels": np.array([0, 1], np.int32), "text": {"ids": np.ones((2, 5), np.int32)},
            "features": feats, "class_name": np.array(["a", "b"]), "valid": np.array([True, False])}
    out = devices.place_batch(host, mesh)
    assert set(out) == {"labels", "text", "features", "valid"}
    assert out["features"].dtype == jax.numpy.bfloat16
    np.testing.assert_array_equal(np.asarray(out["features"]).view(np.uint16), feats.view(np.uint16))
    assert out["text"]["ids"].shape == (2, 5)
