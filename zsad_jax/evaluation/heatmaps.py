"""Heatmap pictures with numpy + PIL only: a colour map, overlays, ground-truth contours, panels.

A panel (`panel`) is a readable figure of one image, on a white background:

    [title: e.g. the file name]
    image          | ground truth             | anomaly map (score 0.87)  | colour bar
    (the input)    | (image + mask contour)   | (jet over the image,      | vmax ... vmin
                   |                          |  + mask contour)          |

Small maps are upsampled so each sub-panel is at least `PANEL_MIN_SIZE` (256) px on its long side
(large ones are shown at most `PANEL_MAX_SIZE`), the image is resized (from its own resolution) to
the map's shape. The ground-truth contour is a 2-px magenta line (a colour jet never uses) edged
by 1-px black lines on both sides, so it shows on any image (green grass, white, black). The
colour scale is given (vmin, vmax): evaluation uses one scale per class, so panels of a class are
comparable; the colour bar prints it. `overlay` alone is the map blended over the image at the
image's size (what `predict` writes).
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from zsad_jax.evaluation.postprocess import resize_map

# "jet": dark blue -> blue -> cyan -> yellow -> red -> dark red, as (position, (r, g, b)) anchors.
_JET_ANCHORS = ((0.0, (0.0, 0.0, 0.5)), (0.11, (0.0, 0.0, 1.0)), (0.125, (0.0, 0.0, 1.0)),
                (0.34, (0.0, 0.86, 1.0)), (0.35, (0.0, 0.9, 0.97)), (0.64, (1.0, 0.97, 0.0)),
                (0.65, (1.0, 0.9, 0.0)), (0.89, (1.0, 0.0, 0.0)), (1.0, (0.5, 0.0, 0.0)))
CONTOUR_RGB = (255, 0, 255)      # magenta: not a jet colour, rare in inspection images
OUTLINE_RGB = (0, 0, 0)          # the 1-px edges of the contour line
CONTOUR_WIDTH = 2
OVERLAY_ALPHA = 0.5
PANEL_MIN_SIZE = 256             # sub-panel long side, px, unless `size` is given
PANEL_MAX_SIZE = 512
_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)
_NUM_TICKS = 5


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
    """(H, W, 3) image blended with the coloured (H, W) map: (H, W, 3) uint8, the image's size."""
    blended = (1 - alpha) * to_uint8(image) + alpha * colorize(anomaly_map, vmin, vmax)
    return np.round(blended).astype(np.uint8)


def draw_contour(image: np.ndarray, mask: np.ndarray, width: int = CONTOUR_WIDTH,
                 rgb=CONTOUR_RGB, outline_rgb=OUTLINE_RGB) -> np.ndarray:
    """(H, W, 3) image with the boundary of the (H, W) bool mask drawn -> (H, W, 3) uint8.

    The line is `width` px of `rgb` just inside each region, edged by 1 px of `outline_rgb` on
    both sides (outside the region, and inside the line), so it contrasts on any image.
    """
    out = to_uint8(image).copy()
    mask = np.asarray(mask, bool)
    if not mask.any():
        return out
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    line = mask & ~inner
    inner_edge = inner & ~ndimage.binary_erosion(inner, border_value=0)
    outer_edge = ndimage.binary_dilation(mask) & ~mask
    out[outer_edge | inner_edge] = outline_rgb
    out[line] = rgb
    return out


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, 3) float/uint8 -> (height, width, 3) uint8 (bicubic)."""
    pil = Image.fromarray(to_uint8(image))
    if pil.size != (width, height):
        pil = pil.resize((int(width), int(height)), Image.Resampling.BICUBIC)
    return np.asarray(pil)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) bool -> (height, width) bool (nearest neighbour)."""
    pil = Image.fromarray(np.asarray(mask, np.uint8))
    if pil.size != (width, height):
        pil = pil.resize((int(width), int(height)), Image.Resampling.NEAREST)
    return np.asarray(pil) != 0


def display_shape(shape: tuple[int, int], size: int | None = None) -> tuple[int, int]:
    """(h, w) of a map -> (h', w') of its sub-panel, aspect kept: long side `size`, or (None)
    the map's long side clipped to [PANEL_MIN_SIZE, PANEL_MAX_SIZE]."""
    height, width = (int(v) for v in shape)
    long_side = max(height, width)
    target = int(size) if size else min(max(long_side, PANEL_MIN_SIZE), PANEL_MAX_SIZE)
    return max(1, round(height * target / long_side)), max(1, round(width * target / long_side))


