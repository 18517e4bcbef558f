"""fastlista.dictionary: learn_dictionary, its two steps and its edge cases.

References independent of fastlista: the NumPy block coordinate descent,
Lasso solver (coordinate descent to a relative gap of 1e-15) and signals of
a known dictionary of ``tests/reference.py``; scikit-learn's
``DictionaryLearning`` and ``MiniBatchDictionaryLearning``. Every learning
runs on one thread (``n_jobs=1``) with fixed seeds: results are compared
with references, never across thread counts.
"""
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import reference as ref
import fastlista
from conftest import SPARSE_ENCODE_LASSO_TOL, sklearn_sparse_encode_tol
from fastlista import InvalidParameterError
from fastlista.dictionary import (BATCH_PASSES, DictionaryResult, initial_dictionary,
                                  learn_dictionary, reinitialise, update_dictionary)

NJ = 1


def unit_norms(D):
    return np.linalg.norm(np.asarray(D, np.float64), axis=1)


def exact_objective(X, D, lmbd, positive=False):
    """Mean Lasso objective of X coded exactly with D (fastlista.solve_lasso to
    a relative gap of 1e-12, itself tested against the references), by the
    reference objective."""
    Z = fastlista.solve_lasso(X, D, lmbd, tol=1e-12, positive=positive,
                              n_jobs=NJ).codes
    return float(np.mean(ref.objective(X, D, lmbd, Z)))


@pytest.fixture(scope="module")
def known():
    """4000 signals of 3 atoms of a known 30 x 20 dictionary, noise 0.01."""
    X, D, _ = ref.make_dictionary_problem(n_samples=4000, seed=0)
    return X, D


# ---------------------------------------------------------------------------
# the dictionary step against the NumPy reference
# ---------------------------------------------------------------------------

def _statistics(seed, n_samples=200, n_atoms=12, n_features=7, unused=(3,),
                positive_codes=False):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n_samples, n_atoms)) * (rng.random((n_samples, n_atoms)) < 0.3)
    if positive_codes:
        Z = np.abs(Z)
    Z[:, list(unused)] = 0
    X = rng.standard_normal((n_samples, n_features))
    D = rng.standard_normal((n_atoms, n_features))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    return D, Z.T @ Z, Z.T @ X


@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("n_passes", [1, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dictionary_step_equals_numpy_reference(seed, n_passes, positive):
    D, A, B = _statistics(seed, positive_codes=positive)
    if positive:
        D = np.abs(D)
    expected = ref.dictionary_bcd(D, A, B, n_passes=n_passes, positive=positive)
    got = D.copy()
    unused = update_dictionary(got, A, B, positive=positive, n_passes=n_passes)
    assert_array_equal(unused, ~(np.diagonal(A) > 0))
    assert_allclose(got, expected, rtol=0, atol=1e-12)
    # the unused atom is untouched; every atom in the ball (non-negative)
    assert_array_equal(got[3], D[3])
    assert np.all(unit_norms(got) <= 1 + 1e-12)
    if positive:
        assert np.all(got >= 0)
    # an exact block minimisation never increases the surrogate
    assert ref.dictionary_surrogate(got, A, B) <= ref.dictionary_surrogate(D, A, B) + 1e-12


def test_dictionary_step_leaves_an_atom_whose_minimiser_is_zero():
    """B_k - sum_j A_kj d_j = 0: the minimiser is 0; the atom is kept (no
    zero atom is ever created)."""
    D = np.eye(3)
    A = np.eye(3)
    B = np.zeros((3, 3))
    got = D.copy()
    update_dictionary(got, A, B)
    assert_array_equal(got, D)
    assert_array_equal(ref.dictionary_bcd(D, A, B), D)


def test_first_batch_iteration_equals_reference():
    """One batch iteration from D0: exact codes (reference solver), their
    statistics, one dictionary step of the reference BCD, the objective."""
    X, _, _ = ref.make_dictionary_problem(n_samples=150, n_features=10, n_atoms=15,
                                          noise=0.05, seed=3)
    lmbd = 0.3
    D0 = initial_dictionary(X, 15, np.random.RandomState(0))
    seen = []
    res = learn_dictionary(X, 15, lmbd, method="batch", max_iter=1, D0=D0, tol=0,
                           code_tol=1e-13, n_jobs=NJ,
                           callback=lambda info: seen.append(info["D"]))
    Z = ref.solve_exact(X, D0, lmbd)
    D1 = ref.dictionary_bcd(D0, Z.T @ Z, Z.T @ X, n_passes=BATCH_PASSES)
    assert res.n_iter == res.n_steps == 1 and res.n_reinit == 0
    assert_allclose(seen[0], D1, atol=1e-7)
    assert_allclose(res.D, D1 / np.maximum(unit_norms(D1), 1e-300)[:, None], atol=1e-7)
    assert_allclose(res.objective[0], np.mean(ref.objective(X, D1, lmbd, Z)), rtol=1e-9)


# ---------------------------------------------------------------------------
# batch: the objective never increases
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["plain", "positive", "reinit", "float32"])
def test_batch_objective_never_increases(case):
    X, _, _ = ref.make_dictionary_problem(n_samples=400, n_features=12, n_atoms=20,
                                          noise=0.1, seed=4)
    kwargs = dict(method="batch", max_iter=15, tol=0, n_jobs=NJ, random_state=0)
    lmbd = 0.3
    if case == "positive":
        X = np.abs(X)
        kwargs.update(positive_code=True, positive_dict=True)
    if case == "reinit":
        # two zero atoms and a duplicated one: re-initialised on the way
        D0 = initial_dictionary(X, 20, np.random.RandomState(1))
        D0[[0, 5]] = 0
        D0[7] = D0[6]
        kwargs["D0"] = D0
    if case == "float32":
        X = X.astype(np.float32)
    steps = []
    res = learn_dictionary(X, 20, lmbd, callback=lambda info: steps.append(info["D"]),
                           **kwargs)
    obj = res.objective
    assert obj.shape == (res.n_iter,) and res.n_iter == 15
    assert np.all(np.diff(obj) <= 1e-12 * obj[:-1]), np.diff(obj)
    if case == "reinit":
        assert res.n_reinit >= 2
    # objective[t] is F(Z_t, D_{t+1}) >= min_Z F(Z, D_{t+1}): the exact
    # codes of the dictionary after step t do at least as well
    X64 = X.astype(np.float64)
    for t in (0, 7, 14):
        exact = exact_objective(X64, steps[t], lmbd, positive=case == "positive")
        assert exact <= obj[t] * (1 + 1e-9)
    assert res.D.dtype == X.dtype
    assert_allclose(unit_norms(res.D), 1, rtol=1e-6)
    if case == "positive":
        assert np.all(res.D >= 0)


def test_batch_history_is_the_objective_of_its_codes_and_dictionaries():
    """objective[t] is F(Z_t, D_{t+1}), evaluated from the residuals: signals
    at an offset of 1e7 varying by ~3, where the statistics' form 1/2||x||^2
    - <B, D> + 1/2 <A, D D^T> cancels (it read 6e-8 off, an increase of
    +0.115 and a tol=0 run stopped after 5 of 8 iterations). Reference: the
    codes of every iteration (caught on their way out of the code step) and
    the callback's dictionaries, in long double arithmetic."""
    from fastlista import dictionary

    rng = np.random.RandomState(0)
    X = 1e7 + rng.randn(200, 8) @ rng.randn(8, 8)
    lmbd, codes, dicts = 0.5, [], []
    real = dictionary.code_stats

    def spy(*args, **kwargs):
        Z, stats = real(*args, **kwargs)
        codes.append(Z.copy())
        return Z, stats
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dictionary, "code_stats", spy)
        res = learn_dictionary(X, 10, lmbd, method="batch", max_iter=8, tol=0,
                               random_state=0, n_jobs=NJ,
                               callback=lambda info: dicts.append(info["D"]))
    assert res.n_iter == len(codes) == len(dicts) == 8 and not res.converged
    L = np.longdouble
    expected = []
    for Z, D in zip(codes, dicts):
        R = X.astype(L) - Z.astype(L) @ D.astype(L)
        expected.append(np.mean(0.5 * np.sum(R * R, axis=1)
                                + L(lmbd) * np.sum(np.abs(Z.astype(L)), axis=1)))
    expected = np.array(expected, dtype=L)
    # measured 2.3e-16
    assert np.all(np.abs(res.objective - expected) <= 1e-13 * expected)
    assert np.all(np.diff(res.objective) <= 1e-12 * res.objective[:-1])


