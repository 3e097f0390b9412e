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

import difflib
import importlib.util
import os
import pathlib
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections

_REPO_CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
_PACKAGED_CONFIGS = pathlib.Path(__file__).resolve().parent / "_configs"


class ConfigError(ValueError):
    """A config file, variant or override key that cannot be used."""


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


def load_config(spec: str, overrides: Sequence[str] | dict[str, Any] = ()) -> ml_collections.ConfigDict:
    """Loads `spec` ("file.py[:arg]") and applies overrides ("a.b=1" strings or a dict).

    This is what the CLIs do (through ml_collections.config_flags); tests and notebooks call it
    directly.
    """
    path, arg = split_spec(spec)
    module = _load_module(resolve_config_path(path))
    if not hasattr(module, "get_config"):
        raise ConfigError(f"Config file {path!r} defines no get_config(arg).")
    try:
        config = module.get_config(arg) if arg is not None else module.get_config()
    except (KeyError, ValueError) as e:
        raise ConfigError(f"Config {path!r} rejected variant {arg!r}: {e}") from e
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"Override {item!r} must look like key=value.")
            items.append((key.removeprefix("--config."), value))
    check_override_keys(config, [k for k, _ in items])
    for key, value in items:
        _set_path(config, key, value)
    return config


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
        # Allow indexing into existing sequences ("data.eval.0.dataset" style is not supported).
        close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
        parent = key.rpartition(".")[0]
        siblings = sorted(k for k in known if k.rpartition(".")[0] == parent)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        sib = f" Keys under {parent or 'the top level'!r}: {', '.join(siblings)}." if siblings else ""
        raise ConfigError(f"Unknown config key {key!r}.{hint}{sib}")


def _set_path(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    current = node[leaf]
    if isinstance(value, str) and not isinstance(current, str):
        value = _parse_literal(value, current, key)
    node[leaf] = value


def _parse_literal(text: str, current: Any, key: str) -> Any:
    import ast

    if current is None:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"Override {key}={text!r}: expected a boolean.")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ConfigError(f"Override {key}={text!r}: cannot parse as {type(current).__name__}.") from e
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    return value


def prepare_argv(argv: Sequence[str], flag: str = "config") -> list[str]:
    """Rewrites `--config NAME[:ARG]` in argv to a resolved path and checks override keys.

    Called by every entry point before absl parses flags, so that a bare name works and a typo in
    `--config.some.key=...` is reported with suggestions instead of an absl traceback.
    """
    argv = list(argv)
    spec_index = None
    for i, arg in enumerate(argv):
        if arg in (f"--{flag}", f"-{flag}") and i + 1 < len(argv):
            argv[i + 1] = resolve_config_spec(argv[i + 1])
            spec_index = i + 1
        elif arg.startswith(f"--{flag}="):
            argv[i] = f"--{flag}=" + resolve_config_spec(arg.split("=", 1)[1])
            spec_index = i
    overrides = [a for a in argv if re.match(rf"^--(no)?{flag}\.", a)]
    if overrides and spec_index is not None:
        spec = argv[spec_index].split("=", 1)[1] if argv[spec_index].startswith("--") else argv[spec_index]
        config = load_config(spec)
        keys = [re.sub(rf"^--(no)?{flag}\.", "", a).split("=", 1)[0] for a in overrides]
        check_override_keys(config, keys)
    return argv


def main_with_config(main, argv: Sequence[str] | None = None) -> None:
    """Runs an absl `main` after `prepare_argv`; config errors exit with a one-line message."""
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
# Shared defaults. Every method config starts from `base_config()` and fills `backbones`, `model`,
# `loss`; the train loop, data pipeline and evaluation read only the sections defined here.
# ----------------------------------------------------------------------------------------------

DATASET_NAMES = ("mvtec", "visa", "mpdd", "btad", "ksdd2", "dagm", "dtd", "rsdd", "sdd",
                 "brainmri", "br35h", "headct", "clinicdb", "colondb", "kvasir", "isic",
                 "folder", "synthetic")


