"""SGNet ablations: the GIN / GPR rows of the paper's ablation table and the lambda sweeps.

    python -m experiments.gpr_ablation [--grid sgnet_gpr|sgnet_lambda] [--demo] [--dry_run]
        [--emit_jobs DIR] [--root runs/experiments] [--set train.epochs=1] ...

- `sgnet_gpr`: rows baseline, gin, gin_att, gin_equ, full (papers/sgnet.md, Ablation Study), each
  the difference between `configs/sgnet.py:<row>` and the default config, applied as overrides of
  one base config; each row trained on VisA (MVTec-AD columns) and on MVTec-AD (VisA columns).
  Table: `sgnet.ablation`.
- `sgnet_lambda`: lambda_grav and lambda_att over 0.3-0.8 (one at a time, the other at the
  paper's 0.6), on the default protocol (VisA -> MVTec-AD and the others). The paper gives no
  numbers for it ("robust across 0.3-0.8"), so its results table has ours only.

`--demo`: the same rows on `sgnet.py:demo` (tiny random CLIP, synthetic data; the synthetic
held-out classes stand in for both MVTec-AD and VisA), lambdas 0.3 and 0.8 only.
"""

from __future__ import annotations

import sys

from experiments import cli
from experiments.grid import Grid, Run, ablation_grid, overrides_of

CONFIG = "sgnet.py"
# Table row -> variant of configs/sgnet.py.
ROWS = {"baseline": "baseline", "gin": "gin", "gin_att": "gin_att", "gin_equ": "gin_equ",
        "full": "full"}
PROTOCOLS = ("visa_to_mvtec", "mvtec_to_visa")    # variants of configs/sgnet.py
LAMBDA_KEYS = ("gpr.lambda_grav", "gpr.lambda_att")   # keys of configs/sgnet.py
LAMBDAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
DEMO_LAMBDAS = (0.3, 0.8)


def gpr_grid(demo: bool = False) -> Grid:
    """The ablation table's rows, each on both protocols (demo: on synthetic data)."""
    return ablation_grid("sgnet_gpr", CONFIG, ROWS, protocols=PROTOCOLS, demo=demo,
                         tables=("sgnet.ablation",), demo_stand_in=("mvtec", "visa"))


def lambda_grid(demo: bool = False) -> Grid:
    """lambda_grav and lambda_att swept one at a time, the other at its config value."""
    base = f"{CONFIG}:demo" if demo else CONFIG
    runs = []
    for key in LAMBDA_KEYS:
        for value in DEMO_LAMBDAS if demo else LAMBDAS:
            runs.append(Run(f"{key.rpartition('.')[2]}_{value}", base, overrides_of({key: value})))
    return Grid("sgnet_lambda_demo" if demo else "sgnet_lambda", tuple(runs))


GRIDS = {"sgnet_gpr": gpr_grid, "sgnet_lambda": lambda_grid}


def main(argv=None) -> int:
    return cli.grid_main(GRIDS, __doc__.split("\n\n")[0], "python -m experiments.gpr_ablation", argv)


if __name__ == "__main__":
    sys.exit(main())
