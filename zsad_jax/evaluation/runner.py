"""evaluate_records: stream a dataset through a method, compute per-class metrics, write results.

Images are streamed in batches (`data.eval_batches`); only the current classes' maps (float32, at
the evaluation resolution) and masks are held, and a class is scored, drawn (heatmaps, its report
section) and dropped as soon as its last image has been seen (records are grouped by class first).
Results (metrics.json, metrics.csv, table.md, report.html) say which parameters produced them:
`provenance` (the checkpoint's step, the config's sha256, ...) is written into each.
"""

from __future__ import annotations

import logging
import pathlib
import re
import sys
from collections.abc import Sequence

import jax
import numpy as np

from zsad_jax import data, devices, metrics
from zsad_jax.config_lib import config_to_dict
from zsad_jax.evaluation import heatmaps, inference, report, tables
from zsad_jax.evaluation.postprocess import resize_map

log = logging.getLogger(__name__)

RESOLUTIONS = ("input", "native")


def group_by_class(records: Sequence, max_images: int = 0) -> list:
    """Records grouped by class (first-appearance order, order kept within a class).

    max_images > 0 keeps at most that many per class, evenly spaced over the class's images.
    """
    by_class: dict[str, list] = {}
    for record in records:
        by_class.setdefault(record.class_name, []).append(record)
    out = []
    for group in by_class.values():
        if 0 < max_images < len(group):
            keep = np.unique(np.round(np.linspace(0, len(group) - 1, max_images)).astype(int))
            group = [group[i] for i in keep]
        out += group
    return out


def heatmap_picks(labels: Sequence[int], count: int) -> list[int]:
    """Indices (within a class) of `count` images to draw: anomalous ones, evenly spaced, and one
    normal image when the class has both."""
    anomalous = [i for i, label in enumerate(labels) if label == 1]
    normal = [i for i, label in enumerate(labels) if label == 0]
    if count <= 0:
        return []
    num_anomalous = min(len(anomalous), count - (1 if normal and count > 1 else 0))
    num_normal = min(len(normal), count - num_anomalous)

    def spaced(items, k):
        if k <= 0:
            return []
        return [items[int(i)] for i in np.unique(np.round(np.linspace(0, len(items) - 1, k)))]

    return sorted(spaced(anomalous, num_anomalous) + spaced(normal, num_normal))


def _safe_name(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z._-]+", "_", text).strip("_") or "x"


class ClassAccumulator:
    """Maps, masks, scores and labels of one class, filled batch by batch."""

    def __init__(self, name: str):
        self.name = name
        self.records, self.maps, self.masks, self.scores = [], [], [], []

    def add(self, record, anomaly_map: np.ndarray, mask: np.ndarray, score: float) -> None:
        self.records.append(record)
        self.maps.append(np.asarray(anomaly_map, np.float32))
        self.masks.append(np.asarray(mask, bool))
        self.scores.append(float(score))

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def metrics(self) -> dict:
        labels = np.array([r.label for r in self.records], np.int32)
        pixel = data.has_pixel_labels(self.records)
        return metrics.evaluate(np.asarray(self.scores), labels,
                                self.maps if pixel else None, self.masks if pixel else None)

    def write_heatmaps(self, out_dir: pathlib.Path, count: int) -> list[pathlib.Path]:
        """`count` panels under out_dir/<class>/ on one colour scale (the class's min..max)."""
        picks = heatmap_picks([r.label for r in self.records], count)
        if not picks:
            return []
        vmin = float(min(m.min() for m in self.maps))
        vmax = float(max(m.max() for m in self.maps))
        folder = out_dir / _safe_name(self.name)
        written = []
        for i in picks:
            record = self.records[i]
            image = data.load_image(record.image_path)
            picture = heatmaps.panel(image, self.masks[i], self.maps[i], vmin, vmax)
            path = folder / (f"{i:03d}_{_safe_name(record.defect)}_"
                             f"{_safe_name(pathlib.Path(record.image_path).stem)}.png")
            heatmaps.save_png(path, picture)
            written.append(path)
        (folder / "scale.txt").write_text(f"colour scale (jet) for class {self.name}: "
                                          f"{vmin:.6g} (blue) .. {vmax:.6g} (dark red)\n")
        return written


def _native_mask(record, shape) -> np.ndarray:
    if not record.mask_path:
        return np.zeros(shape, bool)
    mask = data.load_mask(record.mask_path, record.dataset)
    if mask.shape != tuple(shape):
        raise ValueError(f"[{record.dataset}] mask {record.mask_path} has size {mask.shape} but "
                         f"its image {record.image_path} has {tuple(shape)}")
    return mask


