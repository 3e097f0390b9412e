"""Config files: resolution of `--config NAME[:ARG]`, override checking, shared defaults.

Configs are Python files with `get_config(arg=None) -> ml_collections.ConfigDict` (big_vision
style). `--config sgnet.py` is resolved against, in order:

1. the path as given, if it exists;
2. `$ZSAD_CONFIGS_DIR`, if set;
3. the repository's `configs/` (editable install / source checkout);
4. the copy shipped inside the package as `zsad_jax._configs` (plain `pip install .`).

`--config sgnet.py:demo` passes `"demo"` to `get_config`. Overrides use ml_collections'
`--config.optim.lr=1e-4` syntax; a key that does not exist fails before anything runs, with the
closest existing keys in the message.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import pathlib
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import ml_collections

from zsad_jax import methods
from zsad_jax.backbones.config import ARCHS
from zsad_jax.config_types import (
    ConfigError,
    Section,
    config_from_dict,
    config_sha256,
    config_to_dict,
)
from zsad_jax.data import DATASETS, PROTOCOLS

_REPO_CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
_PACKAGED_CONFIGS = pathlib.Path(__file__).resolve().parent / "_configs"


def config_search_dirs() -> list[pathlib.Path]:
    dirs = []
    if os.environ.get("ZSAD_CONFIGS_DIR"):
        dirs.append(pathlib.Path(os.environ["ZSAD_CONFIGS_DIR"]))
    dirs += [_REPO_CONFIGS, _PACKAGED_CONFIGS]
    return dirs


def split_spec(spec: str) -> tuple[str, str | None]:
    """`"sgnet.py:demo"` -> `("sgnet.py", "demo")`; `"sgnet.py"` -> `("sgnet.py", None)`."""
    path, sep, arg = spec.partition(":")
    # A Windows drive letter ("C:\\...") is not a variant separator.
    if sep and len(path) == 1 and arg[:1] in ("\\", "/"):
        return spec, None
    return path, (arg if sep else None)


def resolve_config_path(path: str) -> pathlib.Path:
    """Returns an existing config file for `path` (see module docstring for the search order)."""
    candidate = pathlib.Path(path).expanduser()
    if candidate.is_file():
        return candidate.resolve()
    looked = [str(candidate)]
    if not candidate.is_absolute():
        names = [path] if path.endswith(".py") else [path, path + ".py"]
        for directory in config_search_dirs():
            for name in names:
                found = directory / name
                looked.append(str(found))
                if found.is_file():
                    return found.resolve()
    available = sorted({p.name for d in config_search_dirs() if d.is_dir() for p in d.glob("*.py")
                        if not p.name.startswith("_")})
    raise ConfigError(
        f"Config file {path!r} not found. Looked in: {', '.join(looked)}. "
        f"Available configs: {', '.join(available) or 'none'}.")


def resolve_config_spec(spec: str) -> str:
    """`"sgnet.py:demo"` -> `"/abs/path/configs/sgnet.py:demo"` (what config_flags loads)."""
    path, arg = split_spec(spec)
    resolved = str(resolve_config_path(path))
    return resolved if arg is None else f"{resolved}:{arg}"


def _load_module(path: pathlib.Path):
    name = f"zsad_jax_config_{re.sub(r'[^0-9a-zA-Z_]', '_', path.stem)}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _override_argv(overrides: Sequence[str]) -> list[str]:
    argv = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"Override {item!r} must look like key=value.")
        argv.append(f"--config.{key.removeprefix('--config.')}={value}")
    return argv


def load_config(spec: str, overrides: Sequence[str] | dict[str, Any] = (),
                validate_config: bool = True) -> ml_collections.ConfigDict:
    """Loads `spec` ("file.py[:arg]"), applies overrides and checks every value (`validate`).

    `overrides`: "a.b=1" strings, parsed by ml_collections' own flag parser as the CLIs do (each
    value with the type of the key it replaces), or a dict of Python values, assigned through the
    ConfigDict's own type checks. A key that does not exist fails with the closest keys.
    """
    path, arg = split_spec(spec)
    resolved = resolve_config_path(path)
    module = _load_module(resolved)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"Config file {path!r} defines no get_config(arg).")
    try:
        config = module.get_config(arg) if arg is not None else module.get_config()
    except (KeyError, ValueError) as e:
        raise ConfigError(f"Config {path!r} rejected variant {arg!r}: {e}") from e
    if isinstance(overrides, dict):
        check_override_keys(config, list(overrides))
        for key, value in overrides.items():
            *parents, leaf = key.split(".")
            node = config
            for part in parents:
                node = node[part]
            try:
                node[leaf] = value
            except TypeError as e:
                raise ConfigError(f"Override {key}={value!r}: {e}") from None
    elif overrides:
        argv = _override_argv(overrides)
        check_override_keys(config, [a.split("=", 1)[0].removeprefix("--config.") for a in argv])
        config = _parse_with_flags(str(resolved) + ("" if arg is None else f":{arg}"), argv)
    if validate_config:
        validate(config)
    return config


def _parse_with_flags(spec: str, override_argv: Sequence[str],
                      known_only: bool = False) -> ml_collections.ConfigDict:
    """The config `spec` with `--config.k=v` overrides, parsed by ml_collections' config_flags
    (`known_only`: other flags of the command line are left alone)."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["zsad_jax", f"--config={spec}", *override_argv]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=flag_values, lock_config=True,
                                    sys_argv=argv)
    try:
        flag_values(argv, known_only=known_only)
    except flags.Error as e:
        raise ConfigError(str(e).replace("flag --config.", "override ")) from None
    return flag_values.config


