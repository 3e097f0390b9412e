"""Architecture configs of the backbones (CLIP, DINOv2, DINOv3) and the named presets `ARCHS`.

A `BackboneConfig` holds only architectural hyper-parameters (what the weights need). Options that
do not change the weights (compute dtype, position-embedding interpolation, remat, the V-V attention
path) are fields of the Flax modules and can be overridden at `backbones.load` time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

FAMILIES = ("clip", "dinov2", "dinov3")
ACTIVATIONS = ("quick_gelu", "gelu", "silu")
POS_INTERPOLATIONS = ("bicubic", "bilinear", "bicubic_aa", "bilinear_aa")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """Architecture of one backbone. Vision fields are shared; `text_*` are CLIP only."""

    family: str                      # "clip" | "dinov2" | "dinov3"
    image_size: int                  # native input side (CLIP/DINOv2: the position-embedding grid)
    patch_size: int
    width: int                       # hidden size D
    depth: int                       # number of blocks
    heads: int
    mlp_dim: int                     # hidden size of the MLP (of each branch when gated)
    act: str = "gelu"                # "quick_gelu" | "gelu" (erf) | "silu"
    gated_mlp: bool = False          # DINOv3 H+ / DINOv2 g: act(gate(x)) * up(x)
    layer_norm_eps: float = 1e-5
    query_bias: bool = True
    key_bias: bool = True
    value_bias: bool = True
    proj_bias: bool = True
    mlp_bias: bool = True
    patch_bias: bool = True          # CLIP's patch conv has no bias
    layerscale: bool = False         # DINO LayerScale (lambda1) after attention and MLP
    num_registers: int = 0
    rope_theta: float = 0.0          # DINOv3 RoPE base (0: learned position embeddings instead)
    pos_interpolation: str = "bicubic"   # default resize of the position embeddings
    # CLIP only.
    embed_dim: int = 0               # joint image-text embedding size (projection output)
    text_width: int = 0
    text_depth: int = 0
    text_heads: int = 0
    text_mlp_dim: int = 0
    vocab_size: int = 0
    context_length: int = 77
    eot_token_id: int = 49407        # pooling position: first occurrence of this id
    sot_token_id: int = 49406

    def __post_init__(self):
        def bad(field, value, allowed):
            raise ValueError(f"BackboneConfig.{field}={value!r}: expected one of {allowed}")

        if self.family not in FAMILIES:
            bad("family", self.family, FAMILIES)
        if self.act not in ACTIVATIONS:
            bad("act", self.act, ACTIVATIONS)
        if self.pos_interpolation not in POS_INTERPOLATIONS:
            bad("pos_interpolation", self.pos_interpolation, POS_INTERPOLATIONS)
        if self.width % self.heads:
            raise ValueError(f"BackboneConfig.width={self.width} is not a multiple of "
                             f"heads={self.heads}")
        if self.family == "dinov3" and (self.width // self.heads) % 4:
            raise ValueError(f"DINOv3 RoPE needs head_dim % 4 == 0, got {self.width // self.heads}")
        if self.family == "dinov3" and self.rope_theta <= 0:
            raise ValueError("BackboneConfig.rope_theta must be > 0 for family 'dinov3'")
        if self.image_size % self.patch_size:
            raise ValueError(f"BackboneConfig.image_size={self.image_size} is not a multiple of "
                             f"patch_size={self.patch_size}")

    @property
    def has_text(self) -> bool:
        return self.family == "clip" and self.text_depth > 0

    @property
    def native_grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mean(self) -> tuple[float, float, float]:
        return CLIP_MEAN if self.family == "clip" else IMAGENET_MEAN

    @property
    def std(self) -> tuple[float, float, float]:
        return CLIP_STD if self.family == "clip" else IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> BackboneConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{source}: unknown backbone config keys {unknown}; "
                             f"known: {sorted(names)}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in d and f.default is dataclasses.MISSING)
        if missing:
            raise ValueError(f"{source}: missing backbone config keys {missing}")
        return cls(**dict(d))


def _clip(image_size, patch, width, depth, heads, embed, text_width, text_heads, **kw):
    defaults = dict(mlp_dim=4 * width, act="quick_gelu", patch_bias=False, text_depth=12,
                    text_mlp_dim=4 * text_width, vocab_size=49408)
    defaults.update(kw)
    return BackboneConfig(family="clip", image_size=image_size, patch_size=patch, width=width,
                          depth=depth, heads=heads, embed_dim=embed, text_width=text_width,
                          text_heads=text_heads, **defaults)


def _dinov2(width, depth, heads, registers=0, **kw):
    return BackboneConfig(family="dinov2", image_size=518, patch_size=14, width=width,
                          depth=depth, heads=heads, mlp_dim=4 * width, layer_norm_eps=1e-6,
                          layerscale=True, num_registers=registers,
                          pos_interpolation="bicubic_aa" if registers else "bicubic", **kw)


def _dinov3(width, depth, heads, mlp_dim, gated=False, **kw):
    return BackboneConfig(family="dinov3", image_size=224, patch_size=16, width=width,
                          depth=depth, heads=heads, mlp_dim=mlp_dim, layer_norm_eps=1e-5,
                          key_bias=False, layerscale=True, num_registers=4, rope_theta=100.0,
                          gated_mlp=gated, act="silu" if gated else "gelu", **kw)


# Tiny byte-level BPE vocabulary of `clip-tiny`: see tokenizer.tiny_bpe (512 bytes + merges + 2).
TINY_VOCAB_SIZE = 640

ARCHS: dict[str, BackboneConfig] = {
    # OpenAI CLIP (HF openai/clip-vit-*).
    "clip-vit-b32": _clip(224, 32, 768, 12, 12, 512, 512, 8),
    "clip-vit-b16": _clip(224, 16, 768, 12, 12, 512, 512, 8),
    "clip-vit-l14": _clip(224, 14, 1024, 24, 16, 768, 768, 12),
    "clip-vit-l14-336": _clip(336, 14, 1024, 24, 16, 768, 768, 12),
    # DINOv2 (HF facebook/dinov2-*, facebook/dinov2-with-registers-*).
    "dinov2-vits14": _dinov2(384, 12, 6),
    "dinov2-vitb14": _dinov2(768, 12, 12),
    "dinov2-vitl14": _dinov2(1024, 24, 16),
    "dinov2-vits14-reg": _dinov2(384, 12, 6, registers=4),
    "dinov2-vitb14-reg": _dinov2(768, 12, 12, registers=4),
    "dinov2-vitl14-reg": _dinov2(1024, 24, 16, registers=4),
    # DINOv3 ViT (HF facebook/dinov3-vit*-pretrain-lvd1689m).
    "dinov3-vits16": _dinov3(384, 12, 6, 1536),
    "dinov3-vits16plus": _dinov3(384, 12, 6, 1536, gated=True),
    "dinov3-vitb16": _dinov3(768, 12, 12, 3072),
    "dinov3-vitl16": _dinov3(1024, 24, 16, 4096),
    "dinov3-vith16plus": _dinov3(1280, 32, 20, 5120, gated=True),
    # Tiny random architectures for tests and demo configs.
    "clip-tiny": BackboneConfig(
        family="clip", image_size=64, patch_size=8, width=64, depth=2, heads=4, mlp_dim=256,
        act="quick_gelu", patch_bias=False, embed_dim=32, text_width=64, text_depth=2,
        text_heads=4, text_mlp_dim=256, vocab_size=TINY_VOCAB_SIZE, context_length=77,
        sot_token_id=TINY_VOCAB_SIZE - 2, eot_token_id=TINY_VOCAB_SIZE - 1),
    "dinov2-tiny": BackboneConfig(
        family="dinov2", image_size=64, patch_size=8, width=64, depth=2, heads=4, mlp_dim=256,
        layer_norm_eps=1e-6, layerscale=True),
    "dinov3-tiny": BackboneConfig(
        family="dinov3", image_size=64, patch_size=8, width=64, depth=2, heads=4, mlp_dim=256,
        key_bias=False, layerscale=True, num_registers=4, rope_theta=100.0),
}


def get_arch(name_or_config: str | Mapping[str, Any] | BackboneConfig) -> BackboneConfig:
    """A name in `ARCHS`, a dict of `BackboneConfig` fields, or a config -> `BackboneConfig`."""
    if isinstance(name_or_config, BackboneConfig):
        return name_or_config
    if isinstance(name_or_config, str):
        if name_or_config not in ARCHS:
            import difflib
            close = difflib.get_close_matches(name_or_config, list(ARCHS), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"Unknown backbone arch {name_or_config!r}.{hint} "
                             f"Known: {', '.join(sorted(ARCHS))}")
        return ARCHS[name_or_config]
    if isinstance(name_or_config, Mapping):
        return BackboneConfig.from_dict(dict(name_or_config))
    raise TypeError(f"Expected an arch name, dict or BackboneConfig, got {type(name_or_config)}")
