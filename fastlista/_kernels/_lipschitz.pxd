# L_S = largest eigenvalue of B_SS, with B = D D^T and S a set of atoms:
# closed forms, the bracket of repeated squaring, a warm-startable power
# iteration and LAPACK. Header-only: OISTA inlines it.
#
# Everything runs in double whatever the storage dtype (B_SS and D_S are
# widened on the fly): a float32 iteration stalls at its rounding level,
# where a stop test can mistake a slow climb towards L_S for convergence.
from libc.math cimport sqrt, fabs, hypot, exp, log, ldexp, NAN
from libc.stdint cimport uint64_t
from cython cimport floating

from scipy.linalg.cython_lapack cimport dsyevr

from ._simd cimport FL_ROUNDOFF, fl_dot_dd, fl_dot_sd


# up to this support size, L_S comes from repeated squaring of B_SS
cdef enum:
    TINY = 16


cdef inline double squaring_lipschitz(const double *A, int k, double *v, double tol,
                                      int max_iter, bint *bracketed) noexcept nogil:
    """Largest eigenvalue L of a tiny PSD matrix A (k <= TINY), bracketed.

    Repeated squaring: M_s = A^p / trace(A^p), p = 2^s. Below L: the
    Rayleigh quotient theta of A on the column of M_s of largest diagonal
    (p power steps from that basis vector; converges quadratically in s).
    Above L: trace(A^p)^(1/p) = (sum_i lambda_i^p)^(1/p) >= L, which is
    trace(A) prod_j t_j^(2^-j), t_j = trace(M_{j-1}^2) in [1/k, 1] (the
    normaliser of the j-th square; products of logs, no overflow). Stops
    when up - theta <= tol theta + the rounding of both (4 (k^2 + 2) ulps
    of up: the rounding of a square perturbs log trace by k^2 u at most,
    and the 2^-j weights keep the sum below that), ``bracketed`` set; after
    the squarings that stay within ``max_iter`` power steps (2^s <=
    max_iter), ``bracketed`` cleared. The bracket is what makes theta
    trustworthy: a start column that is an exact eigenvector of a smaller
    eigenvalue (duplicated atoms spread the top one over many columns of
    small diagonal) gives equal quotients from one squaring to the next,
    while the upper bound stays above. v (k,) receives the unit vector of
    theta.
    """
    cdef double M[TINY * TINY]
    cdef double T[TINY * TINY]
    cdef double theta = 0, acc, num, den = 1, tr, big, up, log_up = 0
    cdef double slack = 4.0 * (k * k + 2) * FL_ROUNDOFF
    cdef int a, b, c, s, jmax = 0
    bracketed[0] = True
    # start from A / trace(A): the iterates stay of order 1 (no underflow)
    tr = 0
    for a in range(k):
        tr = tr + A[a * k + a]
    if not tr > 0:
        for a in range(k):
            v[a] = 1.0 if a == 0 else 0.0
        return 0
    for a in range(k * k):
        M[a] = A[a] / tr
    for s in range(64):
        # v = M[:, jmax], theta = v^T A v / v^T v
        jmax = 0
        big = M[0]
        for a in range(1, k):
            if M[a * k + a] > big:
                big = M[a * k + a]
                jmax = a
        if not big > 0:                 # NaN entries
            bracketed[0] = False
            break
        num = 0
        den = 0
        for a in range(k):
            acc = 0
            for b in range(k):
                acc = acc + A[a * k + b] * M[b * k + jmax]
            num = num + M[a * k + jmax] * acc
            den = den + M[a * k + jmax] * M[a * k + jmax]
        theta = num / den
        up = tr * exp(log_up)
        if up - theta <= tol * theta + slack * up:
            break
        if s >= 62 or (<long long> 1 << (s + 1)) > max_iter:
            bracketed[0] = False
            break
        # M <- M M / trace(M M), symmetric: the upper triangle, mirrored
        big = 0
        for a in range(k):
            for b in range(a, k):
                acc = 0
                for c in range(k):
                    acc = acc + M[a * k + c] * M[b * k + c]
                T[a * k + b] = acc
            big = big + T[a * k + a]
        log_up = log_up + ldexp(log(big), -(s + 1))
        big = 1 / big
        for a in range(k):
            for b in range(a, k):
                M[a * k + b] = T[a * k + b] * big
                M[b * k + a] = M[a * k + b]
    den = sqrt(den)
    for a in range(k):
        v[a] = M[a * k + jmax] / den
    return theta