def with_values(config: ml_collections.ConfigDict, values: dict[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with the dotted keys of `values` set (the original is unchanged)."""
    out = config.copy_and_resolve_references()
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node[part]
        node[leaf] = value
    return out


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """All dotted keys of a (nested) ConfigDict, parents included."""
    keys = []
    for key, value in config.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, ml_collections.ConfigDict):
            keys += flat_keys(value, full + ".")
    return keys


def check_override_keys(config: ml_collections.ConfigDict, keys: Iterable[str]) -> None:
    """Raises ConfigError naming the first unknown key and the closest existing ones."""
    known = set(flat_keys(config))
    for key in keys:
        if key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
        parent = key.rpartition(".")[0]
        siblings = sorted(k for k in known if k.rpartition(".")[0] == parent)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        sib = f" Keys under {parent or 'the top level'!r}: {', '.join(siblings)}." if siblings else ""
        raise ConfigError(f"Unknown config key {key!r}.{hint}{sib}")


def prepare_argv(argv: Sequence[str], flag: str = "config") -> list[str]:
    """Rewrites `--config NAME[:ARG]` in argv to a resolved path, then loads the config with the
    argv's `--config.k=v` overrides and checks every key and value (`validate`).

    Called by every entry point before absl parses flags, so that a bare name works and a typo or
    a bad value is one line naming the key, before anything slow (exit code 2).
    """
    argv = list(argv)
    spec = None
    for i, arg in enumerate(argv):
        if arg in (f"--{flag}", f"-{flag}") and i + 1 < len(argv):
            argv[i + 1] = spec = resolve_config_spec(argv[i + 1])
        elif arg.startswith(f"--{flag}="):
            spec = resolve_config_spec(arg.split("=", 1)[1])
            argv[i] = f"--{flag}={spec}"
    overrides = [a for a in argv if re.match(rf"^--?(no)?{flag}\.", a)]
    if spec is not None:
        check_override_keys(load_config(spec, validate_config=False),
                            [re.sub(rf"^--?(no)?{flag}\.", "", a).split("=", 1)[0] for a in overrides])
        config = _parse_with_flags(spec, [a for a in argv[1:] if a not in (f"--{flag}", spec)],
                                   known_only=True)
        validate(config)
    elif overrides:
        raise ConfigError(f"{overrides[0]} needs --{flag} FILE[:variant] before it")
    return argv


def main_with_config(main, argv: Sequence[str] | None = None) -> None:
    """Runs an absl `main` after `prepare_argv`; config errors exit 2 with a one-line message."""
    from absl import app

    from zsad_jax.cli_logging import quiet_library_info

    quiet_library_info()
    argv = list(sys.argv if argv is None else argv)
    try:
        argv = prepare_argv(argv)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(2) from None
    try:
        app.run(main, argv=argv)
    except SystemExit as e:
        # absl exits with status 1 after printing --help; asking for help is not a failure.
        help_flags = {"--help", "-help", "-h", "-?", "--helpfull", "--helpshort"}
        if e.code == 1 and help_flags.intersection(argv[1:]):
            raise SystemExit(0) from None
        raise


# ----------------------------------------------------------------------------------------------
# The shared sections. Every method config starts from `base_config()` and fills `backbones`,
# `model`, `loss` (and its own sections); the train loop, data pipeline and evaluation read only
# the sections defined here. Each is a typed `Section`: one comment per key, checked by `validate`.
# ----------------------------------------------------------------------------------------------

DATASET_NAMES = tuple(DATASETS)
SCHEDULES = ("cosine", "polynomial", "constant")
LAYOUT = Literal["auto", "native", "meta_json"]


@dataclasses.dataclass(frozen=True)
class BackboneSpec(Section):
    """One frozen backbone (`config.backbones.<name>`); it is also a data view of that name."""

    arch: str = "clip-tiny"             # a name in zsad_jax.backbones.ARCHS, e.g. "clip-vit-l14-336"
    weights: str = ""                   # folder from `python -m weights_conversion` ("" = random init)
    image_size: int = 518               # square input side in pixels; a multiple of the patch size
    layers: tuple[int, ...] = (6, 12, 18, 24)   # 1-based blocks whose outputs are tapped
    # Position-embedding resize: "bicubic" (HF), "bilinear" (AnomalyCLIP / VisualAD, torch
    # F.interpolate align_corners=False), "bicubic_aa" / "bilinear_aa" (antialiased).
    pos_interpolation: Literal["bicubic", "bilinear", "bicubic_aa", "bilinear_aa"] = "bicubic"

    def check(self, where):
        self.require(where, "arch", self.arch in ARCHS,
                     f"expected one of {', '.join(sorted(ARCHS))}"
                     + _closest(self.arch, ARCHS))
        arch = ARCHS[self.arch]
        self.require(where, "image_size", self.image_size > 0 and self.image_size % arch.patch_size == 0,
                     f"expected a positive multiple of the patch size {arch.patch_size} of {self.arch}")
        self.require(where, "layers", all(1 <= i <= arch.depth for i in self.layers),
                     f"expected 1-based block indices in [1, {arch.depth}] ({self.arch} has "
                     f"{arch.depth} blocks)")


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """`config.data`: what is read, from where, in which batches."""

    protocol: str = "visa_to_mvtec"     # a name in zsad_jax.data.PROTOCOLS ("synthetic" for demos)
    data_dir: str = "data"              # dataset <name> lives in <data_dir>/<name> ...
    roots: dict[str, str] = dataclasses.field(          # ... unless config.data.roots.<name> is set
        default_factory=lambda: dict.fromkeys(DATASET_NAMES, ""))
    # How each root is read: "auto" (its native layout when found, else <root>/meta.json),
    # "native" or "meta_json" (AnomalyCLIP / VisualAD generate_dataset_json); docs/datasets.md.
    layouts: dict[str, LAYOUT] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(DATASET_NAMES, "auto"))
    batch_size: int = 8                 # global batch size (all devices, all hosts)
    # False: the last, smaller batch of every epoch is trained on too (PyTorch's DataLoader
    # default, VisualAD's release); it must then divide over the devices.
    drop_last: bool = True
    eval_batch_size: int = 8            # global batch size of evaluation / prediction
    num_workers: int = 2                # grain worker processes (0 = in-process)
    prefetch: int = 2                   # batches read ahead per worker
    skip_unreadable: bool = False       # True: unreadable images are skipped with a warning + count
    index_check: Literal["decode", "header"] = "decode"   # decode every file before training, or headers
    synthetic_seed: int = 0             # seed of the generated demo dataset

    def check(self, where):
        self.require(where, "protocol", self.protocol in PROTOCOLS,
                     f"expected one of {', '.join(PROTOCOLS)}" + _closest(self.protocol, PROTOCOLS))
        for key in ("batch_size", "eval_batch_size"):
            self.require(where, key, getattr(self, key) > 0, "expected a positive integer")
        for key in ("num_workers", "prefetch"):
            self.require(where, key, getattr(self, key) >= 0, "expected an integer >= 0")
        for key in ("roots", "layouts"):
            unknown = sorted(set(getattr(self, key)) - set(DATASET_NAMES))
            self.require(where, key, not unknown, f"unknown dataset(s) {unknown}; known: "
                         f"{', '.join(DATASET_NAMES)}")


@dataclasses.dataclass(frozen=True)
class OptimConfig(Section):
    """`config.optim`: AdamW, the learning-rate schedule, clipping, accumulation."""

    lr: float = 1e-4                    # peak learning rate of the default parameter group
    weight_decay: float = 0.0           # decoupled (AdamW), scaled by the scheduled lr as in PyTorch
    b1: float = 0.9                     # Adam beta1
    b2: float = 0.999                   # Adam beta2
    eps: float = 1e-8                   # Adam epsilon
    schedule: Literal["cosine", "polynomial", "constant"] = "cosine"
    schedule_unit: Literal["step", "epoch"] = "step"   # the rate changes every update, or per epoch
    warmup_steps: int = 0               # linear warmup from 0 (optimizer updates)
    end_lr_factor: float = 0.0          # cosine floor / polynomial end value, as a fraction of ...
    end_lr_of: Literal["group", "base"] = "group"   # ... each group's lr, or the base lr (one floor)
    power: float = 1.0                  # polynomial decay power
    grad_clip_norm: float = 0.0         # global-norm clipping (0 = off)
    clip_each: tuple[str, ...] = ()     # regexes: these parameters' gradients clipped one by one ...
    clip_each_norm: float = 1.0         # ... each to this norm
    accum_steps: int = 1                # gradient accumulation (optax.MultiSteps)
    # Per-group learning rates: "REGEX=LR" strings over '/'-joined trainable param paths; the
    # first match wins, unmatched trainable params use `lr`.
    lr_groups: tuple[str, ...] = ()

    def check(self, where):
        self.require(where, "lr", self.lr > 0, "expected a learning rate > 0")
        self.require(where, "weight_decay", self.weight_decay >= 0, "expected >= 0")
        for key in ("b1", "b2"):
            self.require(where, key, 0 <= getattr(self, key) < 1, "expected a value in [0, 1)")
        self.require(where, "eps", self.eps > 0, "expected > 0")
        self.require(where, "warmup_steps", self.warmup_steps >= 0, "expected >= 0")
        self.require(where, "end_lr_factor", 0 <= self.end_lr_factor <= 1, "expected a value in [0, 1]")
        self.require(where, "power", self.power > 0, "expected > 0")
        self.require(where, "grad_clip_norm", self.grad_clip_norm >= 0, "expected >= 0 (0 = off)")
        self.require(where, "accum_steps", self.accum_steps >= 1, "expected an integer >= 1")
        self.require(where, "clip_each_norm", self.clip_each_norm > 0, "expected > 0")
        for item in self.clip_each:
            try:
                re.compile(item)
            except re.error as e:
                self.fail(where, "clip_each", f"entry {item!r} is not a regex: {e}")
        for item in self.lr_groups:
            pattern, sep, value = item.rpartition("=")
            try:
                ok = bool(sep and pattern) and float(value) > 0 and re.compile(pattern) is not None
            except (ValueError, re.error):
                ok = False
            self.require(where, "lr_groups", ok, f"entry {item!r} must look like 'REGEX=LR' "
                         f"(a valid regex, a learning rate > 0)")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    """`config.train`: length, logging, checkpoints, precision, memory."""

    epochs: int = 1                     # passes over the training records
    num_steps: int = 0                  # > 0 overrides epochs
    log_every: int = 10                 # steps between metric log lines
    ckpt_every: int = 0                 # steps between checkpoints (0 = end of every epoch)
    keep: int = 3                       # checkpoints kept
    eval_every: int = 0                 # steps between evaluations (0 = every epoch end, < 0 = never)
    # Keep a 'best' checkpoint by this metric ("" = none). Selecting on a target dataset breaks
    # the zero-shot protocol: it needs `best_on`, a dataset that is not an evaluation target.
    best_metric: str = ""
    best_on: str = ""                   # the selection dataset of best_metric (not a target)
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"   # params stay float32
    # Rematerialize backbone blocks when backpropagating through the tower: "none", "dots" (keep
    # the matmul outputs), "full" (keep each block's input only), or "auto": the first of them
    # whose compiled step fits the device's memory (measured before training; the log says which).
    remat: Literal["none", "dots", "full", "auto"] = "none"
    feature_cache: bool = False         # cache frozen backbone features on disk (bf16)
    cache_dir: str = ""                 # default: <workdir>/feature_cache
    allow_config_change: bool = False   # resume even if the config differs from the saved one

    def check(self, where):
        self.require(where, "epochs", self.epochs >= 0, "expected >= 0")
        self.require(where, "num_steps", self.num_steps >= 0, "expected >= 0 (0 = use epochs)")
        self.require(where, "epochs", self.epochs > 0 or self.num_steps > 0,
                     "expected epochs > 0 or num_steps > 0")
        for key in ("log_every", "keep"):
            self.require(where, key, getattr(self, key) >= 1, "expected an integer >= 1")
        self.require(where, "ckpt_every", self.ckpt_every >= 0, "expected >= 0 (0 = every epoch)")
        metrics = ("", "image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap",
                   "pixel_f1_max", "pixel_aupro")
        self.require(where, "best_metric", self.best_metric in metrics,
                     f"expected one of {', '.join(repr(m) for m in metrics)}")
        self.require(where, "best_on", not self.best_metric or self.best_on in DATASET_NAMES,
                     f"best_metric={self.best_metric!r} selects a checkpoint: name the selection "
                     f"dataset (one of {', '.join(DATASET_NAMES)}, not an evaluation target)")


@dataclasses.dataclass(frozen=True)
class EvalConfig(Section):
    """`config.eval`: how anomaly maps are post-processed and scored."""

    smoothing_sigma: float = 4.0        # Gaussian smoothing of anomaly maps, input pixels (0 = off)
    resolution: Literal["input", "native"] = "input"   # masks at the input size, or maps at native
    num_heatmaps: int = 8               # heatmap PNGs per class
    max_images: int = 0                 # > 0: evaluate on at most this many images per class
    # The paper's numbers shown beside each dataset's mean in report.html: the id of a table of
    # zsad_jax/evaluation/paper_results.json whose rows are datasets ("" = none). The methods'
    # paper configs set it; their ablations and demos leave it empty.
    paper_table: str = ""

    def check(self, where):
        for key in ("smoothing_sigma", "num_heatmaps", "max_images"):
            self.require(where, key, getattr(self, key) >= 0, "expected >= 0")
        if self.paper_table:
            from zsad_jax.evaluation import paper_tables

            known = paper_tables.dataset_tables()
            self.require(where, "paper_table", self.paper_table in known,
                         f"expected '' or one of {', '.join(known)}"
                         + _closest(self.paper_table, known))


BASE_SECTIONS: dict[str, type[Section]] = {"data": DataConfig, "optim": OptimConfig,
                                           "train": TrainConfig, "eval": EvalConfig}


def _closest(value, options) -> str:
    close = difflib.get_close_matches(str(value), list(options), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def backbone_config(arch: str, weights: str = "", image_size: int = 518,
                    layers: tuple[int, ...] = (6, 12, 18, 24), pos_interpolation: str = "bicubic"
                    ) -> ml_collections.ConfigDict:
    """One frozen backbone section (`BackboneSpec`). `weights` is a folder written by
    `python -m weights_conversion`; empty means random init (only sensible for tiny archs)."""
    return BackboneSpec.defaults(arch=arch, weights=weights, image_size=image_size,
                                 layers=tuple(layers), pos_interpolation=pos_interpolation)


def base_config() -> ml_collections.ConfigDict:
    """The shared sections with their defaults; a method config fills the rest."""
    c = ml_collections.ConfigDict()
    c.method = ""                       # name registered in zsad_jax.methods.REGISTRY
    c.seed = 0                          # params init, data order, per-step rng
    c.backbones = ml_collections.ConfigDict()   # named frozen backbones (BackboneSpec each)
    for name, section in BASE_SECTIONS.items():
        c[name] = section.defaults()
    c.model = ml_collections.ConfigDict()   # method-specific architecture options
    c.loss = ml_collections.ConfigDict()    # method-specific loss weights / switches
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every key and value of a config (shared sections, backbones, the method's own
    sections); raises ConfigError naming the first problem. Nothing is built or loaded."""
    top = {"method", "seed", "backbones", *BASE_SECTIONS}
    if config.get("method") not in methods.REGISTRY:
        raise ConfigError(f"config.method={config.get('method')!r}: expected one of "
                          f"{', '.join(sorted(methods.REGISTRY))}")
    if not isinstance(config.get("seed"), int) or isinstance(config.get("seed"), bool):
        raise ConfigError(f"config.seed={config.get('seed')!r}: expected an integer")
    for name, section in BASE_SECTIONS.items():
        section.from_config(config.get(name), name)
    for name, spec in (config.get("backbones") or {}).items():
        BackboneSpec.from_config(spec, f"backbones.{name}")
    method_class = methods.get_class(config.method)
    method_class.validate_config(config)
    allowed = top | set(method_class.config_sections)
    unknown = [k for k in config.keys() if k not in allowed]
    if unknown:
        raise ConfigError(f"config.{unknown[0]} is not a section of a {config.method!r} config; "
                          f"sections: {', '.join(sorted(allowed))}")


__all__ = ["BASE_SECTIONS", "BackboneSpec", "ConfigError", "DataConfig", "EvalConfig",
           "OptimConfig", "Section", "TrainConfig", "backbone_config", "base_config",
           "check_override_keys", "config_from_dict", "config_sha256", "config_to_dict",
           "flat_keys", "load_config", "main_with_config", "prepare_argv", "resolve_config_path",
           "resolve_config_spec", "split_spec", "validate", "with_values"]
