"""The train state: trainable parameters split from frozen ones, optimizer state, NaN guard.

Parameters are split by `method.trainable_mask(params)` into two flat dicts keyed by the
'/'-joined parameter path (`zsad_jax.tree.path_str`):

* `trainable` - differentiated, updated, checkpointed; the only thing the optimizer sees;
* `frozen`    - never differentiated (the loss is differentiated w.r.t. `trainable` only, so no
  gradient of a frozen weight is ever computed, while gradients still flow *through* frozen
  layers to trainable inputs, as VisualAD needs), never updated, never checkpointed (rebuilt
  from `method.init` + the converted weights; its fingerprint is checked on load).

`merge(trainable, frozen, treedef_info)` rebuilds the method's own pytree for its functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zsad_jax.tree import path_str

Params = Any


@dataclasses.dataclass(frozen=True)
class ParamLayout:
    """How the method's params pytree is rebuilt from the two flat dicts."""

    treedef: Any
    paths: tuple[str, ...]            # in leaf order
    trainable_paths: tuple[str, ...]
    frozen_paths: tuple[str, ...]


def split_params(params: Params, mask: Params) -> tuple[dict, dict, ParamLayout]:
    """(params, bool mask of the same structure) -> (trainable, frozen, layout)."""
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    mask_leaves = jax.tree_util.tree_leaves(mask)
    if len(mask_leaves) != len(leaves_with_path):
        raise ValueError(f"trainable mask has {len(mask_leaves)} leaves, params have "
                         f"{len(leaves_with_path)}")
    paths = tuple(path_str(path) for path, _ in leaves_with_path)
    if len(set(paths)) != len(paths):
        raise ValueError("parameter paths are not unique: " + ", ".join(
            sorted({p for p in paths if paths.count(p) > 1})))
    trainable, frozen = {}, {}
    for path, (_, leaf), is_trainable in zip(paths, leaves_with_path, mask_leaves, strict=True):
        (trainable if bool(is_trainable) else frozen)[path] = leaf
    if not trainable:
        raise ValueError("the method marks no parameter as trainable (method.trainable matches "
                         "none of: " + ", ".join(paths[:8]) + (" ..." if len(paths) > 8 else "") + ")")
    layout = ParamLayout(treedef, paths, tuple(trainable), tuple(frozen))
    return trainable, frozen, layout


def merge_params(trainable: dict, frozen: dict, layout: ParamLayout) -> Params:
    """Inverse of `split_params`: the method's params pytree."""
    leaves = [trainable[p] if p in trainable else frozen[p] for p in layout.paths]
    return jax.tree_util.tree_unflatten(layout.treedef, leaves)


def init_state(trainable: dict, tx, rng: jax.Array, loss_terms: tuple[str, ...]) -> dict:
    """The train state pytree: step, trainable params, optimizer state, rng, NaN-guard record.

    `nonfinite_step` is -1 until a step sees a non-finite loss/term/gradient; from then on no
    update is applied (the state keeps the last good values) and `nonfinite_terms` says which
    of ("loss", *loss_terms, "grads") were not finite at that step.
    """
    return dict(
        step=jnp.zeros((), jnp.int32),
        params=trainable,
        opt_state=tx.init(trainable),
        rng=rng,
        nonfinite_step=jnp.full((), -1, jnp.int32),
        nonfinite_terms=jnp.zeros((len(loss_terms) + 2,), bool),
    )


def fingerprint(tree: dict) -> str:
    """sha256 over the paths, shapes, dtypes and bytes of a flat `{path: array}` dict."""
    digest = hashlib.sha256()
    for path in sorted(tree):
        value = np.asarray(jax.device_get(tree[path]))
        digest.update(f"{path}:{value.shape}:{value.dtype};".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()
