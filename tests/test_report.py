"""The HTML evaluation report: its files and tables, exact curves, size, and a real browser render.

The browser test needs Chromium at /usr/bin/chromium (`apt-get install -y chromium`); without it
the test fails (it is never skipped).
"""

import html.parser
import json
import pathlib
import shutil
import subprocess
import time
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from zsad_jax import data, metrics
from zsad_jax.evaluation import heatmaps, report

CHROMIUM = "/usr/bin/chromium"
INSTALL_HINT = "install it with: apt-get update && apt-get install -y chromium"
PAPER = {"image_auroc": 91.5, "image_ap": None, "image_f1_max": 88.0, "pixel_auroc": 95.0,
         "pixel_ap": 40.2, "pixel_f1_max": None, "pixel_aupro": 85.5}

# (class name, number of normal images, number of anomalous images, masks for anomalous ones)
CLASSES = (("grass", 4, 4, True), ("metal nut", 3, 3, True), ("only bad", 0, 3, True),
           ("no masks", 3, 2, False))


def make_class(root: pathlib.Path, name: str, num_normal: int, num_anomalous: int,
               with_masks: bool, rng, map_size=32, image_size=(48, 40)):
    """Records (tiny PNGs written under root), scores, labels, (N, 32, 32) maps and masks."""
    records, maps, masks, scores = [], [], [], []
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_normal + num_anomalous):
        label = int(i >= num_normal)
        image = np.zeros((*image_size, 3), np.uint8)
        image[..., 1] = 160 + rng.integers(0, 60, image_size)               # grass-like green
        image[..., 0] = rng.integers(0, 50, image_size)
        path = folder / f"{i:03d}_{'good' if not label else 'cut'}.png"
        Image.fromarray(image).save(path)
        mask = np.zeros((map_size, map_size), bool)
        anomaly_map = rng.random((map_size, map_size)).astype(np.float32) * 0.5
        mask_path = None
        if label:
            r, c = rng.integers(2, map_size - 12, 2)
            mask[r:r + 8, c:c + 10] = True
            anomaly_map[mask] += 0.4 * rng.random() + 0.1
            if with_masks:
                mask_path = str(folder / f"{i:03d}_mask.png")
                Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
            else:
                mask[:] = False
        records.append(data.Record(str(path), mask_path, label, name,
                                   "cut" if label else "good", "synthetic"))
        maps.append(anomaly_map)
        masks.append(mask)
        scores.append(float(anomaly_map.max()) + 0.2 * rng.random())
    labels = np.array([r.label for r in records], np.int32)
    return records, np.array(scores), labels, np.stack(maps), np.stack(masks)


def build_evaluation(out_dir: pathlib.Path, classes=CLASSES, seed=0, max_gallery=2, **kwargs):
    """What the evaluation loop does: score each class, build its section, write the page.
    Returns (report path, metrics.json dict, sections)."""
    rng = np.random.default_rng(seed)
    per_class, sections = {}, []
    for name, num_normal, num_anomalous, with_masks in classes:
        records, scores, labels, maps, masks = make_class(out_dir.parent / "images", name,
                                                          num_normal, num_anomalous,
                                                          with_masks, rng, **kwargs)
        pixel = data.has_pixel_labels(records)
        per_class[name] = metrics.evaluate(scores, labels, maps if pixel else None,
                                           masks if pixel else None)
        sections.append(report.class_section(name, records, scores, labels, maps, masks,
                                             report.assets_dir(out_dir),
                                             max_gallery=max_gallery))
    result = {"dataset": "synthetic", "resolution": "input", "map_size": 32,
              "smoothing_sigma": 4.0, "num_images": sum(c[1] + c[2] for c in classes),
              "classes": per_class, "mean": metrics.mean_over_classes(per_class),
              "mean_num_classes": metrics.defined_class_counts(per_class)}
    provenance = {"method": "linear_probe", "checkpoint_step": 1200,
                  "config": {"method": "linear_probe", "eval": {"smoothing_sigma": 4.0},
                             "data": {"eval_batch_size": 8, "roots": ["/data/a"]}},
                  "weights": {"image_encoder": "sha256:0123abcd"},
                  "dataset_roots": {"synthetic": str(out_dir.parent / "images")},
                  "software": report.software_versions(), "date": "2026-01-02"}
    path = report.write_report(out_dir, result, sections, provenance, paper=PAPER,
                               paper_label="Table 1 (MVTec AD)")
    return path, result, sections


class Links(html.parser.HTMLParser):
    """Every src / href of a page, and the text of its table cells."""

    def __init__(self):
        super().__init__()
        self.links, self.ids, self.cells, self._in_cell = [], set(), [], False

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href")]
        self.ids |= {v for k, v in attrs if k == "id"}
        if tag in ("td", "th"):
            self._in_cell = True
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, text):
        if self._in_cell:
            self.cells[-1] += text


def parse(path):
    parser = Links()
    parser.feed(pathlib.Path(path).read_text(encoding="utf-8"))
    return parser


