"""Batched Lasso solvers sharing one dictionary.

Every sample x (a row of X) gets its own Lasso problem

    min_z F_x(z) = 1/2 ||x - z D||^2 + lmbd ||z||_1,

solved to a certified accuracy: a sample stops when its duality gap is at
most ``tol * 1/2 ||x||^2`` (so ``tol`` is relative to F_x(0)) and leaves the
batch. All samples share the precomputed ``B = D D^T``, ``c = x D^T`` and
Lipschitz constant, and the compiled kernels run them in cache-sized blocks
on several threads.
"""
import warnings
from dataclasses import dataclass

import numpy as np

from ._kernels import _cd, _solvers
from ._kernels._cpu import BLAS_PACKS_SMALL_CALLS
from ._kernels._gemm import GEMM_BLAS, OWN_GEMM
from ._lasso import (Scaled, _check_codes, _ldexp_up, certify, correlations,
                     own_scale_objectives, round_up)
from ._lipschitz import global_lipschitz, shared_gram
from ._threads import kernel_threads
from ._validation import (ConvergenceWarning, InvalidParameterError, caller_stacklevel,
                          check_bool, check_lmbd, check_max_iter, check_option,
                          check_scalar, check_X_D)

__all__ = ["LassoResult", "solve_lasso", "ista", "fista", "oista",
           "backtracking_ista", "coordinate_descent"]

METHODS = ("auto", "ista", "fista", "backtracking", "oista", "cd")
#: the relative gap to which the library solves Lasso problems it poses itself
#: (targets, code steps): float32 codes cannot be certified much below 1e-7
CERTIFIABLE_TOL = {np.dtype(np.float64): 1e-8, np.dtype(np.float32): 1e-6}

#: Iterative methods check the duality gap every GAP_FREQ iterations.
GAP_FREQ = 10
#: Samples per block of the proximal-gradient kernels (fits in L2 cache): 32
#: where the block products go to BLAS's small-matrix kernels (OpenBLAS on
#: AVX-512, _kernels/_cpu.pyx), else 128: where BLAS packs the operands of
#: every call, and through _gemm.h, which packs D, D^T and the Gram matrix
#: once a call (paper shape, lmbd = 0.1, 200 ISTA or FISTA iterations, 11
#: rounds alternating, 128 / 32 rows: 0.95-0.98 of the time through the
#: 64-byte tile, 1.02-1.07 through OpenBLAS's AVX-512 kernels; Intel Xeon).
BLOCK_SIZE = 32 if OWN_GEMM == GEMM_BLAS and not BLAS_PACKS_SMALL_CALLS else 128
#: The proximal-gradient kernels' block GEMMs run through fastlista's GEMM
#: (_kernels/_gemm.pyx) where the networks' do, and ISTA then takes its step
#: inside the second product (see _kernels/_solvers.pyx).
_OWN_GEMM = OWN_GEMM
#: The history of record_history=True may not exceed this many bytes.
MAX_HISTORY_BYTES = 2 * 1024**3
#: A sample a kernel stopped as converged that its certificate refuses
#: (the kernel's O(m) stopping gap and the certificate differ by rounding) is
#: run again from its codes with the kernel's tolerance divided by
#: RETRY_FACTOR, at most RETRIES times.
RETRY_FACTOR = 16
RETRIES = 2


@dataclass(eq=False)
class LassoResult:
    """Solutions of a batch of Lasso problems, with their certificates.

    Results compare by identity, as NumPy arrays cannot be compared to one
    bool; compare their fields (``np.array_equal(a.codes, b.codes)``).

    Attributes
    ----------
    codes : ndarray of shape (n_samples, n_atoms) or (n_atoms,)
        The solutions, of the dtype of the inputs.
    gap : ndarray of shape (n_samples,), or a NumPy scalar for a 1-D x
        Duality gap of each returned code (an upper bound on ``F_x(z) - min
        F_x``): ``duality_gap(X, D, lmbd, codes)``, computed in double
        precision from the returned codes themselves, in their dtype.
    n_iter : ndarray of shape (n_samples,) or int
        Iterations run per sample (epochs over the working set for "cd").
    converged : ndarray of shape (n_samples,) or bool
        Whether ``gap <= tol * 1/2 ||x||^2``, tested where the solver works:
        with x and D scaled by exact powers of two, so that it holds where
        the gap and ``1/2 ||x||^2`` underflow or overflow the dtype (``gap``
        then reads 0 or inf).
    history : dict or None
        With ``record_history=True``, ``"objective"`` and ``"gap"`` arrays of
        shape (n_iter.max() + 1, n_samples) (or (n_iter + 1,) for one 1-D
        sample): the values at iterations 0, 1, ...; a sample that stopped
        keeps its last value, which is its certificate. The others are the
        kernel's, from ``c = x D^T`` and ``g = c - z D D^T`` in the data's
        dtype (in the solver's scaled units: without the share of entries a
        sample's scaling lost, or of terms that cancel below those units):
        float32 ones carry float32's rounding of those, an absolute error
        of a few float32 ulps of 1/2 ||x||^2 (1e-4 of the objective once it
        is below 1e-3 of 1/2 ||x||^2, 7 % of it at 5e-7: enough for ISTA's
        recorded objective to rise); record float64 problems for curves
        below that.
    step_sizes : ndarray or None
        With ``record_history=True`` and method "oista" or "backtracking",
        the step used at each iteration, shape (n_iter.max(), n_samples)
        (NaN after a sample stopped; 0 for a step OISTA undid).
    method : str
        The method that ran ("auto" resolved).
    """

    codes: np.ndarray
    gap: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    history: dict = None
    step_sizes: np.ndarray = None
    method: str = None


