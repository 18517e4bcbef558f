"""Training of unfolded networks over their analytic gradients.

The training loss of a network with parameters p on signals X is the mean,
over the samples, of

* ``unsupervised``: the Lasso objective F_x(z_T(p)) = 1/2 ||x - z_T D||^2
  + lmbd ||z_T||_1 (Ablin et al., 2019);
* ``supervised``: 1/2 ||z_T(p) - s||^2 for given target codes s;
* ``semi-supervised``: the supervised loss with s = argmin F_x, computed once
  by :func:`fastlista.solve_lasso`.

Gradients come from the Cython backward pass. This module sees a network
only through its training interface (documented on :class:`fastlista.Lista`):
``training_vector(depth)``, ``set_training_vector(x, depth)``,
``training_bounds(depth)`` and ``n_layers`` — the flat parameter vector of
the first ``depth`` layers, in units where the untrained values are O(1),
and its lower bounds — and through an ``evaluate(x, depth) -> (loss,
gradient)`` function: the network's ``training_loss_and_grad`` on local data
(:func:`fit_network`), or a sum over the chunks of a dask array
(``fastlista.distributed.fit``). It runs an optimiser:

* ``lbfgs``: :func:`scipy.optimize.minimize` (L-BFGS-B), within the
  network's bounds (step sizes and threshold factors at or above a small
  positive floor).
* ``gd``: full-batch gradient descent with the adaptive rate of the
  reference code: x4 after each accepted step, halved (backtracking from the
  last accepted point) while the loss rises; it stops when the rate falls
  below 1e-20.

Both stop after ``max_iter`` iterations, or when an iteration decreases the
loss by at most ``tol`` times the decrease achieved since the start (not
relative to the loss itself: the unsupervised loss carries the unknown offset
min F_x, at large lmbd far above what training removes), and L-BFGS-B also
when the projected gradient falls below ``tol`` times its initial size.

The optimisers never leave the network with NaN or infinite parameters: a
blow-up (a non-finite loss or gradient) makes the point unacceptable, and if
the run still ends on one, the network is rolled back to the best finite
point seen (or its start), with a TrainingWarning saying so.
"""
import warnings

import numpy as np
from scipy.optimize import minimize

from ._validation import check_max_iter, check_option, check_scalar

__all__ = ["TrainingWarning", "fit_network", "train", "OPTIMIZERS", "PER_LAYER"]

OPTIMIZERS = ("lbfgs", "gd")
PER_LAYER = ("oneshot", "recursive")
# rate of the "gd" optimiser (scaled units): start, cap, and stop
_GD_RATE0 = 1.0
_GD_RATE_MAX = 1e12
_GD_RATE_MIN = 1e-20


class TrainingWarning(UserWarning):
    """Training hit a non-finite loss and was rolled back to a finite point."""


class _Objective:
    """``evaluate`` at one depth, guarded: (inf, 0) for a non-finite point,
    and the best finite point seen remembered."""

    def __init__(self, evaluate, depth, lower):
        self.evaluate, self.depth, self.lower = evaluate, depth, lower
        self.best_f = np.inf
        self.best_x = None

    def project(self, x):
        return np.maximum(x, self.lower)

    def __call__(self, x):
        """(loss, gradient) at x; (inf, 0) when non-finite."""
        if not np.all(np.isfinite(x)):
            return np.inf, np.zeros_like(x)
        f, g = self.evaluate(x, self.depth)
        if not (np.isfinite(f) and np.all(np.isfinite(g))):
            return np.inf, np.zeros_like(x)
        if f < self.best_f:
            self.best_f, self.best_x = f, x.copy()
        return float(f), g


def _stalled(f0, f_prev, f, tol):
    """The last iteration decreased the loss by at most tol times the total
    decrease since the start.

    Relative to the decrease, not to the loss: the unsupervised loss carries
    the unknown offset min F_x, often much larger than what training can
    remove, so that a decrease relative to the loss would stop at once.
    """
    return f_prev - f <= tol * (f0 - f)


def _lbfgs(obj, x0, max_iter, tol, history, verbose):
    x0 = obj.project(x0)
    f0, g0 = obj(x0)
    if not np.isfinite(f0):
        return x0
    history.append(f0)
    last = {"x": x0.copy(), "f": f0}

    def fun(x):
        f, g = obj(x)
        last["x"], last["f"] = x.copy(), f
        return f, g

    def callback(xk):
        f = last["f"] if np.array_equal(xk, last["x"]) else obj(xk)[0]
        last["iterate"] = xk.copy()
        history.append(float(f))
        if verbose:
            print(f"[Lista.fit] lbfgs iteration {len(history) - 1}: loss {f:.10g}")
        if _stalled(f0, history[-2], f, tol):
            raise StopIteration

    bounds = [(lo if np.isfinite(lo) else None, None) for lo in obj.lower]
    # projected gradient at the start: the scale of the gradient test
    pg0 = float(np.max(np.abs(obj.project(x0 - g0) - x0))) if x0.size else 0.0
    try:
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                       callback=callback,
                       options={"maxiter": max_iter, "ftol": 0.0, "gtol": tol * pg0})
    except StopIteration:        # scipy < 1.11 lets the callback's stop through
        return last.get("iterate", x0)
    return res.x


