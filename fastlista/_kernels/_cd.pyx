"""Batched coordinate descent for the Lasso on the Gram matrix.

Each sample x (c = x D^T, B = D D^T) is solved independently, samples in
parallel (OpenMP). With the negative gradient g = c - z B maintained,

    z_j <- ST(z_j + g_j / B_jj, lmbd / B_jj),   g <- g - (z_j_new - z_j) B_j

is an exact minimisation along coordinate j (with the one-sided threshold
max(u - t, 0) for codes constrained >= 0: then only g_j > lmbd violates
optimality, and the working sets rank atoms by g_j). Three devices make it fast:

* working sets: an outer loop picks W = supp(z) plus the atoms with the
  largest |g_j| (the closest to violating |g_j| <= lmbd), max(10, 2 |supp|)
  atoms in all, and never fewer than the last W (at least one atom is
  added while any is left out); doubling W at every outer iteration as
  well took 1.1 times as long at lmbd = 0.1 and 0.03 on the paper shape (a
  last W of 160 atoms for 50 non-zeros). Inner epochs update only W and
  keep g on W only (|W| flops a coordinate change, not n_atoms);
* a Newton polish: once an epoch leaves the signs s of z unchanged, the
  Lasso restricted to S = supp(z) with those signs is the linear system
  B_SS z_S = c_S - lmbd s_S. Its solution (Cholesky) is the exact optimum on
  W when its signs agree with s; otherwise z moves towards it until the
  first coordinate reaches 0 (an active-set step);
* the duality gap of the subproblem on W costs O(|W|) and ends the inner
  loop (as do an epoch that changes nothing and MAX_INNER epochs, after
  which W grows); the full gap (O(m nnz) to refresh g) ends the outer loop.

Computations run in double precision, and so do the data C and B whatever
the codes' storage dtype: for float32 signals they are the exact products of
the widened float32 entries, summed in double. (C and B rounded to float32
moved the problem's optimum by more than float32 codes can resolve: at
small lmbd, up to 16 % of the samples stopped at twice the certifiable
relative gap of 1e-6.) The dense inner loops (a coordinate step's
g <- g - d B_j, the gradient refreshes, the factor's triangular solves, the
gap's sums) are C row kernels of _simd.h, compiled for each vector unit.
Atoms with B_jj = 0 (zero atoms, or atoms whose squared norm underflows)
are never admitted to a working set, and the caller zeroes their codes in a
warm start: no coordinate step ever divides by B_jj = 0.
"""
import numpy as np
from cython cimport floating
from libc.limits cimport INT_MAX
from libc.math cimport fabs, hypot, sqrt

from ._blocks cimport (in_main_thread, raise_interrupt, run_blocks, table_alloc,
                      table_free)
from ._gap cimport lasso_gap
from ._prox cimport sign, threshold
from ._simd cimport (FL_ROUNDOFF, fl_cd_gap_sums, fl_d_sub_axpy, fl_lower_solve,
                     fl_lower_t_solve)

cdef int MIN_WS = 10
cdef int WS_MAX = 1024
# inner epochs per working set before the outer loop grows it
cdef int MAX_INNER = 100
# working-set additions up to this size are selected by insertion
cdef int SELECT_SMALL = 32
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
    cdef double sums[4]
    cdef double rr, primal
    fl_cd_gap_sums(w, z, g, c, positive, sums)
    rr = xx - sums[0] - sums[1]
    if rr < 0:
        rr = 0
    return lasso_gap(rr, xx - sums[0], lmbd * sums[2], sums[3], lmbd, &primal)


cdef inline void insert_sorted(double *score, int *idx, int p, double s,
                               int ix) noexcept nogil:
    """Insert (s, ix) into score[:p + 1], sorted decreasing on score[:p]."""
    while p > 0 and score[p - 1] < s:
        score[p] = score[p - 1]
        idx[p] = idx[p - 1]
        p -= 1
    score[p] = s
    idx[p] = ix


