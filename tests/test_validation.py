"""Bad input: every public function rejects it at the boundary with an error
that names the argument (Issue 2, "Bad input"). Messages are matched with
loose patterns: the argument's name and the key words."""
import os
import re
import warnings

import numpy as np
import pytest
from scipy import sparse

import fastlista
from fastlista import (InvalidParameterError, duality_gap, lambda_max, lasso_gradient,
                       lasso_objective, lipschitz, soft_thresholding, solve_lasso)


rng = np.random.default_rng(0)
D = rng.standard_normal((6, 4))
X = rng.standard_normal((5, 4))
Z = rng.standard_normal((5, 6))


def _with(a, idx, value):
    a = np.array(a, dtype=complex if isinstance(value, complex) else a.dtype)
    a[idx] = value
    return a


def test_invalid_parameter_error_is_value_and_type_error():
    assert issubclass(InvalidParameterError, ValueError)
    assert issubclass(InvalidParameterError, TypeError)
    assert issubclass(fastlista.ConvergenceWarning, Warning)


# --------------------------------------------------------------------------
# arrays: NaN / inf / complex / ndim / shapes
# --------------------------------------------------------------------------
BAD_ARRAYS = [
    # (name, kwargs-override, error, pattern)
    ("X NaN", dict(X=_with(X, (2, 1), np.nan)), ValueError, r"X.*NaN"),
    ("X inf", dict(X=_with(X, (0, 3), np.inf)), ValueError, r"X.*(inf|large)"),
    ("X -inf", dict(X=_with(X, (4, 0), -np.inf)), ValueError, r"X.*(inf|large)"),
    ("D NaN", dict(D=_with(D, (1, 1), np.nan)), ValueError, r"D.*NaN"),
    ("D inf", dict(D=_with(D, (5, 2), np.inf)), ValueError, r"D.*(inf|large)"),
    ("X complex", dict(X=X + 1j), ValueError, r"[Cc]omplex.*X|X.*[Cc]omplex"),
    ("D complex", dict(D=D * (1 + 0j)), ValueError, r"[Cc]omplex.*D|D.*[Cc]omplex"),
    ("X 3-D", dict(X=X[None]), ValueError, r"X"),
    ("D 3-D", dict(D=D[None]), ValueError, r"D"),
    ("D 1-D", dict(D=D[0]), ValueError, r"D"),
    ("X scalar", dict(X=np.float64(1.0)), ValueError, r"X"),
    ("features", dict(X=X[:, :3]), ValueError, r"X has 3 features.*D has 4 features"),
    ("features 1-D", dict(X=X[0, :3]), ValueError, r"X has 3 features.*D has 4 features"),
    ("strings", dict(X=X.astype(str)), ValueError, r"X|numeric|string"),
]


@pytest.mark.parametrize("name, override, error, pattern", BAD_ARRAYS,
                         ids=[b[0] for b in BAD_ARRAYS])
@pytest.mark.parametrize("method", ["ista", "cd"])
def test_solve_lasso_bad_arrays(name, override, error, pattern, method):
    kw = dict(X=X, D=D, lmbd=0.1, method=method)
    kw.update(override)
    with pytest.raises(error, match=pattern):
        solve_lasso(**kw)


@pytest.mark.parametrize("name, override, error, pattern", BAD_ARRAYS,
                         ids=[b[0] for b in BAD_ARRAYS])
def test_toolkit_bad_arrays(name, override, error, pattern):
    Xb, Db = override.get("X", X), override.get("D", D)
    # codes of a shape consistent with whatever X is (so that X/D is the fault)
    n_samples = np.atleast_2d(Xb).shape[0] if np.ndim(Xb) in (1, 2) else 5
    Zb = np.zeros((n_samples, 6)) if np.ndim(Xb) != 1 else np.zeros(6)
    with pytest.raises(error, match=pattern):
        lasso_objective(Xb, Db, 0.1, Zb)
    with pytest.raises(error, match=pattern):
        duality_gap(Xb, Db, 0.1, Zb)
    with pytest.raises(error, match=pattern):
        lasso_gradient(Xb, Db, Zb)
    with pytest.raises(error, match=pattern):
        lambda_max(Xb, Db)


@pytest.mark.parametrize("Z0, pattern", [
    (_with(Z, (1, 1), np.nan), r"Z0.*NaN"),
    (_with(Z, (0, 5), np.inf), r"Z0.*(inf|large)"),
    (Z[:, :5], r"Z0"),
    (Z[:4], r"Z0"),
    (Z.T, r"Z0"),
    (Z[None], r"Z0"),
    (Z + 0j, r"Z0|[Cc]omplex"),
], ids=["nan", "inf", "atoms", "samples", "transposed", "3-D", "complex"])
@pytest.mark.parametrize("method", ["ista", "oista", "cd"])
def test_solve_lasso_bad_Z0(Z0, pattern, method):
    with pytest.raises(ValueError, match=pattern):
        solve_lasso(X, D, 0.1, method=method, Z0=Z0)


def test_warm_start_beyond_float32_is_refused_without_a_cast_warning():
    # a float64 warm start of a float32 problem is cast to float32: 1e300
    # becomes inf, refused by name (the cast's RuntimeWarning, an error in
    # this suite's settings, used to come first)
    Z0 = _with(Z, (0, 5), 1e300)
    with pytest.raises(ValueError, match=r"Z0 contains infinity or a value too large "
                                         r"for dtype\('float32'\)"):
        solve_lasso(X.astype(np.float32), D.astype(np.float32), 0.1, Z0=Z0)