def _gd(obj, x0, max_iter, tol, history, verbose):
    x = obj.project(x0)
    f, g = obj(x)
    if not np.isfinite(f):
        return x
    history.append(f)
    f0 = f
    rate = _GD_RATE0
    for it in range(max_iter):
        rate = min(4 * rate, _GD_RATE_MAX)
        while True:
            x_new = obj.project(x - rate * g)
            f_new, g_new = obj(x_new)
            if np.isfinite(f_new) and f_new <= f:
                break
            rate /= 2
            if rate < _GD_RATE_MIN:
                return x
        f_prev = f
        x, f, g = x_new, f_new, g_new
        history.append(f)
        if verbose:
            print(f"[Lista.fit] gd iteration {it + 1}: loss {f:.10g} (rate {rate:.3g})")
        if _stalled(f0, f_prev, f, tol):
            break
    return x


def train(net, evaluate, *, optimizer="lbfgs", max_iter=100, tol=1e-8,
          per_layer="oneshot", verbose=False, func="Lista.fit"):
    """Optimise ``net``'s parameters over ``evaluate``, rolling back blow-ups.

    ``oneshot`` is one stage on the output loss; ``recursive`` trains layers
    1..k on the loss of layer k, k = 1..T, with ``max_iter`` split evenly.
    A stage that ends on a non-finite loss returns to its best finite point
    (or its start), with a TrainingWarning.

    Parameters
    ----------
    net : object with the training interface of :class:`fastlista.Lista`
    evaluate : callable
        ``evaluate(x, depth) -> (mean loss, flat gradient)`` at the flat
        vector x of the first ``depth`` layers.
    optimizer, max_iter, tol, per_layer, verbose
        As in :meth:`fastlista.Lista.fit` (validated here).
    func : str
        The public caller, for error and warning messages.

    Returns
    -------
    history : list of float
        The loss before the first and after every iteration.
    """
    optimizer = check_option(optimizer, "optimizer", func, OPTIMIZERS)
    per_layer = check_option(per_layer, "per_layer", func, PER_LAYER)
    max_iter = check_max_iter(max_iter, func)
    tol = check_scalar(tol, "tol", func, low=0.0)
    n_layers = net.n_layers
    if per_layer == "oneshot":
        stages = [(n_layers, max_iter)]
    else:
        split = np.diff(np.round(np.linspace(0, max_iter, n_layers + 1)).astype(int))
        stages = [(k + 1, max(1, int(it))) for k, it in enumerate(split)]
    run = _lbfgs if optimizer == "lbfgs" else _gd
    history = []
    rolled_back = False
    start = net.training_vector(n_layers)
    for depth, n_iter in stages:
        obj = _Objective(evaluate, depth, net.training_bounds(depth))
        x0 = net.training_vector(depth)
        x = run(obj, x0, n_iter, tol, history, verbose)
        f, _ = obj(x)
        if not np.isfinite(f):
            # roll back to the best finite point of this stage (or its start)
            x = obj.best_x if obj.best_x is not None else x0
            rolled_back = True
        net.set_training_vector(x, depth)
    if not np.all(np.isfinite(net.training_vector(n_layers))):
        net.set_training_vector(start, n_layers)
        rolled_back = True
    if rolled_back:
        warnings.warn(
            f"{func} met a non-finite loss or gradient (diverging steps?) and rolled "
            "the parameters back to the last finite point.", TrainingWarning,
            stacklevel=3)
    return [float(v) for v in history]


def fit_network(net, X, *, loss="unsupervised", Z_target=None, lmbd=None, **options):
    """Train ``net`` (a :class:`fastlista.Lista`) in place on local data.

    See :meth:`fastlista.Lista.fit` for the parameters.

    Returns
    -------
    net : Lista
        With new parameters and ``loss_history_``.
    """
    data = net.training_data(X, loss=loss, Z_target=Z_target, lmbd=lmbd,
                             func="Lista.fit")

    def evaluate(x, depth):
        net.set_training_vector(x, depth)
        return net.training_loss_and_grad(data, depth)

    net.loss_history_ = train(net, evaluate, func="Lista.fit", **options)
    return net
