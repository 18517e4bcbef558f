"""Sparse coding of data beyond one machine, with Dask.

This module needs ``dask[array]`` (and ``distributed`` for a cluster), both
optional; ``import fastlista`` does not import it.

Samples are independent, so a dask array chunked along samples (rows) is
encoded chunk by chunk, and a training loss (a mean over samples) is a
weighted sum of per-chunk losses:

* :func:`encode` runs a model (a :class:`~fastlista.Lista`, a
  scikit-learn style transformer such as
  :class:`~fastlista.estimators.LearnedSparseCoder`, or Lasso solver
  settings) on every chunk: lazily, in one ``map_blocks``, with the model
  shipped once (a single graph key, or one scattered future when a
  ``distributed`` client is running).
* :func:`solve_lasso` is :func:`fastlista.solve_lasso` on dask arrays.
* :func:`fit` trains a network data-parallel: the chunks stay on the
  workers, each computes its loss and gradients through the network's
  training interface, only the parameters and the gradients travel, and the
  optimiser of :meth:`Lista.fit` (with its validation and its rollback of
  blow-ups) runs on the client.

Every function uses the current scheduler: a ``distributed.Client`` when one
is active, otherwise dask's default (threads). A lazy result built while a
client is active refers to the model scattered to that client's workers:
compute it on that client. Each task runs ``n_jobs`` threads (1 by
default): dask already runs one task per worker thread, and more would
oversubscribe the cores.
"""
import contextlib
import copy
import operator

import dask
import dask.array as da
import numpy as np

from ._networks import Lista
from ._networks._execution import batch_exponent
from ._solvers import (CERTIFIABLE_TOL, METHODS, LassoResult, lasso_targets,
                       solve_lasso as _solve)
from ._threads import kernel_threads
from ._training import train
from ._validation import (InvalidParameterError, _common_dtype, check_array,
                          check_bool, check_lmbd, check_max_iter, check_n_jobs,
                          check_option, check_scalar, not_real_reason, short_repr)

__all__ = ["encode", "solve_lasso", "fit"]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _client():
    """The distributed client that will run the graphs, or None.

    None without ``distributed``, without a client, or when another
    scheduler was chosen (``dask.config.set(scheduler="threads")``).
    """
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover - distributed is optional
        return None
    try:
        client = get_client()
    except ValueError:
        return None
    scheduler = dask.base.get_scheduler()
    return client if getattr(scheduler, "__self__", None) is client else None


def _ship(obj):
    """A reference to ``obj`` that a graph can hold many times, shipped once.

    With a distributed client: a future of ``obj`` scattered (broadcast) to
    the workers: serialised once, whatever the number of chunks. Otherwise a
    single-key ``dask.delayed``: every task depending on it refers to the
    one key, so the object is serialised once with the graph.
    """
    client = _client()
    if client is not None:
        return client.scatter(obj, broadcast=True, hash=False)
    return dask.delayed(obj, pure=True, traverse=False)


def _as_samples_array(X, name="X"):
    """A 2-D dask array with all features in one chunk."""
    if not isinstance(X, da.Array):
        X = da.from_array(check_array(X, name, allow_1d=False, min_features=0),
                          chunks=("auto", -1))
    if X.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D dask array of shape (n_samples, n_features); "
            f"got {X.ndim}-D with shape {X.shape}.")
    # the rule for arrays of numbers, on the dtype (the chunks are lazy): a
    # cast would drop imaginary parts or parse text
    reason = not_real_reason(np.empty(0, X.dtype), name)
    if reason is None and X.dtype == object:
        reason = (f"{name} is a dask array of dtype object, whose elements cannot be "
                  "checked without computing it. Convert it to a numeric dtype "
                  f"explicitly ({name}.astype(float)).")
    if reason is not None:
        raise ValueError(reason)
    if any(np.isnan(c) for c in X.shape):
        raise ValueError(
            f"{name} has unknown chunk sizes (shape {X.shape}); call "
            f"{name}.compute_chunk_sizes() first.")
    if X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    return X


def _float_dtype(dtype):
    """float32 for float32 data in either byte order ('>f4' too), else float64."""
    return np.dtype(np.float32 if np.dtype(dtype).newbyteorder("=") == np.float32
                    else np.float64)


# ---------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------

def _encode_block(X, model, n_atoms=None, dtype=None):
    """Codes of one chunk; an empty chunk (a filtered array has them) gives
    (0, n_atoms) codes of ``dtype`` without calling the model, which may
    refuse 0 samples as scikit-learn's estimators do."""
    if X.shape[0] == 0 and n_atoms is not None:
        return np.empty((0, n_atoms), dtype=dtype)
    if isinstance(model, _LassoSettings):
        return model.codes(X)
    return np.asarray(model.transform(X))


def _on_threads(model, n_jobs):
    """``model`` running on ``n_jobs`` threads a call: a Lista copy, or a
    shallow copy of an estimator with an ``n_jobs`` parameter (others as
    they are)."""
    if isinstance(model, Lista):
        return model._with_n_jobs(n_jobs)
    if "n_jobs" in getattr(model, "get_params", lambda: {})():
        model = copy.copy(model)
        model.n_jobs = n_jobs
    return model


