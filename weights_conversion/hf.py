"""Hugging Face folders -> (BackboneConfig, Flax params).

CLIPModel / CLIPVisionModel(WithProjection) / Dinov2Model / Dinov2WithRegistersModel /
DINOv3ViTModel. Architecture hyper-parameters come from the folder's config.json; shapes of every
tensor are checked against them. Legacy key names of the released checkpoints
(`attention.attention.query`, `mlp.weights_in`, DINOv3 `layer.N`) are accepted too.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from weights_conversion.tensors import ConversionError, SourceTensors
from zsad_jax.backbones.config import BackboneConfig

HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "silu": "silu", "swish": "silu"}


def _act(name: str, where: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise ConversionError(f"{where}: hidden_act={name!r} not supported "
                              f"(supported: {sorted(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[name]


def _size(value, key: str, where: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConversionError(f"{where}: non-square {key}={value} is not supported")
        value = value[0]
    return int(value)


# --------------------------------------------------------------------------------------------
# Parameter helpers (torch Linear weight (out, in) -> Flax Dense kernel (in, out)).
# --------------------------------------------------------------------------------------------

def dense(sd: SourceTensors, prefix: str, d_in: int, d_out: int, bias: bool = True) -> dict:
    out = {"kernel": sd.take(f"{prefix}.weight", (d_out, d_in)).T}
    if bias:
        out["bias"] = sd.take(f"{prefix}.bias", (d_out,))
    return out


def layer_norm(sd: SourceTensors, prefix: str, d: int) -> dict:
    return {"scale": sd.take(f"{prefix}.weight", (d,)), "bias": sd.take(f"{prefix}.bias", (d,))}


def conv_patch(sd: SourceTensors, key: str, cfg: BackboneConfig, bias_key: str | None) -> dict:
    p = cfg.patch_size
    out = {"kernel": sd.take(key, (cfg.width, 3, p, p)).transpose(2, 3, 1, 0)}
    if bias_key:
        out["bias"] = sd.take(bias_key, (cfg.width,))
    return out


# --------------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------------

def clip_config(hf: dict, where: str) -> BackboneConfig:
    model_type = hf.get("model_type")
    if model_type == "clip":
        vision, text = hf["vision_config"], hf.get("text_config") or {}
        embed_dim = int(hf.get("projection_dim", 512))
    elif model_type == "clip_vision_model":
        vision, text = hf, {}
        embed_dim = int(hf.get("projection_dim", 0))
    else:
        raise ConversionError(f"{where}: model_type={model_type!r} is not a CLIP model")
    act = _act(vision.get("hidden_act", "quick_gelu"), where + ":vision_config")
    eps = float(vision.get("layer_norm_eps", 1e-5))
    fields = dict(family="clip", image_size=_size(vision.get("image_size", 224), "image_size", where),
                  patch_size=_size(vision.get("patch_size", 32), "patch_size", where),
                  width=int(vision.get("hidden_size", 768)),
                  depth=int(vision.get("num_hidden_layers", 12)),
                  heads=int(vision.get("num_attention_heads", 12)),
                  mlp_dim=int(vision.get("intermediate_size", 3072)), act=act,
                  layer_norm_eps=eps, patch_bias=False, embed_dim=embed_dim,
                  pos_interpolation="bicubic")
    if text:
        text_act = _act(text.get("hidden_act", "quick_gelu"), where + ":text_config")
        if text_act != act or float(text.get("layer_norm_eps", 1e-5)) != eps:
            raise ConversionError(f"{where}: text and vision towers with different hidden_act "
                                  f"or layer_norm_eps are not supported")
        vocab = int(text.get("vocab_size", 49408))
        eos = int(text.get("eos_token_id", 49407))
        bos = int(text.get("bos_token_id", 49406))
        if eos == 2:      # pre-#24773 configs (bos 0, eos 2): HF pools at argmax(id), i.e. the
            eos, bos = vocab - 1, vocab - 2   # largest id, which is EOT in CLIP's vocabulary
        fields.update(text_width=int(text.get("hidden_size", 512)),
                      text_depth=int(text.get("num_hidden_layers", 12)),
                      text_heads=int(text.get("num_attention_heads", 8)),
                      text_mlp_dim=int(text.get("intermediate_size", 2048)), vocab_size=vocab,
                      context_length=int(text.get("max_position_embeddings", 77)),
                      eot_token_id=eos, sot_token_id=bos)
    return BackboneConfig(**fields)


def _clip_block(sd, prefix, width, mlp_dim):
    return {
        "ln1": layer_norm(sd, f"{prefix}.layer_norm1", width),
        "attn": {n: dense(sd, f"{prefix}.self_attn.{s}", width, width)
                 for n, s in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"),
                              ("out", "out_proj"))},
        "ln2": layer_norm(sd, f"{prefix}.layer_norm2", width),
        "mlp": {"fc1": dense(sd, f"{prefix}.mlp.fc1", width, mlp_dim),
                "fc2": dense(sd, f"{prefix}.mlp.fc2", mlp_dim, width)},
    }


def clip_params(sd: SourceTensors, cfg: BackboneConfig) -> dict:
    """HF CLIP state dict (keys `vision_model.*`, `text_model.*`, projections) -> params."""
    v = "vision_model." if any(k.startswith("vision_model.") for k in sd.keys()) else ""
    d = cfg.width
    visual = {
        "class_embed": sd.take(f"{v}embeddings.class_embedding", (d,)),
        "patch_embed": conv_patch(sd, f"{v}embeddings.patch_embedding.weight", cfg, None),
        "pos_embed": sd.take(f"{v}embeddings.position_embedding.weight",
                             (cfg.native_grid ** 2 + 1, d)),
        "ln_pre": layer_norm(sd, f"{v}pre_layrnorm", d),
        "ln_post": layer_norm(sd, f"{v}post_layernorm", d),
    }
    for i in range(cfg.depth):
        visual[f"block{i}"] = _clip_block(sd, f"{v}encoder.layers.{i}", d, cfg.mlp_dim)
    if cfg.embed_dim:
        visual["proj"] = sd.take("visual_projection.weight", (cfg.embed_dim, d)).T
    params = {"visual": visual}
    if cfg.has_text:
        t, w = "text_model.", cfg.text_width
        text = {
            "token_embed": sd.take(f"{t}embeddings.token_embedding.weight", (cfg.vocab_size, w)),
            "pos_embed": sd.take(f"{t}embeddings.position_embedding.weight",
                                 (cfg.context_length, w)),
            "ln_final": layer_norm(sd, f"{t}final_layer_norm", w),
            "proj": sd.take("text_projection.weight", (cfg.embed_dim, w)).T,
        }
        for i in range(cfg.text_depth):
            text[f"block{i}"] = _clip_block(sd, f"{t}encoder.layers.{i}", w, cfg.text_mlp_dim)
        params["text"] = text
    params["logit_scale"] = (sd.take("logit_scale", ()) if "logit_scale" in sd
                             else np.asarray(np.log(1 / 0.07), np.float32))
    sd.ignore(r".*position_ids")
    return params


# --------------------------------------------------------------------------------------------
# DINOv2 (± registers)
# --------------------------------------------------------------------------------------------

def dinov2_config(hf: dict, where: str) -> BackboneConfig:
    width = int(hf.get("hidden_size", 768))
    hidden = int(width * float(hf.get("mlp_ratio", 4)))
    swiglu = bool(hf.get("use_swiglu_ffn", False))
    if swiglu:
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
    registers = int(hf.get("num_register_tokens", 0)) if hf.get("model_type") == \
        "dinov2_with_registers" else 0
    return BackboneConfig(
        family="dinov2", image_size=_size(hf.get("image_size", 518), "image_size", where),
        patch_size=_size(hf.get("patch_size", 14), "patch_size", where), width=width,
        depth=int(hf.get("num_hidden_layers", 12)), heads=int(hf.get("num_attention_heads", 12)),
        mlp_dim=hidden, act="silu" if swiglu else _act(hf.get("hidden_act", "gelu"), where),
        gated_mlp=swiglu, layer_norm_eps=float(hf.get("layer_norm_eps", 1e-6)),
        query_bias=bool(hf.get("qkv_bias", True)), key_bias=bool(hf.get("qkv_bias", True)),
        value_bias=bool(hf.get("qkv_bias", True)), layerscale=True, num_registers=registers,
        # HF Dinov2WithRegisters resizes with antialias=True; Dinov2 without.
        pos_interpolation="bicubic_aa" if hf.get("model_type") == "dinov2_with_registers"
        else "bicubic")


_DINOV2_LEGACY = [(r"\.attention\.attention\.query\.", ".attention.q_proj."),
                  (r"\.attention\.attention\.key\.", ".attention.k_proj."),
                  (r"\.attention\.attention\.value\.", ".attention.v_proj."),
                  (r"\.attention\.output\.dense\.", ".attention.o_proj."),
                  (r"\.mlp\.weights_out\.", ".mlp.down_proj.")]


def dinov2_rename_legacy(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Released DINOv2 checkpoints' names -> transformers 5 names (as its conversion mapping)."""
    out = {}
    for k, v in tensors.items():
        for pattern, repl in _DINOV2_LEGACY:
            k = re.sub(pattern, repl, k)
        if k.endswith(".mlp.weights_in.weight") or k.endswith(".mlp.weights_in.bias"):
            base, kind = k.rsplit(".weights_in.", 1)
            gate, up = np.split(v, 2, axis=0)
            out[f"{base}.gate_proj.{kind}"], out[f"{base}.up_proj.{kind}"] = gate, up
            continue
        out[k] = v
    return out


