"""A self-contained HTML report of one evaluation (and an index page over an experiment's runs).

Call sequence (the evaluation loop scores a class, then drops its maps; a section is built at
that moment and holds only small JSON-able data, the page is written at the end):

    from zsad_jax.evaluation import report
    assets = report.assets_dir(out_dir)                      # out_dir / "report_files"
    sections = []
    for each class, right after it is scored (main process only):
        sections.append(report.class_section(
            name, records, scores, labels, maps, masks, assets, max_gallery=3))
        # records: the class's data.Records; scores (N,), labels (N,) 0/1; maps: (N, H, W) or a
        # list of (H_i, W_i) float32; masks: the same shapes, bool. Computes the exact curves,
        # writes the class's curves PNG and gallery JPEGs under assets/<class>/.
    ... build `result` (the metrics.json dict), tables.write_results(out_dir, result) ...
    report.write_report(out_dir, result, sections, provenance,
                        paper={"image_auroc": 91.5, ...}, paper_label="Table 1, MVTec AD")
    # -> out_dir / "report.html"; provenance: {"method", "config" (dict), "checkpoint_step",
    #    "weights", "dataset_roots", "software": report.software_versions(), "date", ...}

    report.write_experiment_report(root / "index.html",
        [report.ExperimentEntry(run, dataset, result["mean"], run_dir / "eval" / dataset /
                                "report.html", paper, paper_label), ...])

The page (report.html) holds: the per-class metrics table in % with the mean row (and the paper's
numbers and the difference when given), provenance (config collapsed), and one section per class:
ROC / precision-recall curves (image and pixel) and the PRO curve to FPR 0.3, drawn from the exact
curves of `zsad_jax.metrics.curves` (decimated for plotting; the legends' areas are the metrics),
and a heatmap gallery: the highest-scoring normal images (false alarms), the lowest-scoring
anomalous ones (misses) and the median-score anomalous and normal images, each as a
`heatmaps.panel` thumbnail (image, ground-truth contour, map with colour bar, score, file name).

Pictures are files in report_files/ referenced by relative paths (not inline base64, which would
grow the HTML by a third and make the browser decode everything before showing the table;
`loading="lazy"` keeps long galleries cheap): curves as palette PNGs (~10 KB a class), gallery
panels as JPEGs (160-px sub-panels, quality 80: ~10-25 KB each). The size depends on the number
of classes and `max_gallery`, not on the number of images. No external resource (CDN, fonts,
scripts): the page opens offline. Matplotlib is imported inside the plotting function only
(object API + Agg canvas, no pyplot).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import html
import json
import os
import pathlib
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from zsad_jax.evaluation import heatmaps
from zsad_jax.evaluation.tables import NOT_AVAILABLE, TITLES, percent, resolution_text
from zsad_jax.metrics import METRIC_NAMES, curves, pro, ranking

ASSETS_DIR = "report_files"
REPORT_FILE = "report.html"
THUMBNAIL_SIZE = 160          # px, the long side of each sub-panel of a gallery picture
MAX_CURVE_POINTS = 1200       # vertices per plotted curve (M4 decimation: ~300 px columns)
JPEG_QUALITY = 80
PLOT_COLOURS = {"image": "#1f77b4", "pixel": "#ff7f0e", "pro": "#2ca02c"}
GALLERY_GROUPS = {"false_alarm": "Highest-scoring normal images (possible false alarms)",
                  "miss": "Lowest-scoring anomalous images (possible misses)",
                  "typical": "Typical images (median score)"}
SOFTWARE = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "pillow", "matplotlib",
            "zsad_jax")


# ---------------------------------------------------------------------------------------------
# Sections: built per class while its maps are held
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Picture:
    """A file under the assets folder: `path` relative to it, its size in px."""

    path: str
    width: int
    height: int


@dataclasses.dataclass
class GalleryItem:
    """One gallery thumbnail. group: a key of GALLERY_GROUPS; rank: 1 = highest score of the
    class."""

    group: str
    picture: Picture
    image_path: str
    label: int
    defect: str
    score: float
    rank: int


@dataclasses.dataclass
class ClassSection:
    """What the page shows of one class (small and JSON-able: `to_dict` / `from_dict`).

    areas: the curves' areas in [0, 1] (None where undefined), which equal the class's metrics;
    scale: the gallery's colour scale (vmin, vmax); notes: what could not be drawn, and why.
    """

    name: str
    num_images: int
    num_anomalous: int
    curves: Picture | None
    areas: dict[str, float | None]
    scale: tuple[float, float] | None
    gallery: list[GalleryItem]
    notes: list[str]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> ClassSection:
        d = dict(d)
        d["curves"] = Picture(**d["curves"]) if d.get("curves") else None
        d["scale"] = tuple(d["scale"]) if d.get("scale") else None
        d["gallery"] = [GalleryItem(**{**g, "picture": Picture(**g["picture"])})
                        for g in d.get("gallery", [])]
        return cls(**d)


def assets_dir(out_dir: str | pathlib.Path) -> pathlib.Path:
    """The folder for a report's pictures: out_dir / "report_files" (next to report.html)."""
    return pathlib.Path(out_dir) / ASSETS_DIR


