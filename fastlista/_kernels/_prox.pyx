"""Soft-thresholding ST(u, t) = sign(u) max(|u| - t, 0), and its one-sided
form max(u - t, 0) for non-negative codes."""
from cython cimport floating

from ._blocks cimport in_main_thread, raise_interrupt, run_blocks
from ._prox cimport threshold

# elements a block: 256 KiB of float64, a few blocks a thread from the
# 2^16 elements beyond which the caller uses threads
cdef enum:
    NB_MAX = 32768


cdef struct STArgs:
    const void *u       # (n,) inputs
    const void *t       # (p,) thresholds, cycled: u[i] gets t[i % p]
    void *out           # (n,) results
    Py_ssize_t p
    bint positive


cdef inline void _run(const floating *u, const floating *t, floating *out,
                      Py_ssize_t p, bint positive, Py_ssize_t start,
                      int nb) noexcept nogil:
    cdef Py_ssize_t i
    if p == 1:
        for i in range(start, start + nb):
            out[i] = threshold(u[i], t[0], positive)
    else:
        for i in range(start, start + nb):
            out[i] = threshold(u[i], t[i % p], positive)


cdef void _block_d(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    cdef STArgs *a = <STArgs *> ctx
    _run(<const double *> a.u, <const double *> a.t, <double *> a.out, a.p,
         a.positive, start, nb)


cdef void _block_s(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    cdef STArgs *a = <STArgs *> ctx
    _run(<const float *> a.u, <const float *> a.t, <float *> a.out, a.p,
         a.positive, start, nb)


def soft_thresholding(const floating[::1] u, const floating[::1] t,
                      floating[::1] out, bint positive, int n_threads):
    """out[i] = ST(u[i], t[i % len(t)]) for flat arrays (len(t) >= 1,
    len(out) == len(u)), in blocks over n_threads threads."""
    cdef Py_ssize_t n = u.shape[0]
    cdef STArgs a
    cdef bint check = in_main_thread(), stopped
    if n == 0:
        return
    a.u, a.t, a.out = &u[0], &t[0], &out[0]
    a.p, a.positive = t.shape[0], positive
    with nogil:
        stopped = run_blocks(n, NB_MAX, n_threads, False,
                             _block_d if floating is double else _block_s, &a, check)
    if stopped:
        raise_interrupt()
