"""Exact curves: their areas are the metrics, hand-checked tiny cases, decimation keeps the shape."""

import numpy as np
import pytest

from zsad_jax import metrics
from zsad_jax.metrics import curves, pro


def step_ap(recall, precision):
    """sum_{i >= 1} (R_i - R_{i-1}) P_i: the step integral average precision is."""
    return float(np.sum(np.diff(recall) * precision[1:]))


def tied_case(seed, n, levels):
    """(n,) float32 scores on `levels` distinct values (heavy ties), (n,) 0/1 labels."""
    rng = np.random.default_rng(seed)
    scores = (rng.integers(0, levels, n) / levels).astype(np.float32)
    labels = (rng.random(n) < 0.3).astype(np.int32)
    labels[:2] = [0, 1]                       # both classes present
    return scores, labels


def tied_maps(seed, n=4, size=24):
    """(n, size, size) float32 maps with ties, (n, size, size) bool masks (blobs; one normal)."""
    rng = np.random.default_rng(seed)
    maps = (rng.integers(0, 50, (n, size, size)) / 50).astype(np.float32)
    masks = np.zeros((n, size, size), bool)
    for i in range(1, n):
        r, c = rng.integers(0, size - 6, 2)
        masks[i, r:r + rng.integers(2, 7), c:c + rng.integers(2, 7)] = True
        masks[i, rng.integers(0, size), rng.integers(0, size)] = True   # a one-pixel region
    maps[masks] += 0.3 * rng.random(int(masks.sum())).astype(np.float32)
    # Re-quantized: groups of tied scores hold normal and region pixels, so the segment crossing
    # the FPR limit slopes (the interpolation there matters).
    return (np.round(maps * 20) / 20).astype(np.float32), masks


@pytest.mark.parametrize("seed, n, levels", [(0, 50, 5), (1, 500, 30), (2, 3000, 3000),
                                             (3, 40, 2)])
def test_roc_and_pr_areas_are_the_metrics(seed, n, levels):
    scores, labels = tied_case(seed, n, levels)
    fpr, tpr = metrics.roc_curve(scores, labels)
    assert fpr.shape == tpr.shape == (np.unique(scores).shape[0] + 1,)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.auroc(scores, labels), rel=1e-12)
    recall, precision = metrics.pr_curve(scores, labels)
    assert (recall[0], precision[0], recall[-1]) == (0.0, 1.0, 1.0)
    assert precision[-1] == pytest.approx(labels.mean())
    assert step_ap(recall, precision) == pytest.approx(metrics.average_precision(scores, labels),
                                                       rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_pro_area_is_aupro_and_pixel_curves_are_the_same_curves(seed, fpr_limit):
    maps, masks = tied_maps(seed)
    fpr, pro_values = metrics.pro_curve(maps, masks, fpr_limit)
    assert fpr[0] == pro_values[0] == 0.0 and fpr[-1] == fpr_limit
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro_values) >= 0)
    assert pro.normalized_area(fpr, pro_values, fpr_limit) == pytest.approx(
        metrics.aupro(maps, masks, fpr_limit), rel=1e-12)
    # One sort for the three pixel curves: the same arrays as the functions on flattened pixels.
    together = metrics.pixel_curves(maps, masks, fpr_limit)
    for got, expected in [(together["roc"], metrics.roc_curve(maps.ravel(), masks.ravel())),
                          (together["pr"], metrics.pr_curve(maps.ravel(), masks.ravel())),
                          (together["pro"], (fpr, pro_values))]:
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-12, atol=0)
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-12, atol=0)


def test_pro_curve_of_maps_of_different_sizes():
    maps, masks = tied_maps(5, n=3, size=20)
    small_map, small_mask = tied_maps(6, n=2, size=11)
    map_list, mask_list = [*maps, small_map[1]], [*masks, small_mask[1]]
    fpr, pro_values = metrics.pro_curve(map_list, mask_list)
    assert pro.normalized_area(fpr, pro_values, 0.3) == pytest.approx(
        metrics.aupro(map_list, mask_list), rel=1e-12)


