"""Input checks and embedding helpers shared by the CLIP and DINO vision towers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zsad_jax.backbones.resize import resize_grid


def patch_grid(images: jax.Array, patch_size: int) -> tuple[int, int]:
    """(B, H, W, 3) -> (H / p, W / p), with a clear error for a bad shape."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3) normalized float, got shape {images.shape}")
    h, w = images.shape[1:3]
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch_size}")
    return h // patch_size, w // patch_size


def resized_pos_embed(pos_embed: jax.Array, grid: tuple[int, int], mode: str) -> jax.Array:
    """(1 + n*n, D) learned embedding (class first) -> (1 + h*w, D) for the grid (h, w)."""
    n = int(round((pos_embed.shape[0] - 1) ** 0.5))
    patches = pos_embed[1:].reshape(n, n, -1)
    patches = resize_grid(patches, grid, mode).reshape(grid[0] * grid[1], -1)
    return jnp.concatenate([pos_embed[:1], patches], axis=0)


def with_prefix(x: jax.Array, prefix_tokens, prefix_pos_embed) -> tuple[jax.Array, int]:
    """Prepends caller tokens (B|1, P, D) (+ their position embeddings (P, D)) to x (B, T, D)."""
    if prefix_tokens is None:
        if prefix_pos_embed is not None:
            raise ValueError("prefix_pos_embed given without prefix_tokens")
        return x, 0
    if prefix_tokens.ndim != 3 or prefix_tokens.shape[-1] != x.shape[-1]:
        raise ValueError(f"prefix_tokens must be (B|1, P, {x.shape[-1]}), "
                         f"got {prefix_tokens.shape}")
    p = prefix_tokens.shape[1]
    prefix = prefix_tokens.astype(x.dtype)
    if prefix_pos_embed is not None:
        if prefix_pos_embed.shape != (p, x.shape[-1]):
            raise ValueError(f"prefix_pos_embed must be ({p}, {x.shape[-1]}), "
                             f"got {prefix_pos_embed.shape}")
        prefix = prefix + prefix_pos_embed[None].astype(x.dtype)
    prefix = jnp.broadcast_to(prefix, (x.shape[0], p, x.shape[-1]))
    return jnp.concatenate([prefix, x], axis=1), p
