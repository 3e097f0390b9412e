"""VisualAD: language-free zero-shot anomaly detection in a frozen ViT (../shared/papers/visualad.md).

Two learnable tokens, anomaly t_a and normal t_n, are inserted before the class token of a frozen
ViT (CLIP ViT-L/14@336 at 518, or DINOv2 ViT-L/14 at 518) with their own position embeddings:

    z_0 = [t_a, t_n, t_c, p_1, ..., p_N]                                  (VisualAD "Overall")

The class and patch position embeddings stay frozen (resized to the grid by the backbone).
Gradients reach the tokens through the whole frozen tower (`config.train.remat` recomputes the
blocks in the backward pass). For each tapped layer l in {6, 12, 18, 24}: final LayerNorm of the
tokens and patches, SCA enhances the tokens, SAF calibrates the patches, and
s_i = cos(p_i, t_a) - cos(p_i, t_n); the per-layer maps are upsampled (bilinear) and summed,
H = sum_l H_l; the image score is the mean of the top 1% of H (see zsad_jax/methods/visualad_heads.py
and zsad_jax/losses/visualad.py).

Readings of the summary, with the official release (GitHub 7HHHHH/VisualAD) as the tie-breaker:

* Which tokens feed each layer's SCA: the release uses t_a, t_n of the *last* block (final-LN'd)
  for every layer (`model.token_source="last"`, default); `"per_layer"` uses the tokens of each
  tapped layer instead.
* Position embeddings of t_a, t_n: paper "learnable"; the release initialises both to the class
  token's position embedding and then leaves them frozen (and does not save them).
  Default: initialised from the class position, trainable (`model.learn_token_pos=False` = release).
* Final LayerNorm: applied without the projection (release: `ln_post` only, width D). The release
  also trains `ln_post` but its test script evaluates with CLIP's own; default frozen
  (`model.train_final_norm=True` trains it, as the release's training does).
* Image score at inference: the release takes the top-1% mean of the Gaussian-smoothed map
  (sigma 4, scipy's `gaussian_filter`); `model.score_sigma` (0 = raw map). In training it is the
  raw summed map, as in the release.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zsad_jax.losses import visualad as vloss
from zsad_jax.methods import visualad_weights
from zsad_jax.methods.base import ImageView, Method, compute_dtype
from zsad_jax.methods.visualad_heads import VisualADHead

TOKEN_SOURCES = ("last", "per_layer")
TOKEN_POS_INITS = ("class", "random")


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's Gaussian kernel: radius int(truncate * sigma + 0.5), normalised."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_smooth(maps: jax.Array, sigma: float) -> jax.Array:
    """(B, H, W) -> (B, H, W), equal to scipy.ndimage.gaussian_filter(mode='reflect') per map."""
    if sigma <= 0:
        return maps
    k = jnp.asarray(gaussian_kernel1d(sigma), maps.dtype)
    r = (k.shape[0] - 1) // 2
    x = jnp.pad(maps, ((0, 0), (r, r), (r, r)), mode="symmetric")[:, None]  # scipy 'reflect'
    for kernel in (k.reshape(1, 1, -1, 1), k.reshape(1, 1, 1, -1)):          # separable passes
        x = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                         precision=jax.lax.Precision.HIGHEST)
    return x[:, 0]


class VisualAD(Method):
    """See the module docstring. Params: {"backbone": frozen ViT, "head": `VisualADHead`}."""

    name = "visualad"
    trainable = (r"^head/",)
    supports_feature_cache = False   # the tokens run through the tower: nothing frozen to cache

    def __init__(self, config):
        super().__init__(config)
        from zsad_jax import backbones

        if len(config.backbones) != 1:
            raise ValueError(f"VisualAD uses exactly one backbone; config.backbones has "
                             f"{sorted(config.backbones.keys())}")
        (self.view_name, bb), = config.backbones.items()
        self.bb_config = bb
        m = config.model
        if m.token_source not in TOKEN_SOURCES:
            raise ValueError(f"config.model.token_source={m.token_source!r}: use one of {TOKEN_SOURCES}")
        if m.token_pos_init not in TOKEN_POS_INITS:
            raise ValueError(f"config.model.token_pos_init={m.token_pos_init!r}: use one of "
                             f"{TOKEN_POS_INITS}")
        self.arch = backbones.get_arch(self._arch_source())
        if self.arch.family not in ("clip", "dinov2"):
            raise ValueError(f"config.backbones.{self.view_name}.arch={bb.arch!r}: VisualAD runs on "
                             f"CLIP or DINOv2 towers, not {self.arch.family!r}")
        self.layers = tuple(int(i) for i in bb.layers)
        if not self.layers or any(not 1 <= i <= self.arch.depth for i in self.layers):
            raise ValueError(f"config.backbones.{self.view_name}.layers={self.layers}: 1-based block "
                             f"indices in [1, {self.arch.depth}] are required")
        if bb.image_size % self.arch.patch_size:
            raise ValueError(f"config.backbones.{self.view_name}.image_size={bb.image_size} is not a "
                             f"multiple of the patch size {self.arch.patch_size}")
        # Taps: the requested layers, plus the last block (tokens, token_source="last").
        self.taps = self.layers + (() if self.arch.depth in self.layers else (self.arch.depth,))
        self.dtype = compute_dtype(config)
        self.backbone = backbones.build(self.arch, dtype=self.dtype,
                                        pos_interpolation=bb.pos_interpolation,
                                        remat=bool(config.train.remat))
        self.head = VisualADHead(
            dim=self.arch.width, layers=self.layers, num_anchors=m.num_anchors,
            max_patches=m.sca_max_patches, dropout=m.dropout, res_scale_init=m.res_scale_init,
            saf_hidden=m.saf_hidden, use_sca=m.use_sca, use_saf=m.use_saf)
        mean, std = backbones.normalization(self.arch)
        self._view = ImageView(size=bb.image_size, mean=tuple(mean), std=tuple(std))
        # SCA's key LayerNorm bias adds one vector to every key, which shifts each anchor's
        # logits by a constant that softmax ignores: its gradient is exactly zero, so it is
        # frozen (the release trains it; only weight decay ever changes it, without effect).
        patterns = [r"^head/(?!anomaly_pos$|normal_pos$|sca_\d+/k_norm/bias$)"]
        if m.learn_token_pos:
            patterns.append(r"^head/(anomaly_pos|normal_pos)$")
        if m.train_final_norm:
            patterns.append("^backbone/" + re.escape("/".join(self._final_norm_path())) + "/")
        self.trainable = tuple(patterns)

    # ---- backbone plumbing --------------------------------------------------------------------
    def _arch_source(self):
        """The architecture: from the converted folder's JSON config when weights are given."""
        import pathlib

        from zsad_jax.backbones import io

        weights = self.bb_config.weights
        if weights and (pathlib.Path(weights) / io.CONFIG_FILE).is_file():
            return io.read_config(weights)
        return self.bb_config.arch     # a missing folder is reported by required_files()

    def _final_norm_path(self) -> tuple[str, ...]:
        """Path of the final LayerNorm (CLIP ln_post, DINOv2 norm) in the backbone params."""
        return ("visual", "ln_post") if self.arch.family == "clip" else ("norm",)

    def _class_pos_path(self) -> tuple[str, ...]:
        return ("visual", "pos_embed") if self.arch.family == "clip" else ("pos_embed",)

    @staticmethod
    def _get(tree, path, what):
        node = tree
        for key in path:
            if key not in node:
                raise KeyError(f"VisualAD: backbone params have no {'/'.join(path)} ({what}); "
                               f"top-level keys: {sorted(tree)}")
            node = node[key]
        return node

    def _final_norm(self, backbone_params, x):
        """The backbone's final LayerNorm (no projection) on (B, T, D), in float32."""
        ln = self._get(backbone_params, self._final_norm_path(), "final LayerNorm")
        return nn.LayerNorm(epsilon=self.arch.layer_norm_eps).apply(
            {"params": ln}, x.astype(jnp.float32))

    # ---- contract -----------------------------------------------------------------------------
    @property
    def views(self):
        return {self.view_name: self._view}

    def init(self, rng):
        from zsad_jax import backbones

        bb_rng, head_rng = jax.random.split(rng)
        size = self._view.size
        if self.bb_config.weights:
            _, bb_params = backbones.load(self.bb_config.weights, dtype=self.dtype,
                                          pos_interpolation=self.bb_config.pos_interpolation)
            bb_params = {k: v for k, v in bb_params.items() if k != "text"}   # language-free
        else:   # only what encode_image uses (no text tower)
            bb_params = jax.jit(lambda r: self.backbone.init(
                r, jnp.zeros((1, size, size, 3), jnp.float32), method="encode_image"))(bb_rng)
            bb_params = bb_params["params"]
        d = self.arch.width
        n = (size // self.arch.patch_size) ** 2
        dummy_tok = jnp.zeros((1, d), jnp.float32)
        head = jax.jit(lambda r: self.head.init(
            r, dummy_tok, dummy_tok, [jnp.zeros((1, n, d), jnp.float32)] * len(self.layers)))(head_rng)
        head = head["params"]
        head = dict(head)
        if self.config.model.token_pos_init == "class":     # release: both = class position
            cls_pos = self._get(bb_params, self._class_pos_path(), "position embedding")[0]
            head["anomaly_pos"] = jnp.asarray(cls_pos, jnp.float32)
            head["normal_pos"] = jnp.asarray(cls_pos, jnp.float32)
        if self.config.model.head_weights:
            head = self._load_head(head)
        return {"backbone": bb_params, "head": jax.tree_util.tree_map(jnp.asarray, head)}

    def _load_head(self, head):
        path = self.config.model.head_weights
        loaded, meta = visualad_weights.load_head(path)
        m = self.config.model
        expected = dict(dim=self.arch.width, layers=list(self.layers), use_sca=bool(m.use_sca),
                        use_saf=bool(m.use_saf))
        if m.use_sca:
            expected.update(num_anchors=m.num_anchors, max_patches=m.sca_max_patches)
        if m.use_saf:
            expected["saf_hidden"] = m.saf_hidden or self.arch.width
        for key, value in expected.items():
            if meta.get(key) != value:
                raise ValueError(f"config.model.head_weights={path!r}: {key}={meta.get(key)!r} in "
                                 f"{visualad_weights.META_FILE}, but this config needs {value!r}")
        return visualad_weights.merge_head(head, loaded, path)

    def forward(self, params, images, *, deterministic=True, rng=None):
        """images (B, S, S, 3) -> (layer maps (L, B, M, M), enhanced t_a, t_n of the last layer (B, D)).

        Maps are raw contrastive differences upsampled bilinearly (half-pixel centres, torch
        `align_corners=False`) to the mask size.
        """
        prefix, prefix_pos = self.head.apply({"params": params["head"]}, method=VisualADHead.prefix)
        out = self.backbone.apply({"params": params["backbone"]}, images, layers=self.taps,
                                  prefix_tokens=prefix, prefix_pos_embed=prefix_pos,
                                  method="encode_image")
        normed = [self._final_norm(params["backbone"], x) for x in out.layers]
        patches = [normed[i][:, out.num_prefix:] for i in range(len(self.layers))]
        if self.config.model.token_source == "last":       # release: last block's tokens
            last = normed[self.taps.index(self.arch.depth)]
            t_a, t_n = last[:, 0], last[:, 1]                                      # (B, D)
        else:                                                # each tapped layer's own tokens
            t_a = jnp.stack([normed[i][:, 0] for i in range(len(self.layers))])   # (L, B, D)
            t_n = jnp.stack([normed[i][:, 1] for i in range(len(self.layers))])
        rngs = {} if deterministic else {"dropout": rng}
        scores, enh_a, enh_n = self.head.apply({"params": params["head"]}, t_a, t_n, patches,
                                               deterministic, rngs=rngs)
        num_layers, b = scores.shape[:2]
        h, w = out.grid
        m = self.mask_size
        maps = jax.image.resize(scores.reshape(num_layers, b, h, w), (num_layers, b, m, m), "bilinear")
        return maps, enh_a[-1], enh_n[-1]

    def loss(self, params, batch, rng):
        images = batch["images"][self.view_name]
        maps, t_a, t_n = self.forward(params, images, deterministic=self.config.model.dropout == 0,
                                      rng=rng)
        lc = self.config.loss
        return vloss.visualad_loss(maps, batch["masks"], batch["labels"], t_a, t_n, margin=lc.margin,
                                   topk_ratio=self.config.model.topk_ratio, use_seg=lc.use_seg,
                                   use_cls=lc.use_cls, use_ctr=lc.use_ctr)

    def anomaly_outputs(self, params, batch):
        maps, _, _ = self.forward(params, batch["images"][self.view_name])
        fused = maps.sum(axis=0)                                               # H = sum_l H_l
        score = vloss.topk_mean(gaussian_smooth(fused, self.config.model.score_sigma),
                                self.config.model.topk_ratio)
        return fused, score

    def required_files(self):
        out = super().required_files()
        if self.config.model.head_weights:
            out.append((self.config.model.head_weights,
                        "converted VisualAD head: python -m weights_conversion.visualad --src CLIP.pth "
                        f"--dst {self.config.model.head_weights}"))
        return out
