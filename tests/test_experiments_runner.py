"""The grid runner: sequential runs, resumption, failures, job scripts (with a stand-in train CLI).

The stand-in is an executable passed as the runner's `python`: it records its argv and writes the
metrics.json the real train CLI would write, so these tests exercise the runner alone; the real
CLI is driven in test_experiments_e2e.py.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from experiments import runner
from experiments.grid import Grid, Run

DEMO = "linear_probe.py:demo"     # protocol "synthetic": the run must evaluate "synthetic"

FAKE_TRAIN = """#!{python}
import json, pathlib, sys
argv = sys.argv[1:]
with open({calls!r}, "a") as f:
    f.write(" ".join(argv) + "\\n")
workdir = pathlib.Path(argv[argv.index("--workdir") + 1])
if "--config.seed=13" in argv:
    print("boom"); sys.exit(3)
if "--config.seed=14" in argv:
    sys.exit(0)                     # exits cleanly but writes no metrics
dataset = argv[argv.index("--dataset") + 1] if "--dataset" in argv else "synthetic"
out = workdir / "eval" / "step_2" / dataset
out.mkdir(parents=True, exist_ok=True)
(workdir / "final.json").write_text(json.dumps({{"step": 2}}))
(out / "metrics.json").write_text(json.dumps({{"dataset": dataset, "classes": {{}},
                                              "mean": {{"image_auroc": 0.5}}}}))
print("trained", workdir.name)
"""


@pytest.fixture
def fake_python(tmp_path):
    calls = tmp_path / "calls.txt"
    script = tmp_path / "fake_python"
    script.write_text(FAKE_TRAIN.format(python=sys.executable, calls=str(calls)))
    script.chmod(0o755)
    return script, calls


def _calls(calls: pathlib.Path) -> list[str]:
    return calls.read_text().splitlines() if calls.exists() else []


def test_commands_carry_config_workdir_and_overrides(tmp_path):
    run = Run("r", "sgnet.py:demo", ("loss.gin=False",))
    assert runner.train_command(run, tmp_path / "r", python="py", extra_flags=["--x=1"]) == [
        "py", "-m", "zsad_jax.train", "--config", "sgnet.py:demo", "--workdir", str(tmp_path / "r"),
        "--config.loss.gin=False", "--x=1"]
    assert runner.evaluate_command(tmp_path / "r", "mpdd", python="py") == [
        "py", "-m", "zsad_jax.evaluate", "--workdir", str(tmp_path / "r"), "--dataset", "mpdd"]


def test_sequential_runs_then_resumption_skips_finished_runs(tmp_path, fake_python):
    python, calls = fake_python
    grid = Grid("g", (Run("a", DEMO, ("seed=1",), row="A"),
                      Run("b", DEMO, ("seed=2",))))
    root = tmp_path / "runs"
    results = runner.run_sequential(grid, root, python=str(python))
    assert [(r.name, r.status) for r in results] == [("a", "done"), ("b", "done")]
    assert len(_calls(calls)) == 2
    assert "--config.seed=1" in _calls(calls)[0]
    assert json.loads((root / "a" / "experiment.json").read_text()) == {
        "name": "a", "config": DEMO, "overrides": ["seed=1"], "row": "A",
        "grid": "g"}
    assert "trained a" in (root / "a" / "train.log").read_text()
    # Second invocation: both finished, nothing started.
    results = runner.run_sequential(grid, root, python=str(python))
    assert [r.status for r in results] == ["skipped", "skipped"]
    assert len(_calls(calls)) == 2
    # An interrupted run (no metrics.json) is started again; the finished one is not.
    (root / "b" / "eval" / "step_2" / "synthetic" / "metrics.json").unlink()
    results = runner.run_sequential(grid, root, python=str(python))
    assert [r.status for r in results] == ["skipped", "done"]
    assert len(_calls(calls)) == 3 and "--workdir " + str(root / "b") in _calls(calls)[2]


def test_failures_are_reported_and_the_grid_goes_on(tmp_path, fake_python):
    python, calls = fake_python
    grid = Grid("g", (Run("crash", DEMO, ("seed=13",)), Run("silent", DEMO, ("seed=14",)),
                      Run("fine", DEMO)))
    results = runner.run_sequential(grid, tmp_path, python=str(python))
    assert [r.status for r in results] == ["failed", "failed", "done"]
    assert "exit code 3" in results[0].message and "train.log" in results[0].message
    assert "without metrics.json" in results[1].message
    assert runner.summary_line(results) == "2 failed, 1 done"
    results = runner.run_sequential(grid, tmp_path / "again", python=str(python), keep_going=False)
    assert [r.status for r in results] == ["failed"]


def test_extra_target_datasets_use_the_evaluation_cli(tmp_path, fake_python):
    python, calls = fake_python
    grid = Grid("g", (Run("a", DEMO),))
    results = runner.run_sequential(grid, tmp_path, python=str(python), evaluate_datasets=["mpdd"])
    assert results[0].status == "done"
    assert set(runner.metrics_files(tmp_path / "a")) == {"synthetic", "mpdd"}
    assert _calls(calls)[1].startswith("-m zsad_jax.evaluate --workdir")
    assert runner.is_finished(tmp_path / "a", ["synthetic", "mpdd"])
    assert not runner.is_finished(tmp_path / "a", ["btad"])


def test_a_partial_final_evaluation_is_not_finished(tmp_path, capsys):
    run = Run("a", "sgnet.py")                         # visa_to_mvtec: MVTec-AD is required
    assert runner.protocol_datasets(run) == ("mvtec",)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "final.json").write_text('{"step": 2}')
    optional = tmp_path / "a" / "eval" / "step_2" / "btad" / "metrics.json"
    optional.parent.mkdir(parents=True)
    optional.write_text("{}")
    results = runner.run_sequential(Grid("g", (run,)), tmp_path, dry_run=True)
    assert [r.status for r in results] == ["dry-run"]


def test_dry_run_starts_nothing(tmp_path, fake_python, capsys):
    python, calls = fake_python
    results = runner.run_sequential(Grid("g", (Run("a", DEMO, ("seed=1",)),)), tmp_path,
                                    python=str(python), dry_run=True)
    assert [r.status for r in results] == ["dry-run"]
    assert not _calls(calls) and not (tmp_path / "a").exists()
    assert "--config.seed=1" in capsys.readouterr().out


def test_job_scripts_run_once_and_skip_when_finished(tmp_path, fake_python):
    python, calls = fake_python
    grid = Grid("g", (Run("a", DEMO, ("seed=1",)), Run("b", DEMO)))
    scripts = runner.emit_jobs(grid, tmp_path / "runs", tmp_path / "jobs", python=str(python))
    assert [p.name for p in scripts] == ["a.sh", "b.sh"]
    assert (tmp_path / "jobs" / "jobs.txt").read_text().splitlines() == [
        f"bash {tmp_path / 'jobs' / 'a.sh'}", f"bash {tmp_path / 'jobs' / 'b.sh'}"]
    slurm = (tmp_path / "jobs" / "slurm_array.sh").read_text()
    assert "#SBATCH --array=0-1" in slurm and "JOBS=(a.sh b.sh)" in slurm
    env = dict(os.environ)
    first = subprocess.run(["bash", str(scripts[0])], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    assert runner.is_finished(tmp_path / "runs" / "a")
    assert runner.read_run_info(tmp_path / "runs" / "a")["overrides"] == ["seed=1"]
    second = subprocess.run(["bash", str(scripts[0])], capture_output=True, text=True, env=env)
    assert "finished earlier, skipped" in second.stdout
    assert len(_calls(calls)) == 1
