"""Experiment grids: named runs, each one config spec plus `key=value` overrides.

A grid is data, nothing runs here:

    Grid("sgnet_gpr", runs=(Run("baseline", "sgnet.py", ("model.gin=False", ...)), ...),
         tables=("sgnet.ablation",))

`Run.row` is the row of a paper table the run reports into (several runs may share a row, e.g. one
per training protocol); `Grid.tables` names the paper tables (`paper_results.json`) the aggregator
lays the grid's results out as. `runner.py` executes grids; `aggregate.py` reads their results.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+,-]*$")


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: `python -m zsad_jax.train --config CONFIG --config.K=V ...`.

    name: directory name of the run under the grid's root (unique within a grid).
    config: config spec, "file.py[:variant]".
    overrides: "key=value" strings (no `--config.` prefix), applied in order.
    row: paper-table row the run reports into ("" = the run's name).
    """

    name: str
    config: str
    overrides: tuple[str, ...] = ()
    row: str = ""

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise ValueError(f"Run name {self.name!r}: use letters, digits and _.=+,- only "
                             "(it becomes a directory name).")
        if not self.config:
            raise ValueError(f"Run {self.name!r} has an empty config spec.")
        for item in self.overrides:
            key, sep, _ = item.partition("=")
            if not sep or not key or key.startswith("-"):
                raise ValueError(f"Run {self.name!r}: override {item!r} must look like key=value "
                                 "(without the --config. prefix).")
        object.__setattr__(self, "overrides", tuple(self.overrides))

    @property
    def table_row(self) -> str:
        return self.row or self.name

    def with_overrides(self, *extra: str) -> Run:
        """The same run with `extra` overrides appended (they win over earlier ones)."""
        return dataclasses.replace(self, overrides=self.overrides + tuple(extra))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config, "overrides": list(self.overrides),
                "row": self.table_row}


@dataclasses.dataclass(frozen=True)
class Grid:
    """A named list of runs and the paper tables its results are laid out as."""

    name: str
    runs: tuple[Run, ...]
    tables: tuple[str, ...] = ()
    # Paper dataset -> the dataset our runs evaluate in its place (demo grids: {"mvtec": "synthetic"}).
    dataset_map: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "runs", tuple(self.runs))
        object.__setattr__(self, "tables", tuple(self.tables))
        object.__setattr__(self, "dataset_map", dict(self.dataset_map))
        seen = set()
        for run in self.runs:
            if run.name in seen:
                raise ValueError(f"Grid {self.name!r}: run name {run.name!r} appears twice.")
            seen.add(run.name)

    def __len__(self) -> int:
        return len(self.runs)

    def names(self) -> list[str]:
        return [run.name for run in self.runs]

    def select(self, patterns: Sequence[str]) -> Grid:
        """The runs whose name matches one of the regexes `patterns` (all runs if empty)."""
        if not patterns:
            return self
        compiled = [re.compile(p) for p in patterns]
        runs = tuple(r for r in self.runs if any(c.search(r.name) for c in compiled))
        if not runs:
            raise ValueError(f"Grid {self.name!r}: no run matches {list(patterns)}; "
                             f"runs: {', '.join(self.names())}.")
        return dataclasses.replace(self, runs=runs)

    def with_overrides(self, *extra: str) -> Grid:
        """Every run with `extra` overrides appended (e.g. a shorter schedule for a smoke test)."""
        return dataclasses.replace(self, runs=tuple(r.with_overrides(*extra) for r in self.runs))


def format_value(value: Any) -> str:
    """An override value as the config parser reads it back (`True`, `0.3`, `(1, 2)`, `abc`)."""
    if isinstance(value, str):
        return value
    return repr(value)


def overrides_of(settings: Mapping[str, Any]) -> tuple[str, ...]:
    """`{"model.gin": False}` -> `("model.gin=False",)`."""
    return tuple(f"{key}={format_value(value)}" for key, value in settings.items())


