"""The Lasso toolkit (objective, gradient, lambda_max, duality gap, prox)
against the plain NumPy formulas of tests/reference.py and sklearn."""
from fractions import Fraction

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import fastlista
from fastlista import (duality_gap, lambda_max, lasso_gradient, lasso_objective,
                       soft_thresholding)

import reference as ref
from conftest import LMBDS, get_exact, get_problem, rtol_for


def _random_codes(X, D, seed=1, density=0.3):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((X.shape[0], D.shape[0]))
    Z *= rng.random(Z.shape) < density
    return Z.astype(X.dtype)


# --------------------------------------------------------------------------
# soft-thresholding
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_soft_thresholding_matches_reference_exactly(dt):
    rng = np.random.default_rng(0)
    U = (3 * rng.standard_normal((50, 17))).astype(dt)
    t = dt(0.7)
    out = soft_thresholding(U, t)
    expected = ref.soft_thresholding(U, t)
    assert out.dtype == dt and expected.dtype == dt
    assert out.shape == U.shape
    # exact, bit for bit (signed zeros aside: -0.0 == 0.0 here)
    assert_array_equal(out, expected)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_soft_thresholding_zero_iff_below_threshold(dt):
    t = dt(0.3)
    below = np.nextafter(t, dt(0))
    above = np.nextafter(t, dt(np.inf))
    U = np.array([t, -t, below, -below, 0.0, -0.0, above, -above, 2 * t], dtype=dt)
    out = soft_thresholding(U, t)
    assert out.dtype == dt
    assert_array_equal(out[:6], 0.0)
    assert np.all(out[6:] != 0), out
    assert np.sign(out[6]) == 1 and np.sign(out[7]) == -1
    assert out[6] == above - t and out[7] == -(above - t)
    assert out[8] == t


def test_soft_thresholding_tiny_values_and_subnormals():
    # subnormal inputs above a subnormal threshold must not be flushed to 0
    tiny = np.finfo(np.float64).smallest_subnormal
    U = np.array([3 * tiny, -3 * tiny, tiny, 5e-300])
    out = soft_thresholding(U, tiny)
    assert_array_equal(out, [2 * tiny, -2 * tiny, 0.0, 5e-300 - tiny])
    assert out[0] != 0 and out[1] != 0


def test_soft_thresholding_nan_and_inf():
    U = np.array([np.nan, -np.nan, np.inf, -np.inf, 1.5, 0.2])
    out = soft_thresholding(U, 0.5)
    assert np.isnan(out[0]) and np.isnan(out[1])
    assert out[2] == np.inf and out[3] == -np.inf
    assert_array_equal(out[4:], [1.0, 0.0])


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_soft_thresholding_is_odd_and_shrinks(dt):
    rng = np.random.default_rng(3)
    U = rng.standard_normal(1000).astype(dt)
    t = dt(0.5)
    a, b = soft_thresholding(U, t), soft_thresholding(-U, t)
    assert_array_equal(b, -a)
    assert np.all(np.abs(a) <= np.abs(U))
    assert np.all(np.abs(U - a) <= t)            # moves by at most t
    assert np.all(np.sign(a)[a != 0] == np.sign(U)[a != 0])


def test_soft_thresholding_zero_threshold_is_identity():
    U = np.random.default_rng(4).standard_normal((7, 5))
    assert_array_equal(soft_thresholding(U, 0.0), U)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_soft_thresholding_array_threshold(dt):
    rng = np.random.default_rng(5)
    U = (2 * rng.standard_normal((30, 12))).astype(dt)
    # one threshold per atom (broadcast along rows)
    t = rng.random(12).astype(dt)
    assert_array_equal(soft_thresholding(U, t), ref.soft_thresholding(U, t))
    # one threshold per sample (column broadcast), and a full array
    t_col = rng.random((30, 1)).astype(dt)
    assert_array_equal(soft_thresholding(U, t_col), ref.soft_thresholding(U, t_col))
    t_full = rng.random((30, 12)).astype(dt)
    assert_array_equal(soft_thresholding(U, t_full), ref.soft_thresholding(U, t_full))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_soft_thresholding_in_threaded_blocks(dt):
    """Beyond 2^16 values the kernel cuts the flat array into blocks of
    32768 over threads: a period of thresholds (257 atoms) that no block
    boundary respects, and a length that is no multiple of a block."""
    rng = np.random.default_rng(11)
    U = (2 * rng.standard_normal((401, 257))).astype(dt)
    for t in (dt(0.3), rng.random(257).astype(dt), rng.random((401, 257)).astype(dt)):
        for positive in (False, True):
            assert_array_equal(soft_thresholding(U, t, positive=positive),
                               ref.soft_thresholding(U, t, positive))


