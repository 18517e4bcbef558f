"""Checks of fastlista's certificate contract against the NumPy reference.

Shared by ``test_certificate.py`` and ``test_fuzz.py``. Like ``reference.py``
this module never imports fastlista: it checks results (arrays, or any object
with the fields of a ``LassoResult``) against ``reference.gap_terms_robust``,
a per-sample long-double duality gap that is exact at any scale.

The contract, for every method, dtype, thread count and scale:

* ``res.codes`` are finite (or the call raised ``FloatingPointError``);
* ``res.gap`` is the duality gap of ``res.codes`` (float32 codes upcast) to
  rounding: ``|gap - ref| <= 1e-6 |ref| + 1e-10 S`` with ``S = 1/2 (||x|| +
  sum_j |z_j| ||d_j||)^2 + lmbd ||z||_1`` (plus the smallest subnormal of
  the stored dtype, ``inf`` where the true gap exceeds its range, and the
  gap's sensitivity to a 1e-12 relative error in ``c = r D^T``, which only
  matters when lmbd is near the rounding of c: see
  ``reference.gap_terms_robust``);
* ``res.converged[i]`` implies ``res.gap[i] <= tol * 1/2 ||x_i||^2``;
* all-zero atoms have code exactly 0 in every sample.

Every check takes ``lmbd`` as a scalar or one value a sample, and
``positive=True`` for the Lasso over non-negative codes: the reference gap is
then the one-sided gap of ``reference.gap_terms_robust(..., positive=True)``
and the codes must be >= 0.
"""
import numpy as np

import reference as ref

#: relative rounding of a gap stored in float32 (eps32 / 2 = 6e-8, with margin)
GAP_RTOL = 1e-6
#: rounding of a double-precision gap, relative to the size of its terms
GAP_SIZE_TOL = 1e-10

LD = np.longdouble


def _result_dtype(a):
    a = np.asarray(a)
    return a.dtype if a.dtype in (np.float32, np.float64) else np.dtype(np.float64)


def _fmt(v):
    with np.errstate(all="ignore"):
        return f"{float(v):.3e}" if abs(v) < LD(np.finfo(np.float64).max) or not \
            np.isfinite(v) else f"{v:.3e} (beyond float64)"


def _bad_samples(bad, limit=5):
    return np.flatnonzero(bad)[:limit].tolist()


#: relative accuracy assumed for the correlations c = r D^T of the gap
C_REL = 1e-12


def gap_allowance(X, D, lmbd, Z, dtype=np.float64, positive=False):
    """(primal, reference gap, allowed |gap - reference|, size) per sample,
    long double, for a gap stored in ``dtype``."""
    F, g_ref, size, sens = ref.gap_terms_robust(X, D, lmbd, Z, c_rel=C_REL,
                                                positive=positive)
    # sens: the gap may be the other branch's (lmbd ~ the rounding of the
    # correlations), itself stored to GAP_RTOL like g_ref
    with np.errstate(all="ignore"):
        allowed = GAP_RTOL * (g_ref + sens) + GAP_SIZE_TOL * size + sens + \
            LD(np.finfo(dtype).smallest_subnormal)
    return F, g_ref, allowed, size


def assert_gap_matches(X, D, lmbd, Z, gap, what="gap", positive=False):
    """``gap`` (one value a row of Z) is the duality gap of Z, to rounding."""
    gap = np.atleast_1d(np.asarray(gap))
    dtype = _result_dtype(gap)
    finfo = np.finfo(dtype)
    _, g_ref, allowed, _ = gap_allowance(X, D, lmbd, Z, dtype, positive)
    g = gap.astype(LD)
    with np.errstate(all="ignore"):
        close = np.abs(g - g_ref) <= allowed
        # a gap whose value, or whose rounding (relative to 1/2 ||x||^2, say
        # at x ~ 1e300), lies beyond the stored dtype's range is stored as +inf
        overflow = (g_ref + allowed > LD(finfo.max)) & np.isposinf(g)
    bad = ~(close | overflow)
    if bad.any():
        lines = [f"sample {i}: reported {_fmt(g[i])}, reference {_fmt(g_ref[i])}, "
                 f"allowed difference {_fmt(allowed[i])}" for i in _bad_samples(bad)]
        raise AssertionError(
            f"{what} is not the duality gap of the codes in {int(bad.sum())} of "
            f"{len(bad)} samples ({dtype}):\n  " + "\n  ".join(lines))