def _dino_block(sd, prefix, cfg: BackboneConfig):
    d, h = cfg.width, cfg.mlp_dim
    attn = {"q": dense(sd, f"{prefix}.attention.q_proj", d, d, cfg.query_bias),
            "k": dense(sd, f"{prefix}.attention.k_proj", d, d, cfg.key_bias),
            "v": dense(sd, f"{prefix}.attention.v_proj", d, d, cfg.value_bias),
            "out": dense(sd, f"{prefix}.attention.o_proj", d, d, cfg.proj_bias)}
    if cfg.gated_mlp:
        mlp = {"gate": dense(sd, f"{prefix}.mlp.gate_proj", d, h, cfg.mlp_bias),
               "up": dense(sd, f"{prefix}.mlp.up_proj", d, h, cfg.mlp_bias),
               "fc2": dense(sd, f"{prefix}.mlp.down_proj", h, d, cfg.mlp_bias)}
    elif cfg.family == "dinov3":
        mlp = {"fc1": dense(sd, f"{prefix}.mlp.up_proj", d, h, cfg.mlp_bias),
               "fc2": dense(sd, f"{prefix}.mlp.down_proj", h, d, cfg.mlp_bias)}
    else:
        mlp = {"fc1": dense(sd, f"{prefix}.mlp.fc1", d, h, cfg.mlp_bias),
               "fc2": dense(sd, f"{prefix}.mlp.fc2", h, d, cfg.mlp_bias)}
    return {"ln1": layer_norm(sd, f"{prefix}.norm1", d), "attn": attn,
            "ls1": sd.take(f"{prefix}.layer_scale1.lambda1", (d,)),
            "ln2": layer_norm(sd, f"{prefix}.norm2", d), "mlp": mlp,
            "ls2": sd.take(f"{prefix}.layer_scale2.lambda1", (d,))}


