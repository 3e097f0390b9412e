"""Files of converted AnomalyCLIP prompts, written by `weights_conversion.anomalyclip`.

A prompt folder holds

    anomalyclip_prompts.npz   the trainable prompts, keyed like the method's `head`:
                              ctx_normal (n, Dt), ctx_anomalous (n, Dt), deep_prompts (N, t, Dt)
    anomalyclip_buffers.npz   what the release's checkpoint stores besides them, kept to check the
                              CLIP the prompts are used with: tokenized_prompts (2, L) int32 and
                              token_prefix (2, 1, Dt) / token_suffix (2, L - 1 - n, Dt), the frozen
                              token embeddings around the contexts, [normal, anomalous]
    anomalyclip.json          {"format": "zsad_jax.anomalyclip_prompts", "version": 1,
                               "prompt_length", "deep_prompt_depth", "deep_prompt_length",
                               "text_width", "source", "dropped"}
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

FORMAT = "zsad_jax.anomalyclip_prompts"
VERSION = 1
PARAMS_FILE = "anomalyclip_prompts.npz"
BUFFERS_FILE = "anomalyclip_buffers.npz"
META_FILE = "anomalyclip.json"
HOW = "python -m weights_conversion.anomalyclip --src epoch_15.pth --dst {}"


def _write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **dict(sorted(arrays.items())))


def save_prompts(directory: str | pathlib.Path, params: dict[str, np.ndarray],
                 buffers: dict[str, np.ndarray], meta: dict) -> pathlib.Path:
    """Writes params (float32), buffers and meta into `directory`; returns it."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_npz(directory / PARAMS_FILE, {k: np.asarray(v, np.float32) for k, v in params.items()})
    _write_npz(directory / BUFFERS_FILE, {k: np.asarray(v) for k, v in buffers.items()})
    meta = {"format": FORMAT, "version": VERSION, **meta}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def load_prompts(directory: str | pathlib.Path) -> tuple[dict, dict, dict]:
    """(params, buffers, meta) of a prompt folder; arrays as numpy (params float32)."""
    directory = pathlib.Path(directory)
    paths = [directory / name for name in (META_FILE, PARAMS_FILE, BUFFERS_FILE)]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"AnomalyCLIP prompt weights: {path} is missing. Convert a "
                                    f"release checkpoint with `{HOW.format(directory)}`.")
    meta = json.loads(paths[0].read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{paths[0]}: format {meta.get('format')!r} version {meta.get('version')!r}"
                         f", expected {FORMAT!r} version {VERSION}")
    with np.load(paths[1]) as data:
        params = {k: np.asarray(data[k], np.float32) for k in data.files}
    with np.load(paths[2]) as data:
        buffers = {k: np.asarray(data[k]) for k in data.files}
    return params, buffers, meta
