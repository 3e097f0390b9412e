"""Start the same command on every host of a multi-host run (TPU VM pod, GPU nodes, localhost).

    python -m experiments.tpu_pod.launch tpu --tpu NAME --zone ZONE [--project P] \\
        [--repo_dir ~/zsad_jax] [--env K=V ...] [--dry_run] -- COMMAND ...
    python -m experiments.tpu_pod.launch gpu --hosts node0,node1 [--port 12355] \\
        [--repo_dir DIR] [--env K=V ...] [--dry_run] -- COMMAND ...
    python -m experiments.tpu_pod.launch local --num_processes 2 [--port 12355] \\
        [--devices_per_process 1] [--env K=V ...] [--log_dir DIR] -- COMMAND ...

COMMAND is typically `python -m zsad_jax.train --config sgnet.py --workdir DIR ...` (or a grid
runner's `--emit_jobs` script). Docs: docs/pods.md.

- `tpu`: one `gcloud compute tpus tpu-vm ssh NAME --worker=all --command ...`; every worker runs
  COMMAND unchanged. JAX finds the other workers itself on a Cloud TPU pod (the train CLI calls
  `jax.distributed.initialize()` when `TPU_WORKER_HOSTNAMES` lists several workers).
- `gpu`: one `ssh HOST` per node, all started together; COMMAND gets the train CLI's coordinator
  flags `--coordinator_address=<first host>:PORT --num_processes=N --process_id=i` (i = the
  host's position in --hosts). Each process uses every GPU of its node.
- `local`: N processes on this machine with the same coordinator flags (coordinator
  127.0.0.1:PORT): the multi-process code path without a cluster. With `--devices_per_process K`
  each process is a CPU "host" with K devices (`JAX_PLATFORMS=cpu`,
  `XLA_FLAGS=--xla_force_host_platform_device_count=K`).

The launcher waits for every process; if one fails, the others are stopped. Exit code: the first
non-zero exit code, 0 if all succeeded.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shlex
import subprocess
import sys
import threading
from collections.abc import Sequence

COORDINATOR_FLAGS = ("--coordinator_address", "--num_processes", "--process_id")


@dataclasses.dataclass(frozen=True)
class Process:
    """One process to start: its argv (run locally) and the environment additions it needs."""

    index: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        return f"[{self.index}] " + (env + " " if env else "") + shlex.join(self.argv)


def coordinator_flags(address: str, num_processes: int, process_id: int) -> list[str]:
    """The train CLI's jax.distributed flags for one process."""
    return [f"--coordinator_address={address}", f"--num_processes={num_processes}",
            f"--process_id={process_id}"]


def _check_command(command: Sequence[str]) -> list[str]:
    command = list(command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ValueError("no command given: put it after `--`, e.g. -- python -m zsad_jax.train "
                         "--config sgnet.py --workdir runs/sgnet")
    present = [f for f in COORDINATOR_FLAGS if any(a.split("=")[0] == f for a in command)]
    if present:
        raise ValueError(f"the command already has {', '.join(present)}: the launcher adds the "
                         "coordinator flags itself.")
    return command


def _parse_env(items: Sequence[str]) -> list[tuple[str, str]]:
    env = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env {item!r}: expected KEY=VALUE.")
        env.append((key, value))
    return env


def _remote_shell(repo_dir: str, env: Sequence[tuple[str, str]], command: Sequence[str]) -> str:
    exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in env)
    return f"cd {shlex.quote(repo_dir)} && {exports}{shlex.join(command)}"


def tpu_processes(command: Sequence[str], tpu: str, zone: str, project: str = "",
                  repo_dir: str = "~/zsad_jax", env: Sequence[tuple[str, str]] = ()) -> list[Process]:
    """One gcloud call that runs `command` on every worker of the TPU VM `tpu`."""
    command = _check_command(command)
    argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, f"--zone={zone}", "--worker=all"]
    if project:
        argv.append(f"--project={project}")
    # `~` must reach the remote shell unquoted to expand there.
    remote = _remote_shell(repo_dir, env, command)
    if repo_dir.startswith("~/"):
        remote = remote.replace(shlex.quote(repo_dir), "~/" + shlex.quote(repo_dir[2:]), 1)
    argv.append(f"--command={remote}")
    return [Process(0, tuple(argv))]


def gpu_processes(command: Sequence[str], hosts: Sequence[str], port: int = 12355,
                  repo_dir: str = "", env: Sequence[tuple[str, str]] = (),
                  ssh: Sequence[str] = ("ssh",)) -> list[Process]:
    """One `ssh host` per node; process i gets --process_id=i, the first host coordinates."""
    command = _check_command(command)
    hosts = [h for h in hosts if h]
    if not hosts:
        raise ValueError("--hosts is empty: list the nodes, e.g. --hosts node0,node1.")
    address = f"{hosts[0]}:{port}"
    processes = []
    for index, host in enumerate(hosts):
        full = command + coordinator_flags(address, len(hosts), index)
        remote = _remote_shell(repo_dir or os.getcwd(), env, full)
        processes.append(Process(index, (*ssh, host, remote)))
    return processes


