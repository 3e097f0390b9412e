"""AnomalyCLIP (zsad_jax/methods/anomalyclip/, configs/anomalyclip.py) against torch re-computations
of the official release's facts (GitHub zqhang/AnomalyCLIP @45ed4dd, docs/anomalyclip.md): the
towers are transformers' CLIP layers (weights converted by `weights_conversion.hf`), the DPAM
stream, deep prompts, maps, scores and loss are written out below from the facts.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from numerics import assert_gradient_reaches, relative_error
from test_weights_conversion import _perturb, state_numpy

from weights_conversion import hf
from zsad_jax import backbones, config_lib, methods
from zsad_jax.methods.anomalyclip import losses as aloss
from zsad_jax.methods.anomalyclip import modules

SIZE = 80                       # 10x10 grid: the 8x8 position table of clip-tiny is resized
TOL = 1e-5                      # relative, fp32 torch vs fp32 JAX


def demo_config(**overrides):
    return config_lib.load_config("anomalyclip.py:demo", overrides)


def tiny_hf_clip(text_layers=2, seed=0):
    """A perturbed transformers CLIPModel of clip-tiny's shapes (OpenAI conventions)."""
    torch.manual_seed(seed)
    text = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=text_layers,
                num_attention_heads=4, vocab_size=640, max_position_embeddings=77,
                eos_token_id=639, bos_token_id=638, pad_token_id=0, hidden_act="quick_gelu")
    vision = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  image_size=64, patch_size=8, hidden_act="quick_gelu")
    return _perturb(transformers.CLIPModel(transformers.CLIPConfig(
        text_config=text, vision_config=vision, projection_dim=32)), seed)


# ---- torch re-computations of the release's facts -------------------------------------------
def t_attention(layer, x, mask=None, value_value=False):
    """softmax(q k^T / sqrt(hd) + mask) v through the layer's projections; V-V: q = k = v."""
    a = layer.self_attn
    b, n, d = x.shape
    hd = d // a.num_heads
    q, k, v = (p(x).reshape(b, n, a.num_heads, hd).transpose(1, 2)
               for p in (a.q_proj, a.k_proj, a.v_proj))
    if value_value:
        q = k = v
    scores = q @ k.transpose(-1, -2) * hd ** -0.5
    if mask is not None:
        scores = scores + mask
    return a.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d))


def t_text(model, ids, ctx, deep, fp16=True):
    """Text features [t_n, t_a] (2, E), normalized: contexts replace positions 1..n, deep[i]
    replaces positions 1..t before block i + 2 (rounded to fp16), causal blocks, ln_final, EOT."""
    tm = model.text_model
    x = tm.embeddings.token_embedding(ids)
    n = ctx.shape[1]
    x = torch.cat([x[:, :1], ctx, x[:, 1 + n:]], 1) + tm.embeddings.position_embedding.weight
    mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)
    t = deep.shape[1] if len(deep) else 0
    for i, layer in enumerate(tm.encoder.layers, start=1):
        if 2 <= i <= len(deep) + 1:
            p = deep[i - 2].expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], p.half().float() if fp16 else p, x[:, 1 + t:]], 1)
        x = x + t_attention(layer, layer.layer_norm1(x), mask)
        x = x + layer.mlp(layer.layer_norm2(x))
    x = tm.final_layer_norm(x)
    eot = (ids == 639).int().argmax(-1)
    out = model.text_projection(x[torch.arange(x.shape[0]), eot])
    return out / out.norm(dim=-1, keepdim=True)


def t_image(model, images, taps, dpam_start):
    """DPAM: (projected taps of the V-V stream (B, T, P+1, E), global feature (B, E))."""
    vm = model.vision_model
    x = vm.embeddings.patch_embedding(images.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
    pos = vm.embeddings.position_embedding.weight
    side, new = int(round((pos.shape[0] - 1) ** 0.5)), int(round(x.shape[1] ** 0.5))
    grid = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, (new, new), mode="bilinear", align_corners=False)
    pos = torch.cat([pos[:1], grid.flatten(2).transpose(1, 2)[0]])
    cls = vm.embeddings.class_embedding.expand(x.shape[0], 1, -1)
    x = vm.pre_layrnorm(torch.cat([cls, x], 1) + pos)
    vv, out = None, []
    for i, layer in enumerate(vm.encoder.layers, start=1):
        h = layer.layer_norm1(x)                              # ln_1 of the ORIGINAL stream
        if i >= dpam_start:
            vv = (x if vv is None else vv) + t_attention(layer, h, value_value=True)   # no MLP
        x = x + t_attention(layer, h)
        x = x + layer.mlp(layer.layer_norm2(x))
        if i in taps:
            out.append(vv if vv is not None else x)
    tokens = torch.stack([model.visual_projection(vm.post_layernorm(t)) for t in out], 1)
    return tokens, model.visual_projection(x[:, 0])           # global: no post_layernorm


