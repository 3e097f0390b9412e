"""Grids: runs, sweeps, variant rows as overrides, and the papers' grids expanding as expected."""

import pytest

from experiments import cross_dataset, gpr_ablation, ssvp_ablation, visualad_ablation
from experiments.grid import Grid, Run, ablation_grid, overrides_of, sweep_runs, validate, variant_overrides
from zsad_jax import config_lib


def test_run_rejects_bad_names_and_overrides():
    with pytest.raises(ValueError, match="a/b"):
        Run("a/b", "sgnet.py")
    with pytest.raises(ValueError, match="key=value"):
        Run("ok", "sgnet.py", ("loss.gin",))
    with pytest.raises(ValueError, match="prefix"):
        Run("ok", "sgnet.py", ("--config.loss.gin=False",))
    with pytest.raises(ValueError, match="twice"):
        Grid("g", (Run("a", "x.py"), Run("a", "y.py")))


def test_overrides_round_trip_through_the_config_parser():
    overrides = overrides_of({"train.feature_cache": True, "optim.end_lr_factor": 0.3,
                              "backbones.clip.layers": (1, 2), "data.protocol": "synthetic"})
    assert overrides == ("train.feature_cache=True", "optim.end_lr_factor=0.3",
                         "backbones.clip.layers=(1, 2)", "data.protocol=synthetic")
    c = config_lib.load_config("sgnet.py", overrides, validate_config=False)   # the parser alone
    assert (c.train.feature_cache, c.optim.end_lr_factor, c.backbones.clip.layers,
            c.data.protocol) == (
        True, 0.3, (1, 2), "synthetic")


def test_sweep_is_the_cartesian_product_with_readable_names():
    runs = sweep_runs("linear_probe.py:demo", {"optim.lr": [0.1, 0.01], "seed": [0, 1]},
                      prefix="lp-", base={"train.epochs": 1})
    assert [r.name for r in runs] == ["lp-lr=0.1,seed=0", "lp-lr=0.1,seed=1", "lp-lr=0.01,seed=0",
                                      "lp-lr=0.01,seed=1"]
    assert runs[1].overrides == ("train.epochs=1", "optim.lr=0.1", "seed=1")
    with pytest.raises(ValueError, match="no values"):
        sweep_runs("x.py", {"seed": []})


def test_select_and_appended_overrides():
    grid = Grid("g", (Run("a1", "x.py"), Run("b1", "x.py", ("seed=1",))))
    assert grid.select(["^b"]).names() == ["b1"]
    assert grid.select([]).names() == ["a1", "b1"]
    with pytest.raises(ValueError, match="no run matches"):
        grid.select(["zzz"])
    assert grid.with_overrides("seed=2").runs[1].overrides == ("seed=1", "seed=2")


@pytest.mark.parametrize("config_file,variant", [
    ("sgnet.py", "baseline"), ("sgnet.py", "gin"), ("sgnet.py", "gin_att"), ("sgnet.py", "gin_equ"),
    ("sgnet.py", "full"), ("sgnet.py", "mvtec_to_visa"), ("visualad.py", "no_sca_saf"),
    ("visualad.py", "mvtec_to_visa"), ("ssvp.py", "B")])
def test_variant_as_overrides_reproduces_the_variant(config_file, variant):
    overrides = variant_overrides(config_file, variant)
    rebuilt = config_lib.load_config(config_file, overrides)
    assert rebuilt.to_dict() == config_lib.load_config(f"{config_file}:{variant}").to_dict()


def test_variant_that_removes_keys_is_refused():
    # SSVP model A drops the DINO backbone: not expressible as overrides.
    with pytest.raises(config_lib.ConfigError, match="differ in their keys"):
        variant_overrides("ssvp.py", "A")


