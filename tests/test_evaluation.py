"""evaluation: smoothing = scipy, heatmap drawing, evaluate_records end to end on tiny data."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from zsad_jax import config_lib, data, evaluation, methods, metrics, ops
from zsad_jax.evaluation import heatmaps, postprocess, runner
from zsad_jax.evaluation.tables import markdown_table


@pytest.mark.parametrize("sigma", [1.0, 4.0, 0.6])
def test_smoothing_equals_scipy_gaussian_filter(sigma):
    # 20x13 maps: with sigma 4 the kernel radius (16) exceeds the image (multiple reflections).
    maps = np.random.default_rng(0).random((2, 20, 13)).astype(np.float32)
    expected = np.stack([ndimage.gaussian_filter(m.astype(np.float64), sigma) for m in maps])
    out = np.asarray(jax.jit(lambda m: ops.smooth_maps(m, sigma))(maps))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert ops.smooth_maps(maps, 0.0) is maps


def test_resize_map_bilinear_shape_and_range():
    small = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    big = postprocess.resize_map(small, 7, 9)
    assert big.shape == (7, 9) and big.dtype == np.float32
    assert 0.0 <= big.min() and big.max() <= 1.0 and 0.0 < big.mean() < 1.0


def test_colormap_and_overlay():
    assert heatmaps.JET.shape == (256, 3)
    assert tuple(heatmaps.JET[0]) == (0, 0, 128)            # dark blue
    assert tuple(heatmaps.JET[-1]) == (128, 0, 0)           # dark red
    coloured = heatmaps.colorize(np.array([[-5.0, 0.0, 0.5, 1.0, 9.0]]), 0.0, 1.0)
    np.testing.assert_array_equal(coloured[0, 0], coloured[0, 1])   # clipped below
    np.testing.assert_array_equal(coloured[0, 3], coloured[0, 4])   # clipped above
    image = np.full((17, 90, 3), 0.5, np.float32)
    blended = heatmaps.overlay(image, np.ones((17, 90)), 0.0, 1.0)  # the image's own size
    assert blended.shape == (17, 90, 3) and blended.dtype == np.uint8
    np.testing.assert_array_equal(blended[0, 0], [128, 64, 64])     # half grey, half dark red


def test_contour_is_a_2px_line_with_dark_edges():
    image = np.full((10, 10, 3), 255, np.uint8)
    mask = np.zeros((10, 10), bool)
    mask[2:8, 2:8] = True
    out = heatmaps.draw_contour(image, mask)
    line = (out == heatmaps.CONTOUR_RGB).all(-1)
    edge = (out == heatmaps.OUTLINE_RGB).all(-1)
    # 2 px of line inside the region: rows/columns 2-3 and 6-7 of the square.
    assert line[2, 2] and line[3, 5] and line[7, 7] and line[6, 4]
    assert edge[1, 4] and edge[8, 4] and edge[4, 1] and edge[4, 4]  # outside and inside edges
    assert (out[0, 0] == 255).all() and (out[1, 1] == 255).all()
    assert line.sum() == 36 - 4 and not (line & ~mask).any()
    np.testing.assert_array_equal(heatmaps.draw_contour(image, np.zeros((10, 10), bool)), image)


def test_contour_shows_on_green_grass():
    # Today's (pure green) contour was invisible here: every pixel of the drawn boundary must now
    # differ strongly from the image, and both the line colour and its dark edge must be there.
    green = np.zeros((40, 40, 3), np.uint8)
    green[..., 1] = 255
    mask = np.zeros((40, 40), bool)
    mask[10:30, 12:25] = True
    out = heatmaps.draw_contour(green, mask).astype(int)
    boundary = mask & ~ndimage.binary_erosion(mask)
    outside = ndimage.binary_dilation(mask) & ~mask
    for where in (boundary, outside):
        assert np.abs(out[where] - green[where]).sum(-1).min() >= 255
    assert (out == heatmaps.CONTOUR_RGB).all(-1).any() and (out == heatmaps.OUTLINE_RGB).all(-1).any()


def find_colour_bar(picture, height):
    """(top row, column) of a `height`-px jet colour bar (vmax on top) in the picture, or None."""
    expected = heatmaps.colour_bar(height, 1)[:, 0]
    tops = np.argwhere((picture == heatmaps.JET[-1]).all(-1))
    for row, col in tops:
        if row + height <= picture.shape[0] and (picture[row:row + height, col] == expected).all():
            return int(row), int(col)
    return None


def test_panel_is_large_titled_and_has_a_colour_bar():
    rng = np.random.default_rng(0)
    image = np.zeros((48, 48, 3), np.float32)
    image[..., 1] = 0.8                                        # green grass
    image += 0.1 * rng.random((48, 48, 3)).astype(np.float32)
    mask = np.zeros((32, 32), bool)
    mask[8:18, 10:22] = True
    anomaly_map = rng.random((32, 32)).astype(np.float32)
    picture = heatmaps.panel(image, mask, anomaly_map, 0.0, 1.0, score=0.87, title="a/b.png")
    assert heatmaps.display_shape((32, 32)) == (256, 256)      # small maps upsampled
    assert heatmaps.display_shape((1024, 2048)) == (256, 512)  # large ones shown at most 512
    assert heatmaps.display_shape((32, 64), size=160) == (80, 160)
    assert picture.dtype == np.uint8
    assert picture.shape[0] > 256 + 20 and picture.shape[1] > 3 * 256 + 40   # > the raw strip
    bar = find_colour_bar(picture, 256)
    assert bar is not None, "no colour bar"
    top, col = bar
    # Text above the sub-panels (title + captions) and tick labels right of the colour bar.
    assert (picture[:top - 2].min(-1) < 100).sum() > 200
    assert (picture[top:top + 256, col + 16:].min(-1) < 100).sum() > 100
    # The contour (line colour) shows on the green ground-truth and heatmap sub-panels, drawn at
    # the display size (a 2-px line there).
    line = (picture == heatmaps.CONTOUR_RGB).all(-1)
    one = heatmaps.draw_contour(np.zeros((256, 256, 3)), heatmaps.resize_mask(mask, 256, 256))
    assert line[:, :256 + 16].sum() == 0
    assert line.sum() == 2 * (one == heatmaps.CONTOUR_RGB).all(-1).sum() > 2 * 2 * 4 * 70
    # Captions change with the score; no mask, no contour.
    assert (heatmaps.panel(image, mask, anomaly_map, 0.0, 1.0, score=0.12, title="a/b.png")
            != picture).any()
    bare = heatmaps.panel(image, None, anomaly_map, 0.0, 1.0)
    assert not (bare == heatmaps.CONTOUR_RGB).all(-1).any()
    assert bare.shape[0] < picture.shape[0]                     # no title line
    small = heatmaps.panel(image, mask, anomaly_map, 0.0, 1.0, size=160)
    assert find_colour_bar(small, 160) is not None and small.shape[1] < 3 * 256


def test_group_by_class_and_heatmap_picks():
    rec = lambda c, i, label: data.Record(f"/{c}/{i}.png", None, label, c, "good", "x")  # noqa: E731
    records = [rec("a", 0, 0), rec("b", 0, 1), rec("a", 1, 1), rec("b", 1, 0), rec("a", 2, 1)]
    grouped = runner.group_by_class(records)
    assert [r.class_name for r in grouped] == ["a", "a", "a", "b", "b"]
    assert [r.image_path for r in grouped[:3]] == ["/a/0.png", "/a/1.png", "/a/2.png"]
    assert [r.image_path for r in runner.group_by_class(records, max_images=2)] == [
        "/a/0.png", "/a/2.png", "/b/0.png", "/b/1.png"]
    assert runner.heatmap_picks([0, 1, 1, 1, 0, 1], 3) == [0, 1, 5]   # 2 anomalous + 1 normal
    assert runner.heatmap_picks([0, 0], 5) == [0, 1]
    assert runner.heatmap_picks([1, 1], 0) == []


# ---------------------------------------------------------------------------------------------
# evaluate_records on a tiny synthetic dataset with the tiny reference method
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = data.make_synthetic(tmp_path_factory.mktemp("synth"), seed=0, image_size=48,
                               classes=("brick", "grass", "moon"), num_train=1,
                               num_test_good=1, num_per_defect=1)
    records = data.load_index("synthetic", root)
    config = config_lib.load_config("linear_probe.py", {
        "model.image_size": 32, "eval.num_heatmaps": 2, "data.eval_batch_size": 4,
        "eval.smoothing_sigma": 2.0})
    method = methods.build(config)
    params = method.init(jax.random.PRNGKey(0))
    return config, method, params, records


def direct_class_metrics(config, method, params, records):
    """Per class: preprocess each record, run the method un-jitted, smooth with scipy, score."""
    preprocess = data.pipeline.Preprocess(method.views, method.mask_size)
    out = {}
    for name in dict.fromkeys(r.class_name for r in records):
        examples = [preprocess(r) for r in records if r.class_name == name]
        batch = {"images": {"image": np.stack([e["images"]["image"] for e in examples])}}
        maps, scores = method.anomaly_outputs(params, batch)
        maps = np.stack([ndimage.gaussian_filter(np.asarray(m, np.float64),
                                                 config.eval.smoothing_sigma) for m in maps])
        masks = np.stack([e["masks"] for e in examples]) > 0.5
        labels = [int(e["labels"]) for e in examples]
        out[name] = metrics.evaluate(np.asarray(scores), labels, maps.astype(np.float32), masks)
    return out


def test_evaluate_records_writes_all_files_and_matches_direct_metrics(tiny, tmp_path,
                                                                     monkeypatch):
    config, method, params, records = tiny
    live, most_live = set(), [0]

    class Tracked(runner.ClassAccumulator):        # how many classes are held at once
        def add(self, *args):
            live.add(self.name)
            most_live[0] = max(most_live[0], len(live))
            super().add(*args)

        def metrics(self):
            live.discard(self.name)
            return super().metrics()

    monkeypatch.setattr(runner, "ClassAccumulator", Tracked)
    result = evaluation.evaluate_records(method, params, records, config, tmp_path, "synthetic",
                                         progress=False)
    assert most_live[0] == 2          # streamed: 3 classes of 5 images, batches of 4
    assert json.loads((tmp_path / "metrics.json").read_text()) == result
    assert result["resolution"] == "input" and result["smoothing_sigma"] == 2.0
    assert result["num_images"] == len(records) == 15
    assert list(result["classes"]) == ["brick", "grass", "moon"]
    expected = direct_class_metrics(config, method, params, records)
    for name, values in result["classes"].items():
        for metric in metrics.METRIC_NAMES:
            assert values[metric] == pytest.approx(expected[name][metric], abs=1e-4), (name,
                                                                                      metric)
    for metric in metrics.METRIC_NAMES:
        assert result["mean"][metric] == pytest.approx(
            np.mean([v[metric] for v in result["classes"].values()]))
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].split(",") == ["class", *metrics.METRIC_NAMES]
    assert [line.split(",")[0] for line in csv_lines[1:]] == ["brick", "grass", "moon", "mean"]
    table = (tmp_path / "table.md").read_text()
    assert "| **Mean** |" in table and "input (32x32)" in table
    for name in ("brick", "grass", "moon"):
        pngs = sorted((tmp_path / "heatmaps" / name).glob("*.png"))
        assert len(pngs) == 2
        for png in pngs:
            picture = np.asarray(Image.open(png))
            # 32x32 maps drawn as a readable panel: 256-px sub-panels, captions, colour bar.
            assert picture.shape[0] > 256 and picture.shape[1] > 3 * 256 and picture.std() > 10
            assert find_colour_bar(picture, 256) is not None
        # One colour scale per class, written next to the pictures.
        assert "colour scale" in (tmp_path / "heatmaps" / name / "scale.txt").read_text()


def test_native_resolution_and_undefined_metrics(tiny, tmp_path):
    config, method, params, records = tiny
    config = config_lib.load_config("linear_probe.py", {
        "model.image_size": 32, "eval.num_heatmaps": 1, "eval.resolution": "native",
        "data.eval_batch_size": 4})
    # brick: normal images only -> every metric undefined; grass: all defined.
    subset = [r for r in records if r.class_name == "grass" or
              (r.class_name == "brick" and r.label == 0)]
    result = evaluation.evaluate_records(method, params, subset, config, tmp_path, "synthetic",
                                         progress=False)
    assert result["resolution"] == "native"
    assert all(v is None for v in result["classes"]["brick"].values())
    assert all(v is not None for v in result["classes"]["grass"].values())
    assert result["mean"] == result["classes"]["grass"]
    assert result["mean_num_classes"]["pixel_aupro"] == 1
    assert "null" in (tmp_path / "metrics.json").read_text()
    assert "| brick | n/a | n/a |" in markdown_table(result)
    (png,) = (tmp_path / "heatmaps" / "grass").glob("*.png")
    assert find_colour_bar(np.asarray(Image.open(png)), 256) is not None   # native 48x48 maps


def test_bad_eval_config_is_named(tiny, tmp_path):
    config, method, params, records = tiny
    with pytest.raises(ValueError, match="config.eval.resolution='full'"):
        config_lib.load_config("linear_probe.py", {"eval.resolution": "full"})


_SHARDED_SCRIPT = """
import json, sys, jax
from zsad_jax import config_lib, data, evaluation, methods
assert jax.device_count() == 4, jax.devices()
records = data.load_index("synthetic", sys.argv[1])
config = config_lib.load_config("linear_probe.py", {
    "model.image_size": 32, "eval.num_heatmaps": 0, "data.eval_batch_size": 3,
    "eval.smoothing_sigma": 2.0})
