"""Batched proximal-gradient Lasso solvers: ISTA, FISTA, OISTA, backtracking.

For every sample x (a row of X), with its own lmbd, they minimise

    F_x(z) = 1/2 ||x - z D||^2 + lmbd ||z||_1,    B = D D^T,  c = x D^T,

(over z >= 0 for positive codes) by steps z <- ST(z - t (z B - c), lmbd t)
(ST one-sided, max(u - lmbd t, 0), for positive codes) with a step t chosen
per method:

* ISTA: t = 1/L, L = ||B||_2.
* FISTA: the ISTA step at y = z_k + (t_k - 1)/t_{k+1} (z_k - z_{k-1}), with
  the gradient-based adaptive restart of O'Donoghue & Candes (2015).
* OISTA: t = 1/L_S, S = supp(z), kept only if supp(z+) is inside S (the
  descent lemma holds on the face of S with constant L_S); otherwise 1/L.
  L_S comes from a warm-started power iteration, recomputed only when the
  support changes; when it does not converge, from LAPACK; when LAPACK
  fails, the step is 1/L. Each step d on a power iteration's L_S is checked
  at the next gradient (d B d^T <= L_S ||d||^2); a step that fails is
  undone (z and its gradient restored) before that iteration's gap, and the
  sample steps on LAPACK's L_S from then on.
* backtracking: a step per sample, tried at t_prev / eta and shrunk by eta
  until 1/2 ||d D||^2 <= ||d||^2 / (2 t), d = z+ - z (the quadratic upper
  bound of Beck & Teboulle, 2009, written exactly for this quadratic f).
  The next trial grows from t only when t was accepted on a positive
  curvature ||d D||^2 > 0: at a fixed point (d = 0), or along the null space
  of D, every step passes the test and would otherwise grow without bound.
  After LS_MAX_TRIALS refused trials the step is 1/L, which passes.

Samples are processed in blocks that stay in cache (fastlista's one block
driver, _blocks.pxd); each block runs all its iterations before the next
(threads take blocks). Within a block, the gradient G = P B - C is one of
  * two GEMMs through D: R = P D - X, G = R D^T        (4 b m n flops),
  * one GEMM through the Gram: G = P B - C             (2 b m^2 flops),
  * a gather of the rows of B of the non-zeros of P    (2 m nnz(P) flops),
whichever is cheapest. Where BLAS would pack the operands of every call
(AVX2 OpenBLAS) the two GEMM forms run through fastlista's own GEMM
(_gemm.h, as the networks' dense layers do), and an ISTA iteration that
checks no gap takes its step as the second product stores each tile:
z <- ST(z - (R D^T) / L, lmbd / L), G never written (float32 ISTA, FISTA
and OISTA keep their iterates in double, rounded to float32 for the
products: float32 ISTA's step widens each tile to double). Every
`gap_freq` iterations the duality gap of each sample is computed from the
gradient at z in O(m) (_gap.pxd; no extra product for ISTA, OISTA and
backtracking; one for FISTA, whose gradient is at y), and a sample whose
gap is <= tol * 1/2 ||x||^2 leaves its block. That gap only decides when
to stop: the result is certified afterwards from the returned codes
(_certify.pyx). A NaN gap never stops a sample.
"""
import numpy as np
from cython cimport floating
from libc.math cimport fabs, sqrt, isfinite
from libc.string cimport memcpy

from ._blas cimport gemm, axpy, dot
from ._blocks cimport (TABLE_DOMAIN as _TABLE_DOMAIN, in_main_thread, raise_interrupt,
                      run_blocks, table_alloc, table_free)
from ._gemm cimport (FL_GEMM_KC, fl_s_gemm_packed_step_wide, own_gemm_packed_from,
                     own_gemm_packed_step)
from ._gap cimport lasso_gap
from ._prox cimport threshold
from ._lipschitz cimport support_lipschitz, exact_lipschitz
from ._simd cimport (FL_ROUNDOFF, fl_certified_gmax, fl_d_corr_max, fl_d_count_nonzero,
                     fl_s_count_nonzero, fl_d_pst_step, fl_d_st_step, fl_s_pst_step,
                     fl_s_st_step)

from . import _gemm

cdef enum:
    ISTA = 0
    FISTA = 1
    OISTA = 2
    BACKTRACKING = 3

METHODS = {"ista": ISTA, "fista": FISTA, "oista": OISTA,
           "backtracking": BACKTRACKING}

#: The tracemalloc domain in which every kernel registers its work tables
#: (_blocks.pxd): none is left there once a call has returned or raised.
TABLE_DOMAIN = _TABLE_DOMAIN

# A gather of rows of B runs at roughly a quarter of GEMM speed.
cdef double SPARSE_PENALTY = 4.0
# Backtracking: try t_prev / ETA first, shrink by ETA.
cdef double ETA = 0.7
cdef int LS_MAX_TRIALS = 100
# OISTA's power iteration: relative tolerance and iterations
cdef double LS_TOL = 1e-8
cdef int LS_MAX_ITER = 1000
# OISTA's curvature test of a step on 1/L_S: d B d^T above L_S ||d||^2 by
# more than this (relatively, beyond the rounding of the gradients) means
# the power iteration underestimated L_S
cdef double CURV_TOL = 1e-6
# the unit roundoff of float32, 2^-24
cdef double ROUNDOFF_F = 5.960464477539063e-08


