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


def label_box(mask: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray, int] | None:
    """(H, W) bool -> (box, (h, w) int32 region ids 1..K of mask[box], K), 8-connectivity.

    box: the bounding box of the mask's pixels (every region lies inside it, and the labels are
    numbered in the same raster order as on the whole mask). None for a mask without pixels.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.shape[0] == 0:                               # normal image: nothing to label
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    regions, count = ndimage.label(mask[box], structure=_EIGHT_CONNECTED)
    return box, regions.astype(np.int32, copy=False), int(count)


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(H, W) bool -> ((H, W) int32 region ids 1..K, 0 = background; K), 8-connectivity."""
    full = np.zeros(mask.shape, np.int32)
    labelled = label_box(mask)
    if labelled is None:
        return full, 0
    box, regions, count = labelled
    full[box] = regions
    return full, count


# The bound of `sorted_pixels(top_fpr=...)`: a quantile of every `_SAMPLE_STRIDE`-th key (a
# prime stride, so no alignment with image rows or patch grids), `_SAMPLE_MARGIN` above the
# quantile needed. The bound is checked exactly; a bound too low (never seen) costs a full sort.
_SAMPLE_STRIDE = 13
_SAMPLE_MARGIN = 0.01


def sorted_pixels(maps, masks, top_fpr: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorts the pixels by descending score, carrying their global region id.

    maps, masks: (N, H, W) or sequences of (H_i, W_i). Returns (keys, region_ids) (P',), both
    in descending score order (equal keys = equal scores), and region sizes (K + 1,) int64
    (entry 0 = number of background pixels, over all pixels).

    top_fpr: only a prefix of the order is packed and sorted: every pixel whose key is <= a
    bound (a quantile of a sample of the keys) that is checked to keep at least
    ceil(top_fpr * N_background) normal pixels, i.e. every pixel scoring >= the score at which
    the FPR reaches `top_fpr` (all the AUPRO needs); whole groups of equal scores are kept.
    None: all pixels.
    """
    map_list, mask_list = _as_image_list(maps, masks)
    packed_path = all(m.dtype in ranking.FLOAT32_EXACT for m in map_list)
    top_fpr = top_fpr if packed_path else None
    # Pass 1: regions (labelled in each mask's bounding box only, with global ids) and their
    # sizes; with top_fpr, the keys (kept for pass 2).
    boxes: list[tuple[tuple[slice, slice], np.ndarray] | None] = []
    sizes, num_regions, num_region_pixels = [], 0, 0
    offsets = np.cumsum([0] + [m.size for m in map_list])
    num_pixels = int(offsets[-1])
    keys = np.empty((num_pixels,), np.uint32) if top_fpr is not None else None
    for i, (m, g) in enumerate(zip(map_list, mask_list, strict=True)):
        labelled = label_box(g)
        if labelled is None:
            boxes.append(None)
        else:
            box, regions, count = labelled
            regions = regions.view(np.uint32)            # ids are >= 0: same bits
            image_sizes = np.bincount(regions.ravel(), minlength=count + 1)
            sizes.append(image_sizes[1:])
            num_region_pixels += int(image_sizes[1:].sum())
            regions[regions != 0] += np.uint32(num_regions)
            num_regions += count
            boxes.append((box, regions))
        if keys is not None:
            ranking.descending_key32(m.ravel(), out=keys[offsets[i]:offsets[i + 1]])
    num_background = num_pixels - num_region_pixels
    sizes = np.concatenate([np.array([num_background], np.int64)] + sizes).astype(np.int64)
    if not packed_path:
        region_ids = np.zeros((num_pixels,), np.uint32)
        for i, (m, labelled) in enumerate(zip(map_list, boxes, strict=True)):
            if labelled is not None:
                region_ids[offsets[i]:offsets[i + 1]].reshape(m.shape)[labelled[0]] = labelled[1]
        scores = np.concatenate([m.ravel() for m in map_list]).astype(np.float64)
        keys, payload = ranking.sort_descending(scores, region_ids)
        return keys, payload, sizes

    packed = np.empty((num_pixels,), np.uint64)          # pages past the kept prefix unused
    bound = None
    if top_fpr is not None and num_background > 0:
        # The FPR reaches top_fpr at the k-th highest normal pixel: keeping k + (all region
        # pixels) of the lowest keys keeps >= k normal pixels.
        k = max(int(np.ceil(top_fpr * num_background)), 1)
        bound = _sampled_bound(keys, (k + num_region_pixels) / num_pixels)
        if bound is not None:
            kept, kept_background = _pack(map_list, boxes, keys, offsets, bound, packed)
            if kept_background < k:                      # the sample misled: sort everything
                bound = None
    if bound is None:
        kept, _ = _pack(map_list, boxes, keys, offsets, None, packed)
    del keys
    packed = packed[:kept]
    packed.sort()
    keys, payload = ranking.split_packed(packed)
    return keys, payload, sizes


def _sampled_bound(keys: np.ndarray, fraction: float) -> np.uint32 | None:
    """A key whose rank among `keys` (P,) uint32 is about `fraction` + margin, from a strided
    sample; None when that is (nearly) all the keys."""
    fraction += _SAMPLE_MARGIN
    sample = keys[::_SAMPLE_STRIDE].copy()
    if fraction >= 1.0 or sample.shape[0] < 2:
        return None
    index = min(int(np.ceil(fraction * sample.shape[0])), sample.shape[0] - 1)
    sample.partition(index)
    return sample[index]


def _pack(map_list, boxes, keys, offsets, bound, packed) -> tuple[int, int]:
    """Writes key << 32 | region id of every pixel with key <= bound (all: bound None) to the
    front of `packed`. keys: (P,) uint32 keys of all pixels, or None to compute them here.
    Returns (pixels written, normal pixels among them)."""
    written = region_written = 0
    high_bound = None if bound is None else (np.uint64(bound) << np.uint64(32)) | np.uint64(
        2**32 - 1)
    for i, (m, labelled) in enumerate(zip(map_list, boxes, strict=True)):
        image_keys = (keys[offsets[i]:offsets[i + 1]] if keys is not None
                      else ranking.descending_key32(m.ravel()))
        image_packed = packed[written:written + m.size] if bound is None else None
        image_packed = np.left_shift(image_keys, np.uint64(32), out=image_packed,
                                     dtype=np.uint64)
        if labelled is not None:
            box, regions = labelled
            image_packed.reshape(m.shape)[box] |= regions
            if bound is not None:
                in_box = image_keys.reshape(m.shape)[box]
                region_written += int(np.count_nonzero((in_box <= bound) & (regions != 0)))
            else:
                region_written += int(np.count_nonzero(regions))
        if bound is None:
            written += m.size
        else:
            keep = image_packed <= high_bound
            count = int(np.count_nonzero(keep))
            np.compress(keep, image_packed, out=packed[written:written + count])
            written += count
    return written, written - region_written


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
    in_region = region_ids != 0
    counts = ranking.counts_from_sorted(keys, in_region)
    num_regions = sizes.shape[0] - 1
    num_points = counts.fp.shape[0]
    if fpr_limit is not None:   # fp / N <= limit up to index searchsorted(...) - 1
        fpr_all = counts.fp / max(int(sizes[0]), 1)
        num_points = min(int(np.searchsorted(fpr_all, fpr_limit, side="right")) + 1, num_points)
        del fpr_all
    # Both curves start at (0, 0): written after a leading 0 (no concatenation copies).
    fpr = np.zeros((num_points + 1,), np.float64)
    np.divide(counts.fp[:num_points], max(int(sizes[0]), 1), out=fpr[1:])
    pro = np.zeros_like(fpr)
    if num_regions == 0 or num_points == 0:
        return fpr, pro, counts
    weight = 1.0 / (sizes[1:] * num_regions)            # 1 / (|region k| * N_regions)
    # PRO only grows at region pixels: cumulate over those, read at each group's TP count.
    end = int(counts.group_ends[num_points - 1]) + 1
    region_pixels = region_ids[:end][in_region[:end]]
    cumulative = np.zeros((region_pixels.shape[0] + 1,), np.float64)
    np.subtract(region_pixels, 1, out=region_pixels)     # region id k -> weight index k - 1
    np.cumsum(weight[region_pixels], out=cumulative[1:])
    np.take(cumulative, counts.tp[:num_points].astype(np.intp), out=pro[1:])
    return fpr, pro, counts


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


__all__: Sequence[str] = ("aupro", "area_to_limit", "label_box", "label_regions", "pixel_metrics",
                          "pro_curve", "sorted_pixels")
