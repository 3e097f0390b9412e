"""OpenAI CLIP (vision + text towers) in Flax.

Vision: patch conv (no bias), class embedding, learned position embedding (resized to the input
grid, see resize.py), `ln_pre`, pre-LN blocks with QuickGELU, `ln_post` on the class token, `proj`.
Text: token + position embeddings, causal blocks, `ln_final`, pooling at the EOT token, `proj`.

Optional paths for prompt-learning methods (defaults leave the towers plain):
* `encode_image(..., final_hidden=True)`: also the last block's output of the normal stream before
  `ln_post` (`ImageFeatures.final`), next to the taps (which come from the V-V stream with DPAM).
* `encode_text_embeddings(..., deep_prompts=...)`: deep (compound) text prompts that replace the
  hidden states after the start token before text blocks 2..N+1 (AnomalyCLIP, MaPLe-style).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zsad_jax.backbones.common import patch_grid, resized_pos_embed, with_prefix
from zsad_jax.backbones.config import BackboneConfig
from zsad_jax.backbones.layers import check_layers, make_blocks, run_blocks
from zsad_jax.backbones.outputs import ImageFeatures

Dtype = Any


class ClipVision(nn.Module):
    cfg: BackboneConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    pos_interpolation: str = "bicubic"
    remat: bool | str = False
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

    def __call__(self, images, layers=(), prefix_tokens=None, prefix_pos_embed=None,
                 final_hidden: bool = False):
        x, grid, num_prefix = self.embed(images, prefix_tokens, prefix_pos_embed)
        x, taps = run_blocks(self.blocks, x, layers, vv_from_layer=self.vv_from_layer)
        pooled = self.project(x[:, num_prefix - 1])
        return ImageFeatures(layers=taps, pooled=pooled, grid=grid, num_prefix=num_prefix,
                             final=x if final_hidden else None)


class ClipText(nn.Module):
    cfg: BackboneConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool | str = False

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

    def encode_embeddings(self, token_embeddings, eot_index, layers=(), deep_prompts=None):
        """(B, L, Dt) embeddings + (B,) EOT positions -> (B, E) (and taps if layers given).

        deep_prompts: optional (N, P, Dt) or (N, B, P, Dt), N <= depth - 1: see `run_deep_prompts`.
        """
        b, length, _ = token_embeddings.shape
        if length > self.cfg.context_length:
            raise ValueError(f"text length {length} > context_length {self.cfg.context_length}")
        x = token_embeddings.astype(self.dtype) + self.pos_embed[:length].astype(self.dtype)
        if deep_prompts is None:
            x, taps = run_blocks(self.blocks, x, layers)
        else:
            x, taps = self.run_deep_prompts(x, layers, deep_prompts)
        x = self.ln_final(x)
        pooled = x[jnp.arange(b), eot_index]
        out = pooled @ self.proj.astype(self.dtype)
        return (out, taps) if layers else out

    def run_deep_prompts(self, x, layers, deep_prompts):
        """The text blocks with deep (compound) prompts: (B, L, Dt) -> (final, taps).

        Before block i = 2..N+1 (1-based) the hidden states at positions 1..P (after the start
        token) are replaced by `deep_prompts[i - 2]`, whatever the previous block wrote there; no
        position embedding is added; block 1 and blocks after N+1 run unchanged (AnomalyCLIP,
        arXiv 2310.18961, release `AnomalyCLIP_lib/AnomalyCLIP.py:232-254`). deep_prompts:
        (N, P, Dt), the same for every sequence, or (N, B, P, Dt). A caller that rounds them (the
        release casts them to fp16) rounds before passing them.
        """
        b, length, width = x.shape
        if deep_prompts.ndim == 3:
            deep_prompts = deep_prompts[:, None]
        if deep_prompts.ndim != 4 or deep_prompts.shape[-1] != width:
            raise ValueError(f"deep_prompts must be (N, P, {width}) or (N, B, P, {width}), got "
                             f"{deep_prompts.shape}")
        n, p = deep_prompts.shape[0], deep_prompts.shape[2]
        if n > len(self.blocks) - 1 or 1 + p > length:
            raise ValueError(f"{n} deep prompts of length {p} do not fit {len(self.blocks)} text "
                             f"blocks and {length} positions (at most depth - 1 prompts)")
        deep_prompts = jnp.broadcast_to(deep_prompts, (n, b, p, width)).astype(x.dtype)
        layers = check_layers(layers, len(self.blocks))
        taps = {}
        for i, block in enumerate(self.blocks, start=1):
            if 2 <= i <= n + 1:
                x = jnp.concatenate([x[:, :1], deep_prompts[i - 2], x[:, 1 + p:]], axis=1)
            x, _ = block(x, None, None)
            if i in layers:
                taps[i] = x
        return x, tuple(taps[i] for i in layers)

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
    remat: bool | str = False
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

    def encode_image(self, images, layers=(), prefix_tokens=None, prefix_pos_embed=None,
                     final_hidden: bool = False):
        """images (B, H, W, 3) normalized -> ImageFeatures (pooled: (B, E) projected).

        prefix_tokens (B|1, P, D) (+ prefix_pos_embed (P, D)) are inserted before the class token.
        final_hidden: also return the last block's normal-stream output before ln_post (`final`).
        """
        return self.visual(images, layers, prefix_tokens, prefix_pos_embed, final_hidden)

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

    def encode_text_embeddings(self, token_embeddings, eot_index, layers=(), deep_prompts=None):
        """(B, L, Dt) token embeddings + (B,) EOT positions -> (B, E) (CoOp-style prompts);
        deep_prompts (N, [B,] P, Dt): deep prompts before text blocks 2..N+1 (`run_deep_prompts`)."""
        return self._text().encode_embeddings(token_embeddings, jnp.asarray(eot_index), layers,
                                              deep_prompts)

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