def rows_runs(config: str, rows: Mapping[str, Mapping[str, Any]],
              protocols: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[Run, ...]:
    """One run per table row (x per protocol): row settings, then protocol settings, as overrides.

    With `protocols` = {"visa_to_mvtec": {...}, "mvtec_to_visa": {...}} the run names are
    "<row>-<protocol>" and both runs report into `row`.
    """
    runs = []
    for row, settings in rows.items():
        if not protocols:
            runs.append(Run(row, config, overrides_of(settings), row=row))
            continue
        for protocol, protocol_settings in protocols.items():
            runs.append(Run(f"{row}-{protocol}", config,
                            overrides_of(settings) + overrides_of(protocol_settings), row=row))
    return tuple(runs)


def sweep_runs(config: str, axes: Mapping[str, Iterable[Any]], prefix: str = "",
               base: Mapping[str, Any] | None = None) -> tuple[Run, ...]:
    """The cartesian product of `axes` ({key: values}), one run per point.

    Run names join "<last key part>=<value>" with ","; e.g. axes {"gpr.lambda_att": [0.3, 0.5]}
    gives runs "lambda_att=0.3", "lambda_att=0.5" (prefixed by `prefix` if given).
    """
    keys = list(axes)
    if not keys:
        raise ValueError("sweep_runs needs at least one axis.")
    values = [list(axes[k]) for k in keys]
    for key, vals in zip(keys, values, strict=True):
        if not vals:
            raise ValueError(f"sweep axis {key!r} has no values.")
    runs = []
    for point in itertools.product(*values):
        name = ",".join(f"{k.rpartition('.')[2]}={format_value(v)}" for k, v in
                        zip(keys, point, strict=True))
        settings = dict(base or {})
        settings.update(zip(keys, point, strict=True))
        runs.append(Run(prefix + name, config, overrides_of(settings)))
    return tuple(runs)


def validate(grid: Grid) -> None:
    """Loads every run's config with its overrides: an unknown variant or key fails here.

    Raises `zsad_jax.config_lib.ConfigError` naming the run, before anything is started.
    """
    from zsad_jax import config_lib

    for run in grid.runs:
        try:
            config_lib.load_config(run.config, run.overrides)
        except config_lib.ConfigError as e:
            raise config_lib.ConfigError(f"Grid {grid.name!r}, run {run.name!r}: {e}") from e


def _leaves(config, prefix: str = "") -> dict[str, Any]:
    import ml_collections

    leaves = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def variant_overrides(config_file: str, variant: str, base: str | None = None,
                      exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """The overrides that turn `config_file:base` into `config_file:variant`.

    This is how ablation rows defined as config variants (`sgnet.py:gin_att`) become overrides
    of one base config, so that the same row can also be applied to the `demo` config.
    `exclude`: key prefixes left out of the difference (e.g. "data.protocol").
    Raises ConfigError if the variant adds or removes keys (overrides cannot express that).
    """
    from zsad_jax import config_lib

    base_spec = config_file if base is None else f"{config_file}:{base}"
    base_leaves = _leaves(config_lib.load_config(base_spec))
    variant_leaves = _leaves(config_lib.load_config(f"{config_file}:{variant}"))
    if set(base_leaves) != set(variant_leaves):
        changed = sorted(set(base_leaves) ^ set(variant_leaves))
        raise config_lib.ConfigError(
            f"{config_file}:{variant} and {base_spec} differ in their keys ({', '.join(changed)}); "
            "an override grid cannot express that: run the variant itself.")
    return tuple(f"{key}={format_value(value)}" for key, value in variant_leaves.items()
                 if value != base_leaves[key] and not any(
                     key == e or key.startswith(e + ".") for e in exclude))



def ablation_grid(name: str, config_file: str, rows: Mapping[str, str], *,
                  protocols: Sequence[str | None] = (None,), demo: bool = False,
                  tables: Sequence[str] = (), demo_stand_in: Sequence[str] = (),
                  compose: bool = False) -> Grid:
    """Table rows defined as config variants, run as overrides of one base config.

    rows: {table row key: variant of `config_file`}; each row's overrides are the variant's
    difference from the default config (`variant_overrides`, protocol keys left out).
    protocols: variants that set the training protocol (None = the config's default); with more
    than one, runs are named "<row>-<protocol>" and each row runs once per protocol.
    demo: the rows on `config_file:demo` (synthetic protocol) instead; `demo_stand_in` names the
    paper datasets the synthetic held-out classes stand in for in the tables. A row whose variant
    changes a backbone cannot be applied to the tiny demo backbones: ValueError.
    compose: for configs whose variants combine with commas (`ssvp.py:mvtec_to_visa,B`) and whose
    rows cannot be written as overrides (a variant that removes a backbone): each run is the
    combined variant itself, e.g. `ssvp.py:demo,B`, with no overrides.
    """
    runs = []
    for row, variant in rows.items():
        for protocol in (None,) if demo else protocols:
            run_name = row if demo or len(protocols) == 1 else f"{row}-{protocol or 'default'}"
            if compose:
                parts = ["demo" if demo else protocol, variant]
                spec = f"{config_file}:{','.join(p for p in parts if p)}"
                runs.append(Run(run_name, spec, (), row=row))
                continue
            row_overrides = variant_overrides(config_file, variant, exclude=("data.protocol",))
            if demo:
                touched = [o for o in row_overrides if o.startswith("backbones.")]
                if touched:
                    raise ValueError(f"{config_file}:{variant} (row {row!r}) changes the backbone "
                                     f"({', '.join(touched)}); it has no demo version.")
                runs.append(Run(run_name, f"{config_file}:demo", row_overrides, row=row))
                continue
            protocol_overrides = () if protocol is None else variant_overrides(config_file, protocol)
            runs.append(Run(run_name, config_file, row_overrides + protocol_overrides, row=row))
    return Grid(f"{name}_demo" if demo else name, tuple(runs), tables=tuple(tables),
                dataset_map={d: "synthetic" for d in demo_stand_in} if demo else {})