def test_solve_lasso_bad_Z0_for_1d_x():
    with pytest.raises(ValueError, match="Z0"):
        solve_lasso(X[0], D, 0.1, Z0=np.zeros(5))
    with pytest.raises(ValueError, match="Z0"):
        solve_lasso(X[0], D, 0.1, Z0=np.zeros((2, 6)))


def test_toolkit_bad_codes():
    for Zb in (Z[:, :5], Z[:4], Z.T, _with(Z, (0, 0), np.nan)):
        with pytest.raises(ValueError, match="Z"):
            lasso_objective(X, D, 0.1, Zb)
        with pytest.raises(ValueError, match="Z"):
            duality_gap(X, D, 0.1, Zb)
        with pytest.raises(ValueError, match="Z"):
            lasso_gradient(X, D, Zb)


# --------------------------------------------------------------------------
# scalars and options
# --------------------------------------------------------------------------
BAD_PARAMS = [
    (dict(lmbd=-1.0), r"'lmbd'.*solve_lasso.*float.*range.*\[0\.0, inf\).*-1\.0"),
    (dict(lmbd=-1e-300), r"'lmbd'"),
    (dict(lmbd=np.nan), r"'lmbd'.*nan"),
    (dict(lmbd="0.1"), r"'lmbd'"),
    (dict(lmbd=None), r"'lmbd'"),
    (dict(lmbd=np.array([0.1, 0.2])), r"'lmbd'"),
    # one a sample, complex or text: refused, not cast
    (dict(lmbd=np.full(5, 0.1) + 0.5j), r"'lmbd'"),
    (dict(lmbd=np.full(5, "0.1")), r"'lmbd'"),
    (dict(method="lars"), r"'method'.*lars"),
    (dict(method="ISTA"), r"'method'"),
    (dict(method=None), r"'method'"),
    (dict(max_iter=0), r"'max_iter'.*0"),
    (dict(max_iter=-5), r"'max_iter'"),
    (dict(max_iter=2.5), r"'max_iter'"),
    (dict(tol=-1e-3), r"'tol'"),
    (dict(tol=np.nan), r"'tol'"),
]


@pytest.mark.parametrize("override, pattern", BAD_PARAMS,
                         ids=[f"{k}={v!r}" for o, _ in BAD_PARAMS for k, v in o.items()])
def test_solve_lasso_bad_parameters(override, pattern):
    kw = dict(lmbd=0.1)
    kw.update(override)
    with pytest.raises(InvalidParameterError, match=pattern):
        solve_lasso(X, D, **kw)


@pytest.mark.parametrize("n_jobs", [1.5, 0, 5000, -5000, "2", True, np.nan])
def test_bad_n_jobs_message_names_what_is_accepted(n_jobs):
    """Every refused n_jobs gets one message naming what is accepted: None
    or a non-zero int in [-1024, 1024]. A float or out-of-range value was
    told "an int in the range [-1024, 1024]" (a range that holds the
    refused 0, without the accepted None; found by a docstring review).
    The accepted ones solve: -2 as 'all but one', clamped to one thread."""
    with pytest.raises(InvalidParameterError,
                       match=re.escape("The 'n_jobs' parameter of solve_lasso must be None or "
                                       "a non-zero int in [-1024, 1024]")):
        solve_lasso(X, D, 0.1, n_jobs=n_jobs)
    def F(Z):       # NumPy's Lasso objective, per sample
        return 0.5 * ((X - Z @ D) ** 2).sum(axis=1) + 0.1 * np.abs(Z).sum(axis=1)

    # each solve certified to F - F* <= 1e-8 (1/2 ||x||^2): two solves
    # (other thread counts) within twice that of each other
    half = 0.5 * np.einsum("ij,ij->i", X, X)
    F1 = F(solve_lasso(X, D, 0.1, n_jobs=1).codes)
    for ok in (None, -1, -2, -1024, np.int64(2)):
        res = solve_lasso(X, D, 0.1, n_jobs=ok)
        assert res.converged.all()
        assert np.all(np.abs(F(res.codes) - F1) <= 2e-8 * half)


@pytest.mark.parametrize("call", [lambda d: solve_lasso(X, d, 0.1), lambda d: lambda_max(X, d),
                                  lambda d: fastlista.lipschitz(d),
                                  lambda d: fastlista.Lista(d, 0.1, 2)],
                         ids=["solve_lasso", "lambda_max", "lipschitz", "Lista"])
def test_one_dimensional_dictionary_is_told_its_shape(call):
    """A 1-D D is told the dictionary's shape and how to make one atom of
    it, not scikit-learn's hint about a single feature or a single sample
    (found by a docstring review)."""
    with pytest.raises(ValueError, match=re.escape(
            "A dictionary has shape (n_atoms, n_features): one atom is D.reshape(1, -1).")
    ) as info:
        call(D[0])
    assert "single feature" not in str(info.value)


@pytest.mark.parametrize("func", ["ista", "fista", "oista", "backtracking_ista",
                                  "coordinate_descent"])
