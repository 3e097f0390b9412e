"""Pixel-level metrics from one sort: AUROC, AP, F1-max and AUPRO (the official MVTec algorithm).

AUPRO (Bergmann et al., MVTec AD, IJCV 2021; algorithm of the official evaluation code):

* ground-truth regions are the 8-connected components of each image's mask, labelled per image;
* every pixel outside all regions (normal images included) adds 1 / N_bg to the FPR;
* every pixel of region k adds 1 / (|region k| * N_regions) to the PRO (mean per-region overlap);
* one descending sort of all scores + cumulative sums give the exact (FPR, PRO) curve, tied scores
  merged into one point; the curve starts at (0, 0);
* the area under it from FPR = 0 to `fpr_limit` (0.3), with linear interpolation at exactly the
  limit (trapezoid rule), is divided by `fpr_limit`, so a perfect map scores 1.

Payload of the packed sort = the region id (0 = background), so the same sort also gives the
pixel ROC / PR counts (a pixel is positive iff it lies in a region).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from zsad_jax.metrics import ranking

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _as_image_list(maps, masks) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(N, H, W) arrays or sequences of (H_i, W_i) arrays -> checked lists of 2-D arrays."""
    if isinstance(maps, np.ndarray) and maps.ndim != 3:
        raise ValueError(f"maps must have shape (N, H, W), got {maps.shape}.")
    if isinstance(masks, np.ndarray) and masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {masks.shape}.")
    map_list, mask_list = list(maps), list(masks)
    if len(map_list) != len(mask_list):
        raise ValueError(f"{len(map_list)} maps but {len(mask_list)} masks; they must match.")
    out_maps, out_masks = [], []
    for i, (m, g) in enumerate(zip(map_list, mask_list, strict=True)):
        m = ranking.check_scores(m, what=f"anomaly map {i}")
        g = ranking.check_labels(g, what=f"mask {i}")
        if m.ndim != 2:
            raise ValueError(f"anomaly map {i} must be 2-D (H, W), got shape {m.shape}.")
        ranking.check_same_shape(m, g, (f"anomaly map {i}", f"mask {i}"))
        out_maps.append(m)
        out_masks.append(g)
    return out_maps, out_masks


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(H, W) bool -> ((H, W) int32 region ids 1..K, 0 = background; K), 8-connectivity."""
    if not mask.any():                                   # normal image: nothing to label
        return np.zeros(mask.shape, np.int32), 0
    regions, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    return regions.astype(np.int32, copy=False), int(count)


def sorted_pixels(maps, masks, top_fpr: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorts the pixels by descending score, carrying their global region id.

    maps, masks: (N, H, W) or sequences of (H_i, W_i). Returns (keys, region_ids) (P',), both
    in descending score order (equal keys = equal scores), and region sizes (K + 1,) int64
    (entry 0 = number of background pixels, over all pixels).

    top_fpr: only a prefix of the order is packed and sorted: at least every pixel scoring >=
    the score at which the FPR reaches `top_fpr` (all the AUPRO needs), found from a histogram
    of the keys' top 16 bits. None: all pixels.
    """
    map_list, mask_list = _as_image_list(maps, masks)
    # Pass 1: regions (global ids), their sizes, and key histograms when a prefix is asked for.
    region_list, sizes, num_regions = [], [np.zeros((1,), np.int64)], 0
    packed_path = all(m.dtype in ranking.FLOAT32_EXACT for m in map_list)
    top_fpr = top_fpr if packed_path else None
    all_histogram = np.zeros((1 << 16,), np.int64)
    region_histogram = np.zeros((1 << 16,), np.int64)
    for m, g in zip(map_list, mask_list, strict=True):
        regions, count = label_regions(g)
        regions = regions.view(np.uint32).ravel()        # ids are >= 0: same bits
        if count:
            image_sizes = np.bincount(regions, minlength=count + 1)
            sizes[0] += image_sizes[0]
            sizes.append(image_sizes[1:])
            regions[regions > 0] += np.uint32(num_regions)
        else:
            sizes[0] += regions.shape[0]
        num_regions += count
        region_list.append(regions)
        if top_fpr is not None:   # (keys are recomputed in pass 2: cheaper than storing them)
            bins = ranking.descending_key32(m.ravel()) >> np.uint32(16)
            all_histogram += np.bincount(bins, minlength=1 << 16)
            if count:
                region_histogram += np.bincount(bins[regions != 0], minlength=1 << 16)
    sizes = np.concatenate(sizes).astype(np.int64)
    if not packed_path:
        scores = np.concatenate([m.ravel() for m in map_list]).astype(np.float64)
        keys, payload = ranking.sort_descending(scores, np.concatenate(region_list))
        return keys, payload, sizes

    # The FPR reaches top_fpr at the k-th highest background score; every pixel whose key lies
    # in that key bin or a lower one (= a higher score) is kept: a prefix of the sorted order.
    bound, total = None, sum(m.size for m in map_list)
    if top_fpr is not None and sizes[0] > 0:
        k = max(int(np.ceil(top_fpr * sizes[0])), 1)
        last_bin = int(np.searchsorted(np.cumsum(all_histogram - region_histogram), k))
        bound = np.uint32(min(((last_bin + 1) << 16) - 1, 2**32 - 1))
        total = int(all_histogram[:last_bin + 1].sum())
    # Pass 2: pack (key << 32 | region id) of the kept pixels, then one sort.
    packed = np.empty((total,), np.uint64)
    offset = 0
    for i, m in enumerate(map_list):
        key32, regions = ranking.descending_key32(m.ravel()), region_list[i]
        region_list[i] = None                              # freed as packing proceeds
        if bound is not None:
            keep = key32 <= bound
            key32, regions = key32[keep], regions[keep]
        ranking.pack_key_payload(key32, regions, packed[offset:offset + key32.shape[0]])
        offset += key32.shape[0]
    packed.sort()
    keys, payload = ranking.split_packed(packed)
    return keys, payload, sizes


