"""Batched coordinate descent for the Lasso on the Gram matrix.

Each sample x (c = x D^T, B = D D^T) is solved independently, samples in
parallel (OpenMP). With the negative gradient g = c - z B maintained,

    z_j <- ST(z_j + g_j / B_jj, lmbd / B_jj),   g <- g - (z_j_new - z_j) B_j

is an exact minimisation along coordinate j. Three devices make it fast:

* working sets: an outer loop picks W = supp(z) plus the atoms with the
  largest |g_j| (the closest to violating |g_j| <= lmbd), max(10, 2 |supp|)
  atoms in all; inner epochs update only W and keep g on W only (|W| flops
  a coordinate change, not n_atoms);
* a Newton polish: once an epoch leaves the signs s of z unchanged, the
  Lasso restricted to S = supp(z) with those signs is the linear system
  B_SS z_S = c_S - lmbd s_S. Its solution (Cholesky) is the exact optimum on
  W when its signs agree with s; otherwise z moves towards it until the
  first coordinate reaches 0 (an active-set step);
* the duality gap of the subproblem on W costs O(|W|) and ends the inner
  loop (as do an epoch that changes nothing and MAX_INNER epochs, after
  which W grows); the full gap (O(m nnz) to refresh g) ends the outer loop.

Computations run in double precision whatever the storage dtype.
"""
import numpy as np
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport fabs, sqrt

from ._prox cimport sign, soft_threshold

cdef int MIN_WS = 10
cdef int WS_MAX = 1024
# inner epochs per working set before the outer loop grows it
cdef int MAX_INNER = 100
cdef int MIN_PER_THREAD = 16


cdef double gap_from(int w, const double *z, const double *g, const double *c,
                     double xx, double lmbd) noexcept nogil:
    """Duality gap of z with the negative gradient g = c - z B, on w atoms.

    ||r||^2 = ||x||^2 - 2 z.c + z B z = xx - z.c - z.g, and r D^T = g; the
    dual point r / max(lmbd, ||g||_inf) is feasible for the problem on these
    atoms (for all atoms: the full duality gap).
    """
    cdef int a
    cdef double zc = 0, zg = 0, l1 = 0, ginf = 0, rr, s, ratio, primal, dual
    for a in range(w):
        zc += z[a] * c[a]
        zg += z[a] * g[a]
        l1 += fabs(z[a])
        if fabs(g[a]) > ginf:
            ginf = fabs(g[a])
    rr = xx - zc - zg
    if rr < 0:
        rr = 0
    primal = 0.5 * rr + lmbd * l1
    s = lmbd if lmbd > ginf else ginf
    ratio = lmbd / s if s > 0 else 0
    dual = ratio * (xx - zc) - 0.5 * ratio * ratio * rr
    return primal - dual if primal > dual else 0