def slug(name: str) -> str:
    """A file/anchor-safe version of `name`, distinct for distinct names."""
    safe = re.sub(r"[^0-9A-Za-z._-]+", "_", name).strip("_.") or "x"
    if safe != name:
        safe += "-" + hashlib.sha1(name.encode()).hexdigest()[:6]
    return safe


def gallery_picks(scores: np.ndarray, labels: np.ndarray, count: int) -> list[tuple[str, int]]:
    """(group, index) of the images to show: the `count` highest-scoring normal images, the
    `count` lowest-scoring anomalous ones, then the median-score anomalous and normal images;
    each image once. scores (N,) float, labels (N,) 0/1."""
    if count <= 0:
        return []
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")   # highest score first
    normal = [int(i) for i in order if labels[i] == 0]
    anomalous = [int(i) for i in order[::-1] if labels[i] == 1]           # lowest score first
    picks: list[tuple[str, int]] = []
    seen: set[int] = set()
    median = [group[(len(group) - 1) // 2] for group in (anomalous, normal) if group]
    for group, indices in (("false_alarm", normal[:count]), ("miss", anomalous[:count]),
                           ("typical", median)):
        for i in indices:
            if i not in seen:
                seen.add(i)
                picks.append((group, i))
    return picks


def class_section(name: str, records: Sequence, scores, labels, maps, masks,
                  assets: str | pathlib.Path, *, max_gallery: int = 3, pixel: bool | None = None,
                  fpr_limit: float = 0.3, thumbnail_size: int = THUMBNAIL_SIZE) -> ClassSection:
    """The report section of one class; writes its pictures under assets/<class slug>/.

    records: the class's N data.Records (image_path, label, defect, ...); scores: (N,) image
    scores; labels: (N,) 0/1; maps: (N, H, W) float or a sequence of N (H_i, W_i) maps (None:
    no pixel curves, no gallery); masks: the same shapes, bool (None: no ground truth).
    pixel: draw pixel curves (default: `data.has_pixel_labels(records)`, as the metrics).
    max_gallery: false alarms and misses shown (each), plus up to two typical images.
    """
    from zsad_jax import data

    scores = ranking.check_scores(np.asarray(scores, np.float64), what="image scores")
    labels = ranking.check_labels(labels, what="image labels").astype(np.int32)
    if not len(records) == scores.shape[0] == labels.shape[0]:
        raise ValueError(f"class {name!r}: {len(records)} records, {scores.shape[0]} scores and "
                         f"{labels.shape[0]} labels; they must match.")
    if maps is not None and len(maps) != len(records):
        raise ValueError(f"class {name!r}: {len(maps)} maps for {len(records)} records.")
    folder = pathlib.Path(assets) / slug(name)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("*.jpg"), *folder.glob("curves.png")]:   # from an earlier run
        stale.unlink()
    notes: list[str] = []
    counts = ranking.threshold_counts(scores, labels)
    areas: dict[str, float | None] = {}
    image_curves = thin_curves("image", [("roc", curves.roc_from_counts(counts)),
                                         ("pr", curves.pr_from_counts(counts))], areas, fpr_limit)
    if not counts.defined:
        notes.append("image curves undefined: the class has "
                     + ("only anomalous" if counts.num_neg == 0 else "only normal") + " images")
    pixel = data.has_pixel_labels(records) if pixel is None else pixel
    if pixel and maps is not None and masks is not None:
        pixel_curves = thin_curves("pixel", curves.iter_pixel_curves(maps, masks, fpr_limit),
                                   areas, fpr_limit)
        if pixel_curves["roc"] is None:
            notes.append("pixel curves undefined: no anomalous (or no normal) pixels")
    else:
        pixel_curves = thin_curves("pixel", [(k, None) for k in ("roc", "pr", "pro")], areas,
                                   fpr_limit)
        notes.append("pixel curves not drawn: no pixel ground truth for every anomalous image")
    plot = plot_curves(folder / "curves.png", image_curves, pixel_curves, areas, fpr_limit)
    curves_picture = None if plot is None else Picture(f"{folder.name}/curves.png", *plot)

    gallery, scale = [], None
    picks = gallery_picks(scores, labels, max_gallery) if maps is not None else []
    if picks:
        scale = (float(min(np.min(m) for m in maps)), float(max(np.max(m) for m in maps)))
    ranks = np.empty((scores.shape[0],), np.int64)
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, scores.shape[0] + 1)
    for k, (group, i) in enumerate(picks):
        record = records[i]
        try:
            image = data.load_image(record.image_path)
        except (OSError, ValueError) as e:
            notes.append(f"could not read {record.image_path}: {e}")
            continue
        file_name = pathlib.Path(record.image_path).name
        picture = heatmaps.panel(image, None if masks is None else masks[i], maps[i], *scale,
                                 score=float(scores[i]), title=file_name, size=thumbnail_size)
        path = folder / f"{k:02d}_{group}_{slug(pathlib.Path(record.image_path).stem)}.jpg"
        Image.fromarray(picture).save(path, quality=JPEG_QUALITY, optimize=True)
        gallery.append(GalleryItem(group, Picture(f"{folder.name}/{path.name}", picture.shape[1],
                                                  picture.shape[0]),
                                   str(record.image_path), int(labels[i]), str(record.defect),
                                   float(scores[i]), int(ranks[i])))
    return ClassSection(name, int(scores.shape[0]), int(labels.sum()), curves_picture, areas,
                        scale, gallery, notes)


