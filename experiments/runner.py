"""Executes a grid: one run after another, or as job scripts for a cluster. Resumable.

Layout under the grid's root directory `ROOT`:

    ROOT/<run>/experiment.json            the run's name, row, config spec and overrides
    ROOT/<run>/train.log                  stdout + stderr of the train CLI (sequential mode)
    ROOT/<run>/final.json                 the last step, written when the training finished
    ROOT/<run>/eval/step_<N>/<dataset>/metrics.json   the evaluations of its last checkpoint N

A run is finished when its training finished and the last checkpoint has a metrics.json for every
required evaluation dataset of its protocol (`zsad_jax.data.PROTOCOLS`), of `expect_datasets` and
of `evaluate_datasets` (for a protocol zsad_jax does not know: any metrics.json); finished runs
are skipped. An unfinished run is simply started again: the train CLI resumes from the run's
latest checkpoint by itself.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence

from experiments.grid import Grid, Run

RUN_INFO = "experiment.json"
TRAIN_LOG = "train.log"


def metrics_files(run_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """{dataset directory name: metrics.json path} of a run's final evaluations."""
    from zsad_jax.runs import final_results

    return final_results(run_dir)


def is_finished(run_dir: pathlib.Path, expect_datasets: Sequence[str] = ()) -> bool:
    """True when the run has its metrics.json files (all of `expect_datasets`, or at least one)."""
    found = metrics_files(run_dir)
    if expect_datasets:
        return all(d in found for d in expect_datasets)
    return bool(found)


def protocol_datasets(run: Run) -> tuple[str, ...]:
    """The datasets the run's protocol must evaluate (`zsad_jax.data.PROTOCOLS[...].eval`).

    A run counts as finished only when each of them has its metrics.json (a run stopped during
    its final evaluation is not). Empty for a protocol zsad_jax.data does not know.
    """
    from zsad_jax import config_lib, data

    config = config_lib.load_config(run.config, run.overrides)
    protocol = data.PROTOCOLS.get(config.data.protocol)
    return tuple(dict.fromkeys(s.dataset for s in protocol.eval)) if protocol else ()


def train_command(run: Run, run_dir: pathlib.Path, python: str = sys.executable,
                  extra_flags: Sequence[str] = ()) -> list[str]:
    """The train CLI's argv for `run`, writing into `run_dir`."""
    return [python, "-m", "zsad_jax.train", "--config", run.config, "--workdir", str(run_dir),
            *[f"--config.{item}" for item in run.overrides], *extra_flags]


def evaluate_command(run_dir: pathlib.Path, dataset: str, python: str = sys.executable,
                     extra_flags: Sequence[str] = ()) -> list[str]:
    """The evaluation CLI's argv for one more target dataset of a trained run."""
    return [python, "-m", "zsad_jax.evaluate", "--workdir", str(run_dir), "--dataset", dataset,
            *extra_flags]


