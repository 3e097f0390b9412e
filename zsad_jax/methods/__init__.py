"""Methods behind one contract (`base.Method`), each a room `zsad_jax/methods/<name>/`.

    from zsad_jax import methods
    method = methods.build(config)          # config.method picks the class

Registering a method is one line of `REGISTRY`; the contract test over the registry
(tests/test_method_contract.py) then trains, evaluates, predicts and benchmarks its demo config.
"""

from __future__ import annotations

import importlib

from zsad_jax.methods.base import FrozenFeaturesMethod, ImageView, Method

# name -> "module:Class"; imported on first use so that `import zsad_jax.methods` stays cheap.
REGISTRY = {
    "anomalyclip": "zsad_jax.methods.anomalyclip:AnomalyCLIP",
    "linear_probe": "zsad_jax.methods.linear_probe:LinearProbe",
    "sgnet": "zsad_jax.methods.sgnet:SGNet",
    "ssvp": "zsad_jax.methods.ssvp:SSVP",
    "visualad": "zsad_jax.methods.visualad:VisualAD",
}


def get_class(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise ValueError(f"config.method={name!r} is not a known method; known: {sorted(REGISTRY)}")
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build(config) -> Method:
    """The method object for `config` (`config.method` names it)."""
    return get_class(config.method)(config)


__all__ = ["REGISTRY", "FrozenFeaturesMethod", "ImageView", "Method", "build", "get_class"]