def local_processes(command: Sequence[str], num_processes: int, port: int = 12355,
                    devices_per_process: int = 0,
                    env: Sequence[tuple[str, str]] = ()) -> list[Process]:
    """`num_processes` processes on this machine, coordinated through 127.0.0.1:port."""
    command = _check_command(command)
    if num_processes < 1:
        raise ValueError(f"--num_processes={num_processes}: need at least 1.")
    extra = list(env)
    if devices_per_process:
        extra += [("JAX_PLATFORMS", "cpu"),
                  ("XLA_FLAGS", f"--xla_force_host_platform_device_count={devices_per_process}")]
    return [Process(i, tuple(command + coordinator_flags(f"127.0.0.1:{port}", num_processes, i)),
                    tuple(extra)) for i in range(num_processes)]


def _pump(process: subprocess.Popen, index: int, log_path: pathlib.Path | None, echo: bool) -> None:
    log = open(log_path, "w") if log_path else None
    try:
        for line in process.stdout:
            if log:
                log.write(line)
                log.flush()
            if echo:
                sys.stdout.write(f"[{index}] {line}")
                sys.stdout.flush()
    finally:
        if log:
            log.close()


def run(processes: Sequence[Process], log_dir: str | pathlib.Path | None = None,
        echo: bool = True, timeout: float | None = None) -> list[int]:
    """Starts every process, streams its output (prefixed "[i] "), waits; returns the exit codes.

    When a process fails, the ones still running are terminated (they would wait forever for the
    failed peer at the next collective).
    """
    if log_dir:
        pathlib.Path(log_dir).mkdir(parents=True, exist_ok=True)
    started = []
    for p in processes:
        env = dict(os.environ)
        env.update(dict(p.env))
        popen = subprocess.Popen(p.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, bufsize=1)
        log_path = pathlib.Path(log_dir) / f"process_{p.index}.log" if log_dir else None
        thread = threading.Thread(target=_pump, args=(popen, p.index, log_path, echo), daemon=True)
        thread.start()
        started.append((p, popen, thread))
    codes: dict[int, int] = {}
    try:
        while len(codes) < len(started):
            for p, popen, _ in started:
                if p.index in codes:
                    continue
                try:
                    code = popen.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
                codes[p.index] = code
                if code != 0:
                    for q, other, _ in started:
                        if q.index not in codes and other.poll() is None:
                            sys.stderr.write(f"process {p.index} exited with {code}: stopping "
                                             f"process {q.index}\n")
                            other.terminate()
            if timeout is not None:
                timeout -= 0.2
                if timeout <= 0:
                    raise TimeoutError("processes still running after the timeout")
    finally:
        for _, popen, thread in started:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
            thread.join(timeout=5)
    return [codes[p.index] for p in processes]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.tpu_pod.launch",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Example: python -m experiments.tpu_pod.launch local "
                                            "--num_processes 2 --devices_per_process 1 -- python -m "
                                            "zsad_jax.train --config linear_probe.py:demo "
                                            "--workdir runs/two_process")
    sub = parser.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for every process (repeatable)")
    common.add_argument("--dry_run", action="store_true", help="print the commands, start nothing")
    common.add_argument("--log_dir", default="", help="also write process_<i>.log files here")
    tpu = sub.add_parser("tpu", parents=[common], help="all workers of a Cloud TPU VM pod")
    tpu.add_argument("--tpu", required=True, help="TPU VM name")
    tpu.add_argument("--zone", required=True)
    tpu.add_argument("--project", default="")
    tpu.add_argument("--repo_dir", default="~/zsad_jax", help="checkout on the workers")
    gpu = sub.add_parser("gpu", parents=[common], help="GPU nodes over ssh, jax.distributed flags")
    gpu.add_argument("--hosts", required=True, help="comma-separated nodes; the first coordinates")
    gpu.add_argument("--port", type=int, default=12355, help="coordinator port on the first host")
    gpu.add_argument("--repo_dir", default="", help="checkout on the nodes (default: this cwd)")
    gpu.add_argument("--ssh", default="ssh", help="ssh command, e.g. 'ssh -p 2222'")
    local = sub.add_parser("local", parents=[common], help="N processes on this machine")
    local.add_argument("--num_processes", type=int, default=2, help="processes to start")
    local.add_argument("--port", type=int, default=12355, help="coordinator port on 127.0.0.1")
    local.add_argument("--devices_per_process", type=int, default=0,
                       help="K > 0: CPU processes with K devices each (JAX_PLATFORMS=cpu)")
    args, command = parser.parse_known_args(argv)
    try:
        env = _parse_env(args.env)
        if args.mode == "tpu":
            processes = tpu_processes(command, args.tpu, args.zone, args.project, args.repo_dir, env)
        elif args.mode == "gpu":
            processes = gpu_processes(command, args.hosts.split(","), args.port, args.repo_dir, env,
                                      shlex.split(args.ssh))
        else:
            processes = local_processes(command, args.num_processes, args.port,
                                        args.devices_per_process, env)
    except ValueError as e:
        parser.error(str(e))
    for p in processes:
        print(p.describe(), flush=True)
    if args.dry_run:
        return 0
    codes = run(processes, args.log_dir or None)
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    if failed:
        sys.stderr.write("failed: " + ", ".join(f"process {i} (exit {c})" for i, c in failed) + "\n")
        return failed[0][1]
    return 0


if __name__ == "__main__":
    sys.exit(main())
