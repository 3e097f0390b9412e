"""The train loop on the reference method + synthetic data: learning, resume, NaN guard, config
checks, missing inputs, feature cache, the CLI end to end."""

import json
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from zsad_jax import config_lib, data, runs
from zsad_jax.training import checkpoint, loop

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return str(data.make_synthetic(tmp_path_factory.mktemp("synthetic") / "synthetic", seed=0))


def probe_config(synthetic_root, **overrides):
    """The reference method, no evaluation unless asked."""
    base = {"data.roots.synthetic": synthetic_root, "train.eval_every": -1,
            "train.log_every": 1, "eval.num_heatmaps": 0}
    return config_lib.load_config("linear_probe.py:demo", {**base, **overrides})


def _same(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


# ---- learning, through the CLI (also: checkpoint, metrics, TensorBoard, heatmaps) ----------
def test_cli_trains_reference_method_and_lifts_heldout_pixel_auroc(tmp_path, synthetic_root):
    workdir = tmp_path / "run"
    overrides = [f"--config.data.roots.synthetic={synthetic_root}", "--config.train.num_steps=100",
                 "--config.train.eval_every=50", "--config.train.feature_cache=True",
                 "--config.model.context_deviation=True", "--config.loss.balanced_pixel_bce=True",
                 "--config.eval.num_heatmaps=1", "--config.train.log_every=1"]
    r = subprocess.run([sys.executable, "-m", "zsad_jax.train", "--config", "linear_probe.py:demo",
                        "--workdir", str(workdir), "--noprogress", *overrides],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # Plain logs: no absl prefixes, no escape codes of bars; a metrics table at the end.
    assert not re.search(r"^[IWE]\d{4} ", r.stderr, flags=re.M) and "\x1b[" not in r.stderr
    assert "| **Mean** |" in r.stdout and "step_100/synthetic (table.md, report.html)" in r.stdout
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in records if x["kind"] == "train"]
    assert len(losses) == 100
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.05
    evals = [x for x in records if x["kind"] == "eval"]
    assert [x["step"] for x in evals] == [50, 100]
    final = json.loads((workdir / "eval" / "step_100" / "synthetic" / "metrics.json").read_text())
    assert final["mean"]["pixel_auroc"] > 0.75, final["mean"]     # held-out classes
    assert final["checkpoint"]["step"] == 100 and len(final["config_sha256"]) == 64
    assert (workdir / "eval" / "step_50" / "synthetic" / "metrics.json").exists()
    assert list((workdir / "eval" / "step_100" / "synthetic" / "heatmaps").rglob("*.png"))
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    assert checkpoint.final_step(workdir) == 100
    kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert len(kept) == 3 and kept[-1] == 100            # one per epoch end, keep=3
    # load_run: the last checkpoint (the zero-shot protocol selects nothing on the targets).
    run = runs.load_run(workdir)
    assert run.config.train.num_steps == 100 and run.config.model.context_deviation is True
    assert run.checkpoint.step == 100 and run.checkpoint.kind == "checkpoints"
    assert run.params["head"]["score"]["kernel"].shape == (32, 1)
    assert not (workdir / "best").exists()


# ---- resume equivalence (also reproducibility: two straight runs are equal) --------------
@pytest.mark.parametrize("feature_cache", [False, True])
def test_resume_equals_straight_run(tmp_path, synthetic_root, feature_cache):
    config = probe_config(synthetic_root, **{
        "train.num_steps": 6, "train.ckpt_every": 3, "train.feature_cache": feature_cache,
        "optim.accum_steps": 2, "optim.grad_clip_norm": 0.5, "optim.warmup_steps": 1,
        "optim.lr_groups": ("kernel=3e-2",), "optim.weight_decay": 0.01})
    straight = loop.train(config, tmp_path / "a", progress=False)
    first = loop.train(config, tmp_path / "b", progress=False, stop_at_step=3)
    assert first.step == 3 and not _same(first.params, straight.params)
    resumed = loop.train(config, tmp_path / "b", progress=False)
    assert resumed.step == 6
    assert _same(straight.params, resumed.params)
    assert _same(straight.opt_state, resumed.opt_state)
    if not feature_cache:
        again = loop.train(config, tmp_path / "c", progress=False)
        assert _same(straight.params, again.params) and _same(straight.opt_state, again.opt_state)


def test_frozen_params_untouched_and_not_in_optimizer_state(tmp_path, synthetic_root):
    config = probe_config(synthetic_root, **{"train.num_steps": 3})
    result = loop.train(config, tmp_path / "run", progress=False)
    assert sorted(result.params) == ["head/score/bias", "head/score/kernel"]
    leaves = jax.tree_util.tree_flatten_with_path(result.opt_state)[0]
    assert not [p for p, _ in leaves if "backbone" in jax.tree_util.keystr(p)]
    _, method, params, _ = runs.load_run(tmp_path / "run", "latest")
    fresh = method.init(jax.random.PRNGKey(config.seed))
    assert _same(params["backbones"], fresh["backbones"])             # bit-identical
    assert not _same(params["head"], fresh["head"])
    np.testing.assert_array_equal(params["head"]["score"]["kernel"],
                                  result.params["head/score/kernel"])


# ---- NaN guard ------------------------------------------------------------------------------
def test_nan_in_a_batch_stops_with_named_step_and_term(tmp_path, synthetic_root, monkeypatch):
    class PoisonedLoader(data.TrainLoader):
        served = 0

        def __next__(self):
            batch = super().__next__()
            PoisonedLoader.served += 1
            if PoisonedLoader.served == 4:          # the 4th batch: a NaN in one mask pixel
                batch["masks"] = np.array(batch["masks"])
                batch["masks"][0, 3, 3] = np.nan
            return batch

    monkeypatch.setattr(data, "TrainLoader", PoisonedLoader)
    config = probe_config(synthetic_root, **{"train.num_steps": 8, "train.ckpt_every": 2,
                                             "train.log_every": 3})
    workdir = tmp_path / "run"
    with pytest.raises(loop.NonFiniteError) as err:
        loop.train(config, workdir, progress=False)
    message = str(err.value)
    assert "train step 4" in message and "seg_bce" in message and "grads" in message
    assert "cls_bce" not in message                      # the labels were fine
    assert "step 2) is intact" in message
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2]
    params = runs.load_run(workdir, "latest").params
    assert np.isfinite(params["head"]["score"]["kernel"]).all()


