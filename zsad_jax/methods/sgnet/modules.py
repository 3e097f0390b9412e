"""SGNet's trainable modules (SGNet, CVPR 2026, Sec. 2-3): GIN stages, decoding, graviton head,
prompts.

Shapes: B batch, N gravitons, C_l text/joint embedding size (768 for ViT-L/14), C_v^i visual
channels of stage i, P = h*w patch tokens, T = 2 prompts (normal, abnormal).

Interpretations of the summary (the sentence, then the reading; `model.*` config keys choose the
alternatives):

* "Att^L_i = Proj_g(G_i) [Proj_l(L)]^T / sqrt(C_l)" then "G^L_i = Norm(G_{i-1} + Softmax(Att^L_i)
  Proj_l(L))": the graviton input of stage i is G_{i-1} (the summary's G_i in Att^L is read as the
  stage's incoming gravitons); the softmax runs over the two prompts; the values reuse Proj_l, as
  written. Norm = LayerNorm. Single-head attention (the formula has one scale sqrt(C_l)).
* "gamma(.) is a two-layer MLP with ReLU+Tanh": Dense(C_l / `gate_reduction`) -> ReLU -> Dense(C_l)
  -> Tanh; the hidden size is not given (`model.gate_reduction`, 4).
* "Att^V_i = Proj_g(G^cross_i) Flatten(Proj_v(F_{i-1})) / sqrt(C_v^{i-1})" and "Both gravitons G^V_i
  and visual features F_i are updated simultaneously (visual features are modulated by gravitons
  after restoring spatial structure via Unflatten)": one attention matrix (N, P) read both ways:
  G^V = Softmax_P(Att^V) V_v(F) (each graviton gathers visual patterns) and
  F_i = F_{i-1} + Softmax_N(Att^V)^T V_g(G^cross) (each patch receives graviton messages); then
  Unflatten to (h, w, C) and a depthwise 3x3 convolution mixes neighbours (`model.spatial_conv`),
  and a LayerNorm + Dense maps to C_v^i.
* "G_i = Norm(G^cross_i + Proj(G^V_i))": Proj is Dense(C_v -> C_l), Norm = LayerNorm.
* "the CLIP vision encoder encodes the image into multi-layer features F_0 in R^{C_v^0 x H_0 x W_0}"
  and "fused visual features F_{i-1} from the previous stage": F_0 is ONE map built from several
  layers, and every later stage reads the previous stage's output. `model.visual_input="fused"`
  (default): F_0 = Dense(concat_l LayerNorm_l(tap_l)) over all tapped layers (each layer
  normalized on its own, so that no layer's scale dominates), no later injection. `"per_stage"`:
  stage i sees F_{i-1} plus the projected i-th tapped layer (K stages use K tapped layers).
* "hierarchical decoding produces feature map X": the ViT stages share one grid, so decoding is a
  top-down sum X_K = D_K(F_K), X_i = D_i(F_i) + X_{i+1}, X = LayerNorm(X_1) (`decoder="sum"`), or
  one Dense over the concatenated stages (`decoder="concat"`); X has `decoder_dim` channels.
* "w_n = MLP(g_n) ... M_n = w_n X^T ... M = 1/N sum_n M_n followed by a sigmoid": MLP is
  Dense(C_l) -> GELU -> Dense(C_x); the mask logits are the mean over gravitons, at the patch grid
  (upsampled bilinearly to the mask size by the method).
* "Baseline only (w/o GIN/GPR)" (ablation table): no gravitons; patches are scored against the
  text poles as the CLIP-based baselines do (AnomalyCLIP): `text_patch_logits`, the two-class
  softmax of cosines / tau. Which patch tokens (`model.baseline_tokens`): "clip" = each tapped
  layer through CLIP's frozen ln_post + proj (the method computes them; this head is not used),
  "decoded" = X of the same trainable input projections and decoder as the GIN rows (here).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zsad_jax import ops

Dtype = Any


def text_patch_logits(tokens: jax.Array, text: jax.Array, tau: float) -> jax.Array:
    """Anomaly logits of tokens against the text poles: tokens (B, P, C), L (2, C) -> (B, P).

    (cos(x, L_abn) - cos(x, L_nor)) / tau, i.e. sigmoid of it = Softmax([cos_nor, cos_abn] / tau)_abn,
    AnomalyCLIP's patch-prompt probability (tau = 0.07 there). L is [L_nor, L_abn].
    """
    cos = jnp.einsum("bpc,tc->bpt", ops.l2_normalize(tokens.astype(jnp.float32)),
                     ops.l2_normalize(text.astype(jnp.float32)))
    return (cos[..., 1] - cos[..., 0]) / tau


class TextGravitonAttention(nn.Module):
    """Gravitons absorb the text poles. G (B, N, C_l), L (B|1, T, C_l) -> G^L (B, N, C_l)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, gravitons, text):
        c_l = gravitons.shape[-1]
        query = nn.Dense(c_l, dtype=self.dtype, name="proj_g")(gravitons)
        text_proj = nn.Dense(c_l, dtype=self.dtype, name="proj_l")(text)
        text_proj = jnp.broadcast_to(text_proj, (gravitons.shape[0],) + text_proj.shape[1:])
        att = jnp.einsum("bnc,btc->bnt", query, text_proj) / jnp.sqrt(c_l)       # SGNet Att^L_i
        att = jax.nn.softmax(att.astype(jnp.float32), axis=-1).astype(self.dtype)
        update = jnp.einsum("bnt,btc->bnc", att, text_proj)
        return nn.LayerNorm(dtype=self.dtype, name="norm")(gravitons + update)   # SGNet G^L_i


