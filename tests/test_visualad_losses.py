"""VisualAD scoring and loss terms on hand-checked cases (zsad_jax/methods/visualad/losses.py,
zsad_jax.ops.topk_mean)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from zsad_jax import ops
from zsad_jax.losses import dice_loss, focal_loss
from zsad_jax.methods.visualad import losses as vl


def _tokens_at_angle(degrees, batch=1):
    a = np.deg2rad(degrees)
    t_a = np.tile([[3.0, 0.0, 0.0]], (batch, 1))
    t_n = np.tile([[0.5 * math.cos(a), 0.5 * math.sin(a), 0.0]], (batch, 1))
    return jnp.asarray(t_a), jnp.asarray(t_n)


@pytest.mark.parametrize("degrees", [120.5, 135.0, 150.0, 180.0])
def test_margin_term_is_zero_beyond_120_degrees(degrees):
    assert float(vl.token_margin_loss(*_tokens_at_angle(degrees))) == 0.0


@pytest.mark.parametrize("degrees,expected", [(0.0, 1.5), (90.0, 0.5), (60.0, 1.0),
                                              (110.0, 0.5 + math.cos(math.radians(110)))])
def test_margin_term_below_120_degrees(degrees, expected):
    loss = vl.token_margin_loss(*_tokens_at_angle(degrees, 3))
    np.testing.assert_allclose(float(loss), expected, atol=1e-6)


def test_topk_mean_hand_made_maps():
    m = jnp.arange(100, dtype=jnp.float32).reshape(1, 10, 10)
    m = jnp.concatenate([m, -m], axis=0)                  # second map: maximum 0 at (0, 0)
    np.testing.assert_allclose(ops.topk_mean(m, 0.01), [99.0, 0.0])          # k = 1
    np.testing.assert_allclose(ops.topk_mean(m, 0.05), [97.0, -2.0])         # k = 5
    np.testing.assert_allclose(ops.topk_mean(m, 0.011), [98.5, -0.5])        # k = ceil(1.1) = 2
    np.testing.assert_allclose(ops.topk_mean(m, 1.0), [49.5, -49.5])


def test_topk_count_at_518_and_bad_ratio():
    assert ops.topk_count(518 * 518, 0.01) == 2684             # ceil(2683.24)
    assert ops.topk_count(10, 0.01) == 1
    with pytest.raises(ValueError, match="ratio"):
        ops.topk_count(10, 0.0)


def test_contrastive_difference_hand_case():
    patches = jnp.asarray([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-5.0, 0.0]]])
    t_a = jnp.asarray([[2.0, 0.0]])
    t_n = jnp.asarray([[0.0, 3.0]])
    np.testing.assert_allclose(vl.contrastive_difference(patches, t_a, t_n), [[1.0, -1.0, 0.0, -1.0]],
                               atol=1e-6)


def test_losses_hand_case():
    rng = np.random.default_rng(0)
    maps = jnp.asarray(rng.normal(size=(3, 2, 10, 10)), jnp.float32)        # (L, B, M, M)
    masks = jnp.asarray(rng.random((2, 10, 10)) > 0.7, jnp.float32)
    labels = jnp.asarray([0, 1])
    seg, parts = vl.segmentation_loss(maps, masks)
    probs = 1 / (1 + np.exp(-np.asarray(maps)))
    focal = sum(float(focal_loss(jnp.asarray(probs[i]), masks)) for i in range(3))
    dice = sum(float(dice_loss(jnp.asarray(probs[i]), masks)) for i in range(3))
    np.testing.assert_allclose([float(parts["seg_focal"]), float(parts["seg_dice"]), float(seg)],
                               [focal, dice, focal + dice], rtol=1e-5)
    # L_cls: BCE on the top-1% (k = 1) of the summed map.
    top = np.asarray(maps).sum(0).reshape(2, -1).max(1)
    y = np.asarray([0.0, 1.0])
    bce = np.mean(np.log1p(np.exp(-top)) * y + np.log1p(np.exp(top)) * (1 - y))
    np.testing.assert_allclose(float(vl.classification_loss(maps, labels)), bce, rtol=1e-5)
    t_a, t_n = _tokens_at_angle(90.0, 2)
    total, terms = vl.visualad_loss(maps, masks, labels, t_a, t_n)
    np.testing.assert_allclose(float(total), bce + focal + dice + 0.5, rtol=1e-5)
    only_ctr, _ = vl.visualad_loss(maps, masks, labels, t_a, t_n, use_seg=False, use_cls=False)
    np.testing.assert_allclose(float(only_ctr), 0.5, rtol=1e-6)
    assert set(terms) == {"cls_bce", "ctr", "seg_focal", "seg_dice"}