cdef inline double _start_value(Py_ssize_t atom) noexcept nogil:
    """Deterministic pseudo-random entry in [0.5, 1.5) x (+-1) for an atom.

    A hash of the atom index (splitmix64): the start vector does not depend
    on the order of the support and is orthogonal to the top eigenvector
    only on a set of measure zero.
    """
    cdef uint64_t h = <uint64_t> atom + 0x9E3779B97F4A7C15ULL
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ULL
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBULL
    h = h ^ (h >> 31)
    cdef double u = <double> (h >> 11) / 9007199254740992.0
    return (0.5 + u) if (h & 1) else -(0.5 + u)


cdef inline double support_lipschitz(
        const floating *B, const floating *D, Py_ssize_t m, Py_ssize_t n,
        const int *idx, int k, double *v, double *w, double *work,
        bint warm, double tol, int max_iter, bint *converged) noexcept nogil:
    """Largest eigenvalue of B_SS, S = idx[:k], iteratively.

    Parameters
    ----------
    B : (m, m) Gram matrix D D^T, row-major.
    D : (m, n) dictionary, row-major.
    idx : the k atoms of S.
    v : (k,) in: warm-start vector if ``warm`` (any scale); out: the unit
        top eigenvector estimate.
    w : (k,) workspace.
    work : workspace of max(min(k, 2 n)^2, n) doubles (B_SS, or u = v D_S).
    tol : relative tolerance on the Rayleigh quotient.
    converged : out, whether the tolerance was met within max_iter (it may
        not be when the two top eigenvalues nearly coincide).

    Exact for k <= 2; bracketed by repeated squaring of B_SS for k <= TINY
    (``converged`` cleared when the bracket did not close within max_iter
    power steps). Otherwise iterates on B_SS (k^2 per step) when k < 2 n,
    else on D_S through u = v D_S, w = u D_S^T (2 k n per step).
    The Rayleigh quotients theta_t converge geometrically, theta_t -> L_S
    with errors shrinking by a ratio r each step; with d_t = |theta_t -
    theta_{t-1}| and r ~ d_t / d_{t-1}, the remaining error is about
    d_t r / (1 - r). Stops when both d_t and that estimate are <= tol * theta
    (from the third quotient on). A power iteration's quotient is a lower
    bound, not a certificate: from a start vector nearly orthogonal to the
    top eigenvector it settles on a smaller eigenvalue for a while, and no
    stopping rule on the quotients sees it. ``converged`` is cleared when
    theta ends below the largest B_aa (a quotient it must exceed); OISTA,
    the one caller of the power iteration (the batched L_S take LAPACK
    beyond TINY atoms), also checks the curvature of each step it takes.
    """
    cdef Py_ssize_t a, b, it
    cdef double theta = 0, theta_old = 0, nv, half, p, q, r
    cdef double diff, diff_old = -1, ratio, acc
    cdef const floating *da
    converged[0] = True
    if k == 0:
        return 0
    if k == 1:
        v[0] = 1
        return B[<Py_ssize_t> idx[0] * m + idx[0]]
    if k == 2:
        # eigenvalues of [[p, q], [q, r]]: (p + r)/2 +- hypot((p - r)/2, q)
        # (hypot: no overflow of the squares for huge dictionaries)
        p = B[<Py_ssize_t> idx[0] * m + idx[0]]
        q = B[<Py_ssize_t> idx[0] * m + idx[1]]
        r = B[<Py_ssize_t> idx[1] * m + idx[1]]
        half = 0.5 * p - 0.5 * r
        theta = (0.5 * p + 0.5 * r) + hypot(half, q)
        # eigenvector (q, theta - p), or (theta - r, q)
        if fabs(theta - p) >= fabs(theta - r):
            v[0] = q
            v[1] = theta - p
        else:
            v[0] = theta - r
            v[1] = q
        nv = hypot(v[0], v[1])
        if nv > 0:
            v[0] /= nv
            v[1] /= nv
        else:
            v[0] = 1
            v[1] = 0
        return theta

    cdef bint gram = k < 2 * n
    cdef double A[TINY * TINY]
    cdef double dmax = 0
    if k <= TINY:
        for a in range(k):
            for b in range(k):
                A[a * k + b] = B[<Py_ssize_t> idx[a] * m + idx[b]]
        return squaring_lipschitz(A, k, v, tol, max_iter, converged)
    # L_S >= max_a B_aa (the quotient of a basis vector): a floor that no
    # start vector can hide
    for a in range(k):
        if B[<Py_ssize_t> idx[a] * m + idx[a]] > dmax:
            dmax = B[<Py_ssize_t> idx[a] * m + idx[a]]
    if gram:
        # B_SS = B[S][:, S]
        for a in range(k):
            for b in range(k):
                work[a * k + b] = B[<Py_ssize_t> idx[a] * m + idx[b]]
    nv = 0
    if warm:
        for a in range(k):
            nv += v[a] * v[a]
        warm = nv > 0
    if not warm:
        nv = 0
        for a in range(k):
            v[a] = _start_value(idx[a])
            nv += v[a] * v[a]
    nv = 1 / sqrt(nv)
    for a in range(k):
        v[a] *= nv

    for it in range(max_iter):
        if gram:
            # w = B_SS v (vectorised rows: the inline loop's reduction ran
            # scalar, 4 times slower in OISTA at lmbd = 0.1)
            for a in range(k):
                w[a] = fl_dot_dd(k, work + a * k, v)
        else:
            # u = v D_S (n,), then w = D_S u (k,)
            for b in range(n):
                work[b] = 0
            for a in range(k):
                da = D + <Py_ssize_t> idx[a] * n
                for b in range(n):
                    work[b] += v[a] * da[b]
            for a in range(k):
                da = D + <Py_ssize_t> idx[a] * n
                if floating is double:
                    w[a] = fl_dot_dd(n, da, work)
                else:
                    w[a] = fl_dot_sd(n, da, work)
        # Rayleigh quotient theta = v^T B_SS v, and ||w|| scaled by max |w_a|
        # (no underflow or overflow of w_a^2 for tiny or huge dictionaries)
        theta = 0
        acc = 0
        for a in range(k):
            theta = theta + v[a] * w[a]
            if fabs(w[a]) > acc:
                acc = fabs(w[a])
        nv = 0
        if acc > 0:
            for a in range(k):
                nv = nv + (w[a] / acc) * (w[a] / acc)
            nv = acc * sqrt(nv)
        if not nv > 0:                  # B_SS = 0 (zero atoms)
            return 0
        for a in range(k):
            v[a] = w[a] / nv
        diff = fabs(theta - theta_old)
        # from it = 2 on: diff_old is then a difference of two quotients
        # (at it = 1 it is theta_0 itself, and the ratio meant nothing: a
        # first step that moved theta by less than tol stopped the iteration)
        if it > 1 and diff <= tol * theta:
            ratio = diff / diff_old if diff_old > 0 else 0
            if ratio < 1 and diff * ratio <= tol * theta * (1 - ratio):
                converged[0] = theta >= dmax * (1 - tol)
                return theta
        theta_old = theta
        diff_old = diff
    converged[0] = False
    return theta


