"""SSVP modules and losses on small arrays vs direct numpy transcriptions of the paper's equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zsad_jax.methods.ssvp import losses as L
from zsad_jax.methods.ssvp import modules as M

RNG = np.random.default_rng(0)


def _np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_ln(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def _np_gelu(x):
    from scipy.special import erf
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _np_mlp(p, x):
    h = _np_gelu(x @ np.asarray(p["fc1"]["kernel"]) + np.asarray(p["fc1"]["bias"]))
    return h @ np.asarray(p["fc2"]["kernel"]) + np.asarray(p["fc2"]["bias"])


def _randomize(params, seed=1):
    """Non-trivial values for every parameter (LayerNorm scales != 1, biases != 0, alpha != 0)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_unflatten(
        tree, [jnp.asarray(rng.normal(0, 0.3, np.shape(x)) + (1.0 if np.ndim(x) == 1 else 0.0),
                           jnp.float32) for x in leaves])


def _np_attn(q, k, v):
    return _np_softmax(q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])) @ v


@pytest.mark.parametrize("fusion, tokens", [("atf", 5), ("concat", 5), ("atf", 1)])
def test_atf_matches_equations_2_to_5(fusion, tokens):
    fc = RNG.normal(size=(2, tokens, 12)).astype(np.float32)
    fd = RNG.normal(size=(2, tokens, 10)).astype(np.float32)
    mod = M.ATF(dim=8, mlp_hidden=16, fusion=fusion)
    p = _randomize(mod.init(jax.random.PRNGKey(0), fc, fd)["params"])
    out = np.asarray(mod.apply({"params": p}, fc, fd))
    W = {k: np.asarray(v["kernel"]) for k, v in p.items() if "kernel" in v and "norm" not in k}
    if fusion == "atf" and tokens > 1:
        assert set(W) >= {"q_clip", "k_clip", "v_clip", "q_dino", "k_dino", "v_dino"}
        a_cd = _np_attn(fc @ W["q_clip"], fd @ W["k_dino"], fd @ W["v_dino"])   # eq. 3
        a_dc = _np_attn(fd @ W["q_dino"], fc @ W["k_clip"], fc @ W["v_clip"])
    elif fusion == "atf":
        # One token per side (the global pair): eq. 3's softmax weight is 1, Attn = V, and the
        # W_Q, W_K that could never learn are not created.
        assert set(W) == {"v_clip", "v_dino", "mlp_in", "mlp_out"}
        a_cd, a_dc = fd @ W["v_dino"], fc @ W["v_clip"]
    else:  # ablation B: no attention parameters at all
        assert not {"q_clip", "k_clip", "q_dino", "k_dino"} & set(p)
        a_cd, a_dc = fc @ W["v_clip"], fd @ W["v_dino"]
    z = np.concatenate([_np_ln(a_cd, p["norm_clip_to_dino"]["scale"], p["norm_clip_to_dino"]["bias"]),
                        _np_ln(a_dc, p["norm_dino_to_clip"]["scale"], p["norm_dino_to_clip"]["bias"])],
                       -1)                                                         # eq. 4
    h = _np_gelu(z @ W["mlp_in"] + np.asarray(p["mlp_in"]["bias"]))
    expected = fc + h @ W["mlp_out"] + np.asarray(p["mlp_out"]["bias"])           # eq. 5
    np.testing.assert_allclose(out, expected, atol=1e-5)
    if fusion == "atf" and tokens == 1:      # the same function as the full eq. 3 with one key
        full = {**p, **{k: {"kernel": jnp.asarray(RNG.normal(size=(n, 8)), jnp.float32)}
                        for k, n in (("q_clip", 12), ("k_clip", 12), ("q_dino", 10), ("k_dino", 10))}}
        a_cd1 = _np_attn(fc @ np.asarray(full["q_clip"]["kernel"]),
                         fd @ np.asarray(full["k_dino"]["kernel"]), fd @ W["v_dino"])
        np.testing.assert_allclose(a_cd1, a_cd, rtol=1e-6)


def test_atf_rejects_mismatched_grids():
    mod = M.ATF(dim=4, mlp_hidden=4)
    with pytest.raises(ValueError, match="same token grid"):
        mod.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 6)), jnp.zeros((1, 9, 6)))


