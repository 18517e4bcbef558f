"""Batched proximal-gradient Lasso solvers: ISTA, FISTA, OISTA, backtracking.

For every sample x (a row of X) they minimise

    F_x(z) = 1/2 ||x - z D||^2 + lmbd ||z||_1,    B = D D^T,  c = x D^T,

by steps z <- ST(z - t (z B - c), lmbd t) with a step t chosen per method:

* ISTA: t = 1/L, L = ||B||_2.
* FISTA: the ISTA step at y = z_k + (t_k - 1)/t_{k+1} (z_k - z_{k-1}), with
  the gradient-based adaptive restart of O'Donoghue & Candes (2015).
* OISTA: t = 1/L_S, S = supp(z), kept only if supp(z+) is inside S (the
  descent lemma holds on the face of S with constant L_S); otherwise 1/L.
* backtracking: a step per sample, tried at t_prev / eta and shrunk by eta
  until 1/2 ||d D||^2 <= ||d||^2 / (2 t), d = z+ - z (the quadratic upper
  bound of Beck & Teboulle, 2009, written exactly for this quadratic f).

Samples are processed in blocks that stay in cache; each block runs all its
iterations before the next (threads take blocks). Within a block, the
gradient G = P B - C is one of
  * two GEMMs through D: R = P D - X, G = R D^T        (4 b m n flops),
  * one GEMM through the Gram: G = P B - C             (2 b m^2 flops),
  * a gather of the rows of B of the non-zeros of P    (2 m nnz(P) flops),
whichever is cheapest. Every `gap_freq` iterations the duality gap of each
sample is computed from the gradient at z in O(m) (no extra product for
ISTA, OISTA and backtracking; one for FISTA, whose gradient is at y), and a
sample whose gap is <= tol * 1/2 ||x||^2 leaves its block.
"""
import numpy as np
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport fabs, sqrt
from libc.string cimport memcpy

from ._blas cimport gemm, axpy, dot
from ._prox cimport soft_threshold
from ._lipschitz cimport support_lipschitz
from ._simd cimport fl_d_st_step, fl_s_st_step

cdef enum:
    ISTA = 0
    FISTA = 1
    OISTA = 2
    BACKTRACKING = 3

METHODS = {"ista": ISTA, "fista": FISTA, "oista": OISTA,
           "backtracking": BACKTRACKING}

# A gather of rows of B runs at roughly a quarter of GEMM speed.
cdef double SPARSE_PENALTY = 4.0
# Backtracking: try t_prev / ETA first, shrink by ETA.
cdef double ETA = 0.7
cdef int LS_MAX_TRIALS = 100


cdef void block_gradient(const floating *P, int nb, const floating *Xb,
                         const floating *Cb, const floating *D,
                         const floating *DT, const floating *B, int m, int n,
                         floating *R, floating *G) noexcept nogil:
    """G[:nb] = P[:nb] B - C[:nb], by the cheapest of three forms.

    The products are untransposed (DT = D^T): BLAS multiplies these small
    blocks without packing the operands.
    """
    cdef Py_ssize_t i, j, nnz = 0
    cdef floating p
    cdef const floating *row
    cdef double dense = 4.0 * nb * m * n
    if 2.0 * m * m * nb < dense:
        dense = 2.0 * m * m * nb
    for i in range(<Py_ssize_t> nb * m):
        nnz += P[i] != 0
    if SPARSE_PENALTY * 2.0 * m * nnz < dense:
        # G_i = -c_i + sum_{j in supp(p_i)} p_ij B_j
        for i in range(nb):
            row = P + i * m
            for j in range(m):
                G[i * m + j] = -Cb[i * m + j]
            for j in range(m):
                p = row[j]
                if p != 0:
                    axpy(m, p, B + j * m, G + i * m)
    elif 2.0 * m * m * nb < 4.0 * nb * m * n:
        # G = P B - C
        memcpy(G, Cb, nb * m * sizeof(floating))
        gemm(False, False, nb, m, m, 1, P, m, B, m, -1, G, m)
    else:
        # R = P D - X, then G = R D^T
        memcpy(R, Xb, nb * n * sizeof(floating))
        gemm(False, False, nb, n, m, 1, P, m, D, n, -1, R, n)
        gemm(False, False, nb, m, n, 1, R, n, DT, m, 0, G, m)


