"""Dictionary learning on the fast coder.

:func:`learn_dictionary` learns a dictionary D (n_atoms, n_features) of
unit-norm atoms, one per row, for the signals X (n_samples, n_features):

    min_{D, Z}  1/n_samples sum_x  1/2 ||x - z D||^2 + lmbd ||z||_1
    subject to  ||d_k|| <= 1 for every atom d_k,

alternating a **code step** (the Lasso of every signal, with D fixed) and a
**dictionary step** (D, with the codes fixed). Two methods:

* ``"online"`` (Mairal, Bach, Ponce & Sapiro, JMLR 2010): mini-batches of
  ``batch_size`` signals are coded with the current D and accumulated in the
  sufficient statistics ``A = sum z^T z`` (n_atoms, n_atoms) and ``B = sum
  z^T x`` (n_atoms, n_features), the older batches down-weighted (the
  forgetting factor of scikit-learn's ``MiniBatchDictionaryLearning``:
  ``beta = (theta + 1 - b) / (theta + 1)``, ``theta = b (t + 1)`` for the
  first steps t < b - 1 and ``b^2 + t + 1 - b`` after, b the batch size);
  one dictionary step follows every mini-batch.
* ``"batch"``: every iteration codes all of X exactly, warm-started from the
  previous codes, and updates D from their statistics.

The code step is :func:`fastlista.solve_lasso` (``coder="cd"``: coordinate
descent, every code certified to a relative duality gap ``code_tol``), or,
with ``coder="slista"``, an SLISTA network (:class:`fastlista.Lista` with
one learned step a layer) re-trained for a few L-BFGS iterations on every
batch as D moves, its steps warm-started from the previous batch: codes of a
fixed cost, approximate (see docs/dictionary.md for what that gains and
loses).

The dictionary step is block coordinate descent over the atoms (one pass per
mini-batch, ``BATCH_PASSES`` per batch iteration): for k = 1..n_atoms,

    d_k <- Proj_{||d|| <= 1}( d_k + (B_k - A_k D) / A_kk ),

the exact minimiser over d_k (with ``positive_dict``, over the non-negative
part of the ball). An atom that is no longer used (``A_kk = 0`` in batch
mode, where exact codes are exactly 0; ``A_kk <= 1e-6 mean(diag A)`` online)
is re-initialised to the normalised residual ``x - z D`` of the worst
reconstructed signal (of the batch, distinct signals for distinct atoms,
none a copy of another or of an atom in use, of equally bad signals the
lowest-indexed); the result counts them.

Threads: a call runs at most ``n_jobs`` threads (the code step's kernels);
the NumPy products of the statistics run with BLAS held to one thread.
"""
import copy
import warnings
from dataclasses import dataclass, field

import numpy as np

from ._kernels import _dict
from ._lasso import _top_exponent
from ._lipschitz import global_lipschitz
from ._networks import Lista
from ._solvers import CERTIFIABLE_TOL, least_squares_codes, solve_lasso
from ._threads import kernel_threads
from ._validation import (InvalidParameterError, caller_stacklevel, check_array, check_bool,
                          check_max_iter, check_option, check_random_state,
                          check_scalar, short_repr)

__all__ = ["learn_dictionary", "DictionaryResult"]

METHODS = ("online", "batch")
CODERS = ("cd", "slista")

#: Defaults of max_iter and tol per method. Batch: iterations (one exact code
#: step of all of X and one dictionary step each), stopped when the mean
#: objective decreases by less than tol times its value. Online: epochs
#: (passes over X in mini-batches), stopped when the epoch's mean objective
#: (each signal's objective when its batch was coded) does.
DEFAULT_MAX_ITER = {"batch": 100, "online": 10}
DEFAULT_TOL = {"batch": 1e-4, "online": 1e-3}
#: Passes of block coordinate descent over the atoms per dictionary step
#: (``dict_passes=None``). Online: one a mini-batch (Mairal et al., and
#: scikit-learn's MiniBatchDictionaryLearning). Batch: the code step of all
#: of X costs far more than a pass over the atoms (O(n_atoms^2 n_features)),
#: and a more exact dictionary step finds better dictionaries. Measured
#: (n_jobs=1, tests/reference.py's make_dictionary_problem, 4000 signals of
#: 3 of 30 atoms in 20 features, lmbd 0.3, tol 1e-4, seeds 0 and 1): 1 pass
#: recovers 27 and 27 of the 30 atoms (|correlation| > 0.99), 5 passes 30 and
#: 30 (lmbd 0.1: 28, 28 against 30, 30); on 5000 8x8 patches, 256 atoms,
#: lmbd 1, 20 iterations, the exact objective ends at 11.932 with 1 pass,
#: 11.920 with 2 and with 5. One pass is scikit-learn's DictionaryLearning
#: (tests/test_dictionary.py checks that the two then agree).
ONLINE_PASSES = 1
BATCH_PASSES = 5
#: X is scaled by a power of two when max|X| leaves 2**+-SCALE_LIMIT (float32:
#: 2**+-30): the statistics (sums of squares of the codes and signals) stay
#: in range; D is scale-free, lmbd and the objective follow exactly.
SCALE_LIMIT = {np.dtype(np.float64): 100, np.dtype(np.float32): 30}
#: Online: an atom is unused when A_kk <= REINIT_THRESHOLD * mean(diag A)
#: (scikit-learn's 1e-6, relative to the scale of the codes).
REINIT_THRESHOLD = 1e-6
#: SLISTA coder: layers, and L-BFGS iterations of re-training per batch.
SLISTA_LAYERS = 10
SLISTA_ITER = 5


