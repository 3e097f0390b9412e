"""OpenAI CLIP (vision + text towers) in Flax.

Vision: patch conv (no bias), class embedding, learned position embedding (resized to the input
grid, see resize.py), `ln_pre`, pre-LN blocks with QuickGELU, `ln_post` on the class token, `proj`.
Text: token + position embeddings, causal blocks, `ln_final`, pooling at the EOT token, `proj`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zsad_jax.backbones.common import patch_grid, resized_pos_embed, with_prefix
from zsad_jax.backbones.config import BackboneConfig
from zsad_jax.backbones.layers import make_blocks, run_blocks
from zsad_jax.backbones.outputs import ImageFeatures

Dtype = Any


class ClipVision(nn.Module):
    cfg: BackboneConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    pos_interpolation: str = "bicubic"
    remat: bool = False
    vv_from_layer: int = 0

    def setup(self):
        c = self.cfg
        init = nn.initializers.normal(0.02)
        self.patch_embed = nn.Conv(c.width, (c.patch_size, c.patch_size), strides=c.patch_size,
                                   padding="VALID", use_bias=c.patch_bias, dtype=self.dtype,
                                   param_dtype=self.param_dtype)
        self.class_embed = self.param("class_embed", init, (c.width,), self.param_dtype)
        self.pos_embed = self.param("pos_embed", init, (c.native_grid ** 2 + 1, c.width),
                                    self.param_dtype)
        ln = dict(epsilon=c.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
        self.ln_pre = nn.LayerNorm(**ln)
        self.blocks = make_blocks(c, text=False, dtype=self.dtype, param_dtype=self.param_dtype,
                                  remat=self.remat)
        self.ln_post = nn.LayerNorm(**ln)
        if c.embed_dim:  # 0: vision-only checkpoint without projection (CLIPVisionModel)
            self.proj = self.param("proj", nn.initializers.normal(c.width ** -0.5),
                                   (c.width, c.embed_dim), self.param_dtype)

    def embed(self, images, prefix_tokens=None, prefix_pos_embed=None):
        """(B, H, W, 3) -> tokens (B, P+1+h*w, D) after ln_pre, grid, P+1."""
        grid = patch_grid(images, self.cfg.patch_size)
        x = self.patch_embed(images.astype(self.dtype))              # (B, h, w, D)
        b = x.shape[0]
        x = x.reshape(b, grid[0] * grid[1], -1)
        cls = jnp.broadcast_to(self.class_embed.astype(x.dtype), (b, 1, x.shape[-1]))
        pos = resized_pos_embed(self.pos_embed, grid, self.pos_interpolation)
        x = jnp.concatenate([cls, x], axis=1) + pos[None].astype(x.dtype)
        x, p = with_prefix(x, prefix_tokens, prefix_pos_embed)
        return self.ln_pre(x), grid, p + 1

    def project(self, tokens):
        """ln_post + proj on any tokens (B, ..., D) -> (B, ..., E) (AnomalyCLIP/VisualAD)."""
        x = self.ln_post(tokens)
        return x @ self.proj.astype(self.dtype) if self.cfg.embed_dim else x

    def __call__(self, images, layers=(), prefix_tokens=None, prefix_pos_embed=None):
        x, grid, num_prefix = self.embed(images, prefix_tokens, prefix_pos_embed)
        x, taps = run_blocks(self.blocks, x, layers, vv_from_layer=self.vv_from_layer)
        pooled = self.project(x[:, num_prefix - 1])
        return ImageFeatures(layers=taps, pooled=pooled, grid=grid, num_prefix=num_prefix)


class ClipText(nn.Module):
    cfg: BackboneConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False

    def setup(self):
        c = self.cfg
        self.token_embed = self.param("token_embed", nn.initializers.normal(0.02),
                                      (c.vocab_size, c.text_width), self.param_dtype)
        self.pos_embed = self.param("pos_embed", nn.initializers.normal(0.01),
                                    (c.context_length, c.text_width), self.param_dtype)
        self.blocks = make_blocks(c, text=True, dtype=self.dtype, param_dtype=self.param_dtype,
                                  remat=self.remat)
        self.ln_final = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype,
                                     param_dtype=self.param_dtype)
        self.proj = self.param("proj", nn.initializers.normal(c.text_width ** -0.5),
                               (c.text_width, c.embed_dim), self.param_dtype)

    def embed_tokens(self, token_ids):
        """(B, L) int -> (B, L, Dt) token embeddings (no position embedding)."""
        return jnp.take(self.token_embed, token_ids, axis=0).astype(self.dtype)

    def encode_embeddings(self, token_embeddings, eot_index, layers=()):
        """(B, L, Dt) embeddings + (B,) EOT positions -> (B, E) (and taps if layers given)."""
        b, length, _ = token_embeddings.shape
        if length > self.cfg.context_length:
            raise ValueError(f"text length {length} > context_length {self.cfg.context_length}")
        x = token_embeddings.astype(self.dtype) + self.pos_embed[:length].astype(self.dtype)
        x, taps = run_blocks(self.blocks, x, layers)
        x = self.ln_final(x)
        pooled = x[jnp.arange(b), eot_index]
        out = pooled @ self.proj.astype(self.dtype)
        return (out, taps) if layers else out

    def __call__(self, token_ids):
        if token_ids.ndim != 2:
            raise ValueError(f"token_ids must be (B, L) integers, got shape {token_ids.shape}")
        eot_index = jnp.argmax(token_ids == self.cfg.eot_token_id, axis=-1)
        return self.encode_embeddings(self.embed_tokens(token_ids), eot_index)


class CLIP(nn.Module):
    """CLIP with `encode_image`, `encode_text`, `encode_text_embeddings`, `embed_tokens`,
    `project_image_tokens` (use with `model.apply(..., method=...)`)."""

    cfg: BackboneConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    pos_interpolation: str = "bicubic"
    remat: bool = False
    vv_from_layer: int = 0

    def setup(self):
        self.visual = ClipVision(self.cfg, self.dtype, self.param_dtype, self.pos_interpolation,
                                 self.remat, self.vv_from_layer)
        if self.cfg.has_text:
            self.text = ClipText(self.cfg, self.dtype, self.param_dtype, self.remat)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(jnp.log(1 / 0.07)),
                                      (), self.param_dtype)

    def _text(self):
        if not self.cfg.has_text:
            raise ValueError("this CLIP checkpoint has no text tower (converted from "
                             "CLIPVisionModel?)")
        return self.text

    def encode_image(self, images, layers=(), prefix_tokens=None, prefix_pos_embed=None):
        """images (B, H, W, 3) normalized -> ImageFeatures (pooled: (B, E) projected).

        prefix_tokens (B|1, P, D) (+ prefix_pos_embed (P, D)) are inserted before the class token.
        """
        return self.visual(images, layers, prefix_tokens, prefix_pos_embed)

    def project_image_tokens(self, tokens):
        """ln_post + proj of vision tokens (B, ..., D) -> (B, ..., E)."""
        return self.visual.project(tokens)

    def final_norm(self, tokens):
        """ln_post alone (no projection) on vision tokens (B, ..., D) -> (B, ..., D)."""
        return self.visual.ln_post(tokens)

    def encode_text(self, token_ids):
        """(B, L) token ids (L <= context_length) -> (B, E), pooled at the first EOT token."""
        return self._text()(token_ids)

    def embed_tokens(self, token_ids):
        """(B, L) token ids -> (B, L, Dt): the token-embedding lookup, for learnable prompts."""
        return self._text().embed_tokens(token_ids)

    def encode_text_embeddings(self, token_embeddings, eot_index, layers=()):
        """(B, L, Dt) token embeddings + (B,) EOT positions -> (B, E) (CoOp-style prompts)."""
        return self._text().encode_embeddings(token_embeddings, jnp.asarray(eot_index), layers)

    def __call__(self, images, token_ids=None):
        """Initialises every parameter: (image features, text features or None)."""
        image = self.encode_image(images)
        text = self.encode_text(token_ids) if token_ids is not None else None
        return image, text


def logits(image_embeds: jax.Array, text_embeds: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """CLIP similarity: exp(logit_scale) * cos(image (B, E), text (K, E)) -> (B, K)."""
    image_embeds = image_embeds / jnp.linalg.norm(image_embeds, axis=-1, keepdims=True)
    text_embeds = text_embeds / jnp.linalg.norm(text_embeds, axis=-1, keepdims=True)
    return jnp.exp(logit_scale) * image_embeds @ text_embeds.T
