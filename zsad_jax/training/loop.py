"""The train loop: `train(config, workdir)`; knows nothing method-specific (methods/base.py).

Order of a run (nothing is compiled before step 4, so a missing input fails fast):

1. build the method; check every file it needs (`method.required_files()`) and the data protocol
   (`data.resolve_protocol`): all missing inputs are reported at once, with the commands that
   provide them (`MissingInputsError`);
2. write `<workdir>/config.json`, or compare with it when the run directory exists (resume);
3. build params (split trainable / frozen), optimizer, mesh, data loader (or feature cache);
4. restore the latest checkpoint if any (state + data iterator position), then step:
   log every `log_every`, checkpoint every `ckpt_every` (0: each epoch end), evaluate every
   `eval_every` (0: each epoch end, < 0: never), always checkpoint + evaluate at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from zsad_jax import data, methods
from zsad_jax.training import checkpoint as checkpoint_lib
from zsad_jax.training import feature_cache as cache_lib
from zsad_jax.training import optimizer as optimizer_lib
from zsad_jax.training import sharding as sharding_lib
from zsad_jax.training import state as state_lib
from zsad_jax.training import step as step_lib
from zsad_jax.training.metrics_writer import MetricsWriter

log = logging.getLogger(__name__)


class MissingInputsError(FileNotFoundError):
    """Weights or datasets the config needs are not there (raised before compiling)."""


class NonFiniteError(FloatingPointError):
    """A non-finite loss, loss term or gradient; names the step and the terms."""


@dataclasses.dataclass
class TrainResult:
    step: int                     # train steps done
    total_steps: int
    params: dict                  # trainable params, numpy, {path: array}
    opt_state: Any                # numpy pytree
    final_metrics: dict           # last logged train scalars
    eval_metrics: dict            # {dataset: metrics.json content} of the last evaluation
    workdir: pathlib.Path


def _host(x) -> np.ndarray:
    """A replicated (possibly multi-process) jax.Array -> numpy, without collectives."""
    if isinstance(x, jax.Array):
        return np.asarray(x.addressable_shards[0].data)
    return np.asarray(x)


# ---- 1. inputs ------------------------------------------------------------------------------
def check_inputs(method, config: ml_collections.ConfigDict, workdir: pathlib.Path):
    """(train_records, {dataset: eval records}); raises MissingInputsError listing every missing
    weights folder and dataset with the commands that provide them."""
    problems = []
    for path, how in method.required_files():
        if not pathlib.Path(path).expanduser().exists():
            problems.append(f"- missing {path} (looked at {pathlib.Path(path).expanduser().absolute()})"
                            f"\n    provide it: {how}")
    train_records = eval_sets = None
    try:
        train_records, eval_sets = data.resolve_protocol(config, workdir)
    except (FileNotFoundError, NotADirectoryError, data.DatasetError) as e:
        problems.append(f"- data: {e}")
    if problems:
        raise MissingInputsError(
            f"config {config.method!r} (protocol {config.data.protocol!r}) cannot start; "
            f"nothing was compiled. Missing inputs:\n" + "\n".join(problems))
    if not train_records:
        raise MissingInputsError(f"protocol {config.data.protocol!r} gave no training records")
    return train_records, eval_sets


def _dummy_host_batch(method, batch_size: int) -> dict:
    """Zero arrays in the host batch layout (for shapes only)."""
    return {"images": {name: np.zeros((batch_size, v.size, v.size, 3), np.float32)
                       for name, v in method.views.items()},
            "masks": np.zeros((batch_size, method.mask_size, method.mask_size), np.float32),
            "labels": np.zeros((batch_size,), np.int32),
            "class_name": np.array(["object"] * batch_size)}


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    return int(config.train.epochs) * int(steps_per_epoch)


def _every(n: int, steps_per_epoch: int) -> int:
    return steps_per_epoch if n == 0 else n


# ---- the loop -------------------------------------------------------------------------------
def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
          progress: bool = True, stop_at_step: int | None = None) -> TrainResult:
    """Trains `config` in `workdir` (resuming if it holds a run); returns the final state.

    `stop_at_step`: return right after that step (and its checkpoint, if one is due) as if the
    process had been killed there - for resume tests and time-limited jobs.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    method = methods.build(config)
    if config.train.feature_cache and not method.supports_feature_cache:
        raise ValueError(f"config.train.feature_cache=True, but method {method.name!r} trains "
                         f"through its backbone and cannot use the feature cache")
    train_records, eval_sets = check_inputs(method, config, workdir)
    checkpoint_lib.write_or_check_config(workdir, config)

    mesh = sharding_lib.make_mesh()
    batch_size = int(config.data.batch_size)
    sharding_lib.check_batch_divisible(batch_size, mesh)
    process_index, process_count = jax.process_index(), jax.process_count()

    params = method.init(jax.random.PRNGKey(config.seed))
    trainable, frozen, layout = state_lib.split_params(params, method.trainable_mask(params))
    del params
    frozen_fingerprint = state_lib.fingerprint(frozen)
    frozen = sharding_lib.replicate(frozen, mesh)
    trainable = sharding_lib.replicate(trainable, mesh)
    log.info("%d trainable / %d frozen parameters", _count(trainable), _count(frozen))

    from_features = bool(config.train.feature_cache)
    feature_dtypes = None
    dummy_host = _dummy_host_batch(method, batch_size)
    dummy = method.prepare_batch(dummy_host)
    if from_features:
        feature_fn = step_lib.make_feature_fn(method, layout, mesh)
        feature_shapes = jax.eval_shape(feature_fn, trainable, frozen, dummy)
        cache_root = pathlib.Path(config.train.cache_dir or workdir / "feature_cache")
        key = cache_lib.cache_key(method, config, frozen_fingerprint, train_records)

        def extract(host_batch):
            batch = data.make_global_batch(method.prepare_batch(host_batch), mesh)
            return feature_fn(trainable, frozen, batch)

        def gather(tree):
            if process_count == 1:
                return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))
            from jax.experimental import multihost_utils

            return multihost_utils.process_allgather(tree, tiled=True)

        # Extraction batches: eval_batch_size rounded up to a multiple of the device count.
        extract_batch = -(-int(config.data.eval_batch_size) // mesh.size) * mesh.size

        def batches():
            return data.eval_batches(train_records, method.views, method.mask_size,
                                     extract_batch, process_index=process_index,
                                     process_count=process_count)

        cache = cache_lib.build_or_open(cache_root, key, train_records, batches, extract, gather,
                                        feature_shapes)
        loader = cache_lib.CachedLoader(cache, batch_size, config.seed, process_index,
                                        process_count,
                                        class_names=[r.class_name for r in train_records])
        feature_dtypes = cache.dtypes

        def to_device(host):
            # prepare_batch keeps masks/labels and adds method keys (e.g. per-class prompt ids).
            prepared = method.prepare_batch({k: v for k, v in host.items() if k != "features"})
            return data.make_global_batch({**prepared, "features": host["features"]}, mesh)

        del dummy_host["images"]
        dummy = {**method.prepare_batch(dummy_host), "features": feature_shapes}
    else:
        loader = data.TrainLoader(train_records, method.views, method.mask_size, batch_size,
                                  seed=config.seed, process_index=process_index,
                                  process_count=process_count,
                                  num_workers=config.data.num_workers,
                                  prefetch=config.data.prefetch)
        # Every key of the prepared batch (methods may add some, e.g. SSVP's prompt ids),
        # sharded on its leading (batch) axis.
        to_device = lambda host: data.make_global_batch(method.prepare_batch(host), mesh)

    steps_per_epoch = loader.steps_per_epoch
    total_steps = total_train_steps(config, steps_per_epoch)
    tx, schedules = optimizer_lib.make_optimizer(config.optim, layout.trainable_paths, total_steps)
    loss_terms = step_lib.loss_term_names(method, layout, from_features, trainable, frozen, dummy)
    replicated = sharding_lib.replicated(mesh)
    train_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    state = jax.jit(lambda t: state_lib.init_state(t, tx, train_rng, loss_terms),
                    out_shardings=replicated)(trainable)


    ckpts = checkpoint_lib.RunCheckpoints(workdir, config.train.keep, config.train.best_metric)
    start = ckpts.latest_step() or 0
    if start:
        state, data_state, meta = ckpts.restore(start, state)
        if meta.get("frozen_fingerprint") != frozen_fingerprint:
            raise checkpoint_lib.ConfigMismatchError(
                f"{workdir}: the frozen weights differ from those the run started with "
                f"(weights files changed?); refusing to resume")
        loader.set_state(data_state)
        log.info("Resumed %s at step %d / %d", workdir, start, total_steps)
    meta = {"frozen_fingerprint": frozen_fingerprint, "loss_terms": list(loss_terms),
            "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
            "process_count": process_count}

    step_fn = step_lib.make_train_step(method, layout, tx, loss_terms, mesh, from_features,
                                       feature_dtypes=feature_dtypes)
    writer = MetricsWriter(workdir, enabled=process_index == 0)
    ckpt_every = _every(int(config.train.ckpt_every), steps_per_epoch)
    eval_every = _every(int(config.train.eval_every), steps_per_epoch)
    log_every = max(int(config.train.log_every), 1)
    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=start, disable=not progress or process_index != 0,
               dynamic_ncols=True, mininterval=1.0, desc="train")
    last_scalars, eval_metrics = {}, {}
    pending = []             # (step, metrics) not yet fetched
    interval_start, interval_steps = time.perf_counter(), 0
    step = start
    iterator = iter(loader)
    try:
        while step < total_steps:
            batch = to_device(next(iterator))
            state, metrics = step_fn(state, frozen, batch)
            step += 1
            interval_steps += 1
            pending.append((step, metrics))
            bar.update(1)
            final = step == total_steps
            stopping = stop_at_step is not None and step >= stop_at_step
            if step % log_every == 0 or final or stopping:
                _check_finite(state, loss_terms, ckpts)
                elapsed = time.perf_counter() - interval_start
                ips = interval_steps * batch_size / max(elapsed, 1e-9)
                last_scalars = _host_scalars(pending[-1][1])
                for s, m in pending:
                    scalars = _host_scalars(m)
                    if s == step:
                        scalars["images_per_s"] = ips
                        lrs = optimizer_lib.current_lrs(schedules, s - 1,
                                                        config.optim.accum_steps)
                        scalars.update({f"lr/{k}": v for k, v in lrs.items()})
                    writer.write(s, scalars)
                pending = []
                bar.set_postfix(loss=f"{last_scalars['loss']:.4f}", img_s=f"{ips:.1f}",
                                refresh=False)
                interval_start, interval_steps = time.perf_counter(), 0
            if step % ckpt_every == 0 or final or stopping:
                _check_finite(state, loss_terms, ckpts)
                ckpts.save(step, state, loader.get_state(), {**meta, "step": step})
            if eval_sets and int(config.train.eval_every) >= 0 and (step % eval_every == 0
                                                                     or final):
                _check_finite(state, loss_terms, ckpts)
                eval_metrics = _evaluate(method, config, state, frozen, layout, eval_sets,
                                         workdir, step, final, mesh, progress)
                score = _best_score(eval_metrics, config.train.best_metric)
                writer.write(step, {f"{d}/{k}": v for d, r in eval_metrics.items()
                                    for k, v in r.get("mean", {}).items()}, kind="eval")
                if score is not None:
                    ckpts.save_best(step, state["params"],
                                    {config.train.best_metric: score}, {**meta, "step": step})
            if stopping:
                break
    finally:
        if hasattr(loader, "close"):
            loader.close()
        bar.close()
        writer.close()
        ckpts.close()
    return TrainResult(step=step, total_steps=total_steps,
                       params={k: _host(v) for k, v in state["params"].items()},
                       opt_state=jax.tree_util.tree_map(_host, state["opt_state"]),
                       final_metrics=last_scalars, eval_metrics=eval_metrics, workdir=workdir)


