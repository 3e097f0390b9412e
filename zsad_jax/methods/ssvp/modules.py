"""SSVP's trainable modules (SSVP, arXiv 2601.09147, eqs. 2-19), on arrays only.

The backbones stay outside: everything here takes CLIP / DINO token arrays and text embeddings.

* `ATF`              HSVS Adaptive Token Features fusion, eqs. 2-5 (or plain concatenation, ablation B).
* `DecoupledPrompts` decoupled learnable prompts [V]_bg, [V]_state, [CLASS], eq. 6.
* `VisualVAE`        probabilistic encoder / decoder on V_syn^global, eqs. 7-9.
* `TextLatentAttention`  text-latent cross-attention, eq. 10.
* `GatedInjection`   T_final = LayerNorm(T_init + alpha * delta), eq. 11 (alpha initialised to 0).
* `AnomalyMoE`       global scale gating + local spatial gating, eqs. 15-17 (Algorithm 2).
* pure functions     cosine maps and softmax over normal/abnormal (eqs. 13-14), local evidence (eq. 18),
                     final score (eq. 19).

Reading choices where the paper is silent are listed in docs/ssvp.md and in `method.py`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from zsad_jax.ops import l2_normalize


def cross_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
    """Softmax(Q K^T / sqrt(d)) V (SSVP eqs. 3 and 10). q (B, N, d), k (B, M, d), v (B, M, e) -> (B, N, e)."""
    scale = 1.0 / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
    weights = jax.nn.softmax(jnp.einsum("bnd,bmd->bnm", q, k) * scale, axis=-1)
    return jnp.einsum("bnm,bme->bne", weights, v)


class ATF(nn.Module):
    """HSVS Adaptive Token Features fusion for one (CLIP, DINO) token pair (SSVP eqs. 2-5).

    clip (B, N, D_c), dino (B, N, D_d) -> V_syn (B, N, D_c). Used per tapped layer on the patch
    tokens (local branch) and once on the global tokens (global branch: N = 1, CLIP's image
    embedding and DINO's class token; N = L, the tapped layers' class tokens, with
    `model.global_tokens="layers"`).
    With N = 1 eq. 3's softmax has a single key (weight 1): Attn_{c->d} = V_d, Attn_{d->c} = V_c
    exactly, and W_Q, W_K could never learn, so they are not created.
    `fusion="concat"` is ablation model B: the two cross-attentions are removed and the projected
    values are concatenated instead (Z = [LN(F^c W_V^c) || LN(F^d W_V^d)]); everything else stays.
    """

    dim: int                 # d_head of eq. 2
    mlp_hidden: int          # hidden width of the 2-layer GELU MLP of eq. 5
    fusion: str = "atf"      # "atf" | "concat"

    @nn.compact
    def __call__(self, clip: jnp.ndarray, dino: jnp.ndarray) -> jnp.ndarray:
        if clip.shape[:-1] != dino.shape[:-1]:
            raise ValueError(f"ATF needs the same token grid from both backbones; got CLIP tokens "
                             f"{clip.shape} and DINO tokens {dino.shape} (SSVP sec. 4.2: choose the "
                             f"image sizes so that both give the same patch grid)")
        dense = lambda name: nn.Dense(self.dim, use_bias=False, name=name)
        v_d = dense("v_dino")(dino)                                    # eq. 2
        v_c = dense("v_clip")(clip)
        if self.fusion == "atf" and clip.shape[-2] > 1:
            q_c, k_d = dense("q_clip")(clip), dense("k_dino")(dino)   # eq. 2
            q_d, k_c = dense("q_dino")(dino), dense("k_clip")(clip)
            clip_to_dino = cross_attention(q_c, k_d, v_d)              # eq. 3, Attn_{c->d}
            dino_to_clip = cross_attention(q_d, k_c, v_c)              # eq. 3, Attn_{d->c}
        elif self.fusion == "atf":                                      # eq. 3 with one key
            clip_to_dino, dino_to_clip = v_d, v_c
        else:                                                           # "concat" (model B)
            clip_to_dino, dino_to_clip = v_c, v_d
        joint = jnp.concatenate([nn.LayerNorm(name="norm_clip_to_dino")(clip_to_dino),
                                 nn.LayerNorm(name="norm_dino_to_clip")(dino_to_clip)], axis=-1)  # eq. 4
        h = nn.gelu(nn.Dense(self.mlp_hidden, name="mlp_in")(joint), approximate=False)
        return clip + nn.Dense(clip.shape[-1], name="mlp_out")(h)     # eq. 5


class DecoupledPrompts(nn.Module):
    """Decoupled learnable prompts t = [V]_bg, [V]_state, [CLASS] (SSVP eq. 6).

    [V]_bg (L_bg, E) is shared by all prompts; [V]_state has one (L_state, E) sequence per prompt:
    `num_prompts` normal ones (bank P_n) and `num_prompts` abnormal ones (bank P_a).
    token_embeddings (B, C, E): embedded token ids "<sot> X...X class words . <eot>" whose positions
    1 .. L_bg + L_state are placeholders -> (B, 2, K, C, E) with the placeholders replaced.
    """

    num_prompts: int         # K prompts per bank (3 in the paper)
    bg_length: int           # L_bg
    state_length: int        # L_state
    init_std: float = 0.02

    @nn.compact
    def __call__(self, token_embeddings: jnp.ndarray) -> jnp.ndarray:
        b, c, e = token_embeddings.shape
        init = nn.initializers.normal(self.init_std)
        bg = self.param("bg", init, (self.bg_length, e))
        state = self.param("state", init, (2, self.num_prompts, self.state_length, e))
        n_ctx = self.bg_length + self.state_length
        if 1 + n_ctx >= c:
            raise ValueError(f"prompt context {n_ctx} tokens does not fit the text context {c}")
        ctx = jnp.concatenate(
            [jnp.broadcast_to(bg, (2, self.num_prompts, self.bg_length, e)), state], axis=2)
        ctx = jnp.broadcast_to(ctx.astype(token_embeddings.dtype), (b, *ctx.shape))
        tokens = jnp.broadcast_to(token_embeddings[:, None, None], (b, 2, self.num_prompts, c, e))
        return tokens.at[:, :, :, 1:1 + n_ctx].set(ctx)


class _MLP(nn.Module):
    hidden: int
    out: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.out, name="fc2")(nn.gelu(nn.Dense(self.hidden, name="fc1")(x),
                                                      approximate=False))


class VisualVAE(nn.Module):
    """VAE on V_syn^global (SSVP eqs. 7-9): two parallel MLPs F_mu, F_sigma and a decoder D_theta."""

    hidden: int
    latent: int
    out_dim: int             # D of V_syn^global

    def setup(self):
        self.f_mu = _MLP(self.hidden, self.latent)
        self.f_logvar = _MLP(self.hidden, self.latent)
        self.decoder = _MLP(self.hidden, self.out_dim)

    def encode(self, v: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """v (B, D) -> (mu, log sigma^2), each (B, latent) (eq. 7)."""
        return self.f_mu(v), self.f_logvar(v)

    def decode(self, z: jnp.ndarray) -> jnp.ndarray:
        """z (B, latent) -> reconstruction D_theta(z) (B, D) (eq. 9)."""
        return self.decoder(z)

    def __call__(self, v):
        mu, _ = self.encode(v)
        return self.decode(mu)


def reparameterize(mu: jnp.ndarray, logvar: jnp.ndarray, eps: jnp.ndarray) -> jnp.ndarray:
    """z = mu + eps * exp(log sigma^2 / 2) (SSVP eq. 8)."""
    return mu + eps * jnp.exp(0.5 * logvar)


class TextLatentAttention(nn.Module):
    """delta_inj = Softmax(Q_text K_z^T / sqrt(d_k)) V_z, Q_text = T_init W_Q (SSVP eq. 10).

    text (B, P, E) = T_init of the P prompts, z (B, Z) -> delta_inj (B, P, E).
    z gives `tokens` key/value tokens: "project": K_z = z W_K, V_z = z W_V with W_K (Z, T d_k),
    W_V (Z, T E) read as T tokens; "split": z cut into T chunks (B, T, Z / T), each projected by
    the same W_K (Z / T, d_k), W_V (Z / T, E). With T = 1 the softmax weight is 1 and
    delta_inj = z W_V for every prompt: W_Q and W_K could never learn and are not created.
    """

    dim: int                 # d_k
    tokens: int = 1          # T
    keys: str = "project"    # "project" | "split"

    @nn.compact
    def __call__(self, text: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
        b, t, e = z.shape[0], self.tokens, text.shape[-1]
        dense = lambda n, name: nn.Dense(n, use_bias=False, name=name)
        if t == 1:
            return jnp.broadcast_to(dense(e, "v_latent")(z)[:, None], text.shape)
        if self.keys == "split":
            chunks = z.reshape(b, t, z.shape[-1] // t)
            k, v = dense(self.dim, "k_latent")(chunks), dense(e, "v_latent")(chunks)
        elif self.keys == "project":
            k = dense(t * self.dim, "k_latent")(z).reshape(b, t, self.dim)
            v = dense(t * e, "v_latent")(z).reshape(b, t, e)
        else:
            raise ValueError(f"config.model.latent_keys={self.keys!r}: use 'project' or 'split'")
        return cross_attention(dense(self.dim, "q_text")(text), k, v)


class GatedInjection(nn.Module):
    """T_final = LayerNorm(T_init + alpha * delta_inj), alpha a learnable scalar initialised to 0 (eq. 11)."""

    @nn.compact
    def __call__(self, t_init: jnp.ndarray, delta: jnp.ndarray) -> jnp.ndarray:
        alpha = self.param("alpha", nn.initializers.zeros, ())
        return nn.LayerNorm(name="norm")(t_init + alpha.astype(t_init.dtype) * delta)


def bank_embeddings(text: jnp.ndarray) -> jnp.ndarray:
    """(B, 2, K, E) prompt embeddings -> (B, 2, E): mean of the L2-normalised prompts of each bank."""
    return l2_normalize(text).mean(axis=2)


def anomaly_probabilities(visual: jnp.ndarray, banks: jnp.ndarray, tau: float) -> jnp.ndarray:
    """Cosine maps (eq. 13) and softmax over normal/abnormal with temperature tau (eq. 14).

    visual (B, ..., E) (patches or one global vector), banks (B, 2, E) [normal, abnormal]
    -> P_anom (B, ...) in [0, 1].
    """
    v = l2_normalize(visual)
    t = l2_normalize(banks)
    sims = jnp.einsum("b...e,bke->b...k", v, t)                       # eq. 13
    return jax.nn.softmax(sims / tau, axis=-1)[..., 1]                 # eq. 14


class AnomalyMoE(nn.Module):
    """Dual-gated aggregation of the layer experts (SSVP eqs. 15-17, Algorithm 2).

    probs (B, L, N) = P_anom^(l); local (B, L, N, E) = V_syn^local,(l); global_feature (B, E)
    -> (P_map (B, N), w_scale (B, L), M_spatial (B, L, N)).
    The local gate F_gate^local (a 1x1 conv = a Dense on each token) is shared by the layers.
    """

    gate_hidden: int

    @nn.compact
    def __call__(self, probs, local, global_feature):
        num_layers = probs.shape[1]
        scale_logits = _MLP(self.gate_hidden, num_layers, name="global_gate")(global_feature)
        w_scale = jax.nn.softmax(scale_logits, axis=-1)                           # eq. 15
        m_spatial = jax.nn.sigmoid(nn.Dense(1, name="local_gate")(local)[..., 0])  # eq. 16
        p_map = jnp.einsum("bl,bln->bn", w_scale, m_spatial * probs)              # eq. 17
        return p_map, w_scale, m_spatial


def local_evidence(p_map: jnp.ndarray, mode: str = "max", pool: int = 3) -> jnp.ndarray:
    """S_local from P_map (B, H, W) -> (B,).

    "max": max over h, w (eq. 18). "mean_maxpool": Algorithm 1 line 10, Mean(SpatialMaxPool(P_map)):
    a `pool` x `pool` stride-1 max-pool ("same" padding) followed by the spatial mean.
    """
    if mode == "max":
        return p_map.max(axis=(1, 2))
    if mode == "mean_maxpool":
        pooled = jax.lax.reduce_window(p_map, -jnp.inf, jax.lax.max, (1, pool, pool), (1, 1, 1), "SAME")
        return pooled.mean(axis=(1, 2))
    raise ValueError(f"config.model.local_score={mode!r}: use 'max' (eq. 18) or 'mean_maxpool' (Alg. 1)")


def final_score(s_global: jnp.ndarray, s_local: jnp.ndarray, gamma: float) -> jnp.ndarray:
    """S_final = (1 - gamma) S_global + gamma S_local (SSVP eq. 19)."""
    return (1.0 - gamma) * s_global + gamma * s_local
