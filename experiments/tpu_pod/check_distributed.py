"""A tiny multi-process check: does every process join and see the others' devices?

    python -m experiments.tpu_pod.launch local --num_processes 2 --devices_per_process 2 -- \\
        python -m experiments.tpu_pod.check_distributed

Takes the train CLI's coordinator flags (added by the launcher), starts `jax.distributed` the way
the train CLI does (`zsad_jax.devices.initialize_distributed`), sums one value per
device across all processes, and prints one JSON line: process index/count, local and global
device counts, the global sum (expected: n(n+1)/2 for n devices in all).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.tpu_pod.check_distributed")
    parser.add_argument("--coordinator_address", default="")
    parser.add_argument("--num_processes", type=int, default=0)
    parser.add_argument("--process_id", type=int, default=-1)
    args = parser.parse_args(argv)

    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from zsad_jax import devices as sharding

    sharding.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    mesh = sharding.make_mesh()
    # Process p's i-th local device holds p * local_count + i + 1: the global sum is n(n+1)/2 for n
    # devices only if every process took part with its own devices.
    count = jax.local_device_count()
    local = np.arange(1, count + 1, dtype=np.float32) + jax.process_index() * count
    values = multihost_utils.host_local_array_to_global_array(
        local, mesh, jax.sharding.PartitionSpec(sharding.DATA_AXIS))
    total = float(jax.jit(lambda x: x.sum(), out_shardings=sharding.replicated(mesh))(values))
    print(json.dumps({"process_index": jax.process_index(), "process_count": jax.process_count(),
                      "local_devices": jax.local_device_count(), "devices": jax.device_count(),
                      "sum": total}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
