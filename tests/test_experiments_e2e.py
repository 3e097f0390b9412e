"""Runners and the pod launcher driving the real train CLI on the reference method (tiny runs)."""

import argparse
import json
import socket
import sys

import pytest

from experiments import cli, cross_dataset, runner
from experiments.grid import Grid, Run
from experiments.tpu_pod import launch

STEPS = "train.num_steps=2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_run_flags(parser, default_root="unused")
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def tiny_grid_root(tmp_path_factory):
    """A two-row grid on the reference method, run through the real train CLI, laid out as the
    SGNet ablation table (synthetic data standing in for MVTec-AD and VisA)."""
    root = tmp_path_factory.mktemp("experiments")
    grid = Grid("tiny", _tiny_runs(), tables=("sgnet.ablation",),
                dataset_map={"mvtec": "synthetic", "visa": "synthetic"})
    # The synthetic data set is generated once (by the first run) and shared by all runs.
    assert cli.run_grid(grid, _args("--root", str(root), "--set", _shared_data(root)))
    return root / "tiny"


def _tiny_runs():
    return (Run("gin", "linear_probe.py:demo", (STEPS,), row="gin"),
            Run("full", "linear_probe.py:demo", (STEPS, "optim.lr=0.05"), row="full"))


def _shared_data(root) -> str:
    return f"data.roots.synthetic={root / 'synthetic'}"


def _mean(run_dir, metric):
    return json.loads(runner.metrics_files(run_dir)["synthetic"].read_text())["mean"][metric]


def test_tiny_grid_produces_the_runs_and_the_table(tiny_grid_root):
    assert sorted(p.name for p in tiny_grid_root.iterdir() if p.is_dir()) == ["full", "gin"]
    # The aggregator takes the runner's --root (grid folders inside) as well as the grid folder.
    from experiments import aggregate

    assert sorted(r.name for r in aggregate.collect(tiny_grid_root.parent)) == ["full", "gin"]
    assert (tiny_grid_root.parent / "synthetic").is_dir()
    for name in ("gin", "full"):
        assert runner.is_finished(tiny_grid_root / name, ["synthetic"])
        assert runner.read_run_info(tiny_grid_root / name)["grid"] == "tiny"
    table = (tiny_grid_root / "results.md").read_text()
    gin = [f"{100 * _mean(tiny_grid_root / 'gin', m):.1f}" for m in ("image_auroc", "pixel_auroc")]
    assert (f"| + GIN interaction | gin | {gin[0]} | 91.8 | " in table
            and f" | {gin[1]} | 92.1 | " in table)
    assert "| Full (GIN + GPR) | full | " in table
    assert "| Baseline only (w/o GIN/GPR) | - | n/a | 91.1 | - |" in table
    assert "| gin | synthetic | 28 |" in table       # all-results table: 28 held-out images
    index = (tiny_grid_root / "report.html").read_text()  # the experiment's page: each run's report
    for name in ("gin", "full"):
        report = next((tiny_grid_root / name / "eval").glob("step_*/synthetic/report.html"))
        assert f'href="{report.relative_to(tiny_grid_root).as_posix()}"' in index


def test_finished_runs_are_not_started_again(tiny_grid_root, capsys):
    logs = {n: (tiny_grid_root / n / "train.log").read_text() for n in ("gin", "full")}
    grid = Grid("tiny", _tiny_runs()).with_overrides(_shared_data(tiny_grid_root.parent))
    results = runner.run_sequential(grid, tiny_grid_root)
    assert [r.status for r in results] == ["skipped", "skipped"]
    assert {n: (tiny_grid_root / n / "train.log").read_text() for n in logs} == logs


def test_two_processes_through_the_launcher_match_one(tiny_grid_root, tmp_path):
    """The two-process localhost run (jax.distributed, one CPU device each) started by the
    launcher gives the single-process run's results: same config, same global batch."""
    workdir = tmp_path / "two_process"
    code = launch.main(["local", "--num_processes", "2", "--devices_per_process", "1",
                        "--port", str(_free_port()), "--log_dir", str(tmp_path / "logs"), "--",
                        sys.executable, "-m", "zsad_jax.train", "--config", "linear_probe.py:demo",
                        "--workdir", str(workdir), "--progress=false", f"--config.{STEPS}",
                        f"--config.{_shared_data(tiny_grid_root.parent)}"])
    log = (tmp_path / "logs" / "process_1.log").read_text()
    assert code == 0, log[-3000:]
    assert "--process_id" not in log and "done: 2/2 steps" in log
    for metric in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        assert _mean(workdir, metric) == pytest.approx(_mean(tiny_grid_root / "gin", metric),
                                                       abs=1e-5)


def test_cross_dataset_demo_command(tmp_path, capsys):
    assert cross_dataset.main(["--method", "linear_probe", "--demo", "--root", str(tmp_path),
                               "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "-m zsad_jax.train --config linear_probe.py:demo --workdir " in out
    assert str(tmp_path / "cross_dataset_linear_probe_demo" / "demo") in out
    assert cross_dataset.main(["--method", "linear_probe", "--root", str(tmp_path)]) == 2
    assert "only has the --demo" in capsys.readouterr().err
    assert cross_dataset.main(["--method", "sgnet", "--root", str(tmp_path), "--emit_jobs",
                               str(tmp_path / "jobs"), "--set", "train.epochs=1"]) == 0
    script = (tmp_path / "jobs" / "cross_dataset_sgnet" / "visa_to_mvtec.sh").read_text()
    assert "--config sgnet.py:visa_to_mvtec" in script and "--config.train.epochs=1" in script
    assert '/mvtec/metrics.json' in script and 'final.json' in script   # the required target
