"""SSVP method: real-size shapes (abstractly), configs, ablation switches, prompts from class names,
and the readings of docs/ssvp.md ("Readings"): what is supervised, what gets a gradient, what is
sampled."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import assert_gradient_reaches, leaf_norms, relative_error

from zsad_jax import config_lib, methods
from zsad_jax.tree import path_str

S = jax.ShapeDtypeStruct


def _method(spec, **overrides):
    return methods.build(config_lib.load_config(f"ssvp.py:{spec}", overrides))


def _paths(tree):
    return [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def test_real_size_shapes():
    m = _method("visa_to_mvtec", **{"backbones.clip.weights": "", "backbones.dino.weights": ""})
    assert {k: v.size for k, v in m.views.items()} == {"clip": 518, "dino": 592}
    assert m.grid == 37 and m.mask_size == 592
    assert m.views["clip"].mean == (0.48145466, 0.4578275, 0.40821073)     # each view: its own norm
    assert m.views["dino"].mean == (0.485, 0.456, 0.406)
    params = jax.eval_shape(m.init, jax.random.PRNGKey(0))
    head = params["head"]
    assert head["hsvs_local_0"]["q_clip"]["kernel"].shape == (768, 768)    # D_c -> d_head
    assert head["hsvs_local_0"]["q_dino"]["kernel"].shape == (1024, 768)   # D_d -> d_head
    assert len([k for k in head if k.startswith("hsvs_local_")]) == 4
    assert head["prompts"]["state"].shape == (2, 3, 4, 768)               # 3 normal + 3 abnormal
    assert head["injection"]["alpha"].shape == ()
    assert head["moe"]["global_gate"]["fc2"]["kernel"].shape[-1] == 4      # one weight per layer
    # Global pair: one token each (eq. 3 with one key), so no W_Q, W_K there.
    assert set(head["hsvs_global"]) == {"v_clip", "v_dino", "norm_clip_to_dino", "norm_dino_to_clip",
                                        "mlp_in", "mlp_out"}
    assert head["hsvs_global"]["v_dino"]["kernel"].shape == (1024, 768)
    # Eq. 10: z (128) -> 4 key / value tokens of d_k = 768 / E = 768.
    assert head["text_latent"]["k_latent"]["kernel"].shape == (128, 4 * 768)
    assert head["text_latent"]["v_latent"]["kernel"].shape == (128, 4 * 768)
    assert head["text_latent"]["q_text"]["kernel"].shape == (768, 768)
    batch = {"images": {"clip": S((1, 518, 518, 3), jnp.float32), "dino": S((1, 592, 592, 3), jnp.float32)},
             "masks": S((1, 592, 592), jnp.float32), "labels": S((1,), jnp.int32),
             "text": {"ids": S((1, 77), jnp.int32), "eot": S((1,), jnp.int32)}}
    out = jax.eval_shape(m.forward, params, batch, jax.random.PRNGKey(0))
    assert out["layer_probs"].shape == (1, 4, 37, 37)
    assert out["p_map"].shape == (1, 37, 37)
    assert out["s_final"].shape == (1,)
    assert out["t_final"].shape == out["t_init"].shape == (1, 2, 3, 768)
    assert out["mu"].shape == (1, 128) and out["reconstruction"].shape == (1, 768)
    assert out["w_scale"].shape == (1, 4) and out["m_spatial"].shape == (1, 4, 37, 37)


@pytest.mark.parametrize("variant, expected", [
    ("A", {"prompts"}),
    ("B", {"prompts", "hsvs"}),
    ("C", {"prompts", "hsvs", "attention"}),
    ("D", {"prompts", "hsvs", "attention", "vcpg"}),
    ("E", {"prompts", "hsvs", "attention", "vcpg", "vtam"}),
])
def test_ablation_switches_remove_exactly_their_module(variant, expected):
    m = _method(f"demo,{variant}")
    paths = _paths(jax.eval_shape(lambda r: m.init_head(r, None), jax.random.PRNGKey(0)))
    found = {"prompts"} if any(p.startswith("prompts/") for p in paths) else set()
    if any(p.startswith("hsvs_") for p in paths):
        found.add("hsvs")
    if any(re.search(r"hsvs_.*/(q|k)_(clip|dino)/", p) for p in paths):
        found.add("attention")
    vcpg = {p.split("/")[0] for p in paths} & {"vae", "text_latent", "injection"}
    if vcpg:
        assert vcpg == {"vae", "text_latent", "injection"}
        found.add("vcpg")
    if any(p.startswith("moe/") for p in paths):
        found.add("vtam")
    assert found == expected
    assert set(m.views) == ({"clip"} if variant == "A" else {"clip", "dino"})


def test_default_is_the_full_model_and_variants_compose():
    c = config_lib.load_config("ssvp.py")
    assert (c.model.fusion, c.model.use_vcpg, c.model.use_vtam) == ("atf", True, True)
    # Sec. 4.2, literally: CLIP {6, 12, 18, 24}, DINOv3 {3, 6, 9, 11} (both 1-based blocks).
    assert c.backbones.dino.layers == (3, 6, 9, 11) and c.backbones.clip.layers == (6, 12, 18, 24)
    for variant in ("dinov3_vits", "dinov3_vitb", "dinov2_vitl"):
        assert config_lib.load_config(f"ssvp.py:{variant}").backbones.dino.layers == (3, 6, 9, 11)
    # The paper's readings are the defaults (docs/ssvp.md, "Readings").
    assert (c.loss.seg_maps, c.loss.vae_reduction, c.loss.vae_stop_gradient) == ("fused", "sum", True)
    assert (c.model.eval_latent, c.model.dino_norm, c.model.global_tokens) == ("sample", "final", "final")
    assert (c.model.latent_tokens, c.model.latent_keys, c.model.global_norm) == (4, "project", "l2")
    c = config_lib.load_config("ssvp.py:mvtec_to_visa,B,dinov3_vitb")
    assert c.data.protocol == "mvtec_to_visa" and c.model.fusion == "concat"
    assert c.backbones.dino.arch == "dinov3-vitb16" and c.backbones.dino.layers == (3, 6, 9, 11)
    c = config_lib.load_config("ssvp.py:dinov2_vitl")
    assert c.backbones.dino.image_size == 518   # patch 14: 37x37 like CLIP
    with pytest.raises(config_lib.ConfigError, match="unknown variant 'F'"):
        config_lib.load_config("ssvp.py:F")


def test_lr_groups_and_trainable_split():
    m = _method("demo")
    c = m.config
    paths = _paths(jax.eval_shape(lambda r: m.init_head(r, None), jax.random.PRNGKey(0)))
    regex, lr = c.optim.lr_groups[0].split("=")
    prompt_paths = [p for p in (f"head/{q}" for q in paths) if re.search(regex, p)]
    assert sorted(prompt_paths) == ["head/prompts/bg", "head/prompts/state"]
    paper = config_lib.load_config("ssvp.py")
    assert paper.optim.lr_groups == ("^head/prompts/=5e-4",) and paper.optim.lr == 1e-4
    tree = {"backbones": {"clip": {"visual": {"proj": 0}}, "dino": {"norm": {"scale": 0}}},
            "head": {"vae": {"k": 0}}}
    assert m.trainable_mask(tree) == {"backbones": {"clip": {"visual": {"proj": False}},
                                                    "dino": {"norm": {"scale": False}}},
                                      "head": {"vae": {"k": True}}}


def test_prepare_batch_builds_class_prompts():
    m = _method("demo")
    tok, cfg = m.tokenizer, m.clip.arch
    host = {"images": {}, "masks": np.zeros((2, 4, 4)), "labels": np.array([0, 1]),
            "class_name": np.array(["metal_nut", "pcb1"]), "image_path": np.array(["a", "b"])}
    batch = m.prepare_batch(host)
    assert set(batch) == {"images", "masks", "labels", "text"}
    ids, eot = batch["text"]["ids"], batch["text"]["eot"]
    assert ids.shape == (2, cfg.context_length) and ids.dtype == np.int32
    n_ctx = m.config.model.bg_length + m.config.model.state_length
    for row, words in enumerate(["metal nut.", "pcb1."]):
        assert ids[row, 0] == cfg.sot_token_id and ids[row, eot[row]] == cfg.eot_token_id
        assert list(ids[row, 1 + n_ctx:eot[row]]) == tok.encode(words)
        assert not ids[row, eot[row] + 1:].any()
    agnostic = _method("demo", **{"model.class_words": "object"})
    assert "text" not in agnostic.prepare_batch(host)          # constant prompts, made in the step
    ids = agnostic.prompt_token_ids(host["class_name"])[0]
    assert list(ids[0, 1 + n_ctx:1 + n_ctx + len(tok.encode("object."))]) == tok.encode("object.")
    assert (ids[0] == ids[1]).all()
    with pytest.raises(ValueError, match="exceeds the text context"):
        m.prompt_token_ids(["x" * 400])
    with pytest.raises(ValueError, match="class_name"):
        m.prepare_batch({k: v for k, v in host.items() if k != "class_name"})


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"dino.image_size=64"):
        _method("demo", **{"backbones.dino.image_size": 72})
    with pytest.raises(ValueError, match="config.model.local_score"):
        _method("demo", **{"model.local_score": "mean"})
    with pytest.raises(ValueError, match="same number of layers"):
        _method("demo", **{"backbones.dino.layers": (1,)})


def _numpy_params(shapes, seed=0, alpha=0.0):
    """Random params without compiling an init: LayerNorm scale 1, biases 0, alpha `alpha`, else
    N(0, 0.05)."""
    rng = np.random.default_rng(seed)

    def make(path, s):
        name = path_str(path).rsplit("/", 1)[-1]
        if name in ("scale", "bias", "alpha"):
            return np.full(s.shape, {"scale": 1.0, "bias": 0.0, "alpha": alpha}[name], np.float32)
        return rng.normal(0, 0.05, s.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(make, shapes)


def test_forward_without_vtam_and_gradients_reach_the_prompts():
    """Model D: P_map = mean of the layer maps, S_final = S_global; alpha = 0 gives
    T_final = LayerNorm(T_init); the loss has gradients in the prompts (through the frozen text tower)."""
    m = _method("demo,D")
    params = _numpy_params(jax.eval_shape(m.init, jax.random.PRNGKey(0)))   # no init compile
    rng = np.random.default_rng(0)
    host = {"images": {k: rng.normal(size=(2, v.size, v.size, 3)).astype(np.float32)
                       for k, v in m.views.items()},
            "masks": (rng.uniform(size=(2, m.mask_size, m.mask_size)) > 0.8).astype(np.float32),
            "labels": np.array([0, 1], np.int32), "class_name": np.array(["brick", "metal_nut"])}
    batch = m.prepare_batch(host)

    def loss(head):
        total, _, out = m.loss_and_outputs({**params, "head": head}, batch, jax.random.PRNGKey(1))
        return total, out

    grads, out = jax.jit(jax.grad(loss, has_aux=True))(params["head"])
    np.testing.assert_allclose(out["p_map"], np.asarray(out["layer_probs"]).mean(1), rtol=1e-6)
    np.testing.assert_allclose(out["s_final"], out["s_global"], rtol=1e-6)
    t = np.asarray(out["t_init"])
    ln = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out["t_final"], ln, atol=1e-4)
    assert not np.allclose(out["t_init"][0], out["t_init"][1])   # class words differ per image
    assert "moe" not in grads
    assert_gradient_reaches(grads, ["prompts/state", "prompts/bg", "injection/alpha"])


def test_converted_weight_folders_are_loaded(tmp_path):
    """With `weights` folders the architecture, the frozen params and the tokenizer come from them."""
    from zsad_jax import backbones
    from zsad_jax.backbones import io, tokenizer

    demo = _method("demo")
    folders = {}
    for name, tower in (("clip", demo.clip), ("dino", demo.dino)):
        shapes = jax.eval_shape(lambda m=tower.module: backbones.init_params(m, jax.random.PRNGKey(0), 64))
        rng = np.random.default_rng(len(name))
        params = jax.tree_util.tree_map(lambda s, r=rng: r.normal(size=s.shape).astype(np.float32), shapes)
        io.write_folder(tmp_path / name, tower.arch, params)
        folders[name] = params
    merges, _ = tokenizer.tiny_bpe()
    tokenizer.write_tokenizer_files(backbones.load_tokenizer("clip-tiny"), merges, tmp_path / "clip")
    m = _method("demo", **{"backbones.clip.weights": str(tmp_path / "clip"),
                           "backbones.dino.weights": str(tmp_path / "dino")})
    params = m.init(jax.random.PRNGKey(0))
    for name in ("clip", "dino"):
        jax.tree_util.tree_map(np.testing.assert_array_equal, params["backbones"][name], folders[name])
    ids, _ = m.prompt_token_ids(["metal_nut"])
    np.testing.assert_array_equal(ids, demo.prompt_token_ids(["metal_nut"])[0])


@pytest.mark.parametrize("options", [
    {"model.clip_projection": "learned", "model.dino_norm": "raw", "model.global_tokens": "layers",
     "model.global_norm": "none", "model.latent_keys": "split", "model.local_score": "mean_maxpool",
     "model.global_score": "cosine", "model.eval_latent": "mean", "loss.seg_maps": "layers",
     "loss.class_mode": "probability", "loss.vae_reduction": "mean", "loss.vae_stop_gradient": False},
    {"model.clip_projection": "learned", "model.latent_tokens": 1},
])
def test_every_option_traces(options):
    """The non-default readings (docs/ssvp.md) build and trace with the right shapes."""
    m = _method("demo", **options)
    params = jax.eval_shape(m.init, jax.random.PRNGKey(0))
    head = params["head"]
    assert head["clip_proj_0"]["kernel"].shape == (64, 32)               # CLIP width -> D_c
    assert len([k for k in head if k.startswith("clip_proj_")]) == 2      # one per tapped layer
    if options.get("model.latent_tokens") == 1:                          # one key: no W_Q, W_K
        assert set(head["text_latent"]) == {"v_latent"}
        assert "q_clip" not in head["hsvs_global"]
    else:
        assert head["text_latent"]["k_latent"]["kernel"].shape == (2, 32)   # 8 / 4 per token
        assert head["hsvs_global"]["q_clip"]["kernel"].shape == (32, 32)    # 2 layers' tokens
    batch = {"images": {k: S((2, v.size, v.size, 3), jnp.float32) for k, v in m.views.items()},
             "masks": S((2, 64, 64), jnp.float32), "labels": S((2,), jnp.int32),
             "text": {"ids": S((2, 77), jnp.int32), "eot": S((2,), jnp.int32)}}
    total, terms = jax.eval_shape(m.loss, params, batch, jax.random.PRNGKey(0))
    assert total.shape == () and set(terms) == {"seg_focal", "cls_bce", "vae", "margin", "vae_recon",
                                                "vae_kl"}
    maps, scores = jax.eval_shape(m.anomaly_outputs, params, batch)
    assert maps.shape == (2, 64, 64) and scores.shape == (2,)


# ---- the readings (docs/ssvp.md) on random features: no tower is compiled ----------------------

def _random_inputs(m, size=2, seed=0, alpha=0.5):
    """(params, frozen features, prepared batch) with random values: image 0 normal, the others
    anomalous with a 16x16 square mask. alpha != 0 so that VCPG's injection reaches the prompts."""
    rng = np.random.default_rng(seed)
    host = {"images": {k: np.zeros((size, v.size, v.size, 3), np.float32) for k, v in m.views.items()},
            "masks": np.zeros((size, m.mask_size, m.mask_size), np.float32),
            "labels": np.array([0] + [1] * (size - 1), np.int32),
            "class_name": np.array(["brick", "metal_nut", "candle"][:size])}
    host["masks"][1:, 8:24, 8:24] = 1.0
    batch = m.prepare_batch(host)
    shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0))
    params = _numpy_params(shapes, seed, alpha)
    features = jax.tree_util.tree_map(
        lambda s: rng.normal(size=s.shape).astype(np.float32),
        jax.eval_shape(m.frozen_features, shapes, batch))
    return params, features, batch


