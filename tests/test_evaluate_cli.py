"""The evaluate and predict command lines on a tiny trained run (1 step of the reference method)."""

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from zsad_jax import config_lib, metrics, runs
from zsad_jax.evaluate import evaluate_run


def tiny_config(**overrides):
    values = {"model.image_size": 32, "train.num_steps": 1, "eval.max_images": 3,
              "eval.num_heatmaps": 1, "data.batch_size": 4, "data.eval_batch_size": 4}
    values.update(overrides)
    return config_lib.load_config("linear_probe.py", values)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from zsad_jax.train import run_training

    workdir = tmp_path_factory.mktemp("run")
    run_training(tiny_config(), workdir, progress=False)
    return workdir


def cli(module, *args, timeout=300):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout)
    return proc


def test_evaluate_cli_on_a_run_writes_every_file(run_dir):
    proc = cli("zsad_jax.evaluate", "--workdir", str(run_dir), "--which", "latest",
               "--max_images", "2", "--num_heatmaps", "1", "--smoothing_sigma", "0",
               "--noprogress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Other eval settings than the run's: their own folder; the training's results stay.
    trained = json.loads((run_dir / "eval" / "step_1" / "synthetic" / "metrics.json").read_text())
    assert trained["smoothing_sigma"] == 1.0
    (folder,) = (run_dir / "eval").glob("step_1_*")
    out = folder / "synthetic"
    result = json.loads((out / "metrics.json").read_text())
    assert result["smoothing_sigma"] == 0.0 and result["dataset"] == "synthetic"
    assert result["checkpoint"]["step"] == 1 and result["config_sha256"].startswith(folder.name[7:])
    assert str(out) in proc.stdout
    assert set(result["mean"]) == set(metrics.METRIC_NAMES)
    assert (out / "metrics.csv").is_file() and (out / "table.md").is_file()
    for name in result["classes"]:
        assert result["class_sizes"][name]["images"] == 2
        (png,) = (out / "heatmaps" / name).glob("*.png")
        picture = np.asarray(Image.open(png))
        assert picture.shape[0] > 256 and picture.shape[1] > 3 * 256 and picture.std() > 0


def test_evaluate_run_with_config_dataset_and_data_dir(run_dir, tmp_path):
    # --config + --checkpoint RUN: the run's params under another config; --data_dir is the
    # folder that holds synthetic/.
    results = evaluate_run(config=tiny_config(), checkpoint=str(run_dir / "checkpoints"),
                           dataset="synthetic", data_dir=str(run_dir), classes=["moon"],
                           out=str(tmp_path), eval_overrides={"num_heatmaps": 0},
                           progress=False)
    assert list(results["synthetic"]["classes"]) == ["moon"]
    out = tmp_path / "synthetic"
    assert (out / "metrics.json").is_file() and not (out / "heatmaps").exists()


def test_model_loading_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="give --workdir RUN, or --config"):
        runs.load_model(None)
    with pytest.raises(ValueError, match="not both"):
        runs.load_model(str(tmp_path), tiny_config())
    with pytest.raises(FileNotFoundError, match="config.json"):
        runs.run_dir_of(tmp_path)


def test_cli_help_documents_every_flag():
    for module in ("zsad_jax.evaluate", "zsad_jax.predict"):
        proc = cli(module, "--help")
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout
        own = re.findall(r"^  --(?:\[no\])?(\w+):", text, flags=re.M)
        assert {"workdir", "config", "which", "out"} <= set(own)
        for name in own:   # every flag has a sentence of help
            line = re.search(rf"^  --(?:\[no\])?{name}:(.*)$", text, flags=re.M).group(1)
            assert len(line.strip()) > 10, (module, name)
    evaluate_help = cli("zsad_jax.evaluate", "--help").stdout
    for flag in ("dataset", "data_dir", "checkpoint", "smoothing_sigma", "resolution"):
        assert f"--{flag}:" in evaluate_help


def test_predict_cli_any_size_unreadable_named_and_counted(run_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(images / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (70, 30), dtype=np.uint8)).save(images / "b.png")
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    proc = cli("zsad_jax.predict", "--workdir", str(run_dir), "--images", str(images / "*"),
               "--out", str(out), "--threshold", "0.5", "--noprogress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 image(s) scored, 1 unreadable skipped" in proc.stdout
    assert "broken.png" in proc.stderr and "broken.png" in proc.stdout
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["image"].rsplit("/", 1)[-1] for row in rows] == ["a.jpg", "b.png"]
    for row, (height, width) in zip(rows, [(40, 56), (70, 30)], strict=True):
        assert 0.0 <= float(row["score"]) <= 1.0
        heatmap = np.asarray(Image.open(out / row["heatmap"]))
        assert heatmap.shape == (height, width, 3) and heatmap.std() > 0
        mask = np.asarray(Image.open(out / row["mask"]))
        assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
        assert float(row["anomalous_fraction"]) == pytest.approx((mask > 0).mean())