cdef struct ProxWork:
    # one thread's block of at most nb_max samples (floating arrays as void *)
    void *Z         # (nb_max, m) codes
    void *X         # (nb_max, n) signals
    void *C         # (nb_max, m) c = x D^T
    void *G         # (nb_max, m) gradient at P (z, or y for FISTA)
    void *R         # (nb_max, n) r = P D - x
    void *Y         # (nb_max, m) FISTA: extrapolated point
    void *Gz        # (nb_max, m) FISTA: gradient at z, for the gap
    void *row       # (m,) the candidate z+
    void *dD        # (n,) backtracking: d D
    void *thr       # (nb_max,) float64 ISTA's fused step: each slot's lmbd / L
    double *aux     # (nb_max,) FISTA momentum, OISTA L_S, backtracking step
    double *lmbd    # (nb_max,) each slot's lmbd
    double *xx      # (nb_max,) each slot's ||x||^2
    double *V       # (nb_max, m) OISTA: warm-start eigenvectors
    double *v       # (m,) OISTA: eigenvector of the current support
    double *w       # (m,)
    double *lwork   # power iteration workspace max(min(m, 2n)^2, n)
    double *A       # LAPACK: min(m, n)^2
    double *lapack  # LAPACK: 27 min(m, n)
    int *iwork      # LAPACK: 10 min(m, n)
    int *orig       # (nb_max,) the batch row of each slot
    int *idx        # (m,) OISTA: atoms of the support
    unsigned char *fresh    # (nb_max,) OISTA: L_S in aux is that of supp(z)
    unsigned char *pending  # (nb_max,) OISTA: the last step, on 1/L_S, awaits
                            # its curvature test
    unsigned char *exact    # (nb_max,) OISTA: L_S by LAPACK (a test failed)
    double *Dz      # (nb_max, m) OISTA: z before the last step, on
    int *Didx       # (nb_max, m) the atoms of the support of the slot's L_S,
    int *Dn         # (nb_max,) Dn[s] of them
    double *curv    # (nb_max, 3) OISTA: d.g(z), ||d||^2, and the scale of
                    # the rounding of d.g(z)
    double *Zd      # (nb_max, m) float32 ISTA, FISTA, OISTA: z (and FISTA's y)
    double *Yd      # (nb_max, m) in double (Z and Y hold them rounded, for
                    # the products)
    double *rowd    # (m,) float32 FISTA and OISTA: the candidate z+ in double
    void *Gold      # (nb_max, m) OISTA: the gradient at z before the last
                    # step (restored with z when the step is undone)


cdef struct ProxCtx:
    int method
    const void *X   # (N, n)
    const void *D   # (m, n)
    const void *DT  # (n, m)
    const void *B   # (m, m)
    const void *Dp  # D, D^T and B packed for _gemm.h (own_gemm), else NULL
    const void *DTp
    const void *Bp
    const void *C   # (N, m)
    const double *xx    # (N,) ||x||^2
    const double *lmbd  # (N,)
    void *Z         # (N, m) in: start, out: codes
    const int *active   # rows to solve
    Py_ssize_t N, m, n
    double L
    int max_iter, gap_freq
    double tol
    bint positive   # codes constrained >= 0
    int own_gemm    # the GEMM forms through _gemm.h at this level (0: BLAS)
    bint record
    void *hist_obj  # (max_iter + 1, N) when record
    void *hist_gap
    void *hist_step
    int *n_iter     # (N,) out
    double *gap_out  # (N,) out: the stopping gap (the certificate comes later)
    ProxWork *work  # one per thread


cdef const void *_data(a) except? NULL:
    """Address of an array's data (NULL for None)."""
    return NULL if a is None else <const void *> <size_t> a.ctypes.data


cdef enum:
    # the forms of the block gradient G = P B - C
    FORM_GATHER = 0     # rows of B gathered for the non-zeros of P
    FORM_GRAM = 1       # one GEMM through the Gram matrix
    FORM_RESIDUAL = 2   # R = P D - X, then G = R D^T


cdef int form_for(Py_ssize_t nnz, int nb, Py_ssize_t m, Py_ssize_t n) noexcept nogil:
    """The cheapest form of G[:nb] = P[:nb] B - C[:nb] for a P of nnz
    non-zeros, by flop count (a gather of rows of B runs at roughly
    1 / SPARSE_PENALTY of GEMM speed)."""
    cdef double dense = 4.0 * nb * m * n
    if 2.0 * m * m * nb < dense:
        dense = 2.0 * m * m * nb
    if SPARSE_PENALTY * 2.0 * m * nnz < dense:
        return FORM_GATHER
    if 2.0 * m * m * nb < 4.0 * nb * m * n:
        return FORM_GRAM
    return FORM_RESIDUAL


cdef int gradient_form(const floating *P, int nb, Py_ssize_t m,
                       Py_ssize_t n) noexcept nogil:
    """form_for P[:nb], its non-zeros counted on the bit patterns
    (vectorized)."""
    if floating is double:
        return form_for(fl_d_count_nonzero(nb * m, P), nb, m, n)
    return form_for(fl_s_count_nonzero(nb * m, P), nb, m, n)


cdef inline void block_residual(const floating *P, int nb, const floating *Xb,
                                const floating *D, const floating *Dp, Py_ssize_t m,
                                Py_ssize_t n, int own, floating *R) noexcept nogil:
    """R[:nb] = P[:nb] D - X[:nb] (through _gemm.h's tile of level own, on D's
    packed panels Dp; own = 0: BLAS)."""
    if own:
        own_gemm_packed_from(own, nb, <int> n, <int> m, 1, P, <int> m, Dp, -1, Xb,
                             <int> n, R, <int> n)
    else:
        memcpy(R, Xb, nb * n * sizeof(floating))
        gemm(False, False, nb, <int> n, <int> m, 1, P, <int> m, D, <int> n, -1, R,
             <int> n)