def dinov2_params(sd: SourceTensors, cfg: BackboneConfig) -> dict:
    d = cfg.width
    params = {
        "cls_token": sd.take("embeddings.cls_token", (1, 1, d)).reshape(d),
        "pos_embed": sd.take("embeddings.position_embeddings",
                             (1, cfg.native_grid ** 2 + 1, d)).reshape(-1, d),
        "patch_embed": conv_patch(sd, "embeddings.patch_embeddings.projection.weight", cfg,
                                  "embeddings.patch_embeddings.projection.bias"),
        "norm": layer_norm(sd, "layernorm", d),
    }
    if cfg.num_registers:
        params["register_tokens"] = sd.take("embeddings.register_tokens",
                                            (1, cfg.num_registers, d)).reshape(-1, d)
    for i in range(cfg.depth):
        params[f"block{i}"] = _dino_block(sd, f"encoder.layer.{i}", cfg)
    sd.ignore(r"embeddings\.mask_token")   # masked-image pre-training only
    return params


# --------------------------------------------------------------------------------------------
# DINOv3 ViT
# --------------------------------------------------------------------------------------------

def dinov3_config(hf: dict, where: str) -> BackboneConfig:
    return BackboneConfig(
        family="dinov3", image_size=_size(hf.get("image_size", 224), "image_size", where),
        patch_size=_size(hf.get("patch_size", 16), "patch_size", where),
        width=int(hf.get("hidden_size", 384)), depth=int(hf.get("num_hidden_layers", 12)),
        heads=int(hf.get("num_attention_heads", 6)),
        mlp_dim=int(hf.get("intermediate_size", 1536)),
        act=_act(hf.get("hidden_act", "gelu"), where),
        gated_mlp=bool(hf.get("use_gated_mlp", False)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
        query_bias=bool(hf.get("query_bias", True)), key_bias=bool(hf.get("key_bias", False)),
        value_bias=bool(hf.get("value_bias", True)), proj_bias=bool(hf.get("proj_bias", True)),
        mlp_bias=bool(hf.get("mlp_bias", True)), layerscale=True,
        num_registers=int(hf.get("num_register_tokens", 0)),
        rope_theta=float(hf.get("rope_theta", 100.0)))


def dinov3_params(sd: SourceTensors, cfg: BackboneConfig) -> dict:
    d = cfg.width
    layer = "model.layer" if any(k.startswith("model.layer.") for k in sd.keys()) else "layer"
    params = {
        "cls_token": sd.take("embeddings.cls_token", (1, 1, d)).reshape(d),
        "patch_embed": conv_patch(sd, "embeddings.patch_embeddings.weight", cfg,
                                  "embeddings.patch_embeddings.bias"),
        "norm": layer_norm(sd, "norm", d),
    }
    if cfg.num_registers:
        params["register_tokens"] = sd.take("embeddings.register_tokens",
                                            (1, cfg.num_registers, d)).reshape(-1, d)
    else:
        sd.ignore(r"embeddings\.register_tokens")   # (1, 0, D) when the config has none
    for i in range(cfg.depth):
        params[f"block{i}"] = _dino_block(sd, f"{layer}.{i}", cfg)
    sd.ignore(r"embeddings\.mask_token")
    sd.ignore(r"rope_embeddings\.inv_freq")        # recomputed from rope_theta
    return params


MODEL_TYPES = {
    "clip": (clip_config, clip_params),
    "clip_vision_model": (clip_config, clip_params),
    "dinov2": (dinov2_config, dinov2_params),
    "dinov2_with_registers": (dinov2_config, dinov2_params),
    "dinov3_vit": (dinov3_config, dinov3_params),
}


def convert_hf(hf_config: dict, tensors: dict[str, np.ndarray], where: str):
    """(BackboneConfig, params) of an HF model folder's config + tensors."""
    model_type = hf_config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConversionError(f"{where}: model_type={model_type!r} not supported "
                              f"(supported: {sorted(MODEL_TYPES)})")
    to_config, to_params = MODEL_TYPES[model_type]
    cfg = to_config(hf_config, where)
    if model_type == "clip_vision_model" and cfg.embed_dim and \
            "visual_projection.weight" not in tensors:
        cfg = dataclasses.replace(cfg, embed_dim=0)   # CLIPVisionModel: no projection head
    if model_type.startswith("dinov2"):
        tensors = dinov2_rename_legacy(tensors)
    prefixes = {"dinov2": "dinov2.", "dinov2_with_registers": "dinov2_with_registers.",
                "dinov3_vit": "model."}
    prefix = prefixes.get(model_type)
    if prefix and tensors and all(k.startswith(prefix) for k in tensors) and \
            not any(k.startswith(prefix + "layer.") for k in tensors):
        tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    sd = SourceTensors(tensors, where)
    params = to_params(sd, cfg)
    sd.check_all_used()
    return cfg, params
