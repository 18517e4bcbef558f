"""Lipschitz constants of the Lasso gradient, global and support-restricted.

L = largest eigenvalue of B = D D^T is the Lipschitz constant of z -> z B - c;
for a support S of atoms, L_S = largest eigenvalue of B_SS = ||D_S||_2^2 is
the constant of the gradient restricted to codes supported in S. By eigenvalue
interlacing L_S <= L_T for S in T, and L_S is often much smaller than L when S
is small: this is the step size lever of OISTA and SLISTA.
"""
import numpy as np
from scipy.linalg import eigh

from ._kernels import _lipschitz
from ._threads import blas_thread_limit
from ._validation import check_array, check_n_jobs, check_scalar

__all__ = ["lipschitz"]


def lipschitz(D, support=None, *, tol=1e-10, max_iter=10000, n_jobs=None):
    """Largest eigenvalue of ``D D^T``, optionally restricted to supports.

    The global L is computed exactly (LAPACK, on the smaller of ``D D^T``
    and ``D^T D``). Supports use a power iteration in Cython: exact for one
    or two atoms, on ``B_SS`` (``|S|^2`` flops a step) when ``|S| < 2
    n_features`` and on ``D_S`` (``2 |S| n_features`` flops) otherwise,
    stopped when the extrapolated error of the Rayleigh quotient is below
    ``tol`` relatively, with a LAPACK fallback when ``max_iter`` is reached.
    Batched supports run in parallel (OpenMP). A power iteration cannot
    separate two top eigenvalues closer than about ``sqrt(tol)``: its
    estimate then lies between them.

    Parameters
    ----------
    D : array-like of shape (n_atoms, n_features)
        Dictionary, one atom per row.
    support : None or array-like of bool, shape (n_atoms,) or (n_samples, n_atoms)
        Atoms of each support S. ``None`` means all atoms (the global L).
    tol : float, default=1e-10
        Relative tolerance of the power iteration (raised to 8 machine
        epsilons of the dtype when smaller).
    max_iter : int, default=10000
        Maximum number of power iterations per support.
    n_jobs : int or None, default=None
        Threads for batched supports (None or -1: every core).

    Returns
    -------
    L : float or ndarray of shape (n_samples,)
        ``L`` (support None), ``L_S`` (1-D support) or one ``L_S`` per row
        of a 2-D support. An empty support, or a dictionary without atoms,
        gives 0.0.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista import lipschitz
    >>> D = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    >>> lipschitz(D)
    4.0
    >>> lipschitz(D, support=[True, False, True])
    1.0
    """
    D = check_array(D, "D")
    tol = check_scalar(tol, "tol", "lipschitz", low=0.0)
    max_iter = check_scalar(max_iter, "max_iter", "lipschitz", low=1, integer=True)
    n_threads = check_n_jobs(n_jobs, "lipschitz")
    m = D.shape[0]
    if support is None:
        return global_lipschitz(D) if m else 0.0
    S = np.asarray(support)
    if S.dtype != bool:
        raise ValueError(
            f"support must be a boolean array of shape (n_atoms,) = ({m},) or "
            f"(n_samples, n_atoms); got dtype {S.dtype}.")
    if S.ndim not in (1, 2) or S.shape[-1] != m:
        raise ValueError(
            f"support must have shape (n_atoms,) = ({m},) or (n_samples, {m}) "
            f"to match D {D.shape}; got support.shape={S.shape}.")
    L = support_lipschitz(D, gram(D, n_threads), np.atleast_2d(S), tol, max_iter,
                          n_threads)
    return float(L[0]) if S.ndim == 1 else L


#: below this many flops a product runs on one BLAS thread: waking a second
#: costs more (measured on a busy machine: D D^T for 256 x 64 atoms took 8 ms
#: on 2 BLAS threads, 0.18 ms on one)
SMALL_PRODUCT = 5e7


def gram(D, n_threads):
    """B = D D^T, on one BLAS thread when it is small."""
    m, n = D.shape
    with blas_thread_limit(1 if 2.0 * m * m * n < SMALL_PRODUCT else n_threads):
        return D @ D.T


def global_lipschitz(D):
    """Unvalidated exact L = ||D||_2^2, on the smaller Gram matrix."""
    G = D @ D.T if D.shape[0] <= D.shape[1] else D.T @ D
    r = G.shape[0]
    return float(max(eigh(G, eigvals_only=True, subset_by_index=[r - 1, r - 1])[0], 0.0))


def support_lipschitz(D, B, support, tol, max_iter, n_threads):
    """Unvalidated batched L_S: ``support`` is a 2-D boolean array."""
    S = np.ascontiguousarray(support).view(np.uint8)
    # a tolerance below the dtype's resolution would only stall the iteration
    tol = max(tol, 8 * np.finfo(D.dtype).eps)
    return _lipschitz.lipschitz_supports(B, D, S, D.dtype.type(tol), max_iter, n_threads)
