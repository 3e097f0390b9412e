"""Scaled dot-product attention of the towers: softmax(q k^T / sqrt(hd)) v, per head.

    out = attention(q, k, v, causal=False)         # q, k, v: (B, T, N, hd) -> (B, T, N, hd)

Implementations (`implementation=`; None = "auto"):

* "cudnn": the fused flash-attention kernel (`jax.nn.dot_product_attention(implementation=
  "cudnn")`): no (T, T) matrix is stored. "auto" takes it on a GPU for bf16 / fp16 inputs with a
  head size the kernel supports (a multiple of 8, at most 128).
* "probs": plain XLA (einsums with the heads in front, softmax in fp32) with a hand-written
  backward that keeps only the softmax probabilities (B, N, T, T) and q, k, v. `jax.grad` of the
  reference keeps both `exp(s - max)` and the probabilities, twice the memory, and its forward
  contracts with the heads in the middle; on a CPU the forward is about 2x faster and the forward
  + backward about 1.2x (ViT-L at 518: T = 1370, 16 heads; docs/benchmarks.md). "auto" takes it
  everywhere cuDNN is not used.
* "xla": `jax.nn.dot_product_attention`'s XLA reference, for comparison.

All three compute the same function; tests/test_attention.py checks values and gradients of
"probs" against "xla" (causal too, fp32 and bf16).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "probs", "xla", "cudnn")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool = False,
              implementation: str | None = None) -> jax.Array:
    """(B, T, N, hd) x3 -> (B, T, N, hd); see the module docstring."""
    impl = implementation or "auto"
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {impl!r}: expected one of {IMPLEMENTATIONS}")
    if impl == "auto":
        impl = "cudnn" if _cudnn_applies(q) else "probs"
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
    if impl == "xla":
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")
    return _probs_attention(q, k, v, causal)


def _cudnn_applies(q: jax.Array) -> bool:
    head = q.shape[-1]
    return (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
            and head % 8 == 0 and head <= 128)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _probs_attention(q, k, v, causal):
    return _forward(q, k, v, causal)[0]


def _forward(q, k, v, causal):
    """The output and the residuals of the backward: q, k, v with the heads in front (B, N, T,
    hd) and the probabilities (B, N, T, S) in the input dtype."""
    qh, kh, vh = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    # Logits and softmax in fp32 whatever the input dtype (as jax's reference does).
    logits = jnp.einsum("bntd,bnsd->bnts", qh, kh, preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(q.shape[-1] ** -0.5)
    if causal:
        t, s = logits.shape[-2:]
        keep = jnp.tril(jnp.ones((t, s), bool), s - t)
        logits = jnp.where(keep, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bnts,bnsd->bntd", probs, vh)
    return jnp.swapaxes(out, 1, 2), (qh, kh, vh, probs)


def _backward(causal, residuals, grad_out):
    """dL/dq, dL/dk, dL/dv from the kept probabilities P: dV = P^T dO, dP = dO V^T,
    dS = P * (dP - rowsum(dP * P)) (the softmax's Jacobian), dQ = dS K / sqrt(hd),
    dK = dS^T Q / sqrt(hd). Masked entries have P = 0, so their dS is 0 too."""
    del causal
    qh, kh, vh, probs = residuals
    scale = qh.shape[-1] ** -0.5
    g = jnp.swapaxes(grad_out, 1, 2)
    dv = jnp.einsum("bnts,bntd->bnsd", probs, g)
    dp = jnp.einsum("bntd,bnsd->bnts", g, vh, preferred_element_type=jnp.float32)
    p = probs.astype(jnp.float32)
    ds = (p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True)) * scale).astype(qh.dtype)
    dq = jnp.einsum("bnts,bnsd->bntd", ds, kh)
    dk = jnp.einsum("bnts,bntd->bnsd", ds, qh)
    return tuple(jnp.swapaxes(x, 1, 2) for x in (dq, dk, dv))


_probs_attention.defvjp(lambda q, k, v, causal: _forward(q, k, v, causal), _backward)
