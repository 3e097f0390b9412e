"""What `encode_image` returns."""

from __future__ import annotations

import flax.struct
import jax


@flax.struct.dataclass
class ImageFeatures:
    """Outputs of `encode_image`.

    layers: tuple of (B, T, D), one per requested 1-based block, all tokens (prefix tokens, class
        token, registers, patches) before any final norm.
    pooled: CLIP: projected image embedding (B, E); DINO: final-normed class token (B, D).
    grid: (h, w) patch grid; num_prefix: number of tokens before the patches (T = num_prefix + h*w).
    final: only when requested (CLIP `encode_image(..., final_hidden=True)`): the last block's output
        (B, T, D) of the normal stream, before the final norm. With the V-V path (`vv_from_layer`)
        the tapped layers come from the V-V stream while this stays the original one
        (AnomalyCLIP's global feature: its class token @ proj, without ln_post). None otherwise.
    """

    layers: tuple[jax.Array, ...]
    pooled: jax.Array
    grid: tuple[int, int] = flax.struct.field(pytree_node=False, default=(0, 0))
    num_prefix: int = flax.struct.field(pytree_node=False, default=0)
    final: jax.Array | None = None

    def patch_tokens(self, index: int = -1) -> jax.Array:
        """Patch tokens of the `index`-th tapped layer: (B, h*w, D)."""
        return self.layers[index][:, self.num_prefix:]
