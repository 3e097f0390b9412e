"""SGNet: semantic gravitons for zero-shot anomaly detection ("From Attraction to Equilibrium:
Physics-Inspired Semantic Gravitons for Zero-Shot Anomaly Detection", CVPR 2026).

    image -> frozen CLIP vision tower -> tapped layers (B, P, D) ----------------+
    prompts -> frozen CLIP text tower -> L = {L_nor, L_abn} (2, C_l) -----------+
    G_0 (N, C_l) learnable gravitons -> K GIN stages (modules.GINStage) -> G_K, F_1..F_K
    F_1..F_K -> hierarchical decoding -> X;  w_n = MLP(g_n), mask = sigmoid(mean_n w_n X^T)
    L_total = L_seg (focal + dice) + L_cls (BCE) + lambda_grav L_grav (gpr.py)

Parameters: {"backbones": {"clip": frozen CLIP}, "head": SGNetHead + "prompts": ContextPrompts}
(the "clip" baseline has no SGNetHead parameters); trainable: `head/`. The vision features are
frozen (`frozen_features`), so the feature cache works (it holds the tapped layers and the pooled
embedding; joint-space patch tokens, for GPR's "clip" reading and the "clip" baseline, are
recomputed from the taps by CLIP's ln_post + proj); the text tower runs inside the loss (the
prompt context is learned through it; its weights get no gradient).

Interpretations of the summary's open details (the sentence, then the reading; config keys pick
the alternatives; the GIN's are in modules.py and GPR's in gpr.py):

* "the text encoder encodes the two prompts into L = {L_nor, L_abn} in R^{2 x C_l}": C_l is CLIP's
  joint embedding size (768 for ViT-L/14); L is L2-normalized (CLIP compares normalized
  embeddings). Prompts (`model.prompts`): "learned" = AnomalyCLIP's object-agnostic
  "[V_1..V_m] object." / "[W_1..W_m] damaged object." with m = `model.prompt_length` learnable
  vectors; "templates" = a fixed ensemble (`model.templates` x `model.normal_states` /
  `model.abnormal_states`, embeddings averaged per class).
* "encodes the image into multi-layer features F_0": all tapped layers (`backbones.clip.layers` =
  6, 12, 18, 24) are fused into F_0, the input of stage 1 (`model.visual_input="fused"`; or
  "per_stage": tapped layer i is added to stage i's input). Details in modules.py.
* the channel sizes C_v^i (not stated): `model.visual_dims` (K + 1 sizes; empty = C_l everywhere).
* what f_v and f_t are in GPR (not stated): f_t = L (the two prompt embeddings). f_v: GPR is
  "pulling the two modalities to stable localized semantic equilibrium points" and "prevents a
  single modality from dominating", so both token sets must be movable by the loss; frozen CLIP
  tokens are not. Default `gpr.visual_tokens="stage"`: stage i's updated visual tokens F_i mapped
  into graviton space by the stage's Proj of "G_i = Norm(G^cross_i + Proj(G^V_i))" (trainable: the
  GIN's patch update and the input projections get L_grav's gradient through f_v). "clip": the
  patch tokens of the stage's tapped layer through CLIP's own ln_post + proj (the joint space
  where AnomalyCLIP compares patches with prompts; frozen, so only the gravitons and the prompts
  move). "GPR constrains the evolution of this field" and the figure's "Feedback G_i to next
  stage": GPR applies to every stage's G_i and is averaged over stages (`gpr.stages="all"`, or
  "last").
* "Baseline only (w/o GIN/GPR)" (ablation table; `model.gin=False`): the CLIP-based baseline the
  table starts from (MVTec-AD 91.1 image / 91.8 pixel AUROC, next to AnomalyCLIP's 91.5 image in
  the main table): no gravitons; patch tokens are scored
  against L by the two-class softmax of cosines / `model.text_tau` (AnomalyCLIP: 0.07),
  `modules.text_patch_logits`. `model.baseline_tokens="clip"`: every tapped layer through CLIP's
  ln_post + proj, logits averaged over layers (only the prompt context trains);
  "decoded": X of the GIN rows' own input projections and decoder (so that "+ GIN" adds exactly
  the gravitons and GIN stages). GPR needs gravitons: it is refused without the GIN.
* "an image-level anomaly score S" (how it is formed is open): `model.image_score` = "max" (the
  largest patch logit of the graviton-guided map; L_cls is BCE on it), "topk_mean" (mean of the
  top `model.topk_fraction` patch logits) or "text" (CLIP's pooled image embedding against L:
  exp(logit_scale) (cos(v, L_abn) - cos(v, L_nor)), the two-class softmax logit).
* "L_seg combines focal and dice loss": both on the sigmoid mask at the mask size; the weights
  `loss.focal`, `loss.dice`, `loss.cls` are 1 (the summary writes the plain sum).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from zsad_jax import ops
from zsad_jax.config_types import ConfigError
from zsad_jax.losses import bce_with_logits, dice_loss, focal_loss
from zsad_jax.methods.base import FrozenFeaturesMethod
from zsad_jax.methods.sgnet import gpr as gpr_lib
from zsad_jax.methods.sgnet.config import GPR, Loss, Model
from zsad_jax.methods.sgnet.modules import ContextPrompts, SGNetHead, text_patch_logits

VIEW = "clip"


class SGNet(FrozenFeaturesMethod):
    name = "sgnet"
    config_sections = {"model": Model, "loss": Loss, "gpr": GPR}

    @classmethod
    def check_config(cls, config, sections):
        cls.require_backbones(config, [VIEW], "SGNet (a CLIP with a text tower)")
        arch = config.backbones[VIEW].arch
        if not arch.startswith("clip"):
            raise ConfigError(f"config.backbones.{VIEW}.arch={arch!r}: SGNet needs a CLIP with a "
                              f"text tower")
        m, g = sections["model"], sections["gpr"]
        layers = tuple(config.backbones[VIEW].layers)
        if m.visual_input == "per_stage" and len(layers) != m.num_stages:
            raise ConfigError(f"config.model.visual_input='per_stage' feeds tapped layer i to GIN "
                              f"stage i: config.backbones.{VIEW}.layers={layers} gives "
                              f"{len(layers)} tapped layers for config.model.num_stages={m.num_stages}")
        if g.active and not m.gin:
            raise ConfigError("config.gpr (attraction/equilibrium) regularizes the gravitons: the "
                              "baseline config.model.gin=False has none; set config.gpr.attraction="
                              "False and config.gpr.equilibrium=False (or config.gpr.lambda_grav=0)")
        if not m.gin and m.baseline_tokens == "clip" and m.prompts != "learned":
            raise ConfigError("config.model.baseline_tokens='clip' trains only the prompt context: "
                              "it needs config.model.prompts='learned' (or baseline_tokens='decoded')")

    def __init__(self, config):
        super().__init__(config)
        self.model_cfg: Model = self.sections["model"]
        self.loss_cfg: Loss = self.sections["loss"]
        self.gpr_cfg: GPR = self.sections["gpr"]
        self.clip = self.build_backbone(VIEW)
        if not self.clip.has_text:
            raise ConfigError(f"config.backbones.{VIEW} ({self.clip.arch.family}, weights "
                              f"{self.clip.weights!r}) has no text tower; SGNet needs one")
        m = self.model_cfg
        c_l = self.clip.arch.embed_dim
        k = m.num_stages
        self.head = SGNetHead(
            num_gravitons=m.num_gravitons, num_stages=k, embed_dim=c_l,
            visual_dims=tuple(m.visual_dims) or (c_l,) * (k + 1), decoder_dim=m.decoder_dim or c_l,
            grid=self.clip.grid, num_taps=len(self.clip.layers), gin=m.gin,
            visual_input=m.visual_input, gate_reduction=m.gate_reduction,
            spatial_conv=m.spatial_conv, decoder=m.decoder,
            stage_tokens=self.gpr_cfg.active and self.gpr_cfg.visual_tokens == "stage",
            text_tau=m.text_tau, dtype=self.dtype)
        # The "clip" baseline scores CLIP's own joint-space tokens: no SGNetHead at all.
        self.uses_head = m.gin or m.baseline_tokens == "decoded"
        self.prompt_learner = ContextPrompts(length=m.prompt_length)

    # ---- parameters ------------------------------------------------------------------------
    def init_head(self, rng, towers):
        """SGNetHead's parameters (unless the "clip" baseline), plus "prompts" with learned prompts."""
        rng_head, rng_prompt = jax.random.split(rng)
        return jax.jit(self._init_trainable)(rng_head, rng_prompt, towers)

    def _init_trainable(self, rng_head, rng_prompt, towers):
        size = self.clip.image_size
        features = jax.eval_shape(
            lambda p, x: self.frozen_features({"backbones": p}, {"images": {VIEW: x}}), towers,
            jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
        taps = tuple(jnp.zeros(t.shape, t.dtype) for t in features["taps"])
        text = jnp.zeros((2, self.clip.arch.embed_dim), jnp.float32)
        out = dict(self.head.init(rng_head, taps, text)["params"]) if self.uses_head else {}
        if self.model_cfg.prompts == "learned":
            ids, _ = self._prompt_tokens()
            out["prompts"] = self.prompt_learner.init(
                rng_prompt, jnp.zeros((ids.shape[0], ids.shape[1], self.clip.arch.text_width)),
                jnp.zeros((ids.shape[0],), jnp.int32))["params"]
        return out

    @staticmethod
    def _head_params(head):
        return {k: v for k, v in head.items() if k != "prompts"}

    # ---- frozen part -----------------------------------------------------------------------
    def frozen_features(self, params, batch):
        """{"taps": tapped layers' patch tokens, K x (B, P, D); "pooled": (B, C_l)}, no gradient."""
        tower = jax.lax.stop_gradient(params["backbones"][VIEW])
        out = self.clip.encode_image(tower, batch["images"][VIEW])
        taps = tuple(out.patch_tokens(i) for i in range(len(self.clip.layers)))
        return jax.lax.stop_gradient({"taps": taps, "pooled": out.pooled})

    def clip_tokens(self, params, tap):
        """Patch tokens (B, P, D) -> CLIP's joint space (B, P, C_l) by the frozen ln_post + proj."""
        return self.clip.project(jax.lax.stop_gradient(params["backbones"][VIEW]), tap)

    # ---- text ------------------------------------------------------------------------------
    @functools.cache  # noqa: B019  (one method object per config; the ids are constants)
    def _prompt_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (T', 77) and the class (0 normal / 1 abnormal) of each row."""
        m = self.model_cfg
        tok = self.clip.tokenizer()
        if m.prompts == "learned":
            texts = [f"{m.object_word}.", f"damaged {m.object_word}."]
            classes = [0, 1]
        else:
            texts, classes = [], []
            for label, states in ((0, m.normal_states), (1, m.abnormal_states)):
                for template in m.templates:
                    for state in states:
                        texts.append(template.format(f"{state} {m.object_word}".strip()))
                        classes.append(label)
        ids = np.asarray(tok(texts), np.int32)
        eot = np.argmax(ids == self.clip.arch.eot_token_id, axis=-1)
        if m.prompts == "learned" and int(eot.max()) + m.prompt_length >= ids.shape[1]:
            raise ConfigError(f"config.model.prompt_length={m.prompt_length} does not fit the "
                              f"{ids.shape[1]}-token context with prompts {texts}")
        return ids, np.asarray(classes, np.int32)

    def text_features(self, params):
        """L = {L_nor, L_abn}: (2, C_l), L2-normalized. Gradient reaches the prompt context only."""
        tower = jax.lax.stop_gradient(params["backbones"][VIEW])
        ids, classes = self._prompt_tokens()
        ids_j = jnp.asarray(ids)
        eot = jnp.argmax(ids_j == self.clip.arch.eot_token_id, axis=-1)
        if self.model_cfg.prompts == "learned":
            embeddings = self.clip.embed_tokens(tower, ids_j)
            embeddings, eot = self.prompt_learner.apply({"params": params["head"]["prompts"]},
                                                        embeddings, eot)
            text = self.clip.encode_text_embeddings(tower, embeddings, eot)
            return ops.l2_normalize(text.astype(jnp.float32))
        text = ops.l2_normalize(self.clip.encode_text(tower, ids_j).astype(jnp.float32))
        one_hot = jax.nn.one_hot(jnp.asarray(classes), 2, dtype=jnp.float32)       # (T', 2)
        mean = (one_hot.T @ text) / one_hot.sum(0)[:, None]
        return ops.l2_normalize(mean)

    # ---- trainable part --------------------------------------------------------------------
    def _forward(self, params, features):
        """(patch logits (B, P), L (2, C_l), [G_i (B, N, C_l)], [stage tokens (B, P, C_l) or None])."""
        text = self.text_features(params)
        if not self.uses_head:
            # Baseline w/o GIN/GPR, AnomalyCLIP-style: every tapped layer in CLIP's joint space
            # against L, logits averaged over the layers.
            per_layer = [text_patch_logits(self.clip_tokens(params, tap), text, self.model_cfg.text_tau)
                         for tap in features["taps"]]
            return sum(per_layer) / len(per_layer), text, [], []
        logits, stage_gravitons, stage_tokens = self.head.apply(
            {"params": self._head_params(params["head"])}, features["taps"], text)
        return logits.astype(jnp.float32), text, stage_gravitons, stage_tokens

    def _image_logit(self, params, patch_logits, features, text):
        m = self.model_cfg
        if m.image_score == "max":
            return patch_logits.max(axis=-1)
        if m.image_score == "topk_mean":
            k = max(1, round(m.topk_fraction * patch_logits.shape[-1]))
            return jax.lax.top_k(patch_logits, k)[0].mean(axis=-1)
        # CLIP's pooled image embedding against L at CLIP's own temperature 1 / exp(logit_scale).
        scale = jnp.exp(jax.lax.stop_gradient(params["backbones"][VIEW]["logit_scale"]))
        return text_patch_logits(features["pooled"][:, None], text, 1.0 / scale)[:, 0]

    def _mask_logits(self, patch_logits):
        b = patch_logits.shape[0]
        return ops.upsample_maps(patch_logits.reshape(b, *self.clip.grid), self.mask_size)

    def outputs_from_features(self, params, features, batch):
        patch_logits, text, _, _ = self._forward(params, features)
        anomaly_map = jax.nn.sigmoid(self._mask_logits(patch_logits))
        return anomaly_map, jax.nn.sigmoid(self._image_logit(params, patch_logits, features, text))

    def gpr_terms(self, params, features, text, stage_gravitons, stage_tokens):
        """L_grav and its terms averaged over the GPR stages (`gpr.stages`)."""
        k = len(stage_gravitons)
        stages = range(k) if self.gpr_cfg.stages == "all" else (k - 1,)
        taps = features["taps"]
        totals, terms = [], []
        for i in stages:
            if self.gpr_cfg.visual_tokens == "clip":
                # Stage i's tapped layer (the last one when the taps are fused into F_0).
                tokens = self.clip_tokens(params, taps[i if len(taps) == k else -1])
            else:
                tokens = stage_tokens[i]
            total, parts = gpr_lib.gpr_loss_batch(tokens.astype(jnp.float32), text,
                                                  stage_gravitons[i].astype(jnp.float32),
                                                  self.gpr_cfg)
            totals.append(total)
            terms.append(parts)
        mean = lambda xs: sum(xs) / len(xs)
        return mean(totals), {name: mean([t[name] for t in terms]) for name in terms[0]}

    def loss_from_features(self, params, features, batch, rng):
        del rng                                                     # deterministic: no dropout
        cfg = self.loss_cfg
        patch_logits, text, stage_gravitons, stage_tokens = self._forward(params, features)
        probs = jax.nn.sigmoid(self._mask_logits(patch_logits))
        masks = batch["masks"].astype(jnp.float32)
        zero = jnp.zeros((), jnp.float32)
        terms = {
            "seg_focal": focal_loss(probs, masks, cfg.focal_gamma) if cfg.focal else zero,
            "seg_dice": dice_loss(probs, masks) if cfg.dice else zero,
            "cls_bce": (bce_with_logits(self._image_logit(params, patch_logits, features, text),
                                        batch["labels"]) if cfg.cls else zero),
        }
        # SGNet: L_total = L_seg + L_cls + lambda_grav L_grav.
        total = cfg.focal * terms["seg_focal"] + cfg.dice * terms["seg_dice"] + cfg.cls * terms["cls_bce"]
        if self.gpr_cfg.active:
            grav, parts = self.gpr_terms(params, features, text, stage_gravitons, stage_tokens)
            total = total + self.gpr_cfg.lambda_grav * grav
            terms.update(grav=grav, grav_att=parts["att"], grav_equ=parts["equ"])
        else:
            terms.update(grav=zero, grav_att=zero, grav_equ=zero)
        return total, terms
