"""VisualAD's trainable part: anomaly/normal tokens, SCA and SAF (VisualAD, CVPR 2026).

* `SpatialCrossAttention` (SCA, one per tapped layer): m learnable anchor queries attend over the
  layer's patches (keys carry a learnable position encoding); a sigmoid gate computed from the
  token weights the m aggregated anchors; the result is added to the token with a learnable scale.
* `SelfAlignment` (SAF, one per tapped layer): Linear -> GELU -> Linear on each patch feature.
* `VisualADHead`: the tokens t_a, t_n with their own position embeddings (inserted into the frozen
  ViT by the method), one SCA + one SAF per layer, and the per-layer patch scores.

Where the summary is silent, shapes and defaults are facts read from the official release
(GitHub 7HHHHH/VisualAD, `utils/spatial_cross_attention.py`, `utils/feature_transform.py`,
`train.py`): projections q/k/v without bias, LayerNorm (eps 1e-5) on projected queries and keys,
output projection after the gated sum, dropout 0.1 on the attention weights and the output,
residual scale initialised to 0.01, anchors m = 4, position encoding table of 1536 rows (sliced to
the number of patches), SAF hidden width = D with exact (erf) GELU and dropout 0.1, no residual.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from zsad_jax.methods.visualad.losses import contrastive_difference

TORCH_LN_EPS = 1e-5


def _normal(std: float):
    return nn.initializers.normal(stddev=std)


class SpatialCrossAttention(nn.Module):
    """SCA for one layer: tokens (B, K, D) + patches (B, N, D) -> enhanced tokens (B, K, D).

        A = softmax(Q_anchor (P + E_pos)^T / sqrt(d)),  U = A P          (VisualAD SCA, eq. A/U)
        g(t) = sigmoid(W_g t) in R^m                                      (token-guided gate)
        t~ = t + alpha * sum_i g_i(t) u_i                                  (residual, alpha learnable)

    Q_anchor, keys and values go through their own projections (q_proj + LN, k_proj + LN, v_proj)
    and the gated sum through `out_proj` before the residual (official release). The K tokens
    (anomaly and normal) share the attention and have their own gates.
    """

    num_anchors: int = 4
    max_patches: int = 1536
    dropout: float = 0.1
    res_scale_init: float = 0.01

    @nn.compact
    def __call__(self, tokens: jax.Array, patches: jax.Array, deterministic: bool = True) -> jax.Array:
        b, n, d = patches.shape
        if n > self.max_patches:
            raise ValueError(f"SCA: {n} patches exceed model.sca_max_patches={self.max_patches}; "
                             "raise it (the position-encoding table has one row per patch)")
        xavier = nn.initializers.xavier_uniform()
        anchors = self.param("anchor_queries", _normal(0.02), (self.num_anchors, d))
        pos = self.param("pos_encoding", _normal(0.02), (self.max_patches, d))
        q = nn.LayerNorm(epsilon=TORCH_LN_EPS, name="q_norm")(
            nn.Dense(d, use_bias=False, kernel_init=xavier, name="q_proj")(anchors))       # (m, D)
        k = nn.LayerNorm(epsilon=TORCH_LN_EPS, name="k_norm")(
            nn.Dense(d, use_bias=False, kernel_init=xavier, name="k_proj")(patches + pos[:n]))  # (B, N, D)
        v = nn.Dense(d, use_bias=False, kernel_init=xavier, name="v_proj")(patches)        # (B, N, D)
        attn = jax.nn.softmax(jnp.einsum("md,bnd->bmn", q, k) * d ** -0.5, axis=-1)         # (B, m, N)
        # The release calls SCA once per token, so each token draws its own dropout mask on
        # the shared attention: one copy of A per token.
        attn = jnp.broadcast_to(attn[:, None], (b, tokens.shape[1], *attn.shape[1:]))      # (B, K, m, N)
        attn = nn.Dropout(self.dropout)(attn, deterministic=deterministic)
        anchor_out = jnp.einsum("bkmn,bnd->bkmd", attn, v)                                 # U: (B, K, m, D)
        gate = jax.nn.sigmoid(nn.Dense(self.num_anchors, name="gate")(tokens))            # (B, K, m)
        gated = jnp.einsum("bkm,bkmd->bkd", gate, anchor_out)                              # (B, K, D)
        out = nn.Dense(d, kernel_init=xavier, bias_init=nn.initializers.zeros, name="out_proj")(gated)
        out = nn.Dropout(self.dropout)(out, deterministic=deterministic)
        res_scale = self.param("res_scale", nn.initializers.constant(self.res_scale_init), (1,))
        return tokens + res_scale * out


class SelfAlignment(nn.Module):
    """SAF for one layer: P^ = F_l(P), a single-hidden-layer MLP; (..., D) -> (..., D)."""

    hidden: int
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        d = x.shape[-1]
        xavier = nn.initializers.xavier_uniform()
        x = nn.Dense(self.hidden, kernel_init=xavier, bias_init=nn.initializers.zeros, name="fc1")(x)
        x = nn.gelu(x, approximate=False)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        x = nn.Dense(d, kernel_init=xavier, bias_init=nn.initializers.zeros, name="fc2")(x)
        return nn.Dropout(self.dropout)(x, deterministic=deterministic)


class VisualADHead(nn.Module):
    """Tokens + per-layer SCA/SAF + per-layer scores.

    Parameters: `anomaly_token`, `normal_token` (D,), `anomaly_pos`, `normal_pos` (D,),
    `sca_<layer>` and `saf_<layer>` for each tapped layer (1-based block index).
    """

    dim: int
    layers: Sequence[int]
    num_anchors: int = 4
    max_patches: int = 1536
    dropout: float = 0.1
    res_scale_init: float = 0.01
    saf_hidden: int = 0            # 0 = dim (official)
    use_sca: bool = True
    use_saf: bool = True
    # Position embeddings of the inserted tokens are initialised by the method (from the class
    # token's position embedding, as the official release does); this init is only a placeholder.
    token_init_std: float = 0.0    # 0 = 0.1 * dim**-0.5 (official)

    def setup(self):
        std = self.token_init_std or 0.1 * self.dim ** -0.5
        self.anomaly_token = self.param("anomaly_token", _normal(std), (self.dim,))
        self.normal_token = self.param("normal_token", _normal(std), (self.dim,))
        self.anomaly_pos = self.param("anomaly_pos", _normal(self.dim ** -0.5), (self.dim,))
        self.normal_pos = self.param("normal_pos", _normal(self.dim ** -0.5), (self.dim,))
        if self.use_sca:
            self.sca = {str(layer): SpatialCrossAttention(
                self.num_anchors, self.max_patches, self.dropout, self.res_scale_init)
                for layer in self.layers}
        if self.use_saf:
            self.saf = {str(layer): SelfAlignment(self.saf_hidden or self.dim, self.dropout)
                        for layer in self.layers}

    def prefix(self) -> tuple[jax.Array, jax.Array]:
        """Inserted tokens (1, 2, D) = [t_a, t_n] and their position embeddings (2, D)."""
        tokens = jnp.stack([self.anomaly_token, self.normal_token])[None]
        pos = jnp.stack([self.anomaly_pos, self.normal_pos])
        return tokens, pos

    def __call__(self, anomaly: jax.Array, normal: jax.Array, layer_patches: Sequence[jax.Array],
                 deterministic: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
        """anomaly, normal: final-normed tokens, (B, D) shared by all layers or (L, B, D) one per
        layer; layer_patches: L x (B, N, D) final-normed patches.

        Returns (scores (L, B, N), enhanced t_a (L, B, D), enhanced t_n (L, B, D)).
        """
        if len(layer_patches) != len(self.layers):
            raise ValueError(f"got {len(layer_patches)} patch layers for tapped layers {tuple(self.layers)}")
        tokens = jnp.stack([anomaly, normal], axis=-2)                            # (B, 2, D) / (L, B, 2, D)
        scores, enhanced = [], []
        for i, (layer, patches) in enumerate(zip(self.layers, layer_patches, strict=True)):
            t = tokens if tokens.ndim == 3 else tokens[i]
            t = self.sca[str(layer)](t, patches, deterministic) if self.use_sca else t
            p = self.saf[str(layer)](patches, deterministic) if self.use_saf else patches
            scores.append(contrastive_difference(p, t[:, 0], t[:, 1]))                     # (B, N)
            enhanced.append(t)
        enhanced = jnp.stack(enhanced)                                                     # (L, B, 2, D)
        return jnp.stack(scores), enhanced[:, :, 0], enhanced[:, :, 1]