#: The method "auto" resolves to: coordinate descent with working sets beat
#: the proximal-gradient family at every lmbd measured on the paper's shape
#: (benchmarks/test_bench_solvers.py): at large lmbd its working sets hold a
#: few atoms, at small lmbd the Newton steps on the support end it in a few
#: epochs.
AUTO_METHOD = "cd"


def solve_lasso(X, D, lmbd, method="auto", tol=1e-8, max_iter=10000, Z0=None,
                record_history=False, n_jobs=None, positive=False):
    """Solve ``min_z 1/2 ||x - z D||^2 + lmbd ||z||_1`` for every row x of X.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or (n_features,)
        Signals, one per row. A 1-D ``X`` is one sample and gives 1-D results.
    D : array-like of shape (n_atoms, n_features)
        Dictionary, one atom per row.
    lmbd : float or array-like of shape (n_samples,)
        Regularisation level (absolute), >= 0: one for all samples, or one
        per sample (``0.8 * lambda_max(X, D)`` solves every sample at 80 % of
        its own lambda_max; equal to solving each sample with its scalar).
        For ``lmbd >= lambda_max(x)`` the solution is exactly 0.
    method : {"auto", "ista", "fista", "backtracking", "oista", "cd"}, default="auto"
        * "ista": proximal gradient with step 1/L.
        * "fista": accelerated, with gradient-based adaptive restart.
        * "backtracking": ISTA with a step per sample found by Beck-Teboulle
          backtracking (tried at 1/0.7 times the last step, shrunk by 0.7).
        * "oista": oracle ISTA (Ablin et al. 2019): step 1/L_S of the
          sample's current support S, kept when the new support stays in S,
          else 1/L. L_S comes from a warm-started power iteration, recomputed
          only when the support changes (a bracket by repeated squaring up
          to 16 atoms). A power iteration can settle on a smaller eigenvalue
          (from a start nearly orthogonal to the top eigenvector), so the
          curvature d B d^T of each step d taken on 1/L_S is checked against
          L_S ||d||^2 at the next gradient: above it, the step is undone
          (z and its gradient restored, so that the objective never rises;
          the history records the step as 0) and the sample's L_S comes
          from LAPACK from then on.
        * "cd": coordinate descent on the Gram matrix with working sets and a
          Newton polish on the support (exact once the signs are right).
        * "auto": the fastest exact method, currently "cd".
    tol : float, default=1e-8
        A sample stops when its duality gap is <= ``tol * 1/2 ||x||^2``. The
        stopping gap costs O(n_atoms) per sample from the gradient already at
        hand and is checked every 10 iterations (every outer loop for "cd";
        every iteration with ``record_history=True``).
        With ``tol=0`` every sample runs exactly ``max_iter`` iterations
        (none when D has no non-zero atom: the codes are 0, ``n_iter`` 0).
        Codes cannot be certified much below their own rounding: use
        ``tol >= 1e-6`` with float32 (a relative gap of about 1e-7 is their
        floor) and ``tol >= 1e-14`` with float64 (at 1e-15 most samples run
        ``max_iter`` iterations and warn).
    max_iter : int, default=10000
        Maximum number of iterations (epochs over the working set for "cd").
    Z0 : array-like of shape (n_samples, n_atoms) or (n_atoms,), default=None
        Warm start (zeros by default), cast to the dtype of X and D (a
        float64 warm start of a float32 problem gives float32 codes). The
        codes of zero atoms are set to 0,
        and a sample whose warm start has a larger objective than the zero
        code (``F_x(z0) > 1/2 ||x||^2``) starts from 0 instead.
    record_history : bool, default=False
        Record the objective and gap of every sample at every iteration (and
        the step sizes of "oista" and "backtracking"); memory
        (max_iter + 1) x n_samples per record. Not available for "cd".
        The stopping gap is then checked at every iteration (not every 10),
        so a sample stops at the first iteration that meets ``tol``: its
        codes and ``n_iter`` can differ from those of the same call without
        the history (both certified). A sample whose stopping gap met
        ``tol`` while the certificate of its codes, computed afterwards,
        missed it by their rounding runs on with a tighter stop, within
        ``max_iter``, as without the history: its record goes on from the
        iteration where it had stopped.
    n_jobs : int or None, default=None
        Threads: at most ``n_jobs`` run at any time (OpenMP threads in the
        kernels, BLAS held to one thread meanwhile when threadpoolctl is
        installed). None uses every core, or OpenMP's limit where it is
        lower (``OMP_NUM_THREADS``, as joblib's workers set it, or
        threadpoolctl's); -1 too; -2 all but one (-k all but k - 1, at
        least one).
    positive : bool, default=False
        Constrain the codes to be non-negative: ``min_{z >= 0}`` (every
        method, with the one-sided threshold ``max(u - t, 0)`` and the
        one-sided dual constraint in the certificate, see
        :func:`fastlista.duality_gap`). A warm start's negative entries are
        set to 0.

    Returns
    -------
    result : LassoResult
        ``codes``, ``gap``, ``n_iter``, ``converged``, ``history``,
        ``step_sizes``. ``gap`` is the duality gap of the returned codes,
        computed from them in double precision (the computation of
        :func:`fastlista.duality_gap`, from the correlations x D^T and the
        Gram matrix the solver has at hand: equal to it to rounding), and
        ``converged`` compares that gap with ``tol``: the certificate never
        relies on the solver's own bookkeeping.

    Raises
    ------
    ValueError
        If D's non-zero atoms span more magnitudes than one scale of D holds
        (their largest entries more than about 2**970 apart in float64,
        2**103 in float32): a small atom would lose its digits, and its code
        its certificate. The message names the atom.
    FloatingPointError
        If some code is not finite: its solution lies beyond the float range
        (X and D scaled in opposite directions by 1e200, say), or a kernel
        failed. The message names the samples. Finite codes are never
        returned with a non-finite certificate.

    Warns
    -----
    ConvergenceWarning
        When ``tol > 0`` and some sample's certified gap exceeds it.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista import solve_lasso
    >>> D = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> res = solve_lasso(np.array([[3.0, 0.5]]), D, lmbd=1.0)
    >>> res.codes
    array([[2., 0.]])
    >>> bool(res.converged[0])
    True
    """
    return _solve_lasso(X, D, lmbd, method, tol, max_iter, Z0, record_history, n_jobs,
                        positive, "solve_lasso")


