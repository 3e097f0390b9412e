"""Reading source checkpoints and accounting for every tensor.

Sources: safetensors (preferred, read without pickle), `.bin`/`.pth` state dicts read with
`torch.load(weights_only=True)`, OpenAI `.pt` TorchScript archives read with `torch.jit.load` (a
restricted deserializer: no arbitrary pickle globals). Everything becomes float32 numpy.
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np


class ConversionError(ValueError):
    """A source checkpoint that cannot be converted (names the key / file at fault)."""


def load_release_checkpoint(src: str | pathlib.Path, where: str):
    """An official release's checkpoint, `torch.load(weights_only=True)` on the CPU.

    FileNotFoundError when `src` is missing (`where`: where the release keeps it); ConversionError
    naming the file for a Git LFS pointer (the release repositories store their checkpoints with
    LFS) or a file torch cannot read.
    """
    import torch

    src = pathlib.Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"--src {src}: no such file ({where})")
    if src.stat().st_size < 1024 and src.read_bytes().startswith(b"version https://git-lfs"):
        raise ConversionError(f"--src {src} is a Git LFS pointer, not the checkpoint: run `git lfs pull`")
    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ConversionError(f"{src}: cannot read with torch.load(weights_only=True): {e}") from e


class SourceTensors:
    """A state dict whose tensors must each be used (`take`) or explicitly ignored (`ignore`)."""

    def __init__(self, tensors: dict[str, np.ndarray], source: str):
        self.tensors = dict(tensors)
        self.source = source
        self.used: set[str] = set()
        self.ignored: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def keys(self) -> list[str]:
        return sorted(self.tensors)

    def take(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if key not in self.tensors:
            close = [k for k in self.tensors if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:3]
            hint = f" (similar keys: {', '.join(close)})" if close else ""
            raise ConversionError(f"{self.source}: missing key {key!r}{hint}")
        value = self.tensors[key]
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise ConversionError(f"{self.source}: key {key!r} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(shape)}")
        self.used.add(key)
        return value

    def ignore(self, pattern: str) -> None:
        """Marks keys matching the regex (re.fullmatch) as deliberately unused."""
        compiled = re.compile(pattern)
        self.ignored.update(k for k in self.tensors if compiled.fullmatch(k))

    def check_all_used(self) -> None:
        left = sorted(set(self.tensors) - self.used - self.ignored)
        if left:
            raise ConversionError(f"{self.source}: {len(left)} unknown key(s) not converted: "
                                  + ", ".join(left[:20]) + (" ..." if len(left) > 20 else ""))


def _to_numpy(t) -> np.ndarray:
    if isinstance(t, np.ndarray):
        return t.astype(np.float32) if t.dtype != np.float32 else t
    return t.detach().to("cpu").float().numpy()


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    out = {}
    try:
        try:
            with safe_open(str(path), framework="np") as f:
                for k in f.keys():
                    out[k] = _to_numpy(f.get_tensor(k))
        except (TypeError, ValueError):  # bfloat16 has no numpy dtype: read through torch
            with safe_open(str(path), framework="pt") as f:
                for k in f.keys():
                    out[k] = _to_numpy(f.get_tensor(k))
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise ConversionError(f"{path}: not a readable safetensors file (truncated or not "
                              f"safetensors?): {e}") from None
    return out


def _is_torchscript(path: pathlib.Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in z.namelist())


def read_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
    """A `.bin`/`.pt`/`.pth` state dict (weights_only=True) or an OpenAI TorchScript archive."""
    import torch

    if _is_torchscript(path):
        import warnings

        with warnings.catch_warnings():   # torch 2.13 deprecates TorchScript; OpenAI ships it
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
        state = module.state_dict()
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            raise ConversionError(f"{path}: cannot read with torch.load(weights_only=True): "
                                  f"{e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]          # open_clip / lightning training checkpoints
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: expected a state dict, got {type(state).__name__}")
    out = {}
    for k, v in state.items():
        if not hasattr(v, "shape"):
            continue
        out[k.removeprefix("module.")] = _to_numpy(v)
    return out


def read_weights_file(path: pathlib.Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
        return read_torch(path)
    raise ConversionError(f"{path}: unknown weights format (use .safetensors, .bin, .pt or .pth)")


def read_hf_folder(folder: pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json dict, tensors) of an HF model folder; safetensors preferred, sharded ok."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ConversionError(f"{folder}: no config.json (not a Hugging Face model folder)")
    config = json.loads(cfg_path.read_text())
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return config, read_weights_file(folder / single)
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            tensors: dict[str, np.ndarray] = {}
            for shard in shards:
                tensors.update(read_weights_file(folder / shard))
            return config, tensors
    raise ConversionError(f"{folder}: no model.safetensors or pytorch_model.bin (or sharded index)")
