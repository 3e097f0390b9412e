"""VisualAD ablations: without SCA, without SAF, without both; and the DINOv2 backbone.

    python -m experiments.visualad_ablation [--grid visualad_modules|visualad_dinov2] [--demo]
        [--dry_run] [--emit_jobs DIR] [--root runs/experiments] [--set KEY=VALUE] ...

- `visualad_modules`: rows no_sca, no_saf, no_sca_saf, full (papers/visualad.md, Ablation Study),
  each the difference between its `configs/visualad.py` variant and the default config, as
  overrides of one base config; trained on MVTec-AD, evaluated on VisA (the summary does not name
  the dataset; the full model's 84.7 is VisualAD's VisA image AUROC). Table `visualad.ablation`.
- `visualad_dinov2`: the DINOv2 ViT-L/14 backbone on the default protocol (VisA -> MVTec-AD and
  the others). Table `visualad.dinov2`.

`--demo`: the module rows on `visualad.py:demo` (synthetic data stands in for VisA); the DINOv2
grid has no demo version.
"""

from __future__ import annotations

import sys

from experiments import cli
from experiments.grid import Grid, Run, ablation_grid

CONFIG = "visualad.py"
# Table row -> variant of configs/visualad.py ("visa_to_mvtec" is the default config itself).
MODULE_ROWS = {"no_sca": "no_sca", "no_saf": "no_saf", "no_sca_saf": "no_sca_saf",
               "full": "visa_to_mvtec"}
DINOV2_VARIANT = "dinov2"


def modules_grid(demo: bool = False) -> Grid:
    return ablation_grid("visualad_modules", CONFIG, MODULE_ROWS, protocols=("mvtec_to_visa",),
                         demo=demo, tables=("visualad.ablation",), demo_stand_in=("visa",))


def dinov2_grid(demo: bool = False) -> Grid | None:
    if demo:
        return None
    return Grid("visualad_dinov2", (Run("dinov2", f"{CONFIG}:{DINOV2_VARIANT}"),),
                tables=("visualad.dinov2",))


GRIDS = {"visualad_modules": modules_grid, "visualad_dinov2": dinov2_grid}


def main(argv=None) -> int:
    return cli.grid_main(GRIDS, __doc__.split("\n\n")[0], "python -m experiments.visualad_ablation",
                         argv)


if __name__ == "__main__":
    sys.exit(main())
