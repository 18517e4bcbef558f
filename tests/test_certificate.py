"""Regression tests of the certificate: "certified or refused".

``solve_lasso`` returns a ``LassoResult`` whose ``gap`` is the duality gap of
the returned codes and whose ``converged[i]`` means ``gap[i] <= tol * 1/2
||x_i||^2``. One small, deterministic test per defect found by an
adversarial pass, each checking the intended
contract (``contract.py``) against the independent long-double reference
gap (``reference.gap_terms_robust``): finite codes (or a
``FloatingPointError`` naming the sample), ``gap`` equal to the gap of the
codes to rounding, ``converged`` only when that gap meets ``tol``, all-zero
atoms coded exactly 0; networks never return non-finite codes; bad sizes and
scales raise ``ValueError`` naming the argument.
"""
import re
import tracemalloc
import warnings
from fractions import Fraction as Fr

import numpy as np
import pytest

import reference as ref
from contract import assert_certified, assert_gap_matches, half_sq_norms
import fastlista
from fastlista import (ConvergenceWarning, Lista, duality_gap, lipschitz,
                       solve_lasso)

METHODS = ("ista", "fista", "backtracking", "oista", "cd", "auto")


def solve_or_refuse(X, D, lmbd, tol=1e-8, **kw):
    """``solve_lasso`` with ConvergenceWarning silenced; None when it refused
    with a FloatingPointError naming the sample (allowed by the contract)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return solve_lasso(X, D, lmbd, tol=tol, **kw)
    except FloatingPointError as exc:
        assert re.search(r"sample", str(exc)), f"FloatingPointError without the sample: {exc}"
        return None


def check(X, D, lmbd, tol=1e-8, **kw):
    res = solve_or_refuse(X, D, lmbd, tol=tol, **kw)
    if res is not None:
        assert_certified(X, D, lmbd, tol, res)
    return res


def problem(n_samples=6, n_features=8, n_atoms=5, seed=0, dtype=np.float64):
    return ref.make_problem(n_samples, n_features, n_atoms, seed=seed, dtype=dtype)


# ---------------------------------------------------------------------------
# 1. zero and underflowing atoms with a warm start
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("warm", [1.0, 1e100])
@pytest.mark.parametrize("method", METHODS)
def test_zero_atom_with_warm_start_gives_finite_certified_codes(method, warm):
    # an all-zero atom's code is exactly 0, whatever the warm start (a
    # proximal-gradient step only shrinks it by lmbd / L: 1e100 stays)
    X, D = problem(n_atoms=7, seed=1)
    D[2] = 0.0
    D[5] = 0.0
    Z0 = warm * np.random.default_rng(1).standard_normal((X.shape[0], D.shape[0]))
    res = check(X, D, 0.3, Z0=Z0, method=method, max_iter=2000)
    assert res is not None
    np.testing.assert_array_equal(res.codes[:, [2, 5]], 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_underflowing_atom_with_warm_start_gives_finite_certified_codes(method):
    # entries 1e-170: ||d||^2 = 8e-340 underflows to 0 in float64 (B_jj = 0)
    X, D = problem(n_atoms=6, seed=2)
    D[3] = 1e-170
    Z0 = np.random.default_rng(2).standard_normal((X.shape[0], D.shape[0]))
    check(X, D, 0.3, Z0=Z0, method=method)


# ---------------------------------------------------------------------------
# 2. huge warm starts
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1e100, 1e155])
@pytest.mark.parametrize("method", METHODS)
def test_huge_warm_start_gap_is_the_gap_of_the_codes(method, scale):
    # 1e155: 1/2 ||x - z D||^2 ~ 1e310 is beyond float64: the gap of codes
    # left there is inf (never "converged, gap 0")
    X, D = problem(n_features=8, n_atoms=5, seed=3)
    Z0 = scale * np.random.default_rng(3).standard_normal((X.shape[0], D.shape[0]))
    check(X, D, 0.3, Z0=Z0, method=method, max_iter=2000)


@pytest.mark.parametrize("method", METHODS)
def test_codes_are_never_worse_than_their_start(method):
    # float32 warm start +-1e8 on a duplicated atom: z0 D = 0, F(z0) = F(0),
    # but every product rounds at 1e8 eps32 ~ 6 and the iterations climbed
    # to twice F(z0) (and six times); the start is returned instead
    rng = np.random.default_rng(0)
    d = rng.standard_normal((3, 6))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    D = np.vstack([d, d]).astype(np.float32)
    X = rng.standard_normal((2, 6)).astype(np.float32)
    Z0 = np.zeros((2, 6), np.float32)
    Z0[:, 0], Z0[:, 3] = 1e8, -1e8
    res = check(X, D, 0.0, Z0=Z0, method=method, max_iter=500)
    F = np.asarray(ref.objective_robust(X, D, 0.0, res.codes), float)
    F0 = np.asarray(ref.objective_robust(X, D, 0.0, Z0), float)
    assert np.all(F <= F0 * (1 + 1e-6))
    # and without a warm start, never worse than the zero code
    res = check(X, D, 0.0, method=method, max_iter=500)
    assert np.all(np.asarray(ref.objective_robust(X, D, 0.0, res.codes), float)
                  <= half_sq_norms(X))


# ---------------------------------------------------------------------------
# 3. threads: per-sample results are the sample's own
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n_jobs", [2, 8])
def test_cd_threads_report_each_samples_own_gap(n_jobs):
    # 8000 samples whose gaps span orders of magnitude, on 2 threads and
    # on 8 (oversubscribed: a thread preempted between computing its gap and
    # storing it lets another overwrite a shared one). A shared gap shows up
    # as a sample reported with another's gap; detection depends on the
    # interleaving (seen in the debug build, about once in 1e5 samples
    # oversubscribed), a correct kernel passes every time.
    X, D = problem(n_samples=8000, n_features=10, n_atoms=20, seed=4)
    X *= 10.0 ** np.random.default_rng(4).uniform(-1.5, 1.5, size=(X.shape[0], 1))
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = solve_lasso(X, D, 0.3, method="cd", n_jobs=n_jobs)
        gap, size = ref.duality_gap_batch(X, D, 0.3, res.codes)
        bad = np.abs(res.gap.astype(np.longdouble) - gap) > 1e-6 * gap + 1e-10 * size
        assert not bad.any(), (
            f"samples {np.flatnonzero(bad)[:5]} reported gaps {res.gap[bad][:5]}, "
            f"true gaps {gap[bad][:5].astype(float)}")
        target = 1e-8 * half_sq_norms(X)
        assert np.all(gap[res.converged] <= target[res.converged] * (1 + 1e-6)
                      + 1e-10 * size[res.converged])


@pytest.mark.parametrize("n_jobs", [2, 8])
def test_batched_support_lipschitz_with_threads_equals_eigvalsh(n_jobs):
    # 2 threads need >= 4096 supports; sizes 17-24 use the power iteration
    # with its LAPACK fallback (max_iter=2: most fall back): a shared
    # "converged" flag skips the fallback of another thread's support
    rng = np.random.default_rng(5)
    D = rng.standard_normal((24, 30))
    S = np.ones((12000, 24), dtype=bool)
    for i, k in enumerate(rng.integers(0, 8, size=len(S))):
        S[i, rng.choice(24, size=k, replace=False)] = False
    uniq, inv = np.unique(S, axis=0, return_inverse=True)
    expected = ref.lipschitz_support(D, uniq)[inv.ravel()]
    for _ in range(2):
        L = lipschitz(D, support=S, n_jobs=n_jobs, max_iter=2)
        np.testing.assert_allclose(L, expected, rtol=1e-9)


# ---------------------------------------------------------------------------
# 4. extreme scales
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_subnormal_signals_give_finite_certified_codes(method):
    X, D = problem(seed=6)
    X = X * 1e-310                       # subnormal: ||x||^2 underflows
    res = check(X, D, 0.3e-310, method=method)
    assert res is not None


@pytest.mark.parametrize("method", METHODS)
def test_not_converged_warning_states_the_relative_gap_of_the_returned_codes(method):
    # (found by an API fuzz) signals of a few subnormals: the codes round
    # to the subnormal grid on their way out, and the certificate of the
    # returned codes refuses them, in the solver's scaled units; their
    # absolute gap (about 1e-646) is below float64's range, and reads as its
    # smallest subnormal (rounded up: a bound). The warning took gap /
    # (1/2 ||x||^2) in float64, where both underflow: "relative duality gap
    # inf". It now states the gap of the returned codes relative to F_x(0),
    # here checked on the same signals and codes times 2^1074 (exact)
    _, D = problem(seed=8)
    X = np.ldexp(np.array([[1.0] * 8, [3.0, -1.0] * 4]), -1074)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        res = solve_lasso(X, D, 0.0, method=method, tol=1e-6)
    bad = ~res.converged
    assert bad.any()                     # the grid is too coarse for tol = 1e-6
    assert np.all(res.gap == np.finfo(np.float64).smallest_subnormal)
    (w,) = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    stated = float(re.search(r"relative duality gap (\S+)\.", str(w.message)).group(1))
    Xs, Zs = np.ldexp(X, 1074), np.ldexp(res.codes.astype(np.float64), 1074)
    rel = ref.duality_gap(Xs, D, 0.0, Zs) / (0.5 * np.sum(Xs * Xs, axis=1))
    assert np.all(rel[bad] > 1e-6)
    assert stated == pytest.approx(rel[bad].max(), rel=1e-3)


@pytest.mark.parametrize("sx, sd, rel", [
    (1e150, 1e-150, 0.3),                # codes ~ 1e300: representable
    (1e-150, 1e150, 0.3),                # codes ~ 1e-300
    (1e200, 1e-200, 2.0),                # lmbd > lambda_max: codes exactly 0
    (1e200, 1e-200, 0.3),                # codes ~ 1e400: only a refusal is possible
])
@pytest.mark.parametrize("method", METHODS)
def test_opposite_scalings_give_certified_codes_or_refuse(method, sx, sd, rel):
    X, D = problem(seed=7)
    lmbd = rel * sx * sd                 # make_problem: lambda_max(x) = 1
    res = check(X * sx, D * sd, lmbd, method=method)
    if rel > 1:
        assert res is not None
        np.testing.assert_array_equal(res.codes, 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_rounding_noise_beyond_the_float_range_is_refused_naming_its_sample(method):
    # (found by the long fuzz) an atom of norm 1e-320 exactly orthogonal to
    # a signal of norm 1e148: its exact code is 0, but c = x D^T may round to
    # about eps |x| |d| (an FMA keeps the first product's rounding error),
    # and the code of that noise, eps |x| / |d|, is beyond the largest float.
    # At lmbd = 0 no certificate tells 0 from it: the call refuses, naming
    # that sample only (the other one's c is negative: its positive code is
    # exactly 0), or returns the exact codes, 0, certified
    X = np.array([[1.21672864e148, 1.21672864e148],
                  [-1.26542147e149, -6.23274463e148]])
    D = np.array([[1e-320, -1e-320]])
    try:
        res = solve_lasso(X, D, 0.0, method=method, positive=True)
    except FloatingPointError as exc:
        assert "samples [0] overflow float64" in str(exc), str(exc)
        assert "rescale X or D" in str(exc)
        return
    assert_certified(X, D, 0.0, 1e-8, res, positive=True)
    np.testing.assert_array_equal(res.codes, 0.0)


@pytest.mark.parametrize("sx, sd", [
    (1e20, 1.0), (1.0, 1e-20),           # codes ~ 1e20
    (1e30, 1.0),                         # gap ~ 1e60: inf in float32, never "converged"
    (1e-20, 1e20),                       # codes ~ 1e-40 (subnormal)
    (1e-40, 1.0),                        # subnormal signals
    (1e20, 1e-20),                       # codes ~ 1e40 > float32 max: may refuse
])
@pytest.mark.parametrize("method", METHODS)
def test_float32_extreme_scales_give_finite_certified_codes(method, sx, sd):
    X, D = problem(seed=8)
    X32, D32 = (X * sx).astype(np.float32), (D * sd).astype(np.float32)
    res = check(X32, D32, float(np.float32(0.3 * sx * sd)), tol=1e-5, method=method)
    assert res is not None or sx / sd > 1e30


@pytest.mark.parametrize("method", METHODS)
def test_tiny_sample_next_to_huge_sample_is_solved_at_its_own_scale(method):
    # one scale for the whole batch flushed the 1e-200 sample to 0; lmbd is
    # tiny for it (its lambda_max is 1e-200) so its code is far from 0
    X, D = problem(n_samples=3, seed=9)
    X[0] *= 1e-200
    X[1] *= 1e200
    lmbd = 0.3e-200
    res = check(X, D, lmbd, method=method)
    assert res is not None
    assert res.converged[0], "the tiny sample did not converge"
    assert np.any(res.codes[0] != 0)


# samples whose entries span more than their dtype: (dtype, x, D, lmbd)
WIDE_CASES = [
    # positive codes: the only positive correlation is the vanished entry's
    (np.float32, [2.0**-100, -1.5 * 2.0**100], np.diag([0.5, 0.7]), 1e-32),
    (np.float64, [2.0**-600, -1.5 * 2.0**500], np.diag([0.5, 0.7]), 2.0**-700),
    # an entry that loses digits (float32: 2**-140 at the scale of 2**40)
    (np.float32, [1.5 * 2.0**40, -1.2345678 * 2.0**-100, 0.0],
     np.array([[0.5, 0.25, 0.0], [0.0, 0.75, -0.5], [0.25, 0.0, 1.0]]), 2.0**36),
    (np.float64, [1.5 * 2.0**300, 2.0**-780 * 1.2345678901234, 3.0 * 2.0**-790],
     np.array([[0.5, 0.25, 0.0], [0.0, 0.75, -0.5], [0.25, 0.5, 1.0]]), 2.0**296),
]


@pytest.mark.parametrize("case", range(len(WIDE_CASES)))
@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_gap_of_a_sample_spanning_more_than_its_dtype_bounds_its_suboptimality(
        method, positive, case):
    """A sample whose entries span more than its dtype is scaled for its
    largest, and its smallest vanish below the dtype's range (or lose
    digits): solved without them, with positive codes whose only positive
    correlation they held, the code 0 was reported with a gap of 0 and
    converged with tol = 0, where F(0) - min F is 3.0e-61 (float32) and
    2**-1201 (float64, below every double). The gap adds a bound on the
    lost entries' terms, taken at their own scale (``_lasso._Lost``): it
    bounds F(z) - min F from above (exact, in rational arithmetic), for the
    solver's codes and ``duality_gap`` alike, up to the double rounding of
    the kept terms that the certificate documents (none where the kept
    part is solved exactly, at 0), and a positive gap is not "converged"
    with tol = 0."""
    dtype, x, D, lmbd = WIDE_CASES[case]
    X, D = np.array([x], dtype), D.astype(dtype)
    rounding = 0 if case < 2 and positive else Fr(2.0**-50) * Fr(float(np.dot(x, x))) / 2
    for tol in (1e-5 if dtype == np.float32 else 1e-8, 0.0):
        res = solve_or_refuse(X, D, lmbd, tol=tol, max_iter=200, method=method,
                              positive=positive)
        assert res is not None
        exact = ref.lasso_suboptimality_exact(X[0], D, lmbd, res.codes[0], positive)
        for gap in (res.gap[0], duality_gap(X, D, lmbd, res.codes, positive=positive)[0]):
            assert gap == np.inf or Fr(float(gap)) + rounding >= exact, (tol, gap, exact)
        if tol:
            # (a gap beyond float32's range reads inf: the test is in scaled units)
            assert res.converged[0]
            assert float(res.gap[0]) <= tol * 0.5 * float(np.dot(x, x)) or res.gap[0] == np.inf
        else:
            assert res.converged[0] == (res.gap[0] == 0)
    if case < 2 and positive:
        # the zero code, and what the lost entry makes of its gap: at least
        # its exact suboptimality, at most the smallest subnormal's few ulps
        tiny = np.finfo(dtype).smallest_subnormal
        np.testing.assert_array_equal(res.codes, 0.0)
        assert tiny <= res.gap[0] <= 4 * tiny and not res.converged[0]


@pytest.mark.parametrize("method", METHODS)
def test_solver_gap_where_the_objective_cancels_below_its_unit(method):
    """x = [3.7e295, 3.5e34], D = diag(2**66, 2**65), lmbd = 0: the second
    entry's share of the objective, 1/2 (x_1 - z_1 d_1)^2, underflowed in
    the unit of the first, and solve_lasso reported gap 0, "converged" with
    tol = 0, where F - min F = F = 4.25e37 (min F = 0: D invertible);
    duality_gap of the same codes said 4.25e37. The solver's gap takes the
    same floor, F formed at the residual's own scale (exact references in
    rational arithmetic)."""
    x = np.array([3.6825915665507002e+295, 3.508354953614074e+34])
    D = np.diag([2.0**66, 2.0**65])
    for tol in (0.0, 1e-8):
        res = solve_or_refuse(x, D, 0.0, tol=tol, max_iter=500, method=method)
        exact = ref.lasso_suboptimality_exact(x, D, 0.0, res.codes)
        assert res.gap == np.inf or Fr(float(res.gap)) >= exact * (1 - Fr(2.0**-40))
        if tol == 0:
            # (the same floor as duality_gap's, of the same codes)
            assert res.gap <= duality_gap(x, D, 0.0, res.codes) * (1 + 1e-12)
            assert res.converged == (res.gap == 0)


K22 = 2.0**22


@pytest.mark.parametrize("method", METHODS)
def test_float32_dictionary_scaled_into_the_subnormals_is_certified_exactly(method):
    """A float32 D beyond 2**30 is scaled by a power of two, in float32 it
    was: entries it took among the subnormals were rounded. Two atoms
    [2**40, (2**22 -+ 1/2) 2**-109] became the same atom, orthogonal to x
    = [-2**-127, 1], and at lmbd = 0 (and 1e-40) the zero code had gap 0,
    "converged", where F - min F = 1/2 ||x||^2 (D is invertible: min F =
    0); lambda_max was 0 for 2**-110, and 20 % low for an atom whose
    small entry 2.5 * 2**-49 rounded to 2**-48. The correlations, the Gram
    matrix and the certificate take D scaled in double (exact); exact
    references in rational arithmetic."""
    D = np.array([[2.0**40, (K22 - 0.5) * 2.0**-109],
                  [2.0**40, (K22 + 0.5) * 2.0**-109]], np.float32)
    x = np.array([-K22 * 2.0**-149, 1.0], np.float32)
    exact_lm = max(abs(sum(Fr(float(a)) * Fr(float(b)) for a, b in zip(x, d))) for d in D)
    assert exact_lm == Fr(2.0**-110)
    lm = fastlista.lambda_max(x, D)
    assert exact_lm <= Fr(float(lm)) <= exact_lm * (1 + Fr(2.0**-20))
    for lmbd in (0.0, 1e-40):
        res = solve_or_refuse(x, D, lmbd, tol=0, max_iter=50, method=method)
        exact = ref.lasso_suboptimality_exact(x, D, lmbd, res.codes)
        assert exact > Fr(1, 4)
        assert Fr(float(res.gap)) >= exact * (1 - Fr(2.0**-20)) and not res.converged
        gap0 = duality_gap(x, D, lmbd, np.zeros(2, np.float32))
        assert Fr(float(gap0)) >= ref.lasso_suboptimality_exact(
            x, D, lmbd, np.zeros(2)) * (1 - Fr(2.0**-20))
    # an atom's small entry rounded by the scaling: lambda_max and the gap
    D = np.array([[1.0, 2.5 * 2.0**-49, 0.0], [0.0, 0.0, 2.0**100]], np.float32)
    x = np.array([0.0, 1.0, 0.0], np.float32)
    lm = fastlista.lambda_max(x, D)
    assert Fr(float(lm)) >= Fr(2.5 * 2.0**-49)
    res = solve_or_refuse(x, D, 2.0**-48, tol=0, max_iter=10, method=method)
    assert Fr(float(res.gap)) >= ref.lasso_suboptimality_exact(x, D, 2.0**-48, res.codes)
    # and away from lmbd = 0: two atoms 2**-49 apart in their small entries
    D = np.array([[0.25, 2.0**-27 - 2.0**-50, 0.0], [0.25, 2.0**-27 + 2.0**-50, 0.0],
                  [0.0, 0.0, 2.0**100]], np.float32)
    x, z = np.array([1.5, 1.0, 0.0], np.float32), np.array([4.0, 0.0, 0.0], np.float32)
    lmbd = 0.125 + 2.0**-27 - 2.0**-52
    exact = ref.lasso_suboptimality_exact(x, D, lmbd, z)
    assert exact > 0
    assert Fr(float(duality_gap(x, D, lmbd, z))) >= exact


# ---------------------------------------------------------------------------
# 5. backtracking at an exact fixed point
# ---------------------------------------------------------------------------

def test_backtracking_step_stays_bounded_at_an_exact_fixed_point():
    # lmbd above lambda_max from z = 0: every trial step gives d = 0, which
    # passes the sufficient-decrease test; tol=0 runs all 3000 iterations
    X, D = problem(n_samples=3, seed=10)
    res = check(X, D, 1.5, tol=0.0, method="backtracking", max_iter=3000,
                record_history=True)
    np.testing.assert_array_equal(res.codes, 0.0)
    assert np.all(np.isfinite(res.step_sizes)) and np.all(res.step_sizes > 0)


# ---------------------------------------------------------------------------
# 6. float32: the returned codes are certified, in double precision
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_float32_gap_is_the_double_precision_gap_of_the_float32_codes(method):
    # "cd" certified its float64 working copy, not the float32 codes it
    # returns; every method must report the gap of the codes it returns,
    # computed in double precision (codes upcast) and stored in float32
    X, D = problem(n_samples=8, n_features=8, n_atoms=5, seed=11, dtype=np.float32)
    res = check(X, D, 0.3, tol=1e-5, method=method)
    assert res.gap.dtype == np.float32
    g = ref.duality_gap_robust(X, D, 0.3, res.codes)
    assert np.all(g[res.converged] <= 1e-5 * half_sq_norms(X)[res.converged] * (1 + 1e-6))


# ---------------------------------------------------------------------------
# 7. networks and Lipschitz constants
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("parametrization", ["coupled", "lista"])
def test_network_mass_on_a_zero_atom_refines_to_finite_certified_codes(parametrization):
    X, D = problem(n_samples=20, n_features=8, n_atoms=10, seed=12)
    D[4] = 0.0
    net = Lista(D, 0.3, n_layers=3, parametrization=parametrization)
    params = net.parameters
    rng = np.random.default_rng(12)
    for layer in params:                 # learned weights that read the zero atom
        if parametrization == "coupled":
            layer["W"][4] = rng.standard_normal(D.shape[1])
        else:
            layer["W_x"][:, 4] = rng.standard_normal(D.shape[1])
    net.set_parameters(params)
    Z_net = net.transform(X)
    assert np.all(np.isfinite(Z_net)), "network codes are not finite"
    assert np.any(Z_net[:, 4] != 0)      # the situation of the defect
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Z = net.transform(X, refine_tol=1e-8)
    assert np.all(np.isfinite(Z)), \
        f"refined codes not finite in samples {np.flatnonzero(~np.isfinite(Z).all(1))}"
    np.testing.assert_array_equal(Z[:, 4], 0.0)
    _, gap, size = ref.gap_terms_robust(X, D, 0.3, Z)
    assert np.all(gap <= 1e-8 * half_sq_norms(X) + 1e-10 * size)


@pytest.mark.parametrize("c", [0.3, 0.1, 0.25, 4.0])
def test_alista_initialisation_is_scale_free(c):
    # the Lasso (x, cD, c lmbd) is (x, D, lmbd) with codes divided by c: an
    # untrained network must map them alike (the step of ALISTA was 1/L(cD),
    # which diverges for atom norms below about 0.7)
    X, D = problem(n_samples=20, n_features=8, n_atoms=12, seed=13)
    Z = Lista(c * D, 0.1 * c, 10, parametrization="alista").transform(X)
    assert np.all(np.isfinite(Z))
    Z1 = Lista(D, 0.1, 10, parametrization="alista").transform(X) / c
    assert np.any(Z1 != 0)
    np.testing.assert_allclose(Z, Z1, rtol=1e-6, atol=1e-9 * np.abs(Z1).max())


def test_two_atom_support_lipschitz_does_not_overflow():
    rng = np.random.default_rng(14)
    D = rng.standard_normal((5, 4))
    S = np.array([True, True, False, False, False])
    expected = ref.lipschitz_support(D, S) * 1e160
    for scale in (1e80, 1e150):
        L = lipschitz(scale * D, support=S)
        assert L == pytest.approx(ref.lipschitz_support(D, S) * scale ** 2, rel=1e-9), scale
    assert lipschitz(1e80 * D, support=np.stack([S, S]))[0] == pytest.approx(expected, rel=1e-9)


def test_float32_support_lipschitz_finds_the_top_eigenvalue():
    # the float32 power iteration could stop on the second eigenvalue
    rng = np.random.default_rng(15)
    for _ in range(10):
        D = rng.standard_normal((30, 20)).astype(np.float32)
        S = rng.random((200, 30)) < rng.uniform(0.3, 1.0, size=(200, 1))
        S[:, 0] = True
        L = lipschitz(D, support=S)
        assert L.dtype == np.float32
        np.testing.assert_allclose(L, ref.lipschitz_support(D.astype(np.float64), S),
                                   rtol=1e-4)


# ---------------------------------------------------------------------------
# 8. Lista.load fails fast on a file that does not hold its layers
# ---------------------------------------------------------------------------

def test_load_checks_the_layers_exist_before_building_them(tmp_path):
    rng = np.random.default_rng(16)
    Lista(rng.standard_normal((16, 8)), 0.1, 2, parametrization="lista").save(
        tmp_path / "net.npz")
    with np.load(tmp_path / "net.npz") as f:
        arrays = dict(f)
    arrays["n_layers"] = np.array(20000)    # 2 layers stored, 20000 claimed
    with open(tmp_path / "bad.npz", "wb") as f:
        np.savez(f, **arrays)
    # memory, not time: building the 20000 layers first allocates ~75 MB
    tracemalloc.start()
    try:
        with pytest.raises(ValueError):
            Lista.load(tmp_path / "bad.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"peak allocation {peak / 2**20:.1f} MiB before the error"


# ---------------------------------------------------------------------------
# 9. lmbd = 0 with lambda_max(x) = 0
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_zero_lambda_with_x_orthogonal_to_the_atoms_is_certified(method):
    # x orthogonal to every atom: z = 0 is the least-squares optimum, and the
    # dual variable u = r = x is feasible (x D^T = 0): gap 0, certified (it
    # was 1/2 ||x||^2, the dual taken as 0 at lmbd = 0, and refused)
    rng = np.random.default_rng(17)
    D = np.zeros((4, 6))
    D[:, :3] = rng.standard_normal((4, 3))
    X = np.zeros((3, 6))
    X[0, 3:] = rng.standard_normal(3)
    X[1, 4] = 2.0                        # X[2] = 0: gap 0, certified
    res = check(X, D, 0.0, method=method)
    np.testing.assert_array_equal(res.codes, 0.0)
    np.testing.assert_array_equal(res.gap, 0.0)
    np.testing.assert_array_equal(res.converged, [True, True, True])
    assert_gap_matches(X, D, 0.0, res.codes, duality_gap(X, D, 0.0, res.codes))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("method", METHODS)
def test_zero_lambda_with_products_cancelling_exactly_is_certified(method, dtype):
    # x = d_1 x d_2 (cross product) is orthogonal to both atoms, by products
    # that do not vanish but cancel exactly (integers): z = 0 is optimal and
    # its gap is 0. The error bound of the compensated dot products was
    # a worst case (n^2 u^2 sum |x_i y_i|), never 0: u = r stayed unproven
    # and the gap was 1/2 ||x||^2 (27 here for X[0]), not converged.
    D = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=dtype)
    X = np.array([[-3.0, 6.0, -3.0], [-6e20, 12e20, -6e20], [0.0, 0.0, 0.0]],
                 dtype=dtype)
    assert all(sum(Fr(float(a)) * Fr(float(b)) for a, b in zip(x, d)) == 0
               for x in X for d in D)
    res = check(X, D, 0.0, method=method)
    np.testing.assert_array_equal(res.codes, 0.0)
    np.testing.assert_array_equal(res.gap, 0.0)
    np.testing.assert_array_equal(res.converged, [True, True, True])
    np.testing.assert_array_equal(duality_gap(X, D, 0.0, res.codes), 0.0)


@pytest.mark.parametrize("n", [5, 12, 40, 300])
def test_zero_lambda_gap_is_zero_only_for_exactly_orthogonal_x(n):
    """The other side of the bound: at lmbd = 0 and z = 0 the gap is 0 only
    when x D^T = 0 exactly, else 1/2 ||x||^2 (u = r is feasible or not).
    Products 1, 2^-a, 2^-b, -1, -2^-a (b > a + 53, each pair's exponents
    split between x and d, at random places among zeros, scaled by a power
    of two) sum to 2^-b exactly. Where the compensated dot product gets 0
    (its error terms 2^-a and 2^-b added with rounding in one lane; the
    test failed with that rounding left out of the bound), its bound must
    see it: these x are never certified orthogonal."""
    rng = np.random.default_rng(n)
    for _ in range(100):
        a = int(rng.integers(54, 120))
        b = a + int(rng.integers(54, 120))
        scale = float(2.0 ** rng.integers(-200, 200))
        e = np.array([0, a, b, 0, a])
        ex = rng.integers(0, e + 1)                  # 2^-e = 2^-ex 2^-(e - ex)
        x, d = np.zeros(n), np.zeros(n)
        where = rng.choice(n, size=5, replace=False)
        x[where] = np.array([1, 1, 1, -1, -1]) * 2.0 ** -ex * scale
        d[where] = 2.0 ** -(e - ex)
        assert sum(Fr(float(u)) * Fr(float(v)) for u, v in zip(x, d)) == \
            Fr(2) ** -b * Fr(scale)
        half = float(sum(Fr(float(u)) ** 2 for u in x) / 2)
        gap = float(duality_gap(x, d[None], 0.0, np.zeros(1)))
        assert gap == pytest.approx(half, rel=1e-12), (a, b, where)


# ---------------------------------------------------------------------------
# 10. sizes and scales beyond the kernels' range: ValueError naming the argument
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["n_jobs", "max_iter"])
def test_huge_integer_arguments_raise_value_error_naming_them(name):
    X, D = problem(seed=18)
    for call in (lambda: solve_lasso(X, D, 0.3, **{name: 2**31}),
                 lambda: lipschitz(D, support=np.ones((3, D.shape[0]), bool),
                                   **{name: 2**31})):
        with pytest.raises(ValueError, match=name):
            call()


@pytest.mark.parametrize("scale", [1e200, 1e-200])
@pytest.mark.parametrize("parametrization", ["step", "coupled", "alista", "lista"])
def test_lista_with_out_of_range_lipschitz_constant_raises_naming_D(parametrization, scale):
    # L = ||D||_2^2 ~ 1e400 overflows, 1e-400 underflows
    X, D = problem(seed=19)
    with pytest.raises(ValueError, match=r"\bD\b"):
        Lista(scale * D, 0.3, 3, parametrization=parametrization)


@pytest.mark.parametrize("key, value", [("alpha", 1e300), ("alpha", 1e-300)])
def test_extreme_network_parameters_never_give_non_finite_codes(key, value):
    X, D = problem(seed=20)
    net = Lista(D, 0.3, 3, parametrization="step")
    params = net.parameters
    for layer in params:
        layer[key] = np.array(value)
    try:
        net.set_parameters(params)
    except ValueError as exc:            # refused where they enter: fine
        assert key in str(exc)
        return
    try:
        Z = net.transform(X)
    except FloatingPointError as exc:
        assert "sample" in str(exc)
        return
    assert np.all(np.isfinite(Z)), "transform returned non-finite codes"


def _exact_gap(x, D, lmbd, z, positive=False):
    """The gap of ``reference.gap_terms_robust`` in rational arithmetic
    (exact)."""
    x = [Fr(float(v)) for v in x]
    z = [Fr(float(v)) for v in z]
    D = [[Fr(float(v)) for v in row] for row in D]
    lam = Fr(float(lmbd))
    r = [x[i] - sum(z[j] * D[j][i] for j in range(len(D))) for i in range(len(x))]
    c = [sum(r[i] * d[i] for i in range(len(x))) for d in D]
    s = max([lam] + (c if positive else [abs(v) for v in c]))
    ratio = lam / s
    xr, rr = sum(a * b for a, b in zip(x, r)), sum(v * v for v in r)
    return (rr / 2 + lam * sum(abs(v) for v in z)) - (ratio * xr - ratio * ratio * rr / 2)


@pytest.mark.parametrize("positive", [False, True])
def test_gap_of_a_dual_point_feasible_for_the_exact_correlations(positive):
    """x almost orthogonal to the atoms (x D^T ~ 1e-17 ||x|| against a
    rounding of ~1e-16) and lmbd half the exact largest correlation: the
    dual point must divide by that exact correlation, not by the rounded
    one (which put it outside the feasible set and certified z = 0 with
    gap 0, or gave a gap off by orders of magnitude). The code z = 0 has an
    exact residual (r = x), so the gap equals the exact one (fractions) to
    the rounding of the objectives."""
    rng = np.random.default_rng(7)
    n, m = 16, 4
    for _ in range(20):
        D = rng.standard_normal((m, n))
        x = rng.standard_normal(n)
        # x orthogonal to the atoms in floating point: the exact
        # correlations are left at the rounding of the projection
        x -= np.linalg.lstsq(D.T, x, rcond=None)[0] @ D
        c = [sum(Fr(float(a)) * Fr(float(b)) for a, b in zip(x, d)) for d in D]
        top = max(c) if positive else max(abs(v) for v in c)
        if not top > 0:
            continue
        lmbd = float(top) / 2
        Z = np.zeros(m)
        gap = duality_gap(x, D, lmbd, Z, positive=positive)
        expected = float(_exact_gap(x, D, lmbd, Z, positive))
        # (1/2 ||x||^2 (1 - lmbd / top)^2, a quarter of 1/2 ||x||^2)
        assert expected > 0.1 * float(x @ x)
        np.testing.assert_allclose(gap, expected, rtol=1e-12)


def test_float32_gap_is_rounded_up_from_double():
    """One atom, x parallel to it and z = 0: the double gap is F(0) - F*
    exactly (to its rounding); the float32 gap was that value rounded to
    nearest, below the suboptimality half the time. Rounded up, it stays a
    bound (exact F* in fractions)."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        d = rng.standard_normal(5).astype(np.float32)
        x = (np.float32(rng.uniform(0.5, 2)) * d).astype(np.float32)
        c = abs(sum(Fr(float(a)) * Fr(float(b)) for a, b in zip(x, d)))
        lmbd = np.float32(float(c) * rng.uniform(0.2, 0.9))
        dd = sum(Fr(float(b)) ** 2 for b in d)
        suboptimality = (c - Fr(float(lmbd))) ** 2 / (2 * dd)
        gap = duality_gap(x, d[None], lmbd, np.zeros(1, np.float32))
        assert gap.dtype == np.float32
        assert Fr(float(gap)) >= suboptimality * (1 - Fr(1, 10**15))


@pytest.mark.parametrize("n", [2**16, 2**20])
def test_gap_sums_stay_accurate_with_many_features(n):
    """||r||^2 and <x, r> of a million features: plain lane sums drifted by
    (n/8) u (gaps 5e-14 to 4e-13 of 1/2 ||x||^2 below F(0) - F*, exact here:
    one atom d = x, z = 0); compensated, they stay at the double rounding."""
    v = 0.9
    x = np.full(n, v)
    c = n * Fr(v) * Fr(v)
    lmbd = float(c) / 2
    suboptimality = (c - Fr(lmbd)) ** 2 / (2 * c)
    gap = duality_gap(x, x[None], lmbd, np.zeros(1))
    assert abs(Fr(float(gap)) - suboptimality) <= Fr(1, 10**15) * c / 2
