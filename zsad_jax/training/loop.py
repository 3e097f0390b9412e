"""The train loop: `train(config, workdir, evaluator=...)`; knows nothing method-specific.

Order of a run (nothing is compiled before step 4, so a missing input fails fast):

1. build the method; check every file it needs (`method.required_files()`) and the data protocol
   (`data.resolve_protocol`): all missing inputs are reported at once, with the commands that
   provide them (`MissingInputsError`);
2. lock the run directory (a second training of it is refused at once); write
   `<workdir>/config.json`, or compare with it when the run has a checkpoint (resume);
3. build params (split trainable / frozen), optimizer, mesh, data loader (or the feature cache,
   `feature_cache.training_loader`); with `train.remat="auto"`, the remat policy whose compiled
   step fits the device's memory (`memory.choose_remat`);
4. restore the latest checkpoint if any (state + data iterator position), trim the logs to it and
   run the evaluation that was due at it if it is missing; then step: log every `log_every`,
   checkpoint every `ckpt_every` (0: each epoch end), evaluate every `eval_every` (0: each epoch
   end, < 0: never), always checkpoint + evaluate at the end.

Evaluation is injected: `evaluator(method, params, record_sets, out_root, checkpoint)` ->
{dataset: result} and `evaluator.has_results(record_sets, out_root, checkpoint)` (a
`zsad_jax.evaluation.Evaluator`); this package never imports `zsad_jax.evaluation`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from zsad_jax import data, devices, methods
from zsad_jax.config_types import ConfigError
from zsad_jax.training import checkpoint as checkpoint_lib
from zsad_jax.training import feature_cache as cache_lib
from zsad_jax.training import memory
from zsad_jax.training import optimizer as optimizer_lib
from zsad_jax.training import state as state_lib
from zsad_jax.training import step as step_lib
from zsad_jax.training.metrics_writer import MetricsWriter
from zsad_jax.training.progress import Progress

log = logging.getLogger(__name__)

class MissingInputsError(FileNotFoundError):
    """Weights or datasets the config needs are not there (raised before compiling)."""


class NonFiniteError(FloatingPointError):
    """A non-finite loss, loss term or gradient; names the step and the terms."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Which parameters an evaluation saw: this run's checkpoint of `step`."""

    run_dir: str
    kind: str
    step: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TrainResult:
    step: int                     # train steps done
    total_steps: int
    params: dict                  # trainable params, numpy, {path: array}
    opt_state: Any                # numpy pytree
    final_metrics: dict           # last logged train scalars
    eval_metrics: dict            # {dataset: metrics.json content} of the last evaluation
    workdir: pathlib.Path


# ---- 1. inputs ------------------------------------------------------------------------------
def check_inputs(method, config: ml_collections.ConfigDict, workdir: pathlib.Path):
    """(train_records, {dataset: eval records}, {selection dataset: records}); raises
    MissingInputsError listing every missing weights folder and dataset with the commands that
    provide them."""
    problems = []
    for path, how in method.required_files():
        if not pathlib.Path(path).expanduser().exists():
            problems.append(f"- missing {path} (looked at {pathlib.Path(path).expanduser().absolute()})"
                            f"\n    provide it: {how}")
    train_records = eval_sets = None
    selection = {}
    try:
        train_records, eval_sets = data.resolve_protocol(config, workdir)
        best_on = config.train.best_on if config.train.best_metric else ""
        if best_on in eval_sets:
            raise ConfigError(f"config.train.best_on={best_on!r} is an evaluation target of "
                              f"protocol {config.data.protocol!r}: selecting a checkpoint on it "
                              f"breaks the zero-shot protocol; name another dataset")
        if best_on:
            selection = {best_on: data.load_dataset(config, best_on, workdir)}
    except (FileNotFoundError, NotADirectoryError, data.DatasetError) as e:
        problems.append(f"- data: {e}")
    if problems:
        raise MissingInputsError(
            f"config {config.method!r} (protocol {config.data.protocol!r}) cannot start; "
            f"nothing was compiled. Missing inputs:\n" + "\n".join(problems))
    if not train_records:
        raise MissingInputsError(f"protocol {config.data.protocol!r} gave no training records")
    return train_records, eval_sets, selection


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    return int(config.train.epochs) * int(steps_per_epoch)


def _every(n: int, steps_per_epoch: int) -> int:
    return steps_per_epoch if n == 0 else n


