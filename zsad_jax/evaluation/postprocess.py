"""Anomaly-map post-processing on the host: resizing maps to an image's native size.

(Gaussian smoothing runs on the device with the model: `zsad_jax.ops.smooth_maps`.)
"""

from __future__ import annotations

import numpy as np


def resize_map(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) float32 -> (height, width) float32, bilinear (PIL, half-pixel centres)."""
    from PIL import Image

    anomaly_map = np.asarray(anomaly_map, np.float32)
    if anomaly_map.shape == (height, width):
        return anomaly_map
    image = Image.fromarray(anomaly_map, mode="F")
    return np.asarray(image.resize((int(width), int(height)), Image.Resampling.BILINEAR),
                      np.float32)
