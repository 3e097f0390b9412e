"""Segmentation and classification losses shared by the methods. Pure functions of arrays.

Shapes: probability / logit maps `(B, H, W)`, targets `(B, H, W)` in {0, 1}; image logits `(B,)`.
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
