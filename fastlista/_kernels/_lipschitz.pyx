"""Lipschitz constants L = ||D||_2^2 and L_S = ||D_S||_2^2 (batched)."""
import numpy as np
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from ._lipschitz cimport support_lipschitz, exact_lipschitz


cdef inline int gather_support(const unsigned char *mask, int m,
                              int *idx) noexcept nogil:
    """idx[:k] = flatnonzero(mask), k returned; 8 bytes at a time."""
    cdef int j = 0, k = 0, b
    cdef uint64_t word
    while j + 8 <= m:
        memcpy(&word, mask + j, 8)
        if word:
            for b in range(8):
                if mask[j + b]:
                    idx[k] = j + b
                    k = k + 1
        j = j + 8
    while j < m:
        if mask[j]:
            idx[k] = j
            k = k + 1
        j = j + 1
    return k


cdef int MIN_PER_THREAD = 2048


def lipschitz_supports(const floating[:, ::1] B, const floating[:, ::1] D,
                       const unsigned char[:, ::1] support, floating tol,
                       int max_iter, int n_threads):
    """L_S of each row of a boolean (N, m) support matrix, OpenMP over rows.

    Power iteration, or LAPACK when it does not converge in max_iter.
    Returns an (N,) array of the dtype of D.
    """
    cdef int N = support.shape[0], m = D.shape[0], n = D.shape[1]
    cdef int i, k, t, r = min(m, n)
    cdef bint converged
    dtype = np.float32 if floating is float else np.float64
    out_arr = np.zeros(N, dtype=dtype)
    cdef floating[::1] out = out_arr
    # a thread per MIN_PER_THREAD supports at least: a region woken for less
    # costs more than it saves
    n_threads = max(1, min(n_threads, N // MIN_PER_THREAD))
    cdef int[:, ::1] idx = np.empty((n_threads, m), dtype=np.intc)
    cdef floating[:, ::1] v = np.empty((n_threads, m), dtype=dtype)
    cdef floating[:, ::1] w = np.empty((n_threads, m), dtype=dtype)
    # B_SS is only formed when |S| < 2 n (see support_lipschitz)
    cdef floating[:, ::1] work = np.empty((n_threads, max(min(m, 2 * n) ** 2, n, 1)), dtype=dtype)
    cdef floating[:, ::1] A = np.empty((n_threads, r * r), dtype=dtype)
    cdef floating[:, ::1] lwork = np.empty((n_threads, 26 * r), dtype=dtype)
    cdef int[:, ::1] iwork = np.empty((n_threads, 10 * r), dtype=np.intc)
    if N == 0:
        return out_arr
    with nogil:
        for i in prange(N, num_threads=n_threads, schedule="dynamic", chunksize=64):
            t = threadid()
            k = gather_support(&support[i, 0], m, &idx[t, 0])
            out[i] = support_lipschitz(&B[0, 0], &D[0, 0], m, n, &idx[t, 0], k,
                                       &v[t, 0], &w[t, 0], &work[t, 0],
                                       False, tol, max_iter, &converged)
            if not converged:
                out[i] = exact_lipschitz(&B[0, 0], &D[0, 0], m, n, &idx[t, 0], k,
                                         &A[t, 0], &lwork[t, 0], &iwork[t, 0])
    return out_arr
