"""The converted-weights folder: `config.json` (architecture), `params/` (Orbax), tokenizer files.

Written by `python -m weights_conversion`; read by `backbones.load`.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import jax
import numpy as np

from zsad_jax.backbones.config import BackboneConfig

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1


def read_config(folder) -> BackboneConfig:
    folder = pathlib.Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {folder} is not a converted weights folder. Convert a checkpoint "
            f"with: python -m weights_conversion --src <checkpoint> --dst {folder}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version={data.get('format_version')!r}, "
                         f"expected {FORMAT_VERSION}")
    if "arch" not in data:
        raise ValueError(f"{path}: missing key 'arch'")
    return BackboneConfig.from_dict(data["arch"], source=f"{path}:arch")


def write_folder(dst, cfg: BackboneConfig, params: Any, source: dict | None = None) -> None:
    """Writes config.json + params/ (Orbax, float32 numpy leaves). Deterministic content."""
    import orbax.checkpoint as ocp

    dst = pathlib.Path(dst).resolve()
    dst.mkdir(parents=True, exist_ok=True)
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
    target = dst / PARAMS_DIR
    if target.exists():
        import shutil
        shutil.rmtree(target)
    # Without OCDBT every leaf is stored under its own parameter path (OCDBT names its data files
    # randomly, so two conversions would differ).
    handler = ocp.PyTreeCheckpointHandler(use_ocdbt=False, use_zarr3=False)
    with ocp.Checkpointer(handler) as ckpt:
        ckpt.save(target, args=ocp.args.PyTreeSave(params))
    _strip_timestamps(target)
    meta = {"format_version": FORMAT_VERSION, "arch": cfg.to_dict(), "source": source or {}}
    (dst / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _strip_timestamps(target: pathlib.Path) -> None:
    """Orbax records the save time in `_CHECKPOINT_METADATA`; zero it so output is reproducible."""
    meta = target / "_CHECKPOINT_METADATA"
    if meta.is_file():
        data = json.loads(meta.read_text())
        for key in list(data):
            if "timestamp" in key:
                data[key] = 0
        meta.write_text(json.dumps(data, sort_keys=True))


def read_params(folder) -> Any:
    import orbax.checkpoint as ocp

    target = pathlib.Path(folder).resolve() / PARAMS_DIR
    if not target.is_dir():
        raise FileNotFoundError(f"{target} not found (converted weights folder without params)")
    with ocp.PyTreeCheckpointer() as ckpt:
        return ckpt.restore(target)


_CHUNK = 1 << 20


def folder_fingerprint(folder: str) -> str:
    """Cheap fingerprint of a converted weights folder: names, sizes, first/last MiB of each file."""
    if not folder:
        return "random-init"
    root = pathlib.Path(folder)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root) if path != root else path.name}:{size};".encode())
        with path.open("rb") as f:
            digest.update(f.read(_CHUNK))
            if size > _CHUNK:
                f.seek(max(size - _CHUNK, _CHUNK))
                digest.update(f.read(_CHUNK))
    return digest.hexdigest()
