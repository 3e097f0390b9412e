"""The method contract: what the train loop, evaluation and prediction know about a method.

A method is a config plus an object of a `Method` subclass that gives

* `views`: the images it needs, one `ImageView` per backbone (size + normalization);
* `init(rng)`: the full parameter pytree, frozen backbone weights included (loaded from the
  converted folders named in `config.backbones.*.weights`);
* `loss(params, batch, rng) -> (scalar, {name: scalar})`: a pure function;
* `anomaly_outputs(params, batch) -> (anomaly_map (B, M, M), image_score (B,))`;
* `trainable`: regexes over '/'-joined parameter paths; everything else is frozen (no optimizer
  state, no update).

Optionally, methods whose trainable part sits entirely after the frozen backbones implement
`frozen_features` / `loss_from_features` / `outputs_from_features` so the loop can cache backbone
features on disk (`config.train.feature_cache`).

Batch layout (arrays with leading dimension B, as the data pipeline delivers them):

    images: {view_name: (B, S, S, 3) float32}   normalized for that view
    masks:  (B, M, M) float32 in {0, 1}         M = method.mask_size
    labels: (B,) int32                          0 normal / 1 anomalous
    class_name: (B,) numpy str                  host-only: removed by `prepare_batch`
    text:   optional pytree of (B, ...) int arrays  made by a method's `prepare_batch` from host
                                                keys (e.g. SSVP's class-word prompt token ids)

The loop knows nothing method-specific beyond this file.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

Params = Any
Batch = dict[str, Any]

# Keys of a batch that are arrays the compiled step may see.
DEVICE_KEYS = ("images", "masks", "labels", "text")


@dataclasses.dataclass(frozen=True)
class ImageView:
    """How one backbone wants its input: a square `size` x `size` image normalized with mean/std."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def path_str(path) -> str:
    """A jax tree path as 'a/b/c'."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def trainable_mask(params: Params, patterns: tuple[str, ...]) -> Params:
    """A pytree of bools: True where the '/'-joined path matches one of `patterns` (re.search)."""
    compiled = [re.compile(p) for p in patterns]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(c.search(path_str(path)) for c in compiled), params)


class Method(abc.ABC):
    """Base class of all methods; see the module docstring for the contract."""

    #: Registry name (the `config.method` value).
    name: ClassVar[str] = ""
    #: Regexes (re.search) over '/'-joined param paths of the trainable parameters.
    trainable: ClassVar[tuple[str, ...]] = ()
    #: True if `frozen_features` / `loss_from_features` / `outputs_from_features` are implemented.
    supports_feature_cache: ClassVar[bool] = False

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    # ---- required -------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def views(self) -> dict[str, ImageView]:
        """Image views this method consumes, keyed by name (usually the backbone's name)."""

    @property
    def mask_size(self) -> int:
        """Side of the square training masks and anomaly maps; default: the largest view."""
        return max(v.size for v in self.views.values())

    @abc.abstractmethod
    def init(self, rng: jax.Array) -> Params:
        """Full parameter pytree (frozen backbone weights included)."""

    @abc.abstractmethod
    def loss(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
        """Pure training loss: (scalar, dict of scalar terms for logging)."""

    @abc.abstractmethod
    def anomaly_outputs(self, params: Params, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """(anomaly_map (B, M, M), image_score (B,)), higher = more anomalous. Deterministic."""

    # ---- defaults -------------------------------------------------------------------------
    def trainable_mask(self, params: Params) -> Params:
        return trainable_mask(params, self.trainable)

    def prepare_batch(self, batch: Mapping[str, Any]) -> Batch:
        """Host batch -> the arrays the compiled functions see (drops strings, paths, ...)."""
        return {k: batch[k] for k in DEVICE_KEYS if k in batch}

    def required_files(self) -> list[tuple[str, str]]:
        """(path, how to get it) for every file the config needs; checked before compiling."""
        out = []
        for name, bb in self.config.backbones.items():
            if bb.weights:
                out.append((bb.weights, f"converted weights for backbone {name!r} ({bb.arch}): "
                            f"python -m weights_conversion --src <downloaded checkpoint> "
                            f"--dst {bb.weights}"))
        return out

    # ---- optional: frozen-feature cache ---------------------------------------------------
    def frozen_features(self, params: Params, batch: Batch) -> Any:
        """Backbone outputs the trainable part consumes: pytree of (B, ...) arrays."""
        raise NotImplementedError(f"{type(self).__name__} does not support the feature cache")

    def loss_from_features(self, params: Params, features: Any, batch: Batch,
                           rng: jax.Array) -> tuple[jax.Array, dict]:
        raise NotImplementedError(f"{type(self).__name__} does not support the feature cache")

    def outputs_from_features(self, params: Params, features: Any) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError(f"{type(self).__name__} does not support the feature cache")

    def feature_cache_key(self) -> dict:
        """What determines `frozen_features`: a stale cache is never reused across a change."""
        return {name: dict(arch=bb.arch, weights=bb.weights, image_size=bb.image_size,
                           layers=list(bb.layers))
                for name, bb in self.config.backbones.items()}


def compute_dtype(config: ml_collections.ConfigDict):
    """`config.train.compute_dtype` as a jnp dtype."""
    name = config.train.compute_dtype
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"config.train.compute_dtype={name!r}: use float32, bfloat16 or float16")
    return jnp.dtype(name)


def as_numpy_str(values) -> np.ndarray:
    return np.asarray(values, dtype=str)