def test_convenience_functions_validate(func):
    """The shortcuts validate as solve_lasso does, their messages naming
    the function called (they named solve_lasso, which the user had not
    called; found by a review of the docs' claims)."""
    f = getattr(fastlista, func)
    with pytest.raises(InvalidParameterError, match=f"'lmbd' parameter of {func} "):
        f(X, D, -0.5)
    with pytest.raises(InvalidParameterError, match=f"'max_iter' parameter of {func} "):
        f(X, D, 0.1, max_iter=0)
    with pytest.raises(InvalidParameterError, match=f"'n_jobs' parameter of {func} "):
        f(X, D, 0.1, n_jobs=0)
    with pytest.raises(ValueError, match="X.*NaN"):
        f(_with(X, (0, 0), np.nan), D, 0.1)


def test_valid_scalars_are_accepted():
    # numpy scalars, ints, 0-d arrays, lmbd = 0: all valid
    for lmbd in (np.float32(0.1), np.float64(0.1), 1, np.array(0.1), 0.0):
        res = solve_lasso(X, D, lmbd, method="fista", max_iter=5, tol=0.0)
        assert np.all(np.isfinite(res.codes))
    res = solve_lasso(X, D, 0.1, method="ista", max_iter=np.int64(3), tol=0)
    assert np.all(res.n_iter == 3)


@pytest.mark.parametrize("func", [lasso_objective, duality_gap])
def test_toolkit_bad_lmbd(func):
    for lmbd in (-1.0, np.nan):
        with pytest.raises(InvalidParameterError, match="'lmbd'"):
            func(X, D, lmbd, Z)


def test_bad_input_is_rejected_before_work():
    # no partial results: the error comes from validation, not from a kernel
    with pytest.raises(ValueError, match="X has 3 features"):
        solve_lasso(X[:, :3], D, -1.0, method="nope")


# --------------------------------------------------------------------------
# lipschitz
# --------------------------------------------------------------------------
@pytest.mark.parametrize("support", [
    np.ones(5, bool), np.ones(7, bool), np.ones((3, 5), bool), np.ones((3, 7), bool),
    np.ones((2, 3, 6), bool), np.bool_(True), np.ones((6, 1), bool),
], ids=["short", "long", "2d-short", "2d-long", "3-D", "scalar", "column"])
def test_lipschitz_support_of_wrong_shape(support):
    with pytest.raises(ValueError, match="support"):
        lipschitz(D, support=support)


def test_lipschitz_bad_dictionary_and_parameters():
    with pytest.raises(ValueError, match=r"D.*NaN"):
        lipschitz(_with(D, (0, 0), np.nan))
    with pytest.raises(ValueError, match=r"D.*(inf|large)"):
        lipschitz(_with(D, (0, 0), np.inf))
    with pytest.raises(ValueError, match=r"[Cc]omplex"):
        lipschitz(D + 1j)
    with pytest.raises(ValueError, match="D"):
        lipschitz(D[None])
    with pytest.raises(InvalidParameterError, match="'tol'"):
        lipschitz(D, tol=-1.0)
    with pytest.raises(InvalidParameterError, match="'max_iter'"):
        lipschitz(D, max_iter=0)


# --------------------------------------------------------------------------
# soft-thresholding
# --------------------------------------------------------------------------
def test_soft_thresholding_bad_input():
    with pytest.raises(ValueError, match="[Cc]omplex"):
        soft_thresholding(np.ones(3) + 1j, 0.5)
    # complex or text thresholds (and text codes) are refused, not cast
    with pytest.raises(ValueError, match="Complex.*threshold"):
        soft_thresholding(np.ones(3), 0.5 + 0.5j)
    with pytest.raises(ValueError, match="strings.*threshold"):
        soft_thresholding(np.ones(3), np.full(3, "0.5"))
    with pytest.raises(ValueError, match="strings.*U"):
        soft_thresholding(np.full(3, "1.0"), 0.5)
    with pytest.raises(ValueError, match="threshold"):
        soft_thresholding(np.ones((4, 3)), np.ones(4))     # does not broadcast
    with pytest.raises(ValueError, match="threshold"):
        soft_thresholding(np.ones(3), np.ones((2, 3)))     # would grow the output
    with pytest.raises(ValueError, match="threshold"):
        soft_thresholding(np.ones(3), -0.5)


def test_huge_finite_values_are_valid():
    # finite values whose sum overflows are still finite input: no error, no
    # RuntimeWarning (pyproject turns those into errors)
    Xh = np.full((2, 4), 1e308)
    Dh = np.full((3, 4), 1e-10)
    assert np.all(np.isfinite(lambda_max(Xh, Dh)))
    assert np.allclose(lambda_max(Xh, Dh), 4e298)
    # float32 inputs are summed in float32 by the finiteness test: values
    # whose float32 sum overflows (while a float64 one would not) are valid,
    # and a non-finite one among them is still named
    Xs = np.full((5, 4), 3e37, np.float32)
    Ds = np.full((3, 4), 1e-3, np.float32)
    assert np.allclose(lambda_max(Xs, Ds), 1.2e35, rtol=1e-6)
    for bad, word in ((np.nan, "NaN"), (np.inf, "infinity")):
        Xb = Xs.copy()
        Xb[2, 1] = bad
        with pytest.raises(ValueError, match=f"Input X contains {word}"):
            lambda_max(Xb, Ds)


