"""VisualAD: language-free zero-shot anomaly detection in a frozen ViT (CVPR 2026).

Two learnable tokens, anomaly t_a and normal t_n, are inserted before the class token of a frozen
ViT (CLIP ViT-L/14@336 at 518, or DINOv2 ViT-L/14 at 518) with their own position embeddings:

    z_0 = [t_a, t_n, t_c, p_1, ..., p_N]                                  (VisualAD "Overall")

The class and patch position embeddings stay frozen (resized to the grid by the backbone).
Gradients reach the tokens through the whole frozen tower (`config.train.remat` recomputes the
blocks in the backward pass). For each tapped layer l in {6, 12, 18, 24}: final LayerNorm of the
tokens and patches, SCA enhances the tokens, SAF calibrates the patches, and
s_i = cos(p_i, t_a) - cos(p_i, t_n); the per-layer maps are upsampled (bilinear) and summed,
H = sum_l H_l; the image score is the mean of the top 1% of H (see modules.py and losses.py).

Readings of the summary, with the official release (GitHub 7HHHHH/VisualAD) as the tie-breaker:

* Which tokens feed each layer's SCA: the release uses t_a, t_n of the *last* block (final-LN'd)
  for every layer (`model.token_source="last"`, default); `"per_layer"` uses the tokens of each
  tapped layer instead.
* Position embeddings of t_a, t_n: paper "learnable"; the release initialises both to the class
  token's position embedding and then leaves them frozen (and does not save them).
  Default: initialised from the class position, trainable (`model.learn_token_pos=False` = release).
* Final LayerNorm: applied without the projection (release: `ln_post` only, width D). The release
  also trains `ln_post` but its test script evaluates with CLIP's own; default frozen
  (`model.train_final_norm=True` trains a copy of it, `head/final_norm`, as the release's
  training does).
* Image score at inference: the release takes the top-1% mean of the Gaussian-smoothed map
  (sigma 4, scipy's `gaussian_filter`); `model.score_sigma` (0 = raw map). In training it is the
  raw summed map, as in the release.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from zsad_jax import ops
from zsad_jax.config_types import ConfigError
from zsad_jax.methods.base import Method
from zsad_jax.methods.visualad import losses as vloss
from zsad_jax.methods.visualad import weights as head_files
from zsad_jax.methods.visualad.config import Loss, Model
from zsad_jax.methods.visualad.modules import VisualADHead

FAMILIES = ("clip", "dinov2")


class VisualAD(Method):
    """See the module docstring. Params: {"backbones": {view: frozen ViT}, "head": VisualADHead}."""

    name = "visualad"
    config_sections = {"model": Model, "loss": Loss}

    @classmethod
    def check_config(cls, config, sections):
        if len(config.backbones) != 1:
            raise ConfigError(f"config.backbones has {sorted(config.backbones.keys())}; VisualAD "
                              f"uses exactly one backbone")
        (name, spec), = config.backbones.items()
        if not spec.arch.startswith(FAMILIES):
            raise ConfigError(f"config.backbones.{name}.arch={spec.arch!r}: VisualAD runs on CLIP "
                              f"or DINOv2 towers")

    def __init__(self, config):
        super().__init__(config)
        self.model_cfg: Model = self.sections["model"]
        self.loss_cfg: Loss = self.sections["loss"]
        (self.view_name, _), = config.backbones.items()
        self.vit = self.build_backbone(self.view_name, text=False)     # language-free
        if self.vit.arch.family not in FAMILIES:
            raise ConfigError(f"config.backbones.{self.view_name}: the converted weights are a "
                              f"{self.vit.arch.family!r} tower; VisualAD runs on {FAMILIES}")
        depth = self.vit.arch.depth
        self.layers = self.vit.layers
        # Taps: the requested layers, plus the last block (tokens, token_source="last").
        self.taps = self.layers + (() if depth in self.layers else (depth,))
        m = self.model_cfg
        self.head = VisualADHead(
            dim=self.vit.arch.width, layers=self.layers, num_anchors=m.num_anchors,
            max_patches=m.sca_max_patches, dropout=m.dropout, res_scale_init=m.res_scale_init,
            saf_hidden=m.saf_hidden, use_sca=m.use_sca, use_saf=m.use_saf)
        # SCA's key LayerNorm bias adds one vector to every key, which shifts each anchor's
        # logits by a constant that softmax ignores: its gradient is exactly zero, so it is
        # frozen (the release trains it; only weight decay ever changes it, without effect).
        frozen = ["sca_\\d+/k_norm/bias"] + ([] if m.learn_token_pos else ["anomaly_pos", "normal_pos"])
        self.trainable = (rf"^head/(?!({'|'.join(frozen)})$)",)

    # ---- parameters ---------------------------------------------------------------------------
    def init_head(self, rng, towers):
        tower = towers[self.view_name]
        d = self.vit.arch.width
        dummy_tok = jnp.zeros((1, d), jnp.float32)
        patches = [jnp.zeros((1, self.vit.num_patches, d), jnp.float32)] * len(self.layers)
        head = dict(jax.jit(lambda r: self.head.init(r, dummy_tok, dummy_tok, patches))(rng)["params"])
        if self.model_cfg.token_pos_init == "class":     # release: both = class position
            class_pos = jnp.asarray(self.vit.param(tower, "class_pos")[0], jnp.float32)
            head["anomaly_pos"] = head["normal_pos"] = class_pos
        if self.model_cfg.train_final_norm:              # a trainable copy of the final norm
            head["final_norm"] = jax.tree_util.tree_map(
                lambda x: jnp.asarray(x, jnp.float32), self.vit.param(tower, "final_norm"))
        if self.model_cfg.head_weights:
            head = self._load_head(head)
        return jax.tree_util.tree_map(jnp.asarray, head)

    def _load_head(self, head):
        path = self.model_cfg.head_weights
        loaded, meta = head_files.load_head(path)
        m = self.model_cfg
        expected = dict(dim=self.vit.arch.width, layers=list(self.layers), use_sca=bool(m.use_sca),
                        use_saf=bool(m.use_saf))
        if m.use_sca:
            expected.update(num_anchors=m.num_anchors, max_patches=m.sca_max_patches)
        if m.use_saf:
            expected["saf_hidden"] = m.saf_hidden or self.vit.arch.width
        for key, value in expected.items():
            if meta.get(key) != value:
                raise ValueError(f"config.model.head_weights={path!r}: {key}={meta.get(key)!r} in "
                                 f"{head_files.META_FILE}, but this config needs {value!r}")
        return head_files.merge_head(head, loaded, path)

    # ---- the model ----------------------------------------------------------------------------
    def _final_norm(self, params, x, training: bool):
        """The tower's final LayerNorm (no projection) on (B, T, D), in float32: the trained copy
        with model.train_final_norm (at evaluation only with eval_final_norm="trained")."""
        m = self.model_cfg
        if m.train_final_norm and (training or m.eval_final_norm == "trained"):
            ln = params["head"]["final_norm"]
        else:
            ln = self.vit.param(params["backbones"][self.view_name], "final_norm")
        return nn.LayerNorm(epsilon=self.vit.arch.layer_norm_eps).apply(
            {"params": ln}, x.astype(jnp.float32))

    def forward(self, params, images, *, deterministic=True, rng=None, training=False):
        """images (B, S, S, 3) -> (layer maps (L, B, M, M), enhanced t_a, t_n of the last layer (B, D)).

        `deterministic`: no dropout; `training`: the training's forward (the final norm it trains).

        Maps are raw contrastive differences upsampled bilinearly (half-pixel centres, torch
        `align_corners=False`) to the mask size.
        """
        head = {k: v for k, v in params["head"].items() if k != "final_norm"}
        prefix, prefix_pos = self.head.apply({"params": head}, method=VisualADHead.prefix)
        out = self.vit.encode_image(params["backbones"][self.view_name], images, self.taps,
                                    prefix_tokens=prefix, prefix_pos_embed=prefix_pos)
        normed = [self._final_norm(params, x, training) for x in out.layers]
        patches = [normed[i][:, out.num_prefix:] for i in range(len(self.layers))]
        if self.model_cfg.token_source == "last":          # release: last block's tokens
            last = normed[self.taps.index(self.vit.arch.depth)]
            t_a, t_n = last[:, 0], last[:, 1]                                      # (B, D)
        else:                                                # each tapped layer's own tokens
            t_a = jnp.stack([normed[i][:, 0] for i in range(len(self.layers))])   # (L, B, D)
            t_n = jnp.stack([normed[i][:, 1] for i in range(len(self.layers))])
        rngs = {} if deterministic else {"dropout": rng}
        scores, enh_a, enh_n = self.head.apply({"params": head}, t_a, t_n, patches,
                                               deterministic, rngs=rngs)
        num_layers, b = scores.shape[:2]
        maps = ops.upsample_maps(scores.reshape(num_layers, b, *out.grid), self.mask_size)
        return maps, enh_a[-1], enh_n[-1]

    def loss(self, params, batch, rng):
        images = batch["images"][self.view_name]
        maps, t_a, t_n = self.forward(params, images, deterministic=self.model_cfg.dropout == 0,
                                      rng=rng, training=True)
        lc = self.loss_cfg
        return vloss.visualad_loss(maps, batch["masks"], batch["labels"], t_a, t_n, margin=lc.margin,
                                   topk_ratio=self.model_cfg.topk_ratio, use_seg=lc.use_seg,
                                   use_cls=lc.use_cls, use_ctr=lc.use_ctr, focal=lc.focal)

    def anomaly_outputs(self, params, batch):
        maps, _, _ = self.forward(params, batch["images"][self.view_name])
        fused = maps.sum(axis=0)                                               # H = sum_l H_l
        score = ops.topk_mean(ops.smooth_maps(fused, self.model_cfg.score_sigma),
                              self.model_cfg.topk_ratio)
        return fused, score

    def required_files(self):
        out = super().required_files()
        if self.model_cfg.head_weights:
            out.append((self.model_cfg.head_weights,
                        "converted VisualAD head: python -m weights_conversion.visualad --src CLIP.pth "
                        f"--dst {self.model_cfg.head_weights}"))
        return out
