"""Real-size parity: CLIP ViT-L/14@336 (24 blocks, width 1024) at 518x518, batch 1, random weights.

The tiny parity tests cover every code path; this one checks that nothing drifts at the size the
methods use (a 24x24 position grid resized bicubically to 37x37, 1370 tokens, 24 blocks).
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import transformers

from weights_conversion import hf
from weights_conversion.verify import compare, hf_clip_vision_config
from zsad_jax import backbones


@pytest.mark.slow
def test_clip_vit_l14_336_at_518_equals_transformers():
    arch = backbones.ARCHS["clip-vit-l14-336"]
    torch.manual_seed(0)
    config = hf_clip_vision_config(arch)
    torch_model = transformers.CLIPVisionModelWithProjection(config).eval()
    tensors = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    cfg, params = hf.convert_hf(config.to_dict(), tensors, "ViT-L/14@336")
    del tensors
    gc.collect()
    for field in ("image_size", "patch_size", "width", "depth", "heads", "mlp_dim", "embed_dim"):
        assert getattr(cfg, field) == getattr(arch, field), field
    model = backbones.build(cfg)
    backbones.check_params(model, params)

    images = np.random.default_rng(0).standard_normal((1, 518, 518, 3)).astype(np.float32)
    with torch.no_grad():
        res = torch_model.vision_model(pixel_values=torch.from_numpy(
            images.transpose(0, 3, 1, 2).copy()), output_hidden_states=True,
            interpolate_pos_encoding=True)
        hidden = res.hidden_states[1:] if len(res.hidden_states) == 25 else res.hidden_states
        ref = {f"layer{i}": hidden[i - 1].numpy() for i in (6, 12, 18, 24)}
        ref["pooled"] = torch_model.visual_projection(res.pooler_output).numpy()
    del torch_model, res, hidden
    gc.collect()
    out = model.apply({"params": params}, images, layers=(6, 12, 18, 24), method="encode_image")
    assert out.grid == (37, 37) and out.layers[0].shape == (1, 1370, 1024)
    got = {f"layer{i}": np.asarray(x) for i, x in zip((6, 12, 18, 24), out.layers, strict=True)}
    got["pooled"] = np.asarray(out.pooled)
    errors = compare(ref, got)
    assert max(errors.values()) <= 1e-4, errors
    assert len({float(np.abs(g).sum()) for g in got.values()}) == len(got)   # distinct taps