def test_public_surface():
    """__all__ is the API; the estimators are listed by dir() and load lazily;
    a star import needs no optional dependency."""
    import subprocess
    import sys

    import fastlista

    for name in fastlista.__all__:
        assert hasattr(fastlista, name), name
    assert {"LassoSparseCoder", "LearnedSparseCoder"} <= set(dir(fastlista))
    assert "_solvers" not in fastlista.__all__
    code = ("import sys; from fastlista import *; "
            "assert 'sklearn' not in sys.modules and 'dask' not in sys.modules; "
            "assert callable(lipschitz) and hasattr(sys.modules['fastlista'], 'lipschitz')")
    env_path = os.path.dirname(os.path.dirname(fastlista.__file__))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": env_path}, cwd=os.sep)
    assert proc.returncode == 0, proc.stderr


def test_dictionary_shape_beyond_32_bit_lapack_workspace_is_refused(monkeypatch):
    """The one shape product indexed with 32 bits is refused by name (shrunk
    limit: a dictionary of 83 million rows and columns cannot be allocated)."""
    from fastlista import _validation

    monkeypatch.setattr(_validation, "_LAPACK_DIM_MAX", 3)
    D = np.eye(4)
    for call in (lambda: fastlista.solve_lasso(np.ones((2, 4)), D, 0.1),
                 lambda: fastlista.lipschitz(D),
                 lambda: fastlista.Lista(D, 0.1, 2)):
        with pytest.raises(ValueError, match=r"D has shape \(4, 4\): min\(n_atoms"):
            call()
    fastlista.solve_lasso(np.ones((2, 4)), D[:3], 0.1)      # min(3, 4) = 3: fine


# --------------------------------------------------------------------------
# byte order, NumPy strings, text in object arrays, ints beyond the float
# range, sparse thresholds
# --------------------------------------------------------------------------
def _unit_atoms(A):
    return A / np.linalg.norm(A, axis=1, keepdims=True)


_BE_D = _unit_atoms(rng.standard_normal((8, 6)))
_BE_X = rng.standard_normal((7, 8)) @ _BE_D
_BE_Z = rng.standard_normal((7, 8))
# rank 3: its float32 rounding adds singular values that only a rank taken at
# float32 precision leaves alone (at float64's, ALISTA's weights reach 1e8)
_BE_RANK3 = _unit_atoms(rng.standard_normal((8, 3)) @ rng.standard_normal((3, 6)))


def _be_estimator(name, dt):
    from fastlista.estimators import LassoSparseCoder, LearnedSparseCoder
    if name == "LassoSparseCoder":
        return LassoSparseCoder(_BE_D.astype(dt), alpha=0.3, tol=1e-5).fit_transform(
            _BE_X.astype(dt))
    if name == "LearnedSparseCoder":
        coder = LearnedSparseCoder(_BE_D.astype(dt), alpha=0.3, n_layers=2, max_iter=3,
                                   random_state=0).fit(_BE_X.astype(dt))
        return coder.transform(_BE_X.astype(dt))
    coder = LassoSparseCoder(_BE_D, alpha=0.3).fit(_BE_X)       # inverse_transform
    return coder.inverse_transform(_BE_Z.astype(dt))


BIG_ENDIAN_CALLS = {
    "solve_lasso": lambda dt: solve_lasso(_BE_X.astype(dt), _BE_D.astype(dt), 0.3,
                                          tol=1e-5).codes,
    "solve_lasso Z0": lambda dt: solve_lasso(_BE_X.astype(np.float32), _BE_D.astype(np.float32),
                                             0.3, tol=1e-5, Z0=_BE_Z.astype(dt)).codes,
    "lambda_max": lambda dt: lambda_max(_BE_X.astype(dt), _BE_D.astype(dt)),
    "duality_gap": lambda dt: duality_gap(_BE_X.astype(np.float32), _BE_D.astype(np.float32),
                                          0.3, _BE_Z.astype(dt)),
    "soft_thresholding": lambda dt: soft_thresholding(_BE_Z.astype(dt), 0.5),
    "soft_thresholding threshold": lambda dt: soft_thresholding(
        _BE_Z.astype(np.float32), np.full(8, 0.5, dtype=dt)),
    "Lista": lambda dt: fastlista.Lista(_BE_D.astype(dt), 0.3, 3).transform(_BE_X.astype(dt)),
    "alista_weights": lambda dt: fastlista.alista_weights(_BE_RANK3.astype(dt)),
    "LassoSparseCoder": lambda dt: _be_estimator("LassoSparseCoder", dt),
    "LearnedSparseCoder": lambda dt: _be_estimator("LearnedSparseCoder", dt),
    "inverse_transform": lambda dt: _be_estimator("inverse_transform", dt),
}


