"""Backbones as a service: one config section (`BackboneSpec`) -> a ready frozen tower.

    bb = backbones.from_config("clip", config.backbones.clip, dtype=jnp.bfloat16, remat=True)
    params = bb.init(rng)                         # converted weights, or random init
    out = bb.encode_image(params, images)         # ImageFeatures of bb.layers
    bb.project(params, tokens); bb.final_norm(params, tokens); bb.tokenizer(); bb.view

Everything a method needs from a tower lives here, behind one policy each:

* architecture: from the converted folder's config.json when `weights` names one (the folder is
  the truth), checked against `arch` (a different shape is an error naming both); else `arch`;
* parameters: the converted folder (checked against the architecture), or a jitted random init;
  `text=False` keeps only the image tower (language-free methods);
* tokenizer (CLIP): the converted folder's files; for a random-init tower the offline tiny BPE
  with the architecture's own start / end token ids;
* the image view (input size and normalization of the family);
* parts by name, from the `FAMILIES` table rather than `if family == ...` branches: the final
  norm, the output projection, the class position embedding (`param_path`).

A new backbone family is a `backbones`-only change: its module, its `Family` row.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from zsad_jax.backbones import io
from zsad_jax.backbones.clip import CLIP
from zsad_jax.backbones.config import ARCHS, TINY_VOCAB_SIZE, BackboneConfig, get_arch
from zsad_jax.backbones.dino import DINO
from zsad_jax.backbones.outputs import ImageFeatures
from zsad_jax.backbones.tokenizer import ClipTokenizer, tiny_tokenizer


@dataclasses.dataclass(frozen=True)
class ImageView:
    """How one backbone wants its input: a square `size` x `size` image normalized with mean/std."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class Family:
    """What differs between backbone families, as data (see the module docstring)."""

    module: type                                  # the Flax module class
    parts: Mapping[str, tuple[str, ...]]          # part name -> parameter path in the tower
    has_text: bool = False


FAMILIES: dict[str, Family] = {
    "clip": Family(CLIP, {"final_norm": ("visual", "ln_post"), "class_pos": ("visual", "pos_embed"),
                          "image_tower": ("visual",), "image_proj": ("visual", "proj")},
                   has_text=True),
    "dinov2": Family(DINO, {"final_norm": ("norm",), "class_pos": ("pos_embed",)}),
    "dinov3": Family(DINO, {"final_norm": ("norm",)}),
}

# Fields that fix the parameter shapes: a converted folder must agree with `arch` on them.
SHAPE_FIELDS = ("family", "patch_size", "width", "depth", "heads", "mlp_dim", "gated_mlp",
                "num_registers", "embed_dim", "text_width", "text_depth", "text_heads",
                "vocab_size", "context_length")


def resolve_arch(spec, where: str) -> BackboneConfig:
    """The architecture of a backbone section: the converted folder's when it has one, else the
    preset `spec.arch`; a folder whose shapes differ from the preset is an error naming both."""
    preset = get_arch(spec.arch)
    weights = pathlib.Path(spec.weights).expanduser() if spec.weights else None
    if weights is None or not (weights / io.CONFIG_FILE).is_file():
        return preset            # (a missing folder is reported with the other missing inputs)
    folder = io.read_config(weights)
    differ = [f"{f}: {getattr(folder, f)} in the folder, {getattr(preset, f)} for {spec.arch!r}"
              for f in SHAPE_FIELDS if getattr(folder, f) != getattr(preset, f)]
    if differ:
        raise ValueError(f"{weights}: the converted architecture is not config.{where}.arch="
                         f"{spec.arch!r} ({'; '.join(differ)}); set the arch of the converted "
                         f"checkpoint")
    return folder