cdef void block_gradient(const floating *P, int nb, const floating *Xb,
                         const floating *Cb, const floating *D,
                         const floating *DT, const floating *B,
                         const floating *Dp, const floating *DTp,
                         const floating *Bp, Py_ssize_t m, Py_ssize_t n, int own,
                         floating *R, floating *G) noexcept nogil:
    """G[:nb] = P[:nb] B - C[:nb], by the cheapest of three forms.

    The products are untransposed (DT = D^T): an AVX-512 OpenBLAS
    multiplies these small blocks without packing the operands; ``own``
    (a level of _gemm.GEMM_KERNELS; 0: BLAS) runs them through that tile of
    _gemm.h instead, on the panels of D, D^T and B packed once a solve (Dp,
    DTp, Bp: every iteration of every block multiplies by the same three
    matrices).
    """
    cdef Py_ssize_t i, j
    cdef floating p
    cdef const floating *row
    cdef int form = gradient_form(P, nb, m, n)
    if form == FORM_GATHER:
        # G_i = -c_i + sum_{j in supp(p_i)} p_ij B_j
        for i in range(nb):
            row = P + i * m
            for j in range(m):
                G[i * m + j] = -Cb[i * m + j]
            for j in range(m):
                p = row[j]
                if p != 0:
                    axpy(<int> m, p, B + j * m, G + i * m)
    elif form == FORM_GRAM:
        # G = P B - C
        if own:
            own_gemm_packed_from(own, nb, <int> m, <int> m, 1, P, <int> m, Bp, -1, Cb,
                                 <int> m, G, <int> m)
        else:
            memcpy(G, Cb, nb * m * sizeof(floating))
            gemm(False, False, nb, <int> m, <int> m, 1, P, <int> m, B, <int> m, -1,
                 G, <int> m)
    else:
        # R = P D - X, then G = R D^T
        block_residual(P, nb, Xb, D, Dp, m, n, own, R)
        if own:
            own_gemm_packed_from(own, nb, <int> m, <int> n, 1, R, <int> n, DTp, 0,
                                 NULL, <int> m, G, <int> m)
        else:
            gemm(False, False, nb, <int> m, <int> n, 1, R, <int> n, DT, <int> m, 0, G,
                 <int> m)


cdef inline double stopping_gap(const floating *z, const floating *g,
                                const floating *c, double xx, double lmbd,
                                Py_ssize_t m, bint positive, double *obj) noexcept nogil:
    """Duality gap of z from its gradient g = z B - c, in O(m).

    ||r||^2 = ||x||^2 - z.c + z.g (r = x - z D), <x, r> = ||x||^2 - z.c,
    r D^T = -g (_gap.pxd; one-sided for positive codes).
    """
    cdef Py_ssize_t j
    cdef double zc = 0, zg = 0, l1 = 0, gmax = 0, rr, a
    for j in range(m):
        zc += z[j] * c[j]
        zg += z[j] * g[j]
        l1 += fabs(z[j])
        a = -g[j] if positive else fabs(g[j])
        if not a <= gmax:
            gmax = a
    rr = xx - zc + zg
    if rr < 0:
        rr = 0
    return lasso_gap(rr, xx - zc, lmbd * l1, gmax, lmbd, obj)


cdef inline void move_row(void *A, Py_ssize_t width, int src, int dst,
                          size_t itemsize) noexcept nogil:
    memcpy(<char *> A + dst * width * itemsize, <char *> A + src * width * itemsize,
           width * itemsize)


cdef double oista_lipschitz(floating *tag, ProxCtx *c, ProxWork *w, int s,
                            const floating *z) noexcept nogil:
    """L_S of slot s's support, warm-started from its last eigenvector.

    LAPACK when the power iteration does not converge, and for a slot
    whose curvature test failed; 0 when LAPACK fails (the caller then steps
    by 1/L).
    """
    cdef Py_ssize_t m = c.m, j
    cdef int k = 0
    cdef bint has_warm = False, converged
    cdef double Ls
    cdef double *V = w.V + s * m
    for j in range(m):
        if z[j] != 0:
            w.idx[k] = <int> j
            k = k + 1
    # S, for the curvature test of the steps taken on this L_S
    memcpy(w.Didx + s * m, w.idx, k * sizeof(int))
    w.Dn[s] = k
    if k == 0:
        return 0
    converged = False
    if not w.exact[s]:
        for j in range(k):
            w.v[j] = V[w.idx[j]]
            has_warm = has_warm or w.v[j] != 0
        Ls = support_lipschitz(<const floating *> c.B, <const floating *> c.D, m, c.n,
                               w.idx, k, w.v, w.w, w.lwork, has_warm, LS_TOL,
                               LS_MAX_ITER, &converged)
    if not converged:
        Ls = exact_lipschitz(<const floating *> c.B, <const floating *> c.D, m, c.n,
                             w.idx, k, w.A, w.lapack, w.iwork)
    if not w.exact[s]:
        for j in range(k):
            V[w.idx[j]] = w.v[j]
    return Ls if isfinite(Ls) and Ls > 0 else 0


cdef bint oista_curvature_fails(floating *tag, ProxWork *w, int s, const floating *z,
                                const floating *g, const floating *cs, Py_ssize_t m,
                                double eps) noexcept nogil:
    """Whether slot s's last step, to z = z0 + d on 1/L_S, exposes L_S as low.

    With g the gradient at z: d (g - g(z0)) = d B d^T <= L_S ||d||^2,
    since d is supported in S. A power iteration that settled on a smaller
    eigenvalue gives an L_S that some step's curvature exceeds (steps on
    too large a step size grow along the missed top eigenvector, so the
    next step shows it). z0 is kept on S (the Dn[s] atoms Didx of the
    slot's L_S, z0's values in Dz: d = z - z0 is the step's own d, bit for
    bit), with d.g(z0), ||d||^2 and their rounding scale in curv.
    Rounding: the gradients' entries are exact to about (m + n) u (|c_j| +
    |(z B)_j|); ``eps`` is that factor, (m + n + 8) u.
    """
    cdef const int *di = w.Didx + s * m
    cdef const double *z0 = w.Dz + s * m
    cdef const double *cv = w.curv + 3 * s
    cdef double q = 0, e = cv[2], d
    cdef int i
    cdef Py_ssize_t j
    for i in range(w.Dn[s]):
        j = di[i]
        # z0 as stored for the products (the float32 iterate in double is
        # rounded for them), so that d (g - g(z0)) is d B d^T
        d = <double> z[j] - <double> (<floating> z0[i])
        q = q + d * g[j]
        e = e + fabs(d) * (fabs(<double> cs[j]) + fabs(<double> g[j] + cs[j]))
    q = q - cv[0]
    return q > w.aux[s] * cv[1] * (1 + CURV_TOL) + eps * e


