"""Fuzzing the certificate of ``solve_lasso`` and ``duality_gap`` (hypothesis).

Every example builds one small Lasso batch (at most 40 samples, 30 atoms)
from a plain ``spec`` dict, runs one method and checks the contract of
``contract.py`` against the independent long-double reference of
``reference.py``: finite codes (or a ``FloatingPointError`` naming the
sample, where the solution or the warm start lies near the float range), the
reported gap equal to the gap of the returned codes to rounding, converged
only when that gap meets ``tol``, all-zero atoms coded 0, codes exactly 0
above lambda_max, objectives consistent with a reference solution, thread
counts agreeing within their certified gaps, and the KKT conditions that the
gap implies in strongly convex cases.

Strategies draw dictionaries (Gaussian, with zero atoms, duplicated atoms,
+- pairs, nearly collinear atoms, atoms scaled 1e+-100, an atom whose squared
norm underflows; fewer, as many and more atoms than features), signals
(with a zero row, a row orthogonal to the atoms, a 1e-200 row next to a
1e+200 one), global scales of X and D (up to 1e+-300 and subnormal in
float64, 1e+-20 to 1e+-40 in float32), lmbd (0, tiny, 1e-3, 0.05, 0.3 and around
lambda_max of one sample: below, at, above, far above), warm starts (none, zeros, random,
1e100, 1e155, the reference solution, its sign flip), dtypes (float32 with
tol=1e-5, float64), memory layouts (C, Fortran, strided) and n_jobs in {1, 2}.

The variants (``test_variant_*``) draw the same problems with non-negative
codes (``positive=True``: the one-sided certificate of
``reference.gap_terms_robust(positive=True)``, codes >= 0, exact zeros from
the one-sided lambda_max on) and/or one lmbd per sample (each drawn from the
same levels around the sample's own lambda_max).

A failing example prints its ``spec``; rebuild it with
``build_problem(spec)`` (from this module) to get X, D, lmbd, Z0.

Profiles: the default is bounded and derandomized for CI (a few dozen
examples per test, the file in well under a minute on 2 cores). The long
profile draws thousands of random examples a test::

    FASTLISTA_FUZZ=long pytest tests/test_fuzz.py -x

(``FASTLISTA_FUZZ_EXAMPLES=N`` overrides the number of examples a test.)
"""
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import reference as ref  # noqa: E402
from conftest import fuzz_settings  # noqa: E402
from contract import (assert_certified, assert_gap_matches,  # noqa: E402
                      assert_kkt_strongly_convex, assert_objective_consistent,
                      assert_same_optimum)
from fastlista import (ConvergenceWarning, duality_gap, lasso_objective,  # noqa: E402
                       solve_lasso)

METHODS = ("ista", "fista", "backtracking", "oista", "cd", "auto")

FUZZ = fuzz_settings("fuzz", 3000, ("too_slow", "data_too_large", "filter_too_much"))


# ---------------------------------------------------------------------------
# problems: a spec (plain values, printed on failure) and its deterministic build
# ---------------------------------------------------------------------------

DICTIONARIES = ("gaussian", "zero_atoms", "duplicated", "plus_minus", "collinear",
                "scaled_atoms", "underflow_atom")
SIGNALS = ("plain", "zero_row", "orthogonal_row", "tiny_and_huge_rows")
LAMBDAS = {"mid": 0.3, "small": 0.05, "smaller": 1e-3, "zero": 0.0, "tiny": 1e-12,
           "below": 1 - 1e-3, "at": 1.0, "above": 1 + 1e-3, "far_above": 2.0}
WARM = ("none", "zeros", "random", "huge", "overflowing", "solution", "flipped")
LAYOUTS = ("C", "F", "strided")
# (scale of X, scale of D); the first is the unscaled problem
SCALES = {
    "float64": [(1.0, 1.0), (1e100, 1.0), (1e-100, 1.0), (1.0, 1e100), (1.0, 1e-100),
                (1e150, 1e-150), (1e-150, 1e150), (1e300, 1.0), (1e-300, 1.0),
                (1e-310, 1.0), (1.0, 1e300), (1.0, 1e-300), (1e200, 1e-200)],
    "float32": [(1.0, 1.0), (1e20, 1.0), (1e-20, 1.0), (1.0, 1e20), (1.0, 1e-20),
                (1e15, 1e-15), (1e-15, 1e15), (1e-20, 1e20), (1e30, 1.0),
                (1e-40, 1.0), (1e20, 1e-20)],
}
# per dtype: atom scales, the underflowing atom, collinearity, tiny/huge rows,
# warm starts "huge" and "overflowing", default tol
DTYPE_PARAMS = {
    "float64": dict(atom_scales=(1e100, 1e-100), underflow=1e-170, collinear=1e-8,
                    rows=(1e-200, 1e200), huge=1e100, overflowing=1e155, tol=1e-8),
    "float32": dict(atom_scales=(1e10, 1e-10), underflow=1e-23, collinear=1e-4,
                    rows=(1e-20, 1e20), huge=1e15, overflowing=1e30, tol=1e-5),
}


