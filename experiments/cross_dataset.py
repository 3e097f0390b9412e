"""The zero-shot protocol end to end: train on the auxiliary dataset, evaluate on every target.

    python -m experiments.cross_dataset --method sgnet [--demo] [--root runs/experiments]
        [--evaluate DATASET ...] [--dry_run] [--emit_jobs DIR] [--set KEY=VALUE] ...

Two runs per method (the papers' protocol, FACTS.md "Training protocols"):
- `visa_to_mvtec`: trained on VisA, evaluated on MVTec-AD and the other targets of the protocol;
- `mvtec_to_visa`: trained on MVTec-AD, evaluated on VisA.
The train CLI evaluates every target dataset of the run's protocol at the end
(`RUN/eval/<dataset>/metrics.json`); `--evaluate DATASET` adds targets through the evaluation
CLI. Results: `ROOT/cross_dataset_<method>/results.md`, laid out like the paper's main tables.

`--demo`: one run of `<method>.py:demo` (tiny random backbone, the synthetic protocol: trained on
some generated classes, evaluated on the held-out ones); the synthetic dataset stands in for
MVTec-AD in the tables. `--method linear_probe --demo` is the engine's reference method (seconds).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from experiments import cli
from experiments.grid import Grid, Run

PROTOCOLS = ("visa_to_mvtec", "mvtec_to_visa")
# Method -> paper tables of its cross-dataset results (zsad_jax/evaluation/paper_results.json).
TABLES = {
    "anomalyclip": ("anomalyclip.cross_dataset", "anomalyclip.mvtec_classes", "anomalyclip.visa_classes"),
    "sgnet": ("sgnet.cross_dataset",),
    "ssvp": ("ssvp.table1", "ssvp.table2"),
    "visualad": ("visualad.cross_dataset",),
    "linear_probe": (),
}


def cross_dataset_grid(method: str, demo: bool = False) -> Grid:
    """The method's runs of the zero-shot protocol (demo: one synthetic run)."""
    if method not in TABLES:
        raise ValueError(f"--method {method!r}: known methods are {', '.join(TABLES)}.")
    config = f"{method}.py"
    if demo:
        return Grid(f"cross_dataset_{method}_demo", (Run("demo", f"{config}:demo"),),
                    tables=TABLES[method], dataset_map={"mvtec": "synthetic"})
    if method == "linear_probe":
        raise ValueError("linear_probe is the engine's reference method: it only has the --demo "
                         "(synthetic) protocol.")
    runs = tuple(Run(p, f"{config}:{p}") for p in PROTOCOLS)
    return Grid(f"cross_dataset_{method}", runs, tables=TABLES[method])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.cross_dataset",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True, choices=sorted(TABLES))
    cli.add_run_flags(parser, default_root="runs/experiments")
    args = parser.parse_args(argv)
    try:
        grid = cross_dataset_grid(args.method, args.demo)
        return 0 if cli.run_grid(grid, args) else 1
    except (ValueError, FileNotFoundError) as e:  # ConfigError is a ValueError
        sys.stderr.write(f"error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