def backbone_config(arch: str, weights: str = "", image_size: int = 518,
                    layers: tuple[int, ...] = (6, 12, 18, 24), pos_interpolation: str = "bicubic",
                    **kwargs) -> ml_collections.ConfigDict:
    """One frozen backbone. `weights` is a folder written by `python -m weights_conversion`;
    empty means random init (only sensible for tiny demo architectures)."""
    return ml_collections.ConfigDict(dict(
        arch=arch,                      # name known to zsad_jax.backbones.build, e.g. "clip-vit-l14-336"
        weights=weights,                # converted weights folder ("" = random init)
        image_size=image_size,          # square input side in pixels; a multiple of the patch size
        layers=tuple(layers),           # 1-based blocks whose outputs are tapped
        pos_interpolation=pos_interpolation,  # "bicubic" (HF) or "bilinear" (VisualAD) pos-emb resize
        **kwargs))


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = ""                       # name registered in zsad_jax.methods
    c.seed = 0

    # Named frozen backbones; each one is also a data "view" (its own size and normalization).
    c.backbones = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict(dict(
        protocol="visa_to_mvtec",       # a name in zsad_jax.data.PROTOCOLS ("synthetic" for demos)
        data_dir="data",                # dataset <name> lives in <data_dir>/<name> ...
        roots=ml_collections.ConfigDict({n: "" for n in DATASET_NAMES}),  # ... unless set here
        # How each root is read: "auto" (its native layout when found, else <root>/meta.json),
        # "native" or "meta_json" (AnomalyCLIP / VisualAD generate_dataset_json); docs/datasets.md.
        layouts=ml_collections.ConfigDict({n: "auto" for n in DATASET_NAMES}),
        batch_size=8,                   # global batch size (all devices, all hosts)
        eval_batch_size=8,
        num_workers=2,                  # grain worker processes (0 = in-process)
        prefetch=2,                     # batches read ahead per worker
        skip_unreadable=False,          # True: unreadable images are skipped with a warning + count
        index_check="decode",           # "decode" every file before training, or "header" (fast)
        synthetic_seed=0,               # seed of the generated demo dataset
    ))

    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-4,                        # peak learning rate of the default parameter group
        weight_decay=0.0,               # decoupled (AdamW)
        b1=0.9, b2=0.999, eps=1e-8,
        schedule="cosine",              # "cosine" | "polynomial" | "constant"
        warmup_steps=0,
        end_lr_factor=0.0,              # cosine floor / polynomial end value, as a fraction of lr
        power=1.0,                      # polynomial decay power
        grad_clip_norm=0.0,             # 0 = off
        accum_steps=1,                  # gradient accumulation (optax.MultiSteps)
        # Per-group learning rates: "regex=lr" strings over '/'-joined trainable param paths;
        # the first match wins, unmatched trainable params use `lr`.
        lr_groups=(),
    ))

    c.train = ml_collections.ConfigDict(dict(
        epochs=1,
        num_steps=0,                    # > 0 overrides epochs
        log_every=10,                   # steps between metric log lines
        ckpt_every=0,                   # steps between checkpoints (0 = end of every epoch)
        keep=3,                         # checkpoints kept
        eval_every=0,                   # steps between evaluations (0 = end of every epoch)
        best_metric="pixel_auroc",      # "" to keep only the latest checkpoints
        compute_dtype="float32",        # "bfloat16" = mixed precision (params/optimizer stay fp32)
        remat=False,                    # rematerialize backbone blocks (backprop through the tower)
        feature_cache=False,            # cache frozen backbone features on disk (bf16)
        cache_dir="",                   # default: <workdir>/feature_cache
        allow_config_change=False,      # resume even if the config differs from the saved one
    ))

    c.eval = ml_collections.ConfigDict(dict(
        smoothing_sigma=4.0,            # Gaussian smoothing of anomaly maps (0 = off)
        resolution="input",             # "input" (mask resized to input size) or "native"
        num_heatmaps=8,                 # heatmap PNGs per class
        max_images=0,                   # > 0: evaluate on at most this many images per class
    ))

    c.model = ml_collections.ConfigDict()   # method-specific architecture options
    c.loss = ml_collections.ConfigDict()    # method-specific loss weights / switches
    return c
