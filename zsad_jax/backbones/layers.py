"""Transformer building blocks shared by CLIP and DINO: attention, MLPs, pre-LN block, tapping.

Attention is `attention.attention` (cuDNN's fused kernel on GPUs in bf16/fp16, elsewhere XLA
with a backward that recomputes the probabilities). The optional V-V path (AnomalyCLIP's DPAM)
runs `softmax(v v^T / sqrt(hd)) v` next to the normal attention with the same projections; see
`run_blocks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zsad_jax.backbones.attention import attention
from zsad_jax.backbones.config import BackboneConfig
from zsad_jax.backbones.rope import apply_rope

Dtype = Any


def activation(name: str):
    """The MLP's activation, recomputed in the backward pass (`jax.checkpoint`): its gradient keeps
    only the input (the hidden layer's pre-activation), not the sigmoid / erf intermediates."""
    if name == "quick_gelu":
        fn = lambda x: x * jax.nn.sigmoid(1.702 * x)        # noqa: E731  OpenAI CLIP QuickGELU
    elif name == "gelu":
        fn = lambda x: jax.nn.gelu(x, approximate=False)    # noqa: E731  torch nn.GELU() (erf)
    elif name == "silu":
        fn = jax.nn.silu
    else:
        raise ValueError(f"unknown activation {name!r}")
    return jax.checkpoint(fn)


# LayerNorm recomputed in the backward pass: its gradient keeps only its input (already kept: the
# residual stream), not the centred input and the inverse deviation. The parameter paths are
# nn.LayerNorm's.
LayerNorm = nn.remat(nn.LayerNorm)


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections. x: (B, T, D)."""

    width: int
    heads: int
    query_bias: bool = True
    key_bias: bool = True
    value_bias: bool = True
    proj_bias: bool = True
    causal: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, rope=None, with_vv: bool = False):
        """Returns (out (B, T, D), vv_out (B, T, D) or None). rope: (cos, sin) for the patches."""
        b, t, _ = x.shape
        hd = self.width // self.heads

        def dense(name, bias):
            return nn.Dense(self.width, use_bias=bias, dtype=self.dtype,
                            param_dtype=self.param_dtype, name=name)

        q = dense("q", self.query_bias)(x).reshape(b, t, self.heads, hd)
        k = dense("k", self.key_bias)(x).reshape(b, t, self.heads, hd)
        v = dense("v", self.value_bias)(x).reshape(b, t, self.heads, hd)
        out_proj = dense("out", self.proj_bias)
        vv = None
        if with_vv:  # DPAM: value-value attention, no RoPE, no mask
            vv = attention(v, v, v).reshape(b, t, self.width)
            vv = out_proj(vv)
        if rope is not None:
            q, k = apply_rope(q, rope[0], rope[1]), apply_rope(k, rope[0], rope[1])
        out = attention(q, k, v, causal=self.causal)
        return out_proj(out.reshape(b, t, self.width)), vv


class Mlp(nn.Module):
    """fc2(act(fc1(x))), or gated: down(act(gate(x)) * up(x)). x: (B, T, D)."""

    width: int
    hidden: int
    act: str
    gated: bool = False
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        def dense(features, name):
            return nn.Dense(features, use_bias=self.use_bias, dtype=self.dtype,
                            param_dtype=self.param_dtype, name=name)

        fn = activation(self.act)
        if self.gated:
            h = fn(dense(self.hidden, "gate")(x)) * dense(self.hidden, "up")(x)
        else:
            h = fn(dense(self.hidden, "fc1")(x))
        return dense(self.width, "fc2")(h)


class Block(nn.Module):
    """Pre-LN transformer block: x + ls1 * attn(ln1(x)); x + ls2 * mlp(ln2(x))."""

    width: int
    heads: int
    mlp_dim: int
    act: str
    eps: float
    gated_mlp: bool = False
    layerscale: bool = False
    query_bias: bool = True
    key_bias: bool = True
    value_bias: bool = True
    proj_bias: bool = True
    mlp_bias: bool = True
    causal: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, rope=None, vv_stream=None):
        """x: (B, T, D). With `vv_stream`, also returns vv_stream + V-V attention (DPAM)."""
        ln = dict(epsilon=self.eps, dtype=self.dtype, param_dtype=self.param_dtype)
        h = LayerNorm(name="ln1", **ln)(x)
        a, vv = Attention(self.width, self.heads, self.query_bias, self.key_bias, self.value_bias,
                          self.proj_bias, self.causal, self.dtype, self.param_dtype,
                          name="attn")(h, rope, vv_stream is not None)
        if self.layerscale:
            a = a * self.param("ls1", nn.initializers.ones, (self.width,), self.param_dtype)
        x = x + a
        h = LayerNorm(name="ln2", **ln)(x)
        m = Mlp(self.width, self.mlp_dim, self.act, self.gated_mlp, self.mlp_bias, self.dtype,
                self.param_dtype, name="mlp")(h)
        if self.layerscale:
            m = m * self.param("ls2", nn.initializers.ones, (self.width,), self.param_dtype)
        x = x + m
        if vv_stream is not None:
            vv_stream = vv_stream + vv   # AnomalyCLIP DPAM: the V-V stream skips the MLP
        return x, vv_stream


REMAT_POLICIES = ("none", "dots", "full")


def remat_policy(remat: bool | str | None) -> str:
    """The remat policy name of a module's `remat` field (True = "full", False/None = "none")."""
    if remat is True:
        return "full"
    if remat is False or remat is None:
        return "none"
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r}: expected one of {REMAT_POLICIES} (or a bool)")
    return remat