def local_targets(page: pathlib.Path, links):
    """The files that the page's relative links point at (anchors "#..." excluded); fails on any
    absolute or remote reference (the page must open offline, from anywhere)."""
    targets = []
    for link in links:
        parts = urllib.parse.urlsplit(link)
        assert not parts.scheme and not parts.netloc and not link.startswith("/"), link
        if parts.path:
            targets.append(page.parent / urllib.parse.unquote(parts.path))
    return targets


def folder_bytes(folder: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    return build_evaluation(tmp_path_factory.mktemp("eval") / "out")


def test_every_link_exists_and_nothing_is_remote(evaluation):
    path, _, sections = evaluation
    page = parse(path)
    targets = local_targets(path, page.links)
    assert targets, "no pictures"
    missing = [str(t) for t in targets if not t.is_file()]
    assert not missing, missing
    anchors = [link[1:] for link in page.links if link.startswith("#")]
    assert len(anchors) == 2 * len(sections) and set(anchors) <= page.ids   # nav + table links
    # Curves of every class + the gallery thumbnails (one per pick) are all referenced.
    pictures = {t.resolve() for t in targets}
    written = {p.resolve() for p in report.assets_dir(path.parent).rglob("*") if p.is_file()}
    assert pictures == written
    assert len(pictures) == sum((s.curves is not None) + len(s.gallery) for s in sections)
    text = path.read_text()
    for remote in ("<script", "<link", "@import", "url(", "http://", "https://"):
        assert remote not in text, remote


def test_tables_show_the_metrics_the_mean_and_the_paper(evaluation):
    path, result, _ = evaluation
    cells = [c.strip() for c in parse(path).cells]
    width = 1 + len(metrics.METRIC_NAMES)
    rows = [cells[i:i + width] for i in range(0, len(cells), width)]
    table = {row[0]: row[1:] for row in rows[:len(result["classes"]) + 4]}
    assert rows[0][1:] == ["Image AUROC", "Image AP", "Image F1-max", "Pixel AUROC",
                           "Pixel AP", "Pixel F1-max", "Pixel AUPRO"]
    for name, values in [*result["classes"].items(), ("Mean", result["mean"])]:
        assert table[name] == [("n/a" if values[m] is None else f"{100 * values[m]:.1f}")
                               for m in metrics.METRIC_NAMES], name
    assert table["only bad"][:3] == ["n/a"] * 3 and table["no masks"][3:] == ["n/a"] * 4
    assert table["Paper: Table 1 (MVTec AD)"] == [
        "-" if PAPER[m] is None else f"{PAPER[m]:.1f}" for m in metrics.METRIC_NAMES]
    assert table["Ours − paper (points)"] == [
        "" if PAPER[m] is None or result["mean"][m] is None
        else f"{100 * result['mean'][m] - PAPER[m]:+.1f}" for m in metrics.METRIC_NAMES]
    text = path.read_text()
    assert "<details><summary>config" in text and "sha256:0123abcd" in text
    assert "linear_probe" in text and "1200" in text and "2026-01-02" in text
    assert f"<td>numpy</td><td>{np.__version__}</td>" in text


def test_curves_are_exact_and_the_gallery_shows_false_alarms_and_misses(evaluation):
    _, result, sections = evaluation
    for section in sections:
        for name, area in section.areas.items():
            expected = result["classes"][section.name][name]
            assert (area is None) == (expected is None), (section.name, name)
            if area is not None:
                assert area == pytest.approx(expected, rel=1e-12), (section.name, name)
    grass = sections[0]
    groups = [g.group for g in grass.gallery]
    assert groups == ["false_alarm"] * 2 + ["miss"] * 2 + ["typical"] * len(grass.gallery[4:])
    assert grass.gallery[0].label == 0 and grass.gallery[0].score >= grass.gallery[1].score
    assert grass.gallery[2].label == 1 and grass.gallery[2].score <= grass.gallery[3].score
    for item in grass.gallery:
        # 3 thumbnails of at most 256 px + a colour bar: a small picture.
        assert item.picture.width < 3 * 256 + 120 and item.picture.height < 300
    assert sections[2].notes == ["image curves undefined: the class has only anomalous images"]
    assert any("no pixel ground truth" in n for n in sections[3].notes)
    # JSON-able, and read back the same (the loop may keep sections as dicts).
    for section in sections:
        again = json.loads(json.dumps(section.to_dict()))
        assert report.ClassSection.from_dict(again) == section


def test_native_size_maps_and_a_config_object(tmp_path):
    # Native resolution: a list of maps (and masks) of different sizes per class.
    rng = np.random.default_rng(3)
    records, scores, labels, maps, masks = make_class(tmp_path / "images", "mixed", 2, 3, True,
                                                      rng)
    map_list = [maps[0], maps[1][:20, :28], maps[2], maps[3][:30], maps[4]]
    mask_list = [masks[0], masks[1][:20, :28], masks[2], masks[3][:30], masks[4]]
    section = report.class_section("mixed", records, scores, labels, map_list, mask_list,
                                   report.assets_dir(tmp_path / "out"), max_gallery=1)
    expected = metrics.evaluate(scores, labels, map_list, mask_list)
    for name, area in section.areas.items():
        assert area == pytest.approx(expected[name], rel=1e-12), name
    assert len(section.gallery) == 3 and section.curves is not None   # 1 + 1 + median anomalous

    class Config:                                    # what ml_collections' ConfigDict offers
        def to_dict(self):
            return {"method": "sgnet", "train": {"lr": 0.001}}

    path = report.write_report(tmp_path / "out", {"dataset": "d", "classes": {}, "mean": {}},
                               [section], {"config": Config()})
    text = path.read_text()
    assert "<details><summary>config" in text and "&quot;lr&quot;: 0.001" in text
    assert all(t.is_file() for t in local_targets(path, parse(path).links))


def test_gallery_picks():
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.2, 0.8])
    labels = np.array([0, 1, 1, 0, 0, 1, 1])
    # normal by score: 0 (.9), 3 (.7), 4 (.3); anomalous low to high: 1, 5, 2, 6; the (lower)
    # medians: 5 and 3.
    assert report.gallery_picks(scores, labels, 1) == [
        ("false_alarm", 0), ("miss", 1), ("typical", 5), ("typical", 3)]
    assert report.gallery_picks(scores, labels, 2) == [     # the medians are already shown
        ("false_alarm", 0), ("false_alarm", 3), ("miss", 1), ("miss", 5)]
    assert report.gallery_picks(scores, labels, 0) == []
    assert report.gallery_picks(scores[[1, 2]], labels[[1, 2]], 3) == [("miss", 0), ("miss", 1)]