@dataclass
class DictionaryResult:
    """A learned dictionary and the record of its learning.

    Attributes
    ----------
    D : ndarray of shape (n_atoms, n_features)
        The dictionary, unit-norm atoms, one per row, in the dtype of X.
    objective : ndarray of shape (iterations completed,)
        Mean objective ``1/2 ||x - z D||^2 + lmbd ||z||_1`` over the signals,
        per completed iteration: ``n_iter`` entries, one fewer online when a
        callback stopped the last epoch before its end. Batch: after each
        iteration's dictionary step, with that iteration's codes
        (non-increasing; from the residuals, in float64). Online: per epoch,
        each signal's objective when its mini-batch was coded (with the
        dictionary of that time): the online estimate of the objective.
    n_iter : int
        Iterations run: batch iterations, or epochs (passes over X) online,
        the last maybe cut short by a callback.
    n_steps : int
        Dictionary steps: mini-batches online, ``n_iter`` in batch mode.
    n_reinit : int
        Atoms re-initialised (unused atoms replaced by the residual of the
        worst reconstructed signal), in total.
    converged : bool
        Whether learning stopped on ``tol`` (not ``max_iter`` or a callback;
        never with ``tol=0``).
    method : str
    coder : str
    """

    D: np.ndarray
    objective: np.ndarray
    n_iter: int
    n_steps: int
    n_reinit: int
    converged: bool
    method: str = None
    coder: str = None


# ---------------------------------------------------------------------------
# the dictionary step
# ---------------------------------------------------------------------------

def update_dictionary(D, A, B, *, positive=False, n_passes=1, threshold=0.0):
    """Block coordinate descent on ``1/2 tr(D^T A D) - tr(D^T B)`` over the
    unit ball of every atom, in place.

    Parameters
    ----------
    D : ndarray of shape (n_atoms, n_features), float64, C order
        The dictionary, updated in place.
    A : ndarray of shape (n_atoms, n_atoms), float64
        ``sum z^T z`` over the (weighted) codes.
    B : ndarray of shape (n_atoms, n_features), float64
        ``sum z^T x``.
    positive : bool
        Atoms constrained to be non-negative.
    n_passes : int
        Passes over the atoms.
    threshold : float
        Atoms with ``A_kk <= threshold`` are unused: not updated.

    Returns
    -------
    unused : ndarray of bool, shape (n_atoms,)
    """
    diag = np.diagonal(A)
    unused = ~(diag > threshold)
    if n_passes > 0 and not unused.all():
        _bcd(D, A, B, ~unused, positive, n_passes)
    return unused


def _bcd(D, A, B, active, positive, n_passes):
    """The passes of block coordinate descent, compiled (``_kernels/_dict.pyx``).

    Measured against the same loop in NumPy (``A[k] @ D`` and four vector
    operations an atom) on a dictionary learned from 8x8 patches, 256 atoms
    x 64 features, BLAS on one thread, medians of 15 interleaved passes on
    the shared 2-core AVX-512 machine: NumPy 2.53 ms a pass, compiled
    0.62 ms (4.97x; equal to 3e-16). An online epoch of 50 000 patches in
    mini-batches of 256 takes 196 passes: 0.37 s saved an epoch.
    """
    _dict.bcd(D, np.ascontiguousarray(A), np.ascontiguousarray(B),
              np.flatnonzero(active).astype(np.intp), positive, n_passes)


#: Two unit atoms within _COPY of each other in every entry are one atom:
#: copies of a signal (flat image patches are), normalised to the same
#: atom or one a few ulps away. Two of them in a dictionary leave the
#: Lasso's solution not unique (the code splits between them any way), so
#: that a rounding difference sends two runs to different dictionaries.
#: Signals that differ, even nearly parallel ones (1e7 plus noise of 1:
#: angles of 1e-8), stay distinct.
_COPY = 1e-12
#: The most rows ``initial_dictionary`` draws at once
_DRAW_ROWS = 4096


def _candidate_atom(r, positive, taken=None, signed=True):
    """A unit atom from a residual (None when it has no usable direction, or
    when it is a copy of a row of ``taken``, the atoms already drawn;
    ``signed``: also of its negation, which signed codes use as the same
    atom)."""
    r = np.asarray(r, dtype=np.float64)
    if positive:
        r = np.maximum(r, 0.0) if np.any(r > 0) else np.maximum(-r, 0.0)
    norm = float(np.linalg.norm(r))
    if not (norm > 0 and np.isfinite(norm)):
        return None
    atom = r / norm
    if taken is not None and taken.shape[0]:
        copies = np.max(np.abs(taken - atom), axis=1) <= _COPY
        if signed:
            copies |= np.max(np.abs(taken + atom), axis=1) <= _COPY
        if copies.any():
            return None
    return atom


def reinitialise(D, unused, residuals, lmbd, *, min_code=0.0, positive=False,
                 positive_code=False):
    """Replace unused atoms by the normalised residuals, worst first.

    ``residuals`` are rows ``r = x - z D`` sorted worst first; each replaces
    one unused atom (in increasing atom order), if its code would use it and
    its atom is not a copy of one in use or placed before it (copies of a
    signal: their gain is counted once).
    With the other codes fixed, the new atom ``a`` takes the code
    ``|<r, a>| - lmbd`` (``lmbd`` in the residuals' units; with
    ``positive_code``, ``<r, a> - lmbd``: a code >= 0) and lowers its
    signal's objective by ``min_c 1/2||r - c a||^2 + lmbd |c| - 1/2||r||^2 =
    1/2 (|<r, a>| - lmbd)_+^2``. A residual whose code is at most
    ``min_code`` is skipped: with ``|<r, a>| <= lmbd`` the atom could not
    enter the code, and would be replaced again at every step (as when λ is
    above λ_max, or fewer signals than atoms are reconstructed to a
    residual of norm λ). Returns the number of atoms replaced and the sum
    of their gains (inf beyond the float range).
    """
    atoms = np.flatnonzero(unused)
    done, total = 0, np.float64(0.0)
    rows = iter(residuals)
    # the atoms a new one must differ from: those in use, and those placed
    # (the codes behind the residuals are those of D before its last step,
    # so that a residual can lie along an atom the step moved)
    kept = ~np.asarray(unused, dtype=bool)
    for k in atoms:
        for r in rows:
            atom = _candidate_atom(r, positive, D[kept], signed=not positive_code)
            if atom is None:
                continue
            corr = float(np.dot(r, atom))
            code = (corr if positive_code else abs(corr)) - lmbd
            if code > min_code:
                D[k] = atom
                kept[k] = True
                done += 1
                with np.errstate(over="ignore"):
                    total += 0.5 * np.float64(code) ** 2
                break
        else:
            break
    return done, float(total)


