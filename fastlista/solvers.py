"""Batched Lasso solvers sharing one dictionary.

Every sample x (a row of X) gets its own Lasso problem

    min_z F_x(z) = 1/2 ||x - z D||^2 + lmbd ||z||_1,

solved to a certified accuracy: a sample stops when its duality gap is at
most ``tol * 1/2 ||x||^2`` (so ``tol`` is relative to F_x(0)) and leaves the
batch. All samples share the precomputed ``B = D D^T``, ``c = x D^T`` and
Lipschitz constant, and the compiled kernels run them in cache-sized blocks
on several threads.
"""
import warnings
from dataclasses import dataclass

import numpy as np

from ._kernels import _cd, _solvers
from ._threads import blas_single_threaded
from ._validation import (ConvergenceWarning, InvalidParameterError,
                          check_n_jobs, check_option, check_scalar, check_X_D)
from .lasso import _check_codes
from .lipschitz import global_lipschitz, gram

__all__ = ["LassoResult", "solve_lasso", "ista", "fista", "oista",
           "backtracking_ista", "coordinate_descent"]

METHODS = ("auto", "ista", "fista", "backtracking", "oista", "cd")

#: Iterative methods check the duality gap every GAP_FREQ iterations.
GAP_FREQ = 10
#: Samples per block of the proximal-gradient kernels (fits in L2 cache).
BLOCK_SIZE = 32
#: The history of record_history=True may not exceed this many bytes.
MAX_HISTORY_BYTES = 2 * 1024**3


@dataclass
class LassoResult:
    """Solutions of a batch of Lasso problems, with their certificates.

    Attributes
    ----------
    codes : ndarray of shape (n_samples, n_atoms) or (n_atoms,)
        The solutions, of the dtype of the inputs.
    gap : ndarray of shape (n_samples,) or float
        Duality gap of each code (an upper bound on ``F_x(z) - min F_x``).
    n_iter : ndarray of shape (n_samples,) or int
        Iterations run per sample (epochs over the working set for "cd").
    converged : ndarray of shape (n_samples,) or bool
        Whether ``gap <= tol * 1/2 ||x||^2``.
    history : dict or None
        With ``record_history=True``, ``"objective"`` and ``"gap"`` arrays of
        shape (n_iter.max() + 1, n_samples) (or (n_iter + 1,) for one 1-D
        sample): the values at iterations 0, 1, ...; a sample that stopped
        keeps its last value.
    step_sizes : ndarray or None
        With ``record_history=True`` and method "oista" or "backtracking",
        the step used at each iteration, shape (n_iter.max(), n_samples)
        (NaN after a sample stopped).
    method : str
        The method that ran ("auto" resolved).
    """

    codes: np.ndarray
    gap: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    history: dict = None
    step_sizes: np.ndarray = None
    method: str = None


#: The method "auto" resolves to: coordinate descent with working sets beat
#: the proximal-gradient family at every lmbd measured on the paper's shape
#: (benchmarks/test_bench_solvers.py): at large lmbd its working sets hold a
#: few atoms, at small lmbd the Newton steps on the support end it in a few
#: epochs.
AUTO_METHOD = "cd"