class _LassoSettings:
    """Lasso solver settings shipped to the workers: ``solve_lasso(X, **self)``."""

    def __init__(self, D, lmbd, kwargs):
        self.D, self.lmbd, self.kwargs = D, lmbd, kwargs

    def codes(self, X):
        D = self.D if self.D.dtype == X.dtype else self.D.astype(_common_dtype(X, self.D))
        return _solve(X, D, self.lmbd, **self.kwargs).codes


def _settings_from_dict(model, n_jobs):
    kwargs = dict(model)
    try:
        D, lmbd = kwargs.pop("D"), kwargs.pop("lmbd")
    except KeyError:
        raise InvalidParameterError(
            "Solver settings must be a dict with keys 'D' and 'lmbd' (and optionally "
            "'method', 'tol', 'max_iter', 'n_jobs', 'positive' of fastlista.solve_lasso); got "
            f"keys {sorted(model)}.") from None
    allowed = {"method", "tol", "max_iter", "n_jobs", "positive"}
    if set(kwargs) - allowed:
        raise InvalidParameterError(
            f"Unknown solver settings {sorted(set(kwargs) - allowed)}; allowed: "
            f"'D', 'lmbd', {', '.join(repr(k) for k in sorted(allowed))}.")
    D = check_array(D, "D")
    if isinstance(lmbd, (list, tuple)) or len(getattr(lmbd, "shape", ())) > 0:
        raise InvalidParameterError(
            "The 'lmbd' setting of fastlista.distributed.encode is one float for "
            "every sample (the settings are a model, shipped once); for one lmbd a "
            f"sample use fastlista.distributed.solve_lasso(X, D, lmbd). Got a "
            f"{type(lmbd).__name__} of "
            + (f"shape {lmbd.shape}." if hasattr(lmbd, "shape") else f"length {len(lmbd)}."))
    func = "fastlista.distributed.encode"
    lmbd = check_scalar(lmbd, "lmbd", func, low=0.0)
    # the settings checked here, named as encode's: the probe's solve_lasso
    # would name itself, a function the caller did not call
    if "method" in kwargs:
        kwargs["method"] = check_option(kwargs["method"], "method", func, METHODS)
    if "tol" in kwargs:
        kwargs["tol"] = check_scalar(kwargs["tol"], "tol", func, low=0.0)
    if "max_iter" in kwargs:
        kwargs["max_iter"] = check_max_iter(kwargs["max_iter"], func)
    if "positive" in kwargs:
        kwargs["positive"] = check_bool(kwargs["positive"], "positive", func)
    if "n_jobs" not in kwargs:
        kwargs["n_jobs"] = n_jobs
    check_n_jobs(kwargs["n_jobs"], func)
    return _LassoSettings(D, lmbd, kwargs)


def encode(model, X, n_jobs=1):
    """Codes of every row of a dask array, lazily, one task per chunk.

    Parameters
    ----------
    model : Lista, transformer or dict
        * a :class:`~fastlista.Lista` (codes of the network),
        * any fitted object with a ``transform`` method, such as
          :class:`~fastlista.estimators.LearnedSparseCoder` or
          :class:`~fastlista.estimators.LassoSparseCoder`,
        * or Lasso solver settings ``{"D": D, "lmbd": lmbd, "method": ...,
          "tol": ..., "max_iter": ..., "n_jobs": ..., "positive": ...}``
          (only ``D`` and ``lmbd`` required): exact Lasso codes by
          :func:`fastlista.solve_lasso` (its ``n_jobs``, when given, overrides
          the argument below). ``lmbd`` is one float for every sample:
          :func:`solve_lasso` (this module's) takes one a sample.
    X : dask array of shape (n_samples, n_features)
        Signals, chunked along samples (a NumPy array is wrapped; chunks
        along features are merged).
    n_jobs : int or None, default=1
        Threads of each task (a Lista, or an estimator with an ``n_jobs``
        parameter, runs on a copy set to it). 1: dask already runs one task
        per worker thread. None uses every core (OpenMP's limit if lower:
        dask's nannies set ``OMP_NUM_THREADS=1`` in their workers, where
        only an int gives a task more threads) per task.

    Returns
    -------
    Z : dask array of shape (n_samples, n_atoms)
        One ``map_blocks`` over X, chunked like X along samples; nothing runs
        until it is computed. The model is a single key of the graph (a
        scattered future when a ``distributed`` client is running): it is
        shipped once, not once per chunk. The dtype is the model's on X's
        (the estimators keep X's dtype; a Lista codes in the common dtype of
        X and its dictionary). One sample is encoded on the client when the
        graph is built, to learn the codes' width and dtype.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from fastlista.distributed import encode
    >>> D = np.eye(3)
    >>> X = da.from_array(np.array([[3.0, 0.5, -2.0]] * 4), chunks=(2, 3))
    >>> encode({"D": D, "lmbd": 1.0}, X).compute()[0]
    array([ 2.,  0., -1.])
    """
    X = _as_samples_array(X)
    check_n_jobs(n_jobs, "fastlista.distributed.encode")
    if isinstance(model, dict):
        model = _settings_from_dict(model, n_jobs)
    elif not callable(getattr(model, "transform", None)):
        raise InvalidParameterError(
            "model must be a fastlista Lista, an object with a transform method (e.g. "
            "a fitted LearnedSparseCoder) or a dict of solver settings; got "
            f"{type(model).__name__}.")
    else:
        model = _on_threads(model, n_jobs)
    # the width the model takes (its dictionary's, or a fitted estimator's
    # n_features_in_), checked here: the probe below would name its own
    # one-sample X in the message
    D = getattr(model, "D", None)
    width = D.shape[1] if D is not None else getattr(model, "n_features_in_", None)
    if width is not None and width != X.shape[1]:
        raise ValueError(
            f"X has {X.shape[1]} features, but the model takes {width} "
            f"(X.shape={X.shape}).")
    # the output's width and dtype, from one sample encoded on the client
    # (this also fails early for an unfitted or mismatched model)
    probe = _encode_block(np.zeros((1, X.shape[1]), dtype=_float_dtype(X.dtype)), model)
    if probe.ndim != 2 or probe.shape[0] != 1:
        raise ValueError(
            f"model.transform returned shape {probe.shape} for one sample; expected "
            "(1, n_atoms).")
    n_atoms = probe.shape[1]
    return da.map_blocks(_encode_block, X, _ship(model), n_atoms, probe.dtype,
                         dtype=probe.dtype,
                         chunks=(X.chunks[0], (n_atoms,)),
                         meta=np.empty((0, 0), dtype=probe.dtype),
                         token="fastlista-encode")


