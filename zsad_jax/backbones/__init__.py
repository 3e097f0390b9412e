"""Frozen backbones: OpenAI CLIP (vision + text), DINOv2 (± registers), DINOv3 ViT, in Flax.

    model = backbones.build("clip-tiny")                        # random-init module
    params = backbones.init_params(model, rng, image_size=64)
    model, params = backbones.load(converted_dir, pos_interpolation="bilinear")
    out = model.apply({"params": params}, images, layers=(6, 12), method="encode_image")
    out.layers, out.pooled, out.grid, out.num_prefix
    model.apply({"params": params}, token_ids, method="encode_text")      # CLIP: (B, E)
    tok = backbones.load_tokenizer(converted_dir)               # CLIP tokenizer

See docs/backbones.md. Importing this package never imports torch.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from zsad_jax.backbones.clip import CLIP, logits
from zsad_jax.backbones.config import (
    ARCHS,
    POS_INTERPOLATIONS,
    BackboneConfig,
    get_arch,
)
from zsad_jax.backbones.dino import DINO
from zsad_jax.backbones.outputs import ImageFeatures
from zsad_jax.backbones.tokenizer import ClipTokenizer, tiny_tokenizer

__all__ = ["ARCHS", "POS_INTERPOLATIONS", "BackboneConfig", "CLIP", "DINO", "ClipTokenizer",
           "ImageFeatures", "build", "check_params", "get_arch", "init_params", "load",
           "load_tokenizer", "logits", "normalization", "normalize_images"]

Module = CLIP | DINO


def build(arch: str | Mapping[str, Any] | BackboneConfig, *, dtype=jnp.float32,
          param_dtype=jnp.float32, pos_interpolation: str | None = None, remat: bool = False,
          vv_from_layer: int = 0) -> Module:
    """A Flax module for `arch` (name in ARCHS, dict of BackboneConfig fields, or a config).

    dtype: compute dtype; pos_interpolation: "bicubic" | "bilinear" | "bicubic_aa" | "bilinear_aa"
    (default: the arch's); remat: rematerialize blocks; vv_from_layer: 1-based block from which
    tapped layers come from the V-V attention stream (AnomalyCLIP DPAM; 0 = off).
    """
    cfg = get_arch(arch)
    mode = pos_interpolation or cfg.pos_interpolation
    if mode not in POS_INTERPOLATIONS:
        raise ValueError(f"pos_interpolation={mode!r}: expected one of {POS_INTERPOLATIONS}")
    if not 0 <= vv_from_layer <= cfg.depth:
        raise ValueError(f"vv_from_layer={vv_from_layer} must be in [0, {cfg.depth}]")
    cls = CLIP if cfg.family == "clip" else DINO
    return cls(cfg, dtype=dtype, param_dtype=param_dtype, pos_interpolation=mode, remat=remat,
               vv_from_layer=vv_from_layer)


def init_params(model: Module, rng: jax.Array, image_size: int | None = None) -> Any:
    """Random parameters of `model` (text tower included for CLIP)."""
    cfg = model.cfg
    size = image_size or cfg.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    tokens = jnp.zeros((1, cfg.context_length), jnp.int32) if cfg.has_text else None
    return model.init(rng, images, tokens)["params"]


def load(folder, *, dtype=jnp.float32, param_dtype=None, pos_interpolation: str | None = None,
         remat: bool = False, vv_from_layer: int = 0) -> tuple[Module, Any]:
    """(module, params) from a folder written by `python -m weights_conversion`.

    The architecture comes from the folder's config.json; the keyword arguments override only
    non-architectural options. `param_dtype` (default float32) casts the stored params.
    """
    from zsad_jax.backbones import io

    cfg = io.read_config(folder)
    pdtype = jnp.float32 if param_dtype is None else param_dtype
    model = build(cfg, dtype=dtype, param_dtype=pdtype, pos_interpolation=pos_interpolation,
                  remat=remat, vv_from_layer=vv_from_layer)
    params = io.read_params(folder)
    check_params(model, params, source=str(folder))
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, pdtype), params)
    return model, params


def check_params(model: Module, params: Any, source: str = "params") -> None:
    """Raises ValueError naming every missing/unexpected/wrongly-shaped parameter."""
    def path_str(path):
        return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)

    cfg = model.cfg
    expected = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    want = {path_str(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(expected)}
    got = {path_str(p): tuple(v.shape) for p, v in jax.tree_util.tree_leaves_with_path(params)}
    problems = [f"missing {k}" for k in sorted(set(want) - set(got))]
    problems += [f"unexpected {k}" for k in sorted(set(got) - set(want))]
    problems += [f"{k}: shape {got[k]} != expected {want[k]}" for k in sorted(set(want) & set(got))
                 if tuple(want[k]) != got[k]]
    if problems:
        raise ValueError(f"{source}: parameters do not match arch {cfg.family} "
                         f"(width {cfg.width}, depth {cfg.depth}): " + "; ".join(problems[:20])
                         + (f" ... ({len(problems)} problems)" if len(problems) > 20 else ""))


def load_tokenizer(folder_or_arch: str | pathlib.Path = "clip-tiny") -> ClipTokenizer:
    """CLIP tokenizer: from a converted folder (vocab.json + merges.txt), or "clip-tiny"."""
    if str(folder_or_arch) == "clip-tiny":
        return tiny_tokenizer()
    folder = pathlib.Path(folder_or_arch)
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if not vocab.is_file() or not merges.is_file():
        raise FileNotFoundError(
            f"{folder}: no tokenizer files (vocab.json + merges.txt). Converting an HF CLIP folder "
            f"copies them; for an OpenAI/open_clip checkpoint pass --bpe bpe_simple_vocab_16e6.txt.gz")
    context_length = 77
    cfg_file = folder / "config.json"
    if cfg_file.is_file():
        from zsad_jax.backbones import io
        context_length = io.read_config(folder).context_length
    return ClipTokenizer.from_files(vocab, merges, context_length)


def normalization(arch_or_model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the backbone family (CLIP's or ImageNet's), for images in [0, 1]."""
    cfg = arch_or_model.cfg if hasattr(arch_or_model, "cfg") else get_arch(arch_or_model)
    return cfg.mean, cfg.std


def normalize_images(images: jax.Array, arch_or_model) -> jax.Array:
    """(B, H, W, 3) in [0, 1] -> normalized with the backbone's mean/std."""
    mean, std = normalization(arch_or_model)
    return (images - jnp.asarray(mean, images.dtype)) / jnp.asarray(std, images.dtype)
