"""The certificate: objective and duality gap of given codes, in double.

For every row x of X and its code z (row of Z), with r = x - z D,

    rr = ||r||^2, xr = <x, r>, l1 = ||z||_1, gmax = ||r D^T||_inf

go into the package's one gap formula (_gap.pxd). Whatever the storage
dtype, the sums are taken in double precision from the stored values
(float32 data are widened, exactly): the gap of float32 codes is that of
those codes, not of a working copy. r is formed directly (x minus the rows
of D gathered for the non-zeros of a sparse z, or one GEMM), never as
||x||^2 - 2 z.c + z B z, whose cancellation would lose the gap of a code
far from the optimum. r D^T is one GEMM, or, for a very sparse z, c - z B from a given C = X D^T
and B = D D^T (float64 data only: there c carries no more rounding than
r D^T), a gather of the rows of B for the non-zeros instead of a GEMM.

The gap is that of a dual point feasible for the exact correlations r D^T,
not only for the computed g: an upper bound of the exact gap of the codes up
to the rounding of the objectives themselves. With e ||d_j|| a bound on the
rounding of g_j (u = 2^-53, the unit roundoff of double):

* g = fl(r D^T), any order of the n products (FMA or not):
  |g_j - r.d_j| <= gamma_n ||r|| ||d_j||, and e = (2 n + 8) u ||r||;
* g = c - z B with k non-zeros (c = fl(x D^T), B = fl(D D^T), r the
  gathered fl(x - z D)): the rounding of c, of B, of the gather and of r
  add up to at most (2 n + 2 k + 8) u ||d_j|| (||x|| + sum_k |z_k| ||d_k||).

(n + 4 and n + k + 4 would do; the factor 2 covers the rounding of the norms
themselves.) Atoms whose |g_j| + e ||d_j|| stays below lmbd cannot change s
= max(lmbd, max_j |r.d_j|); when some reach it (at the optimum the active
atoms have |g_j| = lmbd), fl_certified_gmax (_simd.h) recomputes the
candidates among them by a compensated dot product, to about twice double
precision, and s is their largest with its error bound (tiny, but larger
than the actual error for ill-conditioned products: it errs on the safe
side). The gap is then an upper bound of F(z) - F* up to the objectives'
rounding, also where lmbd is near the rounding of the correlations (x
almost orthogonal to the atoms, lmbd ~ 1e-10 lambda_max), where g alone
gave a dual point outside the feasible set.

This kernel is behind fastlista.duality_gap and fastlista.lasso_objective,
and certifies every result of fastlista.solve_lasso.
"""
import numpy as np
from cython cimport floating
from libc.math cimport fabs, sqrt

from ._blas cimport gemm
from ._blocks cimport (in_main_thread, raise_interrupt, run_blocks, table_alloc,
                      table_free)
from ._gap cimport lasso_gap
from ._simd cimport (FL_ROUNDOFF, fl_certified_gmax, fl_d_count_nonzero, fl_d_gap_sums,
                     fl_d_gather, fl_dot2, fl_s_count_nonzero, fl_s_gap_sums)


cdef struct CertifyWork:
    double *X       # (nb_max, n) widened rows of X (float32 data only)
    double *Z       # (nb_max, m) widened rows of Z (float32 data, dense path)
    double *R       # (nb_max, n) r = x - z D
    double *G       # (nb_max, m) r D^T
    double *coef    # (m,) the non-zeros of one code
    int *idx        # (m,) and their atoms


cdef struct CertifyCtx:
    const void *X   # (N, n) floating
    const void *Z   # (N, m) floating
    const double *D  # (m, n) D in double
    const double *dn    # (m,) the atoms' norms ||d_j||
    double dmax         # max_j ||d_j||
    const double *C  # (N, m) X D^T (float64 data) or NULL
    const double *B  # (m, m) D D^T when C is given
    const double *lmbd  # (N,)
    const double *lz    # (N,) lmbd ||z||_1 given by the caller, or NULL
    double *primal  # (N,) out
    double *gap     # (N,) out
    Py_ssize_t n, m
    bint positive
    CertifyWork *work   # one per thread


