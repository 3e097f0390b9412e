"""train.remat="auto": the first remat policy whose compiled train step fits the memory is used.

The CPU compiler's buffer assignment ignores rematerialization (docs/benchmarks.md), so the
choice is tested on steps whose memory differs by construction, and the policies' wiring on the
gradient's jaxpr (one remat per block), not on CPU memory figures.
"""

import logging

import jax
import jax.numpy as jnp
import pytest

from tests.numerics import projection_objective
from zsad_jax import backbones
from zsad_jax.training import memory

# A step per policy whose temporaries shrink from "none" to "full": (n,) -> (n, WIDTH[policy]).
WIDTH = {"none": 512, "dots": 128, "full": 8}
ARGS = (jnp.ones((256,)),)


def build(policy):
    width = WIDTH[policy]

    def step(x):
        big = jnp.sin(x[:, None] * jnp.arange(width, dtype=x.dtype))
        return jnp.cos(big).sum(axis=1)

    return f"method<{policy}>", jax.jit(step)


@pytest.fixture(scope="module")
def need():
    return {p: memory.peak_bytes(build(p)[1].lower(*ARGS).compile()) for p in WIDTH}


def test_the_constructed_steps_shrink(need):
    assert need["none"] > need["dots"] > need["full"], need


@pytest.mark.parametrize("budget,expected", [(None, "none"), ("none", "none"), ("dots", "dots"),
                                             ("full", "full")])
def test_choose_remat_takes_the_first_policy_that_fits(need, budget, expected):
    budget = need[budget] if budget else None
    policy, method, step, bytes_needed = memory.choose_remat(build, ARGS, budget=budget)
    assert (policy, method, bytes_needed) == (expected, f"method<{expected}>", need[expected])
    assert step(*ARGS).shape == ARGS[0].shape


def test_choose_remat_warns_when_nothing_fits(caplog):
    with caplog.at_level(logging.INFO, logger=memory.__name__):
        policy, *_ = memory.choose_remat(build, ARGS, budget=1)
    assert policy == "full"
    assert "needs more than the free memory" in caplog.text


@pytest.mark.parametrize("policy,remats", [("none", 0), ("dots", 2), ("full", 2), (True, 2)])
def test_each_block_is_rematerialized_under_a_policy(policy, remats):
    """The gradient's jaxpr holds one remat per block (clip-tiny has 2) under "dots" and "full"."""
    model = backbones.build("clip-tiny", remat=policy)
    params = backbones.init_params(model, jax.random.key(0))
    images = jnp.ones((1, 64, 64, 3))

    def loss(p):
        out = model.apply({"params": p}, images, layers=(2,), method="encode_image")
        return projection_objective((out.pooled, out.layers))

    # Block-level remats hold the block's matmuls; the per-op ones of the activation and the
    # LayerNorms (always on, elementwise) hold none.
    eqns = jax.make_jaxpr(jax.grad(loss))(params).jaxpr.eqns
    block_remats = [e for e in eqns if e.primitive.name.startswith(("remat", "checkpoint"))
                    and "dot_general" in str(e.params["jaxpr"])]
    assert len(block_remats) == remats


def test_memory_budget_is_positive():
    budget = memory.device_memory_budget()
    assert budget is None or budget > 0
