"""GPR losses (zsad_jax/methods/sgnet/gpr.py): exact W2 against independent computations, properties."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize

from zsad_jax.methods.sgnet import gpr


def exact_ot_squared(x, a, y, b):
    """Squared W2 of two discrete measures by the transport linear program (scipy HiGHS)."""
    x = np.asarray(x, np.float64).reshape(len(a), -1)
    y = np.asarray(y, np.float64).reshape(len(b), -1)
    a = np.asarray(a, np.float64) / np.sum(a)
    b = np.asarray(b, np.float64) / np.sum(b)
    p, t = len(a), len(b)
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1).ravel()
    rows = np.kron(np.eye(p), np.ones((1, t)))
    cols = np.kron(np.ones((1, p)), np.eye(t))
    res = scipy.optimize.linprog(cost, A_eq=np.vstack([rows, cols]), b_eq=np.concatenate([a, b]),
                                 bounds=(0, None), method="highs")
    assert res.status == 0
    return res.fun


def rand(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


def test_w2_1d_hand_checked():
    # uniform on {0, 1} vs a point mass at 0: half the mass moves by 1 -> W2^2 = 0.5.
    got = gpr.w2_1d_discrete(jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0]), jnp.array([0.0]), jnp.array([3.0]))
    np.testing.assert_allclose(got, 0.5, rtol=1e-6)
    # unequal weights: 0.25 at 0, 0.75 at 2  vs  uniform on {1, 3}:
    # u in (0, .25]: 0->1 (1); (.25, .5]: 2->1 (1); (.5, 1]: 2->3 (1) -> W2^2 = 1.
    got = gpr.w2_1d_discrete(jnp.array([2.0, 0.0]), jnp.array([0.75, 0.25]),
                             jnp.array([3.0, 1.0]), jnp.array([0.5, 0.5]))
    np.testing.assert_allclose(got, 1.0, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_w2_1d_equals_linear_program(seed):
    rng = np.random.default_rng(seed)
    x, y = rand(rng, 7), rand(rng, 5)
    a, b = rng.uniform(0.1, 1, 7), rng.uniform(0.1, 1, 5)
    got = gpr.w2_1d_discrete(jnp.asarray(x), jnp.asarray(a, jnp.float32),
                             jnp.asarray(y), jnp.asarray(b, jnp.float32))
    np.testing.assert_allclose(got, exact_ot_squared(x, a, y, b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_w2_two_point_equals_linear_program(seed):
    rng = np.random.default_rng(seed)
    x, y = rand(rng, 9, 3), rand(rng, 2, 3)
    a, b = rng.uniform(0.05, 1, 9), rng.uniform(0.05, 1, 2)
    got = gpr.w2_two_point_discrete(jnp.asarray(x), jnp.asarray(a, jnp.float32),
                                    jnp.asarray(y), jnp.asarray(b, jnp.float32))
    np.testing.assert_allclose(got, exact_ot_squared(x, a, y, b), rtol=1e-5, atol=1e-6)
    # symmetric dispatch: the two-point measure may be given first.
    swapped = gpr.w2_squared_between(jnp.asarray(y), jnp.asarray(b, jnp.float32),
                                     jnp.asarray(x), jnp.asarray(a, jnp.float32), "feature")
    np.testing.assert_allclose(swapped, got, rtol=1e-6)
    # the same measure written with duplicated support points is at distance 0.
    dup_weights = jnp.asarray([b[0], b[1], b[1], b[0]], jnp.float32)
    dup = gpr.w2_two_point_discrete(jnp.asarray(y[[0, 1, 1, 0]]), dup_weights,
                                    jnp.asarray(y), jnp.asarray(b, jnp.float32))
    np.testing.assert_allclose(dup, 0.0, atol=1e-6)


def test_w2_diag_gaussian_equals_bures_formula():
    rng = np.random.default_rng(3)
    m1, m2 = rand(rng, 4), rand(rng, 4)
    v1, v2 = rng.uniform(0.1, 2, 4), rng.uniform(0.1, 2, 4)
    s1, s2 = np.diag(v1), np.diag(v2)
    r1 = scipy.linalg.sqrtm(s1)
    bures = np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(r1 @ s2 @ r1)).real
    want = np.sum((m1 - m2) ** 2) + bures
    got = gpr.w2_diag_gaussian(jnp.asarray(m1), jnp.asarray(v1, jnp.float32),
                               jnp.asarray(m2), jnp.asarray(v2, jnp.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_weighted_moments():
    x = jnp.array([[0.0, 1.0], [2.0, 5.0]])
    mean, var = gpr.weighted_moments(x, jnp.array([3.0, 1.0]))
    np.testing.assert_allclose(mean, [0.5, 2.0])
    np.testing.assert_allclose(var, [0.75 * 0.25 + 0.25 * 2.25, 0.75 * 1 + 0.25 * 9])


def test_w2_scales_linearly_and_ignores_translation():
    rng = np.random.default_rng(4)
    x, y = rand(rng, 6, 3), rand(rng, 2, 3)
    a, b = jnp.asarray(rng.uniform(0.1, 1, 6), jnp.float32), jnp.array([0.3, 0.7])
    for mode in ("feature", "gaussian"):
        base = gpr.w2_squared_between(jnp.asarray(x), a, jnp.asarray(y), b, mode)
        scaled = gpr.w2_squared_between(jnp.asarray(3 * x), a, jnp.asarray(3 * y), b, mode)
        shifted = gpr.w2_squared_between(jnp.asarray(x + 5), a, jnp.asarray(y + 5), b, mode)
        np.testing.assert_allclose(scaled, 9 * base, rtol=1e-5)
        np.testing.assert_allclose(shifted, base, rtol=1e-4)
    base = gpr.w2_1d_discrete(jnp.asarray(x[:, 0]), a, jnp.asarray(y[:, 0]), b)
    np.testing.assert_allclose(gpr.w2_1d_discrete(jnp.asarray(2 * x[:, 0]), a, jnp.asarray(2 * y[:, 0]), b),
                               4 * base, rtol=1e-5)


def test_feature_w2_needs_a_two_point_side():
    with pytest.raises(ValueError, match="exactly 2 tokens"):
        gpr.w2_squared_between(jnp.zeros((4, 3)), jnp.ones(4), jnp.zeros((3, 3)), jnp.ones(3), "feature")


def test_responsibilities_sum_to_one_and_pooled_is_literal():
    rng = np.random.default_rng(5)
    tokens, g = jnp.asarray(rand(rng, 10, 4)), jnp.asarray(rand(rng, 3, 4))
    for mode in gpr.RESPONSIBILITY_MODES:
        np.testing.assert_allclose(gpr.responsibilities(tokens, g, 0.1, mode).sum(), 1.0, rtol=1e-6)
    mean = np.asarray(tokens).mean(0)
    sims = np.array([mean @ gn / np.linalg.norm(mean) / np.linalg.norm(gn) for gn in np.asarray(g)])
    want = np.exp(sims / 0.1) / np.exp(sims / 0.1).sum()
    np.testing.assert_allclose(gpr.responsibilities(tokens, g, 0.1, "pooled"), want, rtol=1e-5)


def test_equilibrium_energy_modes_hand_checked():
    tokens = jnp.array([[0.0, 0.0], [2.0, 0.0]])
    g = jnp.array([[1.0, 0.0]])          # energies 1 and 1
    for mode in gpr.EQUILIBRIUM_MODES:
        expected = 0.0 if mode == "pooled" else 1.0
        np.testing.assert_allclose(gpr.modality_energy(tokens, g, mode), [expected], atol=1e-6)
    g = jnp.array([[0.0, 0.0]])          # energies 0 and 4
    p = np.exp([0.0, -4.0]) / np.exp([0.0, -4.0]).sum()
    np.testing.assert_allclose(gpr.modality_energy(tokens, g, "expected"), [p[1] * 4], rtol=1e-6)
    np.testing.assert_allclose(gpr.modality_energy(tokens, g, "free"),
                               [-np.log((1 + np.exp(-4)) / 2)], rtol=1e-6)


# Every mode of every option appears at least once.
OPTION_SETS = [
    gpr.GPROptions(),
    gpr.GPROptions(w2="energy", equilibrium_energy="expected", w2_squared=True),
    gpr.GPROptions(w2="gaussian", equilibrium_energy="pooled", responsibility="pooled",
                   energy_temperature=0.5),
]


def _inputs(seed=0, p=12, c=8, n=5):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rand(rng, p, c)), jnp.asarray(rand(rng, 2, c)), jnp.asarray(rand(rng, n, c))


@pytest.mark.parametrize("options", OPTION_SETS,
                         ids=lambda o: f"{o.w2}-{o.equilibrium_energy}-{o.responsibility}")
def test_gpr_zero_when_modalities_coincide_symmetric_finite_gradients(options):
    # Two visual tokens, so the three calls below share one compiled program (other token counts:
    # the linear-program and batch tests).
    loss_and_grads = jax.jit(jax.value_and_grad(lambda *a: gpr.gpr_loss(*a, options), argnums=(0, 1, 2),
                                                has_aux=True))
    f_v, f_t, g = _inputs(p=2)
    (total, terms), grads = loss_and_grads(f_t, f_t, g)
    # 0 up to fp32 rounding of the compiled program (losses are O(0.1) elsewhere).
    assert abs(float(total)) < 1e-6 and abs(float(terms["att"])) < 1e-6 and abs(float(terms["equ"])) < 1e-6
    assert all(np.isfinite(np.asarray(gr)).all() for gr in grads)          # finite at the minimum
    (total, terms), grads = loss_and_grads(f_v, f_t, g)
    assert float(terms["att"]) > 0 and float(terms["equ"]) > 0
    assert all(np.isfinite(np.asarray(gr)).all() and np.abs(np.asarray(gr)).sum() > 0 for gr in grads)
    (swapped, _), _ = loss_and_grads(f_t, f_v, g)             # every term is symmetric in v / t
    np.testing.assert_allclose(swapped, total, rtol=1e-5)


def test_gpr_invariant_to_feature_scale_when_normalized_and_not_otherwise():
    f_v, f_t, g = _inputs(1)
    loss = jax.jit(lambda *a: gpr.gpr_loss(*a)[0], static_argnums=3)
    base = loss(f_v, f_t, g, gpr.GPROptions())
    np.testing.assert_allclose(loss(4 * f_v, 4 * f_t, 0.5 * g, gpr.GPROptions()), base, rtol=1e-5)
    raw = gpr.GPROptions(normalize=False)
    assert not np.isclose(loss(4 * f_v, 4 * f_t, 4 * g, raw), loss(f_v, f_t, g, raw))


def test_gpr_formula_with_one_graviton_hand_assembled():
    # N = 1: a_v = a_t = 1, so L_att = 2 W2 / 1 and L_equ = 2 |F_v - F_t| with the default
    # energy of a token set, the free energy F = -log mean_j exp(-E_j) (the Highlights' "free
    # energy difference for balancing").
    f_v, f_t, g = _inputs(2, n=1)
    options = gpr.GPROptions(w2="energy", normalize=False)
    assert options.equilibrium_energy == "free"
    fv, ft, gg = (np.asarray(t, np.float64) for t in (f_v, f_t, g))
    e_v, e_t = ((fv - gg) ** 2).sum(-1), ((ft - gg) ** 2).sum(-1)
    p_v, p_t = np.exp(-e_v + e_v.min()), np.exp(-e_t + e_t.min())
    w2 = np.sqrt(exact_ot_squared(e_v, p_v, e_t, p_t))
    free = lambda e: e.min() - np.log(np.mean(np.exp(-(e - e.min()))))
    equ = abs(free(e_v) - free(e_t))
    total, terms = gpr.gpr_loss(f_v, f_t, g, options)
    np.testing.assert_allclose(terms["att"], 2 * w2, rtol=1e-4)
    np.testing.assert_allclose(terms["equ"], 2 * equ, rtol=1e-4)
    np.testing.assert_allclose(total, 0.6 * 2 * w2 + 0.4 * 2 * equ, rtol=1e-4)


def test_feature_attraction_equals_linear_program_per_graviton():
    f_v, f_t, g = _inputs(3, p=6, c=3, n=2)
    options = gpr.GPROptions(normalize=False, w2_squared=True)
    got = gpr.attraction_per_graviton(f_v, f_t, g, options)
    fv, ft, gg = (np.asarray(t, np.float64) for t in (f_v, f_t, g))
    for n in range(2):
        e_v, e_t = ((fv - gg[n]) ** 2).sum(-1), ((ft - gg[n]) ** 2).sum(-1)
        want = exact_ot_squared(fv, np.exp(-e_v + e_v.min()), ft, np.exp(-e_t + e_t.min()))
        np.testing.assert_allclose(got[n], want, rtol=1e-4, atol=1e-6)


def test_switches_remove_exactly_their_term():
    f_v, f_t, g = _inputs(4)
    full = gpr.GPROptions()
    total, terms = gpr.gpr_loss(f_v, f_t, g, full)
    np.testing.assert_allclose(terms["att"], gpr.attraction_loss(f_v, f_t, g, full), rtol=1e-6)
    np.testing.assert_allclose(terms["equ"], gpr.equilibrium_loss(f_v, f_t, g, full), rtol=1e-6)
    np.testing.assert_allclose(total, 0.6 * terms["att"] + 0.4 * terms["equ"], rtol=1e-6)
    no_att, t1 = gpr.gpr_loss(f_v, f_t, g, dataclasses.replace(full, attraction=False))
    assert float(t1["att"]) == 0.0 and float(t1["equ"]) == float(terms["equ"])
    np.testing.assert_allclose(no_att, 0.4 * terms["equ"], rtol=1e-6)
    no_equ, t2 = gpr.gpr_loss(f_v, f_t, g, dataclasses.replace(full, equilibrium=False))
    assert float(t2["equ"]) == 0.0 and float(t2["att"]) == float(terms["att"])
    np.testing.assert_allclose(no_equ, 0.6 * terms["att"], rtol=1e-6)
    none, _ = gpr.gpr_loss(f_v, f_t, g, dataclasses.replace(full, attraction=False, equilibrium=False))
    assert float(none) == 0.0


def test_batch_is_the_mean_of_samples():
    rng = np.random.default_rng(6)
    f_v, g = jnp.asarray(rand(rng, 3, 10, 4)), jnp.asarray(rand(rng, 3, 5, 4))
    f_t = jnp.asarray(rand(rng, 2, 4))
    total, terms = jax.jit(gpr.gpr_loss_batch)(f_v, f_t, g)
    single = jax.jit(gpr.gpr_loss)
    per = [single(f_v[i], f_t, g[i]) for i in range(3)]
    np.testing.assert_allclose(total, np.mean([p[0] for p in per]), rtol=1e-5)
    np.testing.assert_allclose(terms["att"], np.mean([p[1]["att"] for p in per]), rtol=1e-5)


def test_options_validation_and_from_config():
    with pytest.raises(ValueError, match="gpr.w2='wasserstein'"):
        gpr.GPROptions(w2="wasserstein")
    with pytest.raises(ValueError, match="gpr.lambda_att"):
        gpr.GPROptions(lambda_att=1.5)
    with pytest.raises(ValueError, match="shape"):
        gpr.gpr_loss(jnp.zeros((2, 3, 4)), jnp.zeros((2, 4)), jnp.zeros((5, 4)))
    opts = gpr.GPROptions.from_config({"w2": "energy", "tau": 0.5}, "gpr")
    assert opts.w2 == "energy" and opts.tau == 0.5
    with pytest.raises(ValueError, match="gpr.lambda_grav is not a key"):
        gpr.GPROptions.from_config({"lambda_grav": 0.6}, "gpr")      # the method's, not GPR's
