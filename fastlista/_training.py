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
and its lower bounds; ``training_zero_codes(data)`` where a fit ends on a
zero gradient — and through an ``evaluate(x, depth) -> (loss,
gradient)`` function: the network's ``training_loss_and_grad`` on local data
(:func:`fit_network`, which runs the whole fit, optimiser included, under
the network's ``n_jobs`` budget of :func:`fastlista._threads.kernel_threads`),
or a sum over the chunks of a dask array (``fastlista.distributed.fit``).
``evaluate`` computes on a network of its own: the one handed to
:func:`train` changes only when a stage ends on an accepted iterate. It
runs an optimiser:

* ``lbfgs``: :func:`scipy.optimize.minimize` (L-BFGS-B), within the
  network's bounds (step sizes and threshold factors at or above a small
  positive floor, or at or above their value at the start where that is
  below the floor: the start is always feasible, so that the first entry
  of the history is the loss of the network handed in, as the training
  vector holds it (dividing by a unit and multiplying back can move a
  parameter by an ulp), and training never ends above it).
* ``gd``: full-batch gradient descent with the adaptive rate of the
  reference code: x4 after each accepted step, halved (backtracking from the
  last accepted point) while the loss rises; it stops when the rate falls
  below 1e-20.

Both stop after ``max_iter`` iterations, or when an iteration decreases the
loss by at most ``tol`` times the decrease achieved since the start (not
relative to the loss itself: the unsupervised loss carries the unknown offset
min F_x, at large lmbd far above what training removes), and L-BFGS-B also
when the projected gradient falls below ``tol`` times its initial size.

The optimisers see the loss and gradient multiplied by a power of two that
brings the stage's starting loss into [0.5, 1): the minimiser does not
change, the scaling is exact, and neither optimiser's arithmetic under- or
overflows on data of extreme scale (a loss of 1e-300 has squared gradients
of 1e-600, which L-BFGS-B would take for 0). The history records the loss
itself. Data so small that their loss falls below the smallest double
(float64 signals below about 1e-160) are trained on in units where it does
not: the kernels' layers are homogeneous in (x, lmbd), so :func:`fit_network`
trains on the data times 2**-e (e < 0 for every batch whose max|X| is below
2**-100, float32 2**-30: ``TrainingData.exponent``), whose loss is the
data's times 4**-e, exactly, and the network it returns is the one trained
on data of ordinary scale; its history holds the losses times 4**e, the
loss itself rounded to float64 (subnormal or 0 below the smallest double,
where training on the data themselves would see every loss and gradient 0).

