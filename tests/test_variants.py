"""Non-negative codes (``positive=True``) and one lmbd per sample.

Two variants of the Lasso that run through the whole package, checked
against independent references:

* ``positive=True``: ``min_{z >= 0} 1/2 ||x - z D||^2 + lmbd ||z||_1``, with
  the one-sided prox ``max(u - t, 0)``, ``lambda_max = max(x D^T)_+`` and the
  one-sided dual constraint ``(r D^T)_j <= lmbd`` of the duality gap. The
  references: closed forms (orthonormal dictionaries: ``z = max(x D^T -
  lmbd, 0)``), scikit-learn's ``sparse_encode(..., algorithm="lasso_cd",
  positive=True)``, ``scipy.optimize.nnls`` at lmbd = 0, the long-double
  one-sided gap of ``reference.gap_terms_robust(positive=True)`` (through
  ``contract.py``), NumPy forward passes of the networks with the one-sided
  threshold and central finite differences of their gradients.
* ``lmbd`` an array of shape (n_samples,): every result equals the
  per-sample scalar calls (solvers within their certified gaps, and equal
  codes where the solution is unique; networks to rounding).
"""
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import reference as ref
from conftest import SPARSE_ENCODE_LASSO_TOL, sklearn_sparse_encode_tol
from contract import (LD, assert_certified, assert_gap_matches,
                      assert_objective_consistent, assert_same_optimum,
                      gap_allowance, true_gap_bound)
import fastlista._networks._execution as execution
from fastlista._kernels._gemm import GEMM_KERNELS
from fastlista import (ConvergenceWarning, InvalidParameterError, Lista,
                       alista_weights, duality_gap, lambda_max, lasso_objective,
                       soft_thresholding, solve_lasso)
from test_networks import (assert_storage_switches_agree, fd_gradient_errors, layer_input,
                           make_problem as network_problem, perturbed)

METHODS = ("ista", "fista", "backtracking", "oista", "cd", "auto")
PARAMETRIZATIONS = ("step", "coupled", "alista", "lista")
TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


