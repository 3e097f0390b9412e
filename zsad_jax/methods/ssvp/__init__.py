"""SSVP (synergistic semantic-visual prompting, arXiv 2601.09147): method, modules, losses, config."""

from zsad_jax.methods.ssvp.method import SSVP

__all__ = ["SSVP"]
