"""SSVP method: real-size shapes (abstractly), configs, ablation switches, prompts from class names."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import assert_gradient_reaches

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
    assert c.backbones.dino.layers == (6, 12, 18, 22) and c.backbones.clip.layers == (6, 12, 18, 24)
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


def _numpy_params(shapes, seed=0):
    """Random params without compiling an init: LayerNorm scale 1, biases 0, alpha 0, else N(0, 0.05)."""
    rng = np.random.default_rng(seed)

    def make(path, s):
        name = path_str(path).rsplit("/", 1)[-1]
        if name in ("scale", "bias", "alpha"):
            return np.full(s.shape, 1.0 if name == "scale" else 0.0, np.float32)
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


def test_every_option_traces():
    """The non-default readings (docs/ssvp.md) build and trace with the right shapes."""
    m = _method("demo", **{"model.clip_projection": "learned", "model.latent_tokens": 4,
                           "model.local_score": "mean_maxpool", "model.global_score": "cosine",
                           "model.eval_latent": "sample", "loss.seg_maps": "fused",
                           "loss.class_mode": "probability", "loss.vae_reduction": "mean"})
    params = jax.eval_shape(m.init, jax.random.PRNGKey(0))
    assert params["head"]["clip_proj_0"]["kernel"].shape == (64, 32)     # CLIP width -> D_c
    assert params["head"]["text_latent"]["k_latent"]["kernel"].shape == (2, 32)   # 8 / 4 per token
    batch = {"images": {k: S((2, v.size, v.size, 3), jnp.float32) for k, v in m.views.items()},
             "masks": S((2, 64, 64), jnp.float32), "labels": S((2,), jnp.int32),
             "text": {"ids": S((2, 77), jnp.int32), "eot": S((2,), jnp.int32)}}
    total, terms = jax.eval_shape(m.loss, params, batch, jax.random.PRNGKey(0))
    assert total.shape == () and set(terms) == {"seg_focal", "cls_bce", "vae", "margin", "vae_recon",
                                                "vae_kl"}
    maps, scores = jax.eval_shape(m.anomaly_outputs, params, batch)
    assert maps.shape == (2, 64, 64) and scores.shape == (2,)
