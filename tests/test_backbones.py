"""The backbones API on tiny random models: shapes, taps, prefix tokens, text, options, loading."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import assert_trees_close, projection_objective

from zsad_jax import backbones
from zsad_jax.backbones import io


@pytest.fixture(scope="module")
def tiny():
    """{name: (model, params)} for the three tiny archs."""
    out = {}
    for i, name in enumerate(("clip-tiny", "dinov2-tiny", "dinov3-tiny")):
        model = backbones.build(name)
        out[name] = (model, backbones.init_params(model, jax.random.key(i)))
    return out


def _images(size, batch=2, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def test_known_arch_names():
    for name in ("clip-tiny", "dinov3-tiny", "dinov2-tiny", "clip-vit-l14-336", "dinov3-vitl16",
                 "clip-vit-b32", "clip-vit-b16", "clip-vit-l14", "dinov2-vitl14",
                 "dinov2-vitl14-reg", "dinov3-vits16", "dinov3-vitb16", "dinov3-vith16plus"):
        assert name in backbones.ARCHS
    h = backbones.ARCHS["dinov3-vith16plus"]
    assert h.gated_mlp and h.num_registers == 4 and not h.key_bias
    with pytest.raises(ValueError, match="Unknown backbone arch 'clip-tinyy'.*clip-tiny"):
        backbones.build("clip-tinyy")
    model = backbones.build(dict(backbones.ARCHS["dinov2-tiny"].to_dict(), depth=3))
    assert model.cfg.depth == 3


@pytest.mark.parametrize("name,size,prefix", [("clip-tiny", 56, 1), ("clip-tiny", 64, 1),
                                              ("dinov2-tiny", 48, 1), ("dinov3-tiny", 64, 5)])
def test_encode_image_shapes(tiny, name, size, prefix):
    model, params = tiny[name]
    out = model.apply({"params": params}, _images(size), layers=(2, 1), method="encode_image")
    grid = size // 8
    assert out.grid == (grid, grid) and out.num_prefix == prefix
    assert [x.shape for x in out.layers] == [(2, prefix + grid * grid, 64)] * 2
    assert out.pooled.shape == ((2, 32) if name == "clip-tiny" else (2, 64))
    assert out.patch_tokens(0).shape == (2, grid * grid, 64)
    # Tapped layers are distinct and in the requested order.
    assert not np.allclose(out.layers[0], out.layers[1])
    again = model.apply({"params": params}, _images(size), layers=(1,), method="encode_image")
    np.testing.assert_array_equal(again.layers[0], out.layers[1])


def test_bad_inputs_are_named(tiny):
    model, params = tiny["clip-tiny"]
    with pytest.raises(ValueError, match=r"1-based.*\[1, 2\]; got \[3\]"):
        model.apply({"params": params}, _images(64), layers=(3,), method="encode_image")
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        model.apply({"params": params}, _images(60), method="encode_image")
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        model.apply({"params": params}, jnp.zeros((2, 3, 64, 64)), method="encode_image")
    with pytest.raises(ValueError, match="prefix_pos_embed must be"):
        model.apply({"params": params}, _images(64), prefix_tokens=jnp.zeros((1, 2, 64)),
                    prefix_pos_embed=jnp.zeros((3, 64)), method="encode_image")
    with pytest.raises(ValueError, match="no text tower"):
        vision_only = backbones.build(dict(model.cfg.to_dict(), text_depth=0))
        p = backbones.init_params(vision_only, jax.random.key(0))
        vision_only.apply({"params": p}, jnp.zeros((1, 5), jnp.int32), method="encode_text")


@pytest.mark.parametrize("name", ["clip-tiny", "dinov3-tiny"])
def test_prefix_tokens_get_gradients(tiny, name):
    model, params = tiny[name]
    images = _images(64)

    def loss(prefix, pos):
        out = model.apply({"params": jax.lax.stop_gradient(params)}, images, layers=(1, 2),
                          prefix_tokens=prefix, prefix_pos_embed=pos, method="encode_image")
        return sum(jnp.sum(x[:, out.num_prefix:] ** 2) for x in out.layers) + out.pooled.sum()

    prefix = 0.1 * jax.random.normal(jax.random.key(1), (1, 2, 64))
    pos = 0.1 * jax.random.normal(jax.random.key(2), (2, 64))
    g_prefix, g_pos = jax.grad(loss, argnums=(0, 1))(prefix, pos)
    assert g_prefix.shape == (1, 2, 64) and float(jnp.abs(g_prefix).min(axis=-1).max()) > 0
    assert float(jnp.abs(g_pos).sum()) > 0
    out = model.apply({"params": params}, images, layers=(1,), prefix_tokens=prefix,
                      prefix_pos_embed=pos, method="encode_image")
    base = model.apply({"params": params}, images, layers=(1,), method="encode_image")
    assert out.num_prefix == base.num_prefix + 2
    assert out.layers[0].shape[1] == base.layers[0].shape[1] + 2
    batched = model.apply({"params": params}, images, layers=(1,),
                          prefix_tokens=jnp.repeat(prefix, 2, axis=0), prefix_pos_embed=pos,
                          method="encode_image")
    np.testing.assert_allclose(batched.layers[0], out.layers[0], atol=1e-6)


def test_text_paths_agree(tiny):
    model, params = tiny["clip-tiny"]
    tok = backbones.load_tokenizer("clip-tiny")
    ids = jnp.asarray(tok(["a photo of a damaged bottle", "a flawless screw"]))
    direct = model.apply({"params": params}, ids, method="encode_text")
    assert direct.shape == (2, 32)
    emb = model.apply({"params": params}, ids, method="embed_tokens")
    assert emb.shape == (2, 77, 64)
    eot = jnp.argmax(ids == tok.eot_token_id, axis=-1)
    via = model.apply({"params": params}, emb, eot, method="encode_text_embeddings")
    np.testing.assert_allclose(via, direct, atol=1e-6)
    # Causal: tokens after EOT (padding) do not change the embedding.
    padded = ids.at[:, -1].set(5)
    np.testing.assert_allclose(model.apply({"params": params}, padded, method="encode_text"),
                               direct, atol=1e-6)
    logits = backbones.logits(jnp.ones((3, 32)), direct, params["logit_scale"])
    assert logits.shape == (3, 2)


def test_project_image_tokens_is_ln_post_proj(tiny):
    model, params = tiny["clip-tiny"]
    out = model.apply({"params": params}, _images(64), layers=(2,), method="encode_image")
    projected = model.apply({"params": params}, out.layers[0], method="project_image_tokens")
    assert projected.shape == (2, 65, 32)
    # The pooled output is ln_post + proj of the final class token; with 2 blocks, layer 2 is it.
    np.testing.assert_allclose(projected[:, 0], out.pooled, atol=1e-5)
    dino, dparams = None, None
    dino, dparams = backbones.build("dinov2-tiny"), None
    dparams = backbones.init_params(dino, jax.random.key(0))
    dout = dino.apply({"params": dparams}, _images(64), layers=(2,), method="encode_image")
    normed = dino.apply({"params": dparams}, dout.layers[0], method="normalize_tokens")
    np.testing.assert_allclose(normed[:, 0], dout.pooled, atol=1e-5)


@pytest.mark.parametrize("name,policy", [("clip-tiny", "full"), ("dinov3-tiny", "full"),
                                         ("clip-tiny", "dots")])
def test_remat_changes_memory_not_values(tiny, name, policy):
    """Gradients of a well-conditioned objective (a random projection of the pooled output and of
    every tapped layer) are the same with and without remat, eagerly and under jit, to rounding."""
    model, params = tiny[name]
    remat = backbones.build(name, remat=policy)
    images = _images(64)

    tower = "visual" if "visual" in params else None     # CLIP: the image tower's params only

    def objective(m, vision):
        p = {**params, tower: vision} if tower else vision
        out = m.apply({"params": p}, images, layers=(1, 2), method="encode_image")
        return projection_objective((out.pooled, out.layers))

    vision = params[tower] if tower else params
    reference = jax.grad(lambda p: objective(model, p))(vision)
    for label, grad in (("jit", jax.jit(jax.grad(lambda p: objective(model, p)))),
                        ("remat", jax.grad(lambda p: objective(remat, p))),
                        ("jit+remat", jax.jit(jax.grad(lambda p: objective(remat, p))))):
        # The key bias shifts every logit of a query by the same amount, which softmax ignores:
        # its exact gradient is 0 and what is computed is rounding (compared with nothing).
        assert_trees_close(reference, grad(vision), rtol=1e-5, what=label,
                           skip=("['k']['bias']",))


def test_bfloat16_compute(tiny):
    model, params = tiny["clip-tiny"]
    bf16 = backbones.build("clip-tiny", dtype=jnp.bfloat16)
    images = _images(64)
    ref = model.apply({"params": params}, images, layers=(2,), method="encode_image")
    out = bf16.apply({"params": params}, images, layers=(2,), method="encode_image")
    assert out.layers[0].dtype == jnp.bfloat16
    err = jnp.abs(out.pooled.astype(jnp.float32) - ref.pooled).max() / jnp.abs(ref.pooled).max()
    assert float(err) < 5e-2


def test_vv_attention_path(tiny):
    model, params = tiny["clip-tiny"]
    dpam = backbones.build("clip-tiny", vv_from_layer=2)
    images = _images(64)
    ref = model.apply({"params": params}, images, layers=(1, 2), method="encode_image")
    out = dpam.apply({"params": params}, images, layers=(1, 2), method="encode_image")
    np.testing.assert_array_equal(out.layers[0], ref.layers[0])   # before layer 2: unchanged
    np.testing.assert_allclose(out.pooled, ref.pooled, atol=1e-6)  # normal stream unchanged
    assert not np.allclose(out.layers[1], ref.layers[1])
    # V-V stream of layer 2 = input of block 2 + out_proj(softmax(v v^T / sqrt(hd)) v).
    blk = params["visual"]["block1"]
    x = ref.layers[0]
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    h = (x - mu) / jnp.sqrt(var + 1e-5) * blk["ln1"]["scale"] + blk["ln1"]["bias"]
    v = (h @ blk["attn"]["v"]["kernel"] + blk["attn"]["v"]["bias"]).reshape(2, 65, 4, 16)
    att = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", v, v) / 4.0, axis=-1)
    vv = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(2, 65, 64)
    want = x + vv @ blk["attn"]["out"]["kernel"] + blk["attn"]["out"]["bias"]
    np.testing.assert_allclose(out.layers[1], want, atol=1e-4)
    with pytest.raises(ValueError, match="vv_from_layer=3"):
        backbones.build("clip-tiny", vv_from_layer=3)


def test_normalization():
    mean, std = backbones.normalization("clip-tiny")
    assert mean == (0.48145466, 0.4578275, 0.40821073)
    assert backbones.normalization("dinov3-vitl16") == ((0.485, 0.456, 0.406),
                                                        (0.229, 0.224, 0.225))
    model = backbones.build("dinov2-tiny")
    assert backbones.normalization(model) == backbones.normalization(model.cfg)
    x = jnp.full((1, 2, 2, 3), 0.5)
    np.testing.assert_allclose(backbones.normalize_images(x, "clip-tiny")[0, 0, 0],
                               (0.5 - np.array(mean)) / np.array(std), rtol=1e-6)


def test_load_round_trip_and_overrides(tiny, tmp_path):
    model, params = tiny["clip-tiny"]
    io.write_folder(tmp_path, model.cfg, params)
    loaded, loaded_params = backbones.load(tmp_path, pos_interpolation="bilinear",
                                           dtype=jnp.bfloat16)
    assert loaded.cfg == model.cfg and loaded.pos_interpolation == "bilinear"
    assert loaded.dtype == jnp.bfloat16
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded_params),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    # A params tree that does not fit the architecture is reported key by key.
    bad = jax.tree_util.tree_map(np.asarray, params)
    bad["visual"]["pos_embed"] = bad["visual"]["pos_embed"][:10]
    del bad["visual"]["ln_post"]
    io.write_folder(tmp_path / "bad", model.cfg, bad)
    with pytest.raises(ValueError, match=r"missing visual/ln_post/bias.*visual/pos_embed: shape"):
        backbones.load(tmp_path / "bad")


def test_importing_never_imports_torch_or_tensorflow():
    import subprocess
    import sys

    code = ("import sys, zsad_jax.backbones, weights_conversion.convert, weights_conversion.hf; "
            "bad = [m for m in ('torch', 'tensorflow') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
