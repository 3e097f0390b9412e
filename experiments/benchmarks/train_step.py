"""Speed of the compiled train step, with and without the frozen-feature cache.

    # CPU: the compiled step alone, and whole epochs through the loop (data pipeline included);
    # the docs/benchmarks.md configuration: SGNet's small demo head on a CLIP ViT-B/16 at 448
    python experiments/benchmarks/train_step.py --config sgnet.py:demo --mode both --iters 2 \
        --override backbones.clip.arch=clip-vit-b16 --override backbones.clip.image_size=448 \
        --override "backbones.clip.layers=(6,12)"
    # the real methods at paper size, random weights, batch 1 and 8, fp32 and bf16 (an H200:
    # 989 dense bf16 TFLOP/s, 67 fp32 without TF32; give the right peak per dtype for MFU)
    python experiments/benchmarks/train_step.py --config sgnet.py --config ssvp.py \
        --config visualad.py --config anomalyclip.py --paper --batch 1 --batch 8 \
        --compute_dtype float32 --compute_dtype bfloat16 --mode step --iters 5 \
        --peak_tflops bfloat16=989 --peak_tflops float32=67

`--mode step`: seconds per compiled step on a fixed device batch (no input pipeline): the full
step (backbone forward + trainable part + update) and, for methods with
`supports_feature_cache`, the step from cached features plus the one-off feature extraction per
batch. `--mode epoch`: `zsad_jax.training.loop.train` on the synthetic protocol for `--epochs`
epochs with `feature_cache` off and on; per-epoch wall time after the first epoch from the
per-step timestamps of metrics.jsonl (cache build time reported separately).
`--paper`: the config's own backbones with random init (`weights=""`), no files needed.
Each step row reports the remat policy that ran (`--remat auto` chooses by memory like the train
loop), the compiled step's TFLOP/s (XLA's FLOP count over the measured time), MFU with
`--peak_tflops`, XLA's buffer-assignment memory (`compiled_gib`) and the measured peak
(`peak_gib`: the accelerator's peak bytes in use, or the process's peak RSS on a CPU host: a
running maximum over the whole run, so only the first row of a process is that row's own).
Prints one markdown table row per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

import numpy as np


def _config(spec: str, paper: bool, overrides: list[str], compute_dtype: str):
    from zsad_jax import config_lib

    config = config_lib.load_config(spec, overrides)
    config.train.compute_dtype = compute_dtype
    if paper:
        for bb in config.backbones.values():
            bb.weights = ""
    return config


def _batch(method, batch_size: int, rng: np.random.Generator) -> dict:
    m = method.mask_size
    masks = np.zeros((batch_size, m, m), np.float32)
    masks[batch_size // 2:, m // 4: m // 2, m // 3: m // 2] = 1.0
    return {"images": {name: rng.standard_normal((batch_size, v.size, v.size, 3), np.float32)
                       for name, v in method.views.items()},
            "masks": masks,
            "labels": (np.arange(batch_size) >= batch_size // 2).astype(np.int32),
            "class_name": np.array(["bottle"] * batch_size)}


def _time(fn, iters: int) -> tuple[float, float]:
    """(first call incl. compile, mean of `iters` later calls) in seconds."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(iters):
        out = fn()
    jax.block_until_ready(out)
    return first, (time.perf_counter() - start) / iters


def _compiled_stats(fn, *args) -> dict:
    """FLOPs and memory of the compiled function (XLA's cost and buffer analyses). `jax.jit`
    reuses this compilation for the calls that follow."""
    from zsad_jax.training import memory

    compiled = fn.lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"flops": float((cost or {}).get("flops", 0.0)) or None,
            "compiled_gib": memory.peak_bytes(compiled) / memory.GIB}


