"""A tiny reference method for testing the engine: a linear probe on frozen random patch features.

Not a paper method. The "backbone" is a fixed random patch-embedding conv + a fixed random
non-linear mixing layer (frozen); the trainable part is one linear layer scoring each patch. It has
every feature of the contract (views, frozen/trainable split, feature cache) at a size that trains
in seconds on a CPU, so the train loop is tested independently of the real methods.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from zsad_jax.methods.base import ImageView, Method

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


class ProbeModel(nn.Module):
    patch: int
    width: int
    context_deviation: bool = False   # score |f - mean over the image of f| instead of f

    def setup(self):
        self.backbone = RandomPatchFeatures(self.patch, self.width)
        self.head = nn.Dense(1)

    def features(self, images):
        return self.backbone(images)

    def score(self, features):
        """(B, h, w, D) -> patch logits (B, h, w)."""
        if self.context_deviation:
            # How far each patch is from its image's mean feature: class-agnostic, so it can
            # transfer to unseen classes (the plain features do not).
            features = jnp.abs(features - features.mean(axis=(1, 2), keepdims=True))
        return self.head(features)[..., 0]

    def __call__(self, images):
        return self.score(self.features(images))


class LinearProbe(Method):
    name = "linear_probe"
    trainable = (r"^head/",)
    supports_feature_cache = True

    def __init__(self, config):
        super().__init__(config)
        bb = config.backbones.image
        self.model = ProbeModel(patch=config.model.patch, width=config.model.width,
                                context_deviation=bool(config.model.get("context_deviation",
                                                                        False)))
        self._balanced = bool(config.loss.get("balanced_pixel_bce", False))
        self._view = ImageView(size=bb.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    @property
    def views(self):
        return {"image": self._view}

    def init(self, rng):
        dummy = jnp.zeros((1, self._view.size, self._view.size, 3), jnp.float32)
        return self.model.init(rng, dummy)["params"]

    # -- shared pieces
    def frozen_features(self, params, batch):
        feats = self.model.apply({"params": params}, batch["images"]["image"],
                                 method=ProbeModel.features)
        return jax.lax.stop_gradient(feats)

    def _maps_from_features(self, params, features):
        logits = self.model.apply({"params": params}, features, method=ProbeModel.score)
        b = logits.shape[0]
        m = self.mask_size
        return jax.image.resize(logits, (b, m, m), "bilinear")

    def loss_from_features(self, params, features, batch, rng):
        del rng
        logits = self._maps_from_features(params, features)
        bce = optax.sigmoid_binary_cross_entropy(logits, batch["masks"])
        if self._balanced:
            # Anomalous and normal pixels weigh half each (anomalies are ~3% of pixels).
            masks = batch["masks"]
            pixel = (0.5 * (bce * masks).sum() / jnp.maximum(masks.sum(), 1.0)
                     + 0.5 * (bce * (1 - masks)).sum() / jnp.maximum((1 - masks).sum(), 1.0))
        else:
            pixel = bce.mean()
        image_logit = logits.reshape(logits.shape[0], -1).max(axis=1)
        image = optax.sigmoid_binary_cross_entropy(
            image_logit, batch["labels"].astype(jnp.float32)).mean()
        return pixel + image, {"pixel_bce": pixel, "image_bce": image}

    def loss(self, params, batch, rng):
        return self.loss_from_features(params, self.frozen_features(params, batch), batch, rng)

    def outputs_from_features(self, params, features):
        maps = jax.nn.sigmoid(self._maps_from_features(params, features))
        return maps, maps.reshape(maps.shape[0], -1).max(axis=1)

    def anomaly_outputs(self, params, batch):
        return self.outputs_from_features(params, self.frozen_features(params, batch))
