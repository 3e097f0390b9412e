"""Jitted, sharded batch inference: (params, batch) -> smoothed anomaly maps + image scores.

The batch is split over the mesh's "data" axis (all devices, all hosts); parameters are
replicated. `zsad_jax.devices.to_host` brings results back gathered over processes, in global
batch order.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from zsad_jax import devices, ops


@functools.lru_cache(maxsize=8)
def inference_fn(method, smoothing_sigma: float, mesh: Mesh):
    """jit((params, batch) -> (maps (B, M, M) f32 smoothed, scores (B,) f32)), cached per method."""
    data = NamedSharding(mesh, PartitionSpec(devices.DATA_AXIS))

    def infer(params, batch):
        maps, scores = method.anomaly_outputs(params, batch)
        maps = ops.smooth_maps(maps.astype(jnp.float32), smoothing_sigma)
        return maps, scores.astype(jnp.float32)

    return jax.jit(infer, out_shardings=(data, data))