def _solve_lasso(X, D, lmbd, method, tol, max_iter, Z0, record_history, n_jobs, positive,
                 func):
    """:func:`solve_lasso`, its messages naming ``func`` (the function the
    user called: solve_lasso or one of its shortcuts)."""
    X, D, is_1d = check_X_D(X, D, allow_no_atoms=True)
    lmbd = check_lmbd(lmbd, X.shape[0], func)
    positive = check_bool(positive, "positive", func)
    method = check_option(method, "method", func, METHODS)
    tol = check_scalar(tol, "tol", func, low=0.0)
    max_iter = check_max_iter(max_iter, func)
    record_history = check_bool(record_history, "record_history", func)
    Z0 = None if Z0 is None else _check_codes(Z0, X, D, name="Z0", is_1d=is_1d)
    N = X.shape[0]
    resolved = AUTO_METHOD if method == "auto" else method
    if record_history and resolved == "cd":
        raise InvalidParameterError(
            f"record_history=True is not available for method={method!r} in {func} "
            "(coordinate descent); use an iterative method ('ista', 'fista', 'oista', "
            "'backtracking').")
    method = resolved
    if record_history:
        n_bytes = 3 * (max_iter + 1) * N * X.dtype.itemsize
        if n_bytes > MAX_HISTORY_BYTES:
            raise ValueError(
                f"record_history=True would need {n_bytes / 1024**3:.1f} GiB for "
                f"max_iter={max_iter} and {N} samples; reduce max_iter or the batch.")
    with kernel_threads(n_jobs, func) as n_threads:
        result = _solve(X, D, lmbd, method, tol, max_iter, Z0, record_history,
                        n_threads, positive, warn=True, func=func)
    if is_1d:
        result.codes, result.gap = result.codes[0], result.gap[0]
        result.n_iter, result.converged = int(result.n_iter[0]), bool(result.converged[0])
        if result.history is not None:
            result.history = {k: h[:, 0] for k, h in result.history.items()}
        if result.step_sizes is not None:
            result.step_sizes = result.step_sizes[:, 0]
    return result


