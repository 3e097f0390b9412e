"""The multi-host launcher: the commands it builds, failure handling, a real two-process check."""

import json
import socket
import sys
import time

import pytest

from experiments.tpu_pod import launch

TRAIN = ["python", "-m", "zsad_jax.train", "--config", "sgnet.py", "--workdir", "/shared/runs/a b"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tpu_runs_the_command_unchanged_on_every_worker():
    (process,) = launch.tpu_processes(["--", *TRAIN], "my-pod", "us-central2-b", project="p",
                                      env=[("TFDS_DATA_DIR", "/gcs/bucket/tfds")])
    assert process.argv == (
        "gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod", "--zone=us-central2-b",
        "--worker=all", "--project=p",
        "--command=cd ~/zsad_jax && export TFDS_DATA_DIR=/gcs/bucket/tfds; python -m zsad_jax.train "
        "--config sgnet.py --workdir '/shared/runs/a b'")


def test_gpu_nodes_get_coordinator_flags_in_host_order():
    processes = launch.gpu_processes(TRAIN, ["node0", "node1", "node2"], port=4321,
                                     repo_dir="/home/me/zsad_jax", ssh=["ssh", "-p", "22"])
    assert [p.argv[:4] for p in processes] == [("ssh", "-p", "22", f"node{i}") for i in range(3)]
    assert processes[2].argv[4] == (
        "cd /home/me/zsad_jax && python -m zsad_jax.train --config sgnet.py --workdir "
        "'/shared/runs/a b' --coordinator_address=node0:4321 --num_processes=3 --process_id=2")


def test_local_processes_and_bad_commands():
    processes = launch.local_processes(["python", "x.py"], 2, port=1, devices_per_process=4)
    assert processes[1].argv == ("python", "x.py", "--coordinator_address=127.0.0.1:1",
                                 "--num_processes=2", "--process_id=1")
    assert dict(processes[0].env) == {"JAX_PLATFORMS": "cpu",
                                      "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    with pytest.raises(ValueError, match="no command"):
        launch.local_processes(["--"], 2)
    with pytest.raises(ValueError, match="already has --num_processes"):
        launch.local_processes(["python", "x.py", "--num_processes=4"], 2)
    with pytest.raises(ValueError, match="--hosts is empty"):
        launch.gpu_processes(["python", "x.py"], [""])


def test_a_failed_process_stops_the_others(tmp_path):
    # Process 1 fails at once; process 0 would wait "forever" for it (like a collective would).
    script = ("import sys, time\n"
              "pid = int(sys.argv[-1].split('=')[1])\n"
              "print('started', pid, flush=True)\n"
              "sys.exit(5) if pid == 1 else time.sleep(120)\n")
    processes = launch.local_processes([sys.executable, "-c", script], 2)
    start = time.monotonic()
    codes = launch.run(processes, log_dir=tmp_path, echo=False, timeout=60)
    assert codes[1] == 5 and codes[0] != 0
    assert time.monotonic() - start < 30
    assert "started 1" in (tmp_path / "process_1.log").read_text()


def test_two_processes_join_one_jax_distributed_run(tmp_path, capsys):
    """Two localhost processes with two CPU devices each see four devices and sum over all."""
    code = launch.main(["local", "--num_processes", "2", "--devices_per_process", "2", "--port",
                        str(_free_port()), "--log_dir", str(tmp_path), "--", sys.executable, "-m",
                        "experiments.tpu_pod.check_distributed"])
    assert code == 0, capsys.readouterr().out[-2000:]
    for index in range(2):
        lines = (tmp_path / f"process_{index}.log").read_text().splitlines()
        report = json.loads(next(line for line in lines if line.startswith("{")))
        assert report == {"process_index": index, "process_count": 2, "local_devices": 2,
                          "devices": 4, "sum": 10.0}
