r"""Score any images with a trained run: per image an anomaly score and a heatmap overlay.

    python -m zsad_jax.predict --workdir runs/demo --images 'photos/*.jpg' --out predictions
    python -m zsad_jax.predict --workdir runs/demo --images photos/ --out pred --threshold 0.5

Writes into --out: <name>_heatmap.png (the anomaly map over the image, at the image's size, on
the fixed colour scale --vmin..--vmax), with --threshold also <name>_mask.png (white = map >= T),
and scores.csv (one row per image). Images of any size and format PIL reads; unreadable ones are
named on stderr, skipped, and counted at the end. Bad flags, and --images that match no image,
exit 2 with one line, before any model is loaded.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import pathlib
import re
import sys

import numpy as np
from PIL import Image

from zsad_jax import cli_logging, config_lib, data, devices, runs
from zsad_jax.backbones.io import CorruptWeightsError
from zsad_jax.data.pipeline import Preprocess
from zsad_jax.data.records import IMAGE_EXTENSIONS
from zsad_jax.evaluation import heatmaps, inference
from zsad_jax.evaluation.postprocess import resize_map

log = logging.getLogger(__name__)


def define_flags() -> None:
    """Defines the CLI flags (at run time, so importing this module defines no absl flags)."""
    from absl import flags

    if "images" in flags.FLAGS:
        return
    runs.define_model_flags()
    for name in runs.MODEL_FLAGS:       # listed by --help with this module's own flags
        flags.declare_key_flag(name)
    flags.DEFINE_list("images", None, "Image file(s), folder(s) (their image files, not "
                      "recursive) or glob pattern(s) ('**' recurses); comma-separated.")
    flags.DEFINE_string("out", None, "Output folder (created).")
    flags.DEFINE_float("threshold", None, "Also write a binary mask PNG per image: pixels whose "
                       "anomaly-map value is >= this threshold are white.")
    flags.DEFINE_float("vmin", 0.0, "Anomaly-map value drawn dark blue in the heatmaps.")
    flags.DEFINE_float("vmax", 1.0, "Anomaly-map value drawn dark red in the heatmaps.")
    flags.DEFINE_float("smoothing_sigma", None, "Override config.eval.smoothing_sigma (Gaussian "
                       "smoothing in input pixels; 0 = off).")
    flags.DEFINE_integer("batch_size", None, "Images per batch (default "
                         "config.data.eval_batch_size).")
    flags.DEFINE_bool("progress", True, "Show the progress bar (images/s, ETA).")
    flags.DEFINE_string("class_name", "", "The class of the images (an object word, e.g. "
                        "'bottle'), for methods whose prompts name it; empty: unknown.")


CSV_COLUMNS = ("image", "score", "map_max", "heatmap", "mask", "anomalous_fraction")


class UsageError(ValueError):
    """A flag value that cannot be used; exit code 2."""


def expand_images(specs) -> list[str]:
    """Files, folders and glob patterns -> image paths, sorted per spec, each file once (by its
    real path: a `**` glob through a symlink loop does not score one image many times).

    Raises UsageError naming a spec that gives no image file.
    """
    found: list[str] = []
    for spec in specs:
        path = pathlib.Path(spec).expanduser()
        if path.is_dir():
            matches = sorted(str(p) for p in path.iterdir()
                             if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not matches:
                raise UsageError(f"--images {spec!r}: the folder holds no image file "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
        elif path.is_file():
            matches = [str(path)]
        else:
            matches = sorted(p for p in glob.glob(str(path), recursive=True)
                             if pathlib.Path(p).is_file())
            if not matches:
                raise UsageError(f"--images {spec!r}: no such file or folder, and no file "
                                 "matches it as a glob pattern")
        found += matches
    unique: dict[str, str] = {}
    for p in found:
        unique.setdefault(os.path.realpath(p), p)
    return list(unique.values())


def output_names(paths: list[str]) -> list[str]:
    """A unique, file-system-safe name per image: its stem (Unicode letters kept; path separators
    and control characters replaced), with _2, _3 ... on collisions."""
    names, used = [], {}
    for path in paths:
        stem = re.sub(r"[\x00-\x1f/\\:*?\"<>|]+", "_", pathlib.Path(path).stem).strip() or "image"
        count = used.get(stem, 0) + 1
        used[stem] = count
        names.append(stem if count == 1 else f"{stem}_{count}")
    return names


class Predictor:
    """Batches images through the jitted inference and writes PNGs + rows of scores.csv."""

    def __init__(self, method, params, config, out: pathlib.Path, threshold, vmin, vmax,
                 batch_size: int, smoothing_sigma: float, class_name: str = ""):
        self.method, self.out, self.class_name = method, out, class_name
        self.threshold, self.vmin, self.vmax = threshold, vmin, vmax
        self.mesh = devices.make_mesh()
        self.batch_size = devices.global_batch_size(batch_size, self.mesh)
        self.infer = inference.inference_fn(method, float(smoothing_sigma), self.mesh)
        self.params = devices.replicate(params, self.mesh)
        self.preprocess = Preprocess(method.views, method.mask_size, host_keys=True)
        self.rows: list[dict] = []
        self.failed: list[tuple[str, str]] = []

    def load(self, path: str):
        """Preprocessed example of one image (identical to the evaluation pipeline), or None."""
        record = data.Record(image_path=path, mask_path=None, label=0, class_name=self.class_name,
                             defect="", dataset="predict")
        try:
            return self.preprocess(record)
        except Exception as e:   # any decoding problem: name the file, go on with the rest
            reason = str(e.__cause__ or e)
            self.failed.append((path, reason))
            log.warning("cannot read image %s: %s (skipped)", path, reason)
            return None

    def run_batch(self, items: list[tuple[str, str, dict]]) -> None:
        padding = self.preprocess.padding()
        examples = [e for _, _, e in items] + [padding] * (self.batch_size - len(items))
        batch = {"images": {v: np.stack([e["images"][v] for e in examples])
                            for v in self.method.views},
                 "masks": np.stack([e["masks"] for e in examples]),
                 "labels": np.zeros((len(examples),), np.int32),
                 "class_name": np.asarray([self.class_name] * len(examples))}
        maps, scores = self.infer(self.params, devices.to_device(self.method, batch, self.mesh))
        maps, scores = devices.to_host(maps), devices.to_host(scores)
        for i, (path, name, example) in enumerate(items):
            self.write(path, name, example, maps[i], float(scores[i]))

    def write(self, path: str, name: str, example: dict, anomaly_map, score: float) -> None:
        height, width = (int(v) for v in example["native_size"])
        native_map = resize_map(anomaly_map, height, width)
        image = data.load_image(path)
        heatmap_file = f"{name}_heatmap.png"
        heatmaps.save_png(self.out / heatmap_file,
                          heatmaps.overlay(image, native_map, self.vmin, self.vmax))
        row = {"image": path, "score": repr(score), "map_max": repr(float(native_map.max())),
               "heatmap": heatmap_file, "mask": "", "anomalous_fraction": ""}
        if self.threshold is not None:
            binary = native_map >= self.threshold
            row["mask"] = f"{name}_mask.png"
            Image.fromarray(binary.astype(np.uint8) * 255).save(self.out / row["mask"])
            row["anomalous_fraction"] = repr(float(binary.mean()))
        self.rows.append(row)

    def write_csv(self) -> pathlib.Path:
        path = self.out / "scores.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        return path


def check_flags(out, vmin: float, vmax: float, batch_size: int | None,
                smoothing_sigma: float | None) -> None:
    """Flag values checked before anything is loaded (UsageError naming the flag)."""
    if out is None:
        raise UsageError("--out is required (see --help)")
    if pathlib.Path(out).exists() and not pathlib.Path(out).is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    if not vmax > vmin:
        raise UsageError(f"--vmax ({vmax}) must be above --vmin ({vmin})")
    if batch_size is not None and batch_size <= 0:
        raise UsageError(f"--batch_size {batch_size}: expected a positive integer")
    if smoothing_sigma is not None and smoothing_sigma < 0:
        raise UsageError(f"--smoothing_sigma {smoothing_sigma}: expected >= 0")


def predict(method, params, config, paths: list[str], out, threshold=None, vmin=0.0, vmax=1.0,
            batch_size: int | None = None, smoothing_sigma: float | None = None,
            progress: bool = True, class_name: str = "") -> Predictor:
    """Scores `paths`, writing into `out`; returns the Predictor (rows, failed)."""
    check_flags(out, vmin, vmax, batch_size, smoothing_sigma)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(
        method, params, config, out, threshold, vmin, vmax,
        batch_size or config.data.eval_batch_size,
        config.eval.smoothing_sigma if smoothing_sigma is None else smoothing_sigma, class_name)
    names = output_names(paths)
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc="predict", unit="img", dynamic_ncols=True)
    pending = []
    for path, name in zip(paths, names, strict=True):
        example = predictor.load(path)
        if example is not None:
            pending.append((path, name, example))
        if len(pending) == predictor.batch_size:
            predictor.run_batch(pending)
            pending = []
        if bar is not None:
            bar.update(1)
    if pending:
        predictor.run_batch(pending)
    if bar is not None:
        bar.close()
    predictor.write_csv()
    return predictor


def main(argv) -> None:
    from absl import flags

    f = flags.FLAGS
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]} (see --help)")
    cli_logging.plain_logs()
    try:
        if not f.images:
            raise UsageError("--images is required (see --help)")
        check_flags(f.out, f.vmin, f.vmax, f.batch_size, f.smoothing_sigma)
        paths = expand_images(f.images)
        run = runs.model_from_flags()
        predictor = predict(run.method, run.params, run.config, paths, f.out, f.threshold, f.vmin,
                            f.vmax, f.batch_size, f.smoothing_sigma, progress=f.progress,
                            class_name=f.class_name)
    except (UsageError, FileNotFoundError, config_lib.ConfigError, CorruptWeightsError) as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(2) from None
    sys.stdout.write(f"{len(predictor.rows)} image(s) scored, {len(predictor.failed)} unreadable "
                     f"skipped; scores in {pathlib.Path(f.out) / 'scores.csv'}\n")
    if predictor.failed:
        sys.stdout.write("unreadable: " + ", ".join(p for p, _ in predictor.failed) + "\n")
    if not predictor.rows:
        raise SystemExit(1)


def run() -> None:
    """Console entry point (`zsad-predict`)."""
    define_flags()
    config_lib.main_with_config(main)


if __name__ == "__main__":
    run()
