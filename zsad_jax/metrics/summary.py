"""All seven metrics of one class, and their mean over classes.

    evaluate(image_scores, image_labels, maps, masks) -> {image_auroc, image_ap, image_f1_max,
                                                          pixel_auroc, pixel_ap, pixel_f1_max,
                                                          pixel_aupro}

A metric that cannot be computed is None (JSON null, "n/a" in tables), never 0: image metrics of a
class whose images are all anomalous (or all normal), pixel metrics of a class without anomalous
pixels (e.g. a classification-only dataset).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from zsad_jax.metrics import pro, ranking

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")
METRIC_NAMES = IMAGE_METRICS + PIXEL_METRICS


def evaluate(image_scores, image_labels, maps=None, masks=None,
             fpr_limit: float = 0.3) -> dict[str, float | None]:
    """The seven metrics of one class.

    image_scores: (N,) real; image_labels: (N,) 0/1 or bool. maps: (N, H, W) float anomaly maps
    (or a sequence of (H_i, W_i) maps); masks: same shapes, bool or 0/1. maps=masks=None skips
    the pixel metrics (None). One sort for the image metrics, one for all four pixel metrics.
    """
    image_scores = ranking.check_scores(image_scores, what="image scores")
    image_labels = ranking.check_labels(image_labels, what="image labels")
    if image_scores.ndim != 1:
        raise ValueError(f"image scores must be 1-D (N,), got shape {image_scores.shape}.")
    ranking.check_same_shape(image_scores, image_labels, ("image scores", "image labels"))
    image = ranking.ranking_metrics(image_scores, image_labels)
    out = {f"image_{k}": v for k, v in image.items()}
    if (maps is None) != (masks is None):
        raise ValueError("give both maps and masks for pixel metrics, or neither.")
    if maps is None:
        out.update(dict.fromkeys(PIXEL_METRICS))
    else:
        if len(maps) != image_scores.shape[0]:
            raise ValueError(f"{len(maps)} anomaly maps for {image_scores.shape[0]} image scores;"
                             " they must match.")
        pixel = pro.pixel_metrics(maps, masks, fpr_limit=fpr_limit)
        out.update({f"pixel_{k}": v for k, v in pixel.items()})
    return {name: out[name] for name in METRIC_NAMES}


def mean_over_classes(per_class: Mapping[str, Mapping[str, float | None]]
                      ) -> dict[str, float | None]:
    """Mean of each metric over the classes where it is defined (None if defined nowhere)."""
    mean = {}
    for name in METRIC_NAMES:
        values = [m[name] for m in per_class.values() if m.get(name) is not None]
        mean[name] = float(np.mean(values)) if values else None
    return mean


def defined_class_counts(per_class: Mapping[str, Mapping[str, float | None]]) -> dict[str, int]:
    """How many classes each mean is taken over."""
    return {name: sum(m.get(name) is not None for m in per_class.values())
            for name in METRIC_NAMES}
