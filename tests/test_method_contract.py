"""One test over every registered method (`zsad_jax.methods.REGISTRY`): its demo config goes
through the whole contract, so registering a method is what gets it tested.

init (frozen towers + head; trainable = exactly the head's leaves the method names), a finite
loss with named scalar terms, a gradient reaching every trainable leaf (after perturbing the
parameters, so that an init-time zero such as a gate at 0 hides nothing), a few train steps
through the CLI's engine with the evaluation of the held-out synthetic classes, predict, and the
step benchmark of experiments/benchmarks/train_step.py.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import assert_gradient_reaches
from PIL import Image

from zsad_jax import config_lib, data, devices, methods, metrics
from zsad_jax.predict import predict
from zsad_jax.train import run_training
from zsad_jax.tree import path_str


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return str(data.make_synthetic(tmp_path_factory.mktemp("synthetic") / "synthetic", seed=0))


def _host_batch(method, size=2, seed=0):
    rng = np.random.default_rng(seed)
    m = method.mask_size
    masks = np.zeros((size, m, m), np.float32)
    masks[1:, m // 4: m // 2, m // 3: 2 * m // 3] = 1.0
    return {"images": {k: rng.normal(size=(size, v.size, v.size, 3)).astype(np.float32)
                       for k, v in method.views.items()},
            "masks": masks, "labels": np.array([0, 1] * (size // 2), np.int32),
            "class_name": np.array(["bottle", "metal_nut"] * (size // 2))}


def _perturbed(params, scale=0.3, seed=1):
    """params + noise of `scale` x each leaf's spread (at least `scale`): no leaf stays at an
    init-time constant (zero gates, unit LayerNorm scales)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = []
    for key, x in zip(keys, leaves, strict=True):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            out.append(x)
            continue
        spread = jnp.maximum(jnp.std(x), 1.0) if x.size > 1 else 1.0
        out.append(x + scale * spread * jax.random.normal(key, x.shape, x.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


@pytest.mark.parametrize("name", sorted(methods.REGISTRY))
def test_registered_method_contract(name, tmp_path, synthetic_root):
    config = config_lib.load_config(f"{name}.py:demo", {
        "data.roots.synthetic": synthetic_root, "train.num_steps": 2, "train.log_every": 1,
        "train.ckpt_every": 2, "train.eval_every": 2, "eval.max_images": 4,
        "eval.num_heatmaps": 1, "data.eval_batch_size": 4})
    method = methods.build(config)
    assert method.name == name and methods.get_class(name) is type(method)

    # init: {"backbones": frozen towers, "head": trainable}; the mask selects head leaves only.
    params = method.init(jax.random.PRNGKey(0))
    assert set(params) == {"backbones", "head"}
    mask = {path_str(p): bool(v) for p, v in
            jax.tree_util.tree_leaves_with_path(method.trainable_mask(params))}
    assert any(mask.values()) and not any(v for k, v in mask.items() if k.startswith("backbones/"))

    # a finite loss with named scalar terms; a gradient reaches every trainable leaf.
    mesh = devices.make_mesh()
    batch = devices.to_device(method, _host_batch(method), mesh)
    loss, terms = jax.jit(method.loss)(params, batch, jax.random.PRNGKey(1))
    assert np.isfinite(float(loss)) and terms and all(np.shape(v) == () for v in terms.values())
    shaken = _perturbed(params)
    grads = jax.jit(jax.grad(lambda p: method.loss(p, batch, jax.random.PRNGKey(1))[0]))(shaken)
    trainable = {k for k, v in mask.items() if v}
    assert_gradient_reaches(grads, sorted(trainable), rel=1e-6)
    maps, scores = jax.jit(method.anomaly_outputs)(params, batch)
    assert maps.shape == (2, method.mask_size, method.mask_size) and scores.shape == (2,)

    # a few steps through the engine, with the protocol's evaluation.
    workdir = tmp_path / "run"
    result = run_training(config, workdir, progress=False)
    assert result.step == 2 and np.isfinite(result.final_metrics["loss"])
    final = json.loads((workdir / "eval" / "step_2" / "synthetic" / "metrics.json").read_text())
    assert set(final["mean"]) == set(metrics.METRIC_NAMES)
    assert (workdir / "eval" / "step_2" / "synthetic" / "report.html").is_file()

    # predict on two images of any size.
    images = []
    for i, shape in enumerate([(40, 52, 3), (33, 33, 3)]):
        images.append(tmp_path / f"img{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, shape, np.uint8)).save(images[-1])
    predictor = predict(method, params, config, [str(p) for p in images], tmp_path / "pred",
                        progress=False, class_name="bottle")
    assert len(predictor.rows) == 2 and not predictor.failed

    # the step benchmark runs for it.
    from experiments.benchmarks.train_step import bench_step

    (row,) = bench_step(f"{name}.py:demo", config, iters=1, with_cache=False)
    assert row["what"] == "full step" and row["step_s"] > 0
