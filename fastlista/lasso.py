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
"""
import numpy as np

from ._kernels import _prox, _solvers
from ._validation import check_array, check_scalar, check_X_D

__all__ = ["lasso_objective", "lasso_gradient", "lambda_max", "duality_gap",
           "soft_thresholding"]


def _check_codes(Z, X, D, name="Z"):
    """Validate codes against a validated (X, D): returns a 2-D array."""
    Z = check_array(Z, name, dtype=X.dtype, allow_1d=True, min_features=0)
    if Z.shape != (X.shape[0], D.shape[0]):
        raise ValueError(
            f"{name} must have shape (n_samples, n_atoms) = {(X.shape[0], D.shape[0])} "
            f"to match X {X.shape} and D {D.shape}; got {name}.shape={Z.shape}.")
    return Z


def _check_lmbd(lmbd, func):
    return check_scalar(lmbd, "lmbd", func, low=0.0)


def _squeeze(out, is_1d):
    return out[0] if is_1d else out


def lasso_objective(X, D, lmbd, Z):
    """Lasso objective of each sample.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or (n_features,)
        Signals, one per row.
    D : array-like of shape (n_atoms, n_features)
        Dictionary, one atom per row.
    lmbd : float
        Regularisation level, >= 0.
    Z : array-like of shape (n_samples, n_atoms) or (n_atoms,)
        Codes.

    Returns
    -------
    objective : ndarray of shape (n_samples,) or float
        ``0.5 * ||x - z D||^2 + lmbd * ||z||_1`` for each row.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista import lasso_objective
    >>> D = np.eye(2)
    >>> float(lasso_objective([1.0, 0.0], D, 0.5, [0.5, 0.0]))
    0.375
    """
    X, D, is_1d = check_X_D(X, D, allow_no_atoms=True)
    lmbd = _check_lmbd(lmbd, "lasso_objective")
    Z = _check_codes(Z, X, D)
    R = X - Z @ D
    out = 0.5 * np.einsum("ij,ij->i", R, R) + lmbd * np.abs(Z).sum(axis=1)
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
    """
    X, D, is_1d = check_X_D(X, D, allow_no_atoms=True)
    Z = _check_codes(Z, X, D)
    out = (Z @ D - X) @ D.T
    return _squeeze(out, is_1d)


def lambda_max(X, D):
    """Smallest regularisation for which the zero code is optimal.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or (n_features,)
    D : array-like of shape (n_atoms, n_features)

    Returns
    -------
    lmbd_max : ndarray of shape (n_samples,) or float
        ``||x D^T||_inf`` per sample: for ``lmbd >= lmbd_max`` the Lasso
        solution is exactly 0.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista import lambda_max
    >>> lambda_max(np.array([[3.0, -4.0]]), np.eye(2))
    array([4.])
    """
    X, D, is_1d = check_X_D(X, D, allow_no_atoms=True)
    # c = x D^T with the solvers' own arithmetic, so that lmbd = lambda_max
    # gives exactly zero codes there
    C = np.zeros((X.shape[0], D.shape[0]), dtype=X.dtype)
    _solvers.correlations(X, D, C, 1)
    out = np.abs(C).max(axis=1, initial=0.0)
    return _squeeze(out, is_1d)


def _gap_terms(X, D, lmbd, Z):
    """Primal objective and duality gap per sample (inputs validated)."""
    R = X - Z @ D
    primal = 0.5 * np.einsum("ij,ij->i", R, R) + lmbd * np.abs(Z).sum(axis=1)
    corr = np.abs(R @ D.T).max(axis=1, initial=0.0)
    scale = np.maximum(lmbd, corr)
    # Dual(theta) = <x, lmbd theta> - 1/2 ||lmbd theta||^2, theta = R / scale
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(scale > 0, lmbd / scale, 0.0)
    dual = ratio * np.einsum("ij,ij->i", X, R) - 0.5 * ratio ** 2 * np.einsum("ij,ij->i", R, R)
    return primal, np.maximum(primal - dual, 0.0)


def duality_gap(X, D, lmbd, Z):
    """Duality gap of the codes ``Z``: a certificate of their accuracy.

    With ``r = x - z D`` and the dual point ``theta = r / max(lmbd,
    ||r D^T||_inf)`` (feasible: ``||theta D^T||_inf <= 1``), the gap is
    ``F_x(z) - (0.5 ||x||^2 - 0.5 ||x - lmbd theta||^2)``. It bounds
    ``F_x(z) - min F_x`` from above and is 0 at the optimum.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or (n_features,)
    D : array-like of shape (n_atoms, n_features)
    lmbd : float
        Regularisation level, >= 0.
    Z : array-like of shape (n_samples, n_atoms) or (n_atoms,)

    Returns
    -------
    gap : ndarray of shape (n_samples,) or float
        Non-negative (negative rounding errors are clipped to 0).

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista import duality_gap
    >>> float(duality_gap([1.0, 0.0], np.eye(2), 0.5, [0.5, 0.0]))
    0.0
    """
    X, D, is_1d = check_X_D(X, D, allow_no_atoms=True)
    lmbd = _check_lmbd(lmbd, "duality_gap")
    Z = _check_codes(Z, X, D)
    return _squeeze(_gap_terms(X, D, lmbd, Z)[1], is_1d)


def soft_thresholding(U, threshold):
    """Soft-thresholding ``sign(u) * max(|u| - threshold, 0)``, elementwise.

    The proximal operator of ``threshold * ||.||_1``. NaN propagates, and the
    output is exactly 0 where ``|u| <= threshold``.

    Parameters
    ----------
    U : array-like of any shape
        Values to shrink.
    threshold : float or array-like broadcastable to ``U.shape``
        Non-negative thresholds (a scalar, one per atom of shape
        ``(n_atoms,)``, ...).

    Returns
    -------
    out : ndarray of the shape of ``U``
        float32 if ``U`` and ``threshold`` are float32, float64 otherwise.

    Examples
    --------
    >>> from fastlista import soft_thresholding
    >>> soft_thresholding([-2.0, 0.5, 3.0], 1.0)
    array([-1.,  0.,  2.])
    """
    U, t = np.asarray(U), np.asarray(threshold)
    # float32 stays float32 when the threshold does not ask for more precision
    single = U.dtype == np.float32 and (t.dtype == np.float32 or t.ndim == 0)
    dtype = np.float32 if single else np.float64
    if np.iscomplexobj(U):
        raise ValueError("Complex data not supported in U.")
    U = np.ascontiguousarray(U, dtype=dtype)
    t = t.astype(dtype)
    if not np.all(np.isfinite(t)):
        raise ValueError("Input threshold contains NaN or infinity.")
    if np.any(t < 0):
        raise ValueError("threshold must be non-negative.")
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
    _prox.soft_thresholding(U.reshape(-1), np.ascontiguousarray(t), out.reshape(-1))
    return out
