"""scikit-learn estimators: LassoSparseCoder and LearnedSparseCoder.

References are independent of fastlista: scikit-learn's coordinate descent
(``Lasso`` with a tight tolerance, and ``SparseCoder`` with
``transform_algorithm="lasso_cd"``, whose ``transform_alpha`` is the same
lambda), the plain NumPy ISTA of ``tests/reference.py``, and, for the
learned coder, a :class:`fastlista.Lista` trained directly.
"""
import pickle
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.decomposition import SparseCoder  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.linear_model import Lasso, LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import reference as ref  # noqa: E402
from conftest import SPARSE_ENCODE_LASSO_TOL, sklearn_sparse_encode_tol  # noqa: E402
from fastlista import ConvergenceWarning, InvalidParameterError  # noqa: E402
from fastlista.estimators import LassoSparseCoder, LearnedSparseCoder  # noqa: E402


# ---------------------------------------------------------------------------
# oracles and data
# ---------------------------------------------------------------------------

def lasso_oracle(X, D, lmbd):
    """Per-sample Lasso by scikit-learn's coordinate descent, tight tolerance.

    sklearn's Lasso minimises 1/(2 n) ||y - A w||^2 + a ||w||_1; with A = D^T,
    y = x and a = lmbd / n that is our objective divided by n.
    """
    X64, D64 = np.asarray(X, np.float64), np.asarray(D, np.float64)
    n = X64.shape[1]
    est = Lasso(alpha=lmbd / n, fit_intercept=False, tol=1e-14, max_iter=200_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(D64.T, X64.T)
    return np.atleast_2d(est.coef_)


def sparse_coder_oracle(X, D, lmbd):
    """scikit-learn's own SparseCoder with the Lasso (coordinate descent)."""
    coder = SparseCoder(np.asarray(D, np.float64), transform_algorithm="lasso_cd",
                        transform_alpha=lmbd, transform_max_iter=10_000)
    return coder.fit_transform(np.asarray(X, np.float64))


def problem(n_samples=60, n_features=20, n_atoms=30, seed=0, density=1.0):
    return ref.make_problem(n_samples=n_samples, n_features=n_features,
                            n_atoms=n_atoms, density=density, noise=0.05, seed=seed)


@pytest.fixture(scope="module")
def digits():
    """Digits scaled to [0, 1] and a dictionary of 40 normalised training digits."""
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    D = X[:40] / np.linalg.norm(X[:40], axis=1, keepdims=True)
    return X[40:], y[40:], D


def mean_objective(X, D, lmbd, Z):
    return float(np.mean(ref.objective(X, D, lmbd, Z)))


# ---------------------------------------------------------------------------
# scikit-learn's estimator checks
# ---------------------------------------------------------------------------

# The dictionary fixes the number of features. scikit-learn's own test suite
# gives SparseCoder a dictionary per check (PER_ESTIMATOR_CHECK_PARAMS in
# sklearn/utils/_test_common/instance_generator.py, applied only to
# scikit-learn's estimators); these are the widths each check's data has.
# Every other check uses 3 features.
_CHECK_WIDTHS = {
    "check_fit2d_1feature": 1,
    "check_estimators_fit_returns_self": 2,
    "check_estimators_overwrite_params": 2,
    "check_fit_check_is_fitted": 2,
    "check_fit_idempotent": 2,
    "check_n_features_in": 2,
    "check_readonly_memmap_input": 2,
    "check_n_features_in_after_fitting": 4,
    "check_positive_only_tag_during_fit": 4,
    "check_estimators_dtypes": 5,
    "check_transformers_unfitted_stateless": 5,
    "check_dtype_object": 10,
    "check_fit2d_1sample": 10,
}


def _dictionary(n_features, n_atoms=5, seed=0):
    return np.random.RandomState(seed).normal(size=(n_atoms, n_features))


def _expected_failed_checks(estimator):
    if isinstance(estimator, LassoSparseCoder):
        return {
            "check_transformer_n_iter":
                "LassoSparseCoder is stateless like SparseCoder: fit only validates "
                "and runs no iteration, so it has no n_iter_; max_iter bounds the "
                "iterations of transform, per sample.",
        }
    return {}


def _check_name(check):
    return getattr(check, "__name__", None) or check.func.__name__


@parametrize_with_checks(
    [LassoSparseCoder(_dictionary(3)),
     LearnedSparseCoder(_dictionary(3), n_layers=5, max_iter=20, random_state=0)],
    expected_failed_checks=_expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    width = _CHECK_WIDTHS.get(_check_name(check), 3)
    check(clone(estimator).set_params(dictionary=_dictionary(width)))


def test_check_widths_are_needed():
    """The per-check dictionaries are the data's widths: a mismatch is refused."""
    with pytest.raises(ValueError, match="X has 2 features, but LassoSparseCoder is "
                                         "expecting 3 features as input"):
        LassoSparseCoder(_dictionary(3)).fit(np.ones((4, 2)))


# ---------------------------------------------------------------------------
# LassoSparseCoder
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("lmbd", [0.05, 0.3, 0.8])
@pytest.mark.parametrize("method", ["auto", "fista", "oista"])
def test_lasso_coder_equals_sklearn_lasso(lmbd, method):
    X, D = problem()
    Z = LassoSparseCoder(D, alpha=lmbd, method=method, tol=1e-12,
                         max_iter=100_000).fit_transform(X)
    Z_ref = lasso_oracle(X, D, lmbd)
    assert Z.dtype == np.float64 and Z.shape == Z_ref.shape
    # a certified gap bounds the objective, not the codes: codes to 1e-5 (the
    # proximal-gradient methods stop at a gap of 1e-12 relative), objective to 1e-10
    assert_allclose(Z, Z_ref, atol=(1e-7 if method == "auto" else 1e-5) * np.abs(Z_ref).max())
    assert_allclose(mean_objective(X, D, lmbd, Z), mean_objective(X, D, lmbd, Z_ref),
                    rtol=1e-10)


def test_lasso_coder_is_a_drop_in_for_sparse_coder():
    X, D = problem(seed=1, density=0.2, n_atoms=40)
    lmbd = 0.2
    ours = LassoSparseCoder(D, alpha=lmbd)
    theirs = SparseCoder(D, transform_algorithm="lasso_cd", transform_alpha=lmbd,
                         transform_max_iter=10_000)
    # SparseCoder codes with sparse_encode's Lasso: at tol=1e-8 from
    # scikit-learn 1.8 on, at Lasso's default 1e-4 before (not a parameter;
    # on 1.7.2 one code was 1.02e-3 off ours, the problem being overcomplete
    # no gap bounds the codes): at tol=1e-8 on every version
    # (conftest.sklearn_sparse_encode_tol, a no-op from 1.8 on)
    with sklearn_sparse_encode_tol() as tols:
        Z, Z_sk = ours.fit_transform(X), theirs.fit_transform(X)
    assert tols and set(tols) == {SPARSE_ENCODE_LASSO_TOL}, tols
    # compare at 1e-3 (measured 1e-7), and check that ours is at least as
    # good (objective)
    assert_allclose(Z, Z_sk, atol=1e-3)
    assert mean_objective(X, D, lmbd, Z) <= mean_objective(X, D, lmbd, Z_sk) + 1e-12
    assert_allclose(ours.inverse_transform(Z), theirs.inverse_transform(Z), rtol=1e-12)
    assert ours.n_components_ == theirs.n_components_ == D.shape[0]
    assert ours.n_features_in_ == theirs.n_features_in_ == D.shape[1]
    assert_array_equal(ours.get_feature_names_out(),
                       [f"lassosparsecoder{i}" for i in range(D.shape[0])])


def test_lasso_coder_float32():
    X, D = problem(seed=2)
    lmbd = 0.3
    Z_ref = lasso_oracle(X, D, lmbd)
    for D_in in (D, D.astype(np.float32)):
        Z32 = LassoSparseCoder(D_in, alpha=lmbd).fit_transform(X.astype(np.float32))
        assert Z32.dtype == np.float32
        assert_allclose(Z32, Z_ref, atol=2e-4 * np.abs(Z_ref).max())
    # float64 signals with a float32 dictionary are coded in float64
    Z64 = LassoSparseCoder(D.astype(np.float32), alpha=lmbd).fit_transform(X)
    assert Z64.dtype == np.float64


def test_lasso_coder_float32_default_tol_is_certifiable(digits):
    """float32 digits at the default tol=1e-8: 119 of 300 samples ran
    max_iter and warned that float32 cannot certify it (found by an
    adversarial pass). A float32 tol below 1e-6 is taken as 1e-6: no
    warning, codes certified to 1e-6 (the NumPy reference gap in long
    double); tol=0 still runs max_iter (and so reaches at least that)."""
    X, _, D = digits
    X32 = X[100:400].astype(np.float32)
    D32 = D.astype(np.float32)
    half = 0.5 * np.einsum("ij,ij->i", X32, X32, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        Z = LassoSparseCoder(D32, alpha=0.2).fit_transform(X32)
    assert Z.dtype == np.float32
    assert np.all(ref.duality_gap_robust(X32, D32, 0.2, Z) <= 1e-6 * half)
    Z0 = LassoSparseCoder(D32, alpha=0.2, tol=0, max_iter=3000).fit_transform(X32)
    assert np.all(ref.duality_gap_robust(X32, D32, 0.2, Z0) <= 1e-6 * half)


@pytest.mark.parametrize("positive_code", [False, True])
@pytest.mark.parametrize("n_atoms", [16, 64])
def test_lasso_coder_at_alpha_zero_gives_least_squares_codes(n_atoms, positive_code):
    """At alpha = 0 the Lasso is least squares, whose gap 1/2 ||r||^2 no
    solver certifies with fewer atoms than features: transform ran
    max_iter iterations and warned. It now gives
    the least-squares codes (NumPy's lstsq, of minimum norm; SciPy's nnls
    with positive_code), as the dictionary learners do."""
    from scipy.optimize import nnls

    rng = np.random.RandomState(0)
    X, D = rng.randn(50, 32), rng.randn(n_atoms, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        Z = LassoSparseCoder(D, alpha=0.0, positive_code=positive_code).fit_transform(X)
    if positive_code:
        Z_ref = np.array([nnls(D.T, x)[0] for x in X])
    else:
        Z_ref = np.linalg.lstsq(D.T, X.T, rcond=None)[0].T
    assert_allclose(Z, Z_ref, rtol=1e-8, atol=1e-10 * np.abs(Z_ref).max())


def test_lasso_coder_stateless_transform():
    X, D = problem(seed=3)
    coder = LassoSparseCoder(D, alpha=0.3)
    Z_unfitted = coder.transform(X)            # like SparseCoder: no fit needed
    assert not hasattr(coder, "n_features_in_")
    assert_allclose(Z_unfitted, coder.fit(X).transform(X), rtol=0, atol=0)
    assert_allclose(Z_unfitted, lasso_oracle(X, D, 0.3), atol=1e-6)


def test_lasso_coder_score_and_inverse_transform():
    X, D = problem(seed=4)
    coder = LassoSparseCoder(D, alpha=0.3).fit(X)
    Z = coder.transform(X)
    assert_allclose(coder.inverse_transform(Z), Z @ D, rtol=1e-14)
    assert_allclose(coder.score(X), -mean_objective(X, D, 0.3, lasso_oracle(X, D, 0.3)),
                    rtol=1e-9)
    with pytest.raises(ValueError, match="X has 7 components, but LassoSparseCoder is "
                                         "expecting 30 components"):
        coder.inverse_transform(np.ones((2, 7)))


def test_lasso_coder_messages():
    X, D = problem(seed=5)
    with pytest.raises(ValueError, match="X has 19 features, but LassoSparseCoder is "
                                         "expecting 20 features as input"):
        LassoSparseCoder(D).fit(X[:, :19])
    coder = LassoSparseCoder(D).fit(X)
    with pytest.raises(ValueError, match="X has 19 features, but LassoSparseCoder is "
                                         "expecting 20 features as input"):
        coder.transform(X[:, :19])
    with pytest.raises(ValueError, match="Reshape your data"):
        coder.transform(X[0])
    X_nan = X.copy()
    X_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        coder.transform(X_nan)
    with pytest.raises(InvalidParameterError,
                       match=r"The 'alpha' parameter of LassoSparseCoder must be a float "
                             r"in the range \[0.0, inf\)\. Got -1.0 instead\."):
        LassoSparseCoder(D, alpha=-1.0).fit(X)
    with pytest.raises(InvalidParameterError, match="The 'method' parameter"):
        LassoSparseCoder(D, method="lars").transform(X)
    with pytest.raises(InvalidParameterError, match="The 'n_jobs' parameter"):
        LassoSparseCoder(D, n_jobs=0).fit(X)
    with pytest.raises(ValueError, match="Input dictionary contains NaN"):
        LassoSparseCoder(np.full_like(D, np.nan)).fit(X)


def test_lasso_coder_names_a_dictionary_whose_atoms_span_too_wide_a_range():
    """A dictionary one scale cannot hold (an atom 1e-35 of the largest,
    beyond float32's 2**-103, within float64's 2**-970) is refused as the
    solvers refuse such a D, naming ``dictionary`` (the message said "D's
    atoms"): by fit for float32 data, by transform for float32 data after
    a fit on float64."""
    X, D = problem(seed=6)
    D = D.copy()
    D[1] *= 1e-35
    coder = LassoSparseCoder(D, alpha=0.3).fit(X)        # float64: within its span
    Z = coder.transform(X)
    # the tiny atom's code is on its own scale: 1e35 times a unit atom's
    assert_allclose(Z, lasso_oracle(X, D, 0.3), rtol=1e-6, atol=1e-9 * np.abs(Z).max())
    X32 = X.astype(np.float32)
    for call in (lambda: LassoSparseCoder(D, alpha=0.3).fit(X32), lambda: coder.transform(X32)):
        with pytest.raises(ValueError, match=r"^dictionary's atoms span too wide a range "
                                             r"of magnitudes for float32.*atom 1's largest.*"
                                             r"one scale of dictionary.*pass X in float64\.$"):
            call()


def test_coders_name_a_float64_dictionary_beyond_the_range_of_float32_x():
    """A finite float64 dictionary with an entry of 1e39, used with float32
    X: fit accepted it (with NumPy's "overflow encountered in cast") and
    transform blamed an input called D; inverse_transform of float32 codes
    returned inf; an atom of 1e-50 became a zero atom, silently. Each refuses
    it now, naming ``dictionary`` and the remedy, without a RuntimeWarning,
    and a reconstruction beyond the codes' dtype is refused, naming the
    remedy; in float64 both run, against NumPy."""
    D = np.eye(3, 4)
    D[0, 0] = 1e39
    D_tiny = np.eye(3, 4)
    D_tiny[1, 1] = 1e-50                # atom 1: 0 in float32
    X = np.ones((2, 4))
    X32, codes32 = X.astype(np.float32), np.ones((2, 3), np.float32)
    huge = (r"^dictionary has entries beyond the range of float32 \(largest \|entry\| "
            r"1e\+39\), the dtype of the X it is used with: pass X in float64, or "
            r"rescale it\.$")
    tiny = (r"^dictionary's atom 1 \(largest \|entry\| 1e-50\) lies below the range of "
            r"float32, the dtype of the X it is used with: pass X in float64")
    fitted = LassoSparseCoder(D, alpha=0.5).fit(X)
    calls = [(huge, lambda: LassoSparseCoder(D).fit(X32)),
             (huge, lambda: fitted.transform(X32)),
             (huge, lambda: fitted.inverse_transform(codes32)),
             (huge, lambda: LearnedSparseCoder(D, max_iter=1).fit(X32)),
             (tiny, lambda: LassoSparseCoder(D_tiny).fit(X32)),
             (tiny, lambda: LearnedSparseCoder(D_tiny, max_iter=1).fit(X32))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for message, call in calls:
            with pytest.raises(ValueError, match=message):
                call()
        assert_array_equal(fitted.inverse_transform(np.ones((2, 3))), np.ones((2, 3)) @ D)
        small = LassoSparseCoder(np.eye(3, 4) * 1e30).fit(X)
        back = small.inverse_transform(codes32)
        assert back.dtype == np.float32
        assert_array_equal(back, np.full((2, 4), 1e30, np.float32) * [1, 1, 1, 0])
        with pytest.raises(FloatingPointError, match=r"^The reconstruction X @ dictionary "
                                                     r"leaves the range of float32: pass the "
                                                     r"codes X in float64\.$"):
            small.inverse_transform(np.full((2, 3), 1e30, np.float32))
        # beyond float64: no dtype helps (it gave inf)
        with pytest.raises(FloatingPointError, match=r"leaves the range of float64: "
                                                     r"rescale the codes X or the "
                                                     r"dictionary\.$"):
            LassoSparseCoder(np.eye(3, 4) * 1e300).fit(X).inverse_transform(
                np.full((2, 3), 1e300))


@pytest.mark.parametrize("dictionary, parametrization, reason", [
    (np.zeros((3, 4)), "step", "D must not be all zeros"),
    (np.vstack([np.eye(3, 4), np.zeros((1, 4))]), "alista", r"D has zero atoms \(rows \[3\]\)"),
    (np.eye(3, 4) * 1e300, "step", r"D's Lipschitz constant \|\|D D\^T\|\|_2 = inf"),
])
def test_learned_coder_names_the_dictionary_the_network_refuses(dictionary, parametrization,
                                                                reason):
    """The network's refusals of its D (all zeros, an L beyond float64's
    range, ALISTA's zero atom) reached LearnedSparseCoder's users naming D,
    which is not one of its arguments; they now name ``dictionary``."""
    coder = LearnedSparseCoder(dictionary, parametrization=parametrization, max_iter=1)
    with pytest.raises(ValueError, match="^dictionary refused as the network's D: " + reason):
        coder.fit(np.ones((2, 4)))


def test_lasso_coder_in_pipeline(digits):
    X, y, D = digits
    Xtr, ytr, Xte, yte = X[:800], y[:800], X[800:], y[800:]
    pipe = make_pipeline(LassoSparseCoder(D, alpha=0.2),
                         LogisticRegression(max_iter=3000))
    pipe.fit(Xtr, ytr)
    # the pipeline's codes are scikit-learn's own Lasso codes
    assert_allclose(pipe[:-1].transform(Xte[:100]), lasso_oracle(Xte[:100], D, 0.2),
                    atol=1e-6)
    # and the pipeline is the manual composition of its steps
    coder = LassoSparseCoder(D, alpha=0.2)
    clf = LogisticRegression(max_iter=3000).fit(coder.fit_transform(Xtr), ytr)
    assert_array_equal(pipe.predict(Xte), clf.predict(coder.transform(Xte)))
    assert pipe.score(Xte, yte) > 0.85


def test_lasso_coder_in_grid_search(digits):
    X, y, D = digits
    X, y = X[:600], y[:600]
    pipe = make_pipeline(LassoSparseCoder(D), LogisticRegression(max_iter=3000))
    grid = {"lassosparsecoder__alpha": [0.05, 0.5, 2.0]}
    search = GridSearchCV(pipe, grid, cv=3, n_jobs=2).fit(X, y)   # 2 processes
    # the scores are those of a manual cross-validation with the same folds
    manual = []
    for alpha in grid["lassosparsecoder__alpha"]:
        scores = [clone(pipe).set_params(lassosparsecoder__alpha=alpha)
                  .fit(X[tr], y[tr]).score(X[te], y[te])
                  for tr, te in StratifiedKFold(3).split(X, y)]
        manual.append(np.mean(scores))
    assert_allclose(search.cv_results_["mean_test_score"], manual, rtol=1e-12)
    best = grid["lassosparsecoder__alpha"][int(np.argmax(manual))]
    assert search.best_params_ == {"lassosparsecoder__alpha": best}
    coder = search.best_estimator_[0]
    assert_allclose(coder.transform(X[:50]), lasso_oracle(X[:50], D, best), atol=1e-6)


def test_lasso_coder_pickle():
    X, D = problem(seed=6)
    coder = LassoSparseCoder(D, alpha=0.3).fit(X)
    clone_ = pickle.loads(pickle.dumps(coder))
    assert_array_equal(clone_.transform(X), coder.transform(X))


# ---------------------------------------------------------------------------
# LearnedSparseCoder
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("parametrization", ["step", "coupled", "alista", "lista"])
def test_learned_coder_is_the_trained_network(parametrization):
    from fastlista import Lista

    X, D = problem(seed=7)
    coder = LearnedSparseCoder(D, alpha=0.3, n_layers=4, parametrization=parametrization,
                               max_iter=15, random_state=0).fit(X)
    net = Lista(D, 0.3, 4, parametrization=parametrization, random_state=0)
    net.fit(X, max_iter=15)
    for ours, theirs in zip(coder.network_.parameters, net.parameters):
        for k in theirs:
            assert_allclose(ours[k], theirs[k], rtol=1e-12, atol=1e-14)
    assert_allclose(coder.transform(X), net.transform(X), rtol=1e-12, atol=1e-14)
    assert coder.loss_history_ == net.loss_history_
    assert coder.n_iter_ == len(net.loss_history_) - 1 >= 1


def test_learned_coder_score_is_that_of_the_fitted_network():
    """score evaluates the codes transform returns, with the network's own
    constraint: a positive_code set after fit (no refit) changes neither."""
    X, D = problem(seed=8)
    coder = LearnedSparseCoder(D, alpha=0.3, n_layers=4, max_iter=10).fit(X)
    Z = coder.transform(X)
    assert Z.min() < 0
    expected = -mean_objective(X, D, 0.3, Z)
    assert_allclose(coder.score(X), expected, rtol=1e-12)
    coder.set_params(positive_code=True)
    assert_allclose(coder.transform(X), Z, rtol=0, atol=0)
    assert_allclose(coder.score(X), expected, rtol=1e-12)


def test_learned_coder_beats_ista():
    """Trained step sizes give a lower objective than T plain ISTA steps."""
    X, D = problem(n_samples=200, seed=8, density=0.3)
    lmbd, T = 0.3, 8
    Xtr, Xte = X[:150], X[150:]
    coder = LearnedSparseCoder(D, alpha=lmbd, n_layers=T, max_iter=50).fit(Xtr)
    F_learned = mean_objective(Xte, D, lmbd, coder.transform(Xte))
    F_ista = mean_objective(Xte, D, lmbd, ref.ista(Xte, D, lmbd, T)[0])
    F_star = mean_objective(Xte, D, lmbd, lasso_oracle(Xte, D, lmbd))
    assert F_star <= F_learned < F_ista
    # the score is minus this objective
    assert_allclose(coder.score(Xte), -F_learned, rtol=1e-12)


def test_learned_coder_refine_tol_reaches_the_lasso_solution():
    X, D = problem(seed=9)
    coder = LearnedSparseCoder(D, alpha=0.3, n_layers=3, max_iter=10,
                               refine_tol=1e-13).fit(X)
    assert_allclose(coder.transform(X), lasso_oracle(X, D, 0.3), atol=1e-6)


def test_learned_coder_supervised():
    X, D = problem(n_samples=120, seed=10)
    lmbd, T = 0.3, 5
    S = lasso_oracle(X, D, lmbd)
    coder = LearnedSparseCoder(D, alpha=lmbd, n_layers=T, loss="supervised",
                               max_iter=60).fit(X, S)
    err = np.mean(np.sum((coder.transform(X) - S) ** 2, axis=1))
    err_ista = np.mean(np.sum((ref.ista(X, D, lmbd, T)[0] - S) ** 2, axis=1))
    assert err < err_ista
    with pytest.raises(ValueError, match="requires target codes"):
        LearnedSparseCoder(D, loss="supervised").fit(X)
    with pytest.raises(ValueError, match=r"y must be the target codes, of shape"):
        LearnedSparseCoder(D, loss="supervised").fit(X, np.ones((len(X), 3)))
    # class labels: named as y's shape (scikit-learn's "reshape(-1, 1)" hint
    # led to a second shape error)
    with pytest.raises(ValueError, match=r"target codes, of shape \(n_samples, n_components\) "
                                         r"= \(120, 30\); got y.shape=\(120,\)\.$"):
        LearnedSparseCoder(D, loss="supervised").fit(X, np.arange(len(X)))


def _y_holding(value):
    """Target codes of ``problem()``'s shape, as an object array holding ``value``."""
    y = np.zeros((60, 30), dtype=object)
    y[0, 0] = value
    return y


BAD_TARGETS = {
    "text in an object array": (lambda: _y_holding("1.5"), "y is an object array holding a str"),
    "str array": (lambda: np.zeros((60, 30)).astype(str), r"bytes/strings \(y has dtype"),
    "int beyond the float range": (lambda: _y_holding(10**400),
                                   r"Input y contains infinity or a value too large"),
    "complex": (lambda: np.zeros((60, 30)) + 1j, "Complex data not supported in y"),
    "1-D": (lambda: np.zeros(60), r"y must be the target codes, .* got y.shape=\(60,\)"),
}


@pytest.mark.parametrize("make_y, message", BAD_TARGETS.values(), ids=BAD_TARGETS.keys())
def test_learned_coder_refuses_bad_target_codes_by_name(make_y, message):
    """y went through scikit-learn's validation: text was parsed as numbers,
    an int beyond the float range raised a bare OverflowError, and a 1-D or
    complex y gave messages naming no argument. It follows fastlista's rule,
    as Lista.fit's Z_target, with messages naming y."""
    X, D = problem(seed=10)
    coder = LearnedSparseCoder(D, n_layers=2, max_iter=3, loss="supervised")
    with pytest.raises(ValueError, match=message) as info:
        coder.fit(X, make_y())
    assert "could not convert" not in str(info.value)
    assert not hasattr(coder, "network_")


def test_learned_coder_object_target_codes_of_numbers_are_data():
    """An object array of real numbers (int, bool, float) is the float array
    of its values."""
    X, D = problem(seed=10)
    S = lasso_oracle(X, D, 0.3)
    S_object = S.astype(object)
    S_object[0, :2] = [int(S[0, 0]), bool(S[0, 1])]
    S_float = S.copy()
    S_float[0, :2] = [int(S[0, 0]), bool(S[0, 1])]
    fitted = [LearnedSparseCoder(D, alpha=0.3, n_layers=3, max_iter=5, loss="supervised",
                                 n_jobs=1).fit(X, y) for y in (S_object, S_float)]
    assert fitted[0].loss_history_ == fitted[1].loss_history_
    assert_array_equal(fitted[0].transform(X), fitted[1].transform(X))


def test_learned_coder_n_layers_beyond_what_lista_accepts_names_the_estimator():
    """n_layers = 2**31 was refused by Lista, against the estimator's own
    range [1, inf); the estimator states the real range itself."""
    X, D = problem(seed=12)
    with pytest.raises(InvalidParameterError,
                       match=r"The 'n_layers' parameter of LearnedSparseCoder must be an "
                             r"int in the range \[1, 2147483647\]\. Got 2147483648 "
                             r"instead\."):
        LearnedSparseCoder(D, n_layers=2**31).fit(X)


BAD_DICTIONARIES = {
    "1-D": (lambda D: D[0], r"Expected 2D array for dictionary, got 1D array"),
    "complex": (lambda D: D + 1j, "Complex data not supported in dictionary"),
    "scalar": (lambda D: D[0, 0], r"Expected 2D array for dictionary, got scalar"),
    "no atoms": (lambda D: D[:0], r"Found array with 0 sample\(s\).* required for "
                                  r"dictionary"),
}


@pytest.mark.parametrize("cls", [LassoSparseCoder, LearnedSparseCoder])
@pytest.mark.parametrize("bad, message", BAD_DICTIONARIES.values(),
                         ids=BAD_DICTIONARIES.keys())
def test_coders_name_a_bad_dictionary(cls, bad, message):
    """A 1-D, scalar or complex dictionary gave scikit-learn's messages,
    which name no argument; they name the dictionary."""
    X, D = problem(seed=5)
    with pytest.raises(ValueError, match=message):
        cls(bad(D)).fit(X)


def test_learned_coder_float32():
    X, D = problem(seed=11)
    c64 = LearnedSparseCoder(D, alpha=0.3, n_layers=5, max_iter=20).fit(X)
    c32 = LearnedSparseCoder(D, alpha=0.3, n_layers=5, max_iter=20).fit(X.astype(np.float32))
    assert c32.network_.dtype == np.float32 and c32.components_.dtype == np.float32
    Z32 = c32.transform(X.astype(np.float32))
    assert Z32.dtype == np.float32
    # a float64-trained coder codes float32 signals in float32
    Z = c64.transform(X.astype(np.float32))
    assert Z.dtype == np.float32
    assert_allclose(Z, c64.transform(X), atol=1e-5 * np.abs(c64.transform(X)).max())


def test_learned_coder_float32_alista_codes_float64_signals_with_its_own_weights():
    """A float32 ALISTA coder used on float64 signals codes them with the
    analytic weights of its own network. Its zero-mean atoms (as learned on
    mean-removed patches) span n - 1 directions at float32's precision, and
    the network's weights are those of that rank; ``transform`` rebuilt a
    float64 network from the cast dictionary, whose rounding counts as an
    n-th direction at float64's precision, and whose weights reach 1e7:
    codes of 8.7 where the network gives 2.8. The reference: NumPy's ALISTA
    layers with W~ the row-normalised pseudo-inverse of D at float32's
    rank (w_i . d_i = 1)."""
    rng = np.random.RandomState(0)
    m, n = 32, 16
    D = rng.randn(m, n)
    D -= D.mean(axis=1, keepdims=True)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    D32 = D.astype(np.float32)
    X32 = (rng.randn(200, m) @ D).astype(np.float32)
    coder = LearnedSparseCoder(D32, alpha=0.1, n_layers=5, parametrization="alista",
                               max_iter=5).fit(X32)
    # NumPy reference of the trained layers on the float64 signals
    D64 = D32.astype(np.float64)
    U, sv, Vt = np.linalg.svd(D64, full_matrices=False)
    r = int(np.sum(sv > sv[0] * max(m, n) * np.finfo(np.float32).eps))
    assert r == n - 1
    W = (U[:, :r] / sv[:r]) @ Vt[:r]            # (D^+)^T at float32's rank
    W /= np.einsum("ij,ij->i", W, D64)[:, None]
    X64 = X32.astype(np.float64)
    Z = np.zeros((X64.shape[0], m))
    for layer in coder.network_.parameters:
        U = Z - float(layer["gamma"]) * (Z @ D64 - X64) @ W.T
        s = 0.1 * float(layer["theta"])
        Z = np.sign(U) * np.maximum(np.abs(U) - s, 0.0)
    assert np.abs(Z).max() > 0
    codes = coder.transform(X64)
    assert codes.dtype == np.float64
    assert_allclose(codes, Z, rtol=0, atol=1e-6 * np.abs(Z).max())
    assert_allclose(codes, coder.transform(X32), rtol=0, atol=1e-5 * np.abs(Z).max())


def test_learned_coder_float32_refine_tol_is_certifiable(digits):
    """LearnedSparseCoder's refine_tol follows the estimators' float32 rule
    (LassoSparseCoder's tol, the learners' transform_tol): a float32
    refine_tol in (0, 1e-6) is taken as 1e-6. refine_tol=1e-8 on float32
    digits warned that most samples missed it in max_iter iterations (found
    by a docstring review); now no warning, and every code is certified to
    1e-6 by the NumPy reference gap (long double)."""
    X, _, D = digits
    X32 = X[100:300].astype(np.float32)
    D32 = D.astype(np.float32)
    half = 0.5 * np.einsum("ij,ij->i", X32, X32, dtype=np.float64)
    coder = LearnedSparseCoder(D32, alpha=0.2, n_layers=3, max_iter=5,
                               refine_tol=1e-8).fit(X32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        Z = coder.transform(X32)
    assert Z.dtype == np.float32
    assert np.all(ref.duality_gap_robust(X32, D32, 0.2, Z) <= 1e-6 * half)
    # float64 signals keep the tol they ask for
    X64 = X[100:300]
    Z64 = coder.transform(X64)
    half64 = 0.5 * np.einsum("ij,ij->i", X64, X64)
    assert np.all(ref.duality_gap_robust(X64, D32.astype(np.float64), 0.2, Z64)
                  <= 1e-8 * half64 * (1 + 1e-6))


@pytest.mark.parametrize("positive_code", [False, True])
def test_learned_coder_refined_at_alpha_zero_gives_least_squares_codes(positive_code):
    """LearnedSparseCoder(alpha=0, refine_tol=...) refines towards the
    Lasso at lmbd = 0, least squares, whose certificate 1/2 ||r||^2 no
    refinement reaches with fewer atoms than features: every sample warned
    (found by a docstring review), where LassoSparseCoder gives the
    least-squares codes silently. It now gives them too (NumPy's lstsq;
    SciPy's nnls with positive_code); without refine_tol the network's own
    codes are returned."""
    from scipy.optimize import nnls

    rng = np.random.RandomState(0)
    X, D = rng.randn(50, 10), rng.randn(5, 10)
    coder = LearnedSparseCoder(D, alpha=0.0, n_layers=3, max_iter=3, refine_tol=1e-8,
                               positive_code=positive_code).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        Z = coder.transform(X)
    if positive_code:
        Z_ref = np.array([nnls(D.T, x)[0] for x in X])
    else:
        Z_ref = np.linalg.lstsq(D.T, X.T, rcond=None)[0].T
    assert_allclose(Z, Z_ref, rtol=1e-8, atol=1e-10 * np.abs(Z_ref).max())
    # the network's codes (3 layers from 0) are not the least-squares ones
    coder.set_params(refine_tol=None)
    assert np.abs(coder.transform(X) - Z_ref).max() > 1e-3 * np.abs(Z_ref).max()


def test_learned_coder_messages_and_unfitted():
    X, D = problem(seed=12)
    coder = LearnedSparseCoder(D)
    with pytest.raises(NotFittedError):
        coder.transform(X)
    with pytest.raises(ValueError, match="X has 19 features, but LearnedSparseCoder is "
                                         "expecting 20 features as input"):
        coder.fit(X[:, :19])
    for param, value in [("n_layers", 0), ("parametrization", "deep"),
                         ("loss", "l2"), ("max_iter", 0), ("refine_tol", -1.0),
                         ("alpha", np.nan)]:
        with pytest.raises(InvalidParameterError, match=f"The '{param}' parameter"):
            clone(coder).set_params(**{param: value}).fit(X)


def test_learned_coder_pickle_roundtrip():
    X, D = problem(seed=13)
    coder = LearnedSparseCoder(D, alpha=0.3, n_layers=4, max_iter=10).fit(X)
    again = pickle.loads(pickle.dumps(coder))
    assert_array_equal(again.transform(X), coder.transform(X))


def test_learned_coder_in_pipeline(digits):
    X, y, D = digits
    Xtr, ytr, Xte, yte = X[:800], y[:800], X[800:], y[800:]
    pipe = make_pipeline(LearnedSparseCoder(D, alpha=0.2, n_layers=5, max_iter=30),
                         LogisticRegression(max_iter=3000))
    pipe.fit(Xtr, ytr)
    coder = LearnedSparseCoder(D, alpha=0.2, n_layers=5, max_iter=30).fit(Xtr)
    clf = LogisticRegression(max_iter=3000).fit(coder.transform(Xtr), ytr)
    assert_array_equal(pipe.predict(Xte), clf.predict(coder.transform(Xte)))
    assert pipe.score(Xte, yte) > 0.85


def test_learned_coder_in_grid_search(digits):
    X, _, D = digits
    X = X[:240]
    est = LearnedSparseCoder(D, alpha=0.2, max_iter=10)
    grid = {"n_layers": [1, 5], "parametrization": ["step", "alista"]}
    search = GridSearchCV(est, grid, cv=KFold(3)).fit(X)
    # GridSearchCV without a scorer uses score = -mean Lasso objective
    manual = {}
    for params in search.cv_results_["params"]:
        scores = []
        for tr, te in KFold(3).split(X):
            fitted = clone(est).set_params(**params).fit(X[tr])
            Z = fitted.transform(X[te])
            scores.append(-mean_objective(X[te], D, 0.2, Z))
        manual[tuple(sorted(params.items()))] = np.mean(scores)
    got = [manual[tuple(sorted(p.items()))] for p in search.cv_results_["params"]]
    assert_allclose(search.cv_results_["mean_test_score"], got, rtol=1e-9)
    # more layers of learned steps code better: the deepest network wins
    assert search.best_params_["n_layers"] == 5


# ---------------------------------------------------------------------------
# examples/denoise_patches.py
# ---------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "denoise_patches.py"


@pytest.fixture(scope="module")
def denoise_example():
    import importlib.util

    pytest.importorskip("PIL")        # sklearn's sample images are JPEG files
    spec = importlib.util.spec_from_file_location("denoise_patches", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_denoise_example_values(denoise_example):
    res = denoise_example.main(quick=True, verbose=False)
    sk = res["SparseCoder(lasso_cd)"]
    ours = res["LassoSparseCoder"]
    ista = next(v for k, v in res.items() if k.startswith("ISTA"))
    learned = next(v for k, v in res.items() if k.startswith("LearnedSparseCoder"))
    # the same Lasso as scikit-learn (ours to a tighter tolerance)
    assert abs(ours["psnr"] - sk["psnr"]) < 0.01
    assert ours["objective"] <= sk["objective"] + 1e-9
    # denoising works, and learned steps beat as many ISTA iterations
    assert ours["psnr"] > res["noisy_psnr"] + 3
    assert learned["psnr"] > res["noisy_psnr"] + 3
    assert ours["objective"] <= learned["objective"] < ista["objective"]
    assert_allclose(np.linalg.norm(res["dictionary"], axis=1), 1.0, rtol=1e-6)
    # the two pipelines: each dictionary learned and used; fastlista's denoises
    # as well (measured, quick: 27.85 dB against 27.94 dB, objective 0.5 % lower)
    pipes = res["pipelines"]
    assert set(pipes) == {"scikit-learn", "fastlista"}
    assert_array_equal(res["dictionaries"]["fastlista"], res["dictionary"])
    assert pipes["fastlista"]["psnr"] > pipes["scikit-learn"]["psnr"] - 0.5
    assert pipes["fastlista"]["objective"] <= 1.02 * pipes["scikit-learn"]["objective"]
    assert pipes["fastlista"]["psnr"] == ours["psnr"]


def test_denoise_example_script(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("PIL")
    pytest.importorskip("matplotlib")
    out = tmp_path / "denoised.png"
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--quick", "--plot", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=_subprocess_env())
    assert proc.returncode == 0, proc.stderr
    # rows "name  fit  encode  PSNR  objective": same PSNR for both exact Lassos
    psnr = {line.rsplit(None, 4)[0].strip(): float(line.split()[-2])
            for line in proc.stdout.splitlines()
            if "Coder" in line or line.strip().startswith("ISTA")}
    assert set(psnr) == {"SparseCoder(lasso_cd)", "LassoSparseCoder",
                         "ISTA (10 iterations)", "LearnedSparseCoder (10 layers)"}
    assert abs(psnr["LassoSparseCoder"] - psnr["SparseCoder(lasso_cd)"]) <= 0.011
    assert out.stat().st_size > 1000


def _subprocess_env():
    """Subprocesses import the fastlista this test imported (installed, or
    built in place), never a source tree without compiled kernels."""
    import os

    import fastlista
    return {**os.environ,
            "PYTHONPATH": str(Path(fastlista.__file__).resolve().parent.parent)}


def test_import_fastlista_does_not_import_optional_dependencies(tmp_path):
    import subprocess
    import sys

    code = ("import sys, fastlista; "
            "bad = [m for m in ('sklearn', 'dask', 'distributed') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=_subprocess_env())
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------
# DictionaryLearning and MiniBatchDictionaryLearning
# ---------------------------------------------------------------------------

from sklearn.decomposition import (DictionaryLearning as SkDictionaryLearning,  # noqa: E402
                                   MiniBatchDictionaryLearning as SkMiniBatch)

from fastlista.dictionary import initial_dictionary, learn_dictionary  # noqa: E402
from fastlista.estimators import (DictionaryLearning,  # noqa: E402
                                  MiniBatchDictionaryLearning)


@parametrize_with_checks(
    [DictionaryLearning(max_iter=5, random_state=0),
     MiniBatchDictionaryLearning(max_iter=2, batch_size=10, random_state=0)])
def test_sklearn_estimator_checks_dictionary_learning(estimator, check):
    check(estimator)


def test_dictionary_learners_use_sklearn_parameter_names():
    """Every parameter scikit-learn's estimators share with ours means the
    same thing; scikit-learn's names are all there."""
    listed = {"n_components", "alpha", "max_iter", "tol", "fit_algorithm",
              "transform_algorithm", "transform_alpha", "positive_code", "positive_dict",
              "dict_init", "random_state", "n_jobs", "verbose", "callback"}
    for ours, theirs in ((DictionaryLearning, SkDictionaryLearning),
                         (MiniBatchDictionaryLearning, SkMiniBatch)):
        names = set(ours().get_params())
        assert listed <= names
        assert listed <= set(theirs().get_params())
    assert {"batch_size", "shuffle"} <= set(MiniBatchDictionaryLearning().get_params())
    assert {"batch_size", "shuffle"} <= set(SkMiniBatch().get_params())


@pytest.fixture(scope="module")
def signals():
    X, D, _ = ref.make_dictionary_problem(n_samples=600, n_features=12, n_atoms=16,
                                          noise=0.05, seed=30)
    return X, D


@pytest.mark.parametrize("cls,method", [(DictionaryLearning, "batch"),
                                        (MiniBatchDictionaryLearning, "online")])
def test_dictionary_learner_is_learn_dictionary(signals, cls, method):
    X, _ = signals
    est = cls(n_components=16, alpha=0.3, max_iter=4, tol=0, random_state=1,
              n_jobs=1).fit(X)
    extra = {"batch_size": 256} if method == "online" else {}
    res = learn_dictionary(X, 16, 0.3, method=method, max_iter=4, tol=0, random_state=1,
                           n_jobs=1, **extra)
    assert_array_equal(est.components_, res.D)
    assert_array_equal(est.objective_, res.objective)
    assert (est.n_iter_, est.n_steps_, est.n_reinit_) == (res.n_iter, res.n_steps,
                                                          res.n_reinit)
    assert est.n_components_ == 16 and est.n_features_in_ == 12
    # transform: exact Lasso codes with the learned atoms (scikit-learn's own Lasso)
    Z = est.transform(X[:50])
    assert_allclose(Z, lasso_oracle(X[:50], est.components_, 0.3), atol=1e-6)
    assert_allclose(est.inverse_transform(Z), Z @ est.components_, rtol=1e-14)
    assert_allclose(est.score(X[:50]), -mean_objective(X[:50], est.components_, 0.3, Z),
                    rtol=1e-12)
    # transform_alpha, and fit_transform = fit + transform (exact codes)
    est2 = clone(est).set_params(transform_alpha=0.1)
    assert_allclose(est2.fit_transform(X)[:50],
                    lasso_oracle(X[:50], est2.components_, 0.1), atol=1e-6)


def test_minibatch_partial_fit_is_the_online_algorithm(signals):
    """partial_fit over the batches in order = the online method without
    shuffling, one epoch, from the same D0."""
    X, _ = signals
    D0 = initial_dictionary(X, 16, np.random.RandomState(0))
    est = MiniBatchDictionaryLearning(n_components=16, alpha=0.3, dict_init=D0, n_jobs=1)
    for start in range(0, 600, 100):
        est.partial_fit(X[start:start + 100])
    res = learn_dictionary(X, 16, 0.3, D0=D0, max_iter=1, batch_size=100, shuffle=False,
                           n_jobs=1)
    assert_array_equal(est.components_, res.D)
    assert est.n_steps_ == 6 == res.n_steps
    # and continues after fit, from its statistics
    fitted = MiniBatchDictionaryLearning(n_components=16, alpha=0.3, max_iter=1,
                                         batch_size=100, shuffle=False, dict_init=D0,
                                         n_jobs=1).fit(X[:500])
    fitted.partial_fit(X[500:])
    assert_array_equal(fitted.components_, res.D)
    assert fitted.n_steps_ == 6
    with pytest.raises(ValueError, match="X has 11 features, but MiniBatchDictionaryLearning"
                                         " is expecting 12 features"):
        fitted.partial_fit(X[:10, :11])


def test_minibatch_first_batch_smaller_than_n_components():
    """A stream whose first batch has 3 signals for 8 atoms (scikit-learn
    accepts it too). The initial dictionary holds the 3 normalised signals;
    the exact codes put each signal on its own atom at ||x|| - alpha (every
    other correlation of the residual alpha x / ||x|| is at most alpha), and
    the dictionary step leaves that atom at x / ||x||: closed forms."""
    rng = np.random.RandomState(0)
    X = rng.randn(40, 6)
    alpha = 0.1
    est = MiniBatchDictionaryLearning(n_components=8, alpha=alpha, random_state=0,
                                      transform_tol=1e-14, n_jobs=1)
    est.partial_fit(X[:3])
    norms = np.linalg.norm(X[:3], axis=1)
    cos = X[:3] / norms[:, None] @ est.components_.T
    own = np.abs(cos).argmax(axis=1)
    assert_allclose(np.abs(cos[np.arange(3), own]), 1, rtol=1e-12)
    assert est.n_reinit_ == 0
    Z = est.transform(X[:3])
    expected = np.zeros((3, 8))
    expected[np.arange(3), own] = np.sign(cos[np.arange(3), own]) * (norms - alpha)
    assert_allclose(Z, expected, rtol=1e-9, atol=1e-12)
    # and the stream goes on
    est.partial_fit(X[3:])
    assert est.n_steps_ == 2
    assert_allclose(np.linalg.norm(est.components_, axis=1), 1, rtol=1e-6)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, MemoryError])
def test_minibatch_partial_fit_interrupted_leaves_the_estimator_as_it_was(monkeypatch, exc):
    """An exception in the middle of a partial_fit step (raised here by the
    dictionary step, after the statistics took the batch in): the estimator
    keeps its fitted state bit for bit, and a retry of the batch gives what
    one uninterrupted call gives. Before, A and B had taken the batch (in
    place) and D had not: the retry counted the batch twice."""
    from fastlista import dictionary as _dictionary

    rng = np.random.RandomState(3)
    X = rng.randn(90, 6)
    kwargs = dict(n_components=8, alpha=0.2, random_state=0, n_jobs=1)
    est = MiniBatchDictionaryLearning(**kwargs).partial_fit(X[:30])
    ref_est = MiniBatchDictionaryLearning(**kwargs).partial_fit(X[:30]).partial_fit(X[30:60])
    before = {k: np.copy(v) for k, v in vars(est._state).items() if isinstance(v, np.ndarray)}
    attrs = (est.components_.copy(), est.n_steps_, est.n_reinit_, est._state.n_steps)

    def failing(*args, **kw):
        raise exc()

    monkeypatch.setattr(_dictionary, "update_dictionary", failing)
    with pytest.raises(exc):
        est.partial_fit(X[30:60])
    monkeypatch.undo()
    for k, v in before.items():
        assert_array_equal(getattr(est._state, k), v)
    assert_array_equal(est.components_, attrs[0])
    assert (est.n_steps_, est.n_reinit_, est._state.n_steps) == attrs[1:]
    est.partial_fit(X[30:60])
    assert_array_equal(est.components_, ref_est.components_)
    assert_array_equal(est._state.A, ref_est._state.A)
    assert est.n_steps_ == ref_est.n_steps_ == 2


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="needs _testcapi")
def test_a_failed_fit_restores_the_attributes_while_memory_is_still_out(monkeypatch):
    """The rollback of a failed fit allocates nothing: it restored the
    attributes by clearing the estimator's dict and refilling it, which
    needs a new table, and with memory still out (the next allocations
    failing) left the estimator with no attributes at all, its parameters
    included (get_params and transform then raised AttributeError)."""
    testcapi = pytest.importorskip("_testcapi")
    rng = np.random.RandomState(0)
    D, X = rng.randn(8, 5), rng.randn(20, 5)
    est = LassoSparseCoder(D, alpha=0.1).fit(X)
    before = dict(vars(est))

    def out_of_memory(self, *args, **kwargs):
        testcapi.set_nomemory(0, 64)      # the next 64 allocations fail
        raise MemoryError

    monkeypatch.setattr(LassoSparseCoder, "_check_params", out_of_memory)
    try:
        est.fit(X)
    except MemoryError:
        pass
    finally:
        testcapi.remove_mem_hooks()
    monkeypatch.undo()
    assert vars(est).keys() == before.keys()
    assert all(vars(est)[k] is v for k, v in before.items())
    assert_array_equal(est.transform(X), LassoSparseCoder(D, alpha=0.1).transform(X))


def _minibatch_sequence(X, alpha, sequence):
    """``fit`` on the first 400 signals and partial_fit on the other two
    batches of 100 ("fit+partial"), or partial_fit on all six ("partial")."""
    est = MiniBatchDictionaryLearning(n_components=16, alpha=alpha, max_iter=2,
                                      batch_size=100, random_state=0, n_jobs=1)
    start = 0
    if sequence == "fit+partial":
        est.fit(X[:400])
        start = 400
    for i in range(start, X.shape[0], 100):
        est.partial_fit(X[i:i + 100])
    return est


@pytest.mark.parametrize("dtype,k,sequence", [
    (np.float64, 120, "fit+partial"), (np.float64, -120, "fit+partial"),
    (np.float32, 40, "fit+partial"), (np.float32, -40, "fit+partial"),
    (np.float64, 600, "fit+partial"), (np.float64, -600, "fit+partial"),
    (np.float64, 600, "partial"), (np.float64, -600, "partial")])
def test_minibatch_learns_the_atoms_of_the_unscaled_data(signals, dtype, k, sequence):
    """X times 2**k (alpha too) gives exactly the atoms of X: fit works in
    the units of X scaled into range, and every later partial_fit batch is
    scaled by the same exact power of two (2**+-120 and 2**+-40 float32:
    fit scales, the batches alone would not; 2**+-600: both must). The
    unscaled run is the reference (scaling by a power of two is exact)."""
    X = signals[0].astype(dtype)
    base = _minibatch_sequence(X, 0.3, sequence)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        scaled = _minibatch_sequence(np.ldexp(X, k), np.ldexp(0.3, k), sequence)
    assert scaled.components_.dtype == dtype
    assert_array_equal(scaled.components_, base.components_)
    assert (scaled.n_steps_, scaled.n_reinit_) == (base.n_steps_, base.n_reinit_)


@pytest.mark.parametrize("change", [{"alpha": 0.6},
                                    {"alpha": 0.15, "positive_code": True}])
def test_minibatch_partial_fit_reads_its_parameters_on_every_call(change):
    """set_params between partial_fit calls takes effect at the next call, as
    in scikit-learn's MiniBatchDictionaryLearning (which reads alpha and
    positive_code on every call): from the same D0, the same batches and the
    same change after the first, the dictionaries agree to 1e-6 (its
    coordinate descent's tolerance; measured 4e-8 and 6e-8). Ignoring the
    change leaves them 0.15 and 0.25 apart.

    scikit-learn codes the batches with sparse_encode's Lasso, at tol=1e-8
    from 1.8 on but at Lasso's default 1e-4 before (not a parameter: the
    dictionaries were 4.5e-4 and 6.4e-4 apart on 1.7.2): its codes are at tol=1e-8 on
    every version (conftest.sklearn_sparse_encode_tol, a no-op from 1.8 on)."""
    X, _, _ = ref.make_dictionary_problem(n_samples=400, n_features=20, n_atoms=30,
                                          noise=0.05, seed=6)
    D0 = initial_dictionary(X, 30, np.random.RandomState(1))
    ours = MiniBatchDictionaryLearning(30, alpha=0.3, dict_init=D0, n_jobs=1)
    theirs = SkMiniBatch(30, alpha=0.3, fit_algorithm="cd", dict_init=D0.copy(),
                         transform_max_iter=100_000, random_state=0)
    with warnings.catch_warnings(), sklearn_sparse_encode_tol() as tols:
        warnings.simplefilter("ignore")         # scikit-learn's ConvergenceWarnings
        for i in range(4):
            if i == 1:
                ours.set_params(**change)
                theirs.set_params(**change)
            ours.partial_fit(X[100 * i:100 * (i + 1)])
            theirs.partial_fit(X[100 * i:100 * (i + 1)])
    assert tols and set(tols) == {SPARSE_ENCODE_LASSO_TOL}, tols
    assert ours.n_steps_ == theirs.n_steps_ == 4 and ours.n_reinit_ == 0
    assert_allclose(ours.components_, theirs.components_, atol=1e-6)


def test_minibatch_positive_dict_set_between_partial_fits(signals):
    """positive_dict=True after a first partial_fit: the next call projects the
    atoms on the non-negative orthant (their negative entries set to 0, as
    for a dict_init) and takes the constrained dictionary step. Reference:
    the two steps of the online algorithm written out with the NumPy
    reference solver and block coordinate descent of tests/reference.py
    (scikit-learn's forgetting factor: 1/101 and 101/201 for batches of
    100)."""
    X, _ = signals
    X1, X2 = X[:100], X[100:200]
    D0 = initial_dictionary(X, 16, np.random.RandomState(2))
    est = MiniBatchDictionaryLearning(16, alpha=0.3, dict_init=D0, n_jobs=1)
    est.partial_fit(X1)
    est.set_params(positive_dict=True)
    est.partial_fit(X2)
    Z1 = ref.solve_exact(X1, D0, 0.3)
    A, B = Z1.T @ Z1 / 100, Z1.T @ X1 / 100
    D1 = np.maximum(ref.dictionary_bcd(D0, A, B), 0)
    Z2 = ref.solve_exact(X2, D1, 0.3)
    A = A * 101 / 201 + Z2.T @ Z2 / 100
    B = B * 101 / 201 + Z2.T @ X2 / 100
    D2 = ref.dictionary_bcd(D1, A, B, positive=True)
    assert est.n_reinit_ == 0 and np.all(est.components_ >= 0)
    assert_allclose(est.components_, D2 / np.linalg.norm(D2, axis=1, keepdims=True),
                    atol=1e-7)


def test_minibatch_partial_fit_validates_and_applies_fit_algorithm(signals):
    """fit_algorithm too is read on every partial_fit: a bad value is refused,
    a new one codes the next batches."""
    X, _ = signals
    est = MiniBatchDictionaryLearning(16, alpha=0.3, random_state=0, n_jobs=1)
    est.partial_fit(X[:100])
    before = est.components_.copy()
    with pytest.raises(InvalidParameterError, match="The 'fit_algorithm' parameter of "
                                                    "MiniBatchDictionaryLearning"):
        est.set_params(fit_algorithm="lars").partial_fit(X[100:200])
    # the refused call changed nothing
    assert_array_equal(est.components_, before)
    assert est.n_steps_ == 1 and est._state.n_steps == 1
    est.set_params(fit_algorithm="slista").partial_fit(X[100:200])
    assert est._state.coder.name == "slista"
    est.set_params(fit_algorithm="cd").partial_fit(X[200:300])
    assert est._state.coder.name == "cd" and est.n_steps_ == 3


def test_dictionary_learners_float32_and_positive(signals):
    X, _ = signals
    X32 = np.abs(X).astype(np.float32)
    for cls in (DictionaryLearning, MiniBatchDictionaryLearning):
        est = cls(n_components=10, alpha=0.3, max_iter=3, positive_code=True,
                  positive_dict=True, random_state=0, n_jobs=1).fit(X32)
        Z = est.transform(X32)
        assert est.components_.dtype == np.float32 and Z.dtype == np.float32
        assert np.all(est.components_ >= 0) and np.all(Z >= 0)
        assert_allclose(np.linalg.norm(est.components_, axis=1), 1, rtol=1e-6)


def test_dictionary_learners_slista_fit_algorithm(signals):
    X, _ = signals
    est = MiniBatchDictionaryLearning(n_components=16, alpha=0.3, max_iter=2,
                                      fit_algorithm="slista", batch_size=100,
                                      random_state=0, n_jobs=1).fit(X)
    exact = MiniBatchDictionaryLearning(n_components=16, alpha=0.3, max_iter=2,
                                        batch_size=100, random_state=0, n_jobs=1).fit(X)
    # both transform exactly; the network's dictionary codes X almost as well
    assert -est.score(X) <= 1.05 * -exact.score(X)


def test_dictionary_learners_messages(signals):
    X, _ = signals
    for cls in (DictionaryLearning, MiniBatchDictionaryLearning):
        name = cls.__name__
        for param, value in [("n_components", 0), ("alpha", -1.0), ("max_iter", 0),
                             ("tol", -1.0), ("fit_algorithm", "lars"),
                             ("transform_algorithm", "omp"), ("transform_alpha", -1.0),
                             ("n_jobs", 0), ("positive_dict", "yes"), ("callback", 3)]:
            with pytest.raises(InvalidParameterError,
                               match=f"The '{param}' parameter of {name}"):
                cls(**{param: value}).fit(X)
        with pytest.raises(ValueError, match=r"dict_init must have shape \(n_components, "
                                             r"n_features\) = \(5, 12\)"):
            cls(n_components=5, dict_init=np.ones((5, 3))).fit(X)
        with pytest.raises(NotFittedError):
            cls().transform(X)
    with pytest.raises(InvalidParameterError, match="The 'batch_size' parameter"):
        MiniBatchDictionaryLearning(batch_size=0).fit(X)


def test_dictionary_learners_verbose_and_callback(signals, capsys):
    X, _ = signals
    seen = []
    DictionaryLearning(n_components=8, alpha=0.3, max_iter=3, tol=0, verbose=True,
                       callback=lambda info: seen.append(info["iteration"]),
                       random_state=0, n_jobs=1).fit(X)
    out = capsys.readouterr().out
    assert out.count("[DictionaryLearning] iteration") == 3 and seen == [0, 1, 2]
    est = MiniBatchDictionaryLearning(n_components=8, alpha=0.3, max_iter=3, batch_size=100,
                                      callback=lambda info: info["step"] == 4,
                                      random_state=0, n_jobs=1).fit(X)
    assert est.n_steps_ == 4 and est.n_iter_ == 1
    # one line an epoch, printed when the epoch ends (3 epochs of 2 batches)
    est = MiniBatchDictionaryLearning(n_components=8, alpha=0.3, max_iter=3, tol=0,
                                      batch_size=X.shape[0] // 2 + 1, verbose=True,
                                      random_state=0, n_jobs=1).fit(X)
    lines = capsys.readouterr().out.splitlines()
    assert est.n_steps_ == 6 and len(est.objective_) == 3
    assert [line.split(" mean objective")[0] for line in lines] == [
        f"[MiniBatchDictionaryLearning] iteration {k}:" for k in (1, 2, 3)]
    assert [f"({2 * k} dictionary steps" in line for k, line in zip((1, 2, 3), lines)] == [True] * 3
    assert [float(line.split("mean objective ")[1].split()[0]) for line in lines] == \
        pytest.approx(est.objective_, rel=1e-9)


def test_dictionary_learner_in_pipeline_and_grid_search(digits):
    import fastlista

    assert fastlista.DictionaryLearning is DictionaryLearning
    assert fastlista.MiniBatchDictionaryLearning is MiniBatchDictionaryLearning
    X, y, _ = digits
    Xtr, ytr, Xte, yte = X[:800], y[:800], X[800:1100], y[800:1100]
    learner = MiniBatchDictionaryLearning(n_components=40, alpha=0.2, max_iter=2,
                                          batch_size=100, random_state=0, n_jobs=1)
    pipe = make_pipeline(learner, LogisticRegression(max_iter=3000)).fit(Xtr, ytr)
    coder = clone(learner).fit(Xtr)
    clf = LogisticRegression(max_iter=3000).fit(coder.transform(Xtr), ytr)
    assert_array_equal(pipe.predict(Xte), clf.predict(coder.transform(Xte)))
    assert pipe.score(Xte, yte) > 0.85
    # GridSearchCV scores a learner by -mean Lasso objective (its score)
    est = DictionaryLearning(n_components=20, max_iter=3, random_state=0, n_jobs=1)
    grid = {"alpha": [0.1, 0.5]}
    search = GridSearchCV(est, grid, cv=KFold(2)).fit(X[:300])
    manual = []
    for alpha in grid["alpha"]:
        scores = [clone(est).set_params(alpha=alpha).fit(X[:300][tr]).score(X[:300][te])
                  for tr, te in KFold(2).split(X[:300])]
        manual.append(np.mean(scores))
    assert_allclose(search.cv_results_["mean_test_score"], manual, rtol=1e-12)


# ---------------------------------------------------------------------------
# fuzz: partial_fit sequences at any magnitude (hypothesis, derandomised for
# CI; FASTLISTA_FUZZ=long for a long random run, conftest.fuzz_settings)
# ---------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import event, example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastlista  # noqa: E402
from conftest import fuzz_settings  # noqa: E402

MINIBATCH_FUZZ = fuzz_settings("minibatch", 2000)
#: The documented units threshold (docs/dictionary.md, "Units"): a batch more
#: than 2**+-100 (float32 2**+-30) from the state's units moves them or is
#: coded in its own. Written out, not read from fastlista.dictionary.
UNITS_LIMIT = {np.dtype(np.float64): 100, np.dtype(np.float32): 30}
#: Per dtype: the largest |k| of a batch scaled by 2**k, the largest |c| of
#: the common extra scaling 2**c, and the largest spread of the magnitudes of
#: the data (and alpha) for which exact equivariance is asserted whatever the
#: units (see the test). The drawn signals are multiples of 2**-6 below 4 in
#: magnitude (at most 8 significant bits), so 2**(k + c) times them is exact
#: and normal: float64 up to 2**(+-900 + 2), float32 2**(-126) .. 2**122.
MINIBATCH_RANGES = {np.dtype(np.float64): (700, 200, 200),
                    np.dtype(np.float32): (100, 20, 60)}
N_FEATURES_FUZZ = 5


@st.composite
def minibatch_sequences(draw):
    """A MiniBatchDictionaryLearning run: optionally ``fit``, then 1 to 5
    ``partial_fit`` batches, each of signals times 2**k (k near 0, near the
    units threshold from 1 or from the previous batch's magnitude, or
    anywhere in range), some all zero, some after a ``set_params``."""
    dtype = np.dtype(draw(st.sampled_from(["float64", "float32"])))
    limit = UNITS_LIMIT[dtype]
    far, shift, _ = MINIBATCH_RANGES[dtype]
    # the signals' largest magnitude is mostly in [2, 4) (exponent 2):
    # k = +-limit + [-5, 2] puts it just inside or just beyond 2**+-limit
    near_limit = st.tuples(st.sampled_from([-limit, limit]), st.integers(-5, 2)).map(sum)

    def exponent(previous):
        k = draw(st.one_of(st.integers(-3, 3), near_limit,
                           near_limit.map(lambda d: previous + d),
                           st.integers(-far, far)))
        return int(np.clip(k, -far, far))

    n_atoms = draw(st.integers(4, 6))
    calls, previous = [], 0
    if draw(st.booleans()):
        previous = exponent(previous)
        calls.append(dict(method="fit", n=draw(st.integers(6, 20)), k=previous,
                          zero=draw(st.integers(0, 6)) == 0, change={}))
    for _ in range(draw(st.integers(1, 5))):
        previous = exponent(previous)
        change = {}
        if calls:
            kind = draw(st.sampled_from(["none", "none", "alpha", "positive_code",
                                         "positive_dict"]))
            if kind == "alpha":
                change = {"alpha": (draw(st.sampled_from([0.0, 0.05, 0.2, 1.0])),
                                    draw(st.integers(0, len(calls) - 1)))}
            elif kind != "none":
                change = {kind: draw(st.booleans())}
        calls.append(dict(method="partial_fit", n=draw(st.integers(3, 20)), k=previous,
                          zero=draw(st.integers(0, 5)) == 0, change=change))
    dict_init = draw(st.sampled_from(["none", "random", "zero_atom"]))
    if calls[0]["n"] < n_atoms and dict_init == "none":
        dict_init = "random"        # the first data initialises the atoms otherwise
    return dict(
        dtype=dtype, n_atoms=n_atoms, calls=calls, dict_init=dict_init,
        # alpha relative to the magnitude of one of the calls' data
        alpha=(draw(st.sampled_from([0.0, 0.05, 0.2, 1.0])),
               draw(st.integers(0, len(calls) - 1))),
        positive_code=draw(st.booleans()), positive_dict=draw(st.booleans()),
        max_iter=draw(st.integers(1, 2)), batch_size=draw(st.integers(3, 8)),
        c=draw(st.one_of(st.integers(-3, 3), st.integers(-shift, shift))),
        seed=draw(st.integers(0, 2**16)))


def _minibatch_signals(spec):
    """The unscaled signals of every call (multiples of 2**-6, |x| < 4)."""
    rng = np.random.RandomState(spec["seed"])
    out = []
    for call in spec["calls"]:
        X = np.clip(np.round(64 * rng.standard_normal((call["n"], N_FEATURES_FUZZ))) / 64,
                    -3.75, 3.75)
        out.append(0 * X if call["zero"] else X)
    return out


def _run_minibatch_sequence(spec, signals, c):
    """The calls of spec with every signal times 2**(k + c) and every alpha
    times 2**c. Returns the estimator."""
    dtype, ks = spec["dtype"], [call["k"] for call in spec["calls"]]

    def alpha(rel_ref):
        rel, ref = rel_ref
        return float(np.ldexp(rel, ks[ref] + c))

    dict_init = None
    if spec["dict_init"] != "none":
        dict_init = np.random.RandomState(spec["seed"] + 1).standard_normal(
            (spec["n_atoms"], N_FEATURES_FUZZ))
        if spec["dict_init"] == "zero_atom":
            dict_init[0] = 0
    est = MiniBatchDictionaryLearning(
        spec["n_atoms"], alpha=alpha(spec["alpha"]), max_iter=spec["max_iter"], tol=0,
        batch_size=spec["batch_size"], dict_init=dict_init, random_state=spec["seed"],
        positive_code=spec["positive_code"], positive_dict=spec["positive_dict"], n_jobs=1)
    for call, X in zip(spec["calls"], signals):
        change = dict(call["change"])
        if "alpha" in change:
            change["alpha"] = alpha(change["alpha"])
        est.set_params(**change)
        Xs = np.ldexp(X, call["k"] + c).astype(dtype)
        # the test's own premise: the scaled signals are exact
        assert_array_equal(np.ldexp(Xs.astype(np.float64), -(call["k"] + c)), X)
        getattr(est, call["method"])(Xs)
    return est


def _equivariance_case(spec, signals):
    """Why the run scaled by 2**c must give exactly the atoms of the
    unscaled run (None: the documented rules do not guarantee it).

    The units rules (docs/dictionary.md) decide from the magnitude exponent
    t of each batch against the absolute threshold 2**+-L: the state takes
    the units of the first data (0 when |t| <= L, else t) and moves or
    codes a batch in its own units only relative to them. So:

    * "same units": when the first non-zero data is beyond 2**+-L in both
      runs (or c = 0, or all data is zero), the scaled run's units are the
      unscaled run's plus c at every step, every batch is scaled into them
      to the same bits, alpha too: the same computation, the same atoms.
    * "within 2**+-S": otherwise the runs' units differ (one run works in 0,
      the other in t + c), and every batch is coded on data (and alpha)
      differing by an exact power of two, and the statistics are moved by
      different powers of two. That is exact (the documented "X times a
      power of two gives exactly the atoms of X", on which the deterministic
      test above rests: its unscaled run codes X, the scaled one X / 4) as
      long as no value leaves the normal range: guaranteed when the
      magnitudes of all the data and of alpha lie within 2**S of each
      other (float64: the statistics are then moved by at most 2**(-2 (S
      + L + 2)) = 2**-604, far from 2**-1022; float32: alpha in the units
      stays within 2**+-(S + L + 5) = 2**+-95 of 1, inside float32's normal
      range, and the statistics are float64).
    * beyond (batches 2**S apart or more in runs of different units): a
      share of the statistics scaled far down may underflow, or become
      subnormal, at a different point in the two runs; the documentation
      only says what underflows is below the rounding of the statistics,
      not that the bits agree. Not checked.
    """
    dtype, c = spec["dtype"], spec["c"]
    limit = UNITS_LIMIT[dtype]
    tops = [int(np.frexp(np.max(np.abs(X)))[1]) + call["k"]
            for call, X in zip(spec["calls"], signals) if X.any()]
    if c == 0 or not tops:
        return "same units"
    if abs(tops[0]) > limit and abs(tops[0] + c) > limit:
        return "same units"
    ks = [call["k"] for call in spec["calls"]]
    alphas = [spec["alpha"]] + [call["change"]["alpha"] for call in spec["calls"]
                                if "alpha" in call["change"]]
    exps = tops + [int(np.frexp(rel)[1]) + ks[ref] for rel, ref in alphas if rel > 0]
    if max(exps) - min(exps) <= MINIBATCH_RANGES[dtype][2]:
        return "within 2**+-S"
    return None


@MINIBATCH_FUZZ
@given(spec=minibatch_sequences())
# units moved in one run only: the unscaled run's batches (largest
# magnitudes 2**1 and 2**99, exponents 2 and 100) both stay in units 0; the
# scaled run's second (exponent 101) moves them to 2**101, its statistics
# rescaled by 2**-202 (found by the long fuzz against a state that moved its
# units without rescaling the statistics)
@example(spec=dict(
    dtype=np.dtype(np.float64), n_atoms=4,
    calls=[dict(method="partial_fit", n=3, k=0, zero=False, change={}),
           dict(method="partial_fit", n=3, k=98, zero=False, change={}),
           dict(method="partial_fit", n=3, k=0, zero=True, change={})],
    dict_init="random", alpha=(0.0, 0), positive_code=False, positive_dict=False,
    max_iter=1, batch_size=3, c=1, seed=0))
def test_fuzz_minibatch_partial_fit_at_any_magnitude(spec):
    """Sequences of fit and partial_fit calls whose batches lie anywhere in
    the float range (near 1, near the 2**+-100 (float32 2**+-30) units
    threshold, or far: 2**+-700, float32 2**+-100), with all-zero batches,
    dict_init or not, and set_params of alpha, positive_code and
    positive_dict between calls (docs/reliability.md, "Dictionary
    learning"):

    1. no RuntimeWarning, no exception; finite atoms of unit norm (every
       row: zero atoms are replaced by random unit atoms), non-negative when
       the last call had positive_dict, in the dtype of the data;
    2. the same calls with every signal and alpha times 2**c give exactly
       the same atoms, whenever the documented rules guarantee it (see
       _equivariance_case)."""
    dtype, c = spec["dtype"], spec["c"]
    signals = _minibatch_signals(spec)
    # steps: fit's max_iter (<= 2: tol=0 cannot stop it earlier) epochs of
    # ceil(n / batch_size) mini-batches, and one a partial_fit
    n_steps = sum(spec["max_iter"] * -(-call["n"] // spec["batch_size"])
                  if call["method"] == "fit" else 1 for call in spec["calls"])
    runs = []
    for shift in (0, c):
        with warnings.catch_warnings():
            # a code may stop short of its certificate (ConvergenceWarning: its
            # rounding, at an alpha far below the data); never a RuntimeWarning
            # (overflow, underflow, invalid value)
            warnings.simplefilter("ignore", fastlista.ConvergenceWarning)
            warnings.simplefilter("error", RuntimeWarning)
            est = _run_minibatch_sequence(spec, signals, shift)
        D = est.components_
        assert D.dtype == dtype and D.shape == (spec["n_atoms"], N_FEATURES_FUZZ)
        assert np.all(np.isfinite(D))
        norms = np.linalg.norm(D.astype(np.float64), axis=1)
        assert_allclose(norms, 1, rtol=0, atol=1e-6 if dtype == np.float32 else 1e-12)
        if est.positive_dict:
            assert np.all(D >= 0)
        assert est.n_steps_ == n_steps
        runs.append(est)
    base, scaled = runs
    case = _equivariance_case(spec, signals)
    event(f"{dtype.name}, equivariance: {case or 'not guaranteed, not checked'}")
    if case is not None:
        assert_array_equal(scaled.components_, base.components_)
        assert (scaled.n_steps_, scaled.n_reinit_) == (base.n_steps_, base.n_reinit_)


@pytest.mark.parametrize("make", [
    lambda D: LassoSparseCoder(D, alpha=0.3),
    lambda D: LearnedSparseCoder(D, alpha=0.3, n_layers=3, max_iter=5),
    lambda D: DictionaryLearning(n_components=8, alpha=0.3, max_iter=3, random_state=0),
    lambda D: MiniBatchDictionaryLearning(n_components=8, alpha=0.3, max_iter=2,
                                          batch_size=20, random_state=0)])
def test_score_with_pandas_output(make):
    """set_output(transform="pandas") (scikit-learn's API, pandas installed
    by the test extra) changes what transform returns, not score: it was an
    AttributeError, and GridSearchCV scored every candidate NaN."""
    pd = pytest.importorskip("pandas")
    X, D = problem(seed=11)
    est = make(D).fit(X)
    expected = est.score(X)
    # (the coders' dictionary is D, the learners' components_)
    atoms = getattr(est, "components_", D)
    assert_allclose(expected, -mean_objective(X, atoms, 0.3, est.transform(X)), rtol=1e-12)
    est.set_output(transform="pandas")
    assert isinstance(est.transform(X), pd.DataFrame)
    assert est.score(X) == expected
    search = GridSearchCV(clone(est), {"alpha": [0.2, 0.3]}, cv=2).fit(X)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


@pytest.mark.parametrize("cls", [DictionaryLearning, MiniBatchDictionaryLearning])
@pytest.mark.parametrize("positive", [False, True])
def test_transform_at_alpha_zero_gives_the_least_squares_codes(cls, positive):
    """transform_alpha=0: the least-squares codes fit uses at alpha=0
    (numpy.linalg.lstsq, or scipy's nnls with positive_code), without a
    ConvergenceWarning; it ran solve_lasso to its max_iter and warned."""
    from scipy.optimize import nnls
    X, _ = problem(n_samples=40, n_features=12, seed=3)
    est = cls(n_components=6, alpha=0.2, max_iter=2, random_state=0,
              positive_code=positive, transform_alpha=0.0).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Z = est.transform(X)
    D = est.components_
    if positive:
        expected = np.array([nnls(D.T, x)[0] for x in X])
    else:
        expected = np.linalg.lstsq(D.T, X.T, rcond=None)[0].T
    assert_allclose(Z, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", [DictionaryLearning, MiniBatchDictionaryLearning])
def test_learners_float32_transform_tol_is_certifiable(digits, cls):
    """An explicit float32 transform_tol of 1e-8 ran max_iter on 297 of 300
    samples and warned, where LassoSparseCoder's tol=1e-8 is taken as
    1e-6: the same rule (codes certified to 1e-6 by the NumPy reference
    gap in long double, without a warning)."""
    X, _, _ = digits
    X32 = X[:300].astype(np.float32)
    est = cls(n_components=20, alpha=0.2, max_iter=2, random_state=0,
              transform_tol=1e-8).fit(X32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        Z = est.transform(X32)
    D32 = est.components_.astype(np.float32)
    half = 0.5 * np.einsum("ij,ij->i", X32, X32, dtype=np.float64)
    assert np.all(ref.duality_gap_robust(X32, D32, 0.2, Z) <= 1e-6 * half)


@pytest.mark.parametrize("cls", [DictionaryLearning, MiniBatchDictionaryLearning])
def test_learners_take_scikit_learns_lasso_cd(cls):
    """transform_algorithm="lasso_cd", scikit-learn's name for the same
    Lasso by coordinate descent, was refused: it is "cd" (the same codes,
    bit for bit, and scikit-learn's Lasso's within the tolerance)."""
    X, _ = problem(n_samples=40, n_features=12, seed=3)
    est = cls(n_components=6, alpha=0.2, max_iter=2, random_state=0,
              transform_algorithm="lasso_cd", transform_tol=1e-12).fit(X)
    Z = est.transform(X)
    assert_array_equal(Z, clone(est).set_params(transform_algorithm="cd").fit(X).transform(X))
    assert_allclose(Z, lasso_oracle(X, est.components_, 0.2), atol=1e-6)


def test_estimator_warnings_point_at_the_caller():
    """A ConvergenceWarning of LassoSparseCoder pointed at estimators.py (or
    scikit-learn's set_output wrapper), not at the user's call."""
    X, D = problem(n_samples=5, seed=3)
    coder = LassoSparseCoder(D, alpha=0.01, method="ista", max_iter=2)
    for call in (lambda: coder.fit_transform(X), lambda: coder.fit(X).transform(X)):
        with pytest.warns(ConvergenceWarning) as record:
            call()
        assert [w.filename for w in record] == [__file__]


@pytest.mark.parametrize("make", [
    lambda rs: LearnedSparseCoder(_dictionary(3), n_layers=2, max_iter=2, random_state=rs),
    lambda rs: DictionaryLearning(3, max_iter=2, random_state=rs),
    lambda rs: MiniBatchDictionaryLearning(3, max_iter=2, random_state=rs),
], ids=["LearnedSparseCoder", "DictionaryLearning", "MiniBatchDictionaryLearning"])
def test_bad_random_state_names_the_estimator(make):
    """The random_state message was the only parameter message that did not
    name the estimator, as every other one does."""
    est = make(np.random.default_rng(0))
    X, _ = problem(n_samples=20, n_features=3, seed=1)
    with pytest.raises(InvalidParameterError,
                       match=rf"^The 'random_state' parameter of {type(est).__name__} must"):
        est.fit(X)


def _fitted_state(est):
    """The estimator's attributes, arrays copied (to compare after a call)."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(est).items()}


def _assert_same_state(est, before):
    after = vars(est)
    assert after.keys() == before.keys()
    for k, v in before.items():
        if isinstance(v, np.ndarray):
            assert_array_equal(after[k], v)
        elif k not in ("_state", "network_"):
            assert after[k] == v or after[k] is v, k
        else:
            assert after[k] is v, k


@pytest.mark.parametrize("name", ["LassoSparseCoder", "LearnedSparseCoder",
                                  "DictionaryLearning", "MiniBatchDictionaryLearning"])
def test_a_fit_that_raises_leaves_the_estimator_as_it_was(monkeypatch, name):
    """A fitted estimator (10 features) fit again on 12-feature signals, the
    fit raising after the validation reset n_features_in_ (a dictionary of
    10 features for the coders; a KeyboardInterrupt from the callback, or
    from the training, for the learners): every attribute is as before, and
    transform works as before. Before, n_features_in_ said 12 beside a
    10-feature dictionary, and transform refused both inputs."""
    rng = np.random.default_rng(0)
    X1, X2 = rng.standard_normal((300, 10)), rng.standard_normal((300, 12))
    D = rng.standard_normal((8, 10))
    make = {
        "LassoSparseCoder": lambda: LassoSparseCoder(D, alpha=0.1),
        "LearnedSparseCoder": lambda: LearnedSparseCoder(D, alpha=0.1, n_layers=3,
                                                         max_iter=3),
        "DictionaryLearning": lambda: DictionaryLearning(8, alpha=0.1, max_iter=3,
                                                         random_state=0, n_jobs=1),
        "MiniBatchDictionaryLearning": lambda: MiniBatchDictionaryLearning(
            8, alpha=0.1, max_iter=2, random_state=0, n_jobs=1),
    }[name]
    est = make().fit(X1)
    Z = est.transform(X1[:5])
    before = _fitted_state(est)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if name == "LearnedSparseCoder":
        # the coder's dictionary has 10 features: fit on 12 refuses them after
        # the validation; so does a fit on 10 whose training is interrupted
        monkeypatch.setattr(fastlista.Lista, "fit", interrupt)
        with pytest.raises(KeyboardInterrupt):
            est.fit(X1)
        _assert_same_state(est, before)
    if name in ("LassoSparseCoder", "LearnedSparseCoder"):
        with pytest.raises(ValueError, match="12 features"):
            est.fit(X2)
    else:
        est.set_params(callback=interrupt)
        with pytest.raises(KeyboardInterrupt):
            est.fit(X2)
        est.set_params(callback=None)
        before["callback"] = None
    _assert_same_state(est, before)
    assert_array_equal(est.transform(X1[:5]), Z)


@pytest.mark.parametrize("name, make", [
    ("dictionary", lambda d: LassoSparseCoder(d)),
    ("dictionary", lambda d: LearnedSparseCoder(d, n_layers=2, max_iter=1)),
    ("dict_init", lambda d: DictionaryLearning(n_components=1, dict_init=d, max_iter=1)),
    ("dict_init", lambda d: MiniBatchDictionaryLearning(n_components=1, dict_init=d,
                                                        max_iter=1)),
], ids=["LassoSparseCoder", "LearnedSparseCoder", "DictionaryLearning",
        "MiniBatchDictionaryLearning"])
def test_one_dimensional_dictionary_of_an_estimator_is_told_its_shape(name, make):
    """A 1-D dictionary (or dict_init) of an estimator is told the
    dictionary's shape, as solve_lasso's and Lista's D and learn_dictionary's
    D0 are, not scikit-learn's hint about a single feature or a single
    sample: the twelfth pass gave the hint to the names "D" and "D0" only."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 4))
    with pytest.raises(ValueError, match=re.escape(
            f"A dictionary has shape (n_atoms, n_features): one atom is "
            f"{name}.reshape(1, -1).")) as info:
        make(np.ones(4)).fit(X)
    assert "single feature" not in str(info.value)
