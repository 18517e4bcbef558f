"""Tests of fastlista.datasets against independent NumPy computations."""
import numpy as np
import pytest

from fastlista import InvalidParameterError
from fastlista.datasets import make_coding, make_sparse_coding


# ---------------------------------------------------------------- references
def _numpy_ista(X, D, lmbd, n_iter=20000, tol=1e-14):
    """Plain NumPy ISTA, step 1/L with L from eigvalsh, duality-gap stop.

    Independent of fastlista: returns the codes (n_samples, n_atoms).
    """
    B = D @ D.T
    L = np.linalg.eigvalsh(B)[-1]
    C = X @ D.T
    Z = np.zeros((X.shape[0], D.shape[0]))
    half_sq = 0.5 * np.einsum("ij,ij->i", X, X)
    for it in range(n_iter):
        U = Z - (Z @ B - C) / L
        Z = np.sign(U) * np.maximum(np.abs(U) - lmbd / L, 0.0)
        if it % 50 == 49:
            R = X - Z @ D
            primal = 0.5 * np.einsum("ij,ij->i", R, R) + lmbd * np.abs(Z).sum(axis=1)
            scale = np.maximum(lmbd, np.abs(R @ D.T).max(axis=1))
            Theta = R / scale[:, None]
            Res = X - lmbd * Theta
            dual = half_sq - 0.5 * np.einsum("ij,ij->i", Res, Res)
            if np.all(primal - dual <= tol * half_sq):
                break
    return Z


def _support_sizes_with_margin(X, D, lmbd, Z, margin=1e-6):
    """Count non-zeros and flag samples whose support is numerically ambiguous.

    An atom is ambiguous when its coefficient is tiny or its correlation with
    the residual is within ``margin`` of lmbd while the coefficient is 0.
    """
    corr = np.abs((X - Z @ D) @ D.T)
    nnz = np.count_nonzero(Z, axis=1)
    ambiguous = (((Z == 0) & (corr > lmbd * (1 - margin)))
                 | ((Z != 0) & (np.abs(Z) < margin))).any(axis=1)
    return nnz, ambiguous


# ---------------------------------------------------------------- make_coding
def test_make_coding_shapes_dtype_layout():
    X, D = make_coding(n_samples=37, n_atoms=20, n_features=6, random_state=0)
    assert X.shape == (37, 6)
    assert D.shape == (20, 6)
    for a in (X, D):
        assert a.dtype == np.float64
        assert a.flags.c_contiguous
        assert np.isfinite(a).all()


def test_make_coding_defaults_are_paper_shape():
    X, D = make_coding(random_state=0)
    assert X.shape == (1000, 64)
    assert D.shape == (256, 64)
    # the defaults are exactly the paper's sizes, not another draw
    X_explicit, D_explicit = make_coding(1000, 256, 64, random_state=0)
    np.testing.assert_array_equal(X, X_explicit)
    np.testing.assert_array_equal(D, D_explicit)


@pytest.mark.parametrize("shape", [(50, 256, 64), (40, 10, 3), (5, 3, 10), (1, 1, 1)])
def test_make_coding_lambda_max_is_one(shape):
    n_samples, n_atoms, n_features = shape
    X, D = make_coding(n_samples, n_atoms, n_features, random_state=1)
    # independent computation of lambda_max = ||x D^T||_inf, per sample
    lmax = np.max(np.abs(np.dot(X, D.T)), axis=1)
    np.testing.assert_allclose(lmax, np.ones(n_samples), rtol=1e-12)


def test_make_coding_atoms_unit_norm_and_gaussian():
    X, D = make_coding(n_samples=10, n_atoms=2000, n_features=16, random_state=2)
    np.testing.assert_allclose(np.sqrt((D ** 2).sum(axis=1)), 1.0, rtol=1e-12)
    # normalised Gaussian rows are uniform on the sphere: entries have mean 0
    # and variance 1/n_features, and no direction is preferred
    assert abs(D.mean()) < 0.01
    np.testing.assert_allclose(D.var(), 1 / 16, rtol=0.05)
    np.testing.assert_allclose(np.abs(D.mean(axis=0)), 0, atol=0.06)


