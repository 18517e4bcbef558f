"""Degenerate but valid inputs have defined results (closed forms)."""
import warnings

import numpy as np
import pytest

import reference as ref
from fastlista import (ConvergenceWarning, duality_gap, lambda_max, lasso_gradient,
                       lasso_objective, lipschitz, solve_lasso)

METHODS = ["cd", "ista", "fista", "oista", "backtracking"]


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("method", METHODS)
def test_no_atoms(method):
    # the Lasso without atoms: the empty code is optimal, F = ||x||^2 / 2
    X = np.arange(12.0).reshape(3, 4)
    D = np.zeros((0, 4))
    res = solve_lasso(X, D, 0.5, method=method)
    assert res.codes.shape == (3, 0)
    np.testing.assert_array_equal(res.gap, 0.0)
    assert res.converged.all()
    np.testing.assert_array_equal(lambda_max(X, D), 0.0)
    np.testing.assert_array_equal(lasso_objective(X, D, 0.5, res.codes),
                                  0.5 * (X ** 2).sum(axis=1))
    assert lipschitz(D) == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_one_atom_closed_form(method, rng):
    # one atom d: z = ST(x.d, lmbd) / ||d||^2
    d = rng.standard_normal((1, 6))
    X = rng.standard_normal((9, 6))
    lmbd = 0.4
    c = X @ d[0]
    expected = np.sign(c) * np.maximum(np.abs(c) - lmbd, 0) / (d[0] @ d[0])
    res = solve_lasso(X, d, lmbd, method=method, tol=1e-12)
    np.testing.assert_allclose(res.codes[:, 0], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_duplicated_atoms_split_and_match_objective(method, rng):
    D = rng.standard_normal((8, 10))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    D2 = np.vstack([D, D[2]])                   # atom 8 duplicates atom 2
    X = rng.standard_normal((6, 10))
    lmbd = 0.1 * float(np.abs(X @ D.T).max())
    res = solve_lasso(X, D2, lmbd, method=method, tol=1e-12, max_iter=100000)
    F_ref = ref.objective(X, D, lmbd, ref.solve_exact(X, D, lmbd))
    np.testing.assert_allclose(lasso_objective(X, D2, lmbd, res.codes), F_ref,
                               rtol=1e-8)
    assert lipschitz(D2, support=np.isin(np.arange(9), [2, 8])) == pytest.approx(2.0)
    if method != "cd":   # from a zero start, symmetric methods split evenly
        np.testing.assert_allclose(res.codes[:, 2], res.codes[:, 8],
                                   atol=1e-12 * np.abs(res.codes).max())


@pytest.mark.parametrize("method", METHODS)
def test_all_zero_dictionary(method, rng):
    X = rng.standard_normal((4, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = solve_lasso(X, np.zeros((6, 5)), 0.3, method=method)
    np.testing.assert_array_equal(res.codes, 0.0)
    assert np.isfinite(res.gap).all()
    assert lipschitz(np.zeros((6, 5))) == 0.0
    # no iteration to run, whatever tol (the documented exception to tol=0
    # running max_iter iterations), for every method alike
    for D in (np.zeros((6, 5)), np.zeros((0, 5))):
        res = solve_lasso(X, D, 0.3, method=method, tol=0, max_iter=7)
        np.testing.assert_array_equal(res.n_iter, 0)
        np.testing.assert_array_equal(res.codes, 0.0)
        # r D^T = 0 <= lmbd: the dual point x makes the zero code's gap 0
        np.testing.assert_array_equal(res.gap, 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_lmbd_at_lambda_max_gives_exact_zeros(method, rng):
    D = rng.standard_normal((20, 7))
    X = rng.standard_normal((5, 7))
    lm = lambda_max(X, D)
    for i in range(5):
        res = solve_lasso(X[i], D, lm[i], method=method)
        assert np.all(res.codes == 0.0)
        below = solve_lasso(X[i], D, lm[i] * (1 - 1e-3), method=method, tol=1e-12)
        assert np.any(below.codes != 0)
    assert np.all(solve_lasso(X, D, lm.max(), method=method).codes == 0.0)
    # a warm start a hair from 0 on the most correlated atom: the solution is
    # still exactly 0, even where rounding puts F(z0) an ulp below F(0)
    C = X @ D.T
    top = np.abs(C).argmax(axis=1)
    rows = np.arange(5)
    for eps in (1e-12, 1e-9):
        Z0 = np.zeros((5, 20))
        Z0[rows, top] = np.sign(C[rows, top]) * eps
        res = solve_lasso(X, D, lm, method=method, Z0=Z0)
        np.testing.assert_array_equal(res.codes, 0.0)
        np.testing.assert_array_equal(res.gap, 0.0)
    # also with tol=0, whose max_iter iterations ISTA ran from the warm start
    # (without screening), approaching 0 by a factor 1 - B_jj / L a step:
    # codes of 6e-10 after 50
    D2, x2 = np.array([[1.0, 0.0], [0.0, 10.0]]), np.array([1.0, 0.0])
    for dtype in (np.float64, np.float32):
        res = solve_lasso(x2.astype(dtype), D2.astype(dtype), lambda_max(x2, D2),
                          method=method, tol=0.0, max_iter=50, Z0=np.array([1e-9, 0.0]))
        np.testing.assert_array_equal(res.codes, 0.0)
        assert res.gap == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_empty_batch_and_single_sample(method, rng):
    D = rng.standard_normal((15, 6))
    X = rng.standard_normal((3, 6))
    empty = solve_lasso(X[:0], D, 0.2, method=method)
    assert empty.codes.shape == (0, 15) and empty.gap.shape == (0,)
    one = solve_lasso(X[1], D, 0.2, method=method, tol=1e-12, max_iter=100000)
    batch = solve_lasso(X, D, 0.2, method=method, tol=1e-12, max_iter=100000)
    assert one.codes.shape == (15,) and np.ndim(one.gap) == 0
    np.testing.assert_allclose(one.codes, batch.codes[1], atol=1e-8)


@pytest.mark.parametrize("shape", [(5, 12), (12, 12), (40, 12)])
def test_fewer_equal_more_atoms_than_features(shape, rng):
    sklearn = pytest.importorskip("sklearn.decomposition")
    D = rng.standard_normal(shape)
    X = rng.standard_normal((8, shape[1]))
    lmbd = 0.2 * float(np.abs(X @ D.T).max())
    Z = solve_lasso(X, D, lmbd, tol=1e-12).codes
    Z_sk = sklearn.sparse_encode(X, D, algorithm="lasso_cd", alpha=lmbd,
                                 max_iter=100000)
    F, F_sk = lasso_objective(X, D, lmbd, Z), lasso_objective(X, D, lmbd, Z_sk)
    assert np.all(F <= F_sk + 1e-10 * np.abs(F_sk))
    assert np.all(duality_gap(X, D, lmbd, Z) <= 1e-12 * 0.5 * (X ** 2).sum(axis=1) + 1e-15)


def test_lmbd_zero_in_span_reaches_least_squares(rng):
    # n_atoms > n_features: x is in the span, min F = 0 at lmbd = 0
    D = rng.standard_normal((20, 8))
    X = rng.standard_normal((4, 8))
    res = solve_lasso(X, D, 0.0, tol=1e-10)
    assert res.converged.all()
    np.testing.assert_allclose(res.codes @ D, X, atol=1e-4)


@pytest.mark.parametrize("method", ["ista", "fista", "oista", "backtracking", "cd"])
def test_unreachable_float32_tol_stops_with_warning(rng, method):
    # the proximal methods ran to max_iter and advised "Increase max_iter,
    # or use method='cd'", neither of which certifies a float32 tol of 1e-8
    D = rng.standard_normal((10, 30)).astype(np.float32)
    X = rng.standard_normal((5, 30)).astype(np.float32)
    lmbd = 0.1 * float(ref.lambda_max(X, D).min())
    with pytest.warns(ConvergenceWarning) as record:
        res = solve_lasso(X, D, lmbd, method=method, tol=1e-12, max_iter=3000)
    message = str(record[-1].message)
    assert "did not converge" in message
    assert "float32 codes cannot certify a relative gap much below 1e-6" in message
    assert "Increase max_iter" not in message
    assert res.codes.dtype == np.float32 and np.isfinite(res.codes).all()
    if method != "cd":
        assert (res.n_iter == 3000).all()
    # the codes are as good as float32 holds: the float64 optimum's
    # objective to float32's rounding, and the gap of each returned code
    F = ref.objective(X.astype(np.float64), D.astype(np.float64), lmbd, res.codes)
    z64 = ref.solve_exact(X.astype(np.float64), D.astype(np.float64), lmbd)
    F_star = ref.objective(X.astype(np.float64), D.astype(np.float64), lmbd, z64)
    assert np.all(F - F_star <= 1e-5 * 0.5 * np.einsum("ij,ij->i", X, X, dtype=np.float64))
    np.testing.assert_allclose(
        res.gap, np.maximum(ref.duality_gap(X.astype(np.float64), D.astype(np.float64),
                                            lmbd, res.codes), 0), rtol=1e-6, atol=1e-12)


def test_atoms_of_norms_twenty_orders_apart_warn_to_rescale_them():
    """An atom of norm 1e20 next to atoms of norm ~1: the rounding of
    x - z D on its coordinate (u |z_j d_j|, about 1e-16), times its norm,
    exceeds lmbd, and no iteration certifies the codes. The warning says
    so, where it advised "Increase max_iter" after max_iter epochs (or,
    built without optimisation, where the kernel's own gap stopped it
    early, blamed the codes' rounding)."""
    rng = np.random.RandomState(0)
    D = rng.randn(4, 4)
    D[0] = 0
    D[0, 0] = 1e20
    X = rng.randn(1, 4)
    X[:, 0] = 0
    lmbd = 0.1 * float(ref.lambda_max(X, D)[0])
    with pytest.warns(ConvergenceWarning, match=r"norms span 1\.\de\+20.*rescale D's atoms"):
        res = solve_lasso(X, D, lmbd, max_iter=200)
    assert not res.converged[0]
    assert np.isfinite(res.codes).all() and res.gap[0] > 1e-8 * 0.5 * float(X[0] @ X[0])
    # atoms of comparable norms keep the advice to iterate longer
    with pytest.warns(ConvergenceWarning, match="Increase max_iter"):
        solve_lasso(rng.randn(3, 6), rng.randn(10, 6), 0.01, method="ista", max_iter=2)


@pytest.mark.parametrize("scale", [1e-150, 1e-30, 1e30, 1e150])
def test_scale_equivariance_of_solvers_and_networks(scale, rng):
    # code(a X, a lmbd) = a code(X, lmbd): never silently wrong at extremes
    from fastlista import Lista

    D = rng.standard_normal((30, 12))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = rng.standard_normal((20, 12))
    lmbd = 0.2 * float(np.abs(X @ D.T).max())
    Z = solve_lasso(X, D, lmbd, tol=1e-12).codes
    Z_scaled = solve_lasso(scale * X, D, scale * lmbd, tol=1e-12).codes
    np.testing.assert_allclose(Z_scaled / scale, Z, rtol=1e-6, atol=1e-9 * np.abs(Z).max())
    net = Lista(D, lmbd, 8)
    np.testing.assert_allclose(net.transform(scale * X, lmbd=scale * lmbd) / scale,
                               net.transform(X), rtol=1e-9, atol=1e-12 * np.abs(Z).max())



@pytest.mark.parametrize("dtype, e", [(np.float64, 600), (np.float32, 70)])
def test_atoms_spanning_more_than_one_scale_are_refused(dtype, e):
    """Atoms of norms 2**-e and 2**e: once D was scaled for its largest
    entry, the small atom was 0 (float64) or subnormal (float32). At
    1e-200 next to 1e200 every method returned the small atom's code 0
    with a gap of 0, converged, where the closed form (orthogonal atoms:
    z_j = ST(x d_j, lmbd) / |d_j|^2) puts F - F* at 2/9, 36 % of
    1/2 ||x||^2. Every function that works at one scale of D refuses it,
    naming the atom."""
    D = np.zeros((3, 2), dtype)
    D[0, 0] = np.ldexp(1.0, -e)
    D[1, 1] = np.ldexp(1.0, e)
    X = np.array([[1.0, 0.5]], dtype)
    lmbd = float(np.ldexp(1.0, -e)) / 3
    Z = np.zeros((1, 3), dtype)
    calls = [lambda: lambda_max(X, D), lambda: duality_gap(X, D, lmbd, Z),
             lambda: lasso_objective(X, D, lmbd, Z), lambda: lasso_gradient(X, D, Z)]
    calls += [lambda method=method: solve_lasso(X, D, lmbd, method=method)
              for method in ["auto"] + METHODS]
    for call in calls:
        with pytest.raises(ValueError, match=r"D's atoms span .* atom 0's largest"):
            call()
    # lipschitz computes a small atom's support at its own scale: exact
    assert lipschitz(D, np.array([True, False, False])) == float(np.ldexp(1.0, -2 * e))


@pytest.mark.parametrize("dtype, e_small", [(np.float64, -900), (np.float64, -20),
                                            (np.float32, -90), (np.float32, -10)])
@pytest.mark.parametrize("method", ["auto"] + METHODS)
def test_atoms_spanning_up_to_the_limit_keep_an_honest_certificate(dtype, e_small, method):
    """Orthogonal atoms of norms 2**e_small and 1 (and a zero atom), within
    the span one scale holds: z_j = ST(x d_j, lmbd) / |d_j|^2. The gap
    bounds F - F* (both in rational arithmetic), and a converged code is
    the closed form. A sample left unconverged is warned about: the
    proximal-gradient methods' condition number is the span squared, and
    at 2**-900 the small atom's squared norm underflows."""
    from fractions import Fraction

    a = np.ldexp(1.0, e_small)
    D = np.zeros((3, 2), dtype)
    D[0, 0] = a
    D[1, 1] = 1.0
    X = np.array([[1.0, 0.5]], dtype)
    lmbd = a / 2
    z_star = np.array([np.ldexp(1.0, -e_small - 1), 0.5 - lmbd, 0.0])   # (a - a/2) / a^2
    tol = 1e-8 if dtype == np.float64 else 1e-6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = solve_lasso(X, D, lmbd, method=method, tol=tol)

    def F(z):
        fa, fl = Fraction(float(a)), Fraction(float(lmbd))
        z = [Fraction(float(v)) for v in z]
        return ((1 - fa * z[0]) ** 2 + (Fraction(1, 2) - z[1]) ** 2) / 2 + fl * sum(map(abs, z))

    assert Fraction(float(res.gap[0])) >= F(res.codes[0]) - F(z_star)
    if res.converged[0]:
        np.testing.assert_allclose(res.codes[0], z_star, rtol=10 * tol)
    else:
        assert any(issubclass(w.category, ConvergenceWarning) for w in caught)
    # a signal on the small atom alone: lambda_max is |x d_0| = a
    lm = lambda_max(np.array([[1.0, 0.0]], dtype), D)[0]
    assert lm >= a
    np.testing.assert_allclose(lm, a, rtol=1e-6)
