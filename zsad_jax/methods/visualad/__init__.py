"""VisualAD (language-free ZSAD in a frozen ViT, CVPR 2026): method, heads, losses, head files."""

from zsad_jax.methods.visualad.method import VisualAD

__all__ = ["VisualAD"]
