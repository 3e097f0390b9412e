"""DINOv2 (± registers) and DINOv3 ViT in Flax.

Sequence [class, registers, patches]. DINOv2: learned position embedding on class + patches
(resized to the grid; registers get none). DINOv3: no position embedding; RoPE on the patch
tokens inside attention (rope.py), key projection without bias. Both: LayerScale, final `norm`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from zsad_jax.backbones.common import patch_grid, resized_pos_embed, with_prefix
from zsad_jax.backbones.config import BackboneConfig
from zsad_jax.backbones.layers import make_blocks, run_blocks
from zsad_jax.backbones.outputs import ImageFeatures
from zsad_jax.backbones.rope import rope_tables

Dtype = Any


class DINO(nn.Module):
    """DINOv2 / DINOv3 vision transformer with `encode_image` and `normalize_tokens`."""

    cfg: BackboneConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    pos_interpolation: str = "bicubic"
    remat: bool | str = False         # a policy of layers.block_class
    vv_from_layer: int = 0

    def setup(self):
        c = self.cfg
        init = nn.initializers.normal(0.02)
        self.patch_embed = nn.Conv(c.width, (c.patch_size, c.patch_size), strides=c.patch_size,
                                   padding="VALID", use_bias=c.patch_bias, dtype=self.dtype,
                                   param_dtype=self.param_dtype)
        self.cls_token = self.param("cls_token", init, (c.width,), self.param_dtype)
        if c.num_registers:
            self.register_tokens = self.param("register_tokens", init,
                                              (c.num_registers, c.width), self.param_dtype)
        if c.family == "dinov2":
            self.pos_embed = self.param("pos_embed", init, (c.native_grid ** 2 + 1, c.width),
                                        self.param_dtype)
        self.blocks = make_blocks(c, text=False, dtype=self.dtype, param_dtype=self.param_dtype,
                                  remat=self.remat)
        self.norm = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype,
                                 param_dtype=self.param_dtype)

    def embed(self, images, prefix_tokens=None, prefix_pos_embed=None):
        """(B, H, W, 3) -> tokens (B, P+1+R+h*w, D), grid, P+1+R."""
        c = self.cfg
        grid = patch_grid(images, c.patch_size)
        x = self.patch_embed(images.astype(self.dtype))
        b = x.shape[0]
        x = x.reshape(b, grid[0] * grid[1], -1)
        cls = jnp.broadcast_to(self.cls_token.astype(x.dtype), (b, 1, c.width))
        x = jnp.concatenate([cls, x], axis=1)
        if c.family == "dinov2":
            pos = resized_pos_embed(self.pos_embed, grid, self.pos_interpolation)
            x = x + pos[None].astype(x.dtype)
        if c.num_registers:
            reg = jnp.broadcast_to(self.register_tokens.astype(x.dtype),
                                   (b, c.num_registers, c.width))
            x = jnp.concatenate([x[:, :1], reg, x[:, 1:]], axis=1)
        x, p = with_prefix(x, prefix_tokens, prefix_pos_embed)
        return x, grid, p + 1 + c.num_registers

    def rope(self, grid):
        c = self.cfg
        if c.family != "dinov3":
            return None
        cos, sin = rope_tables(grid[0], grid[1], c.width // c.heads, float(c.rope_theta))
        return jnp.asarray(cos), jnp.asarray(sin)

    def normalize_tokens(self, tokens):
        """The final `norm` applied to any tokens (B, ..., D)."""
        return self.norm(tokens)

    final_norm = normalize_tokens
    # DINO has no joint embedding space: its output space is the final-normed tokens.
    project_image_tokens = normalize_tokens

    def encode_image(self, images, layers=(), prefix_tokens=None, prefix_pos_embed=None):
        """images (B, H, W, 3) normalized -> ImageFeatures (pooled: final-normed class token).

        prefix_tokens (B|1, P, D) (+ optional prefix_pos_embed (P, D)) go before the class token;
        RoPE (DINOv3) still only touches the patch tokens.
        """
        x, grid, num_prefix = self.embed(images, prefix_tokens, prefix_pos_embed)
        x, taps = run_blocks(self.blocks, x, layers, rope=self.rope(grid),
                             vv_from_layer=self.vv_from_layer)
        cls_index = num_prefix - 1 - self.cfg.num_registers
        pooled = self.norm(x[:, cls_index])
        return ImageFeatures(layers=taps, pooled=pooled, grid=grid, num_prefix=num_prefix)

    def __call__(self, images, token_ids=None):
        del token_ids
        return self.encode_image(images), None
