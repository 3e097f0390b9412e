"""Image and mask decoding (PIL), resizing, and the per-dataset mask binarization convention.

* Images become RGB: grayscale, palette, RGBA (alpha dropped) and CMYK are converted by PIL;
  16-bit and 32-bit integer images are scaled by 65535, float images are clipped to [0, 1].
* Masks are binarized by each dataset's convention (`MASK_THRESHOLDS`): `> 0` for lossless masks
  (VisA's PNGs hold defect-class ids 1..9, not 255), `> 127` for JPEG-compressed masks (Kvasir-SEG,
  RSDD: compression leaves small non-zero values around edges and in the background). A JPEG mask
  of any dataset uses `> 127`. Colour masks use their largest channel; palette masks their index.
* Resizing (what AnomalyCLIP's transforms do on PIL images): images bicubic on the 8-bit RGB
  image; masks bilinear on 0/255 then `> 0.5` (AnomalyCLIP), or nearest (`mask_interpolation`).
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

# Threshold t: mask = value > t. Datasets not listed use `> 0` (JPEG files always use 127).
MASK_THRESHOLDS = {"kvasir": 127, "rsdd": 127}
JPEG_MASK_THRESHOLD = 127
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _is_jpeg(path: pathlib.Path | str, image: Image.Image | None = None) -> bool:
    if image is not None and image.format:
        return image.format == "JPEG"
    if not isinstance(path, (str, pathlib.Path)):
        return False
    return pathlib.Path(path).suffix.lower() in (".jpg", ".jpeg")


def open_rgb(path) -> Image.Image | np.ndarray:
    """An 8-bit "RGB" PIL image, or (H, W, 3) float32 in [0, 1] for high-bit-depth files."""
    with Image.open(path) as image:
        image.load()
        if image.mode in _HIGH_DEPTH_MODES:
            gray = np.asarray(image, dtype=np.float64) / 65535.0
            return np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=-1).astype(np.float32)
        if image.mode == "F":
            gray = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
            return np.repeat(gray[..., None], 3, axis=-1)
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        return image.convert("RGB")


def load_image(path) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1]; grayscale/palette/RGBA/16-bit inputs are converted."""
    image = open_rgb(path)
    if isinstance(image, np.ndarray):
        return image
    return np.asarray(image, dtype=np.float32) / 255.0


def mask_threshold(path, dataset: str | None = None, image: Image.Image | None = None) -> int:
    if _is_jpeg(path, image):
        return JPEG_MASK_THRESHOLD
    return MASK_THRESHOLDS.get(dataset or "", 0)


def load_mask(path, dataset: str | None = None) -> np.ndarray:
    """(H, W) bool: the mask binarized by `dataset`'s convention (see module docstring)."""
    with Image.open(path) as image:
        image.load()
        threshold = mask_threshold(path, dataset, image)
        if image.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
            values = np.asarray(image.convert("RGB")).max(axis=-1)
        else:  # "1", "L", "P" (palette index), "I;16", "I", "F"
            values = np.asarray(image)
    return np.asarray(values > threshold)


def image_size(path) -> tuple[int, int]:
    """(H, W) from the header, without decoding."""
    with Image.open(path) as image:
        return image.size[1], image.size[0]


def verify_image(path) -> tuple[int, int]:
    """Decodes the whole file (catches truncation/corruption); returns (H, W). Raises on failure."""
    with Image.open(path) as image:
        image.load()
        return image.size[1], image.size[0]


def resize_rgb(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """`open_rgb` output -> (size, size, 3) float32 in [0, 1], bicubic (PIL, antialiased)."""
    if isinstance(image, np.ndarray):
        planes = [Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32))
                  for c in range(3)]
        channels = [np.asarray(p.resize((size, size), Image.Resampling.BICUBIC)) for p in planes]
        return np.clip(np.stack(channels, axis=-1), 0, 1).astype(np.float32)
    resized = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.float32) / 255.0


def resize_mask(mask: np.ndarray, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """(H, W) bool -> (size, size) float32 in {0, 1}.

    "bilinear": PIL bilinear on 0/255 then `/255 > 0.5` (AnomalyCLIP's target transform);
    "nearest": PIL nearest.
    """
    pil = Image.fromarray(mask.astype(np.uint8) * 255)
    if interpolation == "bilinear":
        out = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR)) / 255.0 > 0.5
    elif interpolation == "nearest":
        out = np.asarray(pil.resize((size, size), Image.Resampling.NEAREST)) > 0
    else:
        raise ValueError(f"mask_interpolation={interpolation!r}: use 'bilinear' or 'nearest'")
    return out.astype(np.float32)
