"""Batched coordinate descent for the Lasso on the Gram matrix.

Each sample x (c = x D^T, B = D D^T) is solved independently, samples in
parallel (OpenMP). With the negative gradient g = c - z B maintained,

    z_j <- ST(z_j + g_j / B_jj, lmbd / B_jj),   g <- g - (z_j_new - z_j) B_j

is an exact minimisation along coordinate j (with the one-sided threshold
max(u - t, 0) for codes constrained >= 0: then only g_j > lmbd violates
optimality, and the working sets rank atoms by g_j). Three devices make it fast:

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

Computations run in double precision whatever the storage dtype. Atoms with
B_jj = 0 (zero atoms, or atoms whose squared norm underflows) are never
admitted to a working set, and the caller zeroes their codes in a warm
start: no coordinate step ever divides by B_jj = 0.
"""
import numpy as np
from cython cimport floating
from libc.math cimport fabs, sqrt
from libc.stdlib cimport free, malloc
from scipy.linalg.cython_lapack cimport dpotrf, dpotrs

from ._blocks cimport run_blocks
from ._gap cimport lasso_gap
from ._prox cimport sign, threshold

cdef int MIN_WS = 10
cdef int WS_MAX = 1024
# inner epochs per working set before the outer loop grows it
cdef int MAX_INNER = 100
# samples a block (blocks go to threads as they finish the last)
cdef int BLOCK = 8
# a thread for at least MIN_PER_THREAD samples (waking one costs more)
cdef int MIN_PER_THREAD = 16