# ---------------------------------------------------------------------------
# solve_lasso
# ---------------------------------------------------------------------------

def _chunk_lmbd(lmbd, lam, start, func):
    """The chunk's lmbd: the shared one, or its column ``lam`` of a dask lmbd,
    validated here (seen chunk by chunk: its samples named in X's
    numbering, from ``start``)."""
    if lam is None:
        return lmbd
    lmbd = np.ascontiguousarray(lam[:, 0])
    bad = np.flatnonzero(~(np.isfinite(lmbd) & (lmbd >= 0)))
    if bad.size:
        raise InvalidParameterError(
            f"The 'lmbd' parameter of {func} must be >= 0 and finite; samples "
            f"{(start + bad[:5]).tolist()} hold {lmbd[bad[:5]].tolist()}.")
    return lmbd


@contextlib.contextmanager
def _numbered_from(start):
    """A solver's FloatingPointError, which numbers the chunk's samples from
    0, says where the chunk starts in X."""
    try:
        yield
    except FloatingPointError as exc:
        raise FloatingPointError(
            f"{exc} (sample numbers counted from the chunk starting at sample "
            f"{start} of X)") from None


def _solve_block(X, Z0, lam, settings, m, block_info=None):
    """Codes, gap, n_iter and converged of one chunk, packed in float64 columns
    (``lam``: the chunk's column of per-sample lmbd, or None)."""
    D = settings.D
    if D.dtype != X.dtype:
        dt = _common_dtype(X, D)
        X, D = X.astype(dt, copy=False), D.astype(dt, copy=False)
    start = block_info[0]["array-location"][0][0] if block_info else 0
    lmbd = _chunk_lmbd(settings.lmbd, lam, start, "fastlista.distributed.solve_lasso")
    with _numbered_from(start):
        res = _solve(X, D, lmbd, Z0=Z0 if Z0 is not None and Z0.size else None,
                     **settings.kwargs)
    out = np.empty((X.shape[0], m + 3))
    out[:, :m] = res.codes
    out[:, m] = res.gap
    out[:, m + 1] = res.n_iter
    out[:, m + 2] = res.converged
    return out


def _per_sample(values, X, name, func):
    """A per-sample array (NumPy or dask, shape (n_samples,)) as a dask column
    chunked like X's rows."""
    if not isinstance(values, da.Array):
        values = np.asarray(values, dtype=np.float64)
    if values.shape != (X.shape[0],):
        raise InvalidParameterError(
            f"The '{name}' parameter of {func} must be a float or an array of shape "
            f"(n_samples,) = ({X.shape[0]},); got shape {values.shape}.")
    column = values.reshape(-1, 1) if isinstance(values, da.Array) else \
        da.from_array(values.reshape(-1, 1), chunks=(X.chunks[0], 1))
    return column.rechunk((X.chunks[0], (1,)))


def _targets_block(X, lam, settings, block_info=None):
    """The semi-supervised targets of one chunk (``lasso_targets``: certified
    Lasso solutions, least squares at lmbd = 0)."""
    D = settings.D
    dt = _common_dtype(X, D)
    X, D = X.astype(dt, copy=False), D.astype(dt, copy=False)
    start = block_info[0]["array-location"][0][0] if block_info else 0
    lmbd = _chunk_lmbd(settings.lmbd, lam, start, "fastlista.distributed.fit")
    with _numbered_from(start):
        return lasso_targets(X, D, lmbd, **settings.kwargs)