def _worst(norms, k):
    """Indices of the k largest ``norms``, largest first; of equal norms the
    lowest indices, first (deterministic: the merge of chunks in
    ``CodeStats.__add__`` keeps the same signals as one pass over all)."""
    n = norms.shape[0]
    k = min(k, n)
    if k == 0:
        return np.empty(0, dtype=np.intp)
    if k < n:
        # every norm above the k-th largest is in; of those equal to it, the
        # first (np.argpartition would keep an arbitrary subset of a tie)
        kth = np.partition(norms, n - k)[n - k]
        above = np.flatnonzero(norms > kth)
        idx = np.concatenate([above, np.flatnonzero(norms == kth)[:k - above.size]])
    else:
        idx = np.arange(n)
    return idx[np.lexsort((idx, -norms[idx]))]


def row_norms(D):
    """Euclidean norms of the rows of D, without overflow or underflow (each
    row divided by its largest magnitude first)."""
    D = np.asarray(D, dtype=np.float64)
    top = np.max(np.abs(D), axis=1) if D.shape[1] else np.zeros(D.shape[0])
    safe = np.where(top > 0, top, 1.0)
    return top * np.linalg.norm(D / safe[:, None], axis=1)


def _normalise(D, rng=None, positive=False):
    """The returned dictionary: atoms of norm in (0, 1) scaled to norm 1
    (lowers the objective of exact codes: the same reconstruction with
    smaller codes); zero atoms (never usable, and left zero only when no
    signal could re-initialise them) become random unit atoms from ``rng``
    (non-negative with ``positive``)."""
    norms = np.linalg.norm(D, axis=1)
    small = (norms > 0) & (norms < 1)
    D[small] /= norms[small, None]
    zero = ~(norms > 0)
    if zero.any():
        rng = np.random.RandomState(0) if rng is None else rng
        G = rng.standard_normal((int(zero.sum()), D.shape[1]))
        if positive:
            G = np.abs(G)
        D[zero] = G / np.linalg.norm(G, axis=1, keepdims=True)
    return D


# ---------------------------------------------------------------------------
# the code step
# ---------------------------------------------------------------------------

class _ExactCoder:
    """Codes by solve_lasso (certified to code_tol)."""

    name = "cd"

    def __init__(self, lmbd, tol, max_iter, positive, n_jobs):
        self.lmbd, self.tol, self.max_iter = lmbd, tol, max_iter
        self.positive, self.n_jobs = positive, n_jobs

    def codes(self, X, D, Z0=None):
        if self.lmbd == 0:
            return least_squares_codes(X, D, self.positive, self.n_jobs)
        return solve_lasso(X, D, self.lmbd, tol=self.tol, max_iter=self.max_iter,
                           Z0=Z0, n_jobs=self.n_jobs, positive=self.positive).codes


class _SlistaCoder:
    """Codes by an SLISTA network re-trained on every batch, warm-started.

    The steps are kept in units of 1/L between batches (a moving D changes
    L): ``alpha_t L`` is the state carried from one batch to the next.
    """

    name = "slista"

    def __init__(self, lmbd, n_layers, train_iter, positive, n_jobs):
        self.lmbd, self.n_layers, self.train_iter = lmbd, n_layers, train_iter
        self.positive, self.n_jobs = positive, n_jobs
        self.relative_steps = None

    def codes(self, X, D, Z0=None):
        if self.lmbd == 0:
            return least_squares_codes(X, D, self.positive, self.n_jobs)
        if not global_lipschitz(D) > 0:
            # D = 0: every code is 0
            return np.zeros((X.shape[0], D.shape[0]), dtype=X.dtype)
        net = Lista(D, self.lmbd, self.n_layers, "step", n_jobs=self.n_jobs,
                    positive=self.positive)
        if self.relative_steps is not None:
            net.set_parameters([{"alpha": np.asarray(a / net.lipschitz_)}
                                for a in self.relative_steps])
        with warnings.catch_warnings():
            # a batch whose training stalls keeps its last finite steps
            warnings.simplefilter("ignore")
            net.fit(X, max_iter=self.train_iter)
        self.relative_steps = [float(p["alpha"]) * net.lipschitz_
                               for p in net.parameters]
        Z = net.transform(X)
        # a network whose steps no longer suit D (training rolled back) may
        # code a signal worse than 0, or not at all: those signals get 0
        R = X - Z @ D
        with np.errstate(over="ignore", invalid="ignore"):
            f = 0.5 * np.einsum("ij,ij->i", R, R, dtype=np.float64) + self.lmbd * _l1(Z)
        bad = ~(f <= 0.5 * np.einsum("ij,ij->i", X, X, dtype=np.float64))
        Z[bad] = 0
        return Z


@dataclass
class CodeStats:
    """Sufficient statistics of coded signals (float64), summed over them.

    ``A = Z^T Z``, ``B = Z^T X``, ``objective`` = sum of the signals'
    objectives (with the dictionary they were coded with), ``previous`` =
    sum of the objectives of the warm-start codes with that dictionary (the
    previous batch iteration's, see ``code_stats``; NaN without a warm
    start), ``worst`` the residuals ``x - z D`` of the worst reconstructed
    signals (worst first, ties by index), ``worst_norms`` their squared norms
    and ``worst_index`` their indices (for merging chunks).
    """

    A: np.ndarray
    B: np.ndarray
    objective: float
    previous: float
    n_samples: int
    worst: np.ndarray = field(default=None)
    worst_norms: np.ndarray = field(default=None)
    worst_index: np.ndarray = field(default=None)
    n_worst: int = 0

    def __add__(self, other):
        """Statistics of the union of two disjoint sets of signals."""
        W = np.concatenate([self.worst, other.worst])
        norms = np.concatenate([self.worst_norms, other.worst_norms])
        index = np.concatenate([self.worst_index, other.worst_index])
        k = max(self.n_worst, other.n_worst)
        # worst first, ties by index: _worst's order over all the signals
        order = np.lexsort((index, -norms))[:k]
        return CodeStats(self.A + other.A, self.B + other.B,
                         self.objective + other.objective,
                         self.previous + other.previous,
                         self.n_samples + other.n_samples, W[order], norms[order],
                         index[order], k)


