"""The compiled train step: one `jax.jit` with the state donated, sharded over the mesh.

    step_fn(state, frozen, batch) -> (new_state, metrics)

`state` (see `training.state.init_state`) is replicated, `frozen` is the replicated dict of frozen
parameters (an argument, never a baked-in constant, never differentiated), `batch` is sharded over
the mesh's "data" axis. The loss is the method's `loss(params, batch, rng)` or, when training from
the feature cache, `loss_from_features(params, batch["features"], batch, rng)`.

NaN guard: if the loss, a loss term or a gradient is not finite, the update is not applied, the
step number and the offending terms are recorded in the state (`nonfinite_step`,
`nonfinite_terms`), and every later step is a no-op; the host checks the record before each
checkpoint and at every log step, and stops the run naming the step and the terms.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from zsad_jax.training.state import ParamLayout, merge_params


def make_loss_fn(method, layout: ParamLayout, from_features: bool,
                 feature_dtypes: tuple | None = None) -> Callable:
    """loss_fn(trainable, frozen, batch, rng) -> (loss, terms).

    From the cache, features arrive in bf16 and are cast back to the dtypes `frozen_features`
    returned (`feature_dtypes`, in leaf order) before the method sees them.
    """

    def loss_fn(trainable, frozen, batch, rng):
        params = merge_params(trainable, frozen, layout)
        if from_features:
            features = batch["features"]
            if feature_dtypes is not None:
                leaves, treedef = jax.tree_util.tree_flatten(features)
                features = jax.tree_util.tree_unflatten(treedef, [
                    x.astype(d) for x, d in zip(leaves, feature_dtypes, strict=True)])
            return method.loss_from_features(params, features, batch, rng)
        return method.loss(params, batch, rng)

    return loss_fn


def loss_term_names(method, layout: ParamLayout, from_features: bool, state_params: dict,
                    frozen: dict, batch: dict) -> tuple[str, ...]:
    """Names of the method's logged loss terms (abstract evaluation, nothing is computed)."""
    loss_fn = make_loss_fn(method, layout, from_features)
    _, terms = jax.eval_shape(loss_fn, state_params, frozen, batch, jax.random.key(0))
    return tuple(sorted(terms))


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(method, layout: ParamLayout, tx: optax.GradientTransformation,
                    loss_terms: tuple[str, ...], mesh: jax.sharding.Mesh, from_features: bool,
                    feature_dtypes: tuple | None = None) -> Callable:
    """The jitted, state-donating train step (see module docstring)."""
    loss_fn = make_loss_fn(method, layout, from_features, feature_dtypes)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state, frozen, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        (loss, terms), grads = grad_fn(state["params"], frozen, batch, rng)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)

        finite = jnp.stack([jnp.isfinite(loss).all()]
                           + [jnp.isfinite(terms[name]).all() for name in loss_terms]
                           + [_all_finite(grads)])
        first_bad = (state["nonfinite_step"] < 0) & ~jnp.all(finite)
        apply = (state["nonfinite_step"] < 0) & jnp.all(finite)
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(apply, n, o), new, old)
        new_state = dict(
            step=state["step"] + 1,
            params=keep(params, state["params"]),
            opt_state=keep(opt_state, state["opt_state"]),
            rng=state["rng"],
            nonfinite_step=jnp.where(first_bad, state["step"], state["nonfinite_step"]),
            nonfinite_terms=jnp.where(first_bad, ~finite, state["nonfinite_terms"]),
        )
        metrics = {"loss": loss, **{name: terms[name] for name in loss_terms},
                   "grad_norm": optax.tree.norm(grads)}
        return new_state, metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(step, donate_argnums=(0,), out_shardings=(replicated, replicated))


def make_feature_fn(method, layout: ParamLayout, mesh: jax.sharding.Mesh) -> Callable:
    """Jitted `frozen_features` for the feature cache: (trainable, frozen, batch) -> features,
    sharded like the batch."""

    def features(trainable, frozen, batch):
        return method.frozen_features(merge_params(trainable, frozen, layout), batch)

    return jax.jit(features, out_shardings=NamedSharding(mesh, PartitionSpec("data")))
