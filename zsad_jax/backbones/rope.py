"""DINOv3 rotary position embedding (RoPE) for any patch grid, applied to patch tokens only.

Per FACTS.md / HF `DINOv3ViTRopePositionEmbedding`: patch centres (i + 0.5) / n mapped to [-1, 1],
`inv_freq = 1 / theta ** arange(0, 1, 4 / head_dim)`, angles `2 pi coord inv_freq` flattened over
(y, x) and tiled twice; rotate-half convention; computed in float32. The train-time augmentations
(shift / jitter / rescale) are not applied (inference behaviour).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=64)
def rope_tables(grid_h: int, grid_w: int, head_dim: int, theta: float) -> tuple[np.ndarray, ...]:
    """(cos, sin), each (grid_h * grid_w, head_dim) float32, tokens in row-major (y, x) order."""
    f32 = np.float32
    coords_h = np.arange(0.5, grid_h, dtype=f32) / f32(grid_h)
    coords_w = np.arange(0.5, grid_w, dtype=f32) / f32(grid_w)
    coords = np.stack(np.meshgrid(coords_h, coords_w, indexing="ij"), axis=-1).reshape(-1, 2)
    coords = f32(2.0) * coords - f32(1.0)                                   # (N, 2) in [-1, 1]
    inv_freq = f32(1.0) / (f32(theta) ** np.arange(0, 1, 4 / head_dim, dtype=f32))  # (hd/4,)
    angles = f32(2 * np.pi) * coords[:, :, None] * inv_freq[None, None, :]  # (N, 2, hd/4)
    angles = np.tile(angles.reshape(len(coords), -1), 2)                  # (N, hd)
    cos, sin = np.cos(angles).astype(f32), np.sin(angles).astype(f32)
    cos.setflags(write=False)
    sin.setflags(write=False)
    return cos, sin


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates the last N tokens of x (B, T, H, hd) by cos/sin (N, hd); prefix tokens unchanged."""
    n = cos.shape[0]
    prefix, patches = x[:, : x.shape[1] - n], x[:, x.shape[1] - n:]
    cos = cos[None, :, None, :].astype(x.dtype)
    sin = sin[None, :, None, :].astype(x.dtype)
    patches = patches * cos + rotate_half(patches) * sin
    return jnp.concatenate([prefix, patches], axis=1)
