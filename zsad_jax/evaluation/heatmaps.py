"""Heatmap pictures with numpy + PIL only: a colormap table, overlays, ground-truth contours.

A panel is three images side by side: the input image | the image with the ground-truth
contour (green) | the anomaly map in colour over the image. The colour scale is given (vmin, vmax):
evaluation uses one scale per class, so panels of a class are comparable.
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image
from scipy import ndimage

# "jet": dark blue -> blue -> cyan -> yellow -> red -> dark red, as (position, (r, g, b)) anchors.
_JET_ANCHORS = ((0.0, (0.0, 0.0, 0.5)), (0.11, (0.0, 0.0, 1.0)), (0.125, (0.0, 0.0, 1.0)),
                (0.34, (0.0, 0.86, 1.0)), (0.35, (0.0, 0.9, 0.97)), (0.64, (1.0, 0.97, 0.0)),
                (0.65, (1.0, 0.9, 0.0)), (0.89, (1.0, 0.0, 0.0)), (1.0, (0.5, 0.0, 0.0)))
CONTOUR_RGB = (0, 255, 0)
OVERLAY_ALPHA = 0.5


def colormap_table(anchors=_JET_ANCHORS, size: int = 256) -> np.ndarray:
    """(size, 3) uint8 lookup table interpolated linearly between the anchors."""
    positions = np.array([p for p, _ in anchors])
    colours = np.array([c for _, c in anchors])
    x = np.linspace(0.0, 1.0, size)
    table = np.stack([np.interp(x, positions, colours[:, c]) for c in range(3)], axis=-1)
    return np.round(table * 255).astype(np.uint8)


JET = colormap_table()


def colorize(anomaly_map: np.ndarray, vmin: float, vmax: float,
             table: np.ndarray = JET) -> np.ndarray:
    """(H, W) float -> (H, W, 3) uint8; values are clipped to [vmin, vmax]."""
    span = max(float(vmax) - float(vmin), 1e-12)
    unit = np.clip((np.asarray(anomaly_map, np.float64) - vmin) / span, 0.0, 1.0)
    return table[np.round(unit * (table.shape[0] - 1)).astype(np.int64)]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] (or uint8) -> uint8."""
    if image.dtype == np.uint8:
        return image
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def overlay(image: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float,
            alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) image blended with the coloured map: (H, W, 3) uint8."""
    blended = (1 - alpha) * to_uint8(image) + alpha * colorize(anomaly_map, vmin, vmax)
    return np.round(blended).astype(np.uint8)


def draw_contour(image: np.ndarray, mask: np.ndarray, rgb=CONTOUR_RGB) -> np.ndarray:
    """(H, W, 3) image with the boundary of the (H, W) bool mask drawn (about 1/200 of the side)."""
    out = to_uint8(image).copy()
    mask = np.asarray(mask, bool)
    if not mask.any():
        return out
    width = max(1, round(max(mask.shape) / 200))
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    out[mask & ~inner] = rgb
    return out


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, 3) float/uint8 -> (height, width, 3) uint8 (bicubic)."""
    pil = Image.fromarray(to_uint8(image))
    if pil.size != (width, height):
        pil = pil.resize((int(width), int(height)), Image.Resampling.BICUBIC)
    return np.asarray(pil)


def panel(image: np.ndarray, mask: np.ndarray | None, anomaly_map: np.ndarray, vmin: float,
          vmax: float) -> np.ndarray:
    """image | ground-truth contour | heatmap overlay -> (H, 3 W, 3) uint8 at the map's size."""
    height, width = anomaly_map.shape
    image = resize_image(image, height, width)
    mask = np.zeros((height, width), bool) if mask is None else mask
    return np.concatenate([image, draw_contour(image, mask),
                           overlay(image, anomaly_map, vmin, vmax)], axis=1)


def save_png(path: str | pathlib.Path, picture: np.ndarray) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)
