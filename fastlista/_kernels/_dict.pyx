# The dictionary step of dictionary learning: block coordinate descent over
# the atoms (rows of D) of 1/2 tr(D^T A D) - tr(D^T B), each atom projected
# on the unit ball (and on the non-negative orthant with positive=True).
#
# One atom's update is d_k <- Proj(d_k + (B_k - A_k D) / A_kk): a gemv with
# D (n_atoms x n_features) and O(n_features) work. The loop over the atoms
# is sequential (every update sees the previous ones: Gauss-Seidel), so the
# kernel is one thread; it exists because the same loop in NumPy pays about
# 10 us of interpreter overhead per atom (fastlista/dictionary.py, _bcd,
# has the measurement).
from libc.math cimport sqrt

from ._blas cimport gemv
from ._blocks cimport table_alloc, table_free


def bcd(double[:, ::1] D, const double[:, ::1] A, const double[:, ::1] B,
        const Py_ssize_t[::1] atoms, bint positive, int n_passes):
    """In place on D (float64, C order): ``n_passes`` passes over ``atoms``
    (indices with A_kk > 0, in order). An update of norm 0 keeps the atom."""
    cdef Py_ssize_t m = D.shape[0], n = D.shape[1], n_act = atoms.shape[0]
    cdef Py_ssize_t p, i, k, j
    cdef double akk, norm, v
    cdef double *u
    if m == 0 or n == 0 or n_act == 0:
        return
    with nogil:
        u = <double *> table_alloc(n, sizeof(double))
        for p in range(n_passes):
            for i in range(n_act):
                k = atoms[i]
                akk = A[k, k]
                # u = -(A_k D) = -D^T A_k
                gemv(True, <int> m, <int> n, -1.0, &D[0, 0], <int> n, &A[k, 0],
                     0.0, u)
                norm = 0.0
                for j in range(n):
                    v = D[k, j] + (B[k, j] + u[j]) / akk
                    if positive and v < 0.0:
                        v = 0.0
                    u[j] = v
                    norm += v * v
                if norm == 0.0:
                    continue
                norm = sqrt(norm)
                if norm > 1.0:
                    for j in range(n):
                        D[k, j] = u[j] / norm
                else:
                    for j in range(n):
                        D[k, j] = u[j]
        table_free(u)