cdef void select_top(double *score, int *idx, int n, int k) noexcept nogil:
    """Reorder idx[:n] (with score) so that idx[:k] hold the k best scores.

    A few atoms out of many (the usual working-set growth): one pass that
    keeps idx[:k] sorted by decreasing score and swaps an entry that beats
    the k-th into place, about n comparisons. Otherwise quickselect.
    """
    cdef int lo = 0, hi = n - 1, i, j, ti
    cdef double pivot, ts
    if k <= 0 or k >= n:
        return
    if k <= SELECT_SMALL:
        for i in range(1, k):
            insert_sorted(score, idx, i, score[i], idx[i])
        for j in range(k, n):
            if score[j] > score[k - 1]:
                ts = score[k - 1]
                ti = idx[k - 1]
                insert_sorted(score, idx, k - 1, score[j], idx[j])
                score[j] = ts
                idx[j] = ti
        return
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


cdef struct Factor:
    # Cholesky factor L of B_SS on the working set, kept across the Newton
    # steps of one working set and changed an atom at a time
    int *S              # (wmax,) the factor's atoms (positions in W), in order
    int k               # their number
    int kmax            # the most atoms it can hold (min(wmax, n_features))
    bint rank_cap       # kmax = n_features: a kmax + 1-th atom depends on S
    int n_features
    double xnorm        # ||x|| of the sample being solved
    double *L           # (kmax, kmax) column-major, lower: L[i, j] = L[j kmax + i]
    double *dinv        # (kmax,) 1 / L[j, j]
    double *y           # (wmax,) solves
    double *u           # (wmax,) B v along a dependent direction v
    unsigned char *mark  # (wmax,) support marks, kept zero between calls


cdef void factor_remove(Factor *f, int p) noexcept nogil:
    """Delete the factor's p-th atom: O((k - p)^2).

    Removing row p of L leaves rows whose entry right of the diagonal is not
    zero; Givens rotations of columns (j, j + 1), j = p..k - 2, annihilate
    them, and the last column vanishes.
    """
    cdef int i, j, k = f.k, km = f.kmax
    cdef double *L = f.L
    cdef double a, b, r, c, s, x, yv
    # rows below p move up a row: column j > p then starts at row j - 1
    for j in range(k):
        for i in range(p if j <= p else j - 1, k - 1):
            L[j * km + i] = L[j * km + i + 1]
    for j in range(p, k - 1):
        a = L[j * km + j]
        b = L[(j + 1) * km + j]
        r = hypot(a, b)
        if r == 0:
            continue
        c = a / r
        s = b / r
        for i in range(j, k - 1):
            x = L[j * km + i]
            yv = L[(j + 1) * km + i]
            L[j * km + i] = c * x + s * yv
            L[(j + 1) * km + i] = -s * x + c * yv
    for i in range(p, k - 1):
        f.S[i] = f.S[i + 1]
        f.dinv[i] = 1 / L[i * km + i]
    f.k = k - 1


cdef inline void forward_solve(const Factor *f, int k, double *v) noexcept nogil:
    """v <- L[:k, :k]^{-1} v."""
    fl_lower_solve(k, f.kmax, f.L, f.dinv, v)


cdef inline void backward_solve(const Factor *f, int k, double *v) noexcept nogil:
    """v <- L[:k, :k]^{-T} v."""
    fl_lower_t_solve(k, f.kmax, f.L, f.dinv, v)


