"""SGNet's Adaptive Gravitational Potential Regularization (GPR): pure functions of arrays.

SGNet ("From Attraction to Equilibrium: Physics-Inspired Semantic Gravitons for Zero-Shot Anomaly
Detection", CVPR 2026), section "Adaptive Gravitational Potential Regularization":

    a_{v,n} = exp(sim(f_v, g_n)/tau) / sum_m exp(sim(f_v, g_m)/tau)          (responsibility)
    p_v^(n) = Softmax(-||f_v - g_n||_2^2),  p_t^(n) likewise                   (energy distribution)
    L_att   = 1/N sum_n (a_{v,n} + a_{t,n}) W2(p_v^(n), p_t^(n))               (attraction)
    L_equ   = 1/N sum_n (a_{v,n} + a_{t,n}) | ||f_v - g_n||^2 - ||f_t - g_n||^2 |   (equilibrium)
    L_grav  = lambda_att L_att + (1 - lambda_att) L_equ

Every function below works on ONE sample: visual tokens `f_v (P, C)`, text tokens `f_t (T, C)`,
gravitons `g (N, C)`; `gpr_loss_batch` vmaps over a batch. Nothing here has parameters.

Interpretations of what the summary leaves open (each is a `GPROptions` field, i.e. a config key
`gpr.<field>`; the default is listed first):

* What f_v and f_t are. "Each graviton g_n's responsibility for the two modalities ..." with
  "p_v^(n) = Softmax(-||f_v - g_n||^2)": a softmax needs an index to run over, and with n fixed the
  only free index is the token of f_v. So f_v is the SET of visual (patch) tokens of one image and f_t
  the set of text tokens (the normal and abnormal prompt embeddings, T = 2); the softmax runs over
  the tokens of one modality. Which visual tokens feed GPR is chosen by the method
  (`zsad_jax/methods/sgnet/method.py`, `gpr.visual_tokens`).
* `normalize` (True | False): tokens and gravitons are L2-normalized first (CLIP compares
  normalized embeddings; without it ||f - g||^2 of raw 768-d features makes every softmax one-hot).
* `responsibility` ("token_mean" | "pooled"): "a_{v,n} = exp(sim(f_v, g_n)/tau)/sum_m ...".
  token_mean: softmax over gravitons per token, averaged over the modality's tokens (the share of
  the modality that graviton n is responsible for); pooled: the literal single-vector formula on
  the mean token. `sim` is the cosine similarity; `tau` (0.07 default) is not given in the summary.
* `energy_temperature` (1.0): p^(n) = Softmax(-||f - g_n||^2 / T); T = 1 is the formula as written.
* `w2` ("feature" | "energy" | "gaussian"): what the 2-Wasserstein distance compares. "aligning not
  just the position, but the shape and curvature of the semantic field":
  - feature: p_v^(n), p_t^(n) are discrete measures on the token vectors in R^C (weights = the
    energy distributions); W2 is the EXACT discrete optimal transport with squared Euclidean cost.
    Exact in closed form when one side has two support points (normal/abnormal prompts): the
    transport is a fractional knapsack solved by one sort (`w2_two_point_discrete`).
  - energy: the 1-D distributions of the energy level ||f - g_n||^2 under p^(n) (the profile of
    the potential well); exact W2 from the quantile functions (`w2_1d_discrete`).
  - gaussian: diagonal Gaussians with the weighted means/variances of the two measures in R^C;
    exact closed form for those Gaussians (`w2_diag_gaussian`).
* `w2_squared` (False | True): the summary writes W2 (the distance, not its square). Its square
  root has an infinite slope at 0; `safe_sqrt` returns gradient 0 there instead.
* `equilibrium_energy` ("free" | "expected" | "pooled"): "| ||f_v - g_n||^2 - ||f_t - g_n||^2 |"
  for token sets. The summary's Highlights name the term: "2-Wasserstein distance for shape
  alignment, free energy difference for balancing". free: the free energy of the modality's
  tokens in the well of g_n, F = -T log mean_j exp(-E_j/T) (T = `energy_temperature`; the mean
  instead of the sum drops the constant T log(count), which would otherwise make 1369 visual
  tokens and 2 text tokens differ by T log(1369/2) whatever the features); expected: the mean
  energy under p^(n), sum_j p_j E_j (the internal energy U = F + T * entropy term); pooled: the
  literal formula on the mean token.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from zsad_jax.config_types import Section
from zsad_jax.ops import l2_normalize

RESPONSIBILITY_MODES = ("token_mean", "pooled")
W2_MODES = ("feature", "energy", "gaussian")
EQUILIBRIUM_MODES = ("free", "expected", "pooled")


@dataclasses.dataclass(frozen=True)
class GPROptions(Section):
    """Switches and constants of GPR (config section `gpr`); see the module docstring."""

    default_where = "gpr"

    attraction: bool = True            # compute L_att
    equilibrium: bool = True           # compute L_equ
    lambda_att: float = 0.6            # L_grav = lambda_att L_att + (1 - lambda_att) L_equ
    tau: float = 0.07                  # temperature of the responsibilities a_{v,n}, a_{t,n}
    normalize: bool = True             # L2-normalize tokens and gravitons first
    responsibility: Literal[RESPONSIBILITY_MODES] = "token_mean"
    energy_temperature: float = 1.0    # p^(n) = Softmax(-||f - g_n||^2 / T)
    w2: Literal[W2_MODES] = "feature"  # what the 2-Wasserstein distance compares
    w2_squared: bool = False           # W2^2 instead of W2
    equilibrium_energy: Literal[EQUILIBRIUM_MODES] = "free"   # the energy of a token set

    def check(self, where):
        self.require(where, "tau", self.tau > 0, "must be > 0")
        self.require(where, "energy_temperature", self.energy_temperature > 0, "must be > 0")
        self.require(where, "lambda_att", 0.0 <= self.lambda_att <= 1.0, "must be in [0, 1]")


# ---- small exact pieces ------------------------------------------------------------------------

def safe_sqrt(x: jax.Array) -> jax.Array:
    """sqrt(max(x, 0)) with a finite gradient everywhere (0 at x <= 0)."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
    """(P, C), (Q, C) -> (P, Q) squared Euclidean distances, clamped at 0.

    Expanded as |x|^2 + |y|^2 - 2 x.y so that (B, P=1369, N=20, C=768) never materializes.
    """
    xx = jnp.sum(x * x, axis=-1)[:, None]
    yy = jnp.sum(y * y, axis=-1)[None, :]
    return jnp.maximum(xx + yy - 2.0 * (x @ y.T), 0.0)