def test_make_coding_signals_span_the_dictionary():
    # x = z D with dense z: every signal lies in the row space of D and,
    # with more features than atoms, the signals span exactly that space
    X, D = make_coding(n_samples=30, n_atoms=4, n_features=9, random_state=3)
    coef, *_ = np.linalg.lstsq(D.T, X.T, rcond=None)
    np.testing.assert_allclose(coef.T @ D, X, atol=1e-12)
    assert np.linalg.matrix_rank(X) == 4
    # dense codes: the least squares coefficients have no zeros
    assert np.all(np.abs(coef) > 0)


def test_make_coding_reproducible():
    X1, D1 = make_coding(n_samples=20, n_atoms=8, n_features=4, random_state=42)
    X2, D2 = make_coding(n_samples=20, n_atoms=8, n_features=4, random_state=42)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(D1, D2)
    X3, D3 = make_coding(n_samples=20, n_atoms=8, n_features=4,
                         random_state=np.random.RandomState(42))
    np.testing.assert_array_equal(X1, X3)
    np.testing.assert_array_equal(D1, D3)
    X4, D4 = make_coding(n_samples=20, n_atoms=8, n_features=4, random_state=43)
    assert not np.allclose(D1, D4)
    assert not np.allclose(X1, X4)


def test_make_coding_more_samples_extend_the_same_problem():
    X1, D1 = make_coding(n_samples=10, n_atoms=8, n_features=4, random_state=0)
    X2, D2 = make_coding(n_samples=25, n_atoms=8, n_features=4, random_state=0)
    np.testing.assert_array_equal(D1, D2)
    np.testing.assert_array_equal(X1, X2[:10])


def test_make_coding_random_state_instance_advances():
    rng = np.random.RandomState(0)
    X1, _ = make_coding(n_samples=5, n_atoms=4, n_features=3, random_state=rng)
    X2, _ = make_coding(n_samples=5, n_atoms=4, n_features=3, random_state=rng)
    assert not np.allclose(X1, X2)


@pytest.mark.parametrize("name, value", [
    ("n_samples", 0), ("n_samples", -3), ("n_samples", 2.5), ("n_samples", "10"),
    ("n_samples", True), ("n_samples", None),
    ("n_atoms", 0), ("n_atoms", 1.0), ("n_features", 0), ("n_features", -1),
])
def test_make_coding_bad_sizes(name, value):
    kwargs = dict(n_samples=10, n_atoms=8, n_features=4)
    kwargs[name] = value
    with pytest.raises(ValueError, match=f"'{name}' parameter of make_coding"):
        make_coding(**kwargs)
    with pytest.raises(InvalidParameterError):
        make_coding(**kwargs)


@pytest.mark.parametrize("seed", ["abc", -1, 2**32, 1.5])
def test_make_coding_bad_random_state(seed):
    with pytest.raises(ValueError):
        make_coding(n_samples=3, n_atoms=4, n_features=2, random_state=seed)


@pytest.mark.parametrize("seed", [np.random.default_rng(0), 1.0, "abc", -1, 2**32])
@pytest.mark.parametrize("func", ["make_coding", "make_sparse_coding", "make_digits_coding"])
def test_bad_random_state_names_the_argument(func, seed):
    """The message names random_state, the function and what is accepted (it
    was NumPy's "Generator(PCG64) ... cannot be used to seed a
    numpy.random.RandomState instance", or "Seed must be between 0 and
    2**32 - 1")."""
    from fastlista import datasets
    kwargs = dict(n_samples=3, n_atoms=4)
    if func != "make_digits_coding":
        kwargs["n_features"] = 2
    with pytest.raises(InvalidParameterError,
                       match=rf"'random_state' parameter of {func} must be None, an int in "
                             r"\[0, 2\*\*32 - 1\] or a numpy.random.RandomState instance"):
        getattr(datasets, func)(random_state=seed, **kwargs)