def _head_grad(m, term="total"):
    """jit(grad of one loss term w.r.t. the head): (params, features, batch) -> (head gradients,
    {term: value})."""
    def loss(head, params, features, batch):
        total, terms = m.loss_from_features({**params, "head": head}, features, batch,
                                            jax.random.PRNGKey(1))
        return (total if term == "total" else terms[term]), terms

    grad = jax.jit(jax.grad(loss, has_aux=True))
    return lambda params, features, batch: grad(params["head"], params, features, batch)


@pytest.mark.parametrize("seg_maps", ["fused", "layers"])
def test_segmentation_loss_supervises_the_evaluated_map(seg_maps):
    """Algorithm 3 line 8, Focal(P_map, GT_local) (default "fused"): moving the mask inside the image
    changes the loss gradient of every parameter that shapes P_map, the evaluated map, the dual gates
    of eqs. 15-17 included. With eq. 20 on the layer maps ("layers") the gates learn only through
    S_local = max P_map: their gradient ignores where the defect is."""
    m = _method("demo", **{"loss.seg_maps": seg_maps})
    params, features, batch = _random_inputs(m)
    grad = _head_grad(m)
    moved = np.roll(batch["masks"], (28, 30), axis=(1, 2))           # the same square, elsewhere
    g0, _ = grad(params, features, batch)
    g1, _ = grad(params, features, {**batch, "masks": moved})
    change = {k: relative_error(a, b) for (k, a), b in zip(
        ((path_str(p), a) for p, a in jax.tree_util.tree_leaves_with_path(g0)),
        jax.tree_util.tree_leaves(g1), strict=True)}
    shaping = [k for k in change if not k.startswith("vae/decoder/")]    # D_theta only feeds L_VAE
    gates = [k for k in change if k.startswith("moe/")]
    assert len(gates) == 6
    # Same function, same inputs but the mask: an unchanged gradient is equal to the last bit.
    if seg_maps == "fused":
        still = {k: f"{change[k]:.2g}" for k in shaping if not change[k] > 1e-5}
        assert not still, f"gradient does not follow the mask: {still}"
    else:
        assert all(change[k] < 1e-7 for k in gates), {k: change[k] for k in gates}