def solve(X, D, lmbd, **kw):
    """solve_lasso with ConvergenceWarning silenced (checked by the contract)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return solve_lasso(X, D, lmbd, **kw)


def code_distance_bound(X, D, lmbd, Z, gap, mu, positive):
    """sqrt(2 gap / mu) per sample: ||z - z*|| when D D^T >= mu I, from the
    certified gap (its rounding allowance included)."""
    bound = true_gap_bound(X, D, lmbd, Z, gap, positive).astype(np.float64)
    return np.sqrt(2 * np.maximum(bound, 0) / mu)


def assert_codes_within(Z1, Z2, radius, scale, what):
    dist = np.linalg.norm(np.asarray(Z1, np.float64) - np.asarray(Z2, np.float64), axis=1)
    slack = 1e-9 * scale + 1e-300
    bad = dist > radius + slack
    assert not bad.any(), (
        f"{what}: codes differ by {dist[bad][:3].tolist()} in samples "
        f"{np.flatnonzero(bad)[:5].tolist()}, beyond the strong-convexity radius "
        f"{radius[bad][:3].tolist()}")


# ===========================================================================
# 1. the toolkit with positive=True
# ===========================================================================

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_positive_soft_thresholding_identities(dtype):
    rng = np.random.default_rng(0)
    U = (3 * rng.standard_normal((6, 9))).astype(dtype)
    t = 0.7
    U[0, :6] = [t, -t, 0.0, -0.0, np.inf, -np.inf]
    U[1, 0] = np.nan
    U[1, 1] = np.nextafter(dtype(t), dtype(np.inf))     # just above the threshold
    out = soft_thresholding(U, t, positive=True)
    assert out.dtype == dtype and out.shape == U.shape
    with np.errstate(invalid="ignore"):
        expected = np.maximum(U - dtype(t), dtype(0))    # the same arithmetic in dtype
    assert_array_equal(out, expected)
    # exact zeros where u <= t, positive values where u > t, NaN propagates
    finite = ~np.isnan(U)
    assert np.all(out[finite & (U <= dtype(t))] == 0)
    assert np.all(out[finite & (U > dtype(t))] > 0)
    assert np.isnan(out[1, 0]) and np.isposinf(out[0, 4]) and out[0, 5] == 0
    # = the signed prox of the positive part; = relu at t = 0
    with np.errstate(invalid="ignore"):
        assert_array_equal(out, soft_thresholding(np.maximum(U, 0), t))
    assert_array_equal(soft_thresholding(U, 0.0, positive=True), np.maximum(U, 0))
    # per-atom thresholds (float32 thresholds keep float32), other shapes
    T = rng.uniform(0, 2, size=9).astype(dtype)
    with np.errstate(invalid="ignore"):
        assert_array_equal(soft_thresholding(U, T, positive=True), np.maximum(U - T, 0))
        out64 = soft_thresholding(U, T.astype(np.float64), positive=True)
    assert out64.dtype == np.float64
    v = soft_thresholding(U[2], t, positive=True)
    assert v.shape == (9,) and np.all(v >= 0)
    assert soft_thresholding(np.zeros((0, 3), dtype), t, positive=True).shape == (0, 3)
    # positive=False is unchanged
    with np.errstate(invalid="ignore"):
        assert_array_equal(soft_thresholding(U, t), ref.soft_thresholding(U, dtype(t)))
    with pytest.raises(InvalidParameterError, match="positive"):
        soft_thresholding(U, t, positive="yes")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_positive_lambda_max_closed_form(dtype):
    X, D = ref.make_problem(12, 8, 10, seed=3, dtype=dtype)
    X[4] = 0.0
    lm = lambda_max(X, D, positive=True)
    assert lm.dtype == dtype and lm.shape == (12,)
    expected = ref.lambda_max_robust(X, D, positive=True).astype(np.float64)
    assert_allclose(lm, expected, rtol=1e-6 if dtype == np.float32 else 1e-13)
    assert lm[4] == 0
    # one-sided: at most ||x D^T||_inf, and the two signs of D together give it
    full = lambda_max(X, D)
    assert np.all(lm <= full)
    assert_array_equal(np.maximum(lm, lambda_max(X, -D, positive=True)), full)
    # no atom correlates positively: 0 (the zero code solves every lmbd >= 0)
    Q = ref.orthonormal_dictionary(4, 6, seed=1).astype(dtype)
    x = -(Q[0] + 2 * Q[1] + 0.5 * Q[2] + Q[3])
    assert lambda_max(x, Q, positive=True) == 0
    assert lambda_max(x, Q) > 0
    assert_allclose(float(lambda_max(-x, Q, positive=True)), 2.0, rtol=1e-6)
    with pytest.raises(InvalidParameterError, match="positive"):
        lambda_max(X, D, positive=1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_positive_codes_vanish_exactly_from_lambda_max_on(method, dtype):
    X, D = ref.make_problem(16, 10, 14, seed=4, dtype=dtype)
    tol = TOL[np.dtype(dtype)]
    lm = lambda_max(X, D, positive=True)
    assert np.all(lm > 0)
    for lmbd in (lm, float(lm.max()), 1.5 * lm):
        res = solve(X, D, lmbd, method=method, tol=tol, positive=True)
        assert_array_equal(res.codes, 0.0)
        assert res.converged.all()
        assert_certified(X, D, lmbd, tol, res, positive=True)
    # just below (where the zero code's gap exceeds tol, so that the zero
    # code cannot be certified): every sample's code is non-zero
    below = (0.97 if dtype == np.float32 else 1 - 1e-3) * lm
    zero_gap = ref.duality_gap_robust(X, D, below, np.zeros((16, 14)), positive=True)
    assert np.all(zero_gap > tol * 0.5 * np.sum(X.astype(np.float64) ** 2, axis=1))
    res = solve(X, D, below, method=method, tol=tol, positive=True)
    assert_certified(X, D, below, tol, res, positive=True)
    assert np.all(np.any(res.codes > 0, axis=1))
    # a signal no atom correlates positively with: 0 for every lmbd >= 0
    Q = ref.orthonormal_dictionary(4, 6, seed=1).astype(dtype)
    x = -(Q[0] + 2 * Q[1] + 0.5 * Q[2] + Q[3])[None]
    for lmbd in (0.0, 1e-3, 1.0):
        res = solve(x, Q, lmbd, method=method, tol=tol, positive=True)
        assert_array_equal(res.codes, 0.0)
        assert_certified(x, Q, lmbd, tol, res, positive=True)
        # lmbd = 0 too: u = r = x is dual feasible (x Q^T < 0), the gap 0
        # (it was 1/2 ||x||^2, the dual taken as 0 at lmbd = 0)
        assert res.converged[0] and res.gap[0] == 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_positive_orthonormal_closed_form(method, dtype):
    # D D^T = I: z = max(x D^T - lmbd, 0), exactly 0 where <x, d_j> <= lmbd
    rng = np.random.default_rng(5)
    D = ref.orthonormal_dictionary(6, 10, seed=5)
    X = rng.standard_normal((20, 10))
    X[3] = -D.sum(axis=0)                      # every <x, d_j> < 0
    X, D = X.astype(dtype), D.astype(dtype)
    tol = TOL[np.dtype(dtype)]
    C = X.astype(np.float64) @ D.T.astype(np.float64)
    for lmbd in (0.0, 0.1, 0.5 * np.abs(C).max(axis=1)):
        res = solve(X, D, lmbd, method=method, tol=tol, positive=True, max_iter=500)
        lm = ref.per_sample(lmbd, X.shape[0])[:, None]
        expected = np.maximum(C - lm, 0)
        assert np.all(res.codes >= 0)
        atol = (1e-5 if dtype == np.float32 else 1e-12) * np.abs(C).max()
        assert_allclose(res.codes, expected, rtol=0, atol=atol)
        # exact zeros where the atom does not correlate above lmbd (beyond rounding)
        assert np.all(res.codes[C < lm - 10 * atol] == 0)
        assert np.all(res.codes[C <= -10 * atol] == 0)
        assert_array_equal(res.codes[3], 0.0)
        # the gap certifies it (at lmbd = 0 only where the rounding of the
        # zero correlations left them all <= 0)
        assert_certified(X, D, lmbd, tol, res, positive=True)
        if np.all(ref.per_sample(lmbd, X.shape[0]) > 0):
            assert res.converged.all()


def test_sklearn_positive_sparse_encode_scaling_closed_form():
    # sparse_encode's alpha is lmbd of 1/2 ||x - zD||^2 + lmbd ||z||_1 (it
    # divides by n_features for Lasso's 1/(2 n) loss): on an orthonormal
    # dictionary its positive codes are max(x D^T - alpha, 0), so it is a
    # reference for our units
    decomposition = pytest.importorskip("sklearn.decomposition")
    rng = np.random.default_rng(6)
    D = ref.orthonormal_dictionary(5, 12, seed=6)
    X = rng.standard_normal((15, 12))
    for alpha in (0.05, 0.4):
        Z = decomposition.sparse_encode(X, D, algorithm="lasso_cd", alpha=alpha,
                                        positive=True, max_iter=10000)
        assert_allclose(Z, np.maximum(X @ D.T - alpha, 0), rtol=0, atol=1e-8)
        assert_allclose(solve_lasso(X, D, alpha, positive=True).codes, Z, rtol=0,
                        atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_positive_gap_and_objective_match_the_one_sided_reference(dtype):
    X, D = ref.make_problem(20, 12, 18, seed=7, dtype=dtype)
    rng = np.random.default_rng(7)
    N, m = X.shape[0], D.shape[0]
    lm_per = rng.uniform(0.05, 1.2, N) * ref.lambda_max(X, D, positive=True)
    for lmbd in (0.3, lm_per):
        Z_star = ref.solve_exact(X, D, lmbd, positive=True)
        codes = {
            "solution": Z_star,
            "random": np.abs(rng.standard_normal((N, m))),
            "sparse": np.abs(rng.standard_normal((N, m))) * (rng.random((N, m)) < 0.2),
            "zero": np.zeros((N, m)),
            "signed": rng.standard_normal((N, m)),
        }
        for name, Z in codes.items():
            Z = Z.astype(dtype)
            gap = duality_gap(X, D, lmbd, Z, positive=True)
            obj = lasso_objective(X, D, lmbd, Z, positive=True)
            assert gap.dtype == dtype and obj.dtype == dtype
            assert_gap_matches(X, D, lmbd, Z, gap, what=f"positive gap ({name})",
                               positive=True)
            infeasible = np.any(Z < 0, axis=1)
            assert np.all(np.isposinf(gap[infeasible]))
            assert np.all(np.isposinf(obj[infeasible]))
            # feasible codes: the objective is the Lasso's own (to an ulp)
            assert_allclose(obj[~infeasible], lasso_objective(X, D, lmbd, Z)[~infeasible],
                            rtol=4 * np.finfo(dtype).eps)
        # the positive solution: gap ~ 0; the signed Lasso's gap of it is not
        F, g, size = ref.gap_terms_robust(X, D, lmbd, Z_star, positive=True)
        assert np.all(g <= 1e-13 * size)
        if dtype == np.float64:
            assert_allclose(duality_gap(X, D, lmbd, Z_star, positive=True), 0,
                            atol=1e-12 * float(size.max()))
            assert np.any(duality_gap(X, D, lmbd, Z_star) > 1e-3)


@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("x, d, lmbd", [(1.0, 1e-320, 1.0), (0.0, 1e-310, 1.0),
                                        (0.0, 1e-320, 1e-171)])
def test_gap_of_codes_on_a_subnormal_dictionary(x, d, lmbd, positive):
    # Found by the long fuzz profile (test_variant_duality_gap_matches_reference),
    # signed and positive alike. F = 1/2 (x - 0.35 d)^2 + 0.35 lmbd is 1/2 x^2 +
    # 0.35 lmbd to rounding, and the code is not optimal (the optimum is 0):
    # its gap is about 0.35 lmbd. Scaling D up by 2**1064 once pushed the
    # scaled codes below the float range and lost lmbd ||z||_1.
    X, D, Z = np.array([[x]]), np.array([[d]]), np.array([[0.35]])
    F, g, _ = ref.gap_terms_robust(X, D, lmbd, Z, positive=positive)
    assert_allclose(lasso_objective(X, D, lmbd, Z, positive=positive), F.astype(float),
                    rtol=1e-12)
    assert_gap_matches(X, D, lmbd, Z, duality_gap(X, D, lmbd, Z, positive=positive),
                       positive=positive)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_positive_lasso_on_plus_minus_atoms_is_the_signed_lasso(method, dtype):
    # min_{z+, z- >= 0} F over [D; -D] is the signed Lasso over D with
    # z = z+ - z-: the same optimum, and (the atoms independent) the same code
    rng = np.random.default_rng(38)
    D = rng.standard_normal((6, 10))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = rng.standard_normal((20, 10))
    D2 = np.vstack([D, -D])
    lm = 0.3 * ref.lambda_max(X, D)
    X, D, D2 = (A.astype(dtype) for A in (X, D, D2))
    tol = TOL[np.dtype(dtype)]
    signed = solve(X, D, lm, method=method, tol=tol)
    pos = solve(X, D2, lm, method=method, tol=tol, positive=True)
    assert_certified(X, D2, lm, tol, pos, positive=True)
    assert signed.converged.all() and pos.converged.all()
    z = pos.codes[:, :6] - pos.codes[:, 6:]
    F = ref.objective_robust(X, D, lm, z)
    F_signed = ref.objective_robust(X, D, lm, signed.codes)
    b = true_gap_bound(X, D2, lm, pos.codes, pos.gap, True) + \
        true_gap_bound(X, D, lm, signed.codes, signed.gap)
    _, _, _, size = gap_allowance(X, D, lm, signed.codes)
    assert np.all(np.abs(F - F_signed) <= b + 1e-10 * size)
    mu = ref.strong_convexity(D)
    r = np.sqrt(2 * b.astype(np.float64) / mu)
    assert_codes_within(z, signed.codes, r, np.abs(signed.codes).max(), "z+ - z-")
    # the one-sided gap over [D; -D] of (z+, z-) with disjoint supports is
    # the signed gap over D of z+ - z-
    Z = signed.codes
    split = np.hstack([np.maximum(Z, 0), np.maximum(-Z, 0)])
    assert_allclose(duality_gap(X, D2, lm, split, positive=True), duality_gap(X, D, lm, Z),
                    rtol=1e-5 if dtype == np.float32 else 1e-12,
                    atol=1e-6 if dtype == np.float32 else 1e-14)


# ===========================================================================
# 2. solve_lasso(positive=True) against scikit-learn and scipy's nnls
# ===========================================================================

_SKLEARN_CACHE = {}


def positive_problem(kind):
    if kind == "under":                  # strongly convex: unique codes
        return ref.make_problem(24, 20, 12, seed=8)
    return ref.make_problem(20, 12, 24, seed=9)


def sklearn_positive(kind, rel):
    """sparse_encode's positive codes (and lmbd = rel * median lambda_max+)."""
    key = (kind, rel)
    if key not in _SKLEARN_CACHE:
        decomposition = pytest.importorskip("sklearn.decomposition")
        X, D = positive_problem(kind)
        lmbd = float(rel * np.median(ref.lambda_max(X, D, positive=True)))
        Z = decomposition.sparse_encode(X, D, algorithm="lasso_cd", alpha=lmbd,
                                        positive=True, max_iter=100000)
        _SKLEARN_CACHE[key] = (lmbd, Z)
    return _SKLEARN_CACHE[key]