def _peak_memory_gib() -> float | None:
    """The accelerator's peak bytes in use, or on a CPU host the process's peak RSS, in GiB."""
    import resource

    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def bench_step(spec: str, config, iters: int, with_cache: bool = True,
               peak_tflops: float = 0.0) -> list[dict]:
    """Rows of the full step's timing, and (with_cache, for methods that support it) of the
    feature extraction and of the step from cached features.

    Each row has the remat policy that ran (`train.remat="auto"` is resolved by
    `training.memory.choose_remat`, as the train loop does), the compiled step's FLOPs and memory,
    the peak memory measured while it ran, and with `peak_tflops` (the device's dense peak in the
    compute dtype) the model FLOPs utilization.
    """
    import jax

    from zsad_jax import devices, methods
    from zsad_jax.training import memory, optimizer, state, step

    method = methods.build(config)
    mesh = devices.make_mesh()
    params = method.init(jax.random.PRNGKey(0))
    trainable, frozen, layout = state.split_params(params, method.trainable_mask(params))
    del params
    frozen = devices.replicate(frozen, mesh)
    trainable = devices.replicate(trainable, mesh)
    tx, _ = optimizer.make_optimizer(config.optim, layout.trainable_paths, 1000)
    batch_size = int(config.data.batch_size)
    host = _batch(method, batch_size, np.random.default_rng(0))
    batch = devices.to_device(method, host, mesh)
    common = dict(config=spec, batch=batch_size, dtype=str(config.train.compute_dtype))
    rows = []

    def with_rates(row, per, flops):
        row.update(step_s=per, images_per_s=batch_size / per, peak_gib=_peak_memory_gib())
        if flops:
            row["tflops_per_s"] = flops / per / 1e12
            if peak_tflops:
                row["mfu"] = flops / per / 1e12 / peak_tflops
        return row

    def run(from_features, device_batch, feature_dtypes=None):
        terms = step.loss_term_names(method, layout, from_features, trainable, frozen,
                                     device_batch)
        st = jax.jit(lambda t: state.init_state(t, tx, jax.random.PRNGKey(1), terms),
                     out_shardings=devices.replicated(mesh))(trainable)

        start = time.perf_counter()
        built, fn = memory.train_step_for(
            method, config, lambda m: step.make_train_step(m, layout, tx, terms, mesh,
                                                           from_features, feature_dtypes),
            (st, frozen, device_batch))
        policy = built.remat_policy
        stats = _compiled_stats(fn, st, frozen, device_batch)
        compile_s = time.perf_counter() - start
        holder = {"state": st}

        def call():
            holder["state"], metrics = fn(holder["state"], frozen, device_batch)
            return metrics["loss"]

        _, per = _time(call, iters)
        return compile_s, per, {"remat": policy if not from_features else "-", **stats}

    first, per, stats = run(False, batch)
    full = with_rates(dict(common, what="full step", compile_s=first, **stats), per,
                      stats["flops"])
    rows.append(full)
    if with_cache and method.supports_feature_cache:
        feature_fn = step.make_feature_fn(method, layout, mesh)
        start = time.perf_counter()
        f_stats = _compiled_stats(feature_fn, trainable, frozen, batch)
        f_first = time.perf_counter() - start
        _, f_per = _time(lambda: feature_fn(trainable, frozen, batch), iters)
        rows.append(with_rates(dict(common, what="feature extraction (cache build, per batch)",
                                    compile_s=f_first, remat="-", **f_stats), f_per,
                               f_stats["flops"]))
        features = feature_fn(trainable, frozen, batch)
        dtypes = tuple(x.dtype for x in jax.tree_util.tree_leaves(features))
        without_images = {k: v for k, v in host.items() if k != "images"}
        cached = {**devices.to_device(method, without_images, mesh),
                  "features": jax.tree_util.tree_map(lambda x: x.astype("bfloat16"), features)}
        c_first, c_per, c_stats = run(True, cached, dtypes)
        rows.append(with_rates(dict(common, what="step from cached features", compile_s=c_first,
                                    speedup=per / c_per, **c_stats), c_per, c_stats["flops"]))
    return rows