def t_maps_and_scores(tokens, glob, text, size, temperature=0.07):
    """Per tap softmax(cos / T) of the patches, bilinear upsampling of the probabilities,
    (p_a + 1 - p_n) / 2, SUM over taps; image score softmax(cos(g, t) / T)[anomalous] per image."""
    maps = 0
    for i in range(tokens.shape[1]):
        tok = tokens[:, i]
        tok = tok / tok.norm(dim=-1, keepdim=True)
        probs = (tok @ text.T / temperature).softmax(-1)
        b, p, _ = probs.shape
        side = int(round(p ** 0.5))
        up = F.interpolate(probs.reshape(b, side, side, 2).permute(0, 3, 1, 2), (size, size),
                           mode="bilinear", align_corners=False)
        maps = maps + (up[:, 1] + 1 - up[:, 0]) / 2
    g = glob / glob.norm(dim=-1, keepdim=True)
    return maps, (g @ text.T / temperature).softmax(-1)[:, 1]


def t_focal(probs, gt, smooth=1e-5):
    """Focal on the two-class probabilities (B, 2, H, W): one-hot clamped to [smooth, 1-smooth],
    pt = <onehot, p> + smooth, mean of -(1 - pt)^2 log pt."""
    p = probs.permute(0, 2, 3, 1).reshape(-1, 2)
    onehot = F.one_hot(gt.reshape(-1).long(), 2).float().clamp(smooth, 1 - smooth)
    pt = (onehot * p).sum(1) + smooth
    return (-(1 - pt) ** 2 * pt.log()).mean()


def t_dice(p, g):
    b = p.shape[0]
    p, g = p.reshape(b, -1), g.reshape(b, -1)
    return 1 - ((2 * (p * g).sum(1) + 1) / (p.sum(1) + g.sum(1) + 1)).sum() / b


# ---- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def port():
    """Demo method at 80x80 with DPAM from block 1 (both clip-tiny blocks have V-V attention),
    its params with the towers replaced by a converted transformers CLIPModel, and that model."""
    model = tiny_hf_clip()
    _, tower = hf.convert_hf(model.config.to_dict(), state_numpy(model), "tiny")
    method = methods.build(demo_config(**{"backbones.clip.image_size": SIZE, "model.dpam_start": 1}))
    params = method.init(jax.random.key(0))
    params["backbones"]["clip"] = jax.tree_util.tree_map(jnp.asarray, tower)
    rng = np.random.default_rng(0)
    params["head"] = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32)     # N(0, 1): not
                      for k, v in params["head"].items()}                        # fp16 values
    return method, params, model


def test_text_features_equal_torch_with_fp16_deep_prompts(port):
    method, params, model = port
    ids, _ = method.prompt_tokens()
    head = {k: torch.from_numpy(np.array(v)) for k, v in params["head"].items()}
    ctx = torch.stack([head["ctx_normal"], head["ctx_anomalous"]])
    with torch.no_grad():
        want = t_text(model, torch.from_numpy(ids).long(), ctx, head["deep_prompts"]).numpy()
        unrounded = t_text(model, torch.from_numpy(ids).long(), ctx, head["deep_prompts"],
                           fp16=False).numpy()
    got = np.asarray(jax.jit(method.text_features)(params))
    tol = 2e-6                                  # torch and JAX agree to ~5e-7 here
    assert relative_error(want, got) < tol
    plain = methods.build(demo_config(**{"backbones.clip.image_size": SIZE, "model.dpam_start": 1,
                                         "model.deep_prompt_fp16": False}))
    got_plain = np.asarray(jax.jit(plain.text_features)(params))
    assert relative_error(unrounded, got_plain) < tol
    assert relative_error(got_plain, got) > 5e-6        # the rounding changes them (~1.5e-5 here)


