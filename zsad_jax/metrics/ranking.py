"""Exact binary ranking metrics from one sort: AUROC, average precision, F1-max.

All three are functions of the confusion counts at every distinct score threshold (predict
"anomalous" when score >= t). One descending sort of the scores and cumulative sums give those
counts exactly; tied scores form one threshold (no arbitrary tie order, as in scikit-learn).

Speed: float32 scores are turned into an order-preserving 32-bit key and packed with a 32-bit
payload (the label, or for AUPRO the ground-truth region id) into one uint64, so a single
`ndarray.sort` (SIMD) replaces an argsort + gathers. Other dtypes go through a float64 argsort.

A metric that is not defined (no positives or no negatives) is `None`, never 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# float dtypes that convert to float32 without changing any value (or order).
FLOAT32_EXACT = (np.dtype(np.float16), np.dtype(np.float32))


@dataclasses.dataclass(frozen=True)
class ThresholdCounts:
    """Cumulative counts at each distinct threshold, highest threshold first.

    tp, fp: (G,) float64 (exact integers) — positives / negatives with score >= the g-th highest
    distinct score. group_ends: (G,) int64 — index (in descending score order) of the last
    sample of each group, so tp + fp = group_ends + 1.
    """

    tp: np.ndarray
    fp: np.ndarray
    group_ends: np.ndarray

    @property
    def num_pos(self) -> int:
        return int(self.tp[-1]) if self.tp.size else 0

    @property
    def num_neg(self) -> int:
        return int(self.fp[-1]) if self.fp.size else 0

    @property
    def defined(self) -> bool:
        """Ranking metrics need at least one positive and one negative."""
        return self.num_pos > 0 and self.num_neg > 0


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------

def check_scores(scores: np.ndarray, what: str = "scores") -> np.ndarray:
    """Returns `scores` as a real numpy array; raises ValueError on NaN (naming the first one)."""
    scores = np.asarray(scores)
    if scores.dtype == bool or not (np.issubdtype(scores.dtype, np.floating)
                                    or np.issubdtype(scores.dtype, np.integer)):
        raise ValueError(f"{what} must be a real-valued array, got dtype {scores.dtype}.")
    if np.issubdtype(scores.dtype, np.floating):
        nan = np.isnan(scores)
        if nan.any():
            first = np.unravel_index(int(np.argmax(nan)), scores.shape)
            raise ValueError(f"{what} contain {int(nan.sum())} NaN value(s); the first at index "
                             f"{tuple(int(i) for i in first)}. Metrics of NaN scores are undefined.")
    return scores


def check_labels(labels: np.ndarray, what: str = "labels") -> np.ndarray:
    """Returns `labels` as a bool array; raises ValueError on any value other than 0/1."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise ValueError(f"{what} must be bool or 0/1 numbers, got dtype {labels.dtype}.")
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), labels.shape)
        raise ValueError(f"{what} must be 0/1 (or bool); found {labels[first].item()!r} at index "
                         f"{tuple(int(i) for i in first)}.")
    return labels != 0


def check_same_shape(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} has shape {a.shape} but {names[1]} has shape {b.shape}; "
                         "they must match.")


# ---------------------------------------------------------------------------------------------
# Sorting
# ---------------------------------------------------------------------------------------------