def _check_lmbd_column(lmbd, X, func):
    """(scalar, None) or (None, dask column) for a lmbd of the Dask helpers.

    A NumPy array is validated at once (values >= 0, finite); a dask array
    when its chunks are solved (fastlista.solve_lasso on the worker).
    """
    if np.ndim(lmbd) == 0 and not isinstance(lmbd, da.Array):
        return check_scalar(lmbd, "lmbd", func, low=0.0), None
    if not isinstance(lmbd, da.Array):
        lmbd = check_lmbd(lmbd, X.shape[0], func)
    elif lmbd.dtype.kind not in "fiu":
        # the rule for lmbd arrays, on the dtype (the chunks are lazy): bools,
        # complex values, text, dates and objects are refused, not cast
        raise InvalidParameterError(
            f"The 'lmbd' parameter of {func} must be a float >= 0 or an array of shape "
            f"(n_samples,) = ({X.shape[0]},) of them. Got a dask array of dtype "
            f"{lmbd.dtype} instead"
            + (" (its elements cannot be checked without computing it: convert it "
               "with lmbd.astype(float))." if lmbd.dtype == object else "."))
    elif lmbd.ndim == 0:
        # one lazy value for every sample, checked on the workers as they are
        lmbd = da.broadcast_to(lmbd, (X.shape[0],))
    return None, _per_sample(lmbd, X, "lmbd", func)


def solve_lasso(X, D, lmbd, method="auto", tol=1e-8, max_iter=10000, Z0=None,
                n_jobs=1, positive=False):
    """:func:`fastlista.solve_lasso` for a dask array of signals, lazily.

    Parameters
    ----------
    X : dask array of shape (n_samples, n_features)
        Signals, chunked along samples (a NumPy array is wrapped).
    D : array-like of shape (n_atoms, n_features)
        Dictionary (a NumPy array): shipped once, as one graph key (or
        future).
    lmbd : float, or array of shape (n_samples,) (NumPy or dask)
        As in :func:`fastlista.solve_lasso`; a per-sample array is chunked
        like X's rows.
    method, tol, max_iter, positive
        As in :func:`fastlista.solve_lasso`.
    n_jobs : int or None, default=1
        Threads of each task. 1: dask already runs one task per worker
        thread, and more would oversubscribe the cores; raise it for
        workers with fewer threads than cores (an int: dask's nannies set
        ``OMP_NUM_THREADS=1``, OpenMP's limit that None takes). None uses
        every core (OpenMP's limit if lower) per task (as in :func:`encode`
        and :func:`fit`).
    Z0 : dask array of shape (n_samples, n_atoms), default=None
        Warm start (rechunked like X).

    Returns
    -------
    result : LassoResult
        ``codes`` (n_samples, n_atoms), ``gap`` (n_samples,), ``n_iter``
        (n_samples,) and ``converged`` (n_samples,) are dask arrays that
        share one ``map_blocks``: computing them together
        (``dask.compute(res.codes, res.gap)``) solves every chunk once.
        ``history`` and ``step_sizes`` are None. A sample that did not
        converge shows in ``converged``; the ConvergenceWarning, if any, is
        emitted on the worker.
    """
    func = "fastlista.distributed.solve_lasso"
    X = _as_samples_array(X)
    D = check_array(D, "D")
    if X.shape[1] != D.shape[1]:
        raise ValueError(
            f"X has {X.shape[1]} features, but D has {D.shape[1]} features "
            f"(X.shape={X.shape}, D.shape={D.shape}).")
    lmbd, lam = _check_lmbd_column(lmbd, X, func)
    method = check_option(method, "method", func, METHODS)
    tol = check_scalar(tol, "tol", func, low=0.0)
    max_iter = check_max_iter(max_iter, func)
    positive = check_bool(positive, "positive", func)
    check_n_jobs(n_jobs, func)
    m = D.shape[0]
    dtype = np.dtype(_common_dtype(np.empty(0, _float_dtype(X.dtype)), D))
    settings = _LassoSettings(D, lmbd, dict(method=method, tol=tol, max_iter=max_iter,
                                            n_jobs=n_jobs,
                                            positive=positive))
    args = [X]
    if Z0 is not None:
        Z0 = _as_samples_array(Z0, "Z0")
        if Z0.shape != (X.shape[0], m):
            raise ValueError(
                f"Z0 must have shape (n_samples, n_atoms) = {(X.shape[0], m)}; got "
                f"Z0.shape={Z0.shape}.")
        args.append(Z0.rechunk((X.chunks[0], (m,))))
    else:
        args.append(None)
    args.append(lam)
    packed = da.map_blocks(_solve_block, *args, _ship(settings), m,
                           dtype=np.float64, chunks=(X.chunks[0], (m + 3,)),
                           meta=np.empty((0, 0)), token="fastlista-solve-lasso")
    # the method "auto" resolves to, from a one-sample run on the client
    resolved = _solve(np.zeros((1, D.shape[1]), D.dtype), D, 0.0, method=method,
                      max_iter=1, n_jobs=1).method
    return LassoResult(
        codes=packed[:, :m].astype(dtype),
        gap=packed[:, m].astype(dtype),
        n_iter=packed[:, m + 1].astype(np.intc),
        converged=packed[:, m + 2].astype(bool),
        history=None, step_sizes=None, method=resolved)


