"""`--verify`: the torch reference (transformers) and the converted Flax model on the same input.

Reports max |jax - torch| / max |torch| for every block output, the pooled image output and (CLIP)
the text embedding.
"""

from __future__ import annotations

import pathlib

import numpy as np

from weights_conversion.tensors import read_weights_file
from zsad_jax.backbones.config import BackboneConfig


def _hf_vision_fields(cfg: BackboneConfig) -> dict:
    return dict(hidden_size=cfg.width, intermediate_size=cfg.mlp_dim,
                num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
                image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_act=cfg.act,
                layer_norm_eps=cfg.layer_norm_eps)


def hf_clip_vision_config(cfg: BackboneConfig):
    """A transformers CLIPVisionConfig with `cfg`'s vision architecture (and projection size)."""
    import transformers

    return transformers.CLIPVisionConfig(projection_dim=cfg.embed_dim, **_hf_vision_fields(cfg))


def hf_clip_config(cfg: BackboneConfig):
    """A transformers CLIPConfig (or CLIPVisionConfig without text) with `cfg`'s architecture."""
    import transformers

    if not cfg.has_text:
        return hf_clip_vision_config(cfg)
    text = dict(hidden_size=cfg.text_width, intermediate_size=cfg.text_mlp_dim,
                num_hidden_layers=cfg.text_depth, num_attention_heads=cfg.text_heads,
                vocab_size=cfg.vocab_size, max_position_embeddings=cfg.context_length,
                hidden_act=cfg.act, layer_norm_eps=cfg.layer_norm_eps,
                eos_token_id=cfg.eot_token_id, bos_token_id=cfg.sot_token_id, pad_token_id=0)
    return transformers.CLIPConfig(text_config=text, vision_config=_hf_vision_fields(cfg),
                                   projection_dim=cfg.embed_dim)


def torch_reference(src, cfg: BackboneConfig):
    """The transformers model of `src` (an HF folder, or an OpenAI state dict re-keyed)."""
    import torch
    import transformers

    src = pathlib.Path(src)
    if src.is_dir():
        model = transformers.AutoModel.from_pretrained(src, attn_implementation="eager",
                                                       dtype=torch.float32)
    else:
        from weights_conversion.openai_clip import openai_to_hf

        model = transformers.CLIPModel(hf_clip_config(cfg)).float()
        state = {k: torch.tensor(np.array(v))
                 for k, v in openai_to_hf(read_weights_file(src), cfg).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise RuntimeError(f"re-keyed OpenAI weights: missing {missing}, "
                               f"unexpected {unexpected}")
    return model.eval()


def _pooled(out):
    return out if hasattr(out, "shape") else out.pooler_output


def torch_outputs(model, cfg: BackboneConfig, images: np.ndarray, token_ids=None) -> dict:
    """{"layer{i}": (B, T, D), "pooled": ..., "text": ...} of the transformers model."""
    import torch

    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    interp = images.shape[1] != cfg.image_size or images.shape[2] != cfg.image_size
    out = {}
    with torch.no_grad():
        if cfg.family == "clip":
            vision = getattr(model, "vision_model", model)
            res = vision(pixel_values=pixels, output_hidden_states=True,
                         interpolate_pos_encoding=interp)
            pooled = res.pooler_output
            if cfg.embed_dim:
                pooled = model.visual_projection(pooled)
        else:
            res = model(pixel_values=pixels, output_hidden_states=True)
            pooled = res.pooler_output
        hidden = res.hidden_states
        hidden = hidden[1:] if len(hidden) == cfg.depth + 1 else hidden
        for i, h in enumerate(hidden, start=1):
            out[f"layer{i}"] = h.numpy()
        out["pooled"] = pooled.numpy()
        if token_ids is not None:
            out["text"] = _pooled(model.get_text_features(
                input_ids=torch.from_numpy(token_ids.astype(np.int64)))).numpy()
    return out


def jax_outputs(model, params, images: np.ndarray, token_ids=None) -> dict:
    import jax.numpy as jnp

    cfg = model.cfg
    feats = model.apply({"params": params}, jnp.asarray(images),
                        layers=tuple(range(1, cfg.depth + 1)), method="encode_image")
    out = {f"layer{i}": np.asarray(x) for i, x in enumerate(feats.layers, start=1)}
    out["pooled"] = np.asarray(feats.pooled)
    if token_ids is not None:
        out["text"] = np.asarray(model.apply({"params": params}, jnp.asarray(token_ids),
                                             method="encode_text"))
    return out


def random_inputs(cfg: BackboneConfig, image_size: int | None = None, batch: int = 2,
                  seed: int = 0):
    """Normal images (B, S, S, 3) and token ids (B, L) with SOT ... EOT (CLIP)."""
    rng = np.random.default_rng(seed)
    size = image_size or cfg.image_size
    images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    tokens = None
    if cfg.has_text:
        length = min(cfg.context_length, 16)
        tokens = np.zeros((batch, length), np.int32)
        for b in range(batch):
            n = 3 + 4 * b
            tokens[b, 0] = cfg.sot_token_id
            tokens[b, 1:n] = rng.integers(1, min(cfg.vocab_size - 2, cfg.sot_token_id), n - 1)
            tokens[b, n] = cfg.eot_token_id
    return images, tokens


def compare(ref: dict, got: dict) -> dict[str, float]:
    """{name: max |got - ref| / max |ref|}."""
    missing = sorted(set(ref) ^ set(got))
    if missing:
        raise ValueError(f"outputs differ in names: {missing}")
    out = {}
    for name, r in ref.items():
        g = got[name]
        if r.shape != g.shape:
            raise ValueError(f"{name}: shape {g.shape} != reference {r.shape}")
        out[name] = float(np.max(np.abs(g - r)) / max(float(np.max(np.abs(r))), 1e-12))
    return out


def verify(src, dst, image_size: int | None = None, pos_interpolation: str | None = None,
           tolerance: float = 1e-4, log=print) -> bool:
    """Runs both models; prints per-output errors; True if all are <= tolerance."""
    from zsad_jax import backbones

    model, params = backbones.load(dst, pos_interpolation=pos_interpolation)
    cfg = model.cfg
    images, tokens = random_inputs(cfg, image_size)
    ref = torch_outputs(torch_reference(src, cfg), cfg, images, tokens)
    got = jax_outputs(model, params, images, tokens)
    errors = compare(ref, got)
    ok = True
    for name, err in errors.items():
        flag = "ok" if err <= tolerance else "FAIL"
        ok &= err <= tolerance
        log(f"  {name:>8s}: max abs diff / max abs ref = {err:.2e}  {flag}")
    return ok
