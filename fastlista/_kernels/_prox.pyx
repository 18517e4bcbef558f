"""Soft-thresholding ST(u, t) = sign(u) max(|u| - t, 0)."""
from cython cimport floating
from cython.parallel cimport prange
cimport openmp

from ._prox cimport soft_threshold


def soft_thresholding(const floating[::1] u, const floating[::1] t,
                      floating[::1] out):
    """out[i] = ST(u[i], t[i % len(t)]) for flat arrays (len(t) >= 1)."""
    cdef Py_ssize_t i, n = u.shape[0], p = t.shape[0]
    # threads only pay off beyond a few hundred kB
    cdef int n_threads = openmp.omp_get_max_threads() if n > 1 << 16 else 1
    with nogil:
        if p == 1:
            for i in prange(n, num_threads=n_threads, schedule="static"):
                out[i] = soft_threshold(u[i], t[0])
        else:
            for i in prange(n, num_threads=n_threads, schedule="static"):
                out[i] = soft_threshold(u[i], t[i % p])
