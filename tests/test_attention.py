"""The towers' attention ("recompute": a hand-written backward that recomputes the probabilities
from the log-sum-exp; "probs": one that keeps them) equals jax's XLA reference in values and
gradients, causal or not, in fp32 and bf16, and keeps fewer (T, T) matrices for the backward."""

import re

import jax
import jax.numpy as jnp
import pytest
from jax.ad_checkpoint import print_saved_residuals

from tests.numerics import assert_trees_close, relative_error
from zsad_jax.backbones.attention import attention


def _inputs(dtype, t=37, heads=4, hd=16, b=2):
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (2 * jax.random.normal(kk, (b, t, heads, hd)).astype(dtype) for kk in keys[:3])
    weights = jax.random.normal(keys[3], (b, t, heads, hd))      # a projection: well conditioned
    return q, k, v, weights


def _objective(impl, causal, weights):
    return lambda q, k, v: jnp.sum(attention(q, k, v, causal, impl).astype(jnp.float32) * weights)


@pytest.mark.parametrize("impl", ["recompute", "probs"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_attention_equals_the_reference(impl, causal, dtype, rtol):
    q, k, v, weights = _inputs(dtype)
    ours = jax.jit(lambda *a: attention(*a, causal, impl))(q, k, v)
    ref = jax.jit(lambda *a: attention(*a, causal, "xla"))(q, k, v)
    assert ours.dtype == ref.dtype == dtype
    assert relative_error(ours.astype(jnp.float32), ref.astype(jnp.float32)) < rtol
    grads = jax.jit(jax.grad(_objective(impl, causal, weights), argnums=(0, 1, 2)))(q, k, v)
    expected = jax.jit(jax.grad(_objective("xla", causal, weights), argnums=(0, 1, 2)))(q, k, v)
    assert_trees_close(jax.tree.map(lambda x: x.astype(jnp.float32), expected),
                       jax.tree.map(lambda x: x.astype(jnp.float32), grads), rtol=rtol,
                       what=f"gradients {impl} causal={causal} {jnp.dtype(dtype).name}")


@pytest.mark.parametrize("impl", ["recompute", "probs"])
def test_causal_attention_sees_no_later_token(impl):
    q, k, v, _ = _inputs(jnp.float32, t=8)
    out = attention(q, k, v, causal=True, implementation=impl)
    changed = v.at[:, 5:].set(100.0)
    again = attention(q, k, changed, causal=True, implementation=impl)
    assert relative_error(again[:, :5], out[:, :5]) < 1e-6
    assert relative_error(again[:, 5:], out[:, 5:]) > 1e-2


def test_backward_keeps_fewer_probability_matrices(capsys):
    """Residuals for the backward: "recompute" keeps no (B, N, T, T) matrix, "probs" one, the
    reference two."""
    q, k, v, weights = _inputs(jnp.float32, t=33)
    for impl, expected in (("recompute", 0), ("probs", 1), ("xla", 2)):
        print_saved_residuals(_objective(impl, False, weights), q, k, v)
        saved = capsys.readouterr().out
        matrices = re.findall(r"\[(?:1,)?2,4,33,33\]", saved)      # (B, N, T, T) (xla: a group axis)
        assert len(matrices) == expected, (impl, saved)


def test_unknown_implementation_is_named():
    q, k, v, _ = _inputs(jnp.float32, t=4)
    with pytest.raises(ValueError, match="'flash'"):
        attention(q, k, v, implementation="flash")


def _stack_temp_bytes(impl, layers, t=256, heads=4, hd=16):
    """Temporaries of the compiled gradient of `layers` residual attention layers (XLA's buffer
    assignment of this backend)."""
    width = heads * hd
    weights = [jax.ShapeDtypeStruct((width, 3 * width), jnp.float32) for _ in range(layers)]

    def stack(x, weights):
        for w in weights:
            q, k, v = jnp.split((x @ w).reshape(1, t, 3 * heads, hd), 3, axis=2)
            x = x + attention(q, k, v, False, impl).reshape(1, t, width)
        return jnp.sum(x * x)

    compiled = jax.jit(jax.grad(stack)).lower(jax.ShapeDtypeStruct((1, t, width), jnp.float32),
                                              weights).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_compiled_backward_keeps_no_probability_matrix_per_layer():
    """What the compiler makes of it: each extra layer of a compiled gradient adds less than half
    a (B, N, T, T) matrix with "recompute" (XLA may neither merge the recomputation with the
    forward nor run it there), and at least one with "probs"."""
    matrix = 4 * 256 * 256 * 4                                              # bytes, fp32
    per_layer = {impl: (_stack_temp_bytes(impl, 6) - _stack_temp_bytes(impl, 2)) / 4
                 for impl in ("recompute", "probs")}
    assert per_layer["recompute"] < 0.5 * matrix, per_layer
    assert per_layer["probs"] >= matrix, per_layer