def _residuals(X, D, Z):
    """R = X - Z D (in X's dtype) and the squared norms of its rows (float64)."""
    R = X - Z @ D
    return R, np.einsum("ij,ij->i", R, R, dtype=np.float64)


def _l1(Z):
    return np.abs(Z).sum(axis=1, dtype=np.float64)


def signal_objectives(X, D, Z, lmbd):
    """Every signal's ``1/2 ||x - z D||^2 + lmbd ||z||_1`` (float64), with the
    residuals R (float64) and their squared norms.

    From the residuals, in float64 whatever X's dtype (D is the float64
    dictionary): the form ``1/2 ||x||^2 - <z, x D^T> + 1/2 z D D^T z^T`` of
    the statistics cancels when ||x - z D|| is far below ||x|| (signals far
    from 0: at an offset of 1e7, relative errors of 6e-8, false increases of
    the batch history).
    """
    R, rr = _residuals(X.astype(np.float64, copy=False), D,
                       Z.astype(np.float64, copy=False))
    return 0.5 * rr + lmbd * _l1(Z), R, rr


def code_stats(X, D, lmbd, coder, Z_prev=None, n_worst=0, offset=0, f_prev=None):
    """The code step of a set of signals, and its statistics.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    D : ndarray of shape (n_atoms, n_features), float64
        The dictionary (the coder gets it in X's dtype; the objectives, the
        residuals and the statistics are taken with D itself, in float64).
    coder : _ExactCoder or _SlistaCoder
    Z_prev : ndarray of shape (n_samples, n_atoms), default=None
        The previous codes: the warm start, and kept for every signal whose
        new code has a larger objective (so that no code step increases it).
    n_worst : int
        How many worst-reconstructed residuals to keep.
    offset : int
        Index of X's first signal in the whole data (ties between chunks).
    f_prev : ndarray of shape (n_samples,), default=None
        ``signal_objectives(X, D, Z_prev, lmbd)`` when the caller has it
        (else computed here).

    Returns
    -------
    Z : ndarray of shape (n_samples, n_atoms)
    stats : CodeStats
        ``stats.previous`` is the sum of ``f_prev``: the objective of the
        previous batch iteration's codes with D, its history entry.
    """
    Z = coder.codes(X, D.astype(X.dtype), Z_prev)
    f, R, rr = signal_objectives(X, D, Z, lmbd)
    previous = np.nan
    if Z_prev is not None:
        if f_prev is None:
            f_prev = signal_objectives(X, D, Z_prev, lmbd)[0]
        previous = float(f_prev.sum())
        worse = f > f_prev
        if worse.any():
            Z[worse] = Z_prev[worse]
            _, R[worse], rr[worse] = signal_objectives(X[worse], D, Z_prev[worse], lmbd)
            f[worse] = f_prev[worse]
    Z64 = Z.astype(np.float64, copy=False)
    idx = _worst(rr, n_worst)
    stats = CodeStats(
        A=Z64.T @ Z64, B=Z64.T @ X.astype(np.float64, copy=False),
        objective=float(f.sum()), previous=previous, n_samples=X.shape[0],
        worst=R[idx], worst_norms=rr[idx], worst_index=idx + offset, n_worst=n_worst)
    return Z, stats


def batch_dictionary_step(D, stats, lmbd, positive_dict, n_passes=BATCH_PASSES, *,
                          positive_code=False, dtype=np.float64):
    """The batch dictionary step: re-initialise unused atoms (``lmbd``: the
    codes' penalty, in the signals' units), then ``n_passes`` passes of
    block coordinate descent. In place on D (float64).

    An atom is not re-initialised from a residual whose code, ``|<r, a>| -
    lmbd`` (``<r, a> - lmbd`` with ``positive_code``), would be at most
    ``sqrt(eps) lmbd``, eps that of the signals' ``dtype``: 0 (the atom
    would stay unused) up to the rounding of the codes.

    Returns the number of atoms re-initialised and the mean gain they
    promise (``reinitialise``'s, over the signals): the stopping test waits
    for it. (The objective of the codes with the new D is the next pass's
    ``signal_objectives``: from the residuals, not from the statistics.)"""
    unused = ~(np.diagonal(stats.A) > 0)
    n_new, gain = 0, 0.0
    if unused.any():
        n_new, gain = reinitialise(D, unused, stats.worst, lmbd,
                                   min_code=np.sqrt(np.finfo(dtype).eps) * lmbd,
                                   positive=positive_dict, positive_code=positive_code)
    update_dictionary(D, stats.A, stats.B, positive=positive_dict, n_passes=n_passes)
    return n_new, gain / stats.n_samples


def batch_stop(objective, tol, gain):
    """The batch stopping test: the last decrease is at most ``tol`` times
    the value (``_stalled``), and so is the mean ``gain`` that the atoms
    just re-initialised promise (their codes are only made in the next code
    step; an atom that could not lower the objective by more than that is
    no reason to go on)."""
    return _stalled(objective, tol) and gain <= tol * objective[-1]


# ---------------------------------------------------------------------------
# initialisation and validation
# ---------------------------------------------------------------------------

def initial_dictionary(X, n_atoms, rng, positive=False, rows=None, signed=True):
    """n_atoms distinct signals of X drawn at random, normalised (float64).

    Zero signals are passed over, and copies of a signal drawn before (see
    ``_COPY``), or with ``signed`` (codes of either sign) of its negation;
    with ``positive`` an
    atom is the positive part of its signal, or of its negation when the
    signal has no positive entry. If too few atoms result, the rest are random non-negative
    (``positive``) or Gaussian unit atoms (from ``rng``). ``rows(indices)``
    returns those rows of X as an array (default ``X[indices]``; the Dask
    version fetches them).
    """
    n, p = X.shape
    rows = (lambda idx: X[idx]) if rows is None else rows
    D = np.empty((n_atoms, p))
    filled = 0
    order = rng.permutation(n)
    start = 0
    while filled < n_atoms and start < n:
        # draw in slices, to skip unusable signals without touching all of X
        # (twice the atoms missing, or as many as were drawn, up to
        # _DRAW_ROWS: data of few distinct signals are searched in few
        # slices, none of which fetches much of a dask array at once)
        size = max(2 * (n_atoms - filled), min(start, _DRAW_ROWS))
        take = order[start:start + size]
        start += take.shape[0]
        for x in rows(take):
            atom = _candidate_atom(x, positive, D[:filled], signed)
            if atom is not None:
                D[filled] = atom
                filled += 1
                if filled == n_atoms:
                    break
    if filled < n_atoms:
        G = rng.standard_normal((n_atoms - filled, p))
        if positive:
            G = np.abs(G)
        D[filled:] = G / np.linalg.norm(G, axis=1, keepdims=True)
    return D


