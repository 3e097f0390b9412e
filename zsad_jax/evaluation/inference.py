"""Jitted, sharded batch inference: (params, batch) -> smoothed anomaly maps + image scores.

The batch is split over the mesh's "data" axis (all devices, all hosts); parameters are
replicated. Results come back to the host gathered over processes, in global batch order.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from zsad_jax.evaluation.postprocess import smooth_maps

# The training loop's mesh and placement, shared so evaluation and training shard alike. (Not
# `jax.make_mesh`: its axes are Explicit in recent jax, and sharding-in-types then rejects the
# backbones' concatenation of unsharded class tokens with sharded patches.)
from zsad_jax.training.sharding import make_mesh as default_mesh  # noqa: F401
from zsad_jax.training.sharding import replicate  # noqa: F401

DATA_AXIS = "data"


def global_batch_size(requested: int, mesh: Mesh) -> int:
    """`requested` rounded up to a multiple of the mesh's device count (and process count)."""
    multiple = int(np.lcm(mesh.devices.size, jax.process_count()))
    return max(multiple, -(-int(requested) // multiple) * multiple)


@functools.lru_cache(maxsize=8)
def inference_fn(method, smoothing_sigma: float, mesh: Mesh):
    """jit((params, batch) -> (maps (B, M, M) f32 smoothed, scores (B,) f32)), cached per method."""
    data = NamedSharding(mesh, PartitionSpec(DATA_AXIS))

    def infer(params, batch):
        maps, scores = method.anomaly_outputs(params, batch)
        maps = smooth_maps(maps.astype(jnp.float32), smoothing_sigma)
        return maps, scores.astype(jnp.float32)

    return jax.jit(infer, out_shardings=(data, data))


def to_host(x: jax.Array) -> np.ndarray:
    """A global array -> the full numpy array on every process (all-gathered over processes)."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