cdef double gap_from(int w, const double *z, const double *g, const double *c,
                     double xx, double lmbd, bint positive) noexcept nogil:
    """Duality gap of z with the negative gradient g = c - z B, on w atoms.

    ||r||^2 = ||x||^2 - 2 z.c + z B z = xx - z.c - z.g, <x, r> = xx - z.c and
    r D^T = g (_gap.pxd); the dual point is feasible for the problem on
    these atoms (for all atoms: the full duality gap). Only a stopping test:
    the result is certified afterwards from the returned codes.
    """
    cdef int a
    cdef double zc = 0, zg = 0, l1 = 0, gmax = 0, rr, primal, v
    for a in range(w):
        zc += z[a] * c[a]
        zg += z[a] * g[a]
        l1 += fabs(z[a])
        v = g[a] if positive else fabs(g[a])
        if not v <= gmax:
            gmax = v
    rr = xx - zc - zg
    if rr < 0:
        rr = 0
    return lasso_gap(rr, xx - zc, l1, gmax, lmbd, &primal)


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
                       double lmbd, int kmax, bint rank_cap, int *S, double *M,
                       double *rhs) noexcept nogil:
    """Newton step on S = supp(z): B_SS z_S = c_S - lmbd sign(z_S).

    All on the compact working set (Bw is w x w). B_SS (at most kmax atoms,
    kmax x kmax in M, column-major) is factored by LAPACK (dpotrf, L L^T).
    When an atom S_j is a combination of the atoms before it (its pivot
    vanishes, or the factor already holds kmax = n_features atoms, the rank
    of any D_S: ``rank_cap``), d_{S_j} = sum_i y_i d_{S_i}, and
    v = e_{S_j} - y is a direction along which the residual x - z D does not
    change: z moves along +-v, the way that lowers ||z||_1 (linear on the
    orthant), until the first coordinate reaches 0, which is dropped (the
    support reduction of homotopy methods). Coordinate descent on a
    dependent support would zigzag for thousands of epochs instead.

    Returns 1 when the Newton solution keeps the signs (z is then the optimum
    of the problem restricted to S), 2 when z moved (to the first sign
    crossing of the Newton step, or by a reduction) and dropped that
    coordinate, 0 when nothing was done (an empty support, a dependent one
    beyond what the factor can hold, or a LAPACK failure).
    """
    cdef int a, b, i, k = 0, kf, dep = -1, first = -1, info = 0, one = 1
    cdef char lower = b'L'
    cdef double acc, t = 1, ta, slope, piv
    cdef double *y = rhs           # the dependent atom's coefficients, or rhs
    for a in range(w):
        if z[a] != 0:
            S[k] = a
            k += 1
    if k == 0:
        return 0
    if k > kmax and not rank_cap:
        return 0
    kf = k if k < kmax else kmax   # atoms in the factor
    for a in range(kf):
        for b in range(a, kf):
            M[a * kmax + b] = Bw[S[a] * w + S[b]]      # lower, column-major
    dpotrf(&lower, &kf, M, &kmax, &info)
    if info < 0:
        return 0
    if info > 0:
        dep = info - 1             # the leading (info - 1) block is factored
    for a in range(kf if dep < 0 else dep):
        piv = M[a * kmax + a]
        if not piv * piv > 1e-12 * Bw[S[a] * w + S[a]]:
            dep = a
            break
    if dep < 0 and k > kf:
        dep = kf                   # beyond the rank: depends on the factor
    if dep >= 0:
        # y = (L L^T)^{-1} B_{S[:dep], S[dep]}, L the factor's leading block
        for b in range(dep):
            acc = Bw[S[b] * w + S[dep]]
            for i in range(b):
                acc -= M[i * kmax + b] * y[i]
            y[b] = acc / M[b * kmax + b]
        for b in range(dep - 1, -1, -1):
            acc = y[b]
            for i in range(b + 1, dep):
                acc -= M[b * kmax + i] * y[i]
            y[b] = acc / M[b * kmax + b]
        # v = e_{S[dep]} - sum_b y_b e_{S[b]}; slope = d ||z + t v||_1 / dt
        slope = sign(z[S[dep]])
        for b in range(dep):
            slope -= y[b] * sign(z[S[b]])
        t = -1 if slope > 0 else 1
        # the first coordinate to reach 0 along t v
        ta = -z[S[dep]] / t
        first = S[dep]
        if ta < 0:
            ta = 1e308
        for b in range(dep):
            if y[b] != 0:
                acc = z[S[b]] / (t * y[b])
                if 0 <= acc < ta:
                    ta = acc
                    first = S[b]
        if ta >= 1e308:
            return 0
        z[S[dep]] += t * ta
        for b in range(dep):
            z[S[b]] -= t * ta * y[b]
        z[first] = 0
        return 2
    # Newton: B_SS z' = c_S - lmbd sign(z_S)
    for a in range(k):
        rhs[a] = c[S[a]] - lmbd * sign(z[S[a]])
    dpotrs(&lower, &k, &one, M, &kmax, rhs, &k, &info)
    if info != 0:
        return 0
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
                   bint rank_cap, bint positive, int *S, double *M, double *rhs,
                   double *gap_out) noexcept nogil:
    """Solve one sample in place in z_full; returns the number of epochs.

    Outer loop on all m atoms (gradient, gap, working set W of at most wmax
    atoms), inner epochs on the compact copies z, g, c (w,) and Bw (w, w).
    """
    cdef int j, a, b, w, nnz, n_cand, p_ws = MIN_WS, epochs = 0, status, inner
    cdef double gap, d, znew, bjj, za
    cdef bint sign_changed, changed, polished, moved
    cdef const floating *Bj
    cdef double *Ba

    for j in range(m):
        if not B[<Py_ssize_t> j * m + j] > 0:
            z_full[j] = 0           # a zero atom is never used
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
        gap = gap_from(m, z_full, g_full, score, xx, lmbd, positive)
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
                # (positive codes: only g_j > lmbd violates)
                score[n_cand] = g_full[j] if positive else fabs(g_full[j])
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
                znew = threshold(z[a] + g[a] / bjj, lmbd / bjj, positive)
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
                status = newton_polish(w, z, c, Bw, lmbd, kmax, rank_cap, S, M, rhs)
                moved = status != 0
                while status == 2:
                    status = newton_polish(w, z, c, Bw, lmbd, kmax, rank_cap, S, M, rhs)
                if moved:
                    refresh_gradient(w, z, c, Bw, g)
            if not changed or gap_from(w, z, g, c, xx, lmbd, positive) <= 0.3 * tol_abs:
                break
        for a in range(w):
            z_full[W[a]] = z[a]
        # the next working set may grow
        if p_ws < m:
            p_ws = 2 * p_ws if 2 * p_ws < m else m


cdef struct CDWork:
    double *z_full     # (m,) the sample's code
    double *g_full     # (m,) c - z B
    double *score      # (m,)
    int *cand          # (m,)
    int *W             # (m,) the working set
    double *z          # (wmax,) compact copies on the working set
    double *g          # (wmax,)
    double *c          # (wmax,)
    double *Bw         # (wmax, wmax)
    int *S             # (wmax,) Newton polish: the support
    double *rhs        # (wmax,)
    double *M          # (kmax, kmax) Cholesky factor


cdef struct CDCtx:
    const void *C      # (N, m) x D^T
    const void *B      # (m, m) D D^T
    const double *xx   # (N,) ||x||^2
    const double *lmbd  # (N,)
    void *Z            # (N, m) in: start, out: codes
    const int *active
    Py_ssize_t m
    int max_iter, kmax, wmax
    bint rank_cap      # kmax = n_features: no more independent atoms fit
    bint positive      # codes constrained >= 0
    double tol
    int *n_iter        # (N,) out
    double *gap_out    # (N,) out: the stopping gap
    CDWork *work