def sklearn_agreement(kind, rel, method, dtype):
    """(X, D, lmbd, tol, result, sklearn codes, (above, below)): the largest
    relative excess of our objective over scikit-learn's, (F - F_sk) / F_sk,
    and of scikit-learn's over ours beyond scikit-learn's own duality gap
    (measured by the reference), (F_sk - gap_sk - F) / F_sk."""
    lmbd, Z_sk = sklearn_positive(kind, rel)
    X, D = (A.astype(dtype) for A in positive_problem(kind))
    tol = TOL[np.dtype(dtype)]
    res = solve(X, D, lmbd, method=method, tol=tol, positive=True)
    F = ref.objective_robust(X, D, lmbd, res.codes, positive=True)
    F_sk, g_sk, _ = ref.gap_terms_robust(X, D, lmbd, Z_sk, positive=True)
    above = float(np.max((F - F_sk) / F_sk))
    below = float(np.max((F_sk - g_sk - F) / F_sk))
    return X, D, lmbd, tol, res, Z_sk, (above, below)


@pytest.mark.parametrize("kind", ["under", "over"])
@pytest.mark.parametrize("rel", [0.05, 0.3, 0.8])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_positive_solve_matches_sklearn_sparse_encode(kind, rel, method, dtype):
    X, D, lmbd, tol, res, Z_sk, (above, below) = sklearn_agreement(kind, rel, method,
                                                                   dtype)
    assert_certified(X, D, lmbd, tol, res, positive=True)
    assert res.converged.all()
    assert np.all(res.codes >= 0)
    # both within their gaps of the same optimum (sklearn's gap measured by
    # the reference): F(z) - F(z_sk) <= gap(z), F(z_sk) - gap(z_sk) <= F(z)
    assert_objective_consistent(X, D, lmbd, res.codes, res.gap, Z_sk, positive=True)
    # and to 1e-9 relative (float32 codes: 2e-5). Ours above scikit-learn's:
    # F(z_sk) >= F* on any version, so the bound holds whatever sklearn's
    # accuracy. Scikit-learn's above ours: only within its own gap, which
    # widens the bound -- sparse_encode stops its coordinate descent at
    # tol=1e-8 from scikit-learn 1.8 on (measured gaps <= 1.1e-7 F, and
    # F(z_sk) - F <= 1e-9 F), at Lasso's default 1e-4 before (not a
    # parameter; on 1.7.2 gaps up to 1.1e-3 F, and F(z_sk) - F up to 2.8e-7 F)
    bound = 2e-5 if dtype == np.float32 else 1e-9
    assert above <= bound, above
    assert below <= bound, below
    if kind == "under":
        # unique solution: both codes within their strong-convexity radii
        mu = ref.strong_convexity(D)
        r = code_distance_bound(X, D, lmbd, res.codes, res.gap, mu, True)
        _, g_sk, allowed_sk, _ = gap_allowance(X, D, lmbd, Z_sk, positive=True)
        r_sk = np.sqrt(2 * (g_sk + allowed_sk).astype(np.float64) / mu)
        assert_codes_within(res.codes, Z_sk, r + r_sk, np.abs(Z_sk).max(),
                            f"{method} against sparse_encode")


def nnls_problem(seed=10):
    """m <= n (unique NNLS solutions): 6 generic signals (outside the cone of
    the atoms), 4 inside the cone (x = w D, w >= 0 sparse: NNLS solution w,
    residual 0) and one no atom correlates positively with (solution 0)."""
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((6, 10))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    W = np.abs(rng.standard_normal((4, 6))) * (rng.random((4, 6)) < 0.6)
    W[:, 0] += 0.5
    # the last row: x D^T = -1 for every atom, plus a part outside their span
    Q = np.linalg.qr(D.T)[0]                  # basis of the span of the atoms
    e = rng.standard_normal(10)
    x = -np.ones(6) @ np.linalg.solve(D @ D.T, D) + (e - Q @ (Q.T @ e))
    X = np.vstack([rng.standard_normal((6, 10)), W @ D, x])
    return X, D, W


def nnls_agreement(method, dtype):
    """(X, D, W, tol, result, nnls codes, max |z - z_nnls| / max |z_nnls| over
    the samples outside the cone (run to max_iter), F - F_nnls)."""
    from scipy.optimize import nnls

    X, D, W = nnls_problem()
    Z_nnls = np.array([nnls(D.T, x)[0] for x in X])
    X, D = X.astype(dtype), D.astype(dtype)
    tol = TOL[np.dtype(dtype)]
    res = solve(X, D, 0.0, method=method, tol=tol, max_iter=3000, positive=True)
    err = float(np.max(np.abs(res.codes - Z_nnls)[:6]) / np.max(np.abs(Z_nnls)))
    F = ref.objective_robust(X, D, 0.0, res.codes, positive=True)
    F_nnls = ref.objective_robust(X, D, 0.0, Z_nnls, positive=True)
    return X, D, W, tol, res, Z_nnls, err, (F - F_nnls).astype(np.float64)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_positive_lambda_zero_is_nonnegative_least_squares(method, dtype):
    X, D, W, tol, res, Z_nnls, err, dF = nnls_agreement(method, dtype)
    assert_certified(X, D, 0.0, tol, res, positive=True)
    # outside the cone (samples 0-5) the NNLS optimum has r != 0, with
    # r.d_j = 0 on its support: the gap is 1/2 ||r||^2, or ~0 where rounding
    # left every exact correlation of the computed r <= 0 (u = r is then
    # dual feasible, and the code certified)
    half_xx = 0.5 * np.sum(X.astype(np.float64) ** 2, axis=1)
    R = X.astype(np.float64) - res.codes.astype(np.float64) @ D.astype(np.float64)
    g = res.gap[:6].astype(np.float64)
    assert np.all(np.isclose(g, 0.5 * np.sum(R[:6] ** 2, axis=1), rtol=1e-5)
                  | (g <= tol * half_xx[:6]))
    assert res.converged[6:10].all()
    assert_array_equal(res.codes[10], 0.0)
    # the NNLS solution: the samples outside the cone ran to max_iter or
    # stopped certified, and reach its objective to rounding; those in the
    # cone stopped within their certified gap of it (r -> 0, z -> w)
    allowed = np.where(res.converged, res.gap.astype(np.float64), 0.0) + \
        (1e-6 if dtype == np.float32 else 1e-13) * half_xx
    assert np.all(dF <= allowed), (dF, allowed)
    # codes: ||z - z*||^2 <= 2 (F(z) - F*) / mu (F* = F(z_nnls) to rounding)
    mu = ref.strong_convexity(D)
    radius = np.sqrt(2 * np.maximum(dF, 0) / mu)
    assert_codes_within(res.codes, Z_nnls, radius,
                        (1e3 if dtype == np.float32 else 1.0) * np.abs(Z_nnls).max(),
                        f"{method} against nnls")
    assert err <= (1e-4 if dtype == np.float32 else 1e-9), err