def bench_epochs(spec: str, config, epochs: int) -> list[dict]:
    import logging

    from zsad_jax.train import run_training

    logging.getLogger("absl").setLevel(logging.WARNING)
    rows, per_epoch = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for cache in (False, True):
            config.train.feature_cache = cache
            config.train.epochs = epochs
            config.train.num_steps = 0
            config.train.eval_every = -1
            config.train.log_every = 1
            config.train.cache_dir = str(pathlib.Path(tmp) / "cache")
            workdir = pathlib.Path(tmp) / f"run_cache{int(cache)}"
            start = time.perf_counter()
            result = run_training(config, workdir, progress=False)
            total = time.perf_counter() - start
            stamps = [json.loads(line)["time"] for line in
                      (workdir / "metrics.jsonl").read_text().splitlines()]
            spe = result.total_steps // epochs
            ends = [stamps[(e + 1) * spe - 1] for e in range(epochs)]
            later = float(np.mean(np.diff(ends)))
            per_epoch[cache] = later
            rows.append(dict(config=spec, what=f"epoch (loop, cache={'on' if cache else 'off'})",
                             batch=int(config.data.batch_size), steps_per_epoch=spe,
                             total_s=total, epoch_s=later,
                             speedup=(per_epoch[False] / later) if cache else None))
    return rows


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", required=True,
                        help="config spec (repeatable), e.g. sgnet.py:demo")
    parser.add_argument("--override", action="append", default=[],
                        help="config override key=value (repeatable), applied to every config")
    parser.add_argument("--paper", action="store_true",
                        help="random-init the configs' own (paper-size) backbones")
    parser.add_argument("--compute_dtype", action="append", choices=("float32", "bfloat16"),
                        help="compute dtype (repeatable; default float32)")
    parser.add_argument("--batch", action="append", type=int,
                        help="per-step batch size (repeatable; default: the config's)")
    parser.add_argument("--remat", choices=("none", "dots", "full", "auto"), default=None,
                        help="train.remat for every config (default: the config's)")
    parser.add_argument("--no_cache", action="store_true",
                        help="step mode: the full step only (no feature-cache rows)")
    parser.add_argument("--peak_tflops", action="append", default=[],
                        help="DTYPE=TFLOPS: the device's dense peak in that compute dtype "
                             "(repeatable; adds MFU), e.g. bfloat16=989")
    parser.add_argument("--mode", default="step", choices=("step", "epoch", "both"))
    parser.add_argument("--iters", type=int, default=10, help="timed steps (step mode)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (epoch mode), >= 2")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args()

    import jax

    print(f"# {platform.node()} | {jax.devices()[0].device_kind} x{jax.device_count()} | "
          f"jax {jax.__version__} | load average {os.getloadavg()[0]:.1f}")
    peaks = {k: float(v) for k, _, v in (p.partition("=") for p in args.peak_tflops)}
    rows = []
    for spec in args.config:
        for dtype in args.compute_dtype or ["float32"]:
            for batch in args.batch or [None]:
                config = _config(spec, args.paper, args.override, dtype)
                if batch:
                    config.data.batch_size = batch
                if args.remat:
                    config.train.remat = args.remat
                if args.mode in ("step", "both"):
                    rows += bench_step(spec, config, args.iters, with_cache=not args.no_cache,
                                       peak_tflops=peaks.get(dtype, 0.0))
                if args.mode in ("epoch", "both"):
                    rows += bench_epochs(spec, config, args.epochs)
                print(f"# done {spec} {dtype} batch {config.data.batch_size} "
                      f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    keys = ["config", "what", "batch", "dtype", "remat", "compile_s", "step_s", "images_per_s",
            "tflops_per_s", "mfu", "compiled_gib", "peak_gib", "steps_per_epoch", "total_s",
            "epoch_s", "speedup"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(_fmt(row.get(k)) for k in keys) + " |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