def start_dictionary(X, n_atoms, D0, rng, positive=False, signed=True):
    """The first dictionary (float64, a new array): D0 (with ``positive``,
    its negative entries set to 0), or atoms drawn from X (``signed``: see
    :func:`initial_dictionary`)."""
    if D0 is None:
        return initial_dictionary(X, n_atoms, rng, positive, signed=signed)
    D = np.array(D0, dtype=np.float64, order="C")
    if positive:
        np.maximum(D, 0.0, out=D)
    return D


def _check_inputs(X, n_atoms, lmbd, D0, func, names=None):
    """Validated X (2-D float32/float64), n_atoms, lmbd and D0 (float64, atoms
    of norm > 1 projected on the ball, or None)."""
    names = names or {"n_atoms": "n_atoms", "lmbd": "lmbd", "D0": "D0"}
    na, nd = names["n_atoms"], names["D0"]
    n_atoms = check_scalar(n_atoms, na, func, low=1, high=2**31 - 1, integer=True)
    lmbd = check_scalar(lmbd, names["lmbd"], func, low=0.0)
    X = check_array(X, "X", min_samples=1)
    if D0 is not None:
        D0 = check_array(D0, nd, dtype=np.float64)
        if D0.shape != (n_atoms, X.shape[1]):
            raise ValueError(
                f"{nd} must have shape ({na}, n_features) = {(n_atoms, X.shape[1])}; "
                f"got {nd}.shape={D0.shape}.")
        D0 = D0.copy()
        norms = row_norms(D0)
        big = norms > 1
        D0[big] /= norms[big, None]
    return X, n_atoms, lmbd, D0


class _Progress:
    """An optional tqdm bar (progress=True); a no-op without tqdm."""

    def __init__(self, enabled, total, unit, desc):
        self.bar = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            warnings.warn("progress=True needs tqdm (pip install tqdm); learning "
                          "without a progress bar.", UserWarning, stacklevel=caller_stacklevel())
            return
        self.bar = tqdm(total=total, unit=unit, desc=desc, leave=False)

    def update(self, n=1, objective=None):
        if self.bar is not None:
            if objective is not None:
                self.bar.set_postfix(objective=f"{objective:.6g}", refresh=False)
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _stalled(objective, tol):
    """The stopping test: the last decrease is at most tol times the value.
    tol = 0 never stops (it runs max_iter iterations: a tie or an increase,
    which the online objective can have, is no reason to stop then)."""
    return (tol > 0 and len(objective) >= 2
            and objective[-2] - objective[-1] <= tol * objective[-1])


# ---------------------------------------------------------------------------
# online learning (also the state of MiniBatchDictionaryLearning.partial_fit)
# ---------------------------------------------------------------------------

