"""Resizing of position-embedding grids, numerically equal to torch `F.interpolate`.

`jax.image.resize` cannot be used: its cubic kernel has a=-0.5 and no index clamping, while
torch's `bicubic` (what HF transformers uses for CLIP/DINOv2) has a=-0.75 and clamps source indices
at the border. Each mode is written as a (out, in) weight matrix per axis, computed with numpy in
float64 from torch's definitions, and applied as two contractions:

* "bicubic" / "bilinear": `F.interpolate(mode=..., align_corners=False)` (given `size=`), source
  coordinate `x = (i + 0.5) * in / out - 0.5`; bilinear clamps `x >= 0`.
* "bicubic_aa" / "bilinear_aa": `F.interpolate(..., antialias=True)` (HF Dinov2WithRegisters):
  PIL-style separable filter with support scaled by in/out when downsampling, cubic a=-0.5,
  weights normalised over in-range taps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from zsad_jax.backbones.config import POS_INTERPOLATIONS


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys cubic convolution kernel with parameter `a` (torch: a=-0.75; antialias/PIL: a=-0.5)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _plain_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    scale = n_in / n_out
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        x = (i + 0.5) * scale - 0.5
        if mode == "bilinear":
            x = max(x, 0.0)
            x0 = int(np.floor(x))
            x1 = x0 + 1 if x0 < n_in - 1 else x0
            frac = x - x0
            w[i, x0] += 1.0 - frac
            w[i, x1] += frac
        else:  # bicubic, taps x0-1 .. x0+2 clamped to the border
            x0 = int(np.floor(x))
            t = x - x0
            taps = _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)
            for k, weight in zip(range(x0 - 1, x0 + 3), taps, strict=True):
                w[i, min(max(k, 0), n_in - 1)] += weight
    return w


def _antialias_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    scale = n_in / n_out
    interp_size = 4 if mode == "bicubic_aa" else 2
    support = interp_size / 2 * (scale if scale >= 1.0 else 1.0)
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        x = (np.arange(xmin, xmax) - center + 0.5) * invscale
        taps = _cubic(x, -0.5) if mode == "bicubic_aa" else np.maximum(0.0, 1.0 - np.abs(x))
        total = taps.sum()
        w[i, xmin:xmax] = taps / total if total != 0 else taps
    return w


@functools.lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """(n_out, n_in) float64 matrix M with `out = M @ in` along one axis, as torch computes it."""
    if mode not in POS_INTERPOLATIONS:
        raise ValueError(f"pos_interpolation={mode!r}: expected one of {POS_INTERPOLATIONS}")
    if n_in < 1 or n_out < 1:
        raise ValueError(f"resize sizes must be positive, got {n_in} -> {n_out}")
    if mode.endswith("_aa"):
        matrix = _antialias_matrix(n_in, n_out, mode)
    else:
        matrix = _plain_matrix(n_in, n_out, mode)
    matrix.setflags(write=False)
    return matrix


def resize_grid(grid: jax.Array, out_hw: tuple[int, int], mode: str) -> jax.Array:
    """(h, w, D) -> (H, W, D), equal to torch `F.interpolate` of the (1, D, h, w) tensor."""
    h, w = grid.shape[:2]
    out_h, out_w = out_hw
    if (h, w) == (out_h, out_w):
        return grid
    my = jnp.asarray(resize_matrix(h, out_h, mode), jnp.float32)
    mx = jnp.asarray(resize_matrix(w, out_w, mode), jnp.float32)
    x = grid.astype(jnp.float32)
    x = jnp.einsum("Hh,hwd->Hwd", my, x, precision=jax.lax.Precision.HIGHEST)
    x = jnp.einsum("Ww,Hwd->HWd", mx, x, precision=jax.lax.Precision.HIGHEST)
    return x.astype(grid.dtype)
