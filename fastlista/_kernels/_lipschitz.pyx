"""Batched L_S = ||D_S||_2^2, one support a row of a boolean matrix."""
import numpy as np
from cython cimport floating
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from ._blocks cimport (in_main_thread, raise_interrupt, run_blocks, table_alloc,
                      table_free)
from ._lipschitz cimport TINY, exact_lipschitz, support_lipschitz


cdef inline int gather_support(const unsigned char *mask, Py_ssize_t m,
                               int *idx) noexcept nogil:
    """idx[:k] = flatnonzero(mask), k returned; 8 bytes at a time."""
    cdef Py_ssize_t j = 0, b
    cdef int k = 0
    cdef uint64_t word
    while j + 8 <= m:
        memcpy(&word, mask + j, 8)
        if word:
            for b in range(8):
                if mask[j + b]:
                    idx[k] = <int> (j + b)
                    k = k + 1
        j = j + 8
    while j < m:
        if mask[j]:
            idx[k] = <int> j
            k = k + 1
        j = j + 1
    return k


cdef struct LipWork:
    int *idx        # (m,) atoms of the support
    double *v       # (m,) eigenvector estimate
    double *w       # (m,)
    double *A       # LAPACK fallback: min(m, n)^2
    double *lwork   # 27 min(m, n)
    int *iwork      # 10 min(m, n)


cdef struct LipCtx:
    const void *B
    const void *D
    const unsigned char *support
    double *out
    Py_ssize_t m, n
    double tol
    int max_iter
    LipWork *work


cdef void lip_block(floating *tag, LipCtx *c, int tid, Py_ssize_t start,
                    int nb) noexcept nogil:
    cdef LipWork *w = &c.work[tid]
    cdef Py_ssize_t i
    cdef int k
    cdef bint converged
    cdef double L
    for i in range(start, start + nb):
        k = gather_support(c.support + i * c.m, c.m, w.idx)
        # up to TINY atoms: a closed form, or the bracket of repeated
        # squaring; beyond, LAPACK: exact, in 0.1-1.15 x the time of the
        # cold power iteration it replaced (16 < k <= 3 n, n = 32 to 256),
        # which certifies nothing (see support_lipschitz)
        converged = False
        if k <= TINY:
            L = support_lipschitz(<const floating *> c.B, <const floating *> c.D, c.m,
                                  c.n, w.idx, k, w.v, w.w, NULL, False, c.tol,
                                  c.max_iter, &converged)
        if not converged:
            L = exact_lipschitz(<const floating *> c.B, <const floating *> c.D, c.m,
                                c.n, w.idx, k, w.A, w.lwork, w.iwork)
        c.out[i] = L


cdef void _block_d(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    lip_block(<double *> NULL, <LipCtx *> ctx, tid, start, nb)


cdef void _block_s(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    lip_block(<float *> NULL, <LipCtx *> ctx, tid, start, nb)


# supports a block, and at least MIN_PER_THREAD supports a thread: a region
# woken for less costs more than it saves
cdef int BLOCK = 64
cdef int MIN_PER_THREAD = 2048


def lipschitz_supports(const floating[:, ::1] B, const floating[:, ::1] D,
                       const unsigned char[:, ::1] support, double tol,
                       int max_iter, int n_threads):
    """L_S of each row of a boolean (N, m) support matrix, in double.

    Up to TINY atoms the bracket of repeated squaring (LAPACK when it does
    not close within max_iter power steps), beyond LAPACK. Returns an (N,)
    float64 array; NaN where LAPACK failed.
    """
    cdef Py_ssize_t N = support.shape[0], m = D.shape[0], n = D.shape[1]
    cdef Py_ssize_t r = min(m, n)
    cdef LipCtx c
    cdef int t
    out_arr = np.zeros(N)
    if N == 0 or m == 0:
        return out_arr
    n_threads = max(1, min(n_threads, N // MIN_PER_THREAD))
    iw = np.empty((n_threads, m + 10 * r), dtype=np.intc)
    fw = np.empty((n_threads, 2 * m + r * r + 27 * r))
    cdef int[:, ::1] iv = iw
    cdef double[:, ::1] fv = fw
    cdef double[::1] out = out_arr
    c.B = &B[0, 0]
    c.D = &D[0, 0]
    c.support = &support[0, 0]
    c.out = &out[0]
    c.m = m
    c.n = n
    c.tol = tol
    c.max_iter = max_iter
    cdef bint check = in_main_thread(), stopped
    # (allocated right before the try whose finally frees it)
    cdef LipWork *work = <LipWork *> table_alloc(n_threads, sizeof(LipWork))
    try:
        for t in range(n_threads):
            work[t].idx = &iv[t, 0]
            work[t].iwork = &iv[t, m]
            work[t].v = &fv[t, 0]
            work[t].w = &fv[t, m]
            work[t].A = &fv[t, 2 * m]
            work[t].lwork = &fv[t, 2 * m + r * r]
        c.work = work
        with nogil:
            stopped = run_blocks(N, BLOCK, n_threads, True,
                                 _block_d if floating is double else _block_s, &c, check)
        if stopped:
            raise_interrupt()
    finally:
        table_free(work)
    return out_arr