def true_gap_bound(X, D, lmbd, Z, gap, positive=False):
    """An upper bound on the true gap of Z from the reported ``gap`` (once
    ``assert_gap_matches`` passed): gap + its allowance (long double)."""
    gap = np.atleast_1d(np.asarray(gap))
    _, g_ref, allowed, _ = gap_allowance(X, D, lmbd, Z, _result_dtype(gap), positive)
    with np.errstate(all="ignore"):
        return np.where(np.isposinf(gap), g_ref, gap.astype(LD) + allowed)


def half_sq_norms(X):
    """1/2 ||x||^2 per row, in long double (no overflow or underflow)."""
    X = np.atleast_2d(np.asarray(X)).astype(LD)
    return LD(0.5) * np.sum(X * X, axis=1)


def zero_atoms(D):
    """Indices of the rows of D that are exactly 0."""
    D = np.asarray(D)
    return np.flatnonzero(~np.any(D != 0, axis=1))


def assert_certified(X, D, lmbd, tol, res, dtype=None, positive=False):
    """The whole contract for a ``LassoResult`` of ``solve_lasso(X, D, lmbd,
    tol=tol, positive=positive, ...)`` (2-D X)."""
    Z, gap, conv = np.asarray(res.codes), np.asarray(res.gap), np.asarray(res.converged)
    dtype = np.asarray(X).dtype if dtype is None else np.dtype(dtype)
    assert Z.dtype == dtype, f"codes are {Z.dtype}, inputs {dtype}"
    assert gap.dtype == dtype, f"gap is {gap.dtype}, inputs {dtype}"
    assert conv.dtype == bool
    assert Z.shape == (np.asarray(X).shape[0], np.asarray(D).shape[0])
    finite = np.all(np.isfinite(Z), axis=1)
    if not finite.all():
        i = _bad_samples(~finite)
        raise AssertionError(
            f"non-finite codes in samples {i} of {len(finite)}: reported gap "
            f"{gap[i].tolist()}, converged {conv[i].tolist()}")
    if positive:
        neg = np.any(Z < 0, axis=1)
        assert not neg.any(), (
            f"positive=True gave negative codes in samples {_bad_samples(neg)}: "
            f"min {Z[neg].min()!r}")
    zero = zero_atoms(D)
    if zero.size:
        nz = np.any(Z[:, zero] != 0, axis=1)
        assert not nz.any(), (
            f"all-zero atoms {zero[:5].tolist()} have non-zero codes in samples "
            f"{_bad_samples(nz)}: {Z[nz][:, zero][:3].tolist()}")
    assert_gap_matches(X, D, lmbd, Z, gap, positive=positive)
    target = LD(tol) * half_sq_norms(X)
    finfo = np.finfo(dtype)
    with np.errstate(all="ignore"):
        ok = gap.astype(LD) <= target * LD(1 + GAP_RTOL) + LD(finfo.smallest_subnormal)
        # a gap beyond the dtype's range is stored as inf: judge the true gap
        # (1/2 ||x||^2 may be beyond the range too, e.g. x ~ 1e200)
        _, g_ref, allowed, _ = gap_allowance(X, D, lmbd, Z, dtype, positive)
        beyond = np.isposinf(gap) & (g_ref + allowed > LD(finfo.max))
        ok |= beyond & (g_ref <= target * LD(1 + GAP_RTOL) + allowed)
    bad = conv & ~ok
    assert not bad.any(), (
        f"samples {_bad_samples(bad)} reported converged with gap "
        f"{gap[bad][:5].tolist()} > tol * ||x||^2 / 2 = "
        f"{[_fmt(t) for t in target[bad][:5]]}")