cdef void fista_step_double(double *z, double *y, const floating *g, double *row,
                           Py_ssize_t m, double step, double thr, bint positive,
                           double *t) noexcept nogil:
    """One FISTA step in double from a gradient g at y (rounded to the
    storage dtype for its product): z+ = ST(y - step g, thr), then
    y = z+ + beta (z+ - z), with the adaptive restart of the step below."""
    cdef Py_ssize_t j
    cdef double restart = 0, t_new, beta
    for j in range(m):
        row[j] = threshold(y[j] - step * g[j], thr, positive)
        restart += (y[j] - row[j]) * (row[j] - z[j])
    if restart > 0:
        # the momentum points uphill: restart from z_{k+1}
        t[0] = 1
        memcpy(y, row, m * sizeof(double))
    else:
        t_new = 0.5 * (1 + sqrt(1 + 4 * t[0] * t[0]))
        beta = (t[0] - 1) / t_new
        t[0] = t_new
        for j in range(m):
            y[j] = row[j] + beta * (row[j] - z[j])
    memcpy(z, row, m * sizeof(double))


cdef void ista_step_double(double *z, const floating *g, floating *zs, Py_ssize_t m,
                           double step, double thr, bint positive) noexcept nogil:
    """One ISTA step in double from a gradient g at zs (z rounded to the
    storage dtype for its product): z <- ST(z - step g, thr), zs its
    rounding."""
    cdef Py_ssize_t j
    cdef double v
    for j in range(m):
        v = threshold(z[j] - step * g[j], thr, positive)
        z[j] = v
        zs[j] = <floating> v