# ---- config checks and missing inputs -------------------------------------------------------
def test_resume_refuses_changed_config_unless_allowed(tmp_path, synthetic_root):
    config = probe_config(synthetic_root, **{"train.num_steps": 2})
    loop.train(config, tmp_path, progress=False)
    changed = probe_config(synthetic_root, **{"train.num_steps": 2, "optim.lr": 0.5})
    with pytest.raises(checkpoint.ConfigMismatchError, match=r"optim.lr: 0.01 -> 0.5"):
        loop.train(changed, tmp_path, progress=False)
    changed.train.allow_config_change = True
    assert loop.train(changed, tmp_path, progress=False).step == 2   # resumed, already done


def test_missing_weights_and_data_reported_before_compiling(tmp_path, monkeypatch):
    from zsad_jax.training import step as step_lib

    monkeypatch.setattr(step_lib, "make_train_step", lambda *a, **k: pytest.fail("compiled"))
    config = config_lib.load_config("sgnet.py:demo", {
        "backbones.clip.weights": str(tmp_path / "weights" / "clip"),
        "data.protocol": "visa_to_mvtec", "data.data_dir": str(tmp_path / "datasets")})
    with pytest.raises(loop.MissingInputsError) as err:
        loop.train(config, tmp_path / "run", progress=False)
    message = str(err.value)
    assert str(tmp_path / "weights" / "clip") in message
    assert "python -m weights_conversion" in message
    assert "visa" in message.lower() and str(tmp_path / "datasets") in message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_missing_inputs_exit_code_and_message(tmp_path):
    r = subprocess.run([sys.executable, "-m", "zsad_jax.train", "--config", "sgnet.py:demo",
                        "--workdir", str(tmp_path / "run"),
                        f"--config.backbones.clip.weights={tmp_path / 'nowhere'}"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2
    assert "nothing was compiled" in r.stderr and str(tmp_path / "nowhere") in r.stderr


# ---- feature cache ------------------------------------------------------------------------
def test_feature_cache_is_reused_only_for_the_same_key(tmp_path, synthetic_root):
    cache_dir = tmp_path / "cache"
    config = probe_config(synthetic_root, **{"train.num_steps": 1, "train.feature_cache": True,
                                             "train.cache_dir": str(cache_dir)})
    loop.train(config, tmp_path / "a", progress=False)
    (first,) = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    leaf = np.load(first / "leaf_0.npy", mmap_mode="r")
    assert leaf.dtype == np.uint16                       # bf16 bit patterns on disk
    meta = json.loads((first / "meta.json").read_text())
    assert meta["leaves"][0]["stored"] == "bfloat16" and meta["num_records"] == leaf.shape[0]
    stamp = (first / "leaf_0.npy").stat().st_mtime_ns
    loop.train(config, tmp_path / "b", progress=False)   # same key: hit, not rewritten
    assert [p.name for p in cache_dir.iterdir() if not p.name.startswith(".")] == [first.name]
    assert (first / "leaf_0.npy").stat().st_mtime_ns == stamp
    reseeded = probe_config(synthetic_root, **{"train.num_steps": 1, "train.feature_cache": True,
                                               "train.cache_dir": str(cache_dir), "seed": 1})
    loop.train(reseeded, tmp_path / "c", progress=False)  # other frozen weights: other cache
    assert len([p for p in cache_dir.iterdir() if not p.name.startswith(".")]) == 2


def _tiny_cache(directory, num=10):
    """A hand-made cache directory: leaf_0 (N, 3) bf16 with row i = i, int leaf_1 (N,) = 10 i."""
    import ml_dtypes

    from zsad_jax.training import feature_cache

    directory.mkdir()
    values = np.arange(num, dtype=np.float32)[:, None] * np.ones(3, np.float32)
    np.save(directory / "leaf_0.npy", values.astype(ml_dtypes.bfloat16).view(np.uint16))
    np.save(directory / "leaf_1.npy", np.arange(num, dtype=np.int32) * 10)
    np.save(directory / "masks.npy", np.zeros((num, 2, 2), np.uint8))
    np.save(directory / "labels.npy", np.arange(num, dtype=np.int32) % 2)
    (directory / "meta.json").write_text(json.dumps({"key": {}, "num_records": num, "leaves": [
        {"shape": [3], "dtype": "float32", "stored": "bfloat16"},
        {"shape": [], "dtype": "int32", "stored": "int32"}]}))
    treedef = jax.tree_util.tree_structure({"a": 0, "b": 0})
    return feature_cache.FeatureCache(directory, treedef)


def test_cached_loader_rows_order_and_prefetch(tmp_path):
    from zsad_jax.training.feature_cache import CachedLoader

    cache = _tiny_cache(tmp_path / "cache")
    rows = cache.rows(np.array([7, 2, 9, 2]))                   # any order, repeats kept
    np.testing.assert_array_equal(rows["features"]["a"][:, 0].astype(np.float32), [7, 2, 9, 2])
    np.testing.assert_array_equal(rows["features"]["b"], [70, 20, 90, 20])
    np.testing.assert_array_equal(rows["labels"], [1, 0, 1, 0])
    names = [f"class{i}" for i in range(10)]
    plain = CachedLoader(cache, 4, seed=3, class_names=names, prefetch=False)
    ahead = CachedLoader(cache, 4, seed=3, class_names=names, prefetch=True)
    expected = [next(plain) for _ in range(5)]                  # 2 steps an epoch: 3 epochs
    got = [next(ahead) for _ in range(3)]
    state = ahead.get_state()
    assert state == {"position": 3}
    ahead.set_state({"position": 1})                            # rewind: the prefetch is dropped
    got += [next(ahead) for _ in range(4)]
    ahead.close()
    for want, have in zip([*expected[:3], *expected[1:5]], got, strict=True):
        np.testing.assert_array_equal(have["features"]["b"], want["features"]["b"])
        np.testing.assert_array_equal(have["class_name"], want["class_name"])
        assert [f"class{v // 10}" for v in have["features"]["b"]] == list(have["class_name"])
    assert not _same(expected[0]["features"], expected[2]["features"])   # reshuffled per epoch


# ---- method-specific batch keys reach the loss --------------------------------------------
@pytest.mark.parametrize("feature_cache", [False, True])
def test_keys_added_by_prepare_batch_reach_the_loss(tmp_path, synthetic_root, monkeypatch,
                                                    feature_cache):
    from zsad_jax import methods
    from zsad_jax.methods.linear_probe import LinearProbe

    seen = []

    class ProbeWithClassIds(LinearProbe):
        def prepare_batch(self, batch):
            out = super().prepare_batch(batch)
            out["class_id"] = np.asarray([len(c) for c in batch["class_name"]], np.int32)
            return out

        def loss_from_features(self, params, features, batch, rng):
            seen.append(batch["class_id"].shape)                    # traced once per compile
            loss, terms = super().loss_from_features(params, features, batch, rng)
            return loss + 0.0 * batch["class_id"].sum(), terms

    monkeypatch.setattr(methods, "build", lambda config: ProbeWithClassIds(config))
    config = probe_config(synthetic_root, **{"train.num_steps": 2,
                                             "train.feature_cache": feature_cache})
    assert loop.train(config, tmp_path, progress=False).step == 2
    assert seen and all(shape == (8,) for shape in seen)