cdef inline void gap_of(const floating *z, const floating *g, const floating *c,
                        double xx, double lmbd, int m, double *obj,
                        double *gap) noexcept nogil:
    """Primal objective and duality gap of z from its gradient g = z B - c.

    ||r||^2 = ||x||^2 - z.c + z.g (r = x - z D), r D^T = -g, and with
    s = max(lmbd, ||g||_inf), theta = r / s:
    Dual(theta) = (lmbd/s) <x, r> - 1/2 (lmbd/s)^2 ||r||^2, <x, r> = xx - z.c.
    """
    cdef int j
    cdef double zc = 0, zg = 0, l1 = 0, ginf = 0, rr, xr, s, ratio, dual
    for j in range(m):
        zc += z[j] * c[j]
        zg += z[j] * g[j]
        l1 += fabs(z[j])
        if fabs(g[j]) > ginf:
            ginf = fabs(g[j])
    rr = xx - zc + zg
    if rr < 0:
        rr = 0
    xr = xx - zc
    obj[0] = 0.5 * rr + lmbd * l1
    s = lmbd if lmbd > ginf else ginf
    ratio = lmbd / s if s > 0 else 0
    dual = ratio * xr - 0.5 * ratio * ratio * rr
    gap[0] = obj[0] - dual if obj[0] > dual else 0


cdef inline void move_row(floating *A, int width, int src, int dst) noexcept nogil:
    memcpy(A + <Py_ssize_t> dst * width, A + <Py_ssize_t> src * width,
           width * sizeof(floating))