@pytest.mark.parametrize("func", [make_coding, make_sparse_coding])
@pytest.mark.parametrize("sizes", [
    dict(n_samples=2**63), dict(n_samples=2**62), dict(n_atoms=2**61),
    dict(n_features=2**61), dict(n_samples=2**31, n_atoms=2**31),
    # sizes beyond float's range: the message's ":.3g" of their byte count
    # raised OverflowError
    dict(n_samples=10**306), dict(n_samples=10**400), dict(n_atoms=10**310, n_features=1),
])
def test_sizes_beyond_any_array_name_the_sizes(func, sizes):
    """Sizes whose arrays no machine can address are refused naming them (it
    was NumPy's "Maximum allowed dimension exceeded"), before anything is
    drawn."""
    kwargs = dict(dict(n_samples=3, n_atoms=4, n_features=2), **sizes)
    with pytest.raises(InvalidParameterError, match=rf"^{func.__name__}: .* beyond the "
                                                    r"largest array") as info:
        func(**kwargs)
    for name, value in sizes.items():
        # (a long value is cut in the middle)
        assert f"{name}={str(value)[:12]}" in str(info.value)
    assert len(str(info.value)) < 500


def test_existing_seeds_draw_what_they_drew():
    """The argument check changed no draw: an int, a RandomState and None
    (the global RandomState) give the draws of np.random.RandomState."""
    X, D = make_coding(n_samples=3, n_atoms=4, n_features=2, random_state=7)
    rng = np.random.RandomState(7)
    D_ref = rng.standard_normal((4, 2))
    D_ref /= np.linalg.norm(D_ref, axis=1, keepdims=True)
    np.testing.assert_array_equal(D, D_ref)
    Z = rng.standard_normal((3, 4)) @ D_ref
    np.testing.assert_array_equal(X, Z / np.abs(Z @ D_ref.T).max(axis=1, keepdims=True))
    np.testing.assert_array_equal(
        make_coding(3, 4, 2, random_state=np.random.RandomState(7))[0], X)
    state = np.random.get_state()
    try:
        np.random.seed(7)
        np.testing.assert_array_equal(make_coding(3, 4, 2)[0], X)
    finally:
        np.random.set_state(state)


# ---------------------------------------------------------- make_sparse_coding
SMALL = dict(n_atoms=32, n_features=8)


@pytest.mark.parametrize("lmbd, min_nnz, max_nnz", [
    (0.8, 1, 2), (0.8, 1, 1), (0.5, 3, 5), (0.3, 6, 8),
])
def test_make_sparse_coding_sparsity_respected_numpy(lmbd, min_nnz, max_nnz):
    X, D = make_sparse_coding(n_samples=60, lmbd=lmbd, min_nnz=min_nnz,
                              max_nnz=max_nnz, random_state=0, **SMALL)
    assert X.shape == (60, 8)
    assert D.shape == (32, 8)
    Z = _numpy_ista(X, D, lmbd)
    nnz, ambiguous = _support_sizes_with_margin(X, D, lmbd, Z)
    # numerically ambiguous supports (an atom exactly at the threshold) are
    # measure-zero events; allow none of them to be counted but check the rest
    assert ambiguous.mean() < 0.05
    ok = nnz[~ambiguous]
    assert ok.min() >= min_nnz, nnz
    assert ok.max() <= max_nnz, nnz


def test_make_sparse_coding_sparsity_respected_sklearn():
    decomposition = pytest.importorskip("sklearn.decomposition")
    lmbd = 0.8
    X, D = make_sparse_coding(n_samples=200, n_atoms=64, n_features=16, lmbd=lmbd,
                              min_nnz=2, max_nnz=3, random_state=7)
    # scikit-learn minimises 1/2 ||x - z D||^2 + alpha ||z||_1 with lasso_cd
    Z = decomposition.sparse_encode(X, D, algorithm="lasso_cd", alpha=lmbd,
                                    max_iter=100000)
    # lasso_cd stops at tol 1e-8 (hard-coded), so tiny spurious coefficients
    # may remain: count |z| above a small threshold
    nnz = np.count_nonzero(np.abs(Z) > 1e-6, axis=1)
    assert np.mean((nnz >= 2) & (nnz <= 3)) >= 0.99, np.bincount(nnz)