@pytest.mark.parametrize("call", BIG_ENDIAN_CALLS.values(), ids=BIG_ENDIAN_CALLS.keys())
def test_big_endian_float32_is_float32(call):
    """'>f4' is float32 in another byte order: the results of '<f4' input,
    bit for bit, in float32 (np.dtype('>f4') == np.float32 is False, and
    used to send it down the float64 path)."""
    pytest.importorskip("sklearn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastlista.ConvergenceWarning)
        little, big = np.asarray(call("<f4")), np.asarray(call(">f4"))
    assert big.dtype == little.dtype == np.float32
    assert big.tobytes() == little.tobytes()


def test_big_endian_lipschitz_is_the_float32_value():
    # a float32 dictionary's L is a float32 value: '>f4' gives the same one
    L = lipschitz(_BE_D.astype(">f4"))
    assert L == lipschitz(_BE_D.astype(np.float32)) and float(np.float32(L)) == L


def test_alista_weights_of_big_endian_float32_take_its_rank_at_float32_precision():
    W = fastlista.alista_weights(_BE_RANK3.astype(">f4"))
    assert np.abs(W).max() < 10           # float64's rank: weights of about 1e8
    assert np.allclose(np.diag(W.astype(np.float64) @ _BE_RANK3.T), 1.0, atol=1e-5)


def test_options_given_as_numpy_strings():
    """A NumPy array of option names (a GridSearchCV grid) holds numpy.str_:
    the same codes as the Python str (the kernels' ``str`` arguments used to
    refuse it with a TypeError)."""
    for method in np.array(["ista", "fista", "oista", "backtracking", "cd", "auto"]):
        assert type(method) is np.str_
        got = solve_lasso(X, D, 0.1, method=method, max_iter=5, tol=0.0)
        want = solve_lasso(X, D, 0.1, method=str(method), max_iter=5, tol=0.0)
        assert got.codes.tobytes() == want.codes.tobytes()
    assert type(fastlista._validation.check_option(np.str_("ista"), "method", "f",
                                                   ("ista",))) is str


def test_estimator_options_given_as_numpy_strings():
    pytest.importorskip("sklearn")
    from fastlista.estimators import DictionaryLearning, LassoSparseCoder
    method = np.str_("fista")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastlista.ConvergenceWarning)
        got = LassoSparseCoder(D, alpha=0.1, method=method, max_iter=5, tol=0.0)
        want = LassoSparseCoder(D, alpha=0.1, method="fista", max_iter=5, tol=0.0)
        assert got.fit_transform(X).tobytes() == want.fit_transform(X).tobytes()
        dl = DictionaryLearning(3, alpha=0.1, max_iter=2, random_state=0,
                                transform_algorithm=method, transform_max_iter=5,
                                transform_tol=0.0).fit(X)
        codes = dl.transform(X)
        dl.set_params(transform_algorithm="fista")
        assert codes.tobytes() == dl.transform(X).tobytes()


def _text(a):
    """What a CSV reader may give: an object array of str."""
    return np.array(np.asarray(a).astype(str), dtype=object)


OBJECT_TEXT = {
    "X": (lambda: solve_lasso(_text(X), D, 0.1), "X"),
    "D": (lambda: solve_lasso(X, _text(D), 0.1), "D"),
    "lmbd": (lambda: solve_lasso(X, D, _text(np.full(5, 0.1))), "'lmbd'"),
    "Z0": (lambda: solve_lasso(X, D, 0.1, Z0=_text(np.zeros((5, 6)))), "Z0"),
    "duality_gap Z": (lambda: duality_gap(X, D, 0.1, _text(Z)), "Z"),
    "lasso_objective Z": (lambda: lasso_objective(X, D, 0.1, _text(Z)), "Z"),
    "soft_thresholding U": (lambda: soft_thresholding(_text([1.5, -2.0]), 1.0), "U"),
    "soft_thresholding threshold": (lambda: soft_thresholding([1.5, -2.0], _text(1.0)),
                                    "threshold"),
    "Lista D": (lambda: fastlista.Lista(_text(D), 0.1, 1), "D"),
    "set_parameters": (lambda: fastlista.Lista(D, 0.1, 1).set_parameters(
        [{"alpha": _text(0.01)}]), r"parameters\[0\]\['alpha'\]"),
    "lipschitz": (lambda: lipschitz(_text(D)), "D"),
    "None in X": (lambda: solve_lasso(np.full(X.shape, None), D, 0.1), "X"),
}


@pytest.mark.parametrize("call, name", OBJECT_TEXT.values(), ids=OBJECT_TEXT.keys())
def test_object_arrays_of_text_are_refused_by_name(call, name):
    """Text is refused, not parsed, in an object array as in a str array."""
    with pytest.raises((ValueError, TypeError), match=name) as info:
        call()
    assert "could not convert" not in str(info.value)


def test_object_arrays_of_numbers_are_accepted():
    # int, float, bool and NumPy scalars: the values of the float64 array
    Xo = X.astype(object)
    Xo[0, :3] = [1, True, np.float32(0.5)]
    want = X.copy()
    want[0, :3] = [1.0, 1.0, 0.5]
    got = solve_lasso(Xo, D.astype(object), np.full(5, 0.1).astype(object))
    assert got.codes.tobytes() == solve_lasso(want, D, np.full(5, 0.1)).codes.tobytes()
    assert soft_thresholding(Xo, 0.5).tobytes() == soft_thresholding(want, 0.5).tobytes()


BIG = 10**400       # a Python int beyond the float range
BIG_INTS = {
    "solve_lasso lmbd": (lambda: solve_lasso(X, D, BIG), "'lmbd'"),
    "solve_lasso lmbd list": (lambda: solve_lasso(X, D, [BIG] * 5), "'lmbd'"),
    "solve_lasso tol": (lambda: solve_lasso(X, D, 0.1, tol=BIG), "'tol'"),
    "duality_gap lmbd": (lambda: duality_gap(X, D, BIG, Z), "'lmbd'"),
    "lipschitz tol": (lambda: lipschitz(D, np.ones(6, bool), tol=BIG), "'tol'"),
    "Lista lmbd": (lambda: fastlista.Lista(D, BIG, 2), "'lmbd'"),
    "set_parameters": (lambda: fastlista.Lista(D, 0.1, 1).set_parameters([{"alpha": BIG}]),
                       r"parameters\[0\]\['alpha'\]"),
    "learn_dictionary lmbd": (lambda: __import__("fastlista.dictionary").dictionary
                              .learn_dictionary(X, 2, BIG), "'lmbd'"),
    "X": (lambda: solve_lasso([[BIG, 0, 0, 0]], D, 0.1), "X"),
    "soft_thresholding threshold": (lambda: soft_thresholding([1.0], BIG), "threshold"),
    "max_iter of 5000 digits": (lambda: solve_lasso(X, D, 0.1, max_iter=10**5000),
                                "'max_iter'"),
}