def write_run_info(run: Run, run_dir: pathlib.Path, grid_name: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    info = dict(run.to_json(), grid=grid_name)
    (run_dir / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")


def read_run_info(run_dir: pathlib.Path) -> dict | None:
    """The experiment.json of a run directory, or None if it has none."""
    path = pathlib.Path(run_dir) / RUN_INFO
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from e


@dataclasses.dataclass
class RunResult:
    name: str
    status: str            # "skipped" (already finished) | "done" | "failed" | "dry-run"
    seconds: float = 0.0
    message: str = ""


def _run_logged(argv: list[str], log_path: pathlib.Path, env: dict[str, str] | None,
                echo: bool) -> int:
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                   text=True, bufsize=1)
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if echo:
                sys.stdout.write(line)
        return process.wait()


def run_sequential(grid: Grid, root: pathlib.Path, *, expect_datasets: Sequence[str] = (),
                   extra_train_flags: Sequence[str] = (), evaluate_datasets: Sequence[str] = (),
                   python: str = sys.executable, env: dict[str, str] | None = None,
                   dry_run: bool = False, keep_going: bool = True,
                   echo: bool = False) -> list[RunResult]:
    """Runs the grid's unfinished runs one after another; returns one result per run.

    evaluate_datasets: target datasets evaluated after training with the evaluation CLI when the
    train CLI's own final evaluation did not cover them (they count as expected too).
    keep_going: a failed run is reported and the next one starts (False: stop at the first).
    """
    root = pathlib.Path(root)
    results = []
    for index, run in enumerate(grid.runs):
        run_dir = root / run.name
        prefix = f"[{index + 1}/{len(grid)}] {run.name}"
        expected = tuple(dict.fromkeys([*protocol_datasets(run), *expect_datasets,
                                        *evaluate_datasets]))
        if is_finished(run_dir, expected):
            print(f"{prefix}: finished earlier, skipped", flush=True)
            results.append(RunResult(run.name, "skipped"))
            continue
        # (dataset or None for training, argv): evaluations run only for datasets still missing.
        steps = [(None, train_command(run, run_dir, python, extra_train_flags))]
        steps += [(d, evaluate_command(run_dir, d, python)) for d in evaluate_datasets]
        if dry_run:
            for _, argv in steps:
                print(f"{prefix}: {shlex.join(argv)}", flush=True)
            results.append(RunResult(run.name, "dry-run"))
            continue
        write_run_info(run, run_dir, grid.name)
        print(f"{prefix}: training (log: {run_dir / TRAIN_LOG})", flush=True)
        start = time.monotonic()
        status, message = "done", ""
        for dataset, argv in steps:
            if dataset is not None and dataset in metrics_files(run_dir):
                continue
            code = _run_logged(argv, run_dir / TRAIN_LOG, env, echo)
            if code != 0:
                status = "failed"
                message = f"exit code {code} from {shlex.join(argv[1:3])}; see {run_dir / TRAIN_LOG}"
                break
        if status == "done" and not is_finished(run_dir, expected):
            status = "failed"
            missing = [d for d in expected if d not in metrics_files(run_dir)] or ["any dataset"]
            message = (f"the run ended without metrics.json for {', '.join(missing)} under "
                       f"{run_dir / 'eval'} (for its last checkpoint)")
        seconds = time.monotonic() - start
        print(f"{prefix}: {status} in {seconds:.0f} s{': ' + message if message else ''}", flush=True)
        results.append(RunResult(run.name, status, seconds, message))
        if status == "failed" and not keep_going:
            break
    return results


_JOB_TEMPLATE = """#!/usr/bin/env bash
# Run {name!r} of grid {grid!r}. Skips itself when finished; resumes from its checkpoint otherwise.
set -euo pipefail
cd {repo}
RUN_DIR={run_dir}
final_step() {{ sed -E 's/.*"step": *([0-9]+).*/\\1/' "$RUN_DIR/final.json"; }}
if {finished_test}; then
  echo "{name}: finished earlier, skipped"; exit 0
fi
mkdir -p "$RUN_DIR"
cat > "$RUN_DIR/{info}" <<'EOF'
{info_json}
EOF
{commands}
"""

_SLURM_TEMPLATE = """#!/usr/bin/env bash
# Grid {grid!r} as a Slurm job array: sbatch {path}
# Edit the resources for your cluster; every task runs one job script of jobs/.
#SBATCH --job-name={grid}
#SBATCH --array=0-{last}
#SBATCH --gpus=1
#SBATCH --time=24:00:00
#SBATCH --output={jobs_dir}/slurm-%A_%a.out
set -euo pipefail
JOBS=({scripts})
bash "{jobs_dir}/${{JOBS[$SLURM_ARRAY_TASK_ID]}}"
"""


def emit_jobs(grid: Grid, root: pathlib.Path, jobs_dir: pathlib.Path, *,
              expect_datasets: Sequence[str] = (), extra_train_flags: Sequence[str] = (),
              evaluate_datasets: Sequence[str] = (),
              python: str = "python", repo: pathlib.Path | None = None) -> list[pathlib.Path]:
    """Writes one bash script per run (all of them: each skips itself once finished) into
    `jobs_dir`, plus `jobs.txt` (one `bash script` line per run, for xargs / GNU parallel) and
    `slurm_array.sh`. Returns the per-run scripts."""
    root = pathlib.Path(root).absolute()
    jobs_dir = pathlib.Path(jobs_dir).absolute()
    repo = pathlib.Path(repo or pathlib.Path(__file__).resolve().parent.parent)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    scripts = []
    for run in grid.runs:
        run_dir = root / run.name
        commands = [shlex.join(train_command(run, run_dir, python, extra_train_flags))]
        commands += [shlex.join(evaluate_command(run_dir, d, python)) for d in evaluate_datasets]
        expected = list(dict.fromkeys([*protocol_datasets(run), *expect_datasets,
                                       *evaluate_datasets]))
        results = '$RUN_DIR/eval/step_$(final_step)'
        finished_test = ('[ -f "$RUN_DIR/final.json" ] && ' + (
            " && ".join(f'[ -f "{results}/{d}/metrics.json" ]' for d in expected) if expected
            else f'compgen -G "{results}/*/metrics.json" > /dev/null'))
        text = _JOB_TEMPLATE.format(
            finished_test=finished_test, name=run.name, grid=grid.name, repo=shlex.quote(str(repo)),
            run_dir=shlex.quote(str(run_dir)), info=RUN_INFO,
            info_json=json.dumps(dict(run.to_json(), grid=grid.name), indent=2),
            commands="\n".join(commands))
        path = jobs_dir / f"{run.name}.sh"
        path.write_text(text)
        path.chmod(0o755)
        scripts.append(path)
    (jobs_dir / "jobs.txt").write_text("".join(f"bash {shlex.quote(str(p))}\n" for p in scripts))
    slurm = jobs_dir / "slurm_array.sh"
    slurm.write_text(_SLURM_TEMPLATE.format(
        grid=grid.name, path=slurm, last=max(len(scripts) - 1, 0), jobs_dir=jobs_dir,
        scripts=" ".join(shlex.quote(p.name) for p in scripts)))
    slurm.chmod(0o755)
    return scripts


def summary_line(results: Sequence[RunResult]) -> str:
    counts = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items()) or "no runs"

