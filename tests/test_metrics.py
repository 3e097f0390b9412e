"""Metric exactness: hand-computed cases, scikit-learn, brute force, the official AUPRO definition."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from skimage import measure
from sklearn import metrics as skm

from zsad_jax import metrics

# ---------------------------------------------------------------------------------------------
# Independent references (deliberately naive: a loop over every distinct threshold)
# ---------------------------------------------------------------------------------------------


def brute_force_f1_max(scores, labels):
    labels = np.asarray(labels, bool)
    best = 0.0
    for t in np.unique(scores):
        predicted = scores >= t
        tp = np.sum(predicted & labels)
        fp = np.sum(predicted & ~labels)
        fn = np.sum(~predicted & labels)
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def direct_aupro(maps, masks, fpr_limit=0.3):
    """The official definition, literally: for every distinct threshold t (descending), FPR = share
    of normal pixels >= t, PRO = mean over 8-connected regions (skimage, per image) of the share
    of the region >= t; curve from (0, 0); trapezoid area to fpr_limit (interpolated) / limit.
    maps/masks: (N, H, W) or lists of (H_i, W_i)."""
    regions, normal = [], []
    for m, g in zip(maps, masks, strict=True):
        m = np.asarray(m, np.float64)
        labelled = measure.label(np.asarray(g, bool), connectivity=2)
        regions += [m[labelled == k] for k in range(1, labelled.max() + 1)]
        normal.append(m[labelled == 0])
    normal = np.concatenate(normal)
    thresholds = np.unique(np.concatenate([np.ravel(m) for m in maps]))[::-1]
    fpr = np.array([0.0] + [np.mean(normal >= t) for t in thresholds])
    pro = np.array([0.0] + [np.mean([np.mean(r >= t) for r in regions]) for t in thresholds])
    keep = fpr <= fpr_limit
    x, y = list(fpr[keep]), list(pro[keep])
    if x[-1] < fpr_limit:
        x.append(fpr_limit)
        y.append(np.interp(fpr_limit, fpr, pro))   # fpr is non-decreasing: interp is linear
    return np.trapezoid(y, x) / fpr_limit


# ---------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------


def test_hand_computed_image_metrics():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    # Pairs (pos, neg): (0.35>0.1), (0.35<0.4), (0.8>0.1), (0.8>0.4) -> 3/4.
    assert metrics.auroc(scores, labels) == pytest.approx(0.75, abs=1e-12)
    # Descending: 0.8(+) P=1 R=.5; 0.4(-); 0.35(+) P=2/3 R=1 -> AP = .5*1 + .5*2/3.
    assert metrics.average_precision(scores, labels) == pytest.approx(5 / 6, abs=1e-12)
    # t=0.35: TP=2 FP=1 FN=0 -> F1 = 4/5 (the best).
    assert metrics.f1_max(scores, labels) == pytest.approx(0.8, abs=1e-12)


def test_ties_are_one_threshold():
    scores = np.array([1.0, 1.0, 0.0, 0.0])
    labels = np.array([1, 0, 1, 0])
    assert metrics.auroc(scores, labels) == pytest.approx(0.5, abs=1e-12)
    # One threshold at 1: P = 1/2, R = 1/2; then at 0: P = 1/2, R = 1 -> AP = 1/2.
    assert metrics.average_precision(scores, labels) == pytest.approx(0.5, abs=1e-12)
    # -0.0 and +0.0 are the same score.
    assert metrics.auroc(np.array([-0.0, 0.0], np.float32), [1, 0]) == 0.5


def test_constant_scores():
    labels = np.array([1, 0, 0, 1, 1])
    scores = np.full(5, 0.7, np.float32)
    assert metrics.auroc(scores, labels) == 0.5
    assert metrics.average_precision(scores, labels) == pytest.approx(3 / 5)
    assert metrics.f1_max(scores, labels) == pytest.approx(2 * 3 / (5 + 3))


def test_hand_computed_aupro():
    # One row: region = pixels 0-1 (2 px), background = pixels 2-3.
    # Descending: .9 (region) -> (0, .5); .7 (bg) -> (.5, .5); .5 (region) -> (.5, 1); .1 -> (1, 1).
    maps = np.array([[[0.9, 0.5, 0.7, 0.1]]], np.float32)
    masks = np.array([[[1, 1, 0, 0]]], bool)
    assert metrics.aupro(maps, masks) == pytest.approx(0.15 / 0.3, abs=1e-12)
    assert metrics.aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.75, abs=1e-12)


def test_aupro_ties_and_interpolation_at_limit():
    # Region pixel and one background pixel tie at .5: curve (0,0) -> (.5, 1) -> (1, 1).
    # PRO(.3) = .6 by interpolation; area = .3 * .6 / 2 = .09; / .3 = .3.
    maps = np.array([[[0.5, 0.5, 0.1]]], np.float32)
    masks = np.array([[[1, 0, 0]]], bool)
    assert metrics.aupro(maps, masks) == pytest.approx(0.3, abs=1e-12)


def test_aupro_regions_are_8_connected_and_weighted_equally():
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True          # one diagonal region (8-connectivity), 2 px
    masks[0, 3, 2] = masks[0, 3, 3] = True          # a second region, 2 px
    maps = np.full((1, 4, 4), 0.1, np.float32)
    maps[0, 0, 0] = 0.9
    # 0.9: FPR 0, PRO = (1/2 + 0) / 2 = .25; then all -> (1, 1). PRO(.3) = .25 + .75 * .3.
    expected = 0.3 * (0.25 + 0.475) / 2 / 0.3
    assert metrics.aupro(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert metrics.aupro(maps, masks) == pytest.approx(direct_aupro(maps, masks), abs=1e-12)


def test_normal_images_pixels_are_false_positives():
    # A normal image with high scores lowers AUPRO; an all-zero normal image does not.
    maps = np.array([[[0.9, 0.1]], [[0.0, 0.0]]], np.float32)
    masks = np.array([[[1, 0]], [[0, 0]]], bool)
    assert metrics.aupro(maps, masks) == pytest.approx(1.0)
    maps[1] = 0.95
    assert metrics.aupro(maps, masks) < 0.5
    assert metrics.aupro(maps, masks) == pytest.approx(direct_aupro(maps, masks), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------------


def test_undefined_metrics_are_none():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 8, 8), dtype=np.float32)
    normal_masks = np.zeros((3, 8, 8), bool)
    # All-normal class: image metrics undefined too (one image class), pixel metrics undefined.
    out = metrics.evaluate([0.1, 0.2, 0.3], [0, 0, 0], maps, normal_masks)
    assert set(out) == set(metrics.METRIC_NAMES)
    assert all(v is None for v in out.values())
    # All-anomalous class: image metrics None, pixel metrics defined.
    masks = normal_masks.copy()
    masks[:, 2:4, 2:4] = True
    out = metrics.evaluate([0.1, 0.2, 0.3], [1, 1, 1], maps, masks)
    assert all(out[k] is None for k in metrics.IMAGE_METRICS)
    assert all(isinstance(out[k], float) for k in metrics.PIXEL_METRICS)
    assert json.loads(json.dumps(out)) == out           # None -> null, round trip
    assert metrics.auroc([0.2, 0.4], [1, 1]) is None
    assert metrics.aupro(maps, normal_masks) is None


def test_nan_scores_raise_naming_the_index():
    with pytest.raises(ValueError, match=r"NaN.*\(2,\)"):
        metrics.auroc(np.array([0.1, 0.2, np.nan]), [0, 1, 1])
    maps = np.zeros((2, 3, 3), np.float32)
    maps[1, 2, 1] = np.nan
    with pytest.raises(ValueError, match=r"anomaly map 1 .*NaN.*\(2, 1\)"):
        metrics.aupro(maps, np.ones((2, 3, 3), bool))


def test_bad_labels_and_shapes_raise():
    with pytest.raises(ValueError, match="0/1.*found 2"):
        metrics.auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="shape"):
        metrics.auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="mask 0"):
        metrics.aupro(np.zeros((1, 3, 3)), np.zeros((1, 3, 4), bool))
    with pytest.raises(ValueError, match="fpr_limit"):
        metrics.aupro(np.zeros((1, 3, 3)), np.zeros((1, 3, 3), bool), fpr_limit=0)
    with pytest.raises(ValueError, match="maps must have shape"):
        metrics.aupro(np.zeros((3, 3)), np.zeros((3, 3), bool))


def test_native_resolution_maps_of_different_sizes():
    rng = np.random.default_rng(1)
    maps = [rng.random((5, 7), dtype=np.float32), rng.random((4, 3), dtype=np.float32)]
    masks = [rng.random((5, 7)) > 0.7, rng.random((4, 3)) > 0.6]
    flat_maps = np.concatenate([m.ravel() for m in maps])
    flat_masks = np.concatenate([m.ravel() for m in masks])
    out = metrics.evaluate([0.3, 0.9], [0, 1], maps, masks)
    assert out["pixel_auroc"] == pytest.approx(skm.roc_auc_score(flat_masks, flat_maps), abs=1e-9)
    assert out["pixel_aupro"] == pytest.approx(direct_aupro(maps, masks), abs=1e-9)


def test_mean_over_classes_skips_undefined():
    per_class = {"a": dict.fromkeys(metrics.METRIC_NAMES, 0.5),
                 "b": dict.fromkeys(metrics.METRIC_NAMES, 1.0)}
    per_class["b"]["pixel_aupro"] = None
    per_class["a"]["image_ap"] = None
    per_class["b"]["image_ap"] = None
    mean = metrics.mean_over_classes(per_class)
    assert mean["image_auroc"] == 0.75
    assert mean["pixel_aupro"] == 0.5
    assert mean["image_ap"] is None
    assert metrics.defined_class_counts(per_class)["pixel_aupro"] == 1


# ---------------------------------------------------------------------------------------------
# Property tests against scikit-learn / brute force / the direct AUPRO definition
# ---------------------------------------------------------------------------------------------

tied_scores = st.integers(min_value=2, max_value=60).flatmap(
    lambda n: st.tuples(
        hnp.arrays(np.int64, n, elements=st.integers(-3, 3)),      # heavy ties
        hnp.arrays(np.int64, n, elements=st.integers(0, 1))))


@settings(max_examples=60, deadline=None)
@given(tied_scores, st.sampled_from([np.float32, np.float64]))
def test_ranking_metrics_equal_sklearn_with_ties(data, dtype):
    raw, labels = data
    scores = (raw * 0.37).astype(dtype)
    if labels.min() == labels.max():
        assert metrics.auroc(scores, labels) is None
        assert metrics.average_precision(scores, labels) is None
        return
    assert metrics.auroc(scores, labels) == pytest.approx(
        skm.roc_auc_score(labels, scores), abs=1e-9)
    assert metrics.average_precision(scores, labels) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-9)
    assert metrics.f1_max(scores, labels) == pytest.approx(
        brute_force_f1_max(scores, labels), abs=1e-12)
    # Reversing the ranking: AUROC(s) + AUROC(-s) = 1.
    assert metrics.auroc(scores, labels) + metrics.auroc(-scores, labels) == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(tied_scores)
def test_invariant_under_strictly_monotone_rescaling(data):
    raw, labels = data
    scores = raw.astype(np.float64)
    rescaled = np.exp(scores) * 5.0 - 11.0
    for fn in (metrics.auroc, metrics.average_precision, metrics.f1_max):
        assert fn(scores, labels) == pytest.approx(fn(rescaled, labels), abs=1e-12)


image_sets = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)).flatmap(
    lambda s: st.tuples(hnp.arrays(np.int64, s, elements=st.integers(0, 5)),
                        hnp.arrays(bool, s)))


@settings(max_examples=60, deadline=None)
@given(image_sets, st.sampled_from([0.3, 0.05, 1.0]))
def test_aupro_equals_direct_definition(data, fpr_limit):
    raw, masks = data
    maps = (raw / 5.0).astype(np.float32)
    value = metrics.aupro(maps, masks, fpr_limit=fpr_limit)
    if masks.all() or not masks.any():
        assert value is None
        return
    assert value == pytest.approx(direct_aupro(maps, masks, fpr_limit), abs=1e-6)
    assert 0.0 <= value <= 1.0
    # Strictly monotone rescaling changes nothing (unlike the 200-threshold PRO).
    assert metrics.aupro(maps * 100 - 3, masks, fpr_limit) == pytest.approx(value, abs=1e-9)
    assert metrics.aupro(maps.astype(np.float64) ** 3, masks, fpr_limit) == pytest.approx(
        value, abs=1e-9)
    pixel = metrics.pixel_metrics(maps, masks)
    flat_maps, flat_masks = maps.ravel(), masks.ravel()
    assert pixel["auroc"] == pytest.approx(skm.roc_auc_score(flat_masks, flat_maps), abs=1e-9)
    assert pixel["ap"] == pytest.approx(
        skm.average_precision_score(flat_masks, flat_maps), abs=1e-9)
    assert pixel["f1_max"] == pytest.approx(brute_force_f1_max(flat_maps, flat_masks), abs=1e-12)


def test_realistic_maps_against_references():
    """Smoothed random maps with blob masks: all pixel metrics against the references."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    masks = np.zeros((4, 24, 24), bool)
    masks[0, 3:8, 4:12] = True
    masks[0, 15:20, 15:17] = True
    masks[2, 10:14, 1:3] = True
    maps = ndimage.gaussian_filter(rng.random((4, 24, 24)), (0, 2, 2)).astype(np.float32)
    maps += 0.2 * masks
    out = metrics.evaluate(maps.reshape(4, -1).max(1), masks.any((1, 2)), maps, masks)
    assert out["pixel_auroc"] == pytest.approx(skm.roc_auc_score(masks.ravel(), maps.ravel()),
                                               abs=1e-9)
    assert out["pixel_ap"] == pytest.approx(
        skm.average_precision_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert out["pixel_aupro"] == pytest.approx(direct_aupro(maps, masks), abs=1e-6)
    assert out["image_auroc"] == 1.0
    # aupro() sorts only the pixels above the FPR-limit threshold: same value as the full sort.
    from zsad_jax.metrics import pro

    keys, _, _ = pro.sorted_pixels(maps, masks, top_fpr=0.3)
    assert keys.shape[0] < maps.size
    for limit in (0.3, 0.01, 1.0):
        assert metrics.aupro(maps, masks, limit) == pytest.approx(
            pro.pixel_metrics(maps, masks, limit)["aupro"], abs=1e-12)


def test_jax_arrays_are_accepted():
    import jax.numpy as jnp

    assert metrics.auroc(jnp.array([0.1, 0.4, 0.35, 0.8]), jnp.array([0, 0, 1, 1])) == 0.75


def test_regions_labelled_in_the_bounding_box_equal_whole_mask_labels():
    """label_box labels only the mask's bounding box: same ids, same raster numbering."""
    from scipy import ndimage

    from zsad_jax.metrics import pro

    rng = np.random.default_rng(5)
    for density in (0.02, 0.2, 0.6):
        mask = ndimage.binary_dilation(rng.random((30, 41)) < density / 4)
        mask[:, :3] = False                                  # a box not at the border
        expected, count = ndimage.label(mask, structure=np.ones((3, 3)))
        labelled, labelled_count = pro.label_regions(mask)
        np.testing.assert_array_equal(labelled, expected)
        assert labelled_count == count
        np.testing.assert_array_equal(labelled, measure.label(mask, connectivity=2))
    assert pro.label_box(np.zeros((4, 5), bool)) is None
    assert pro.label_regions(np.zeros((4, 5), bool))[1] == 0


@pytest.mark.parametrize("sampled", ["too_low", "too_high", "none"])
def test_aupro_sort_bound_is_checked(monkeypatch, sampled):
    """aupro sorts the pixels below a bound estimated from a sample of the keys; a bound that
    keeps too few normal pixels must fall back to the full sort (same value either way)."""
    from scipy import ndimage

    from zsad_jax.metrics import pro

    rng = np.random.default_rng(11)
    maps = ndimage.gaussian_filter(rng.random((3, 20, 20)), (0, 1.5, 1.5)).astype(np.float32)
    masks = np.zeros((3, 20, 20), bool)
    masks[0, 2:7, 3:9] = True
    masks[1, 12:15, 12:18] = True
    maps += 0.1 * masks
    expected = pro.pixel_metrics(maps, masks, 0.3)["aupro"]
    bounds = {"too_low": lambda keys, fraction: keys.min(),
              "too_high": lambda keys, fraction: np.uint32(2**32 - 1), "none": lambda *a: None}
    monkeypatch.setattr(pro, "_sampled_bound", bounds[sampled])
    keys, _, _ = pro.sorted_pixels(maps, masks, top_fpr=0.3)
    assert keys.shape[0] == maps.size                       # everything was sorted
    assert metrics.aupro(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(direct_aupro(maps, masks), abs=1e-6)
