"""The Lasso toolkit: objective, gradient, lambda_max, duality gap, prox.

For one signal x (a row of X) and a dictionary D of shape (n_atoms,
n_features), the Lasso objective is

    F_x(z) = 1/2 ||x - z D||^2 + lmbd ||z||_1.

With B = D D^T and c = x D^T, the gradient of the smooth part is z B - c,
lambda_max(x) = ||c||_inf is the smallest lmbd for which z = 0 is optimal, and
the duality gap of z with the dual point theta = r / max(lmbd, ||r D^T||_inf),
r = x - z D, certifies its accuracy:

    gap = F_x(z) - (1/2 ||x||^2 - 1/2 ||x - lmbd theta||^2) >= 0,

which is 0 exactly at the optimum.

Objective and gap come from one compiled certificate (``_kernels/_certify``),
in double precision whatever the dtype, the one gap formula of the package;
``solve_lasso`` certifies its results with the same code. Extreme scales are
handled exactly: each sample x is divided by a power of two near max|x| and
D by one near max|D| when they leave the range where squares are safe
(``Scaled``), the codes by the matching power of two, and the results
multiplied back: every step is exact in floating point, so the value is
that of the unscaled problem.
"""
from dataclasses import dataclass

import numpy as np

from ._kernels import _certify, _prox, _solvers
from ._threads import kernel_threads
from ._validation import (_common_dtype, as_array, check_array, check_bool, check_dense,
                          check_lmbd, check_real, check_X_D, holds_bool, short_repr)

__all__ = ["lasso_objective", "lasso_gradient", "lambda_max", "duality_gap",
           "soft_thresholding"]

#: Exponents of two kept unscaled, per dtype: inside, sums of squares of a
#: few million terms can neither overflow nor lose the data to underflow.
SCALE_LIMIT = {np.dtype(np.float64): 100, np.dtype(np.float32): 30}
#: A lmbd scaled beyond this (above every lambda_max of scaled data) is
#: clipped to it: the zero code and its certificate are the same.
_LMBD_CAP = 1e300


def _check_codes(Z, X, D, name="Z", is_1d=False):
    """Validate codes against a validated (X, D): a 2-D array cast to their
    dtype (for warm starts, whose rounding does no harm; codes to evaluate
    go through :func:`_check_evaluated`). ``is_1d``: the caller's X was one
    sample, 1-D (promoted to a row in X)."""
    given = Z
    Z = check_array(Z, name, dtype=X.dtype, allow_1d=True, min_features=0)
    if Z.shape != (X.shape[0], D.shape[0]):
        # the shapes the caller passed (a 1-D X or Z is one row here)
        expected = (f"(n_atoms,) = {(D.shape[0],)}" if is_1d else
                    f"(n_samples, n_atoms) = {(X.shape[0], D.shape[0])}")
        x_shape = X.shape[1:] if is_1d else X.shape
        raise ValueError(
            f"{name} must have shape {expected} to match X {x_shape} and D {D.shape}; "
            f"got {name}.shape={np.shape(given)}.")
    return Z


def _check_evaluated(X, D, Z):
    """Validate codes to evaluate, with their problem: ``X, D, Z, is_1d`` in
    the common dtype of the three (float64 codes of a float32 problem are
    evaluated in float64, never rounded to float32 first)."""
    Z = as_array(Z, "Z")
    X, D, is_1d = check_X_D(X, D, allow_no_atoms=True)
    if _common_dtype(X, Z) != X.dtype:
        X, D = X.astype(np.float64), D.astype(np.float64)
    return X, D, _check_codes(Z, X, D, is_1d=is_1d), is_1d


def round_up(values, dtype):
    """float64 ``values`` in ``dtype``, rounded up where the cast to nearest
    went below: a bound from above (a duality gap) stays one in float32."""
    out = values.astype(dtype)
    if out.dtype != values.dtype:
        low = out < values
        out[low] = np.nextafter(out[low], np.inf)
    return out


def _squeeze(out, is_1d):
    return out[0] if is_1d else out


# ---------------------------------------------------------------------------
# exact power-of-two scaling
# ---------------------------------------------------------------------------

def _top_exponent(A, axis=None):
    """e with 2**(e - 1) <= max|A| < 2**e (np.frexp's), 0 where A is all 0."""
    top = np.maximum(A.max(axis=axis, initial=0.0), -A.min(axis=axis, initial=0.0))
    return np.frexp(top)[1].astype(np.int64)


def _shift(e, limit):
    """e - 1 where |e - 1| > limit, else 0: 2**(e - 1) is at most the data's
    top, so it is representable in the data's own dtype, and the data
    divided by it lie in [-2, 2]."""
    return np.where(np.abs(e - 1) > limit, e - 1, 0)


def check_atom_range(D, eb, name="D", widen="D"):
    """Raise ValueError when a non-zero atom of D, scaled by 2**-eb, has its
    largest entry below 2**(minexp + nmant) (float64: 2**-970, float32:
    2**-103); the message calls D ``name``, and advises float32 callers to
    pass ``widen`` in float64 (the argument whose dtype sets the solve's).

    Below that, its entries are subnormal or 0 and its products with the
    residual lose their digits: an atom 1e400 times smaller than the largest
    became all 0, and the solvers returned codes 0 certified with a gap of
    0 where F - F* was 80 % of 1/2 ||x||^2. An atom down to the limit keeps
    its largest entry normal, and its entries below 2**-nmant of that are
    rounded by at most its own relative precision.
    """
    info = np.finfo(D.dtype)
    floor = int(info.minexp) + int(info.nmant)
    eatom = _top_exponent(D, axis=1)
    bad = np.any(D != 0, axis=1) & (eatom - eb - 1 < floor)
    if bad.any():
        top = np.abs(D).max(axis=1)
        i = int(np.flatnonzero(bad)[np.argmin(top[bad])])
        raise ValueError(
            f"{name}'s atoms span too wide a range of magnitudes for {D.dtype}: its "
            f"largest entry is {top.max():.3g} and atom {i}'s largest is {top[i]:.3g}. "
            f"Codes are solved and certified at one scale of {name}, at which that atom "
            f"would fall below 2**{floor}, where {D.dtype} keeps no full precision; "
            f"the span allowed is about 2**{eatom.max() - eb - 1 - floor}. Rescale the "
            f"atoms (unit norm, say: codes scale inversely)"
            + (f" or pass {widen} in float64." if D.dtype == np.float32 else "."))