cdef void solve_block(
        int method, int nb, const int *rows,
        const floating[:, ::1] X, const floating[:, ::1] D,
        const floating[:, ::1] DT, const floating[:, ::1] B,
        const floating[:, ::1] C, const floating[::1] xx, floating[:, ::1] Z,
        double lmbd, double L, int max_iter, double tol, int gap_freq,
        bint record, floating[:, ::1] hist_obj, floating[:, ::1] hist_gap,
        floating[:, ::1] hist_step, int[::1] n_iter, floating[::1] gap_out,
        # per-thread workspace
        floating *Zb, floating *Xb, floating *Cb, floating *G, floating *R,
        floating *Yb, floating *Gz, floating *Vb, floating *aux,
        int *orig, unsigned char *fresh, floating *row, floating *dD,
        int *idx, floating *v, floating *w, floating *work,
        double ls_tol, int ls_max_iter) noexcept nogil:
    """Run one block of samples to convergence (or max_iter), in place."""
    cdef int m = D.shape[0], n = D.shape[1]
    cdef int s, j, k, it = 0, trial, last
    cdef bint check, done, inside, shrunk, has_warm, converged
    cdef double obj, gap, step, thr, t_new, beta, restart, dd, ddD, xxs
    cdef floating u
    cdef floating *P
    cdef floating *Gp
    cdef floating *zs
    cdef floating *gs

    for s in range(nb):
        orig[s] = rows[s]
        memcpy(Zb + <Py_ssize_t> s * m, &Z[rows[s], 0], m * sizeof(floating))
        memcpy(Xb + <Py_ssize_t> s * n, &X[rows[s], 0], n * sizeof(floating))
        memcpy(Cb + <Py_ssize_t> s * m, &C[rows[s], 0], m * sizeof(floating))
        if method == FISTA:
            memcpy(Yb + <Py_ssize_t> s * m, Zb + <Py_ssize_t> s * m, m * sizeof(floating))
            aux[s] = 1                      # momentum t_k
        elif method == OISTA:
            for j in range(m):
                Vb[<Py_ssize_t> s * m + j] = 0
            fresh[s] = 0                    # L_S (in aux) not computed yet
        elif method == BACKTRACKING:
            aux[s] = 1 / L                  # current step

    while True:
        P = Yb if method == FISTA else Zb
        block_gradient(P, nb, Xb, Cb, &D[0, 0], &DT[0, 0], &B[0, 0], m, n, R, G)
        check = record or it == max_iter or (tol > 0 and it % gap_freq == 0)
        if check:
            Gp = G
            if method == FISTA and it > 0:
                block_gradient(Zb, nb, Xb, Cb, &D[0, 0], &DT[0, 0], &B[0, 0], m, n, R,
                               Gz)
                Gp = Gz
            s = 0
            while s < nb:
                xxs = xx[orig[s]]
                gap_of(Zb + <Py_ssize_t> s * m, Gp + <Py_ssize_t> s * m,
                       Cb + <Py_ssize_t> s * m, xxs, lmbd, m, &obj, &gap)
                if record:
                    hist_obj[it, orig[s]] = obj
                    hist_gap[it, orig[s]] = gap
                done = it == max_iter or (tol > 0 and gap <= tol * 0.5 * xxs)
                if not done:
                    s = s + 1
                    continue
                memcpy(&Z[orig[s], 0], Zb + <Py_ssize_t> s * m, m * sizeof(floating))
                n_iter[orig[s]] = it
                gap_out[orig[s]] = gap
                # the last sample of the block takes the freed slot
                nb = nb - 1
                last = nb
                if s != last:
                    move_row(Zb, m, last, s)
                    move_row(Xb, n, last, s)
                    move_row(Cb, m, last, s)
                    move_row(G, m, last, s)
                    if Gp != G:
                        move_row(Gp, m, last, s)
                    if method == FISTA:
                        move_row(Yb, m, last, s)
                    if method == OISTA:
                        move_row(Vb, m, last, s)
                        fresh[s] = fresh[last]
                    aux[s] = aux[last]
                    orig[s] = orig[last]
            if nb == 0:
                return

        for s in range(nb):
            zs = Zb + <Py_ssize_t> s * m
            gs = G + <Py_ssize_t> s * m
            if method == ISTA:
                # z <- ST(z - g / L, lmbd / L), vectorised
                step = 1 / L
                thr = lmbd * step
                if floating is double:
                    fl_d_st_step(m, zs, gs, step, thr)
                else:
                    fl_s_st_step(m, zs, gs, <float> step, <float> thr)
            elif method == FISTA:
                step = 1 / L
                thr = lmbd * step
                P = Yb + <Py_ssize_t> s * m
                restart = 0
                for j in range(m):
                    row[j] = soft_threshold(<floating> (P[j] - step * gs[j]), <floating> thr)
                    restart += (P[j] - row[j]) * (row[j] - zs[j])
                if restart > 0:
                    # the momentum points uphill: restart from z_{k+1}
                    aux[s] = 1
                    memcpy(P, row, m * sizeof(floating))
                else:
                    t_new = 0.5 * (1 + sqrt(1 + 4 * aux[s] * aux[s]))
                    beta = (aux[s] - 1) / t_new
                    aux[s] = t_new
                    for j in range(m):
                        P[j] = row[j] + beta * (row[j] - zs[j])
                memcpy(zs, row, m * sizeof(floating))
            elif method == OISTA:
                k = 0
                for j in range(m):
                    if zs[j] != 0:
                        idx[k] = j
                        k = k + 1
                step = 1 / L
                if k > 0:
                    if not fresh[s]:
                        has_warm = False
                        for j in range(k):
                            v[j] = Vb[<Py_ssize_t> s * m + idx[j]]
                            has_warm = has_warm or v[j] != 0
                        aux[s] = support_lipschitz(
                            &B[0, 0], &D[0, 0], m, n, idx, k, v, w, work,
                            has_warm, <floating> ls_tol, ls_max_iter, &converged)
                        for j in range(k):
                            Vb[<Py_ssize_t> s * m + idx[j]] = v[j]
                        fresh[s] = 1
                    if aux[s] > 0:
                        step = 1 / aux[s]
                thr = lmbd * step
                inside = True
                shrunk = False
                for j in range(m):
                    row[j] = soft_threshold(<floating> (zs[j] - step * gs[j]), <floating> thr)
                    if row[j] != 0 and zs[j] == 0:
                        inside = False
                    elif row[j] == 0 and zs[j] != 0:
                        shrunk = True
                if inside:
                    memcpy(zs, row, m * sizeof(floating))
                    if shrunk:
                        fresh[s] = 0
                else:
                    # supp(z+) leaves S: 1/L_S is no longer safe
                    step = 1 / L
                    thr = lmbd * step
                    for j in range(m):
                        zs[j] = soft_threshold(<floating> (zs[j] - step * gs[j]), <floating> thr)
                    fresh[s] = 0
            else:
                step = aux[s] / ETA
                for trial in range(LS_MAX_TRIALS):
                    thr = lmbd * step
                    # d = z+ - z; accept when step ||d D||^2 <= ||d||^2
                    dd = 0
                    for j in range(n):
                        dD[j] = 0
                    for j in range(m):
                        row[j] = soft_threshold(<floating> (zs[j] - step * gs[j]), <floating> thr)
                        u = row[j] - zs[j]
                        if u != 0:
                            dd += u * u
                            axpy(n, u, &D[j, 0], dD)
                    ddD = dot(n, dD, dD)
                    if step * ddD <= dd or step <= 1 / L:
                        break
                    step = step * ETA
                aux[s] = step
                memcpy(zs, row, m * sizeof(floating))
            if record:
                hist_step[it, orig[s]] = step
        it = it + 1


