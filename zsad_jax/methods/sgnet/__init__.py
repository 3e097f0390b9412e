"""SGNet (semantic gravitons, CVPR 2026): method, GIN modules, GPR losses, config sections."""

from zsad_jax.methods.sgnet.method import SGNet

__all__ = ["SGNet"]
