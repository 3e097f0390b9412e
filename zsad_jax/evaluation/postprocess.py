"""Anomaly-map post-processing: Gaussian smoothing (on device) and resizing to native size (host).

Smoothing equals `scipy.ndimage.gaussian_filter(map, sigma)` with its defaults (mode "reflect",
i.e. symmetric padding d c b a | a b c d; kernel radius int(4 * sigma + 0.5)), the filter
AnomalyCLIP's `test.py` applies with sigma 4 at the input resolution. It is separable: one 1-D
convolution along each image axis, jit-compiled with the model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

TRUNCATE = 4.0   # scipy.ndimage.gaussian_filter's default: the kernel spans 4 sigma each side


def gaussian_kernel(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """Normalized 1-D Gaussian, (2 r + 1,) float64, r = int(truncate * sigma + 0.5)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _reflect_pad_indices(size: int, radius: int) -> np.ndarray:
    """Indices of the symmetric ("reflect" in scipy) padding of an axis, any radius."""
    positions = np.arange(-radius, size + radius)
    period = 2 * size
    positions = np.mod(positions, period)
    return np.where(positions < size, positions, period - 1 - positions)


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
        # Sliding window sum: out[i] = sum_k kernel[k] * padded[i + k] (kernel is symmetric).
        acc = jnp.zeros_like(out)
        for k in range(kernel.shape[0]):
            acc = acc + kernel[k] * jax.lax.slice_in_dim(padded, k, k + size, axis=axis)
        out = acc
    return out


def resize_map(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) float32 -> (height, width) float32, bilinear (PIL, half-pixel centres)."""
    from PIL import Image

    anomaly_map = np.asarray(anomaly_map, np.float32)
    if anomaly_map.shape == (height, width):
        return anomaly_map
    image = Image.fromarray(anomaly_map, mode="F")
    return np.asarray(image.resize((int(width), int(height)), Image.Resampling.BILINEAR),
                      np.float32)
