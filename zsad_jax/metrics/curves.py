"""Exact ROC, precision-recall and PRO curves (the curves the metrics integrate), and decimation.

    from zsad_jax import metrics
    fpr, tpr = metrics.roc_curve(scores, labels)       # trapezoid area = metrics.auroc
    recall, precision = metrics.pr_curve(scores, labels)  # step sum = metrics.average_precision
    fpr, pro = metrics.pro_curve(maps, masks, 0.3)     # area / 0.3 = metrics.aupro
    curves = metrics.pixel_curves(maps, masks, 0.3)    # the three pixel curves from one sort
    x, y = metrics.decimate(fpr, tpr, 1000)            # for plotting

One point per distinct score threshold, read from the same exact counts (`ranking`, `pro`) as the
metrics: no threshold grid, no approximation. A curve that is not defined (one class only; for
PRO: no anomalous or no normal pixel) is None.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from zsad_jax.metrics import pro, ranking

Curve = tuple[np.ndarray, np.ndarray]


def roc_from_counts(counts: ranking.ThresholdCounts) -> Curve | None:
    """(fpr, tpr), each (G + 1,) float64 from (0, 0) to (1, 1), one point per threshold."""
    if not counts.defined:
        return None
    return (_after(0.0, np.divide, counts.fp, counts.num_neg),
            _after(0.0, np.divide, counts.tp, counts.num_pos))


def pr_from_counts(counts: ranking.ThresholdCounts) -> Curve | None:
    """(recall, precision), each (G + 1,) float64: the point (0, 1) and then one per threshold,
    highest threshold first (recall non-decreasing, ending at 1).

    Average precision is the step sum over it: sum_{i >= 1} (recall_i - recall_{i-1}) precision_i
    (precision_i holds on (recall_{i-1}, recall_i]: matplotlib's drawstyle "steps-pre").
    """
    if not counts.defined:
        return None
    precision = _after(1.0, np.add, counts.group_ends, 1.0)       # TP + FP
    np.divide(counts.tp, precision[1:], out=precision[1:])
    return _after(0.0, np.divide, counts.tp, counts.num_pos), precision


def _after(first: float, ufunc, a: np.ndarray, b) -> np.ndarray:
    """(G + 1,) float64: `first`, then ufunc(a, b) (G,), written in place (no temporaries)."""
    out = np.empty((a.shape[0] + 1,), np.float64)
    out[0] = first
    ufunc(a, b, out=out[1:])
    return out


def roc_curve(scores, labels) -> Curve | None:
    """Exact ROC curve. scores: (N,) real (higher = more anomalous); labels: (N,) 0/1 or bool.

    Returns (fpr, tpr), each (G + 1,) float64 (G distinct scores), starting at (0, 0); its
    trapezoid area is `metrics.auroc`. None when only one class is present.
    """
    return roc_from_counts(ranking.threshold_counts(scores, labels))


def pr_curve(scores, labels) -> Curve | None:
    """Exact precision-recall step curve; same arguments as `roc_curve`.

    Returns (recall, precision), each (G + 1,) float64 (see `pr_from_counts`); its step sum is
    `metrics.average_precision`. None when only one class is present.
    """
    return pr_from_counts(ranking.threshold_counts(scores, labels))


def clip_to_limit(x: np.ndarray, y: np.ndarray, limit: float) -> Curve:
    """The part of a piecewise-linear curve (x non-decreasing) with x <= limit, ending with a
    point interpolated at exactly `limit` when no point lies there (as `pro.area_to_limit`).

    (P,) -> (P',) float64 each. A curve that ends before `limit` is returned as it is.
    """
    k = int(np.searchsorted(x, limit, side="right"))   # x[:k] <= limit < x[k:]
    x_out, y_out = x[:k], y[:k]
    if k < x.shape[0] and x[k - 1] < limit:
        y_limit = y[k - 1] + (y[k] - y[k - 1]) * (limit - x[k - 1]) / (x[k] - x[k - 1])
        x_out, y_out = np.append(x_out, limit), np.append(y_out, y_limit)
    return np.asarray(x_out, np.float64), np.asarray(y_out, np.float64)


def _pro_defined(sizes: np.ndarray) -> bool:
    """sizes from `pro.sorted_pixels`: entry 0 = normal pixels, then one per region."""
    return int(sizes[0]) > 0 and sizes.shape[0] > 1


def pro_curve(maps, masks, fpr_limit: float = 0.3) -> Curve | None:
    """Exact PRO curve (official MVTec AD definition, as `metrics.aupro`) up to `fpr_limit`.

    maps: (N, H, W) float (or a sequence of (H_i, W_i)); masks: same shapes, bool or 0/1.
    Returns (fpr, pro), each (P,) float64, from (0, 0) to an FPR of exactly `fpr_limit`
    (interpolated linearly there as aupro does); `pro.normalized_area(fpr, pro, fpr_limit)` is
    `metrics.aupro`. None without anomalous or without normal pixels.
    """
    fpr_limit = pro.check_fpr_limit(fpr_limit)
    keys, region_ids, sizes = pro.sorted_pixels(maps, masks, top_fpr=fpr_limit)
    if not _pro_defined(sizes):
        return None
    fpr, pro_values, _ = pro.pro_curve(keys, region_ids, sizes, fpr_limit)
    return clip_to_limit(fpr, pro_values, fpr_limit)


def iter_pixel_curves(maps, masks, fpr_limit: float = 0.3
                      ) -> Iterator[tuple[str, Curve | None]]:
    """Yields ("pro", (fpr, pro) to fpr_limit), ("roc", (fpr, tpr)), ("pr", (recall,
    precision)) over all pixels from one sort (as `metrics.pixel_metrics`), each curve built
    only when asked for: a consumer that reduces one (e.g. `decimate`) before taking the next
    holds one pixel curve at a time (each array is (G + 1,) float64, G distinct pixel scores).
    maps, masks: as `pro_curve`."""
    fpr_limit = pro.check_fpr_limit(fpr_limit)
    keys, region_ids, sizes = pro.sorted_pixels(maps, masks)
    fpr, pro_values, counts = pro.pro_curve(keys, region_ids, sizes, fpr_limit)
    del keys, region_ids
    yield "pro", clip_to_limit(fpr, pro_values, fpr_limit) if _pro_defined(sizes) else None
    del fpr, pro_values
    yield "roc", roc_from_counts(counts)
    yield "pr", pr_from_counts(counts)


def pixel_curves(maps, masks, fpr_limit: float = 0.3) -> dict[str, Curve | None]:
    """{"roc": (fpr, tpr), "pr": (recall, precision), "pro": (fpr, pro) to fpr_limit} over all
    pixels from one sort (`iter_pixel_curves`). maps, masks: as `pro_curve`."""
    return dict(iter_pixel_curves(maps, masks, fpr_limit))


def decimate(x, y, max_points: int) -> Curve:
    """At most `max_points` vertices of a curve with x non-decreasing, drawn alike on screen.

    x, y: (P,) -> (P',) float64, P' <= min(P, max_points), max_points >= 4. M4 aggregation
    (Jugel et al., VLDB 2014): the x range is cut into max_points // 4 columns; in each, the first,
    last, lowest and highest vertex are kept (the end points among them), so a line drawn at up to
    that many pixels across rasterizes the same. Curves that are short enough are returned whole.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D of the same length, got {x.shape} and {y.shape}.")
    if max_points < 4:
        raise ValueError(f"max_points must be >= 4, got {max_points}.")
    if x.shape[0] <= max_points:
        return x, y
    if np.any(np.diff(x) < 0):
        raise ValueError("decimate needs x non-decreasing (ROC, PR and PRO curves are).")
    num_columns = max_points // 4
    span = x[-1] - x[0]
    column = (np.zeros(x.shape, np.int64) if span <= 0 else
              np.minimum(((x - x[0]) / span * num_columns).astype(np.int64), num_columns - 1))
    starts = np.flatnonzero(np.diff(column, prepend=-1))          # first vertex of each column
    ends = np.append(starts[1:] - 1, x.shape[0] - 1)               # last vertex of each column
    lengths = ends - starts + 1
    keep = [starts, ends]
    for reduce in (np.minimum, np.maximum):
        extreme = np.repeat(reduce.reduceat(y, starts), lengths)
        at_extreme = np.flatnonzero(y == extreme)
        # the first extreme vertex of each column (columns are runs of increasing index)
        _, first = np.unique(column[at_extreme], return_index=True)
        keep.append(at_extreme[first])
    kept = np.unique(np.concatenate(keep))
    return x[kept], y[kept]


__all__: Sequence[str] = ("clip_to_limit", "decimate", "iter_pixel_curves", "pixel_curves",
                          "pr_curve", "pr_from_counts", "pro_curve", "roc_curve",
                          "roc_from_counts")