def test_report_stays_small(tmp_path):
    path, _, _ = build_evaluation(tmp_path / "out")
    size = folder_bytes(tmp_path / "out")
    assert size < 1_000_000, size
    assert all(p.stat().st_size < 120_000 for p in (tmp_path / "out").rglob("*") if p.is_file())
    # Written again (e.g. another checkpoint): no stale pictures are left behind.
    (tmp_path / "out" / report.ASSETS_DIR / "grass" / "99_old.jpg").write_bytes(b"x")
    path, _, _ = build_evaluation(tmp_path / "out", seed=5)
    assert folder_bytes(tmp_path / "out") <= size * 1.2
    assert not (tmp_path / "out" / report.ASSETS_DIR / "grass" / "99_old.jpg").exists()
    # Larger classes do not grow the report: the gallery and decimated curves are bounded.
    big_path, _, _ = build_evaluation(tmp_path / "big" / "out",
                                      classes=(("grass", 60, 60, True),), seed=1)
    assert folder_bytes(tmp_path / "big" / "out") < 400_000


def test_experiment_index_links_each_report(tmp_path, evaluation):
    path, result, _ = evaluation
    entries = [report.ExperimentEntry("run-a", "synthetic", result["mean"], path, PAPER,
                                      "Table 1"),
               {"run": "run-b", "dataset": "visa", "mean": dict.fromkeys(metrics.METRIC_NAMES),
                "report": None}]
    index = report.write_experiment_report(tmp_path / "exp" / "index.html", entries)
    page = parse(index)
    targets = local_targets(index, page.links)
    assert [t.resolve() for t in targets] == [path.resolve()]
    text = index.read_text()
    assert f"{100 * result['mean']['image_auroc']:.1f}" in text
    assert "paper 91.5" in text and "vs. Table 1" in text and text.count("n/a") == 7


def test_report_renders_in_chromium(tmp_path, evaluation):
    if not pathlib.Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium is needed at {CHROMIUM} to render the report; {INSTALL_HINT}")
    path, _, _ = evaluation
    shot = tmp_path / "shot.png"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
               f"--screenshot={shot}", "--window-size=1280,2000", "--virtual-time-budget=5000",
               path.resolve().as_uri()]
    start = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0 and shot.is_file(), (proc.returncode, proc.stderr[-2000:])
    picture = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert picture.shape[:2] == (2000, 1280)
    assert picture.std() > 20, "blank page"
    colours = np.unique(picture.reshape(-1, 3) // 8, axis=0)
    assert colours.shape[0] > 200, colours.shape[0]
    # The pictures were loaded and drawn: the curves' colours and the jet colour bar's dark red.
    for hex_colour in (*report.PLOT_COLOURS.values(), "#800000"):
        rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
        near = np.abs(picture - rgb).max(-1) <= 24
        assert near.sum() > 30, f"colour {hex_colour} not rendered"
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    assert time.monotonic() - start < 60


def test_panel_thumbnail_keeps_the_map_shape_for_other_image_sizes(tmp_path):
    # The image (48x40) is resized to the map's shape (32x32): square sub-panels of `size` px.
    picture = heatmaps.panel(np.zeros((48, 40, 3), np.uint8), None, np.zeros((32, 32)), 0, 1,
                             size=report.THUMBNAIL_SIZE)
    row = picture[picture.shape[0] // 2]
    # the first sub-panel: black pixels from x = 8 for THUMBNAIL_SIZE columns
    black = np.flatnonzero((row == 0).all(-1))
    assert black[0] == 8 and np.all(np.diff(black[:report.THUMBNAIL_SIZE]) == 1)
