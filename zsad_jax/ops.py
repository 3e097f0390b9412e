"""Numerics shared by the methods and the evaluation: pure functions of arrays.

* `l2_normalize`    x / max(||x||, eps) over the last axis (torch `F.normalize`'s convention).
* `gaussian_kernel`, `smooth_maps`   Gaussian smoothing equal to `scipy.ndimage.gaussian_filter`
  with its defaults (mode "reflect", truncate 4), the filter AnomalyCLIP's and VisualAD's test
  scripts apply with sigma 4.
* `upsample_maps`   bilinear resize of score maps (half-pixel centres = torch `F.interpolate(
  mode="bilinear", align_corners=False)` when upsampling).
* `topk_mean`       mean of the top `ratio` fraction of each map (VisualAD's image score).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

TRUNCATE = 4.0   # scipy.ndimage.gaussian_filter's default: the kernel spans 4 sigma each side


def l2_normalize(x: jax.Array, eps: float = 1e-8, axis: int = -1) -> jax.Array:
    """x / max(||x||_2, eps) along `axis`."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def gaussian_kernel(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """Normalized 1-D Gaussian, (2 r + 1,) float64, r = int(truncate * sigma + 0.5) (scipy's)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _reflect_pad_indices(size: int, radius: int) -> np.ndarray:
    """Indices of the symmetric ("reflect" in scipy) padding of an axis, any radius."""
    positions = np.mod(np.arange(-radius, size + radius), 2 * size)
    return np.where(positions < size, positions, 2 * size - 1 - positions)


def smooth_maps(maps: jax.Array, sigma: float) -> jax.Array:
    """(B, H, W) -> (B, H, W) Gaussian-smoothed (= scipy gaussian_filter per map); sigma 0: as is."""
    if not sigma or sigma <= 0:
        return maps
    kernel = jnp.asarray(gaussian_kernel(sigma), maps.dtype)
    radius = (kernel.shape[0] - 1) // 2
    out = maps
    for axis in (1, 2):
        size = out.shape[axis]
        padded = jnp.take(out, jnp.asarray(_reflect_pad_indices(size, radius)), axis=axis)
        # Sliding window sum: out[i] = sum_k kernel[k] * padded[i + k] (the kernel is symmetric).
        acc = jnp.zeros_like(out)
        for k in range(kernel.shape[0]):
            acc = acc + kernel[k] * jax.lax.slice_in_dim(padded, k, k + size, axis=axis)
        out = acc
    return out


def upsample_maps(maps: jax.Array, size: int) -> jax.Array:
    """(..., h, w) -> (..., size, size), bilinear with half-pixel centres."""
    return jax.image.resize(maps, (*maps.shape[:-2], size, size), "bilinear")


def topk_count(num_elements: int, ratio: float) -> int:
    """k = max(1, ceil(num_elements * ratio)); ratio in (0, 1]."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"top-k ratio must be in (0, 1], got {ratio}")
    return max(1, int(math.ceil(num_elements * ratio)))


def topk_mean(maps: jax.Array, ratio: float = 0.01) -> jax.Array:
    """Mean of the top `ratio` fraction of each map: (B, H, W) -> (B,)."""
    flat = maps.reshape(maps.shape[0], -1)
    return jax.lax.top_k(flat, topk_count(flat.shape[1], ratio))[0].mean(axis=-1)
