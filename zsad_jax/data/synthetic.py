"""A small synthetic anomaly dataset in MVTec layout, from textures that ship with scikit-image.

Each class is one texture (`skimage.data`); normal images are random crops (random scale, flip,
90-degree rotation) tinted with the class colour. Four procedural anomaly types, each with a
pixel-exact mask (exactly the pixels that were changed):

* perlin:     a blob shaped by thresholded smooth (Perlin-like) noise shows a foreign pattern:
              stripes between a light and a dark colour;
* scratch:    a thick random polyline, black or white (whichever contrasts with the pixels under it);
* cut_paste:  a rectangle cut from elsewhere in the image, flipped and brightened, pasted;
* color_spot: a filled ellipse of an opaque, bright, saturated colour.

The anomalies are meant to be learnable from three classes and detectable on the two held-out
ones by a tiny random backbone (the demos): none of them reuses another class's texture (a class
texture is normal for its own class), each spans at least about one 8-pixel patch of a 64-pixel
input, and each differs from every texture in contrast, colour or pattern, whatever the class.
Sizes are fractions of `image_size`.

Deterministic given the seed (numpy Generator + PIL PNG writer); about a second for the default.
"""

from __future__ import annotations

import colorsys
import json
import pathlib
import shutil

import numpy as np
from PIL import Image

# class name -> (skimage.data function, RGB tint for grayscale textures)
TEXTURES = {
    "brick": ("brick", (1.0, 0.55, 0.4)),
    "grass": ("grass", (0.55, 1.0, 0.45)),
    "gravel": ("gravel", (0.85, 0.8, 0.7)),
    "moon": ("moon", (0.75, 0.8, 1.0)),
    "tissue": ("immunohistochemistry", None),
}
DEFECTS = ("perlin", "scratch", "cut_paste", "color_spot")
MARKER = "SYNTHETIC.json"
DEFAULTS = dict(image_size=128, num_train=6, num_test_good=6, num_per_defect=2)
FORMAT_VERSION = 2      # 2: anomalies that a tiny random backbone can learn


def _texture(name: str) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] for the class `name`."""
    import skimage.data

    fn, tint = TEXTURES[name]
    image = getattr(skimage.data, fn)().astype(np.float32) / 255.0
    if image.ndim == 2:
        image = image[..., None] * np.asarray(tint, np.float32)
    return np.clip(image[..., :3], 0, 1)


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    planes = [Image.fromarray(np.ascontiguousarray(array[..., c], dtype=np.float32))
              .resize((size, size), Image.Resampling.BILINEAR) for c in range(array.shape[-1])]
    return np.stack([np.asarray(p) for p in planes], axis=-1)


def _crop(texture: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    side = int(min(texture.shape[:2]) * rng.uniform(0.35, 0.6))
    y = rng.integers(0, texture.shape[0] - side + 1)
    x = rng.integers(0, texture.shape[1] - side + 1)
    patch = _resize(texture[y:y + side, x:x + side], size)
    patch = np.rot90(patch, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return np.clip(np.ascontiguousarray(patch), 0, 1)


def _smooth_noise(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) smooth noise: sum of bicubic-upsampled random grids (two coarse Perlin-like
    octaves, so that thresholding gives blobs rather than speckle)."""
    total = np.zeros((size, size), np.float32)
    for cells, weight in ((3, 1.0), (6, 0.5)):
        grid = rng.standard_normal((cells, cells)).astype(np.float32)
        up = Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)
        total += weight * np.asarray(up)
    return total


def _hsv_colour(rng: np.random.Generator, saturation, value) -> np.ndarray:
    """(3,) RGB of a random hue with saturation and value drawn uniformly from the given ranges."""
    hue, sat, val = rng.uniform(), rng.uniform(*saturation), rng.uniform(*value)
    return np.asarray(colorsys.hsv_to_rgb(hue, sat, val), np.float32)


