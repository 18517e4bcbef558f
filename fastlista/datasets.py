"""Sparse coding problems: simulated, and real 8x8 digit images.

The paper's simulated benchmark (Ablin et al., NeurIPS 2019, and its code
``adopty/datasets.py``): a Gaussian dictionary with unit-norm atoms, dense
Gaussian codes, and signals scaled so that ``lambda_max(x) = ||x D^T||_inf = 1``
for every sample (to the rounding of that division: within a few units in the
last place). With that scaling, ``lmbd`` is directly a fraction of
``lambda_max``: ``lmbd`` above 1 gives the zero code (``lmbd = 1`` is on the
boundary, to rounding), ``lmbd = 0.8`` sparse codes and ``lmbd = 0.1`` dense
ones.

:func:`make_digits_coding` builds the same kind of problem from the 8x8
digit images that scikit-learn ships (no download).

All arrays follow the library's conventions: ``D`` has shape
``(n_atoms, n_features)`` (one atom per row), ``X`` has shape
``(n_samples, n_features)`` (one signal per row); both are float64 and
C-contiguous.
"""
import decimal
import math

import numpy as np

from ._solvers import solve_lasso
from ._validation import InvalidParameterError, check_random_state, check_scalar, short_repr

__all__ = ["make_coding", "make_sparse_coding", "make_digits_coding"]

# make_sparse_coding: bounds on the candidate draws
_MAX_ROUNDS = 10                # at most this many batches of candidates
_MIN_CANDIDATES = 100           # a batch is never smaller than this
_MAX_CANDIDATE_FACTOR = 50      # never draw more than 50 * n_samples + 1000 in all


#: the largest array NumPy can address, in bytes
_MAX_BYTES = np.iinfo(np.intp).max


def _sci(n):
    """The int ``n`` in scientific notation, whatever its size (``:.3g``
    converts it to a float first: OverflowError beyond 1.8e308)."""
    return f"{decimal.Decimal(n):.3g}"


def _check_sizes(func, n_samples, n_atoms, n_features, n_rows=None):
    """Validate the sizes, and refuse those of an array of float64 beyond
    what NumPy can address, naming them: D (n_atoms, n_features), then the
    codes (n_rows, n_atoms) and the signals (n_rows, n_features) drawn, with
    ``n_rows`` signals drawn at once (n_samples when None)."""
    n_samples = check_scalar(n_samples, "n_samples", func, low=1, integer=True)
    n_atoms = check_scalar(n_atoms, "n_atoms", func, low=1, integer=True)
    n_features = check_scalar(n_features, "n_features", func, low=1, integer=True)
    sizes = dict(n_samples=n_samples, n_atoms=n_atoms, n_features=n_features)
    rows = n_samples if n_rows is None else n_rows(n_samples)
    for what, names, shape in (
            ("the dictionary D", ("n_atoms", "n_features"), (n_atoms, n_features)),
            ("the codes drawn", ("n_samples", "n_atoms"), (rows, n_atoms)),
            ("the signals drawn", ("n_samples", "n_features"), (rows, n_features))):
        n_bytes = 8 * math.prod(shape)
        if n_bytes > _MAX_BYTES:
            given = " and ".join(f"{name}={short_repr(sizes[name])}" for name in names)
            raise InvalidParameterError(
                f"{func}: {given} give {what} the shape "
                f"({', '.join(map(short_repr, shape))}) of float64, {_sci(n_bytes)} bytes, "
                f"beyond the largest array NumPy can address ({_sci(_MAX_BYTES + 1)} "
                "bytes); ask for smaller sizes.")
    return n_samples, n_atoms, n_features


def _draw_dictionary(rng, n_atoms, n_features):
    """Gaussian atoms, each row scaled to unit Euclidean norm."""
    D = rng.standard_normal((n_atoms, n_features))
    norms = np.linalg.norm(D, axis=1, keepdims=True)
    # a zero row has probability 0; guard anyway so no NaN can ever appear
    norms[norms == 0] = 1.0
    D /= norms
    return np.ascontiguousarray(D)


def _scale_to_unit_lambda_max(X, D):
    """Divide each row of X by ``lambda_max(x) = ||x D^T||_inf`` (a new array).

    A row with lambda_max = 0 (orthogonal to every atom: probability 0 with
    Gaussian draws) is left unscaled rather than divided by 0.
    """
    lmax = np.abs(X @ D.T).max(axis=1, keepdims=True)
    lmax[lmax == 0] = 1.0
    return X / lmax