# ---------------------------------------------------------------------------
# recovery of a known dictionary
# ---------------------------------------------------------------------------

RECOVERY = {
    # method: (settings, atoms of 30 that must match at |correlation| > 0.99)
    "batch": (dict(method="batch"), 29),
    "online": (dict(method="online", batch_size=64), 28),
}


@pytest.mark.parametrize("method", list(RECOVERY))
def test_recovers_a_known_dictionary(known, method):
    """Measured (seed 0, n_jobs=1): batch, 30 iterations to tol 1e-4: 30 of
    30 atoms above 0.99 (min 0.9995, median 0.9998); online, batches of 64,
    10 epochs to tol 1e-3: 30 of 30 (min 0.9988, median 0.9998)."""
    X, D_true = known
    settings, required = RECOVERY[method]
    res = learn_dictionary(X, 30, 0.3, random_state=0, n_jobs=NJ, **settings)
    corr = ref.match_atoms(res.D, D_true)
    found = int(np.sum(corr > 0.99))
    assert found >= required, (
        f"{method}: {found} of 30 atoms recovered (> 0.99), correlations min "
        f"{corr.min():.4f} median {np.median(corr):.5f}, {res.n_iter} iterations")
    assert res.converged


# ---------------------------------------------------------------------------
# agreement with scikit-learn
# ---------------------------------------------------------------------------

