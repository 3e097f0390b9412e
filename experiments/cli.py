"""The command line shared by the experiment runners (gpr_ablation, ssvp_ablation, ...).

Each runner module defines named grid builders `{name: build(demo: bool) -> Grid}` and calls
`grid_main`. Every grid runs into `ROOT/<grid name>/<run>/` and gets `ROOT/<grid name>/results.md`.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence

from experiments import aggregate, runner
from experiments.grid import Grid, validate

GridBuilder = Callable[[bool], "Grid | None"]  # None: the grid has no demo version


def add_run_flags(parser: argparse.ArgumentParser, default_root: str) -> None:
    parser.add_argument("--root", default=default_root,
                        help="directory of the grids' runs (default: %(default)s)")
    parser.add_argument("--demo", action="store_true",
                        help="tiny configs on synthetic data (CPU, minutes) instead of the papers'")
    parser.add_argument("--only", action="append", default=[], metavar="REGEX",
                        help="run only the runs whose name matches (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="config override appended to every run, e.g. train.epochs=1 "
                             "(repeatable)")
    parser.add_argument("--train_flag", action="append", default=[], metavar="FLAG",
                        help="extra flag for the train CLI, e.g. --train_flag=--progress=false "
                             "(repeatable)")
    parser.add_argument("--evaluate", action="append", default=[], metavar="DATASET",
                        help="after training, also evaluate on DATASET with the evaluation CLI "
                             "(repeatable)")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the commands of the unfinished runs and stop")
    parser.add_argument("--emit_jobs", default="", metavar="DIR",
                        help="write one job script per run (+ jobs.txt, slurm_array.sh) into "
                             "DIR/<grid> instead of running")
    parser.add_argument("--python", default="",
                        help="interpreter for the runs (default: this one; 'python' in job "
                             "scripts)")
    parser.add_argument("--stop_on_failure", action="store_true",
                        help="stop at the first failed run (default: report it and go on)")
    parser.add_argument("--echo", action="store_true",
                        help="also print the train CLI's output (it always goes to "
                             "ROOT/<grid>/<run>/train.log)")


def run_grid(grid: Grid, args: argparse.Namespace) -> bool:
    """Runs (or emits) one grid as the flags say, then writes its results table. True if no run
    failed."""
    if args.only:
        grid = grid.select(args.only)
    if args.overrides:
        grid = grid.with_overrides(*args.overrides)
    validate(grid)
    root = pathlib.Path(args.root) / grid.name
    print(f"== grid {grid.name}: {len(grid)} runs under {root}", flush=True)
    if args.emit_jobs:
        jobs_dir = pathlib.Path(args.emit_jobs) / grid.name
        scripts = runner.emit_jobs(grid, root, jobs_dir, extra_train_flags=args.train_flag,
                                   evaluate_datasets=args.evaluate,
                                   python=args.python or "python")
        print(f"wrote {len(scripts)} job scripts, {jobs_dir / 'jobs.txt'} and "
              f"{jobs_dir / 'slurm_array.sh'}; afterwards: python -m experiments.aggregate {root} "
              + " ".join(f"--table {t}" for t in grid.tables))
        return True
    results = runner.run_sequential(
        grid, root, extra_train_flags=args.train_flag, evaluate_datasets=args.evaluate,
        python=args.python or sys.executable, dry_run=args.dry_run,
        keep_going=not args.stop_on_failure, echo=args.echo)
    print(f"== grid {grid.name}: {runner.summary_line(results)}", flush=True)
    if not args.dry_run:
        out = root / "results.md"
        out.write_text(aggregate.report_markdown(root, grid.tables, title=f"Grid {grid.name}",
                                                 dataset_map=grid.dataset_map))
        html = aggregate.write_html_report(root / "report.html", aggregate.collect(root),
                                           grid.tables, grid.dataset_map, title=f"Grid {grid.name}")
        print(f"results: {out}, {html}", flush=True)
    return not any(r.status == "failed" for r in results)


def grid_main(builders: Mapping[str, GridBuilder], description: str, prog: str,
              argv: Sequence[str] | None = None) -> int:
    """`python -m experiments.<runner> [--grid NAME ...] [flags]`: runs the chosen grids."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--grid", action="append", default=[], choices=sorted(builders),
                        help="grid to run (repeatable; default: all, in this order: "
                             + ", ".join(builders) + ")")
    add_run_flags(parser, default_root="runs/experiments")
    args = parser.parse_args(argv)
    names = args.grid or list(builders)
    ok = True
    for name in names:
        try:
            grid = builders[name](args.demo)
            if grid is None:
                print(f"== grid {name}: no demo version, skipped", flush=True)
                continue
            ok = run_grid(grid, args) and ok
        except (ValueError, FileNotFoundError) as e:  # ConfigError is a ValueError
            sys.stderr.write(f"error: {e}\n")
            return 2
        if not ok and args.stop_on_failure:
            break
    return 0 if ok else 1
