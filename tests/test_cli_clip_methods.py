"""evaluate / predict with a CLIP method whose prompts name the image's class (SSVP demo).

Guards two integration points: the default evaluation mesh must let the CLIP tower concatenate its
class token with sharded patches, and both paths must pass batches through `method.prepare_batch`
(SSVP turns `class_name` into prompt token ids there).
"""

import jax
import numpy as np
from PIL import Image

from zsad_jax import config_lib, data, methods, metrics
from zsad_jax.evaluate import evaluate_run
from zsad_jax.predict import predict


def test_evaluate_and_predict_a_clip_method_with_class_words(tmp_path):
    config = config_lib.load_config("ssvp.py:demo", {"data.eval_batch_size": 2})
    data.make_synthetic(tmp_path / "synthetic", seed=0)
    results = evaluate_run(config=config, dataset="synthetic", data_dir=str(tmp_path),
                           classes=["moon"], out=str(tmp_path / "eval"),
                           eval_overrides={"max_images": 3, "num_heatmaps": 0}, progress=False)
    mean = results["synthetic"]["mean"]
    assert set(mean) == set(metrics.METRIC_NAMES)
    assert 0.0 <= mean["pixel_auroc"] <= 1.0

    method = methods.build(config)
    params = method.init(jax.random.PRNGKey(0))
    image = tmp_path / "part.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)).save(image)
    predictor = predict(method, params, config, [str(image)], tmp_path / "pred", progress=False,
                        class_name="metal_nut")
    assert predictor.failed == [] and len(predictor.rows) == 1
    assert np.isfinite(float(predictor.rows[0]["score"]))
