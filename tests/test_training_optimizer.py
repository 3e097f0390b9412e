"""Optimizer pieces: schedules, per-group learning rates, the trainable/frozen split."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zsad_jax import config_lib
from zsad_jax.training import optimizer, state


def _optim(**kw):
    c = config_lib.base_config().optim
    c.update(kw)
    return c


def test_cosine_with_floor_and_warmup():
    sched = optimizer.make_schedule(_optim(schedule="cosine", end_lr_factor=0.1, warmup_steps=10),
                                    peak_lr=1e-3, total_updates=110)
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(float(sched(5)), 0.5e-3, rtol=1e-6)
    np.testing.assert_allclose(float(sched(10)), 1e-3, rtol=1e-6)
    # halfway through the decay: floor + (peak - floor) * (1 + cos(pi/2)) / 2
    np.testing.assert_allclose(float(sched(60)), 1e-4 + 0.9e-3 * 0.5, rtol=1e-5)
    np.testing.assert_allclose(float(sched(110)), 1e-4, rtol=1e-6)
    np.testing.assert_allclose(float(sched(500)), 1e-4, rtol=1e-6)


def test_polynomial_decay():
    sched = optimizer.make_schedule(_optim(schedule="polynomial", power=2.0, end_lr_factor=0.0),
                                    peak_lr=2.0, total_updates=10)
    for t in (0, 3, 7, 10):
        np.testing.assert_allclose(float(sched(t)), 2.0 * (1 - t / 10) ** 2, rtol=1e-6)


def test_bad_schedule_and_groups_named():
    with pytest.raises(ValueError, match="schedule='linear'"):
        optimizer.make_schedule(_optim(schedule="linear"), 1.0, 10)
    with pytest.raises(ValueError, match="'prompt'"):
        optimizer.parse_lr_groups(["prompt"])
    with pytest.raises(ValueError, match="not a learning rate"):
        optimizer.parse_lr_groups(["prompt=fast"])


def test_lr_groups_first_match_wins():
    labels, rates = optimizer.group_labels(
        ["prompt/ctx", "vae/enc/kernel", "proj/kernel", "head/bias"],
        ["prompt=5e-4", "vae|proj=1e-4", "prompt|head=9.0"], default_lr=1e-3)
    assert labels == {"prompt/ctx": "group0", "vae/enc/kernel": "group1",
                      "proj/kernel": "group1", "head/bias": "group2"}
    assert rates == {"group0": 5e-4, "group1": 1e-4, "group2": 9.0}


def test_group_learning_rates_are_applied():
    # SGD-like check through AdamW's first step: |update| = lr for every coordinate.
    params = {"prompt/a": jnp.ones(3), "other/b": jnp.ones(2)}
    tx, _ = optimizer.make_optimizer(
        _optim(lr=1e-2, schedule="constant", lr_groups=("prompt=5e-4",)), list(params), 10)
    grads = {"prompt/a": jnp.full(3, 0.3), "other/b": jnp.full(2, -2.0)}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(np.abs(updates["prompt/a"]), 5e-4, rtol=1e-4)
    np.testing.assert_allclose(np.abs(updates["other/b"]), 1e-2, rtol=1e-4)


def test_accumulation_uses_mean_gradient_and_clipping():
    params = {"w": jnp.zeros(2)}
    tx, _ = optimizer.make_optimizer(
        _optim(lr=1.0, schedule="constant", b1=0.0, b2=0.0, eps=1e-12, accum_steps=2,
               grad_clip_norm=1.0), ["w"], 10)
    s = tx.init(params)
    u1, s = tx.update({"w": jnp.array([3.0, 0.0])}, s, params)
    np.testing.assert_array_equal(u1["w"], 0.0)            # no update mid-accumulation
    u2, s = tx.update({"w": jnp.array([1.0, 4.0])}, s, params)
    # mean grad (2, 2), clipped to norm 1 -> Adam with b1=b2=0 gives sign: -lr * (1, 1)
    np.testing.assert_allclose(u2["w"], [-1.0, -1.0], rtol=1e-6)


def test_split_merge_and_optimizer_state_only_trainable():
    params = {"backbone": {"w": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 1)),
                                                              "bias": jnp.zeros(1)}}
    mask = {"backbone": {"w": False}, "head": {"kernel": True, "bias": True}}
    trainable, frozen, layout = state.split_params(params, mask)
    assert sorted(trainable) == ["head/bias", "head/kernel"] and list(frozen) == ["backbone/w"]
    merged = state.merge_params(trainable, frozen, layout)
    assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(params)
    tx, _ = optimizer.make_optimizer(_optim(), layout.trainable_paths, 10)
    st = state.init_state(trainable, tx, jax.random.PRNGKey(0), ("a",))
    paths = {"/".join(str(getattr(k, "key", k)) for k in p)
             for p, _ in jax.tree_util.tree_flatten_with_path(st["opt_state"])[0]}
    assert all("backbone" not in p for p in paths)
    assert any("head/kernel" in p for p in paths)
    with pytest.raises(ValueError, match="no parameter as trainable"):
        state.split_params(params, jax.tree_util.tree_map(lambda _: False, params))


def test_nan_guard_keeps_last_good_state():
    from zsad_jax.devices import make_mesh
    from zsad_jax.training import step as step_lib

    class Quadratic:
        def loss(self, params, batch, rng):
            err = (params["w"] - batch["x"]).mean()
            return err ** 2, {"err": err}

    params = {"w": jnp.ones(4)}
    trainable, frozen, layout = state.split_params(params, {"w": True})
    tx = optax.sgd(0.1)
    st = state.init_state(trainable, tx, jax.random.PRNGKey(0), ("err",))
    fn = step_lib.make_train_step(Quadratic(), layout, tx, ("err",), make_mesh(), False)
    st, _ = fn(st, frozen, {"x": jnp.zeros(4)})
    good = np.asarray(st["params"]["w"])
    st, _ = fn(st, frozen, {"x": jnp.array([0.0, np.inf, 0.0, 0.0])})
    st, _ = fn(st, frozen, {"x": jnp.zeros(4)})             # no-op after the first bad step
    np.testing.assert_array_equal(st["params"]["w"], good)
    assert int(st["nonfinite_step"]) == 1
    assert np.asarray(st["nonfinite_terms"]).tolist() == [True, True, True]
    assert int(st["step"]) == 3
