# The Lasso duality gap: one formula for the whole package.
#
# For one signal x and its code z, with r = x - z D, every kernel and the
# certificate (_certify.pyx, behind fastlista.duality_gap) reduce the code to
# four sums and call lasso_gap:
#
#     rr = ||r||^2,  xr = <x, r>,  lz = lmbd ||z||_1,
#     gmax = ||r D^T||_inf  (positive codes: max(0, max_j (r D^T)_j)).
#
# (lmbd ||z||_1 is passed as one number: its factors may leave the float
# range at extreme scales where the product does not.)
#
# The dual point theta = r / s, s = max(lmbd, gmax), is feasible
# (||theta D^T||_inf <= 1, or (theta D^T)_j <= 1 for positive codes) when
# gmax bounds the exact correlations: the certificate (_certify.pyx) passes
# the computed max plus a bound on its rounding, the solvers' stopping tests
# the computed max itself. Then
#
#     P(z)     = 1/2 rr + lz
#     D(theta) = 1/2 ||x||^2 - 1/2 ||x - lmbd theta||^2
#              = (lmbd / s) xr - 1/2 (lmbd / s)^2 rr
#     gap      = P(z) - D(theta) >= 0,   0 exactly at the optimum.
#
# The dual variable u = lmbd theta = r lmbd / s is r itself when gmax <=
# lmbd, also at lmbd = 0 (then u = r is feasible when r is orthogonal to the
# atoms, or, for positive codes, has no positive correlation: z is then
# optimal, with gap 0), and r scaled down to the feasible set otherwise (0
# at lmbd = 0: the gap is 1/2 ||r||^2).


cdef inline double lasso_gap(double rr, double xr, double lz, double gmax,
                             double lmbd, double *primal) noexcept nogil:
    """Duality gap from the four sums; the primal objective in primal[0].

    Rounding may make the difference slightly negative: clipped to 0. A NaN
    (from non-finite codes) stays NaN, never 0.
    """
    cdef double ratio, dual = 0, gap
    primal[0] = 0.5 * rr + lz
    # lmbd / max(lmbd, gmax), 1 when gmax <= lmbd (lmbd = 0 included);
    # a NaN gmax gives NaN
    ratio = 1 if gmax <= lmbd else lmbd / gmax
    if ratio != 0:                              # (0 when gmax overflowed)
        dual = ratio * (xr - 0.5 * ratio * rr)
    gap = primal[0] - dual
    if gap < 0:
        gap = 0
    return gap
