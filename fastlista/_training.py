"""Training of unfolded networks over their analytic gradients.

The training loss of a network with parameters p on signals X is the mean,
over the samples, of

* ``unsupervised``: the Lasso objective F_x(z_T(p)) = 1/2 ||x - z_T D||^2
  + lmbd ||z_T||_1 (Ablin et al., 2019);
* ``supervised``: 1/2 ||z_T(p) - s||^2 for given target codes s;
* ``semi-supervised``: the supervised loss with s = argmin F_x, computed once
  by :func:`fastlista.solve_lasso`.

Gradients come from the Cython backward pass (:meth:`Lista.loss_and_grad`);
this module only flattens the parameters and runs an optimiser:

* ``lbfgs``: :func:`scipy.optimize.minimize` (L-BFGS-B). Step sizes and
  threshold factors are bounded below by ``STEP_FLOOR / L``: at a zero step
  every code sits on the kink of the soft-threshold, where the gradient is
  one-sided (in the first layer exactly 0 while the right derivative is not),
  so a bound at 0 would trap the optimiser.
* ``gd``: full-batch gradient descent with the adaptive rate of the
  reference code: x4 after each accepted step, halved (backtracking from the
  last accepted point) while the loss rises; it stops when the rate falls
  below 1e-20.

Both stop after ``max_iter`` iterations, or when an iteration decreases the
loss by at most ``tol`` times the decrease achieved since the start (not
relative to the loss itself: the unsupervised loss carries the unknown offset
min F_x, at large lmbd far above what training removes), and L-BFGS-B also
when the projected gradient falls below ``tol`` times its initial size.

Parameters are optimised in units where the untrained network's are O(1):
steps, thresholds and ``W_x`` are divided by 1/L, so that one rate suits all
of them. The optimisers never leave the network with NaN or infinite
parameters: a blow-up (a non-finite loss or gradient) makes the point
unacceptable, and if the run still ends on one, the network is rolled back to
the best finite point seen, with a warning.
"""
import warnings

import numpy as np

from ._validation import check_option, check_scalar, check_X_D

__all__ = ["fit_network", "OPTIMIZERS", "PER_LAYER", "STEP_FLOOR"]

OPTIMIZERS = ("lbfgs", "gd")
PER_LAYER = ("oneshot", "recursive")
# lower bound of step sizes and threshold factors while training, times 1/L
STEP_FLOOR = 1e-6
# rate of the "gd" optimiser (scaled units): start, cap, and stop
_GD_RATE0 = 1.0
_GD_RATE_MAX = 1e12
_GD_RATE_MIN = 1e-20


class TrainingWarning(UserWarning):
    """Training hit a non-finite loss and was rolled back to a finite point."""


class _Objective:
    """Loss at depth ``depth`` as a function of a flat float64 vector.

    The vector holds the parameters of layers 0..depth-1, each divided by its
    scale (1/L for steps, thresholds and W_x; 1 for W and W_z). Layers from
    ``depth`` on keep their current values (they do not affect the loss).
    """

    def __init__(self, net, X, D, loss_code, S, depth):
        from .networks import _KEYS, _NONNEGATIVE

        self.net, self.X, self.D, self.loss_code, self.S = net, X, D, loss_code, S
        self.depth = depth
        self.keys = _KEYS[net.parametrization]
        inv_L = 1.0 / net.lipschitz_
        shapes = net._shapes()
        self.layout = []        # (layer, key, shape, offset, size, scale)
        offset = 0
        for t in range(depth):
            for k in self.keys:
                size = int(np.prod(shapes[k], dtype=np.int64))
                scale = inv_L if (k in _NONNEGATIVE or k == "W_x") else 1.0
                self.layout.append((t, k, shapes[k], offset, size, scale))
                offset += size
        self.size = offset
        floor = STEP_FLOOR
        self.lower = np.full(self.size, -np.inf)
        for t, k, shape, off, size, scale in self.layout:
            if k in _NONNEGATIVE:
                self.lower[off:off + size] = floor
        self.base = net.parameters
        self.best_f = np.inf
        self.best_x = None
        self.n_eval = 0

    def vector(self, params):
        x = np.empty(self.size)
        for t, k, shape, off, size, scale in self.layout:
            x[off:off + size] = np.asarray(params[t][k], dtype=np.float64).ravel() / scale
        return x

    def params(self, x):
        out = [dict(layer) for layer in self.base]
        dt = self.net.dtype
        for t, k, shape, off, size, scale in self.layout:
            out[t][k] = np.array((x[off:off + size] * scale).reshape(shape), dtype=dt)
        return out

    def project(self, x):
        return np.maximum(x, self.lower)

    def __call__(self, x):
        """(loss, gradient) at x; (inf, 0) when non-finite."""
        self.n_eval += 1
        if not np.all(np.isfinite(x)):
            return np.inf, np.zeros_like(x)
        net = self.net
        net._params = self.params(x)
        net._cache.clear()
        f, grads = net._loss_and_grad(self.X, self.D, self.loss_code, self.S, self.depth)
        g = np.empty(self.size)
        for t, k, shape, off, size, scale in self.layout:
            g[off:off + size] = np.asarray(grads[k][t], dtype=np.float64).ravel() * scale
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
    from scipy.optimize import minimize

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


