"""metrics.json / metrics.csv / table.md writers (undefined metrics: null / "n/a")."""

from __future__ import annotations

import csv
import json
import pathlib
from collections.abc import Mapping

from zsad_jax.metrics import METRIC_NAMES

TITLES = {"image_auroc": "Image AUROC", "image_ap": "Image AP", "image_f1_max": "Image F1-max",
          "pixel_auroc": "Pixel AUROC", "pixel_ap": "Pixel AP", "pixel_f1_max": "Pixel F1-max",
          "pixel_aupro": "Pixel AUPRO"}
NOT_AVAILABLE = "n/a"


def percent(value: float | None) -> str:
    """0.91234 -> "91.2"; None -> "n/a" (papers report metrics in % with one decimal)."""
    return NOT_AVAILABLE if value is None else f"{100.0 * value:.1f}"


def resolution_text(result: Mapping) -> str:
    if result["resolution"] == "input":
        size = result.get("map_size")
        return f"input ({size}x{size})" if size else "input"
    return "native (each image's original size)"


def markdown_table(result: Mapping) -> str:
    """The paper-style table of a metrics.json dict: one row per class, then the mean (in %)."""
    lines = [f"### {result['dataset']}", "",
             f"{result['num_images']} images; evaluation resolution: {resolution_text(result)}; "
             f"Gaussian smoothing sigma: {result['smoothing_sigma']:g}; metrics in %, n/a = not "
             "defined for that class (e.g. no anomalous pixels); the mean is over the classes "
             "where a metric is defined.", "",
             "| Class | " + " | ".join(TITLES[m] for m in METRIC_NAMES) + " |",
             "|---|" + "---:|" * len(METRIC_NAMES)]
    for name, values in result["classes"].items():
        lines.append(f"| {name} | " + " | ".join(percent(values[m]) for m in METRIC_NAMES) + " |")
    lines.append("| **Mean** | " + " | ".join(f"**{percent(result['mean'][m])}**"
                                               for m in METRIC_NAMES) + " |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | pathlib.Path, result: Mapping) -> None:
    """Writes metrics.json, metrics.csv (raw values, "n/a") and table.md into `out_dir`."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(out_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", *METRIC_NAMES])
        rows = [*result["classes"].items(), ("mean", result["mean"])]
        for name, values in rows:
            writer.writerow([name] + [NOT_AVAILABLE if values[m] is None else repr(values[m])
                                      for m in METRIC_NAMES])
    (out_dir / "table.md").write_text(markdown_table(result))
