"""SSVP ablations: the component rows of Table 3 and the visual backbones of Table 5.

    python -m experiments.ssvp_ablation [--grid ssvp_components|ssvp_backbones] [--demo]
        [--dry_run] [--emit_jobs DIR] [--root runs/experiments] [--set KEY=VALUE] ...

- `ssvp_components`: Models A-E (papers/ssvp.md, Table 3: A = no HSVS/VCPG/VTAM, B = HSVS as
  concatenation, C = HSVS with ATF, D = + VCPG, E = full), the `configs/ssvp.py` variants of the
  same names (run as such: model A removes the DINO backbone, which an override cannot express;
  `ssvp.py:demo,B` style combinations give the demo rows); trained on VisA, evaluated on MVTec-AD.
  Table `ssvp.table3`.
- `ssvp_backbones`: the DINO branch as DINOv2 ViT-L and DINOv3 ViT-S/B/L (Table 5; zsad_jax has
  no MAE backbone). Table `ssvp.table5`.

`--demo`: the component rows on `ssvp.py:demo` (synthetic data stands in for MVTec-AD); the
backbone grid has no demo version (it is about real pretrained backbones).
"""

from __future__ import annotations

import sys

from experiments import cli
from experiments.grid import Grid, ablation_grid

CONFIG = "ssvp.py"
# Table row -> variant of configs/ssvp.py.
COMPONENT_ROWS = {"A": "A", "B": "B", "C": "C", "D": "D", "E": "E"}
BACKBONE_ROWS = {"dinov2_vitl": "dinov2_vitl", "dinov3_vits": "dinov3_vits",
                 "dinov3_vitb": "dinov3_vitb", "dinov3_vitl": "dinov3_vitl"}


def components_grid(demo: bool = False) -> Grid:
    return ablation_grid("ssvp_components", CONFIG, COMPONENT_ROWS, demo=demo,
                         tables=("ssvp.table3",), demo_stand_in=("mvtec",), compose=True)


def backbones_grid(demo: bool = False) -> Grid | None:
    if demo:
        return None
    return ablation_grid("ssvp_backbones", CONFIG, BACKBONE_ROWS, tables=("ssvp.table5",),
                         compose=True)


GRIDS = {"ssvp_components": components_grid, "ssvp_backbones": backbones_grid}


def main(argv=None) -> int:
    return cli.grid_main(GRIDS, __doc__.split("\n\n")[0], "python -m experiments.ssvp_ablation", argv)


if __name__ == "__main__":
    sys.exit(main())