class OnlineState:
    """The online algorithm's state: D, the statistics A and B, the step.

    ``step(X_batch)`` codes one mini-batch with the current D, folds it into
    A and B (with scikit-learn's forgetting factor) and runs one pass of
    block coordinate descent, re-initialising unused atoms from the batch's
    worst reconstructed signals.

    Units: D is scale-free; A and B are those of the signals times
    ``2**-exponent`` (``lmbd`` is in the signals' own units, coded at
    ``lmbd * 2**-exponent``), so that data of any magnitude is learned
    without overflow or underflow and data scaled by a power of two gives
    exactly the same atoms. A batch whose largest magnitude is within
    ``2**+-SCALE_LIMIT`` of the state's units is coded in them (multiplied
    by the exact power of two). A batch beyond it is handled exactly: when
    it is the larger (or the statistics are still zero) the state moves to
    its units (A and B multiplied by a power of two: the old statistics
    shrink, and what underflows is below the rounding of their sum with the
    new batch's); when it is the smaller it is coded in its own units and
    its share of A and B scaled down to the state's (the same argument).

    Parameters
    ----------
    D : array-like of shape (n_atoms, n_features)
        The initial dictionary (copied, float64).
    coder : _ExactCoder or _SlistaCoder
        The code step (its ``lmbd`` is set for every batch, in its units).
    lmbd : float
        Regularisation level, in the units of the signals.
    positive_dict : bool
    n_passes : int
        Passes of block coordinate descent a step.
    exponent : int
        The initial units (``scale_exponent``'s exponent of the data).
    """

    def __init__(self, D, coder, lmbd, positive_dict, n_passes=ONLINE_PASSES, exponent=0):
        self.n_passes = n_passes
        self.D = np.array(D, dtype=np.float64, order="C")
        m, n = self.D.shape
        self.A = np.zeros((m, m))
        self.B = np.zeros((m, n))
        self.exponent = int(exponent)
        self.n_steps = 0
        self.n_reinit = 0
        self.configure(coder, lmbd, positive_dict)

    def configure(self, coder, lmbd, positive_dict):
        """Code the next batches with ``coder`` at ``lmbd`` (the signals'
        units) and constrain the atoms with ``positive_dict``; D, A, B and
        the step count carry on (scikit-learn's partial_fit reads its
        parameters on every call). With ``positive_dict`` the negative
        entries of D are set to 0 (as ``start_dictionary`` does to D0): the
        atoms the dictionary step leaves alone are non-negative too."""
        self.coder, self.lmbd, self.positive_dict = coder, lmbd, positive_dict
        if positive_dict:
            np.maximum(self.D, 0.0, out=self.D)

    def copy(self):
        """A copy whose steps leave this state alone (its arrays copied)."""
        new = copy.copy(self)
        new.A, new.B, new.D = self.A.copy(), self.B.copy(), self.D.copy()
        return new

    def _units(self, top, dtype):
        """The exponent of the units to code a batch in, from the exponent
        ``top`` of its largest magnitude (None: an all-zero batch), moving
        the state's units when the batch is the larger (see the class)."""
        if top is None or abs(top - self.exponent) <= SCALE_LIMIT[dtype]:
            return self.exponent
        if top > self.exponent or not (self.A.any() or self.B.any()):
            with np.errstate(under="ignore"):
                self.A = np.ldexp(self.A, 2 * (self.exponent - top))
                self.B = np.ldexp(self.B, 2 * (self.exponent - top))
            self.exponent = top
        return top

    def step(self, X, exponent=0):
        """One mini-batch, the signals ``X * 2**exponent`` (exact).

        Returns the batch's summed objective, in the units of X (beyond the
        float range: 0 or inf).
        """
        b = X.shape[0]
        top = magnitude_exponent(X)
        e = self._units(None if top is None else top + exponent, X.dtype)
        if e != exponent:
            X = np.ldexp(X, exponent - e).astype(X.dtype, copy=False)
        lmbd = self.coder.lmbd = lmbd_in_units(self.lmbd, e, X.dtype)
        D = self.D.astype(X.dtype)
        Z = self.coder.codes(X, D)
        R, rr = _residuals(X, D, Z)
        objective = float((0.5 * rr + lmbd * _l1(Z)).sum())
        t = self.n_steps
        theta = b * (t + 1) if t < b - 1 else b * b + t + 1 - b
        beta = (theta + 1 - b) / (theta + 1)
        Z64 = Z.astype(np.float64, copy=False)
        A_b = (Z64.T @ Z64) / b
        B_b = (Z64.T @ X.astype(np.float64, copy=False)) / b
        if e != self.exponent:
            # a batch far below the statistics, coded in its own units: its
            # share in theirs (what underflows is below their rounding)
            with np.errstate(under="ignore"):
                A_b = np.ldexp(A_b, 2 * (e - self.exponent))
                B_b = np.ldexp(B_b, 2 * (e - self.exponent))
        self.A *= beta
        self.A += A_b
        self.B *= beta
        self.B += B_b
        diag = np.diagonal(self.A)
        threshold = REINIT_THRESHOLD * float(diag.mean())
        unused = ~(diag > threshold)
        if unused.any():
            # a new atom whose code c (|<r, a>| - lmbd, the others fixed)
            # would leave it unused by the same test, c^2 / b <= threshold,
            # is not made (A in the state's units, the residuals in the batch's)
            with np.errstate(over="ignore", under="ignore"):
                min_code = float(np.ldexp(np.sqrt(b * threshold), self.exponent - e))
            idx = _worst(rr, int(unused.sum()))
            replaced, _ = reinitialise(self.D, unused, R[idx], lmbd, min_code=min_code,
                                       positive=self.positive_dict,
                                       positive_code=self.coder.positive)
            self.n_reinit += replaced
            # their statistics are stale: forget them
            self.A[unused] = 0
            self.A[:, unused] = 0
            self.B[unused] = 0
        update_dictionary(self.D, self.A, self.B, positive=self.positive_dict,
                          n_passes=self.n_passes, threshold=threshold)
        self.n_steps += 1
        with np.errstate(over="ignore", under="ignore"):
            return float(np.ldexp(objective, 2 * (e - exponent)))


# ---------------------------------------------------------------------------
# learn_dictionary
# ---------------------------------------------------------------------------

def make_coder(coder, lmbd, code_tol, code_max_iter, positive_code, n_jobs, previous=None):
    """The code step ``coder`` ("cd" or "slista"); ``previous``, the coder of
    the earlier batches, passes on an SLISTA network's steps (its warm
    start)."""
    if coder == "cd":
        return _ExactCoder(lmbd, code_tol, code_max_iter, positive_code, n_jobs)
    new = _SlistaCoder(lmbd, SLISTA_LAYERS, SLISTA_ITER, positive_code, n_jobs)
    if isinstance(previous, _SlistaCoder):
        new.relative_steps = previous.relative_steps
    return new