class TextGravitonGate(nn.Module):
    """SGNet G^cross_i = Linear(gamma(G^L_i) * G^L_i + G_{i-1}), gamma = MLP(ReLU, Tanh)."""

    reduction: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, g_text, g_prev):
        c_l = g_text.shape[-1]
        hidden = nn.relu(nn.Dense(max(1, c_l // self.reduction), dtype=self.dtype, name="gamma_1")(g_text))
        gamma = jnp.tanh(nn.Dense(c_l, dtype=self.dtype, name="gamma_2")(hidden))
        return nn.Dense(c_l, dtype=self.dtype, name="linear")(gamma * g_text + g_prev)


class GravitonVisualAttention(nn.Module):
    """Bidirectional graviton-visual attention of one GIN stage.

    G^cross (B, N, C_l), F (B, P, C_v) -> G^V (B, N, C_v), F' (B, P, C_v) (not yet unflattened).
    """

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, g_cross, visual):
        c_v = visual.shape[-1]
        query = nn.Dense(c_v, dtype=self.dtype, name="proj_g")(g_cross)
        keys = nn.Dense(c_v, dtype=self.dtype, name="proj_v")(visual)
        att = jnp.einsum("bnc,bpc->bnp", query, keys).astype(jnp.float32) / jnp.sqrt(c_v)  # Att^V_i
        to_gravitons = jax.nn.softmax(att, axis=-1).astype(self.dtype)      # over patches
        to_patches = jax.nn.softmax(att, axis=1).astype(self.dtype)         # over gravitons
        visual_values = nn.Dense(c_v, dtype=self.dtype, name="value_v")(visual)
        graviton_values = nn.Dense(c_v, dtype=self.dtype, name="value_g")(g_cross)
        g_visual = jnp.einsum("bnp,bpc->bnc", to_gravitons, visual_values)
        visual = visual + jnp.einsum("bnp,bnc->bpc", to_patches, graviton_values)
        return g_visual, visual


class GINStage(nn.Module):
    """One stage of the Graviton Interaction Network.

    G_{i-1} (B, N, C_l), L (B|1, T, C_l), F_{i-1} (B, P, C_v^{i-1}) with grid (h, w)
    -> G_i (B, N, C_l), F_i (B, P, C_v^i), and (if `tokens_in_graviton_space`) the updated visual
    tokens mapped by the same Proj as G^V (B, P, C_l) (else None): GPR's `visual_tokens="stage"`.
    """

    out_dim: int
    grid: tuple[int, int]
    gate_reduction: int = 4
    spatial_conv: bool = True
    tokens_in_graviton_space: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, gravitons, text, visual):
        g_text = TextGravitonAttention(self.dtype, name="text_attention")(gravitons, text)
        g_cross = TextGravitonGate(self.gate_reduction, self.dtype, name="gate")(g_text, gravitons)
        g_visual, visual = GravitonVisualAttention(self.dtype, name="visual_attention")(g_cross, visual)
        b, p, c_v = visual.shape
        if self.spatial_conv:
            spatial = visual.reshape(b, *self.grid, c_v)                     # Unflatten
            spatial = spatial + nn.Conv(c_v, (3, 3), padding="SAME", feature_group_count=c_v,
                                        dtype=self.dtype, name="spatial")(spatial)
            visual = spatial.reshape(b, p, c_v)
        c_l = gravitons.shape[-1]
        to_text_space = nn.Dense(c_l, dtype=self.dtype, name="proj_visual")
        g_next = nn.LayerNorm(dtype=self.dtype, name="norm")(g_cross + to_text_space(g_visual))  # G_i
        tokens = to_text_space(visual) if self.tokens_in_graviton_space else None
        visual = nn.Dense(self.out_dim, dtype=self.dtype, name="visual_out")(
            nn.LayerNorm(dtype=self.dtype, name="visual_norm")(visual))
        return g_next, visual, tokens


class HierarchicalDecoder(nn.Module):
    """Stage features [(B, P, C_v^i)] -> X (B, P, C_x)."""

    dim: int
    mode: str = "sum"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, stage_features):
        if self.mode == "sum":
            x = None
            for i in reversed(range(len(stage_features))):                    # top-down
                level = nn.Dense(self.dim, dtype=self.dtype, name=f"level_{i}")(stage_features[i])
                x = level if x is None else level + x
        else:                                                                    # "concat"
            x = nn.Dense(self.dim, dtype=self.dtype, name="fuse")(jnp.concatenate(stage_features, -1))
        return nn.LayerNorm(dtype=self.dtype, name="norm")(x)