def test_prompt_learner_places_context_after_sot():
    emb = RNG.normal(size=(2, 10, 6)).astype(np.float32)
    mod = M.DecoupledPrompts(num_prompts=3, bg_length=2, state_length=1)
    p = mod.init(jax.random.PRNGKey(0), emb)["params"]
    out = np.asarray(mod.apply({"params": p}, emb))
    assert out.shape == (2, 2, 3, 10, 6)
    bg, state = np.asarray(p["bg"]), np.asarray(p["state"])
    for b in range(2):
        for s in range(2):
            for k in range(3):
                np.testing.assert_array_equal(out[b, s, k, 0], emb[b, 0])          # <sot>
                np.testing.assert_array_equal(out[b, s, k, 1:3], bg)               # shared [V]_bg
                np.testing.assert_array_equal(out[b, s, k, 3], state[s, k, 0])     # [V]_state
                np.testing.assert_array_equal(out[b, s, k, 4:], emb[b, 4:])        # [CLASS] . <eot>


def test_vae_and_reparameterization_equations_7_8():
    v = RNG.normal(size=(3, 12)).astype(np.float32)
    mod = M.VisualVAE(hidden=16, latent=4, out_dim=12)
    p = _randomize(mod.init(jax.random.PRNGKey(0), v)["params"])
    mu, logvar = mod.apply({"params": p}, v, method=M.VisualVAE.encode)
    np.testing.assert_allclose(mu, _np_mlp(p["f_mu"], v), atol=1e-5)               # eq. 7
    np.testing.assert_allclose(logvar, _np_mlp(p["f_logvar"], v), atol=1e-5)
    eps = RNG.normal(size=mu.shape).astype(np.float32)
    z = M.reparameterize(mu, logvar, eps)
    np.testing.assert_allclose(z, np.asarray(mu) + eps * np.sqrt(np.exp(np.asarray(logvar))),
                               rtol=1e-5, atol=1e-5)                                # eq. 8
    rec = mod.apply({"params": p}, z, method=M.VisualVAE.decode)
    np.testing.assert_allclose(rec, _np_mlp(p["decoder"], np.asarray(z)), atol=1e-5)


def test_vae_loss_equation_9():
    v, r = RNG.normal(size=(2, 5)), RNG.normal(size=(2, 5))
    mu, lv = RNG.normal(size=(2, 3)), RNG.normal(size=(2, 3))
    var = np.exp(lv)
    kl = 0.5 * (var + mu ** 2 - 1 - np.log(var)).sum(-1)      # closed form of KL(N(mu,var)||N(0,1))
    total, terms = L.vae_loss(v, r, mu, lv, beta=0.1)
    np.testing.assert_allclose(total, (((v - r) ** 2).sum(-1) + 0.1 * kl).mean(), rtol=1e-5)
    np.testing.assert_allclose(terms["vae_kl"], kl.mean(), rtol=1e-5)
    mean_total, _ = L.vae_loss(v, r, mu, lv, beta=0.1, reduction="mean")
    np.testing.assert_allclose(mean_total, (((v - r) ** 2).mean(-1) + 0.1 * kl).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="vae_reduction"):
        L.vae_loss(v, r, mu, lv, beta=0.1, reduction="median")


@pytest.mark.parametrize("keys", ["project", "split"])
def test_text_latent_attention_equation_10(keys):
    t = RNG.normal(size=(2, 6, 8)).astype(np.float32)
    z = RNG.normal(size=(2, 12)).astype(np.float32)
    mod = M.TextLatentAttention(dim=4, tokens=3, keys=keys)
    p = _randomize(mod.init(jax.random.PRNGKey(0), t, z)["params"])
    out = np.asarray(mod.apply({"params": p}, t, z))
    W = {k: np.asarray(v["kernel"]) for k, v in p.items()}
    if keys == "project":            # K_z = z W_K, V_z = z W_V, each read as 3 tokens
        k, v = (z @ W["k_latent"]).reshape(2, 3, 4), (z @ W["v_latent"]).reshape(2, 3, 8)
    else:                            # z cut into 3 chunks of 4, each projected by W_K, W_V
        k, v = z.reshape(2, 3, 4) @ W["k_latent"], z.reshape(2, 3, 4) @ W["v_latent"]
    np.testing.assert_allclose(out, _np_attn(t @ W["q_text"], k, v), rtol=1e-5, atol=1e-6)
    # Not degenerate: each prompt gets its own delta, and W_Q, W_K learn.
    assert np.abs(out[:, 0] - out[:, 1]).max() > 1e-2 * np.abs(out).max()
    grads = jax.grad(lambda q: (mod.apply({"params": q}, t, z) * t).sum())(p)
    for name in ("q_text", "k_latent"):
        assert np.linalg.norm(grads[name]["kernel"]) > 1e-3 * np.linalg.norm(grads["v_latent"]["kernel"])