def test_deep_prompts_replace_positions_before_blocks_2_to_n_plus_1():
    """Backbone path (`encode_text_embeddings(deep_prompts=...)`) on a 4-block text tower with 2
    deep prompts: blocks 2 and 3 get them (whatever block 1 / 2 wrote there), block 4 does not;
    per-sequence prompts (N, B, P, D) too."""
    model = tiny_hf_clip(text_layers=4, seed=1)
    cfg, params = hf.convert_hf(model.config.to_dict(), state_numpy(model), "tiny")
    clip = backbones.build(cfg)
    rng = np.random.default_rng(1)
    ids = np.zeros((2, 77), np.int64)
    ids[:, :8] = [[638, 5, 6, 7, 8, 9, 639, 0], [638, 9, 8, 7, 6, 639, 0, 0]]
    emb = np.asarray(clip.apply({"params": params}, jnp.asarray(ids), method="embed_tokens"))
    deep = rng.normal(size=(2, 2, 3, 64)).astype(np.float32)             # (N, B, P, D)
    eot = np.argmax(ids == 639, axis=-1)
    got = clip.apply({"params": params}, jnp.asarray(emb), eot, deep_prompts=jnp.asarray(deep),
                     method="encode_text_embeddings")
    tm = model.text_model
    with torch.no_grad():
        x = torch.from_numpy(emb.copy()) + tm.embeddings.position_embedding.weight
        mask = torch.full((77, 77), float("-inf")).triu(1)
        for i, layer in enumerate(tm.encoder.layers, start=1):
            if i in (2, 3):
                x = torch.cat([x[:, :1], torch.from_numpy(deep[i - 2]), x[:, 4:]], 1)
            x = x + t_attention(layer, layer.layer_norm1(x), mask)
            x = x + layer.mlp(layer.layer_norm2(x))
        x = tm.final_layer_norm(x)
        want = model.text_projection(x[torch.arange(2), torch.from_numpy(eot)]).numpy()
    assert relative_error(want, got) < TOL
    shared = clip.apply({"params": params}, jnp.asarray(emb), eot, deep_prompts=jnp.asarray(deep[:, 0]),
                        method="encode_text_embeddings")
    assert relative_error(got[0], shared[0]) < 1e-6 and relative_error(got[1], shared[1]) > 1e-3
    with pytest.raises(ValueError, match="at most depth - 1"):
        clip.apply({"params": params}, jnp.asarray(emb), eot, deep_prompts=jnp.zeros((4, 3, 64)),
                   method="encode_text_embeddings")


def test_deep_prompts_enter_rounded_to_fp16_forward_and_backward():
    """Forward: fp16-representable values. Backward: each prompt's gradient is rounded to fp16,
    then the two are summed (torch's autograd through `.expand(...).half()`), not fp16(sum)."""
    rng = np.random.default_rng(0)
    deep = jnp.asarray(rng.normal(size=(3, 4, 8)), jnp.float32)
    out = modules.deep_prompt_inputs(deep, 2, fp16=True)
    assert out.shape == (3, 2, 4, 8) and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), np.asarray(deep, np.float16).astype(np.float32)[:, None]
                                  .repeat(2, 1))
    assert not np.array_equal(np.asarray(out[:, 0]), np.asarray(deep))
    w = jnp.asarray(rng.normal(size=(3, 2, 4, 8)) * (1 + 1e-3 * rng.normal(size=(3, 2, 4, 8))),
                    jnp.float32)
    grad = jax.grad(lambda d: jnp.sum(modules.deep_prompt_inputs(d, 2, True) * w))(deep)
    want = np.asarray(w, np.float16).astype(np.float32).sum(1)
    np.testing.assert_array_equal(np.asarray(grad), want)
    assert not np.array_equal(want, np.asarray(w.sum(1), np.float16).astype(np.float32))
    grad_plain = jax.grad(lambda d: jnp.sum(modules.deep_prompt_inputs(d, 2, False) * w))(deep)
    np.testing.assert_allclose(np.asarray(grad_plain), np.asarray(w.sum(1)), rtol=1e-6)


def test_image_side_is_the_dpam_stream_and_the_unnormed_global_token(port):
    """Taps = ln_post + proj of the V-V stream (V-V attention from ln_1 of the original stream, no
    MLP); global = the original stream's class token @ proj without ln_post; bilinear positions."""
    method, params, model = port
    images = np.random.default_rng(3).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    feats = jax.jit(method.frozen_features)(params, {"images": {"clip": jnp.asarray(images)}})
    with torch.no_grad():
        tokens, glob = t_image(model, torch.from_numpy(images), method.clip.layers, 1)
    assert relative_error(glob.numpy(), feats["global"]) < TOL
    for i, tap in enumerate(feats["tokens"]):
        assert relative_error(tokens[:, i, 1:].numpy(), tap) < TOL
    assert relative_error(feats["tokens"][1], feats["tokens"][0]) > 0.1     # no aliased taps


