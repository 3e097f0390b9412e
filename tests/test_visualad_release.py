"""VisualAD's paper variants reproduce the official release's training (GitHub 7HHHHH/VisualAD,
`scripts/CLIP.sh` + `train.py`): facts read from the release's code and checked by running it
(learning rates with torch's own CosineAnnealingLR): the numbers below are the release's."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zsad_jax import config_lib, data, losses, methods
from zsad_jax.training import optimizer

TOKENS = ("head/anomaly_token", "head/normal_token")
SLOW = ("head/final_norm/scale", "head/sca_6/q_proj/kernel", "head/saf_24/fc1/kernel")

# The release's lr of each group at each epoch (CosineAnnealingLR(T_max=epochs, eta_min=1e-4),
# scheduler.step() once per epoch): MVTec -> VisA, 2 epochs of 216 steps; VisA -> MVTec, 1 of 271.
RELEASE_LRS = {
    "mvtec_to_visa": (216, {0: (1e-3, 1e-4), 1: (5.5e-4, 1e-4)}),
    "visa_to_mvtec": (271, {0: (1e-3, 1e-4)}),
}


@pytest.mark.parametrize("variant", sorted(RELEASE_LRS))
def test_release_learning_rate_of_every_group_at_every_epoch(variant):
    config = config_lib.load_config(f"visualad.py:{variant}")
    steps_per_epoch, epochs = RELEASE_LRS[variant]
    assert config.train.epochs == len(epochs)
    total = steps_per_epoch * config.train.epochs
    _, schedules = optimizer.make_optimizer(config.optim, [*TOKENS, *SLOW], total, steps_per_epoch)
    labels, _ = optimizer.group_labels([*TOKENS, *SLOW], config.optim.lr_groups, config.optim.lr)
    for epoch, (token_lr, slow_lr) in epochs.items():
        for step in (epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch - 1):   # whole epoch
            for path in TOKENS:
                np.testing.assert_allclose(float(schedules[labels[path]](step)), token_lr, rtol=1e-6)
            for path in SLOW:
                np.testing.assert_allclose(float(schedules[labels[path]](step)), slow_lr, rtol=1e-6)


def test_the_paper_reading_decays_each_group_per_step():
    config = config_lib.load_config("visualad.py:paper_reading")
    _, schedules = optimizer.make_optimizer(config.optim, [*TOKENS, *SLOW], 100, 100)
    labels, _ = optimizer.group_labels([*TOKENS, *SLOW], config.optim.lr_groups, config.optim.lr)
    slow = schedules[labels[SLOW[0]]]
    np.testing.assert_allclose([float(slow(0)), float(slow(50)), float(slow(100))],
                               [1e-4, 1e-5 + 0.9e-4 * 0.5, 1e-5], rtol=1e-5)


def test_each_token_gradient_is_clipped_on_its_own():
    config = config_lib.load_config("visualad.py")
    grads = {"head/anomaly_token": jnp.full((4,), 3.0), "head/normal_token": jnp.full((4,), 0.1),
             "head/sca_6/res_scale": jnp.full((1,), 50.0)}
    tx = optimizer.clip_each(config.optim.clip_each_norm, config.optim.clip_each)
    out, _ = tx.update(grads, tx.init(grads))
    # torch clip_grad_norm_([p], 1.0): factor 1 / (norm + 1e-6) when the norm is above 1.
    np.testing.assert_allclose(out["head/anomaly_token"], 3.0 / (6.0 + 1e-6), rtol=1e-6)
    np.testing.assert_array_equal(out["head/normal_token"], grads["head/normal_token"])    # 0.2
    np.testing.assert_array_equal(out["head/sca_6/res_scale"], grads["head/sca_6/res_scale"])
    # In the optimizer chain: before AdamW, so the update direction follows the clipped gradient.
    tx, _ = optimizer.make_optimizer(config.optim, list(grads), 10, 10)
    assert isinstance(tx, optax.GradientTransformation)


def test_last_partial_batch_is_kept_like_the_release():
    config = config_lib.load_config("visualad.py")
    assert config.data.drop_last is False and config.seed == 111
    for count, steps in ((2162, 271), (1725, 216)):          # VisA test, MVTec-AD test
        records = [data.Record(f"/x/{i}.png", None, 0, "c", "good", "visa") for i in range(count)]
        loader = data.TrainLoader(records, {}, 8, config.data.batch_size, seed=0,
                                  drop_last=config.data.drop_last)
        assert loader.steps_per_epoch == steps


def test_smoothed_focal_is_the_releases():
    """FocalLoss(smooth=1e-5) on [1 - p, p]: one-hot clamped to [1e-5, 1 - 1e-5], pt + 1e-5."""
    p = np.array([[0.9, 0.2], [0.5, 1.0]], np.float32)[None]
    y = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)[None]
    on, off = np.clip(y, 1e-5, 1 - 1e-5), np.clip(1 - y, 1e-5, 1 - 1e-5)
    pt = on * p + off * (1 - p) + 1e-5
    want = np.mean(-((1 - pt) ** 2) * np.log(pt))
    np.testing.assert_allclose(float(losses.smoothed_focal_loss(jnp.asarray(p), jnp.asarray(y))),
                               want, rtol=1e-6)
    assert abs(float(losses.focal_loss(jnp.asarray(p), jnp.asarray(y))) - want) > 1e-6 * want


def test_final_norm_trained_but_evaluated_with_the_backbones():
    """The release trains ln_post (0.1 x lr) and its test.py evaluates with CLIP's own."""
    config = config_lib.load_config("visualad.py:demo")
    method = methods.build(config)
    assert method.model_cfg.train_final_norm and method.model_cfg.eval_final_norm == "backbone"
    assert not method.model_cfg.learn_token_pos
    params = method.init(jax.random.key(0))
    head = dict(params["head"])
    head["final_norm"] = jax.tree_util.tree_map(lambda x: x + 0.5, head["final_norm"])
    moved = {**params, "head": head}
    images = jax.random.normal(jax.random.key(1), (1, 64, 64, 3))
    batch = {"images": {"vit": images}, "masks": jnp.zeros((1, 64, 64)), "labels": jnp.array([1])}
    maps, _ = method.anomaly_outputs(params, batch)
    maps_moved, _ = method.anomaly_outputs(moved, batch)
    np.testing.assert_array_equal(maps, maps_moved)                  # evaluation: CLIP's ln_post
    train_maps, *_ = method.forward(params, images, training=True)
    train_moved, *_ = method.forward(moved, images, training=True)
    assert not np.allclose(train_maps, train_moved)                  # training: the trained copy
    trained = methods.build(config_lib.load_config("visualad.py:demo",
                                                   {"model.eval_final_norm": "trained"}))
    assert not np.allclose(trained.anomaly_outputs(moved, batch)[0], maps)