#: Atom norms spanning more than this (largest / smallest non-zero): the
#: residual's rounding at the largest atoms' scale, times their norm, can
#: exceed lmbd, and no certificate in double precision then holds (atoms
#: of norms 1 and 1e20 in the adversarial pass: 10 000 epochs, relative gap
#: 0.29, the codes exact to 1e-32)
NORM_SPAN_HINT = 1e12


#: The relative gap float32 codes certify on most problems (their rounding
#: floor is about 1e-7): a float32 tol below it may be unreachable.
F32_CERTIFIABLE = 1e-6


def _warn_not_converged(rel, n_iter, n_samples, dtype, tol, max_iter, method,
                        unused_atoms=(), lmbd_zero=False, norm_span=1.0,
                        positive=False):
    """The ConvergenceWarning of the samples that did not converge: ``rel``,
    their relative gaps gap / (1/2 ||x||^2), and ``n_iter``, their iterations;
    ``unused_atoms``: non-zero atoms given code 0 (their squared norms
    underflow in D's scaled units); ``lmbd_zero``: every such sample has
    lmbd = 0; ``norm_span``: the largest atom norm over the smallest
    non-zero one; ``positive``: the codes are constrained to be
    non-negative."""
    hint = "Increase max_iter" + ("." if method == "cd" else ", or use method='cd'.")
    if lmbd_zero:
        # the dual point is the residual scaled into |theta D^T| <= 0 (with
        # positive codes, theta D^T <= 0): theta = 0 once the rounding of the
        # codes leaves a non-zero (positive) correlation
        if positive:
            hint = ("At lmbd=0 with positive codes the duality gap is "
                    "1/2 ||x - z D||^2 (once the residual correlates positively "
                    "with an atom), which is 0 only when x is a non-negative "
                    "combination of the atoms (lying in their span is not "
                    "enough): such non-negative least-squares codes cannot be "
                    "certified. Use lmbd > 0, or tol=0 to run max_iter iterations "
                    "without a warning.")
        else:
            hint = ("At lmbd=0 the duality gap is 1/2 ||x - z D||^2, which is 0 "
                    "only when x lies in the span of the atoms: such least-squares "
                    "codes cannot be certified. Use lmbd > 0, or tol=0 to run "
                    "max_iter iterations without a warning.")
    elif len(unused_atoms):
        hint = (f"Atoms {list(unused_atoms[:10])} of D are too small next to its "
                f"largest entry for {np.dtype(dtype).name} (their squared norms "
                "underflow once D is scaled to it) and were given code 0: rescale "
                "D's atoms to comparable norms"
                + (", or use float64 data." if dtype == np.float32 else "."))
    elif norm_span > NORM_SPAN_HINT:
        # (whether the kernel ran to max_iter or stopped on its own gap)
        hint = (f"The atoms' norms span {norm_span:.1e} (largest / smallest): the "
                "rounding of x - z D at the largest atoms' scale, times their norm, "
                "can exceed lmbd, and no more iterations then certify the codes; "
                "rescale D's atoms to comparable norms (each code scales inversely "
                "with its atom's norm).")
    elif np.any(n_iter < max_iter) or (dtype == np.float32 and tol < F32_CERTIFIABLE
                                       and np.max(rel) < 10 * F32_CERTIFIABLE):
        # stopped by the kernel, refused by the certificate: rounding; or
        # float32 iterations that ran out near float32's floor, where more
        # of them (or "cd") would not certify tol either
        hint = ("The codes' rounding limits their certificate: use a larger tol"
                + (" (float32 codes cannot certify a relative gap much below 1e-6), "
                   "or float64 data." if dtype == np.float32 else "."))
    if np.all(n_iter >= max_iter):
        ran = f"in max_iter={max_iter} iterations of '{method}'"
    else:
        ran = (f"in at most {int(np.max(n_iter))} iterations of '{method}' "
               f"(max_iter={max_iter})")
    warnings.warn(
        f"{rel.size} of {n_samples} samples did not converge to tol={tol:.3e} "
        f"{ran}: largest relative duality gap {float(np.max(rel)):.3e}. {hint}",
        ConvergenceWarning, stacklevel=caller_stacklevel())


