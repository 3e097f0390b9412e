"""`visualad.py:demo` through the training engine: the loss goes down and held-out synthetic
classes are detected better than chance."""

import json

import numpy as np

from zsad_jax import config_lib
from zsad_jax.train import run_training as train


def test_demo_lowers_loss_and_beats_chance_on_held_out_classes(tmp_path):
    config = config_lib.load_config("visualad.py:demo", {"train.log_every": 1,
                                                         "train.eval_every": 10 ** 6})
    result = train(config, tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in sorted((r for r in lines if r["kind"] == "train"),
                                        key=lambda r: r["step"])]
    # 3 epochs of the 41 training images in batches of 8, the last partial batch kept (release).
    assert len(losses) == result.total_steps == 3 * 6
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    # Held-out classes of the "synthetic" protocol (never seen in training).
    mean = result.eval_metrics["synthetic"]["mean"]
    assert mean["image_auroc"] > 0.6, mean
