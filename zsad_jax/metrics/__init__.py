"""Exact anomaly-detection metrics: pure functions of numpy (or JAX) arrays.

    from zsad_jax import metrics
    metrics.auroc(scores, labels)              # (N,) scores, (N,) 0/1 labels -> float | None
    metrics.average_precision(scores, labels)
    metrics.f1_max(scores, labels)
    metrics.aupro(maps, masks, fpr_limit=0.3)  # (N, H, W) float maps, (N, H, W) bool masks
    metrics.evaluate(image_scores, image_labels, maps, masks) -> dict of the seven metrics
    metrics.roc_curve(scores, labels) / pr_curve / pro_curve(maps, masks) / pixel_curves:
        the exact curves those metrics integrate (None when undefined); decimate for plotting

Pixel-level AUROC / AP / F1-max take the flattened maps and masks. Undefined metrics (one class
only) are None, never 0. NaN scores raise ValueError. See docs/metrics.md.
"""

from zsad_jax.metrics.curves import decimate, pixel_curves, pr_curve, pro_curve, roc_curve
from zsad_jax.metrics.pro import aupro, pixel_metrics
from zsad_jax.metrics.ranking import auroc, average_precision, f1_max, ranking_metrics
from zsad_jax.metrics.summary import (
    IMAGE_METRICS,
    METRIC_NAMES,
    PIXEL_METRICS,
    defined_class_counts,
    evaluate,
    mean_over_classes,
)

__all__ = ["IMAGE_METRICS", "METRIC_NAMES", "PIXEL_METRICS", "aupro", "auroc",
           "average_precision", "decimate", "defined_class_counts", "evaluate", "f1_max",
           "mean_over_classes", "pixel_curves", "pixel_metrics", "pr_curve", "pro_curve",
           "ranking_metrics", "roc_curve"]