def _draw_signals(rng, n_samples, D):
    """Signals ``z D`` with dense Gaussian ``z``, each scaled to lambda_max = 1."""
    Z = rng.standard_normal((n_samples, D.shape[0]))
    return np.ascontiguousarray(_scale_to_unit_lambda_max(Z @ D, D))


def make_coding(n_samples=1000, n_atoms=256, n_features=64, random_state=None):
    """Generate the paper's simulated sparse coding problem.

    The dictionary ``D`` has i.i.d. standard Gaussian entries and its rows
    (atoms) are scaled to unit norm. Each signal is ``x = z D`` with a dense
    standard Gaussian code ``z``, then divided by ``max_j |x D_j^T|`` so that
    ``lambda_max(x) = 1`` (to rounding, a few units in the last place): the
    Lasso solution of every sample is 0 for ``lmbd`` above 1.

    The generating codes are not returned: after the scaling they are not the
    Lasso solution of ``x`` for any ``lmbd``. This is an (unsupervised) Lasso
    benchmark, not a sparse recovery problem.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of signals N, >= 1.
    n_atoms : int, default=256
        Number of atoms m, >= 1.
    n_features : int, default=64
        Dimension n of the signals, >= 1.
    random_state : int, RandomState instance or None, default=None
        Seed of the draws. The dictionary is drawn first, then the codes, so
        with the same seed a larger ``n_samples`` extends the same dictionary's
        signals.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
        Signals, one per row, float64, C-contiguous, with
        ``np.abs(X @ D.T).max(axis=1)`` equal to 1 within a few units in the
        last place.
    D : ndarray of shape (n_atoms, n_features)
        Dictionary, one unit-norm atom per row, float64, C-contiguous.

    See Also
    --------
    make_sparse_coding : the same law, filtered by the sparsity of the
        Lasso solutions.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista.datasets import make_coding
    >>> X, D = make_coding(n_samples=100, n_atoms=32, n_features=8, random_state=0)
    >>> X.shape, D.shape
    ((100, 8), (32, 8))
    >>> bool(np.allclose(np.linalg.norm(D, axis=1), 1.0))
    True
    >>> bool(np.allclose(np.abs(X @ D.T).max(axis=1), 1.0))
    True
    """
    n_samples, n_atoms, n_features = _check_sizes(
        "make_coding", n_samples, n_atoms, n_features)
    rng = check_random_state(random_state, "make_coding")
    D = _draw_dictionary(rng, n_atoms, n_features)
    X = _draw_signals(rng, n_samples, D)
    return X, D