def test_dpam_start_and_switch(port):
    """DPAM from block 2: tap 1 is the plain stream, tap 2 the V-V one; model.dpam=False: both
    plain, and the global feature does not change."""
    _, params, model = port
    images = np.random.default_rng(4).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    for overrides, start in (({"model.dpam_start": 2}, 2), ({"model.dpam": False}, 99)):
        method = methods.build(demo_config(**{"backbones.clip.image_size": SIZE, **overrides}))
        feats = jax.jit(method.frozen_features)(params, {"images": {"clip": jnp.asarray(images)}})
        with torch.no_grad():
            tokens, glob = t_image(model, torch.from_numpy(images), (1, 2), start)
        assert relative_error(glob.numpy(), feats["global"]) < TOL
        for i in range(2):
            assert relative_error(tokens[:, i, 1:].numpy(), feats["tokens"][i]) < TOL


def test_maps_sum_over_taps_and_scores_per_image(port):
    """Maps: probabilities at temperature 0.07, upsampled bilinearly, summed over the taps (range
    [0, number of taps]); scores from the global feature alone, one per image of a batch."""
    method, params, _ = port
    rng = np.random.default_rng(5)
    p = method.clip.grid[0] * method.clip.grid[1]
    feats = {"tokens": tuple(jnp.asarray(rng.normal(size=(3, p, 32)), jnp.float32) for _ in range(2)),
             "global": jnp.asarray(rng.normal(size=(3, 32)), jnp.float32)}
    maps, scores = jax.jit(method.outputs_from_features)(params, feats, {})
    text = torch.tensor(np.asarray(method.text_features(params)))
    want_maps, want_scores = t_maps_and_scores(
        torch.from_numpy(np.stack([np.asarray(t) for t in feats["tokens"]], 1)),
        torch.tensor(np.asarray(feats["global"])), text, SIZE)
    assert maps.shape == (3, SIZE, SIZE) and float(maps.max()) > 1.0     # a sum, not a mean
    assert relative_error(want_maps.numpy(), maps) < TOL
    assert relative_error(want_scores.numpy(), scores) < TOL
    assert len(set(np.round(np.asarray(scores), 6))) == 3
    single, _ = jax.jit(method.outputs_from_features)(params, {**feats, "tokens": feats["tokens"][1:]}, {})
    assert float(jnp.abs(maps - single).max()) > 0.1


def test_loss_is_four_times_focal_and_two_dice_plus_image_ce(port):
    """L = 4 sum_taps [focal(S, G) + Dice(S_a, G) + Dice(S_n, 1 - G)] + CE(cos / 0.07, y)."""
    method, params, _ = port
    rng = np.random.default_rng(6)
    p = method.clip.grid[0] * method.clip.grid[1]
    feats = {"tokens": tuple(jnp.asarray(rng.normal(size=(2, p, 32)), jnp.float32) for _ in range(2)),
             "global": jnp.asarray(rng.normal(size=(2, 32)), jnp.float32)}
    masks = np.zeros((2, SIZE, SIZE), np.float32)
    masks[1, 20:50, 10:40] = 0.8                                   # binarized at 0.5
    labels = np.array([0, 1], np.int32)
    batch = {"masks": jnp.asarray(masks), "labels": jnp.asarray(labels)}
    total, terms = jax.jit(method.loss_from_features)(params, feats, batch, None)
    text = np.array(method.text_features(params))
    gt = torch.from_numpy((masks > 0.5).astype(np.float32))
    focal = dice_a = dice_n = 0
    for tap in feats["tokens"]:
        tok = torch.tensor(np.asarray(tap))
        tok = tok / tok.norm(dim=-1, keepdim=True)
        probs = (tok @ torch.from_numpy(text).T / 0.07).softmax(-1)
        up = F.interpolate(probs.reshape(2, 10, 10, 2).permute(0, 3, 1, 2), (SIZE, SIZE),
                           mode="bilinear", align_corners=False)
        focal += t_focal(up, gt)
        dice_a += t_dice(up[:, 1], gt)
        dice_n += t_dice(up[:, 0], 1 - gt)
    g = torch.tensor(np.asarray(feats["global"]))
    logits = (g / g.norm(dim=-1, keepdim=True)) @ torch.from_numpy(text).T / 0.07
    ce = F.cross_entropy(logits, torch.from_numpy(labels).long())
    want = {"seg_focal": focal, "seg_dice": dice_a, "seg_dice_normal": dice_n, "cls_ce": ce}
    for name, value in want.items():
        assert relative_error(value.item(), terms[name]) < TOL, name
    assert relative_error((4 * (focal + dice_a + dice_n) + ce).item(), total) < TOL
    # The pure loss function with other weights.
    probs = [jnp.stack([1 - jnp.full((2, 4, 4), q), jnp.full((2, 4, 4), q)], 1) for q in (0.2, 0.7)]
    m = jnp.zeros((2, 4, 4)).at[1].set(1.0)
    lg = jnp.asarray([[1.0, 0.0], [0.0, 2.0]])
    one, t1 = aloss.anomalyclip_loss(probs, m, lg, jnp.asarray([0, 1]), seg_weight=1.0, cls=0.0)
    np.testing.assert_allclose(one, t1["seg_focal"] + t1["seg_dice"] + t1["seg_dice_normal"], rtol=1e-6)


