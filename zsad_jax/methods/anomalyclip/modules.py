"""AnomalyCLIP's learned prompts and its scoring, as pure functions of arrays.

Zhou et al., "AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection",
ICLR 2024, arXiv 2310.18961; facts from the official release (GitHub zqhang/AnomalyCLIP, commit
45ed4dd): `PE.py` = prompt_ensemble.py, `AC.py` = AnomalyCLIP_lib/AnomalyCLIP.py, `ML.py` =
AnomalyCLIP_lib/model_load.py.

Shapes: B batch, P = h*w patch tokens, E joint embedding size, Dt text width, n = prompt_length,
N = deep_prompt_depth - 1 deep prompts of t = deep_prompt_length vectors, M mask side. The two
prompts are ordered [normal, anomalous] everywhere (class 0 / class 1).

The trainable parameters (`head`):

    ctx_normal (n, Dt), ctx_anomalous (n, Dt)     replace the "X" x n tokens of
                                                  "X .. X object." / "X .. X damaged object."
    deep_prompts (N, t, Dt)                       replace text positions 1..t before blocks 2..N+1

all initialised N(0, 0.02) (PE.py:148-163).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zsad_jax import ops

PROMPT_INIT_STD = 0.02                  # nn.init.normal_(std=0.02) (PE.py:153-154, 162)


def init_prompts(rng: jax.Array, text_width: int, prompt_length: int, deep_count: int,
                 deep_length: int) -> dict[str, jax.Array]:
    """{"ctx_normal", "ctx_anomalous": (n, Dt)[, "deep_prompts": (N, t, Dt)]} ~ N(0, 0.02);
    no "deep_prompts" when deep_count = 0."""
    keys = jax.random.split(rng, 3)
    normal = lambda key, shape: PROMPT_INIT_STD * jax.random.normal(key, shape, jnp.float32)
    out = {"ctx_normal": normal(keys[0], (prompt_length, text_width)),
           "ctx_anomalous": normal(keys[1], (prompt_length, text_width))}
    if deep_count:
        out["deep_prompts"] = normal(keys[2], (deep_count, deep_length, text_width))
    return out


def prompt_embeddings(token_embeddings: jax.Array, ctx_normal: jax.Array,
                      ctx_anomalous: jax.Array) -> jax.Array:
    """(2, L, Dt) embeddings of the tokenized [normal, anomalous] prompts -> the same with
    positions 1..n (the "X" tokens) replaced by the learned contexts: [SOT, ctx, suffix]
    (PE.py:232-261; the suffix is "object." / "damaged object.", EOT and padding)."""
    ctx = jnp.stack([ctx_normal, ctx_anomalous]).astype(token_embeddings.dtype)     # (2, n, Dt)
    n = ctx.shape[1]
    return jnp.concatenate([token_embeddings[:, :1], ctx, token_embeddings[:, 1 + n:]], axis=1)


def deep_prompt_inputs(deep_prompts: jax.Array, num_prompts: int, fp16: bool) -> jax.Array:
    """(N, t, Dt) -> (N, num_prompts, t, Dt): the deep prompts as they enter the text blocks.

    The same vectors go into every prompt. The release rounds them to fp16 after broadcasting
    them over the prompts (`.expand(...).permute(...).half()`, AC.py:246) and concatenates them
    with the fp32 hidden states; rounding after the broadcast also reproduces its backward pass:
    each prompt's gradient is rounded to fp16 before the two are summed.
    """
    n, t, width = deep_prompts.shape
    x = jnp.broadcast_to(deep_prompts[:, None], (n, num_prompts, t, width))
    return x.astype(jnp.float16).astype(jnp.float32) if fp16 else x


def token_probabilities(tokens: jax.Array, text: jax.Array, temperature: float) -> jax.Array:
    """(B, P, E) projected tokens, (2, E) L2-normalized text -> (B, P, 2):
    softmax over [normal, anomalous] of cos / temperature (ML.py:230-235, test.py:99)."""
    cos = ops.l2_normalize(tokens.astype(jnp.float32)) @ text.T
    return jax.nn.softmax(cos / temperature, axis=-1)


def upsampled_probabilities(probs: jax.Array, grid: tuple[int, int], size: int) -> jax.Array:
    """(B, P, 2) per-patch probabilities -> (B, 2, M, M): reshaped to the grid and upsampled
    bilinearly (torch `F.interpolate(mode='bilinear', align_corners=False)`, ML.py:222-227). The
    probabilities are upsampled, not the logits."""
    b = probs.shape[0]
    grids = jnp.moveaxis(probs.reshape(b, grid[0], grid[1], 2), -1, 1)                # (B, 2, h, w)
    return ops.upsample_maps(grids, size)


def anomaly_map(probs: jax.Array) -> jax.Array:
    """(B, 2, M, M) upsampled [normal, anomalous] probabilities -> (B, M, M):
    (p_anomalous + 1 - p_normal) / 2, which equals p_anomalous (test.py:102-104)."""
    return (probs[:, 1] + 1.0 - probs[:, 0]) / 2.0


def image_logits(global_feature: jax.Array, text: jax.Array, temperature: float) -> jax.Array:
    """(B, E) global image feature (class token @ proj, no ln_post), (2, E) normalized text ->
    (B, 2) cos / temperature (test.py:91-94; train.py:82-83)."""
    return ops.l2_normalize(global_feature.astype(jnp.float32)) @ text.T / temperature


def image_scores(global_feature: jax.Array, text: jax.Array, temperature: float) -> jax.Array:
    """(B,) softmax(image_logits)[anomalous], computed per image (test.py:95 keeps only image 0
    of a batch; its batch size 1 hides it)."""
    return jax.nn.softmax(image_logits(global_feature, text, temperature), axis=-1)[:, 1]