# ---------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------

def _chunk_loss_grad(net, x, depth, X, loss, Z_target, lam, e):
    """Summed (not mean) loss and flat gradient of one chunk at a depth, on
    the chunk's data times 2**-e (the whole array's training units).

    Runs on a worker, on a private copy of the network (the worker's copy is
    shared by the tasks it runs, maybe on several threads). Returns
    ``(n * loss, n * gradient)``, n the chunk's number of samples.
    """
    local = copy.copy(net)
    local.set_training_vector(x, depth)
    data = local.training_data(X, loss, Z_target, None if lam is None else lam[:, 0],
                               func="fastlista.distributed.fit").scaled(e)
    value, grad = local.training_loss_and_grad(data, depth)
    n = data.n_samples
    return n * float(value), n * grad


def _chunk_zero_codes(net, X, loss, Z_target, lam):
    """``Lista.training_zero_codes`` of one chunk: whether the network's codes
    on it are all 0, and whether its targets are not."""
    data = net.training_data(X, loss, Z_target, None if lam is None else lam[:, 0],
                             func="fastlista.distributed.fit")
    return net.training_zero_codes(data)


def _extremes(*chunks):
    """The largest and smallest entry of each chunk (None: skipped)."""
    return [(np.max(c), np.min(c)) for c in chunks if c is not None]


def _training_exponent(blocks, dtype):
    """The e of ``TrainingData.exponent`` for the whole array (training data
    of ``dtype``), from the extremes of its (non-empty) chunks of X and the
    targets, computed once: every chunk trains on its data times 2**-e, as
    :meth:`Lista.fit` does on local data."""
    parts = dask.compute(*[dask.delayed(_extremes, pure=True)(xb, zb)
                           for xb, zb, _ in blocks])
    X_ext = np.array([part[0] for part in parts], dtype=dtype)
    S_ext = np.array([part[1] for part in parts if len(part) > 1], dtype=dtype)
    return min(batch_exponent(X_ext, S_ext if S_ext.size else None), 0)


def _add(a, b):
    """Sum of two chunks' (loss, gradient)."""
    return a[0] + b[0], a[1] + b[1]


def _tree_reduce(parts, add):
    """Pairwise ``add`` on the workers: one value reaches the client."""
    parts = list(parts)
    while len(parts) > 1:
        parts = [dask.delayed(add, pure=True)(parts[i], parts[i + 1])
                 if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0]


def _chunked_objective(net_ref, blocks, loss, n_samples, e):
    """evaluate(x, depth) -> (mean loss, flat gradient) over chunked data, in
    units of 2**e (see ``_chunk_loss_grad``).

    ``blocks`` holds the delayed chunks of X with those of the targets and of
    the per-sample lmbd (or None); each chunk's sums are computed next to it,
    added pairwise on the workers, and divided by the number of samples on
    the client.
    """
    def evaluate(x, depth):
        parts = [dask.delayed(_chunk_loss_grad, pure=True)(net_ref, x, depth, xb, loss,
                                                           zb, lb, e)
                 for xb, zb, lb in blocks]
        total, grad = dask.compute(_tree_reduce(parts, _add))[0]
        return total / n_samples, grad / n_samples
    return evaluate


