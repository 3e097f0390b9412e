"""Position handling equal to torch: F.interpolate resizes and DINOv3 RoPE tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from zsad_jax.backbones.resize import resize_grid, resize_matrix
from zsad_jax.backbones.rope import rope_tables

SIZES = [(24, 37), (37, 24), (4, 7), (7, 4), (5, 5), (3, 11), (16, 9)]


def _torch_resize(x: np.ndarray, out_hw, mode: str) -> np.ndarray:
    """x: (h, w, D) -> (H, W, D) through torch F.interpolate on (1, D, h, w)."""
    t = torch.from_numpy(x).permute(2, 0, 1)[None]
    kwargs = dict(mode=mode.removesuffix("_aa"), align_corners=False)
    if mode.endswith("_aa"):
        kwargs["antialias"] = True
    y = torch.nn.functional.interpolate(t, size=out_hw, **kwargs)
    return y[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("mode", ["bicubic", "bilinear", "bicubic_aa", "bilinear_aa"])
def test_resize_equals_torch_interpolate(mode):
    rng = np.random.default_rng(0)
    for n_in, n_out in SIZES:
        x = rng.standard_normal((n_in, n_in + 1, 6)).astype(np.float32)
        want = _torch_resize(x, (n_out, n_out + 2), mode)
        got = np.asarray(resize_grid(x, (n_out, n_out + 2), mode))
        # torch evaluates the kernel weights in float32 (cancellation near |x| = 2): ~1e-5 off
        # the exact value on unit-scale inputs; ours are exact (float64) then rounded.
        np.testing.assert_allclose(got, want, atol=3e-5, rtol=0, err_msg=f"{n_in}->{n_out}")


def test_bicubic_is_not_jax_image_resize():
    """The reason resize.py exists: jax.image.resize's cubic kernel (a=-0.5) differs."""
    import jax

    x = np.random.default_rng(0).standard_normal((24, 24, 4)).astype(np.float32)
    ours = np.asarray(resize_grid(x, (37, 37), "bicubic"))
    theirs = np.asarray(jax.image.resize(x, (37, 37, 4), "bicubic"))
    assert np.abs(ours - theirs).max() > 1e-3
    np.testing.assert_allclose(ours, _torch_resize(x, (37, 37), "bicubic"), atol=3e-5)


def test_resize_matrix_rows_sum_to_one_and_identity():
    for mode in ("bicubic", "bilinear", "bicubic_aa", "bilinear_aa"):
        np.testing.assert_allclose(resize_matrix(9, 9, mode), np.eye(9), atol=1e-12)
        np.testing.assert_allclose(resize_matrix(24, 37, mode).sum(1), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="pos_interpolation='nearest'"):
        resize_matrix(4, 5, "nearest")


@pytest.mark.parametrize("grid", [(4, 4), (37, 37), (3, 5)])
def test_rope_tables_equal_transformers(grid):
    cfg = transformers.DINOv3ViTConfig(hidden_size=64, num_attention_heads=4, patch_size=16,
                                       rope_theta=100.0)
    rope = transformers.models.dinov3_vit.modeling_dinov3_vit.DINOv3ViTRopePositionEmbedding(cfg)
    rope.eval()
    cos_t, sin_t = rope(torch.zeros(1, 3, grid[0] * 16, grid[1] * 16))
    cos, sin = rope_tables(grid[0], grid[1], 16, 100.0)
    np.testing.assert_allclose(cos, cos_t.numpy(), atol=1e-6)
    np.testing.assert_allclose(sin, sin_t.numpy(), atol=1e-6)