def cosine_similarity(x: jax.Array, y: jax.Array) -> jax.Array:
    """(P, C), (Q, C) -> (P, Q)."""
    return l2_normalize(x) @ l2_normalize(y).T


def _normalized(weights: jax.Array) -> jax.Array:
    return weights / jnp.sum(weights)


# ---- exact 2-Wasserstein distances (squared) ----------------------------------------------------

def w2_1d_discrete(x: jax.Array, a: jax.Array, y: jax.Array, b: jax.Array) -> jax.Array:
    """Squared W2 between 1-D discrete measures sum_i a_i delta(x_i) and sum_k b_k delta(y_k).

    x (P,), a (P,) >= 0, y (T,), b (T,) >= 0 (weights are normalized here). Exact:
    W2^2 = int_0^1 (F^-1(u) - G^-1(u))^2 du, and both quantile functions are constant between the
    union of the cumulative weights, so the integral is a finite sum over those intervals.
    """
    ix, iy = jnp.argsort(x), jnp.argsort(y)
    xs, ys = x[ix], y[iy]
    ca = jnp.cumsum(_normalized(a)[ix])
    cb = jnp.cumsum(_normalized(b)[iy])
    ca, cb = ca / ca[-1], cb / cb[-1]          # exact 1 at the end despite rounding
    u = jnp.sort(jnp.concatenate([ca, cb]))
    du = jnp.diff(u, prepend=jnp.zeros((1,), u.dtype))
    mid = jax.lax.stop_gradient(u - 0.5 * du)
    # F^-1(u) = x_k for the first k with F(x_k) >= u.
    qx = xs[jnp.clip(jnp.searchsorted(jax.lax.stop_gradient(ca), mid, side="left"), 0, x.shape[0] - 1)]
    qy = ys[jnp.clip(jnp.searchsorted(jax.lax.stop_gradient(cb), mid, side="left"), 0, y.shape[0] - 1)]
    return jnp.sum(du * (qx - qy) ** 2)