def fit(net, X, loss="unsupervised", Z_target=None, optimizer="lbfgs", max_iter=100,
        tol=1e-8, per_layer="oneshot", verbose=False, n_jobs=1, lmbd=None):
    """Train a network data-parallel on a dask array: :meth:`Lista.fit` at scale.

    The chunks of X stay where they are (persisted on the workers); at every
    evaluation of the training loss, the parameter vector is sent to the
    chunks, each chunk computes its loss and gradient with the network's
    analytic backward pass, the chunks' sums are added pairwise on the
    workers, and one (loss, gradient) pair returns to the client, where the
    optimiser runs. The optimiser, its bounds, stopping rules, validation and
    rollback of blow-ups are those of :meth:`Lista.fit` (one implementation,
    ``fastlista._training.train``): on the same data the result equals the
    single-machine one up to the rounding of the sums.

    Parameters
    ----------
    net : Lista
        The network, trained in place (its copy on the workers is shipped
        once).
    X : dask array of shape (n_samples, n_features)
        Training signals, chunked along samples (a NumPy array is wrapped).
    loss, optimizer, max_iter, tol, per_layer, verbose
        As in :meth:`Lista.fit`. For ``loss="semi-supervised"`` the targets
        are computed once on the cluster, chunk by chunk, as
        :meth:`Lista.fit` computes them (certified Lasso solutions, least
        squares where lmbd = 0).
    Z_target : dask array of shape (n_samples, n_atoms), default=None
        Target codes of ``loss="supervised"`` (rechunked like X).
    n_jobs : int or None, default=1
        Threads of each task (see :func:`encode`).
    lmbd : float, or array of shape (n_samples,) (NumPy or dask), default=None
        The samples' regularisation levels (None: the network's); see
        :meth:`Lista.fit`.

    Returns
    -------
    net : Lista
        ``net`` itself, with trained parameters and ``loss_history_``.
    """
    func = "fastlista.distributed.fit"
    if not isinstance(net, Lista):
        raise InvalidParameterError(
            f"net must be a fastlista Lista; got {type(net).__name__}.")
    X = _as_samples_array(X)
    if X.shape[1] != net.n_features:
        raise ValueError(
            f"X has {X.shape[1]} features, but the network's D has {net.n_features} "
            f"features (X.shape={X.shape}, D.shape={net.D.shape}).")
    if X.shape[0] == 0:
        raise ValueError("X must contain at least one sample.")
    loss = check_option(loss, "loss", func, ("unsupervised", "supervised",
                                             "semi-supervised"))
    check_n_jobs(n_jobs, func)
    lam = None
    if lmbd is not None:
        scalar, lam = _check_lmbd_column(lmbd, X, func)
        if lam is None:
            lam = _per_sample(np.full(X.shape[0], scalar), X, "lmbd", func)

    # the chunks' training data's dtype (the network's, or float64)
    dtype = np.dtype(_common_dtype(np.empty(0, _float_dtype(X.dtype)), net.D))
    if Z_target is not None:
        # validated whatever the loss (unsupervised ignores it), as Lista.fit does
        Z_target = _as_samples_array(Z_target, "Z_target")
        if Z_target.shape != (X.shape[0], net.n_atoms):
            raise ValueError(
                f"Z_target must have shape (n_samples, n_atoms) = "
                f"{(X.shape[0], net.n_atoms)}; got Z_target.shape={Z_target.shape}.")
    elif loss == "semi-supervised":
        # Lasso solutions chunk by chunk, as Lista.fit's (lasso_targets)
        settings = _LassoSettings(net.D, net.lmbd, dict(n_jobs=n_jobs,
                                                        positive=net.positive))
        Z_target = da.map_blocks(_targets_block, X, lam, _ship(settings), dtype=dtype,
                                 chunks=(X.chunks[0], (net.n_atoms,)),
                                 meta=np.empty((0, 0), dtype), token="fastlista-targets")
    if loss != "unsupervised":
        if Z_target is None:
            raise ValueError(
                f"Z_target is required for loss={loss!r}: codes of shape "
                f"(n_samples, n_atoms) = {(X.shape[0], net.n_atoms)}.")
        Z_target = Z_target.rechunk((X.chunks[0], (net.n_atoms,)))
        X, Z_target = dask.persist(X, Z_target)
        z_blocks = Z_target.to_delayed().ravel()
        loss = "supervised"
    else:
        X = X.persist()
        z_blocks = [None] * X.numblocks[0]
    if lam is None:
        l_blocks = [None] * X.numblocks[0]
    else:
        # (held until training ends: a persisted collection no variable refers
        # to is released by a distributed client, and its keys with it)
        lam = lam.persist()
        l_blocks = lam.to_delayed().ravel()
    # empty chunks (a filtered array has them) add nothing to the sums
    blocks = [block for block, rows in zip(zip(X.to_delayed().ravel(), z_blocks,
                                                l_blocks), X.chunks[0]) if rows]
    e = _training_exponent(blocks, dtype)
    evaluate = _chunked_objective(_ship(net._with_n_jobs(n_jobs)), blocks, loss,
                                  X.shape[0], e)
    # the stages' results live on a copy until training ends (see Lista.fit);
    # the optimiser runs here, its BLAS work within n_jobs (with a local
    # scheduler the tasks run in this process meanwhile)
    work = copy.copy(net)
    with kernel_threads(n_jobs, func):
        def zero_codes_suboptimal(trained):
            ref = _ship(trained._with_n_jobs(n_jobs))
            parts = dask.compute(*[dask.delayed(_chunk_zero_codes, pure=True)(
                ref, xb, loss, zb, lb) for xb, zb, lb in blocks])
            return all(p[0] for p in parts) and any(p[1] for p in parts)

        history = train(work, evaluate, optimizer=optimizer, max_iter=max_iter, tol=tol,
                        per_layer=per_layer, verbose=verbose, func=func,
                        loss_exponent=2 * e, zero_codes_suboptimal=zero_codes_suboptimal)
    # the arrays themselves, not their round trip through the training
    # vector (untrained layers stay bit for bit those handed in)
    net.set_parameters(work.parameters)
    net.loss_history_ = history
    return net


# ---------------------------------------------------------------------------
# learn_dictionary
# ---------------------------------------------------------------------------

