"""SGNet: semantic gravitons for zero-shot anomaly detection (CVPR 2026; ../shared/papers/sgnet.md).

    image -> frozen CLIP vision tower -> tapped layers (B, P, D) ----------------+
    prompts -> frozen CLIP text tower -> L = {L_nor, L_abn} (2, C_l) -----------+
    G_0 (N, C_l) learnable gravitons -> K GIN stages (sgnet_modules.GINStage) -> G_K, F_1..F_K
    F_1..F_K -> hierarchical decoding -> X;  w_n = MLP(g_n), mask = sigmoid(mean_n w_n X^T)
    L_total = L_seg (focal + dice) + L_cls (BCE) + lambda_grav L_grav (losses/gpr.py)

Parameters: {"backbone": frozen CLIP, "head": SGNetHead, "prompts": PromptLearner}; trainable:
`head/` and `prompts/`. The vision features are frozen (`frozen_features`), so the feature cache
works (it holds the tapped layers and the pooled embedding; GPR's joint-space patch tokens are
recomputed from the taps by CLIP's ln_post + proj); the text tower runs inside the loss (the
prompt context is learned through it; its weights get no gradient).

Interpretations of the summary's open details (the sentence, then the reading; config keys pick
the alternatives; the GIN's are in sgnet_modules.py and GPR's in losses/gpr.py):

* "the text encoder encodes the two prompts into L = {L_nor, L_abn} in R^{2 x C_l}": C_l is CLIP's
  joint embedding size (768 for ViT-L/14); L is L2-normalized (CLIP compares normalized
  embeddings). Prompts (`model.prompts`): "learned" = AnomalyCLIP's object-agnostic
  "[V_1..V_m] object." / "[W_1..W_m] damaged object." with m = `model.prompt_length` learnable
  vectors; "templates" = a fixed ensemble (`model.templates` x `model.normal_states` /
  `model.abnormal_states`, embeddings averaged per class).
* "which CLIP layer feeds which stage" (issue): stage i reads the i-th tapped layer
  (`backbones.clip.layers` = 6, 12, 18, 24 for K = 4; `model.visual_input`).
* "channel sizes C_v^i" (issue): `model.visual_dims` (K + 1 sizes; empty = C_l everywhere).
* "what f_v and f_t are in GPR" (issue): f_t = L (the two prompt embeddings); f_v of stage i
  (`gpr.visual_tokens`): "clip" = the patch tokens of the stage's tapped layer mapped into the
  joint space by CLIP's own ln_post + proj (where L and the gravitons live, as AnomalyCLIP compares
  patches with prompts), or "stage" = the stage's updated visual tokens mapped by the stage's
  Proj of "G_i = Norm(G^cross_i + Proj(G^V_i))". "GPR constrains the evolution of this field" and
  the figure's "Feedback G_i to next stage": GPR applies to every stage's G_i and is averaged over
  stages (`gpr.stages="all"`, or "last").
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

from zsad_jax import backbones
from zsad_jax.losses import gpr as gpr_lib
from zsad_jax.losses.segmentation import bce_with_logits, dice_loss, focal_loss
from zsad_jax.methods.base import ImageView, Method, compute_dtype
from zsad_jax.methods.sgnet_modules import PromptLearner, SGNetHead

VIEW = "clip"
IMAGE_SCORES = ("max", "topk_mean", "text")
PROMPT_MODES = ("learned", "templates")


class SGNet(Method):
    name = "sgnet"
    trainable = (r"^head/", r"^prompts/")
    supports_feature_cache = True

    def __init__(self, config):
        super().__init__(config)
        if VIEW not in config.backbones:
            raise ValueError(f"SGNet needs config.backbones.{VIEW} (a CLIP backbone); "
                             f"got {sorted(config.backbones)}")
        bb = config.backbones[VIEW]
        arch = backbones.get_arch(bb.arch)
        if arch.family != "clip" or not arch.has_text:
            raise ValueError(f"config.backbones.{VIEW}.arch={bb.arch!r}: SGNet needs a CLIP with a "
                             f"text tower")
        if bb.image_size % arch.patch_size:
            raise ValueError(f"config.backbones.{VIEW}.image_size={bb.image_size} is not a multiple "
                             f"of the patch size {arch.patch_size} of {bb.arch}")
        m = config.model
        for key, value, allowed in (("image_score", m.image_score, IMAGE_SCORES),
                                    ("prompts", m.prompts, PROMPT_MODES)):
            if value not in allowed:
                raise ValueError(f"config.model.{key}={value!r}: use one of {', '.join(allowed)}")
        if config.gpr.visual_tokens not in ("clip", "stage"):
            raise ValueError(f"config.gpr.visual_tokens={config.gpr.visual_tokens!r}: use 'clip' or 'stage'")
        if config.gpr.stages not in ("all", "last"):
            raise ValueError(f"config.gpr.stages={config.gpr.stages!r}: use 'all' or 'last'")
        self.gpr_options = gpr_lib.GPROptions.from_config(config.gpr)
        self.arch = arch
        self.layers = tuple(bb.layers)
        self.dtype = compute_dtype(config)
        self.grid = (bb.image_size // arch.patch_size,) * 2
        self.backbone = backbones.build(arch, dtype=self.dtype, pos_interpolation=bb.pos_interpolation,
                                        remat=config.train.remat)
        c_l = arch.embed_dim
        k = m.num_stages
        visual_dims = tuple(m.visual_dims) or (c_l,) * (k + 1)
        self.head = SGNetHead(
            num_gravitons=m.num_gravitons, num_stages=k, embed_dim=c_l, visual_dims=visual_dims,
            decoder_dim=m.decoder_dim or c_l, grid=self.grid, gin=m.gin, visual_input=m.visual_input,
            gate_reduction=m.gate_reduction, spatial_conv=m.spatial_conv, decoder=m.decoder,
            stage_tokens=self.uses_gpr and config.gpr.visual_tokens == "stage", dtype=self.dtype)
        self.prompt_learner = PromptLearner(length=m.prompt_length)
        mean, std = backbones.normalization(arch)
        self._view = ImageView(size=bb.image_size, mean=tuple(mean), std=tuple(std))

    # ---- contract --------------------------------------------------------------------------
    @property
    def views(self):
        return {VIEW: self._view}

    @property
    def uses_gpr(self) -> bool:
        g = self.config.gpr
        return bool((g.attraction or g.equilibrium) and g.lambda_grav > 0)

    def init(self, rng):
        bb = self.config.backbones[VIEW]
        rng_bb, rng_head, rng_prompt = jax.random.split(rng, 3)
        if bb.weights:
            model, bb_params = backbones.load(bb.weights, dtype=self.dtype,
                                              pos_interpolation=bb.pos_interpolation,
                                              remat=self.config.train.remat)
            fields = ("patch_size", "width", "depth", "embed_dim", "text_width", "text_depth",
                      "vocab_size", "context_length", "eot_token_id")
            differ = [f"{f}: {getattr(model.cfg, f)} != {getattr(self.arch, f)}" for f in fields
                      if getattr(model.cfg, f) != getattr(self.arch, f)]
            if differ:
                raise ValueError(f"{bb.weights}: the converted architecture is not "
                                 f"config.backbones.{VIEW}.arch={bb.arch!r} ({'; '.join(differ)})")
        else:
            bb_params = jax.jit(lambda r: backbones.init_params(self.backbone, r, bb.image_size))(rng_bb)
        return {"backbone": bb_params, **jax.jit(self._init_trainable)(rng_head, rng_prompt, bb_params)}

    def _init_trainable(self, rng_head, rng_prompt, bb_params):
        """{"head": ..., "prompts": ...} ("prompts" only with learned prompts)."""
        bb = self.config.backbones[VIEW]
        out = {}
        if self.config.model.prompts == "learned":
            ids, _ = self._prompt_tokens()
            out["prompts"] = self.prompt_learner.init(
                rng_prompt, jnp.zeros((ids.shape[0], ids.shape[1], self.arch.text_width)),
                jnp.zeros((ids.shape[0],), jnp.int32))["params"]
        features = jax.eval_shape(lambda p, x: self.frozen_features({"backbone": p}, {"images": {VIEW: x}}),
                                  bb_params, jax.ShapeDtypeStruct((1, bb.image_size, bb.image_size, 3),
                                                                  jnp.float32))
        taps = tuple(jnp.zeros(t.shape, t.dtype) for t in features["taps"])
        text = jnp.zeros((2, self.arch.embed_dim), jnp.float32)
        out["head"] = self.head.init(rng_head, taps, text)["params"]
        return out

    def loss(self, params, batch, rng):
        return self.loss_from_features(params, self.frozen_features(params, batch), batch, rng)

    def anomaly_outputs(self, params, batch):
        return self.outputs_from_features(params, self.frozen_features(params, batch))

    # ---- frozen part -----------------------------------------------------------------------
    def frozen_features(self, params, batch):
        """{"taps": tapped layers' patch tokens, K x (B, P, D); "pooled": (B, C_l)}, no gradient."""
        bb = jax.lax.stop_gradient(params["backbone"])
        out = self.backbone.apply({"params": bb}, batch["images"][VIEW], layers=self.layers,
                                  method="encode_image")
        taps = tuple(out.patch_tokens(i) for i in range(len(self.layers)))
        return jax.lax.stop_gradient({"taps": taps, "pooled": out.pooled})

    def clip_tokens(self, params, tap):
        """Patch tokens (B, P, D) -> CLIP's joint space (B, P, C_l) by the frozen ln_post + proj."""
        bb = jax.lax.stop_gradient(params["backbone"])
        return self.backbone.apply({"params": bb}, tap, method="project_image_tokens")

    # ---- text ------------------------------------------------------------------------------
    @functools.cache  # noqa: B019  (one method object per config; the ids are constants)
    def _prompt_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (T', 77) and the class (0 normal / 1 abnormal) of each row."""
        m = self.config.model
        bb = self.config.backbones[VIEW]
        # Without converted weights (random init: tests, demos) the tiny offline tokenizer is used;
        # its ids are valid in any CLIP vocabulary and the text has no meaning anyway.
        tok = backbones.load_tokenizer(bb.weights if bb.weights else "clip-tiny")
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
        eot = np.argmax(ids == self.arch.eot_token_id, axis=-1)
        if m.prompts == "learned" and int(eot.max()) + m.prompt_length >= ids.shape[1]:
            raise ValueError(f"config.model.prompt_length={m.prompt_length} does not fit the "
                             f"{ids.shape[1]}-token context with prompts {texts}")
        return ids, np.asarray(classes, np.int32)

    def text_features(self, params):
        """L = {L_nor, L_abn}: (2, C_l), L2-normalized. Gradient reaches the prompt context only."""
        bb = jax.lax.stop_gradient(params["backbone"])
        ids, classes = self._prompt_tokens()
        ids_j = jnp.asarray(ids)
        eot = jnp.argmax(ids_j == self.arch.eot_token_id, axis=-1)
        if self.config.model.prompts == "learned":
            embeddings = self.backbone.apply({"params": bb}, ids_j, method="embed_tokens")
            embeddings, eot = self.prompt_learner.apply({"params": params["prompts"]}, embeddings, eot)
            text = self.backbone.apply({"params": bb}, embeddings, eot, method="encode_text_embeddings")
            return gpr_lib.l2_normalize(text.astype(jnp.float32))
        text = gpr_lib.l2_normalize(self.backbone.apply({"params": bb}, ids_j, method="encode_text")
                                    .astype(jnp.float32))
        one_hot = jax.nn.one_hot(jnp.asarray(classes), 2, dtype=jnp.float32)       # (T', 2)
        mean = (one_hot.T @ text) / one_hot.sum(0)[:, None]
        return gpr_lib.l2_normalize(mean)

    # ---- trainable part --------------------------------------------------------------------
    def _forward(self, params, features):
        text = self.text_features(params)
        logits, stage_gravitons, stage_tokens = self.head.apply({"params": params["head"]},
                                                                features["taps"], text)
        return logits.astype(jnp.float32), text, stage_gravitons, stage_tokens

    def _image_logit(self, params, patch_logits, features, text):
        mode = self.config.model.image_score
        if mode == "max":
            return patch_logits.max(axis=-1)
        if mode == "topk_mean":
            k = max(1, round(self.config.model.topk_fraction * patch_logits.shape[-1]))
            return jax.lax.top_k(patch_logits, k)[0].mean(axis=-1)
        image = gpr_lib.l2_normalize(features["pooled"].astype(jnp.float32))
        cos = image @ text.T                                                       # (B, 2)
        scale = jnp.exp(jax.lax.stop_gradient(params["backbone"]["logit_scale"]))
        return scale * (cos[:, 1] - cos[:, 0])

    def _mask_logits(self, patch_logits):
        b = patch_logits.shape[0]
        grid_logits = patch_logits.reshape(b, *self.grid)
        return jax.image.resize(grid_logits, (b, self.mask_size, self.mask_size), "bilinear")

    def outputs_from_features(self, params, features):
        patch_logits, text, _, _ = self._forward(params, features)
        anomaly_map = jax.nn.sigmoid(self._mask_logits(patch_logits))
        return anomaly_map, jax.nn.sigmoid(self._image_logit(params, patch_logits, features, text))

    def gpr_terms(self, params, features, text, stage_gravitons, stage_tokens):
        """L_grav and its terms averaged over the GPR stages (`gpr.stages`)."""
        k = len(stage_gravitons)
        stages = range(k) if self.config.gpr.stages == "all" else (k - 1,)
        taps = features["taps"]
        totals, terms = [], []
        for i in stages:
            if self.config.gpr.visual_tokens == "clip":
                # Stage i's tapped layer (the last one when the taps are fused into F_0).
                tokens = self.clip_tokens(params, taps[i if len(taps) == k else -1])
            else:
                tokens = stage_tokens[i]
            total, parts = gpr_lib.gpr_loss_batch(tokens.astype(jnp.float32), text,
                                                  stage_gravitons[i].astype(jnp.float32),
                                                  self.gpr_options)
            totals.append(total)
            terms.append(parts)
        mean = lambda xs: sum(xs) / len(xs)
        return mean(totals), {name: mean([t[name] for t in terms]) for name in terms[0]}

    def loss_from_features(self, params, features, batch, rng):
        del rng                                                     # deterministic: no dropout
        cfg = self.config.loss
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
        if self.uses_gpr:
            grav, parts = self.gpr_terms(params, features, text, stage_gravitons, stage_tokens)
            total = total + self.config.gpr.lambda_grav * grav
            terms.update(grav=grav, grav_att=parts["att"], grav_equ=parts["equ"])
        else:
            terms.update(grav=zero, grav_att=zero, grav_equ=zero)
        return total, terms
