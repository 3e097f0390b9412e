"""SSVP from the frozen-feature cache: the same loss / outputs as from images, and a short cached
training run through the loop (tiny demo config)."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest

from zsad_jax import config_lib, methods
from zsad_jax.train import run_training as train


def _batch(method, seed=0, size=4):
    rng = np.random.default_rng(seed)
    masks = (rng.random((size, method.mask_size, method.mask_size)) > 0.8).astype(np.float32)
    host = {"images": {name: rng.normal(size=(size, v.size, v.size, 3)).astype(np.float32)
                       for name, v in method.views.items()},
            "masks": masks, "labels": np.array([0, 1, 0, 1][:size], np.int32),
            "class_name": np.array(["bottle", "metal_nut", "candle", "bottle"][:size])}
    return method.prepare_batch(host)


@pytest.mark.parametrize("variant", ["demo", "demo,A"])      # with DINO (HSVS) / CLIP only
def test_loss_and_outputs_from_features_equal_the_image_path(variant):
    method = methods.build(config_lib.load_config(f"ssvp.py:{variant}"))
    assert method.supports_feature_cache
    params = method.init(jax.random.PRNGKey(0))
    batch = _batch(method)
    rng = jax.random.PRNGKey(3)
    features = jax.jit(method.frozen_features)(params, batch)
    assert ("dino_local" in features) == (variant == "demo")
    assert "text" not in features                           # class words are not cached
    direct, direct_terms = jax.jit(method.loss)(params, batch, rng)
    cached, cached_terms = jax.jit(method.loss_from_features)(params, features, batch, rng)
    np.testing.assert_allclose(cached, direct, rtol=1e-6, atol=1e-6)
    assert cached_terms.keys() == direct_terms.keys()
    for name in direct_terms:
        np.testing.assert_allclose(cached_terms[name], direct_terms[name], rtol=1e-6, atol=1e-6)
    # The class words matter: other words, another loss (the text is taken from the batch).
    other = {**batch, "text": _batch(method, size=4)["text"]}
    other["text"] = {"ids": other["text"]["ids"][::-1], "eot": other["text"]["eot"][::-1]}
    moved, _ = jax.jit(method.loss_from_features)(params, features, other, rng)
    assert abs(float(moved) - float(direct)) > 1e-4 * abs(float(direct))

    amap, score = jax.jit(method.anomaly_outputs)(params, batch)
    amap_f, score_f = jax.jit(method.outputs_from_features)(params, features, batch)
    np.testing.assert_allclose(amap_f, amap, atol=1e-6)
    np.testing.assert_allclose(score_f, score, atol=1e-6)

    # What the loop trains on: features stored in bf16, cast back to float32.
    rounded = jax.tree_util.tree_map(
        lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), features)
    from_disk, _ = jax.jit(method.loss_from_features)(params, rounded, batch, rng)
    np.testing.assert_allclose(from_disk, direct, rtol=2e-2)


def test_outputs_from_features_without_text_names_the_missing_key():
    method = methods.build(config_lib.load_config("ssvp.py:demo"))
    params = jax.eval_shape(method.init, jax.random.PRNGKey(0))        # shapes only
    features = jax.eval_shape(method.frozen_features, params, _batch(method, size=2))
    without = {k: v for k, v in _batch(method, size=2).items() if k != "text"}
    with pytest.raises(ValueError, match="'text'"):
        jax.eval_shape(method.outputs_from_features, params, features, without)


@pytest.mark.parametrize("key, value", [("model.clip_projection", "learned"),
                                        ("model.dino_norm", "raw"), ("model.global_tokens", "layers")])
def test_cache_key_follows_what_the_features_depend_on(key, value):
    default = methods.build(config_lib.load_config("ssvp.py:demo"))
    other = methods.build(config_lib.load_config("ssvp.py:demo", {key: value}))
    assert default.feature_cache_key() != other.feature_cache_key()


def test_cached_training_run(tmp_path):
    config = config_lib.load_config("ssvp.py:demo", {
        "train.num_steps": 3, "train.feature_cache": True, "train.eval_every": -1,
        "train.log_every": 1, "train.cache_dir": str(tmp_path / "cache"), "eval.num_heatmaps": 0})
    method = methods.build(config)
    init_head = method.init(jax.random.PRNGKey(config.seed))["head"]
    result = train(config, tmp_path / "run", progress=False)
    assert result.step == 3
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if r["kind"] == "train"]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    (cache,) = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    meta = json.loads((cache / "meta.json").read_text())
    grid, layers = method.grid, len(method.clip.layers)
    shapes = sorted(tuple(leaf["shape"]) for leaf in meta["leaves"])
    clip_dim, dino_dim = method.clip.arch.embed_dim, method.dino.arch.width
    # Global tokens: one per backbone (CLIP's image embedding, DINO's class token).
    assert shapes == sorted([(layers, grid * grid, clip_dim), (1, clip_dim),
                             (layers, grid * grid, dino_dim), (1, dino_dim)])
    # The prompts were trained from the cache (gradients pass the frozen text tower).
    assert not np.allclose(result.params["head/prompts/state"],
                           np.asarray(init_head["prompts"]["state"]))
