"""Converter of the official VisualAD checkpoints + parity of the JAX head with a torch reference.

The torch reference below follows the release's module structure and parameter names (facts read
from GitHub 7HHHHH/VisualAD: `utils/spatial_cross_attention.py`, `utils/feature_transform.py`,
`utils/training_utils.py:save_checkpoint`), so its `state_dict()` has the checkpoint's key names
and shapes; it is written for this test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weights_conversion import visualad as conv
from zsad_jax.methods.visualad import weights as vw
from zsad_jax.methods.visualad.modules import VisualADHead

DIM, ANCHORS, POSITIONS, LAYERS = 16, 4, 1536, (1, 2)


class TorchSCA(nn.Module):
    def __init__(self, d, m, positions):
        super().__init__()
        self.anchor_queries = nn.Parameter(torch.randn(m, d))
        self.pos_encoding = nn.Parameter(torch.randn(1, positions, d))
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.q_norm = nn.LayerNorm(d)
        self.k_norm = nn.LayerNorm(d)
        self.gate = nn.Sequential(nn.Linear(d, m), nn.Sigmoid())
        self.out_proj = nn.Linear(d, d)
        self.res_scale = nn.Parameter(torch.tensor([0.7]))

    def forward(self, token, patches):
        n, d = patches.shape[1], patches.shape[2]
        q = self.q_norm(self.q_proj(self.anchor_queries))[None]
        k = self.k_norm(self.k_proj(patches + self.pos_encoding[:, :n]))
        v = self.v_proj(patches)
        attn = F.softmax(q @ k.transpose(1, 2) * d ** -0.5, dim=-1)
        agg = attn @ v
        gated = (agg * self.gate(token)[..., None]).sum(1)
        return token + self.res_scale * self.out_proj(gated)


class TorchSAF(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(0.1),
                                 nn.Linear(hidden, d), nn.Dropout(0.1))

    def forward(self, x):
        return self.mlp(x)


class TorchCrossAttn(nn.Module):
    def __init__(self, dim, layers=LAYERS):
        super().__init__()
        self.layer_attentions = nn.ModuleDict({f"layer_{i}": TorchSCA(dim, ANCHORS, POSITIONS)
                                               for i in layers})


def test_release_checkpoint_with_the_papers_layers_converts_in_any_order():
    """The release's ViT-L checkpoints hold features_list [6, 12, 18, 24]; its key names carry the
    layer numbers as strings ('layer_12' sorts before 'layer_6'), in any order in the dict."""
    torch.manual_seed(1)
    layers, dim = (6, 12, 18, 24), 8
    cross = TorchCrossAttn(dim, layers)
    transforms = {f"layer_{i}": TorchSAF(dim, dim) for i in layers}
    for order in ([24, 6, 18, 12], [6, 12, 18, 24], [12, 18, 24, 6]):
        state = {"anomaly_token": torch.randn(dim), "normal_token": torch.randn(dim),
                 "ln_post_weight": torch.ones(dim), "ln_post_bias": torch.zeros(dim),
                 "features_list": [6, 12, 18, 24], "image_size": 518, "epoch": 1,
                 "backbone": "ViT-L/14@336px", "transform_type": "mlp",
                 "layer_transforms": {f"layer_{i}": transforms[f"layer_{i}"].state_dict()
                                      for i in order},
                 "cross_attn": dict(sorted(cross.state_dict().items(),
                                           key=lambda kv: order.index(int(kv[0].split(".")[1][6:])))),
                 "cross_attn_config": {"num_anchors": ANCHORS, "dropout": 0.1, "res_scale_init": 0.01}}
        params, meta = conv.convert_state(state)
        assert meta["layers"] == [6, 12, 18, 24]
        assert sorted(k for k in params if k.startswith(("sca_", "saf_"))) == sorted(
            [f"sca_{i}" for i in layers] + [f"saf_{i}" for i in layers])
        np.testing.assert_array_equal(params["saf_12"]["fc2"]["kernel"],
                                      transforms["layer_12"].mlp[3].weight.detach().numpy().T)


def _reference(seed=0, dim=DIM):
    """(official-format checkpoint dict, torch SCA modules, torch SAF modules), random."""
    torch.manual_seed(seed)
    cross = TorchCrossAttn(dim).eval()
    transforms = {f"layer_{i}": TorchSAF(dim, dim).eval() for i in LAYERS}
    for module in [cross, *transforms.values()]:
        for p in module.parameters():       # non-trivial LayerNorm affine params too
            p.data.add_(0.1 * torch.randn_like(p))
    state = {
        "anomaly_token": torch.randn(dim), "normal_token": torch.randn(dim),
        "ln_post_weight": torch.ones(dim), "ln_post_bias": torch.zeros(dim),
        "features_list": list(LAYERS), "image_size": 64, "epoch": 1, "backbone": "ViT-L/14@336px",
        "layer_transforms": {k: v.state_dict() for k, v in transforms.items()}, "transform_type": "mlp",
        "cross_attn": cross.state_dict(),
        "cross_attn_config": {"num_anchors": ANCHORS, "dropout": 0.1, "res_scale_init": 0.01},
    }
    return state, cross, transforms


def _torch_scores(t_a, t_n, cross, transforms, patches):
    """Release scoring: tokens (B, D), patches L x (B, N, D) -> (L, B, N) numpy."""
    out = []
    with torch.no_grad():
        for layer, p in zip(LAYERS, patches, strict=True):
            sca = cross.layer_attentions[f"layer_{layer}"]
            ea = F.normalize(sca(t_a, p), dim=1, eps=1e-8)
            en = F.normalize(sca(t_n, p), dim=1, eps=1e-8)
            q = F.normalize(transforms[f"layer_{layer}"](p), dim=2, eps=1e-8)
            out.append((F.cosine_similarity(q, ea[:, None], dim=2)
                        - F.cosine_similarity(q, en[:, None], dim=2)).numpy())
    return np.stack(out)


def test_converted_head_matches_torch_reference(tmp_path):
    state, cross, transforms = _reference()
    src = tmp_path / "CLIP.pth"
    torch.save(state, src)
    assert conv.main(["--src", str(src), "--dst", str(tmp_path / "head")]) == 0
    params, meta = vw.load_head(tmp_path / "head")
    assert meta["layers"] == list(LAYERS) and meta["num_anchors"] == ANCHORS
    assert meta["max_patches"] == POSITIONS and meta["saf_hidden"] == DIM and meta["dim"] == DIM
    assert "anomaly_pos" not in params                    # not in the release's checkpoints
    head = VisualADHead(dim=DIM, layers=LAYERS, num_anchors=ANCHORS, max_patches=POSITIONS)
    rng = np.random.default_rng(1)
    patches = [rng.normal(size=(3, 25, DIM)).astype(np.float32) for _ in LAYERS]
    init = jax.jit(head.init)(jax.random.key(0), jnp.zeros((1, DIM)), jnp.zeros((1, DIM)),
                              [jnp.zeros((1, 25, DIM))] * 2)["params"]
    merged = vw.merge_head(jax.tree_util.tree_map(np.asarray, init), params, "test")
    b = 3
    t_a = jnp.broadcast_to(jnp.asarray(params["anomaly_token"]), (b, DIM))
    t_n = jnp.broadcast_to(jnp.asarray(params["normal_token"]), (b, DIM))
    scores, _, _ = jax.jit(head.apply)({"params": merged}, t_a, t_n, [jnp.asarray(p) for p in patches])
    expected = _torch_scores(state["anomaly_token"][None].expand(b, -1),
                             state["normal_token"][None].expand(b, -1), cross, transforms,
                             [torch.from_numpy(p) for p in patches])
    assert np.abs(np.asarray(scores) - expected).max() < 1e-5


def test_converter_errors_name_the_key(tmp_path):
    state, _, _ = _reference()
    bad = dict(state, extra_thing=torch.zeros(1))
    with pytest.raises(conv.ConversionError, match="extra_thing"):
        conv.convert_state(bad)
    bad = dict(state, cross_attn={**state["cross_attn"],
                                  "layer_attentions.layer_1.mystery.weight": torch.zeros(1)})
    with pytest.raises(conv.ConversionError, match="mystery"):
        conv.convert_state(bad)
    sub = dict(state["layer_transforms"]["layer_2"])
    sub.pop("mlp.3.bias")
    bad = dict(state, layer_transforms={**state["layer_transforms"], "layer_2": sub})
    with pytest.raises(conv.ConversionError, match=r"layer_2.*mlp\.3\.bias"):
        conv.convert_state(bad)
    pointer = tmp_path / "CLIP.pth"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 126119090\n")
    with pytest.raises(conv.ConversionError, match="LFS"):
        conv.convert(pointer, tmp_path / "out")
    assert conv.main(["--src", str(tmp_path / "missing.pth"), "--dst", str(tmp_path / "o")]) == 2


def test_merge_head_rejects_mismatch(tmp_path):
    init = {"anomaly_token": np.zeros(4), "sca_1": {"res_scale": np.zeros(1)}}
    with pytest.raises(ValueError, match="sca_1/res_scale"):
        vw.merge_head(init, {"sca_1": {"res_scale": np.zeros(2)}}, "src")
    with pytest.raises(ValueError, match="sca_9"):
        vw.merge_head(init, {"sca_9": {"res_scale": np.zeros(1)}}, "src")
    with pytest.raises(FileNotFoundError, match="weights_conversion.visualad"):
        vw.load_head(tmp_path)