def w2_two_point_discrete(x: jax.Array, a: jax.Array, y: jax.Array, b: jax.Array) -> jax.Array:
    """Squared W2 between discrete measures in R^C: sum_i a_i delta(x_i) and b_0 delta(y_0) + b_1 delta(y_1).

    x (P, C), a (P,), y (2, C), b (2,). Exact optimal transport with cost |x - y|^2. With two target
    points the coupling is fixed by pi_i0 (mass from x_i to y_0): minimize
    sum_i a_i c_i1 + sum_i pi_i0 (c_i0 - c_i1) subject to sum_i pi_i0 = b_0, 0 <= pi_i0 <= a_i,
    a fractional knapsack: fill pi_i0 in increasing order of c_i0 - c_i1.
    """
    if y.shape[0] != 2:
        raise ValueError(f"w2_two_point_discrete: y must have 2 support points, got shape {y.shape}")
    a, b = _normalized(a), _normalized(b)
    cost = jnp.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)   # (P, 2), direct: exact 0s
    gain = cost[:, 0] - cost[:, 1]
    order = jnp.argsort(gain)
    a_sorted = a[order]
    before = jnp.concatenate([jnp.zeros((1,), a.dtype), jnp.cumsum(a_sorted)[:-1]])   # exclusive
    to_y0 = jnp.clip(b[0] - before, 0.0, a_sorted)
    cost_sorted = cost[order]
    # The coupling's cost term by term (no cancellation: 0 exactly when the measures coincide).
    return jnp.sum(to_y0 * cost_sorted[:, 0] + (a_sorted - to_y0) * cost_sorted[:, 1])