def test_soft_thresholding_non_contiguous_and_lists():
    rng = np.random.default_rng(6)
    big = rng.standard_normal((20, 30))
    U = big[::2, 3::3]
    assert_array_equal(soft_thresholding(U, 0.4), ref.soft_thresholding(U, 0.4))
    assert_array_equal(soft_thresholding(np.asfortranarray(big), 0.4),
                       ref.soft_thresholding(big, 0.4))
    assert_array_equal(soft_thresholding([-2.0, 0.5, 3.0], 1.0), [-1.0, 0.0, 2.0])


@pytest.mark.parametrize("positive", [False, True])
def test_float32_soft_thresholding_above_float32s_range(positive):
    """A finite threshold beyond float32's range (1e39) for float32 U raised
    "Input threshold contains NaN or infinity" after a cast-overflow
    RuntimeWarning. Every finite u is within it: 0; inf stays inf (inf - 1e39),
    NaN stays NaN, as in float64."""
    import warnings

    U = np.array([1.0, -3e38, 3e38, np.inf, -np.inf, np.nan], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = soft_thresholding(U, 1e39, positive=positive)
    assert out.dtype == np.float32
    expected = ref.soft_thresholding(U.astype(np.float64), 1e39, positive)
    assert_array_equal(out, expected.astype(np.float32))


@pytest.mark.parametrize("threshold", [True, np.bool_(False), [True, False],
                                       np.array([0.5, True], dtype=object)])
def test_soft_thresholding_refuses_bool_thresholds(threshold):
    # a threshold is a parameter, as lmbd (which refuses bools): True was
    # taken as 1; bool signals U stay data, as bool X is
    with pytest.raises(ValueError, match="threshold must be non-negative real numbers.*bool"):
        soft_thresholding(np.ones((3, 2)), threshold)
    assert_array_equal(soft_thresholding(np.array([True, False]), 0.25), [0.75, 0.0])


def test_soft_thresholding_keeps_the_shape_and_documented_dtype():
    # a scalar U gives a 0-d array (it came back of shape (1,)); a float32 U
    # stays float32 with a scalar threshold of any dtype (rounded to
    # float32), and becomes float64 with a float64 array of thresholds
    out = soft_thresholding(3.0, 1.0)
    assert out.shape == () and out == 2.0
    out = soft_thresholding(np.float32(-3.0), np.float64(1.0))
    assert out.shape == () and out.dtype == np.float32 and out == -2.0
    U = np.array([1.5, -0.25], np.float32)
    assert soft_thresholding(U, np.float64(1.0)).dtype == np.float32
    out = soft_thresholding(U, np.array([1.0, 0.125]))
    assert out.dtype == np.float64
    assert_array_equal(out, ref.soft_thresholding(U.astype(np.float64), np.array([1.0, 0.125])))


# --------------------------------------------------------------------------
# objective, gradient, lambda_max
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["under", "over"])
@pytest.mark.parametrize("lmbd", [0.0, 0.3])
def test_objective_and_gradient_match_reference(kind, lmbd, dtype):
    X, D = get_problem(kind, dtype)
    Z = _random_codes(X, D)
    obj = lasso_objective(X, D, lmbd, Z)
    assert obj.shape == (X.shape[0],)
    assert_allclose(obj, ref.objective(X, D, lmbd, Z), rtol=10 * rtol_for(dtype))
    grad = lasso_gradient(X, D, Z)
    assert grad.shape == Z.shape
    assert_allclose(grad, ref.gradient(X, D, Z), rtol=10 * rtol_for(dtype),
                    atol=10 * rtol_for(dtype))


