"""VisualAD scoring and loss terms (VisualAD, language-free ZSAD, CVPR 2026). Pure functions of arrays.

    L = L_cls + L_seg + L_ctr                                   (VisualAD, "Loss & Training")

* `contrastive_difference`: s_i = <p_i, t_a> - <p_i, t_n> on L2-normalized vectors.
* image score: `zsad_jax.ops.topk_mean`, the mean of the top 1% pixels (k = ceil(ratio * H * W)).
* `segmentation_loss`: sum over layers of focal + Dice on sigmoid(per-layer map).
* `classification_loss`: BCE with logits on topk_mean(sum of the layer maps).
* `token_margin_loss`: relu(cos(t_a, t_n) + margin), mean over the batch; margin 0.5 makes it zero
  once the tokens are >= 120 degrees apart (cos 120 deg = -0.5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zsad_jax.losses import bce_with_logits, dice_loss, focal_loss, smoothed_focal_loss
from zsad_jax.ops import l2_normalize, topk_mean

FOCAL = {"smoothed": smoothed_focal_loss, "clipped": focal_loss}

# Official release: `F.normalize(..., eps=1e-8)` before every cosine similarity.
NORMALIZE_EPS = 1e-8


def contrastive_difference(patches: jnp.ndarray, anomaly_token: jnp.ndarray,
                           normal_token: jnp.ndarray) -> jnp.ndarray:
    """Per-patch anomaly score, VisualAD "Anomaly Scoring":

        s_i = <p̄_i, t̄_a> - <p̄_i, t̄_n>         (bars: L2 normalization)

    patches (B, N, D), tokens (B, D) -> (B, N), values in [-2, 2].
    """
    p = l2_normalize(patches, NORMALIZE_EPS)
    t_a = l2_normalize(anomaly_token, NORMALIZE_EPS)
    t_n = l2_normalize(normal_token, NORMALIZE_EPS)
    return jnp.einsum("bnd,bd->bn", p, t_a) - jnp.einsum("bnd,bd->bn", p, t_n)


def segmentation_loss(layer_maps: jnp.ndarray, masks: jnp.ndarray,
                      focal: str = "clipped") -> tuple[jnp.ndarray, dict]:
    """L_seg = sum_l [focal(sigmoid(H_l), Y) + dice(sigmoid(H_l), Y)].

    layer_maps: (L, B, M, M) raw score maps (logits), masks (B, M, M) in {0, 1}.
    Returns (L_seg, {"seg_focal": sum of focal terms, "seg_dice": sum of dice terms}).
    """
    probs = jax.nn.sigmoid(layer_maps)
    focal_fn = FOCAL[focal]
    focal = sum(focal_fn(probs[i], masks) for i in range(probs.shape[0]))
    dice = sum(dice_loss(probs[i], masks) for i in range(probs.shape[0]))
    return focal + dice, {"seg_focal": focal, "seg_dice": dice}


def classification_loss(layer_maps: jnp.ndarray, labels: jnp.ndarray,
                        topk_ratio: float = 0.01) -> jnp.ndarray:
    """L_cls = BCE(topk_mean(sum_l H_l), label); layer_maps (L, B, M, M), labels (B,)."""
    return bce_with_logits(topk_mean(layer_maps.sum(axis=0), topk_ratio), labels)


def token_margin_loss(anomaly_token: jnp.ndarray, normal_token: jnp.ndarray,
                      margin: float = 0.5) -> jnp.ndarray:
    """L_ctr = mean_b relu(cos(t_a, t_n) + margin); tokens (B, D) -> scalar.

    With margin = 0.5 (official release) the term is zero when the angle between t_a and t_n is
    >= 120 degrees, the paper's "angular distance > 120°".
    """
    cos = jnp.sum(l2_normalize(anomaly_token, NORMALIZE_EPS) * l2_normalize(normal_token, NORMALIZE_EPS),
                  axis=-1)
    return jnp.maximum(cos + margin, 0.0).mean()


def visualad_loss(layer_maps: jnp.ndarray, masks: jnp.ndarray, labels: jnp.ndarray,
                  anomaly_token: jnp.ndarray, normal_token: jnp.ndarray, *, margin: float = 0.5,
                  topk_ratio: float = 0.01, use_seg: bool = True, use_cls: bool = True,
                  use_ctr: bool = True, focal: str = "clipped") -> tuple[jnp.ndarray, dict]:
    """L = L_cls + L_seg + L_ctr (VisualAD "Loss & Training").

    layer_maps (L, B, M, M) raw maps at mask resolution; masks (B, M, M); labels (B,);
    anomaly_token / normal_token (B, D): the enhanced tokens of the last tapped layer.
    Returns (scalar, {"cls_bce", "seg_focal", "seg_dice", "ctr"}).
    """
    seg, parts = segmentation_loss(layer_maps, masks, focal)
    cls = classification_loss(layer_maps, labels, topk_ratio)
    ctr = token_margin_loss(anomaly_token, normal_token, margin)
    zero = jnp.zeros((), seg.dtype)
    total = (cls if use_cls else zero) + (seg if use_seg else zero) + (ctr if use_ctr else zero)
    return total, {"cls_bce": cls, "ctr": ctr, **parts}