@pytest.mark.parametrize("call, name", BIG_INTS.values(), ids=BIG_INTS.keys())
def test_int_beyond_the_float_range_is_refused_by_name(call, name):
    """ValueError naming the argument, not a bare OverflowError."""
    with pytest.raises(ValueError, match=name) as info:
        call()
    assert re.search(r"range|too large", str(info.value))


def test_estimator_alpha_beyond_the_float_range_is_refused_by_name():
    pytest.importorskip("sklearn")
    from fastlista.estimators import LassoSparseCoder
    with pytest.raises(InvalidParameterError, match="'alpha'.*float range"):
        LassoSparseCoder(D, alpha=BIG).fit(X)


def _estimator_inputs():
    """(estimator factory, the argument a bad value goes into)."""
    from fastlista.estimators import (DictionaryLearning, LassoSparseCoder,
                                      LearnedSparseCoder, MiniBatchDictionaryLearning)
    return [(lambda: DictionaryLearning(n_components=3, max_iter=2), "X"),
            (lambda: MiniBatchDictionaryLearning(n_components=3, max_iter=1), "X"),
            (lambda: LassoSparseCoder(D, alpha=0.1), "X"),
            (lambda: LearnedSparseCoder(D, alpha=0.1, n_layers=2, max_iter=1), "X"),
            (lambda: None, "dictionary")]


@pytest.mark.parametrize("bad", ["text", "huge int"])
@pytest.mark.parametrize("case", range(5))
def test_estimators_apply_the_rule_for_object_arrays(case, bad):
    """The estimators (scikit-learn's validation) parsed text in object
    arrays and raised a bare OverflowError on an int beyond the float range;
    they refuse both by name, as every function does."""
    pytest.importorskip("sklearn")
    from fastlista.estimators import LassoSparseCoder
    make, name = _estimator_inputs()[case]
    value = "1.5" if bad == "text" else 10**400
    arr = (X if name == "X" else D).astype(object)
    arr[0, 0] = value
    match = "holding a str" if bad == "text" else "too large"
    with pytest.raises(ValueError, match=f"{name}.*{match}|{match}.*{name}|Input {name}"):
        if name == "X":
            make().fit(arr)
        else:
            LassoSparseCoder(arr, alpha=0.1).fit(X)
    # object arrays of numbers are data
    if name == "X":
        make().fit(X.astype(object))


def test_option_given_as_a_str_enum_member():
    """A (str, Enum) member equal to an option is that option (str() of it
    is its name: 'Method.CD' reached the kernels' table, a KeyError)."""
    import enum

    class Method(str, enum.Enum):
        CD = "cd"
        ISTA = "ista"

    for member in Method:
        res = fastlista.solve_lasso(X, D, 0.1, method=member, tol=0, max_iter=50)
        assert res.method == member.value and type(res.method) is str
        plain = fastlista.solve_lasso(X, D, 0.1, method=member.value, tol=0, max_iter=50)
        assert np.array_equal(res.codes, plain.codes)


def test_huge_int_in_messages_is_shortened():
    """A 5000-digit int cannot be repr()ed (Python's limit of 4300 digits):
    the messages naming it raised that ValueError instead of their own."""
    huge = 10**5000
    with pytest.raises(InvalidParameterError, match="'positive'.*must be a bool"):
        fastlista.solve_lasso(X, D, 0.1, positive=huge)
    from fastlista.dictionary import learn_dictionary
    with pytest.raises(InvalidParameterError, match="callback"):
        learn_dictionary(X, 3, 0.1, callback=huge)


def test_object_array_beyond_float64_is_refused_without_a_warning():
    arr = X.astype(object)
    arr[0, 0] = np.longdouble("1e400")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="Input X contains infinity"):
            fastlista.solve_lasso(arr, D, 0.1)


@pytest.mark.parametrize("seed", [np.random.default_rng(0), 1.0, "seed", True, -1, 2**32,
                                  10**400],
                         ids=["Generator", "float", "str", "bool", "-1", "2**32", "10**400"])
def test_bad_random_state_names_the_argument(seed):
    """Every caller's random_state error names the argument and what is
    accepted (the function too when the caller gives it); the words NumPy
    used ("cannot be used to seed") stay. It was "Seed must be between 0 and
    2**32 - 1" or "Generator(PCG64) ... cannot be used to seed ..."."""
    from fastlista._validation import check_random_state
    accepted = (r"must be None, an int in \[0, 2\*\*32 - 1\] or a numpy.random.RandomState "
                r"instance; .* cannot be used to seed a numpy.random.RandomState")
    with pytest.raises(InvalidParameterError, match=r"^The 'random_state' parameter " + accepted):
        check_random_state(seed)
    with pytest.raises(InvalidParameterError,
                       match=r"^The 'random_state' parameter of f " + accepted):
        check_random_state(seed, "f")
    rs = np.random.RandomState(3)
    assert check_random_state(rs) is rs
    assert check_random_state(None) is np.random.mtrand._rand
    assert check_random_state(np.int64(5)).randint(2**31) == \
        np.random.RandomState(5).randint(2**31)


