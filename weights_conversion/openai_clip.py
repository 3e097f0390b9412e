"""OpenAI / open_clip CLIP state dicts (`visual.*`, `transformer.*`) -> (BackboneConfig, params).

The architecture is read off the tensor shapes as OpenAI's `build_model` does (heads = width / 64).
Fused attention `in_proj_weight` (3D, D) is split into q, k, v.
"""

from __future__ import annotations

import re

import numpy as np

from weights_conversion.hf import layer_norm
from weights_conversion.tensors import ConversionError, SourceTensors
from zsad_jax.backbones.config import BackboneConfig

# TorchScript archives carry these scalars next to the weights.
_SCALARS = r"input_resolution|context_length|vocab_size"


def is_openai_state_dict(tensors) -> bool:
    return "visual.conv1.weight" in tensors


def _count_blocks(keys, prefix: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if found != set(range(len(found))):
        raise ConversionError(f"non-contiguous block indices under {prefix!r}: {sorted(found)}")
    return len(found)


def openai_config(tensors: dict[str, np.ndarray], where: str) -> BackboneConfig:
    for key in ("visual.conv1.weight", "visual.positional_embedding", "visual.proj"):
        if key not in tensors:
            raise ConversionError(f"{where}: missing key {key!r} (not an OpenAI CLIP ViT state "
                                  f"dict; ResNet CLIPs are not supported)")
    width, _, patch, _ = tensors["visual.conv1.weight"].shape
    grid = int(round((tensors["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    fields = dict(family="clip", image_size=patch * grid, patch_size=patch, width=width,
                  depth=_count_blocks(tensors, "visual.transformer.resblocks."),
                  heads=width // 64, mlp_dim=4 * width, act="quick_gelu", patch_bias=False,
                  embed_dim=tensors["visual.proj"].shape[1], layer_norm_eps=1e-5)
    if "token_embedding.weight" in tensors:
        text_width = tensors["ln_final.weight"].shape[0]
        vocab = tensors["token_embedding.weight"].shape[0]
        fields.update(text_width=text_width, text_heads=text_width // 64,
                      text_depth=_count_blocks(tensors, "transformer.resblocks."),
                      text_mlp_dim=4 * text_width, vocab_size=vocab,
                      context_length=tensors["positional_embedding"].shape[0],
                      eot_token_id=vocab - 1, sot_token_id=vocab - 2)
    return BackboneConfig(**fields)


def _block(sd: SourceTensors, prefix: str, width: int, mlp_dim: int) -> dict:
    w = sd.take(f"{prefix}.attn.in_proj_weight", (3 * width, width))
    b = sd.take(f"{prefix}.attn.in_proj_bias", (3 * width,))
    attn = {name: {"kernel": w[i * width:(i + 1) * width].T, "bias": b[i * width:(i + 1) * width]}
            for i, name in enumerate(("q", "k", "v"))}
    attn["out"] = {"kernel": sd.take(f"{prefix}.attn.out_proj.weight", (width, width)).T,
                   "bias": sd.take(f"{prefix}.attn.out_proj.bias", (width,))}
    mlp = {"fc1": {"kernel": sd.take(f"{prefix}.mlp.c_fc.weight", (mlp_dim, width)).T,
                   "bias": sd.take(f"{prefix}.mlp.c_fc.bias", (mlp_dim,))},
           "fc2": {"kernel": sd.take(f"{prefix}.mlp.c_proj.weight", (width, mlp_dim)).T,
                   "bias": sd.take(f"{prefix}.mlp.c_proj.bias", (width,))}}
    return {"ln1": layer_norm(sd, f"{prefix}.ln_1", width), "attn": attn,
            "ln2": layer_norm(sd, f"{prefix}.ln_2", width), "mlp": mlp}


def openai_params(sd: SourceTensors, cfg: BackboneConfig) -> dict:
    d, p = cfg.width, cfg.patch_size
    visual = {
        "class_embed": sd.take("visual.class_embedding", (d,)),
        "patch_embed": {"kernel": sd.take("visual.conv1.weight", (d, 3, p, p)).transpose(2, 3, 1, 0)},
        "pos_embed": sd.take("visual.positional_embedding", (cfg.native_grid ** 2 + 1, d)),
        "ln_pre": layer_norm(sd, "visual.ln_pre", d),
        "ln_post": layer_norm(sd, "visual.ln_post", d),
        "proj": sd.take("visual.proj", (d, cfg.embed_dim)),
    }
    for i in range(cfg.depth):
        visual[f"block{i}"] = _block(sd, f"visual.transformer.resblocks.{i}", d, cfg.mlp_dim)
    params = {"visual": visual}
    if cfg.has_text:
        w = cfg.text_width
        text = {"token_embed": sd.take("token_embedding.weight", (cfg.vocab_size, w)),
                "pos_embed": sd.take("positional_embedding", (cfg.context_length, w)),
                "ln_final": layer_norm(sd, "ln_final", w),
                "proj": sd.take("text_projection", (w, cfg.embed_dim))}
        for i in range(cfg.text_depth):
            text[f"block{i}"] = _block(sd, f"transformer.resblocks.{i}", w, cfg.text_mlp_dim)
        params["text"] = text
    params["logit_scale"] = (sd.take("logit_scale", ()) if "logit_scale" in sd
                             else np.asarray(np.log(1 / 0.07), np.float32))
    sd.ignore(_SCALARS)
    sd.ignore(r"(visual\.)?attn_mask")     # open_clip's causal-mask buffer
    return params


def convert_openai(tensors: dict[str, np.ndarray], where: str):
    cfg = openai_config(tensors, where)
    sd = SourceTensors(tensors, where)
    params = openai_params(sd, cfg)
    sd.check_all_used()
    return cfg, params


def openai_to_hf(tensors: dict[str, np.ndarray], cfg: BackboneConfig) -> dict[str, np.ndarray]:
    """The same weights under HF CLIPModel names (for --verify against transformers)."""
    out = {}

    def block(src, dst, width):
        w, b = tensors[f"{src}.attn.in_proj_weight"], tensors[f"{src}.attn.in_proj_bias"]
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f"{dst}.self_attn.{name}.weight"] = w[i * width:(i + 1) * width]
            out[f"{dst}.self_attn.{name}.bias"] = b[i * width:(i + 1) * width]
        pairs = [("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]
        for s, t in pairs:
            for kind in ("weight", "bias"):
                out[f"{dst}.{t}.{kind}"] = tensors[f"{src}.{s}.{kind}"]

    v = "vision_model."
    out[v + "embeddings.class_embedding"] = tensors["visual.class_embedding"]
    out[v + "embeddings.patch_embedding.weight"] = tensors["visual.conv1.weight"]
    out[v + "embeddings.position_embedding.weight"] = tensors["visual.positional_embedding"]
    for s, t in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for kind in ("weight", "bias"):
            out[f"{v}{t}.{kind}"] = tensors[f"visual.{s}.{kind}"]
    for i in range(cfg.depth):
        block(f"visual.transformer.resblocks.{i}", f"{v}encoder.layers.{i}", cfg.width)
    out["visual_projection.weight"] = tensors["visual.proj"].T
    if cfg.has_text:
        t = "text_model."
        out[t + "embeddings.token_embedding.weight"] = tensors["token_embedding.weight"]
        out[t + "embeddings.position_embedding.weight"] = tensors["positional_embedding"]
        for kind in ("weight", "bias"):
            out[f"{t}final_layer_norm.{kind}"] = tensors[f"ln_final.{kind}"]
        for i in range(cfg.text_depth):
            block(f"transformer.resblocks.{i}", f"{t}encoder.layers.{i}", cfg.text_width)
        out["text_projection.weight"] = tensors["text_projection"].T
    if "logit_scale" in tensors:
        out["logit_scale"] = tensors["logit_scale"]
    return out