def test_gradients_reach_every_prompt_and_only_the_prompts(port):
    method, params, _ = port
    rng = np.random.default_rng(7)
    masks = np.zeros((2, SIZE, SIZE), np.float32)
    masks[1, 5:40, 30:70] = 1
    batch = {"images": {"clip": jnp.asarray(rng.normal(size=(2, SIZE, SIZE, 3)), jnp.float32)},
             "masks": jnp.asarray(masks), "labels": jnp.asarray([0, 1], jnp.int32)}
    grads = jax.jit(jax.grad(lambda p: method.loss(p, batch, None)[0]))(params)
    assert_gradient_reaches(grads, ["head/ctx_normal", "head/ctx_anomalous", "head/deep_prompts"])
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(grads["backbones"]))
    mask = method.trainable_mask(params)
    assert all(jax.tree_util.tree_leaves(mask["head"]))
    assert not any(jax.tree_util.tree_leaves(mask["backbones"]))


def test_config_variants_and_errors():
    c = config_lib.load_config("anomalyclip.py")
    assert (c.data.protocol, tuple(c.backbones.clip.layers)) == ("mvtec_to_all", (6, 12, 18, 24))
    assert (c.optim.lr, c.optim.b1, c.optim.b2, c.optim.weight_decay, c.optim.schedule) == \
        (1e-3, 0.5, 0.999, 0.0, "constant")
    assert (c.train.epochs, c.data.batch_size, c.data.drop_last, c.seed,
            c.backbones.clip.pos_interpolation) == (15, 8, False, 111, "bilinear")
    assert (c.model.dpam_start, c.model.deep_prompt_depth, c.model.deep_prompt_length,
            c.model.prompt_length, c.model.temperature, c.loss.seg_weight) == (6, 9, 4, 12, 0.07, 4.0)
    assert config_lib.load_config("anomalyclip.py:visa_to_mvtec").data.protocol == "visa_to_mvtec"
    assert tuple(config_lib.load_config("anomalyclip.py:tap24").backbones.clip.layers) == (24,)
    assert not config_lib.load_config("anomalyclip.py:no_dpam").model.dpam
    assert not config_lib.load_config("anomalyclip.py:no_deep_prompts").model.deep_prompts
    real = methods.build(config_lib.load_config("anomalyclip.py", {"backbones.clip.weights": ""}))
    head = jax.eval_shape(lambda: real.init_head(jax.random.key(0), {}))
    assert {k: v.shape for k, v in head.items()} == {
        "ctx_normal": (12, 768), "ctx_anomalous": (12, 768), "deep_prompts": (8, 4, 768)}
    assert (real.vv_from_layer, real.clip.grid, real.mask_size) == (6, (37, 37), 518)
    no_deep = methods.build(demo_config(**{"model.deep_prompts": False}))
    assert "deep_prompts" not in no_deep.init(jax.random.key(0))["head"]
    with pytest.raises(config_lib.ConfigError, match="dpam_start=3"):
        demo_config(**{"model.dpam_start": 3})
    with pytest.raises(config_lib.ConfigError, match="deep_prompt_depth=3"):
        demo_config(**{"model.deep_prompt_depth": 3})
    with pytest.raises(config_lib.ConfigError, match="deep_prompt_length"):
        demo_config(**{"model.deep_prompt_length": 5})