@pytest.mark.parametrize("U, threshold, name", [
    (sparse.csr_matrix(np.eye(3)), 0.5, "U"),
    (np.eye(3), sparse.csr_matrix(np.full((3, 3), 0.5)), "threshold"),
], ids=["U", "threshold"])
def test_soft_thresholding_refuses_sparse_by_name(U, threshold, name):
    with pytest.raises(TypeError, match=f"Sparse data was passed for {name}"):
        soft_thresholding(U, threshold)


# --------------------------------------------------------------------------
# any mix of argument kinds (hypothesis): derandomised for CI,
# FASTLISTA_FUZZ=long for a long random run (conftest.fuzz_settings)
# --------------------------------------------------------------------------
hypothesis = pytest.importorskip("hypothesis")
@pytest.mark.parametrize("given", [(6,), (2, 6), (3, 5)])
def test_shape_messages_give_the_shape_the_caller_passed(given):
    """A warm start Z0 or target Z_target of the wrong shape is named with
    the shape the caller passed: a 1-D one, which validation reads as one
    row, was reported as (1, n_atoms), a shape nobody passed."""
    from fastlista import Lista

    rng = np.random.default_rng(0)
    D, X = rng.standard_normal((6, 4)), rng.standard_normal((3, 4))
    Z = np.zeros(given)
    calls = {"Z0": lambda: solve_lasso(X, D, 0.1, Z0=Z),
             "Z_target": lambda: Lista(D, 0.1, 2).fit(X, loss="supervised", Z_target=Z)}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"\(n_samples, n_atoms\) = \(3, 6\)") as info:
            call()
        assert str(info.value).endswith(f"got {name}.shape={given}.")


@pytest.mark.parametrize("given", [(7,), (2, 6), (1, 6, 1)])
def test_shape_messages_of_one_sample_give_the_shapes_the_caller_passed(given):
    """With a 1-D x (one sample), a warm start or codes of another shape are
    told the shape that fits it, (n_atoms,), and x's own shape: x was
    reported promoted to a row, "(n_samples, n_atoms) = (1, 6) to match X
    (1, 4)", shapes nobody passed (found by a review of the session's
    fixes)."""
    rng = np.random.default_rng(0)
    D, x = rng.standard_normal((6, 4)), rng.standard_normal(4)
    Z = np.zeros(given)
    for name, call in {"Z0": lambda: solve_lasso(x, D, 0.1, Z0=Z),
                       "Z": lambda: duality_gap(x, D, 0.1, Z)}.items():
        with pytest.raises(ValueError) as info:
            call()
        if len(given) <= 2:
            assert str(info.value) == (
                f"{name} must have shape (n_atoms,) = (6,) to match X (4,) and D (6, 4); "
                f"got {name}.shape={given}.")
        else:           # 3-D: refused by its dimension, naming it
            assert name in str(info.value)
    # the right shape is accepted: the codes solve x's Lasso (the same
    # solution as from the zero start, within the certified tolerance)
    z = solve_lasso(x, D, 0.1, Z0=np.zeros(6)).codes
    assert z.shape == (6,)
    np.testing.assert_allclose(duality_gap(x, D, 0.1, z), 0, atol=1e-8 * 0.5 * x @ x)


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import fuzz_settings  # noqa: E402
from contract import assert_certified  # noqa: E402

API = fuzz_settings("api", 3000)
_ragged = np.empty(2, dtype=object)
_ragged[:] = [[1.0, 2.0, 3.0, 4.0], [1.0]]
# what a caller may pass for X (5 x 4), D (6 x 4), lmbd, method and the
# rest: (valid kinds, invalid kinds)
SIGNALS = ({
    "float64": X, "float32": X.astype(np.float32), "list": X.tolist(), "1-D": X[0],
    "no samples": X[:0], "int8": (10 * X).astype(np.int8), "float16": X.astype(np.float16),
    "huge": np.full(X.shape, 1e308), "subnormal": np.full(X.shape, 5e-324),
    "object": X.astype(object), "Fortran": np.asfortranarray(X), "reversed": X[:, ::-1],
    "bool": X > 0, "zeros": np.zeros(X.shape),
}, {
    "no features": X[:, :0], "3-D": X[None], "scalar": np.float64(1.0), "text": "abc",
    "None": None, "complex": X + 0j, "NaN": _with(X, (0, 0), np.nan), "ragged": _ragged,
    "strings": X.astype(str),
})
DICTIONARIES = ({
    "float64": D, "float32": D.astype(np.float32), "no atoms": D[:0],
    "zeros": np.zeros(D.shape), "huge": np.full(D.shape, 1e200),
    "tiny": np.full(D.shape, 1e-200), "int64": (10 * D).astype(np.int64),
    "duplicated": np.vstack([D[:3], D[:3]]), "one zero atom": _with(D, 2, 0.0),
    "norms 1e15 to 1e-15": D * np.array([1e15, 1e-15, 1, 1, 1, 1])[:, None],
}, {
    "no features": D[:, :0], "fewer features": D[:, :3], "3-D": D[None], "1-D": D[0],
    "complex": D + 0j, "inf": _with(D, (1, 1), np.inf), "transposed": D.T, "text": "x",
})
LMBDS = ({
    "0.1": 0.1, "0": 0.0, "list": [0.1] * 5, "per sample": np.array([0.1, 0.2, 0.0, 1e3, 0.5]),
    "1e308": 1e308, "subnormal": 5e-324, "float32": np.float32(0.1), "0-d": np.array(0.1),
}, {
    "negative": -1.0, "NaN": np.nan, "inf": np.inf, "text": "0.1", "None": None,
    "4 samples": np.full(4, 0.1), "complex": np.full(5, 0.1) + 0j, "bool": True,
    "column": np.full((5, 1), 0.1),
})
METHODS = ({m: m for m in ("auto", "ista", "fista", "oista", "backtracking", "cd")},
           {"lars": "lars", "upper case": "ISTA", "None": None})