def test_text_latent_attention_with_one_token_has_no_query_or_key():
    """One key/value token (z one vector): the softmax weight is 1, delta = z W_V for every prompt,
    and W_Q, W_K (which could never get a gradient) are not created."""
    t = RNG.normal(size=(2, 6, 8)).astype(np.float32)
    z = RNG.normal(size=(2, 5)).astype(np.float32)
    mod = M.TextLatentAttention(dim=4, tokens=1)
    p = _randomize(mod.init(jax.random.PRNGKey(0), t, z)["params"])
    assert set(p) == {"v_latent"}
    out = mod.apply({"params": p}, t, z)
    w_v = np.asarray(p["v_latent"]["kernel"])
    np.testing.assert_allclose(out, np.broadcast_to((z @ w_v)[:, None], out.shape), rtol=1e-5)
    w_qk = {n: RNG.normal(size=s).astype(np.float32) for n, s in (("q", (8, 4)), ("k", (5, 4)))}
    np.testing.assert_allclose(out, _np_attn(t @ w_qk["q"], (z @ w_qk["k"])[:, None],
                                             (z @ w_v)[:, None]), rtol=1e-5)   # eq. 10, 1 key


def test_gated_injection_equation_11_and_alpha_zero_at_init():
    t, d = RNG.normal(size=(2, 6, 8)).astype(np.float32), RNG.normal(size=(2, 6, 8)).astype(np.float32)
    mod = M.GatedInjection()
    p = mod.init(jax.random.PRNGKey(0), t, d)["params"]
    assert float(p["alpha"]) == 0.0
    ones, zeros = np.ones(8), np.zeros(8)
    np.testing.assert_allclose(mod.apply({"params": p}, t, d), _np_ln(t, ones, zeros), atol=1e-5)
    p = _randomize(p)
    expected = _np_ln(t + float(p["alpha"]) * d, p["norm"]["scale"], p["norm"]["bias"])
    np.testing.assert_allclose(mod.apply({"params": p}, t, d), expected, atol=1e-5)


def test_margin_loss_equation_12():
    t_init = RNG.normal(size=(4, 8)).astype(np.float32)
    inside = t_init + 0.01 * RNG.normal(size=(4, 8)).astype(np.float32)   # cos ~ 1 > xi
    assert float(L.margin_loss(inside, t_init, 0.85)) == 0.0
    far = RNG.normal(size=(4, 8)).astype(np.float32)
    cos = (far * t_init).sum(-1) / np.linalg.norm(far, axis=-1) / np.linalg.norm(t_init, axis=-1)
    np.testing.assert_allclose(L.margin_loss(far, t_init, 0.85), np.maximum(0, 0.85 - cos).mean(),
                               rtol=1e-5)
    g_init = jax.grad(lambda a: L.margin_loss(far, a, 0.85))(jnp.asarray(t_init))
    g_final = jax.grad(lambda a: L.margin_loss(a, t_init, 0.85))(jnp.asarray(far))
    assert np.all(np.asarray(g_init) == 0) and np.any(np.asarray(g_final) != 0)
    assert np.all(np.asarray(jax.grad(lambda a: L.margin_loss(a, t_init, 0.85))(inside)) == 0)