def make_sparse_coding(n_samples=1000, n_atoms=256, n_features=64, lmbd=0.8,
                       max_nnz=3, min_nnz=1, random_state=None):
    """Generate signals whose Lasso solutions have a prescribed sparsity.

    Candidate signals are drawn from the law of :func:`make_coding` (one
    dictionary ``D`` for all of them; ``lambda_max(x) = 1`` for each), their
    Lasso problems at ``lmbd`` are solved with :func:`fastlista.solve_lasso`
    (default method, relative duality gap tolerance ``1e-10``), and the
    first ``n_samples`` candidates whose solution has between ``min_nnz``
    and ``max_nnz`` non-zero coefficients (``z != 0``) are kept, in the order
    they were drawn.

    Candidates are drawn in batches sized from the acceptance rate observed
    so far; at most 10 batches and ``50 * n_samples + 1000`` candidates are
    drawn in all. If fewer than ``n_samples`` candidates pass by then, a
    ``ValueError`` says how many passed.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of signals N to return, >= 1.
    n_atoms : int, default=256
        Number of atoms m, >= 1.
    n_features : int, default=64
        Dimension n of the signals, >= 1.
    lmbd : float, default=0.8
        Regularisation level at which sparsity is measured, >= 0. Since
        ``lambda_max = 1`` (to rounding), ``lmbd`` above 1 gives only zero
        solutions.
    max_nnz : int or None, default=3
        Largest number of non-zeros allowed in a solution, in
        ``[min_nnz, n_atoms]``. ``None`` means ``n_atoms`` (no upper bound).
    min_nnz : int, default=1
        Smallest number of non-zeros allowed, in ``[0, max_nnz]``.
    random_state : int, RandomState instance or None, default=None
        Seed of the draws.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
        Signals, one per row, float64, C-contiguous, ``lambda_max(x) = 1``,
        whose Lasso solution at ``lmbd`` has between ``min_nnz`` and
        ``max_nnz`` non-zeros.
    D : ndarray of shape (n_atoms, n_features)
        Dictionary, one unit-norm atom per row, float64, C-contiguous.

    Raises
    ------
    ValueError
        On invalid arguments (the message names the argument), or when fewer
        than ``n_samples`` candidates pass the sparsity filter within the
        draw budget.

    Notes
    -----
    A Lasso solution that is unique has at most ``n_features`` non-zeros
    (with Gaussian atoms, uniqueness holds with probability 1 for
    ``lmbd > 0``), so ``min_nnz > n_features`` can never be met. With the
    default ``n_atoms=256, n_features=64`` and ``lmbd=0.8``, the median
    number of non-zeros is about 3 and about half of the candidates pass
    the default filter ``1 <= nnz <= 3``.

    Examples
    --------
    >>> import numpy as np
    >>> import fastlista
    >>> from fastlista.datasets import make_sparse_coding
    >>> X, D = make_sparse_coding(n_samples=50, n_atoms=32, n_features=8,
    ...                           lmbd=0.8, max_nnz=2, min_nnz=1, random_state=0)
    >>> Z = fastlista.solve_lasso(X, D, 0.8, tol=1e-10).codes
    >>> nnz = np.count_nonzero(Z, axis=1)
    >>> bool(((nnz >= 1) & (nnz <= 2)).all())
    True
    """
    func = "make_sparse_coding"
    # (the first batch of candidates: 2 n_samples, at least _MIN_CANDIDATES)
    n_samples, n_atoms, n_features = _check_sizes(
        func, n_samples, n_atoms, n_features,
        n_rows=lambda n: max(2 * n, _MIN_CANDIDATES))
    lmbd = check_scalar(lmbd, "lmbd", func, low=0.0)
    if max_nnz is None:
        max_nnz = n_atoms
    max_nnz = check_scalar(max_nnz, "max_nnz", func, low=0, high=n_atoms, integer=True)
    min_nnz = check_scalar(min_nnz, "min_nnz", func, low=0, high=n_atoms, integer=True)
    if min_nnz > max_nnz:
        raise InvalidParameterError(
            f"The 'min_nnz' parameter of {func} must be <= max_nnz; got "
            f"min_nnz={min_nnz} > max_nnz={max_nnz}.")
    rng = check_random_state(random_state, func)

    D = _draw_dictionary(rng, n_atoms, n_features)

    budget = _MAX_CANDIDATE_FACTOR * n_samples + 1000
    kept, n_kept, n_drawn = [], 0, 0
    for _ in range(_MAX_ROUNDS):
        remaining = n_samples - n_kept
        if remaining <= 0 or n_drawn >= budget:
            break
        if n_drawn == 0:
            n_batch = 2 * n_samples
        else:
            # 1.5x the expected need at the observed rate (a rate of 0 so far
            # counts as one success in the next draw)
            rate = max(n_kept, 1) / n_drawn
            n_batch = math.ceil(1.5 * remaining / rate)
        n_batch = int(min(max(n_batch, _MIN_CANDIDATES), budget - n_drawn))
        X = _draw_signals(rng, n_batch, D)
        codes = solve_lasso(X, D, lmbd, tol=1e-10).codes
        nnz = np.count_nonzero(codes, axis=1)
        ok = np.flatnonzero((nnz >= min_nnz) & (nnz <= max_nnz))[:remaining]
        kept.append(X[ok])
        n_kept += ok.size
        n_drawn += n_batch

    if n_kept < n_samples:
        raise ValueError(
            f"{func}: only {n_kept} of the {n_samples} requested samples have a "
            f"Lasso solution at lmbd={lmbd!r} with between min_nnz={min_nnz} and "
            f"max_nnz={max_nnz} non-zeros, after drawing {n_drawn} candidates "
            f"(acceptance rate {n_kept / n_drawn:.3g}). Widen [min_nnz, max_nnz], "
            "change lmbd, or ask for fewer samples.")
    X = np.ascontiguousarray(np.concatenate(kept, axis=0))
    return X, D