def test_make_sparse_coding_filter_changes_the_distribution():
    # unfiltered, the solutions at lmbd = 0.5 have a spread of sizes; the
    # filter keeps a narrow band of them
    lmbd = 0.5
    X0, D0 = make_coding(n_samples=200, random_state=3, **SMALL)
    nnz0, _ = _support_sizes_with_margin(X0, D0, lmbd, _numpy_ista(X0, D0, lmbd))
    assert np.mean(nnz0 == 3) < 0.5, np.bincount(nnz0)
    X, D = make_sparse_coding(n_samples=50, lmbd=lmbd, min_nnz=3, max_nnz=3,
                              random_state=3, **SMALL)
    nnz, ambiguous = _support_sizes_with_margin(X, D, lmbd, _numpy_ista(X, D, lmbd))
    assert np.all(nnz[~ambiguous] == 3)


def test_make_sparse_coding_is_make_coding_law():
    # the candidates come from make_coding's law: lambda_max = 1, unit atoms
    X, D = make_sparse_coding(n_samples=40, lmbd=0.8, random_state=5, **SMALL)
    np.testing.assert_allclose(np.abs(X @ D.T).max(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(D, axis=1), 1.0, rtol=1e-12)
    assert X.dtype == D.dtype == np.float64
    assert X.flags.c_contiguous and D.flags.c_contiguous
    # without a filter, the first candidates are make_coding's samples
    Xa, Da = make_sparse_coding(n_samples=40, lmbd=0.8, min_nnz=0, max_nnz=None,
                                random_state=5, **SMALL)
    Xb, Db = make_coding(n_samples=40, random_state=5, **SMALL)
    np.testing.assert_array_equal(Da, Db)
    np.testing.assert_array_equal(Xa, Xb)


def test_make_sparse_coding_reproducible():
    kw = dict(n_samples=30, lmbd=0.8, min_nnz=1, max_nnz=2, **SMALL)
    X1, D1 = make_sparse_coding(random_state=11, **kw)
    X2, D2 = make_sparse_coding(random_state=11, **kw)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(D1, D2)
    X3, _ = make_sparse_coding(random_state=12, **kw)
    assert not np.allclose(X1, X3)


def test_make_sparse_coding_samples_are_distinct():
    X, _ = make_sparse_coding(n_samples=100, lmbd=0.8, min_nnz=1, max_nnz=1,
                              random_state=0, **SMALL)
    assert np.unique(X, axis=0).shape[0] == 100


def test_make_sparse_coding_impossible_filter_raises():
    # a unique Lasso solution has at most n_features = 8 non-zeros: asking
    # for all 32 atoms can never be met, and the draws are bounded
    with pytest.raises(ValueError, match="only 0 of the 5 requested samples"):
        make_sparse_coding(n_samples=5, lmbd=0.5, min_nnz=32, max_nnz=32,
                           random_state=0, **SMALL)


def test_make_sparse_coding_above_lambda_max_only_zero_codes():
    # lambda_max = 1: at lmbd >= 1 every solution is 0
    X, D = make_sparse_coding(n_samples=10, lmbd=1.0, min_nnz=0, max_nnz=0,
                              random_state=0, **SMALL)
    assert X.shape == (10, 8)
    with pytest.raises(ValueError, match="only 0 of"):
        make_sparse_coding(n_samples=10, lmbd=1.5, min_nnz=1, max_nnz=None,
                           random_state=0, **SMALL)


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_samples=0), "n_samples"),
    (dict(n_atoms=0), "n_atoms"),
    (dict(n_features=2.0), "n_features"),
    (dict(lmbd=-0.1), "lmbd"),
    (dict(lmbd=float("nan")), "lmbd"),
    (dict(lmbd="0.8"), "lmbd"),
    (dict(max_nnz=33), "max_nnz"),
    (dict(max_nnz=-1), "max_nnz"),
    (dict(max_nnz=2.5), "max_nnz"),
    (dict(min_nnz=-1), "min_nnz"),
    (dict(min_nnz=None), "min_nnz"),
    (dict(min_nnz=3, max_nnz=2), "min_nnz"),
])
def test_make_sparse_coding_bad_arguments(kwargs, name):
    args = dict(n_samples=10, lmbd=0.8, **SMALL)
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"'{name}' parameter of make_sparse_coding"):
        make_sparse_coding(**args)


def test_make_sparse_coding_min_gt_max_message_names_both():
    with pytest.raises(ValueError, match=r"min_nnz=3 > max_nnz=2"):
        make_sparse_coding(n_samples=10, min_nnz=3, max_nnz=2, **SMALL)