def descending_key32(scores: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 scores -> uint32 keys whose ascending order is the scores' descending order.

    Equal scores (including -0.0 and +0.0) get equal keys. (N,) -> (N,). `out`: an optional
    (N,) uint32 array to write the keys into (no temporary).
    """
    if out is None:
        values = np.add(scores, np.float32(0.0), dtype=np.float32)
    else:
        values = np.add(scores, np.float32(0.0), out=out.view(np.float32), dtype=np.float32)
    return _descending_key(values, np.int32, 31)


def descending_key64(scores: np.ndarray) -> np.ndarray:
    """float64 version of `descending_key32` (uint64 keys)."""
    return _descending_key(np.add(scores, 0.0, dtype=np.float64), np.int64, 63)


def _descending_key(values: np.ndarray, signed, bits: int) -> np.ndarray:
    """In place on `values` (a fresh array; +0.0 added so -0.0 became +0.0): non-negative
    floats get their value bits flipped (bigger value -> smaller key, all below 2**(bits)),
    negative ones keep their bits (bigger magnitude = smaller value -> bigger key)."""
    as_int = values.view(signed)
    flip = np.right_shift(as_int, bits)                  # 0 (>= 0) or -1 (< 0)
    np.invert(flip, out=flip)                            # -1 (>= 0) or 0 (< 0)
    np.bitwise_and(flip, signed(np.iinfo(signed).max), out=flip)
    np.bitwise_xor(as_int, flip, out=as_int)             # the keys, in place of the values
    return as_int.view(np.uint32 if bits == 31 else np.uint64)


def pack_key_payload(key32: np.ndarray, payload: np.ndarray, out: np.ndarray) -> None:
    """out[:] = key32 << 32 | payload (uint64), for one chunk of the packed sort array."""
    np.left_shift(key32, np.uint64(32), out=out, dtype=np.uint64)
    np.bitwise_or(out, payload.astype(np.uint32, copy=False), out=out)


def split_packed(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted uint64 array -> (key32, payload32) as zero-copy strided views."""
    words = packed.view(np.uint32).reshape(-1, 2)
    if np.little_endian:
        return words[:, 1], words[:, 0]
    return words[:, 0], words[:, 1]


def sort_descending(scores: np.ndarray, payload: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorts 1-D `scores` descending, carrying a non-negative integer `payload` (< 2**32).

    Returns (keys, payload) in that order; equal keys == equal scores. Ties are ordered by
    payload, which never matters: every metric here reads counts at group ends only.
    """
    scores = np.ravel(scores)
    payload = np.ravel(payload)
    if scores.dtype in FLOAT32_EXACT:
        packed = np.empty(scores.shape, np.uint64)
        pack_key_payload(descending_key32(scores), payload, packed)
        packed.sort()
        return split_packed(packed)
    keys = descending_key64(scores.astype(np.float64, copy=False))
    order = np.argsort(keys)
    return keys[order], payload[order]


def group_ends(sorted_keys: np.ndarray) -> np.ndarray:
    """Index of the last element of every run of equal keys: (G,) int64."""
    n = sorted_keys.shape[0]
    last = np.empty((n,), bool)
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=last[:-1])
    last[-1:] = True
    return np.flatnonzero(last)


def counts_from_sorted(sorted_keys: np.ndarray, positive: np.ndarray) -> ThresholdCounts:
    """Cumulative (tp, fp) at each distinct threshold from descending-sorted keys + labels."""
    ends = group_ends(sorted_keys)
    # int32 running count (half the memory traffic of int64) where it cannot overflow.
    dtype = np.int32 if positive.shape[0] < 2**31 - 1 else np.int64
    tp = np.cumsum(positive, dtype=dtype)[ends].astype(np.float64)
    fp = ends.astype(np.float64)
    fp += 1.0
    fp -= tp
    return ThresholdCounts(tp=tp, fp=fp, group_ends=ends)


def _steps(cumulative: np.ndarray) -> np.ndarray:
    """(G,) cumulative counts -> per-group increments (the first from 0)."""
    steps = np.empty_like(cumulative)
    steps[:1] = cumulative[:1]
    np.subtract(cumulative[1:], cumulative[:-1], out=steps[1:])
    return steps


def threshold_counts(scores, labels) -> ThresholdCounts:
    """Validated scores + 0/1 labels (any matching shapes) -> ThresholdCounts."""
    scores = check_scores(scores)
    labels = check_labels(labels)
    check_same_shape(scores, labels, ("scores", "labels"))
    keys, payload = sort_descending(scores, labels.view(np.uint8) if labels.dtype == bool
                                    else labels)
    return counts_from_sorted(keys, payload != 0)


# ---------------------------------------------------------------------------------------------
# Metrics from counts
# ---------------------------------------------------------------------------------------------

def auroc_from_counts(c: ThresholdCounts) -> float | None:
    """Area under the ROC curve, trapezoid rule over the exact curve from (0, 0).

    On integer counts: sum_i (fp_i - fp_{i-1}) (tp_i + tp_{i-1}) / (2 P N). Every product and
    partial sum is an integer below 2**53 for up to ~9e7 samples a class, so float64 is exact.
    """
    if not c.defined:
        return None
    tp_pairs = np.empty_like(c.tp)                       # tp_i + tp_{i-1}
    tp_pairs[:1] = c.tp[:1]
    np.add(c.tp[1:], c.tp[:-1], out=tp_pairs[1:])
    area2 = float(np.dot(_steps(c.fp), tp_pairs))
    return area2 / (2.0 * c.num_pos * c.num_neg)


def average_precision_from_counts(c: ThresholdCounts) -> float | None:
    """AP = sum_i (R_i - R_{i-1}) P_i over distinct thresholds (scikit-learn's definition);
    P_i = tp_i / (tp_i + fp_i) = tp_i / (group_end_i + 1)."""
    if not c.defined:
        return None
    precision = c.group_ends + 1.0
    np.divide(c.tp, precision, out=precision)
    return float(np.dot(_steps(c.tp), precision)) / c.num_pos


def f1_max_from_counts(c: ThresholdCounts) -> float | None:
    """max over thresholds of F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (group_end + 1 + P)."""
    if not c.defined:
        return None
    denominator = c.group_ends + (1.0 + c.num_pos)
    np.divide(c.tp, denominator, out=denominator)
    return 2.0 * float(np.max(denominator))


def ranking_metrics(scores, labels) -> dict[str, float | None]:
    """{"auroc", "ap", "f1_max"} from one sort. `scores`, `labels`: same shape (flattened)."""
    c = threshold_counts(scores, labels)
    return {"auroc": auroc_from_counts(c), "ap": average_precision_from_counts(c),
            "f1_max": f1_max_from_counts(c)}


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def auroc(scores, labels) -> float | None:
    """Area under the ROC curve (= scikit-learn `roc_auc_score`, ties merged).

    scores: (N,) real (higher = more anomalous; pixel level: flattened maps); labels: (N,) 0/1
    or bool. Returns None when only one class is present; raises ValueError on NaN scores.
    """
    return auroc_from_counts(threshold_counts(scores, labels))


def average_precision(scores, labels) -> float | None:
    """Average precision (= scikit-learn `average_precision_score`). Same arguments as `auroc`."""
    return average_precision_from_counts(threshold_counts(scores, labels))


def f1_max(scores, labels) -> float | None:
    """Best F1 over all thresholds `score >= t`. Same arguments as `auroc`."""
    return f1_max_from_counts(threshold_counts(scores, labels))


__all__: Sequence[str] = ("ThresholdCounts", "auroc", "average_precision", "f1_max",
                          "ranking_metrics", "threshold_counts")
