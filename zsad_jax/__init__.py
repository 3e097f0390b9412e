"""zsad_jax: zero-shot anomaly detection in JAX/Flax (SGNet, SSVP, VisualAD and the AnomalyCLIP baseline).

Importing the package is cheap and never imports torch or tensorflow (optional extras).
Sub-packages: `backbones`, `methods`, `data`, `metrics`, `losses`, `training`, `evaluation`.
"""

__version__ = "0.1.0"
