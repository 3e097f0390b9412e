"""Devices: `jax.distributed` start-up, the data-parallel mesh, placing host data on it.

Single host: every local device on one "data" axis. Multi-host (TPU pods, or explicit coordinator
flags, e.g. several CPU processes on localhost): `initialize_distributed` is called before any
other JAX call, then the mesh spans every device of every process, and each process feeds its own
share of each global batch (`zsad_jax.data.make_global_batch`).
"""

from __future__ import annotations

import os

import jax
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