EXTRAS = ({
    "none": {}, "tol 0": dict(tol=0.0, max_iter=20), "one iteration": dict(max_iter=1),
    "two threads": dict(n_jobs=2), "positive": dict(positive=True),
    "warm zeros": dict(Z0=np.zeros((5, 6))), "warm 1e300": dict(Z0=np.full((5, 6), 1e300)),
    "warm Z": dict(Z0=Z), "float32 tol, positive, negative warm start":
        dict(tol=1e-5, positive=True, Z0=-Z),
}, {
    "tol < 0": dict(tol=-1.0), "no iteration": dict(max_iter=0), "no thread": dict(n_jobs=0),
    "1.5 threads": dict(n_jobs=1.5), "positive text": dict(positive="yes"),
    "warm shape": dict(Z0=np.zeros((5, 5))),
    "warm NaN": dict(Z0=_with(np.zeros((5, 6)), (0, 0), np.nan)),
    "tol NaN": dict(tol=np.nan), "2^40 iterations": dict(max_iter=2**40),
})
ARGUMENTS = {"X": SIGNALS, "D": DICTIONARIES, "lmbd": LMBDS, "method": METHODS,
             "rest": EXTRAS}


def _solved_in(X, D):
    """The dtype solve_lasso solves in: float32 when X and D are both float32
    arrays, float64 otherwise (float16 and integers are cast to float64)."""
    single = [isinstance(a, np.ndarray) and a.dtype == np.float32 for a in (X, D)]
    return np.float32 if all(single) else np.float64


@st.composite
def api_calls(draw):
    """{argument: (kind, value)}, at most one argument of an invalid kind."""
    bad = draw(st.sampled_from([None, None, *ARGUMENTS]))
    call = {}
    for name, (valid, invalid) in ARGUMENTS.items():
        kinds = invalid if name == bad else valid
        kind = draw(st.sampled_from(sorted(kinds)))
        call[name] = (kind, kinds[kind])
    return bad, call


@API
@given(drawn=api_calls())
def test_fuzz_solve_lasso_refuses_by_name_or_certifies(drawn):
    """Any mix of argument kinds: with an invalid argument, a ValueError or
    TypeError naming it; with valid ones, codes whose certificate holds
    (contract.assert_certified, against the long-double reference) or a
    FloatingPointError naming samples (codes beyond the float range) —
    never another exception, and never a RuntimeWarning (an error in this
    suite)."""
    bad, call = drawn
    (x, Xa), (d, Da), (_, lm), (_, method), (rest, kw) = (call[k] for k in ARGUMENTS)
    # valid kinds that do not fit together: one sample or none against
    # arrays of five rows, no atoms against a warm start of six, a warm
    # start of 1e300 for a problem solved in float32 (refused naming Z0)
    clash = (x in ("1-D", "no samples") and (np.ndim(lm) > 0 or "Z0" in kw)
             or d == "no atoms" and "Z0" in kw
             or rest == "warm 1e300" and _solved_in(Xa, Da) == np.float32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fastlista.ConvergenceWarning)
            res = solve_lasso(Xa, Da, lm, method=method, **kw)
    except FloatingPointError as exc:
        assert bad is None and "sample" in str(exc)
        return
    except (ValueError, TypeError) as exc:
        assert bad is not None or clash, f"valid arguments refused: {exc}"
        name = {"rest": next(iter(kw), "")}.get(bad, bad)
        assert clash or name in str(exc) or "Complex" in str(exc), (
            f"the error does not name {name!r}: {exc}")
        return
    assert bad is None, f"invalid {bad} accepted: {call[bad][0]}"
    X2 = np.atleast_2d(np.asarray(Xa, dtype=np.float64))
    if np.ndim(res.codes) == 1:
        res = fastlista.LassoResult(res.codes[None], np.atleast_1d(res.gap),
                                    np.atleast_1d(res.n_iter), np.atleast_1d(res.converged))
    assert_certified(X2, np.asarray(Da, dtype=np.float64), np.asarray(lm, dtype=np.float64),
                     kw.get("tol", 1e-8), res, dtype=res.codes.dtype,
                     positive=kw.get("positive", False))


@pytest.mark.parametrize("value", [{"foo": "bar"}, None, [1.0]])
def test_object_arrays_of_other_objects_raise_type_error(value):
    """As float() does (and scikit-learn's checks expect of the estimators):
    text is a ValueError, any other non-number a TypeError, naming X."""
    arr = X.astype(object)
    arr[0, 0] = value
    with pytest.raises(TypeError, match=f"X is an object array holding a {type(value).__name__}"):
        fastlista.solve_lasso(arr, D, 0.1)