def test_vae_term_trains_the_vae_only():
    """Eq. 9 on sg(V_syn^global) (default `loss.vae_stop_gradient=True`): the VAE term's gradient
    reaches the VAE and nothing else, HSVS's fusion included; without the stop-gradient it reaches
    the global fusion. The values (forward) are the same either way."""
    grads, values = {}, {}
    for sg in (True, False):
        m = _method("demo", **{"loss.vae_stop_gradient": sg})
        params, features, batch = _random_inputs(m)
        g, values[sg] = _head_grad(m, "vae")(params, features, batch)
        grads[sg] = leaf_norms(g)
    for name in ("vae", "vae_recon", "vae_kl"):
        np.testing.assert_allclose(values[True][name], values[False][name], rtol=1e-6)
    outside = {k: v for k, v in grads[True].items() if not k.startswith("vae/")}
    assert outside and all(v == 0.0 for v in outside.values()), outside
    assert_gradient_reaches({"vae": {k[4:]: v for k, v in grads[True].items() if k.startswith("vae/")}},
                            ["vae/f_mu", "vae/f_logvar", "vae/decoder"])
    top = max(grads[False].values())
    for k in ("hsvs_global/mlp_out/kernel", "hsvs_global/v_dino/kernel", "hsvs_global/v_clip/kernel"):
        assert grads[False][k] > 1e-4 * top, (k, grads[False][k], top)