# ---------------------------------------------------------- make_digits_coding
def _sklearn_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    return datasets.load_digits().data


def test_make_digits_coding_shapes_and_scaling():
    from fastlista.datasets import make_digits_coding
    X, D = make_digits_coding(n_samples=300, n_atoms=256, random_state=0)
    assert X.shape == (300, 64) and D.shape == (256, 64)
    for a in (X, D):
        assert a.dtype == np.float64 and a.flags.c_contiguous and np.isfinite(a).all()
    np.testing.assert_allclose(np.linalg.norm(D, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.abs(X @ D.T).max(axis=1), 1.0, rtol=1e-12)


def test_make_digits_coding_rows_are_standardised_sklearn_digits():
    from fastlista.datasets import make_digits_coding
    images = _sklearn_digits()
    # independent standardisation of every image
    std = (images - images.mean(axis=1, keepdims=True)) / images.std(axis=1, keepdims=True)
    unit = std / np.linalg.norm(std, axis=1, keepdims=True)
    X, D = make_digits_coding(n_samples=100, n_atoms=50, random_state=3)
    # every atom and every signal is (up to scale) one distinct digit image
    def match(rows):
        r = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        cos = r @ unit.T
        idx = np.argmax(cos, axis=1)
        np.testing.assert_allclose(cos[np.arange(len(r)), idx], 1.0, rtol=1e-12)
        return idx
    ia, ix = match(D), match(X)
    # rows are zero-mean like the standardised images, and signals are
    # positive multiples of them (no sign flip)
    np.testing.assert_allclose(X.mean(axis=1), 0, atol=1e-12)
    assert np.all(np.einsum("ij,ij->i", X, std[ix]) > 0)
    assert len(set(ia)) == 50 and len(set(ix)) == 100
    assert not set(ia) & set(ix)


def test_make_digits_coding_reproducible_and_seeded():
    from fastlista.datasets import make_digits_coding
    X1, D1 = make_digits_coding(n_samples=20, n_atoms=30, random_state=1)
    X2, D2 = make_digits_coding(n_samples=20, n_atoms=30, random_state=1)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(D1, D2)
    X3, D3 = make_digits_coding(n_samples=20, n_atoms=30, random_state=2)
    assert not np.allclose(D1, D3)


def test_make_digits_coding_uses_every_image_at_most_once():
    from fastlista.datasets import N_DIGITS, make_digits_coding
    assert N_DIGITS == _sklearn_digits().shape[0]
    X, D = make_digits_coding(n_samples=N_DIGITS - 256, n_atoms=256, random_state=0)
    both = np.vstack([X / np.linalg.norm(X, axis=1, keepdims=True), D])
    # all 1797 images, none twice (a few digits may coincide exactly in the
    # data set itself: compare with the data set's own duplicates)
    n_unique_data = np.unique(np.round(_sklearn_digits(), 6), axis=0).shape[0]
    assert np.unique(np.round(both, 9), axis=0).shape[0] == n_unique_data


def test_make_digits_coding_lasso_is_sparse_at_08():
    import fastlista
    from fastlista.datasets import make_digits_coding
    X, D = make_digits_coding(n_samples=100, n_atoms=256, random_state=0)
    Z = fastlista.solve_lasso(X, D, 0.8).codes
    nnz = np.count_nonzero(Z, axis=1)
    assert nnz.min() >= 1 and np.median(nnz) <= 5


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_samples=0), "'n_samples' parameter of make_digits_coding"),
    (dict(n_samples=2.5), "'n_samples' parameter of make_digits_coding"),
    (dict(n_atoms=0), "'n_atoms' parameter of make_digits_coding"),
    (dict(n_atoms=1797), "'n_atoms' parameter of make_digits_coding"),
    (dict(n_samples=1600, n_atoms=256), r"1856 exceeds the 1797 images"),
])
def test_make_digits_coding_bad_arguments(kwargs, match):
    from fastlista.datasets import make_digits_coding
    args = dict(n_samples=10, n_atoms=20)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        make_digits_coding(**args)
    with pytest.raises(InvalidParameterError):
        make_digits_coding(**args)
