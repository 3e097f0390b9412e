"""The converted-weights folder: `config.json` (architecture), `params/` (Orbax), tokenizer files,
and `checksums.json` (the sha256 of every other file, written last).

Written by `python -m weights_conversion`; read by `backbones.load`, which first checks every file
against `checksums.json`: a truncated or corrupted file is an error naming it, never weights
silently loaded (a folder converted before checksums existed loads with a warning).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pathlib
from typing import Any

import jax
import numpy as np

from zsad_jax.backbones.config import BackboneConfig

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
CHECKSUMS_FILE = "checksums.json"
FORMAT_VERSION = 1

log = logging.getLogger(__name__)


class CorruptWeightsError(ValueError):
    """A converted folder whose files do not match their checksums (names the files)."""


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
    with _without_ocdbt_notice(), ocp.Checkpointer(handler) as ckpt:
        ckpt.save(target, args=ocp.args.PyTreeSave(params))
    _strip_timestamps(target)
    meta = {"format_version": FORMAT_VERSION, "arch": cfg.to_dict(), "source": source or {}}
    (dst / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    seal(dst)


class _DropOcdbtNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "OCDBT" not in record.getMessage()


@contextlib.contextmanager
def _without_ocdbt_notice():
    """Orbax warns that it skips merging OCDBT files, which are off on purpose here."""
    logger, notice = logging.getLogger("absl"), _DropOcdbtNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def _files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE)


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def seal(folder) -> None:
    """Writes `checksums.json`: {relative path: sha256} of every file of the folder."""
    folder = pathlib.Path(folder)
    sums = {p.relative_to(folder).as_posix(): _sha256(p) for p in _files(folder)}
    tmp = folder / (CHECKSUMS_FILE + ".tmp")
    tmp.write_text(json.dumps(sums, indent=1, sort_keys=True) + "\n")
    tmp.replace(folder / CHECKSUMS_FILE)


def verify(folder) -> None:
    """Checks every file listed in `checksums.json` (present, same sha256); CorruptWeightsError
    naming each bad one. A folder without checksums (an older conversion) gives a warning."""
    folder = pathlib.Path(folder)
    path = folder / CHECKSUMS_FILE
    if not path.is_file():
        log.warning("%s has no %s (converted by an older version): its files cannot be checked; "
                    "convert it again to get them", folder, CHECKSUMS_FILE)
        return
    try:
        sums = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CorruptWeightsError(f"{path}: not valid JSON ({e}); convert the weights again") from None
    bad = []
    for name, expected in sorted(sums.items()):
        file = folder / name
        if not file.is_file():
            bad.append(f"{name} is missing")
        elif _sha256(file) != expected:
            bad.append(f"{name} differs from its checksum (truncated or corrupted)")
    if bad:
        raise CorruptWeightsError(f"{folder}: {len(bad)} file(s) do not match {CHECKSUMS_FILE}: "
                                  + "; ".join(bad[:10]) + (" ..." if len(bad) > 10 else "")
                                  + ". Convert the weights again: python -m weights_conversion "
                                  f"--src <checkpoint> --dst {folder}")


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
    """The parameters of a converted folder, after `verify`."""
    import orbax.checkpoint as ocp

    target = pathlib.Path(folder).resolve() / PARAMS_DIR
    if not target.is_dir():
        raise FileNotFoundError(f"{target} not found (converted weights folder without params)")
    verify(folder)
    try:
        with ocp.PyTreeCheckpointer() as ckpt:
            return ckpt.restore(target)
    except Exception as e:        # Orbax/tensorstore errors name neither the folder nor a fix
        raise CorruptWeightsError(f"{target}: cannot read the converted parameters "
                                  f"({type(e).__name__}: {str(e)[:300]}); convert the weights "
                                  f"again") from None


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