def test_gradient_matches_finite_differences():
    X, D = get_problem("under")
    Z = _random_codes(X, D)[:3]
    X = X[:3]
    g = lasso_gradient(X, D, Z)
    eps = 1e-6
    for k in range(0, D.shape[0], 5):
        E = np.zeros_like(Z)
        E[:, k] = eps
        fd = (lasso_objective(X, D, 0.0, Z + E) - lasso_objective(X, D, 0.0, Z - E)) / (2 * eps)
        assert_allclose(g[:, k], fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("a, b", [(1000, 0), (-1000, 0), (0, 500), (0, -500), (600, -300),
                                  (-600, 300), (1015, 0), (-1060, 0)])
def test_gradient_is_homogeneous_at_extreme_scales(a, b):
    # g(x 2^a, D 2^b, z 2^(a-b)) = 2^(a+b) g(x, D, z), exactly in binary
    # floating point, as long as no term leaves the float range: the
    # reference is the NumPy gradient at scale 1, shifted
    X, D = get_problem("under")
    Z = _random_codes(X, D)
    g0 = ref.gradient(X, D, Z)
    g = lasso_gradient(np.ldexp(X, a), np.ldexp(D, b), np.ldexp(Z, a - b))
    # (2^(a+b) g0 below the normal range rounds to the subnormal grid)
    assert_allclose(g, np.ldexp(g0, a + b), rtol=1e-12,
                    atol=float(np.ldexp(1.0, -1074)) * D.shape[1] * 4)


@pytest.mark.parametrize("dtype, x, D, z", [
    (np.float32, [2.0**-100, 2.0**100], np.eye(2), [0.0, 2.0**100]),
    (np.float64, [2.0**-600, 2.0**500], np.eye(2), [0.0, 2.0**500]),
    (np.float64, [-3 * 2.0**-600, 2.0**500, 2.0**-700],
     [[1.0, 0.5, 0.25], [0.25, 1.0, 0.0]], [2.0**-602, 2.0**500]),
    (np.float32, [2.0**-110, -1.5 * 2.0**40, 2.0**-100],
     [[1.0, 0.0, 0.5], [0.0, 1.0, 0.25]], [0.0, -1.5 * 2.0**40]),
])
def test_gradient_of_a_sample_spanning_more_than_its_dtype(dtype, x, D, z):
    """A sample whose entries span more than its dtype loses the smallest
    to its scaling: the gradient was taken without them, 0 for -2**-100
    (float32 x = [2**-100, 2**100], D = I, z = [0, 2**100]). Their share,
    -x_v D^T, is added at their own scale: the exact gradient (rational
    arithmetic) to the rounding of its terms and of the dtype."""
    X, D, Z = np.array([x], dtype), np.array(D, dtype), np.array([z], dtype)
    g = lasso_gradient(X, D, Z)[0]
    xq = [Fraction(float(v)) for v in X[0]]
    zq = [Fraction(float(v)) for v in Z[0]]
    Dq = [[Fraction(float(v)) for v in row] for row in D]
    n, m = len(xq), len(zq)
    r = [sum(zq[k] * Dq[k][i] for k in range(m)) - xq[i] for i in range(n)]
    size = [abs(xq[i]) + sum(abs(zq[k] * Dq[k][i]) for k in range(m)) for i in range(n)]
    eps = Fraction(float(np.finfo(dtype).eps))
    for j in range(m):
        exact = sum(r[i] * Dq[j][i] for i in range(n))
        terms = sum(size[i] * abs(Dq[j][i]) for i in range(n))
        assert abs(Fraction(float(g[j])) - exact) <= (Fraction(2.0**-50) * terms + eps * abs(exact)
                                                      + Fraction(2.0**-1074)), (j, g, exact)
    assert g[0] != 0


def test_gradient_of_codes_whose_products_overflow():
    # orthonormal atoms: z D has entries 1.5e308 sqrt(2) (beyond the float
    # range) while the gradient z D D^T = z does not; a plain NumPy product
    # returned inf
    D = np.array([[1.0, 1.0], [1.0, -1.0]]) / np.sqrt(2)
    Z = np.array([[1.5e308, 1.5e308], [1.5e308, -1.5e308]])
    assert_allclose(lasso_gradient(np.zeros((2, 2)), D, Z), Z, rtol=1e-15)
    # and where the gradient itself is beyond the range: inf, no warning
    assert np.all(np.isinf(lasso_gradient(np.zeros((2, 2)), 2 * D, Z)))
    # (codes that set the unit so far above x that all of x is lost: inf,
    # not inf - inf = NaN from the lost entries' share added to it)
    g = lasso_gradient(np.array([[2.0**490]]), np.array([[2.0**600]]), np.array([[2.0**975]]))
    assert g[0, 0] == np.inf


def _exact_objective(x, D, lmbd, z):
    """F_x(z) in rational arithmetic, from the float entries as they are."""
    x, z = [Fraction(float(v)) for v in x], [Fraction(float(v)) for v in z]
    r = [xi - sum(zj * Fraction(float(D[j][i])) for j, zj in enumerate(z))
         for i, xi in enumerate(x)]
    return sum(v * v for v in r) / 2 + Fraction(float(lmbd)) * sum(abs(v) for v in z)


@pytest.mark.parametrize("dtype, x, D, lmbd, z", [
    # a sample spanning more than its dtype, its kept part fitted exactly: F
    # is 1/2 ||x_v||^2 of the entries its scaling lost (it was 0)
    (np.float64, [2.0**600, 2.0**-500], np.eye(2), 0.0, [2.0**600, 0.0]),
    (np.float32, [2.0**100, 2.0**-60], np.eye(2), 0.0, [2.0**100, 0.0]),
    # ... and the cross term <r_k, x_v>, 6e-9 of F here
    (np.float64, [2.0**600, 3 * 2.0**-500], np.eye(2), 0.0, [2.0**600, 2.0**-470]),
    # x - z D cancelling beyond the normal range in the unit of x: F =
    # 2**-941 (it was 0, and so was the gap)
    (np.float64, [2.0**600, 0.0], np.eye(2), 0.0, [2.0**600, 2.0**-470]),
    # lmbd ||z||_1 below the normal range in the unit of x (2**-1000 2**600
    # against 2**1200), the residual exactly 0: F = 2**-400 (it was 0)
    (np.float64, [2.0**600], np.eye(1), 2.0**-1000, [2.0**600]),
    (np.float64, [2.0**600, 2.0**-500], np.eye(2), 2.0**-1000, [2.0**600, 0.0]),
])
def test_objective_and_gap_of_terms_below_the_data_s_unit(dtype, x, D, lmbd, z):
    """The objective is computed at the unit of its largest terms, x's: the
    entries of a sample spanning more than its dtype, which the scaling
    loses, and a residual that cancels beyond 2**-900 of that unit (lmbd
    ||z||_1 next to it underflowed there) are taken again in the caller's
    units, at their own scale: the exact F (rational arithmetic) to double
    precision, and a gap of at least F - min F (F itself where min F = 0,
    at lmbd = 0 here; at lmbd > 0 the gap of theta = 0, F too)."""
    X, D, Z = np.array([x], dtype), np.array(D, dtype), np.array([z], dtype)
    exact = _exact_objective(X[0], D, lmbd, Z[0])
    assert exact > 0
    obj = lasso_objective(X, D, lmbd, Z)[0]
    assert float(obj) == pytest.approx(float(exact), rel=4 * float(np.finfo(dtype).eps), abs=0)
    gap = duality_gap(X, D, lmbd, Z)[0]
    if lmbd == 0:
        # at lmbd = 0, min F is 0 here (D invertible): the gap bounds F
        assert Fraction(float(gap)) >= exact
    else:
        # the gap of theta = r / lmbd = 0 is F(z) itself, the documented one
        assert float(gap) == pytest.approx(float(exact), rel=1e-14, abs=0)


def test_objective_1d_gives_float():
    X, D = get_problem("under")
    Z = _random_codes(X, D)
    val = lasso_objective(X[3], D, 0.2, Z[3])
    assert np.ndim(val) == 0
    assert_allclose(float(val), ref.objective(X[3], D, 0.2, Z[3])[0], rtol=1e-12)
    g = lasso_gradient(X[3], D, Z[3])
    assert g.shape == (D.shape[0],)
    assert_allclose(g, ref.gradient(X[3], D, Z[3])[0], rtol=1e-10, atol=1e-12)


def test_lambda_max_matches_reference(dtype):
    X, D = get_problem("over", dtype)
    rng = np.random.default_rng(2)
    X = X * rng.uniform(0.1, 10, size=(X.shape[0], 1)).astype(dtype)
    lm = lambda_max(X, D)
    assert lm.shape == (X.shape[0],)
    assert_allclose(lm, ref.lambda_max(X, D), rtol=10 * rtol_for(dtype))
    assert np.ndim(lambda_max(X[0], D)) == 0
    assert_allclose(float(lambda_max(X[0], D)), lm[0], rtol=10 * rtol_for(dtype))
    # problems are generated with lambda_max = 1
    X1, D1 = get_problem("under")
    assert_allclose(lambda_max(X1, D1), 1.0, rtol=1e-12)


def test_lambda_max_makes_zero_optimal():
    X, D = get_problem("under")
    lm = lambda_max(X, D)
    Z0 = np.zeros((X.shape[0], D.shape[0]))
    for i in range(5):
        # the zero code has a zero gap at lmbd = lambda_max(x) ...
        assert duality_gap(X[i], D, lm[i], Z0[i]) <= 1e-14 * X[i] @ X[i]
        # ... and a positive one just below it
        assert ref.duality_gap(X[i], D, 0.99 * lm[i], Z0[i])[0] > 1e-6
        assert duality_gap(X[i], D, 0.99 * lm[i], Z0[i]) > 1e-6


# --------------------------------------------------------------------------
# duality gap
# --------------------------------------------------------------------------
@pytest.mark.parametrize("lmbd", [0.0, 0.05, 0.3, 0.8, 1.5])
def test_duality_gap_matches_reference_formula(lmbd, dtype):
    X, D = get_problem("over", dtype)
    rng = np.random.default_rng(7)
    Zs = [_random_codes(X, D, seed=8), np.zeros((X.shape[0], D.shape[0]), dtype),
          (0.01 * rng.standard_normal((X.shape[0], D.shape[0]))).astype(dtype)]
    for Z in Zs:
        gap = duality_gap(X, D, lmbd, Z)
        expected = ref.duality_gap(X, D, lmbd, Z)
        assert gap.shape == (X.shape[0],)
        assert np.all(gap >= 0)
        scale = 0.5 * np.sum(X.astype(np.float64) ** 2, axis=1)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        assert_allclose(gap, np.maximum(expected, 0), rtol=tol, atol=tol * scale.max())


@pytest.mark.parametrize("kind", ["under", "over"])
@pytest.mark.parametrize("lmbd", LMBDS)
def test_duality_gap_zero_at_optimum_and_bounds_suboptimality(kind, lmbd):
    X, D = get_problem(kind)
    Zs = get_exact(kind, lmbd)
    scale = 0.5 * np.sum(X * X, axis=1)
    gap = duality_gap(X, D, lmbd, Zs)
    assert np.all(gap >= 0)
    assert np.all(gap <= 1e-13 * scale)
    # the gap bounds F(z) - F* from above at any point
    Z = _random_codes(X, D, seed=9, density=0.5)
    sub = ref.objective(X, D, lmbd, Z) - ref.objective(X, D, lmbd, Zs)
    assert np.all(duality_gap(X, D, lmbd, Z) >= sub - 1e-12 * scale)


def test_duality_gap_zero_at_sklearn_optimum():
    sklearn = pytest.importorskip("sklearn")  # noqa: F841
    from sklearn.linear_model import Lasso

    X, D = get_problem("under")
    lmbd = 0.3
    # scikit-learn's coordinate descent with an explicit tol=1e-8: what
    # sparse_encode(algorithm="lasso_cd") runs from scikit-learn 1.8 on (it
    # has no tol parameter, and before 1.8 stops at Lasso's default 1e-4: a
    # gap up to 1e-4 ||x||^2, measured 4.6e-5 of 1/2 ||x||^2 on 1.7.2). Its
    # Lasso minimises 1/(2n) ||x - z D||^2 + a ||z||_1: a = lmbd / n_features
    n_features = X.shape[1]
    Zsk = Lasso(alpha=lmbd / n_features, fit_intercept=False, tol=1e-8,
                max_iter=10000).fit(D.T, X.T).coef_
    scale = 0.5 * np.sum(X * X, axis=1)
    gap = duality_gap(X, D, lmbd, Zsk)
    assert_allclose(gap, np.maximum(ref.duality_gap(X, D, lmbd, Zsk), 0),
                    rtol=1e-8, atol=1e-14)
    # sklearn stops once its own duality gap (of n times its objective, i.e.
    # of ours) is <= tol ||x||^2 = 2e-8 scale
    assert np.all(gap <= 1e-7 * scale)
    assert_allclose(ref.objective(X, D, lmbd, Zsk),
                    ref.objective(X, D, lmbd, get_exact("under", lmbd)), rtol=1e-7)


def test_float64_codes_of_a_float32_problem_are_evaluated_in_float64():
    # codes 2e-8 off the optimum (0.5, 0) of x = (1, 0), D = I, lmbd = 0.5:
    # rounded to float32 they would be the optimum, with gap 0
    X, D = np.array([[1.0, 0.0]], np.float32), np.eye(2, dtype=np.float32)
    Z = np.array([[0.5 + 2e-8, 0.0]])
    # r = x - zD has |r D^T|_inf = 0.5 - 2e-8 <= lmbd: the dual point is r,
    # gap = 1/2 |r|^2 + lmbd |z|_1 - (<x, r> - 1/2 |r|^2) = delta / 2 + delta^2
    # for z = 0.5 + delta
    z = Z[0, 0]
    r = 1.0 - z
    expected_gap = 0.5 * r * r + 0.5 * z - (r - 0.5 * r * r)
    assert_allclose(expected_gap, 1e-8, rtol=1e-7)
    gap = duality_gap(X, D, 0.5, Z)
    assert gap.dtype == np.float64
    assert_allclose(gap, [expected_gap], rtol=1e-7)
    assert_allclose(gap, ref.duality_gap(X.astype(np.float64), D, 0.5, Z), rtol=1e-7)
    obj = lasso_objective(X, D, 0.5, Z)
    assert obj.dtype == np.float64
    assert_allclose(obj, [0.5 * r * r + 0.5 * z], rtol=1e-15)
    grad = lasso_gradient(X, D, Z)
    assert grad.dtype == np.float64
    assert_allclose(grad, [[z - 1.0, 0.0]], rtol=1e-15)
    # a finite float64 code beyond float32's range is a valid code to evaluate
    assert_allclose(lasso_objective(X, D, 0.5, [[1e39, 0.0]]), [0.5e78], rtol=1e-12)
    # float32 codes keep a float32 problem in float32
    assert duality_gap(X, D, 0.5, Z.astype(np.float32)).dtype == np.float32


def test_ragged_arrays_are_refused_by_name():
    D = np.eye(2)
    X, Z, ragged = np.ones((2, 2)), np.zeros((2, 2)), [[1.0, 2.0], [3.0]]
    for call, message in [(lambda: lasso_objective(ragged, D, 0.1, Z), "^X could not"),
                          (lambda: lasso_objective(X, ragged, 0.1, Z), "^D could not"),
                          (lambda: duality_gap(X, D, 0.1, ragged), "^Z could not"),
                          (lambda: fastlista.solve_lasso(X, D, ragged), "'lmbd' parameter")]:
        with pytest.raises(ValueError, match=message):
            call()


def test_toolkit_on_empty_batch():
    _, D = get_problem("under")
    X = np.zeros((0, D.shape[1]))
    Z = np.zeros((0, D.shape[0]))
    for out in (lasso_objective(X, D, 0.1, Z), lambda_max(X, D), duality_gap(X, D, 0.1, Z)):
        assert out.shape == (0,)
    assert lasso_gradient(X, D, Z).shape == (0, D.shape[0])


def test_toolkit_exports():
    for name in ("lasso_objective", "lasso_gradient", "lambda_max", "duality_gap",
                 "soft_thresholding", "ConvergenceWarning", "InvalidParameterError"):
        assert name in fastlista.__all__
    assert issubclass(fastlista.InvalidParameterError, ValueError)
    assert issubclass(fastlista.InvalidParameterError, TypeError)


def test_float32_gradient_is_the_double_gradient_rounded_once():
    """lasso_gradient of float32 inputs is computed in double and rounded once
    to float32 (products summed in float32 were off by 1e-6 relatively at
    100 features, 5e-6 at 1e5)."""
    rng = np.random.default_rng(0)
    D = rng.standard_normal((30, 2000)).astype(np.float32)
    Z = (rng.standard_normal((20, 30)) * (rng.random((20, 30)) < 0.5)).astype(np.float32)
    X = (Z @ D + 0.1 * rng.standard_normal((20, 2000))).astype(np.float32)
    g = lasso_gradient(X, D, Z)
    assert g.dtype == np.float32
    expected = ref.gradient(X, D, Z)
    scale = np.abs(expected).max()
    assert_allclose(g, expected, rtol=2.0 ** -24, atol=1e-12 * scale)


def _exact_lambda_max(x, D, positive=False):
    """max_j |x.d_j| (max(max_j x.d_j, 0) with ``positive``) in rational
    arithmetic, from the float entries as they are."""
    dots = [sum(Fraction(float(a)) * Fraction(float(b)) for a, b in zip(x, d)) for d in D]
    return max(dots + [Fraction(0)]) if positive else max(abs(v) for v in dots)


@pytest.mark.parametrize("positive", [False, True])
def test_float64_lambda_max_bounds_the_exact_value(positive):
    """lambda_max of float64 data is at least the exact max |x.d_j| and
    within a few ulps of it; it was the rounded x D^T, below the exact value
    about half the time, and 0 for x.d = 1e16 + 1 - 1e16 (exactly 1), so
    that the solution at lmbd = lambda_max was not 0. Exact values stay
    exact (the doctest's 4.0, and 0 for orthogonal x)."""
    rng = np.random.default_rng(3)
    below = 0
    for _ in range(20):
        D = rng.standard_normal((9, 6))
        X = rng.standard_normal((4, 6))
        lm = lambda_max(X, D, positive=positive)
        C = X @ D.T
        rounded = np.maximum(C.max(axis=1), 0) if positive else np.abs(C).max(axis=1)
        for x, v, r in zip(X, lm, rounded):
            exact = _exact_lambda_max(x, D, positive)
            assert Fraction(float(v)) >= exact
            assert float(v) <= float(exact) * (1 + 8 * 2.0 ** -52) + 1e-300
            below += Fraction(float(r)) < exact
    # the rows include some whose rounded x D^T is below the exact max (what
    # lambda_max returned before)
    assert below > 0
    # cancellation: every digit of the double dot product is lost
    x, D = np.array([1e16, 1.0, -1e16]), np.array([[1.0, 1.0, 1.0]])
    lm = lambda_max(x, D, positive=positive)
    assert 1.0 <= lm <= 1.0 + 1e-14
    assert lambda_max(-x, D, positive=True) == 0.0
    assert lambda_max(np.array([[3.0, -4.0]]), np.eye(2), positive=positive)[0] == \
        (3.0 if positive else 4.0)
    assert lambda_max(np.array([1.0, -1.0]), np.array([[2.0, 2.0]]), positive=positive) == 0.0
    # and at lmbd = lambda_max the solvers return the zero code, certified
    res = fastlista.solve_lasso(x, D, lm, positive=positive)
    assert not np.any(res.codes) and res.converged


def test_float32_lambda_max_is_rounded_up_and_gives_zero_codes():
    """lambda_max of float32 data is the exact max |x D^T| rounded up, the
    smallest float32 lmbd whose solution is 0 (it was rounded to nearest,
    half the time below), and every method then returns exactly zero codes,
    also when it iterates without screening (tol=0)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        D = rng.standard_normal((20, 7)).astype(np.float32)
        X = rng.standard_normal((25, 7)).astype(np.float32)
        lm = lambda_max(X, D)
        assert lm.dtype == np.float32
        exact = np.abs(X.astype(np.float64) @ D.astype(np.float64).T).max(axis=1)
        assert np.all(lm >= exact)
        assert np.all(np.nextafter(lm, np.float32(0)) < exact)
        for method in ("cd", "ista", "fista", "backtracking", "oista"):
            res = fastlista.solve_lasso(X, D, lm, method=method, tol=0, max_iter=20)
            assert not np.any(res.codes), method


@pytest.mark.parametrize("positive", [False, True])
def test_float64_lambda_max_among_the_subnormals_is_rounded_up(positive):
    """float64 data whose max |x D^T| lies among the subnormals, or below
    them: lambda_max was the correlation scaled back and rounded to nearest
    (1.25 * 2**-1074 gave 2**-1074, below it) or to 0 (2**-1200), and the
    solvers at lmbd = lambda_max returned non-zero codes. It is the exact
    value (rational arithmetic) rounded up, and every method returns exactly
    0 there; the ordinary sample beside it keeps its own."""
    cases = [(2.0**-600, 1.25 * 2.0**-474), (2.0**-600, 2.0**-600),
             (2.0**-537, 3 * 2.0**-537), (-(2.0**-600), 2.0**-500), (0.75, 2.0**-1073)]
    for x, d in cases:
        X, D = np.array([[x], [1.0]]), np.array([[d]])
        lm = lambda_max(X, D, positive=positive)
        for lm_i, exact in zip(lm, (Fraction(x) * Fraction(d), Fraction(d))):
            exact = max(exact, Fraction(0)) if positive else abs(exact)
            assert Fraction(float(lm_i)) >= exact, (x, d, lm)
            assert lm_i == 0 if exact == 0 else Fraction(float(np.nextafter(lm_i, 0))) < exact
        for method in ("cd", "ista", "fista", "backtracking", "oista"):
            Z = fastlista.solve_lasso(X, D, lm, method=method, positive=positive).codes
            assert not np.any(Z), (method, x, d, Z)


@pytest.mark.parametrize("positive", [False, True])
def test_lambda_max_of_a_sample_spanning_more_than_its_dtype_is_a_bound(positive):
    """A sample whose entries span more than its dtype (float32 2**-100 and
    1.5 * 2**100): scaled for its largest entry, the smallest vanished, and
    with positive codes, whose only positive correlation came from it,
    lambda_max was 0 (exact 2**-101); the share of the vanished entries is
    now bounded at their own scale: the exact value (rational arithmetic)
    rounded up, within a few ulps, and every method returns exactly 0 there."""
    D = np.array([[0.5, 0.0], [0.0, 0.7], [-0.25, 1e-3]])
    cases = [(np.float32, [2.0**-100, -1.5 * 2.0**100]),
             (np.float32, [-(2.0**-120), 1.5 * 2.0**40]),
             (np.float32, [-(2.0**-100), -1.5 * 2.0**100]),    # positive: exactly 0
             (np.float64, [2.0**-100, -1.5 * 2.0**1000]),
             (np.float64, [-1.5 * 2.0**500, 2.0**-600])]
    for dtype, x in cases:
        X, Dd = np.array([x], dtype), D.astype(dtype)
        lm = lambda_max(X, Dd, positive=positive)
        exact = [sum(Fraction(float(a)) * Fraction(float(b)) for a, b in zip(X[0], d))
                 for d in Dd]
        exact = max(max(exact), Fraction(0)) if positive else max(map(abs, exact))
        assert Fraction(float(lm[0])) >= exact, (dtype, x, lm)
        assert Fraction(float(lm[0])) <= exact * (1 + 8 * Fraction(float(np.finfo(dtype).eps)))
        for method in ("cd", "ista", "fista", "backtracking", "oista"):
            Z = fastlista.solve_lasso(X, Dd, lm, method=method, positive=positive).codes
            assert not np.any(Z), (method, dtype, x, Z)


@pytest.mark.skipif(np.finfo(np.longdouble).max <= np.finfo(np.float64).max,
                    reason="long double is double here")
def test_long_doubles_beyond_float64_are_refused_without_a_warning():
    # an lmbd array or a threshold of 1e400 leaked "overflow encountered in
    # cast" before its refusal
    import warnings

    X, D = get_problem("under", np.float64)
    big = np.longdouble("1e400")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(fastlista.InvalidParameterError, match="'lmbd' parameter"):
            fastlista.solve_lasso(X[:3], D, np.array([big] * 3))
        with pytest.raises(ValueError, match="threshold contains NaN or infinity"):
            soft_thresholding(X, big)