@dataclasses.dataclass(frozen=True, eq=False)
class Backbone:
    """A frozen tower built from one config section; see the module docstring."""

    name: str                 # the section's key in config.backbones (also the view name)
    arch: BackboneConfig
    module: Any               # CLIP | DINO
    weights: str              # converted folder ("" = random init)
    image_size: int
    layers: tuple[int, ...]
    text: bool = True         # keep the text tower (CLIP) in `init`

    @property
    def family(self) -> Family:
        return FAMILIES[self.arch.family]

    @property
    def view(self) -> ImageView:
        return ImageView(self.image_size, tuple(self.arch.mean), tuple(self.arch.std))

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.arch.patch_size
        return side, side

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def has_text(self) -> bool:
        return self.family.has_text and self.arch.has_text and self.text

    # ---- parameters ------------------------------------------------------------------------
    def init(self, rng: jax.Array) -> Any:
        """The tower's parameters: the converted weights (float32), or a random init."""
        if self.weights:
            model, params = load_folder(self.weights)
            del model
        else:
            size = self.image_size
            images = jnp.zeros((1, size, size, 3), jnp.float32)
            if self.has_text:
                tokens = jnp.zeros((1, self.arch.context_length), jnp.int32)
                params = jax.jit(lambda r: self.module.init(r, images, tokens))(rng)["params"]
            else:
                params = jax.jit(lambda r: self.module.init(r, images, method="encode_image"))(rng)
                params = params["params"]
        if not self.has_text and "text" in params:
            params = {k: v for k, v in params.items() if k != "text"}
        return params

    def param_path(self, part: str) -> tuple[str, ...]:
        """Path of a named part ("final_norm", "class_pos", ...) inside the tower's params."""
        parts = self.family.parts
        if part not in parts:
            raise ValueError(f"backbone {self.name!r} ({self.arch.family}) has no {part!r}; "
                             f"parts: {', '.join(parts)}")
        return parts[part]

    def param(self, params, part: str):
        """The subtree of a named part, e.g. `bb.param(params, "class_pos")[0]`."""
        node = params
        for key in self.param_path(part):
            node = node[key]
        return node

    # ---- computations (pure; `params` are this tower's) ------------------------------------
    def encode_image(self, params, images, layers=None, prefix_tokens=None,
                     prefix_pos_embed=None, final_hidden: bool = False) -> ImageFeatures:
        """images (B, S, S, 3) normalized -> ImageFeatures of `layers` (default: `self.layers`).

        final_hidden (CLIP): also `ImageFeatures.final`, the last block's normal-stream output
        (B, T, D) before the final norm (with the V-V path the taps come from the other stream).
        """
        extra = {"final_hidden": True} if final_hidden else {}
        return self.module.apply({"params": params}, images,
                                 self.layers if layers is None else tuple(layers),
                                 prefix_tokens, prefix_pos_embed, method="encode_image", **extra)

    def project(self, params, tokens):
        """Tokens (B, ..., D) -> the tower's output space: CLIP ln_post + proj (B, ..., E);
        DINO its final norm (B, ..., D)."""
        return self.module.apply({"params": params}, tokens, method="project_image_tokens")

    def final_norm(self, params, tokens):
        """The final LayerNorm alone (CLIP ln_post, DINO norm): (B, ..., D) -> (B, ..., D)."""
        return self.module.apply({"params": params}, tokens, method="final_norm")

    def embed_tokens(self, params, token_ids):
        """CLIP: (B, L) ids -> (B, L, Dt) token embeddings (for learned prompts)."""
        return self.module.apply({"params": params}, token_ids, method="embed_tokens")

    def encode_text(self, params, token_ids):
        """CLIP: (B, L) ids -> (B, E), pooled at the EOT token."""
        return self.module.apply({"params": params}, token_ids, method="encode_text")

    def encode_text_embeddings(self, params, embeddings, eot_index, **kwargs):
        """CLIP: (B, L, Dt) prompt embeddings + (B,) EOT positions -> (B, E); kwargs: `layers`,
        `deep_prompts` (N, [B,] P, Dt) replacing positions 1..P before text blocks 2..N+1."""
        return self.module.apply({"params": params}, embeddings, eot_index,
                                 method="encode_text_embeddings", **kwargs)

    # ---- host side -------------------------------------------------------------------------
    def tokenizer(self) -> ClipTokenizer:
        """The CLIP tokenizer: the converted folder's; a random tower gets the offline tiny BPE
        with its own start / end ids (its text means nothing anyway)."""
        if not self.family.has_text:
            raise ValueError(f"backbone {self.name!r} ({self.arch.family}) has no text tower")
        if self.weights:
            return load_tokenizer(self.weights)
        if self.arch.vocab_size < TINY_VOCAB_SIZE:
            raise ValueError(f"backbone {self.name!r}: a vocabulary of {self.arch.vocab_size} is "
                             f"smaller than the offline tokenizer's {TINY_VOCAB_SIZE}")
        return tiny_tokenizer(self.arch.context_length, self.arch.sot_token_id,
                              self.arch.eot_token_id)

    def required_files(self) -> list[tuple[str, str]]:
        """(path, how to get it) of the files this tower needs."""
        if not self.weights:
            return []
        return [(self.weights, f"converted weights for backbone {self.name!r} ({self.arch.family}): "
                 f"python -m weights_conversion --src <downloaded checkpoint> --dst {self.weights}")]

    def cache_key(self) -> dict:
        """What the tower's frozen features depend on (besides the weights' bytes)."""
        return dict(arch=self.arch.to_dict(), weights=self.weights, image_size=self.image_size,
                    layers=list(self.layers), pos_interpolation=self.module.pos_interpolation)