def assert_objective_consistent(X, D, lmbd, Z, gap, Z_ref, positive=False):
    """Against any reference codes Z_ref (e.g. ``reference.solve_scaled``):
    F(z) - F(z_ref) <= gap + rounding (F(z_ref) >= F*), and
    F(z_ref) - gap_ref(z_ref) <= F(z) + rounding (weak duality: F* >= that)."""
    F, _, _, size = gap_allowance(X, D, lmbd, Z, positive=positive)
    bound = true_gap_bound(X, D, lmbd, Z, gap, positive)
    F_ref, g_ref, _, size_ref = gap_allowance(X, D, lmbd, Z_ref, positive=positive)
    tiny = LD(np.finfo(_result_dtype(np.asarray(gap))).smallest_subnormal)
    slack = GAP_SIZE_TOL * np.maximum(size, size_ref) + tiny
    with np.errstate(all="ignore"):
        above = F - F_ref > bound + slack
        below = F_ref - g_ref > F + slack
    for bad, msg in ((above, "F(z) - F* exceeds the reported gap"),
                     (below, "F(z) is below the dual lower bound of F*")):
        if bad.any():
            i = _bad_samples(bad)
            raise AssertionError(
                f"{msg} in samples {i}: F(z) {[_fmt(v) for v in F[i]]}, F(z_ref) "
                f"{[_fmt(v) for v in F_ref[i]]}, gap bound {[_fmt(v) for v in bound[i]]}, "
                f"gap(z_ref) {[_fmt(v) for v in g_ref[i]]}")


def assert_same_optimum(X, D, lmbd, res1, res2, positive=False):
    """Two certified results of one problem (e.g. n_jobs=1 and 2): their
    objectives differ by at most the sum of their gaps (both within their gap
    of the optimum), plus rounding. Codes are never compared."""
    F1, _, _, s1 = gap_allowance(X, D, lmbd, res1.codes, positive=positive)
    F2, _, _, s2 = gap_allowance(X, D, lmbd, res2.codes, positive=positive)
    b1 = true_gap_bound(X, D, lmbd, res1.codes, res1.gap, positive)
    b2 = true_gap_bound(X, D, lmbd, res2.codes, res2.gap, positive)
    with np.errstate(all="ignore"):
        bad = ~(np.abs(F1 - F2) <= b1 + b2 + GAP_SIZE_TOL * np.maximum(s1, s2))
    if bad.any():
        i = _bad_samples(bad)
        raise AssertionError(
            f"objectives differ by more than the certified gaps in samples {i}: "
            f"F1 {[_fmt(v) for v in F1[i]]}, F2 {[_fmt(v) for v in F2[i]]}, gaps "
            f"{[_fmt(v) for v in np.atleast_1d(res1.gap)[i]]} and "
            f"{[_fmt(v) for v in np.atleast_1d(res2.gap)[i]]}")


def assert_kkt_strongly_convex(X, D, lmbd, Z, gap, mu, positive=False):
    """KKT conditions implied by the gap when D D^T >= mu I (mu > 0).

    ||z - z*||^2 <= 2 gap / mu =: rho^2, so with c = (x - zD) D^T,
    ||c(z) - c(z*)||_inf <= ||D D^T||_2 rho =: delta. Hence |c_k| <= lmbd +
    delta for every k, and |c_k - lmbd sign z_k| <= delta where |z_k| > rho
    (there z*_k has the sign of z_k). (Entries |z_k| <= rho may sit on the
    wrong side of 0: no condition on them.) Checked at scale 1-ish inputs.
    With ``positive`` the conditions are one-sided: c_k <= lmbd + delta for
    every k (c_k may be very negative where z*_k = 0).
    """
    eff = true_gap_bound(X, D, lmbd, Z, gap, positive).astype(np.float64)
    X, D = (np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (X, D))
    Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
    L = ref.lipschitz(D)
    rho = np.sqrt(2 * eff / mu)
    delta = L * rho
    C = (X - Z @ D) @ D.T
    c_scale = np.linalg.norm(D, axis=1).max() * (
        np.linalg.norm(X, axis=1) + np.abs(Z) @ np.linalg.norm(D, axis=1))
    round_c = 1e-12 * c_scale + 1e-300
    lm = ref.per_sample(lmbd, X.shape[0])
    off = np.max(C if positive else np.abs(C), axis=1) - lm
    sure = np.abs(Z) > rho[:, None]
    on = np.where(sure, np.abs(C - lm[:, None] * np.sign(Z)), 0.0).max(axis=1, initial=0.0)
    bad = (off > delta + round_c) | (on > delta + round_c)
    assert not bad.any(), (
        f"KKT violated beyond the gap's bound in samples {_bad_samples(bad)}: "
        f"off-support {off[bad][:3].tolist()}, on-support {on[bad][:3].tolist()}, "
        f"bound {delta[bad][:3].tolist()}")
