"""The computations behind the paper's figures and the ``fastlista demo``.

Every figure of *Learning step sizes for unfolded sparse coding* (Ablin,
Moreau, Massias & Gramfort, NeurIPS 2019) has a function here that computes
its data and returns an :class:`ExperimentResult`: a table (columns of equal
length, written as CSV), the key numbers the figure supports (``summary``),
the settings used, and any extra curves the plot needs. Nothing here plots
(see :mod:`fastlista.paper.plots`) or prints.

* ``oista``: :func:`oista_convergence` (Fig 2: 50 x 10 Gaussian D, lmbd=0.5);
* ``steps``: :func:`learned_steps` (Fig 4: 20 x 10, 20 layers, lmbd=0.2);
* ``dictionary-distance``: :func:`dictionary_distance` (Fig 5: LISTA-CP,
  40 layers, lmbd=0.05);
* ``networks``: :func:`network_comparison` (Fig 6: 256 x 64, lmbd in
  {0.1, 0.8}, simulated and digits), and beside it
  :func:`sparse_recovery_comparison` (supervised sparse recovery, LISTA-CP
  and ALISTA with and without support selection, NMSE by depth);
* ``lipschitz-law``: :func:`lipschitz_law` (Fig E.1: 600 x 200 Gaussian D);
* ``iterative``: :func:`iterative_comparison` (Fig E.2: 200 x 100, 10 seeds);
* ``learning-curves``: :func:`learning_curves` (Fig E.3: 10 x 5, 10 layers,
  lmbd=0.3);
* ``lambda-transfer``: :func:`lambda_transfer` (trained at lmbd=0.05,
  evaluated on [0.01, 1]).

The default arguments of each function are the paper's settings (those of
the authors' scripts).

The registry :data:`fastlista.paper.figures.FIGURES` holds, for each
figure, the paper's settings (``"paper"``), a reduced run that ends in under
two minutes on two cores (``"quick"``) and a seconds-long smoke run
(``"tiny"``); :func:`run` runs one of them.

Conventions: ``F - F*`` is the Lasso objective minus its minimum, averaged
over (test) samples, with ``F*`` computed per sample by coordinate descent
to a relative duality gap of 1e-12. Step sizes are reported in units of
``1/L`` (``step * L``), L = ||D D^T||_2.
"""
import csv
import functools
import json
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import (ConvergenceWarning, Lista, TrainingWarning, lasso_objective, lipschitz,
               solve_lasso)
from .._threads import blas_thread_limit
from .._validation import check_random_state
from ..datasets import (N_DIGITS, _draw_dictionary, _scale_to_unit_lambda_max,
                        make_coding, make_digits_coding)
from .figures import FIGURES

__all__ = ["ExperimentResult", "run", "demo", "format_summary", "format_demo_table",
           "oista_convergence", "learned_steps", "dictionary_distance",
           "network_comparison", "sparse_recovery_comparison", "make_sparse_recovery",
           "nmse_db", "lipschitz_law", "iterative_comparison",
           "learning_curves", "lambda_transfer", "theoretical_lipschitz_ratio"]

#: Display names of the methods (the paper's labels).
LABELS = {
    "ista": "ISTA", "fista": "FISTA", "backtracking": "Backtracking ISTA",
    "oista": "OISTA", "step": "SLISTA", "coupled": "LISTA-CP",
    "alista": "ALISTA", "lista": "LISTA",
    # with support selection (Lista(..., support_selection=(p, p_max)))
    "coupled-ss": "LISTA-CPSS", "alista-ss": "ALISTA-SS", "lista-ss": "LISTA-SS",
}

#: Relative duality gap of the reference solutions F*.
FSTAR_TOL = 1e-12


@dataclass
class ExperimentResult:
    """Data of one figure.

    Attributes
    ----------
    name : str
        The figure (``"oista"``, ``"steps"``, ...) or ``"demo"``.
    table : dict
        Column name -> 1-D array (all of the same length): the CSV.
    summary : dict
        The key numbers, name -> float, int, str or a small dict.
    settings : dict
        The arguments the experiment ran with.
    curves : dict
        Extra arrays for the plot (not in the CSV).
    elapsed : float
        Wall time of the computation, in seconds.
    """

    name: str
    table: dict
    summary: dict
    settings: dict
    curves: dict = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def n_rows(self):
        return len(next(iter(self.table.values()))) if self.table else 0

    def to_csv(self, path):
        """Write :attr:`table` to ``path`` (header line, then one row a line)."""
        cols = list(self.table)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for i in range(self.n_rows):
                w.writerow([_fmt_cell(self.table[c][i]) for c in cols])

    def to_json(self, path):
        """Write :attr:`summary`, :attr:`settings` and :attr:`elapsed` to ``path``."""
        with open(path, "w") as f:
            json.dump({"summary": self.summary, "settings": self.settings,
                       "elapsed_seconds": self.elapsed}, f, indent=1,
                      default=_json_default)


def _fmt_cell(v):
    if isinstance(v, (float, np.floating)):
        return "nan" if np.isnan(v) else f"{float(v):.10g}"
    if isinstance(v, np.integer):
        return str(int(v))
    return str(v)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _single_threaded_blas(func):
    """Run ``func`` with BLAS on one thread (threadpoolctl, when installed).

    The experiments train many small networks, whose small GEMMs a
    multi-threaded OpenBLAS only slows down (measured here: loss_and_grad of
    a 20-layer SLISTA on 1000 x 10 signals, 9.7 ms median with BLAS threads
    against 2.4 ms with one); the kernels' own OpenMP threads over blocks of
    samples still use the cores.
    """
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with blas_thread_limit(1):
            return func(*args, **kwargs)
    return wrapper


def _progress(progress, iterable, desc, total=None):
    """Wrap ``iterable`` in the caller's progress bar (if any)."""
    if progress is None:
        return iterable
    return progress(iterable, desc=desc, total=total)