def batch_against_sklearn(n_samples, max_iter, fit_algorithm, **options):
    """scikit-learn's DictionaryLearning (codes by ``fit_algorithm``) and
    fastlista's batch method (``options``), both from the same D0, tol=0,
    on signals of a known dictionary of 15 atoms: (X, lmbd, ours, theirs)."""
    sk = pytest.importorskip("sklearn.decomposition")
    X, _, _ = ref.make_dictionary_problem(n_samples=n_samples, n_features=10, n_atoms=15,
                                          noise=0.05, seed=5)
    lmbd = 0.3
    D0 = initial_dictionary(X, 15, np.random.RandomState(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = sk.DictionaryLearning(15, alpha=lmbd, max_iter=max_iter, tol=0,
                                       fit_algorithm=fit_algorithm, dict_init=D0.copy(),
                                       code_init=np.zeros((len(X), 15))).fit(X)
    ours = learn_dictionary(X, 15, lmbd, method="batch", D0=D0, max_iter=max_iter, tol=0,
                            n_jobs=NJ, **options)
    return X, lmbd, ours, theirs


def test_batch_is_sklearn_dictionary_learning_with_one_pass():
    """From the same D0, with exact codes (scikit-learn's LARS) and one pass
    of block coordinate descent an iteration (dict_passes=1), fastlista's
    batch method is scikit-learn's DictionaryLearning: the dictionaries
    agree to 1e-9 and the objectives of every iteration to 1e-10 relative.
    Measured on 4 seeds: 1e-15 and 2e-15."""
    X, lmbd, ours, theirs = batch_against_sklearn(120, 5, "lars", dict_passes=1)
    assert theirs.n_iter_ == ours.n_iter == 5 and ours.n_reinit == 0
    assert_allclose(ours.D, theirs.components_, atol=1e-9)
    # scikit-learn's error_ is the summed objective of its iterates (codes of
    # the iteration, dictionary after its update): ours is the mean
    assert_allclose(ours.objective, np.asarray(theirs.error_) / len(X), rtol=1e-10)


def test_batch_final_objective_agrees_with_sklearn():
    """Default settings (5 passes of block coordinate descent an iteration)
    against scikit-learn's DictionaryLearning (coordinate descent codes),
    both from the same D0, 10 iterations: the objectives of exact codes with
    the two final dictionaries agree within 1 % (different paths to nearby
    local minima). Measured on 4 seeds at 10 and 30 iterations: within
    0.43 % (and 3e-5 with one pass)."""
    X, lmbd, ours, theirs = batch_against_sklearn(300, 10, "cd")
    F_ours = exact_objective(X, ours.D, lmbd)
    F_theirs = exact_objective(X, theirs.components_, lmbd)
    assert abs(F_ours - F_theirs) <= 0.01 * F_theirs, (F_ours, F_theirs)


def test_online_agrees_with_sklearn_minibatch_dictionary_learning():
    """The same mini-batches in the same order (shuffle=False), the same D0,
    the same forgetting factor and one BCD pass a batch: the dictionaries
    agree to 1e-5 (scikit-learn's codes stop at its coordinate descent's
    tolerance, ours at a gap of 1e-8), and the objectives of held-out
    signals coded exactly with each to 1e-6 relative. Measured: 8e-8 and
    1.5e-9.

    The trajectory of 40 steps amplifies the codes' inaccuracy: scikit-learn
    codes each batch with sparse_encode's Lasso, at tol=1e-8 from 1.8 on but
    at Lasso's default 1e-4 before (a gap up to 1e-4 ||x||^2, not a
    parameter), which left the dictionaries 9e-4 and the objectives 1.1e-5
    apart on 1.7.2. So its codes are at tol=1e-8 on every version
    (conftest.sklearn_sparse_encode_tol, a no-op from 1.8 on), and the
    bounds are those of 1.8+ (with it, 1.7.2 measures the same 8e-8 and
    1.5e-9)."""
    sk = pytest.importorskip("sklearn.decomposition")
    X, _, _ = ref.make_dictionary_problem(n_samples=1000, n_features=20, n_atoms=30,
                                          noise=0.05, seed=6)
    X_test, _, _ = ref.make_dictionary_problem(n_samples=300, n_features=20, n_atoms=30,
                                               noise=0.05, seed=6)
    lmbd = 0.3
    D0 = initial_dictionary(X, 30, np.random.RandomState(1))
    with warnings.catch_warnings(), sklearn_sparse_encode_tol() as tols:
        warnings.simplefilter("ignore")
        theirs = sk.MiniBatchDictionaryLearning(
            30, alpha=lmbd, max_iter=2, batch_size=50, fit_algorithm="cd", tol=0,
            max_no_improvement=None, shuffle=False, dict_init=D0.copy(),
            random_state=0).fit(X)
    assert tols and set(tols) == {SPARSE_ENCODE_LASSO_TOL}, tols
    ours = learn_dictionary(X, 30, lmbd, method="online", D0=D0, max_iter=2, tol=0,
                            batch_size=50, shuffle=False, n_jobs=NJ)
    assert theirs.n_steps_ == ours.n_steps == 40 and ours.n_reinit == 0
    assert_allclose(ours.D, theirs.components_, atol=1e-5)
    F_ours = exact_objective(X_test, ours.D, lmbd)
    F_theirs = exact_objective(X_test, theirs.components_, lmbd)
    assert abs(F_ours - F_theirs) <= 1e-6 * F_theirs


# ---------------------------------------------------------------------------
# re-initialisation of unused atoms
# ---------------------------------------------------------------------------

def test_unused_atom_becomes_the_worst_residual():
    X, _, _ = ref.make_dictionary_problem(n_samples=200, n_features=8, n_atoms=10,
                                          noise=0.05, seed=7)
    lmbd = 0.2
    D0 = initial_dictionary(X, 10, np.random.RandomState(0))
    D0[4] = 0                                     # never used by any code
    seen = []
    res = learn_dictionary(X, 10, lmbd, method="batch", max_iter=1, D0=D0, tol=0,
                           code_tol=1e-13, n_jobs=NJ,
                           callback=lambda info: seen.append(info))
    Z = ref.solve_exact(X, D0, lmbd)
    R = X - Z @ D0
    worst = np.argmax(np.sum(R * R, axis=1))
    r = R[worst] / np.linalg.norm(R[worst])
    assert res.n_reinit == 1 and seen[0]["n_reinit"] == 1
    # re-initialised before the pass over the used atoms, and left alone by
    # it (A_44 = 0): exactly the normalised residual
    assert_allclose(seen[0]["D"][4], r, atol=1e-7)
    assert_allclose(unit_norms(res.D), 1, rtol=1e-12)


def test_tied_worst_residuals_are_the_lowest_indices():
    """Of equally bad signals the lowest-indexed re-initialise the atoms (the
    Dask chunks merge by index: both must agree). +-1 signals (||x||^2 = 8
    for all) at lmbd = 2.7, above every |x . d| of D0 (at most 2.597): every
    code is 0, every atom unused, re-initialised to x / ||x|| of signals 0,
    1, 2, 3 (the old selection took 136, 18, 37, 116). Each pays: the new
    atom's correlation with its signal is ||x|| = 2.83 > lmbd."""
    from fastlista.dictionary import _worst

    assert_array_equal(_worst(np.ones(300), 4), [0, 1, 2, 3])
    norms = np.array([1.0, 3, 2, 3, 2, 2, 0, 3, 2])
    assert_array_equal(_worst(norms, 5), [1, 3, 7, 2, 4])
    assert_array_equal(_worst(norms, 9), [1, 3, 7, 2, 4, 5, 8, 0, 6])
    rng = np.random.RandomState(0)
    X = rng.choice([-1.0, 1.0], size=(300, 8))
    D0 = np.linalg.qr(rng.randn(8, 8))[0][:4]
    assert np.abs(X @ D0.T).max() < 2.7 < np.sqrt(8)
    for method in ("batch", "online"):
        res = learn_dictionary(X, 4, 2.7, method=method, D0=D0, max_iter=2, tol=0,
                               batch_size=300, shuffle=False, n_jobs=NJ)
        assert res.n_reinit >= 4
        assert_allclose(res.D, X[:4] / np.sqrt(8), rtol=0, atol=1e-15)


@pytest.mark.parametrize("method", ["batch", "online"])
def test_fewer_signals_than_atoms(method):
    """5 signals, 8 atoms: the initial dictionary holds every normalised
    signal (and 3 random unit atoms), which is already optimal: each signal
    on its own atom, at code ||x|| - lmbd, costs lmbd ||x|| - lmbd^2 / 2 (the
    closed form, for lmbd < min ||x||). Learning keeps it and stops; no
    atom is re-initialised (a residual of norm lmbd gains nothing). Before,
    such X was refused, and later re-initialisations went on for good."""
    rng = np.random.RandomState(0)
    X = rng.randn(5, 6)
    lmbd = 0.1
    norms = np.linalg.norm(X, axis=1)
    res = learn_dictionary(X, 8, lmbd, method=method, max_iter=50, batch_size=5,
                           code_tol=1e-14, n_jobs=NJ, random_state=0)
    assert res.converged and res.n_iter <= 3 and res.n_reinit == 0
    assert_allclose(res.objective[-1], np.mean(lmbd * norms - lmbd ** 2 / 2), rtol=1e-9)
    assert_allclose(unit_norms(res.D), 1, rtol=1e-12)
    # every signal's direction is an atom
    assert_allclose(np.abs(X / norms[:, None] @ res.D.T).max(axis=1), 1, rtol=1e-9)


@pytest.mark.parametrize("case", ["float32", "positive"])
def test_no_reinitialisation_no_code_could_use(case):
    """float32: 4 signals, 12 atoms, each signal on its own atom leaves a
    residual of norm lmbd up to the rounding of float32 codes (1e-7 ||x||),
    which re-initialised atoms at every iteration (all 100 at tol = 1e-14,
    the seeds below). positive: signals <= 0 with non-negative codes and
    atoms: no code can be non-zero, and the atoms of (-r)_+ could never be
    used (800 re-initialisations in 100 iterations). Both stop at once."""
    if case == "float32":
        runs = [(np.random.default_rng(seed).standard_normal((4, 10)).astype(np.float32),
                 12, dict(tol=1e-14)) for seed in range(20)]
    else:
        X = -np.abs(np.random.default_rng(0).standard_normal((200, 10)))
        runs = [(X, 8, dict(positive_code=True, positive_dict=True))]
    for X, m, kwargs in runs:
        res = learn_dictionary(X, m, 0.1, method="batch", random_state=0, n_jobs=NJ,
                               **kwargs)
        assert res.converged and res.n_iter == 2 and res.n_reinit == 0


@pytest.mark.parametrize("method", ["batch", "online"])
def test_no_reinitialisation_above_lambda_max(method):
    """lmbd above every ||x||: no code can use any atom (not even x / ||x||),
    so re-initialising gains nothing. Learning stops at once with the
    closed-form objective 1/2 mean ||x||^2. Before, the batch method
    re-initialised every atom at every iteration: 100 iterations, 1000
    re-initialisations, converged False."""
    rng = np.random.RandomState(0)
    X = 0.05 * rng.randn(200, 8)
    assert np.linalg.norm(X, axis=1).max() < 0.5
    res = learn_dictionary(X, 10, 0.5, method=method, n_jobs=NJ, random_state=0)
    assert res.converged and res.n_iter == 2 and res.n_reinit == 0
    assert_allclose(res.objective, 0.5 * np.mean(np.sum(X ** 2, axis=1)), rtol=1e-12)


def test_online_counts_reinitialised_atoms():
    """Atoms no signal uses (D0 with a zero atom and atoms orthogonal to all
    the signals) are re-initialised from the batch's worst residuals, and
    the count says so."""
    rng = np.random.default_rng(8)
    X = np.zeros((600, 10))
    X[:, :5] = rng.standard_normal((600, 5))     # signals in the first 5 coordinates
    D0 = np.zeros((8, 10))
    D0[:4, :5] = rng.standard_normal((4, 5))
    D0[5:, 5:8] = np.eye(3)                      # orthogonal to every signal
    res = learn_dictionary(X, 8, 0.5, method="online", D0=D0, max_iter=1, batch_size=100,
                           n_jobs=NJ, random_state=0)
    assert res.n_reinit >= 4
    assert_allclose(unit_norms(res.D), 1, rtol=1e-12)
    # the re-initialised atoms live where the signals do
    assert np.abs(res.D[:, 5:]).max() <= 1e-12


def _largest_cosine(D):
    """The largest |cos| between two different non-zero atoms of D."""
    U = D[np.linalg.norm(D, axis=1) > 0]
    U = U / np.linalg.norm(U, axis=1, keepdims=True)
    G = np.abs(U @ U.T)
    np.fill_diagonal(G, 0)
    return G.max()


def test_copies_of_a_signal_give_one_atom():
    """Data of 4 distinct signals, each copied 10 times (flat image patches
    are copies): the first dictionary drew several copies of one signal as
    atoms, and re-initialisation put copies of one residual in several
    atoms (|cos| = 1), whose codes then split any way (the Lasso's solution
    is not unique), so that a 1-ulp difference sent the Dask run to another
    dictionary than the local one (0.93 apart). Atoms are drawn, and
    re-initialised, along distinct directions; a copy's gain counts once."""
    rng = np.random.RandomState(1)
    signals = rng.randn(4, 6)
    X = np.repeat(signals, 10, axis=0)
    D = initial_dictionary(X, 8, np.random.RandomState(0))
    assert _largest_cosine(D) < 1 - 1e-6
    # the four signals' directions, each once (opposite ones are one atom)
    U = signals / np.linalg.norm(signals, axis=1, keepdims=True)
    assert np.all(np.abs(D @ U.T).max(axis=0) > 1 - 1e-14)
    # a signal and its negation: one atom for codes of either sign, two for
    # non-negative codes (only -a codes -x with z >= 0)
    pm = np.vstack([signals[:1]] * 3 + [-signals[:1]] * 3)
    for signed in (True, False):
        D = initial_dictionary(pm, 2, np.random.RandomState(0), signed=signed)
        cos = D @ U[0]
        along = np.abs(np.abs(cos) - 1) < 1e-12
        assert along.sum() == (1 if signed else 2)
        if not signed:
            assert sorted(np.sign(cos)) == [-1.0, 1.0]
    # residuals sorted worst first: r twice, -r (one atom for signed codes,
    # two with positive codes), r2; two unused atoms of three
    r, r2 = 2.0 * U[0], 1.5 * U[1]
    for positive_code, placed in ((False, [U[0], U[1]]), (True, [U[0], -U[0]])):
        D = np.vstack([np.zeros(6), U[2], np.zeros(6)])
        n, gain = reinitialise(D, np.array([True, False, True]), np.array([r, r, -r, r2]),
                               0.5, positive_code=positive_code)
        assert n == 2
        assert_allclose(D, np.vstack([placed[0], U[2], placed[1]]), rtol=0, atol=1e-15)
        # 1/2 (|<r, a>| - lmbd)^2 for each atom placed, closed form
        expected = 0.5 * (2.0 - 0.5) ** 2 + 0.5 * ((1.5 if not positive_code else 2.0)
                                                    - 0.5) ** 2
        assert_allclose(gain, expected, rtol=1e-14)
    # a residual along an atom in use is passed over
    D = np.vstack([np.zeros(6), U[0]])
    assert reinitialise(D, np.array([True, False]), np.array([r]), 0.5) == (0, 0.0)
    assert not D[0].any()


# ---------------------------------------------------------------------------
# options, determinism, float32, progress, callback, slista
# ---------------------------------------------------------------------------

def test_same_seed_same_dictionary():
    X, _, _ = ref.make_dictionary_problem(n_samples=500, n_features=10, n_atoms=15,
                                          seed=9)
    for method in ("online", "batch"):
        a = learn_dictionary(X, 15, 0.3, method=method, max_iter=3, batch_size=64,
                             random_state=3, n_jobs=NJ)
        b = learn_dictionary(X, 15, 0.3, method=method, max_iter=3, batch_size=64,
                             random_state=np.random.RandomState(3), n_jobs=NJ)
        assert_array_equal(a.D, b.D)
        assert_array_equal(a.objective, b.objective)
        assert isinstance(a, DictionaryResult) and a.method == method and a.coder == "cd"


def test_defaults_and_result_fields():
    X = np.random.RandomState(0).randn(300, 6)
    res = learn_dictionary(X, 8, 0.5, n_jobs=NJ, random_state=0)   # online defaults
    assert res.method == "online" and 1 <= res.n_iter <= 10
    assert res.n_steps == res.n_iter * 2                          # 300 signals, 256 a batch
    assert res.objective.shape == (res.n_iter,) and np.all(np.isfinite(res.objective))
    res = learn_dictionary(X, 8, 0.5, method="batch", n_jobs=NJ, random_state=0)
    assert res.n_iter == res.n_steps <= 100
    assert res.converged == (res.n_iter < 100)


def test_float32_learns_in_float32():
    X, _, _ = ref.make_dictionary_problem(n_samples=800, n_features=10, n_atoms=15,
                                          noise=0.05, seed=10)
    res32 = learn_dictionary(X.astype(np.float32), 15, 0.3, method="batch", max_iter=10,
                             random_state=0, n_jobs=NJ)
    res64 = learn_dictionary(X, 15, 0.3, method="batch", max_iter=10, random_state=0,
                             n_jobs=NJ)
    assert res32.D.dtype == np.float32
    # float32 codes to a relative gap of 1e-6: the objectives agree to 1e-4
    assert_allclose(res32.objective, res64.objective, rtol=1e-4)


def test_callback_stops_and_sees_the_state():
    X = np.random.RandomState(1).randn(400, 6)
    calls = []

    def callback(info):
        calls.append(info)
        return info["step"] == 3
    res = learn_dictionary(X, 8, 0.5, method="online", batch_size=50, max_iter=5,
                           callback=callback, n_jobs=NJ, random_state=0)
    assert len(calls) == 3 and res.n_steps == 3 and res.n_iter == 1
    assert res.objective.shape == (0,) and not res.converged
    assert calls[0]["D"].shape == (8, 6) and calls[0]["iteration"] == 0
    # the callback of an epoch's last batch sees that epoch's objective
    calls = []
    res = learn_dictionary(X, 8, 0.5, method="online", batch_size=50, max_iter=2, tol=0,
                           callback=lambda info: calls.append(info), n_jobs=NJ,
                           random_state=0)
    assert [len(c["objective"]) for c in calls] == [0] * 7 + [1] + [1] * 7 + [2]
    assert_array_equal(calls[-1]["objective"], res.objective)
    res = learn_dictionary(X, 8, 0.5, method="batch", max_iter=5, n_jobs=NJ,
                           callback=lambda info: info["iteration"] == 1, random_state=0)
    assert res.n_iter == 2 and res.objective.shape == (2,)


def test_tol_zero_runs_max_iter_iterations():
    """tol=0 never stops early, on a tie or an increase of the objective (an
    online epoch can be worse than the one before; all-zero signals tie at
    0) and is never converged; the estimators pass it on."""
    X = np.random.RandomState(4).randn(120, 6)
    res = learn_dictionary(X, 12, 0.5, method="online", max_iter=15, tol=0,
                           batch_size=10, random_state=4, n_jobs=NJ)
    assert res.n_iter == res.objective.size == 15 and not res.converged
    assert np.any(np.diff(res.objective) >= 0)          # an epoch that did not improve
    zeros = np.zeros((20, 4))
    for method in ("batch", "online"):
        res = learn_dictionary(zeros, 3, 0.1, method=method, max_iter=10, tol=0,
                               random_state=0, n_jobs=NJ)
        assert res.n_iter == 10 and not res.converged
        assert_array_equal(res.objective, 0)
        # tol > 0: the tie stops (converged) at the second iteration
        res = learn_dictionary(zeros, 3, 0.1, method=method, max_iter=10, tol=1e-4,
                               random_state=0, n_jobs=NJ)
        assert res.n_iter == 2 and res.converged
    pytest.importorskip("sklearn")
    from fastlista.estimators import DictionaryLearning, MiniBatchDictionaryLearning

    est = MiniBatchDictionaryLearning(12, alpha=0.5, max_iter=15, tol=0, batch_size=10,
                                      random_state=4, n_jobs=NJ).fit(X)
    assert est.n_iter_ == 15
    assert DictionaryLearning(3, alpha=0.1, max_iter=10, tol=0, random_state=0,
                              n_jobs=NJ).fit(zeros).n_iter_ == 10


@pytest.mark.parametrize("method", ["online", "batch"])
def test_callback_sees_the_objective_in_the_units_of_x(method):
    """X far from 1 is learned scaled by a power of two, but the callback's
    objectives (like the result's) are those of X: the unscaled run's times
    the square of the scale, exactly."""
    X = np.random.RandomState(1).randn(300, 6)
    seen = {}
    for k in (0, -300):
        calls = []
        res = learn_dictionary(np.ldexp(X, k), 8, np.ldexp(0.5, k), method=method,
                               batch_size=100, max_iter=3, tol=0, n_jobs=NJ,
                               random_state=0,
                               callback=lambda info: calls.append(info["objective"]))
        seen[k] = calls[-1], res.objective
    # the last call comes after the last epoch or iteration: it sees all three
    assert len(seen[0][0]) == 3
    assert_array_equal(seen[-300][0], np.ldexp(seen[0][0], -600))
    assert_array_equal(seen[-300][1], np.ldexp(seen[0][1], -600))


def _online_state(D0, lmbd=0.3):
    from fastlista.dictionary import OnlineState, make_coder

    coder = make_coder("cd", lmbd, 1e-10, 10000, False, NJ)
    return OnlineState(D0, coder, lmbd, False)


def test_online_state_batches_far_from_its_units():
    """Mini-batches whose magnitudes differ by more than one set of units can
    hold (what partial_fit may be given): no RuntimeWarning, and the smaller
    side's share of the statistics, below the rounding of the larger's in
    real arithmetic, is dropped, so that

    * zeros, then X * 2**-700: the atoms of zeros, then X (a zero batch
      fixes no units);
    * X1 and X2 at 2**600, then X3 at 2**-600: the atoms of the same with a
      zero batch for X3 (its share is 2**-2400 of theirs);
    * X1 and X2 at 2**-600, then X3 at 2**600: the atoms of the state of
      the same D and step count with zero statistics, fed X3;

    all three exactly (powers of two; the vanishing shares underflow to 0).
    The last two at lmbd = 0 (least-squares codes): no lmbd suits batches
    2**1200 apart. And a batch whose lmbd, in its units, leaves the float
    range has codes 0 (lmbd above its lmbd_max), as a zero batch.
    """
    import copy

    X, _, _ = ref.make_dictionary_problem(n_samples=300, n_features=10, n_atoms=12,
                                          noise=0.05, seed=12)
    X1, X2, X3 = X[:100], X[100:200], X[200:]
    D0 = initial_dictionary(X, 12, np.random.RandomState(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        tiny, unscaled = _online_state(D0, np.ldexp(0.3, -700)), _online_state(D0)
        for state, scale in ((tiny, -700), (unscaled, 0)):
            state.step(np.zeros_like(X1))
            state.step(np.ldexp(X1, scale))
        assert_array_equal(tiny.D, unscaled.D)
        assert unscaled.n_reinit == 0 and not np.array_equal(unscaled.D, D0)

        huge = _online_state(D0, 0.0)
        huge.step(np.ldexp(X1, 600))
        huge.step(np.ldexp(X2, 600))
        zero = copy.deepcopy(huge)
        huge.step(np.ldexp(X3, -600))
        zero.step(np.zeros_like(X3))
        assert_array_equal(huge.D, zero.D)
        assert huge.n_reinit == zero.n_reinit == 0

        small = _online_state(D0, 0.0)
        small.step(np.ldexp(X1, -600))
        small.step(np.ldexp(X2, -600))
        fresh = copy.deepcopy(small)
        fresh.A[:] = 0
        fresh.B[:] = 0
        small.step(np.ldexp(X3, 600))
        fresh.step(np.ldexp(X3, 600))
        assert_array_equal(small.D, fresh.D)
        assert small.n_reinit == fresh.n_reinit == 0

        strong = _online_state(D0, 1.0)
        strong.step(X1)
        zero = copy.deepcopy(strong)
        assert strong.step(np.ldexp(X2, -1030)) == 0.0
        zero.step(np.zeros_like(X2))
        assert_array_equal(strong.D, zero.D)


def test_progress_bar(capsys, monkeypatch):
    pytest.importorskip("tqdm")
    X = np.random.RandomState(2).randn(300, 6)
    learn_dictionary(X, 8, 0.5, batch_size=100, max_iter=2, progress=True, n_jobs=NJ,
                     random_state=0, tol=0)
    assert "learn_dictionary(online)" in capsys.readouterr().err
    # without tqdm: a warning, and the learning goes on
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)
    with pytest.warns(UserWarning, match="progress=True needs tqdm"):
        res = learn_dictionary(X, 8, 0.5, method="batch", max_iter=2, progress=True,
                               n_jobs=NJ, random_state=0, tol=0)
    assert res.n_iter == 2


def test_slista_coder_learns_approximately():
    """coder="slista": approximate codes, a dictionary whose exact objective
    stays within 5 % of the exact coder's (measured: 1.3 % on this data)."""
    X, _, _ = ref.make_dictionary_problem(n_samples=1500, n_features=16, n_atoms=24,
                                          noise=0.05, seed=11)
    X_test, _, _ = ref.make_dictionary_problem(n_samples=300, n_features=16, n_atoms=24,
                                               noise=0.05, seed=11)
    lmbd = 0.3
    D0 = initial_dictionary(X, 24, np.random.RandomState(0))
    out = {}
    for coder in ("cd", "slista"):
        res = learn_dictionary(X, 24, lmbd, D0=D0, coder=coder, max_iter=3,
                               batch_size=128, n_jobs=NJ, random_state=0, tol=0)
        assert res.coder == coder
        assert_allclose(unit_norms(res.D), 1, rtol=1e-12)
        out[coder] = exact_objective(X_test, res.D, lmbd)
    assert out["slista"] <= 1.05 * out["cd"], out
    # batch mode with the network: the objective still never increases
    res = learn_dictionary(X[:300], 24, lmbd, D0=D0, coder="slista", method="batch",
                           max_iter=4, n_jobs=NJ, tol=0)
    assert np.all(np.diff(res.objective) <= 1e-12 * res.objective[:-1])


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

def _X(n=50, p=6):
    return np.random.RandomState(0).randn(n, p)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_atoms=0), "'n_atoms' parameter"),
    (dict(n_atoms=-3), "'n_atoms' parameter"),
    (dict(n_atoms=2.5), "'n_atoms' parameter"),
    (dict(n_atoms=True), "'n_atoms' parameter"),
    (dict(batch_size=0), "'batch_size' parameter"),
    (dict(batch_size=-1), "'batch_size' parameter"),
    (dict(lmbd=-1.0), "'lmbd' parameter"),
    (dict(lmbd=np.nan), "'lmbd' parameter"),
    (dict(max_iter=0), "'max_iter' parameter"),
    (dict(tol=-1e-3), "'tol' parameter"),
    (dict(method="sgd"), "'method' parameter"),
    (dict(coder="lars"), "'coder' parameter"),
    (dict(code_tol=-1.0), "'code_tol' parameter"),
    (dict(positive_code=1), "'positive_code' parameter"),
    (dict(n_jobs=0), "'n_jobs' parameter"),
    (dict(callback=3), "'callback' parameter"),
    (dict(random_state="seed"), "cannot be used to seed"),
    (dict(X=np.where(np.eye(50, 6) == 1, np.nan, _X())), "Input X contains NaN"),
    (dict(X=np.where(np.eye(50, 6) == 1, np.inf, _X())), "Input X contains infinity"),
    (dict(X=np.ones(6)), "Expected 2D array"),
    (dict(X=np.ones((0, 6))), "minimum of 1 is required"),
    (dict(X=np.ones((10, 0))), "minimum of 1 is required"),
    (dict(D0=np.ones((8, 5))), r"D0 must have shape \(n_atoms, n_features\) = \(8, 6\)"),
    (dict(D0=np.ones((7, 6))), r"D0 must have shape"),
    (dict(D0=np.full((8, 6), np.nan)), "Input D0 contains NaN"),
    (dict(D0=np.full((8, 6), -np.inf)), "Input D0 contains infinity"),
])
@pytest.mark.parametrize("method", ["online", "batch"])
def test_bad_input_raises_value_error_naming_it(kwargs, match, method):
    args = dict(X=_X(), n_atoms=8, lmbd=0.5, method=method, n_jobs=NJ)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        learn_dictionary(**args)


