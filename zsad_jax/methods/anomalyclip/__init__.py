"""AnomalyCLIP (ICLR 2024): object-agnostic prompts, DPAM, the official release's numerics."""

from zsad_jax.methods.anomalyclip.method import AnomalyCLIP

__all__ = ["AnomalyCLIP"]