def _dictionary_chunk(X, Z_prev, D, settings, offset):
    """The code step of one chunk: (codes, CodeStats), on a worker. Its
    ``previous`` is the objective of Z_prev with D: the previous iteration's
    (see learn_dictionary)."""
    from .dictionary import code_stats, make_coder

    lmbd, code_tol, code_max_iter, positive_code, n_jobs = settings
    # the NumPy products of the statistics too run under the task's budget
    with kernel_threads(n_jobs, "fastlista.distributed.learn_dictionary") as n_threads:
        coder = make_coder("cd", lmbd, code_tol, code_max_iter, positive_code, n_threads)
        return code_stats(X, D, lmbd, coder, Z_prev, n_worst=D.shape[0], offset=offset)


def _dictionary_objective_chunk(X, Z, D, settings):
    """The summed objective of one chunk's codes Z with D, on a worker (the
    last iteration's, which no later code step evaluates)."""
    from .dictionary import signal_objectives

    with kernel_threads(settings[-1], "fastlista.distributed.learn_dictionary"):
        return float(signal_objectives(X, D, Z, settings[0])[0].sum())


def _scan_chunk(X):
    """(no NaN or infinity, exponent of max|X| or None) of one chunk, on a
    worker; an empty chunk is (True, None)."""
    from .dictionary import magnitude_exponent

    finite = bool(np.isfinite(X).all())
    return finite, (magnitude_exponent(X) if finite else None)


def _first(part):
    return part[0]


def _second(part):
    return part[1]