class Problem:
    """X, D, lmbd, Z0, tol, max_iter built from ``spec``, with the reference
    codes ``Z_ref`` (long double) and ``lmbd_max`` (per sample). ``lmbd`` is
    a float, or one float64 a sample with ``spec["per_sample"]``;
    ``positive`` is ``spec["positive"]`` (False for specs without it)."""

    def __init__(self, spec, X, D, lmbd, Z0, Z_ref, lmbd_max, may_refuse):
        self.spec, self.X, self.D, self.lmbd, self.Z0 = spec, X, D, lmbd, Z0
        self.Z_ref, self.lmbd_max, self.may_refuse = Z_ref, lmbd_max, may_refuse
        self.positive = bool(spec.get("positive", False))
        self.tol = spec["tol"]
        self.max_iter = 30 if self.tol == 0 else 3000

    def __repr__(self):
        return f"build_problem({self.spec!r})"


def _layout(A, how):
    if A is None or how == "C":
        return A
    if how == "F":
        return np.asfortranarray(A)
    big = np.zeros((2 * A.shape[0] + 1, 2 * A.shape[1] + 1), dtype=A.dtype)
    big[1::2, 1::2] = A
    return big[1::2, 1::2]               # non-contiguous view


def build_problem(spec):
    """The problem of a spec (deterministic); None when its inputs would not
    be finite in its dtype (the strategies then discard it)."""
    s = spec
    dt = np.dtype(s["dtype"])
    par = DTYPE_PARAMS[s["dtype"]]
    rng = np.random.default_rng(s["seed"])
    N, n, m = s["n_samples"], s["n_features"], s["n_atoms"]
    D = rng.standard_normal((m, n))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    a, b = (int(v) for v in rng.choice(m, size=2, replace=m < 2))
    kind = s["dictionary"]
    if kind == "zero_atoms":
        D[rng.choice(m, size=max(1, m // 3), replace=False)] = 0.0
    elif kind == "duplicated" and a != b:
        D[b] = D[a]
    elif kind == "plus_minus" and a != b:
        D[b] = -D[a]
    elif kind == "collinear" and a != b:
        D[b] = D[a] + par["collinear"] * rng.standard_normal(n)
    # signals from the unit-norm atoms: atoms scaled afterwards get codes
    # scaled the other way
    Zb = rng.standard_normal((N, m)) * (rng.random((N, m)) < rng.uniform(0.2, 1.0))
    X = Zb @ D + 0.1 * rng.standard_normal((N, n))
    if kind == "scaled_atoms":
        D *= rng.choice([1.0, *par["atom_scales"]], size=(m, 1))
    elif kind == "underflow_atom":
        D[a] = par["underflow"] * np.sign(rng.standard_normal(n))
    rows = s["signals"]
    k = s["lmbd_sample"] % N
    if rows == "zero_row":
        X[k] = 0.0
    elif rows == "orthogonal_row":
        _, sv, Vt = np.linalg.svd(D, full_matrices=True)
        rank = int(np.sum(sv > sv[0] * 1e-12)) if sv.size and sv[0] > 0 else 0
        P = Vt[rank:]                     # basis of the complement of the atoms' span
        X[k] = P.T @ (P @ X[k]) if rank < n else 0.0
    sx, sd = s["scale"]
    with np.errstate(all="ignore"):
        if rows == "tiny_and_huge_rows" and N >= 2:
            X[0] *= par["rows"][0]
            X[N - 1] *= par["rows"][1]
        X, D = (X * sx).astype(dt), (D * sd).astype(dt)
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(D))):
        return None
    positive = bool(s.get("positive", False))
    lmbd_max = ref.lambda_max_robust(X, D, positive)
    top = np.max(lmbd_max, initial=0)
    if s.get("per_sample", False):
        # each sample at a level drawn around its own lambda_max (the drawn
        # level for sample k; a sample with lambda_max 0 at the batch's top)
        levels = np.array(list(LAMBDAS.values()))
        factors = levels[np.random.default_rng(s["seed"] ^ 0x5EED).integers(
            0, len(levels), size=N)]
        factors[k] = LAMBDAS[s["lmbd"]]
        base = np.where(lmbd_max > 0, lmbd_max, top)
        with np.errstate(all="ignore"):
            lmbd = (factors * base.astype(np.float64)).astype(dt).astype(np.float64)
        if not np.all(np.isfinite(lmbd)):
            return None
    else:
        base = lmbd_max[k] if lmbd_max[k] > 0 else top
        with np.errstate(all="ignore"):
            lmbd = float(dt.type(LAMBDAS[s["lmbd"]] * float(base)))
        if not np.isfinite(lmbd):
            return None
    Z_ref = ref.solve_scaled(X, D, lmbd, n_sweeps=40, positive=positive)
    fmax = np.longdouble(np.finfo(dt).max)
    warm = s["warm"]
    with np.errstate(all="ignore"):
        code_scale = float(np.max(np.abs(Z_ref), initial=0.0)) or sx / sd
        if warm == "zeros":
            Z0 = np.zeros((N, m))
        elif warm == "random":
            Z0 = code_scale * rng.standard_normal((N, m))
        elif warm in ("huge", "overflowing"):
            Z0 = par[warm] * rng.standard_normal((N, m))
        elif warm == "solution":
            Z0 = Z_ref
        elif warm == "flipped":
            Z0 = -Z_ref
        else:
            Z0 = None
        if Z0 is not None:
            Z0 = np.asarray(Z0).astype(dt)
            if not np.all(np.isfinite(Z0)):
                return None
    # a refusal (FloatingPointError) is allowed where the codes may leave the
    # float range: the solution near it, or a warm start whose objective
    # already overflows
    may_refuse = bool(np.max(np.abs(Z_ref), initial=0) > fmax * np.longdouble(1e-12))
    # ... or where the rounding of c = x D^T alone (n + 2 units of roundoff
    # of |x| |d_j|) moves a code by more than that: X and D scaled in
    # opposite directions so far that an exactly orthogonal atom's code, 0,
    # is computed as noise beyond the float range
    with np.errstate(all="ignore"):
        Xl, Dl = X.astype(np.longdouble), D.astype(np.longdouble)
        x_norm = np.sqrt(np.sum(Xl * Xl, axis=1))
        d_norm = np.sqrt(np.sum(Dl * Dl, axis=1))
        d_min = np.min(d_norm[d_norm > 0], initial=np.longdouble(np.inf))
        noise = ((n + 2) * np.longdouble(np.finfo(dt).eps)
                 * np.max(x_norm, initial=0) / d_min)
    may_refuse |= bool(noise > fmax * np.longdouble(1e-12))
    if Z0 is not None:
        # (with positive, the solver clips a warm start's negative entries)
        F0 = ref.objective_robust(X, D, lmbd, np.maximum(Z0, 0) if positive else Z0,
                                  positive=positive)
        may_refuse |= bool(np.any(F0 > fmax * np.longdouble(1e-6)))
    X, D, Z0 = (_layout(A, s["layout"]) for A in (X, D, Z0))
    return Problem(spec, X, D, lmbd, Z0, Z_ref, lmbd_max, may_refuse)


@st.composite
def specs(draw, dtypes=("float64", "float32"), min_samples=1, max_samples=40,
          dictionaries=DICTIONARIES, shapes=("fewer", "square", "more"),
          scaled=True, warm=WARM, signals=SIGNALS, lambdas=tuple(LAMBDAS),
          variants=False):
    dtype = draw(st.sampled_from(dtypes))
    n = draw(st.integers(1, 12))
    shape = draw(st.sampled_from(shapes))
    if shape == "fewer":
        m = draw(st.integers(1, max(1, n - 1)))
    elif shape == "square":
        m = n
    else:
        m = draw(st.integers(n + 1, min(30, 3 * n + 2)))
    spec = {
        "dtype": dtype,
        "seed": draw(st.integers(0, 2**32 - 1)),
        "n_samples": draw(st.integers(min_samples, max_samples)),
        "n_features": n,
        "n_atoms": m,
        "dictionary": draw(st.sampled_from(dictionaries)),
        "signals": draw(st.sampled_from(signals)),
        "scale": draw(st.sampled_from(SCALES[dtype])) if scaled else (1.0, 1.0),
        "lmbd": draw(st.sampled_from(lambdas)),
        "lmbd_sample": draw(st.integers(0, 39)),
        "warm": draw(st.sampled_from(warm)),
        "layout": draw(st.sampled_from(LAYOUTS)),
        "tol": draw(st.sampled_from([DTYPE_PARAMS[dtype]["tol"], 0.0])),
    }
    if variants:
        # (drawn only here: the other tests' derandomized examples are unchanged)
        spec["positive"], spec["per_sample"] = draw(st.sampled_from(
            [(True, False), (False, True), (True, True)]))
    return spec


def problems(**kw):
    return specs(**kw).map(build_problem).filter(lambda p: p is not None)


def run(p, method, n_jobs):
    """solve_lasso on the problem; None for an allowed refusal."""
    try:
        with warnings.catch_warnings():
            # stopping at max_iter is legitimate (ill-conditioned, float32, tol=0)
            warnings.simplefilter("ignore", ConvergenceWarning)
            return solve_lasso(p.X, p.D, p.lmbd, method=method, tol=p.tol,
                               max_iter=p.max_iter, Z0=p.Z0, n_jobs=n_jobs,
                               positive=p.positive)
    except FloatingPointError as exc:
        assert p.may_refuse, f"refused a problem whose codes fit the float range: {exc}"
        assert "sample" in str(exc), f"FloatingPointError without the sample: {exc}"
        return None


# ---------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------

@FUZZ
@given(p=problems(), method=st.sampled_from(METHODS), n_jobs=st.sampled_from([1, 2]))
def test_solve_lasso_result_is_certified(p, method, n_jobs):
    res = run(p, method, n_jobs)
    if res is None:
        return
    assert_certified(p.X, p.D, p.lmbd, p.tol, res)
    assert_zero_above_lambda_max(p, res)
    assert_objective_consistent(p.X, p.D, p.lmbd, res.codes, res.gap, p.Z_ref)


def assert_zero_above_lambda_max(p, res):
    # above lambda_max the code is exactly 0 (screened; not with tol=0).
    # lambda_max(x) = ||x D^T||_inf (max(x D^T)_+ for positive codes) is
    # computed in the input dtype: allow its rounding, relative to ||x||
    # max ||d_j|| (x nearly orthogonal to D)
    if p.tol > 0:
        LD = np.longdouble
        X, D = (np.asarray(A).astype(LD) for A in (p.X, p.D))
        with np.errstate(all="ignore"):
            rounding = LD(1e-5 if p.X.dtype == np.float32 else 1e-13) * \
                np.sqrt(np.sum(X * X, axis=1)) * np.sqrt(np.max(np.sum(D * D, axis=1)))
            above = np.asarray(p.lmbd, dtype=LD) > p.lmbd_max * LD(1 + 1e-6) + rounding
        nz = above & np.any(res.codes != 0, axis=1)
        assert not nz.any(), f"non-zero codes above lambda_max in samples {np.flatnonzero(nz)}"


@FUZZ
@given(p=problems(min_samples=32), method=st.sampled_from(METHODS))
def test_thread_counts_agree_within_certified_gaps(p, method):
    # 32-40 samples: two blocks for the proximal-gradient kernels, two
    # threads for coordinate descent. Codes are never compared: only the
    # objectives, each within its certified gap of the optimum.
    res1, res2 = run(p, method, 1), run(p, method, 2)
    for res in (res1, res2):
        if res is not None:
            assert_certified(p.X, p.D, p.lmbd, p.tol, res)
    if res1 is not None and res2 is not None:
        assert_same_optimum(p.X, p.D, p.lmbd, res1, res2)


def candidate_codes(p, kind, dtype=None):
    """Codes whose gap is checked: the reference solution, its negative,
    random (signed or non-negative, dense or 20 % sparse, at the solution's
    scale), huge (overflowing the dtype's squares) or the problem's warm
    start, in ``dtype`` (default: the problem's); drawn from the problem's
    seed."""
    rng = np.random.default_rng(p.spec["seed"] + 1)
    N, m = p.X.shape[0], p.D.shape[0]
    with np.errstate(all="ignore"):
        scale = float(np.max(np.abs(p.Z_ref), initial=0.0)) or 1.0
        if kind in ("reference", "flipped"):
            Z = p.Z_ref if kind == "reference" else -p.Z_ref
        elif kind == "warm":
            Z = p.Z0 if p.Z0 is not None else np.zeros((N, m))
        elif kind == "huge":
            Z = DTYPE_PARAMS[p.X.dtype.name]["overflowing"] * rng.standard_normal((N, m))
        else:
            Z = scale * rng.standard_normal((N, m))
            if kind in ("nonnegative", "sparse-nonnegative"):
                Z = np.abs(Z)
            if kind.startswith("sparse"):
                Z = Z * (rng.random((N, m)) < 0.2)
        return np.asarray(Z).astype(dtype or p.X.dtype)


@FUZZ
@given(p=problems(), codes=st.sampled_from(["reference", "flipped", "random", "sparse",
                                            "huge", "warm"]),
       float64_codes=st.booleans())
def test_duality_gap_matches_reference(p, codes, float64_codes):
    # float64 codes of a float32 problem are evaluated in float64, unrounded
    Z = candidate_codes(p, codes, np.float64 if float64_codes else None)
    assume(np.all(np.isfinite(Z)))
    gap = duality_gap(p.X, p.D, p.lmbd, Z)
    assert gap.dtype == (np.float64 if float64_codes else p.X.dtype)
    assert np.all(gap >= 0)
    assert_gap_matches(p.X, p.D, p.lmbd, Z, gap, what="duality_gap")


@FUZZ
@given(p=problems(dictionaries=("gaussian",), shapes=("fewer", "square"), scaled=False,
                  warm=("none", "random", "flipped"), signals=("plain",),
                  lambdas=("mid", "small", "tiny", "below")),
       method=st.sampled_from(METHODS), n_jobs=st.sampled_from([1, 2]))
def test_strongly_convex_codes_satisfy_the_kkt_conditions_their_gap_implies(p, method, n_jobs):
    mu = ref.strong_convexity(p.D)
    assume(mu > 1e-2 * ref.lipschitz(p.D))
    res = run(p, method, n_jobs)
    assert res is not None
    assert_certified(p.X, p.D, p.lmbd, p.tol, res)
    assert_kkt_strongly_convex(p.X, p.D, p.lmbd, res.codes, res.gap, mu)


@FUZZ
@given(p=problems(dtypes=("float64",), dictionaries=("gaussian", "duplicated",
                                                      "plus_minus"),
                  scaled=False, warm=("none", "zeros", "random", "flipped", "solution"),
                  lambdas=("mid", "small", "below", "at", "above", "far_above")),
       method=st.sampled_from(["cd", "auto"]), n_jobs=st.sampled_from([1, 2]))
def test_coordinate_descent_converges_on_well_posed_problems(p, method, n_jobs):
    # liveness: certified *and* converged, for the exact method at scale 1,
    # wherever a double-precision gap can certify: lmbd >= 1e-6 lambda_max(x)
    # and lambda_max(x) well above the rounding of x D^T (otherwise that
    # rounding decides the dual point, and a signal outside the atoms' span
    # keeps a gap near 1/2 ||x||^2 at its optimum)
    assume(p.tol > 0 and p.lmbd > 0)
    res = run(p, method, n_jobs)
    assert res is not None
    assert_certified(p.X, p.D, p.lmbd, p.tol, res)
    LD = np.longdouble
    X, D = (np.asarray(A).astype(LD) for A in (p.X, p.D))
    c_round = LD(1e-8) * np.sqrt(np.sum(X * X, axis=1)) * \
        np.sqrt(np.max(np.sum(D * D, axis=1)))
    must = (np.longdouble(p.lmbd) >= np.longdouble(1e-6) * p.lmbd_max) & \
        (p.lmbd_max > c_round)
    bad = must & ~res.converged
    assert not bad.any(), f"not converged: samples {np.flatnonzero(bad)}"


# ---------------------------------------------------------------------------
# variants: non-negative codes and one lmbd per sample
# ---------------------------------------------------------------------------

#: the variants' budget: two thirds of the file's (they run on top of it)
FUZZ_VARIANTS = settings(FUZZ, max_examples=max(1, 2 * FUZZ.max_examples // 3))


@FUZZ_VARIANTS
@given(p=problems(variants=True), method=st.sampled_from(METHODS),
       n_jobs=st.sampled_from([1, 2]))
def test_variant_result_is_certified(p, method, n_jobs):
    res = run(p, method, n_jobs)
    if res is None:
        return
    assert_certified(p.X, p.D, p.lmbd, p.tol, res, positive=p.positive)
    assert_zero_above_lambda_max(p, res)
    assert_objective_consistent(p.X, p.D, p.lmbd, res.codes, res.gap, p.Z_ref,
                                positive=p.positive)


@FUZZ_VARIANTS
@given(p=problems(variants=True), method=st.sampled_from(("ista", "fista", "backtracking",
                                                          "oista")),
       n_jobs=st.sampled_from([1, 2]))
def test_history_result_is_certified_and_ends_at_its_codes(p, method, n_jobs):
    """With record_history=True (stops checked at every iteration, the
    certificate's refusals retried into the same record) the result keeps
    the whole contract, and the record ends at the returned codes: the
    gap at a sample's n_iter is its certificate, and no iteration up to it
    is unrecorded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = solve_lasso(p.X, p.D, p.lmbd, method=method, tol=p.tol,
                              max_iter=min(p.max_iter, 2000), Z0=p.Z0, n_jobs=n_jobs,
                              positive=p.positive, record_history=True)
    except FloatingPointError as exc:
        assert p.may_refuse and "sample" in str(exc), exc
        return
    assert_certified(p.X, p.D, p.lmbd, p.tol, res, positive=p.positive)
    gap_h, obj_h = res.history["gap"], res.history["objective"]
    cols = np.arange(p.X.shape[0])
    assert np.array_equal(gap_h[res.n_iter, cols], res.gap.astype(np.float64))
    assert not np.isnan(gap_h).any() and not np.isnan(obj_h).any()


@FUZZ_VARIANTS
@given(p=problems(variants=True, min_samples=32), method=st.sampled_from(METHODS))
def test_variant_thread_counts_agree_within_certified_gaps(p, method):
    res1, res2 = run(p, method, 1), run(p, method, 2)
    for res in (res1, res2):
        if res is not None:
            assert_certified(p.X, p.D, p.lmbd, p.tol, res, positive=p.positive)
    if res1 is not None and res2 is not None:
        assert_same_optimum(p.X, p.D, p.lmbd, res1, res2, positive=p.positive)


@FUZZ_VARIANTS
@given(p=problems(variants=True), codes=st.sampled_from(
    ["reference", "flipped", "random", "nonnegative", "sparse-nonnegative", "huge",
     "warm"]))
def test_variant_duality_gap_matches_reference(p, codes):
    # "flipped", "random", "huge" and some warm starts have negative
    # entries: infeasible for positive codes, gap inf
    Z = candidate_codes(p, codes)
    assume(np.all(np.isfinite(Z)))
    gap = duality_gap(p.X, p.D, p.lmbd, Z, positive=p.positive)
    assert np.all(gap >= 0)
    if p.positive:
        assert np.all(np.isposinf(gap[np.any(Z < 0, axis=1)]))
    assert_gap_matches(p.X, p.D, p.lmbd, Z, gap, what="duality_gap", positive=p.positive)


@FUZZ_VARIANTS
@given(p=problems(variants=True, dictionaries=("gaussian",), shapes=("fewer", "square"),
                  scaled=False, warm=("none", "random", "flipped"), signals=("plain",),
                  lambdas=("mid", "small", "tiny", "below")),
       method=st.sampled_from(METHODS), n_jobs=st.sampled_from([1, 2]))
def test_variant_strongly_convex_codes_satisfy_the_kkt_conditions(p, method, n_jobs):
    mu = ref.strong_convexity(p.D)
    assume(mu > 1e-2 * ref.lipschitz(p.D))
    res = run(p, method, n_jobs)
    assert res is not None
    assert_certified(p.X, p.D, p.lmbd, p.tol, res, positive=p.positive)
    assert_kkt_strongly_convex(p.X, p.D, p.lmbd, res.codes, res.gap, mu,
                               positive=p.positive)


# ---------------------------------------------------------------------------
# samples whose entries span more than their dtype
# ---------------------------------------------------------------------------

@st.composite
def wide_samples(draw):
    """(X (1, n), D (m, n), lmbd, positive, exact_kept): one sample whose
    largest entry sets a scale at which others fall below the dtype's range
    (vanish) or among its subnormals (lose digits), a dictionary of 1 to 3
    atoms of full row rank with entries in quarters (or those times 2**ed
    beyond the scaling's limit, with entries its scaling takes among the
    subnormals), and lmbd from 0 to above lambda_max. ``exact_kept``: the
    kept entries are <= 0 and D >= 0 with positive codes, so that the kept
    part's solution is exactly 0 and its certificate exact: the whole gap
    is the lost entries' bound."""
    dtype = np.dtype(draw(st.sampled_from(["float64", "float32"])))
    info = np.finfo(dtype)
    m = draw(st.integers(1, 3))
    n = draw(st.integers(m, 4))
    exact_kept = draw(st.booleans())
    quarters = st.integers(0 if exact_kept else -4, 4)
    D = np.array(draw(st.lists(quarters, min_size=m * n, max_size=m * n)),
                 dtype=np.float64).reshape(m, n) / 4
    assume(abs(np.linalg.det(D @ D.T)) > 1e-3)
    # the top: 2**et with et above the scaling's limit (ea > 0), so that
    # entries below 2**(et - range) vanish
    limit = {"float64": 100, "float32": 30}[dtype.name]
    et = draw(st.integers(limit + 2, int(info.maxexp) - 8))
    lowest = int(info.minexp) - int(info.nmant)          # the smallest subnormal
    # D itself beyond the limit, with entries its own scaling takes among
    # the subnormals (where the zeros were): rounded, in D's dtype
    ed = draw(st.sampled_from([0, limit + 1 + draw(st.integers(1, 60))]))
    if ed:
        D *= 2.0**ed
        for j, i in zip(*np.nonzero(D == 0)):
            if draw(st.booleans()):
                mant = 1 + draw(st.integers(0, 2**20 - 1)) / 2**20
                sign = 1 if exact_kept else draw(st.sampled_from([1, -1]))
                D[j, i] = sign * np.ldexp(mant, ed + lowest + draw(st.integers(-2, 30)))
    top = draw(st.integers(0, n - 1))
    x = np.zeros(n)
    for i in range(n):
        mant = 1 + draw(st.integers(0, 2**20 - 1)) / 2**20
        if i == top:
            e = et
        else:
            e = draw(st.one_of(st.just(None), st.integers(et + lowest - 8, et + lowest + 30),
                               st.integers(lowest, et)))
            if e is None:
                continue
        # (an entry below half the smallest subnormal at the top's scale
        # vanishes whole; with exact_kept, every other entry is <= 0)
        vanishes = e - et <= lowest - 2
        sign = -1 if exact_kept and not vanishes else draw(st.sampled_from([1, -1]))
        x[i] = sign * np.ldexp(mant, e)
    X = np.array([x], dtype)
    assume(np.all(np.isfinite(X)))
    level = draw(st.sampled_from(["zero", "tiny", "small", "mid", "above"]))
    big = float(np.abs(X).max()) * float(np.abs(D).max())      # ~ lambda_max
    assume(3 * big < float(info.max))
    lmbd = {"zero": 0.0, "tiny": float(np.ldexp(1.0, lowest + 2)), "small": 1e-3 * big,
            "mid": 0.3 * big, "above": 3 * big}[level]
    return X, D.astype(dtype), lmbd, exact_kept or draw(st.booleans()), exact_kept


@FUZZ
@given(case=wide_samples(), method=st.sampled_from(METHODS),
       tol=st.sampled_from(["default", 0.0]))
def test_gap_of_samples_spanning_more_than_their_dtype_bounds_their_suboptimality(
        case, method, tol):
    """The reported gap, and ``duality_gap`` of the returned codes, bound
    F(z) - min F from above (exact, rational arithmetic), up to the double
    rounding of the kept terms (none where the kept part's solution is
    exactly 0); ``converged`` with tol = 0 only for a gap of 0."""
    from fractions import Fraction as Fr
    X, D, lmbd, positive, exact_kept = case
    tol = (1e-5 if X.dtype == np.float32 else 1e-8) if tol == "default" else tol
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            res = solve_lasso(X, D, lmbd, method=method, tol=tol, max_iter=100,
                              positive=positive)
        except FloatingPointError as exc:
            # codes beyond the float range (an entry of 2**1000 on a small
            # atom): refused, naming the sample
            assert "samples [0] overflow" in str(exc)
            return
    x = X[0].astype(np.float64)
    exact = ref.lasso_suboptimality_exact(x, D, lmbd, res.codes[0], positive)
    xx = sum(Fr(float(v)) ** 2 for v in x) / 2
    rounding = 0 if exact_kept else Fr(2.0**-50) * xx
    for gap in (res.gap[0], duality_gap(X, D, lmbd, res.codes, positive=positive)[0]):
        assert gap >= 0
        assert gap == np.inf or Fr(float(gap)) + rounding >= exact, (gap, exact)
    if tol == 0:
        assert res.converged[0] == (res.gap[0] == 0)
    # the objective, lost entries included, to the rounding of its terms
    # (their squares, 1/2 (|x_i| + sum_j |z_j d_ji|)^2, and lmbd ||z||_1)
    # and of its dtype
    F = lasso_objective(X, D, lmbd, res.codes, positive=positive)[0]
    z = [Fr(float(v)) for v in res.codes[0]]
    terms = sum((abs(Fr(float(x[i]))) + sum(abs(z[j] * Fr(float(D[j, i])))
                                             for j in range(len(z)))) ** 2
                for i in range(len(x))) / 2 + Fr(float(lmbd)) * sum(map(abs, z))
    F_exact = ref.lasso_objective_exact(x, D, lmbd, res.codes[0])
    if np.isfinite(F):
        eps = Fr(float(np.finfo(X.dtype).eps))
        assert abs(Fr(float(F)) - F_exact) <= Fr(2.0**-48) * terms + eps * F_exact \
            + Fr(float(np.finfo(X.dtype).smallest_subnormal)), \
            (F, F_exact)


# ---------------------------------------------------------------------------
# dates and durations: refused, naming the argument, wherever numbers are taken
# ---------------------------------------------------------------------------

def _time_calls():
    """{(function, argument): (shape of the argument or None for a scalar,
    call(value))}, every other argument valid (5 samples, 6 atoms, 4
    features)."""
    import fastlista as fl
    rng = np.random.default_rng(0)
    X, D, Z = (rng.standard_normal(s) for s in ((5, 4), (6, 4), (5, 6)))
    calls = {}
    for func in (fl.duality_gap, fl.lasso_objective):
        calls[func.__name__, "X"] = ((5, 4), lambda v, f=func: f(v, D, 0.1, Z))
        calls[func.__name__, "D"] = ((6, 4), lambda v, f=func: f(X, v, 0.1, Z))
        calls[func.__name__, "Z"] = ((5, 6), lambda v, f=func: f(X, D, 0.1, v))
        calls[func.__name__, "lmbd"] = ((5,), lambda v, f=func: f(X, D, v, Z))
    calls.update({
        ("solve_lasso", "X"): ((5, 4), lambda v: solve_lasso(v, D, 0.1)),
        ("solve_lasso", "D"): ((6, 4), lambda v: solve_lasso(X, v, 0.1)),
        ("solve_lasso", "lmbd"): ((5,), lambda v: solve_lasso(X, D, v)),
        ("solve_lasso", "Z0"): ((5, 6), lambda v: solve_lasso(X, D, 0.1, Z0=v)),
        ("solve_lasso", "tol"): (None, lambda v: solve_lasso(X, D, 0.1, tol=v)),
        ("solve_lasso", "max_iter"): (None, lambda v: solve_lasso(X, D, 0.1, max_iter=v)),
        ("lambda_max", "X"): ((5, 4), lambda v: fl.lambda_max(v, D)),
        ("lambda_max", "D"): ((6, 4), lambda v: fl.lambda_max(X, v)),
        ("lasso_gradient", "X"): ((5, 4), lambda v: fl.lasso_gradient(v, D, Z)),
        ("lasso_gradient", "Z"): ((5, 6), lambda v: fl.lasso_gradient(X, D, v)),
        ("soft_thresholding", "U"): ((5, 6), lambda v: fl.soft_thresholding(v, 0.1)),
        ("soft_thresholding", "threshold"): ((6,), lambda v: fl.soft_thresholding(Z, v)),
        ("lipschitz", "D"): ((6, 4), lambda v: fl.lipschitz(v)),
        ("lipschitz", "tol"): (None, lambda v: fl.lipschitz(D, np.ones(6, bool), tol=v)),
    })
    return calls


TIME_CALLS = _time_calls()


@st.composite
def time_arguments(draw):
    """(function, argument, value): dates or durations (of a drawn unit,
    with a NaT or not) as a datetime64 / timedelta64 array, an object array
    or a list of their NumPy scalars, or one scalar (0-d array or not)."""
    key = draw(st.sampled_from(sorted(TIME_CALLS)))
    shape, _ = TIME_CALLS[key]
    kind = draw(st.sampled_from(["datetime64", "timedelta64"]))
    unit = draw(st.sampled_from(["D", "h", "s", "ms", "ns"]))
    size = 1 if shape is None else int(np.prod(shape))
    start = draw(st.integers(0, 10**6))
    values = np.arange(start, start + size).astype(f"{kind}[{unit}]")
    if draw(st.booleans()):
        values[draw(st.integers(0, size - 1))] = np.array("NaT", values.dtype)
    if shape is None:
        value = values[0] if draw(st.booleans()) else values.reshape(())
    else:
        value = values.reshape(shape)
        form = draw(st.sampled_from(["array", "object", "list"]))
        if form != "array":
            obj = np.empty(shape, dtype=object)
            obj.flat[:] = list(value.flat)
            value = obj if form == "object" else obj.tolist()
    return key, value


@FUZZ
@given(drawn=time_arguments())
def test_fuzz_dates_and_durations_are_refused_by_name(drawn):
    """NumPy takes a date as its count of days (or seconds...) since 1970, a
    duration as its count of units, and a missing NaT as -2**63: none is a
    number fastlista may use. Each is refused by a TypeError
    (``InvalidParameterError`` for a parameter) that names the argument."""
    (func, name), value = drawn
    with pytest.raises(TypeError) as info:
        TIME_CALLS[func, name][1](value)
    message = str(info.value)
    assert (f"({name} has dtype" in message or f"{name} is an object array" in message
            or f"'{name}' parameter" in message), message