def prox_grad(str method_name, const floating[:, ::1] X,
              const floating[:, ::1] D, const floating[:, ::1] DT,
              const floating[:, ::1] B,
              const floating[:, ::1] C, const floating[::1] xx,
              double lmbd, double L, floating[:, ::1] Z,
              const int[::1] active, int max_iter, double tol, int gap_freq,
              int n_threads, int block_size, bint record,
              floating[:, ::1] hist_obj, floating[:, ::1] hist_gap,
              floating[:, ::1] hist_step, int[::1] n_iter,
              floating[::1] gap_out):
    """Solve the samples ``active`` in place in Z (see the module docstring).

    ``hist_*`` are (max_iter + 1, N) arrays when ``record`` (else (1, 1)).
    Writes ``n_iter`` and ``gap_out`` for the active samples.
    """
    cdef int method = METHODS[method_name]
    cdef int m = D.shape[0], n = D.shape[1]
    cdef int n_active = active.shape[0]
    cdef int n_blocks = (n_active + block_size - 1) // block_size
    cdef int blk, t, nb
    cdef double ls_tol = 1e-8 if floating is double else 1e-5
    if n_active == 0:
        return
    n_threads = max(1, min(n_threads, n_blocks))
    dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t bm = <Py_ssize_t> block_size * m, bn = <Py_ssize_t> block_size * n
    # per-thread workspaces, allocated once
    cdef floating[:, ::1] Zb = np.empty((n_threads, bm), dtype)
    cdef floating[:, ::1] Xb = np.empty((n_threads, bn), dtype)
    cdef floating[:, ::1] Cb = np.empty((n_threads, bm), dtype)
    cdef floating[:, ::1] G = np.empty((n_threads, bm), dtype)
    cdef floating[:, ::1] R = np.empty((n_threads, bn), dtype)
    cdef floating[:, ::1] Yb = np.empty((n_threads, bm if method == FISTA else 1), dtype)
    cdef floating[:, ::1] Gz = np.empty((n_threads, bm if method == FISTA else 1), dtype)
    cdef floating[:, ::1] Vb = np.empty((n_threads, bm if method == OISTA else 1), dtype)
    cdef floating[:, ::1] aux = np.empty((n_threads, block_size), dtype)
    cdef int[:, ::1] orig = np.empty((n_threads, block_size), np.intc)
    cdef unsigned char[:, ::1] fresh = np.empty((n_threads, block_size), np.uint8)
    cdef floating[:, ::1] row = np.empty((n_threads, m), dtype)
    cdef floating[:, ::1] dD = np.empty((n_threads, n), dtype)
    cdef int[:, ::1] idx = np.empty((n_threads, m), np.intc)
    cdef floating[:, ::1] v = np.empty((n_threads, m), dtype)
    cdef floating[:, ::1] w = np.empty((n_threads, m), dtype)
    cdef floating[:, ::1] work = np.empty(
        (n_threads, max(min(m, 2 * n) ** 2, n) if method == OISTA else 1), dtype)

    with nogil:
        for blk in prange(n_blocks, num_threads=n_threads, schedule="dynamic"):
            t = threadid()
            nb = min(block_size, n_active - blk * block_size)
            solve_block(method, nb, &active[blk * block_size], X, D, DT, B, C, xx,
                        Z, lmbd, L, max_iter, tol, gap_freq, record, hist_obj,
                        hist_gap, hist_step, n_iter, gap_out,
                        &Zb[t, 0], &Xb[t, 0], &Cb[t, 0], &G[t, 0], &R[t, 0],
                        &Yb[t, 0], &Gz[t, 0], &Vb[t, 0], &aux[t, 0],
                        &orig[t, 0], &fresh[t, 0], &row[t, 0], &dD[t, 0],
                        &idx[t, 0], &v[t, 0], &w[t, 0], &work[t, 0],
                        ls_tol, 1000)


def correlations(const floating[:, ::1] X, const floating[:, ::1] D,
                 floating[:, ::1] C, int n_threads, int block_size=256):
    """C = X D^T by blocks of rows, OpenMP over blocks (BLAS single-threaded).

    The products run on the same threads as the solver kernels that follow,
    rather than on BLAS's own pool, whose idle workers would busy-wait on the
    cores the kernels need.
    """
    cdef int N = X.shape[0], n = X.shape[1], m = D.shape[0]
    cdef int n_blocks = (N + block_size - 1) // block_size, blk, nb
    if N == 0 or m == 0:
        return
    n_threads = max(1, min(n_threads, n_blocks))
    with nogil:
        for blk in prange(n_blocks, num_threads=n_threads, schedule="static"):
            nb = min(block_size, N - blk * block_size)
            # C_blk = X_blk D^T
            gemm(False, True, nb, m, n, 1, &X[blk * block_size, 0], n,
                 &D[0, 0], n, 0, &C[blk * block_size, 0], m)