def learn_dictionary(X, n_atoms, lmbd, method="online", max_iter=None, tol=None,
                     batch_size=256, D0=None, positive_code=False,
                     positive_dict=False, coder="cd", n_jobs=None, random_state=None,
                     callback=None, progress=False, *, shuffle=True, code_tol=None,
                     code_max_iter=10000, dict_passes=None):
    """Learn a dictionary of unit-norm atoms for sparse coding X.

    Minimises the mean over the signals x of ``1/2 ||x - z D||^2 + lmbd
    ||z||_1`` over the codes z and the atoms (rows of D, ``||d_k|| <= 1``),
    by alternating code steps and dictionary steps (see the module
    docstring).

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Signals, one per row (float32 stays float32; codes are computed in
        X's dtype, the dictionary step in float64).
    n_atoms : int
        Number of atoms, >= 1.
    lmbd : float
        Regularisation level (absolute), >= 0.
    method : {"online", "batch"}, default="online"
        ``"online"``: mini-batches and sufficient statistics (Mairal et al.
        2010), one dictionary step a mini-batch. ``"batch"``: every
        iteration codes all of X (warm-started from the previous codes) and
        takes one dictionary step; the objective never increases.
    max_iter : int, default=None
        Iterations: batch iterations (default 100), or epochs, passes over
        X in mini-batches, online (default 10).
    tol : float, default=None
        Stop when an iteration lowers the mean objective by at most ``tol``
        times its value (checked after every iteration; online, on the
        epochs' online objective, see :class:`DictionaryResult`). Default
        1e-4 batch, 1e-3 online. 0 runs ``max_iter`` iterations. A batch
        iteration stops only when the atoms it re-initialised promise a
        mean gain of at most ``tol`` times the objective too.
    batch_size : int, default=256
        Signals per mini-batch (online); the last batch of an epoch may be
        smaller. Ignored in batch mode.
    D0 : array-like of shape (n_atoms, n_features), default=None
        Initial dictionary (atoms of norm above 1 are scaled to 1; zero
        atoms are re-initialised at the first dictionary step). Default:
        n_atoms distinct signals of X drawn at random, normalised; zero
        signals are passed over, and random unit atoms complete a
        dictionary that X cannot fill (fewer distinct non-zero signals than
        atoms).
    positive_code : bool, default=False
        Non-negative codes.
    positive_dict : bool, default=False
        Non-negative atoms.
    coder : {"cd", "slista"}, default="cd"
        ``"cd"``: exact codes by :func:`fastlista.solve_lasso`, certified to
        a relative duality gap ``code_tol`` (at ``lmbd=0``: least-squares
        codes, of minimum norm, or non-negative least squares). ``"slista"``: a 10-layer SLISTA
        network re-trained (5 L-BFGS iterations) on every batch, its steps
        warm-started: approximate codes.
    n_jobs : int or None, default=None
        Threads: at most ``n_jobs`` run at any time. None uses every core
        (OpenMP's limit if lower).
    random_state : None, int or numpy.random.RandomState, default=None
        Draws the initial atoms, the random atoms completing them, and the
        order of the signals in every epoch (``shuffle``).
    callback : callable, default=None
        Called after every dictionary step (every mini-batch online) with a
        dict: ``"iteration"`` (the current iteration or epoch, from 0),
        ``"step"`` (dictionary steps so far), ``"D"`` (a copy of the
        dictionary), ``"objective"`` (the list of completed iterations'
        objectives) and ``"n_reinit"``. Returning True stops the learning.
    progress : bool, default=False
        Show a progress bar (tqdm, when installed) over the mini-batches
        (online) or iterations (batch).
    shuffle : bool, default=True
        Online: visit the signals in a new random order every epoch.
    code_tol : float, default=None
        coder="cd": relative duality gap of every code (``tol`` of
        :func:`fastlista.solve_lasso`); default 1e-8 for float64, 1e-6 for
        float32.
    code_max_iter : int, default=10000
        coder="cd": ``max_iter`` of :func:`fastlista.solve_lasso`.
    dict_passes : int, default=None
        Passes of block coordinate descent over the atoms in every
        dictionary step: default 1 online (one a mini-batch), 5 in batch
        mode (1 is scikit-learn's DictionaryLearning).

    Returns
    -------
    result : DictionaryResult
        ``D`` (unit-norm atoms), ``objective`` per iteration, ``n_iter``,
        ``n_steps``, ``n_reinit``, ``converged``.

    Raises
    ------
    ValueError
        For n_atoms or batch_size below 1, NaN or infinity in X or D0, or a
        D0 that is not (n_atoms, n_features)
        (``fastlista.InvalidParameterError`` is a ValueError).

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista.dictionary import learn_dictionary
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(500, 8)
    >>> res = learn_dictionary(X, n_atoms=12, lmbd=0.5, method="batch",
    ...                        max_iter=10, random_state=0)
    >>> res.D.shape
    (12, 8)
    >>> bool(np.allclose(np.linalg.norm(res.D, axis=1), 1))
    True
    >>> bool(np.all(np.diff(res.objective) <= 1e-12))
    True
    """
    func = "learn_dictionary"
    options = check_options(func, X, n_atoms, lmbd, method=method, max_iter=max_iter,
                            tol=tol, batch_size=batch_size, D0=D0,
                            positive_code=positive_code, positive_dict=positive_dict,
                            coder=coder, callback=callback, progress=progress,
                            shuffle=shuffle, code_tol=code_tol,
                            code_max_iter=code_max_iter, dict_passes=dict_passes)
    return run(options, n_jobs, check_random_state(random_state, func), func)[0]


def check_options(func, X, n_atoms, lmbd, *, method, max_iter, tol, batch_size, D0,
                  positive_code, positive_dict, coder, callback, progress, shuffle,
                  code_tol, code_max_iter, dict_passes=None, names=None):
    """Validate learn_dictionary's arguments (``names`` renames them in the
    messages: the estimators' n_components, alpha, dict_init); returns a dict
    of the validated values."""
    names = {"n_atoms": "n_atoms", "lmbd": "lmbd", "D0": "D0", "coder": "coder",
             **(names or {})}
    method = check_option(method, "method", func, METHODS)
    X, n_atoms, lmbd, D0 = _check_inputs(X, n_atoms, lmbd, D0, func, names=names)
    max_iter = DEFAULT_MAX_ITER[method] if max_iter is None else \
        check_max_iter(max_iter, func)
    tol = DEFAULT_TOL[method] if tol is None else check_scalar(tol, "tol", func, low=0.0)
    batch_size = check_scalar(batch_size, "batch_size", func, low=1, high=2**31 - 1,
                              integer=True)
    if callback is not None and not callable(callback):
        raise InvalidParameterError(
            f"The 'callback' parameter of {func} must be a callable or None. "
            f"Got {short_repr(callback)} instead.")
    return dict(
        X=X, n_atoms=n_atoms, lmbd=lmbd, D0=D0, method=method, max_iter=max_iter,
        tol=tol, batch_size=batch_size,
        positive_code=check_bool(positive_code, "positive_code", func),
        positive_dict=check_bool(positive_dict, "positive_dict", func),
        coder=check_option(coder, names["coder"], func, CODERS),
        callback=callback, progress=check_bool(progress, "progress", func),
        shuffle=check_bool(shuffle, "shuffle", func),
        code_tol=CERTIFIABLE_TOL[X.dtype] if code_tol is None else
        check_scalar(code_tol, "code_tol", func, low=0.0),
        code_max_iter=check_max_iter(code_max_iter, func, "code_max_iter"),
        dict_passes=(ONLINE_PASSES if method == "online" else BATCH_PASSES)
        if dict_passes is None else check_max_iter(dict_passes, func, "dict_passes"))


def magnitude_exponent(X):
    """The exponent e of max|X| (``2**(e-1) <= max|X| < 2**e``), None when X
    is all zero or empty."""
    return int(_top_exponent(X)) if X.size and X.any() else None