def test_sgnet_ablation_grid_expands_to_rows_times_protocols():
    grid = gpr_ablation.gpr_grid()
    assert grid.names() == [f"{row}-{p}" for row in ("baseline", "gin", "gin_att", "gin_equ", "full")
                            for p in ("visa_to_mvtec", "mvtec_to_visa")]
    assert {r.config for r in grid.runs} == {"sgnet.py"}
    gin_visa = grid.runs[3]
    assert (gin_visa.name, gin_visa.row) == ("gin-mvtec_to_visa", "gin")
    # Every run's config equals the paper row's variant on the run's protocol.
    for run in grid.runs:
        config = config_lib.load_config(run.config, run.overrides)
        variant = config_lib.load_config(f"sgnet.py:{run.row}")
        protocol_variant = run.name.rpartition("-")[2]
        variant.data.protocol = config_lib.load_config(f"sgnet.py:{protocol_variant}").data.protocol
        assert config.to_dict() == variant.to_dict(), run.name
    assert grid.tables == ("sgnet.ablation",)


def test_demo_grids_are_small_and_use_demo_configs():
    gpr = gpr_ablation.gpr_grid(demo=True)
    assert gpr.names() == ["baseline", "gin", "gin_att", "gin_equ", "full"]
    assert all(r.config == "sgnet.py:demo" for r in gpr.runs)
    baseline = config_lib.load_config("sgnet.py:demo", gpr.runs[0].overrides)
    reference = config_lib.load_config("sgnet.py:baseline")
    assert (baseline.model.gin, baseline.gpr.attraction, baseline.gpr.equilibrium) == (
        reference.model.gin, reference.gpr.attraction, reference.gpr.equilibrium) == (False,) * 3
    assert gpr.dataset_map == {"mvtec": "synthetic", "visa": "synthetic"}
    lam = gpr_ablation.lambda_grid(demo=True)
    assert lam.names() == ["lambda_grav_0.3", "lambda_grav_0.8", "lambda_att_0.3", "lambda_att_0.8"]
    assert len(gpr_ablation.lambda_grid()) == 12
    ssvp = ssvp_ablation.components_grid(demo=True)
    assert [r.config for r in ssvp.runs] == [f"ssvp.py:demo,{m}" for m in "ABCDE"]
    assert ssvp_ablation.backbones_grid(demo=True) is None
    vis = visualad_ablation.modules_grid(demo=True)
    assert vis.names() == ["no_sca", "no_saf", "no_sca_saf", "full"]
    assert cross_dataset.cross_dataset_grid("linear_probe", demo=True).runs == (
        Run("demo", "linear_probe.py:demo"),)


def test_demo_rows_refuse_backbone_changes():
    with pytest.raises(ValueError, match="no demo version"):
        ablation_grid("x", "visualad.py", {"dinov2": "dinov2"}, demo=True)


@pytest.mark.parametrize("build", [
    gpr_ablation.gpr_grid, gpr_ablation.lambda_grid, lambda: gpr_ablation.gpr_grid(True),
    ssvp_ablation.components_grid, ssvp_ablation.backbones_grid,
    lambda: ssvp_ablation.components_grid(True), visualad_ablation.modules_grid,
    visualad_ablation.dinov2_grid, lambda: visualad_ablation.modules_grid(True),
    lambda: cross_dataset.cross_dataset_grid("sgnet"), lambda: cross_dataset.cross_dataset_grid("ssvp"),
    lambda: cross_dataset.cross_dataset_grid("visualad")])
def test_every_grid_loads_with_the_current_configs(build):
    validate(build())


def test_validate_names_the_run_and_the_key():
    grid = Grid("g", (Run("ok", "sgnet.py"), Run("typo", "sgnet.py", ("train.epoch=3",))))
    with pytest.raises(config_lib.ConfigError, match=r"run 'typo'.*train.epoch.*train.epochs"):
        validate(grid)


def test_cross_dataset_grid_is_both_protocols():
    grid = cross_dataset.cross_dataset_grid("sgnet")
    assert [(r.name, r.config) for r in grid.runs] == [
        ("visa_to_mvtec", "sgnet.py:visa_to_mvtec"), ("mvtec_to_visa", "sgnet.py:mvtec_to_visa")]
    with pytest.raises(ValueError, match="known methods"):
        cross_dataset.cross_dataset_grid("nope")