def test_hand_checked_roc_and_pr():
    # thresholds 0.9: TP 1 FP 0; 0.8 (a tie of a positive and a negative): TP 2 FP 1; 0.1: 2, 2.
    scores, labels = np.array([0.9, 0.8, 0.8, 0.1]), np.array([1, 0, 1, 0])
    fpr, tpr = metrics.roc_curve(scores, labels)
    np.testing.assert_array_equal(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(tpr, [0.0, 0.5, 1.0, 1.0])
    recall, precision = metrics.pr_curve(scores, labels)
    np.testing.assert_array_equal(recall, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(precision, [1.0, 1.0, 2 / 3, 0.5])
    assert step_ap(recall, precision) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_hand_checked_pro_interpolated_at_the_limit():
    # Pixels: region A (score 2), normal (1), region B (1, a tie with the normal pixel), normal
    # (0); A and B are not 8-adjacent. Curve (0, 0), (0, 1/2), (1/2, 1), (1, 1): at FPR 0.3 the
    # segment (0, 1/2) - (1/2, 1) gives PRO 1/2 + 1/2 * 0.3 / 0.5 = 0.8.
    maps = np.array([[[2.0, 1.0, 1.0, 0.0]]], np.float32)
    masks = np.array([[[1, 0, 1, 0]]], bool)
    fpr, pro_values = metrics.pro_curve(maps, masks, 0.3)
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.3])
    np.testing.assert_allclose(pro_values, [0.0, 0.5, 0.8])
    assert pro.normalized_area(fpr, pro_values, 0.3) == pytest.approx((0.5 + 0.8) / 2)
    fpr, pro_values = metrics.pro_curve(maps, masks, 0.5)          # a point at the limit
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5])
    np.testing.assert_allclose(pro_values, [0.0, 0.5, 1.0])


def test_undefined_curves_are_none():
    scores = np.array([0.3, 0.2, 0.2])
    for fn in (metrics.roc_curve, metrics.pr_curve):
        assert fn(scores, [1, 1, 1]) is None and fn(scores, [0, 0, 0]) is None
    maps = np.random.default_rng(0).random((2, 5, 5)).astype(np.float32)
    assert metrics.pro_curve(maps, np.zeros((2, 5, 5), bool)) is None     # no anomalous pixel
    assert metrics.pro_curve(maps, np.ones((2, 5, 5), bool)) is None      # no normal pixel
    assert metrics.pixel_curves(maps, np.zeros((2, 5, 5), bool)) == {"roc": None, "pr": None,
                                                                     "pro": None}
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc_curve(np.array([np.nan, 1.0]), [0, 1])
    with pytest.raises(ValueError, match="fpr_limit"):
        metrics.pro_curve(maps, np.ones((2, 5, 5), bool), 0.0)


def test_clip_to_limit_keeps_a_curve_that_ends_before_the_limit():
    x, y = curves.clip_to_limit(np.array([0.0, 0.1, 0.2]), np.array([0.0, 0.5, 1.0]), 0.3)
    np.testing.assert_array_equal(x, [0.0, 0.1, 0.2])
    np.testing.assert_array_equal(y, [0.0, 0.5, 1.0])


def raster(x, y, num_columns, x_range):
    """Per screen column of the x range: (first y, last y, min y, max y) of the vertices there."""
    column = np.minimum(((x - x_range[0]) / (x_range[1] - x_range[0]) * num_columns).astype(int),
                        num_columns - 1)
    return {c: (y[column == c][0], y[column == c][-1], y[column == c].min(), y[column == c].max())
            for c in np.unique(column)}


@pytest.mark.parametrize("max_points", [4, 7, 400, 1001])
def test_decimate_keeps_the_end_points_the_vertices_and_the_rasterized_shape(max_points):
    scores, labels = tied_case(7, 20000, 20000)
    for x, y in (metrics.roc_curve(scores, labels), metrics.pr_curve(scores, labels)):
        dx, dy = metrics.decimate(x, y, max_points)
        assert dx.shape == dy.shape and dx.shape[0] <= max_points
        assert (dx[0], dy[0], dx[-1], dy[-1]) == (x[0], y[0], x[-1], y[-1])
        assert np.all(np.diff(dx) >= 0)       # every kept point is a vertex of the curve
        pairs = set(zip(x.tolist(), y.tolist(), strict=True))
        assert all((a, b) in pairs for a, b in zip(dx.tolist(), dy.tolist(), strict=True))
        # The same first / last / lowest / highest vertex in every screen column: same picture.
        columns = max_points // 4
        assert raster(dx, dy, columns, (x[0], x[-1])) == raster(x, y, columns, (x[0], x[-1]))


def test_decimate_short_vertical_and_bad_input():
    x, y = np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0, 1.0])
    dx, dy = metrics.decimate(x, y, 10)
    np.testing.assert_array_equal(dx, x)
    np.testing.assert_array_equal(dy, y)
    vertical = metrics.decimate(np.zeros(50), np.sin(np.arange(50.0)), 8)    # all x equal
    assert vertical[1].min() == np.sin(np.arange(50.0)).min()
    assert vertical[1].max() == np.sin(np.arange(50.0)).max()
    with pytest.raises(ValueError, match="max_points"):
        metrics.decimate(x, y, 3)
    with pytest.raises(ValueError, match="non-decreasing"):
        metrics.decimate(np.arange(10.0)[::-1], np.arange(10.0), 4)
    with pytest.raises(ValueError, match="same length"):
        metrics.decimate(np.arange(10.0), np.arange(9.0), 4)