def _stripes(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) stripes of random orientation between a light and a dark colour; the period
    is 6-12 pixels at size 128 (3-6 at the demos' 64-pixel input)."""
    period = rng.uniform(6, 12) * size / 128
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    light = (np.floor((xx * np.cos(theta) + yy * np.sin(theta)) / period) % 2).astype(bool)
    colours = _hsv_colour(rng, (0, 0.6), (0.85, 1.0)), _hsv_colour(rng, (0, 0.6), (0, 0.2))
    return np.where(light[..., None], *colours)


def _perlin(image, rng):
    noise = _smooth_noise(image.shape[0], rng)
    mask = noise > np.quantile(noise, 1.0 - rng.uniform(0.08, 0.2))
    beta = rng.uniform(0.8, 1.0)
    pattern = _stripes(image.shape[0], rng)
    out = image.copy()
    out[mask] = (1 - beta) * image[mask] + beta * pattern[mask]
    return out, mask


def _scratch(image, rng):
    from scipy.ndimage import binary_dilation
    from skimage.draw import line

    size = image.shape[0]
    # A polyline of 2-4 points, at least size / 3 long (a few redraws at most).
    for _ in range(10):
        points = rng.integers(size // 8, size - size // 8, size=(int(rng.integers(2, 5)), 2))
        if np.linalg.norm(np.diff(points, axis=0), axis=1).sum() >= size / 3:
            break
    mask = np.zeros((size, size), bool)
    for (r0, c0), (r1, c1) in zip(points[:-1], points[1:], strict=True):
        rr, cc = line(int(r0), int(c0), int(r1), int(c1))
        mask[rr, cc] = True
    width = max(1, round(rng.uniform(size / 40, size / 25)))         # 3-5 px at 128
    mask = binary_dilation(mask, np.ones((width, width), bool))
    out = image.copy()
    out[mask] = 0.05 if image[mask].mean() > 0.5 else 0.95          # contrasting black or white
    return out, mask


def _cut_paste(image, rng):
    size = image.shape[0]
    h, w = (int(v) for v in rng.integers(size // 5, size // 3, size=2))
    sy, sx = (int(v) for v in rng.integers(0, size - max(h, w), size=2))
    ty, tx = (int(v) for v in rng.integers(0, size - max(h, w), size=2))
    patch = np.clip(image[sy:sy + h, sx:sx + w][::-1, ::-1] * rng.uniform(1.4, 1.8) + 0.1, 0, 1)
    out = image.copy()
    out[ty:ty + h, tx:tx + w] = patch
    mask = np.zeros((size, size), bool)
    mask[ty:ty + h, tx:tx + w] = True
    return out, mask


def _color_spot(image, rng):
    from skimage.draw import ellipse

    size = image.shape[0]
    r, c = rng.integers(size // 5, size - size // 5, size=2)
    rr, cc = ellipse(int(r), int(c), rng.uniform(size / 12, size / 6), rng.uniform(size / 12, size / 6),
                     shape=(size, size), rotation=rng.uniform(0, np.pi))
    mask = np.zeros((size, size), bool)
    mask[rr, cc] = True
    out = image.copy()
    out[mask] = _hsv_colour(rng, (0.8, 1.0), (0.95, 1.0))
    return out, mask


_ANOMALIES = {"perlin": _perlin, "scratch": _scratch, "cut_paste": _cut_paste,
              "color_spot": _color_spot}


def _save(path: pathlib.Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        data = array.astype(np.uint8) * 255
    else:
        data = np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(data).save(path, format="PNG", compress_level=1)


def synthetic_spec(seed: int, image_size: int = DEFAULTS["image_size"], classes=tuple(TEXTURES),
                   num_train: int = DEFAULTS["num_train"],
                   num_test_good: int = DEFAULTS["num_test_good"],
                   num_per_defect: int = DEFAULTS["num_per_defect"]) -> dict:
    """What `make_synthetic` records in SYNTHETIC.json (a finished dataset's identity)."""
    return dict(version=FORMAT_VERSION, seed=seed, image_size=image_size, classes=list(classes),
                num_train=num_train, num_test_good=num_test_good, num_per_defect=num_per_defect)


def is_complete(root, spec: dict) -> bool:
    """True if `root` holds a finished dataset generated with exactly `spec`."""
    marker = pathlib.Path(root) / MARKER
    try:
        return json.loads(marker.read_text()) == spec
    except (OSError, ValueError):
        return False


def make_synthetic(root, seed: int = 0, *, image_size: int = DEFAULTS["image_size"],
                   classes=tuple(TEXTURES), num_train: int = DEFAULTS["num_train"],
                   num_test_good: int = DEFAULTS["num_test_good"],
                   num_per_defect: int = DEFAULTS["num_per_defect"]) -> pathlib.Path:
    """Writes the dataset under `root` (replacing an earlier one) and returns `root`.

    Layout: `<class>/train/good/000.png`, `<class>/test/{good,perlin,scratch,cut_paste,
    color_spot}/000.png`, `<class>/ground_truth/<defect>/000_mask.png`, plus `SYNTHETIC.json`.
    """
    root = pathlib.Path(root)
    if unknown := [c for c in classes if c not in TEXTURES]:
        raise ValueError(f"unknown synthetic class(es) {unknown}; available: {list(TEXTURES)}")
    if image_size < 32:
        raise ValueError(f"image_size={image_size} is too small for the anomalies (>= 32)")
    spec = synthetic_spec(seed, image_size, classes, num_train, num_test_good, num_per_defect)
    (root / MARKER).unlink(missing_ok=True)
    for name in classes:
        shutil.rmtree(root / name, ignore_errors=True)
    textures = {name: _texture(name) for name in classes}
    for k, name in enumerate(classes):
        rng = np.random.default_rng([seed, k])
        for i in range(num_train):
            _save(root / name / "train" / "good" / f"{i:03d}.png",
                  _crop(textures[name], image_size, rng))
        for i in range(num_test_good):
            _save(root / name / "test" / "good" / f"{i:03d}.png",
                  _crop(textures[name], image_size, rng))
        for defect in DEFECTS:
            for i in range(num_per_defect):
                out, mask = _ANOMALIES[defect](_crop(textures[name], image_size, rng), rng)
                _save(root / name / "test" / defect / f"{i:03d}.png", out)
                _save(root / name / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    (root / MARKER).write_text(json.dumps(spec))
    return root
