"""SSVP loss terms (SSVP, arXiv 2601.09147, eqs. 9, 12, 20-22). Pure functions of arrays.

The focal loss itself is the shared `zsad_jax.losses.focal_loss`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zsad_jax.losses import bce_on_probs, bce_with_logits, focal_loss


def gaussian_kl(mu: jnp.ndarray, logvar: jnp.ndarray) -> jnp.ndarray:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per sample: (B, Z) -> (B,)."""
    return -0.5 * jnp.sum(1.0 + logvar - mu ** 2 - jnp.exp(logvar), axis=-1)


def vae_loss(target: jnp.ndarray, reconstruction: jnp.ndarray, mu: jnp.ndarray, logvar: jnp.ndarray,
             beta: float, reduction: str = "sum") -> tuple[jnp.ndarray, dict]:
    """L_VAE = ||V - D(z)||_2^2 + beta * KL(q(z|V) || N(0, I)) (SSVP eq. 9), averaged over the batch.

    target, reconstruction (B, D); mu, logvar (B, Z). `reduction="sum"` is eq. 9 as written (squared
    L2 norm: sum over the D feature dims); `"mean"` divides the reconstruction term by D.
    """
    sq = (target - reconstruction) ** 2
    if reduction == "sum":
        recon = sq.sum(-1)
    elif reduction == "mean":
        recon = sq.mean(-1)
    else:
        raise ValueError(f"config.loss.vae_reduction={reduction!r}: use 'sum' (eq. 9) or 'mean'")
    kl = gaussian_kl(mu, logvar)
    return (recon + beta * kl).mean(), {"vae_recon": recon.mean(), "vae_kl": kl.mean()}


def margin_loss(t_final: jnp.ndarray, t_init: jnp.ndarray, xi: float) -> jnp.ndarray:
    """L_reg = max(0, xi - cos(T_final, sg(T_init))) (SSVP eq. 12), mean over all prompts.

    t_final, t_init (..., E). No gradient flows into t_init (stop-gradient).
    """
    anchor = jax.lax.stop_gradient(t_init)
    cos = (t_final * anchor).sum(-1) / jnp.maximum(
        jnp.linalg.norm(t_final, axis=-1) * jnp.linalg.norm(anchor, axis=-1), 1e-6)
    return jnp.maximum(0.0, xi - cos).mean()


def segmentation_loss(layer_probs: jnp.ndarray, masks: jnp.ndarray, gamma: float = 2.0) -> jnp.ndarray:
    """L_Seg (SSVP eq. 20): the focal loss on each layer's P_anom^(l), summed over layers.

    layer_probs (B, L, M, M) probabilities; masks (B, M, M) in {0, 1}. (A fused map P_map can be
    passed as L = 1.)
    """
    return sum(focal_loss(layer_probs[:, i], masks, gamma) for i in range(layer_probs.shape[1]))


def classification_loss(s_final: jnp.ndarray, labels: jnp.ndarray, mode: str = "sigmoid") -> jnp.ndarray:
    """L_Class (SSVP eq. 21). s_final (B,), labels (B,) in {0, 1}.

    "sigmoid": BCE(sigmoid(S_final), y), eq. 21 as written (S_final used as a logit).
    "probability": BCE(S_final, y), S_final in [0, 1] used as the probability itself.
    """
    if mode == "sigmoid":
        return bce_with_logits(s_final, labels)
    if mode == "probability":
        return bce_on_probs(s_final, labels)
    raise ValueError(f"config.loss.class_mode={mode!r}: use 'sigmoid' (eq. 21) or 'probability'")


def total_loss(seg: jnp.ndarray, cls: jnp.ndarray, vae: jnp.ndarray, reg: jnp.ndarray,
               lambda1: float, lambda2: float) -> jnp.ndarray:
    """L_total = L_Seg + L_Class + lambda1 L_VAE + lambda2 L_reg (SSVP eq. 22)."""
    return seg + cls + lambda1 * vae + lambda2 * reg
