"""SGNet method (zsad_jax/methods/sgnet/: method.py, modules.py) and its config (configs/sgnet.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import assert_gradient_reaches

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
    assert head["input_proj_0"]["kernel"].shape == (1024, 768)      # ViT-L width -> C_v
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


def test_baseline_without_gin_has_no_stage_parameters():
    method = methods.build(demo_config(**{"model.gin": False, "gpr.attraction": False,
                                         "gpr.equilibrium": False}))
    params = jax.eval_shape(method.init, jax.random.PRNGKey(0))
    assert not any(k.startswith("stage_") for k in params["head"])
    assert "gravitons" in params["head"] and "plain_0" in params["head"]
    loss, terms = jax.eval_shape(method.loss, params, tiny_batch(), jax.random.PRNGKey(0))
    assert loss.shape == ()


def test_alternative_readings_run(demo):
    config = demo_config(**{"model.prompts": "templates", "model.image_score": "text",
                            "model.visual_input": "fused", "model.decoder": "concat",
                            "model.visual_dims": (16, 24, 32), "gpr.visual_tokens": "stage",
                            "gpr.stages": "last", "gpr.w2": "energy",
                            "model.templates": ("a photo of a {}.",),
                            "model.normal_states": ("", "flawless"), "model.abnormal_states": ("damaged",)})
    method = methods.build(config)
    towers = demo[1]["backbones"]
    params = {"backbones": towers,
              "head": jax.jit(method._init_trainable)(jax.random.PRNGKey(1), jax.random.PRNGKey(2),
                                                      towers)}
    assert "prompts" not in params["head"]         # nothing to learn on the text side
    assert params["head"]["stage_1"]["visual_out"]["kernel"].shape == (24, 32)

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
    assert config_lib.load_config("sgnet.py:mvtec_to_visa").data.protocol == "mvtec_to_visa"
    c = config_lib.load_config("sgnet.py", ["--config.gpr.attraction=False", "gpr.w2=energy"])
    assert c.gpr.attraction is False and c.gpr.w2 == "energy"
    with pytest.raises(config_lib.ConfigError, match="unknown variant"):
        config_lib.load_config("sgnet.py:nope")
    with pytest.raises(ValueError, match="model.image_score='mean'"):
        methods.build(demo_config(**{"model.image_score": "mean"}))
    with pytest.raises(ValueError, match="gpr.w2='w1'"):
        methods.build(demo_config(**{"gpr.w2": "w1"}))
    with pytest.raises(ValueError, match="2 tapped layers for config.model.num_stages=3"):
        methods.build(demo_config(**{"model.num_stages": 3}))


def test_demo_run_lowers_the_loss_and_beats_chance_on_held_out_classes(tmp_path):
    from zsad_jax.train import run_training as train

    steps = 80
    config = demo_config(**{"train.num_steps": steps, "train.log_every": 1, "train.eval_every": steps,
                            "train.feature_cache": True, "eval.num_heatmaps": 0,
                            "eval.max_images": 16})
    result = train(config, tmp_path / "run", progress=False)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").open())
              if "loss" in r]
    assert len(losses) == steps
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.3
    held_out = result.eval_metrics["synthetic"]["mean"]      # classes the run never saw
    assert held_out["pixel_auroc"] > 0.55 and held_out["image_auroc"] > 0.5


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