@pytest.mark.parametrize("method", METHODS)
def test_positive_warm_start_negative_entries_are_clipped(method):
    X, D = ref.make_problem(12, 10, 15, seed=11)
    rng = np.random.default_rng(11)
    Z_star = ref.solve_exact(X, D, 0.3, positive=True)
    cold = solve(X, D, 0.3, method=method, positive=True)
    # an all-negative warm start is the zero code once clipped: the cold run
    neg = solve(X, D, 0.3, method=method, positive=True,
                Z0=-np.abs(rng.standard_normal(Z_star.shape)))
    assert_array_equal(neg.codes, cold.codes)
    assert_array_equal(neg.n_iter, cold.n_iter)
    # the solution with negative noise on its zeros: clipped back to it
    Z0 = Z_star - (Z_star == 0) * np.abs(rng.standard_normal(Z_star.shape))
    warm = solve(X, D, 0.3, method=method, positive=True, Z0=Z0)
    assert_certified(X, D, 0.3, 1e-8, warm, positive=True)
    assert warm.converged.all()
    assert np.all(warm.n_iter <= cold.n_iter)


# ===========================================================================
# 3. one lmbd per sample: the toolkit and the solvers
# ===========================================================================

@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_per_sample_lmbd_objective_and_gap_equal_scalar_calls(positive, dtype):
    X, D = ref.make_problem(15, 8, 12, seed=12, dtype=dtype)
    rng = np.random.default_rng(12)
    Z = (rng.standard_normal((15, 12)) * (rng.random((15, 12)) < 0.4)).astype(dtype)
    if positive:
        Z = np.abs(Z)
    lm = rng.uniform(0, 1.5, 15) * lambda_max(X, D, positive=positive)
    lm[0], lm[1] = 0.0, 1e3
    for func in (lasso_objective, duality_gap):
        out = func(X, D, lm, Z, positive=positive)
        assert out.dtype == dtype and out.shape == (15,)
        one = np.array([func(X[i], D, float(lm[i]), Z[i], positive=positive)
                        for i in range(15)])
        # (a batch and a single row differ by an ulp, with a scalar lmbd too:
        # the GEMMs of a batch round differently)
        assert_allclose(out, one, rtol=4 * np.finfo(dtype).eps,
                        atol=4 * np.finfo(dtype).eps * np.abs(one).max())
        # a constant array is the scalar; any array-like works
        assert_array_equal(func(X, D, np.full(15, 0.3), Z, positive=positive),
                           func(X, D, 0.3, Z, positive=positive))
        assert_array_equal(func(X, D, list(lm), Z, positive=positive), out)
    # against the references
    assert_allclose(lasso_objective(X, D, lm, Z, positive=positive),
                    ref.objective(X, D, lm, Z, positive=positive),
                    rtol=1e-6 if dtype == np.float32 else 1e-13)
    assert_gap_matches(X, D, lm, Z, duality_gap(X, D, lm, Z, positive=positive),
                       positive=positive)


def per_sample_problem(positive, seed=13):
    """Under-complete (unique codes); lmbd from 1e-3 to 1.5 times each
    sample's own lambda_max (so some codes are exactly 0)."""
    X, D = ref.make_problem(21, 16, 10, seed=seed)
    rng = np.random.default_rng(seed)
    X *= 10.0 ** rng.uniform(-2, 2, size=(21, 1))        # lambda_max far from 1
    factors = np.array([1e-3, 0.05, 0.3, 0.8, 0.999, 1.0, 1.5])
    lm = np.tile(factors, 3) * ref.lambda_max(X, D, positive=positive)
    return X, D, lm


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_per_sample_lmbd_solve_equals_scalar_calls(method, positive, dtype):
    X, D, lm = per_sample_problem(positive)
    X, D = X.astype(dtype), D.astype(dtype)
    tol = TOL[np.dtype(dtype)]
    res = solve(X, D, lm, method=method, tol=tol, positive=positive)
    assert_certified(X, D, lm, tol, res, positive=positive)
    assert res.converged.all()
    lm_max = lambda_max(X, D, positive=positive)
    assert_array_equal(res.codes[lm >= lm_max], 0.0)
    assert np.all(np.any(res.codes[lm < 0.99 * lm_max] != 0, axis=1))
    mu = ref.strong_convexity(D)
    r = code_distance_bound(X, D, lm, res.codes, res.gap, mu, positive)
    for i in range(X.shape[0]):
        one = solve(X[i:i + 1], D, float(lm[i]), method=method, tol=tol,
                    positive=positive)
        assert_certified(X[i:i + 1], D, float(lm[i]), tol, one, positive=positive)
        assert_same_optimum(X[i:i + 1], D, float(lm[i]), ResultRow(res, i), one,
                            positive=positive)
        r_one = code_distance_bound(X[i:i + 1], D, float(lm[i]), one.codes, one.gap, mu,
                                    positive)
        assert_codes_within(res.codes[i:i + 1], one.codes, r[i:i + 1] + r_one,
                            np.abs(one.codes).max(), f"sample {i}")


class ResultRow:
    """One row of a LassoResult, as a LassoResult of one sample."""

    def __init__(self, res, i):
        self.codes, self.gap = res.codes[i:i + 1], res.gap[i:i + 1]
        self.converged = res.converged[i:i + 1]


@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("method", ["cd", "fista"])
def test_fraction_of_lambda_max_without_rescaling(positive, method):
    # the paper's problems: each sample at 0.8 of its own lambda_max, on raw
    # signals, = the signals rescaled to lambda_max = 1 at lmbd = 0.8, with
    # the codes scaled back (z(x, s lmbd) = s z(x / s, lmbd))
    rng = np.random.default_rng(14)
    D = rng.standard_normal((12, 20))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = rng.standard_normal((30, 12)) @ D * 10.0 ** rng.uniform(-3, 3, size=(30, 1))
    lm = lambda_max(X, D, positive=positive)
    res = solve_lasso(X, D, 0.8 * lm, method=method, positive=positive)
    assert_certified(X, D, 0.8 * lm, 1e-8, res, positive=positive)
    assert res.converged.all()
    Xs = X / lm[:, None]
    scaled = solve_lasso(Xs, D, 0.8, method=method, positive=positive)
    back = scaled.codes * lm[:, None]
    # the scaled-back codes are as good on the raw problem: objectives within
    # the gaps (lm^2 times the scaled one's), to the rounding of X / lm
    F, _, _, size = gap_allowance(X, D, 0.8 * lm, res.codes, positive=positive)
    F_back = ref.objective_robust(X, D, 0.8 * lm, back, positive=positive)
    bound = true_gap_bound(X, D, 0.8 * lm, res.codes, res.gap, positive) + \
        true_gap_bound(Xs, D, 0.8, scaled.codes, scaled.gap, positive) * LD(1) * lm.astype(LD) ** 2
    assert np.all(np.abs(F - F_back) <= bound + 1e-12 * size)
    mu = ref.strong_convexity(D)
    r = code_distance_bound(X, D, 0.8 * lm, res.codes, res.gap, mu, positive)
    r_s = lm * code_distance_bound(Xs, D, 0.8, scaled.codes, scaled.gap, mu, positive)
    assert_codes_within(res.codes, back, r + r_s + 1e-12 * lm, 0.0, "rescaled codes")


