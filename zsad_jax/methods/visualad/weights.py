"""Files of converted VisualAD heads (tokens + SCA + SAF), written by `weights_conversion.visualad`.

A head folder holds

    visualad_head.npz   one array per parameter, keyed by its '/'-joined path in `VisualADHead`
    visualad.json       {"format": "zsad_jax.visualad_head", "version": 1, "dim", "layers",
                         "num_anchors", "max_patches", "saf_hidden", "image_size", "backbone", ...}

`anomaly_pos` / `normal_pos` are absent when the source did not store them (the official
checkpoints): the method then fills them from the backbone's class-token position embedding,
which is what the official release does when it builds the model.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from zsad_jax.tree import flatten, unflatten

FORMAT = "zsad_jax.visualad_head"
VERSION = 1
PARAMS_FILE = "visualad_head.npz"
META_FILE = "visualad.json"


def save_head(directory: str | pathlib.Path, params: dict, meta: dict) -> pathlib.Path:
    """Writes params (nested dict of arrays, float32) and meta; returns the folder."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v, np.float32) for k, v in sorted(flatten(params).items())}
    with open(directory / PARAMS_FILE, "wb") as f:
        np.savez(f, **flat)
    meta = {"format": FORMAT, "version": VERSION, **meta}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def load_head(directory: str | pathlib.Path) -> tuple[dict, dict]:
    """(params as a nested dict of float32 numpy arrays, meta) from a head folder."""
    directory = pathlib.Path(directory)
    meta_path, params_path = directory / META_FILE, directory / PARAMS_FILE
    for path in (meta_path, params_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"VisualAD head weights: {path} is missing. Convert an official checkpoint with "
                f"`python -m weights_conversion.visualad --src CLIP.pth --dst {directory}`.")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r} version {meta.get('version')!r}, "
                         f"expected {FORMAT!r} version {VERSION}")
    with np.load(params_path) as data:
        flat = {k: np.asarray(data[k], np.float32) for k in data.files}
    return unflatten(flat), meta


def merge_head(initial: dict, loaded: dict, source: str) -> dict:
    """`initial` (freshly initialised head params) with every leaf of `loaded` put in place.

    Leaves missing from `loaded` keep their initial value; a loaded leaf the head does not have,
    or one of another shape, is an error naming the key.
    """
    flat_init = flatten(initial)
    flat_loaded = flatten(loaded)
    for key, value in flat_loaded.items():
        if key not in flat_init:
            raise ValueError(f"{source}: parameter {key!r} is not part of this VisualAD head "
                             f"(config mismatch?); head parameters: {sorted(flat_init)[:8]} ...")
        if value.shape != flat_init[key].shape:
            raise ValueError(f"{source}: parameter {key!r} has shape {value.shape}, this config "
                             f"expects {flat_init[key].shape}")
    return unflatten({k: flat_loaded.get(k, v) for k, v in flat_init.items()})