cdef void select_top(double *score, int *idx, int n, int k) noexcept nogil:
    """Reorder idx[:n] (with score) so that idx[:k] hold the k best scores."""
    cdef int lo = 0, hi = n - 1, i, j, ti
    cdef double pivot, ts
    while lo < hi:
        pivot = score[(lo + hi) // 2]
        i = lo
        j = hi
        while i <= j:
            while score[i] > pivot:
                i += 1
            while score[j] < pivot:
                j -= 1
            if i <= j:
                ts = score[i]; score[i] = score[j]; score[j] = ts
                ti = idx[i]; idx[i] = idx[j]; idx[j] = ti
                i += 1
                j -= 1
        if k - 1 <= j:
            hi = j
        elif k - 1 >= i:
            lo = i
        else:
            return


cdef int newton_polish(int w, double *z, const double *c, const double *Bw,
                       double lmbd, int kmax, int *S, double *M,
                       double *rhs) noexcept nogil:
    """Newton step on S = supp(z): B_SS z_S = c_S - lmbd sign(z_S).

    All on the compact working set (Bw is w x w). Returns 1 when the solution
    keeps the signs (z is then the optimum of the problem restricted to S),
    2 when z moved to the first sign crossing and dropped that coordinate,
    0 when B_SS is singular or too large (z unchanged).
    """
    cdef int a, b, k = 0, i, first = -1
    cdef double acc, t = 1, ta
    for a in range(w):
        if z[a] != 0:
            if k == kmax:
                return 0
            S[k] = a
            k += 1
    if k == 0:
        return 0
    for a in range(k):
        for b in range(a + 1):
            M[a * k + b] = Bw[S[a] * w + S[b]]
        rhs[a] = c[S[a]] - lmbd * sign(z[S[a]])
    # Cholesky M = L L^T in the lower triangle
    for a in range(k):
        for b in range(a + 1):
            acc = M[a * k + b]
            for i in range(b):
                acc -= M[a * k + i] * M[b * k + i]
            if a == b:
                if acc <= 1e-12 * M[a * k + a] or acc <= 0:
                    return 0
                M[a * k + a] = sqrt(acc)
            else:
                M[a * k + b] = acc / M[b * k + b]
    # forward then backward substitution
    for a in range(k):
        acc = rhs[a]
        for i in range(a):
            acc -= M[a * k + i] * rhs[i]
        rhs[a] = acc / M[a * k + a]
    for a in range(k - 1, -1, -1):
        acc = rhs[a]
        for i in range(a + 1, k):
            acc -= M[i * k + a] * rhs[i]
        rhs[a] = acc / M[a * k + a]
    # z' = rhs keeps the signs: it is the optimum on S. Otherwise move from z
    # towards z' up to the first coordinate that crosses 0 (the objective is
    # the convex quadratic of the orthant there, decreasing along the
    # segment) and drop that coordinate.
    for a in range(k):
        if sign(rhs[a]) != sign(z[S[a]]):
            ta = z[S[a]] / (z[S[a]] - rhs[a])
            if ta < t:
                t = ta
                first = a
    for a in range(k):
        z[S[a]] += t * (rhs[a] - z[S[a]])
    if first >= 0:
        z[S[first]] = 0
        return 2
    return 1


cdef void refresh_gradient(int w, const double *z, const double *c,
                           const double *Bw, double *g) noexcept nogil:
    """g = c - z Bw on the working set (z sparse)."""
    cdef int a, b
    cdef double za
    for b in range(w):
        g[b] = c[b]
    for a in range(w):
        za = z[a]
        if za != 0:
            for b in range(w):
                g[b] -= za * Bw[a * w + b]


cdef int cd_sample(const floating *c_full, const floating *B, int m, double xx,
                   double lmbd, double *z_full, int max_epochs, double tol_abs,
                   double *g_full, double *score, int *cand, int *W, int wmax,
                   double *z, double *g, double *c, double *Bw, int kmax,
                   int *S, double *M, double *rhs, double *gap_out) noexcept nogil:
    """Solve one sample in place in z_full; returns the number of epochs.

    Outer loop on all m atoms (gradient, gap, working set W of at most wmax
    atoms), inner epochs on the compact copies z, g, c (w,) and Bw (w, w).
    """
    cdef int j, a, b, w, nnz, n_cand, p_ws = MIN_WS, epochs = 0, status, inner
    cdef double gap, d, znew, bjj, za
    cdef bint sign_changed, changed, polished, moved
    cdef const floating *Bj
    cdef double *Ba

    while True:
        # full negative gradient g = c - z B from the support
        for j in range(m):
            g_full[j] = c_full[j]
            score[j] = c_full[j]        # c in double for gap_from
        nnz = 0
        for j in range(m):
            za = z_full[j]
            if za != 0:
                nnz += 1
                Bj = B + <Py_ssize_t> j * m
                for b in range(m):
                    g_full[b] -= za * Bj[b]
        gap = gap_from(m, z_full, g_full, score, xx, lmbd)
        if (tol_abs > 0 and gap <= tol_abs) or epochs >= max_epochs:
            gap_out[0] = gap
            return epochs

        # working set: the support, then the atoms with the largest |g_j|
        w = 0
        n_cand = 0
        for j in range(m):
            if z_full[j] != 0 and w < wmax:
                W[w] = j
                w += 1
            elif B[<Py_ssize_t> j * m + j] > 0:
                cand[n_cand] = j
                score[n_cand] = fabs(g_full[j])
                n_cand += 1
        if 2 * nnz > p_ws:
            p_ws = 2 * nnz
        if p_ws > wmax:
            p_ws = wmax
        b = p_ws - w
        if b > n_cand:
            b = n_cand
        if b < 1 and n_cand > 0 and w < wmax:
            b = 1
        if b > 0:
            select_top(score, cand, n_cand, b)
            for a in range(b):
                W[w] = cand[a]
                w += 1
        # compact copies on W
        for a in range(w):
            z[a] = z_full[W[a]]
            g[a] = g_full[W[a]]
            c[a] = c_full[W[a]]
            Bj = B + <Py_ssize_t> W[a] * m
            for b in range(w):
                Bw[a * w + b] = Bj[W[b]]

        # inner epochs on W
        polished = False
        inner = 0
        while epochs < max_epochs and inner < MAX_INNER:
            inner += 1
            sign_changed = False
            changed = False
            for a in range(w):
                Ba = Bw + a * w
                bjj = Ba[a]
                znew = soft_threshold(z[a] + g[a] / bjj, lmbd / bjj)
                if znew != z[a]:
                    changed = True
                    d = znew - z[a]
                    if sign(znew) != sign(z[a]):
                        sign_changed = True
                    z[a] = znew
                    for b in range(w):
                        g[b] -= d * Ba[b]
            epochs += 1
            if sign_changed:
                polished = False
            elif not polished:
                # Newton steps, dropping the coordinates that cross 0, until
                # the signs are consistent (as in feature-sign search)
                polished = True
                status = newton_polish(w, z, c, Bw, lmbd, kmax, S, M, rhs)
                moved = status != 0
                while status == 2:
                    status = newton_polish(w, z, c, Bw, lmbd, kmax, S, M, rhs)
                if moved:
                    refresh_gradient(w, z, c, Bw, g)
            if not changed or gap_from(w, z, g, c, xx, lmbd) <= 0.3 * tol_abs:
                break
        for a in range(w):
            z_full[W[a]] = z[a]
        # the next working set may grow
        if p_ws < m:
            p_ws = 2 * p_ws if 2 * p_ws < m else m


def coordinate_descent(const floating[:, ::1] C, const floating[:, ::1] B,
                       const floating[::1] xx, double lmbd, floating[:, ::1] Z,
                       const int[::1] active, int max_iter, double tol,
                       int n_features, int n_threads, int[::1] n_iter,
                       floating[::1] gap_out):
    """Solve the rows ``active`` of the batch in place in Z.

    C = X D^T (N, m), B = D D^T (m, m), xx = ||x||^2 (N,). A sample stops when
    its gap is <= tol * xx / 2 (never for tol = 0) or after max_iter epochs.
    """
    cdef int m = B.shape[0], n_active = active.shape[0]
    cdef int i, r, j, t, kmax, wmax
    cdef double gap
    if n_active == 0:
        return
    # a thread for at least MIN_PER_THREAD samples (waking one costs more)
    n_threads = max(1, min(n_threads, n_active // MIN_PER_THREAD))
    # B_SS is positive definite only if |S| <= n_features: cap the polish
    # there; the working set is capped at WS_MAX atoms (B_WW in cache)
    kmax = max(1, min(m, n_features))
    wmax = min(m, WS_MAX)
    cdef double[:, ::1] z_full = np.empty((n_threads, m))
    cdef double[:, ::1] g_full = np.empty((n_threads, m))
    cdef double[:, ::1] score = np.empty((n_threads, m))
    cdef int[:, ::1] cand = np.empty((n_threads, m), np.intc)
    cdef int[:, ::1] W = np.empty((n_threads, m), np.intc)
    cdef double[:, ::1] z = np.empty((n_threads, wmax))
    cdef double[:, ::1] g = np.empty((n_threads, wmax))
    cdef double[:, ::1] c = np.empty((n_threads, wmax))
    cdef double[:, ::1] Bw = np.empty((n_threads, wmax * wmax))
    cdef int[:, ::1] S = np.empty((n_threads, wmax), np.intc)
    cdef double[:, ::1] rhs = np.empty((n_threads, wmax))
    cdef double[:, ::1] M = np.empty((n_threads, min(kmax, wmax) ** 2))
    with nogil:
        for i in prange(n_active, num_threads=n_threads, schedule="dynamic", chunksize=8):
            t = threadid()
            r = active[i]
            for j in range(m):
                z_full[t, j] = Z[r, j]
            n_iter[r] = cd_sample(&C[r, 0], &B[0, 0], m, xx[r], lmbd, &z_full[t, 0],
                                  max_iter, tol * 0.5 * xx[r], &g_full[t, 0],
                                  &score[t, 0], &cand[t, 0], &W[t, 0], wmax,
                                  &z[t, 0], &g[t, 0], &c[t, 0], &Bw[t, 0],
                                  min(kmax, wmax), &S[t, 0], &M[t, 0], &rhs[t, 0],
                                  &gap)
            gap_out[r] = gap
            for j in range(m):
                Z[r, j] = z_full[t, j]
