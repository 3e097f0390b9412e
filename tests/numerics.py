"""Numerical comparison helpers for the tests: tolerances relative to the scale compared.

Gradients of objectives that cancel (e.g. the sum of a LayerNorm output) are dominated by
rounding and must not be compared; `projection_objective` gives a well-conditioned scalar
instead: a fixed random projection of every output leaf.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def relative_error(expected, actual) -> float:
    """||actual - expected|| / ||expected|| (L2 over all elements)."""
    expected = np.asarray(expected, np.float64)
    actual = np.asarray(actual, np.float64)
    scale = np.linalg.norm(expected)
    if scale == 0.0:
        return float(np.linalg.norm(actual))
    return float(np.linalg.norm(actual - expected) / scale)


def assert_trees_close(expected, actual, rtol: float, what: str = "", skip=()) -> None:
    """Every leaf of `actual` within `rtol` relative L2 error of the same leaf of `expected`,
    and no leaf of `expected` identically zero (a zero leaf would make the check vacuous).

    skip: substrings of leaf names (`jax.tree_util.keystr`) not compared, for leaves whose exact
    value is zero and whose computed value is therefore rounding alone.
    """
    leaves = jax.tree_util.tree_leaves_with_path(expected)
    others = jax.tree_util.tree_leaves(actual)
    assert len(leaves) == len(others), f"{what}: {len(leaves)} leaves vs {len(others)}"
    bad = []
    for (path, a), b in zip(leaves, others, strict=True):
        name = jax.tree_util.keystr(path)
        if any(s in name for s in skip):
            continue
        assert np.any(np.asarray(a) != 0), f"{what}{name}: the expected leaf is all zero"
        err = relative_error(a, b)
        if not err <= rtol:
            bad.append(f"{name}: relative error {err:.3g} > {rtol:g}")
    assert not bad, f"{what}: " + "; ".join(bad)


def projection_objective(tree, seed: int = 7) -> jax.Array:
    """sum_i <w_i, x_i> over the leaves x_i of `tree`, w_i fixed N(0, 1): a scalar whose gradient
    does not cancel (unlike a plain sum through a normalization)."""
    leaves = jax.tree_util.tree_leaves(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return sum(jnp.sum(jax.random.normal(k, x.shape, jnp.float32) * x.astype(jnp.float32))
               for k, x in zip(keys, leaves, strict=True))


def leaf_norms(tree) -> dict[str, float]:
    """{'a/b/c': L2 norm} of every leaf, named by its '/'-joined path."""
    def name(path):
        return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                        for k in path)

    return {name(p): float(np.linalg.norm(np.asarray(v, np.float64)))
            for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_gradient_reaches(grads, prefixes, rel: float = 1e-4) -> None:
    """Every leaf under each '/'-path prefix has a gradient norm above `rel` x the largest leaf
    gradient norm: a mathematically zero gradient (rounding only) does not pass as 'reached'."""
    norms = leaf_norms(grads)
    top = max(norms.values())
    assert top > 0, "every gradient is zero"
    for prefix in prefixes:
        selected = {k: v for k, v in norms.items() if k.startswith(prefix)}
        assert selected, f"no parameter under {prefix!r}; have {sorted(norms)[:10]} ..."
        weak = {k: f"{v / top:.2g}" for k, v in selected.items() if not v > rel * top}
        assert not weak, f"no gradient reaches (norm / largest norm): {weak}"
