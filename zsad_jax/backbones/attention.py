"""Scaled dot-product attention of the towers: softmax(q k^T / sqrt(hd)) v, per head.

    out = attention(q, k, v, causal=False)         # q, k, v: (B, T, N, hd) -> (B, T, N, hd)

Implementations (`implementation=`; None = "auto"):

* "cudnn": the fused flash-attention kernel (`jax.nn.dot_product_attention(implementation=
  "cudnn")`): no (T, T) matrix is stored. "auto" takes it on a GPU for bf16 / fp16 inputs with a
  head size the kernel supports (a multiple of 8, at most 128).
* "recompute": plain XLA (einsums with the heads in front, logits and softmax in fp32) with a
  hand-written backward that keeps q, k, v, the output and each row's log-sum-exp, and recomputes
  the probabilities exp(q k^T / sqrt(hd) - lse) (FlashAttention's backward, unblocked): no (T, T)
  matrix is kept between the forward and the backward pass. "auto" takes it everywhere cuDNN is
  not used.
* "probs": the same forward; the backward keeps the probabilities (B, N, T, T) instead of
  recomputing them.
* "xla": `jax.nn.dot_product_attention`'s XLA reference: its `jax.grad` keeps both `exp(s - max)`
  and the probabilities, and its forward contracts with the heads in the middle.

On a CPU (ViT-L at 518: T = 1372, 16 heads, batch 1) "recompute" runs the forward about 1.8x
and the forward + backward about 1.2x faster than "xla" (and than "probs"), and a VisualAD
training step keeps 2.3 GiB of temporaries with it, against 4.7 GiB with "probs" and 10.1 GiB with
"xla" (docs/benchmarks.md).

All compute the same function; tests/test_attention.py checks values and gradients of "recompute"
and "probs" against "xla" (causal too, fp32 and bf16).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "probs", "recompute", "xla", "cudnn")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool = False,
              implementation: str | None = None) -> jax.Array:
    """(B, T, N, hd) x3 -> (B, T, N, hd); see the module docstring."""
    impl = implementation or "auto"
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {impl!r}: expected one of {IMPLEMENTATIONS}")
    if impl == "auto":
        impl = "cudnn" if _cudnn_applies(q) else "recompute"
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
    if impl == "xla":
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")
    if impl == "recompute":
        return _recompute_attention(q, k, v, causal)
    return _probs_attention(q, k, v, causal)


def _cudnn_applies(q: jax.Array) -> bool:
    head = q.shape[-1]
    return (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
            and head % 8 == 0 and head <= 128)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _probs_attention(q, k, v, causal):
    return _forward(q, k, v, causal)[0]


def _logits(qh, kh, causal):
    """(B, N, T, S) fp32 logits (q / sqrt(hd)) k^T (masked above the diagonal when causal) from q,
    k with the heads in front; accumulated in fp32 whatever the input dtype. q is scaled before
    the matmul (as torch's attention does; exact for the power-of-two scales of 64- and 256-wide
    heads), which spares a pass over the (T, S) matrix."""
    scale = jnp.asarray(qh.shape[-1] ** -0.5, qh.dtype)
    logits = jnp.einsum("bntd,bnsd->bnts", qh * scale, kh, preferred_element_type=jnp.float32)
    if causal:
        t, s = logits.shape[-2:]
        keep = jnp.tril(jnp.ones((t, s), bool), s - t)
        logits = jnp.where(keep, logits, jnp.finfo(logits.dtype).min)
    return logits


def _forward(q, k, v, causal):
    """The output and the residuals of the backward: q, k, v with the heads in front (B, N, T,
    hd) and the probabilities (B, N, T, S) in the input dtype."""
    qh, kh, vh = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    probs = jax.nn.softmax(_logits(qh, kh, causal), axis=-1).astype(v.dtype)
    out = jnp.einsum("bnts,bnsd->bntd", probs, vh)
    return jnp.swapaxes(out, 1, 2), (qh, kh, vh, probs)


def _backward(causal, residuals, grad_out):
    """dL/dq, dL/dk, dL/dv from the kept probabilities (`_input_grads`)."""
    del causal
    qh, kh, vh, probs = residuals
    return _input_grads(probs.astype(jnp.float32), jnp.swapaxes(grad_out, 1, 2), qh, kh, vh)


def _input_grads(p, g, qh, kh, vh, rows=None):
    """dL/dq, dL/dk, dL/dv (B, T, N, hd) from the probabilities P (B, N, T, S) in fp32 and dO = g
    (heads in front): dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dP * P)) (the softmax's
    Jacobian; `rows` = that row sum when the caller has it, e.g. as rowsum(dO * O)),
    dQ = dS K / sqrt(hd), dK = dS^T Q / sqrt(hd). Masked entries have P = 0, so their dS is 0."""
    scale = qh.shape[-1] ** -0.5
    dv = jnp.einsum("bnts,bntd->bnsd", p.astype(vh.dtype), g)
    dp = jnp.einsum("bntd,bnsd->bnts", g, vh, preferred_element_type=jnp.float32)
    if rows is None:
        rows = jnp.sum(dp * p, axis=-1, keepdims=True)
    ds = (p * (dp - rows) * scale).astype(qh.dtype)
    dq = jnp.einsum("bnts,bnsd->bntd", ds, kh)
    dk = jnp.einsum("bnts,bntd->bnsd", ds, qh)
    return tuple(jnp.swapaxes(x, 1, 2) for x in (dq, dk, dv))


_probs_attention.defvjp(lambda q, k, v, causal: _forward(q, k, v, causal), _backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _recompute_attention(q, k, v, causal):
    return _recompute_forward(q, k, v, causal)[0]


def _recompute_forward(q, k, v, causal):
    """The output and the residuals of the backward: q, k, v, the output (heads in front) and the
    log-sum-exp of each logit row (B, N, T) in fp32: no (T, S) matrix is kept."""
    qh, kh, vh = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    logits = _logits(qh, kh, causal)
    lse = jax.nn.logsumexp(logits, axis=-1)
    probs = jnp.exp(logits - lse[..., None]).astype(v.dtype)
    out = jnp.einsum("bnts,bnsd->bntd", probs, vh)
    return jnp.swapaxes(out, 1, 2), (qh, kh, vh, out, lse)


def _recompute_backward(causal, residuals, grad_out):
    """As `_backward`, with P recomputed as exp(q k^T / sqrt(hd) - lse) (FlashAttention's
    backward, unblocked) and rowsum(dP * P) = rowsum(dO * O)."""
    qh, kh, vh, out, lse = residuals
    g = jnp.swapaxes(grad_out, 1, 2)
    rows = jnp.sum(g.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    # P again, as exp((q + tie) / sqrt(hd) k^T - (lse + tie)) with tie = 0 * rows: rows depends
    # on the incoming gradient and XLA does not fold a float times zero, so XLA can
    # neither compute this in the forward pass nor merge it with the forward's identical
    # expressions (CSE, which would also share the forward's (T, S) broadcast of lse); either
    # would keep every layer's (T, S) matrix alive until the backward pass, which is what
    # "recompute" exists to avoid. (An optimization barrier would say this directly, but XLA's
    # CPU pipeline removes barriers before scheduling.) Adding zero changes no bit of q or lse,
    # so P is the forward's to the matmul's rounding, in any dtype; a NaN in the gradient makes
    # it NaN, as the gradient is then anyway.
    tie = 0.0 * rows                                                  # (B, N, T, 1)
    p = jnp.exp(_logits(qh + tie.astype(qh.dtype), kh, causal) - (lse[..., None] + tie))
    return _input_grads(p, g, qh, kh, vh, rows)


_recompute_attention.defvjp(lambda q, k, v, causal: _recompute_forward(q, k, v, causal),
                            _recompute_backward)
