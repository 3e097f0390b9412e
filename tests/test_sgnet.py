"""SGNet method (zsad_jax/methods/sgnet/: method.py, modules.py) and its config (configs/sgnet.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import assert_gradient_reaches, leaf_norms, relative_error

from zsad_jax import config_lib, methods
from zsad_jax.methods.sgnet import modules as sgnet_modules
from zsad_jax.tree import path_str


def demo_config(**overrides):
    return config_lib.load_config("sgnet.py:demo", overrides)


def tiny_batch(size=64, b=2, seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((b, size, size), np.float32)
    masks[1, 10:30, 20:40] = 1.0
    return {"images": {"clip": jnp.asarray(rng.normal(size=(b, size, size, 3)), jnp.float32)},
            "masks": jnp.asarray(masks), "labels": jnp.array([0, 1], jnp.int32)}


@pytest.fixture(scope="module")
def demo():
    """The demo method, its params, a batch, and (loss, terms), grads from one compiled call."""
    method = methods.build(demo_config())
    params = method.init(jax.random.PRNGKey(0))
    batch = tiny_batch()
    value_and_grad = jax.jit(jax.value_and_grad(method.loss, has_aux=True))
    loss_and_terms, grads = value_and_grad(params, batch, jax.random.PRNGKey(1))
    features = jax.jit(method.frozen_features)(params, batch)
    return method, params, batch, loss_and_terms, grads, features


def test_real_size_shapes_with_eval_shape():
    config = config_lib.load_config("sgnet.py", {"backbones.clip.weights": ""})
    method = methods.build(config)
    params = jax.eval_shape(method.init, jax.random.PRNGKey(0))
    head = params["head"]
    assert head["gravitons"].shape == (20, 768)                      # N x C_l, ViT-L/14 joint size
    assert sorted(k for k in head if k.startswith("stage_")) == [f"stage_{i}" for i in range(4)]
    assert head["stage_0"]["visual_attention"]["proj_v"]["kernel"].shape == (768, 768)
    # "multi-layer features F_0": the 4 tapped layers (ViT-L width 1024 each) fused into one F_0.
    assert head["input_proj_0"]["kernel"].shape == (4 * 1024, 768) and "input_proj_1" not in head
    assert sorted(k for k in head if k.startswith("input_norm_")) == [f"input_norm_{i}" for i in range(4)]
    assert head["prompts"]["context"].shape == (2, 12, 768)
    assert method.clip.grid == (37, 37) and method.mask_size == 518
    batch = {"images": {"clip": jax.ShapeDtypeStruct((1, 518, 518, 3), jnp.float32)},
             "masks": jax.ShapeDtypeStruct((1, 518, 518), jnp.float32),
             "labels": jax.ShapeDtypeStruct((1,), jnp.int32)}
    features = jax.eval_shape(method.frozen_features, params, batch)
    assert [t.shape for t in features["taps"]] == [(1, 37 * 37, 1024)] * 4
    assert jax.eval_shape(method.clip_tokens, params, features["taps"][0]).shape == (1, 37 * 37, 768)
    anomaly_map, score = jax.eval_shape(method.anomaly_outputs, params, batch)
    assert anomaly_map.shape == (1, 518, 518) and score.shape == (1,)
    loss, terms = jax.eval_shape(method.loss, params, batch, jax.random.PRNGKey(0))
    assert loss.shape == () and set(terms) == {"seg_focal", "seg_dice", "cls_bce", "grav", "grav_att",
                                               "grav_equ"}


def test_text_attention_and_gate_match_the_formulas():
    rng = np.random.default_rng(0)
    g = jnp.asarray(rng.normal(size=(1, 3, 8)), jnp.float32)
    text = jnp.asarray(rng.normal(size=(1, 2, 8)), jnp.float32)
    att_mod = sgnet_modules.TextGravitonAttention()
    p = att_mod.init(jax.random.PRNGKey(0), g, text)["params"]
    dense = lambda x, q: np.asarray(x) @ np.asarray(q["kernel"]) + np.asarray(q["bias"])

    def layer_norm(x, q):
        x = np.asarray(x, np.float64)
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-6) * np.asarray(q["scale"]) + np.asarray(q["bias"])

    q, lp = dense(g, p["proj_g"]), dense(text, p["proj_l"])
    att = q @ lp.transpose(0, 2, 1) / np.sqrt(8)                                   # Att^L
    soft = np.exp(att - att.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    g_text = layer_norm(np.asarray(g) + soft @ lp, p["norm"])                      # G^L
    np.testing.assert_allclose(att_mod.apply({"params": p}, g, text), g_text, atol=1e-5)

    gate = sgnet_modules.TextGravitonGate(reduction=2)
    gp = gate.init(jax.random.PRNGKey(1), jnp.asarray(g_text, jnp.float32), g)["params"]
    assert gp["gamma_1"]["kernel"].shape == (8, 4)
    gamma = np.tanh(dense(np.maximum(dense(g_text, gp["gamma_1"]), 0), gp["gamma_2"]))
    want = dense(gamma * g_text + np.asarray(g), gp["linear"])                     # G^cross
    np.testing.assert_allclose(gate.apply({"params": gp}, jnp.asarray(g_text, jnp.float32), g), want,
                               atol=1e-5)


def test_graviton_guided_head_is_the_mean_of_per_graviton_responses():
    rng = np.random.default_rng(1)
    g = jnp.asarray(rng.normal(size=(2, 4, 6)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32)
    head = sgnet_modules.GravitonGuidedHead()
    p = head.init(jax.random.PRNGKey(0), g, x)["params"]
    hidden = jax.nn.gelu(g @ p["mlp_1"]["kernel"] + p["mlp_1"]["bias"])
    w = np.asarray(hidden @ p["mlp_2"]["kernel"] + p["mlp_2"]["bias"])             # w_n = MLP(g_n)
    per = np.einsum("bnc,bpc->bnp", w, np.asarray(x))                                # M_n = w_n X^T
    np.testing.assert_allclose(head.apply({"params": p}, g, x), per.mean(1), atol=1e-5)


def test_outputs_and_gradients_reach_gravitons_gates_prompts_not_backbone(demo):
    method, params, batch, (loss, terms), grads, features = demo
    assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in terms.values())
    anomaly_map, score = jax.jit(method.outputs_from_features)(params, features, batch)
    assert anomaly_map.shape == (2, 64, 64) and score.shape == (2,)
    assert float(anomaly_map.min()) >= 0 and float(anomaly_map.max()) <= 1
    flat = {path_str(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(grads)}
    assert_gradient_reaches(grads, ["head/gravitons", "head/prompts/context"]
                            + [f"head/stage_{i}/{part}/" for i in range(2)
                               for part in ("gate", "visual_attention")])
    assert all(not np.any(v) for k, v in flat.items() if k.startswith("backbones/"))  # frozen: exactly 0
    mask = method.trainable_mask(params)
    trainable = {path_str(k) for k, v in jax.tree_util.tree_leaves_with_path(mask) if v}
    assert trainable and all(k.startswith("head/") for k in trainable)


def test_each_ablation_switch_removes_exactly_its_term(demo):
    method, params, batch, (full, terms), _, features = demo
    assert float(terms["grav_att"]) > 0 and float(terms["grav_equ"]) > 0
    lam_g, lam_a = 0.6, 0.6
    seg_cls = float(terms["seg_focal"] + terms["seg_dice"] + terms["cls_bce"])
    np.testing.assert_allclose(float(full), seg_cls + lam_g * float(terms["grav"]), rtol=1e-5)
    np.testing.assert_allclose(float(terms["grav"]),
                               lam_a * float(terms["grav_att"]) + (1 - lam_a) * float(terms["grav_equ"]),
                               rtol=1e-5)
    for switch, removed in (("attraction", "grav_att"), ("equilibrium", "grav_equ")):
        weight = lam_g * (lam_a if removed == "grav_att" else 1 - lam_a)
        variant = methods.build(demo_config(**{f"gpr.{switch}": False}))
        loss, t = jax.jit(variant.loss_from_features)(params, features, batch, None)
        assert float(t[removed]) == 0.0
        for name in ("seg_focal", "seg_dice", "cls_bce"):
            np.testing.assert_allclose(float(t[name]), float(terms[name]), rtol=1e-5)
        np.testing.assert_allclose(float(loss), float(full) - weight * float(terms[removed]), rtol=1e-5)
    # Both GPR terms off: GPR is not even computed, L_total = L_seg + L_cls.
    assert not methods.build(demo_config(**{"gpr.attraction": False,
                                            "gpr.equilibrium": False})).gpr_cfg.active
    assert not methods.build(demo_config(**{"gpr.lambda_grav": 0.0})).gpr_cfg.active


BASELINE = {"model.gin": False, "gpr.attraction": False, "gpr.equilibrium": False}


@pytest.mark.parametrize("tokens", ["clip", "decoded"])
def test_baseline_scores_patches_against_the_learned_prompts(demo, tokens):
    """The "w/o GIN/GPR" row: no GIN parameters, and the patches are scored against L_nor / L_abn
    (the prompts get a gradient; the maps move with the prompt context)."""
    towers, features, batch = demo[1]["backbones"], demo[5], demo[2]
    method = methods.build(demo_config(**BASELINE, **{"model.baseline_tokens": tokens}))
    params = {"backbones": towers,
              "head": jax.jit(method._init_trainable)(jax.random.PRNGKey(1), jax.random.PRNGKey(2), towers)}
    head = set(params["head"])
    assert not head & {"gravitons", "prediction"} and not any(k.startswith("stage_") for k in head)
    assert head == ({"prompts"} if tokens == "clip" else
                    {"prompts", "input_norm_0", "input_norm_1", "input_proj_0", "plain_0", "plain_1",
                     "decoder"})
    grads = jax.jit(jax.grad(lambda p: method.loss_from_features(p, features, batch, None)[0]))(params)
    assert_gradient_reaches(grads, [f"head/{k}" for k in sorted(head)])
    outputs = jax.jit(method.outputs_from_features)
    maps, _ = outputs(params, features, batch)
    context = params["head"]["prompts"]["context"]
    other = context + 0.5 * jax.random.normal(jax.random.PRNGKey(3), context.shape)
    moved, _ = outputs({**params, "head": {**params["head"], "prompts": {"context": other}}}, features,
                       batch)
    assert relative_error(maps, moved) > 1e-2
    if tokens == "clip":
        # AnomalyCLIP's patch score on every tapped layer (ln_post + proj), the logits averaged:
        # sigmoid(logit) = Softmax([cos_nor, cos_abn] / 0.07)_abn.
        text = np.asarray(jax.jit(method.text_features)(params), np.float64)
        logits = []
        for tap in features["taps"]:
            tokens_j = np.asarray(jax.jit(method.clip_tokens)(params, tap), np.float64)
            cos = (tokens_j / np.linalg.norm(tokens_j, axis=-1, keepdims=True)) @ text.T
            logits.append((cos[..., 1] - cos[..., 0]) / 0.07)
        got = jax.jit(lambda p, f: method._forward(p, f)[0])(params, features)
        assert relative_error(np.mean(logits, axis=0), got) < 1e-4


def test_gpr_needs_the_gin_and_the_clip_baseline_needs_learned_prompts():
    with pytest.raises(ValueError, match="baseline config.model.gin=False has none"):
        methods.build(demo_config(**{"model.gin": False}))
    with pytest.raises(ValueError, match="needs config.model.prompts='learned'"):
        methods.build(demo_config(**BASELINE, **{"model.prompts": "templates"}))


def test_gpr_pulls_the_visual_tokens_not_only_the_gravitons(demo):
    """GPR is "pulling the two modalities": with f_v = the stage's visual tokens (default) L_grav's
    gradient reaches the last stage's patch update (value_g, the 3x3 after Unflatten), which
    nothing of GPR but f_v depends on; with f_v = frozen CLIP tokens ("clip") it gets exactly 0."""
    method, params, batch, _, _, features = demo
    assert method.gpr_cfg.visual_tokens == "stage"
    last = f"head/stage_{method.model_cfg.num_stages - 1}/"
    patch_update = [last + "visual_attention/value_g", last + "spatial"]
    grav = lambda m: jax.jit(jax.grad(lambda p: m.loss_from_features(p, features, batch, None)[1]["grav"]))
    assert_gradient_reaches(grav(method)(params), patch_update + ["head/gravitons", "head/prompts"])
    frozen = grav(methods.build(demo_config(**{"gpr.visual_tokens": "clip"})))(params)
    norms = leaf_norms(frozen)
    assert all(v == 0.0 for k, v in norms.items() if k.startswith(tuple(patch_update)))
    assert norms["head/gravitons"] > 0


def test_alternative_readings_run(demo):
    config = demo_config(**{"model.prompts": "templates", "model.image_score": "text",
                            "model.visual_input": "per_stage", "model.decoder": "concat",
                            "model.visual_dims": (16, 24, 32), "gpr.visual_tokens": "clip",
                            "gpr.stages": "last", "gpr.w2": "energy", "gpr.equilibrium_energy": "expected",
                            "model.templates": ("a photo of a {}.",),
                            "model.normal_states": ("", "flawless"), "model.abnormal_states": ("damaged",)})
    method = methods.build(config)
    towers = demo[1]["backbones"]
    params = {"backbones": towers,
              "head": jax.jit(method._init_trainable)(jax.random.PRNGKey(1), jax.random.PRNGKey(2),
                                                      towers)}
    assert "prompts" not in params["head"]         # nothing to learn on the text side
    assert params["head"]["stage_1"]["visual_out"]["kernel"].shape == (24, 32)
    # "per_stage": tapped layer i (width 64) is projected into stage i's input C_v^i.
    assert [params["head"][f"input_proj_{i}"]["kernel"].shape for i in range(2)] == [(64, 16), (64, 24)]

    text = jax.jit(method.text_features)(params)                     # template ensemble
    assert text.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(text, axis=-1), 1.0, rtol=1e-5)
    loss, terms = jax.eval_shape(method.loss, params, tiny_batch(), None)
    assert loss.shape == () and terms["grav_att"].shape == ()
    topk = methods.build(demo_config(**{"model.image_score": "topk_mean", "model.topk_fraction": 0.1}))
    _, score = jax.eval_shape(topk.anomaly_outputs, jax.eval_shape(topk.init, jax.random.PRNGKey(0)),
                              tiny_batch())
    assert score.shape == (2,)


def test_config_variants_and_errors():
    rows = {"visa_to_mvtec": (True, True, True), "full": (True, True, True),
            "baseline": (False, False, False), "gin": (True, False, False),
            "gin_att": (True, True, False), "gin_equ": (True, False, True)}
    for variant, (gin, att, equ) in rows.items():
        c = config_lib.load_config(f"sgnet.py:{variant}")
        assert (c.model.gin, c.gpr.attraction, c.gpr.equilibrium) == (gin, att, equ), variant
        assert c.data.protocol == "visa_to_mvtec"
        assert (c.model.num_gravitons, c.model.num_stages) == (20, 4)
        assert (c.gpr.lambda_grav, c.gpr.lambda_att) == (0.6, 0.6)
        assert (c.optim.lr, c.optim.weight_decay, c.optim.schedule) == (5e-5, 0.05, "polynomial")
        assert c.backbones.clip.image_size == 518 and c.backbones.clip.arch == "clip-vit-l14-336"
        # The readings of docs/sgnet.md: F_0 fused from all tapped layers, GPR on the stage's own
        # visual tokens, the free-energy difference, polynomial decay power 1 (not in the paper).
        assert (c.model.visual_input, c.gpr.visual_tokens, c.gpr.equilibrium_energy) == (
            "fused", "stage", "free")
        assert c.model.baseline_tokens == "clip" and c.model.text_tau == 0.07
        assert (c.optim.power, c.optim.end_lr_factor) == (1.0, 0.0)
    # "(and vice versa for MVTec-AD using VisA)": MVTec-trained, evaluated on VisA and the others.
    assert config_lib.load_config("sgnet.py:mvtec_to_visa").data.protocol == "mvtec_to_all"
    c = config_lib.load_config("sgnet.py", ["--config.gpr.attraction=False", "gpr.w2=energy"])
    assert c.gpr.attraction is False and c.gpr.w2 == "energy"
    with pytest.raises(config_lib.ConfigError, match="unknown variant"):
        config_lib.load_config("sgnet.py:nope")
    with pytest.raises(ValueError, match="model.image_score='mean'"):
        methods.build(demo_config(**{"model.image_score": "mean"}))
    with pytest.raises(ValueError, match="gpr.w2='w1'"):
        methods.build(demo_config(**{"gpr.w2": "w1"}))
    with pytest.raises(ValueError, match="2 tapped layers for config.model.num_stages=3"):
        methods.build(demo_config(**{"model.num_stages": 3, "model.visual_input": "per_stage"}))
    assert methods.build(demo_config(**{"model.num_stages": 3})).head.num_taps == 2   # fused: any


def test_quick_start_demo_detects_anomalies_of_held_out_classes(tmp_path):
    """README's first command (`sgnet.py:demo`, its steps, seeds and data) through the training
    engine, from the feature cache: held-out classes (never trained on) at image AUROC >= 0.8."""
    from zsad_jax.train import run_training as train

    config = demo_config(**{"train.feature_cache": True, "train.log_every": 1, "eval.num_heatmaps": 0,
                            "train.eval_every": 10**6, "train.ckpt_every": 10**6})   # only at the end
    result = train(config, tmp_path / "run", progress=False)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").open())
              if "loss" in r]
    assert result.step == len(losses) == 100
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    held_out = result.eval_metrics["synthetic"]
    assert set(held_out["classes"]) == {"grass", "moon"} and held_out["num_images"] == 28
    assert held_out["mean"]["image_auroc"] >= 0.8 and held_out["mean"]["pixel_auroc"] >= 0.8, held_out["mean"]


def test_init_loads_converted_weights_and_their_tokenizer(demo, tmp_path):
    from zsad_jax.backbones import io, tokenizer

    method, params = demo[0], demo[1]
    backbone = jax.tree_util.tree_map(lambda x: np.asarray(x) + 0.5, params["backbones"]["clip"])
    io.write_folder(tmp_path / "clip", method.clip.arch, backbone)
    tokenizer.write_tokenizer_files(tokenizer.tiny_tokenizer(), tokenizer.tiny_bpe()[0], tmp_path / "clip")
    loaded = methods.build(demo_config(**{"backbones.clip.weights": str(tmp_path / "clip")}))
    assert loaded.required_files()[0][0] == str(tmp_path / "clip")
    new = loaded.init(jax.random.PRNGKey(0))
    for a, b in zip(jax.tree_util.tree_leaves(new["backbones"]["clip"]), jax.tree_util.tree_leaves(backbone),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded._prompt_tokens()[0], method._prompt_tokens()[0])
    with pytest.raises(ValueError, match="not config.backbones.clip.arch='clip-vit-b32'"):
        methods.build(demo_config(**{"backbones.clip.weights": str(tmp_path / "clip"),
                                     "backbones.clip.arch": "clip-vit-b32",
                                     "backbones.clip.image_size": 64}))
