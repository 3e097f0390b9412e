"""The `ssvp.py:demo` config through the training engine: the loss goes down and the model beats
chance on the held-out synthetic classes, images and pixels (the evaluated map P_map is what the
focal loss supervises, Algorithm 3 line 8)."""

import json

import numpy as np

from zsad_jax import config_lib
from zsad_jax.train import run_training as train


def test_demo_lowers_loss_and_beats_chance_on_held_out_classes(tmp_path):
    config = config_lib.load_config("ssvp.py:demo", {"train.num_steps": 40, "train.eval_every": 40,
                                                     "train.log_every": 1, "eval.num_heatmaps": 0})
    result = train(config, tmp_path, progress=False)
    assert result.step == 40
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if r["kind"] == "train"]
    assert len(losses) == 40
    # The total is mostly lambda1 L_VAE (a summed squared error), which falls more slowly.
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    seg = [r["seg_focal"] for r in logged if r["kind"] == "train"]
    assert np.mean(seg[-5:]) < 0.5 * np.mean(seg[:5])
    held_out = result.eval_metrics["synthetic"]["mean"]
    assert held_out["image_auroc"] > 0.6 and held_out["pixel_auroc"] > 0.6
    # The prompts and the injection gate were trained (their gradients pass the frozen text tower).
    assert np.abs(result.params["head/injection/alpha"]).max() > 0
