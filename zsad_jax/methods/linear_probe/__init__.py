"""The reference linear probe (tests, engine demos, and the template of a new method)."""

from zsad_jax.methods.linear_probe.method import LinearProbe

__all__ = ["LinearProbe"]