cdef void certify_block(floating *tag, CertifyCtx *c, int tid, Py_ssize_t start,
                        int nb) noexcept nogil:
    cdef CertifyWork *w = &c.work[tid]
    cdef Py_ssize_t n = c.n, m = c.m, i, j, k, nnz
    cdef const floating *Xb = <const floating *> c.X + start * n
    cdef const floating *Zb = <const floating *> c.Z + start * m
    cdef const floating *z
    cdef double *Xd
    cdef double *r
    cdef double *g
    cdef double sums[4]
    cdef double lz, gmax, e, xn, wz, comp, sum_err
    cdef Py_ssize_t kz
    cdef bint sparse_r, sparse_g

    # x in double
    if floating is double:
        Xd = <double *> Xb
    else:
        Xd = w.X
        for j in range(nb * n):
            Xd[j] = Xb[j]
    if floating is double:
        nnz = fl_d_count_nonzero(nb * m, Zb)
    else:
        nnz = fl_s_count_nonzero(nb * m, Zb)
    # A gather of rows runs at about a quarter of GEMM speed: r = x - z D
    # gathers k rows of D (2 k n flops) against a GEMM's 2 m n, and, when
    # C and B are given, g = c - z B gathers k rows of B (2 k m) against the
    # GEMM r D^T (2 n m).
    sparse_r = 4 * nnz < nb * m or m == 0
    sparse_g = c.C != NULL and 4 * nnz < nb * n

    # R = X - Z D
    if sparse_r:
        for i in range(nb):
            r = w.R + i * n
            z = Zb + i * m
            for j in range(n):
                r[j] = Xd[i * n + j]
            k = 0
            for j in range(m):
                if z[j] != 0:
                    w.idx[k] = <int> j
                    w.coef[k] = z[j]
                    k += 1
            fl_d_gather(<int> k, w.idx, w.coef, -1.0, c.D, <int> n, r)
            if sparse_g:
                # g = c - z B
                g = w.G + i * m
                for j in range(m):
                    g[j] = c.C[(start + i) * m + j]
                fl_d_gather(<int> k, w.idx, w.coef, -1.0, c.B, <int> m, g)
    else:
        for j in range(nb * n):
            w.R[j] = Xd[j]
        if floating is double:
            gemm(False, False, nb, <int> n, <int> m, -1.0, <double *> Zb, <int> m,
                 c.D, <int> n, 1.0, w.R, <int> n)
        else:
            for j in range(nb * m):
                w.Z[j] = Zb[j]
            gemm(False, False, nb, <int> n, <int> m, -1.0, w.Z, <int> m,
                 c.D, <int> n, 1.0, w.R, <int> n)
    if not (sparse_r and sparse_g):
        # G = R D^T
        gemm(False, True, nb, <int> m, <int> n, 1.0, w.R, <int> n, c.D, <int> n,
             0.0, w.G, <int> m)

    for i in range(nb):
        if floating is double:
            fl_d_gap_sums(n, Xd + i * n, w.R + i * n, m, Zb + i * m, w.G + i * m,
                          c.positive, sums)
        else:
            fl_s_gap_sums(n, Xd + i * n, w.R + i * n, m, Zb + i * m, w.G + i * m,
                          c.positive, sums)
        # ||r||^2 and <x, r> compensated: a plain sum's error grows with n
        # (5e-14 of 1/2 ||x||^2 at n = 2^16), theirs stays at about 1e-16
        # (where a product overflows, Dot2's error terms are NaN: the plain
        # sums keep their inf)
        comp = fl_dot2(n, w.R + i * n, w.R + i * n, &sum_err)
        if comp == comp:
            sums[0] = comp
        comp = fl_dot2(n, Xd + i * n, w.R + i * n, &sum_err)
        if comp == comp:
            sums[1] = comp
        # lmbd ||z||_1, or the caller's value of it (computed where its
        # factors could leave the float range)
        lz = c.lz[start + i] if c.lz != NULL else c.lmbd[start + i] * sums[2]
        # the correlation bound (module docstring); a NaN gmax stays NaN
        gmax = sums[3]
        if m and gmax == gmax:
            if sparse_r and sparse_g:
                z = Zb + i * m
                xn = 0
                wz = 0
                kz = 0
                for j in range(n):
                    xn += Xd[i * n + j] * Xd[i * n + j]
                for j in range(m):
                    if z[j] != 0:
                        kz += 1
                        wz += fabs(z[j]) * c.dn[j]
                e = (2 * n + 2 * kz + 8) * FL_ROUNDOFF * (sqrt(xn) + wz)
            else:
                e = (2 * n + 8) * FL_ROUNDOFF * sqrt(sums[0])
            # (below lmbd no exact correlation changes s = max(lmbd, gmax))
            if gmax + e * c.dmax >= c.lmbd[start + i]:
                gmax = fl_certified_gmax(n, m, w.R + i * n, c.D, w.G + i * m, c.dn, e,
                                         c.lmbd[start + i], c.positive)
        c.gap[start + i] = lasso_gap(sums[0], sums[1], lz, gmax,
                                     c.lmbd[start + i], &c.primal[start + i])