def build(arch: str | Mapping[str, Any] | BackboneConfig, *, dtype=jnp.float32,
          param_dtype=jnp.float32, pos_interpolation: str | None = None, remat: bool | str = False,
          vv_from_layer: int = 0):
    """A Flax module for `arch` (name in ARCHS, dict of BackboneConfig fields, or a config).

    dtype: compute dtype; pos_interpolation: "bicubic" | "bilinear" | "bicubic_aa" | "bilinear_aa"
    (default: the arch's); remat: a policy of `layers.block_class` ("none" | "dots" | "full";
    True = "full"); vv_from_layer: 1-based block from which tapped layers come from the V-V
    attention stream (AnomalyCLIP DPAM; 0 = off).
    """
    from zsad_jax.backbones.config import POS_INTERPOLATIONS

    cfg = get_arch(arch)
    mode = pos_interpolation or cfg.pos_interpolation
    if mode not in POS_INTERPOLATIONS:
        raise ValueError(f"pos_interpolation={mode!r}: expected one of {POS_INTERPOLATIONS}")
    if not 0 <= vv_from_layer <= cfg.depth:
        raise ValueError(f"vv_from_layer={vv_from_layer} must be in [0, {cfg.depth}]")
    return FAMILIES[cfg.family].module(cfg, dtype=dtype, param_dtype=param_dtype,
                                       pos_interpolation=mode, remat=remat,
                                       vv_from_layer=vv_from_layer)


def from_config(name: str, spec, *, dtype=jnp.float32, remat: bool | str = False, text: bool = True,
                vv_from_layer: int = 0) -> Backbone:
    """The `Backbone` of section `config.backbones.<name>` (a `BackboneSpec` or its ConfigDict)."""
    arch = resolve_arch(spec, f"backbones.{name}")
    module = build(arch, dtype=dtype, pos_interpolation=spec.pos_interpolation, remat=remat,
                   vv_from_layer=vv_from_layer)
    layers = tuple(int(i) for i in spec.layers)
    if any(not 1 <= i <= arch.depth for i in layers):
        raise ValueError(f"config.backbones.{name}.layers={layers}: 1-based block indices in "
                         f"[1, {arch.depth}] are required")
    if spec.image_size % arch.patch_size:
        raise ValueError(f"config.backbones.{name}.image_size={spec.image_size} is not a multiple "
                         f"of the patch size {arch.patch_size}")
    return Backbone(name=name, arch=arch, module=module, weights=str(spec.weights),
                    image_size=int(spec.image_size), layers=layers, text=text)


def load_folder(folder, *, dtype=jnp.float32, param_dtype=None, pos_interpolation: str | None = None,
                remat: bool | str = False, vv_from_layer: int = 0):
    """(module, params) from a folder written by `python -m weights_conversion`.

    The architecture comes from the folder's config.json; the keyword arguments override only
    non-architectural options. `param_dtype` (default float32) casts the stored params.
    """
    cfg = io.read_config(folder)
    pdtype = jnp.float32 if param_dtype is None else param_dtype
    model = build(cfg, dtype=dtype, param_dtype=pdtype, pos_interpolation=pos_interpolation,
                  remat=remat, vv_from_layer=vv_from_layer)
    params = io.read_params(folder)
    check_params(model, params, source=str(folder))
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, pdtype), params)
    return model, params


def init_params(model, rng: jax.Array, image_size: int | None = None) -> Any:
    """Random parameters of `model` (text tower included for CLIP)."""
    cfg = model.cfg
    size = image_size or cfg.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    tokens = jnp.zeros((1, cfg.context_length), jnp.int32) if cfg.has_text else None
    return model.init(rng, images, tokens)["params"]


def check_params(model, params: Any, source: str = "params") -> None:
    """Raises ValueError naming every missing/unexpected/wrongly-shaped parameter."""
    from zsad_jax.tree import path_str

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
    if str(folder_or_arch) in ARCHS:
        arch = ARCHS[str(folder_or_arch)]
        return tiny_tokenizer(arch.context_length, arch.sot_token_id, arch.eot_token_id)
    folder = pathlib.Path(folder_or_arch)
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if not vocab.is_file() or not merges.is_file():
        raise FileNotFoundError(
            f"{folder}: no tokenizer files (vocab.json + merges.txt). Converting an HF CLIP folder "
            f"copies them; for an OpenAI/open_clip checkpoint pass --bpe bpe_simple_vocab_16e6.txt.gz")
    context_length = io.read_config(folder).context_length if (folder / io.CONFIG_FILE).is_file() else 77
    return ClipTokenizer.from_files(vocab, merges, context_length)