SIZE_KEYS = ("atf_dim", "atf_mlp_hidden", "attn_dim", "vae_hidden", "vae_latent", "gate_hidden",
             "bg_length", "state_length")


def _kinds(m):
    """The head's parameter paths, layer indices folded (hsvs_local_3/... -> hsvs_local_i/...)."""
    shapes = jax.eval_shape(lambda r: m.init_head(r, None), jax.random.PRNGKey(0))
    return {re.sub(r"_\d+/", "_i/", p) for p in _paths(shapes)}


def test_default_configs_and_their_demos_have_the_same_parameters():
    """Each ablation row at paper size has exactly the kinds of trainable parameters of its demo
    (the same options at tiny sizes), so the demo's gradient checks (the contract test for E, the
    next test for A-D) cover every parameter of the paper's configs."""
    for variant in ("E", "A", "B", "C", "D"):
        paper = _method(variant, **{f"backbones.{k}.weights": "" for k in
                                    (("clip",) if variant == "A" else ("clip", "dino"))})
        tiny = _method(f"demo,{variant}")
        for section in ("model", "loss"):
            differ = {k for k in paper.config[section]
                      if paper.config[section][k] != tiny.config[section][k]}
            assert differ <= set(SIZE_KEYS), (variant, differ)
        assert _kinds(paper) == _kinds(tiny), variant


