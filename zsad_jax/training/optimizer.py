"""Optimizer of the trainable parameters: AdamW, learning-rate schedules, per-group rates.

The optimizer only ever sees the trainable parameters (a flat `{path: array}` dict, see
`training.state`), so frozen backbone weights have no optimizer state at all.

Schedules (`config.optim.schedule`), all with an optional linear warmup from 0 over `warmup_steps`:

* ``"cosine"``: cosine decay from a group's `lr` to its floor `end` (SSVP: "a cosine decay
  scheduler", no floor stated, so 0; VisualAD's release: `eta_min = 0.1 * lr`);
* ``"polynomial"``: `(lr - end) * (1 - t/T)^power + end` (SGNet: polynomial decay, power 1);
* ``"constant"``: `lr`.

`t`, `T` count optimizer updates (train steps / accum_steps) after warmup, or, with
`schedule_unit="epoch"`, epochs: the rate then changes once per epoch and is constant within one
(PyTorch's `scheduler.step()` after each epoch, as VisualAD's release does). The floor `end` is
`end_lr_factor` x the group's own rate (`end_lr_of="group"`), or x the base `lr` for every group
(`"base"`: PyTorch's `CosineAnnealingLR(eta_min=...)`, one absolute floor for all groups; a group
that starts at the floor stays there).

`clip_each` (regexes) clips the gradient of each matching parameter by its own norm, to
`clip_each_norm` (VisualAD's release: each inserted token separately, norm 1).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import ml_collections
import optax

from zsad_jax.tree import unmatched_patterns

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "polynomial", "constant")


def parse_lr_groups(groups: Sequence[str]) -> list[tuple[re.Pattern, float]]:
    """`("prompt=5e-4", "vae|proj=1e-4")` -> [(regex, lr), ...]; the last '=' splits."""
    parsed = []
    for item in groups:
        pattern, sep, value = str(item).rpartition("=")
        if not sep or not pattern:
            raise ValueError(f"config.optim.lr_groups entry {item!r} must look like 'REGEX=LR'")
        try:
            lr = float(value)
        except ValueError:
            raise ValueError(f"config.optim.lr_groups entry {item!r}: {value!r} is not a "
                             f"learning rate") from None
        try:
            parsed.append((re.compile(pattern), lr))
        except re.error as e:
            raise ValueError(f"config.optim.lr_groups entry {item!r}: bad regex: {e}") from None
    return parsed


def group_labels(paths: Sequence[str], groups: Sequence[str], default_lr: float
                 ) -> tuple[dict[str, str], dict[str, float]]:
    """Assigns each '/'-joined path to a group: ({path: label}, {label: lr}); first match wins.

    A group whose regex matches no trainable parameter is named in a warning (a typo there would
    otherwise train those parameters at the default rate without a word).
    """
    parsed = parse_lr_groups(groups)
    for pattern in unmatched_patterns(paths, [regex.pattern for regex, _ in parsed]):
        log.warning("config.optim.lr_groups: %r matches no trainable parameter (trainable: %s%s)",
                    pattern, ", ".join(list(paths)[:6]), " ..." if len(paths) > 6 else "")
    labels, rates = {}, {}
    for path in paths:
        for index, (regex, lr) in enumerate(parsed):
            if regex.search(path):
                label = f"group{index}"
                rates[label] = lr
                break
        else:
            label = "default"
            rates[label] = default_lr
        labels[path] = label
    return labels, rates


def make_schedule(optim: ml_collections.ConfigDict, peak_lr: float, total_updates: int,
                  updates_per_epoch: int = 1) -> optax.Schedule:
    """The learning rate of one group as a function of the optimizer update count."""
    if optim.schedule not in SCHEDULES:
        raise ValueError(f"config.optim.schedule={optim.schedule!r}; known: {', '.join(SCHEDULES)}")
    warmup = int(optim.warmup_steps)
    if warmup < 0:
        raise ValueError(f"config.optim.warmup_steps={warmup} must be >= 0")
    per_epoch = optim.get("schedule_unit", "step") == "epoch"
    unit = max(int(updates_per_epoch), 1) if per_epoch else 1
    decay = max(-(-(int(total_updates) - warmup) // unit), 1)      # updates, or epochs
    base = float(optim.lr) if optim.get("end_lr_of", "group") == "base" else peak_lr
    end_lr = base * float(optim.end_lr_factor)
    if optim.schedule == "cosine":
        # SSVP, VisualAD: cosine decay from peak_lr to end_lr.
        def main(t):
            t = jnp.minimum(t, decay)
            return end_lr + (peak_lr - end_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * t / decay))
    elif optim.schedule == "polynomial":
        # SGNet: polynomial decay (power 1 = linear) to end_lr.
        main = optax.polynomial_schedule(peak_lr, end_lr, float(optim.power), decay)
    else:
        main = optax.constant_schedule(peak_lr)
    if per_epoch:
        schedule = (lambda count, main=main: main(count // unit))
    else:
        schedule = main
    if warmup == 0:
        return schedule
    ramp = optax.linear_schedule(0.0, peak_lr, warmup)
    return optax.join_schedules([ramp, schedule], [warmup])


def clip_each(max_norm: float, patterns: Sequence[str]) -> optax.GradientTransformation:
    """Scales the gradient of every '/'-joined parameter path matching one of `patterns` to norm
    <= max_norm, each by its own norm (torch `clip_grad_norm_([p], max_norm)` on each p: factor
    max_norm / (norm + 1e-6) when below 1). Other gradients pass unchanged."""
    compiled = [re.compile(p) for p in patterns]

    def update(updates, state, params=None):
        del params

        def clip(path, g):
            if not any(c.search(path) for c in compiled):
                return g
            factor = max_norm / (jnp.sqrt(jnp.sum(jnp.square(g))) + 1e-6)
            return g * jnp.minimum(factor, 1.0)

        return {path: clip(path, g) for path, g in updates.items()}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(optim: ml_collections.ConfigDict, trainable_paths: Sequence[str],
                   total_steps: int, steps_per_epoch: int = 1
                   ) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
    """The optax transformation for the flat `{path: array}` trainable dict, and the schedules.

    Chain: per-parameter clipping (`clip_each`) -> global-norm clipping (if `grad_clip_norm > 0`)
    -> per-group AdamW with decoupled weight decay (decay scaled by the group's scheduled lr, as
    in PyTorch's AdamW) -> accumulation over `accum_steps` micro-batches (optax.MultiSteps: the
    update uses the mean gradient).
    """
    accum = int(optim.accum_steps)
    if accum < 1:
        raise ValueError(f"config.optim.accum_steps={accum} must be >= 1")
    total_updates = max(int(total_steps) // accum, 1)
    updates_per_epoch = max(int(steps_per_epoch) // accum, 1)
    labels, rates = group_labels(trainable_paths, optim.lr_groups, float(optim.lr))
    schedules = {label: make_schedule(optim, lr, total_updates, updates_per_epoch)
                 for label, lr in rates.items()}
    transforms = {label: optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                                     weight_decay=optim.weight_decay)
                  for label, schedule in schedules.items()}
    tx = optax.multi_transform(transforms, lambda params: {p: labels[p] for p in params})
    if optim.grad_clip_norm and optim.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(float(optim.grad_clip_norm)), tx)
    if optim.get("clip_each", ()):
        unmatched = unmatched_patterns(trainable_paths, optim.clip_each)
        for pattern in unmatched:
            log.warning("config.optim.clip_each: %r matches no trainable parameter", pattern)
        tx = optax.chain(clip_each(float(optim.clip_each_norm), optim.clip_each), tx)
    if accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum)
    return tx, schedules


def current_lrs(schedules: Mapping[str, optax.Schedule], step: int, accum_steps: int
                ) -> dict[str, float]:
    """Learning rate of each group at train step `step` (for logging)."""
    update = step // max(int(accum_steps), 1)
    return {label: float(schedule(update)) for label, schedule in schedules.items()}
