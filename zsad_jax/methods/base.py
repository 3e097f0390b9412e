"""The method contract: what the train loop, evaluation, prediction and benchmarks know of a method.

A method is a config plus an object of a `Method` subclass, living in its own room
`zsad_jax/methods/<name>/` (method, modules, losses, config sections) and registered by one line
in `zsad_jax/methods/__init__.py`. It gives

* `config_sections`: its typed config sections (`zsad_jax.config_types.Section`), checked once
  by `validate_config` before anything is built; `check_config` adds cross-section checks;
* `backbones`: its frozen towers, built with `zsad_jax.backbones.from_config` (one loading policy,
  one tokenizer rule) in `__init__`; `views` (input size and normalization per tower) follow;
* `init(rng)`: the full parameter pytree {"backbones": {name: tower params}, "head": trainable};
* `loss(params, batch, rng) -> (scalar, {term: scalar})`: a pure function;
* `anomaly_outputs(params, batch) -> (anomaly_map (B, M, M), image_score (B,))`, deterministic;
* `trainable`: regexes over '/'-joined parameter paths (default: everything under "head/");
* `prepare_batch(host_batch)`: the device batch (`zsad_jax.data.batch`); the only place a method
  adds keys (e.g. prompt token ids from `class_name`).

Methods whose trainable part sits entirely after the frozen towers also implement
`frozen_features` / `loss_from_features` / `outputs_from_features` (`supports_feature_cache`), so
the loop can train from backbone features cached on disk (`config.train.feature_cache`).

The engine (`zsad_jax.training`, `zsad_jax.evaluation`, `zsad_jax.predict`) knows nothing of a
method beyond this file. Template of a new method: `zsad_jax/methods/linear_probe/`, and
docs/adding_a_method.md.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections

from zsad_jax import backbones as backbones_lib
from zsad_jax.backbones import Backbone, ImageView
from zsad_jax.config_types import ConfigError, Section, config_sha256
from zsad_jax.data.batch import DEVICE_KEYS, Batch
from zsad_jax.tree import path_str, regex_mask, unmatched_patterns

log = logging.getLogger(__name__)

Params = Any


class Method(abc.ABC):
    """Base class of all methods; see the module docstring for the contract."""

    #: Registry name (the `config.method` value).
    name: ClassVar[str] = ""
    #: Typed config sections of the method: {section name: Section class}, e.g. {"model": Model}.
    config_sections: ClassVar[dict[str, type[Section]]] = {}
    #: True if `frozen_features` / `loss_from_features` / `outputs_from_features` are implemented.
    supports_feature_cache: ClassVar[bool] = False
    #: Regexes (re.search) over '/'-joined param paths of the trainable parameters.
    trainable: tuple[str, ...] = (r"^head/",)

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.sections = type(self).validate_config(config)
        self.dtype = jnp.dtype(config.train.compute_dtype)
        self.backbones: dict[str, Backbone] = {}
        self._identity = (type(self), config_sha256(config))

    # Two methods built from equal configs are equal (they compute the same functions): compiled
    # functions cached per method (evaluation's inference) are shared between them.
    def __eq__(self, other) -> bool:
        return isinstance(other, Method) and self._identity == other._identity

    def __hash__(self) -> int:
        return hash(self._identity)

    # ---- config ---------------------------------------------------------------------------
    @classmethod
    def validate_config(cls, config: ml_collections.ConfigDict) -> dict[str, Section]:
        """The method's typed sections of `config`, checked (ConfigError naming the key)."""
        sections = {name: section.from_config(config.get(name), name)
                    for name, section in cls.config_sections.items()}
        cls.check_config(config, sections)
        return sections

    @classmethod
    def check_config(cls, config: ml_collections.ConfigDict, sections: dict[str, Section]) -> None:
        """Checks across sections (e.g. which backbones the method needs); raise ConfigError."""
        del config, sections        # nothing to check across the sections of the base contract

    @staticmethod
    def require_backbones(config, names, what: str) -> None:
        """ConfigError unless config.backbones has exactly the sections `names`."""
        have = sorted(config.backbones.keys())
        if have != sorted(names):
            raise ConfigError(f"config.backbones has {have or 'no sections'}; {what} needs "
                              f"{sorted(names)}")

    @property
    def remat_policy(self) -> str:
        """`config.train.remat`; "auto" builds like "none" (the train loop then picks the policy
        by memory and rebuilds the method with it)."""
        policy = self.config.train.remat
        return "none" if policy == "auto" else policy

    def build_backbone(self, name: str, **kwargs) -> Backbone:
        """The tower of `config.backbones.<name>` in this method's compute dtype and remat."""
        bb = backbones_lib.from_config(name, self.config.backbones[name], dtype=self.dtype,
                                       remat=self.remat_policy, **kwargs)
        self.backbones[name] = bb
        return bb

    # ---- required -------------------------------------------------------------------------
    @property
    def views(self) -> dict[str, ImageView]:
        """Image views this method consumes, keyed by name (default: one per backbone)."""
        return {name: bb.view for name, bb in self.backbones.items()}

    @property
    def mask_size(self) -> int:
        """Side of the square training masks and anomaly maps; default: the largest view."""
        return max(v.size for v in self.views.values())

    def init(self, rng: jax.Array) -> Params:
        """Full parameter pytree: {"backbones": {name: frozen tower}, "head": `init_head`}."""
        head_rng, *keys = jax.random.split(rng, len(self.backbones) + 1)
        towers = {name: bb.init(key) for (name, bb), key in zip(self.backbones.items(), keys,
                                                                 strict=True)}
        return {"backbones": towers, "head": self.init_head(head_rng, towers)}

    def init_head(self, rng: jax.Array, towers: dict[str, Params]) -> Params:
        """The trainable parameters (given the frozen towers' parameters)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither init nor init_head")

    @abc.abstractmethod
    def loss(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
        """Pure training loss: (scalar, dict of scalar terms for logging)."""

    @abc.abstractmethod
    def anomaly_outputs(self, params: Params, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """(anomaly_map (B, M, M), image_score (B,)), higher = more anomalous. Deterministic."""

    # ---- defaults -------------------------------------------------------------------------
    def trainable_mask(self, params: Params) -> Params:
        """Bool pytree of `params`: the leaves `trainable` matches. A regex matching no parameter
        is named in a warning."""
        paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        for pattern in unmatched_patterns(paths, self.trainable):
            log.warning("%s: trainable pattern %r matches no parameter", self.name, pattern)
        return regex_mask(params, tuple(self.trainable))

    def prepare_batch(self, batch: Mapping[str, Any]) -> Batch:
        """Host batch -> the arrays the compiled functions see (drops strings, paths, ...)."""
        return {k: batch[k] for k in DEVICE_KEYS if k in batch}

    def required_files(self) -> list[tuple[str, str]]:
        """(path, how to get it) for every file the config needs; checked before compiling."""
        return [item for bb in self.backbones.values() for item in bb.required_files()]

    # ---- optional: frozen-feature cache ---------------------------------------------------
    def frozen_features(self, params: Params, batch: Batch) -> Any:
        """Backbone outputs the trainable part consumes: pytree of (B, ...) arrays."""
        raise NotImplementedError(f"{type(self).__name__} does not support the feature cache")

    def loss_from_features(self, params: Params, features: Any, batch: Batch,
                           rng: jax.Array) -> tuple[jax.Array, dict]:
        raise NotImplementedError(f"{type(self).__name__} does not support the feature cache")

    def outputs_from_features(self, params: Params, features: Any,
                              batch: Batch) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError(f"{type(self).__name__} does not support the feature cache")

    def feature_cache_key(self) -> dict:
        """What determines `frozen_features`: a stale cache is never reused across a change."""
        return {name: bb.cache_key() for name, bb in self.backbones.items()}




class FrozenFeaturesMethod(Method):
    """A method whose trainable part reads only `frozen_features` (the feature cache works): its
    `loss` and `anomaly_outputs` are the `*_from_features` functions on the towers' outputs."""

    supports_feature_cache: ClassVar[bool] = True

    @abc.abstractmethod
    def frozen_features(self, params: Params, batch: Batch) -> Any:
        """Backbone outputs the trainable part consumes: pytree of (B, ...) arrays (no gradient)."""

    @abc.abstractmethod
    def loss_from_features(self, params: Params, features: Any, batch: Batch,
                           rng: jax.Array) -> tuple[jax.Array, dict]:
        """`loss` after the frozen towers."""

    @abc.abstractmethod
    def outputs_from_features(self, params: Params, features: Any,
                              batch: Batch) -> tuple[jax.Array, jax.Array]:
        """`anomaly_outputs` after the frozen towers."""

    def loss(self, params, batch, rng):
        return self.loss_from_features(params, self.frozen_features(params, batch), batch, rng)

    def anomaly_outputs(self, params, batch):
        return self.outputs_from_features(params, self.frozen_features(params, batch), batch)


__all__ = ["Batch", "FrozenFeaturesMethod", "ImageView", "Method", "Params"]