AREA_NAMES = {"roc": "auroc", "pr": "ap", "pro": "aupro"}


def thin_curves(level: str, found: Iterable[tuple[str, curves.Curve | None]],
                areas: dict[str, float | None], fpr_limit: float) -> dict[str, curves.Curve | None]:
    """Each exact curve ("roc", "pr", "pro") -> its area, written to areas[f"{level}_{metric}"]
    (= that metric: trapezoid for ROC, step sum for PR, normalized area for PRO; None where the
    curve is None), and the curve decimated to MAX_CURVE_POINTS for plotting. Curves are taken
    one at a time from `found` (e.g. `curves.iter_pixel_curves`), so one full curve is held."""
    thinned = {}
    for kind, curve in found:
        area = None
        if curve is not None:
            x, y = curve
            area = (float(np.trapezoid(y, x)) if kind == "roc"
                    else float(np.dot(np.diff(x), y[1:])) if kind == "pr"
                    else pro.normalized_area(x, y, fpr_limit))
            curve = curves.decimate(x, y, MAX_CURVE_POINTS)
            del x, y
        areas[f"{level}_{AREA_NAMES[kind]}"] = area
        thinned[kind] = curve
    return thinned


def plot_curves(path: pathlib.Path, image_curves: Mapping, pixel_curves: Mapping,
                areas: Mapping, fpr_limit: float) -> tuple[int, int] | None:
    """ROC | precision-recall | PRO to fpr_limit, one PNG (palette, small); returns its (width,
    height) in px, or None (nothing written) when every curve is undefined.

    image_curves: {"roc", "pr"}, pixel_curves: {"roc", "pr", "pro"}: (x, y) arrays (decimated:
    `thin_curves`) or None; areas: {level_metric: value}, printed in the legends.
    """
    if all(c is None for c in (*image_curves.values(), *pixel_curves.values())):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.4, 2.8), dpi=90, layout="constrained")
    FigureCanvasAgg(figure)
    roc_ax, pr_ax, pro_ax = figure.subplots(1, 3)

    def draw(ax, curve, level, label, **kw):
        if curve is not None:
            ax.plot(*curve, color=PLOT_COLOURS[level], lw=1.6, label=label, **kw)

    for level, found in (("image", image_curves), ("pixel", pixel_curves)):
        draw(roc_ax, found["roc"], level, f"{level} (AUROC {percent(areas[f'{level}_auroc'])})")
        draw(pr_ax, found["pr"], level, f"{level} (AP {percent(areas[f'{level}_ap'])})",
             drawstyle="steps-pre")
    draw(pro_ax, pixel_curves["pro"], "pro", f"AUPRO {percent(areas['pixel_aupro'])}")
    roc_ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--")
    settings = ((roc_ax, "ROC", "false positive rate", "true positive rate", 1.0),
                (pr_ax, "Precision-recall", "recall", "precision", 1.0),
                (pro_ax, f"PRO (FPR \u2264 {fpr_limit:g})", "false positive rate",
                 "per-region overlap", fpr_limit))
    for ax, title, x_label, y_label, x_max in settings:
        ax.set(title=title, xlabel=x_label, ylabel=y_label, xlim=(0, x_max), ylim=(0, 1.02))
        ax.title.set_fontsize(10)
        ax.xaxis.label.set_fontsize(8)
        ax.yaxis.label.set_fontsize(8)
        ax.tick_params(labelsize=7)
        ax.grid(True, color="#e5e5e5", lw=0.6)
        if ax.get_lines() and any(not line.get_label().startswith("_")
                                  for line in ax.get_lines()):
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
    figure.canvas.draw()
    rgb = np.asarray(figure.canvas.buffer_rgba())[..., :3]
    Image.fromarray(rgb).quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(
        path, optimize=True)
    return rgb.shape[1], rgb.shape[0]


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
  margin:0 auto;max-width:1400px;padding:16px 24px;color:#1b1b1b;background:#fff}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.25em;margin:1.4em 0 .3em;
  border-bottom:2px solid #d8dee4;padding-bottom:.2em}h3{font-size:1em;margin:.8em 0 .3em}