def evaluate_records(method, params, records: Sequence, config, out_dir, dataset_name: str,
                     mesh=None, *, progress: bool = True, provenance: dict | None = None,
                     paper: dict | None = None, paper_label: str = "") -> dict:
    """Evaluates `method` with `params` on `records`; writes and returns the metrics.json content.

    Writes into out_dir: metrics.json, metrics.csv, table.md, report.html (+ report_files/),
    heatmaps/<class>/*.png (config.eval.num_heatmaps per class). Reads config.eval.{smoothing_sigma,
    resolution, num_heatmaps, max_images} and config.data.eval_batch_size (rounded up to a multiple
    of the device count). `mesh`: a Mesh with axis "data" (default: all devices). `provenance`:
    what produced the parameters (checkpoint step, config sha256, ...), recorded in every file;
    `paper`: {metric: percent} of the paper's table for this dataset, shown in the report.
    """
    ev = config.eval
    sigma = float(ev.smoothing_sigma)
    records = group_by_class(records, int(ev.max_images))
    if not records:
        raise ValueError(f"no records to evaluate for dataset {dataset_name!r}")
    out_dir = pathlib.Path(out_dir)
    mesh = mesh if mesh is not None else devices.make_mesh()
    batch_size = devices.global_batch_size(config.data.eval_batch_size, mesh)
    infer = inference.inference_fn(method, sigma, mesh)
    params = devices.replicate(params, mesh)
    is_main = jax.process_index() == 0
    assets = report.assets_dir(out_dir)

    last_position = {r.class_name: i for i, r in enumerate(records)}
    open_classes: dict[str, ClassAccumulator] = {}
    per_class: dict[str, dict] = {}
    class_sizes: dict[str, dict] = {}
    sections = []
    num_batches = -(-len(records) // batch_size)
    batches = data.eval_batches(records, method.views, method.mask_size, batch_size,
                                jax.process_index(), jax.process_count())
    bar = None
    if progress and is_main and sys.stderr.isatty():       # in a log file: one line per class
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc=f"eval {dataset_name}", unit="img", dynamic_ncols=True)
    for k, host_batch in enumerate(batches):
        device_batch = devices.to_device(method, host_batch, mesh)
        maps, scores = infer(params, device_batch)
        maps, scores = devices.to_host(maps), devices.to_host(scores)
        masks = devices.to_host(device_batch["masks"]) > 0.5 if ev.resolution == "input" else None
        for row in range(batch_size):
            position = k * batch_size + row
            if position >= len(records):
                break
            record = records[position]
            anomaly_map, mask = maps[row], None
            if ev.resolution == "input":
                mask = masks[row]
            else:
                height, width = data.images.image_size(record.image_path)
                anomaly_map = resize_map(anomaly_map, height, width)
                mask = _native_mask(record, (height, width))
            if record.class_name not in open_classes:
                open_classes[record.class_name] = ClassAccumulator(record.class_name)
            open_classes[record.class_name].add(record, anomaly_map, mask, scores[row])
        done = min((k + 1) * batch_size, len(records))
        for name in [c for c in open_classes if last_position[c] < done]:
            acc = open_classes.pop(name)
            per_class[name] = acc.metrics()
            class_sizes[name] = {"images": len(acc.records), "anomalous": sum(acc.labels)}
            if is_main and ev.num_heatmaps > 0:
                acc.write_heatmaps(out_dir / "heatmaps", int(ev.num_heatmaps))
            if is_main and progress and bar is None:
                log.info("eval %s: class %s scored (%d/%d images)", dataset_name, name, done,
                         len(records))
            if is_main:
                sections.append(report.class_section(
                    name, acc.records, np.asarray(acc.scores), acc.labels, acc.maps, acc.masks,
                    assets, pixel=data.has_pixel_labels(acc.records)))
        if bar is not None:
            bar.update(done - bar.n)
    if bar is not None:
        bar.close()
    if open_classes or len(per_class) != len(last_position):
        raise RuntimeError(f"evaluation of {dataset_name!r} ended after {num_batches} batches "
                           f"with classes unscored: {sorted(set(last_position) - set(per_class))}")
    result = {
        "dataset": dataset_name,
        **(provenance or {}),
        "resolution": ev.resolution,
        "map_size": int(method.mask_size),
        "smoothing_sigma": sigma,
        "num_images": len(records),
        "classes": per_class,
        "mean": metrics.mean_over_classes(per_class),
        "mean_num_classes": metrics.defined_class_counts(per_class),
        "class_sizes": class_sizes,
    }
    if is_main:
        tables.write_results(out_dir, result)
        report.write_report(out_dir, result, sections, _report_provenance(provenance, config),
                            paper=paper, paper_label=paper_label, assets=assets)
    return result


def _report_provenance(provenance: dict | None, config) -> dict:
    return {**(provenance or {}), "method": config.method, "config": config_to_dict(config),
            "software": report.software_versions()}