def run_stages(target, make_objective, n_layers, *, per_layer, max_iter,
               optimizer, tol, verbose):
    """Optimise ``target._params`` stage by stage, rolling back blow-ups.

    ``oneshot`` is one stage on the output loss; ``recursive`` trains layers
    1..k on the loss of layer k, k = 1..T, with ``max_iter`` split evenly.
    ``make_objective(depth)`` returns the :class:`_Objective` of a stage. A
    stage that ends on a non-finite loss returns to its best finite point (or
    its start). Used by ``Lista.fit`` and ``fastlista.distributed.fit``.

    Returns
    -------
    history : list of float
        The loss after every iteration.
    rolled_back : bool
        Whether some stage was rolled back.
    """
    if per_layer == "oneshot":
        stages = [(n_layers, max_iter)]
    else:
        split = np.diff(np.round(np.linspace(0, max_iter, n_layers + 1)).astype(int))
        stages = [(k + 1, max(1, int(it))) for k, it in enumerate(split)]
    run = _lbfgs if optimizer == "lbfgs" else _gd
    history = []
    rolled_back = False
    for depth, n_iter in stages:
        obj = make_objective(depth)
        x0 = obj.vector(target._params)
        x = run(obj, x0, n_iter, tol, history, verbose)
        f, _ = obj(x)
        if not np.isfinite(f):
            # roll back to the best finite point of this stage (or its start)
            x = obj.best_x if obj.best_x is not None else x0
            rolled_back = True
        target._params = obj.params(x)
        cache = getattr(target, "_cache", None)
        if cache is not None:
            cache.clear()
    return history, rolled_back


def fit_network(net, X, *, loss="unsupervised", Z_target=None, optimizer="lbfgs",
                max_iter=100, tol=1e-8, per_layer="oneshot", verbose=False):
    """Train ``net`` (a :class:`fastlista.Lista`) in place; see ``Lista.fit``.

    Returns
    -------
    net : Lista
        With new parameters and ``loss_history_``.
    """
    func = "Lista.fit"
    X, D, _ = check_X_D(X, net.D)
    if X.shape[0] == 0:
        raise ValueError("X must contain at least one sample.")
    optimizer = check_option(optimizer, "optimizer", func, OPTIMIZERS)
    per_layer = check_option(per_layer, "per_layer", func, PER_LAYER)
    max_iter = check_scalar(max_iter, "max_iter", func, low=1, integer=True)
    tol = check_scalar(tol, "tol", func, low=0.0)
    code, S = net._targets(X, D, loss, Z_target, func)

    start = net.parameters
    history, rolled_back = run_stages(
        net, lambda depth: _Objective(net, X, D, code, S, depth), net.n_layers,
        per_layer=per_layer, max_iter=max_iter, optimizer=optimizer, tol=tol,
        verbose=verbose)
    if not all(np.all(np.isfinite(v)) for layer in net._params for v in layer.values()):
        net._params = start
        net._cache.clear()
        rolled_back = True
    if rolled_back:
        warnings.warn(
            "Lista.fit met a non-finite loss or gradient (diverging steps?) and rolled "
            "the parameters back to the last finite point.", TrainingWarning, stacklevel=3)
    net.loss_history_ = [float(v) for v in history]
    return net