cdef int newton_polish(int w, double *z, const double *c, const double *Bw,
                       double lmbd, Factor *f) noexcept nogil:
    """Newton step on S = supp(z): B_SS z_S = c_S - lmbd sign(z_S).

    All on the compact working set (Bw is w x w). The Cholesky factor of
    B_SS is kept in f between calls, across the working sets of a sample
    (cd_sample renumbers its atoms), and changed an atom at a time (a row
    appended, or Givens rotations for a removal: O(|S|^2) instead of
    |S|^3 / 3 for a new factor).

    When an atom a is a combination of the atoms of the factor (its pivot
    vanishes, or the factor already holds kmax = n_features atoms, the rank
    of any D_S: ``rank_cap``), d_a = sum_i y_i d_{S_i}, and v = e_a - y is a
    direction along which the residual x - z D does not change: z moves
    along +-v, the way that lowers ||z||_1 (linear on the orthant), until
    the first coordinate reaches 0, which is dropped (the support reduction
    of homotopy methods). Coordinate descent on a dependent support would
    zigzag for thousands of epochs instead. A nearly dependent atom (pivot
    below 1e-12 B_aa: atoms 1e-6 apart) changes the residual a little
    along v: the objective there is F(z + t v) = F(z) + t sl + t^2 kap / 2,
    sl = lmbd d||z + t v||_1/dt - (c - z B).v and kap = v B v, and when
    the second term of sl exceeds its rounding, z moves the way sl says,
    to the line's minimum |sl| / kap when it comes before the first
    crossing. (Choosing by the l1 slope alone, about 0 for two atoms of the
    same sign, sent z the wrong way as often as not: on two atoms 1e-6
    apart coordinate descent then stalled for good at a relative gap near
    1e-7, dropping the atom the optimum keeps.)

    Returns 1 when the Newton solution keeps the signs (z is then the optimum
    of the problem restricted to S), 2 when z moved (to the first sign
    crossing of the Newton step, or by a reduction) and dropped that
    coordinate, 3 when z moved to the minimum along a nearly dependent
    direction (nothing dropped), 0 when nothing was done (an empty support,
    a dependent atom beyond what the factor can hold, or a direction that
    does not lower F).
    """
    cdef int a, b, q, i, km = f.kmax, dep = -1, first = -1, status
    cdef double acc, t = 1, ta, slope, piv, kap, nv, err, l1, sm, zd
    cdef bint near
    cdef double *y = f.y
    cdef double *u = f.u
    # the factor follows the support: removals, then appended atoms
    for a in range(w):
        f.mark[a] = z[a] != 0
    for q in range(f.k - 1, -1, -1):
        if not f.mark[f.S[q]]:
            factor_remove(f, q)
    for q in range(f.k):
        f.mark[f.S[q]] = 2
    for a in range(w):
        if f.mark[a] != 1:
            continue
        # l = L^{-1} B_{S, a}, pivot B_aa - ||l||^2
        for q in range(f.k):
            y[q] = Bw[f.S[q] * w + a]
        forward_solve(f, f.k, y)
        if f.k == km:
            if not f.rank_cap:
                dep = -2
                break
            dep = a
            break
        piv = Bw[a * w + a]
        for q in range(f.k):
            piv -= y[q] * y[q]
        if not piv > 1e-12 * Bw[a * w + a]:
            dep = a
            break
        for q in range(f.k):
            f.L[q * km + f.k] = y[q]
        f.L[f.k * km + f.k] = sqrt(piv)
        f.dinv[f.k] = 1 / f.L[f.k * km + f.k]
        f.S[f.k] = a
        f.k += 1
        f.mark[a] = 2
    for a in range(w):
        f.mark[a] = 0
    if dep == -2:
        return 0
    if dep >= 0:
        # y = (L L^T)^{-1} B_{S, a} = L^{-T} l
        backward_solve(f, f.k, y)
        # v = e_a - sum_q y_q e_{S_q} and u = B v (Bw symmetric: rows). Along
        # v the residual changes by t v D, ||v D||^2 = kap = v.u, and
        #     dF(z + t v)/dt = lmbd l1 + sm,  l1 = d||z + t v||_1/dt,
        #     sm = -(x - z D).(v D) = -c.v + z.u
        # (z.u over the whole support: the factor may hold only part of it).
        # B's entries are rounded (gamma_n ||d_i|| ||d_j||), and so are u,
        # kap and sm, to about e nv^2 and e nv (||x|| + sum_b |z_b| ||d_b||),
        # e = (n + k + w + 2) u, nv = ||d_a|| + sum_q |y_q| ||d_{S_q}||. A
        # smooth slope within its rounding is a dependent atom's (sm = 0,
        # kap = 0): z goes, by l1, to the first crossing (following the
        # rounding instead sent z along v without bound). Beyond it, sm
        # counts, and z stops at the line's minimum |slope| / kap when that
        # comes first (kap taken at its rounding's upper end: a step no
        # longer than the exact minimum's lowers F).
        for b in range(w):
            u[b] = Bw[dep * w + b]
        for q in range(f.k):
            fl_d_sub_axpy(w, y[q], Bw + f.S[q] * w, u)
        err = (f.n_features + f.k + w + 2) * FL_ROUNDOFF
        kap = u[dep]
        nv = sqrt(Bw[dep * w + dep])
        l1 = sign(z[dep])
        sm = -c[dep]
        for q in range(f.k):
            kap -= y[q] * u[f.S[q]]
            nv += fabs(y[q]) * sqrt(Bw[f.S[q] * w + f.S[q]])
            l1 -= y[q] * sign(z[f.S[q]])
            sm += y[q] * c[f.S[q]]
        zd = 0
        for b in range(w):
            if z[b] != 0:
                sm += z[b] * u[b]
                zd += fabs(z[b]) * sqrt(Bw[b * w + b])
        near = fabs(sm) > 2 * err * nv * (f.xnorm + zd)
        slope = lmbd * l1 + sm if near else l1
        kap = max(kap, 0.0) + 2 * err * nv * nv
        t = -1 if slope > 0 else 1
        # the first coordinate to reach 0 along t v
        ta = -z[dep] / t
        first = dep
        if ta < 0:
            ta = 1e308
        for q in range(f.k):
            if y[q] != 0:
                acc = z[f.S[q]] / (t * y[q])
                if 0 <= acc < ta:
                    ta = acc
                    first = f.S[q]
        status = 2
        if near and fabs(slope) / kap < ta:
            # the line's minimum comes first
            ta = fabs(slope) / kap
            status = 3
        if ta >= 1e308 or ta == 0:
            return 0
        z[dep] += t * ta
        for q in range(f.k):
            z[f.S[q]] -= t * ta * y[q]
        if status == 2:
            z[first] = 0
        return status
    if f.k == 0:
        return 0
    # Newton: L L^T z' = c_S - lmbd sign(z_S)
    for q in range(f.k):
        y[q] = c[f.S[q]] - lmbd * sign(z[f.S[q]])
    forward_solve(f, f.k, y)
    backward_solve(f, f.k, y)
    # z' = y keeps the signs: it is the optimum on S. Otherwise move from z
    # towards z' up to the first coordinate that crosses 0 (the objective is
    # the convex quadratic of the orthant there, decreasing along the
    # segment) and drop that coordinate.
    for q in range(f.k):
        if sign(y[q]) != sign(z[f.S[q]]):
            ta = z[f.S[q]] / (z[f.S[q]] - y[q])
            if ta < t:
                t = ta
                first = q
    for q in range(f.k):
        z[f.S[q]] += t * (y[q] - z[f.S[q]])
    if first >= 0:
        z[f.S[first]] = 0
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
            fl_d_sub_axpy(w, za, Bw + a * w, g)


