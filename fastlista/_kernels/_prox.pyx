"""Soft-thresholding ST(u, t) = sign(u) max(|u| - t, 0), and its one-sided
form max(u - t, 0) for non-negative codes."""
from cython cimport floating
from cython.parallel cimport prange

from ._prox cimport threshold


def soft_thresholding(const floating[::1] u, const floating[::1] t,
                      floating[::1] out, bint positive, int n_threads):
    """out[i] = ST(u[i], t[i % len(t)]) for flat arrays (len(t) >= 1), on
    n_threads threads."""
    cdef Py_ssize_t i, n = u.shape[0], p = t.shape[0]
    with nogil:
        if p == 1:
            for i in prange(n, num_threads=n_threads, schedule="static"):
                out[i] = threshold(u[i], t[0], positive)
        else:
            for i in prange(n, num_threads=n_threads, schedule="static"):
                out[i] = threshold(u[i], t[i % p], positive)