def area_to_limit(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Area under the piecewise-linear curve (x non-decreasing, from x[0]) on [x[0], limit].

    The curve is interpolated linearly at exactly `limit` when no point lies there.
    """
    k = int(np.searchsorted(x, limit, side="right"))   # x[:k] <= limit < x[k:]
    y_pairs = y[1:k] + y[:k - 1]
    area = float(np.dot(np.diff(x[:k]), y_pairs)) / 2.0
    if k < x.shape[0] and x[k - 1] < limit:
        y_limit = y[k - 1] + (y[k] - y[k - 1]) * (limit - x[k - 1]) / (x[k] - x[k - 1])
        area += float((limit - x[k - 1]) * (y[k - 1] + y_limit) / 2.0)
    return area


def normalized_area(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Area to `fpr_limit` divided by `fpr_limit`; rounding above 1 (~1e-16) is clipped."""
    return min(area_to_limit(fpr, pro, fpr_limit) / fpr_limit, 1.0)


def pro_curve(keys: np.ndarray, region_ids: np.ndarray, sizes: np.ndarray,
              fpr_limit: float | None = None
              ) -> tuple[np.ndarray, np.ndarray, ranking.ThresholdCounts]:
    """Exact (FPR, PRO) curve from `sorted_pixels` output, starting at (0, 0).

    With `fpr_limit`, the curve stops at the first point beyond the limit (all that the area
    needs), so the PRO sums run over the top-scored pixels only. Returns fpr, pro (G' + 1,)
    float64 and the pixel ThresholdCounts (all thresholds).
    """
    counts = ranking.counts_from_sorted(keys, region_ids != 0)
    num_regions = sizes.shape[0] - 1
    fpr = counts.fp / max(int(sizes[0]), 1)
    num_points = fpr.shape[0]
    if fpr_limit is not None:
        num_points = min(int(np.searchsorted(fpr, fpr_limit, side="right")) + 1, num_points)
    ends = counts.group_ends[:num_points]
    fpr = np.concatenate([[0.0], fpr[:num_points]])
    if num_regions == 0 or num_points == 0:
        return fpr, np.zeros_like(fpr), counts
    weight = 1.0 / (sizes[1:] * num_regions)            # 1 / (|region k| * N_regions)
    # PRO only grows at region pixels: cumulate over those, read at each group's TP count.
    region_pixels = region_ids[:ends[-1] + 1]
    region_pixels = region_pixels[region_pixels != 0]
    cumulative = np.zeros((region_pixels.shape[0] + 1,), np.float64)
    np.cumsum(weight[region_pixels - 1], out=cumulative[1:])
    pro = cumulative[counts.tp[:num_points].astype(np.int64)]
    return fpr, np.concatenate([[0.0], pro]), counts


def check_fpr_limit(fpr_limit: float) -> float:
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}.")
    return fpr_limit


def pixel_metrics(maps, masks, fpr_limit: float = 0.3) -> dict[str, float | None]:
    """{"auroc", "ap", "f1_max", "aupro"} over all pixels, from one sort.

    maps: (N, H, W) float (or a sequence of (H_i, W_i) maps, e.g. native resolutions);
    masks: the same shapes, bool or 0/1. Each metric is None when the pixels hold no anomalous
    or no normal pixel. Memory besides the maps: a uint32 region id per pixel until it is packed
    into the uint64 sort array, then a few per-threshold arrays.
    """
    fpr_limit = check_fpr_limit(fpr_limit)
    keys, region_ids, sizes = sorted_pixels(maps, masks)
    fpr, pro, counts = pro_curve(keys, region_ids, sizes, fpr_limit)
    del keys, region_ids
    aupro_value = normalized_area(fpr, pro, fpr_limit) if counts.defined else None
    return {"auroc": ranking.auroc_from_counts(counts),
            "ap": ranking.average_precision_from_counts(counts),
            "f1_max": ranking.f1_max_from_counts(counts),
            "aupro": aupro_value}


def aupro(maps, masks, fpr_limit: float = 0.3) -> float | None:
    """Normalized area under the PRO curve up to `fpr_limit` (official MVTec AD definition).

    maps: (N, H, W) float anomaly maps (or a sequence of (H_i, W_i)); masks: same shapes, bool
    or 0/1. Returns a value in [0, 1]; None if there is no ground-truth region or no normal
    pixel. Raises ValueError on NaN maps or mismatched shapes.
    """
    fpr_limit = check_fpr_limit(fpr_limit)
    # Only the pixels scoring at or above the FPR limit's threshold are sorted.
    keys, region_ids, sizes = sorted_pixels(maps, masks, top_fpr=fpr_limit)
    if sizes[0] == 0 or sizes.shape[0] == 1:       # no normal pixel or no region
        return None
    fpr, pro, _ = pro_curve(keys, region_ids, sizes, fpr_limit)
    return normalized_area(fpr, pro, fpr_limit)


__all__: Sequence[str] = ("aupro", "area_to_limit", "label_regions", "pixel_metrics", "pro_curve",
                          "sorted_pixels")
