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
  W when its signs agree with s; it is accepted then, ignored otherwise;
* the duality gap of the subproblem on W costs O(|W|) and ends the inner
  loop; the full gap (O(m nnz) to refresh g) ends the outer loop.

Computations run in double precision whatever the storage dtype.
"""
import numpy as np
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport fabs, sqrt

cdef int MIN_WS = 10


cdef inline double st(double u, double t) noexcept nogil:
    if u > t:
        return u - t
    if u < -t:
        return u + t
    return 0


cdef inline double sgn(double u) noexcept nogil:
    return (u > 0) - (u < 0)


cdef double gap_from(const int *W, int w, const double *z, const double *g,
                     const floating *c, double xx, double lmbd) noexcept nogil:
    """Duality gap of z (supported in W) with the negative gradient g on W.

    ||r||^2 = ||x||^2 - 2 z.c + z B z = xx - z.c - z.g, and r D^T = g; the
    dual point r / max(lmbd, ||g_W||_inf) is feasible for the problem on W.
    """
    cdef int a, j
    cdef double zc = 0, zg = 0, l1 = 0, ginf = 0, rr, s, ratio, primal, dual
    for a in range(w):
        j = W[a]
        zc += z[j] * c[j]
        zg += z[j] * g[j]
        l1 += fabs(z[j])
        if fabs(g[j]) > ginf:
            ginf = fabs(g[j])
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


cdef bint newton_polish(const int *W, int w, double *z, const floating *c,
                        const floating *B, int m, double lmbd, int kmax,
                        int *S, double *M, double *rhs) noexcept nogil:
    """Solve B_SS z_S = c_S - lmbd sign(z_S) on S = supp(z) in W.

    Accepts (writes z) only when the solution keeps the signs of z_S.
    Returns whether it was accepted.
    """
    cdef int a, b, k = 0, i
    cdef double acc
    for a in range(w):
        if z[W[a]] != 0:
            if k == kmax:
                return False
            S[k] = W[a]
            k += 1
    if k == 0:
        return False
    for a in range(k):
        for b in range(a + 1):
            M[a * k + b] = B[<Py_ssize_t> S[a] * m + S[b]]
        rhs[a] = c[S[a]] - lmbd * sgn(z[S[a]])
    # Cholesky M = L L^T in the lower triangle
    for a in range(k):
        for b in range(a + 1):
            acc = M[a * k + b]
            for i in range(b):
                acc -= M[a * k + i] * M[b * k + i]
            if a == b:
                if acc <= 1e-12 * M[a * k + a] or acc <= 0:
                    return False
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
    for a in range(k):
        if sgn(rhs[a]) != sgn(z[S[a]]):
            return False
    for a in range(k):
        z[S[a]] = rhs[a]
    return True


cdef int cd_sample(const floating *c, const floating *B, int m, double xx,
                   double lmbd, double *z, int max_epochs, double tol_abs,
                   double *g, double *score, int *cand, int *W, int kmax,
                   int *S, double *M, double *rhs, double *gap_out) noexcept nogil:
    """Solve one sample in place in z; returns the number of epochs."""
    cdef int j, a, b, w, nnz, n_cand, p_ws = MIN_WS, epochs = 0, jb
    cdef double gap, d, znew, bjj, inner_gap
    cdef bint sign_changed, polished
    cdef const floating *Bj

    while True:
        # refresh the full negative gradient g = c - z B from the support
        for j in range(m):
            g[j] = c[j]
        nnz = 0
        for j in range(m):
            if z[j] != 0:
                nnz += 1
                Bj = B + <Py_ssize_t> j * m
                for b in range(m):
                    g[b] -= z[j] * Bj[b]
        # full gap: W = all atoms
        for j in range(m):
            cand[j] = j
        gap = gap_from(cand, m, z, g, c, xx, lmbd)
        if (tol_abs > 0 and gap <= tol_abs) or epochs >= max_epochs:
            gap_out[0] = gap
            return epochs

        # working set: the support, then the atoms with the largest |g_j|
        w = 0
        n_cand = 0
        for j in range(m):
            if z[j] != 0:
                W[w] = j
                w += 1
            elif B[<Py_ssize_t> j * m + j] > 0:
                cand[n_cand] = j
                score[n_cand] = fabs(g[j])
                n_cand += 1
        if 2 * nnz > p_ws:
            p_ws = 2 * nnz
        b = p_ws - w
        if b > n_cand:
            b = n_cand
        if b < 1 and n_cand > 0:
            b = 1
        if b > 0:
            select_top(score, cand, n_cand, b)
            for a in range(b):
                W[w] = cand[a]
                w += 1

        # inner epochs on W; g is kept exact on W only
        polished = False
        while epochs < max_epochs:
            sign_changed = False
            for a in range(w):
                j = W[a]
                Bj = B + <Py_ssize_t> j * m
                bjj = Bj[j]
                znew = st(z[j] + g[j] / bjj, lmbd / bjj)
                if znew != z[j]:
                    d = znew - z[j]
                    if sgn(znew) != sgn(z[j]):
                        sign_changed = True
                    z[j] = znew
                    for b in range(w):
                        jb = W[b]
                        g[jb] -= d * Bj[jb]
            epochs += 1
            if sign_changed:
                polished = False
            elif not polished:
                polished = True
                if newton_polish(W, w, z, c, B, m, lmbd, kmax, S, M, rhs):
                    # g on W from scratch: g_W = c_W - z_S B_SW
                    for a in range(w):
                        g[W[a]] = c[W[a]]
                    for a in range(w):
                        j = W[a]
                        if z[j] != 0:
                            Bj = B + <Py_ssize_t> j * m
                            for b in range(w):
                                jb = W[b]
                                g[jb] -= z[j] * Bj[jb]
            inner_gap = gap_from(W, w, z, g, c, xx, lmbd)
            if inner_gap <= 0.3 * tol_abs:
                break
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
    cdef int i, r, j, t, kmax = m
    cdef double gap
    if n_active == 0:
        return
    n_threads = max(1, min(n_threads, n_active))
    cdef double[:, ::1] z = np.empty((n_threads, m))
    cdef double[:, ::1] g = np.empty((n_threads, m))
    cdef double[:, ::1] score = np.empty((n_threads, m))
    cdef int[:, ::1] cand = np.empty((n_threads, m), np.intc)
    cdef int[:, ::1] W = np.empty((n_threads, m), np.intc)
    cdef int[:, ::1] S = np.empty((n_threads, m), np.intc)
    cdef double[:, ::1] rhs = np.empty((n_threads, m))
    # B_SS is positive definite only if |S| <= n_features: cap the polish there
    kmax = max(1, min(m, n_features))
    cdef double[:, ::1] M = np.empty((n_threads, kmax * kmax))
    with nogil:
        for i in prange(n_active, num_threads=n_threads, schedule="dynamic", chunksize=8):
            t = threadid()
            r = active[i]
            for j in range(m):
                z[t, j] = Z[r, j]
            n_iter[r] = cd_sample(&C[r, 0], &B[0, 0], m, xx[r], lmbd, &z[t, 0],
                                  max_iter, tol * 0.5 * xx[r], &g[t, 0],
                                  &score[t, 0], &cand[t, 0], &W[t, 0], kmax,
                                  &S[t, 0], &M[t, 0], &rhs[t, 0], &gap)
            gap_out[r] = gap
            for j in range(m):
                Z[r, j] = z[t, j]