cdef void _block_d(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    certify_block(<double *> NULL, <CertifyCtx *> ctx, tid, start, nb)


cdef void _block_s(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    certify_block(<float *> NULL, <CertifyCtx *> ctx, tid, start, nb)


def certify(const floating[:, ::1] X, const floating[:, ::1] Z,
            const double[:, ::1] D, const double[::1] lmbd, const double[::1] lz,
            const double[:, ::1] C, const double[:, ::1] B, bint positive,
            double[::1] primal, double[::1] gap, int n_threads):
    """primal[i] = F_x(z) and gap[i] = its duality gap, for every row.

    D is the dictionary in double. lz, of shape (N,) or (0,), gives
    lmbd ||z||_1 of each row (else computed from Z). C = X D^T and B = D D^T
    may be given (float64 data, shapes (N, m) and (m, m)), or empty (0, 0).
    With ``positive`` the dual constraint is one-sided (codes constrained
    >= 0).
    """
    cdef Py_ssize_t N = X.shape[0], n = X.shape[1], m = Z.shape[1]
    cdef CertifyCtx c
    cdef int t, nb_max
    if N == 0:
        return
    # rows a block: its R and G stay in L2
    nb_max = <int> max(1, min(256, (1 << 15) // max(m + n, 1)))
    n_threads = max(1, min(n_threads, (N + nb_max - 1) // nb_max))
    wide = floating is float
    # (one spare column: a workspace of no atoms still has a first element)
    Xw = np.empty((n_threads, (nb_max * n if wide else 0) + 1))
    Zw = np.empty((n_threads, (nb_max * m if wide else 0) + 1))
    Rw = np.empty((n_threads, nb_max * n + 1))
    Gw = np.empty((n_threads, nb_max * m + 1))
    cw = np.empty((n_threads, m + 1))
    iw = np.empty((n_threads, m + 1), dtype=np.intc)
    cdef double[:, ::1] Xv = Xw, Zv = Zw, Rv = Rw, Gv = Gw, cv = cw
    cdef int[:, ::1] iv = iw
    c.X = &X[0, 0]
    c.Z = &Z[0, 0] if m else NULL
    c.D = &D[0, 0] if m else NULL
    norms = np.sqrt(np.einsum("ij,ij->i", D, D)) if m else np.zeros(1)
    cdef double[::1] dnv = norms
    c.dn = &dnv[0]
    c.dmax = float(norms.max())
    c.C = &C[0, 0] if C.shape[0] == N and floating is double and m else NULL
    c.B = &B[0, 0] if c.C != NULL else NULL
    c.lmbd = &lmbd[0]
    c.lz = &lz[0] if lz.shape[0] == N else NULL
    c.primal = &primal[0]
    c.gap = &gap[0]
    c.n = n
    c.m = m
    c.positive = positive
    cdef bint check = in_main_thread(), stopped
    # (allocated right before the try whose finally frees it)
    cdef CertifyWork *work = <CertifyWork *> table_alloc(n_threads, sizeof(CertifyWork))
    try:
        for t in range(n_threads):
            work[t].X = &Xv[t, 0]
            work[t].Z = &Zv[t, 0]
            work[t].R = &Rv[t, 0]
            work[t].G = &Gv[t, 0]
            work[t].coef = &cv[t, 0]
            work[t].idx = &iv[t, 0]
        c.work = work
        with nogil:
            stopped = run_blocks(N, nb_max, n_threads, False,
                                 _block_d if floating is double else _block_s, &c, check)
        if stopped:
            raise_interrupt()
    finally:
        table_free(work)
