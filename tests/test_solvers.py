"""solve_lasso and the per-method functions, against references the package
did not compute: NumPy ISTA / OISTA / coordinate descent (tests/reference.py),
scikit-learn's sparse_encode(algorithm="lasso_cd"), the KKT conditions and
the duality gap (as defined in fastlista.duality_gap's docstring)."""
import copy
import functools
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import fastlista
from fastlista import ConvergenceWarning, lambda_max, lasso_objective, solve_lasso
from fastlista._kernels._gemm import GEMM_KERNELS

import reference as ref
from conftest import GEMM_IDS, LMBDS, METHODS, get_exact, get_problem

ITERATIVE = ("ista", "fista", "backtracking", "oista")
# methods whose iterates never increase the objective
MONOTONE = ("ista", "backtracking", "oista")
CONVENIENCE = {"ista": "ista", "fista": "fista", "oista": "oista",
               "backtracking": "backtracking_ista", "cd": "coordinate_descent"}


def _half_sq_norm(X):
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    return 0.5 * np.sum(X * X, axis=1)


def _solve(X, D, lmbd, method, **kw):
    """solve_lasso, turning a ConvergenceWarning into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        return solve_lasso(X, D, lmbd, method=method, **kw)


@functools.lru_cache(maxsize=None)
def _sklearn_codes(kind, lmbd):
    pytest.importorskip("sklearn")
    from sklearn.decomposition import sparse_encode

    X, D = get_problem(kind)
    return sparse_encode(X, D, algorithm="lasso_cd", alpha=lmbd, max_iter=10000)


def _assert_certified(X, D, lmbd, res, tol):
    """The reported gap is the reference gap of the codes, within tolerance."""
    scale = _half_sq_norm(X)
    gap_ref = ref.duality_gap(X, D, lmbd, res.codes)
    assert np.all(np.isfinite(res.codes))
    assert np.all(res.gap >= 0)
    assert_allclose(res.gap, np.maximum(gap_ref, 0), rtol=1e-6, atol=1e-13 * scale.max())
    assert np.all(gap_ref <= tol * scale * (1 + 1e-6) + 1e-14 * scale), (
        f"gap/scale up to {np.max(gap_ref / scale):.3e} > tol={tol}")
    assert_array_equal(res.converged, res.gap <= tol * scale * (1 + 1e-12))


# --------------------------------------------------------------------------
# every method reaches the optimum
# --------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("lmbd", LMBDS)
@pytest.mark.parametrize("kind", ["under", "over"])
def test_reaches_optimum(kind, lmbd, method):
    X, D = get_problem(kind)
    tol = 1e-8
    # ISTA on the over-complete dictionary at lmbd = 0.05 needs ~12000 steps
    res = _solve(X, D, lmbd, method, tol=tol, max_iter=50000)
    assert res.codes.shape == (X.shape[0], D.shape[0])
    assert res.codes.dtype == np.float64
    assert np.all(res.converged)
    assert np.all(res.n_iter >= 1) and np.all(res.n_iter <= 50000)
    _assert_certified(X, D, lmbd, res, tol)

    scale = _half_sq_norm(X)
    obj = ref.objective(X, D, lmbd, res.codes)
    # against the NumPy reference optimum (gap <= 1e-15 scale)
    F_star = ref.objective(X, D, lmbd, get_exact(kind, lmbd))
    assert np.all(obj >= F_star - 1e-13 * scale)
    assert np.all(obj - F_star <= tol * scale + 1e-13 * scale)
    # against scikit-learn: both are within their own gap of the optimum
    Z_sk = _sklearn_codes(kind, lmbd)
    obj_sk = ref.objective(X, D, lmbd, Z_sk)
    gap_sk = np.maximum(ref.duality_gap(X, D, lmbd, Z_sk), 0)
    gap = np.maximum(ref.duality_gap(X, D, lmbd, res.codes), 0)
    assert np.all(np.abs(obj - obj_sk) <= np.maximum(gap, gap_sk) + 1e-13 * scale)
    assert np.all(obj <= obj_sk + tol * scale)
    # lasso_objective of the package agrees
    assert_allclose(lasso_objective(X, D, lmbd, res.codes), obj, rtol=1e-12)

    if kind == "under":
        # strongly convex: ||z - z*||^2 <= 2 gap / mu
        mu = np.linalg.eigvalsh(D @ D.T)[0]
        dist = np.linalg.norm(res.codes - get_exact(kind, lmbd), axis=1)
        assert np.all(dist <= np.sqrt(2 * (gap + 1e-15 * scale) / mu) * 1.01 + 1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("lmbd", LMBDS)
def test_kkt_conditions_at_high_accuracy(lmbd, method):
    X, D = get_problem("under")
    res = _solve(X, D, lmbd, method, tol=1e-14, max_iter=50000)
    # gap 1e-14 * 0.5||x||^2 ~ 1e-14: the correlations are right to ~1e-7
    ref.assert_kkt(X, D, lmbd, res.codes, tol=1e-5)
    # the support is the reference support
    Zs = get_exact("under", lmbd)
    big = np.abs(Zs) > 1e-6
    assert np.all(res.codes[big] != 0)
    assert_array_equal(np.sign(res.codes[big]), np.sign(Zs[big]))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("lmbd", [0.3, 0.8])
@pytest.mark.parametrize("block", [32, 128])
def test_many_blocks_and_sparse_regime(lmbd, method, block, monkeypatch):
    # both block heights the plans use (AVX-512 BLAS or not), whatever this CPU
    monkeypatch.setattr(fastlista._solvers, "BLOCK_SIZE", block)
    for kind in ("batch", "sparse"):
        X, D = get_problem(kind)
        tol = 1e-9
        res = _solve(X, D, lmbd, method, tol=tol, max_iter=50000)
        assert np.all(res.converged)
        _assert_certified(X, D, lmbd, res, tol)
        F_star = ref.objective(X, D, lmbd, get_exact(kind, lmbd))
        scale = _half_sq_norm(X)
        obj = ref.objective(X, D, lmbd, res.codes)
        assert np.all(np.abs(obj - F_star) <= tol * scale + 1e-13 * scale)


# The block GEMMs run through BLAS or through fastlista's own GEMM (the
# default where BLAS packs the operands of every call); with the own GEMM an
# ISTA iteration that checks no gap takes its step inside the second product.
# Both backends, whatever this CPU picks, on a dictionary of 96 atoms of 16
# features at small lmbd: the iterates keep >= 8 non-zeros a row, so every
# block takes the residual form R = Z D - X, G = R D^T (see _solvers.pyx).
def _residual_form_problem(dtype=np.float64, n_samples=300):
    X, D = ref.make_problem(n_samples, 16, 96, seed=5)
    return X.astype(dtype), D.astype(dtype)


@pytest.mark.parametrize("own_gemm", GEMM_KERNELS, ids=GEMM_IDS)
@pytest.mark.parametrize("positive", [False, True], ids=["signed", "positive"])
def test_gemm_backends_match_numpy_ista(own_gemm, positive, dtype, monkeypatch):
    monkeypatch.setattr(fastlista._solvers, "_OWN_GEMM", own_gemm)
    X, D = _residual_form_problem()
    # one lmbd a sample (lambda_max = 1 for each), 300 samples: two full
    # blocks of 128 and a partial one
    lm = np.random.default_rng(0).uniform(0.02, 0.08, X.shape[0])
    T = 40
    Z_ref, _ = ref.ista(X, D, lm, T, positive=positive)
    assert np.count_nonzero(Z_ref) >= 8 * X.shape[0]
    res = solve_lasso(X.astype(dtype), D.astype(dtype), lm.astype(dtype), method="ista",
                      tol=0.0, max_iter=T, positive=positive)
    assert res.codes.dtype == dtype
    assert_array_equal(res.n_iter, T)
    tol = 1e-9 if dtype == np.float64 else 2e-4
    assert_allclose(res.codes, Z_ref, rtol=tol, atol=tol * np.abs(Z_ref).max())
    if positive:
        assert np.all(res.codes >= 0)
    # the reported gap is the gap of the returned codes
    gap_ref = ref.duality_gap(X, D, lm, res.codes.astype(np.float64))
    if not positive:
        assert_allclose(res.gap, np.maximum(gap_ref, 0), rtol=1e-4 if dtype == np.float32
                        else 1e-6, atol=1e-6 * float(np.max(_half_sq_norm(X))))


@pytest.mark.parametrize("own_gemm", GEMM_KERNELS, ids=GEMM_IDS)
def test_ista_from_dense_codes_to_sparse_matches_numpy(own_gemm, dtype, monkeypatch):
    """A dense warm start (a solution plus noise below the threshold): the
    first iteration takes the residual form (with fastlista's GEMM, the
    fused step, whose count of non-zeros then chooses the next form), the
    next ones gather rows of the Gram matrix; the codes equal a NumPy ISTA."""
    monkeypatch.setattr(fastlista._solvers, "_OWN_GEMM", own_gemm)
    X, D = _residual_form_problem()
    lm, T = 0.5, 30
    Z_star, _ = ref.ista(X, D, lm, 300)
    Z0 = Z_star + 1e-4 * np.random.default_rng(1).standard_normal(Z_star.shape)
    # every sample keeps its warm start (better than 0), all of it non-zero
    assert np.all(ref.objective(X, D, lm, Z0) <= 0.5 * np.sum(X * X, axis=1))
    assert np.count_nonzero(Z0) == Z0.size
    Z_ref, _ = ref.ista(X, D, lm, T, Z0=Z0)
    # below 8 non-zeros a row (m = 96, n = 16): the gather is the cheapest
    assert np.count_nonzero(Z_ref) < 7 * X.shape[0]
    res = solve_lasso(X.astype(dtype), D.astype(dtype), dtype(lm), method="ista",
                      tol=0.0, max_iter=T, Z0=Z0.astype(dtype))
    tol = 1e-9 if dtype == np.float64 else 2e-4
    assert_allclose(res.codes, Z_ref, rtol=tol, atol=tol * np.abs(Z_ref).max())


@pytest.mark.parametrize("own_gemm", [k for k in GEMM_KERNELS if k], ids=GEMM_IDS)
@pytest.mark.parametrize("positive", [False, True], ids=["signed", "positive"])
@pytest.mark.parametrize("n_atoms", [96, 90])
def test_fused_ista_step_is_the_unfused_one(own_gemm, positive, n_atoms, dtype, monkeypatch):
    """With fastlista's GEMM, an ISTA iteration that checks no gap takes its
    step as the tiles of R D^T are stored (float32: in double, as float32
    ISTA keeps z); one that checks its gap (every one, with
    record_history) takes it from G in a pass of its own. The two runs,
    iterate for iterate, end within the rounding of the codes' dtype (90
    atoms: a partial panel of 10 columns after five full ones)."""
    monkeypatch.setattr(fastlista._solvers, "_OWN_GEMM", own_gemm)
    X, D = ref.make_problem(300, 16, n_atoms, seed=5)
    X, D = X.astype(dtype), D.astype(dtype)
    lm = np.random.default_rng(2).uniform(0.02, 0.08, X.shape[0]).astype(dtype)
    runs = [solve_lasso(X, D, lm, method="ista", tol=0.0, max_iter=40, positive=positive,
                        record_history=record) for record in (False, True)]
    Z_ref, _ = ref.ista(X.astype(float), D.astype(float), lm.astype(float), 40,
                        positive=positive)
    assert np.count_nonzero(Z_ref) >= 8 * X.shape[0]
    eps = np.finfo(dtype).eps
    assert_allclose(runs[0].codes, runs[1].codes, rtol=100 * eps,
                    atol=100 * eps * np.abs(Z_ref).max())
    # and both are the NumPy ISTA's codes, to the dtype's accuracy
    tol = 1e-9 if dtype == np.float64 else 2e-4
    assert_allclose(runs[0].codes, Z_ref, rtol=tol, atol=tol * np.abs(Z_ref).max())


@pytest.mark.parametrize("own_gemm", GEMM_KERNELS, ids=GEMM_IDS)
@pytest.mark.parametrize("method", ITERATIVE)
@pytest.mark.parametrize("lmbd", [0.3, 0.5])
def test_gemm_backends_reach_certified_optimum(own_gemm, method, lmbd, monkeypatch):
    monkeypatch.setattr(fastlista._solvers, "_OWN_GEMM", own_gemm)
    X, D = _residual_form_problem(n_samples=140)
    tol = 1e-9
    res = _solve(X, D, lmbd, method, tol=tol, max_iter=50000)
    assert np.all(res.converged)
    _assert_certified(X, D, lmbd, res, tol)
    F_star = ref.objective(X, D, lmbd, ref.solve_exact(X, D, lmbd))
    scale = _half_sq_norm(X)
    obj = ref.objective(X, D, lmbd, res.codes)
    assert np.all(np.abs(obj - F_star) <= tol * scale + 1e-13 * scale)


@pytest.mark.parametrize("method", METHODS)
def test_lmbd_zero_is_least_squares(method):
    # x in the row space of D, B full rank: the gap certifies the unique
    # least-squares code
    X, D = get_problem("under")
    Z_ls = np.linalg.lstsq(D.T, X.T, rcond=None)[0].T
    res = _solve(X, D, 0.0, method, tol=1e-12, max_iter=50000)
    assert np.all(res.converged)
    assert_allclose(res.codes, Z_ls, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_lmbd_zero_noisy_least_squares_fixed_iterations(method):
    # x outside the row space of D: min F = 1/2 ||r_LS||^2 > 0 (the duality gap
    # is not 0 there, so run a fixed number of iterations)
    X, D = ref.make_problem(20, 30, 15, noise=0.3, seed=3)
    Z_ls = np.linalg.lstsq(D.T, X.T, rcond=None)[0].T
    res = solve_lasso(X, D, 0.0, method=method, tol=0.0, max_iter=3000)
    assert_allclose(res.codes, Z_ls, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("lmbd", LMBDS)
def test_tol_zero_long_run_reaches_optimum(method, lmbd):
    # tol=0 switches the stopping test off: it must not switch convergence off
    X, D = get_problem("over")
    slow = method in ("ista", "oista", "backtracking")
    res = solve_lasso(X, D, lmbd, method=method, tol=0.0, max_iter=20000 if slow else 2000)
    F_star = ref.objective(X, D, lmbd, get_exact("over", lmbd))
    sub = (ref.objective(X, D, lmbd, res.codes) - F_star) / _half_sq_norm(X)
    assert np.all(sub <= 1e-12), f"relative suboptimality up to {sub.max():.3e}"


# --------------------------------------------------------------------------
# trajectories against the NumPy references (tol=0: a fixed number of steps)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_tol_zero_runs_exactly_max_iter(method):
    X, D = get_problem("over")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)   # no warning at tol=0
        res = solve_lasso(X, D, 0.3, method=method, tol=0.0, max_iter=37)
    assert res.n_iter.shape == (X.shape[0],)
    assert np.issubdtype(res.n_iter.dtype, np.integer)
    assert_array_equal(res.n_iter, 37)
    # and made progress
    assert np.all(ref.objective(X, D, 0.3, res.codes) < _half_sq_norm(X))
    assert_allclose(res.gap, np.maximum(ref.duality_gap(X, D, 0.3, res.codes), 0),
                    rtol=1e-6, atol=1e-14)


@pytest.mark.parametrize("method", ["cd", "auto"])
def test_record_history_is_refused_for_coordinate_descent_by_the_name_given(method):
    X, D = get_problem("over")
    with pytest.raises(fastlista.InvalidParameterError,
                       match=f"record_history=True is not available for method='{method}'"):
        solve_lasso(X, D, 0.3, method=method, record_history=True)


def test_ista_trajectory_matches_reference():
    X, D = get_problem("over")
    lmbd, T = 0.3, 30
    Z_ref, obj_ref = ref.ista(X, D, lmbd, T)
    res = solve_lasso(X, D, lmbd, method="ista", tol=0.0, max_iter=T, record_history=True)
    assert_allclose(res.codes, Z_ref, rtol=1e-8, atol=1e-12)
    hist = res.history["objective"]
    assert hist.shape == (T + 1, X.shape[0])
    assert_allclose(hist, obj_ref, rtol=1e-10)
    # the convenience function is the same solver
    res2 = fastlista.ista(X, D, lmbd, tol=0.0, max_iter=T)
    assert_allclose(res2.codes, Z_ref, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("lmbd", [0.3, 0.8])
def test_oista_trajectory_matches_reference(lmbd):
    X, D = get_problem("sparse")
    X = X[:15]
    T = 40
    Z_ref, steps_ref = ref.oista(X, D, lmbd, T)
    res = solve_lasso(X, D, lmbd, method="oista", tol=0.0, max_iter=T, record_history=True)
    assert res.step_sizes.shape == (T, X.shape[0])
    assert_allclose(res.step_sizes, steps_ref, rtol=1e-7)
    assert_allclose(res.codes, Z_ref, rtol=1e-6, atol=1e-10)


def test_fista_faster_than_ista_and_both_converge_to_same_point():
    X, D = get_problem("over")
    lmbd = 0.05
    r_ista = _solve(X, D, lmbd, "ista", tol=1e-10, max_iter=50000)
    r_fista = _solve(X, D, lmbd, "fista", tol=1e-10, max_iter=50000)
    assert r_fista.n_iter.mean() < r_ista.n_iter.mean()
    assert_allclose(ref.objective(X, D, lmbd, r_fista.codes),
                    ref.objective(X, D, lmbd, r_ista.codes), rtol=1e-8)


# --------------------------------------------------------------------------
# history and step sizes
# --------------------------------------------------------------------------
@pytest.mark.parametrize("method", ITERATIVE)
def test_history_checks_the_stop_at_every_iteration(method):
    """Documented: the stopping gap is checked every 10 iterations, and at
    every one with record_history=True (which the docstring did not say):
    a recorded sample stops at the first iteration whose gap meets tol, the
    same call without the history at a multiple of 10. (Not compared sample
    by sample: samples leave their block at other iterations, and the
    rounding of the block's products, which FISTA amplifies, differs.)"""
    X, D = get_problem("under")
    lmbd, tol = 0.3, 1e-7
    scale = _half_sq_norm(X)
    recorded = _solve(X, D, lmbd, method, tol=tol, max_iter=50000, record_history=True)
    plain = _solve(X, D, lmbd, method, tol=tol, max_iter=50000)
    gaps = recorded.history["gap"]
    cols = np.arange(X.shape[0])
    assert np.all(gaps[recorded.n_iter, cols] <= tol * scale)
    assert np.all(gaps[recorded.n_iter - 1, cols] > tol * scale)
    assert np.all(plain.n_iter % 10 == 0)
    assert np.any(recorded.n_iter % 10 != 0)


@pytest.mark.parametrize("method", ITERATIVE)
def test_history_ends_at_the_codes(method):
    X, D = get_problem("under")
    lmbd = 0.3
    res = _solve(X, D, lmbd, method, tol=1e-9, max_iter=50000, record_history=True)
    obj_h, gap_h = res.history["objective"], res.history["gap"]
    T = int(res.n_iter.max()) + 1
    assert obj_h.shape == (T, X.shape[0]) and gap_h.shape == (T, X.shape[0])
    obj = ref.objective(X, D, lmbd, res.codes)
    scale = _half_sq_norm(X)
    cols = np.arange(X.shape[0])
    assert_allclose(obj_h[res.n_iter, cols], obj, rtol=1e-10)
    assert_allclose(obj_h[-1], obj, rtol=1e-10)
    assert_allclose(gap_h[res.n_iter, cols], res.gap, rtol=1e-8, atol=1e-14 * scale.max())
    assert_allclose(gap_h[-1], res.gap, rtol=1e-8, atol=1e-14 * scale.max())
    # iteration 0 is the zero code
    assert_allclose(obj_h[0], scale, rtol=1e-12)
    assert_allclose(gap_h[0], ref.duality_gap(X, D, lmbd, np.zeros_like(res.codes)),
                    rtol=1e-8)
    if method in ("oista", "backtracking"):
        assert res.step_sizes.shape == (T - 1, X.shape[0])
    else:
        assert res.step_sizes is None
    # no history unless asked
    res2 = solve_lasso(X, D, lmbd, method=method, tol=1e-9, max_iter=50000)
    assert res2.history is None and res2.step_sizes is None


@pytest.mark.parametrize("method", MONOTONE)
@pytest.mark.parametrize("lmbd", LMBDS)
def test_monotone_methods_never_increase_objective(method, lmbd):
    X, D = get_problem("over")
    res = solve_lasso(X, D, lmbd, method=method, tol=0.0, max_iter=300,
                      record_history=True)
    hist = res.history["objective"]
    assert hist.shape == (301, X.shape[0])
    rel = 1e-12 if method == "ista" else 1e-9
    increase = np.diff(hist, axis=0)
    assert np.all(increase <= rel * np.abs(hist[:-1])), (
        f"objective increased by up to {increase.max():.3e}")
    assert np.all(hist[-1] < hist[0])


@pytest.mark.parametrize("kind", ["over", "sparse"])
def test_oista_steps(kind):
    X, D = get_problem(kind)
    lmbd = 0.8
    L = ref.lipschitz(D)
    res = _solve(X, D, lmbd, "oista", tol=1e-10, max_iter=50000, record_history=True)
    steps = res.step_sizes
    assert steps.shape == (int(res.n_iter.max()), X.shape[0])
    taken = np.arange(steps.shape[0])[:, None] < res.n_iter[None, :]
    s = steps[taken]
    assert np.all(np.isfinite(s))
    # never below 1/L, never above 1/min ||d_k||^2 (= 1 here), some clearly above 1/L
    assert np.all(s >= (1 - 1e-9) / L)
    assert np.all(s <= (1 + 1e-9) / np.min(np.sum(D * D, axis=1)))
    assert np.mean(s > 1.01 / L) > 0.3
    # every step is 1/L or 1/L_S of some support: at the end, 1/L_S of the
    # final support when that support is stable
    for i in range(0, X.shape[0], 7):
        last = steps[res.n_iter[i] - 1, i]
        S = res.codes[i] != 0
        if S.any():
            assert (np.isclose(last, 1 / L, rtol=1e-7)
                    or np.isclose(last, 1 / ref.lipschitz_support(D, S), rtol=1e-7))
    # and OISTA needs fewer iterations than ISTA
    r_ista = _solve(X, D, lmbd, "ista", tol=1e-10, max_iter=50000)
    assert res.n_iter.sum() < r_ista.n_iter.sum()


@pytest.mark.parametrize("method", ["ista", "fista", "backtracking", "oista"])
def test_a_union_of_orthonormal_bases_is_solved(method):
    # D = [I; DCT]: the top eigenvalue of D D^T is 2, n times; LAPACK's
    # bisection for it alone failed, and every proximal method raised
    # LinAlgError ("Internal Error") from the global L
    from test_lipschitz import _unions_of_orthonormal_bases

    for D in _unions_of_orthonormal_bases(16):
        X = np.random.default_rng(1).standard_normal((5, 16))
        lmbd = 0.2 * ref.lambda_max(X, D)
        res = solve_lasso(X, D, lmbd, method=method, tol=1e-8, max_iter=50000)
        assert res.converged.all()
        gaps = ref.duality_gap(X, D, lmbd, res.codes)
        assert np.all(gaps <= 1e-8 * 0.5 * np.sum(X * X, axis=1) * 1.01)


def _oista_adversary(seed):
    """A square D whose B_SS (every atom) has its top eigenvector exactly
    orthogonal to the power iteration's start vector, L_S >= 2.2 times the
    next eigenvalue, and a signal whose solution uses every atom."""
    from test_lipschitz import _dictionary_of_gram, _kernel_start_vector

    rng = np.random.default_rng(seed)
    k = int(rng.integers(17, 40))
    v0 = _kernel_start_vector(k)
    w = rng.standard_normal(k)
    w -= (w @ v0) * v0
    Q, _ = np.linalg.qr(np.column_stack([w, v0, rng.standard_normal((k, k - 2))]))
    lam = np.concatenate([[rng.choice([2.2, 3.0, 5.0, 10.0]), 1.0],
                          rng.uniform(0.1, rng.choice([0.5, 0.99]), k - 2)])
    D = _dictionary_of_gram((Q * lam) @ Q.T)
    z_star = np.sign(rng.standard_normal(k)) * (1 + rng.random(k))
    return z_star @ D, D, z_star + 0.01 * rng.standard_normal(k)


def test_oista_survives_a_power_iteration_on_the_wrong_eigenvalue():
    # From that start vector the power iteration can settle on the second
    # eigenvalue (the top component is rounding noise, and its quotients
    # look converged): OISTA then stepped by 1/lambda_2 > 2 / L_S, diverged
    # and raised FloatingPointError ("this is a bug") on 38 of these 40
    # problems (the power iteration's first-step stop accounts for some).
    # Each step on 1/L_S now has its curvature d B d^T checked against
    # L_S ||d||^2 at the next gradient, and a failed test switches the
    # sample to LAPACK's L_S: 18 of the 40 take that switch here (which
    # ones depends on the rounding of the power iteration's products).
    # The step that failed the test is undone: it had raised the objective
    # (by up to 1.9 % on 8 of the 40), where steps of 1/L_S on S and 1/L
    # off it never raise it (the descent lemma).
    lmbd = 1e-3
    undone = 0
    for seed in range(40):
        x, D, Z0 = _oista_adversary(seed)
        res = fastlista.oista(x, D, lmbd, Z0=Z0, tol=1e-10, max_iter=20000,
                              record_history=True)
        assert res.converged, seed
        objective = res.history["objective"][:res.n_iter + 1]
        steps = res.step_sizes[:res.n_iter]
        assert np.diff(objective).max() <= 1e-12 * 0.5 * (x @ x), seed
        # an undone step is recorded as 0, and z (its objective) is as before
        assert_array_equal(objective[1:][steps == 0], objective[:-1][steps == 0])
        undone += np.count_nonzero(steps == 0)
        assert ref.duality_gap(x, D, lmbd, res.codes)[0] <= 1e-10 * 0.5 * (x @ x) * 1.01
        z_ref = ref.solve_exact(x[None], D, lmbd)[0]
        assert_allclose(lasso_objective(x, D, lmbd, res.codes),
                        lasso_objective(x, D, lmbd, z_ref), rtol=1e-9)
        # the last step is 1/L or 1/L_S of the final support, to LS_TOL
        S = res.codes != 0
        last = res.step_sizes[res.n_iter - 1]
        assert (np.isclose(last, 1 / ref.lipschitz(D), rtol=1e-7)
                or np.isclose(last, 1 / ref.lipschitz_support(D, S), rtol=1e-7)), seed
    assert undone >= 10


def test_backtracking_steps_are_positive_and_adaptive():
    X, D = get_problem("over")
    L = ref.lipschitz(D)
    res = _solve(X, D, 0.3, "backtracking", tol=1e-10, max_iter=50000, record_history=True)
    taken = np.arange(res.step_sizes.shape[0])[:, None] < res.n_iter[None, :]
    s = res.step_sizes[taken]
    assert np.all(np.isfinite(s)) and np.all(s > 0)
    # the quadratic bound holds for any step <= 1/L: backtracking never needs
    # to go far below it
    assert s.min() >= 0.1 / L


@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("lmbd", [0.0, 1e-3])
def test_backtracking_never_takes_a_refused_step(positive, lmbd):
    """Atoms of norms 1e15 and 1e-15 next to unit atoms: while only the tiny
    atom moves the step grows far above 1/L, and when the large one enters,
    every trial of the line search is refused; the step taken is then 1/L
    (it was the last refused trial, and the objective rose 25 orders of
    magnitude)."""
    rng = np.random.default_rng(0)
    D = rng.standard_normal((4, 3))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    D[0] *= 1e15
    D[1] *= 1e-15
    X = rng.standard_normal((3, 3))
    res = fastlista.backtracking_ista(X, D, lmbd, positive=positive, tol=0.0, max_iter=500,
                                      record_history=True)
    hist = res.history["objective"]
    increase = np.diff(hist, axis=0)
    assert np.all(increase <= 1e-12 * np.abs(hist[:-1])), (
        f"objective increased by up to {increase.max():.3e}")
    F = np.asarray(ref.objective_robust(X, D, lmbd, res.codes, positive=positive), float)
    assert np.all(F <= 0.5 * np.sum(X * X, axis=1))
    assert_allclose(hist[-1], F, rtol=1e-10)
    steps = res.step_sizes[np.isfinite(res.step_sizes)]
    assert np.all(steps >= 0.1 / ref.lipschitz(D))


# --------------------------------------------------------------------------
# lambda_max, degenerate inputs
# --------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_lambda_max_gives_exact_zeros(method):
    X, D = get_problem("over")
    lm = lambda_max(X, D)
    for i in range(10):
        # lambda_max of the sample as it is solved (1-D: the same c = x D^T)
        lm_i = lambda_max(X[i], D)
        for tol, max_iter in ((1e-8, 10000), (0.0, 25)):
            res = solve_lasso(X[i], D, lm_i, method=method, tol=tol, max_iter=max_iter)
            assert res.codes.shape == (D.shape[0],)
            assert np.all(res.codes == 0), f"tol={tol}: {res.codes[res.codes != 0]}"
            # 0 up to the rounding of 1/2||x||^2 - (||x||^2 - 1/2||x||^2)
            assert 0 <= res.gap <= 1e-15 * X[i] @ X[i]
        # lambda_max from the batch (a GEMM: may differ from the 1-D value by
        # an ulp): with tol > 0 still exact zeros
        res = solve_lasso(X[i], D, lm[i], method=method)
        assert np.all(res.codes == 0), res.codes[res.codes != 0]
    # a batch: one scalar lmbd >= every lambda_max zeroes every sample
    for tol in (1e-8, 0.0):
        res = solve_lasso(X, D, float(lm.max()), method=method, tol=tol, max_iter=25)
        assert np.all(res.codes == 0)
        assert np.all(res.gap <= 1e-15 * _half_sq_norm(X))
        res = solve_lasso(X, D, 2.0 * float(lm.max()), method=method, tol=tol, max_iter=25)
        assert np.all(res.codes == 0)
    assert np.all(_solve(X, D, float(lm.max()), method).converged)


@pytest.mark.parametrize("method", METHODS)
def test_just_below_lambda_max_gives_nonzero_code(method):
    X, D = get_problem("over")
    lm = lambda_max(X, D)
    C = X @ D.T
    for i in range(3):
        lmbd = 0.999999 * lm[i]
        res = solve_lasso(X[i], D, lmbd, method=method, tol=0.0, max_iter=5)
        nz = np.flatnonzero(res.codes)
        k = int(np.argmax(np.abs(C[i])))
        assert k in nz
        assert np.sign(res.codes[k]) == np.sign(C[i, k])
        # and the exact solution is (tiny but) non-zero as well
        res = _solve(X[i], D, lmbd, method, tol=1e-14, max_iter=50000)
        assert res.codes[k] != 0
        assert np.sign(res.codes[k]) == np.sign(C[i, k])


@pytest.mark.parametrize("method", METHODS)
def test_zero_atom_is_never_used(method):
    X, D = get_problem("over")
    D = D.copy()
    D[[3, 17]] = 0.0
    lmbd = 0.3
    res = _solve(X, D, lmbd, method, tol=1e-10, max_iter=50000)
    assert not np.any(np.isnan(res.codes))
    assert np.all(res.codes[:, [3, 17]] == 0)
    keep = np.ones(D.shape[0], bool)
    keep[[3, 17]] = False
    F_star = ref.objective(X, D[keep], lmbd, ref.solve_exact(X, D[keep], lmbd))
    scale = _half_sq_norm(X)
    assert np.all(np.abs(ref.objective(X, D, lmbd, res.codes) - F_star) <= 1e-10 * scale
                  + 1e-13 * scale)


@pytest.mark.parametrize("method", METHODS)
def test_zero_dictionary(method):
    X, _ = get_problem("under")
    D = np.zeros((5, X.shape[1]))
    for tol in (1e-8, 0.0):
        res = solve_lasso(X, D, 0.1, method=method, tol=tol, max_iter=20)
        assert np.all(res.codes == 0)
        assert_allclose(res.gap, 0.0, atol=1e-14)


@pytest.mark.parametrize("method", METHODS)
def test_one_dimensional_input(method):
    X, D = get_problem("under")
    lmbd = 0.3
    res = _solve(X[5], D, lmbd, method, tol=1e-10)
    assert res.codes.shape == (D.shape[0],)
    assert np.ndim(res.gap) == 0 and np.ndim(res.n_iter) == 0 and np.ndim(res.converged) == 0
    assert bool(res.converged)
    Zs = get_exact("under", lmbd)[5]
    obj = ref.objective(X[5], D, lmbd, res.codes)[0]
    F_star = ref.objective(X[5], D, lmbd, Zs)[0]
    assert abs(obj - F_star) <= 1e-10 * _half_sq_norm(X[5])[0] * 1.01
    assert_allclose(float(res.gap), ref.duality_gap(X[5], D, lmbd, res.codes)[0],
                    rtol=1e-6, atol=1e-15)
    # the same as the one-sample batch
    res2 = _solve(X[5:6], D, lmbd, method, tol=1e-10)
    assert res2.codes.shape == (1, D.shape[0])
    assert_allclose(res2.codes[0], res.codes, rtol=1e-7, atol=1e-9)
    if method in ITERATIVE:
        resh = _solve(X[5], D, lmbd, method, tol=1e-10, record_history=True)
        assert resh.history["objective"].shape == (int(resh.n_iter) + 1,)
        assert_allclose(resh.history["objective"][-1], obj, rtol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_empty_batch(method):
    _, D = get_problem("under")
    X = np.zeros((0, D.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = solve_lasso(X, D, 0.1, method=method)
    assert res.codes.shape == (0, D.shape[0])
    assert res.gap.shape == (0,) and res.n_iter.shape == (0,) and res.converged.shape == (0,)
    assert res.codes.dtype == np.float64
    res32 = solve_lasso(X.astype(np.float32), D.astype(np.float32), 0.1, method=method)
    assert res32.codes.shape == (0, D.shape[0]) and res32.codes.dtype == np.float32


# --------------------------------------------------------------------------
# dtypes, layouts, threads
# --------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("lmbd", [0.05, 0.8])
def test_float32_agrees_with_float64(method, lmbd):
    X, D = get_problem("under")
    X32, D32 = X.astype(np.float32), D.astype(np.float32)
    res = _solve(X32, D32, lmbd, method, tol=1e-5, max_iter=50000)
    assert res.codes.dtype == np.float32
    assert np.all(np.isfinite(res.codes))
    F_star = ref.objective(X, D, lmbd, get_exact("under", lmbd))
    # objective of the float32 codes, evaluated in float64 on the float32 data
    obj32 = ref.objective(X32, D32, lmbd, res.codes)
    assert_allclose(obj32, F_star, rtol=1e-4)
    res64 = _solve(X, D, lmbd, method, tol=1e-10, max_iter=50000)
    assert_allclose(res.codes, res64.codes, atol=2e-3 * np.abs(res64.codes).max())


@pytest.mark.parametrize("method", METHODS)
def test_float32_default_tolerance_does_not_blow_up(method):
    X, D = get_problem("under", np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = solve_lasso(X, D, 0.3, method=method, max_iter=3000)
    assert res.codes.dtype == np.float32
    assert np.all(np.isfinite(res.codes)) and np.all(np.isfinite(res.gap))
    F_star = ref.objective(X, D, 0.3, get_exact("under", 0.3))
    assert_allclose(ref.objective(X, D, 0.3, res.codes), F_star, rtol=1e-4)


@pytest.mark.parametrize("positive", [False, True])
def test_float32_exact_solve_reaches_the_certifiable_tolerance(positive):
    """float32 coordinate descent certifies every sample at 1e-6, the relative
    gap float32 codes can carry, at small lmbd too. It used to solve the
    problem of C = X D^T and B = D D^T rounded to float32, whose optimum
    lies farther from the true one than that: up to 16 % of the samples
    stopped at relative gaps up to 2e-6, warned as "the codes' rounding",
    while the float64 solutions rounded to float32 certify at 4e-7."""
    rng = np.random.default_rng(0)
    D = rng.standard_normal((96, 64))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = (rng.standard_normal((400, 96)) * (rng.random((400, 96)) < 0.3)) @ D
    X /= ref.lambda_max(X, D, positive)[:, None]
    X, D = X.astype(np.float32), D.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = solve_lasso(X, D, 0.01, tol=1e-6, positive=positive)
    assert res.codes.dtype == np.float32 and res.converged.all()
    if positive:
        assert np.all(res.codes >= 0)
    gap = ref.duality_gap_robust(X, D, 0.01, res.codes, positive=positive)
    assert np.all(gap <= 1e-6 * 0.5 * np.einsum("ij,ij->i", X, X, dtype=np.float64))
    assert_allclose(res.gap, gap, rtol=1e-5, atol=0)


@pytest.mark.parametrize("positive", [False, True])
def test_cd_certifies_atoms_a_hair_apart(positive):
    """Coordinate descent on dictionaries with a pair (or a triple) of atoms
    1e-8 to 1e-4 apart certifies every sample at the default tol, with the
    gap of the long-double reference. Its Newton step treats such an atom
    as dependent on the support and moved z along the direction that keeps
    the residual (nearly) unchanged, chosen by the slope of ||z||_1 alone,
    about 0 for two atoms of the same sign: as often as not it dropped the
    atom the optimum keeps, and the solve stalled for good at relative gaps
    of 1e-8 to 2e-7 (9 of these 1767 samples), warning "Increase max_iter"."""
    n_solves = 0
    for seed in range(300):
        rng = np.random.RandomState(seed)
        k, p = rng.randint(3, 30), rng.randint(2, 16)
        D = rng.randn(k, p)
        eps = 10.0 ** rng.uniform(-8, -4)
        D[2] = D[1] * rng.choice([1, -1]) + eps * rng.randn(p)
        if rng.rand() < 0.3:
            D[0] = D[1] + eps * rng.randn(p)
        X = rng.randn(3, p)
        lmbd = rng.uniform(0.02, 0.9) * ref.lambda_max(X, D, positive)
        if positive and not np.all(lmbd > 0):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            res = solve_lasso(X, D, lmbd, method="cd", max_iter=20000, positive=positive)
        gap = ref.duality_gap_robust(X, D, lmbd, res.codes, positive=positive)
        assert np.all(gap <= 1e-8 * 0.5 * np.einsum("ij,ij->i", X, X)), seed
        n_solves += 1
    assert n_solves > 250


@pytest.mark.parametrize("method", ["ista", "fista", "backtracking", "oista"])
def test_float32_iterative_solvers_stop_where_the_certificate_agrees(method):
    """The float32 iterations take D D^T computed in double and rounded once.
    Accumulated in float32 (an error of 5e-7 against 1e-8), it moved the
    kernels' stopping gap below the certificate's: a fifth of the samples
    stopped at tol = 1e-6 were refused, retried to max_iter and warned,
    on well-conditioned atoms that float32 coordinate descent certifies."""
    rng = np.random.RandomState(0)
    D = rng.randn(64, 256)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = (rng.rand(100, 64) < 0.2) * rng.randn(100, 64) @ D + 1e-3 * rng.randn(100, 256)
    X, D = X.astype(np.float32), D.astype(np.float32)
    lmbd = 1e-2 * float(np.median(ref.lambda_max(X, D)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = solve_lasso(X, D, lmbd, method=method, tol=1e-6, max_iter=20000)
    gap = ref.duality_gap_robust(X, D, lmbd, res.codes)
    assert res.converged.all()
    assert np.all(gap <= 1e-6 * 0.5 * np.einsum("ij,ij->i", X, X, dtype=np.float64))


def _paper_shape_problem(n_samples, seed):
    """Signals of 64 features scaled to lambda_max = 1, on 256 unit-norm
    Gaussian atoms (the paper's shape), float64."""
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((256, 64))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = rng.standard_normal((n_samples, 64))
    return X / ref.lambda_max(X, D)[:, None], D


@pytest.mark.parametrize("method, lmbd", [("ista", 0.2), ("fista", 0.1), ("backtracking", 0.1),
                                          ("oista", 0.1)])
def test_float32_retries_end_where_the_certificate_accepts(method, lmbd):
    """A float32 sample the kernel stopped at tol = 1e-6 but the certificate
    refused (by rounding) was run again at tol / 16, below what float32's
    own stopping gap resolves: it ran to max_iter though its certificate
    had passed long before (FISTA on the paper's shape: 117 of 2000
    samples, 3x float64's iterations; found by an adversarial pass). The
    retries end where the certificate accepts: every sample converges
    (the NumPy reference gap, in long double) in about float64's
    iterations, at a multiple of the gap's period (ISTA at lmbd = 0.1
    needs more than max_iter in both)."""
    X, D = _paper_shape_problem(150, seed=0)
    X32, D32 = X.astype(np.float32), D.astype(np.float32)
    max_iter = 20000
    res = solve_lasso(X32, D32, lmbd, method=method, tol=1e-6, max_iter=max_iter)
    res64 = solve_lasso(X, D, lmbd, method=method, tol=1e-6, max_iter=max_iter)
    assert res.converged.all() and res64.converged.all()
    gap = ref.duality_gap_robust(X32, D32, lmbd, res.codes)
    assert np.all(gap <= 1e-6 * 0.5 * np.einsum("ij,ij->i", X32, X32, dtype=np.float64))
    assert np.all(res.n_iter < max_iter)
    assert res.n_iter.sum() < 1.5 * res64.n_iter.sum()
    # the retries' rounds keep to the gap's schedule: a sample stops where
    # a plain call checks its gap, every GAP_FREQ = 10 iterations
    assert np.all(res.n_iter % 10 == 0)


@pytest.mark.parametrize("method", ["fista", "oista", "backtracking"])
def test_float32_history_retries_as_without_it(method):
    """With record_history=True the certificate's refusals were not run on:
    at the tol float32 is told to use (1e-6) 60-138 of 200 samples came
    back not converged, advised to use a larger tol (found by a review of
    the docs' claims). The history's samples are retried as without it:
    every sample converges (the NumPy reference gap, in long double), and
    the record goes on from where a sample first stopped: no iteration
    unrecorded up to its n_iter, the last entries at the returned codes
    (NumPy objective), the step sizes recorded through the retries."""
    X, D = _paper_shape_problem(120, seed=1)
    X32, D32 = X.astype(np.float32), D.astype(np.float32)
    lmbd, tol = 0.1, 1e-6
    half = 0.5 * np.einsum("ij,ij->i", X32, X32, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = solve_lasso(X32, D32, lmbd, method=method, tol=tol, max_iter=20000,
                          record_history=True)
    assert res.converged.all()
    assert np.all(ref.duality_gap_robust(X32, D32, lmbd, res.codes) <= tol * half)
    cols = np.arange(X.shape[0])
    obj_h, gap_h = res.history["objective"], res.history["gap"]
    assert_allclose(obj_h[res.n_iter, cols], ref.objective(X32, D32, lmbd, res.codes),
                    rtol=1e-6)
    assert_allclose(gap_h[res.n_iter, cols], res.gap, rtol=1e-6)
    # the record before the end is the kernel's own: finite at every
    # iteration, and the kernel's stop met at the last but not before the
    # sample's first stop (retried samples met it there, and ran on)
    T = obj_h.shape[0]
    before = np.arange(T)[:, None] < res.n_iter
    assert np.isfinite(obj_h).all() and np.isfinite(gap_h).all()
    met = before & (gap_h <= tol * half)
    first = np.where(met.any(axis=0), met.argmax(axis=0), res.n_iter)
    retried = first < res.n_iter
    assert retried.any()
    # the record is one continuous run: the objective does not jump where
    # a retry began (within float32's rounding of 1/2 ||x||^2)
    steps = np.abs(np.diff(obj_h, axis=0))
    assert np.all(steps[first[retried], cols[retried]] <= 1e-3 * half[retried])
    if method == "fista":
        assert res.step_sizes is None
    else:           # the step from iteration t to t + 1, for t < n_iter
        assert np.isfinite(res.step_sizes[before[:-1]]).all()


def test_history_of_retried_samples_is_numpy_ista_at_every_iteration(monkeypatch):
    """The retries of record_history=True copy their record into the history
    from the iteration where a sample had stopped. The other history tests
    check the record's end (which _history sets to the certificate) and
    that it has no NaN (which _history fills with the previous value): they
    pass when the retries' record is not copied at all, or copied at
    another offset. Here the first certificate refuses every other sample,
    as its rounding may (4x its gap, within the retries' reach), so that
    they are retried on any platform; float64 ISTA has no state beyond z,
    so a retried sample's record is that of one ISTA run: the recorded
    objective must be NumPy ISTA's at every iteration up to n_iter, across
    the retries."""
    import fastlista._solvers as solvers

    certify, refused = solvers.certify, []

    def refusing(*args):
        primal, gap = certify(*args)
        if not refused:
            refused.append(np.arange(0, gap.size, 2))
            gap = gap.copy()
            gap[refused[0]] *= 4
        return primal, gap

    monkeypatch.setattr(solvers, "certify", refusing)
    rng = np.random.default_rng(0)
    D = rng.standard_normal((50, 20))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = rng.standard_normal((40, 20))
    lmbd = 0.1 * np.abs(X @ D.T).max(axis=1)
    tol = 1e-10
    res = solve_lasso(X, D, lmbd, method="ista", tol=tol, max_iter=20000,
                      record_history=True)
    assert res.converged.all()
    obj_h, gap_h = res.history["objective"], res.history["gap"]
    half = 0.5 * np.einsum("ij,ij->i", X, X)
    # the refused samples ran on past their first stop (the first
    # iteration whose recorded gap met tol), the others stopped there
    met = gap_h <= tol * half
    first = met.argmax(axis=0)
    ran_on = first < res.n_iter
    assert_array_equal(np.flatnonzero(ran_on), refused[0])
    L = np.linalg.eigvalsh(D @ D.T)[-1]
    Z = np.zeros((X.shape[0], D.shape[0]))
    for t in range(int(res.n_iter.max()) + 1):
        live = t <= res.n_iter
        F = 0.5 * np.sum((X - Z @ D) ** 2, axis=1) + lmbd * np.abs(Z).sum(axis=1)
        assert np.all(np.abs(obj_h[t] - F)[live] <= 1e-12 * half[live]), t
        # the gap of the last iteration before the certificate is the
        # kernel's, which NumPy's matches
        last = np.flatnonzero(res.n_iter - 1 == t)
        assert np.all(np.abs(gap_h[t, last] - ref.duality_gap(X[last], D, lmbd[last], Z[last]))
                      <= 3e-15 * half[last]), t
        U = Z - (Z @ D - X) @ D.T / L
        Z = np.sign(U) * np.maximum(np.abs(U) - lmbd[:, None] / L, 0)


@pytest.mark.parametrize("call", [
    lambda X, D: solve_lasso(X, D, 0.1, method="ista", max_iter=2),
    lambda X, D: fastlista.ista(X, D, 0.1, max_iter=2),
    lambda X, D: fastlista.fista(X, D, 0.1, max_iter=2),
    lambda X, D: fastlista.coordinate_descent(X, D, 0.0, max_iter=2),
], ids=["solve_lasso", "ista", "fista", "coordinate_descent"])
def test_convergence_warning_points_at_the_caller(call):
    """The warning's stacklevel was fixed for a direct solve_lasso call: the
    shortcuts' warnings pointed into fastlista/_solvers.py, where filters
    keyed on the user's module do not apply."""
    rng = np.random.default_rng(0)
    D, X = rng.standard_normal((20, 8)), rng.standard_normal((3, 8))
    with pytest.warns(ConvergenceWarning) as record:
        call(X, D)
    assert [w.filename for w in record] == [__file__]


def test_mixed_and_integer_dtypes():
    X, D = get_problem("under")
    ref_codes = _solve(X, D, 0.3, "cd", tol=1e-12).codes
    res = _solve(X.astype(np.float32), D, 0.3, "cd", tol=1e-12)
    assert res.codes.dtype == np.float64
    Xi = np.round(10 * X).astype(np.int64)
    res_i = _solve(Xi, D, 0.3, "cd", tol=1e-12)
    assert res_i.codes.dtype == np.float64
    assert_allclose(res_i.codes, _solve(Xi.astype(np.float64), D, 0.3, "cd", tol=1e-12).codes,
                    rtol=1e-12, atol=1e-14)
    assert_allclose(res.codes, ref_codes, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_layouts_give_the_same_codes(method):
    X, D = get_problem("over")
    lmbd, kw = 0.3, dict(tol=0.0, max_iter=50)
    base = solve_lasso(X, D, lmbd, method=method, **kw).codes

    def same(X_, D_, expected=base):
        out = solve_lasso(X_, D_, lmbd, method=method, **kw).codes
        assert out.flags.c_contiguous or out.ndim == 1
        assert_allclose(out, expected, rtol=1e-9, atol=1e-12)

    same(np.asfortranarray(X), D)
    same(X, np.asfortranarray(D))
    big = np.zeros((2 * X.shape[0], X.shape[1] + 7))
    big[::2, 3:3 + X.shape[1]] = X
    same(big[::2, 3:3 + X.shape[1]], D)            # strided rows and an offset
    bigD = np.zeros((D.shape[0], 2 * D.shape[1]))
    bigD[:, ::2] = D
    same(X, bigD[:, ::2])                          # strided columns
    same(X[::-1], D, expected=base[::-1])          # negative strides
    same(X.tolist(), D.tolist())
    # a converged solve too
    conv = _solve(X, D, lmbd, method, tol=1e-10)
    out = _solve(np.asfortranarray(X[::-1]), np.asfortranarray(D), lmbd, method, tol=1e-10)
    assert_allclose(out.codes[::-1], conv.codes, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_inputs_are_not_modified_and_read_only_inputs_work(method):
    X, D = get_problem("under")
    Z0 = 0.1 * np.ones((X.shape[0], D.shape[0]))
    copies = [a.copy() for a in (X, D, Z0)]
    for a in (X, D, Z0):
        a.setflags(write=False)
    res = _solve(X, D, 0.3, method, tol=1e-10, Z0=Z0)
    for a, c in zip((X, D, Z0), copies):
        assert_array_equal(a, c)
    assert res.codes.flags.writeable
    assert not np.shares_memory(res.codes, Z0)
    F_star = ref.objective(X, D, 0.3, get_exact("under", 0.3))
    assert np.all(np.abs(ref.objective(X, D, 0.3, res.codes) - F_star)
                  <= 1e-10 * _half_sq_norm(X) * 1.01)


@pytest.mark.parametrize("method", METHODS)
def test_threads_agree(method):
    X, D = get_problem("batch")
    kw = dict(tol=0.0, max_iter=40)
    r1 = solve_lasso(X, D, 0.3, method=method, n_jobs=1, **kw)
    r2 = solve_lasso(X, D, 0.3, method=method, n_jobs=2, **kw)
    rd = solve_lasso(X, D, 0.3, method=method, **kw)
    # a sample's block is fixed by its index, whatever thread runs it: the
    # same arithmetic, hence equal results after a fixed number of iterations
    assert_allclose(r2.codes, r1.codes, rtol=1e-9, atol=1e-12)
    assert_allclose(rd.codes, r1.codes, rtol=1e-9, atol=1e-12)
    # converged runs: within their certificates of the same optimum
    c1 = _solve(X, D, 0.3, method, n_jobs=1, tol=1e-10, max_iter=50000)
    c2 = _solve(X, D, 0.3, method, n_jobs=2, tol=1e-10, max_iter=50000)
    assert np.all(c1.converged) and np.all(c2.converged)
    F1, F2 = ref.objective(X, D, 0.3, c1.codes), ref.objective(X, D, 0.3, c2.codes)
    assert np.all(np.abs(F1 - F2) <= c1.gap + c2.gap + 1e-12 * _half_sq_norm(X))


# --------------------------------------------------------------------------
# warm starts, stopping, warnings, convenience functions
# --------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_warm_start_at_the_solution_stops_at_once(method):
    X, D = get_problem("over")
    lmbd = 0.3
    Zs = get_exact("over", lmbd)
    res = _solve(X, D, lmbd, method, Z0=Zs)
    assert np.all(res.converged)
    assert np.all(res.n_iter <= 10)
    assert_allclose(res.codes, Zs, rtol=1e-6, atol=1e-9)
    # 1-D warm start
    r1 = _solve(X[2], D, lmbd, method, Z0=Zs[2])
    assert int(r1.n_iter) <= 10
    assert_allclose(r1.codes, Zs[2], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_sample_results_are_the_documented_scalars(dtype):
    """A 1-D x gives n_iter an int and converged a bool, as documented (they
    were NumPy scalars: json.dumps refused converged), and the gap, the
    objective, lambda_max and the duality gap NumPy scalars of its dtype."""
    import json

    X, D = get_problem("under", dtype)
    res = solve_lasso(X[0], D, 0.3, tol=1e-5)
    assert type(res.n_iter) is int and type(res.converged) is bool
    assert json.loads(json.dumps({"converged": res.converged, "n_iter": res.n_iter})) == \
        {"converged": True, "n_iter": res.n_iter}
    for value in (res.gap, lasso_objective(X[0], D, 0.3, res.codes),
                  fastlista.lambda_max(X[0], D), fastlista.duality_gap(X[0], D, 0.3, res.codes)):
        assert isinstance(value, np.generic) and value.dtype == dtype
    assert_allclose(float(lasso_objective(X[0], D, 0.3, res.codes)),
                    ref.objective(X[:1], D, 0.3, res.codes[None])[0], rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_warm_start_is_used(method):
    X, D = get_problem("over")
    lmbd = 0.3
    # start from a poor but non-zero point: the solver must still reach the
    # optimum, and a start close to it must save iterations
    Z_far = np.random.default_rng(0).standard_normal((X.shape[0], D.shape[0]))
    r_far = _solve(X, D, lmbd, method, Z0=Z_far, tol=1e-10, max_iter=50000)
    F_star = ref.objective(X, D, lmbd, get_exact("over", lmbd))
    scale = _half_sq_norm(X)
    assert np.all(ref.objective(X, D, lmbd, r_far.codes) - F_star <= 1.01e-10 * scale)
    r_cold = _solve(X, D, lmbd, method, tol=1e-10, max_iter=50000)
    r_warm = _solve(X, D, lmbd, method, Z0=r_cold.codes * (1 + 1e-4), tol=1e-10,
                    max_iter=50000)
    assert r_warm.n_iter.sum() < r_cold.n_iter.sum()
    # with tol=0 and one step from Z0, ISTA moves from Z0, not from zero (a
    # start better than 0: worse ones are replaced by 0, see test_certificate)
    if method == "ista":
        Z_mid = 0.5 * get_exact("over", lmbd) + 0.01 * Z_far
        assert np.all(ref.objective(X, D, lmbd, Z_mid) < scale)
        r1 = solve_lasso(X, D, lmbd, method="ista", Z0=Z_mid, tol=0.0, max_iter=1)
        assert_allclose(r1.codes, ref.ista(X, D, lmbd, 1, Z0=Z_mid)[0], rtol=1e-7,
                        atol=1e-9)
        assert np.abs(r1.codes - Z_mid).max() > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_not_converged_warns_and_reports(method):
    X, D = get_problem("over")
    lmbd = 0.05
    with pytest.warns(ConvergenceWarning):
        res = solve_lasso(X, D, lmbd, method=method, tol=1e-13, max_iter=2)
    assert not np.all(res.converged)
    assert np.all(res.n_iter[~res.converged] == 2)
    scale = _half_sq_norm(X)
    assert np.all(res.gap[~res.converged] > 1e-13 * scale[~res.converged])
    assert_allclose(res.gap, np.maximum(ref.duality_gap(X, D, lmbd, res.codes), 0),
                    rtol=1e-6, atol=1e-14)


def test_warning_states_the_iterations_run():
    """float32 codes stopped by their rounding, long before max_iter: the
    warning gives the iterations run and the reason, not "in max_iter"."""
    X, D = get_problem("over", np.float32)
    with pytest.warns(ConvergenceWarning) as record:
        res = solve_lasso(X, D, 0.3, method="cd", tol=1e-10, max_iter=10000)
    message = str(record[0].message)
    assert res.n_iter.max() < 10000
    assert (f"in at most {res.n_iter[~res.converged].max()} iterations of 'cd' "
            "(max_iter=10000)") in message
    assert "float32 codes cannot certify a relative gap much below 1e-6" in message
    with pytest.warns(ConvergenceWarning, match="in max_iter=2 iterations of 'ista'"):
        solve_lasso(X.astype(np.float64), D.astype(np.float64), 0.3, method="ista",
                    max_iter=2)


def test_warning_at_lmbd_zero_says_least_squares_codes_cannot_be_certified():
    """At lmbd = 0 with x outside the span of the atoms the gap is 1/2 ||r||^2
    (README): the warning says so, instead of "increase max_iter", and the
    codes are the least-squares ones (numpy.linalg.lstsq)."""
    rng = np.random.default_rng(3)
    D = rng.standard_normal((3, 6))
    X = rng.standard_normal((2, 6))
    with pytest.warns(ConvergenceWarning, match="At lmbd=0 the duality gap") as record:
        res = solve_lasso(X, D, 0.0, max_iter=2000)
    assert "Increase max_iter" not in str(record[0].message)
    Z_ls = np.linalg.lstsq(D.T, X.T, rcond=None)[0].T
    assert_allclose(res.codes, Z_ls, rtol=1e-6, atol=1e-9)
    assert_allclose(res.gap, 0.5 * np.sum((X - Z_ls @ D) ** 2, axis=1), rtol=1e-6)
    # tol=0: max_iter iterations, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve_lasso(X, D, 0.0, tol=0, max_iter=50)


def test_warning_at_lmbd_zero_with_positive_codes_names_the_cone_not_the_span():
    """With positive codes at lmbd = 0 the gap is 1/2 ||r||^2 of the
    non-negative least-squares residual, which is not 0 for an x in the
    span of the atoms but outside their cone: the warning said "0 only when
    x lies in the span of the atoms", which this x does. It names the
    non-negative combinations instead; the gap is scipy.optimize.nnls's
    1/2 ||r||^2 (18 active atoms: their correlations' rounding cannot all
    leave the residual dual feasible)."""
    from scipy.optimize import nnls

    rng = np.random.default_rng(0)
    D = rng.standard_normal((200, 20))
    D[:, 0] = 0.1 * np.abs(D[:, 0]) + 0.05    # every atom: positive first entry
    x = rng.standard_normal(20)
    x[0] = -1.0                               # no non-negative combination of them
    assert np.linalg.matrix_rank(D) == 20     # but in their span
    z_ref, r_ref = nnls(D.T, x)
    assert 0.5 * r_ref ** 2 > 0.1 * 0.5 * float(x @ x)
    with pytest.warns(ConvergenceWarning, match="At lmbd=0 with positive codes") as record:
        res = solve_lasso(x, D, 0.0, positive=True, max_iter=300)
    message = str(record[0].message)
    assert "non-negative combination of the atoms" in message
    assert "0 only when x lies in the span" not in message
    assert_allclose(res.gap, 0.5 * r_ref ** 2, rtol=1e-6)
    assert_allclose(res.codes @ D, z_ref @ D, atol=1e-6 * np.linalg.norm(x))
    # the signed Lasso of the same x is least squares in the span: certified
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert solve_lasso(x, D, 0.0).converged


def test_warning_of_cd_does_not_suggest_cd():
    X, D = get_problem()
    lmbd = 0.1 * lambda_max(X, D)
    with pytest.warns(ConvergenceWarning, match="iterations of 'cd'") as record:
        solve_lasso(X, D, lmbd, method="cd", max_iter=1)
    assert str(record[0].message).endswith("Increase max_iter.")
    with pytest.warns(ConvergenceWarning, match=r"Increase max_iter, or use method='cd'\."):
        solve_lasso(X, D, lmbd, method="ista", max_iter=1)


@pytest.mark.parametrize("dtype, big", [(np.float32, 1e25), (np.float64, 1e170)])
def test_warning_names_atoms_too_small_for_the_dtype(dtype, big):
    """A unit atom next to one of norm `big`: its squared norm underflows once
    D is scaled to its largest entry, it gets code 0 (the optimum's is 4),
    the certificate refuses, and the warning says why (not "increase
    max_iter")."""
    D = np.diag([big, 1.0]).astype(dtype)
    X = np.array([[0.0, 5.0]], dtype=dtype)
    with pytest.warns(ConvergenceWarning,
                      match=r"Atoms \[1\] of D are too small next to its largest entry "
                            rf"for {np.dtype(dtype).name}") as record:
        res = solve_lasso(X, D, 1.0, max_iter=50)
    assert "Increase max_iter" not in str(record[0].message)
    assert not res.converged[0]
    assert_array_equal(res.codes, [[0.0, 0.0]])
    # the gap reported is that of the codes returned (8: P(0) = 12.5, and the
    # dual point x scaled into the feasible set gives 4.5)
    assert_allclose(res.gap, ref.duality_gap(X, D, 1.0, res.codes), rtol=1e-6)


@pytest.mark.parametrize("method", ["ista", "fista", "backtracking", "oista", "cd"])
def test_convenience_functions(method):
    X, D = get_problem("over")
    func = getattr(fastlista, CONVENIENCE[method])
    a = func(X, D, 0.3, tol=1e-10, max_iter=5000, n_jobs=1)
    b = solve_lasso(X, D, 0.3, method=method, tol=1e-10, max_iter=5000, n_jobs=1)
    assert_array_equal(a.codes, b.codes)
    assert_array_equal(a.n_iter, b.n_iter)
    F_star = ref.objective(X, D, 0.3, get_exact("over", 0.3))
    assert np.all(ref.objective(X, D, 0.3, a.codes) - F_star
                  <= 1.01e-10 * _half_sq_norm(X))


def test_sample_independence():
    # a sample's solution does not depend on the rest of the batch
    X, D = get_problem("batch")
    for method in ("ista", "oista", "cd"):
        full = solve_lasso(X, D, 0.3, method=method, tol=0.0, max_iter=30, n_jobs=1).codes
        part = solve_lasso(X[70:75], D, 0.3, method=method, tol=0.0, max_iter=30,
                           n_jobs=1).codes
        assert_allclose(part, full[70:75], rtol=1e-9, atol=1e-12)


def test_references_agree_with_each_other_and_sklearn():
    # the NumPy references are themselves checked against scikit-learn
    X, D = get_problem("under")
    lmbd = 0.3
    F_star = ref.objective(X, D, lmbd, get_exact("under", lmbd))
    scale = _half_sq_norm(X)
    assert np.all(ref.duality_gap(X, D, lmbd, get_exact("under", lmbd)) <= 1e-14 * scale)
    Z_f = ref.fista(X, D, lmbd, 2000)
    Z_i, hist = ref.ista(X, D, lmbd, 2000)
    for Z_ in (Z_f, Z_i, _sklearn_codes("under", lmbd)):
        assert np.all(np.abs(ref.objective(X, D, lmbd, Z_) - F_star) <= 1e-8 * scale)
    ref.assert_kkt(X, D, lmbd, get_exact("under", lmbd), tol=1e-6)
    # the KKT helper can fail: a perturbed solution violates it
    with pytest.raises(AssertionError):
        ref.assert_kkt(X, D, lmbd, get_exact("under", lmbd) * 1.01, tol=1e-6)


@pytest.mark.parametrize("k", [10, 30, 100])
def test_fista_rate(k):
    # Beck & Teboulle: F(z_k) - F* <= 2 L ||z_0 - z*||^2 / (k + 1)^2; the
    # restarted variant must be at least as good as the plain reference
    X, D = get_problem("over")
    lmbd = 0.05
    Zs = get_exact("over", lmbd)
    F_star = ref.objective(X, D, lmbd, Zs)
    L = ref.lipschitz(D)
    res = solve_lasso(X, D, lmbd, method="fista", tol=0.0, max_iter=k)
    sub = ref.objective(X, D, lmbd, res.codes) - F_star
    assert np.all(sub <= 2 * L * np.sum(Zs ** 2, axis=1) / (k + 1) ** 2)
    sub_ref = ref.objective(X, D, lmbd, ref.fista(X, D, lmbd, k)) - F_star
    assert np.mean(sub) <= 1.5 * np.mean(sub_ref)


@pytest.mark.parametrize("ld_extra", [0, 3])
def test_newton_step_triangular_solves_match_scipy(ld_extra):
    # the coordinate descent's Cholesky solves, four unknowns a block, on
    # every size whose remainder differs (k = 0..13) and on a factor of
    # the size of a support (k = 64); the storage's unread entries (above
    # the diagonal, and past k in each column) hold NaN
    from scipy.linalg import solve_triangular

    from fastlista._kernels._cd import triangular_solves

    rng = np.random.default_rng(3)
    for k in list(range(14)) + [64]:
        A = rng.standard_normal((k, k + 4))
        L = np.linalg.cholesky(A @ A.T + 0.1 * np.eye(k))
        LT = np.full((k, k + ld_extra), np.nan)
        for j in range(k):
            LT[j, j:k] = L[j:, j]
        v = rng.standard_normal(k)
        fwd, bwd = triangular_solves(LT, v)
        if k == 0:                  # (SciPy 1.10's trtrs refuses an empty system)
            assert fwd.shape == bwd.shape == (0,)
            continue
        assert_allclose(fwd, solve_triangular(L, v, lower=True), rtol=1e-12,
                        atol=1e-12 * np.abs(v).max(initial=0))
        assert_allclose(bwd, solve_triangular(L, v, lower=True, trans="T"),
                        rtol=1e-12, atol=1e-12 * np.abs(v).max(initial=0))


def test_results_compare_by_identity():
    """== of two results (a dataclass of arrays) raised 'The truth value of
    an array ... is ambiguous'; they compare by identity, as documented."""
    X, D = get_problem()
    res = solve_lasso(X[:3], D, 0.3)
    twin = copy.deepcopy(res)
    assert res == res and not (res == twin) and res != twin
    assert_array_equal(twin.codes, res.codes)


def test_float32_fista_reaches_the_certifiable_tolerance_on_correlated_atoms():
    """float32 FISTA keeps its iterates in double (rounded to float32 for the
    products and the output). Stored in float32, on correlated atoms of
    uneven feature scales, half the samples stalled at relative gaps up to
    8e-6 for 2e4 iterations, where float64 FISTA certifies 1e-6 in 4e3."""
    rng = np.random.RandomState(0)
    D = rng.randn(128, 500) + rng.randn(1, 500) * np.sqrt(128)
    D = D * rng.uniform(0.2, 1, 500)
    D = (D / np.linalg.norm(D, axis=1, keepdims=True)).astype(np.float32)
    X = ((rng.rand(20, 128) < 0.1) * rng.randn(20, 128) @ D.astype(np.float64)
         + 0.1 * rng.randn(20, 500)).astype(np.float32)
    lmbd = 0.05 * float(np.median(ref.lambda_max(X, D)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = solve_lasso(X, D, lmbd, method="fista", tol=1e-6, max_iter=20000)
    assert res.codes.dtype == np.float32 and res.converged.all()
    gap = ref.duality_gap_robust(X, D, lmbd, res.codes)
    assert np.all(gap <= 1e-6 * 0.5 * np.einsum("ij,ij->i", X, X, dtype=np.float64))


@pytest.mark.parametrize("method, n_samples, max_iter, slack", [("ista", 100, 10000, 10),
                                                               ("oista", 200, 100000, 5)])
def test_float32_ista_and_oista_certify_where_float64_does(method, n_samples, max_iter,
                                                          slack):
    """float32 ISTA and OISTA keep their iterates in double, as FISTA. Stored
    in float32, each step's rounding walked z along the support's flat
    directions, which ISTA contracts by only 1 - mu / L a step: on 40
    Gaussian atoms of 20 features at a small lmbd, ISTA certified 1e-6 for
    49 of 100 samples in 1e4 iterations, where float64 ISTA certifies 77,
    and OISTA for 94 % of 200 samples in 1e5 (float64: 99 %). ``slack``:
    samples near the end of their budget may converge in one dtype and not
    the other (rounding), within a third of the old shortfall. The
    certificates are checked against the long-double reference."""
    rng = np.random.default_rng(10)
    D = rng.standard_normal((40, 20)).astype(np.float32)
    X = rng.standard_normal((200, 20))[:n_samples].astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res32 = solve_lasso(X, D, 0.2, method=method, tol=1e-6, max_iter=max_iter)
        res64 = solve_lasso(X.astype(np.float64), D.astype(np.float64), 0.2, method=method,
                            tol=1e-6, max_iter=max_iter)
    assert res32.codes.dtype == np.float32
    assert 0.7 < res64.converged.mean() < 1         # the float64 baseline
    assert res32.converged.sum() >= res64.converged.sum() - slack
    xx = 0.5 * np.einsum("ij,ij->i", X, X, dtype=np.float64)
    gap = ref.duality_gap_robust(X, D, 0.2, res32.codes)
    assert np.all(gap[res32.converged] <= 1e-6 * xx[res32.converged])


@pytest.mark.parametrize("method", ["ista", "fista", "backtracking", "oista", "cd"])
def test_float32_atom_whose_square_underflows_gets_code_zero(method):
    """An atom whose squared norm underflows float32 is a zero atom: its code
    is 0 for every method (the proximal-gradient kernels gave it codes of
    1e-25 from its correlation, which does not underflow)."""
    rng = np.random.default_rng(0)
    D = rng.standard_normal((4, 6))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    D[1] = D[0] * 1e-24
    X = rng.standard_normal((3, 6)).astype(np.float32)
    D = D.astype(np.float32)
    for lmbd in (0.0, 1e-30, 1e-3):
        res = solve_lasso(X, D, lmbd, method=method, tol=0, max_iter=2000)
        assert np.all(res.codes[:, 1] == 0)
        assert_allclose(res.gap, ref.duality_gap_robust(X, D, lmbd, res.codes),
                        rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("method", ["ista", "fista"])
def test_last_recorded_gap_is_the_certificate_rounded_up(method):
    """history["gap"][-1] is res.gap bit for bit in float32 (it was rounded to
    nearest, an ulp below the certificate for half the samples)."""
    X, D = get_problem("under", np.float32)
    res = solve_lasso(X, D, 0.3, method=method, tol=1e-5, max_iter=5000,
                      record_history=True)
    last = res.history["gap"][res.n_iter, np.arange(X.shape[0])]
    assert_array_equal(last, res.gap)


def test_gram_is_reused_only_for_the_same_dictionary_bits(monkeypatch):
    """solve_lasso keeps the last dictionary's D D^T: the same read-only
    array again for a dictionary of the same bits and thread count,
    computed anew for any other (a changed entry, 0.0 against -0.0,
    another thread count), and never kept beyond its size cap."""
    from fastlista import _lipschitz

    monkeypatch.setattr(_lipschitz, "_last_gram", None)
    rng = np.random.default_rng(3)
    D = rng.standard_normal((30, 8))
    D[0, 0] = 0.0
    B = _lipschitz.shared_gram(D, 1)
    assert_allclose(B, D @ D.T, rtol=1e-13, atol=1e-13)
    assert not B.flags.writeable
    assert _lipschitz.shared_gram(D.copy(), 1) is B
    assert _lipschitz.shared_gram(D, 2) is not B
    B = _lipschitz.shared_gram(D, 1)
    negative_zero = D.copy()
    negative_zero[0, 0] = -0.0
    assert _lipschitz.shared_gram(negative_zero, 1) is not B
    changed = D.copy()
    changed[3, 5] += 1.0
    assert_allclose(_lipschitz.shared_gram(changed, 1), changed @ changed.T,
                    rtol=1e-13, atol=1e-13)
    monkeypatch.setattr(_lipschitz, "_SHARED_GRAM_BYTES", 100)
    assert _lipschitz.shared_gram(D, 1) is not _lipschitz.shared_gram(D, 1)


@pytest.mark.parametrize("method", ["cd", "oista"])
def test_solve_lasso_sees_a_dictionary_changed_in_place(method, monkeypatch):
    """A dictionary changed in place between two calls (as dictionary
    learning does) is solved with its new Gram matrix: the codes and their
    certificates equal, bit for bit, those of a call that kept nothing from
    the previous one; the codes match the NumPy reference solution and the
    reported gaps the NumPy gap of the returned codes. (Coordinate descent
    and OISTA, the methods whose iterations read D D^T: through a stale
    one both return other codes.)"""
    from fastlista import _lipschitz

    X, D = ref.make_problem(n_samples=40, n_features=12, n_atoms=25)
    lmbd = 0.2 * float(ref.lambda_max(X, D).max())
    solve_lasso(X, D, lmbd, method=method, tol=1e-10)
    D[2] = -D[7]
    D[3] *= 0.5
    again = solve_lasso(X, D, lmbd, method=method, tol=1e-10)
    monkeypatch.setattr(_lipschitz, "_last_gram", None)
    fresh = solve_lasso(X, D, lmbd, method=method, tol=1e-10)
    assert_array_equal(again.codes, fresh.codes)
    assert_array_equal(again.gap, fresh.gap)
    gap_ref = ref.duality_gap(X, D, lmbd, again.codes)
    assert_allclose(again.gap, gap_ref, rtol=1e-6, atol=1e-12 * float(np.max(X * X)))
    Z_ref = ref.solve_exact(X, D, lmbd)
    assert_allclose(ref.objective(X, D, lmbd, again.codes), ref.objective(X, D, lmbd, Z_ref),
                    rtol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", METHODS)
def test_tol_near_the_float_range_gives_no_runtime_warning(method, dtype):
    """Any finite tol >= 0 is valid: one whose gap bound tol * 1/2 ||x||^2
    (or the retry bound, 16 times it) leaves the float range is inf, within
    which every finite gap lies; no RuntimeWarning (an overflow in a
    multiply), and the codes of a tol that does not overflow (every tol
    beyond every gap stops at the first check)."""
    # (1/2 ||x||^2 in the solver's scaled units is 0.7 to 2.2 here: the
    # bound overflows for some samples, only its retry bound for others)
    X, D = get_problem("under", dtype)
    iterative = method not in ("cd", "auto")
    plain = solve_lasso(X, D, 0.1, method=method, tol=1e300)
    for tol in (1e308, np.finfo(np.float64).max):
        for record_history in (False, True) if iterative else (False,):
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                res = solve_lasso(X, D, 0.1, method=method, tol=tol,
                                  record_history=record_history)
                warm = solve_lasso(X, D, 0.1, method=method, tol=tol, Z0=plain.codes)
            assert res.converged.all() and warm.converged.all()
            assert np.isfinite(res.gap).all()
            assert_array_equal(res.codes, plain.codes)


LMBD_BOOLS = {
    "bool array": np.array([True, False] * 5),
    "list of bools": [True, False] * 5,
    "bools among floats": [True] + [0.1] * 9,
    "object array": np.array([np.True_] + [0.1] * 9, dtype=object),
}


@pytest.mark.parametrize("lmbd", LMBD_BOOLS.values(), ids=LMBD_BOOLS.keys())
def test_lmbd_holding_bools_is_refused_as_lmbd_true_is(lmbd):
    """A bool is not a regularisation level, alone or one per sample (NumPy
    casts True to 1.0); bool signals and dictionaries stay numeric input."""
    X, D = get_problem("under")
    X = X[:10]
    for func in (lambda lm: solve_lasso(X, D, lm),
                 lambda lm: fastlista.duality_gap(X, D, lm, np.zeros((10, D.shape[0]))),
                 lambda lm: lasso_objective(X, D, lm, np.zeros((10, D.shape[0])))):
        for value in (True, lmbd):
            with pytest.raises(fastlista.InvalidParameterError, match="'lmbd' parameter"):
                func(value)
    res = solve_lasso(X > 0, D > 0, 0.1)
    assert_array_equal(res.codes, solve_lasso((X > 0) * 1.0, (D > 0) * 1.0, 0.1).codes)


@pytest.mark.parametrize("m", [1, 2])
def test_float32_oista_keeps_its_steps_where_l_s_has_a_closed_form(m):
    # On one or two atoms L_S is exact (B_jj, or L itself), so no step on
    # 1/L_S can fail the curvature test. The float32 test compared d.g(z1),
    # d from the float32-rounded z+, with d.g(z0) from the unrounded one: the
    # rounding of z (not of d) entered a test whose tolerance scales with d,
    # and near the optimum 78 of these 6000 steps were undone (recorded as
    # 0, the sample moved to LAPACK). Every step must be 1/L or 1/B_jj.
    rng = np.random.default_rng(0)
    D = rng.standard_normal((m, 8)).astype(np.float32)
    X = rng.standard_normal((200, 8)).astype(np.float32)
    D64 = D.astype(np.float64)
    B = D64 @ D64.T
    lmbd = 0.5 * np.max(np.abs(X.astype(np.float64) @ D64.T), axis=1)
    res = fastlista.oista(X, D, lmbd, tol=0, max_iter=30, record_history=True)
    steps = res.step_sizes.astype(np.float64)
    allowed = 1 / np.concatenate([[np.linalg.eigvalsh(B).max()], np.diagonal(B)])
    close = np.isclose(steps[..., None], allowed, rtol=1e-6, atol=0).any(axis=-1)
    assert np.count_nonzero(steps == 0) == 0
    assert close.all()
    if m == 1:
        # one atom: the Lasso's closed form, soft-thresholding c / ||d||^2
        c = X.astype(np.float64) @ D64[0]
        z = np.sign(c) * np.maximum(np.abs(c) - lmbd, 0) / B[0, 0]
        assert_allclose(res.codes[:, 0], z, rtol=1e-5, atol=1e-6)
