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
  the stored dtype, and ``inf`` where the true gap exceeds its range);
* ``res.converged[i]`` implies ``res.gap[i] <= tol * 1/2 ||x_i||^2``;
* all-zero atoms have code exactly 0 in every sample.
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


def assert_gap_matches(X, D, lmbd, Z, gap, what="gap"):
    """``gap`` (one value a row of Z) is the duality gap of Z, to rounding."""
    gap = np.atleast_1d(np.asarray(gap))
    dtype = _result_dtype(gap)
    finfo = np.finfo(dtype)
    _, g_ref, size = ref.gap_terms_robust(X, D, lmbd, Z)
    g = gap.astype(LD)
    with np.errstate(all="ignore"):
        allowed = GAP_RTOL * g_ref + GAP_SIZE_TOL * size + LD(finfo.smallest_subnormal)
        close = np.abs(g - g_ref) <= allowed
        # a true gap beyond the stored dtype's range is stored as +inf
        overflow = (g_ref > LD(finfo.max)) & np.isposinf(g)
    bad = ~(close | overflow)
    if bad.any():
        lines = [f"sample {i}: reported {_fmt(g[i])}, reference {_fmt(g_ref[i])}, "
                 f"allowed difference {_fmt(allowed[i])}" for i in _bad_samples(bad)]
        raise AssertionError(
            f"{what} is not the duality gap of the codes in {int(bad.sum())} of "
            f"{len(bad)} samples ({dtype}):\n  " + "\n  ".join(lines))


def half_sq_norms(X):
    """1/2 ||x||^2 per row, in long double (no overflow or underflow)."""
    X = np.atleast_2d(np.asarray(X)).astype(LD)
    return LD(0.5) * np.sum(X * X, axis=1)


def zero_atoms(D):
    """Indices of the rows of D that are exactly 0."""
    D = np.asarray(D)
    return np.flatnonzero(~np.any(D != 0, axis=1))


def assert_certified(X, D, lmbd, tol, res, dtype=None):
    """The whole contract for a ``LassoResult`` of ``solve_lasso(X, D, lmbd,
    tol=tol, ...)`` (2-D X)."""
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
    zero = zero_atoms(D)
    if zero.size:
        nz = np.any(Z[:, zero] != 0, axis=1)
        assert not nz.any(), (
            f"all-zero atoms {zero[:5].tolist()} have non-zero codes in samples "
            f"{_bad_samples(nz)}: {Z[nz][:, zero][:3].tolist()}")
    assert_gap_matches(X, D, lmbd, Z, gap)
    target = LD(tol) * half_sq_norms(X)
    finfo = np.finfo(dtype)
    with np.errstate(all="ignore"):
        ok = gap.astype(LD) <= target * LD(1 + GAP_RTOL) + LD(finfo.smallest_subnormal)
        # a gap beyond the dtype's range is stored as inf: judge the true gap
        # (1/2 ||x||^2 may be beyond the range too, e.g. x ~ 1e200)
        _, g_ref, size = ref.gap_terms_robust(X, D, lmbd, Z)
        beyond = np.isposinf(gap) & (g_ref > LD(finfo.max))
        ok |= beyond & (g_ref <= target * LD(1 + GAP_RTOL) + GAP_SIZE_TOL * size)
    bad = conv & ~ok
    assert not bad.any(), (
        f"samples {_bad_samples(bad)} reported converged with gap "
        f"{gap[bad][:5].tolist()} > tol * ||x||^2 / 2 = "
        f"{[_fmt(t) for t in target[bad][:5]]}")