def units_exponent(top, dtype):
    """The units of data whose largest magnitude has exponent ``top`` (None:
    all zero): 0 unless it leaves 2**+-SCALE_LIMIT, else ``top`` (the data
    times ``2**-top`` has its largest magnitude in [1/2, 1))."""
    return 0 if top is None or abs(top) <= SCALE_LIMIT[np.dtype(dtype)] else top


def lmbd_in_units(lmbd, exponent, dtype):
    """``lmbd * 2**-exponent``, the regularisation of data times
    ``2**-exponent``; beyond the float range, the largest float of dtype:
    the data in those units is within 2**+-SCALE_LIMIT, so both are above
    every lmbd_max (all codes 0)."""
    with np.errstate(over="ignore"):
        return min(float(np.ldexp(lmbd, -exponent)), float(np.finfo(dtype).max))


def scale_exponent(X):
    """(X / 2**e, e): e = 0 unless max|X| leaves 2**+-SCALE_LIMIT (exact)."""
    e = units_exponent(magnitude_exponent(X), X.dtype)
    return (X, 0) if e == 0 else (np.ldexp(X, -e).astype(X.dtype), e)


def run(options, n_jobs, rng, func):
    """Learn with validated options (check_options): (DictionaryResult, the
    OnlineState of method "online" or None)."""
    o = options
    X, e = scale_exponent(o["X"])
    lmbd = lmbd_in_units(o["lmbd"], e, X.dtype)
    with kernel_threads(n_jobs, func) as n_threads:
        D = start_dictionary(X, o["n_atoms"], o["D0"], rng, o["positive_dict"],
                             signed=not o["positive_code"])
        code = make_coder(o["coder"], lmbd, o["code_tol"], o["code_max_iter"],
                          o["positive_code"], n_threads)
        if o["method"] == "online":
            # the state keeps the units of X (later partial_fit batches come
            # in the user's units: the state scales them)
            state = OnlineState(D, code, o["lmbd"], o["positive_dict"], o["dict_passes"],
                                exponent=e)
            objective, n_iter, n_steps, n_reinit, converged = _learn_online(
                X, e, state, o["max_iter"], o["tol"], o["batch_size"], o["shuffle"],
                rng, o["callback"], o["progress"])
        else:
            objective, n_iter, n_steps, n_reinit, converged, state = _learn_batch(
                X, e, D, lmbd, code, o["max_iter"], o["tol"], o["positive_dict"],
                o["callback"], o["progress"], o["dict_passes"])
    D = _normalise(state.D.copy(), rng, o["positive_dict"])
    objective = in_units(objective, e)
    result = DictionaryResult(D.astype(X.dtype), objective, n_iter, n_steps, n_reinit,
                              converged, o["method"], o["coder"])
    return result, (state if o["method"] == "online" else None)


def in_units(objective, exponent):
    """Objectives of the data times ``2**-exponent`` in the data's units
    (float64; beyond the float range: inf)."""
    with np.errstate(over="ignore"):
        return np.ldexp(np.asarray(objective, dtype=np.float64), 2 * exponent)


def _notify(callback, iteration, step, D, objective, n_reinit, exponent=0):
    """Call the callback, the objectives (of data times ``2**-exponent``) in
    the units of the data."""
    if callback is None:
        return False
    return bool(callback({"iteration": iteration, "step": step, "D": D.copy(),
                          "objective": in_units(objective, exponent).tolist(),
                          "n_reinit": n_reinit}))


def _learn_batch(X, e, D, lmbd, coder, max_iter, tol, positive_dict, callback, progress,
                 n_passes):
    objective, n_reinit, converged, it = [], 0, False, 0
    Z, f = None, None
    bar = _Progress(progress, max_iter, "iter", "learn_dictionary(batch)")
    try:
        for it in range(max_iter):
            Z, stats = code_stats(X, D, lmbd, coder, Z, n_worst=D.shape[0], f_prev=f)
            n_new, gain = batch_dictionary_step(D, stats, lmbd, positive_dict, n_passes,
                                                positive_code=coder.positive,
                                                dtype=X.dtype)
            n_reinit += n_new
            # the iteration's objective, its codes with the new D, from the
            # residuals (one GEMM): also the next code step's warm-start
            # objectives, which it would compute otherwise
            f = signal_objectives(X, D, Z, lmbd)[0]
            value = float(f.sum()) / X.shape[0]
            objective.append(value)
            bar.update(1, value)
            if _notify(callback, it, it + 1, D, objective, n_reinit, e):
                break
            if batch_stop(objective, tol, gain):
                converged = True
                break
    finally:
        bar.close()
    return (objective, len(objective), len(objective), n_reinit, converged,
            _BatchState(D))


class _BatchState:
    def __init__(self, D):
        self.D = D


def _learn_online(X, e, state, max_iter, tol, batch_size, shuffle, rng, callback,
                  progress):
    """Epochs of mini-batches of X (the data times ``2**-e``) through state."""
    n = X.shape[0]
    b = min(batch_size, n)
    per_epoch = -(-n // b)
    objective, converged, stop = [], False, False
    bar = _Progress(progress, max_iter * per_epoch, "batch", "learn_dictionary(online)")
    try:
        for epoch in range(max_iter):
            order = rng.permutation(n) if shuffle else None
            total = 0.0
            for start in range(0, n, b):
                rows = slice(start, start + b)
                Xb = X[rows] if order is None else X[np.sort(order[rows])]
                total += state.step(Xb, e)
                bar.update(1)
                if start + b >= n:
                    # the epoch is complete: the callback of its last batch
                    # sees its objective
                    objective.append(total / n)
                    bar.update(0, objective[-1])
                if _notify(callback, epoch, state.n_steps, state.D, objective,
                           state.n_reinit, e):
                    stop = True
                    break
            if stop:
                break
            if _stalled(objective, tol):
                converged = True
                break
    finally:
        bar.close()
    n_iter = -(-state.n_steps // per_epoch)     # epochs begun (the last maybe cut short)
    return objective, n_iter, state.n_steps, state.n_reinit, converged
