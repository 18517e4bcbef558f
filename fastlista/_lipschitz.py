"""Lipschitz constants of the Lasso gradient, global and support-restricted.

L = largest eigenvalue of B = D D^T is the Lipschitz constant of z -> z B - c;
for a support S of atoms, L_S = largest eigenvalue of B_SS = ||D_S||_2^2 is
the constant of the gradient restricted to codes supported in S. By eigenvalue
interlacing L_S <= L_T for S in T, and L_S is often much smaller than L when S
is small: this is the step size lever of OISTA and SLISTA.
"""
import numpy as np
from scipy.linalg import eigh

from ._kernels import _lipschitz, _solvers
from ._lasso import Scaled
from ._threads import kernel_threads
from ._validation import (as_array, check_array, check_dense, check_dictionary_shape,
                          check_max_iter, check_scalar)

__all__ = ["lipschitz"]


def lipschitz(D, support=None, *, tol=1e-10, max_iter=10000, n_jobs=None):
    """Largest eigenvalue of ``D D^T``, optionally restricted to supports.

    The global L is computed exactly (LAPACK, in double precision, on the
    smaller of ``D D^T`` and ``D^T D``). Supports, in Cython and double
    precision: one or two atoms have a closed form; up to 16 atoms,
    repeated squaring of ``B_SS`` brackets ``L_S`` between a Rayleigh
    quotient (below) and ``trace(B_SS^p)^(1/p)`` (above, p = 2^s after s
    squarings) and stops when the two agree to ``tol`` relatively (or to
    their rounding, about ``|S|^2`` ulps), with LAPACK when the bracket has
    not closed within ``max_iter`` power steps (``2^s <= max_iter``);
    larger supports go to LAPACK (every eigenvalue of the smaller of
    ``B_SS`` and ``D_S^T D_S``), exact, in about the time of a power
    iteration or less, whose quotients no stopping rule can certify. Every
    value is thus within ``tol`` of ``L_S``, whatever the spectrum (equal
    or clustered top eigenvalues included). Batched supports run in
    parallel (OpenMP).
    Dictionaries of any magnitude are scaled by an exact power of two
    first, and a support whose atoms are all smaller than 2^-300 times D's
    largest entry by the power of two of its own atoms.

    Parameters
    ----------
    D : array-like of shape (n_atoms, n_features)
        Dictionary, one atom per row.
    support : None or array-like of bool, shape (n_atoms,) or (n_samples, n_atoms)
        Atoms of each support S. ``None`` means all atoms (the global L).
    tol : float, default=1e-10
        Relative width of the bracket for supports of 3 to 16 atoms (raised
        to 8 machine epsilons of float64 when smaller).
    max_iter : int, default=10000
        Power steps the bracket may take per support (``2^s <= max_iter``
        after ``s`` squarings) before LAPACK takes over.
    n_jobs : int or None, default=None
        Threads for batched supports (None or -1: every core, or OpenMP's limit
        if lower).

    Returns
    -------
    L : float or ndarray of shape (n_samples,)
        ``L`` (support None), ``L_S`` (1-D support) or one ``L_S`` per row
        of a 2-D support, rounded to D's dtype (inf beyond its range; a
        float holds a float32 value exactly). An empty
        support, or a dictionary without atoms, gives 0.0.

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
    func = "lipschitz"
    D = check_dictionary_shape(check_array(D, "D"))
    tol = check_scalar(tol, "tol", func, low=0.0)
    max_iter = check_max_iter(max_iter, func)
    m = D.shape[0]
    if support is None:
        with kernel_threads(n_jobs, func):
            L = global_lipschitz(D)
        with np.errstate(over="ignore"):
            return float(D.dtype.type(L))
    S = as_array(check_dense(support, "support"), "support")
    if S.size == 0 and S.dtype != bool:
        # an empty list (NumPy's float64 []): no atom to mistake for a flag
        S = S.astype(bool)
    if S.dtype != bool:
        raise ValueError(
            f"support must be a boolean array of shape (n_atoms,) = ({m},) or "
            f"(n_samples, n_atoms); got dtype {S.dtype}.")
    if S.ndim not in (1, 2) or S.shape[-1] != m:
        raise ValueError(
            f"support must have shape (n_atoms,) = ({m},) or (n_samples, {m}) "
            f"to match D {D.shape}; got support.shape={S.shape}.")
    with kernel_threads(n_jobs, func) as n_threads:
        L = any_scale_support_lipschitz(D, np.atleast_2d(S), tol, max_iter, n_threads)
    with np.errstate(over="ignore"):
        L = L.astype(D.dtype)
    return float(L[0]) if S.ndim == 1 else L


#: a support whose atoms are all below this, relative to D's largest entry,
#: is computed on its own atoms: its squares (below 2^-600 in D's scaled
#: units) would lose digits to, or entirely be, float64's underflow
_OWN_SCALE = 2.0 ** -300


def any_scale_support_lipschitz(D, S, tol, max_iter, n_threads):
    """Unvalidated batched L_S (float64, inf beyond its range) of a 2-D
    boolean support, whatever the magnitudes of D's atoms.

    D is widened to float64, then scaled by the exact power of two of its
    largest entry, and the kernel runs on it and its B, so that the squares
    of a float32 dictionary's small atoms do not underflow float32. A support
    whose atoms are all far smaller than D's largest (a unit atom next to
    one of norm 1e170, say) gets the exact ``global_lipschitz`` of its own
    atoms, scaled by their own power of two.
    """
    # (in double before the scaling: a float32 atom far below the largest
    # became subnormal or 0 once scaled in float32)
    D64 = D.astype(np.float64)
    sc = Scaled.of(np.zeros((0, D.shape[1])), D64, check_atoms=False)
    D64 = sc.D
    L = support_lipschitz(D64, gram(D64, n_threads), S, tol, max_iter, n_threads)
    with np.errstate(over="ignore"):
        L = np.ldexp(L, 2 * sc.eb)
    tiny = np.max(np.abs(D64), axis=1, initial=0.0) < _OWN_SCALE
    if tiny.any():
        # the non-empty supports of tiny atoms only (boolean reductions: a
        # product S * atom_norms was a float temporary of N x m, 2.5 ms of
        # a 10 000-support call that the kernel answers in 3.5 ms)
        small = np.flatnonzero(S[:, tiny].any(axis=1) & ~S[:, ~tiny].any(axis=1))
        for i in small:
            L[i] = global_lipschitz(D[S[i]])
    return L


def gram(D, n_threads):
    """B = D D^T on the kernels' OpenMP threads (BLAS single-threaded)."""
    B = np.empty((D.shape[0], D.shape[0]), dtype=D.dtype)
    _solvers.correlations(D, D, B, n_threads)
    return B


