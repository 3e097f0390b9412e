"""Devices: `jax.distributed` start-up, the data-parallel mesh, placing data on it and back.

Single host: every local device on one "data" axis. Multi-host (TPU pods, or explicit coordinator
flags, e.g. several CPU processes on localhost): `initialize_distributed` is called before any
other JAX call, then the mesh spans every device of every process, and each process feeds its own
share of each global batch.

Training, the feature cache, evaluation, prediction and the benchmarks share this module: one mesh
(`make_mesh`), one host -> device path for batches (`to_device`: the method's `prepare_batch`, then
`place_batch`), one way back (`to_host`). (Not `jax.make_mesh`: its axes are Explicit in recent
jax, and sharding-in-types then rejects the backbones' concatenation of unsharded class tokens
with sharded patches.)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import jax
import ml_dtypes
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1, force: bool = False) -> bool:
    """Starts `jax.distributed` when asked (explicit flags) or when the environment says so.

    Explicit: all three arguments given. Automatic: on Cloud TPU pods (`TPU_WORKER_HOSTNAMES` /
    `MEGASCALE_COORDINATOR_ADDRESS` set with more than one worker), under SLURM/Open MPI with
    several tasks, or with `force` (the train CLI's --distributed), `jax.distributed.initialize()`
    discovers everything itself. Returns True if initialized. On CPU, cross-process collectives
    use gloo.
    """
    if coordinator_address or num_processes > 1:
        if not coordinator_address or num_processes < 1 or process_id < 0:
            raise ValueError("multi-process training needs --coordinator_address, --num_processes "
                             f"and --process_id together (got {coordinator_address!r}, "
                             f"{num_processes}, {process_id})")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    auto = (len([h for h in hosts.split(",") if h]) > 1
            or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))
            or int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1
            or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1)
    if auto or force:
        jax.distributed.initialize()
        return True
    return False


def make_mesh() -> Mesh:
    """A 1-D mesh of every device (all processes) on the "data" axis."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree, mesh: Mesh):
    """Host/device pytree -> the same values replicated on every device of the mesh.

    Every process must pass identical values (they come from the same seed / weights files).
    """
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        x = np.asarray(jax.device_get(x))
        return jax.make_array_from_process_local_data(sharding, x, x.shape)

    return jax.tree_util.tree_map(put, tree)


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> None:
    if global_batch_size % mesh.size:
        raise ValueError(f"config.data.batch_size={global_batch_size} is not divisible by the "
                         f"number of devices ({mesh.size}); use a multiple of {mesh.size}")


def global_batch_size(requested: int, mesh: Mesh) -> int:
    """`requested` rounded up to a multiple of the mesh's device count (and process count)."""
    multiple = int(np.lcm(mesh.devices.size, jax.process_count()))
    return max(multiple, -(-int(requested) // multiple) * multiple)


def place_batch(host_batch: Mapping, mesh: Mesh, axis: str = DATA_AXIS) -> dict:
    """This process's rows of a global batch -> global jax.Arrays sharded over `axis`.

    Every array leaf is split on its leading axis, so keys a method adds in `prepare_batch` and
    cached bf16 features travel with images, masks and labels; host-only string entries
    (class_name, image_path, ...) are dropped. Each process passes its own share; the global batch
    is the shares in process order.

    bf16 leaves travel as their uint16 bit patterns and are bit-cast on the device: a host bf16
    array is converted element by element on its way to a device (~0.1 s for 19 MB on a CPU), a
    uint16 array is not.
    """
    sharding = NamedSharding(mesh, PartitionSpec(axis))

    def put(x):
        x = np.asarray(x)
        bf16 = x.dtype == ml_dtypes.bfloat16
        shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        array = jax.make_array_from_process_local_data(
            sharding, x.view(np.uint16) if bf16 else x, shape)
        return _bitcast_bf16()(array) if bf16 else array

    def is_array_data(value) -> bool:
        leaves = jax.tree_util.tree_leaves(value)
        return bool(leaves) and all(np.asarray(leaf).dtype.kind not in "USO" for leaf in leaves)

    return {key: jax.tree_util.tree_map(put, value)
            for key, value in host_batch.items() if is_array_data(value)}


@functools.cache
def _bitcast_bf16():
    import jax.numpy as jnp

    return jax.jit(lambda bits: jax.lax.bitcast_convert_type(bits, jnp.bfloat16))


def to_device(method, host_batch: Mapping, mesh: Mesh) -> dict:
    """The host -> device path of every batch: `method.prepare_batch` (drops host-only keys, adds
    the method's own, e.g. prompt token ids from class names), then `place_batch`."""
    return place_batch(method.prepare_batch(host_batch), mesh)


def to_host(x: jax.Array) -> np.ndarray:
    """A global array -> the full numpy array on every process (all-gathered over processes)."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def local_value(x) -> np.ndarray:
    """A replicated (possibly multi-process) jax.Array -> numpy, without collectives."""
    if isinstance(x, jax.Array):
        return np.asarray(x.addressable_shards[0].data)
    return np.asarray(x)