method = methods.build(config)
params = method.init(jax.random.PRNGKey(0))
result = evaluation.evaluate_records(method, params, records, config, sys.argv[2], "synthetic",
                                     progress=False)
print(json.dumps(result["classes"]))
"""


def test_sharded_over_devices_gives_the_same_metrics(tiny, tmp_path):
    config, method, params, records = tiny
    single = evaluation.evaluate_records(method, params, records, config, tmp_path / "one",
                                         "synthetic", progress=False)
    root = str(records[0].image_path).split("/brick/")[0]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT, root, str(tmp_path / "four")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = json.loads(proc.stdout.strip().splitlines()[-1])
    # The maps agree to float rounding, which can swap the order of two near-equal pixels: one
    # swapped pair moves a class's pixel AUROC by 1 / (#anomalous x #normal pixels) ~ 1e-6.
    for name, values in single["classes"].items():
        for metric, value in values.items():
            tolerance = 1e-4 if metric.startswith("pixel") else 1e-6
            assert sharded[name][metric] == pytest.approx(value, abs=tolerance), (name, metric)


def test_paper_table_puts_the_papers_numbers_beside_the_mean(tiny, tmp_path):
    """config.eval.paper_table: the report shows the paper's row of the evaluated dataset."""
    from zsad_jax.evaluation import paper_tables

    _, method, params, records = tiny
    config = config_lib.load_config("linear_probe.py", {
        "model.image_size": 32, "eval.num_heatmaps": 0, "data.eval_batch_size": 4,
        "eval.paper_table": "visualad.cross_dataset"})
    numbers, label = paper_tables.dataset_numbers("visualad.cross_dataset")["mvtec"]
    (metric, value), = [(m, v) for m, v in numbers.items() if v is not None][:1]
    checkpoint = {"step": 0, "path": "none"}
    evaluation.Evaluator(config, progress=False)(method, params, {"mvtec": records}, tmp_path,
                                                 checkpoint, flat=True)
    page = (tmp_path / "mvtec" / "report.html").read_text()
    assert f"Paper: {label}" in page and f"{value:.1f}" in page and "Ours &minus; paper" in page
    # A dataset the table has no row for gets no paper row.
    evaluation.Evaluator(config, progress=False)(method, params, {"synthetic": records},
                                                 tmp_path, checkpoint, flat=True)
    assert "Paper:" not in (tmp_path / "synthetic" / "report.html").read_text()


@pytest.mark.parametrize("table,expected", [("visualad.crossdataset", "did you mean"),
                                            ("sgnet.ablation", "expected '' or one of")])
def test_paper_table_must_be_a_datasets_table(table, expected):
    with pytest.raises(config_lib.ConfigError, match=f"config.eval.paper_table.*{expected}"):
        config_lib.load_config("linear_probe.py", {"eval.paper_table": table})