#: shared_gram keeps the last Gram matrix it computed when it and its
#: dictionary take at most this many bytes each (a float64 B of up to 724
#: atoms): one-sample solve_lasso calls on the paper's 256 x 64 dictionary
#: take 0.53-0.64 of their time without it (benchmarks/test_bench_solvers.py,
#: "one sample a call").
_SHARED_GRAM_BYTES = 1 << 22
#: (n_threads, a read-only copy of D, its read-only B), or None
_last_gram = None


def shared_gram(D, n_threads):
    """B = D D^T as :func:`gram`, reused from the previous call.

    The previous call's B is returned (the same read-only array) when
    ``D`` holds the same bits as that call's dictionary (compared with a
    copy taken then, so that a dictionary changed in place since is seen)
    and ``n_threads`` is the same (the kernels' rounding may depend on
    it): the result is what :func:`gram` computes, whatever was called
    before. Callers must not write to B.
    """
    global _last_gram
    last = _last_gram
    if (last is not None and last[0] == n_threads and last[1].shape == D.shape
            and last[1].dtype == D.dtype
            and np.array_equal(last[1].view(np.uint64), D.view(np.uint64))):
        return last[2]
    B = gram(D, n_threads)
    if B.nbytes <= _SHARED_GRAM_BYTES and D.nbytes <= _SHARED_GRAM_BYTES:
        D_copy = D.copy()
        D_copy.flags.writeable = False
        B.flags.writeable = False
        _last_gram = (n_threads, D_copy, B)
    return B


def global_lipschitz(D):
    """Unvalidated exact L = ||D||_2^2 (float, inf beyond the float range).

    In double precision on the smaller Gram matrix of D scaled by a power of
    two (exact), so that the squares neither overflow nor underflow.
    """
    if D.shape[0] == 0:
        return 0.0
    D = D.astype(np.float64, copy=False)
    sc = Scaled.of(np.zeros((0, D.shape[1])), D, check_atoms=False)
    D = sc.D
    G = D @ D.T if D.shape[0] <= D.shape[1] else D.T @ D
    # every eigenvalue (LAPACK's dsterf): the top one alone, by bisection
    # (subset_by_index; 0.6 x the time at r = 256, 0.4 x at 1024), fails on
    # a top eigenvalue repeated to rounding in a basis that is not the
    # canonical one (D = [I; DCT], a union of orthonormal bases, gave
    # "Internal Error" to every proximal method), and OpenBLAS's LAPACK
    # writes one int before its workspace when it does
    top = max(eigh(G, eigvals_only=True)[-1], 0.0)
    with np.errstate(over="ignore"):
        return float(np.ldexp(top, 2 * sc.eb))


def support_lipschitz(D, B, support, tol, max_iter, n_threads):
    """Unvalidated batched L_S (float64) of a 2-D boolean ``support``."""
    S = np.ascontiguousarray(support).view(np.uint8)
    # a tolerance below double's resolution would only stall the bracket
    tol = max(tol, 8 * np.finfo(np.float64).eps)
    L = _lipschitz.lipschitz_supports(B, D, S, tol, max_iter, n_threads)
    bad = np.flatnonzero(~np.isfinite(L))
    if bad.size:
        raise FloatingPointError(
            f"LAPACK failed to compute L_S for the supports of rows {bad[:5].tolist()}.")
    return L