def solve_lasso(X, D, lmbd, method="auto", tol=1e-8, max_iter=10000, Z0=None,
                record_history=False, n_jobs=None):
    """Solve ``min_z 1/2 ||x - z D||^2 + lmbd ||z||_1`` for every row x of X.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or (n_features,)
        Signals, one per row. A 1-D ``X`` is one sample and gives 1-D results.
    D : array-like of shape (n_atoms, n_features)
        Dictionary, one atom per row.
    lmbd : float
        Regularisation level (absolute), >= 0. For ``lmbd >=
        lambda_max(x)`` the solution is exactly 0.
    method : {"auto", "ista", "fista", "backtracking", "oista", "cd"}, default="auto"
        * "ista": proximal gradient with step 1/L.
        * "fista": accelerated, with gradient-based adaptive restart.
        * "backtracking": ISTA with a step per sample found by Beck-Teboulle
          backtracking (tried at 1/0.7 times the last step, shrunk by 0.7).
        * "oista": oracle ISTA (Ablin et al. 2019): step 1/L_S of the
          sample's current support S, kept when the new support stays in S,
          else 1/L. L_S comes from a warm-started power iteration, recomputed
          only when the support changes.
        * "cd": coordinate descent on the Gram matrix with working sets and a
          Newton polish on the support (exact once the signs are right).
        * "auto": the fastest exact method, currently "cd".
    tol : float, default=1e-8
        A sample stops when its duality gap is <= ``tol * 1/2 ||x||^2``. The
        gap costs O(n_atoms) per sample from the gradient already at hand and
        is checked every 10 iterations (every outer loop for "cd"). With
        ``tol=0`` every sample runs exactly ``max_iter`` iterations.
    max_iter : int, default=10000
        Maximum number of iterations (epochs over the working set for "cd").
    Z0 : array-like of shape (n_samples, n_atoms) or (n_atoms,), default=None
        Warm start (zeros by default).
    record_history : bool, default=False
        Record the objective and gap of every sample at every iteration (and
        the step sizes of "oista" and "backtracking"); memory
        (max_iter + 1) x n_samples per record. Not available for "cd".
    n_jobs : int or None, default=None
        Threads. None uses every core of the machine; 1 is single-threaded
        (BLAS included, when threadpoolctl is installed).

    Returns
    -------
    result : LassoResult
        ``codes``, ``gap``, ``n_iter``, ``converged``, ``history``,
        ``step_sizes``.

    Warns
    -----
    ConvergenceWarning
        When ``tol > 0`` and some sample did not reach it in ``max_iter``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista import solve_lasso
    >>> D = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> res = solve_lasso(np.array([[3.0, 0.5]]), D, lmbd=1.0)
    >>> res.codes
    array([[2., 0.]])
    >>> bool(res.converged[0])
    True
    """
    func = "solve_lasso"
    X, D, is_1d = check_X_D(X, D, allow_no_atoms=True)
    lmbd = check_scalar(lmbd, "lmbd", func, low=0.0)
    method = check_option(method, "method", func, METHODS)
    tol = check_scalar(tol, "tol", func, low=0.0)
    max_iter = check_scalar(max_iter, "max_iter", func, low=1, integer=True)
    if not isinstance(record_history, (bool, np.bool_)):
        raise InvalidParameterError(
            f"The 'record_history' parameter of {func} must be a bool. "
            f"Got {record_history!r} instead.")
    n_threads = check_n_jobs(n_jobs, func)
    N, m = X.shape[0], D.shape[0]
    dtype = X.dtype
    if Z0 is None:
        Z = np.zeros((N, m), dtype=dtype)
    else:
        Z = _check_codes(Z0, X, D, name="Z0").copy()
    if method == "auto":
        method = AUTO_METHOD
    if record_history:
        if method == "cd":
            raise InvalidParameterError(
                f"record_history=True is not available for method='cd' in {func}; "
                "use an iterative method ('ista', 'fista', 'oista', 'backtracking').")
        n_bytes = 3 * (max_iter + 1) * N * dtype.itemsize
        if n_bytes > MAX_HISTORY_BYTES:
            raise ValueError(
                f"record_history=True would need {n_bytes / 1024**3:.1f} GiB for "
                f"max_iter={max_iter} and {N} samples; reduce max_iter or the batch.")

    # Far from 1, solve for (x / a, D / b, lmbd / (a b)), whose code is
    # z b / a, with a and b the powers of two nearest max|X| and max|D|:
    # exact in floating point, and ||x||^2, D D^T never overflow or underflow.
    a, b = _power_of_two_scale(X), _power_of_two_scale(D)
    if a != 1 or b != 1:
        X, D, Z, lmbd = X / a, D / b, Z * (b / a), lmbd / (a * b)

    gap = np.zeros(N, dtype=dtype)
    n_iter = np.zeros(N, dtype=np.intc)
    xx = np.einsum("ij,ij->i", X, X)
    # One thread pool at a time: the kernels' OpenMP threads, BLAS held to one
    # thread inside them (idle BLAS workers would busy-wait on their cores).
    context, n_threads = blas_single_threaded(n_threads)
    with context:
        C = np.empty((N, m), dtype=dtype)
        _solvers.correlations(X, D, C, n_threads)
        B = gram(D, 1)
        history, step_sizes = _solve(X, D, C, B, xx, lmbd, method, tol, max_iter,
                                     Z, record_history, n_threads, gap, n_iter)
    converged = gap <= tol * 0.5 * xx if tol > 0 else gap <= 0
    # (a * a or b * b alone may overflow; a gap beyond the float range is inf)
    if a != 1 or b != 1:
        Z *= a / b
    with np.errstate(over="ignore"):
        gap = gap * a * a
        if history is not None:
            history = {k: h * a * a for k, h in history.items()}
        if step_sizes is not None:
            step_sizes = step_sizes / b / b
    if tol > 0 and not converged.all():
        n_bad = int((~converged).sum())
        rel_gap = gap[~converged] / a / a / (0.5 * xx[~converged])
        warnings.warn(
            f"{n_bad} of {N} samples did not converge in max_iter={max_iter} "
            f"iterations of '{method}': largest relative duality gap "
            f"{float(np.max(rel_gap)):.3e}, "
            f"tol={tol:.3e}. Increase max_iter, or use method='cd'.",
            ConvergenceWarning, stacklevel=2)
    result = LassoResult(Z, gap, n_iter, converged, history, step_sizes, method)
    if is_1d:
        result.codes, result.gap = Z[0], gap[0]
        result.n_iter, result.converged = n_iter[0], converged[0]
        if history is not None:
            result.history = {k: h[:, 0] for k, h in history.items()}
        if step_sizes is not None:
            result.step_sizes = step_sizes[:, 0]
    return result


