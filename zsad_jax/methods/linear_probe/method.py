"""A tiny reference method for testing the engine: a linear probe on frozen random patch features.

Not a paper method, and the template of a new method (docs/adding_a_method.md). The "backbone" is
a fixed random patch-embedding conv + a fixed random non-linear mixing layer (frozen); the
trainable part is one linear layer scoring each patch. It has every feature of the contract
(views, frozen/trainable split, feature cache) at a size that trains in seconds on a CPU, so the
train loop is tested independently of the real methods.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from zsad_jax import ops
from zsad_jax.backbones import ImageView
from zsad_jax.methods.base import FrozenFeaturesMethod
from zsad_jax.methods.linear_probe.config import Loss, Model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomPatchFeatures(nn.Module):
    """(B, S, S, 3) -> (B, S/p, S/p, D) frozen random features."""

    patch: int
    width: int

    @nn.compact
    def __call__(self, images):
        x = nn.Conv(self.width, (self.patch, self.patch), strides=self.patch, name="embed")(images)
        x = nn.gelu(x)
        return nn.Dense(self.width, name="mix")(x)


class PatchScorer(nn.Module):
    """(B, h, w, D) features -> patch logits (B, h, w)."""

    context_deviation: bool = False   # score |f - mean over the image of f| instead of f

    @nn.compact
    def __call__(self, features):
        if self.context_deviation:
            # How far each patch is from its image's mean feature: class-agnostic, so it can
            # transfer to unseen classes (the plain features do not).
            features = jnp.abs(features - features.mean(axis=(1, 2), keepdims=True))
        return nn.Dense(1, name="score")(features)[..., 0]


class LinearProbe(FrozenFeaturesMethod):
    """Params: {"backbones": {"image": RandomPatchFeatures}, "head": PatchScorer}."""

    name = "linear_probe"
    config_sections = {"model": Model, "loss": Loss}

    def __init__(self, config):
        super().__init__(config)
        m: Model = self.sections["model"]
        self.loss_cfg: Loss = self.sections["loss"]
        self.features = RandomPatchFeatures(m.patch, m.width)
        self.scorer = PatchScorer(m.context_deviation)
        self._view = ImageView(size=m.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    @property
    def views(self):
        return {"image": self._view}

    def init(self, rng):
        rng_features, rng_head = jax.random.split(rng)
        size = self._view.size
        features = self.features.init(rng_features, jnp.zeros((1, size, size, 3)))["params"]
        dummy = jax.eval_shape(self.features.apply, {"params": features},
                               jnp.zeros((1, size, size, 3)))
        head = self.scorer.init(rng_head, jnp.zeros(dummy.shape))["params"]
        return {"backbones": {"image": features}, "head": head}

    def frozen_features(self, params, batch):
        feats = self.features.apply({"params": params["backbones"]["image"]},
                                    batch["images"]["image"])
        return jax.lax.stop_gradient(feats)

    def _logit_maps(self, params, features):
        """(B, M, M) logits, bilinearly upsampled from the patch grid."""
        return ops.upsample_maps(self.scorer.apply({"params": params["head"]}, features),
                                 self.mask_size)

    def loss_from_features(self, params, features, batch, rng):
        del rng
        logits = self._logit_maps(params, features)
        bce = optax.sigmoid_binary_cross_entropy(logits, batch["masks"])
        if self.loss_cfg.balanced_pixel_bce:
            # Anomalous and normal pixels weigh half each (anomalies are ~3% of pixels).
            masks = batch["masks"]
            pixel = (0.5 * (bce * masks).sum() / jnp.maximum(masks.sum(), 1.0)
                     + 0.5 * (bce * (1 - masks)).sum() / jnp.maximum((1 - masks).sum(), 1.0))
        else:
            pixel = bce.mean()
        image_logit = logits.reshape(logits.shape[0], -1).max(axis=1)
        image = optax.sigmoid_binary_cross_entropy(
            image_logit, batch["labels"].astype(jnp.float32)).mean()
        return pixel + image, {"seg_bce": pixel, "cls_bce": image}

    def outputs_from_features(self, params, features, batch):
        maps = jax.nn.sigmoid(self._logit_maps(params, features))
        return maps, maps.reshape(maps.shape[0], -1).max(axis=1)