def weighted_moments(x: jax.Array, a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x (P, C), a (P,) -> weighted mean (C,) and per-channel variance (C,).

    The variance is E[x^2] - E[x]^2 (clamped at 0): vmapped over gravitons this is two matmuls
    with the shared x and x^2 instead of an (N, P, C) array of deviations.
    """
    a = _normalized(a)
    mean = a @ x
    return mean, jnp.maximum(a @ (x * x) - mean * mean, 0.0)


def w2_diag_gaussian(mean1: jax.Array, var1: jax.Array, mean2: jax.Array, var2: jax.Array) -> jax.Array:
    """Squared W2 between N(mean1, diag var1) and N(mean2, diag var2), closed form:
    |m1 - m2|^2 + |sqrt(v1) - sqrt(v2)|^2 (the Bures term of commuting covariances)."""
    return jnp.sum((mean1 - mean2) ** 2) + jnp.sum((safe_sqrt(var1) - safe_sqrt(var2)) ** 2)


def w2_squared_between(x: jax.Array, a: jax.Array, y: jax.Array, b: jax.Array, mode: str) -> jax.Array:
    """Squared W2 between the measures (x (P, C), a (P,)) and (y (T, C), b (T,)) as `mode` reads them.

    feature: exact discrete OT in R^C (one side must have 2 points; symmetric, sides are swapped
    when x is the two-point one). gaussian: diagonal Gaussian moment matches, closed form. (The
    1-D "energy" mode compares energies, not tokens: see `energy_w2`.)
    """
    if mode == "feature":
        if y.shape[0] == 2:
            return w2_two_point_discrete(x, a, y, b)
        if x.shape[0] == 2:
            return w2_two_point_discrete(y, b, x, a)
        raise ValueError(f"gpr.w2='feature' needs one side with exactly 2 tokens (normal/abnormal "
                         f"prompts); got {x.shape[0]} and {y.shape[0]}. Use gpr.w2='energy' or "
                         f"'gaussian'.")
    if mode == "gaussian":
        return w2_diag_gaussian(*weighted_moments(x, a), *weighted_moments(y, b))
    raise ValueError(f"w2_squared_between: mode {mode!r} is not one of 'feature', 'gaussian'")


# ---- GPR terms on one sample --------------------------------------------------------------------

def _prepare(f_v, f_t, g, options: GPROptions):
    f_v, f_t, g = (jnp.asarray(t, jnp.float32) for t in (f_v, f_t, g))
    for name, t in (("f_v", f_v), ("f_t", f_t), ("g", g)):
        if t.ndim != 2:
            raise ValueError(f"GPR expects {name} of shape (tokens, C), got {t.shape}")
    if not f_v.shape[-1] == f_t.shape[-1] == g.shape[-1]:
        raise ValueError(f"GPR: channel sizes differ: f_v {f_v.shape}, f_t {f_t.shape}, g {g.shape}")
    if options.normalize:
        f_v, f_t, g = l2_normalize(f_v), l2_normalize(f_t), l2_normalize(g)
    return f_v, f_t, g


def responsibilities(tokens: jax.Array, g: jax.Array, tau: float = 0.07,
                     mode: str = "token_mean") -> jax.Array:
    """a_n (N,), sums to 1: SGNet's "a_{v,n} = exp(sim(f_v, g_n)/tau) / sum_m exp(sim(f_v, g_m)/tau)".

    tokens (P, C), g (N, C). token_mean: mean over tokens of the per-token softmax; pooled: the
    softmax of the mean token.
    """
    if mode == "token_mean":
        return jnp.mean(jax.nn.softmax(cosine_similarity(tokens, g) / tau, axis=-1), axis=0)
    if mode == "pooled":
        return jax.nn.softmax(cosine_similarity(tokens.mean(0, keepdims=True), g)[0] / tau)
    raise ValueError(f"gpr.responsibility={mode!r}: use one of {', '.join(RESPONSIBILITY_MODES)}")


def energy_distributions(energies: jax.Array, temperature: float = 1.0) -> jax.Array:
    """SGNet "p^(n) = Softmax(-||f - g_n||^2)": energies (N, P) -> (N, P), softmax over tokens."""
    return jax.nn.softmax(-energies / temperature, axis=-1)


def energy_w2(e_v: jax.Array, p_v: jax.Array, e_t: jax.Array, p_t: jax.Array) -> jax.Array:
    """Per-graviton squared W2 between 1-D energy-level distributions.

    e_v, p_v (N, P); e_t, p_t (N, T) -> (N,).
    """
    return jax.vmap(w2_1d_discrete)(e_v, p_v, e_t, p_t)


def _attraction_prepared(f_v, f_t, g, options: GPROptions) -> jax.Array:
    e_v, e_t = squared_distances(g, f_v), squared_distances(g, f_t)       # (N, P), (N, T)
    p_v = energy_distributions(e_v, options.energy_temperature)
    p_t = energy_distributions(e_t, options.energy_temperature)
    if options.w2 == "energy":
        w2_sq = energy_w2(e_v, p_v, e_t, p_t)
    else:
        w2_sq = jax.vmap(lambda a, b: w2_squared_between(f_v, a, f_t, b, options.w2))(p_v, p_t)
    return w2_sq if options.w2_squared else safe_sqrt(w2_sq)


def attraction_per_graviton(f_v: jax.Array, f_t: jax.Array, g: jax.Array,
                            options: GPROptions = GPROptions()) -> jax.Array:
    """W2(p_v^(n), p_t^(n)) for every graviton: (N,). Squared if `options.w2_squared`."""
    return _attraction_prepared(*_prepare(f_v, f_t, g, options), options)


def modality_energy(tokens: jax.Array, g: jax.Array, mode: str = "expected",
                    temperature: float = 1.0) -> jax.Array:
    """Energy of one modality at each graviton, (P, C), (N, C) -> (N,); see `equilibrium_energy`."""
    if mode == "pooled":
        return squared_distances(g, tokens.mean(0, keepdims=True))[:, 0]
    energies = squared_distances(g, tokens)                                   # (N, P)
    if mode == "expected":
        return jnp.sum(energy_distributions(energies, temperature) * energies, axis=-1)
    if mode == "free":
        count = jnp.log(jnp.asarray(energies.shape[-1], energies.dtype))
        return -temperature * (jax.nn.logsumexp(-energies / temperature, axis=-1) - count)
    raise ValueError(f"gpr.equilibrium_energy={mode!r}: use one of {', '.join(EQUILIBRIUM_MODES)}")


def _weights_prepared(f_v, f_t, g, options: GPROptions) -> jax.Array:
    return (responsibilities(f_v, g, options.tau, options.responsibility)
            + responsibilities(f_t, g, options.tau, options.responsibility))


def _equilibrium_prepared(f_v, f_t, g, options: GPROptions) -> jax.Array:
    e_v = modality_energy(f_v, g, options.equilibrium_energy, options.energy_temperature)
    e_t = modality_energy(f_t, g, options.equilibrium_energy, options.energy_temperature)
    return jnp.abs(e_v - e_t)


def attraction_loss(f_v: jax.Array, f_t: jax.Array, g: jax.Array,
                    options: GPROptions = GPROptions()) -> jax.Array:
    """SGNet L_att = 1/N sum_n (a_{v,n} + a_{t,n}) W2(p_v^(n), p_t^(n)); scalar."""
    prepared = _prepare(f_v, f_t, g, options)
    return jnp.mean(_weights_prepared(*prepared, options) * _attraction_prepared(*prepared, options))


def equilibrium_loss(f_v: jax.Array, f_t: jax.Array, g: jax.Array,
                     options: GPROptions = GPROptions()) -> jax.Array:
    """SGNet L_equ = 1/N sum_n (a_{v,n} + a_{t,n}) |E_v(g_n) - E_t(g_n)|; scalar."""
    prepared = _prepare(f_v, f_t, g, options)
    return jnp.mean(_weights_prepared(*prepared, options) * _equilibrium_prepared(*prepared, options))


def gpr_loss(f_v: jax.Array, f_t: jax.Array, g: jax.Array,
             options: GPROptions = GPROptions()) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SGNet L_grav = lambda_att L_att + (1 - lambda_att) L_equ on one sample.

    A switched-off term (`options.attraction` / `options.equilibrium` False) is not computed and
    contributes exactly 0; the weights are not renormalized (the ablation rows of the paper keep
    lambda_att). Returns (L_grav, {"att": L_att, "equ": L_equ}).
    """
    zero = jnp.zeros((), jnp.float32)
    att = attraction_loss(f_v, f_t, g, options) if options.attraction else zero
    equ = equilibrium_loss(f_v, f_t, g, options) if options.equilibrium else zero
    total = options.lambda_att * att + (1.0 - options.lambda_att) * equ
    return total, {"att": att, "equ": equ}


def gpr_loss_batch(f_v: jax.Array, f_t: jax.Array, g: jax.Array,
                   options: GPROptions = GPROptions()) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`gpr_loss` averaged over a batch: f_v (B, P, C), f_t (B, T, C) or (T, C), g (B, N, C) or (N, C)."""
    f_t_axis = 0 if f_t.ndim == 3 else None
    g_axis = 0 if g.ndim == 3 else None
    total, terms = jax.vmap(lambda v, t, gg: gpr_loss(v, t, gg, options),
                            in_axes=(0, f_t_axis, g_axis))(f_v, f_t, g)
    return total.mean(), {k: v.mean() for k, v in terms.items()}