cdef int cd_sample(const double *c_full, const double *B, const double *Bd, int m, double xx,
                   double lmbd, double *z_full, int max_epochs, double tol_abs,
                   double *g_full, double *score, int *cand, int *W, int wmax,
                   double *z, double *g, double *c, double *Bw, bint positive,
                   Factor *f, double *gap_out) noexcept nogil:
    """Solve one sample in place in z_full; returns the number of epochs.

    Outer loop on all m atoms (gradient, gap, working set W of at most wmax
    atoms), inner epochs on the compact copies z, g, c (w,) and Bw (w, w).
    Bd (m,) is the diagonal of B, contiguous.
    """
    cdef int j, a, b, q, w, nnz, n_cand, p_ws = MIN_WS, epochs = 0, status, inner
    cdef double gap, d, znew, bjj, za
    cdef bint sign_changed, changed, polished, moved
    cdef const double *Bj
    cdef double *Ba

    for j in range(m):
        if not Bd[j] > 0:
            z_full[j] = 0           # a zero atom is never used
    f.k = 0
    f.xnorm = sqrt(xx)
    while True:
        # full negative gradient g = c - z B from the support
        for j in range(m):
            g_full[j] = c_full[j]
        nnz = 0
        for j in range(m):
            za = z_full[j]
            if za != 0:
                nnz += 1
                fl_d_sub_axpy(m, za, B + <Py_ssize_t> j * m, g_full)
        gap = gap_from(m, z_full, g_full, c_full, xx, lmbd, positive)
        if (tol_abs > 0 and gap <= tol_abs) or epochs >= max_epochs:
            gap_out[0] = gap
            return epochs

        # working set: the support, then the atoms with the largest |g_j|
        # (the factor's atoms by atom, not by position in the old W)
        for q in range(f.k):
            f.S[q] = W[f.S[q]]
        w = 0
        n_cand = 0
        for j in range(m):
            if z_full[j] != 0 and w < wmax:
                W[w] = j
                w += 1
            elif Bd[j] > 0:
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
        # The factor carries over to the new W: B_SS depends on its atoms,
        # not on their positions in W (cand, free now, maps an atom to its
        # position, -1 outside W). Atoms that left W leave the factor; the
        # next polish drops those that left the support. A new factor for
        # every working set cost a Cholesky factorisation each: several for
        # one sample, whose working set grows from 10 atoms.
        for j in range(m):
            cand[j] = -1
        for a in range(w):
            cand[W[a]] = a
        for q in range(f.k - 1, -1, -1):
            if cand[f.S[q]] < 0:
                factor_remove(f, q)
        for q in range(f.k):
            f.S[q] = cand[f.S[q]]
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
                    fl_d_sub_axpy(w, d, Ba, g)
            epochs += 1
            if sign_changed:
                polished = False
            elif not polished:
                # Newton steps, dropping the coordinates that cross 0, until
                # the signs are consistent (as in feature-sign search)
                polished = True
                status = newton_polish(w, z, c, Bw, lmbd, f)
                moved = status != 0
                while status == 2:
                    status = newton_polish(w, z, c, Bw, lmbd, f)
                if moved:
                    refresh_gradient(w, z, c, Bw, g)
            if not changed or gap_from(w, z, g, c, xx, lmbd, positive) <= 0.3 * tol_abs:
                break
        for a in range(w):
            z_full[W[a]] = z[a]


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
    Factor factor      # the Newton polish's Cholesky factor