def test_anomaly_probabilities_equations_13_14():
    v = RNG.normal(size=(2, 7, 8)).astype(np.float32)
    banks = RNG.normal(size=(2, 2, 8)).astype(np.float32)
    vn = v / np.linalg.norm(v, axis=-1, keepdims=True)
    tn = banks / np.linalg.norm(banks, axis=-1, keepdims=True)
    m = np.einsum("bne,bke->bnk", vn, tn)                                  # eq. 13
    expected = np.exp(m[..., 1] / 0.07) / (np.exp(m[..., 0] / 0.07) + np.exp(m[..., 1] / 0.07))
    np.testing.assert_allclose(M.anomaly_probabilities(v, banks, 0.07), expected, rtol=1e-5)
    # A single global vector per image works the same way.
    np.testing.assert_allclose(M.anomaly_probabilities(v[:, 0], banks, 0.07), expected[:, 0], rtol=1e-5)


def test_bank_embeddings_average_normalized_prompts():
    t = RNG.normal(size=(2, 2, 3, 8)).astype(np.float32)
    expected = (t / np.linalg.norm(t, axis=-1, keepdims=True)).mean(2)
    np.testing.assert_allclose(M.bank_embeddings(t), expected, rtol=1e-5)


def test_anomaly_moe_equations_15_to_17():
    b, n_layers, n, e = 2, 3, 6, 8
    probs = RNG.uniform(size=(b, n_layers, n)).astype(np.float32)
    local = RNG.normal(size=(b, n_layers, n, e)).astype(np.float32)
    glob = RNG.normal(size=(b, e)).astype(np.float32)
    mod = M.AnomalyMoE(gate_hidden=5)
    p = _randomize(mod.init(jax.random.PRNGKey(0), probs, local, glob)["params"])
    p_map, w, mask = mod.apply({"params": p}, probs, local, glob)
    w_np = _np_softmax(_np_mlp(p["global_gate"], glob))                                    # eq. 15
    kernel, bias = np.asarray(p["local_gate"]["kernel"]), np.asarray(p["local_gate"]["bias"])
    mask_np = 1 / (1 + np.exp(-((local @ kernel)[..., 0] + bias[0])))                       # eq. 16
    p_np = sum(w_np[:, i, None] * mask_np[:, i] * probs[:, i] for i in range(n_layers))     # eq. 17
    np.testing.assert_allclose(w, w_np, rtol=1e-5)
    np.testing.assert_allclose(mask, mask_np, rtol=1e-5)
    np.testing.assert_allclose(p_map, p_np, rtol=1e-5)


def test_local_evidence_and_final_score_equations_18_19():
    pm = RNG.uniform(size=(2, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(M.local_evidence(pm, "max"), pm.max(axis=(1, 2)))           # eq. 18
    padded = np.pad(pm, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    pooled = np.stack([[[padded[b, i:i + 3, j:j + 3].max() for j in range(5)] for i in range(4)]
                       for b in range(2)])
    np.testing.assert_allclose(M.local_evidence(pm, "mean_maxpool", 3), pooled.mean(axis=(1, 2)),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="local_score"):
        M.local_evidence(pm, "median")
    np.testing.assert_allclose(M.final_score(np.array([0.2]), np.array([0.8]), 0.5), [0.5])  # eq. 19
    np.testing.assert_allclose(M.final_score(np.array([0.2]), np.array([0.8]), 0.25), [0.35])


def test_segmentation_and_classification_losses_equations_20_21():
    p = RNG.uniform(0.05, 0.95, size=(2, 3, 4, 4))
    y = (RNG.uniform(size=(2, 4, 4)) > 0.7).astype(np.float32)
    focal = lambda q: (-(y * (1 - q) ** 2 * np.log(q) + (1 - y) * q ** 2 * np.log(1 - q))).mean()
    np.testing.assert_allclose(L.segmentation_loss(p, y, 2.0), sum(focal(p[:, i]) for i in range(3)),
                               rtol=1e-5)                                                  # eq. 20
    s, lab = np.array([0.3, 0.9], np.float32), np.array([0, 1], np.float32)
    sig = 1 / (1 + np.exp(-s))
    bce = lambda q: -(lab * np.log(q) + (1 - lab) * np.log(1 - q)).mean()
    np.testing.assert_allclose(L.classification_loss(s, lab, "sigmoid"), bce(sig), rtol=1e-5)  # eq. 21
    np.testing.assert_allclose(L.classification_loss(s, lab, "probability"), bce(s), rtol=1e-5)
    np.testing.assert_allclose(L.total_loss(1.0, 2.0, 3.0, 4.0, 1.0, 0.5), 1 + 2 + 3 + 2)    # eq. 22