cdef void cd_block(floating *tag, CDCtx *c, int tid, Py_ssize_t start,
                   int nb) noexcept nogil:
    cdef CDWork *w = &c.work[tid]
    cdef Py_ssize_t i, j, r, m = c.m
    cdef floating *Zr
    cdef double gap
    for i in range(start, start + nb):
        r = c.active[i]
        Zr = <floating *> c.Z + r * m
        for j in range(m):
            w.z_full[j] = Zr[j]
        c.n_iter[r] = cd_sample(<const floating *> c.C + r * m,
                                <const floating *> c.B, <int> m, c.xx[r], c.lmbd[r],
                                w.z_full, c.max_iter, c.tol * 0.5 * c.xx[r],
                                w.g_full, w.score, w.cand, w.W, c.wmax, w.z, w.g,
                                w.c, w.Bw, c.kmax, c.rank_cap, c.positive, w.S,
                                w.M, w.rhs, &gap)
        c.gap_out[r] = gap
        for j in range(m):
            Zr[j] = <floating> w.z_full[j]


cdef void _block_d(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    cd_block(<double *> NULL, <CDCtx *> ctx, tid, start, nb)


cdef void _block_s(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    cd_block(<float *> NULL, <CDCtx *> ctx, tid, start, nb)


def coordinate_descent(const floating[:, ::1] C, const floating[:, ::1] B,
                       const double[::1] xx, const double[::1] lmbd,
                       floating[:, ::1] Z, const int[::1] active, int max_iter,
                       double tol, bint positive, int n_features, int n_threads,
                       int[::1] n_iter, double[::1] gap_out):
    """Solve the rows ``active`` of the batch in place in Z.

    C = X D^T (N, m), B = D D^T (m, m), xx = ||x||^2 and lmbd per sample
    (N,); with ``positive`` the codes are constrained >= 0. A sample stops
    when its gap is <= tol * xx / 2 (never for tol = 0)
    or after max_iter epochs; gap_out receives that stopping gap.
    """
    cdef CDCtx c
    cdef Py_ssize_t m = B.shape[0], n_active = active.shape[0]
    cdef int t, kmax, wmax
    if n_active == 0 or m == 0:
        return
    n_threads = max(1, min(n_threads, n_active // MIN_PER_THREAD))
    # B_SS is positive definite only if |S| <= n_features: cap the polish
    # there; the working set is capped at WS_MAX atoms (B_WW in cache)
    wmax = <int> min(m, WS_MAX)
    kmax = max(1, min(wmax, n_features))
    sizes = [m, m, m, wmax, wmax, wmax, wmax * wmax, wmax, kmax * kmax]
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
    dws = np.empty((n_threads, sum(sizes) + 1))
    iws = np.empty((n_threads, 3 * m + wmax + 1), np.intc)
    cdef double[:, ::1] dv = dws
    cdef int[:, ::1] iv = iws
    cdef Py_ssize_t[::1] o = off
    cdef CDWork *work = <CDWork *> malloc(n_threads * sizeof(CDWork))
    if work == NULL:
        raise MemoryError()
    for t in range(n_threads):
        work[t].z_full = &dv[t, o[0]]
        work[t].g_full = &dv[t, o[1]]
        work[t].score = &dv[t, o[2]]
        work[t].z = &dv[t, o[3]]
        work[t].g = &dv[t, o[4]]
        work[t].c = &dv[t, o[5]]
        work[t].Bw = &dv[t, o[6]]
        work[t].rhs = &dv[t, o[7]]
        work[t].M = &dv[t, o[8]]
        work[t].cand = &iv[t, 0]
        work[t].W = &iv[t, m]
        work[t].S = &iv[t, 2 * m]
    c.C = &C[0, 0]
    c.B = &B[0, 0]
    c.xx = &xx[0]
    c.lmbd = &lmbd[0]
    c.Z = &Z[0, 0]
    c.active = &active[0]
    c.m = m
    c.max_iter = max_iter
    c.kmax = kmax
    c.rank_cap = kmax == n_features
    c.positive = positive
    c.wmax = wmax
    c.tol = tol
    c.n_iter = &n_iter[0]
    c.gap_out = &gap_out[0]
    c.work = work
    try:
        with nogil:
            run_blocks(n_active, BLOCK, n_threads, True,
                       _block_d if floating is double else _block_s, &c)
    finally:
        free(work)