cdef inline double exact_lipschitz(
        const floating *B, const floating *D, Py_ssize_t m, Py_ssize_t n,
        const int *idx, int k, double *A, double *work, int *iwork) noexcept nogil:
    """Largest eigenvalue of B_SS by LAPACK dsyevr, on the smaller Gram.

    B_SS = D_S D_S^T (k x k) and D_S^T D_S (n x n) share their non-zero
    eigenvalues. A holds min(k, n)^2 values, work 27 min(k, n) (the
    eigenvalues W, then LAPACK's 26 min(k, n)), iwork 10 min(k, n).

    Every eigenvalue is computed (RANGE 'A': dsterf on the tridiagonal
    form), not the top one alone (RANGE 'I', bisection by dstebz), which
    costs less (0.6 x at order 256) but fails (info 2, none found) on a top
    eigenvalue repeated to rounding in a basis that is not the canonical
    one (a union of orthonormal bases, say), and on that failure writes one
    int before IWORK (OpenBLAS's LAPACK). NaN when LAPACK reports a
    failure (info != 0).
    """
    cdef int r = k if k <= n else <int> n, il = 1, n_found = 0, info = 0
    cdef int lwork = 26 * r, liwork = 10 * r, ldz = 1
    cdef int isuppz[2]
    cdef char jobz = b'N', rng = b'A', uplo = b'L'
    cdef double vl = 0, vu = 0, abstol = 0, zz = 0
    cdef Py_ssize_t a, b, j
    cdef const floating *da
    if k == 0:
        return 0
    if k <= n:
        for a in range(k):
            for b in range(k):
                A[a * k + b] = B[<Py_ssize_t> idx[a] * m + idx[b]]
    else:
        for a in range(<Py_ssize_t> n * n):
            A[a] = 0
        for a in range(k):
            # D_S^T D_S += d_a^T d_a (lower triangle of the column-major A)
            da = D + <Py_ssize_t> idx[a] * n
            for b in range(n):
                for j in range(b, n):
                    A[b * n + j] += <double> da[b] * da[j]
    # W (the first r doubles of work) has the matrix's order: every
    # eigenvalue is stored, in ascending order
    dsyevr(&jobz, &rng, &uplo, &r, A, &r, &vl, &vu, &il, &il, &abstol,
           &n_found, work, &zz, &ldz, isuppz, work + r, &lwork, iwork, &liwork, &info)
    if info != 0 or n_found != r:
        return NAN
    return work[r - 1]