def _optimal_codes(X, D, lmbd):
    """z* of every sample (coordinate descent, relative gap <= 1e-12)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return solve_lasso(X, D, lmbd, method="cd", tol=FSTAR_TOL, max_iter=100000).codes


def _optimal_objective(X, D, lmbd):
    """F*(x) of every sample."""
    return lasso_objective(X, D, lmbd, _optimal_codes(X, D, lmbd))


def _iterative_objectives(X, D, lmbd, method, n_iter):
    """Objective of every sample after 0..n_iter iterations: (n_iter + 1, N)."""
    res = solve_lasso(X, D, lmbd, method=method, tol=0, max_iter=n_iter,
                      record_history=True)
    return res.history["objective"], res.step_sizes


def _fit(D, lmbd, n_layers, parametrization, X, max_iter, per_layer="oneshot",
         optimizer="lbfgs", random_state=None):
    net = Lista(D, lmbd, n_layers, parametrization=parametrization,
                random_state=random_state)
    # tol=0: every training runs its max_iter iterations, as in the paper
    # (a relative-decrease test is dominated by the irreducible F* and would
    # stop the later stages of per_layer="recursive" after one iteration).
    # A network trained into all-zero codes (ALISTA at lmbd = 0.8, whose
    # analytic start is worse than z = 0) is a result of the figure, whose
    # F - F* is then that of z = 0 (docs/reproduction.md): not warned about
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gradient of the loss is exactly 0",
                                category=TrainingWarning)
        net.fit(X, max_iter=max_iter, per_layer=per_layer, optimizer=optimizer, tol=0)
    return net


def _layer_params(net, key):
    """The scalar parameter ``key`` ("alpha", "beta") of every layer of ``net``."""
    return np.array([float(p[key]) for p in net.parameters])


def _layer_supports(net, D, X):
    """For each layer t: the supports S of the outputs z_t of ``X``, and their L_S."""
    for t in range(net.n_layers):
        S = net.transform(X, n_layers=t + 1) != 0
        yield S, lipschitz(D, support=S)


def _mean_gap(X, D, lmbd, Z, Fstar):
    return float(np.mean(lasso_objective(X, D, lmbd, Z) - Fstar))


def _ista_gap(X, D, lmbd, n_iter, Fstar):
    """The baseline of the networks: mean F - F* after ``n_iter`` ISTA iterations."""
    Z = solve_lasso(X, D, lmbd, method="ista", tol=0, max_iter=n_iter).codes
    return _mean_gap(X, D, lmbd, Z, Fstar)


def _first_hit(values, threshold):
    """Index of the first entry of each column <= threshold (NaN if none)."""
    hit = values <= threshold
    idx = np.argmax(hit, axis=0).astype(float)
    idx[~hit.any(axis=0)] = np.nan
    return idx


def _split(X, n_train):
    return np.ascontiguousarray(X[:n_train]), np.ascontiguousarray(X[n_train:])


def theoretical_lipschitz_ratio(zeta, gamma):
    """The law of Fig E.1: L_S / L ~ ((1 + sqrt(zeta gamma)) / (1 + sqrt(gamma)))^2.

    For a Gaussian dictionary of ``m = gamma * n`` atoms in dimension ``n``
    and a support of ``zeta * m`` atoms (Marchenko-Pastur edges of the two
    Gram matrices, n -> infinity).
    """
    zeta = np.asarray(zeta, dtype=float)
    return ((1 + np.sqrt(zeta * gamma)) / (1 + np.sqrt(gamma))) ** 2


# ---------------------------------------------------------------------------
# Fig 2: OISTA against ISTA, FISTA and backtracking
# ---------------------------------------------------------------------------

@_single_threaded_blas
def oista_convergence(n_atoms=50, n_features=10, lmbd=0.5, max_iter=200,
                      n_signals=1000, threshold=1e-10, random_state=92518,
                      progress=None):
    """Fig 2: convergence of ISTA, FISTA, backtracking ISTA and OISTA.

    As in the paper's script, ``D`` is Gaussian (atoms *not* normalised) and
    the signal Gaussian, scaled so that ``lambda_max(x) = 1``; signal 0 is
    the paper's (same seed, same draws). ``n_signals - 1`` more signals of
    the same law give the statistics of ``summary``.

    Returns an :class:`ExperimentResult` whose table has one row per
    iteration 0..max_iter: ``F - F*`` of signal 0 for each method, the steps
    of OISTA and backtracking (in units of 1/L), and the median over the
    signals of ``F - F*``. ``summary`` gives the iterations each method needs
    to reach ``F - F* <= threshold``.
    """
    rng = check_random_state(random_state)
    D = rng.randn(n_atoms, n_features)
    X = rng.randn(n_signals, n_features)
    X = _scale_to_unit_lambda_max(X, D)
    L = lipschitz(D)
    Fstar = _optimal_objective(X, D, lmbd)
    methods = ("ista", "fista", "backtracking", "oista")
    subopt, steps = {}, {}
    for m in _progress(progress, methods, "solvers"):
        obj, st = _iterative_objectives(X, D, lmbd, m, max_iter)
        subopt[m] = obj
        if st is not None:
            steps[m] = st * L
    # F* from CD can exceed the best iterate by rounding: take the minimum
    Fstar = np.minimum(Fstar, np.min([o.min(axis=0) for o in subopt.values()], axis=0))
    subopt = {m: o - Fstar for m, o in subopt.items()}

    it = np.arange(max_iter + 1)
    table = {"iteration": it}
    for m in methods:
        table[m] = subopt[m][:, 0]
    for m in ("oista", "backtracking"):
        table[f"{m}_step_x_L"] = np.append(steps[m][:, 0], np.nan)
    for m in methods:
        table[f"median_{m}"] = np.median(subopt[m], axis=1)

    hits = {m: _first_hit(subopt[m], threshold) for m in methods}
    censored = {m: np.where(np.isnan(h), np.inf, h) for m, h in hits.items()}
    osteps = steps["oista"]
    summary = {
        "threshold": threshold,
        "L": L,
        "iterations_signal0": {m: _int_or_none(hits[m][0]) for m in methods},
        "median_iterations": {m: _median_or_none(censored[m]) for m in methods},
        "fraction_oista_fewer_than_ista": float(np.mean(censored["oista"] < censored["ista"])),
        "fraction_oista_at_most_ista": float(np.mean(censored["oista"] <= censored["ista"])),
        "fraction_oista_fewer_than_fista":
            float(np.mean(censored["oista"] < censored["fista"])),
        "oista_step_x_L_signal0": {"median": float(np.nanmedian(osteps[:, 0])),
                                   "max": float(np.nanmax(osteps[:, 0]))},
        "fraction_oista_steps_above_1_over_L": float(np.nanmean(osteps > 1 + 1e-12)),
    }
    settings = dict(n_atoms=n_atoms, n_features=n_features, lmbd=lmbd,
                    max_iter=max_iter, n_signals=n_signals, threshold=threshold,
                    random_state=random_state)
    return ExperimentResult("oista", table, summary, settings)


def _int_or_none(v):
    return None if v is None or not np.isfinite(v) else int(v)


def _median_or_none(values):
    med = float(np.median(values))
    return med if np.isfinite(med) else None


# ---------------------------------------------------------------------------
# Fig 4: learned SLISTA steps against the 1/L_S band
# ---------------------------------------------------------------------------

QUANTILES = np.linspace(0, 0.95, 11)


def _quantile_column(q):
    """The ``steps`` column of the quantile ``q`` of 1/L_S: its exact percent.

    ``_quantile_column(0.095)`` is ``"inv_LS_q09.5_x_L"``: percent with one
    decimal (every quantile of :data:`QUANTILES` is a multiple of 0.5 %),
    zero-padded so that the names sort in quantile order.
    """
    return f"inv_LS_q{100 * q:04.1f}_x_L"


def _step_band(net, D, X, L):
    """Per layer: 1/L_S of each sample's support at the layer's output."""
    T = net.n_layers
    inv_ls = np.empty((T, X.shape[0]))
    size = np.empty(T)
    for t, (S, LS) in enumerate(_layer_supports(net, D, X)):
        size[t] = S.sum(axis=1).mean()
        # an empty support has no L_S (any step keeps z = 0): left out
        inv_ls[t] = np.where(LS > 0, 1.0 / np.where(LS > 0, LS, 1.0), np.nan)
    alpha = _layer_params(net, "alpha")
    in_band = (alpha[:, None] >= inv_ls * (1 - 1e-9)) & \
        (alpha[:, None] <= 2 * inv_ls * (1 + 1e-9))
    frac = np.nanmean(np.where(np.isnan(inv_ls), np.nan, in_band), axis=1)
    return alpha * L, inv_ls * L, frac, size


@_single_threaded_blas
def learned_steps(n_features=10, n_atoms=20, n_train=1000, n_test=1000,
                  n_layers=20, lmbd=0.2, max_iter=100, optimizer="gd",
                  compare_optimizer="lbfgs", random_state=1, progress=None):
    """Fig 4: the step sizes learned by SLISTA against 1/L_S and 2/L_S.

    An SLISTA network (``parametrization="step"``, trained on the output
    loss with the paper's full-batch gradient descent, ``optimizer="gd"``)
    is fitted on ``make_coding`` signals. At each layer t, S is the support
    of each training sample's output z_t, and the quantiles 0, 9.5, ..., 95 %
    of 1/L_S over the samples form the band of the figure.

    With ``compare_optimizer`` (default ``"lbfgs"``, fastlista's default),
    a second network is trained the same way with that optimiser and its
    steps are reported beside (columns ``*_<optimizer>``): the band is a
    property of what gradient descent learns, not of every minimiser.

    Table: one row per layer with the learned step, the quantiles of 1/L_S
    (all in units of 1/L; columns named by the exact quantile in percent,
    ``inv_LS_q00.0_x_L``, ``inv_LS_q09.5_x_L``, ..., ``inv_LS_q95.0_x_L``),
    the fraction of samples with
    ``1/L_S <= step <= 2/L_S`` and the mean support size.
    """
    X, D = make_coding(n_train + n_test, n_atoms, n_features, random_state=random_state)
    X_train, X_test = _split(X, n_train)
    optimizers = [optimizer] + ([compare_optimizer] if compare_optimizer else [])
    nets = {}
    for opt in _progress(progress, optimizers, "training SLISTA"):
        nets[opt] = _fit(D, lmbd, n_layers, "step", X_train, max_iter, "oneshot",
                         opt, random_state)
    net = nets[optimizer]
    L = net.lipschitz_
    step, inv_ls, in_band_frac, size = _step_band(net, D, X_train, L)
    q = np.nanquantile(inv_ls, QUANTILES, axis=1)                 # (11, T)
    med = np.nanmedian(inv_ls, axis=1)
    table = {"layer": np.arange(1, n_layers + 1), "step_x_L": step}
    for qi, qq in zip(QUANTILES, q):
        table[_quantile_column(qi)] = qq
    table["inv_LS_median_x_L"] = med
    table["fraction_in_band"] = in_band_frac
    table["mean_support_size"] = size

    Fstar = _optimal_objective(X_test, D, lmbd)
    ista_gap = _ista_gap(X_test, D, lmbd, n_layers, Fstar)
    deep = slice(n_layers // 2, n_layers)
    summary = {
        "L": L,
        "optimizer": optimizer,
        "step_x_L_first_layer": float(step[0]),
        "step_x_L_last_layer": float(step[-1]),
        "layers_with_step_above_1_over_L": int(np.sum(step > 1 + 1e-9)),
        "deep_layers_step_above_1_over_L": bool(np.all(step[deep] > 1)),
        "deep_layers_mean_fraction_in_band": float(np.mean(in_band_frac[deep])),
        "deep_layers_step_over_median_inv_LS": float(np.median(step[deep] / med[deep])),
        "test_gap": {"ISTA": ista_gap,
                     f"SLISTA ({optimizer})": _mean_gap(X_test, D, lmbd,
                                                        net.transform(X_test), Fstar)},
    }
    if compare_optimizer:
        other = nets[compare_optimizer]
        o_step, _, o_frac, _ = _step_band(other, D, X_train, L)
        table[f"step_x_L_{compare_optimizer}"] = o_step
        table[f"fraction_in_band_{compare_optimizer}"] = o_frac
        summary["test_gap"][f"SLISTA ({compare_optimizer})"] = _mean_gap(
            X_test, D, lmbd, other.transform(X_test), Fstar)
        summary[f"{compare_optimizer}: deep_layers_mean_fraction_in_band"] = \
            float(np.mean(o_frac[deep]))
        summary[f"{compare_optimizer}: step_x_L range"] = \
            f"{o_step.min():.3g} .. {o_step.max():.3g}"
    settings = dict(n_features=n_features, n_atoms=n_atoms, n_train=n_train,
                    n_test=n_test, n_layers=n_layers, lmbd=lmbd, max_iter=max_iter,
                    optimizer=optimizer, compare_optimizer=compare_optimizer,
                    random_state=random_state)
    return ExperimentResult("steps", table, summary, settings,
                            curves={"quantiles": QUANTILES})


# ---------------------------------------------------------------------------
# Fig 5: distance of the coupled weights to the dictionary
# ---------------------------------------------------------------------------

@_single_threaded_blas
def dictionary_distance(n_features=10, n_atoms=20, n_samples=1000, n_layers=40,
                        lmbd=0.05, max_iter=10000, per_layer="recursive",
                        optimizer="gd", random_state=1, progress=None):
    """Fig 5: a deep LISTA-CP network only learns a step size in its last layers.

    A ``coupled`` network is trained (``per_layer="recursive"`` and
    full-batch gradient descent, as in the paper) and, for each layer, the
    distance of its weights to the dictionary is measured two ways:
    ``||alpha_t W_t - beta_t D||_F`` (the paper's axis) and
    :meth:`Lista.dictionary_distance`,
    ``||(alpha_t / beta_t) W_t - D||_F / ||D||_F`` (scale free).
    """
    X, D = make_coding(n_samples, n_atoms, n_features, random_state=random_state)
    bar = _progress(progress, range(1), "training LISTA-CP")
    for _ in bar:
        net = _fit(D, lmbd, n_layers, "coupled", X, max_iter, per_layer, optimizer,
                   random_state)
    L = net.lipschitz_
    alpha = _layer_params(net, "alpha")
    beta = _layer_params(net, "beta")
    fro = np.array([np.linalg.norm(a * p["W"] - b * D)
                    for a, b, p in zip(alpha, beta, net.parameters)])
    rel = net.dictionary_distance()
    table = {"layer": np.arange(1, n_layers + 1), "alphaW_minus_betaD_fro": fro,
             "relative_distance": rel, "alpha_x_L": alpha * L, "beta_x_L": beta * L}
    q = max(1, n_layers // 4)
    Fstar = _optimal_objective(X, D, lmbd)
    summary = {
        "relative_distance_first_quarter": float(rel[:q].mean()),
        "relative_distance_last_quarter": float(rel[-q:].mean()),
        "relative_distance_max": float(rel.max()),
        "argmax_layer": int(np.argmax(rel)) + 1,
        "fro_first_quarter": float(fro[:q].mean()),
        "fro_last_quarter": float(fro[-q:].mean()),
        "train_gap": {"ISTA": _ista_gap(X, D, lmbd, n_layers, Fstar),
                      "LISTA-CP": _mean_gap(X, D, lmbd, net.transform(X), Fstar)},
    }
    settings = dict(n_features=n_features, n_atoms=n_atoms, n_samples=n_samples,
                    n_layers=n_layers, lmbd=lmbd, max_iter=max_iter,
                    per_layer=per_layer, optimizer=optimizer, random_state=random_state)
    return ExperimentResult("dictionary-distance", table, summary, settings)


# ---------------------------------------------------------------------------
# Fig 6: held-out F - F* against depth for every network
# ---------------------------------------------------------------------------

def _load_dataset(dataset, n_samples, n_atoms, n_features, random_state):
    if dataset == "simulated":
        return make_coding(n_samples, n_atoms, n_features, random_state=random_state)
    if dataset == "digits":
        return make_digits_coding(n_samples, n_atoms, random_state=random_state)
    raise ValueError(f"unknown dataset {dataset!r}: 'simulated' or 'digits'")


def _digits_sizes(n_train, n_test, n_atoms):
    """Shrink a train/test split to the images load_digits has."""
    avail = N_DIGITS - n_atoms
    if n_train + n_test <= avail:
        return n_train, n_test
    n_tr = int(round(avail * n_train / (n_train + n_test)))
    return max(1, n_tr), max(1, avail - max(1, n_tr))


#: Columns of the ``networks`` table: the unsupervised rows (problem "lasso")
#: and the supervised recovery rows (problem "recovery").
NETWORK_COLUMNS = ("dataset", "lmbd", "method", "depth", "gap", "median_gap",
                   "problem", "nmse_db")


@_single_threaded_blas
def network_comparison(n_features=64, n_atoms=256, n_train=10000, n_test=10000,
                       lmbds=(0.1, 0.8), datasets=("simulated", "digits"),
                       depths=tuple(range(1, 31)),
                       networks=("coupled", "alista", "step"), max_iter=3000,
                       optimizer="gd", recovery=True, random_state=0, progress=None):
    """Fig 6: held-out ``F - F*`` against depth, networks against ISTA and FISTA.

    For each data set and lmbd, one network of each parametrization is
    trained for every depth in ``depths`` (``per_layer="oneshot"`` and
    full-batch gradient descent, as in the paper), and ISTA and FISTA run as
    many iterations. The digits data set
    has only 1797 images: ``n_train`` and ``n_test`` are shrunk in
    proportion to the ``1797 - n_atoms`` available.

    Table (long format): ``dataset, lmbd, method, depth, gap, median_gap``:
    the mean (the paper's metric) and the median over the test signals of
    ``F - F*``. A mean far above the median means a few held-out signals on
    which the network diverges. These rows have ``problem = "lasso"`` and
    ``nmse_db`` NaN.

    ``recovery`` adds, beside this unsupervised comparison, the supervised
    sparse recovery of :func:`sparse_recovery_comparison` (LISTA-CP,
    LISTA-CPSS, ALISTA and ALISTA-SS trained on ground-truth codes; test
    NMSE by depth): True runs it with its defaults (the papers' settings),
    a dict with those defaults overridden (its ``random_state`` defaults to
    this function's), False or None skips it. Its rows have ``problem =
    "recovery"``, ``gap`` and ``median_gap`` NaN and the NMSE in
    ``nmse_db``; its summary entries start with ``"recovery: "`` and follow
    the unsupervised ones; its settings are ``settings["recovery"]`` and its
    test codes are in ``curves``.
    """
    depths = sorted(set(int(d) for d in depths))
    T = max(depths)
    rows = {c: [] for c in NETWORK_COLUMNS}

    def add(ds, lm, method, depth, gaps):
        rows["dataset"].append(ds)
        rows["lmbd"].append(lm)
        rows["method"].append(LABELS[method])
        rows["depth"].append(depth)
        rows["gap"].append(float(np.mean(gaps)))
        rows["median_gap"].append(float(np.median(gaps)))
        rows["problem"].append("lasso")
        rows["nmse_db"].append(np.nan)

    sizes = {}
    jobs = [(ds, lm, net, d) for ds in datasets for lm in lmbds
            for net in networks for d in depths]
    bar = _progress(progress, jobs, "training networks", total=len(jobs))
    data = {}
    for ds, lm, net_name, depth in bar:
        if ds not in data:
            n_tr, n_te = (_digits_sizes(n_train, n_test, n_atoms) if ds == "digits"
                          else (n_train, n_test))
            sizes[ds] = (n_tr, n_te)
            X, D = _load_dataset(ds, n_tr + n_te, n_atoms, n_features, random_state)
            data[ds] = (D,) + _split(X, n_tr)
        D, X_train, X_test = data[ds]
        key = (ds, lm)
        if key not in data:
            Fstar = _optimal_objective(X_test, D, lm)
            data[key] = Fstar
            for m in ("ista", "fista"):
                obj, _ = _iterative_objectives(X_test, D, lm, m, T)
                for d in depths:
                    add(ds, lm, m, d, obj[d] - Fstar)
        Fstar = data[key]
        net = _fit(D, lm, depth, net_name, X_train, max_iter, "oneshot", optimizer,
                   random_state)
        add(ds, lm, net_name, depth,
            lasso_objective(X_test, D, lm, net.transform(X_test)) - Fstar)

    table = {k: np.array(v) for k, v in rows.items()}
    summary = {}
    for ds in datasets:
        for lm in lmbds:
            sel = (table["dataset"] == ds) & (table["lmbd"] == lm) & (table["depth"] == T)
            at_T = {str(m): float(g) for m, g in zip(table["method"][sel], table["gap"][sel])}
            best = min(at_T, key=at_T.get)
            summary[f"{ds}, lmbd={lm}: gap at depth {T}"] = at_T
            summary[f"{ds}, lmbd={lm}: best at depth {T}"] = best
            if "SLISTA" in at_T:
                sl = (table["dataset"] == ds) & (table["lmbd"] == lm)
                wins = []
                for d in depths:
                    g = {str(m): float(v) for m, v in zip(
                        table["method"][sl & (table["depth"] == d)],
                        table["gap"][sl & (table["depth"] == d)])}
                    wins.append(g["SLISTA"] < g["ISTA"])
                summary[f"{ds}, lmbd={lm}: SLISTA beats ISTA at"] = \
                    f"{sum(wins)}/{len(wins)} depths"
    settings = dict(n_features=n_features, n_atoms=n_atoms, n_train=n_train,
                    n_test=n_test, lmbds=list(lmbds), datasets=list(datasets),
                    depths=depths, networks=list(networks), max_iter=max_iter,
                    optimizer=optimizer, random_state=random_state,
                    sizes={k: list(v) for k, v in sizes.items()})
    curves = {}
    if recovery:
        kw = dict(random_state=random_state)
        if isinstance(recovery, dict):
            kw.update(recovery)
        rec = sparse_recovery_comparison(progress=progress, **kw)
        table = {c: np.array(list(table[c]) + list(rec.table[c]))
                 for c in NETWORK_COLUMNS}
        summary.update(rec.summary)
        settings["recovery"] = rec.settings
        curves.update(rec.curves)
    else:
        settings["recovery"] = None
    return ExperimentResult("networks", table, summary, settings, curves=curves)


# ---------------------------------------------------------------------------
# beside Fig 6: supervised sparse recovery, with and without support selection
# ---------------------------------------------------------------------------

def make_sparse_recovery(n_samples, n_atoms=500, n_features=250, density=0.1, snr=40.0,
                         random_state=None):
    """The sparse recovery problem of LISTA-CPSS and ALISTA: x = s D + e.

    ``D`` has i.i.d. Gaussian entries and unit-norm atoms (rows), the
    ground-truth codes ``s`` are Bernoulli-Gaussian (each entry non-zero with
    probability ``density``, then N(0, 1)) and ``e`` is white Gaussian noise
    whose variance gives the signal-to-noise ratio ``snr`` (dB) on average:
    ``E||s D||^2 = density * n_atoms`` (unit atoms), so ``sigma^2 = density *
    n_atoms / (n_features * 10^(snr / 10))``; ``snr=inf`` is noiseless. The
    signals are not rescaled: the targets are the codes themselves. Draws,
    in order: D, then for the signals the support mask, the values and the
    noise (further draws from the same generator give more signals of the
    same problem: see :func:`sparse_recovery_comparison`).

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
    D : ndarray of shape (n_atoms, n_features)
    S : ndarray of shape (n_samples, n_atoms)
        The ground-truth codes.
    """
    rng = check_random_state(random_state)
    D = _draw_dictionary(rng, n_atoms, n_features)
    X, S = _draw_recovery_signals(rng, n_samples, D, density, snr)
    return X, D, S


def _draw_recovery_signals(rng, n_samples, D, density, snr):
    """``n_samples`` signals x = s D + e of :func:`make_sparse_recovery`."""
    n_atoms, n_features = D.shape
    mask = rng.random_sample((n_samples, n_atoms)) < density
    S = np.where(mask, rng.standard_normal((n_samples, n_atoms)), 0.0)
    X = S @ D
    if not (np.isinf(snr) and snr > 0):
        sigma = math.sqrt(density * n_atoms / (n_features * 10.0 ** (snr / 10.0)))
        X = X + sigma * rng.standard_normal(X.shape)
    return np.ascontiguousarray(X), np.ascontiguousarray(S)


def nmse_db(Z, S):
    """NMSE in dB: ``10 log10(sum ||z - s||^2 / sum ||s||^2)`` over the rows
    (the ratio of the means, as in LISTA-CPSS and ALISTA)."""
    Z = np.asarray(Z, dtype=np.float64)
    S = np.asarray(S, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(10 * np.log10(np.sum((Z - S) ** 2) / np.sum(S ** 2)))


def _recovery_variants(networks, support_selection):
    """(key, parametrization, support_selection) of every network trained."""
    out = []
    for name in networks:
        out.append((name, name, None))
        if support_selection is not None and name in ("coupled", "alista", "lista"):
            out.append((f"{name}-ss", name, tuple(support_selection)))
    return out


def _stage_iterations(max_iter, n_layers):
    """``max_iter`` split evenly over the stages (as ``per_layer="recursive"``)."""
    split = np.diff(np.round(np.linspace(0, max_iter, n_layers + 1)).astype(int))
    return [max(1, int(it)) for it in split]


def _fit_layerwise(D, lmbd, n_layers, parametrization, support_selection, batches,
                   max_iter, optimizer):
    """Supervised layer-wise training: stage k trains layers 1..k on the output of
    layer k, on the signals ``batches(k)`` = (X, S); returns the network and the
    NMSE (dB) of its output on the last stage's signals."""
    net = Lista(D, lmbd, n_layers, parametrization, support_selection=support_selection)
    for k, n_iter in enumerate(_stage_iterations(max_iter, n_layers), start=1):
        X, S = batches(k)
        # the first k layers as a network of their own (the selection counts
        # of layer t depend on t only): fitting it is stage k of
        # per_layer="recursive", on this stage's signals
        sub = Lista(D, lmbd, k, parametrization, support_selection=support_selection)
        sub.set_parameters(net.parameters[:k])
        sub.fit(X, loss="supervised", Z_target=S, optimizer=optimizer,
                max_iter=n_iter, tol=0)
        net.set_parameters(sub.parameters + net.parameters[k:])
    return net, nmse_db(net.transform(X), S)


@_single_threaded_blas
def sparse_recovery_comparison(n_features=250, n_atoms=500, density=0.1, snr=40.0,
                               n_train=5000, n_test=1000, n_layers=16,
                               networks=("coupled", "alista"),
                               support_selection=(1.2, 13.0), lmbd=0.4,
                               baseline_lmbds=(0.025, 0.05, 0.1, 0.2, 0.4, 0.8),
                               max_iter=480, optimizer="lbfgs", fresh_data=True,
                               random_state=0, progress=None):
    """Supervised sparse recovery by depth, with and without support selection.

    The setting of LISTA-CPSS (Chen, Liu, Wang & Yin, NeurIPS 2018) and
    ALISTA (Liu, Chen, Wang & Yin, ICLR 2019): :func:`make_sparse_recovery`
    signals (250 x 500 Gaussian measurement matrix with unit-norm columns,
    Bernoulli(0.1)-Gaussian codes, SNR 40 dB) and ``n_test`` test signals.
    Each network of ``networks`` (LISTA-CP ``"coupled"``, ALISTA
    ``"alista"``) is trained as it is and with ``support_selection`` (their
    papers' p = 1.2 %, p_max = 13 %: LISTA-CPSS, ALISTA-SS), on the
    supervised loss ``1/2 ||z_T - s||^2`` to the ground-truth codes,
    layer-wise as in those papers: one ``n_layers``-layer network, stage k
    training layers 1..k on the output of layer k (``per_layer=
    "recursive"``), with ``max_iter`` iterations of ``optimizer`` in all,
    split evenly over the stages.

    Those papers train on fresh signals drawn for every mini-batch. With
    ``fresh_data`` (the default), each stage draws its own ``n_train``
    signals of the same problem (from a seed of its own, drawn after the
    test set; every network sees the same batches), which keeps the many
    weights of LISTA-CP from fitting one fixed set; ``fresh_data=False``
    trains every stage on the same ``n_train`` signals
    (``Lista.fit(per_layer="recursive")``). The cost is the same.

    The defaults are the papers' problem (250 x 500, 16 layers, SNR 40 dB,
    p = 1.2 %, p_max = 13 %, 1000 test signals); the training budget (5000
    fresh signals and 30 L-BFGS iterations a stage: hours on 2 cores) is
    this module's, far below the papers' millions of signals.

    Depth t is the output of layer t of that network (the papers'
    NMSE-by-layer curves), not a network trained for depth t as in the
    unsupervised part of the figure. Thresholds start at ``lmbd / L`` (0.4:
    the initial lambda of the LISTA-CPSS code). ISTA and FISTA (t iterations
    at depth t) are the baselines, each at the lmbd of ``baseline_lmbds``
    with the lowest NMSE at depth ``n_layers`` on (up to 1000) training
    signals.

    Table: the long format of :func:`network_comparison` with ``problem =
    "recovery"``, dataset ``"bernoulli-gaussian"``, the test NMSE (dB,
    :func:`nmse_db`) in ``nmse_db`` and ``gap``, ``median_gap`` NaN.
    ``curves`` holds the test codes (``"recovery_test_targets"``) and each
    method's output at depth ``n_layers`` (``"recovery_test_codes"``).
    The training NMSE of the summary is on the signals of the last stage.
    """
    T = int(n_layers)
    rng = check_random_state(random_state)
    D = _draw_dictionary(rng, n_atoms, n_features)
    X_test, S_test = _draw_recovery_signals(rng, n_test, D, density, snr)
    if fresh_data:
        # one seed a stage, so that every network sees the same batches while
        # only the current one is in memory (the paper preset's 16 batches
        # would take 0.5 GB)
        seeds = rng.randint(0, 2**31 - 1, size=T)

        def batches(k):
            return _draw_recovery_signals(np.random.RandomState(seeds[k - 1]), n_train,
                                          D, density, snr)
    else:
        fixed = _draw_recovery_signals(rng, n_train, D, density, snr)
        batches = lambda k: fixed                      # noqa: E731
    rows = {c: [] for c in NETWORK_COLUMNS}

    def add(method, lm, depth, Z):
        rows["dataset"].append("bernoulli-gaussian")
        rows["lmbd"].append(float(lm))
        rows["method"].append(LABELS[method])
        rows["depth"].append(depth)
        rows["gap"].append(np.nan)
        rows["median_gap"].append(np.nan)
        rows["problem"].append("recovery")
        rows["nmse_db"].append(nmse_db(Z, S_test))

    codes = {}
    chosen = {}
    X_sel, S_sel = (a[:1000] for a in batches(1))
    for m in ("ista", "fista"):
        score = [nmse_db(solve_lasso(X_sel, D, lm, method=m, tol=0, max_iter=T).codes,
                         S_sel) for lm in baseline_lmbds]
        lm = float(baseline_lmbds[int(np.nanargmin(score))])
        chosen[LABELS[m]] = lm
        for d in range(1, T + 1):
            Z = solve_lasso(X_test, D, lm, method=m, tol=0, max_iter=d).codes
            add(m, lm, d, Z)
        codes[LABELS[m]] = Z

    train_nmse = {}
    train_time = {}
    variants = _recovery_variants(networks, support_selection)
    for key, par, ss in _progress(progress, variants, "training networks (recovery)",
                                  total=len(variants)):
        t0 = time.perf_counter()
        net, train_nmse[LABELS[key]] = _fit_layerwise(D, lmbd, T, par, ss, batches,
                                                      max_iter, optimizer)
        train_time[LABELS[key]] = time.perf_counter() - t0
        for d in range(1, T + 1):
            Z = net.transform(X_test, n_layers=d)
            add(key, lmbd, d, Z)
        codes[LABELS[key]] = Z

    table = {k: np.array(v) for k, v in rows.items()}
    at = {}
    for lab in codes:
        sel = table["method"] == lab
        at[lab] = dict(zip(table["depth"][sel].tolist(), table["nmse_db"][sel].tolist()))
    clean = S_test @ D
    with np.errstate(divide="ignore"):
        snr_measured = float(10 * np.log10(np.sum(clean ** 2)
                                           / np.sum((X_test - clean) ** 2)))
    summary = {
        "recovery: problem": (
            f"{n_features} x {n_atoms} Gaussian D (unit atoms), Bernoulli({density})-"
            f"Gaussian codes, SNR {snr} dB, {T} layers trained layer-wise on "
            f"{'fresh ' if fresh_data else ''}{n_train} training signals"
            f"{' a stage' if fresh_data else ''}, {n_test} test signals"),
        "recovery: measured test SNR (dB)": snr_measured,
        "recovery: ISTA / FISTA lmbd (chosen on training signals)": chosen,
        f"recovery: test NMSE (dB) at depth {T}": {lab: at[lab][T] for lab in codes},
        f"recovery: training NMSE (dB) at depth {T}": train_nmse,
    }
    gain, helps = {}, {}
    for key, par, ss in variants:
        if ss is None:
            continue
        ss_lab, lab = LABELS[key], LABELS[par]
        gain[f"{ss_lab} - {lab}"] = at[ss_lab][T] - at[lab][T]
        helps[f"{ss_lab} vs {lab}"] = \
            f"{sum(at[ss_lab][d] < at[lab][d] for d in range(1, T + 1))}/{T} depths"
    if gain:
        summary[f"recovery: support selection at depth {T} (SS - no SS, dB; "
                f"< 0: SS helps)"] = gain
        summary["recovery: support selection gives the lower test NMSE at"] = helps
    summary["recovery: training time (s)"] = train_time
    settings = dict(n_features=n_features, n_atoms=n_atoms, density=density, snr=snr,
                    n_train=n_train, n_test=n_test, n_layers=T, networks=list(networks),
                    support_selection=(None if support_selection is None
                                       else list(support_selection)),
                    lmbd=lmbd, baseline_lmbds=list(baseline_lmbds), max_iter=max_iter,
                    optimizer=optimizer, fresh_data=bool(fresh_data),
                    per_layer="recursive", loss="supervised", random_state=random_state)
    curves = {"recovery_test_targets": S_test, "recovery_test_codes": codes}
    return ExperimentResult("networks-recovery", table, summary, settings, curves=curves)


# ---------------------------------------------------------------------------
# Fig E.1: L_S / L against the sparsity of S
# ---------------------------------------------------------------------------

@_single_threaded_blas
def lipschitz_law(n_features=200, gamma=3, zetas=tuple(np.linspace(0.1, 1.0, 10)),
                  n_supports=50, random_state=0, progress=None):
    """Fig E.1: measured ``L_S / L`` against ``((1+sqrt(zeta gamma))/(1+sqrt gamma))^2``.

    ``D`` has ``gamma * n_features`` i.i.d. standard Gaussian atoms (not
    normalised, as in the paper). For each ``zeta``, ``n_supports`` random
    supports of ``round(zeta * n_atoms)`` atoms give ``L_S / L`` (the paper
    draws one support per zeta; the spread over several is in the table).
    """
    rng = check_random_state(random_state)
    n_atoms = int(round(gamma * n_features))
    D = rng.randn(n_atoms, n_features)
    L = lipschitz(D)
    zetas = np.asarray(zetas, dtype=float)
    ratios = np.empty((len(zetas), n_supports))
    for i in _progress(progress, range(len(zetas)), "supports"):
        k = max(1, int(round(zetas[i] * n_atoms)))
        S = np.zeros((n_supports, n_atoms), dtype=bool)
        for j in range(n_supports):
            S[j, rng.choice(n_atoms, k, replace=False)] = True
        ratios[i] = lipschitz(D, support=S) / L
    law = theoretical_lipschitz_ratio(zetas, gamma)
    med = np.median(ratios, axis=1)
    rel = (med - law) / law
    table = {"zeta": zetas, "law": law, "median": med,
             "q05": np.quantile(ratios, 0.05, axis=1),
             "q95": np.quantile(ratios, 0.95, axis=1),
             "min": ratios.min(axis=1), "max": ratios.max(axis=1),
             "relative_error_of_median": rel, "linear_zeta": zetas}
    summary = {
        "n_atoms x n_features": f"{n_atoms} x {n_features}",
        "max_abs_relative_error_of_median": float(np.max(np.abs(rel))),
        "max_abs_error_of_median": float(np.max(np.abs(med - law))),
        "law_above_zeta": bool(np.all(law[zetas < 1] > zetas[zetas < 1])),
        "L": L,
    }
    settings = dict(n_features=n_features, gamma=gamma, zetas=list(map(float, zetas)),
                    n_supports=n_supports, random_state=random_state)
    return ExperimentResult("lipschitz-law", table, summary, settings,
                            curves={"ratios": ratios})


# ---------------------------------------------------------------------------
# Fig E.2: iterations and time of ISTA, FISTA and OISTA
# ---------------------------------------------------------------------------

@_single_threaded_blas
def iterative_comparison(n_features=100, n_atoms=200, lmbds=(0.1, 0.4, 0.8),
                         n_seeds=10, eps=1e-8, max_iter=100000, n_repeats=5,
                         progress=None, random_state=0):
    """Fig E.2: iterations and time for ISTA, FISTA and OISTA to reach F* + eps.

    One ``make_coding`` signal per seed: seeds ``random_state``,
    ``random_state + 1``, ..., modulo 2**32 (the seeds past 2**32 - 1 wrap
    around to 0, 1, ...). The number of iterations to reach
    ``F <= F* + eps`` is read from the recorded objective; the time is that of
    a fresh single-threaded run of exactly that many iterations (best of
    ``n_repeats``), so it includes the per-call overhead (validation,
    ``c = x D^T``, L) and, for OISTA, the computation of every ``L_S``
    (which the paper left out as "given by an oracle").
    """
    methods = ("ista", "fista", "oista")
    rows = {"lmbd": [], "seed": [], "method": [], "n_iter": [], "time": []}
    seeds = [(random_state + k) % 2**32 for k in range(n_seeds)]
    jobs = [(lm, s) for lm in lmbds for s in seeds]
    for lm, seed in _progress(progress, jobs, "problems", total=len(jobs)):
        X, D = make_coding(1, n_atoms, n_features, random_state=seed)
        Fstar = float(_optimal_objective(X, D, lm)[0])
        for m in methods:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                res = solve_lasso(X, D, lm, method=m, tol=1e-13, max_iter=max_iter,
                                  record_history=True)
            obj = res.history["objective"][:, 0]
            Fstar = min(Fstar, float(obj.min()))
            hit = _first_hit(obj[:, None] - Fstar, eps)[0]
            t = np.nan
            if np.isfinite(hit):
                n = max(int(hit), 1)
                best = np.inf
                for _ in range(n_repeats):
                    t0 = time.perf_counter()
                    solve_lasso(X, D, lm, method=m, tol=0, max_iter=n, n_jobs=1)
                    best = min(best, time.perf_counter() - t0)
                t = best
            rows["lmbd"].append(lm)
            rows["seed"].append(seed)
            rows["method"].append(LABELS[m])
            rows["n_iter"].append(hit)
            rows["time"].append(t)
    table = {k: np.array(v) for k, v in rows.items()}
    summary = {}
    for lm in lmbds:
        sel = table["lmbd"] == lm
        by = {m: sel & (table["method"] == LABELS[m]) for m in methods}
        it = {LABELS[m]: float(np.median(table["n_iter"][by[m]])) for m in methods}
        tm = {LABELS[m]: float(np.median(table["time"][by[m]])) for m in methods}
        summary[f"lmbd={lm}: median iterations"] = it
        summary[f"lmbd={lm}: median time (s)"] = tm
        summary[f"lmbd={lm}: OISTA/ISTA iterations"] = it["OISTA"] / it["ISTA"]
    settings = dict(n_features=n_features, n_atoms=n_atoms, lmbds=list(lmbds),
                    n_seeds=n_seeds, eps=eps, max_iter=max_iter, n_repeats=n_repeats,
                    random_state=random_state)
    return ExperimentResult("iterative", table, summary, settings)


# ---------------------------------------------------------------------------
# Fig E.3: learning curves (test loss against the number of training samples)
# ---------------------------------------------------------------------------

@_single_threaded_blas
def learning_curves(n_features=5, n_atoms=10, n_total=30000,
                    train_sizes=tuple(np.logspace(1, 4, 10).astype(int)),
                    n_layers=10, lmbd=0.3, max_iter=500, per_layer="recursive",
                    networks=("coupled", "step"), n_repeats=1, optimizer="gd",
                    random_state=1, progress=None):
    """Fig E.3: held-out ``F - F*`` against the number of training samples.

    Signals come from ``make_coding``: the first ``max(train_sizes)`` form
    the training pool and the rest the test set. Repeat 0 trains on the
    first n signals of the pool (as the paper), further repeats on random
    subsets; the table has one row per (method, size, repeat). ``summary``
    gives, per network, the median test gap of each size and the fewest
    training samples whose median test gap is within 25 % of its best (the
    lowest over the sizes).
    """
    train_sizes = sorted(set(int(s) for s in train_sizes))
    n_pool = max(train_sizes)
    if n_total <= n_pool:
        raise ValueError(f"n_total={n_total} must exceed max(train_sizes)={n_pool}")
    X, D = make_coding(n_total, n_atoms, n_features, random_state=random_state)
    pool, X_test = _split(X, n_pool)
    rng = check_random_state(random_state)
    Fstar = _optimal_objective(X_test, D, lmbd)
    ista_gap = _ista_gap(X_test, D, lmbd, n_layers, Fstar)
    rows = {"method": [], "n_train": [], "repeat": [], "test_gap": []}
    jobs = [(net, n, r) for net in networks for n in train_sizes for r in range(n_repeats)]
    for net_name, n, r in _progress(progress, jobs, "training networks", total=len(jobs)):
        idx = np.arange(n) if r == 0 else np.sort(rng.choice(n_pool, n, replace=False))
        net = _fit(D, lmbd, n_layers, net_name, pool[idx], max_iter, per_layer, optimizer,
                   random_state)
        rows["method"].append(LABELS[net_name])
        rows["n_train"].append(n)
        rows["repeat"].append(r)
        rows["test_gap"].append(_mean_gap(X_test, D, lmbd, net.transform(X_test), Fstar))
    table = {k: np.array(v) for k, v in rows.items()}
    summary = {"ISTA test gap": ista_gap}
    for net_name in networks:
        lab = LABELS[net_name]
        med = [float(np.median(table["test_gap"][(table["method"] == lab)
                                                 & (table["n_train"] == n)]))
               for n in train_sizes]
        summary[f"{lab}: median test gap by n_train"] = dict(zip(map(str, train_sizes), med))
        summary[f"{lab}: samples to come within 25% of its best"] = \
            _fewest_samples_within(train_sizes, med, 0.25)
    settings = dict(n_features=n_features, n_atoms=n_atoms, n_total=n_total,
                    train_sizes=train_sizes, n_layers=n_layers, lmbd=lmbd,
                    max_iter=max_iter, per_layer=per_layer, networks=list(networks),
                    n_repeats=n_repeats, optimizer=optimizer, random_state=random_state)
    return ExperimentResult("learning-curves", table, summary, settings,
                            curves={"ista_gap": ista_gap})


def _fewest_samples_within(train_sizes, gaps, tol):
    """The fewest training samples whose test gap is within ``tol`` of the best.

    Parameters
    ----------
    train_sizes : sequence of int
        Increasing training sizes.
    gaps : sequence of float
        The (median) test gap reached with each size.
    tol : float
        Relative tolerance: a gap ``g`` qualifies if ``g <= (1 + tol) *
        min(gaps)``, the best gap over every size (not necessarily the
        largest size's).

    Returns
    -------
    n : int or None
        The first size that qualifies (None if no gap is finite).
    """
    finite = [g for g in gaps if np.isfinite(g)]
    if not finite:
        return None
    best = min(finite)
    return next(int(n) for n, g in zip(train_sizes, gaps) if g <= (1 + tol) * best)


# ---------------------------------------------------------------------------
# lambda transfer: a network trained at one lmbd, evaluated at others
# ---------------------------------------------------------------------------

@_single_threaded_blas
def lambda_transfer(n_features=10, n_atoms=20, n_train=1000, n_test=1000,
                    n_layers=30, lmbd_train=0.05,
                    lmbd_tests=tuple(np.logspace(-2, 0, 40)), max_iter=10000,
                    networks=("step", "coupled"), eps=1e-10, optimizer="gd",
                    random_state=27, progress=None):
    """A network trained at ``lmbd_train`` evaluated at other ``lmbd_test``.

    Thresholds are ``lmbd`` times learned factors, so a network can run at
    any lmbd (``transform(X, lmbd=...)``). The relative gain at each
    ``lmbd_test`` is ``(F_net - F* + eps) / (F_ISTA - F* + eps)`` on held-out
    signals, with ISTA run for as many iterations as the network has layers:
    below 1 the network beats ISTA (the paper's ``change_reg_test.py``).
    """
    X, D = make_coding(n_train + n_test, n_atoms, n_features, random_state=random_state)
    X_train, X_test = _split(X, n_train)
    nets = {}
    for name in _progress(progress, networks, "training networks"):
        nets[name] = _fit(D, lmbd_train, n_layers, name, X_train, max_iter, "oneshot",
                          optimizer, random_state)
    # lmbd_train itself is always evaluated
    lmbd_tests = np.unique(np.append(np.asarray(lmbd_tests, dtype=float), lmbd_train))
    table = {"lmbd_test": lmbd_tests, "F_star": np.empty(len(lmbd_tests)),
             "ista_gap": np.empty(len(lmbd_tests))}
    for name in networks:
        table[f"{LABELS[name]}_gap"] = np.empty(len(lmbd_tests))
        table[f"{LABELS[name]}_relative_gain"] = np.empty(len(lmbd_tests))
    for i, lm in enumerate(lmbd_tests):
        Fstar = _optimal_objective(X_test, D, lm)
        ista = _ista_gap(X_test, D, lm, n_layers, Fstar)
        table["F_star"][i] = Fstar.mean()
        table["ista_gap"][i] = ista
        for name, net in nets.items():
            g = _mean_gap(X_test, D, lm, net.transform(X_test, lmbd=lm), Fstar)
            table[f"{LABELS[name]}_gap"][i] = g
            table[f"{LABELS[name]}_relative_gain"][i] = \
                (max(g, 0) + eps) / (max(ista, 0) + eps)
    summary = {}
    i_train = int(np.flatnonzero(lmbd_tests == lmbd_train)[0])
    for name in networks:
        lab = LABELS[name]
        gain = table[f"{lab}_relative_gain"]
        summary[f"{lab}: relative gain at lmbd_train={lmbd_train:.3g}"] = float(gain[i_train])
        summary[f"{lab}: beats ISTA at"] = \
            f"{int(np.sum(gain < 1))}/{len(gain)} values of lmbd_test"
        summary[f"{lab}: median gain, lmbd_test > lmbd_train"] = \
            float(np.median(gain[lmbd_tests > lmbd_train])) \
            if np.any(lmbd_tests > lmbd_train) else None
        summary[f"{lab}: median gain, lmbd_test < lmbd_train"] = \
            float(np.median(gain[lmbd_tests < lmbd_train])) \
            if np.any(lmbd_tests < lmbd_train) else None
    settings = dict(n_features=n_features, n_atoms=n_atoms, n_train=n_train,
                    n_test=n_test, n_layers=n_layers, lmbd_train=lmbd_train,
                    lmbd_tests=list(map(float, lmbd_tests)), max_iter=max_iter,
                    networks=list(networks), eps=eps, optimizer=optimizer,
                    random_state=random_state)
    return ExperimentResult("lambda-transfer", table, summary, settings)


# ---------------------------------------------------------------------------
# the demo
# ---------------------------------------------------------------------------

@_single_threaded_blas
def demo(dataset="simulated", lmbd=0.8, n_atoms=256, n_features=64, n_train=1000,
         n_test=1000, n_layers=20, max_iter=100, per_layer="oneshot",
         networks=("step", "coupled", "alista"), optimizer="gd", random_state=0,
         progress=None):
    """Learned networks against ISTA and FISTA on a paper-like problem.

    Trains SLISTA, LISTA-CP and ALISTA networks of ``n_layers`` layers on
    ``n_train`` signals and reports, on ``n_test`` held-out signals, the mean
    ``F - F*`` after every layer (every iteration for ISTA and FISTA), the
    learned SLISTA steps and the median ``1/L_S`` of the supports of the
    SLISTA codes at each layer, both in units of ``1/L``.

    Each network is trained on the loss of its last layer (``per_layer=
    "oneshot"``) with the paper's full-batch gradient descent
    (``optimizer="gd"``): the rows before the last are that network's
    intermediate layers, not networks trained at that depth (see
    :func:`network_comparison` for one network per depth).
    """
    t0 = time.perf_counter()
    if dataset == "digits":
        n_features = 64
    X, D = _load_dataset(dataset, n_train + n_test, n_atoms, n_features, random_state)
    X_train, X_test = _split(X, n_train)
    Zs = _optimal_codes(X_test, D, lmbd)
    Fstar = lasso_objective(X_test, D, lmbd, Zs)
    T = n_layers
    table = {"layer": np.arange(1, T + 1)}
    for m in ("ista", "fista"):
        obj, _ = _iterative_objectives(X_test, D, lmbd, m, T)
        table[LABELS[m]] = (obj[1:] - Fstar).mean(axis=1)
    nets = {}
    train_time = {}
    for name in _progress(progress, networks, "training networks"):
        t1 = time.perf_counter()
        nets[name] = _fit(D, lmbd, T, name, X_train, max_iter, per_layer, optimizer,
                          random_state)
        train_time[LABELS[name]] = time.perf_counter() - t1
        table[LABELS[name]] = nets[name].objective(X_test, per_layer=True) - Fstar.mean()
    L = lipschitz(D)
    if "step" in nets:
        net = nets["step"]
        table["SLISTA step x L"] = _layer_params(net, "alpha") * L
        med = np.empty(T)
        for t, (_, LS) in enumerate(_layer_supports(net, D, X_test)):
            LS = LS[LS > 0]
            med[t] = np.median(L / LS) if LS.size else np.nan
        table["median 1/L_S x L"] = med
    LS_star = lipschitz(D, support=Zs != 0)
    LS_star = LS_star[LS_star > 0]
    summary = {
        "problem": f"{dataset}, {n_atoms} atoms x {X.shape[1]} features, lmbd={lmbd}",
        "L": L,
        "median support size of z*": float(np.median(np.count_nonzero(Zs, axis=1))),
        "median 1/L_S x L at z*": float(np.median(L / LS_star)) if LS_star.size else None,
        f"F - F* at layer {T}": {k: float(table[k][-1]) for k in
                                 ["ISTA", "FISTA"] + [LABELS[n] for n in networks]},
        "training time (s)": train_time,
    }
    ista_curve = _ista_curve(X_test, D, lmbd, Fstar)
    for name in networks:
        lab = LABELS[name]
        summary[f"{lab}: ISTA iterations to do as well as layer {T} (0: no better "
                f"than z = 0)"] = \
            _iterations_to_match(ista_curve, float(table[lab][-1]))
    settings = dict(dataset=dataset, lmbd=lmbd, n_atoms=n_atoms, n_features=X.shape[1],
                    n_train=n_train, n_test=n_test, n_layers=n_layers,
                    max_iter=max_iter, per_layer=per_layer, networks=list(networks),
                    optimizer=optimizer, random_state=random_state)
    res = ExperimentResult("demo", table, summary, settings)
    res.elapsed = time.perf_counter() - t0
    return res


def _ista_curve(X, D, lmbd, Fstar, max_iter=2000):
    """Mean F - F* of ISTA after 0..max_iter iterations."""
    obj, _ = _iterative_objectives(X, D, lmbd, "ista", max_iter)
    return (obj - Fstar).mean(axis=1)


def _iterations_to_match(curve, gap):
    """ISTA iterations needed for the mean F - F* to fall to ``gap``."""
    if not np.isfinite(gap):
        return None
    hit = np.flatnonzero(curve <= gap)
    return int(hit[0]) if hit.size else f">{len(curve) - 1}"


# ---------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------

def run(figure, mode="quick", random_state=None, progress=None, **overrides):
    """Run the experiment of ``figure`` with the settings of ``mode``.

    Parameters
    ----------
    figure : str
        A key of :data:`fastlista.paper.figures.FIGURES`.
    mode : {"paper", "quick", "tiny"}
        Which of the figure's presets (:data:`fastlista.paper.figures.MODES`).
    random_state : int or None
        Overrides the figure's seed (None keeps the paper's).
    progress : callable or None
        ``progress(iterable, desc=..., total=...)`` wraps the long loops
        (e.g. ``tqdm.tqdm``).
    **overrides
        Further keyword arguments of the experiment function.

    Returns
    -------
    result : ExperimentResult
    """
    if figure not in FIGURES:
        raise ValueError(f"unknown figure {figure!r}; one of {sorted(FIGURES)}")
    spec = FIGURES[figure]
    kwargs = dict(spec.presets[mode])
    kwargs.update(overrides)
    if random_state is not None:
        kwargs["random_state"] = random_state
    t0 = time.perf_counter()
    result = globals()[spec.experiment](progress=progress, **kwargs)
    result.elapsed = time.perf_counter() - t0
    result.settings["mode"] = mode
    return result


def format_summary(summary, indent=0):
    """The summary as aligned ``key: value`` lines."""
    lines = []
    pad = " " * indent
    for k, v in summary.items():
        if isinstance(v, dict):
            lines.append(f"{pad}{k}:")
            lines.extend(format_summary(v, indent + 2).splitlines())
        else:
            lines.append(f"{pad}{k}: {_fmt_value(v)}")
    return "\n".join(lines)


def _fmt_value(v):
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if v == 0 or (1e-3 <= abs(v) < 1e4):
            return f"{v:.4g}"
        return f"{v:.3e}" if math.isfinite(v) else str(v)
    return str(v)


def _fmt_demo_cell(v):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.2e}" if abs(v) < 1e-2 or abs(v) >= 1e3 else f"{v:.3f}"


def format_demo_table(result):
    """The demo's per-layer table as aligned text."""
    t = result.table
    cols = [c for c in ("ISTA", "FISTA", "SLISTA", "LISTA-CP", "ALISTA") if c in t]
    steps = [c for c in ("SLISTA step x L", "median 1/L_S x L") if c in t]
    head = ["layer"] + cols + steps
    rows = [[str(int(t["layer"][i]))]
            + [_fmt_demo_cell(float(t[c][i])) for c in cols + steps]
            for i in range(len(t["layer"]))]
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)