def _solve(X, D, C, B, xx, lmbd, method, tol, max_iter, Z, record_history,
           n_threads, gap, n_iter):
    """Unvalidated solve in place in Z, gap, n_iter; returns the records.

    C = X D^T, B = D D^T, xx = ||x||^2 per sample. Returns (history,
    step_sizes), None when not recorded.
    """
    N, m = Z.shape
    dtype = Z.dtype
    # Screening: lmbd >= lambda_max(x) makes 0 the exact solution (computed
    # with the same c = x D^T as the kernels, so the test is consistent).
    active = np.arange(N, dtype=np.intc)
    if tol > 0 and N:
        lmbd_max = np.abs(C).max(axis=1, initial=0.0)
        zero = lmbd >= lmbd_max
        Z[zero] = 0
        active = np.flatnonzero(~zero).astype(np.intc)

    if record_history:
        hist = [np.full((max_iter + 1, N), np.nan, dtype) for _ in range(3)]
    else:
        hist = [np.empty((1, 1), dtype) for _ in range(3)]

    if len(active) and m:
        if method == "cd":
            _cd.coordinate_descent(C, B, xx, lmbd, Z, active, max_iter, tol,
                                   X.shape[1], n_threads, n_iter, gap)
        else:
            L = global_lipschitz(D)
            if L == 0:
                # D == 0: the objective is lmbd ||z||_1 + const, minimised at 0
                Z[active] = 0
            else:
                DT = np.ascontiguousarray(D.T)
                _solvers.prox_grad(method, X, D, DT, B, C, xx, lmbd, L, Z, active,
                                   max_iter, tol, GAP_FREQ, n_threads, BLOCK_SIZE,
                                   record_history, *hist, n_iter, gap)
    if not record_history:
        return None, None
    T = int(n_iter.max()) + 1 if N else 1
    obj_h, gap_h, step_h = (h[:T] for h in hist)
    # samples screened out, or stopped early, keep their last value
    if N:
        obj_h[0] = np.where(np.isnan(obj_h[0]), 0.5 * xx, obj_h[0])
        gap_h[0] = np.where(np.isnan(gap_h[0]), 0.0, gap_h[0])
        for h in (obj_h, gap_h):
            for t in range(1, T):
                h[t] = np.where(np.isnan(h[t]), h[t - 1], h[t])
    step_sizes = step_h[:T - 1] if method in ("oista", "backtracking") else None
    return {"objective": obj_h, "gap": gap_h}, step_sizes


def _power_of_two_scale(A):
    """1, or the power of two nearest max|A| when it is far from 1.

    Far means beyond 2**+-100 in float64 and 2**+-30 in float32: squares and
    sums of squares of the data stay representable inside that range.
    """
    top = float(np.max(np.abs(A))) if A.size else 0.0
    limit = 30 if A.dtype == np.float32 else 100
    if top == 0 or abs(np.log2(top)) <= limit:
        return 1.0
    return float(2.0 ** np.round(np.log2(top)))


def _method_function(method, doc_name):
    def solver(X, D, lmbd, tol=1e-8, max_iter=10000, Z0=None,
               record_history=False, n_jobs=None):
        return solve_lasso(X, D, lmbd, method=method, tol=tol, max_iter=max_iter,
                           Z0=Z0, record_history=record_history, n_jobs=n_jobs)
    solver.__name__ = solver.__qualname__ = doc_name
    solver.__doc__ = (
        f"``solve_lasso(X, D, lmbd, method={method!r}, ...)``: see "
        ":func:`solve_lasso` for the parameters and the returned LassoResult.")
    return solver


ista = _method_function("ista", "ista")
fista = _method_function("fista", "fista")
oista = _method_function("oista", "oista")
backtracking_ista = _method_function("backtracking", "backtracking_ista")
coordinate_descent = _method_function("cd", "coordinate_descent")