.sub{color:#555;margin:.2em 0 1em}
table.m{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:.5em 0}
table.m th,table.m td{border:1px solid #d0d7de;padding:3px 9px;text-align:right}
table.m th{background:#f0f3f6}table.m td:first-child,table.m th:first-child{text-align:left}
table.m tr.mean td{font-weight:bold;background:#f6f8fa}
table.m tr.paper td{background:#fbf7e9}table.m td.na{color:#999}
.up{color:#116329}.down{color:#a40e26}small{color:#555}
nav a{margin-right:.8em}
table.kv{border-collapse:collapse}table.kv td{padding:2px 8px;vertical-align:top;
  border-bottom:1px solid #eee}table.kv td:first-child{color:#555;white-space:nowrap}
pre{background:#f6f8fa;padding:8px;overflow:auto;max-height:480px;font-size:12px}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;border:1px solid #d0d7de;padding:4px;background:#fff;max-width:100%}
figure img{display:block;max-width:100%;height:auto}
figcaption{font-size:12px;color:#333;padding-top:3px;overflow-wrap:anywhere}
.note{color:#8a5300;font-size:.9em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: float | None) -> str:
    text = percent(value)
    return f'<td class="na">{text}</td>' if text == NOT_AVAILABLE else f"<td>{text}</td>"


def _paper_text(value: float | None) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def _difference(ours: float | None, paper_value: float | None) -> str:
    """ours (a fraction) - the paper's number (a percent), in points, coloured; "" if either
    is missing."""
    if ours is None or paper_value is None:
        return ""
    delta = 100.0 * ours - float(paper_value)
    css = "up" if delta > 0.05 else "down" if delta < -0.05 else ""
    return f'<span class="{css}">{delta:+.1f}</span>'


def _header_row(leading: Sequence[str], trailing: Sequence[str] = ()) -> str:
    names = [*leading, *(TITLES[m] for m in METRIC_NAMES), *trailing]
    return "<tr>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"


def metrics_table(result: Mapping, paper: Mapping | None = None, paper_label: str = "",
                  anchors: Mapping[str, str] | None = None) -> str:
    """The per-class table (%), the mean row, and with `paper` ({metric: percent or None}) the
    paper's row and the difference (ours - paper, in points)."""
    anchors = anchors or {}
    rows = [_header_row(["Class"])]
    for name, values in result["classes"].items():
        label = (f'<a href="#{_e(anchors[name])}">{_e(name)}</a>' if name in anchors
                 else _e(name))
        rows.append(f"<tr><td>{label}</td>" + "".join(_cell(values.get(m)) for m in METRIC_NAMES)
                    + "</tr>")
    mean = result["mean"]
    rows.append('<tr class="mean"><td>Mean</td>'
                + "".join(_cell(mean.get(m)) for m in METRIC_NAMES) + "</tr>")
    if paper is not None:
        rows.append(f'<tr class="paper"><td>Paper{": " + _e(paper_label) if paper_label else ""}'
                    "</td>" + "".join(f"<td>{_paper_text(paper.get(m))}</td>"
                                      for m in METRIC_NAMES) + "</tr>")
        rows.append('<tr class="paper"><td>Ours &minus; paper (points)</td>'
                    + "".join(f"<td>{_difference(mean.get(m), paper.get(m))}</td>"
                              for m in METRIC_NAMES) + "</tr>")
    return '<table class="m">' + "".join(rows) + "</table>"


def _value_html(value: Any, summary: str) -> str:
    """A provenance value: text, a small key-value table, or a collapsed JSON block."""
    if isinstance(value, Mapping) and value and len(value) <= 16 and all(
            not isinstance(v, Mapping | list | tuple) for v in value.values()):
        return '<table class="kv">' + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>"
                                              for k, v in value.items()) + "</table>"
    if isinstance(value, Mapping | list | tuple):
        text = json.dumps(value, indent=2, sort_keys=False, default=str)
        return f"<details><summary>{_e(summary)}</summary><pre>{_e(text)}</pre></details>"
    return _e(value)


def provenance_html(provenance: Mapping) -> str:
    """Every entry of `provenance`, in its order: text, small dicts as tables, nested values (and
    a "config" given as text) collapsed in <details>."""
    rows = []
    for key, value in provenance.items():
        if callable(getattr(value, "to_dict", None)):          # e.g. an ml_collections config
            value = value.to_dict()
        summary = f"{key} ({len(value)} entries)" if hasattr(value, "__len__") else str(key)
        if key == "config" and isinstance(value, str):
            value_html = f"<details><summary>config</summary><pre>{_e(value)}</pre></details>"
        else:
            value_html = _value_html(value, summary)
        rows.append(f"<tr><td>{_e(key)}</td><td>{value_html}</td></tr>")
    return '<table class="kv">' + "".join(rows) + "</table>"


def _img(src: str, picture: Picture, alt: str) -> str:
    return (f'<img src="{_e(src)}" width="{picture.width}" height="{picture.height}" '
            f'alt="{_e(alt)}" loading="lazy">')


def section_html(section: ClassSection, values: Mapping | None, assets_href: str,
                 anchor: str) -> str:
    """One class: a line of its metrics, the curves picture, the gallery by group, notes."""
    parts = [f'<section id="{_e(anchor)}"><h2>{_e(section.name)}</h2>',
             f'<p class="sub">{section.num_images} images, {section.num_anomalous} anomalous'
             + ("" if values is None else " &middot; " + " &middot; ".join(
                 f"{_e(TITLES[m])} {percent(values.get(m))}" for m in METRIC_NAMES))
             + "</p>"]
    if section.curves is not None:
        parts.append(_img(f"{assets_href}/{section.curves.path}", section.curves,
                          f"ROC, precision-recall and PRO curves of {section.name}"))
    for group, heading in GALLERY_GROUPS.items():
        items = [g for g in section.gallery if g.group == group]
        if not items:
            continue
        parts.append(f"<h3>{_e(heading)}</h3><div class=\"gallery\">")
        for g in items:
            kind = "normal" if g.label == 0 else f"anomalous ({g.defect})"
            parts.append(
                f'<figure style="width:{g.picture.width}px">'
                + _img(f"{assets_href}/{g.picture.path}", g.picture,
                       pathlib.Path(g.image_path).name)
                + f"<figcaption><b>{_e(pathlib.Path(g.image_path).name)}</b> &middot; {_e(kind)}"
                f" &middot; score {g.score:.4g} (rank {g.rank} of {section.num_images})"
                f"<br><small>{_e(g.image_path)}</small></figcaption></figure>")
        parts.append("</div>")
    if section.scale is not None:
        parts.append(f'<p class="sub">Colour scale of this class\'s maps: {section.scale[0]:.4g}'
                     f" (dark blue) .. {section.scale[1]:.4g} (dark red).</p>")
    parts += [f'<p class="note">{_e(n)}</p>' for n in section.notes]
    return "".join(parts) + "</section>"


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>\n{body}\n"
            "</body></html>\n")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_report(out_dir: str | pathlib.Path, result: Mapping,
                 sections: Iterable[ClassSection | Mapping], provenance: Mapping,
                 paper: Mapping[str, float | None] | None = None, paper_label: str = "", *,
                 assets: str | pathlib.Path | None = None) -> pathlib.Path:
    """Writes out_dir/report.html; returns its path.

    result: the metrics.json dict (`evaluate_records`): "dataset", "classes", "mean", and when
    present "num_images", "resolution", "map_size", "smoothing_sigma", "mean_num_classes".
    sections: `class_section` outputs (or their `to_dict()`), shown in the order of
    result["classes"] (sections of other classes after them). provenance: {name: value}, shown as
    given (dicts as tables or collapsed JSON). paper: {metric: percent or None}, shown beside the
    mean with the difference; paper_label names the paper's table. assets: where the sections'
    pictures were written (default `assets_dir(out_dir)`).
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    assets = assets_dir(out_dir) if assets is None else pathlib.Path(assets)
    assets_href = pathlib.PurePath(os.path.relpath(assets, out_dir)).as_posix()
    by_name = {}
    for s in sections:
        s = s if isinstance(s, ClassSection) else ClassSection.from_dict(s)
        by_name[s.name] = s
    names = [n for n in result["classes"] if n in by_name] + [
        n for n in by_name if n not in result["classes"]]
    anchors = {n: "class-" + slug(n) for n in names}
    dataset = str(result.get("dataset", ""))
    method = provenance.get("method")
    facts = [f"{result['num_images']} images" if "num_images" in result else "",
             f"{len(result['classes'])} classes",
             f"resolution {resolution_text(result)}" if "resolution" in result else "",
             f"smoothing sigma {result['smoothing_sigma']:g}" if "smoothing_sigma" in result
             else "", f"report written {_now()}"]
    body = [f"<h1>{_e(dataset)}{' &middot; ' + _e(method) if method else ''}</h1>",
            f'<p class="sub">{" &middot; ".join(_e(f) for f in facts if f)}</p>']
    if names:
        body.append("<nav>Classes: " + "".join(f'<a href="#{_e(anchors[n])}">{_e(n)}</a>'
                                               for n in names) + "</nav>")
    body += ["<h2>Metrics (%)</h2>", metrics_table(result, paper, paper_label, anchors),
             '<p class="sub">n/a: not defined for that class (e.g. no anomalous pixels); the mean '
             "is over the classes where a metric is defined"
             + _mean_counts(result) + ". Curves and areas are exact (one point per distinct "
             "score); AUPRO is the normalized area to FPR 0.3.</p>"]
    if provenance:
        body += ["<h2>Provenance</h2>", provenance_html(provenance)]
    for n in names:
        body.append(section_html(by_name[n], result["classes"].get(n), assets_href, anchors[n]))
    path = out_dir / REPORT_FILE
    path.write_text(_page(f"{dataset} evaluation report", "\n".join(body)), encoding="utf-8")
    return path


def _mean_counts(result: Mapping) -> str:
    counts = result.get("mean_num_classes") or {}
    total = len(result["classes"])
    partial = [f"{TITLES[m]} over {counts[m]}" for m in METRIC_NAMES
               if m in counts and counts[m] != total]
    return f" ({', '.join(partial)} of {total} classes)" if partial else ""


# ---------------------------------------------------------------------------------------------
# Experiment index
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ExperimentEntry:
    """One (run, dataset) row of an experiment's index: the mean metrics (metrics.json "mean",
    fractions), its report.html (None: no link), and optionally the paper's numbers (percent)."""

    run: str
    dataset: str
    mean: Mapping[str, float | None]
    report: str | pathlib.Path | None = None
    paper: Mapping[str, float | None] | None = None
    paper_label: str = ""


def write_experiment_report(out_path: str | pathlib.Path,
                            entries: Iterable[ExperimentEntry | Mapping],
                            title: str = "Experiment results") -> pathlib.Path:
    """One page with one table of means per (run, dataset), each linked (relative link) to its
    report.html, the paper's number and the difference under our value where given."""
    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rows = [_header_row(["Run", "Dataset"], ["Report"])]
    for entry in entries:
        entry = entry if isinstance(entry, ExperimentEntry) else ExperimentEntry(**entry)
        cells = []
        for m in METRIC_NAMES:
            value = entry.mean.get(m)
            text = f'<span class="na">{NOT_AVAILABLE}</span>' if value is None else percent(value)
            if entry.paper is not None and entry.paper.get(m) is not None:
                text += (f"<br><small>paper {_paper_text(entry.paper[m])} "
                         f"{_difference(value, entry.paper[m])}</small>")
            cells.append(f"<td>{text}</td>")
        link = ""
        if entry.report is not None:
            href = pathlib.PurePath(os.path.relpath(entry.report, out_path.parent)).as_posix()
            link = f'<a href="{_e(href)}">report</a>'
        dataset = _e(entry.dataset) + (f"<br><small>vs. {_e(entry.paper_label)}</small>"
                                       if entry.paper is not None and entry.paper_label else "")
        rows.append(f"<tr><td>{_e(entry.run)}</td><td>{dataset}</td>{''.join(cells)}"
                    f"<td>{link}</td></tr>")
    body = (f"<h1>{_e(title)}</h1><p class=\"sub\">Mean over classes, in %; under a value: the "
            "paper's number and the difference (ours &minus; paper, in points). Written "
            f"{_now()}.</p>" + '<table class="m">' + "".join(rows) + "</table>")
    out_path.write_text(_page(title, body), encoding="utf-8")
    return out_path


def software_versions() -> dict[str, str]:
    """{"python": ..., package: version} of the packages in SOFTWARE that are installed (for the
    provenance)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in SOFTWARE:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
