"""Segmentation and classification losses shared by the methods: pure functions of arrays.

Shapes: probability maps `(B, H, W)` in [0, 1], targets `(B, H, W)` in {0, 1}; image logits or
probabilities `(B,)`.

* `focal_loss`            binary focal loss on clipped probabilities (Lin et al. 2017).
* `smoothed_focal_loss`   the focal loss of AnomalyCLIP's and VisualAD's `loss.py`: two-class
  probabilities [1 - p, p], one-hot targets clamped to [smooth, 1 - smooth], pt + smooth.
* `dice_loss`             soft Dice per image, averaged over the batch (smooth 1).
* `bce_with_logits`, `bce_on_probs`.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

_EPS = 1e-6


def focal_loss(probs: jnp.ndarray, targets: jnp.ndarray, gamma: float = 2.0) -> jnp.ndarray:
    """Binary focal loss on probabilities, mean over pixels (Lin et al. 2017; SSVP eq. 20).

    -[y (1-p)^gamma log p + (1-y) p^gamma log(1-p)], averaged over all elements.
    """
    p = jnp.clip(probs, _EPS, 1.0 - _EPS)
    y = targets.astype(p.dtype)
    loss = -(y * (1 - p) ** gamma * jnp.log(p) + (1 - y) * p ** gamma * jnp.log(1 - p))
    return loss.mean()


def smoothed_focal_loss(probs: jnp.ndarray, targets: jnp.ndarray, gamma: float = 2.0,
                        smooth: float = 1e-5) -> jnp.ndarray:
    """Focal loss of the AnomalyCLIP / VisualAD releases (`FocalLoss(smooth=1e-5)`, alpha 1).

    probs: anomalous-class probability p (B, H, W); the two-class distribution is [1 - p, p]
    (AnomalyCLIP's 2-way softmax has exactly this form). targets in {0, 1}. The one-hot target is
    clamped to [smooth, 1 - smooth], pt = <onehot, [1 - p, p]> + smooth, and the loss is
    -(1 - pt)^gamma log pt averaged over all pixels.
    """
    y = targets.astype(probs.dtype)
    on = jnp.clip(y, smooth, 1.0 - smooth)                  # target weight of the anomalous class
    off = jnp.clip(1.0 - y, smooth, 1.0 - smooth)           # and of the normal class
    pt = on * probs + off * (1.0 - probs) + smooth
    return (-((1.0 - pt) ** gamma) * jnp.log(pt)).mean()


def dice_loss(probs: jnp.ndarray, targets: jnp.ndarray, smooth: float = 1.0) -> jnp.ndarray:
    """Soft Dice loss per image, averaged over the batch: 1 - (2|P∩Y| + s) / (|P| + |Y| + s)."""
    p = probs.reshape(probs.shape[0], -1)
    y = targets.reshape(targets.shape[0], -1).astype(p.dtype)
    inter = (p * y).sum(-1)
    dice = (2 * inter + smooth) / (p.sum(-1) + y.sum(-1) + smooth)
    return (1 - dice).mean()


def bce_with_logits(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Binary cross-entropy on logits, mean over elements (numerically stable)."""
    return optax.sigmoid_binary_cross_entropy(logits, targets.astype(logits.dtype)).mean()


def bce_on_probs(probs: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Binary cross-entropy on probabilities in (0, 1), mean over elements."""
    p = jnp.clip(probs, _EPS, 1.0 - _EPS)
    y = targets.astype(p.dtype)
    return -(y * jnp.log(p) + (1 - y) * jnp.log(1 - p)).mean()