@pytest.mark.parametrize("method", METHODS)
def test_per_sample_lmbd_one_sample_and_zeros(method):
    X, D = ref.make_problem(4, 10, 8, seed=15)
    # a 1-D signal takes a scalar or an array of one lmbd
    a = solve_lasso(X[0], D, 0.3, method=method)
    b = solve_lasso(X[0], D, np.array([0.3]), method=method)
    assert a.codes.shape == b.codes.shape == (8,)
    assert_array_equal(a.codes, b.codes)
    # lmbd = 0 for a sample in the span of the atoms: least squares, certified
    lm = np.array([0.0, 0.3, 0.0, 5.0])
    res = solve_lasso(X, D, lm, method=method)
    assert_certified(X, D, lm, 1e-8, res)
    assert res.converged.all()
    assert_array_equal(res.codes[3], 0.0)
    R = X - res.codes @ D                 # lmbd = 0: gap = 1/2 ||r||^2 <= tol 1/2 ||x||^2
    assert np.all(np.sum(R[[0, 2]] ** 2, axis=1)
                  <= 1e-8 * np.sum(X[[0, 2]] ** 2, axis=1) * (1 + 1e-6))


def _bad_lmbds(n):
    return {
        "too long": np.full(n + 1, 0.3),
        "too short": np.full(n - 1, 0.3),
        "column": np.full((n, 1), 0.3),
        "negative": np.r_[0.3 * np.ones(n - 1), -1e-3],
        "nan": np.r_[np.nan, 0.3 * np.ones(n - 1)],
        "inf": np.r_[0.3 * np.ones(n - 1), np.inf],
        "strings": ["a"] * n,
    }


@pytest.mark.parametrize("bad", list(_bad_lmbds(5)))
def test_bad_per_sample_lmbd_raises_naming_lmbd(bad):
    X, D = network_problem(n_samples=5, n_atoms=6, n_features=4, seed=16)
    lm = _bad_lmbds(5)[bad]
    Z = np.zeros((5, 6))
    net = Lista(D, 0.3, 2)
    calls = {
        "lasso_objective": lambda: lasso_objective(X, D, lm, Z),
        "duality_gap": lambda: duality_gap(X, D, lm, Z, positive=True),
        "solve_lasso": lambda: solve_lasso(X, D, lm),
        "solve_lasso positive": lambda: solve_lasso(X, D, lm, positive=True),
        "transform": lambda: net.transform(X, lmbd=lm),
        "objective": lambda: net.objective(X, lmbd=lm),
        "loss_and_grad": lambda: net.loss_and_grad(X, lmbd=lm),
        "fit": lambda: net.fit(X, lmbd=lm, max_iter=1),
    }
    try:
        from fastlista import distributed as fd
        calls["distributed.solve_lasso"] = lambda: fd.solve_lasso(X, D, lm)
        calls["distributed.fit"] = lambda: fd.fit(net, X, lmbd=lm, max_iter=1)
    except ImportError:
        pass
    before = net.parameters
    for name, call in calls.items():
        with pytest.raises(InvalidParameterError, match="'lmbd'") as info:
            call()
        assert isinstance(info.value, ValueError), name
    for a, b in zip(before, net.parameters):        # nothing was trained
        assert_array_equal(a["alpha"], b["alpha"])


# ===========================================================================
# 4. networks with positive=True
# ===========================================================================

def one_sided(U, s):
    return np.maximum(U - s, 0.0)


def numpy_forward(params, X, D, lmbd, parametrization, W_alista=None, positive=True):
    """Every layer's (pre-activation, threshold, output); lmbd a scalar or
    one a sample (thresholds lmbd_i * theta)."""
    lm = ref.per_sample(lmbd, X.shape[0])[:, None]
    Z = np.zeros((X.shape[0], D.shape[0]))
    layers = []
    for p in params:
        U, s = layer_input(p, Z, X, D, lm, parametrization, W_alista)
        Z = one_sided(U, s) if positive else ref.soft_thresholding(U, s)
        layers.append((U, s, Z))
    return layers


@pytest.fixture(params=["mixed", "dense", "sparse"])
def path(request, monkeypatch):
    """The dense GEMM path, the sparse gather path, or density's choice, in
    blocks of 16 rows, GEMMs of 5 (2 threads for "mixed"), as in test_networks.py;
    "mixed" multiplies through fastlista's GEMM (_gemm.h), the others through BLAS."""
    force_path(monkeypatch, request.param)
    return request.param