cdef struct CDCtx:
    const double *C    # (N, m) x D^T
    const double *B    # (m, m) D D^T
    const double *Bd   # (m,) its diagonal
    const double *xx   # (N,) ||x||^2
    const double *lmbd  # (N,)
    void *Z            # (N, m) in: start, out: codes
    const int *active
    Py_ssize_t m
    int max_iter, wmax
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
        c.n_iter[r] = cd_sample(c.C + r * m, c.B, c.Bd, <int> m, c.xx[r], c.lmbd[r],
                                w.z_full, c.max_iter, c.tol * 0.5 * c.xx[r],
                                w.g_full, w.score, w.cand, w.W, c.wmax, w.z, w.g,
                                w.c, w.Bw, c.positive, &w.factor, &gap)
        c.gap_out[r] = gap
        for j in range(m):
            Zr[j] = <floating> w.z_full[j]


cdef void _block_d(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    cd_block(<double *> NULL, <CDCtx *> ctx, tid, start, nb)


cdef void _block_s(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    cd_block(<float *> NULL, <CDCtx *> ctx, tid, start, nb)


def coordinate_descent(const double[:, ::1] C, const double[:, ::1] B,
                       const double[::1] xx, const double[::1] lmbd,
                       floating[:, ::1] Z, const int[::1] active, int max_iter,
                       double tol, bint positive, int n_features, int n_threads,
                       int[::1] n_iter, double[::1] gap_out):
    """Solve the rows ``active`` of the batch in place in Z.

    C = X D^T (N, m) and B = D D^T (m, m) in double, whatever the dtype of
    Z (N, m); xx = ||x||^2 and lmbd per sample (N,); with ``positive`` the
    codes are constrained >= 0. A sample stops when its gap is <= tol * xx
    / 2 (never for tol = 0) or after max_iter epochs; gap_out receives that
    stopping gap.
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
    sizes = [m, m, m, wmax, wmax, wmax, wmax * wmax, wmax, kmax * kmax, kmax, wmax]
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
    dws = np.empty((n_threads, sum(sizes) + 1))
    iws = np.empty((n_threads, 3 * m + wmax + 1), np.intc)
    mws = np.zeros((n_threads, wmax + 1), np.uint8)
    cdef double[:, ::1] dv = dws
    cdef int[:, ::1] iv = iws
    cdef unsigned char[:, ::1] mv = mws
    cdef Py_ssize_t[::1] o = off
    cdef double[::1] bd = np.diagonal(np.asarray(B)).copy()
    c.C = &C[0, 0]
    c.B = &B[0, 0]
    c.Bd = &bd[0]
    c.xx = &xx[0]
    c.lmbd = &lmbd[0]
    c.Z = &Z[0, 0]
    c.active = &active[0]
    c.m = m
    c.max_iter = max_iter
    c.positive = positive
    c.wmax = wmax
    c.tol = tol
    c.n_iter = &n_iter[0]
    c.gap_out = &gap_out[0]
    cdef bint check = in_main_thread(), stopped
    # (allocated right before the try whose finally frees it)
    cdef CDWork *work = <CDWork *> table_alloc(n_threads, sizeof(CDWork))
    try:
        for t in range(n_threads):
            work[t].z_full = &dv[t, o[0]]
            work[t].g_full = &dv[t, o[1]]
            work[t].score = &dv[t, o[2]]
            work[t].z = &dv[t, o[3]]
            work[t].g = &dv[t, o[4]]
            work[t].c = &dv[t, o[5]]
            work[t].Bw = &dv[t, o[6]]
            work[t].cand = &iv[t, 0]
            work[t].W = &iv[t, m]
            work[t].factor.S = &iv[t, 2 * m]
            work[t].factor.k = 0
            work[t].factor.kmax = kmax
            work[t].factor.rank_cap = kmax == n_features
            work[t].factor.n_features = n_features
            work[t].factor.L = &dv[t, o[8]]
            work[t].factor.dinv = &dv[t, o[9]]
            work[t].factor.y = &dv[t, o[7]]
            work[t].factor.u = &dv[t, o[10]]
            work[t].factor.mark = &mv[t, 0]
        c.work = work
        with nogil:
            stopped = run_blocks(n_active, BLOCK, n_threads, True,
                                 _block_d if floating is double else _block_s, &c, check)
        if stopped:
            raise_interrupt()
    finally:
        table_free(work)


def triangular_solves(const double[:, ::1] LT, const double[::1] v):
    """(L^{-1} v, L^{-T} v) through the Newton step's kernels (for the tests).

    Parameters
    ----------
    LT : ndarray of shape (k, ld), ld >= k
        Row j holds column j of the lower triangular L (k, k) in its first k
        entries: the column-major storage of the factor, leading dimension
        ld. The entries above the diagonal are not read.
    v : ndarray of shape (k,)

    Returns
    -------
    forward, backward : ndarray of shape (k,)
    """
    cdef Py_ssize_t k = LT.shape[0], ld = LT.shape[1], j
    if ld < k or v.shape[0] != k:
        raise ValueError(f"LT must be (k, ld >= k) and v (k,), got "
                         f"({LT.shape[0]}, {LT.shape[1]}) and ({v.shape[0]},)")
    if ld > INT_MAX:
        raise ValueError(f"LT has shape ({k}, {ld}): its leading dimension is beyond "
                         f"the solves' 32-bit int (at most 2**31 - 1)")
    dinv = np.array([1 / LT[j, j] for j in range(k)], dtype=np.float64)
    fwd = np.array(v, dtype=np.float64)
    bwd = np.array(v, dtype=np.float64)
    cdef double[::1] dv = dinv, fv = fwd, bv = bwd
    if k > 0:
        fl_lower_solve(<int> k, <int> ld, &LT[0, 0], &dv[0], &fv[0])
        fl_lower_t_solve(<int> k, <int> ld, &LT[0, 0], &dv[0], &bv[0])
    return fwd, bwd