cdef void solve_block(floating *tag, ProxCtx *c, int tid, Py_ssize_t start,
                      int nb) noexcept nogil:
    """Run the samples active[start:start + nb] to convergence, in place."""
    cdef ProxWork *w = &c.work[tid]
    cdef int method = c.method
    cdef Py_ssize_t m = c.m, n = c.n, N = c.N, j
    cdef int s, it = 0, trial, last
    cdef Py_ssize_t znnz = -1   # non-zeros of Zb[:nb] when known, else -1
    cdef bint check, done, inside, shrunk
    cdef double obj, gap, step, thr, t_new, beta, restart, dd, ddD, L = c.L
    cdef floating u
    cdef int nd
    cdef double dg, de, ud
    cdef int *di
    cdef double *dz
    cdef const floating *cs
    cdef floating *Zb = <floating *> w.Z
    cdef floating *Xb = <floating *> w.X
    cdef floating *Cb = <floating *> w.C
    cdef floating *G = <floating *> w.G
    cdef floating *R = <floating *> w.R
    cdef floating *Yb = <floating *> w.Y
    cdef floating *Gz = <floating *> w.Gz
    cdef floating *row = <floating *> w.row
    cdef floating *dD = <floating *> w.dD
    # OISTA's iterate and candidate in double: float64's own arrays, float32's
    # copies in Zd and rowd (zs, row hold them rounded, for the products)
    cdef double *zd
    cdef double *rowd = <double *> row if floating is double else w.rowd
    cdef floating *thr_b = <floating *> w.thr
    cdef floating *Z = <floating *> c.Z
    cdef const floating *X = <const floating *> c.X
    cdef const floating *C = <const floating *> c.C
    cdef const floating *D = <const floating *> c.D
    cdef const floating *DT = <const floating *> c.DT
    cdef const floating *B = <const floating *> c.B
    cdef const floating *Dp = <const floating *> c.Dp
    cdef const floating *DTp = <const floating *> c.DTp
    cdef const floating *Bp = <const floating *> c.Bp
    cdef floating *hobj = <floating *> c.hist_obj
    cdef floating *hgap = <floating *> c.hist_gap
    cdef floating *hstep = <floating *> c.hist_step
    cdef floating *P
    cdef floating *Gp
    cdef floating *zs
    cdef floating *gs
    cdef floating *ys
    cdef floating *Gold = <floating *> w.Gold

    for s in range(nb):
        w.orig[s] = c.active[start + s]
        memcpy(Zb + s * m, Z + <Py_ssize_t> w.orig[s] * m, m * sizeof(floating))
        memcpy(Xb + s * n, X + <Py_ssize_t> w.orig[s] * n, n * sizeof(floating))
        memcpy(Cb + s * m, C + <Py_ssize_t> w.orig[s] * m, m * sizeof(floating))
        w.lmbd[s] = c.lmbd[w.orig[s]]
        w.xx[s] = c.xx[w.orig[s]]
        if w.Zd != NULL:
            for j in range(m):
                w.Zd[s * m + j] = Zb[s * m + j]
        if method == FISTA:
            memcpy(Yb + s * m, Zb + s * m, m * sizeof(floating))
            w.aux[s] = 1                    # momentum t_k
            if w.Yd != NULL:
                for j in range(m):
                    w.Yd[s * m + j] = Zb[s * m + j]
        elif method == OISTA:
            for j in range(m):
                w.V[s * m + j] = 0
            w.fresh[s] = 0                  # L_S (in aux) not computed yet
            w.pending[s] = 0
            w.exact[s] = 0
        elif method == BACKTRACKING:
            w.aux[s] = 1 / L                # last step accepted on curvature

    while True:
        P = Yb if method == FISTA else Zb
        check = c.record or it == c.max_iter or (c.tol > 0 and it % c.gap_freq == 0)
        if (method == ISTA and not check and c.own_gemm and n <= FL_GEMM_KC
                and (form_for(znnz, nb, m, n) if znnz >= 0
                     else gradient_form(Zb, nb, m, n)) == FORM_RESIDUAL):
            # R = Z D - X, then z <- ST(z - (R D^T) / L, lmbd / L) taken on
            # each tile of R D^T as _gemm.h stores it (G is not written):
            # the step of the loop below, one pass over the block less
            step = 1 / L
            block_residual(Zb, nb, Xb, D, Dp, m, n, c.own_gemm, R)
            # the step counts the non-zeros of the new z: the next
            # iteration's choice of form needs no pass of its own
            if floating is float:
                # float32: the step of ista_step_double, z in double (Zd),
                # its rounding into Zb for the next product
                znnz = fl_s_gemm_packed_step_wide(c.own_gemm, nb, <int> m, <int> n, R,
                                                  <int> n, DTp, step, w.lmbd, c.positive,
                                                  w.Zd, <int> m, Zb, <int> m)
            else:
                for s in range(nb):
                    thr_b[s] = w.lmbd[s] * step
                znnz = own_gemm_packed_step(c.own_gemm, nb, <int> m, <int> n, R, <int> n,
                                            DTp, step, thr_b, c.positive, Zb, <int> m,
                                            NULL, 0)
            it = it + 1
            continue
        znnz = -1       # Zb (and nb) change below
        block_gradient(P, nb, Xb, Cb, D, DT, B, Dp, DTp, Bp, m, n, c.own_gemm, R, G)
        if method == OISTA:
            for s in range(nb):
                if not w.pending[s]:
                    continue
                w.pending[s] = 0
                zs = Zb + s * m
                if oista_curvature_fails(tag, w, s, zs, G + s * m, Cb + s * m, m,
                                         (m + n + 8) * (FL_ROUNDOFF if floating is double
                                                        else ROUNDOFF_F)):
                    # the step was too long for this support: undo it (z0
                    # and its gradient, exactly), and take L_S from LAPACK
                    di = w.Didx + s * m
                    dz = w.Dz + s * m
                    for nd in range(w.Dn[s]):
                        zs[di[nd]] = <floating> dz[nd]
                        if w.Zd != NULL:
                            w.Zd[s * m + di[nd]] = dz[nd]
                    memcpy(G + s * m, Gold + s * m, m * sizeof(floating))
                    w.exact[s] = 1
                    w.fresh[s] = 0
                    if c.record:                # (z moved by none of it)
                        hstep[<Py_ssize_t> (it - 1) * N + w.orig[s]] = 0
        if check:
            Gp = G
            if method == FISTA and it > 0:
                block_gradient(Zb, nb, Xb, Cb, D, DT, B, Dp, DTp, Bp, m, n, c.own_gemm,
                               R, Gz)
                Gp = Gz
            s = 0
            while s < nb:
                gap = stopping_gap(Zb + s * m, Gp + s * m, Cb + s * m, w.xx[s],
                                   w.lmbd[s], m, c.positive, &obj)
                if c.record:
                    hobj[<Py_ssize_t> it * N + w.orig[s]] = obj
                    hgap[<Py_ssize_t> it * N + w.orig[s]] = gap
                done = it == c.max_iter or (c.tol > 0 and gap <= c.tol * 0.5 * w.xx[s])
                if not done:
                    s = s + 1
                    continue
                memcpy(Z + <Py_ssize_t> w.orig[s] * m, Zb + s * m, m * sizeof(floating))
                c.n_iter[w.orig[s]] = it
                c.gap_out[w.orig[s]] = gap
                # the last sample of the block takes the freed slot
                nb = nb - 1
                last = nb
                if s != last:
                    move_row(Zb, m, last, s, sizeof(floating))
                    move_row(Xb, n, last, s, sizeof(floating))
                    move_row(Cb, m, last, s, sizeof(floating))
                    move_row(G, m, last, s, sizeof(floating))
                    if Gp != G:
                        move_row(Gp, m, last, s, sizeof(floating))
                    if w.Zd != NULL:
                        move_row(w.Zd, m, last, s, sizeof(double))
                    if method == FISTA:
                        move_row(Yb, m, last, s, sizeof(floating))
                        if w.Yd != NULL:
                            move_row(w.Yd, m, last, s, sizeof(double))
                    if method == OISTA:
                        move_row(w.V, m, last, s, sizeof(double))
                        move_row(w.Dz, m, last, s, sizeof(double))
                        move_row(Gold, m, last, s, sizeof(floating))
                        move_row(w.Didx, m, last, s, sizeof(int))
                        w.Dn[s] = w.Dn[last]
                        move_row(w.curv, 3, last, s, sizeof(double))
                        w.fresh[s] = w.fresh[last]
                        w.pending[s] = w.pending[last]
                        w.exact[s] = w.exact[last]
                    w.aux[s] = w.aux[last]
                    w.lmbd[s] = w.lmbd[last]
                    w.xx[s] = w.xx[last]
                    w.orig[s] = w.orig[last]
            if nb == 0:
                return

        for s in range(nb):
            zs = Zb + s * m
            gs = G + s * m
            if method == ISTA and w.Zd != NULL:
                step = 1 / L
                ista_step_double(w.Zd + s * m, gs, zs, m, step, w.lmbd[s] * step,
                                 c.positive)
            elif method == ISTA:
                # z <- ST(z - g / L, lmbd / L), vectorised
                step = 1 / L
                thr = w.lmbd[s] * step
                if floating is double:
                    if c.positive:
                        fl_d_pst_step(m, zs, gs, step, thr)
                    else:
                        fl_d_st_step(m, zs, gs, step, thr)
                else:
                    if c.positive:
                        fl_s_pst_step(m, zs, gs, <float> step, <float> thr)
                    else:
                        fl_s_st_step(m, zs, gs, <float> step, <float> thr)
            elif method == FISTA and w.Zd != NULL:
                step = 1 / L
                fista_step_double(w.Zd + s * m, w.Yd + s * m, gs, w.rowd, m, step,
                                  w.lmbd[s] * step, c.positive, &w.aux[s])
                ys = Yb + s * m
                for j in range(m):
                    zs[j] = <floating> w.Zd[s * m + j]
                    ys[j] = <floating> w.Yd[s * m + j]
            elif method == FISTA:
                step = 1 / L
                thr = w.lmbd[s] * step
                ys = Yb + s * m
                restart = 0
                for j in range(m):
                    row[j] = threshold(<floating> (ys[j] - step * gs[j]),
                                            <floating> thr, c.positive)
                    restart += (ys[j] - row[j]) * (row[j] - zs[j])
                if restart > 0:
                    # the momentum points uphill: restart from z_{k+1}
                    w.aux[s] = 1
                    memcpy(ys, row, m * sizeof(floating))
                else:
                    t_new = 0.5 * (1 + sqrt(1 + 4 * w.aux[s] * w.aux[s]))
                    beta = (w.aux[s] - 1) / t_new
                    w.aux[s] = t_new
                    for j in range(m):
                        ys[j] = row[j] + beta * (row[j] - zs[j])
                memcpy(zs, row, m * sizeof(floating))
            elif method == OISTA:
                zd = <double *> zs if floating is double else w.Zd + s * m
                step = 1 / L
                if not w.fresh[s]:
                    w.aux[s] = oista_lipschitz(tag, c, w, s, zs)
                    w.fresh[s] = 1
                if w.aux[s] > 0:
                    step = 1 / w.aux[s]
                thr = w.lmbd[s] * step
                inside = True
                shrunk = False
                for j in range(m):
                    rowd[j] = threshold(zd[j] - step * gs[j], thr, c.positive)
                    if rowd[j] != 0 and zd[j] == 0:
                        inside = False
                    elif rowd[j] == 0 and zd[j] != 0:
                        shrunk = True
                if inside:
                    if w.aux[s] > 0 and not w.exact[s]:
                        # d = z+ - z on S = supp(z) (the atoms of the last
                        # L_S, kept in Didx): z on S and its gradient, to
                        # undo the step, and d.g(z), ||d||^2 and the
                        # rounding scale of d.g, for the curvature test
                        dg = 0
                        dd = 0
                        de = 0
                        di = w.Didx + s * m
                        dz = w.Dz + s * m
                        cs = Cb + s * m
                        for nd in range(w.Dn[s]):
                            j = di[nd]
                            # d as stored for the products: the float32
                            # z and z+ rounded (d.g(z) in double on
                            # unrounded ones left the rounding of z, not
                            # of d, in the curvature test, whose tolerance
                            # scales with d: near the optimum, float32
                            # steps exactly on L_S were undone)
                            ud = (<double> (<floating> rowd[j])
                                  - <double> (<floating> zd[j]))
                            dz[nd] = zd[j]
                            dg = dg + ud * gs[j]
                            dd = dd + ud * ud
                            de = de + fabs(ud) * (fabs(<double> cs[j])
                                                  + fabs(<double> gs[j] + cs[j]))
                        w.curv[3 * s] = dg
                        w.curv[3 * s + 1] = dd
                        w.curv[3 * s + 2] = de
                        w.pending[s] = dd > 0
                        memcpy(Gold + s * m, gs, m * sizeof(floating))
                    memcpy(zd, rowd, m * sizeof(double))
                    if shrunk:
                        w.fresh[s] = 0
                else:
                    # supp(z+) leaves S: 1/L_S is no longer safe
                    step = 1 / L
                    thr = w.lmbd[s] * step
                    for j in range(m):
                        zd[j] = threshold(zd[j] - step * gs[j], thr, c.positive)
                    w.fresh[s] = 0
                if floating is float:
                    for j in range(m):
                        zs[j] = <floating> zd[j]
            else:
                step = w.aux[s] / ETA
                ddD = 0
                for trial in range(LS_MAX_TRIALS + 1):
                    if trial == LS_MAX_TRIALS:
                        # every trial refused (a step grown while only tiny
                        # atoms moved, then a large one enters): 1/L, which
                        # the test accepts (||d D||^2 <= L ||d||^2)
                        step = 1 / L
                    thr = w.lmbd[s] * step
                    # d = z+ - z; accept when step ||d D||^2 <= ||d||^2
                    dd = 0
                    for j in range(n):
                        dD[j] = 0
                    for j in range(m):
                        row[j] = threshold(<floating> (zs[j] - step * gs[j]),
                                                <floating> thr, c.positive)
                        u = row[j] - zs[j]
                        if u != 0:
                            dd += u * u
                            axpy(<int> n, u, D + j * n, dD)
                    ddD = dot(<int> n, dD, dD)
                    if step * ddD <= dd or step <= 1 / L:
                        break
                    step = step * ETA
                if ddD > 0:
                    w.aux[s] = step
                memcpy(zs, row, m * sizeof(floating))
            if c.record:
                hstep[<Py_ssize_t> it * N + w.orig[s]] = step
        it = it + 1