# ---- the loop -------------------------------------------------------------------------------
def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
          evaluator: Callable | None = None, progress: bool = True,
          stop_at_step: int | None = None) -> TrainResult:
    """Trains `config` in `workdir` (resuming if it holds a run); returns the final state.

    evaluator: called at evaluation steps as `evaluator(method, params, record_sets, out_root,
    checkpoint)` -> {dataset: result} (None: no evaluation). `stop_at_step`: return right after
    that step (and its checkpoint, if one is due) as if the process had been killed there - for
    resume tests and time-limited jobs.
    """
    workdir = pathlib.Path(workdir)
    method = methods.build(config)
    if config.train.feature_cache and not method.supports_feature_cache:
        raise ConfigError(f"config.train.feature_cache=True, but method {method.name!r} trains "
                          f"through its backbone and cannot use the feature cache")
    train_records, eval_sets, selection = check_inputs(method, config, workdir)
    with checkpoint_lib.RunLock(workdir):
        return _train(method, config, workdir, train_records, eval_sets, selection, evaluator,
                      progress, stop_at_step)


def _train(method, config, workdir, train_records, eval_sets, selection, evaluator, progress,
           stop_at_step) -> TrainResult:
    mesh = devices.make_mesh()
    batch_size = int(config.data.batch_size)
    devices.check_batch_divisible(batch_size, mesh)
    ckpts = checkpoint_lib.RunCheckpoints(workdir, config.train.keep, config.train.best_metric)
    start = ckpts.latest_step() or 0
    checkpoint_lib.write_or_check_config(workdir, config, has_checkpoint=bool(start))
    process_index, process_count = jax.process_index(), jax.process_count()

    params = method.init(jax.random.PRNGKey(config.seed))
    trainable, frozen, layout = state_lib.split_params(params, method.trainable_mask(params))
    del params
    frozen_fingerprint = state_lib.fingerprint(frozen)
    frozen = devices.replicate(frozen, mesh)
    trainable = devices.replicate(trainable, mesh)
    log.info("%d trainable / %d frozen parameters", _count(trainable), _count(frozen))

    from_features = bool(config.train.feature_cache)
    feature_dtypes = None
    if from_features:
        loader, feature_shapes, feature_dtypes = cache_lib.training_loader(
            method, config, workdir, train_records, trainable, frozen, layout, mesh,
            frozen_fingerprint)
        host = data.dummy_host_batch(method.views, method.mask_size, batch_size, with_images=False)
        dummy = {**devices.to_device(method, host, mesh), "features": feature_shapes}
    else:
        loader = data.TrainLoader(train_records, method.views, method.mask_size, batch_size,
                                  seed=config.seed, process_index=process_index,
                                  process_count=process_count,
                                  num_workers=config.data.num_workers,
                                  prefetch=config.data.prefetch,
                                  drop_last=config.data.drop_last)
        dummy = devices.to_device(method, data.dummy_host_batch(method.views, method.mask_size,
                                                                batch_size), mesh)

    if loader.remainder % mesh.size:
        raise ConfigError(f"config.data.drop_last=False keeps a last batch of {loader.remainder} "
                          f"records each epoch, which does not divide over {mesh.size} devices; "
                          f"set config.data.drop_last=True")
    steps_per_epoch = loader.steps_per_epoch
    total_steps = total_train_steps(config, steps_per_epoch)
    tx, schedules = optimizer_lib.make_optimizer(config.optim, layout.trainable_paths, total_steps,
                                                 steps_per_epoch)
    loss_terms = step_lib.loss_term_names(method, layout, from_features, trainable, frozen, dummy)
    train_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    state = jax.jit(lambda t: state_lib.init_state(t, tx, train_rng, loss_terms),
                    out_shardings=devices.replicated(mesh))(trainable)

    if start:
        state, data_state, meta = ckpts.restore(start, state)
        if meta.get("frozen_fingerprint") != frozen_fingerprint:
            raise checkpoint_lib.ConfigMismatchError(
                f"{workdir}: the frozen weights differ from those the run started with "
                f"(weights files changed?); refusing to resume")
        loader.set_state(data_state)
        log.info("resuming %s from its checkpoint of step %d / %d", workdir, start, total_steps)
    elif (workdir / MetricsWriter.FILE).exists():
        log.info("%s holds logs but no complete checkpoint: starting again from step 0", workdir)
    meta = {"frozen_fingerprint": frozen_fingerprint, "loss_terms": list(loss_terms),
            "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
            "process_count": process_count}

    method, step_fn = memory.train_step_for(
        method, config, lambda m: step_lib.make_train_step(m, layout, tx, loss_terms, mesh,
                                                           from_features,
                                                           feature_dtypes=feature_dtypes),
        (state, frozen, dummy))
    writer = MetricsWriter(workdir, enabled=process_index == 0, resume_step=start)
    ckpt_every = _every(int(config.train.ckpt_every), steps_per_epoch)
    eval_every = _every(int(config.train.eval_every), steps_per_epoch)
    log_every = max(int(config.train.log_every), 1)
    record_sets = {**eval_sets, **selection}

    def eval_due(step: int) -> bool:
        return (evaluator is not None and bool(record_sets) and int(config.train.eval_every) >= 0
                and (step % eval_every == 0 or step == total_steps))

    def evaluate(step: int) -> dict:
        _check_finite(state, loss_terms, ckpts)
        params = state_lib.merge_params(state["params"], frozen, layout)
        results = evaluator(method, params, record_sets, workdir / checkpoint_lib.EVAL_DIR,
                            Checkpoint(str(workdir), "checkpoints", step))
        writer.write(step, {f"{d}/{k}": v for d, r in results.items()
                            for k, v in r.get("mean", {}).items()}, kind="eval")
        score = _selection_score(results, selection, config.train.best_metric)
        if score is not None:
            ckpts.save_best(step, state["params"], {config.train.best_metric: score},
                            {**meta, "step": step})
        return {name: results[name] for name in eval_sets}

    bar = Progress(total_steps, start, enabled=progress and process_index == 0, desc="train")
    last_scalars, eval_metrics = {}, {}
    try:
        resumed = Checkpoint(str(workdir), "checkpoints", start)
        if start and eval_due(start) and not evaluator.has_results(
                record_sets, workdir / checkpoint_lib.EVAL_DIR, resumed):
            log.info("the evaluation of step %d was interrupted: running it again", start)
            eval_metrics = evaluate(start)
        pending = []             # (step, metrics) not yet fetched
        interval_start, interval_steps = time.perf_counter(), 0
        step = start
        iterator = iter(loader)
        while step < total_steps:
            batch = devices.to_device(method, next(iterator), mesh)
            state, metrics = step_fn(state, frozen, batch)
            step += 1
            interval_steps += 1
            pending.append((step, metrics))
            bar.update(step)
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
                bar.postfix(loss=last_scalars["loss"], images_per_s=ips)
                interval_start, interval_steps = time.perf_counter(), 0
            if step % ckpt_every == 0 or final or stopping:
                _check_finite(state, loss_terms, ckpts)
                ckpts.save(step, state, loader.get_state(), {**meta, "step": step})
            if eval_due(step):
                eval_metrics = evaluate(step)
            if stopping:
                break
        if step == total_steps:
            checkpoint_lib.mark_final(workdir, step)
    finally:
        if hasattr(loader, "close"):
            loader.close()
        bar.close()
        writer.close()
        ckpts.close()
    return TrainResult(step=step, total_steps=total_steps,
                       params={k: devices.local_value(v) for k, v in state["params"].items()},
                       opt_state=jax.tree_util.tree_map(devices.local_value, state["opt_state"]),
                       final_metrics=last_scalars, eval_metrics=eval_metrics, workdir=workdir)