@pytest.mark.parametrize("variant", ["A", "B", "C", "D"])
def test_no_trainable_parameter_of_an_ablation_is_dead(variant):
    """Every trainable leaf of the demo of each ablation row gets a gradient: none is identically
    zero (such as W_Q, W_K of a softmax over a single key). Row E (the default) is the contract
    test's demo."""
    tiny = _method(f"demo,{variant}")
    params, features, batch = _random_inputs(tiny)
    grads, _ = _head_grad(tiny)(params, features, batch)
    assert_gradient_reaches(grads, _paths(grads), rel=1e-6)


def test_dino_tokens_go_through_dinos_final_norm():
    """`model.dino_norm="final"` (default): DINO's tapped patch tokens leave through its final
    LayerNorm, like CLIP's through ln_post + proj; "raw": the residual stream itself."""
    normed, raw = _method("demo"), _method("demo", **{"model.dino_norm": "raw"})
    params = _numpy_params(jax.eval_shape(normed.init, jax.random.PRNGKey(0)))   # LN: identity affine
    rng = np.random.default_rng(0)
    host = {"images": {k: rng.normal(size=(2, v.size, v.size, 3)).astype(np.float32)
                       for k, v in normed.views.items()},
            "masks": np.zeros((2, 64, 64), np.float32), "labels": np.array([0, 1], np.int32),
            "class_name": np.array(["brick", "metal_nut"])}
    batch = normed.prepare_batch(host)
    a, b = (np.asarray(m.frozen_features(params, batch)["dino_local"]) for m in (normed, raw))
    np.testing.assert_allclose(a.mean(-1), 0.0, atol=1e-4)                   # standardized tokens
    np.testing.assert_allclose(a.std(-1), 1.0, rtol=1e-3)
    assert np.abs(b.std(-1) - 1.0).max() > 0.1                               # the raw stream is not
    centered = (b - b.mean(-1, keepdims=True)) / np.sqrt(b.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(a, centered, atol=1e-4)
    assert normed.feature_cache_key() != raw.feature_cache_key()


def test_evaluation_samples_z_with_one_fixed_draw():
    """Algorithm 1 line 7 ("the sampled z") at evaluation, deterministically: z = mu + eps sigma with
    one eps ~ N(0, I) drawn from config.seed and shared by all images, so an image's outputs do not
    depend on its batch; `model.eval_latent="mean"` uses z = mu."""
    m = _method("demo")
    params, features, batch = _random_inputs(m, size=3)
    forward = jax.jit(lambda f, b: m.forward_from_features(params, f, b, None))
    out = forward(features, batch)
    sigma = np.exp(0.5 * np.asarray(out["logvar"]))
    eps = (np.asarray(out["z"]) - np.asarray(out["mu"])) / sigma
    expected = jax.random.normal(jax.random.PRNGKey(m.config.seed), (m.model_cfg.vae_latent,))
    np.testing.assert_allclose(eps, np.broadcast_to(expected, eps.shape), rtol=1e-4, atol=1e-5)
    one = jax.tree_util.tree_map(lambda x: x[1:2], (features, batch))
    alone = forward(*one)
    np.testing.assert_allclose(alone["s_final"], out["s_final"][1:2], rtol=1e-5)
    np.testing.assert_allclose(alone["p_map"], out["p_map"][1:2], rtol=1e-5, atol=1e-7)
    mean = _method("demo", **{"model.eval_latent": "mean"})
    out_mean = jax.jit(lambda f, b: mean.forward_from_features(params, f, b, None))(features, batch)
    np.testing.assert_allclose(out_mean["z"], out_mean["mu"], rtol=1e-6)
    assert relative_error(out_mean["t_final"], out["t_final"]) > 1e-4