def learn_dictionary(X, n_atoms, lmbd, max_iter=None, tol=None, D0=None,
                     positive_code=False, positive_dict=False, n_jobs=1,
                     random_state=None, callback=None, progress=False, *,
                     code_tol=None, code_max_iter=10000, dict_passes=None):
    """Batch dictionary learning on a dask array: the code step on the workers.

    :func:`fastlista.dictionary.learn_dictionary` with ``method="batch"``
    and ``coder="cd"``, the signals staying where they are: every pass
    (iteration) ships D once to the workers (a broadcast future with a
    ``distributed`` client), each chunk solves the Lasso of its signals
    (:func:`fastlista.solve_lasso`, warm-started from its previous codes,
    which stay on the worker) and returns its sufficient statistics
    (``A = Z^T Z``, ``B = Z^T X``, sums, and its worst reconstructed
    residuals), the statistics are summed pairwise on the workers (a tree),
    and the client takes the dictionary step and broadcasts the new D. The
    algorithm, its arithmetic and its defaults are those of the local batch
    method (one implementation, ``fastlista.dictionary``): on the same data
    and D0 the result equals the local one up to the rounding of the sums.
    An iteration's objective (its codes with the new D, from the residuals)
    comes from the next pass, whose chunks evaluate their warm start, the
    last one's from an extra pass: the callback and the ``tol`` test of an
    iteration run after the next code step (a stop discards that step: D
    and the history are the local method's). Chunks of 0 rows (a filtered
    array's) are allowed.
    Like the local method, X whose largest magnitude leaves ``2**+-100``
    (float32: ``2**+-30``) is scaled by an exact power of two (found in the
    same pass over the chunks as the check for NaN, the chunks scaled where
    they live), ``lmbd`` with it: the atoms are those of the scaled data,
    the objective is in X's units.

    Parameters
    ----------
    X : dask array of shape (n_samples, n_features)
        Signals, chunked along samples (a NumPy array is wrapped).
    n_atoms, lmbd, max_iter, tol, D0, positive_code, positive_dict
        As in :func:`fastlista.dictionary.learn_dictionary` (batch).
    random_state, callback, progress, code_tol, code_max_iter, dict_passes
        As in :func:`fastlista.dictionary.learn_dictionary` (batch).
        Without D0 the initial atoms are the signals the local function
        would draw with the same ``random_state`` (fetched from the chunks).
    n_jobs : int or None, default=1
        Threads of each task (see :func:`encode`).

    Returns
    -------
    result : fastlista.dictionary.DictionaryResult
        ``method="batch"``, ``coder="cd"``.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from fastlista.distributed import learn_dictionary
    >>> X = da.from_array(np.random.RandomState(0).randn(400, 8), chunks=(100, 8))
    >>> res = learn_dictionary(X, n_atoms=10, lmbd=0.5, max_iter=5, random_state=0)
    >>> res.D.shape, res.n_iter
    ((10, 8), 5)
    """
    from . import dictionary as dl

    func = "fastlista.distributed.learn_dictionary"
    X = _as_samples_array(X)
    n_atoms = check_scalar(n_atoms, "n_atoms", func, low=1, high=2**31 - 1, integer=True)
    lmbd = check_scalar(lmbd, "lmbd", func, low=0.0)
    if X.shape[0] < 1:
        raise ValueError(f"X must contain at least one sample; got X.shape={X.shape}.")
    if X.shape[1] < 1:
        raise ValueError(f"X must contain at least one feature; got X.shape={X.shape}.")
    dtype = _float_dtype(X.dtype)
    if X.dtype != dtype:
        X = X.astype(dtype)
    if D0 is not None:
        D0 = check_array(D0, "D0", dtype=np.float64)
        if D0.shape != (n_atoms, X.shape[1]):
            raise ValueError(
                f"D0 must have shape (n_atoms, n_features) = {(n_atoms, X.shape[1])}; "
                f"got D0.shape={D0.shape}.")
        D0 = D0.copy()
        norms = dl.row_norms(D0)
        D0[norms > 1] /= norms[norms > 1, None]
    max_iter = dl.DEFAULT_MAX_ITER["batch"] if max_iter is None else \
        check_max_iter(max_iter, func)
    tol = dl.DEFAULT_TOL["batch"] if tol is None else check_scalar(tol, "tol", func,
                                                                   low=0.0)
    positive_code = check_bool(positive_code, "positive_code", func)
    positive_dict = check_bool(positive_dict, "positive_dict", func)
    progress = check_bool(progress, "progress", func)
    code_tol = CERTIFIABLE_TOL[dtype] if code_tol is None else \
        check_scalar(code_tol, "code_tol", func, low=0.0)
    code_max_iter = check_max_iter(code_max_iter, func, "code_max_iter")
    dict_passes = dl.BATCH_PASSES if dict_passes is None else \
        check_max_iter(dict_passes, func, "dict_passes")
    check_n_jobs(n_jobs, func)
    if callback is not None and not callable(callback):
        raise InvalidParameterError(
            f"The 'callback' parameter of {func} must be a callable or None. "
            f"Got {short_repr(callback)} instead.")
    from ._validation import check_random_state
    rng = check_random_state(random_state, func)

    X = X.persist()
    # NaN and infinity are refused before any learning, and X far from 1 is
    # scaled by an exact power of two as the local method does (one pass, on
    # the workers; a chunk at a time: dask's max refuses empty chunks, which
    # a filtered array has)
    scans = dask.compute(*[dask.delayed(_scan_chunk, pure=True)(b)
                           for b in X.to_delayed().ravel()])
    if not all(finite for finite, _ in scans):
        raise ValueError("Input X contains NaN or infinity.")
    tops = [top for _, top in scans if top is not None]
    e = dl.units_exponent(max(tops) if tops else None, dtype)
    if e != 0:
        X = da.ldexp(X, -e).astype(dtype, copy=False).persist()
    lmbd_e = dl.lmbd_in_units(lmbd, e, dtype)
    if D0 is None:
        D = dl.initial_dictionary(X, n_atoms, rng, positive_dict,
                                  rows=lambda idx: np.asarray(X[idx].compute()),
                                  signed=not positive_code)
    else:
        D = dl.start_dictionary(None, n_atoms, D0, rng, positive_dict)
    blocks = X.to_delayed().ravel()
    offsets = np.concatenate([[0], np.cumsum(X.chunks[0])[:-1]]).astype(int)
    settings = (lmbd_e, code_tol, code_max_iter, positive_code, n_jobs)
    objective, n_reinit, converged = [], 0, False
    codes = [None] * len(blocks)
    n = X.shape[0]
    bar = dl._Progress(progress, max_iter, "iter", "learn_dictionary(dask)")

    def record(it, total, gain):
        """Iteration it's objective (its codes with the current D) known: the
        progress bar, the callback and the stopping test. True stops."""
        nonlocal converged
        objective.append(total / n)
        bar.update(1, objective[-1])
        if dl._notify(callback, it, it + 1, D, objective, n_reinit, e):
            return True
        converged = dl.batch_stop(objective, tol, gain)
        return converged

    try:
        gain = 0.0
        for it in range(max_iter):
            D_ref = _ship(D.copy())
            parts = [dask.delayed(_dictionary_chunk, pure=False)(xb, zb, D_ref, settings,
                                                                 int(off))
                     for xb, zb, off in zip(blocks, codes, offsets)]
            parts = dask.persist(*parts)
            stats = dask.compute(_tree_reduce(
                [dask.delayed(_second, pure=True)(p) for p in parts], operator.add))[0]
            # the pass evaluated the previous iteration's codes with D (the
            # warm start's objective, from the residuals): that iteration's
            # entry, as the local method has it after its dictionary step
            # (a stop discards this pass's codes: D is the one to return)
            if it > 0 and record(it - 1, stats.previous, gain):
                break
            codes = [dask.delayed(_first, pure=True)(p) for p in parts]
            # the dictionary step (on the client) under the same budget as the
            # local method's
            with kernel_threads(n_jobs, func):
                n_new, gain = dl.batch_dictionary_step(
                    D, stats, lmbd_e, positive_dict, dict_passes,
                    positive_code=positive_code, dtype=dtype)
            n_reinit += n_new
        else:
            # the last iteration's entry: one pass over its codes with the final D
            D_ref = _ship(D.copy())
            total = dask.compute(_tree_reduce(
                [dask.delayed(_dictionary_objective_chunk, pure=False)(xb, zb, D_ref,
                                                                       settings)
                 for xb, zb in zip(blocks, codes)], operator.add))[0]
            record(max_iter - 1, total, gain)
    finally:
        bar.close()
    D = dl._normalise(D.copy(), rng, positive_dict)
    return dl.DictionaryResult(D.astype(dtype), dl.in_units(objective, e),
                               len(objective), len(objective), n_reinit, converged,
                               "batch", "cd")


__all__ += ["learn_dictionary"]
