"""VisualAD method: sequence layout, end-to-end parity with a torch reference, gradients, shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numerics import assert_gradient_reaches, assert_trees_close
from scipy.ndimage import gaussian_filter
from test_visualad_conversion import _reference as official_head_reference
from test_visualad_conversion import _torch_scores as torch_scores
from transformers import CLIPVisionConfig, CLIPVisionModel

from weights_conversion import visualad as conv
from zsad_jax import backbones, config_lib, methods
from zsad_jax.methods.visualad import weights as visualad_weights
from zsad_jax.ops import smooth_maps as gaussian_smooth
from zsad_jax.ops import topk_mean
from zsad_jax.tree import path_str


def _demo(**overrides):
    return config_lib.load_config("visualad.py:demo", overrides)


@pytest.fixture(scope="module")
def tiny_clip():
    model = backbones.build("clip-tiny", pos_interpolation="bilinear")
    init = jax.jit(lambda r: model.init(r, jnp.zeros((1, 64, 64, 3)), method="encode_image"))
    return model, init(jax.random.key(0))["params"]


@pytest.fixture(scope="module")
def demo():
    method = methods.build(_demo())
    return method, method.init(jax.random.key(0))


def _embed(model, params, images, prefix=None, prefix_pos=None):
    return model.apply({"params": params}, images, prefix, prefix_pos,
                       method=lambda m, *a: m.visual.embed(*a))


def test_sequence_layout_and_resized_positions(tiny_clip):
    """[t_a, t_n, t_c, patches]: inserted tokens first, class token third, patch positions resized
    bilinearly (torch F.interpolate, align_corners=False) from the 8x8 table to the 6x6 grid."""
    model, params = tiny_clip
    v = jax.tree_util.tree_map(lambda a: torch.from_numpy(np.array(a)), params["visual"])
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 48, 48, 3)).astype(np.float32)
    prefix = rng.normal(size=(1, 2, 64)).astype(np.float32)
    prefix_pos = rng.normal(size=(2, 64)).astype(np.float32)
    x, grid, num_prefix = _embed(model, params, jnp.asarray(images), jnp.asarray(prefix),
                                 jnp.asarray(prefix_pos))
    assert grid == (6, 6) and num_prefix == 3 and x.shape == (2, 3 + 36, 64)

    patches = F.conv2d(torch.from_numpy(images).permute(0, 3, 1, 2),
                       v["patch_embed"]["kernel"].permute(3, 2, 0, 1), stride=8)
    patches = patches.flatten(2).transpose(1, 2)                                   # (B, 36, D)
    table = v["pos_embed"][1:].reshape(1, 8, 8, 64).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(table, (6, 6), mode="bilinear", align_corners=False)
    patch_pos = patch_pos.reshape(64, 36).T
    prefix_t = torch.from_numpy(prefix[0] + prefix_pos)
    cls = v["class_embed"] + v["pos_embed"][0]
    seq = torch.cat([prefix_t[None].expand(2, -1, -1), cls[None, None].expand(2, 1, -1),
                     patches + patch_pos], dim=1)
    expected = F.layer_norm(seq, (64,), v["ln_pre"]["scale"], v["ln_pre"]["bias"], 1e-5)
    assert np.abs(np.asarray(x) - expected.numpy()).max() < 1e-5


def test_no_inserted_tokens_reproduces_plain_backbone(tiny_clip):
    model, params = tiny_clip
    images = jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
    encode = jax.jit(lambda p, x, *prefix: model.apply({"params": p}, x, (1, 2), *prefix,
                                                       method="encode_image"))
    plain = encode(params, images)
    empty = encode(params, images, jnp.zeros((1, 0, 64)), jnp.zeros((0, 64)))
    assert empty.num_prefix == plain.num_prefix == 1
    for a, b in zip(plain.layers, empty.layers, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(plain.pooled), np.asarray(empty.pooled))


def _flax_visual_from_hf(sd, depth):
    t = {k: v.detach().numpy() for k, v in sd.items()}
    ln = lambda n: {"scale": t[f"{n}.weight"], "bias": t[f"{n}.bias"]}           # noqa: E731
    dense = lambda n: {"kernel": t[f"{n}.weight"].T, "bias": t[f"{n}.bias"]}     # noqa: E731
    out = {"patch_embed": {"kernel": t["embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0)},
           "class_embed": t["embeddings.class_embedding"],
           "pos_embed": t["embeddings.position_embedding.weight"],
           "ln_pre": ln("pre_layrnorm"), "ln_post": ln("post_layernorm")}
    for i in range(depth):
        p = f"encoder.layers.{i}"
        out[f"block{i}"] = {
            "ln1": ln(f"{p}.layer_norm1"), "ln2": ln(f"{p}.layer_norm2"),
            "attn": {n: dense(f"{p}.self_attn.{n}_proj") for n in ("q", "k", "v", "out")},
            "mlp": {"fc1": dense(f"{p}.mlp.fc1"), "fc2": dense(f"{p}.mlp.fc2")}}
    return out


def test_end_to_end_parity_with_torch_reference(tmp_path):
    """Maps and image scores equal a torch reference: transformers' CLIP encoder layers with the
    release's token insertion (bilinear position resize), ln_post without projection, the release's
    SCA/SAF (converted from an official-format checkpoint), bilinear upsampling, sum over layers,
    scipy Gaussian smoothing and the top-1% mean."""
    state, cross, transforms = official_head_reference(seed=3, dim=64)
    torch.save(state, tmp_path / "CLIP.pth")
    conv.convert(tmp_path / "CLIP.pth", tmp_path / "head")
    size = 80                                                      # 10x10 grid, table is 8x8
    config = _demo(**{"model.head_weights": str(tmp_path / "head"), "model.score_sigma": 2.0,
                      "backbones.vit.image_size": size})
    method = methods.build(config)
    params = method.init(jax.random.key(0))
    torch.manual_seed(0)
    hf = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        image_size=64, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)).eval()
    for p in hf.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    params["backbones"]["vit"]["visual"].update(
        jax.tree_util.tree_map(jnp.asarray, _flax_visual_from_hf(hf.state_dict(), 2)))
    head = {k: np.asarray(v) for k, v in params["head"].items() if k.endswith(("_token", "_pos"))}
    images = np.random.default_rng(5).normal(size=(2, size, size, 3)).astype(np.float32)
    maps, scores = jax.jit(method.anomaly_outputs)(params, {"images": {"vit": jnp.asarray(images)}})

    vm = hf
    with torch.no_grad():
        x = vm.embeddings.patch_embedding(torch.from_numpy(images).permute(0, 3, 1, 2))
        x = x.flatten(2).transpose(1, 2)
        pos = vm.embeddings.position_embedding.weight
        patch_pos = F.interpolate(pos[1:].reshape(1, 8, 8, 64).permute(0, 3, 1, 2), (10, 10),
                                  mode="bilinear", align_corners=False).reshape(64, 100).T
        tok = torch.from_numpy(np.stack([head["anomaly_token"] + head["anomaly_pos"],
                                         head["normal_token"] + head["normal_pos"]]))
        cls = vm.embeddings.class_embedding + pos[0]
        x = torch.cat([tok[None].expand(2, -1, -1), cls[None, None].expand(2, 1, -1), x + patch_pos], 1)
        x = vm.pre_layrnorm(x)
        taps = []
        for layer in vm.encoder.layers:
            x = layer(x, None)
            x = x[0] if isinstance(x, tuple) else x
            taps.append(vm.post_layernorm(x))
        scores_t = torch_scores(taps[-1][:, 0], taps[-1][:, 1], cross, transforms,
                                [t[:, 3:] for t in taps])
        layer_maps = F.interpolate(torch.from_numpy(scores_t).reshape(2 * 2, 1, 10, 10), (size, size),
                                   mode="bilinear", align_corners=False).reshape(2, 2, size, size)
        fused = layer_maps.sum(0).numpy()
    assert np.abs(np.asarray(maps) - fused).max() < 1e-4
    smoothed = np.stack([gaussian_filter(m, 2.0) for m in fused])
    k = int(np.ceil(size * size * 0.01))
    expected_scores = np.sort(smoothed.reshape(2, -1), axis=1)[:, -k:].mean(1)
    assert np.abs(np.asarray(scores) - expected_scores).max() < 1e-4


def test_gradients_reach_tokens_sca_saf_and_nothing_frozen_is_trainable(demo):
    method, params = demo
    rng = np.random.default_rng(0)
    batch = {"images": {"vit": jnp.asarray(rng.normal(size=(2, 64, 64, 3)), jnp.float32)},
             "masks": jnp.asarray(rng.random((2, 64, 64)) > 0.8, jnp.float32),
             "labels": jnp.asarray([0, 1])}
    # SCA's residual scale starts at 0.01 (release), which makes every SCA gradient 100x smaller
    # than the tokens'; at 1 the check below compares like with like.
    params = {**params, "head": {k: {**v, "res_scale": jnp.ones_like(v["res_scale"])}
                                 if k.startswith("sca_") else v for k, v in params["head"].items()}}
    grads = jax.jit(jax.grad(lambda p: method.loss(p, batch, jax.random.key(1))[0]))(params)
    mask = method.trainable_mask(params)
    for path, _ in jax.tree_util.tree_leaves_with_path(grads):
        name = path_str(path)
        trainable = jax.tree_util.tree_reduce(lambda a, b: a, _at(mask, path))
        dead = name.endswith("/k_norm/bias")     # softmax-invariant: exactly zero gradient
        frozen_pos = name in ("head/anomaly_pos", "head/normal_pos")    # the release's reading
        assert trainable == (not name.startswith("backbones/") and not dead and not frozen_pos), name
    live = jax.tree_util.tree_map_with_path(
        lambda p, g: None if path_str(p).endswith("k_norm/bias") else g, grads["head"])
    # (the position embeddings are frozen by default but differentiable: they get a gradient too)
    assert_gradient_reaches({"head": live}, ["head/"])
    # config.train.remat recomputes the frozen blocks in the backward pass: same gradients.
    remat = methods.build(_demo(**{"train.remat": "full"}))
    grads_remat = jax.jit(jax.grad(lambda p: remat.loss(p, batch, jax.random.key(1))[0]))(params)
    assert_trees_close(grads["head"], grads_remat["head"], rtol=1e-5, what="remat")
    # The release's choices: frozen token positions, trained final LayerNorm (a head copy of it).
    release = methods.build(_demo(**{"model.learn_token_pos": False, "model.train_final_norm": True}))
    release_params = release.init(jax.random.key(0))
    flags = {path_str(p): v
             for p, v in jax.tree_util.tree_leaves_with_path(release.trainable_mask(release_params))}
    assert not flags["head/anomaly_pos"] and not flags["head/normal_pos"] and flags["head/anomaly_token"]
    assert flags["head/final_norm/scale"] and not flags["backbones/vit/visual/ln_post/scale"]
    np.testing.assert_array_equal(release_params["head"]["final_norm"]["scale"],
                                  release_params["backbones"]["vit"]["visual"]["ln_post"]["scale"])
    np.testing.assert_array_equal(params["head"]["anomaly_pos"],
                                  params["backbones"]["vit"]["visual"]["pos_embed"][0])
    # The paper's reading: learnable token positions.
    paper = methods.build(_demo(**{"model.learn_token_pos": True}))
    flags = {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(paper.trainable_mask(params))}
    assert flags["head/anomaly_pos"] and flags["head/normal_pos"]


def _at(tree, path):
    for key in path:
        tree = tree[getattr(key, "key", getattr(key, "idx", None))]
    return tree


def test_variants_dinov2_per_layer_and_ablations():
    config = _demo(**{"backbones.vit.arch": "dinov2-tiny", "model.token_source": "per_layer",
                      "model.use_saf": False})
    method = methods.build(config)
    params = method.init(jax.random.key(0))
    assert not any(k.startswith("saf_") for k in params["head"]) and "sca_2" in params["head"]
    np.testing.assert_array_equal(params["head"]["normal_pos"],
                                  params["backbones"]["vit"]["pos_embed"][0])
    x = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
    maps, score = jax.jit(method.anomaly_outputs)(params, {"images": {"vit": x}})
    assert maps.shape == (1, 64, 64) and score.shape == (1,) and bool(jnp.isfinite(maps).all())
    assert method.views["vit"].mean == backbones.normalization("dinov2-tiny")[0]
    for variant, sca, saf in (("no_sca", False, True), ("no_saf", True, False), ("no_sca_saf", False, False)):
        c = config_lib.load_config(f"visualad.py:{variant}", {"backbones.vit.weights": ""})
        assert (c.model.use_sca, c.model.use_saf) == (sca, saf)
    with pytest.raises(ValueError, match="token_source"):
        methods.build(_demo(**{"model.token_source": "middle"}))
    with pytest.raises(ValueError, match="layers"):
        methods.build(_demo(**{"backbones.vit.layers": (1, 3)}))
    with pytest.raises(ValueError, match="exactly one backbone"):
        c = _demo()
        c.backbones.other = c.backbones.vit
        methods.build(c)


def test_image_score_is_top1_percent_of_smoothed_map():
    maps = jnp.asarray(np.random.default_rng(0).normal(size=(2, 30, 30)), jnp.float32)
    smoothed = np.stack([gaussian_filter(np.asarray(m), 4.0) for m in maps])
    np.testing.assert_allclose(np.asarray(gaussian_smooth(maps, 4.0)), smoothed, atol=1e-6)
    k = 9                                                       # ceil(900 * 0.01)
    np.testing.assert_allclose(np.asarray(topk_mean(gaussian_smooth(maps, 4.0))),
                               np.sort(smoothed.reshape(2, -1))[:, -k:].mean(1), atol=1e-6)


def test_real_size_shapes():
    """CLIP ViT-L/14@336 at 518 (37x37) and DINOv2 ViT-L/14 at 518, traced with eval_shape."""
    for variant in ("visa_to_mvtec", "dinov2"):
        config = config_lib.load_config(f"visualad.py:{variant}", {"backbones.vit.weights": ""})
        method = methods.build(config)
        shapes = jax.eval_shape(method.init, jax.random.key(0))
        head = shapes["head"]
        assert head["anomaly_token"].shape == (1024,)
        assert head["sca_6"]["pos_encoding"].shape == (1536, 1024)
        assert head["sca_24"]["anchor_queries"].shape == (4, 1024)
        assert head["saf_18"]["fc1"]["kernel"].shape == (1024, 1024)
        batch = {"images": {"vit": jax.ShapeDtypeStruct((8, 518, 518, 3), jnp.float32)},
                 "masks": jax.ShapeDtypeStruct((8, 518, 518), jnp.float32),
                 "labels": jax.ShapeDtypeStruct((8,), jnp.int32)}
        loss, terms = jax.eval_shape(method.loss, shapes, batch, jax.random.key(0))
        assert loss.shape == () and set(terms) >= {"cls_bce", "seg_focal", "seg_dice", "ctr"}
        maps, scores = jax.eval_shape(method.anomaly_outputs, shapes, batch)
        assert maps.shape == (8, 518, 518) and scores.shape == (8,)
        assert method.mask_size == 518


def test_converted_head_is_checked_against_config(tmp_path, demo):
    state, _, _ = official_head_reference(dim=64)
    params, meta = conv.convert_state(state)
    visualad_weights.save_head(tmp_path, params, dict(meta, num_anchors=8))
    method = methods.build(_demo(**{"model.head_weights": str(tmp_path)}))
    head = jax.tree_util.tree_map(np.asarray, demo[1]["head"])
    with pytest.raises(ValueError, match="num_anchors=8"):
        method._load_head(head)
    visualad_weights.save_head(tmp_path, params, meta)
    loaded = method._load_head(head)
    np.testing.assert_array_equal(loaded["anomaly_token"], state["anomaly_token"].numpy())
    np.testing.assert_array_equal(loaded["anomaly_pos"], head["anomaly_pos"])   # kept: class pos
    assert any(str(tmp_path) == p for p, _ in method.required_files())