def _count(tree: dict) -> int:
    return int(sum(math.prod(v.shape) for v in tree.values()))


def _host_scalars(metrics: dict) -> dict:
    return {k: float(_host(v)) for k, v in metrics.items()}


def _check_finite(state: dict, loss_terms: tuple[str, ...], ckpts) -> None:
    bad_step = int(_host(state["nonfinite_step"]))
    if bad_step < 0:
        return
    flags = _host(state["nonfinite_terms"])
    names = [n for n, bad in zip(("loss", *loss_terms, "grads"), flags, strict=True) if bad]
    last = ckpts.latest_step()
    kept = (f"the last good checkpoint (step {last}) is intact" if last is not None
            else "no checkpoint had been written yet")
    raise NonFiniteError(
        f"non-finite value at train step {bad_step + 1} (0-based {bad_step}) in: "
        f"{', '.join(names)}; training stopped, no update from that step was applied, {kept}")


def _evaluate(method, config, state, frozen, layout, eval_sets, workdir, step, final, mesh,
              progress):
    from zsad_jax import evaluation

    params = state_lib.merge_params(state["params"], frozen, layout)
    base = workdir / "eval" if final else workdir / "eval" / f"step_{step}"
    results = {}
    for name, records in eval_sets.items():
        results[name] = evaluation.evaluate_records(method, params, records, config,
                                                    base / name, name, mesh=mesh,
                                                    progress=progress)
    return results


def _best_score(eval_metrics: dict, metric: str) -> float | None:
    """Mean over evaluated datasets of `mean[metric]` (datasets where it is undefined skipped)."""
    if not metric:
        return None
    values = [r.get("mean", {}).get(metric) for r in eval_metrics.values()]
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


__all__ = ["MissingInputsError", "NonFiniteError", "TrainResult", "check_inputs", "train"]