@functools.lru_cache(maxsize=8)
def _font(pixels: int) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font (no system font needed) at `pixels` px."""
    return ImageFont.load_default(size=pixels)


def _text_width(font, text: str) -> int:
    return int(np.ceil(font.getlength(text)))


def _fit(font, text: str, width: int) -> str:
    """`text`, cut with an ellipsis to at most `width` px."""
    if _text_width(font, text) <= width:
        return text
    while text and _text_width(font, text + "...") > width:
        text = text[:-1]
    return text + "..."


def tick_labels(ticks: np.ndarray) -> list[str]:
    """Colour-bar labels of (T,) evenly spaced values: fixed decimals fit to their spacing
    (0.00 0.25 ... 1.00), or 3 significant digits for very large / small scales."""
    span = float(np.max(ticks) - np.min(ticks))
    largest = float(np.max(np.abs(ticks)))
    if span <= 0 or not 1e-3 <= largest < 1e5:
        return [f"{t:.3g}" for t in ticks]
    step = span / max(ticks.shape[0] - 1, 1)
    decimals = int(np.clip(1 - np.floor(np.log10(step)), 0, 6))
    return [f"{t:.{decimals}f}" for t in ticks]


def colour_bar(height: int, width: int, table: np.ndarray = JET) -> np.ndarray:
    """(height, width, 3) uint8 vertical colour bar: table[-1] (vmax) at the top, table[0] at the
    bottom."""
    rows = np.round(np.linspace(table.shape[0] - 1, 0, height)).astype(np.int64)
    return np.repeat(table[rows][:, None, :], width, axis=1)


def panel(image: np.ndarray, mask: np.ndarray | None, anomaly_map: np.ndarray, vmin: float,
          vmax: float, *, score: float | None = None, title: str | None = None,
          size: int | None = None) -> np.ndarray:
    """The figure of one image (see the module docstring) -> (H', W', 3) uint8.

    image: (h, w, 3) float in [0, 1] or uint8, any size (resized to the map's shape); mask:
    (H, W) bool or None (no contour); anomaly_map: (H, W) float, drawn on the scale
    [vmin, vmax]. score: printed in the map's caption; title: a first line (e.g. the file name);
    size: the sub-panels' long side in px (default: see `display_shape`).
    """
    anomaly_map = np.asarray(anomaly_map, np.float32)
    height, width = display_shape(anomaly_map.shape, size)
    shown = resize_image(image, height, width)
    gt = (np.zeros((height, width), bool) if mask is None
          else resize_mask(mask, height, width))
    heat = overlay(shown, resize_map(anomaly_map, height, width), vmin, vmax)
    tiles = [shown, draw_contour(shown, gt), draw_contour(heat, gt)]
    captions = ["image", "ground truth",
                "anomaly map" if score is None else f"anomaly map (score {score:.3g})"]

    font_px = int(np.clip(round(max(height, width) / 18), 11, 18))
    font = _font(font_px)
    margin, gap, line = 8, 8, font_px + 6
    bar_width = max(10, font_px)
    ticks = np.linspace(float(vmax), float(vmin), _NUM_TICKS)
    labels = tick_labels(ticks)
    label_width = max(_text_width(font, s) for s in labels)
    top = margin + (line if title else 0) + line
    bar_x = margin + 3 * width + 3 * gap
    total_width = bar_x + bar_width + 4 + label_width + margin
    total_height = top + height + margin + font_px // 2       # room for the lowest tick label
    canvas = np.full((total_height, total_width, 3), _BACKGROUND, np.uint8)
    for k, tile in enumerate(tiles):
        x = margin + k * (width + gap)
        canvas[top:top + height, x:x + width] = tile
    canvas[top:top + height, bar_x:bar_x + bar_width] = colour_bar(height, bar_width)

    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    if title:
        draw.text((margin, margin), _fit(font, title, total_width - 2 * margin), fill=_TEXT,
                  font=font)
    for k, caption in enumerate(captions):
        draw.text((margin + k * (width + gap), top - line + 2), _fit(font, caption, width + gap),
                  fill=_TEXT, font=font)
    draw.rectangle((bar_x - 1, top - 1, bar_x + bar_width, top + height), outline=_TEXT)
    for t, text in enumerate(labels):
        y = top + round(t * (height - 1) / (_NUM_TICKS - 1))
        draw.line((bar_x + bar_width, y, bar_x + bar_width + 3, y), fill=_TEXT)
        draw.text((bar_x + bar_width + 5, y), text, fill=_TEXT, font=font, anchor="lm")
    return np.asarray(picture)


def save_png(path: str | pathlib.Path, picture: np.ndarray) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)
