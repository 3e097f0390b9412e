"""Data parallelism: 1 device == 8 simulated CPU devices == 2 `jax.distributed` processes
(the latter with and without the feature cache).

The 8-device and 2-process runs are subprocesses of this file (`python THIS_FILE WORKER ...`);
the 2-process run is the pod path (coordinator, per-process input shards, cross-process
collectives over gloo, one shared checkpoint directory) proven on one machine.
"""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from numerics import assert_trees_close

REPO = pathlib.Path(__file__).resolve().parent.parent
THIS = pathlib.Path(__file__).resolve()
STEPS = 4


def worker(workdir: str, synthetic_root: str, feature_cache: str, coordinator: str = "",
           num_processes: int = 0, process_id: int = -1) -> None:
    """Trains the reference method STEPS steps; process 0 writes the updates (params - init) to
    workdir/params.npz."""
    from zsad_jax import devices as sharding

    sharding.initialize_distributed(coordinator, num_processes, process_id)
    import jax

    from zsad_jax import config_lib
    from zsad_jax.training import loop

    config = config_lib.load_config("linear_probe.py:demo", {
        "data.roots.synthetic": synthetic_root, "train.num_steps": STEPS,
        "train.ckpt_every": 2, "train.eval_every": -1, "data.batch_size": 8,
        "optim.accum_steps": 2, "optim.grad_clip_norm": 1.0,
        "train.feature_cache": feature_cache == "cache"})
    result = loop.train(config, workdir, progress=False)
    assert result.step == STEPS
    if jax.process_index() == 0:
        from zsad_jax import methods
        from zsad_jax.tree import flatten

        init = flatten(methods.build(config).init(jax.random.PRNGKey(config.seed)))
        updates = {k: v - np.asarray(init[k]) for k, v in result.params.items()}
        np.savez(pathlib.Path(workdir) / "params.npz", device_count=jax.device_count(),
                 process_count=jax.process_count(), **updates)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _spawn(args, devices: int = 1):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, str(THIS), *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=400):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from zsad_jax import data

    return str(data.make_synthetic(tmp_path_factory.mktemp("synthetic") / "synthetic", seed=0))


@pytest.fixture(scope="module")
def single_device(tmp_path_factory, synthetic_root):
    """mode ("images" | "cache") -> params of the 1-process, 1-device run (computed once)."""
    results = {}

    def get(mode):
        if mode not in results:
            workdir = tmp_path_factory.mktemp(f"one_device_{mode}")
            _finish(_spawn([workdir, synthetic_root, mode], devices=1))
            results[mode] = dict(np.load(workdir / "params.npz"))
        return dict(results[mode])

    return get


def _assert_same_params(reference, other, device_count, process_count):
    assert int(other.pop("device_count")) == device_count
    assert int(other.pop("process_count")) == process_count
    reference = {k: v for k, v in reference.items() if k not in ("device_count", "process_count")}
    assert sorted(reference) == sorted(other) == ["head/score/bias", "head/score/kernel"]
    # The training updates (params - init), not the params (the init would dominate them). Same
    # math; only the order of the cross-device sums differs.
    assert_trees_close(reference, other, rtol=1e-4, what="updates after training")


def test_eight_simulated_devices_match_one(tmp_path, synthetic_root, single_device):
    _finish(_spawn([tmp_path, synthetic_root, "images"], devices=8))
    _assert_same_params(single_device("images"), dict(np.load(tmp_path / "params.npz")), 8, 1)


@pytest.mark.parametrize("mode", ["images", "cache"])
def test_two_processes_match_one(tmp_path, synthetic_root, single_device, mode):
    coordinator = f"localhost:{_free_port()}"
    procs = [_spawn([tmp_path, synthetic_root, mode, coordinator, 2, pid], devices=1)
             for pid in (0, 1)]
    for proc in procs:
        _finish(proc)
    _assert_same_params(single_device(mode), dict(np.load(tmp_path / "params.npz")), 2, 2)
    # one shared run directory: both processes wrote one checkpoint series
    steps = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == ["2", "4"]


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], sys.argv[3], *(sys.argv[4:5]),
           *(int(a) for a in sys.argv[5:7]))