def test_bad_parameters_are_invalid_parameter_errors():
    with pytest.raises(InvalidParameterError):
        learn_dictionary(_X(), 0, 0.5)
    with pytest.raises(InvalidParameterError):
        learn_dictionary(_X(), 4, 0.5, batch_size=0)


# ---------------------------------------------------------------------------
# degenerate but valid input
# ---------------------------------------------------------------------------

def _patches_like(n=120, seed=0):
    """8x8 'patches': half of them constant, centred like the benchmark's."""
    rng = np.random.default_rng(seed)
    P = rng.random((n, 64))
    P[: n // 2] = rng.random((n // 2, 1))            # constant patches
    return P


@pytest.mark.parametrize("method", ["online", "batch"])
@pytest.mark.parametrize("case", ["zeros", "constant", "centred_constant", "one_signal",
                                  "huge_lmbd", "zero_lmbd", "one_atom", "one_feature",
                                  "tiny", "huge", "D0_zero", "positive_zeros"])
def test_degenerate_input_has_a_defined_result(case, method):
    X, n_atoms, lmbd, kwargs = _patches_like(), 10, 0.5, {}
    if case == "zeros":
        X = np.zeros((40, 6))
    elif case == "constant":
        pass
    elif case == "centred_constant":
        X = X - X.mean(axis=1, keepdims=True)          # half of the rows exactly 0
    elif case == "one_signal":
        X = np.tile(np.arange(1.0, 7.0), (30, 1))
    elif case == "huge_lmbd":
        lmbd = 1e6                                     # every code 0
    elif case == "zero_lmbd":
        lmbd = 0.0
    elif case == "one_atom":
        n_atoms = 1
    elif case == "one_feature":
        X = np.random.RandomState(0).randn(40, 1)
    elif case == "tiny":
        X = np.ldexp(X, -700)                         # 1e-211: scaled inside
        lmbd = np.ldexp(0.5, -700)
    elif case == "huge":
        X = np.ldexp(X, 500)                          # 3e150
        lmbd = np.ldexp(0.5, 500)
    elif case == "D0_zero":
        X = X[:5]
        kwargs["D0"] = np.zeros((n_atoms, X.shape[1]))
    elif case == "positive_zeros":
        X = np.zeros((40, 6))
        kwargs.update(positive_dict=True, positive_code=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = learn_dictionary(X, n_atoms, lmbd, method=method, max_iter=3,
                               batch_size=32, n_jobs=NJ, random_state=0, **kwargs)
    assert res.D.shape == (n_atoms, X.shape[1])
    assert np.all(np.isfinite(res.D))
    assert_allclose(unit_norms(res.D), 1, rtol=1e-12)
    assert res.objective.shape == (res.n_iter,)
    assert np.all(np.isfinite(res.objective)) and np.all(res.objective >= 0)
    if method == "batch":
        half = 0.5 * np.mean(np.sum(X * X, axis=1))
        assert np.all(np.diff(res.objective) <= 1e-12 * res.objective[:-1] + 1e-13 * half)
    if case in ("zeros", "positive_zeros"):
        assert_array_equal(res.objective, 0)
    if case in ("tiny", "huge"):
        # scaled inside by the exact power of two: the atoms of X / scale, and
        # its objective times scale^2 (exactly)
        base = learn_dictionary(_patches_like(), n_atoms, 0.5, method=method,
                                max_iter=3, batch_size=32, n_jobs=NJ, random_state=0)
        e = -700 if case == "tiny" else 500
        assert_array_equal(res.D, base.D)
        assert_array_equal(res.objective, np.ldexp(base.objective, 2 * e))
    if case == "zero_lmbd":
        # least squares: at most the objective of the zero codes
        assert np.all(res.objective <= 0.5 * np.mean(np.sum(X * X, axis=1)))
    if case == "positive_zeros":
        assert np.all(res.D >= 0)


# ---------------------------------------------------------------------------
# fuzzing bad and degenerate input (hypothesis, derandomised for CI)
# ---------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import event, example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import fuzz_settings  # noqa: E402

FUZZ = fuzz_settings("dictionary", 2000)

SIGNALS = ("gaussian", "zeros", "constant_rows", "duplicated_rows", "copies_of_three",
           "one_nonzero_row", "sparse_signals", "scaled_tiny", "scaled_huge", "nan", "inf")
ATOMS_0 = ("none", "random", "zeros", "zero_atom", "duplicated", "wrong_shape", "nan",
           "huge")


@st.composite
def dictionary_specs(draw):
    return dict(
        signals=draw(st.sampled_from(SIGNALS)),
        n_samples=draw(st.integers(0, 30)),
        n_features=draw(st.integers(1, 8)),
        n_atoms=draw(st.integers(-1, 12)),
        lmbd=draw(st.sampled_from([0.0, 1e-12, 0.1, 1.0, 1e8, -0.5])),
        method=draw(st.sampled_from(["online", "batch"])),
        batch_size=draw(st.sampled_from([0, 1, 7, 256])),
        D0=draw(st.sampled_from(ATOMS_0)),
        positive_code=draw(st.booleans()),
        positive_dict=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float64", "float32"])),
        seed=draw(st.integers(0, 3)),
    )


def build_dictionary_problem(spec):
    rng = np.random.default_rng(spec["seed"])
    n, p, m = spec["n_samples"], spec["n_features"], spec["n_atoms"]
    X = rng.standard_normal((n, p))
    kind = spec["signals"]
    if kind == "zeros":
        X[:] = 0
    elif kind == "constant_rows":
        X[:] = rng.standard_normal((n, 1))
    elif kind == "duplicated_rows" and n:
        X[:] = X[0]
    elif kind == "copies_of_three" and n:
        # copies of three signals and of their negations, in any order
        X[:] = X[rng.integers(0, min(n, 3), n)] * rng.choice([-1.0, 1.0], (n, 1))
    elif kind == "one_nonzero_row":
        X[1:] = 0
    elif kind == "sparse_signals":
        X *= rng.random((n, p)) < 0.2
    elif kind == "scaled_tiny":
        X *= 1e-30 if spec["dtype"] == "float32" else 1e-250
    elif kind == "scaled_huge":
        X *= 1e30 if spec["dtype"] == "float32" else 1e120
    elif kind == "nan" and X.size:
        X.flat[rng.integers(X.size)] = np.nan
    elif kind == "inf" and X.size:
        X.flat[rng.integers(X.size)] = -np.inf
    X = X.astype(spec["dtype"])
    D0 = None
    mm = max(m, 0)
    if spec["D0"] != "none":
        D0 = rng.standard_normal((mm, p))
        if spec["D0"] == "zeros":
            D0[:] = 0
        elif spec["D0"] == "zero_atom" and mm:
            D0[0] = 0
        elif spec["D0"] == "duplicated" and mm > 1:
            D0[1] = D0[0]
        elif spec["D0"] == "wrong_shape":
            D0 = rng.standard_normal((mm + 1, p))
        elif spec["D0"] == "nan" and D0.size:
            D0.flat[0] = np.nan
        elif spec["D0"] == "huge":
            D0 *= 1e200
    return X, D0


def _expected_error(spec, X, D0):
    """The argument a bad spec must be refused for (None: valid)."""
    n, p, m = X.shape[0], X.shape[1], spec["n_atoms"]
    if m < 1:
        return "n_atoms"
    if spec["lmbd"] < 0:
        return "lmbd"
    if n < 1:
        return "minimum of 1"
    if not np.all(np.isfinite(X)):
        return "Input X"
    if D0 is not None and (D0.shape != (m, p) or not np.all(np.isfinite(D0))):
        return "D0"
    if spec["batch_size"] < 1:
        return "batch_size"
    return None


@FUZZ
@given(spec=dictionary_specs())
# found by the long fuzz: least-squares codes on an ill-conditioned D
@example(spec={"signals": "gaussian", "n_samples": 8, "n_features": 8, "n_atoms": 8,
               "lmbd": 0.0, "method": "batch", "batch_size": 1, "D0": "huge",
               "positive_code": False, "positive_dict": False, "dtype": "float32",
               "seed": 0})
# ... and huge signals at a tiny lmbd (the check's own bound overflowed)
@example(spec={"signals": "scaled_huge", "n_samples": 1, "n_features": 1, "n_atoms": 1,
               "lmbd": 1e-12, "method": "batch", "batch_size": 1, "D0": "none",
               "positive_code": False, "positive_dict": False, "dtype": "float64",
               "seed": 0})
def test_fuzz_learn_dictionary_bad_and_degenerate_input(spec):
    X, D0 = build_dictionary_problem(spec)
    expected = _expected_error(spec, X, D0)
    kwargs = dict(method=spec["method"], batch_size=spec["batch_size"], D0=D0,
                  positive_code=spec["positive_code"], positive_dict=spec["positive_dict"],
                  max_iter=2, n_jobs=NJ, random_state=spec["seed"])
    event(f"refused: {expected}" if expected else "valid")
    if expected is not None:
        with pytest.raises(ValueError, match=expected):
            learn_dictionary(X, spec["n_atoms"], spec["lmbd"], **kwargs)
        return
    with warnings.catch_warnings():
        # a float32 code may stop short of its certificate (ConvergenceWarning);
        # never a RuntimeWarning (overflow, invalid value)
        warnings.simplefilter("ignore", fastlista.ConvergenceWarning)
        warnings.simplefilter("error", RuntimeWarning)
        res = learn_dictionary(X, spec["n_atoms"], spec["lmbd"], **kwargs)
    m, p = spec["n_atoms"], X.shape[1]
    assert res.D.shape == (m, p) and res.D.dtype == X.dtype
    assert np.all(np.isfinite(res.D))
    assert_allclose(unit_norms(res.D), 1, rtol=1e-5)
    if spec["positive_dict"]:
        assert np.all(res.D >= 0)
    assert res.objective.shape == (res.n_iter,)
    assert not np.any(np.isnan(res.objective)) and np.all(res.objective >= 0)
    if spec["method"] == "batch":
        # non-increasing up to the rounding of its evaluation from the
        # statistics (1/2 sum ||x||^2 - <B, D> + 1/2 <A, D D^T> + ...:
        # absolute, of the order of eps times the sizes of the terms, visible
        # when the objective is near 0). With unit atoms |(D D^T)_jk| <= 1,
        # so <|A|, |D D^T|> <= sum ||z||_1^2, and lmbd ||z||_1 <= 1/2 ||x||^2
        # (no code does worse than 0). At lmbd = 0 nothing bounds the codes
        # but D's conditioning (least squares: |z| ~ 1e3 on an 8 x 8 D of
        # condition 1.5e3 rounds the mean objective by 5e-11, mean ||x||^2 6.7),
        # and the check is off; at lmbd = 1e-12 the bound is as good as off
        # too, and the drawn lmbd of 0.1 and above carry the check
        # (the bound is computed in long double: its square of ||x||^2 / lmbd
        # leaves float64's range for huge signals; beyond long double's too,
        # it is inf)
        obj = res.objective
        xx = np.sum(X.astype(np.longdouble) ** 2, axis=1)
        if spec["lmbd"] > 0:
            with np.errstate(over="ignore"):
                l1_sq = np.mean((0.5 * xx / spec["lmbd"]) ** 2)
            slack = 1e-13 * 0.5 * np.mean(xx) + m * np.finfo(np.float64).eps * l1_sq
            assert np.all(np.diff(obj) <= 1e-12 * obj[:-1] + slack), np.diff(obj)
    assert res.n_reinit >= 0 and res.n_steps >= res.n_iter >= 1
    if spec["lmbd"] > 1.01 * np.linalg.norm(X.astype(np.float64), axis=1).max():
        # no code can use any atom, not even a residual's x / ||x||: nothing
        # to re-initialise, and every objective is 1/2 mean ||x||^2
        assert res.n_reinit == 0
        assert_allclose(res.objective, 0.5 * np.mean(np.sum(X.astype(np.float64) ** 2, 1)),
                        rtol=1e-6)


@pytest.mark.parametrize("stop_at", [2, 3])
def test_online_objective_holds_the_completed_epochs(stop_at):
    """DictionaryResult.objective has one entry a completed iteration:
    online, a callback that stops an epoch before its end leaves n_iter
    epochs begun and one objective fewer; stopped at an epoch's last
    mini-batch, as many as n_iter; the callback's last list is the result's."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 8))
    seen = []

    def callback(info):
        seen.append(info)
        return len(seen) >= stop_at

    res = learn_dictionary(X, 6, 0.3, max_iter=5, tol=0, batch_size=100,
                           callback=callback, random_state=0)
    assert res.n_steps == stop_at
    assert res.n_iter == 1
    assert len(res.objective) == (1 if stop_at == 3 else 0)
    assert seen[-1]["objective"] == list(res.objective)