def _solve(X, D, lmbd, method, tol, max_iter, Z0, record_history, n_threads,
           positive=False, warn=False, func="solve_lasso"):
    """Validated inputs → certified LassoResult (2-D), on n_threads threads.

    The problem is solved in scaled units (``Scaled``), then the codes are
    brought back and certified from their returned values. ``warn``: a
    ConvergenceWarning when samples did not converge, with their relative
    gaps taken in scaled units (where neither the gap nor 1/2 ||x||^2
    underflows). ``func``: the function the user called, named in the
    errors.
    """
    N, m = X.shape[0], D.shape[0]
    S = Scaled.of(X, D)
    lm = S.lmbd(lmbd)
    xx = np.einsum("ij,ij->i", S.X, S.X, dtype=np.float64)
    # D D^T (and for coordinate descent X D^T) in double: for float32 data
    # the exact products of their entries, summed in double. Coordinate
    # descent computes in double and keeps them so (rounded to float32, they
    # moved the optimum by more than float32 codes resolve); the other
    # methods iterate in X's dtype and take them rounded once (accumulated in
    # float32, B's error of 5e-7 moved their stopping gap below the
    # certificate's)
    double = method == "cd"
    C, top = correlations(S, n_threads, double, positive)
    # (read-only, shared with the previous call on the same dictionary)
    try:
        B = shared_gram(S.D64, n_threads)
        if not double:
            B = B.astype(X.dtype, copy=False)
    except MemoryError:
        # the one work array beyond the size of the inputs and the codes
        raise MemoryError(
            f"{func}: D has {m} atoms, and the solvers work on its Gram matrix "
            f"D D^T ({m} x {m} float64, {m * m * 8 / 2**30:.3g} GiB, and a float32 "
            "copy for float32 data), which does not fit in the memory "
            "available.") from None
    # a zero atom (B_jj = 0, also when its squared norm underflows X's dtype)
    # is never used: its code is 0, with or without a warm start
    zero_atoms = ~(np.diagonal(B).astype(X.dtype) > 0)
    if double and zero_atoms.any():
        B = B.copy()
        B[zero_atoms] = 0
        B[:, zero_atoms] = 0
    start, F_start = None, 0.5 * xx
    if Z0 is None:
        # zeroed by writes here, not np.zeros: calloc's fresh pages map the
        # shared zero page, which the kernels' threads first read, then
        # write, each write a copy-on-write fault whose TLB flush
        # interrupts the other threads (a fifth of a solve at lmbd = 0.8)
        Z = np.empty((N, m), dtype=X.dtype)
        Z.fill(0)
    else:
        with np.errstate(over="ignore"):     # beyond float32: inf, replaced below
            Z = np.array(S.codes_in(Z0), dtype=X.dtype, order="C")
        Z[:, zero_atoms] = 0
        if positive:
            np.maximum(Z, 0, out=Z)
        # a warm start worse than 0 (or not finite in scaled units) only
        # slows the solve down: start those samples from 0
        primal0, _ = certify(S, lm, Z, n_threads, C, B, positive)
        Z[~(primal0 <= 0.5 * xx)] = 0
        start, F_start = Z.copy(), np.minimum(primal0, 0.5 * xx)

    n_iter = np.zeros(N, dtype=np.intc)
    stop_gap = np.zeros(N)
    hist = None
    if record_history:
        hist = [np.full((max_iter + 1, N), np.nan, X.dtype) for _ in range(3)]
    # Screening: lmbd >= lambda_max(x) makes 0 the exact solution (computed
    # with the same c = x D^T as the kernels, so the test is consistent):
    # such samples start there, whatever their warm start (from which ISTA
    # approaches 0 only by a factor 1 - B_jj / L a step), and with tol > 0
    # run no iteration; with tol = 0 they run theirs, each of which keeps 0
    # (|c_j| <= lmbd, in the kernels' own rounding, thresholds c_j / L to 0)
    screened = lm >= top
    Z[screened] = 0
    active = np.arange(N, dtype=np.intc)
    if tol > 0:
        active = np.flatnonzero(~screened).astype(np.intc)
    run = _kernel(S, C, B, xx, lm, method, Z, n_threads, hist, n_iter, stop_gap,
                  positive)
    if method != "cd" and zero_atoms.any():
        # the proximal-gradient kernels step every atom: a zero atom's
        # correlation (not 0 when only its squared norm underflows) gives it
        # a code, which is set back to 0 after every run
        step_all, zero_cols = run, np.flatnonzero(zero_atoms)

        def run(rows, tol, max_iter):
            step_all(rows, tol, max_iter)
            Z[np.ix_(rows, zero_cols)] = 0
    run(active, tol, max_iter)
    run_on = run
    if record_history:
        def run_on(rows, tol, max_iter):
            # the rows' history goes on from their iterations so far: they
            # run as a batch of their own, recorded into a scratch history
            # whose iteration t is their iteration n_iter + t
            k, first = rows.size, n_iter[rows]
            part = [np.full((max_iter + 1, k), np.nan, X.dtype) for _ in range(3)]
            Zr, n_r, gap_r = np.ascontiguousarray(Z[rows]), np.zeros(k, np.intc), np.zeros(k)
            _kernel(S.rows(rows), np.ascontiguousarray(C[rows]), B, xx[rows], lm[rows],
                    method, Zr, n_threads, part, n_r, gap_r, positive)(
                np.arange(k, dtype=np.intc), tol, max_iter)
            if zero_atoms.any():
                Zr[:, zero_atoms] = 0
            Z[rows], n_iter[rows], stop_gap[rows] = Zr, n_r, gap_r
            t, j = np.nonzero(np.arange(max_iter + 1)[:, None] <= n_r)
            for h, h_r in zip(hist, part):
                h[first[j] + t, rows[j]] = h_r[t, j]

    primal, gap = certify(S, lm, Z, n_threads, C, B, positive)
    # the largest gap each sample may certify (0 for tol = 0); with a tol
    # near the float range, it or RETRY_FACTOR times it is inf: every finite
    # gap is within it, as it is within the exact product
    with np.errstate(over="ignore"):
        target = tol * 0.5 * xx
        retry_target = RETRY_FACTOR * target
    if tol > 0:
        # the stopping gap and the certificate differ by rounding: a sample
        # stopped on the first and refused by the second runs on, with a
        # tighter stop, within its budget of iterations (a miss beyond
        # RETRY_FACTOR x tol is the codes' own rounding, float32's: no
        # tighter stop can help). The tighter stop may lie below what the
        # kernel's own gap resolves (float32's, near 1e-7 of 1/2 ||x||^2,
        # at tol = 1e-6): the rows then run in rounds of about a quarter of
        # their iterations so far (one length for the round, a multiple of
        # GAP_FREQ, so that they stop where a plain call would check its
        # gap), each ended by the certificate, rather than to max_iter
        again = np.flatnonzero((stop_gap <= target) & ~(gap <= target)
                               & (gap <= retry_target) & (n_iter < max_iter))
        for attempt in range(1, RETRIES + 1):
            if not again.size:
                break
            with np.errstate(over="ignore"):
                tight = tol / RETRY_FACTOR ** attempt
                tight_target = tight * 0.5 * xx
            stopped = []
            while again.size:
                done = n_iter[again]
                length = GAP_FREQ * max(1, int(done.max()) // (4 * GAP_FREQ))
                rounds = np.minimum(max_iter - done, length)
                for steps in np.unique(rounds):
                    run_on(again[rounds == steps].astype(np.intc), tight, int(steps))
                ran_out = ~(stop_gap[again] <= tight_target[again])
                n_iter[again] += done
                primal[again], gap[again] = certify(
                    S.rows(again), lm[again], np.ascontiguousarray(Z[again]), n_threads,
                    np.ascontiguousarray(C[again]), B, positive)
                refused = ~(gap[again] <= target[again])
                # refused after the kernel stopped at the tighter tol: the
                # next attempt's; after a round ran out: another round
                stopped.append(again[refused & ~ran_out & (gap[again] <= retry_target[again])])
                again = again[refused & ran_out & (n_iter[again] < max_iter)]
            again = np.concatenate(stopped)
            again = again[n_iter[again] < max_iter]
    bad = np.flatnonzero(~np.isfinite(primal))
    if bad.size:
        raise FloatingPointError(
            f"solve_lasso(method={method!r}) produced non-finite codes for samples "
            f"{bad[:10].tolist()}; this is a bug: please report it with the input.")
    # codes worse than where they started (rounding can make the iterations
    # climb: float32 warm starts of +-1e8 on duplicated atoms, whose products
    # cancel) are not returned: the start is (rows still at their start
    # differ from it by the rounding of F only; screened rows are exactly 0,
    # the solution, even where rounding puts F(z0) an ulp below F(0))
    worse = np.flatnonzero((primal > F_start) & ~screened)
    first = 0 if start is None else start[worse]
    worse = worse[np.any(Z[worse] != first, axis=1)]
    if worse.size:
        Z[worse] = 0 if start is None else start[worse]
        primal[worse], gap[worse] = certify(
            S.rows(worse), lm[worse], np.ascontiguousarray(Z[worse]), n_threads,
            np.ascontiguousarray(C[worse]), B, positive)

    codes = S.codes_out(Z)
    if not S.identity:
        lost = np.flatnonzero(~np.isfinite(codes).all(axis=1))
        if lost.size:
            raise FloatingPointError(
                f"the codes of samples {lost[:10].tolist()} overflow {X.dtype}: their "
                "solutions lie beyond the largest float (X and D are scaled in "
                "opposite directions); rescale X or D.")
        # the certificate of the returned codes (exact unless some
        # underflowed on the way out)
        if not np.array_equal(S.codes_in(codes), Z):
            Z = S.codes_in(codes)
            primal, gap = certify(S, lm, Z, n_threads, C, B, positive)
    # (with the terms of entries the scaling lost, for samples spanning more
    # than the dtype: see _lasso._Lost)
    gap_in, gap_out = S.gap_in(gap, Z), S.gap_out(gap, Z)
    # where the objective's terms cancelled beyond the scaled units, its
    # value formed at its own scale bounds the gap from below (as in
    # duality_gap)
    rows, _, F_up, cancelled = own_scale_objectives(S, primal, X, D, lmbd, codes)
    rows, F_up = rows[cancelled], F_up[cancelled]
    if rows.size:
        gap_out[rows] = np.maximum(gap_out[rows], F_up)
        gap_in[rows] = np.maximum(gap_in[rows], _ldexp_up(F_up, -2 * S.ea[rows]))
    converged = gap_in <= target
    with np.errstate(over="ignore"):        # beyond the dtype's range: inf
        out_gap = round_up(gap_out, X.dtype)
    if warn and tol > 0 and not converged.all():
        # (x = 0 has gap 0 and converges: 1/2 ||x||^2 > 0 here)
        bad = ~converged
        unused = np.flatnonzero(zero_atoms & np.any(D != 0, axis=1))
        sq = np.diagonal(B)[~zero_atoms].astype(np.float64)   # (float32 B: no overflow)
        span = float(np.sqrt(sq.max() / sq.min())) if sq.size else 1.0
        _warn_not_converged(gap_in[bad] / (0.5 * xx[bad]), n_iter[bad], N, X.dtype, tol,
                            max_iter, method, unused.tolist(), bool(np.all(lm[bad] == 0)),
                            span, positive)
    history, step_sizes = None, None
    if record_history:
        history, step_sizes = _history(hist, n_iter, N, primal, gap, out_gap, method, S)
    return LassoResult(codes, out_gap, n_iter, converged, history, step_sizes, method)


def _kernel(S, C, B, xx, lm, method, Z, n_threads, hist, n_iter, stop_gap, positive):
    """run(rows, tol, max_iter): the method's kernel on some rows, in place."""
    if not np.diagonal(B).any():
        # no atom, or D = 0: the objective is lmbd ||z||_1 + const, minimised
        # at 0, with no iteration to run
        def run(rows, tol, max_iter):
            Z[rows] = 0
        return run
    if method == "cd":
        def run(rows, tol, max_iter):
            _cd.coordinate_descent(C, B, xx, lm, Z, rows, max_iter, tol, positive,
                                   S.D.shape[1], n_threads, n_iter, stop_gap)
        return run
    L = global_lipschitz(S.D)
    DT = np.ascontiguousarray(S.D.T)
    record = hist is not None
    if not record:
        hist = [np.empty((1, 1), S.X.dtype)] * 3

    def run(rows, tol, max_iter):
        if not rows.size:
            return
        _solvers.prox_grad(method, S.X, S.D, DT, B, C, xx, lm, L, Z, rows, max_iter,
                           tol, positive, GAP_FREQ, n_threads, BLOCK_SIZE, record, *hist, n_iter,
                           stop_gap, _OWN_GEMM)
    return run


def _history(hist, n_iter, N, primal, gap, out_gap, method, S):
    """Trim the records, fill the iterations after a sample stopped with its
    last values, and end every sample at its certificate (``out_gap``, in
    the caller's units, the returned gap)."""
    T = int(n_iter.max()) + 1 if N else 1
    obj_h, gap_h, step_h = (h[:T].astype(np.float64) for h in hist)
    if N:
        # (samples screened out have n_iter = 0: their certificate only)
        rows = np.arange(N)
        obj_h[n_iter, rows] = primal
        gap_h[n_iter, rows] = gap
        for h in (obj_h, gap_h):
            for t in range(1, T):
                h[t] = np.where(np.isnan(h[t]) | (t > n_iter), h[t - 1], h[t])
    dtype = hist[0].dtype
    # gaps rounded up, as LassoResult.gap is; from its last iteration on,
    # a sample's is its certificate, the returned gap
    with np.errstate(over="ignore"):
        gap_h = round_up(S.energy_up(gap_h.T).T, dtype)
        history = {"objective": S.energy_out(obj_h.T).T.astype(dtype),
                   "gap": np.where(np.arange(T)[:, None] >= n_iter, out_gap, gap_h)}
    step_sizes = None
    if method in ("oista", "backtracking"):
        with np.errstate(over="ignore"):
            step_sizes = np.ldexp(step_h[:T - 1], -2 * S.eb).astype(dtype)
    return history, step_sizes


def least_squares_codes(X, D, positive=False, n_jobs=None):
    """The codes at lmbd = 0: least squares, of minimum norm (``x pinv(D)``),
    or non-negative least squares with ``positive`` (SciPy's nnls, a sample
    at a time: a basic solution, not of minimum norm where several fit x).
    The Lasso's certificate at lmbd = 0 is 1/2 ||r||^2, which no solver can
    bring to 0 unless x is in the span of the atoms: solve_lasso would run
    to its max_iter. Within the caller's ``n_jobs`` budget (BLAS on one
    thread, as inside the kernels)."""
    with kernel_threads(n_jobs, "least_squares_codes"):
        D64 = D.astype(np.float64)
        if not positive:
            return (X.astype(np.float64) @ np.linalg.pinv(D64)).astype(X.dtype)
        from scipy.optimize import nnls

        Z = np.empty((X.shape[0], D.shape[0]), dtype=X.dtype)
        for i, x in enumerate(X.astype(np.float64)):
            Z[i] = nnls(D64.T, x)[0]
        return Z


def lasso_targets(X, D, lmbd, positive=False, n_jobs=None):
    """Codes that solve each sample's Lasso: the targets of the
    semi-supervised loss.

    Where lmbd > 0, :func:`solve_lasso`'s codes, certified to the relative
    gap the dtype's codes can reach (``CERTIFIABLE_TOL``). Where lmbd = 0 the
    Lasso is least squares, whose certificate no solver can bring below
    1/2 ||r||^2 (x outside the atoms' span): :func:`least_squares_codes`, of
    minimum norm (where gradient descent from 0, and an untrained network's
    layers, lead); with ``positive``, SciPy's non-negative least squares (a
    basic solution, not of minimum norm where several fit x).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Signals (validated: finite).
    D : ndarray of shape (n_atoms, n_features)
        Dictionary (validated: finite).
    lmbd : float or ndarray of shape (n_samples,)
        The samples' regularisation levels (>= 0), shared or one a sample.
    positive : bool, default=False
        Codes constrained to be >= 0.
    n_jobs : int or None, default=None
        Threads of :func:`solve_lasso`.

    Returns
    -------
    Z : ndarray of shape (n_samples, n_atoms)
        In the solvers' dtype: float32 if X and D are, else float64.
    """
    lam = np.broadcast_to(np.asarray(lmbd, dtype=np.float64), (X.shape[0],))
    zero = lam == 0
    tol = CERTIFIABLE_TOL[np.result_type(X.dtype, D.dtype)]
    if not zero.any():
        return solve_lasso(X, D, lmbd, tol=tol, n_jobs=n_jobs, positive=positive).codes
    Z = np.empty((X.shape[0], D.shape[0]), dtype=np.result_type(X.dtype, D.dtype))
    Z[zero] = least_squares_codes(X[zero], D, positive, n_jobs)
    if not zero.all():
        Z[~zero] = solve_lasso(X[~zero], D, lam[~zero], tol=tol, n_jobs=n_jobs,
                               positive=positive).codes
    return Z


def _method_function(method, doc_name):
    def solver(X, D, lmbd, tol=1e-8, max_iter=10000, Z0=None,
               record_history=False, n_jobs=None, positive=False):
        return _solve_lasso(X, D, lmbd, method, tol, max_iter, Z0, record_history, n_jobs,
                            positive, doc_name)
    solver.__name__ = solver.__qualname__ = doc_name
    solver.__doc__ = (
        f"``solve_lasso(X, D, lmbd, method={method!r}, ...)``: see "
        ":func:`solve_lasso` for the parameters and the returned LassoResult.")
    return solver


ista = _method_function("ista", "ista")
fista = _method_function("fista", "fista")
oista = _method_function("oista", "oista")
backtracking_ista = _method_function("backtracking", "backtracking_ista")
coordinate_descent = _method_function("cd", "coordinate_descent")