def assert_objective_consistent(X, D, lmbd, Z, gap, Z_ref):
    """Against any reference codes Z_ref (e.g. ``reference.solve_scaled``):
    F(z) - F(z_ref) <= gap + rounding (F(z_ref) >= F*), and
    F(z_ref) - gap_ref(z_ref) <= F(z) + rounding (weak duality: F* >= that)."""
    F, _, size = ref.gap_terms_robust(X, D, lmbd, Z)
    F_ref, g_ref, size_ref = ref.gap_terms_robust(X, D, lmbd, Z_ref)
    gap = np.atleast_1d(np.asarray(gap)).astype(LD)
    slack = GAP_SIZE_TOL * np.maximum(size, size_ref)
    with np.errstate(all="ignore"):
        above = F - F_ref > gap * LD(1 + GAP_RTOL) + slack
        below = F_ref - g_ref > F + slack
    for bad, msg in ((above, "F(z) - F* exceeds the reported gap"),
                     (below, "F(z) is below the dual lower bound of F*")):
        if bad.any():
            i = _bad_samples(bad)
            raise AssertionError(
                f"{msg} in samples {i}: F(z) {[_fmt(v) for v in F[i]]}, F(z_ref) "
                f"{[_fmt(v) for v in F_ref[i]]}, gap {[_fmt(v) for v in gap[i]]}, "
                f"gap(z_ref) {[_fmt(v) for v in g_ref[i]]}")


def assert_same_optimum(X, D, lmbd, res1, res2):
    """Two certified results of one problem (e.g. n_jobs=1 and 2): their
    objectives differ by at most the sum of their gaps (both within their gap
    of the optimum), plus rounding. Codes are never compared."""
    F1, _, s1 = ref.gap_terms_robust(X, D, lmbd, res1.codes)
    F2, _, s2 = ref.gap_terms_robust(X, D, lmbd, res2.codes)
    g1 = np.atleast_1d(np.asarray(res1.gap)).astype(LD)
    g2 = np.atleast_1d(np.asarray(res2.gap)).astype(LD)
    with np.errstate(all="ignore"):
        bad = ~(np.abs(F1 - F2) <= (g1 + g2) * LD(1 + GAP_RTOL)
                + GAP_SIZE_TOL * np.maximum(s1, s2))
    if bad.any():
        i = _bad_samples(bad)
        raise AssertionError(
            f"objectives differ by more than the certified gaps in samples {i}: "
            f"F1 {[_fmt(v) for v in F1[i]]}, F2 {[_fmt(v) for v in F2[i]]}, gaps "
            f"{[_fmt(v) for v in g1[i]]} and {[_fmt(v) for v in g2[i]]}")


def assert_kkt_strongly_convex(X, D, lmbd, Z, gap, mu):
    """KKT conditions implied by the gap when D D^T >= mu I (mu > 0).

    ||z - z*||^2 <= 2 gap / mu =: rho^2, so with c = (x - zD) D^T,
    ||c(z) - c(z*)||_inf <= ||D D^T||_2 rho =: delta. Hence |c_k| <= lmbd +
    delta for every k, and |c_k - lmbd sign z_k| <= delta where |z_k| > rho
    (there z*_k has the sign of z_k). (Entries |z_k| <= rho may sit on the
    wrong side of 0: no condition on them.) Checked at scale 1-ish inputs.
    """
    X, D = (np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (X, D))
    Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
    _, _, size = ref.gap_terms_robust(X, D, lmbd, Z)
    gap = np.atleast_1d(np.asarray(gap, dtype=np.float64))
    L = ref.lipschitz(D)
    eff = gap * (1 + GAP_RTOL) + GAP_SIZE_TOL * size.astype(np.float64)
    rho = np.sqrt(2 * eff / mu)
    delta = L * rho
    C = (X - Z @ D) @ D.T
    c_scale = np.linalg.norm(D, axis=1).max() * (
        np.linalg.norm(X, axis=1) + np.abs(Z) @ np.linalg.norm(D, axis=1))
    round_c = 1e-12 * c_scale + 1e-300
    off = np.max(np.abs(C), axis=1) - lmbd
    sure = np.abs(Z) > rho[:, None]
    on = np.where(sure, np.abs(C - lmbd * np.sign(Z)), 0.0).max(axis=1, initial=0.0)
    bad = (off > delta + round_c) | (on > delta + round_c)
    assert not bad.any(), (
        f"KKT violated beyond the gap's bound in samples {_bad_samples(bad)}: "
        f"off-support {off[bad][:3].tolist()}, on-support {on[bad][:3].tolist()}, "
        f"bound {delta[bad][:3].tolist()}")