#: Images in scikit-learn's digits data set (``load_digits``).
N_DIGITS = 1797


def make_digits_coding(n_samples=1000, n_atoms=256, random_state=None):
    """Sparse coding of real images: 8x8 digits on a dictionary of digits.

    The 1797 images of ``sklearn.datasets.load_digits`` (8x8 pixels, shipped
    with scikit-learn, no download) are each standardised (zero mean and
    unit standard deviation over their 64 pixels) and shuffled with
    ``random_state``. The first ``n_atoms`` images, scaled to unit norm, are
    the atoms of ``D``; the next ``n_samples`` images are the signals, each
    divided by ``||x D^T||_inf`` so that ``lambda_max(x) = 1`` as in
    :func:`make_coding`. Signals and atoms are distinct images.

    Differences from the paper's "digits" problem (``make_image_coding`` of
    the authors' code, used in their Fig. 6):

    * source: the paper takes MNIST (70 000 images of 28x28, downloaded with
      ``fetch_openml``), crops the 4-pixel border to 20x20 and resizes to 8x8
      with ``skimage.transform.resize``. Here the images are the 1797 UCI
      "optical recognition" digits: already 8x8, with 17 grey levels (0-16),
      block-averaged from 32x32 bitmaps of other writers. Strokes are coarser
      and the images less varied than resized MNIST;
    * size: at most 1797 images in all, so ``n_atoms + n_samples <= 1797``
      (with 256 atoms, at most 1541 signals; the paper uses 10 000 training
      and 10 000 test signals);
    * signals: the paper replaces the first half of its signals by synthetic
      ``z D`` with Gaussian ``z``; here every signal is a real image.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of signals N, >= 1, with ``n_samples + n_atoms <= 1797``.
    n_atoms : int, default=256
        Number of atoms m, >= 1.
    random_state : int, RandomState instance or None, default=None
        Seed of the shuffle of the images.

    Returns
    -------
    X : ndarray of shape (n_samples, 64)
        Signals, one image per row, float64, C-contiguous, with
        ``np.abs(X @ D.T).max(axis=1)`` equal to 1 within a few units in the
        last place.
    D : ndarray of shape (n_atoms, 64)
        Dictionary, one unit-norm image per row, float64, C-contiguous.

    Raises
    ------
    ValueError
        On invalid sizes, or when ``n_samples + n_atoms`` exceeds the 1797
        available images. ImportError without scikit-learn.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista.datasets import make_digits_coding
    >>> X, D = make_digits_coding(n_samples=200, n_atoms=128, random_state=0)
    >>> X.shape, D.shape
    ((200, 64), (128, 64))
    >>> bool(np.allclose(np.abs(X @ D.T).max(axis=1), 1.0))
    True
    """
    func = "make_digits_coding"
    n_samples = check_scalar(n_samples, "n_samples", func, low=1,
                             high=N_DIGITS - 1, integer=True)
    n_atoms = check_scalar(n_atoms, "n_atoms", func, low=1, high=N_DIGITS - 1,
                           integer=True)
    if n_samples + n_atoms > N_DIGITS:
        raise InvalidParameterError(
            f"{func}: n_samples + n_atoms = {n_samples} + {n_atoms} = "
            f"{n_samples + n_atoms} exceeds the {N_DIGITS} images of "
            "sklearn.datasets.load_digits; ask for fewer samples or atoms.")
    rng = check_random_state(random_state, func)
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - sklearn is a test extra
        raise ImportError(
            f"{func} needs scikit-learn (pip install 'fastlista[sklearn]').") from exc

    images = load_digits().data.astype(np.float64)
    images = images - images.mean(axis=1, keepdims=True)
    # every digit has several grey levels: the std is never 0 (min ~4.8)
    images /= images.std(axis=1, keepdims=True)
    images = images[rng.permutation(images.shape[0])]

    D = images[:n_atoms]
    D = D / np.linalg.norm(D, axis=1, keepdims=True)
    X = _scale_to_unit_lambda_max(images[n_atoms:n_atoms + n_samples], D)
    return np.ascontiguousarray(X), np.ascontiguousarray(D)