class GravitonGuidedHead(nn.Module):
    """SGNet w_n = MLP(g_n), M_n = w_n X^T, M = 1/N sum_n M_n: G (B, N, C_l), X (B, P, C_x) -> (B, P)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, gravitons, x):
        c_x = x.shape[-1]
        hidden = nn.gelu(nn.Dense(gravitons.shape[-1], dtype=self.dtype, name="mlp_1")(gravitons))
        # Small initial w_n: the mask starts near sigmoid(0) = 0.5 instead of saturated.
        w = nn.Dense(c_x, dtype=self.dtype, kernel_init=nn.initializers.normal(0.02),
                     name="mlp_2")(hidden)                                               # (B, N, C_x)
        per_graviton = jnp.einsum("bnc,bpc->bnp", w, x)                                 # M_n
        return per_graviton.mean(axis=1)                                                # mean_n M_n


class SGNetHead(nn.Module):
    """Everything trainable after the frozen CLIP towers (the prompt context excluded).

    taps: tuple of `num_taps` (B, P, D) patch tokens of the tapped CLIP layers; text: L (2, C_l).
    Returns (patch mask logits (B, P), [G_i (B, N, C_l) for i = 1..K], [stage visual tokens in
    graviton space (B, P, C_l), or None unless `stage_tokens`]).

    `gin=False` is the ablation baseline with `model.baseline_tokens="decoded"`: the same input
    projections and decoder, each stage a plain Dense, no gravitons; the logits are
    `text_patch_logits(X, L, text_tau)` and both lists are empty.
    """

    num_gravitons: int
    num_stages: int
    embed_dim: int                      # C_l
    visual_dims: tuple[int, ...]        # C_v^0 .. C_v^K (K + 1 entries)
    decoder_dim: int
    grid: tuple[int, int]
    num_taps: int                       # tapped CLIP layers (= num_stages with "per_stage")
    gin: bool = True
    visual_input: str = "fused"
    gate_reduction: int = 4
    spatial_conv: bool = True
    decoder: str = "sum"
    stage_tokens: bool = False          # return the stage tokens in graviton space (GPR "stage")
    text_tau: float = 0.07              # temperature of the baseline's text scoring
    dtype: Dtype = jnp.float32

    def setup(self):
        if self.gin:
            # SGNet G_0 in R^{N x C_l}: learnable semantic gravitons.
            self.gravitons = self.param("gravitons", nn.initializers.normal(1.0),
                                        (self.num_gravitons, self.embed_dim), jnp.float32)
        # One LayerNorm per tapped layer; "per_stage": one projection per stage (to C_v^i);
        # "fused": one projection of the concatenated layers to C_v^0 (F_0).
        self.input_norms = [nn.LayerNorm(dtype=self.dtype, name=f"input_norm_{i}")
                            for i in range(self.num_taps)]
        n_projs = self.num_stages if self.visual_input == "per_stage" else 1
        self.input_projs = [nn.Dense(self.visual_dims[i], dtype=self.dtype, name=f"input_proj_{i}")
                            for i in range(n_projs)]
        if self.gin:
            self.stages = [GINStage(self.visual_dims[i + 1], self.grid, self.gate_reduction,
                                    self.spatial_conv, self.stage_tokens, self.dtype, name=f"stage_{i}")
                           for i in range(self.num_stages)]
            self.predict = GravitonGuidedHead(self.dtype, name="prediction")
        else:
            # The baseline: stage i is a plain Dense to C_v^{i+1} (no graviton interaction).
            self.plain = [nn.Dense(self.visual_dims[i + 1], dtype=self.dtype, name=f"plain_{i}")
                          for i in range(self.num_stages)]
        self.decode = HierarchicalDecoder(self.decoder_dim, self.decoder, self.dtype, name="decoder")

    def _stage_input(self, taps, i, previous):
        if self.visual_input == "fused":
            if i > 0:
                return previous
            normed = [norm(t) for norm, t in zip(self.input_norms, taps, strict=True)]
            return self.input_projs[0](jnp.concatenate(normed, axis=-1))                   # F_0
        injected = self.input_projs[i](self.input_norms[i](taps[i]))
        return injected if previous is None else previous + injected

    def __call__(self, taps, text):
        taps = tuple(t.astype(self.dtype) for t in taps)
        if len(taps) != self.num_taps:
            raise ValueError(f"SGNetHead: {len(taps)} tapped layers, expected {self.num_taps}")
        b = taps[0].shape[0]
        text = text.astype(self.dtype)
        g = None
        if self.gin:
            g = jnp.broadcast_to(self.gravitons.astype(self.dtype), (b, *self.gravitons.shape))
        stage_gravitons, stage_features, stage_tokens, visual = [], [], [], None
        for i in range(self.num_stages):
            visual = self._stage_input(taps, i, visual)
            if self.gin:
                g, visual, tokens = self.stages[i](g, text[None], visual)
                stage_gravitons.append(g)
                stage_tokens.append(tokens)
            else:
                visual = self.plain[i](visual)
            stage_features.append(visual)
        x = self.decode(stage_features)
        if not self.gin:
            return text_patch_logits(x, text, self.text_tau), [], []
        return self.predict(g, x), stage_gravitons, stage_tokens


class ContextPrompts(nn.Module):
    """AnomalyCLIP-style object-agnostic prompts: learnable context vectors before a fixed suffix.

    `embeddings (T, L, Dt)` of the tokenized suffixes ("object.", "damaged object."), `eot (T,)`
    -> prompt embeddings (T, L, Dt) with `length` learned vectors after the start token, and the
    shifted EOT positions (T,).
    """

    length: int = 12

    @nn.compact
    def __call__(self, embeddings, eot):
        t, seq, dt = embeddings.shape
        ctx = self.param("context", nn.initializers.normal(0.02), (t, self.length, dt), jnp.float32)
        out = jnp.concatenate([embeddings[:, :1], ctx.astype(embeddings.dtype),
                               embeddings[:, 1:seq - self.length]], axis=1)
        return out, eot + self.length
