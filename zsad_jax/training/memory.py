"""Choosing the remat policy by memory (`config.train.remat="auto"`).

The compiled train step of each policy, in the order "none" (keep every activation: the fastest),
"dots" (keep the weight matmuls' outputs), "full" (keep each block's input only), is measured with
XLA's buffer assignment (`compiled.memory_analysis()`: arguments + outputs + temporaries - what is
aliased), and the first one that fits the device's free memory is used. The measurement is the
compilation the training needs anyway: `jax.jit` reuses the executable compiled for it, so the
chosen policy costs no second compile (the ones that do not fit cost one each). The log says which
policy ran and what it needs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import jax

from zsad_jax import config_lib, methods
from zsad_jax.backbones.layers import REMAT_POLICIES

log = logging.getLogger(__name__)

GIB = 2 ** 30


def device_memory_budget(fraction: float = 0.9) -> int | None:
    """Bytes one device can still hold: an accelerator's free memory, or on a CPU host the
    available physical memory; times `fraction` (headroom). None if unknown."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(fraction * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return int(fraction * pages * size)


def peak_bytes(compiled) -> int:
    """Memory a compiled function holds while it runs (XLA's buffer assignment)."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def choose_remat(build: Callable[[str], tuple[Any, Callable]], args: tuple,
                 budget: int | None = None) -> tuple[str, Any, Callable, int]:
    """(policy, method, jitted step, bytes it needs) for the first policy whose step fits.

    build(policy) -> (method, jitted step function); args: example arguments of the step (the
    shapes of training). budget: bytes available (default `device_memory_budget()`).
    """
    budget = device_memory_budget() if budget is None else budget
    for policy in REMAT_POLICIES:
        method, step = build(policy)
        need = peak_bytes(step.lower(*args).compile())
        fits = budget is None or need <= budget
        if fits or policy == REMAT_POLICIES[-1]:
            log.info("remat policy %r: the train step needs %.2f GiB of %s", policy, need / GIB,
                     "unknown memory" if budget is None else f"{budget / GIB:.2f} GiB free")
            if not fits:
                log.warning("even with full remat the step needs more than the free memory: "
                            "lower config.data.batch_size or use config.optim.accum_steps")
            return policy, method, step, need
        log.info("remat policy %r: %.2f GiB > %.2f GiB free; trying the next", policy,
                 need / GIB, budget / GIB)
    raise AssertionError("unreachable")


def train_step_for(method, config, make_step: Callable[[Any], Callable], args: tuple
                   ) -> tuple[Any, Callable]:
    """(method, jitted train step) under `config.train.remat`: "auto" builds the method once per
    policy and takes the first whose step fits (`choose_remat`, over example arguments `args`);
    any other value uses `method` and its own policy. make_step(method) -> jitted step.
    """
    def build(policy):
        built = method if policy == method.remat_policy else methods.build(
            config_lib.with_values(config, {"train.remat": policy}))
        return built, make_step(built)

    if config.train.remat == "auto":
        _, method, step, _ = choose_remat(build, args)
        return method, step
    return method, make_step(method)