@pytest.mark.parametrize("parametrization", ["step", "coupled", "lista"])
@pytest.mark.parametrize("lmbd", [0.05, 0.3])
def test_untrained_positive_network_is_one_sided_ista(parametrization, lmbd, path):
    X, D = network_problem(n_samples=50, seed=17)
    T = 8
    net = Lista(D, lmbd, T, parametrization=parametrization, positive=True)
    assert net.positive
    L = net.lipschitz_
    Z = np.zeros((X.shape[0], D.shape[0]))
    ista = []
    for _ in range(T):
        Z = one_sided(Z - (Z @ D - X) @ D.T / L, lmbd / L)
        ista.append(Z)
    out = net.transform(X)
    assert np.all(out >= 0) and np.any(out > 0)
    assert_allclose(out, ista[-1], rtol=1e-10, atol=1e-12)
    assert_allclose(net.transform(X, n_layers=3), ista[2], rtol=1e-10, atol=1e-12)
    per_layer = [ref.objective(X, D, lmbd, Z).mean() for Z in ista]
    assert_allclose(net.objective(X, per_layer=True), per_layer, rtol=1e-10)
    assert_allclose(net.objective(X), per_layer[-1], rtol=1e-10)
    # the reference's own ISTA (eigvalsh's L) agrees
    assert_allclose(out, ref.ista(X, D, lmbd, T, positive=True)[0], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
@pytest.mark.parametrize("shape", [(12, 8), (12, 5)], ids=["gram", "two-gemms"])
def test_positive_forward_matches_numpy(parametrization, shape, path):
    X, D = network_problem(n_samples=40, n_atoms=shape[0], n_features=shape[1], seed=18)
    lmbd = 0.2
    net = Lista(D, lmbd, 5, parametrization=parametrization, positive=True)
    net.set_parameters(perturbed(net, seed=19))
    W = alista_weights(D)
    layers = numpy_forward(net.parameters, X, D, lmbd, parametrization, W)
    out = net.transform(X)
    assert np.all(out >= 0)
    assert_allclose(out, layers[-1][2], rtol=1e-10, atol=1e-12)
    objs = [ref.objective(X, D, lmbd, Z).mean() for _, _, Z in layers]
    assert_allclose(net.objective(X, per_layer=True), objs, rtol=1e-10)
    # one lmbd per sample scales each sample's thresholds
    lm = np.random.default_rng(20).uniform(0, 0.6, X.shape[0])
    layers = numpy_forward(net.parameters, X, D, lm, parametrization, W)
    assert_allclose(net.transform(X, lmbd=lm), layers[-1][2], rtol=1e-10, atol=1e-12)
    objs = [ref.objective(X, D, lm, Z).mean() for _, _, Z in layers]
    assert_allclose(net.objective(X, per_layer=True, lmbd=lm), objs, rtol=1e-10)
    assert_allclose(net.objective(X, lmbd=lm), objs[-1], rtol=1e-10)


def generic_point(net, X, D, lmbd, parametrization, positive):
    """The first perturbation of the parameters whose pre-activations all stay
    1e-5 away from the kinks (u = s one-sided; u = +-s signed)."""
    W = alista_weights(D)
    for seed in range(100):
        params = perturbed(net, seed=seed)
        layers = numpy_forward(params, X, D, lmbd, parametrization, W, positive)
        margin = min(np.min(np.abs(U - s) if positive else np.abs(np.abs(U) - s))
                     for U, s, _ in layers)
        if margin > 1e-5:
            return params, layers
    pytest.fail("no generic point found")


def fd_errors(parametrization, loss, lmbd_kind, positive=True, shape=(12, 8)):
    """Central finite differences of loss_and_grad: a list of (t, key, index,
    fd, g, |fd - g| / max(|g|, 1e-3)) over up to 3 entries of every key of
    every layer, at a generic point."""
    X, D = network_problem(n_samples=40, n_atoms=shape[0], n_features=shape[1], seed=21)
    lmbd = 0.25
    T = 4
    lm = np.random.default_rng(22).uniform(0.1, 0.5, X.shape[0]) \
        if lmbd_kind == "per-sample" else None
    eff = lmbd if lm is None else lm
    net = Lista(D, lmbd, T, parametrization=parametrization, positive=positive)
    params, layers = generic_point(net, X, D, eff, parametrization, positive)
    net.set_parameters(params)
    S = np.abs(np.random.default_rng(23).standard_normal((X.shape[0], D.shape[0]))) * 0.2
    f, grads = net.loss_and_grad(X, loss=loss, Z_target=S, lmbd=lm)
    Z = layers[-1][2]
    ref_f = (ref.objective(X, D, eff, Z) if loss == "unsupervised"
             else 0.5 * np.sum((Z - S) ** 2, axis=1)).mean()
    assert_allclose(f, ref_f, rtol=1e-12)
    return fd_gradient_errors(net, params, grads,
                              lambda: net.loss_and_grad(X, loss, S, lmbd=lm)[0], seed=24)


def force_path(monkeypatch, name):
    """The execution path of ``path`` (the fixture), set by hand."""
    rho = {"mixed": execution._SPARSE_DENSITY, "dense": 0.0, "sparse": 1.1}[name]
    monkeypatch.setattr(execution, "_SPARSE_DENSITY", rho)
    monkeypatch.setattr(execution, "plan",
                        lambda *shape, **kw: (2 if name == "mixed" else 1, 16, 5))
    monkeypatch.setattr(execution, "_OWN_GEMM", max(GEMM_KERNELS) if name == "mixed" else 0)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
@pytest.mark.parametrize("loss", ["unsupervised", "supervised"])
@pytest.mark.parametrize("path_name, lmbd_kind", [
    ("dense", "scalar"), ("sparse", "per-sample"), ("mixed", "per-sample")])
def test_positive_gradient_finite_differences(parametrization, loss, path_name, lmbd_kind,
                                              monkeypatch):
    force_path(monkeypatch, path_name)
    errors = fd_errors(parametrization, loss, lmbd_kind)
    worst = max(errors, key=lambda e: e[-1])
    assert worst[-1] <= 1e-6, worst
    # the layers are not all trivially flat: some gradients are not small
    assert max(abs(e[4]) for e in errors) > 1e-3


@pytest.mark.parametrize("parametrization", ["step", "coupled", "alista"])
def test_positive_gradient_through_switching_storage_formats(parametrization, monkeypatch):
    # as test_networks.py's signed test: with the dense/sparse switch set
    # between two consecutive layer densities, the gradients equal those of
    # the all-dense and all-sparse runs (one-sided thresholds, per-sample lmbd)
    X, D = network_problem(n_samples=40, n_atoms=12, n_features=8, seed=39)
    T = 8
    net = Lista(D, 0.1, T, parametrization=parametrization, positive=True)
    net.set_parameters(perturbed(net, seed=0))
    lm = np.random.default_rng(39).uniform(0.05, 0.2, X.shape[0])
    monkeypatch.setattr(execution, "plan", lambda *shape, **kw: (1, 10**6, 10**6))
    density = [np.count_nonzero(net.transform(X, n_layers=t, lmbd=lm)) / X.size * 8 / 12
               for t in range(1, T + 1)]
    switches = [(a + b) / 2 for a, b in zip(density, density[1:]) if a != b]
    assert switches

    assert_storage_switches_agree(net, X, switches, monkeypatch, lmbd=lm)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_positive_save_load_round_trip(tmp_path, parametrization):
    X, D = network_problem(seed=25)
    net = Lista(D, 0.3, 3, parametrization=parametrization, positive=True)
    net.set_parameters(perturbed(net, seed=26))
    net.loss_history_ = [2.0, 1.0]
    net.save(tmp_path / "net")
    with np.load(tmp_path / "net") as f:
        assert int(f["format_version"]) == 2 and bool(f["positive"])
    back = Lista.load(tmp_path / "net")
    assert back.positive is True and "positive=True" in repr(back)
    assert back.loss_history_ == net.loss_history_
    assert_array_equal(back.transform(X), net.transform(X))
    # a signed network stays signed
    signed = Lista(D, 0.3, 3, parametrization=parametrization)
    signed.save(tmp_path / "signed.npz")
    assert Lista.load(tmp_path / "signed.npz").positive is False


@pytest.mark.parametrize("parametrization", ["step", "lista"])
def test_version_1_file_loads_with_signed_codes(tmp_path, parametrization):
    # _persistence.py's format before "positive": format_version 1
    X, D = network_problem(seed=27)
    net = Lista(D, 0.3, 3, parametrization=parametrization)
    params = perturbed(net, seed=28)
    arrays = {"format": np.array("fastlista.Lista"), "format_version": np.array(1),
              "parametrization": np.array(parametrization), "lmbd": np.array(0.3),
              "n_layers": np.array(3), "D": D,
              "loss_history": np.array([3.0, 2.5])}
    for t, layer in enumerate(params):
        for k, v in layer.items():
            arrays[f"layer{t}_{k}"] = v
    with open(tmp_path / "v1.npz", "wb") as f:
        np.savez(f, **arrays)
    back = Lista.load(tmp_path / "v1.npz")
    assert back.positive is False
    assert back.loss_history_ == [3.0, 2.5]
    net.set_parameters(params)
    assert_array_equal(back.transform(X), net.transform(X))
    assert np.any(back.transform(X) < 0)


@pytest.mark.parametrize("lmbd_kind", ["scalar", "per-sample"])
def test_positive_network_refines_to_certified_positive_codes(lmbd_kind):
    X, D = network_problem(seed=29)
    net = Lista(D, 0.3, 4, parametrization="coupled", positive=True)
    net.set_parameters(perturbed(net, seed=30))
    lm = 0.3 if lmbd_kind == "scalar" else \
        np.random.default_rng(31).uniform(0.05, 1.2, X.shape[0])
    Z = net.transform(X, lmbd=lm, refine_tol=1e-10)
    assert np.all(Z >= 0)
    gap = duality_gap(X, D, lm, Z, positive=True)
    assert_gap_matches(X, D, lm, Z, gap, positive=True)
    assert np.all(gap <= 1e-10 * 0.5 * np.sum(X * X, axis=1))
    Z_star = ref.solve_exact(X, D, lm, positive=True)
    assert np.all(ref.objective(X, D, lm, Z, positive=True)
                  <= ref.objective(X, D, lm, Z_star, positive=True) + gap + 1e-13)


@pytest.mark.parametrize("lmbd_kind", ["scalar", "per-sample"])
def test_positive_semi_supervised_targets_are_positive_lasso_solutions(lmbd_kind):
    X, D = network_problem(seed=32)
    net = Lista(D, 0.3, 3, parametrization="lista", positive=True)
    net.set_parameters(perturbed(net, seed=33))
    lm = None if lmbd_kind == "scalar" else \
        np.random.default_rng(34).uniform(0.05, 1.2, X.shape[0])
    S = solve_lasso(X, D, 0.3 if lm is None else lm, positive=True).codes
    assert np.all(S >= 0) and np.any(S > 0)
    f1, g1 = net.loss_and_grad(X, loss="semi-supervised", lmbd=lm)
    f2, g2 = net.loss_and_grad(X, loss="supervised", Z_target=S, lmbd=lm)
    assert_allclose(f1, f2, rtol=1e-8)
    for a, b in zip(g1, g2):
        for k in a:
            assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_positive_float32_network_agrees_with_float64(parametrization):
    X, D = network_problem(n_samples=80, seed=35)
    net64 = Lista(D, 0.3, 5, parametrization=parametrization, positive=True)
    net64.set_parameters(perturbed(net64, seed=36, scale=0.1))
    net32 = Lista(D.astype(np.float32), 0.3, 5, parametrization=parametrization,
                  positive=True)
    net32.set_parameters(net64.parameters)
    Z32, Z64 = net32.transform(X.astype(np.float32)), net64.transform(X)
    assert Z32.dtype == np.float32 and np.all(Z32 >= 0)
    assert np.max(np.abs(Z32 - Z64)) <= 1e-4 * np.max(np.abs(Z64))
    f32, g32 = net32.loss_and_grad(X.astype(np.float32))
    f64, g64 = net64.loss_and_grad(X)
    assert_allclose(f32, f64, rtol=1e-4)
    for a, b in zip(g32, g64):
        for k in a:
            assert np.max(np.abs(a[k] - b[k])) <= 1e-3 * np.max(np.abs(b[k])) + 1e-6


# ===========================================================================
# 5. networks with one lmbd per sample
# ===========================================================================

def trained_like(parametrization, positive, seed=37):
    X, D = network_problem(n_samples=30, seed=seed)
    net = Lista(D, 0.3, 4, parametrization=parametrization, positive=positive)
    net.set_parameters(perturbed(net, seed=seed + 1))
    lm = np.random.default_rng(seed + 2).uniform(0, 1.2, X.shape[0])
    lm[0] = 0.0
    return X, D, net, lm


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
@pytest.mark.parametrize("positive", [False, True])
def test_per_sample_lmbd_forward_equals_scalar_calls(parametrization, positive):
    X, D, net, lm = trained_like(parametrization, positive)
    Z = net.transform(X, lmbd=lm)
    one = np.vstack([net.transform(X[i:i + 1], lmbd=float(lm[i])) for i in range(len(X))])
    assert_allclose(Z, one, rtol=1e-12, atol=1e-14)
    # float32: to float32's rounding (a batch's GEMMs round unlike one row's)
    net32 = Lista(D.astype(np.float32), 0.3, 4, parametrization=parametrization,
                  positive=positive).set_parameters(net.parameters)
    X32 = X.astype(np.float32)
    Z32 = net32.transform(X32, lmbd=lm)
    assert Z32.dtype == np.float32
    one32 = np.vstack([net32.transform(X32[i], lmbd=float(lm[i])) for i in range(len(X))])
    assert np.max(np.abs(Z32 - one32)) <= 1e-5 * np.abs(one32).max()
    assert np.max(np.abs(Z32 - Z)) <= 1e-4 * np.abs(Z).max()
    assert_array_equal(net.transform(X, lmbd=np.full(len(X), 0.3)), net.transform(X))
    assert_allclose(net.transform(X, n_layers=2, lmbd=lm),
                    np.vstack([net.transform(X[i], n_layers=2, lmbd=float(lm[i]))
                               for i in range(len(X))]), rtol=1e-12, atol=1e-14)
    per = [net.objective(X[i:i + 1], per_layer=True, lmbd=float(lm[i]))
           for i in range(len(X))]
    assert_allclose(net.objective(X, per_layer=True, lmbd=lm), np.mean(per, axis=0),
                    rtol=1e-12)
    assert_allclose(net.objective(X, lmbd=lm),
                    np.mean([net.objective(X[i], lmbd=float(lm[i])) for i in range(len(X))]),
                    rtol=1e-12)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("loss", ["unsupervised", "supervised"])
def test_per_sample_lmbd_loss_and_grad_is_the_mean_of_scalar_calls(parametrization,
                                                                   positive, loss):
    # the loss is a mean over samples: with N samples, f = 1/N sum_i f_i and
    # grad = 1/N sum_i grad_i, each f_i a one-sample call at its own lmbd
    X, D, net, lm = trained_like(parametrization, positive, seed=40)
    S = np.random.default_rng(43).standard_normal((X.shape[0], D.shape[0])) * 0.2
    f, g = net.loss_and_grad(X, loss, S, lmbd=lm)
    parts = [net.loss_and_grad(X[i:i + 1], loss, S[i:i + 1], lmbd=lm[i:i + 1])
             for i in range(len(X))]
    assert_allclose(f, np.mean([p[0] for p in parts]), rtol=1e-12)
    for t in range(net.n_layers):
        for k in g[t]:
            mean = np.mean([p[1][t][k] for p in parts], axis=0)
            assert_allclose(g[t][k], mean, rtol=1e-9,
                            atol=1e-12 * max(np.abs(mean).max(), 1.0))
    # two unequal chunks, weighted by their sizes
    (fa, ga), (fb, gb) = (net.loss_and_grad(X[s], loss, S[s], lmbd=lm[s])
                          for s in (slice(0, 7), slice(7, None)))
    n = len(X)
    assert_allclose(f, (7 * fa + (n - 7) * fb) / n, rtol=1e-12)
    for t in range(net.n_layers):
        for k in g[t]:
            assert_allclose(g[t][k], (7 * ga[t][k] + (n - 7) * gb[t][k]) / n,
                            rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("parametrization", ["step", "coupled"])
@pytest.mark.parametrize("positive", [False, True])
def test_fit_with_a_constant_lmbd_array_equals_the_scalar_fit(parametrization, positive):
    X, D = network_problem(n_samples=40, seed=44)

    def fitted(lmbd, net_lmbd=0.3):
        net = Lista(D, net_lmbd, 3, parametrization=parametrization, positive=positive)
        return net.fit(X, max_iter=8, lmbd=lmbd)

    scalar = fitted(0.5)
    array = fitted(np.full(X.shape[0], 0.5))
    own = fitted(None, net_lmbd=0.5)             # the network's own lmbd
    for other in (array, own):
        assert other.loss_history_ == scalar.loss_history_
        for a, b in zip(scalar.parameters, other.parameters):
            for k in a:
                assert_array_equal(a[k], b[k])
    # a varying lmbd trains on each sample's Lasso: the first loss is the
    # mean objective of the untrained network at those lmbd
    lm = np.random.default_rng(45).uniform(0.1, 1.0, X.shape[0])
    net = Lista(D, 0.3, 3, parametrization=parametrization, positive=positive)
    f0 = net.loss_and_grad(X, lmbd=lm)[0]
    net.fit(X, max_iter=8, lmbd=lm)
    assert_allclose(net.loss_history_[0], f0, rtol=1e-12)
    assert net.loss_history_[-1] < f0
    assert_allclose(net.loss_history_[-1], net.objective(X, lmbd=lm), rtol=1e-10)


# ===========================================================================
# 6. estimators and the Dask helpers
# ===========================================================================

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lasso_coder_positive_code_matches_sparse_encode(dtype):
    sklearn_decomposition = pytest.importorskip("sklearn.decomposition")
    from fastlista.estimators import LassoSparseCoder

    from sklearn.linear_model import Lasso

    X, D = positive_problem("under")
    alpha, _ = sklearn_positive("under", 0.3)
    coder = LassoSparseCoder(D.astype(dtype), alpha=alpha, positive_code=True, tol=TOL[
        np.dtype(dtype)])
    Z = coder.fit_transform(X.astype(dtype))
    assert Z.dtype == dtype and np.all(Z >= 0)
    # the codes of sparse_encode(X, D, algorithm="lasso_cd", alpha=alpha,
    # positive=True) from scikit-learn 1.8 on: its Lasso (1/(2n) ||x - zD||^2
    # + a ||z||_1, a = alpha / n_features) at tol=1e-8. sparse_encode has no
    # tol parameter, and before 1.8 stops at Lasso's default 1e-4 (on 1.7.2
    # its codes were 4.7e-5 max|z| off ours, its gaps up to 2.3e-5 of
    # 1/2 ||x||^2): the Lasso with an explicit tol is the same reference on
    # every version (1.9.1: the codes of its sparse_encode to 2e-15 max|z|)
    Z_sk = Lasso(alpha=alpha / X.shape[1], fit_intercept=False, positive=True, tol=1e-8,
                 max_iter=100000).fit(D.T, X.T).coef_
    assert_allclose(Z, Z_sk, rtol=0, atol=(1e-3 if dtype == np.float32 else 1e-7)
                    * np.abs(Z_sk).max())
    # scikit-learn's own estimator with the same options, at the same tol on
    # every version (conftest.sklearn_sparse_encode_tol: a no-op from 1.8 on)
    sk = sklearn_decomposition.SparseCoder(D, transform_algorithm="lasso_cd",
                                           transform_alpha=alpha, positive_code=True,
                                           transform_max_iter=100000)
    with sklearn_sparse_encode_tol() as tols:
        Z_sc = sk.transform(X)
    assert tols and set(tols) == {SPARSE_ENCODE_LASSO_TOL}, tols
    assert_allclose(Z, Z_sc, rtol=0,
                    atol=(1e-3 if dtype == np.float32 else 1e-7) * np.abs(Z_sk).max())
    # score is minus the mean positive objective; the signed coder differs
    assert_allclose(coder.score(X.astype(dtype)),
                    -np.mean(ref.objective(X, D, alpha, Z, positive=True)),
                    rtol=1e-5 if dtype == np.float32 else 1e-12)
    signed = LassoSparseCoder(D, alpha=alpha).fit_transform(X)
    assert np.any(signed < 0)
    with pytest.raises(ValueError, match="positive_code"):
        LassoSparseCoder(D, positive_code="yes").fit(X)


def test_learned_coder_positive_code():
    pytest.importorskip("sklearn")
    from sklearn.base import clone

    from fastlista.estimators import LearnedSparseCoder

    X, D = network_problem(n_samples=60, seed=46)
    coder = LearnedSparseCoder(D, alpha=0.3, n_layers=4, max_iter=10, positive_code=True)
    coder.fit(X)
    assert coder.network_.positive
    assert clone(coder).get_params()["positive_code"] is True
    Z = coder.transform(X)
    assert np.all(Z >= 0) and np.any(Z > 0)
    Z32 = coder.transform(X.astype(np.float32))
    assert Z32.dtype == np.float32 and np.all(Z32 >= 0)
    assert np.max(np.abs(Z32 - Z)) <= 1e-4 * np.abs(Z).max()
    assert_allclose(coder.score(X), -np.mean(ref.objective(X, D, 0.3, Z, positive=True)),
                    rtol=1e-10)
    coder.set_params(refine_tol=1e-10)
    Zr = coder.transform(X)
    gap = duality_gap(X, D, 0.3, Zr, positive=True)
    assert np.all(Zr >= 0) and np.all(gap <= 1e-10 * 0.5 * np.sum(X * X, axis=1))
    with pytest.raises(ValueError, match="positive_code"):
        LearnedSparseCoder(D, positive_code=None).fit(X)


@pytest.fixture
def threads():
    dask = pytest.importorskip("dask")
    pytest.importorskip("dask.array")
    with dask.config.set(scheduler="threads"):
        yield


@pytest.mark.parametrize("lmbd_kind", ["scalar", "numpy", "dask"])
def test_distributed_solve_lasso_positive_and_per_sample(threads, lmbd_kind):
    import dask
    import dask.array as da
    from fastlista import distributed as fd

    X, D = ref.make_problem(50, 12, 20, seed=47)
    lm = 0.3 if lmbd_kind == "scalar" else \
        np.random.default_rng(47).uniform(0.05, 1.1, 50) * ref.lambda_max(X, D, True)
    arg = da.from_array(lm, chunks=17) if lmbd_kind == "dask" else lm
    res = fd.solve_lasso(da.from_array(X, chunks=(13, 12)), D, arg, positive=True,
                         tol=1e-10)
    codes, gap, n_iter, converged = dask.compute(res.codes, res.gap, res.n_iter,
                                                 res.converged)
    local = solve_lasso(X, D, lm, positive=True, tol=1e-10)
    out = type(local)(codes, gap, n_iter, converged)
    assert_certified(X, D, lm, 1e-10, out, positive=True)
    assert converged.all()
    assert_same_optimum(X, D, lm, out, local, positive=True)
    # encode with solver settings (a scalar lmbd) and with positive estimators
    from fastlista.estimators import LassoSparseCoder
    Xd = da.from_array(X, chunks=(13, 12))
    Z1 = fd.encode({"D": D, "lmbd": 0.3, "positive": True, "tol": 1e-10}, Xd).compute()
    Z2 = fd.encode(LassoSparseCoder(D, alpha=0.3, positive_code=True, tol=1e-10),
                   Xd).compute()
    Z3 = solve_lasso(X, D, 0.3, positive=True, tol=1e-10)
    for Z in (Z1, Z2):
        assert np.all(Z >= 0)
        assert_same_optimum(X, D, 0.3, type(local)(Z, duality_gap(X, D, 0.3, Z, True),
                                                   None, None), Z3, positive=True)
    # Dask's 13-row chunks are other BLAS calls than one 50-row block: on a
    # BLAS that packs its operands (AVX2 OpenBLAS) the edge rows of a call
    # may round differently, so equal up to rounding, not bit for bit
    net = Lista(D, 0.3, 3, positive=True)
    assert_allclose(fd.encode(net, Xd).compute(), net.transform(X),
                    rtol=1e-12, atol=1e-14)
    if lmbd_kind == "dask":
        # a dask lmbd is validated where its chunks are solved
        bad = da.from_array(np.r_[lm[:-1], np.nan], chunks=17)
        with pytest.raises(InvalidParameterError, match="'lmbd'"):
            fd.solve_lasso(Xd, D, bad, positive=True).codes.compute()
        with pytest.raises(InvalidParameterError, match="'lmbd'"):
            fd.solve_lasso(Xd, D, da.from_array(lm[:-1], chunks=17))


@pytest.mark.parametrize("lmbd_kind", ["numpy", "dask"])
@pytest.mark.parametrize("loss", ["unsupervised", "semi-supervised"])
def test_distributed_fit_per_sample_lmbd_equals_lista_fit(threads, lmbd_kind, loss):
    import dask.array as da
    from fastlista import distributed as fd

    X, D = network_problem(n_samples=45, seed=48)
    lm = np.random.default_rng(48).uniform(0.1, 1.0, 45)
    arg = da.from_array(lm, chunks=20) if lmbd_kind == "dask" else lm
    local = Lista(D, 0.3, 3, parametrization="coupled", positive=True)
    local.fit(X, loss=loss, lmbd=lm, max_iter=5)
    remote = Lista(D, 0.3, 3, parametrization="coupled", positive=True)
    fd.fit(remote, da.from_array(X, chunks=(16, X.shape[1])), loss=loss, lmbd=arg,
           max_iter=5)
    assert_allclose(remote.loss_history_, local.loss_history_, rtol=1e-8)
    for a, b in zip(local.parameters, remote.parameters):
        for k in a:
            assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-9)
    # a negative entry of a dask lmbd is refused when the chunks are computed
    bad = da.from_array(np.r_[lm[:-1], -1.0], chunks=20)
    with pytest.raises(InvalidParameterError, match="'lmbd'"):
        fd.fit(Lista(D, 0.3, 2), da.from_array(X, chunks=(16, X.shape[1])), lmbd=bad,
               max_iter=1)