An iteration is accepted only if its loss and gradient are finite and its
loss is not above the last accepted one, so the history of a stage never
rises. A stage sets the network to its last accepted iterate, the very
point whose loss ends its history; a stage that accepts none leaves the
network as it found it, bit for bit (not the round trip of its parameters
through the training vector). The optimisers never leave the network with
NaN or infinite parameters: a stage whose start has a non-finite loss or
gradient trains nothing, and one whose last iterate does not fit the
network's dtype (a parameter overflows it) is rolled back to its start,
its history cut back to its first entry, with a TrainingWarning saying so.
A fit that ends where the gradient is exactly 0, on a network whose codes
on the training signals are all 0 while their Lasso solutions (or targets)
are not, warns too: a flat region gradient steps cannot leave, which
ALISTA's analytic start, worse than the zero code, can train into.
"""
import copy
import warnings

import numpy as np
from scipy.optimize import minimize

from ._threads import kernel_threads
from ._validation import (caller_stacklevel, check_max_iter, check_option, check_scalar,
                          check_verbose)

__all__ = ["TrainingWarning", "fit_network", "train", "OPTIMIZERS", "PER_LAYER"]

OPTIMIZERS = ("lbfgs", "gd")
PER_LAYER = ("oneshot", "recursive")
# rate of the "gd" optimiser (scaled units): start, cap, and stop
_GD_RATE0 = 1.0
_GD_RATE_MAX = 1e12
_GD_RATE_MIN = 1e-20


class TrainingWarning(UserWarning):
    """Training hit a non-finite loss and was rolled back to a finite point,
    or ended on a network whose codes are all 0 where the loss asks for
    others (a zero gradient that no gradient step leaves)."""


class _Objective:
    """``evaluate`` at one depth, guarded and scaled.

    Returns (inf, 0) for a non-finite point, else the loss and gradient times
    2**shift (see :meth:`calibrate`); remembers the loss of the last finite
    evaluation, as ``evaluate`` returns it (in the data's units: the loss
    itself is it times 2**loss_exponent).
    """

    def __init__(self, evaluate, depth, lower, loss_exponent):
        self.evaluate, self.depth, self.lower = evaluate, depth, lower
        self.loss_exponent = loss_exponent
        self.shift = 0
        self._last_x = None
        self._last_loss = np.inf
        self._last_flat = False

    def project(self, x):
        return np.maximum(x, self.lower)

    def calibrate(self, x0):
        """Choose the scale at the start x0: 2**shift brings the loss into
        [0.5, 1), unless that would take the largest gradient entry beyond
        2**1000. Returns the scaled (loss, gradient) at x0."""
        f, g = self(x0)             # shift 0: the loss itself
        if np.isfinite(f) and f > 0:
            shift = -int(np.frexp(f)[1])
            g_max = float(np.max(np.abs(g), initial=0.0))
            if g_max > 0:
                shift = min(shift, 1000 - int(np.frexp(g_max)[1]))
            self.shift = shift
            f, g = float(np.ldexp(f, shift)), np.ldexp(g, shift)
        return f, g

    def __call__(self, x):
        """Scaled (loss, gradient) at x; (inf, 0) when non-finite."""
        if not np.all(np.isfinite(x)):
            return np.inf, np.zeros_like(x)
        f, g = self.evaluate(x, self.depth)
        f_s, g_s = np.ldexp(f, self.shift), np.ldexp(g, self.shift)
        if not (np.isfinite(f_s) and np.all(np.isfinite(g_s))):
            return np.inf, np.zeros_like(x)
        self._last_x, self._last_loss = x.copy(), float(f)
        self._last_flat = not np.any(g)
        return float(f_s), g_s

    def flat_at(self, x):
        """The gradient at x, the last point evaluated, is exactly 0."""
        return (self._last_flat and self._last_x is not None
                and np.array_equal(x, self._last_x))

    def loss(self, x):
        """``evaluate``'s loss at x (inf when non-finite), evaluated only if x
        is not the last point evaluated."""
        if self._last_x is None or not np.array_equal(x, self._last_x):
            if not np.isfinite(self(x)[0]):
                return np.inf
        return self._last_loss


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
    f_scaled, g0 = obj.calibrate(x0)
    if not np.isfinite(f_scaled):
        return x0
    f0 = obj.loss(x0)
    history.append(f0)
    accepted = {"x": x0}

    def callback(xk):
        f = obj.loss(xk)
        if not f <= history[-1]:
            # non-finite, or above the last accepted loss: not accepted
            raise StopIteration
        accepted["x"] = xk.copy()
        history.append(f)
        if verbose:
            print(f"[Lista.fit] lbfgs iteration {len(history) - 1}: "
                  f"loss {np.ldexp(f, obj.loss_exponent):.10g}")
        if _stalled(f0, history[-2], f, tol):
            raise StopIteration

    bounds = [(lo if np.isfinite(lo) else None, None) for lo in obj.lower]
    # projected gradient at the start: the scale of the gradient test
    pg0 = float(np.max(np.abs(obj.project(x0 - g0) - x0))) if x0.size else 0.0
    try:
        minimize(obj, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                 callback=callback,
                 options={"maxiter": max_iter, "ftol": 0.0, "gtol": tol * pg0})
    except StopIteration:        # scipy < 1.11 lets the callback's stop through
        pass
    # the last accepted iterate (L-BFGS-B's own result may be a rejected one)
    return accepted["x"]


def _gd(obj, x0, max_iter, tol, history, verbose):
    x = obj.project(x0)
    f_scaled, g = obj.calibrate(x)
    if not np.isfinite(f_scaled):
        return x
    f0 = obj.loss(x)
    history.append(f0)
    rate = _GD_RATE0
    for it in range(max_iter):
        rate = min(4 * rate, _GD_RATE_MAX)
        while True:
            x_new = obj.project(x - rate * g)
            f_new, g_new = obj(x_new)
            if np.isfinite(f_new) and obj.loss(x_new) <= history[-1]:
                break
            rate /= 2
            if rate < _GD_RATE_MIN:
                return x
        x, g = x_new, g_new
        history.append(obj.loss(x))
        if verbose:
            print(f"[Lista.fit] gd iteration {it + 1}: "
                  f"loss {np.ldexp(history[-1], obj.loss_exponent):.10g} "
                  f"(rate {rate:.3g})")
        if _stalled(f0, history[-2], history[-1], tol):
            break
    return x


def train(net, evaluate, *, optimizer="lbfgs", max_iter=100, tol=1e-8,
          per_layer="oneshot", verbose=False, func="Lista.fit", loss_exponent=0,
          zero_codes_suboptimal=None):
    """Optimise ``net``'s parameters over ``evaluate``, rolling back blow-ups.

    ``oneshot`` is one stage on the output loss; ``recursive`` trains layers
    1..k on the loss of layer k, k = 1..T, with ``max_iter`` split evenly
    (stage k gets floor(k max_iter / T) - floor((k - 1) max_iter / T)
    iterations: with max_iter < T, the stages that get none are skipped, and
    the last always trains).
    Each stage sets ``net`` once, to its last accepted iterate; a stage that
    accepts none leaves ``net`` untouched, so that a fit that accepts
    nothing returns the parameters handed in, bit for bit. A stage whose
    start is not finite trains nothing, and one whose last iterate does not
    fit the network's dtype is rolled back to its start, with a
    TrainingWarning.

    Parameters
    ----------
    net : object with the training interface of :class:`fastlista.Lista`
        Set only through ``set_training_vector``, and a shallow copy of it
        (``copy.copy``) must set its own parameters, not ``net``'s.
    evaluate : callable
        ``evaluate(x, depth) -> (mean loss, flat gradient)`` at the flat
        vector x of the first ``depth`` layers, computed on a network other
        than ``net``.
    optimizer, max_iter, tol, per_layer, verbose
        As in :meth:`fastlista.Lista.fit` (validated here).
    func : str
        The public caller, for error and warning messages.
    loss_exponent : int, default=0
        ``evaluate`` computes the loss and gradient times 2**-loss_exponent
        (data in units of a power of two): the history records its losses
        times 2**loss_exponent, the loss itself (rounded to float64).
    zero_codes_suboptimal : callable or None, default=None
        ``zero_codes_suboptimal(net) -> bool``: whether ``net``'s codes on
        the training signals are all 0 where the training targets are not
        (a signal with lmbd below its ``lambda_max``, or a non-zero target
        code). Called only if training ends where the gradient is exactly
        0; True there gives a TrainingWarning (a flat region that gradient
        steps cannot leave).

    Returns
    -------
    history : list of float
        The loss before the first and after every iteration.
    """
    optimizer = check_option(optimizer, "optimizer", func, OPTIMIZERS)
    per_layer = check_option(per_layer, "per_layer", func, PER_LAYER)
    max_iter = check_max_iter(max_iter, func)
    tol = check_scalar(tol, "tol", func, low=0.0)
    verbose = check_verbose(verbose, func)
    n_layers = net.n_layers
    if per_layer == "oneshot":
        stages = [(n_layers, max_iter)]
    else:
        split = np.diff(np.arange(n_layers + 1) * max_iter // n_layers)
        stages = [(k + 1, int(it)) for k, it in enumerate(split) if it > 0]
    run = _lbfgs if optimizer == "lbfgs" else _gd
    history = []
    rolled_back = False
    flat = False
    for depth, n_iter in stages:
        # a parameter beyond the range of its unit makes an inf entry, and
        # the stage a start that is not finite
        with np.errstate(over="ignore"):
            x0 = net.training_vector(depth)
        # (a parameter set below the floor keeps its own value as bound)
        obj = _Objective(evaluate, depth, np.minimum(net.training_bounds(depth), x0),
                         loss_exponent)
        first = len(history)
        x = run(obj, x0, n_iter, tol, history, verbose)
        # the history holds the stage's starting loss if it was finite, then
        # one entry an accepted iteration
        rolled_back |= len(history) == first
        # (the last stage trains the whole network: its end is fit's)
        flat = obj.flat_at(x) and len(history) > first
        if len(history) <= first + 1 or np.array_equal(x, x0):
            # nothing accepted, or steps that came back to the start (a zero
            # gradient): net keeps the stage's start, bit for bit
            continue
        # x is the last accepted iterate, evaluated at exactly the parameters
        # it sets; they must also be finite in the network's dtype (tried on
        # a shallow copy, which sets its own list of layers)
        trained = copy.copy(net)
        trained.set_training_vector(x, depth)
        with np.errstate(over="ignore"):
            fits = np.all(np.isfinite(trained.training_vector(depth)))
        if not fits:
            # back to the stage's start, whose loss is its first entry
            del history[first + 1:]
            rolled_back, flat = True, False
            continue
        net.set_training_vector(x, depth)
    if rolled_back and not history:
        L = getattr(net, "lipschitz_", None)
        here = "" if L is None else f", here L = {L:.3g}"
        warnings.warn(
            f"{func}: the loss or gradient of the network handed in is not finite "
            "(signals too large for the dtype's range, whose squares overflow; a "
            "dictionary so large that the backward pass's products leave it"
            f"{here}; or diverging steps): nothing was trained, and the parameters "
            "were rolled "
            "back to those handed in, bit for bit. Rescale X or D (unit-norm "
            "atoms), or use float64.", TrainingWarning,
            stacklevel=caller_stacklevel())
    elif rolled_back:
        warnings.warn(
            f"{func} met a non-finite loss, gradient or parameter (diverging steps?) "
            "and rolled the parameters back to a finite point: the start of the "
            "stage that met it.", TrainingWarning,
            stacklevel=caller_stacklevel())
    if flat and zero_codes_suboptimal is not None and zero_codes_suboptimal(net):
        warnings.warn(
            f"{func}: training ended where the gradient of the loss is exactly 0: the "
            "network's codes on the training signals are all 0 (every pre-activation "
            "of the last layer is below its threshold), a flat region that gradient "
            "steps cannot leave, while the Lasso solutions (or target codes) are not "
            "0. The network outputs 0 for these signals. A start worse than the zero "
            "code (as ALISTA's analytic one can be) leads there: start from other "
            "parameters (set_parameters), or try the other optimizer.",
            TrainingWarning, stacklevel=caller_stacklevel())
    return [float(v) for v in np.ldexp(history, loss_exponent)]


def fit_network(net, X, *, loss="unsupervised", Z_target=None, lmbd=None, **options):
    """Train ``net`` (a :class:`fastlista.Lista`) in place on local data.

    See :meth:`fastlista.Lista.fit` for the parameters.

    Returns
    -------
    net : Lista
        With new parameters and ``loss_history_``.
    """
    # shallow copies, each setting its own list of layers: the optimiser's
    # trial points live on one, the stages' results on the other, so that
    # other threads using net meanwhile see its parameters before fit, until
    # the trained ones replace them at once
    trial, work = copy.copy(net), copy.copy(net)
    # the whole call under the network's thread budget, the optimiser's own
    # BLAS work included (the kernels' budgets nest in it: same n_jobs, and
    # the BLAS limit is reference-counted)
    with kernel_threads(net.n_jobs, "Lista.fit"):
        data = trial.training_data(X, loss=loss, Z_target=Z_target, lmbd=lmbd,
                                   func="Lista.fit")
        # data whose loss would underflow, in units where it does not
        e = data.exponent()
        raw, data = data, data.scaled(e)

        def evaluate(x, depth):
            trial.set_training_vector(x, depth)
            return trial.training_loss_and_grad(data, depth)

        def zero_codes_suboptimal(trained):
            return all(trained.training_zero_codes(raw))

        history = train(work, evaluate, func="Lista.fit", loss_exponent=2 * e,
                        zero_codes_suboptimal=zero_codes_suboptimal, **options)
    # the arrays themselves (validated, in the network's dtype), not their
    # round trip through the training vector: untrained layers stay bit for
    # bit those handed in
    net.set_parameters(work.parameters)
    net.loss_history_ = history
    return net
