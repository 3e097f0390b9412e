"""Frozen backbones: OpenAI CLIP (vision + text), DINOv2 (± registers), DINOv3 ViT, in Flax.

    model = backbones.build("clip-tiny")                        # random-init module
    params = backbones.init_params(model, rng, image_size=64)
    model, params = backbones.load(converted_dir, pos_interpolation="bilinear")
    bb = backbones.from_config("clip", config.backbones.clip)  # the service methods use
    out = model.apply({"params": params}, images, layers=(6, 12), method="encode_image")
    out.layers, out.pooled, out.grid, out.num_prefix
    model.apply({"params": params}, token_ids, method="encode_text")      # CLIP: (B, E)
    tok = backbones.load_tokenizer(converted_dir)               # CLIP tokenizer

See docs/backbones.md. Importing this package never imports torch.
"""

from __future__ import annotations

import jax

from zsad_jax.backbones.clip import CLIP, logits
from zsad_jax.backbones.config import (
    ARCHS,
    POS_INTERPOLATIONS,
    BackboneConfig,
    get_arch,
)
from zsad_jax.backbones.dino import DINO
from zsad_jax.backbones.outputs import ImageFeatures
from zsad_jax.backbones.service import (
    FAMILIES,
    Backbone,
    Family,
    ImageView,
    build,
    check_params,
    from_config,
    init_params,
    load_tokenizer,
)
from zsad_jax.backbones.service import load_folder as load
from zsad_jax.backbones.tokenizer import ClipTokenizer, tiny_tokenizer

__all__ = ["ARCHS", "FAMILIES", "POS_INTERPOLATIONS", "Backbone", "BackboneConfig", "CLIP", "DINO",
           "ClipTokenizer", "Family", "ImageFeatures", "ImageView", "build", "check_params",
           "from_config", "get_arch", "init_params", "load", "load_tokenizer", "logits",
           "normalization", "normalize_images", "tiny_tokenizer"]


def normalization(arch_or_model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the backbone family (CLIP's or ImageNet's), for images in [0, 1]."""
    cfg = arch_or_model.cfg if hasattr(arch_or_model, "cfg") else get_arch(arch_or_model)
    return cfg.mean, cfg.std


def normalize_images(images: jax.Array, arch_or_model) -> jax.Array:
    """(B, H, W, 3) in [0, 1] -> normalized with the backbone's mean/std."""
    mean, std = normalization(arch_or_model)
    return (images - jax.numpy.asarray(mean, images.dtype)) / jax.numpy.asarray(std, images.dtype)