def _count(tree: dict) -> int:
    return int(sum(math.prod(v.shape) for v in tree.values()))


def _host_scalars(metrics: dict) -> dict:
    return {k: float(devices.local_value(v)) for k, v in metrics.items()}


def _check_finite(state: dict, loss_terms: tuple[str, ...], ckpts) -> None:
    bad_step = int(devices.local_value(state["nonfinite_step"]))
    if bad_step < 0:
        return
    flags = devices.local_value(state["nonfinite_terms"])
    names = [n for n, bad in zip(("loss", *loss_terms, "grads"), flags, strict=True) if bad]
    last = ckpts.latest_step()
    kept = (f"the last good checkpoint (step {last}) is intact" if last is not None
            else "no checkpoint had been written yet")
    raise NonFiniteError(
        f"non-finite value at train step {bad_step + 1} (0-based {bad_step}) in: "
        f"{', '.join(names)}; training stopped, no update from that step was applied, {kept}")


def _selection_score(results: dict, selection: dict, metric: str) -> float | None:
    """Mean over the selection datasets of `mean[metric]` (undefined ones skipped)."""
    if not metric or not selection:
        return None
    values = [results[name].get("mean", {}).get(metric) for name in selection]
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


__all__ = ["Checkpoint", "MissingInputsError", "NonFiniteError", "TrainResult", "check_inputs",
           "train"]