def _dictionary_exponent(D, limit):
    """eb: D in units of 2**eb has its largest entry within 2**+-limit (0
    where it already is)."""
    return int(_shift(int(_top_exponent(D)), limit))


def check_atom_span(D, name="D", widen="D"):
    """``check_atom_range`` at the scale ``Scaled.of`` gives D (D's dtype
    that of the data): where a public function takes D under another
    name, the error names it (``name``, ``widen``)."""
    check_atom_range(D, _dictionary_exponent(D, SCALE_LIMIT[D.dtype]), name, widen)


@dataclass
class Scaled:
    """A problem in scaled units: x 2**-ea_i, D 2**-eb, lmbd 2**-(ea_i + eb),
    codes z 2**(eb - ea_i).

    Every conversion is ``np.ldexp``: exact, and 0 stays 0 whatever the
    exponents (a product by a precomputed factor could overflow to inf and
    turn a zero code into NaN).

    Attributes
    ----------
    X, D : ndarray
        The scaled data (the inputs themselves when no scaling is needed).
    ea : ndarray of shape (n_samples,) or None
        Per-sample exponents (None: all 0).
    eb : int
        The dictionary's exponent.
    lost : _Lost or None
        What the scaling lost of samples whose entries span more than the
        dtype (None: nothing).
    D64 : ndarray of float64
        The scaled dictionary in double, exact for float32 D (whose scaling
        in float32 rounds the entries it takes among the subnormals): the
        one the correlations, the Gram matrix and the certificate use.
    """

    X: np.ndarray
    D: np.ndarray
    ea: np.ndarray
    eb: int
    lost: "_Lost" = None
    D64: np.ndarray = None

    @classmethod
    def of(cls, X, D, Z=None, lmbd=None, check_atoms=True):
        """The scaling of (X, D), or, with codes Z and their lmbd to certify,
        of the whole objective.

        ``check_atoms``: refuse a D whose non-zero atoms span more than one
        scale holds (``check_atom_range``); ``lipschitz``, which computes
        small atoms' supports at their own scale, does without.

        With codes, each sample's unit is the largest of max|x|, max_j |z_j|
        max|d_j| (the largest term of r = x - z D: a huge warm start, or a
        large code on a small atom) and sqrt(lmbd ||z||_1): every term of
        the gap is then of order one or less in scaled units, nothing
        overflows, and what underflows is below the rounding of those terms.
        The scaled codes z 2**(eb - ea) are kept within 2**1000 (a code on a
        zero atom counts in lmbd ||z||_1 only, which ``lmbd_l1`` computes
        from the codes themselves).
        """
        limit = SCALE_LIMIT[X.dtype]
        ex = _top_exponent(X, axis=1)
        eb = _dictionary_exponent(D, limit)
        if check_atoms:
            check_atom_range(D, eb)
        if Z is None or not Z.size:
            ea = _shift(ex, limit)
        else:
            big = np.iinfo(np.int64).max // 4
            nz = Z != 0
            anz = nz.any(axis=1)
            ez = np.frexp(np.abs(Z))[1].astype(np.int64)
            ezmax = np.where(nz, ez, -big).max(axis=1)
            eatom = _top_exponent(D, axis=1)                   # per atom
            atom = nz & np.any(D != 0, axis=1)
            unit = np.where(np.any(X != 0, axis=1), ex, -big)
            unit = np.maximum(unit, np.where(atom, ez + eatom, -big).max(axis=1))
            if lmbd is not None:
                lm = np.broadcast_to(np.asarray(lmbd, dtype=np.float64), (X.shape[0],))
                el = np.frexp(lm)[1].astype(np.int64)
                el1 = ezmax + int(np.ceil(np.log2(max(Z.shape[1], 1)))) + 1
                unit = np.where(anz & (lm > 0),
                                np.maximum(unit, -((-(el + el1)) // 2)), unit)
            ea = np.where(unit > -big, _shift(unit, limit), 0)
            ea = np.maximum(ea, np.where(anz, ezmax + eb - 1000, -big))
        Xs, lost = X, None
        if not ea.any():
            ea = None
        else:
            Xs = np.ldexp(X, -ea[:, None]).astype(X.dtype, copy=False)
        # (float32 D scaled in double too: exactly, where float32 rounds the
        # entries it takes among its subnormals)
        D64 = D.astype(np.float64, copy=False)
        if eb:
            D64 = np.ldexp(D64, -eb)
            D = D64 if D.dtype == np.float64 else np.ldexp(D, -eb).astype(D.dtype)
        elif D.dtype == np.float64:
            D64 = D
        if ea is not None and ea.max() > 0:
            lost = _Lost.of(X, Xs, ea, D64)
        return cls(Xs, D, ea, eb, lost, D64)

    @property
    def identity(self):
        return self.ea is None and self.eb == 0

    def rows(self, idx):
        """The same scaling restricted to some samples."""
        return Scaled(self.X[idx], self.D, None if self.ea is None else self.ea[idx],
                      self.eb, None if self.lost is None else self.lost.rows(idx), self.D64)

    def _shift(self, sign_a, sign_b):
        ea = 0 if self.ea is None else self.ea
        return np.broadcast_to(sign_a * ea + sign_b * self.eb, (self.X.shape[0],))

    def lmbd(self, lmbd):
        """Per-sample lmbd in scaled units, float64 (n_samples,)."""
        lm = np.broadcast_to(np.asarray(lmbd, dtype=np.float64), (self.X.shape[0],))
        if self.identity:
            return np.ascontiguousarray(lm)
        with np.errstate(over="ignore", under="ignore"):
            return np.minimum(np.ldexp(lm, self._shift(-1, -1)), _LMBD_CAP)

    def codes_in(self, Z):
        """Codes in scaled units: z 2**(eb - ea) (exact; a copy when scaled).

        float32 codes come back in float64 when scaled: scaled units may
        leave float32's range where the codes themselves did not.
        """
        if self.identity:
            return Z
        with np.errstate(over="ignore", under="ignore"):
            return np.ascontiguousarray(
                np.ldexp(Z.astype(np.float64), self._shift(-1, 1)[:, None]))

    def codes_out(self, Z):
        """Codes in the caller's units: z 2**(ea - eb) (exact unless the
        result leaves the float range: callers check)."""
        if self.identity:
            return Z
        with np.errstate(over="ignore", under="ignore"):
            return np.ldexp(Z, self._shift(1, -1)[:, None]).astype(Z.dtype, copy=False)

    def lmbd_l1(self, lmbd, Z):
        """lmbd ||z||_1 of caller's codes, in scaled units (float64 (N,))
        (``_lmbd_l1``)."""
        return _lmbd_l1(lmbd, Z, 0 if self.ea is None else 2 * self.ea)

    def energy_out(self, v):
        """Objectives in the caller's units: v 2**(2 ea) (inf beyond the float
        range: the value itself is not representable; gaps: ``gap_out``)."""
        if self.ea is None:
            return v
        e = 2 * self.ea.reshape((-1,) + (1,) * (np.ndim(v) - 1))
        with np.errstate(over="ignore"):
            return np.ldexp(v, e)

    def gap_in(self, gap, Z):
        """Gaps of the codes ``Z`` (scaled units) raised by the terms of the
        entries the scaling lost (``_Lost``), in scaled units, rounded up:
        the gaps the convergence test reads."""
        if self.lost is None:
            return gap
        return _add_up(gap, self.lost.gap_terms(Z, self.ea, 2 * self.ea, len(gap)))

    def energy_up(self, v):
        """``energy_out`` rounded up: a bound (a gap) landing among the
        subnormals, or below them, stays one."""
        if self.ea is None:
            return v
        return _ldexp_up(v, 2 * self.ea.reshape((-1,) + (1,) * (np.ndim(v) - 1)))

    def gap_out(self, gap, Z):
        """Gaps of the codes ``Z`` (scaled units) in the caller's units,
        rounded up (``energy_up``) and raised by the terms of the entries
        the scaling lost; inf beyond the float range."""
        out = self.energy_up(gap)
        if self.lost is None:
            return out
        return _add_up(out, self.lost.gap_terms(Z, self.ea, np.zeros_like(self.ea),
                                                len(out)))

    def lambda_out(self, v):
        """A lmbd in scaled units back in the caller's, v 2**(ea + eb), rounded
        up: a bound from above stays one where it lands among the
        subnormals, or below them (``np.ldexp`` rounds those to nearest, or
        to 0)."""
        if self.identity:
            return v
        return _ldexp_up(v, self._shift(1, 1))


def _ldexp_up(v, e):
    """v 2**e rounded up (``np.ldexp`` rounds a result among the subnormals,
    or below them, to nearest or to 0): a bound from above stays one."""
    with np.errstate(over="ignore", under="ignore"):
        out = np.ldexp(v, e)
        # (scaling a subnormal back up is exact: the test is exact)
        low = np.ldexp(out, -e) < v
    out[low] = np.nextafter(out[low], np.inf)
    return out


def _lmbd_l1(lmbd, Z, e=0, up=False):
    """lmbd ||z||_1 times 2**-e (e per sample or 0), float64 (N,), from
    mantissas and exponents: its factors times 2**-e may leave the float
    range where the product does not (codes on a subnormal dictionary).
    ``up``: rounded up (a bound from above)."""
    lm = np.broadcast_to(np.asarray(lmbd, dtype=np.float64), (Z.shape[0],))
    az = np.abs(Z).astype(np.float64)
    ez = np.frexp(az.max(axis=1, initial=0.0))[1]
    with np.errstate(over="ignore", under="ignore"):
        mz = np.ldexp(az, -ez[:, None])                      # sums in [0.5, m]
        ml, el = np.frexp(lm)
        if not up:
            return np.ldexp(ml * mz.sum(axis=1), el + ez - e)
        v = ml * _sum_up(mz)
        return _ldexp_up(np.where(v > 0, np.nextafter(v, np.inf), v), el + ez - e)


def _add_up(a, b):
    """a + b rounded up where b > 0 (float64 arrays of the same shape)."""
    with np.errstate(over="ignore"):
        total = a + b
    return np.where(b > 0, np.nextafter(total, np.inf), total)


def _sum_up(A, axis=1):
    """Sums of non-negative float64 entries along ``axis``, rounded up (the
    rounding of a sum of n terms is at most (n - 1) eps times it)."""
    n = A.shape[axis]
    total = A.sum(axis=axis) * (1.0 + (n + 2) * np.finfo(np.float64).eps)
    return np.where(total > 0, np.nextafter(total, np.inf), total)


def _split(X, Xs, ea):
    """(kept, vanished), float64: the part of X its scaling Xs = X 2**-ea
    (rounded to the dtype) keeps, Xs 2**ea, and the rest, X minus it (both
    exact)."""
    with np.errstate(under="ignore"):
        kept = np.ldexp(Xs.astype(np.float64), ea[:, None])
    return kept, X.astype(np.float64) - kept


@dataclass
class _Lost:
    """The entries a sample's scaling took below the dtype's range.

    A sample whose entries span more than its dtype (float32 entries 2**-100
    and 2**100; float64 ones 2**-600 and 2**500) is solved and certified
    from what its scaling keeps, x_k = (x 2**-ea rounded to the dtype)
    2**ea; the rest, x_v = x - x_k (exact), vanished or lost digits. The
    dual point theta_k of the kept residual r_k = x_k - z D is feasible for
    x too (the dual constraint does not involve x), and with s_k the
    maximum it is scaled by,

        gap_x(z, theta_k) = gap_k + (1 - lmbd / s_k) <r_k, x_v> + 1/2 ||x_v||^2,
        <r_k, x_v> = <x_k, x_v> - z . (x_v D^T),

    so gap_k plus a bound on the other two terms bounds F_x(z) - min F_x
    from above.

    x_v is taken at its own power of two, 2**e (its entries in [2**-1, 1)
    there: x_v~), the codes and atoms at the scaled units' (z~, d~_j): the
    bound on the gap's terms is

        2**(2 e) sq + 2**(e + ea) sum_j |z~_j| C_j,

    with ``sq`` >= 1/2 ||x_v~||^2 + sum_i |x_k~,i x_v~,i| (x_k~ = x_k 2**-e;
    an entry that lost digits is within 2**54 of what it lost) and ``C_j``
    >= |x_v~ . d~_j|, both computed in double and rounded up. The exact
    terms are below the rounding of the kept ones by more than the dtype's
    range: they matter only where the kept gap is 0.

    Attributes
    ----------
    samples : ndarray of int, shape (n_lost,)
        The samples that lost entries.
    e : ndarray of int64, shape (n_lost,)
    sq : ndarray of float64, shape (n_lost,)
    C : ndarray of float64, shape (n_lost, n_atoms)
        0 on zero atoms.
    """

    samples: np.ndarray
    e: np.ndarray
    sq: np.ndarray
    C: np.ndarray

    @classmethod
    def of(cls, X, Xs, ea, D):
        """From the data X, their scaling Xs = X 2**-ea (rounded to the
        dtype) and the scaled dictionary D; None when nothing was lost."""
        # only a row scaled down can lose entries, and only those its scaling
        # takes below the normal range (where Xs is subnormal or 0)
        # (by blocks of rows, in cache: no copy of the data)
        tiny = np.finfo(Xs.dtype).tiny
        hit = np.zeros(X.shape[0], dtype=bool)
        for start in range(0, X.shape[0], 1024):
            rows = slice(start, start + 1024)
            if np.any(ea[rows] > 0):
                hit[rows] = np.any((np.abs(Xs[rows]) < tiny) & (X[rows] != 0), axis=1)
        down = np.flatnonzero(hit & (ea > 0))
        kept, vanished = _split(X[down], Xs[down], ea[down])
        hit = np.any(vanished != 0, axis=1)
        if not hit.any():
            return None
        down, kept, vanished = down[hit], kept[hit], vanished[hit]
        e = _top_exponent(vanished, axis=1)
        V = np.ldexp(vanished, -e[:, None])
        with np.errstate(over="ignore"):     # (entries kept whole: not used)
            K = np.where(vanished != 0, np.ldexp(kept, -e[:, None]), 0.0)
        C = np.zeros((len(down), D.shape[0]))
        atoms = np.any(D != 0, axis=1)
        if atoms.any():
            C[:, atoms] = _correlations_up(V, D[atoms])[1]
        return cls(down, e, _sum_up(0.5 * V * V + np.abs(K * V)), C)

    def rows(self, idx):
        """The same for the samples ``idx`` (an index array), renumbered."""
        idx = np.asarray(idx)
        at = np.searchsorted(self.samples, idx)          # (samples: sorted)
        keep = at < len(self.samples)
        keep[keep] = self.samples[at[keep]] == idx[keep]
        at = at[keep]
        return _Lost(np.flatnonzero(keep), self.e[at], self.sq[at], self.C[at])

    def gap_terms(self, Z, ea, s, n_samples):
        """Bounds from above of the lost terms of the gaps of the scaled codes
        Z, times 2**-s (``ea``, ``s`` per sample: s = 0 for the caller's
        units, 2 ea for scaled ones), float64 (n_samples,)."""
        out = np.zeros(n_samples)
        i = self.samples
        P = np.abs(Z[i]).astype(np.float64) * self.C
        zc = _sum_up(P)
        # (products below the normal range are rounded to a multiple of the
        # smallest subnormal: at most one short each)
        small = (P < np.finfo(np.float64).tiny) & (self.C > 0) & (Z[i] != 0)
        zc += small.sum(axis=1) * np.finfo(np.float64).smallest_subnormal
        out[i] = _add_up(_ldexp_up(self.sq, 2 * self.e - s[i]),
                         _ldexp_up(zc, self.e + ea[i] - s[i]))
        return out


# ---------------------------------------------------------------------------
# the certificate
# ---------------------------------------------------------------------------

def certify(S, lmbd, Z, n_threads=1, C=None, B=None, positive=False, lz=None):
    """Objective and duality gap of codes, in scaled units (float64 arrays).

    Parameters
    ----------
    S : Scaled
        The problem in scaled units.
    lmbd : ndarray of shape (n_samples,)
        lmbd in scaled units (``S.lmbd``).
    positive : bool
        Codes constrained >= 0: the dual constraint is one-sided.
    Z : ndarray of shape (n_samples, n_atoms)
        Codes in scaled units (``S.codes_in``), of the dtype of ``S.X`` or
        float64.
    C, B : ndarray, optional
        ``S.X @ S.D.T`` and ``S.D @ S.D.T`` when already computed (used for
        float64 data only).
    lz : ndarray of shape (n_samples,), optional
        lmbd ||z||_1 in scaled units (``S.lmbd_l1``), else computed from Z.

    Returns
    -------
    primal, gap : ndarray of shape (n_samples,)
    """
    N = S.X.shape[0]
    primal, gap = np.empty(N), np.empty(N)
    D64 = np.ascontiguousarray(S.D64)
    empty = np.empty((0, 0))
    use_cb = C is not None and B is not None and S.X.dtype == np.float64
    # (float32 data with float64 codes: the data widened, exactly)
    X = S.X if Z.dtype == S.X.dtype else S.X.astype(Z.dtype)
    _certify.certify(X, Z, D64, lmbd, np.empty(0) if lz is None else lz,
                     C if use_cb else empty, B if use_cb else empty, positive,
                     primal, gap, n_threads)
    return primal, gap


#: A scaled objective below this (its terms of order 1 cancelled beyond it)
#: is taken again in the caller's units, at its own scale.
_CANCELLED = 2.0**-900


def _terms(X, D, lmbd, Z, positive, func):
    """Validated inputs → (objective, gap) in the caller's units, float64,
    on every core (BLAS on one thread). Codes with a negative entry when
    ``positive`` are infeasible: objective and gap inf."""
    S = Scaled.of(X, D, Z, lmbd)
    Zs = S.codes_in(Z)
    with kernel_threads(None, func) as n_threads:
        primal, gap = certify(S, S.lmbd(lmbd), Zs, n_threads, positive=positive,
                              lz=S.lmbd_l1(lmbd, Z))
    objective, gap = S.energy_out(primal), S.gap_out(gap, Zs)
    # (where the samples lost entries, the objective without them is off by
    # their share: it is formed again too)
    rows, F, F_up, cancelled = own_scale_objectives(S, primal, X, D, lmbd, Z,
                                                    lost_too=True)
    objective[rows] = F
    gap[rows[cancelled]] = np.maximum(gap[rows[cancelled]], F_up[cancelled])
    if positive:
        infeasible = np.any(Z < 0, axis=1)
        objective[infeasible] = gap[infeasible] = np.inf
    return objective, gap


def own_scale_objectives(S, primal, X, D, lmbd, Z, lost_too=False):
    """The objectives the certificate's units cannot hold, formed again in
    the caller's units: ``(rows, F, F_up, cancelled)``.

    The certificate works in the unit of the objective's largest terms (x,
    z D, lmbd ||z||_1). Where they cancel beyond 2**-900 of it (``primal``,
    the scaled objective, below ``_CANCELLED``: x = z = 2**600 with lmbd =
    2**-1000, whose lmbd ||z||_1 = 2**-400 underflowed there, read F = 0)
    and, with ``lost_too``, where the scaling lost entries of x, F is
    formed again at the residual's own scale; where the terms cancelled
    (``cancelled``, per returned row), F rounded up (``F_up``) also bounds
    F - min F (F >= 0), a floor for the gap. X, D, lmbd, Z in the caller's
    units; rows whose F is not finite there are left out.
    """
    none = np.empty(0, dtype=np.intp)
    if S.ea is None:
        return none, np.empty(0), np.empty(0), np.empty(0, dtype=bool)
    cancelled = primal < _CANCELLED
    redo = cancelled.copy()
    if lost_too and S.lost is not None:
        redo[S.lost.samples] = True
    redo = np.flatnonzero(redo & np.isfinite(primal))
    lm = lmbd[redo] if np.ndim(lmbd) else lmbd
    F, F_up = _objective_own_scale(X[redo], D, lm, Z[redo])
    ok = np.isfinite(F) & np.isfinite(F_up)
    return redo[ok], F[ok], F_up[ok], cancelled[redo[ok]]


def _objective_own_scale(X, D, lmbd, Z):
    """F(z) in the caller's units from r = x - z D formed there in double
    (inf or NaN where a product leaves the float range), 1/2 ||r||^2 taken
    at r's own power of two: ``(F, F rounded up)``, float64 (n_rows,)."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        R = X.astype(np.float64) - Z.astype(np.float64) @ D.astype(np.float64)
        er = _top_exponent(np.where(np.isfinite(R), R, 0.0), axis=1)
        Rs = np.ldexp(R, -er[:, None])
        q = 0.5 * np.einsum("ij,ij->i", Rs, Rs)
    q_up = q * (1.0 + (R.shape[1] + 2) * np.finfo(np.float64).eps)
    q_up = np.where(q_up > 0, np.nextafter(q_up, np.inf), q_up)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        F = np.ldexp(q, 2 * er) + _lmbd_l1(lmbd, Z)
        F_up = _add_up(_ldexp_up(q_up, 2 * er), _lmbd_l1(lmbd, Z, up=True))
    return F, F_up


# ---------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------

def lasso_objective(X, D, lmbd, Z, positive=False):
    """Lasso objective of each sample.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or (n_features,)
        Signals, one per row.
    D : array-like of shape (n_atoms, n_features)
        Dictionary, one atom per row.
    lmbd : float or array-like of shape (n_samples,)
        Regularisation level, >= 0, shared or one per sample.
    Z : array-like of shape (n_samples, n_atoms) or (n_atoms,)
        Codes.
    positive : bool, default=False
        The Lasso over non-negative codes: a code with a negative entry is
        infeasible (objective inf).

    Returns
    -------
    objective : ndarray of shape (n_samples,), or a NumPy scalar for a 1-D x
        ``0.5 * ||x - z D||^2 + lmbd * ||z||_1`` for each row, computed in
        double precision, in the dtype of the inputs (inf when the value
        exceeds the float range); where x - z D cancels beyond 2**-900 of
        the largest terms, it is formed again at its own scale.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista import lasso_objective
    >>> D = np.eye(2)
    >>> float(lasso_objective([1.0, 0.0], D, 0.5, [0.5, 0.0]))
    0.375
    """
    func = "lasso_objective"
    X, D, Z, is_1d = _check_evaluated(X, D, Z)
    lmbd = check_lmbd(lmbd, X.shape[0], func)
    positive = check_bool(positive, "positive", func)
    with np.errstate(over="ignore"):
        out = _terms(X, D, lmbd, Z, positive, func)[0].astype(X.dtype)
    return _squeeze(out, is_1d)


def lasso_gradient(X, D, Z):
    """Gradient of the smooth part, ``Z D D^T - X D^T``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or (n_features,)
    D : array-like of shape (n_atoms, n_features)
    Z : array-like of shape (n_samples, n_atoms) or (n_atoms,)

    Returns
    -------
    grad : ndarray of shape (n_samples, n_atoms) or (n_atoms,)
        In the dtype of the inputs; computed with x, D and z scaled by exact
        powers of two (as the objective is), so that no intermediate term
        overflows or underflows: inf only where the gradient itself
        exceeds the float range.
    """
    X, D, Z, is_1d = _check_evaluated(X, D, Z)
    S = Scaled.of(X, D, Z)
    # in double, rounded once to the inputs' dtype (float32 products summed
    # in float32 were off by 1e-6 relatively at 100 features, 5e-6 at 1e5)
    Zs, Ds, Xs = (np.asarray(a, dtype=np.float64) for a in (S.codes_in(Z), S.D64, S.X))
    # (z D - x) D^T has the units of lmbd: 2**(ea + eb) times its scaled value
    out = (Zs @ Ds - Xs) @ Ds.T
    with np.errstate(over="ignore"):            # beyond the float range: inf
        if not S.identity:
            out = np.ldexp(out, S._shift(1, 1)[:, None])
        if S.lost is not None:
            # entries the scaling took below the dtype's range (a sample
            # spanning more than it): their share, - x_v D^T, at their own
            # scale (x = [2**-100, 2**100] float32 gave 0 for -2**-100);
            # where the rest is already beyond the float range, it stays so
            i = S.lost.samples
            _, V = _split(X[i], S.X[i], S.ea[i])
            e = _top_exponent(V, axis=1)[:, None]
            share = np.ldexp(np.ldexp(V, -e) @ Ds.T, e + S.eb)
            add = np.isfinite(out[i]) & np.isfinite(share)
            out[i] -= np.where(add, share, 0.0)
        out = out.astype(X.dtype, copy=False)
    return _squeeze(out, is_1d)


def lambda_max(X, D, positive=False):
    """Smallest regularisation for which the zero code is optimal.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or (n_features,)
    D : array-like of shape (n_atoms, n_features)
    positive : bool, default=False
        For the Lasso over non-negative codes: ``max(x D^T)_+`` (0 when no
        atom correlates positively with x: the solution is then 0 for every
        lmbd >= 0).

    Returns
    -------
    lmbd_max : ndarray of shape (n_samples,), or a NumPy scalar for a 1-D X
        ``||x D^T||_inf`` per sample (``max(x D^T)_+`` with ``positive``),
        in the problem's dtype (float32 when X and D both are, float64
        otherwise), rounded up: a bound from above of the exact value,
        within a few ulps of it (the largest correlations are recomputed to
        about twice double precision where their rounding could matter,
        as when the products cancel; the entries of a sample spanning more
        than its dtype, which its scaling takes below the dtype's range,
        are bounded at their own scale), and never below what the solvers
        compute. For ``lmbd >= lmbd_max`` the Lasso solution is exactly 0,
        and every solver returns exactly zero codes.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista import lambda_max
    >>> lambda_max(np.array([[3.0, -4.0]]), np.eye(2))
    array([4.])
    """
    X, D, is_1d = check_X_D(X, D, allow_no_atoms=True)
    positive = check_bool(positive, "positive", "lambda_max")
    S = Scaled.of(X, D)
    # x D^T in double (exact products of float32 data), its max certified
    # (at least every exact |x.d_j|, and at least the computed max) and
    # rounded up to the problem's dtype: the solution is 0 at lmbd = lambda_max, and
    # no solver, whether it iterates on the double correlations or on their
    # float32 rounding (never above the rounded-up max), finds a non-zero
    # code there
    with kernel_threads(None, "lambda_max") as n_threads:
        _, top = correlations(S, n_threads, double=True, positive=positive,
                              certified=True)
    with np.errstate(over="ignore"):            # beyond float32's range: inf
        out = round_up(S.lambda_out(top), S.X.dtype)
    if S.lost is not None and D.shape[0]:
        # a sample whose entries span more than its dtype: its scaling took
        # the smallest below the dtype's range, where they vanished (or lost
        # digits); their share of x D^T is bounded at their own scale
        wide = S.lost.samples
        kept, vanished = _split(X[wide], S.X[wide], S.ea[wide])
        with np.errstate(over="ignore"):
            out[wide] = np.maximum(out[wide], round_up(
                _wide_lambda_max(kept, vanished, D, positive), out.dtype))
    return _squeeze(out, is_1d)


def _correlations_up(R, D):
    """Bounds from above of r . d_j and |r . d_j| for the rows r of R (any
    magnitudes; float64 arrays of shape (n_rows, n_atoms), in R's units):
    each row taken at its own power of two, its products in double, their
    sums' rounding bounded by (n + 2) eps sum_k |r_k d_jk| (Higham's
    gamma_n, plus an absolute term where products could fall below the
    normal range), and scaled back rounded up."""
    R = R.astype(np.float64)
    er = _top_exponent(R, axis=1)[:, None]
    Rs = np.ldexp(R, -er)
    D64 = D.astype(np.float64)
    f64 = np.finfo(np.float64)
    with np.errstate(under="ignore"):
        C = Rs @ D64.T
        err = (R.shape[1] + 2) * f64.eps * (np.abs(Rs) @ np.abs(D64).T)
    nz_r, nz_d = np.abs(Rs[Rs != 0]), np.abs(D64[D64 != 0])
    if nz_r.size and nz_d.size and nz_r.min() * nz_d.min() < f64.tiny:
        err += R.shape[1] * f64.smallest_subnormal

    def back_up(v):
        # (v rounded up; exact where every product was 0)
        return _ldexp_up(np.where(err > 0, np.nextafter(v, np.inf), v), er)
    return back_up(C + err), back_up(np.abs(C) + err)


def _wide_lambda_max(kept, vanished, D, positive):
    """lambda_max, from above, of samples whose entries span more than their
    dtype: ``kept`` is the part their scaling kept, ``vanished`` the part
    below the dtype's range (``_split``); both are bounded atom by atom at
    their own scale and added rounded up (float64, (n_rows,))."""
    kept, kept_abs = _correlations_up(kept, D)
    lost, lost_abs = _correlations_up(vanished, D)
    with np.errstate(over="ignore"):
        if positive:
            total = np.maximum(kept + lost, 0.0)
        else:
            total = kept_abs + lost_abs
    total = np.where(total > 0, np.nextafter(total, np.inf), 0.0)
    return total.max(axis=1, initial=0.0)


def correlations(S, n_threads, double, positive, certified=False):
    """``(C, top)``: C = X D^T in scaled units, the data of every solve, in
    the dtype of X (in float64 with ``double``), and ``top`` (N,) the
    lambda_max of each row, ``max_j |C_ij|`` (``max(0, max_j C_ij)`` with
    ``positive``; +0.0 when no entry exceeds 0), in C's dtype; with
    ``certified``, raised where needed to a value no exact ``|x.d_j|``
    (``x.d_j``) exceeds, within a few ulps of the largest (products that
    cancel, as 1e16 + 1 - 1e16, lose every digit of C_ij).

    float32 data are multiplied in double (their products are exact there)
    and rounded once, unless ``double``: a correlation that is exactly 0
    stays 0, where a float32 GEMM's fused multiply-adds could leave a
    residue, which an atom of tiny norm would amplify into a huge code.
    ``top`` is taken from the double products block by block while the
    block is in cache (rounding is monotone: the max of the rounded C is
    the rounded max).
    """
    N, m = S.X.shape[0], S.D.shape[0]
    C = np.empty((N, m))
    top = np.empty(N)
    if S.X.dtype == np.float64:
        _solvers.correlations(S.X, S.D, C, n_threads, top=top, positive=positive,
                              certified=certified)
        return C, top
    _solvers.correlations(S.X.astype(np.float64), S.D64, C, n_threads,
                          top=top, positive=positive, certified=certified)
    if double:
        return C, top
    return C.astype(np.float32), top.astype(np.float32)


def duality_gap(X, D, lmbd, Z, positive=False):
    """Duality gap of the codes ``Z``: a certificate of their accuracy.

    With ``r = x - z D`` and the dual point ``theta = r / max(lmbd,
    ||r D^T||_inf)`` (feasible: ``||theta D^T||_inf <= 1``), the gap is
    ``F_x(z) - (0.5 ||x||^2 - 0.5 ||x - lmbd theta||^2)``, where ``lmbd
    theta = r min(1, lmbd / ||r D^T||_inf)`` (r itself when that norm is at
    most lmbd, lmbd = 0 included). It bounds ``F_x(z) - min F_x`` from
    above and is 0 at the optimum. For codes constrained >= 0 the dual
    constraint is one-sided, ``(theta D^T)_j <= 1``, and ``||r D^T||_inf``
    is replaced by ``max_j (r D^T)_j`` (r itself when that maximum is at
    most lmbd, negative ones included). Computed in double
    precision whatever the dtype (r formed directly, never from ``||x||^2 -
    2 z.c + z B z``), at any scale; the same computation certifies every
    result of :func:`fastlista.solve_lasso`.

    The dual point is feasible in exact arithmetic, not only for the
    rounded correlations: ``max_j |r.d_j|`` is the computed maximum raised
    by a bound on its rounding, and where that bound reaches ``lmbd`` the
    candidate atoms' correlations are recomputed by a compensated dot
    product (to about twice double precision). So ``F_x(z) - min F_x <=
    gap`` holds up to the rounding of the two objectives (a relative 1e-16
    of their terms), also where ``lmbd`` is near the rounding of the
    correlations.

    A sample whose entries span more than its dtype (float32 2**-100 next
    to 2**100) is certified from the entries its scaling keeps, with the
    dual point of their residual (feasible for the whole sample), and the
    gap adds a bound, taken at their own scale, on the terms of the
    entries that fell below the dtype's range: it stays a bound from
    above. Where x - z D cancels beyond 2**-900 of the objective's largest
    terms, the gap is at least F_x(z) itself, formed at the residual's own
    scale (F_x(z) >= F_x(z) - min F_x).

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or (n_features,)
    D : array-like of shape (n_atoms, n_features)
    lmbd : float or array-like of shape (n_samples,)
        Regularisation level, >= 0, shared or one per sample.
    Z : array-like of shape (n_samples, n_atoms) or (n_atoms,)
    positive : bool, default=False
        The Lasso over non-negative codes (a code with a negative entry is
        infeasible: gap inf).

    Returns
    -------
    gap : ndarray of shape (n_samples,), or a NumPy scalar for a 1-D x
        Non-negative (negative rounding errors are clipped to 0), in the
        dtype of the inputs (float32: rounded up from double, so that it
        stays a bound); inf when the gap exceeds the float range.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista import duality_gap
    >>> float(duality_gap([1.0, 0.0], np.eye(2), 0.5, [0.5, 0.0]))
    0.0
    """
    func = "duality_gap"
    X, D, Z, is_1d = _check_evaluated(X, D, Z)
    lmbd = check_lmbd(lmbd, X.shape[0], func)
    positive = check_bool(positive, "positive", func)
    with np.errstate(over="ignore"):
        out = round_up(_terms(X, D, lmbd, Z, positive, func)[1], X.dtype)
    return _squeeze(out, is_1d)


def soft_thresholding(U, threshold, positive=False):
    """Soft-thresholding ``sign(u) * max(|u| - threshold, 0)``, elementwise.

    The proximal operator of ``threshold * ||.||_1``. NaN propagates, and the
    output is exactly 0 where ``|u| <= threshold``. With ``positive``, the
    proximal operator of ``threshold * ||.||_1`` plus the indicator of the
    non-negative orthant: ``max(u - threshold, 0)``, exactly 0 where
    ``u <= threshold``.

    Parameters
    ----------
    U : array-like of any shape
        Values to shrink.
    threshold : float or array-like broadcastable to ``U.shape``
        Non-negative thresholds (a scalar, one per atom of shape
        ``(n_atoms,)``, ...).
    positive : bool, default=False
        The one-sided threshold of non-negative codes.

    Returns
    -------
    out : ndarray of the shape of ``U``
        float32 if ``U`` is float32 and ``threshold`` float32 or a scalar
        (rounded to float32), float64 otherwise.

    Examples
    --------
    >>> from fastlista import soft_thresholding
    >>> soft_thresholding([-2.0, 0.5, 3.0], 1.0)
    array([-1.,  0.,  2.])
    >>> soft_thresholding([-2.0, 0.5, 3.0], 1.0, positive=True)
    array([0., 0., 2.])
    """
    positive = check_bool(positive, "positive", "soft_thresholding")
    # (in native byte order: '>f4' is float32)
    U = as_array(check_dense(U, "U"), "U")
    t = as_array(check_dense(threshold, "threshold"), "threshold")
    for arr, name in ((U, "U"), (t, "threshold")):
        check_real(arr, name)
    if holds_bool(threshold, t):
        # a parameter, as lmbd: True is not a threshold of 1
        raise ValueError(f"threshold must be non-negative real numbers; got "
                         f"{short_repr(threshold)}, which holds a bool.")
    # float32 stays float32 when the threshold does not ask for more precision
    single = U.dtype == np.float32 and (t.dtype == np.float32 or t.ndim == 0)
    dtype = np.float32 if single else np.float64
    try:
        U = np.asarray(U, dtype=dtype, order="C")      # (0-d stays 0-d)
        with np.errstate(over="ignore"):    # (a long double beyond it: inf, refused)
            t = t.astype(np.float64)
    except OverflowError:           # an int beyond the float range (object arrays)
        name = "U" if U.dtype == object else "threshold"    # the one not converted
        raise ValueError(f"Input {name} contains a value too large for "
                         f"dtype('{np.dtype(dtype).name}').") from None
    if not np.all(np.isfinite(t)):
        raise ValueError("Input threshold contains NaN or infinity.")
    if np.any(t < 0):
        raise ValueError("threshold must be non-negative.")
    # a threshold above float32's range (1e39 for float32 U) is its largest
    # value: every finite u is within it, and inf - it is inf, as inf - 1e39
    t = np.minimum(t, np.finfo(dtype).max).astype(dtype)
    try:
        shape = np.broadcast_shapes(U.shape, t.shape)
    except ValueError:
        raise ValueError(f"threshold of shape {t.shape} does not broadcast to U of "
                         f"shape {U.shape}.") from None
    if shape != U.shape:
        raise ValueError(f"threshold of shape {t.shape} does not broadcast to U of "
                         f"shape {U.shape}.")
    # the kernel cycles through a period of thresholds: one value, one row,
    # or (for any other broadcast) the full array
    t = t.reshape(-1) if t.ndim == 0 or t.shape == U.shape[-t.ndim:] else \
        np.broadcast_to(t, U.shape).reshape(-1)
    if t.size == 0:
        t = np.zeros(1, dtype)
    out = np.empty_like(U)
    # threads only pay off beyond a few hundred kB: below, one (and no team
    # that a fork() would have to account for)
    n_jobs = None if U.size > 1 << 16 else 1
    with kernel_threads(n_jobs, "soft_thresholding", blas=False) as n_threads:
        _prox.soft_thresholding(U.reshape(-1), np.ascontiguousarray(t), out.reshape(-1),
                                positive, n_threads)
    return out