def block_class(remat: bool | str | None):
    """Block, or Block rematerialized in the backward pass:

    * "none": activations kept (fastest; the most memory);
    * "dots": the outputs of the weight matmuls (projections, MLP) are kept and the rest
      (LayerNorms, activations, the attention core) recomputed (`jax.checkpoint` with
      `dots_with_no_batch_dims_saveable`);
    * "full": only each block's input is kept, the whole block recomputed (the least memory).
    """
    policy = remat_policy(remat)
    if policy == "none":
        return Block
    if policy == "dots":
        return nn.remat(Block, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    return nn.remat(Block)


def make_blocks(cfg: BackboneConfig, *, text: bool, dtype, param_dtype, remat: bool | str,
                prefix: str = "block") -> list[Block]:
    """The tower's blocks named `{prefix}{i}` (0-based), rematerialized per `remat` (a policy of
    `block_class`)."""
    cls = block_class(remat)
    if text:
        shape = dict(width=cfg.text_width, heads=cfg.text_heads, mlp_dim=cfg.text_mlp_dim,
                     causal=True)
    else:
        shape = dict(width=cfg.width, heads=cfg.heads, mlp_dim=cfg.mlp_dim, causal=False)
    return [cls(act=cfg.act, eps=cfg.layer_norm_eps, gated_mlp=cfg.gated_mlp and not text,
                layerscale=cfg.layerscale and not text,
                query_bias=cfg.query_bias or text, key_bias=cfg.key_bias or text,
                value_bias=cfg.value_bias or text, proj_bias=cfg.proj_bias or text,
                mlp_bias=cfg.mlp_bias or text, dtype=dtype, param_dtype=param_dtype,
                name=f"{prefix}{i}", **shape)
            for i in range(cfg.text_depth if text else cfg.depth)]


def check_layers(layers: Sequence[int], depth: int) -> tuple[int, ...]:
    layers = tuple(int(i) for i in layers)
    bad = [i for i in layers if not 1 <= i <= depth]
    if bad:
        raise ValueError(f"layers={layers}: block indices are 1-based and must lie in "
                         f"[1, {depth}]; got {bad}")
    return layers


def run_blocks(blocks: Sequence[Block], x: jax.Array, layers: Sequence[int], rope=None,
               vv_from_layer: int = 0) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Runs all blocks; returns (final (B, T, D), outputs of the 1-based `layers`).

    With `vv_from_layer = k > 0` (AnomalyCLIP DPAM), a second stream starts as the input of block k
    and accumulates the V-V attention of every block >= k computed on the normal stream; tapped
    layers >= k return that stream. The final output (pooled features) stays the normal stream.
    """
    layers = check_layers(layers, len(blocks))
    taps = {}
    vv_stream = None
    for i, block in enumerate(blocks, start=1):
        if vv_from_layer and i == vv_from_layer:
            vv_stream = x
        x, vv_stream = block(x, rope, vv_stream)
        if i in layers:
            taps[i] = vv_stream if vv_stream is not None else x
    return x, tuple(taps[i] for i in layers)