cdef void _block_d(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    solve_block(<double *> NULL, <ProxCtx *> ctx, tid, start, nb)


cdef void _block_s(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    solve_block(<float *> NULL, <ProxCtx *> ctx, tid, start, nb)


def prox_grad(str method_name, const floating[:, ::1] X,
              const floating[:, ::1] D, const floating[:, ::1] DT,
              const floating[:, ::1] B, const floating[:, ::1] C,
              const double[::1] xx, const double[::1] lmbd, double L,
              floating[:, ::1] Z, const int[::1] active, int max_iter,
              double tol, bint positive, int gap_freq, int n_threads,
              int block_size, bint record, floating[:, ::1] hist_obj, floating[:, ::1] hist_gap,
              floating[:, ::1] hist_step, int[::1] n_iter, double[::1] gap_out,
              int own_gemm=0):
    """Solve the samples ``active`` in place in Z (see the module docstring).

    xx = ||x||^2 and lmbd are per sample (N,). With ``positive`` the codes
    are constrained >= 0 (one-sided threshold). ``hist_*`` are (max_iter + 1,
    N) arrays when ``record`` (else (1, 1)). Writes ``n_iter`` and
    ``gap_out`` (the stopping gap) for the active samples. ``own_gemm``: the
    GEMM forms of the gradient through _gemm.h's tile of that level
    (_gemm.GEMM_KERNELS; and ISTA's fused step), 0 through BLAS.
    """
    cdef ProxCtx c
    cdef Py_ssize_t m = D.shape[0], n = D.shape[1], N = X.shape[0]
    cdef Py_ssize_t n_active = active.shape[0], r = min(m, n)
    cdef Py_ssize_t bm = <Py_ssize_t> block_size * m, bn = <Py_ssize_t> block_size * n
    cdef int method = METHODS[method_name], t
    _gemm.check_level("prox_grad", own_gemm)
    if n_active == 0:
        return
    n_threads = max(1, min(n_threads, (n_active + block_size - 1) // block_size))
    dtype = np.float32 if floating is float else np.float64
    fista, oista = method == FISTA, method == OISTA
    # per-thread workspaces: (name, size) in the storage dtype and in double
    fsizes = [bm, bn, bm, bm, bn, bm if fista else 0, bm if fista else 0, m, n,
              block_size if method == ISTA and floating is double else 0,
              bm if oista else 0]
    # float32 FISTA keeps its iterates z and y in double: stored in float32
    # they stalled on correlated atoms (relative gaps of 1e-5 after 5e4
    # iterations, where float64 certifies 1e-6 within 9e3 and the float32
    # iterates rounded from double within 1e-7). So does float32 ISTA: each
    # step's rounding of z to float32 walks it along the support's flat
    # directions, which ISTA contracts by only 1 - mu / L a step (on
    # Gaussian 40 x 20 atoms at lmbd = 0.2, 49 of 100 samples certified
    # 1e-6 in 1e4 iterations, 77 with z in double, as in float64), and
    # OISTA (188 of 200 in 1e5; 196 in double, 198 in float64). ISTA's fused
    # step takes its step in double there (_gemm.h: fl_s_gemm_step_wide)
    wide = (fista or oista or method == ISTA) and floating is float
    dsizes = [block_size, block_size, block_size, bm if oista else 0,
              m if oista else 0, m if oista else 0,
              max(min(m, 2 * n) ** 2, n) if oista else 0,
              r * r if oista else 0, 27 * r if oista else 0,
              bm if wide else 0, bm if wide and fista else 0,
              m if wide and (fista or oista) else 0,
              bm if oista else 0, 3 * block_size if oista else 0]
    isizes = [10 * r if oista else 0, block_size, m, bm if oista else 0,
              block_size if oista else 0]
    # each workspace starts on 64 bytes, as do the threads' rows
    # (_gemm.aligned_empty: its vectors never straddle two cache lines)
    fsizes, dsizes = ([-(-size // 16) * 16 for size in s] for s in (fsizes, dsizes))
    foff, doff, ioff = (np.concatenate([[0], np.cumsum(s)]).astype(np.intp)
                        for s in (fsizes, dsizes, isizes))
    # (one spare column: an empty workspace's pointer stays inside its row)
    fws = _gemm.aligned_empty(n_threads, sum(fsizes) + 1, dtype)
    dws = _gemm.aligned_empty(n_threads, sum(dsizes) + 1, np.float64)
    iws = np.empty((n_threads, sum(isizes) + 1), np.intc)
    ubs = np.empty((n_threads, 3 * block_size), np.uint8)
    cdef floating[:, ::1] fv = fws
    cdef double[:, ::1] dv = dws
    cdef int[:, ::1] iv = iws
    cdef unsigned char[:, ::1] uv = ubs
    cdef Py_ssize_t[::1] fo = foff, do = doff, io = ioff
    c.method = method
    c.X = &X[0, 0]
    c.D = &D[0, 0]
    c.DT = &DT[0, 0]
    c.B = &B[0, 0]
    # the three matrices of the GEMM forms, packed once for _gemm.h
    Dp, DTp, Bp = ((_gemm.pack(D), _gemm.pack(DT), _gemm.pack(B)) if own_gemm
                   else (None, None, None))
    c.Dp = _data(Dp)
    c.DTp = _data(DTp)
    c.Bp = _data(Bp)
    c.C = &C[0, 0]
    c.xx = &xx[0]
    c.lmbd = &lmbd[0]
    c.Z = &Z[0, 0]
    c.active = &active[0]
    c.N = N
    c.m = m
    c.n = n
    c.L = L
    c.max_iter = max_iter
    c.gap_freq = gap_freq
    c.tol = tol
    c.positive = positive
    c.own_gemm = own_gemm
    c.record = record
    c.hist_obj = &hist_obj[0, 0]
    c.hist_gap = &hist_gap[0, 0]
    c.hist_step = &hist_step[0, 0]
    c.n_iter = &n_iter[0]
    c.gap_out = &gap_out[0]
    cdef bint check = in_main_thread(), stopped
    # (allocated right before the try whose finally frees it)
    cdef ProxWork *work = <ProxWork *> table_alloc(n_threads, sizeof(ProxWork))
    try:
        for t in range(n_threads):
            work[t].Z = &fv[t, fo[0]]
            work[t].X = &fv[t, fo[1]]
            work[t].C = &fv[t, fo[2]]
            work[t].G = &fv[t, fo[3]]
            work[t].R = &fv[t, fo[4]]
            work[t].Y = &fv[t, fo[5]]
            work[t].Gz = &fv[t, fo[6]]
            work[t].row = &fv[t, fo[7]]
            work[t].dD = &fv[t, fo[8]]
            work[t].thr = &fv[t, fo[9]]
            work[t].aux = &dv[t, do[0]]
            work[t].lmbd = &dv[t, do[1]]
            work[t].xx = &dv[t, do[2]]
            work[t].V = &dv[t, do[3]]
            work[t].v = &dv[t, do[4]]
            work[t].w = &dv[t, do[5]]
            work[t].lwork = &dv[t, do[6]]
            work[t].A = &dv[t, do[7]]
            work[t].lapack = &dv[t, do[8]]
            work[t].iwork = &iv[t, io[0]]
            work[t].orig = &iv[t, io[1]]
            work[t].idx = &iv[t, io[2]]
            work[t].fresh = &uv[t, 0]
            work[t].pending = &uv[t, block_size]
            work[t].exact = &uv[t, 2 * block_size]
            work[t].Zd = &dv[t, do[9]] if wide else NULL
            work[t].Yd = &dv[t, do[10]] if wide and fista else NULL
            work[t].rowd = &dv[t, do[11]] if wide and (fista or oista) else NULL
            work[t].Dz = &dv[t, do[12]]
            work[t].Didx = &iv[t, io[3]]
            work[t].Dn = &iv[t, io[4]]
            work[t].curv = &dv[t, do[13]]
            work[t].Gold = &fv[t, fo[10]]
        c.work = work
        with nogil:
            stopped = run_blocks(n_active, block_size, n_threads, True,
                                 _block_d if floating is double else _block_s, &c, check)
        if stopped:
            raise_interrupt()
    finally:
        table_free(work)


cdef struct CorrCtx:
    const void *X
    const void *D
    void *C
    double *top         # (N,) row maxima of C, or NULL
    const double *dn    # (m,) the atoms' norms to certify top with, or NULL
    Py_ssize_t n, m
    bint positive


cdef void corr_block(floating *tag, CorrCtx *c, int tid, Py_ssize_t start,
                     int nb) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef const double *x
    cdef const double *g
    cdef double xn, e, best
    # C_blk = X_blk D^T
    gemm(False, True, nb, <int> c.m, <int> c.n, 1,
         <const floating *> c.X + start * c.n, <int> c.n,
         <const floating *> c.D, <int> c.n, 0,
         <floating *> c.C + start * c.m, <int> c.m)
    # lambda_max of each row, read while the block is in cache: the largest
    # computed |c_j|. Certified (dn given), it is raised to a value no exact
    # |x.d_j| exceeds. Whatever the order of its n products, |c_j - x.d_j|
    # <= gamma_n ||x|| ||d_j|| <= e ||d_j|| with e = (2 n + 8) u ||x|| (the
    # factor 2 covers the rounding of the norms); the atoms whose c_j can
    # come that near the largest are recomputed to about twice double
    # precision with their error bound (fl_certified_gmax), which
    # cancellation in x.d_j needs: fl(1e16 + 1 - 1e16) = 0.
    if floating is double:
        if c.top != NULL:
            for i in range(start, start + nb):
                g = <const double *> c.C + i * c.m
                c.top[i] = fl_d_corr_max(c.m, g, c.positive)
                if c.dn == NULL:
                    continue
                x = <const double *> c.X + i * c.n
                xn = 0
                for j in range(c.n):
                    xn += x[j] * x[j]
                e = (2 * c.n + 8) * FL_ROUNDOFF * sqrt(xn)
                best = fl_certified_gmax(c.n, c.m, x, <const double *> c.D, g, c.dn, e,
                                         0.0, c.positive)
                c.top[i] = max(c.top[i], best)


cdef void _corr_d(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    corr_block(<double *> NULL, <CorrCtx *> ctx, tid, start, nb)


cdef void _corr_s(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    corr_block(<float *> NULL, <CorrCtx *> ctx, tid, start, nb)


def correlations(const floating[:, ::1] X, const floating[:, ::1] D,
                 floating[:, ::1] C, int n_threads, int block_size=256,
                 double[::1] top=None, bint positive=False, bint certified=False):
    """C = X D^T by blocks of rows, OpenMP over blocks (BLAS single-threaded).

    The products run on the same threads as the solver kernels that follow,
    rather than on BLAS's own pool, whose idle workers would busy-wait on the
    cores the kernels need. With ``top`` (N,) (double C only), also each
    row's lambda_max: max_j |C_ij|, or max(max_j C_ij, 0) with ``positive``;
    ``certified``, at least that and at least every exact |x.d_j| (x.d_j),
    within a few ulps of the largest.
    """
    cdef CorrCtx c
    cdef Py_ssize_t N = X.shape[0]
    cdef double[::1] dn
    if top is not None and (floating is not double or top.shape[0] != N):
        raise ValueError("top needs a double C and one entry a row")
    if top is not None and D.shape[0] == 0:
        top[:] = 0
    if N == 0 or D.shape[0] == 0:
        return
    n_threads = max(1, min(n_threads, (N + block_size - 1) // block_size))
    c.X = &X[0, 0]
    c.D = &D[0, 0]
    c.C = &C[0, 0]
    c.top = &top[0] if top is not None else NULL
    c.dn = NULL
    if top is not None and certified:
        dn = np.sqrt(np.einsum("ij,ij->i", D, D))
        c.dn = &dn[0]
    c.positive = positive
    c.n = X.shape[1]
    c.m = D.shape[0]
    cdef bint check = in_main_thread(), stopped
    with nogil:
        stopped = run_blocks(N, block_size, n_threads, False,
                             _corr_d if floating is double else _corr_s, &c, check)
    if stopped:
        raise_interrupt()
