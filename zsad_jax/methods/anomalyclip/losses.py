"""AnomalyCLIP's training loss (arXiv 2310.18961: a global image loss plus local segmentation
losses, focal + Dice, over the tapped layers; release `train.py:82-104`, `loss.py`). Pure functions
of arrays.

    L = seg_weight * sum_taps [ focal(S_i, G) + Dice(S_i[anomalous], G) + Dice(S_i[normal], 1 - G) ]
        + cls * CE(cos(g, t) / T, y)

* S_i (B, 2, M, M): tap i's [normal, anomalous] probabilities upsampled to the mask size;
  G (B, M, M): the mask binarized at 0.5 (train.py:64-66).
* focal: `zsad_jax.losses.smoothed_focal_loss` on the anomalous channel (FocalLoss of loss.py with
  apply_nonlin None: probabilities, gamma 2, alpha 1, smooth 1e-5; the two-class distribution is
  [1 - p, p], which S_i is).
* Dice: `zsad_jax.losses.dice_loss`, 1 - mean over the batch of (2 sum pg + 1) / (sum p + sum g + 1)
  (BinaryDiceLoss, loss.py:93-105).
* CE: cross-entropy of the image logits cos(g, [t_n, t_a]) / 0.07, mean over the batch.
* seg_weight: lam = 4 (train.py:50, since commit 76b83e1; 1 before).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from zsad_jax.losses import dice_loss, smoothed_focal_loss


def binarized(masks: jnp.ndarray) -> jnp.ndarray:
    """(B, M, M) masks -> {0, 1} float32 at threshold 0.5 (train.py:64-66)."""
    return (masks > 0.5).astype(jnp.float32)


def tap_terms(probs: jnp.ndarray, gt: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """One tap: probs (B, 2, M, M) [normal, anomalous], gt (B, M, M) in {0, 1} ->
    (focal, Dice of the anomalous channel vs gt, Dice of the normal channel vs 1 - gt)."""
    return (smoothed_focal_loss(probs[:, 1], gt), dice_loss(probs[:, 1], gt),
            dice_loss(probs[:, 0], 1.0 - gt))


def image_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """logits (B, 2) = cos / T over [normal, anomalous], labels (B,) in {0, 1} -> mean CE."""
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels.astype(jnp.int32)).mean()


def anomalyclip_loss(tap_probs, masks: jnp.ndarray, logits: jnp.ndarray, labels: jnp.ndarray, *,
                     seg_weight: float = 4.0, focal: float = 1.0, dice: float = 1.0,
                     cls: float = 1.0) -> tuple[jnp.ndarray, dict]:
    """The total loss and its terms (see the module docstring).

    tap_probs: sequence of (B, 2, M, M), one per tapped layer; masks (B, M, M); logits (B, 2);
    labels (B,). Terms (unweighted, summed over the taps): "seg_focal", "seg_dice" (anomalous
    channel), "seg_dice_normal", "cls_ce".
    """
    gt = binarized(masks)
    per_tap = [tap_terms(p, gt) for p in tap_probs]
    terms = {"seg_focal": sum(t[0] for t in per_tap), "seg_dice": sum(t[1] for t in per_tap),
             "seg_dice_normal": sum(t[2] for t in per_tap),
             "cls_ce": image_cross_entropy(logits, labels)}
    seg = focal * terms["seg_focal"] + dice * (terms["seg_dice"] + terms["seg_dice_normal"])
    return seg_weight * seg + cls * terms["cls_ce"], terms
