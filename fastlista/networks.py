"""Unfolded ISTA networks: LISTA, LISTA-CP, ALISTA and SLISTA.

A network of T layers maps a signal x to a code z_T, starting from z_0 = 0:

    z_{t+1} = ST(u_t, lmbd * theta_t),   ST(u, s) = sign(u) max(|u| - s, 0).

The parametrization decides the pre-activation u_t and what is learned
(one dict of parameters per layer):

=========== ====================================== ============ =================================
name        u_t                                    threshold    learned keys (init)
=========== ====================================== ============ =================================
``step``    z - alpha (z D - x) D^T                lmbd alpha   ``alpha`` (1/L)
``coupled`` z - alpha (z D - x) W^T                lmbd beta    ``W`` (D), ``alpha``, ``beta`` (1/L)
``alista``  z - gamma (z D - x) W~^T, W~ fixed     lmbd theta   ``gamma``, ``theta`` (1/L)
``lista``   z W_z + x W_x                          lmbd theta   ``W_z`` (I - B/L), ``W_x`` (D^T/L),
                                                                ``theta`` (1/L per atom)
=========== ====================================== ============ =================================

``step`` is SLISTA (Ablin et al., 2019: only a step size a layer is learned),
``coupled`` is LISTA-CP (Chen et al., 2018), ``alista`` is ALISTA (Liu et
al., 2019) with the analytic weights of :func:`alista_weights` and ``lista``
is LISTA (Gregor & LeCun, 2010). Thresholds are lmbd times a learned factor,
so a network trained at one lmbd can be evaluated at another, and an
untrained ``step``, ``coupled`` or ``lista`` network is exactly ISTA with
step 1/L, L = ||D D^T||_2.

Forward and backward passes run in Cython (``_kernels/_unrolled.pyx``):
analytic gradients, sample-blocked and layer-fused, with support-aware
sparse products and OpenMP threads over blocks of samples.
"""
import os

import numpy as np

from ._kernels import _unrolled
from ._threads import blas_single_threaded
from ._validation import (InvalidParameterError, check_array, check_option,
                          check_random_state, check_scalar, check_X_D)
from .lasso import lasso_objective
from .lipschitz import lipschitz

__all__ = ["Lista", "alista_weights"]

PARAMETRIZATIONS = ("step", "coupled", "alista", "lista")
LOSSES = ("unsupervised", "supervised", "semi-supervised")

# parameter keys of one layer, in the order of the flat training vector
_KEYS = {
    "step": ("alpha",),
    "coupled": ("W", "alpha", "beta"),
    "alista": ("gamma", "theta"),
    "lista": ("W_z", "W_x", "theta"),
}
# step sizes and threshold factors: >= 0 (and >= a floor while training)
_NONNEGATIVE = frozenset({"alpha", "beta", "gamma", "theta"})

_FORMAT = "fastlista.Lista"
_FORMAT_VERSION = 1

# Execution tuning (see DESIGN §5). A block has as many rows as keep its
# GEMMs (rows x m x n multiply-adds) within _BLOCK_GEMM: OpenBLAS multiplies
# such small matrices without packing them, and every product is written
# untransposed for it (32 rows on the paper shape, 64 x 256: SLISTA
# loss_and_grad at lmbd = 0.1 in 0.38 s, against 0.47 s at 64 or 128 rows in
# the same run; 8 rows at 128 x 512, 128 at 32 x 128).
# Dictionaries too large for that take _BLOCK_ELEMENTS codes a block (128
# rows at 256 atoms: a block's codes, gradient and c = x W^T stay in L2).
# A layer whose input codes are denser than _SPARSE_DENSITY in the block runs
# dense GEMMs, sparser ones gather rows of B (or W) for the non-zeros
# (measured on the paper shape, 64 x 256, where the gather wins up to roughly
# 10 % density: loss_and_grad at lmbd = 0.3 takes 0.39 s with 0.1, 0.45 s
# with 0.15, and the same at lmbd = 0.5 and 0.8); OpenMP threads only pay off above _THREAD_WORK
# multiply-adds a call (N T m n), below it their start and join dominate.
_BLOCK_GEMM = 1 << 19
_BLOCK_ELEMENTS = 128 * 256
_SPARSE_DENSITY = 0.1
_THREAD_WORK = 2e7


def alista_weights(D):
    """Analytic weights W~ of ALISTA (Liu, Chen, Wang & Yin, 2019).

    W~ minimises the off-diagonal mass of the "mutual coherence" matrix
    W~ D^T under a unit diagonal:

        min_W  sum_{i != j} (w_i . d_j)^2   s.t.   w_i . d_i = 1 for every atom i.

    The problem splits over atoms. On the constraint the objective of row i
    is ||D w_i||^2 - 1 = w_i^T G w_i - 1 with G = D^T D, so the Lagrange
    condition G w = mu d_i and the constraint give the closed form

        w_i = G^+ d_i / (d_i^T G^+ d_i),

    (components of w_i in the null space of D change neither the objective
    nor the constraint; the minimum-norm choice is taken). With the thin SVD
    D = U S V^T: G^+ d_i = V S^{-1} u_i and d_i^T G^+ d_i = ||u_i||^2, so
    W~ = diag(1 / ||u_i||^2) U S^{-1} V^T, a row-normalised (D^+)^T.

    Parameters
    ----------
    D : array-like of shape (n_atoms, n_features)
        Dictionary, one atom per row; no atom may be zero.

    Returns
    -------
    W : ndarray of shape (n_atoms, n_features)
        ``diag(W @ D.T) == 1`` with the smallest off-diagonal Frobenius norm,
        of D's dtype (computed in float64).

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista import alista_weights
    >>> D = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> W = alista_weights(D)
    >>> np.allclose(np.diag(W @ D.T), 1.0)
    True
    """
    D = check_array(D, "D")
    if D.shape[0] == 0:
        raise ValueError(f"D must contain at least one atom; got D.shape={D.shape}.")
    D64 = D.astype(np.float64)
    zero = np.flatnonzero(~np.any(D64 != 0, axis=1))
    if zero.size:
        raise ValueError(
            f"D has zero atoms (rows {zero[:5].tolist()}): no weight satisfies "
            "w_i . d_i = 1 for them.")
    U, s, Vt = np.linalg.svd(D64, full_matrices=False)
    rank = int(np.sum(s > s[0] * max(D.shape) * np.finfo(np.float64).eps))
    U, s, Vt = U[:, :rank], s[:rank], Vt[:rank]
    W = (U / s) @ Vt / np.einsum("ij,ij->i", U, U)[:, None]
    return np.ascontiguousarray(W, dtype=D.dtype)


# ---------------------------------------------------------------------------
# threads: OpenMP over blocks, BLAS single-threaded meanwhile
# ---------------------------------------------------------------------------

def _plan(n_rows, n_atoms, n_features, n_layers):
    """(n_threads, block_size) for a batch of n_rows samples.

    Several OpenMP threads only for enough work (see :func:`_threads` for
    BLAS); the blocks are balanced so that every thread gets as many rows.
    """
    block = min(_BLOCK_GEMM // max(n_atoms * n_features, 1),
                _BLOCK_ELEMENTS // max(n_atoms, 1))
    if block < 8:
        block = max(1, _BLOCK_ELEMENTS // max(n_atoms, 1))
    n_threads = max(1, _unrolled.max_threads())
    work = float(n_rows) * n_layers * n_atoms * n_features
    if work < _THREAD_WORK or n_rows < 2 * 16:
        n_threads = 1
    n_blocks = max(-(-n_rows // block), n_threads)
    n_blocks = -(-n_blocks // n_threads) * n_threads
    return n_threads, max(1, -(-n_rows // n_blocks))


def _threads(n_threads):
    """(context, n_threads): BLAS on one thread inside ``context`` (one
    OpenMP thread without threadpoolctl). Also with one OpenMP thread: the
    planner picks one for small jobs, whose small GEMMs a multithreaded BLAS
    only slows down."""
    return blas_single_threaded(n_threads)


# ---------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------

class Lista:
    """Unfolded ISTA network with learned weights or step sizes.

    Parameters
    ----------
    D : array-like of shape (n_atoms, n_features)
        Dictionary, one atom per row. float32 dictionaries give a float32
        network.
    lmbd : float
        Regularisation level (absolute, >= 0) of the Lasso the network is
        trained for: thresholds are ``lmbd`` times the learned factors.
    n_layers : int
        Number of layers T, >= 1.
    parametrization : {"step", "coupled", "alista", "lista"}, default="step"
        See the module docstring: ``step`` is SLISTA (one step size a layer),
        ``coupled`` is LISTA-CP, ``alista`` ALISTA, ``lista`` LISTA.
    random_state : None, int or numpy.random.RandomState, default=None
        Validated and kept for reproducible extensions; the initialisation
        is deterministic (ISTA), so no randomness is drawn today.

    Attributes
    ----------
    lipschitz_ : float
        L = largest eigenvalue of ``D D^T``; the untrained steps are 1/L.
    loss_history_ : list of float
        Training loss before the first and after every accepted iteration of
        the last :meth:`fit` (for ``per_layer="recursive"`` the stages'
        histories are concatenated, each at its own depth).

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista import Lista
    >>> rng = np.random.RandomState(0)
    >>> D = rng.randn(8, 4)
    >>> X = rng.randn(100, 4)
    >>> net = Lista(D, lmbd=0.5, n_layers=5).fit(X, max_iter=20)
    >>> net.transform(X).shape
    (100, 8)
    """

    def __init__(self, D, lmbd, n_layers, parametrization="step",
                 random_state=None):
        D = check_array(D, "D")
        if D.shape[0] == 0:
            raise ValueError(f"D must contain at least one atom; got D.shape={D.shape}.")
        self.D = D.copy()
        self.D.setflags(write=False)
        self.lmbd = check_scalar(lmbd, "lmbd", "Lista", low=0.0)
        self.n_layers = check_scalar(n_layers, "n_layers", "Lista", low=1,
                                     integer=True)
        self.parametrization = check_option(parametrization, "parametrization",
                                            "Lista", PARAMETRIZATIONS)
        check_random_state(random_state)
        self.random_state = random_state
        self.lipschitz_ = float(lipschitz(self.D))
        if not self.lipschitz_ > 0:
            raise ValueError("D must not be all zeros: its Lipschitz constant is 0.")
        self.loss_history_ = []
        self._fixed = {}
        self._params = self._initial_parameters()
        self._cache = {}

    # -- parameters --------------------------------------------------------

    @property
    def n_atoms(self):
        return self.D.shape[0]

    @property
    def n_features(self):
        return self.D.shape[1]

    @property
    def dtype(self):
        return self.D.dtype

    def _shapes(self):
        m, n = self.D.shape
        return {"alpha": (), "beta": (), "gamma": (),
                "theta": (m,) if self.parametrization == "lista" else (),
                "W": (m, n), "W_z": (m, m), "W_x": (n, m)}

    def _initial_parameters(self):
        """ISTA with step 1/L (ALISTA: 1/L steps through W~)."""
        D, dt = self.D, self.D.dtype
        m = D.shape[0]
        inv_L = 1.0 / self.lipschitz_
        step = np.array(inv_L, dtype=dt)
        p = self.parametrization
        if p == "step":
            layer = {"alpha": step}
        elif p == "coupled":
            layer = {"W": D.copy(), "alpha": step, "beta": step}
        elif p == "alista":
            layer = {"gamma": step, "theta": step}
        else:
            B = D.astype(np.float64) @ D.T.astype(np.float64)
            layer = {"W_z": (np.eye(m) - B * inv_L).astype(dt),
                     "W_x": np.ascontiguousarray(D.T * inv_L, dtype=dt),
                     "theta": np.full(m, inv_L, dtype=dt)}
        return [{k: v.copy() for k, v in layer.items()} for _ in range(self.n_layers)]

    @property
    def parameters(self):
        """Per-layer parameters: a list of T dicts name -> ndarray (copies).

        Keys: ``step``: ``alpha`` (scalar); ``coupled``: ``W`` (n_atoms,
        n_features), ``alpha``, ``beta`` (scalars); ``alista``: ``gamma``,
        ``theta`` (scalars); ``lista``: ``W_z`` (n_atoms, n_atoms), ``W_x``
        (n_features, n_atoms), ``theta`` (n_atoms,). Scalars are 0-d arrays.
        """
        return [{k: v.copy() for k, v in layer.items()} for layer in self._params]

    def set_parameters(self, parameters):
        """Replace the parameters (validated; copied in the network's dtype).

        Parameters
        ----------
        parameters : list of dict
            One dict a layer with exactly the keys and shapes of
            :attr:`parameters`; values finite, step sizes and threshold
            factors (``alpha``, ``beta``, ``gamma``, ``theta``) >= 0.

        Returns
        -------
        self : Lista
        """
        self._params = self._check_parameters(parameters)
        self._cache.clear()
        return self

    def _check_parameters(self, parameters):
        keys = _KEYS[self.parametrization]
        shapes = self._shapes()
        if isinstance(parameters, dict) or not hasattr(parameters, "__len__"):
            raise InvalidParameterError(
                f"parameters must be a list of {self.n_layers} dicts (one a layer) "
                f"with keys {list(keys)}; got {type(parameters).__name__}.")
        if len(parameters) != self.n_layers:
            raise ValueError(
                f"parameters must hold one dict per layer: expected {self.n_layers}, "
                f"got {len(parameters)}.")
        out = []
        for t, layer in enumerate(parameters):
            if not hasattr(layer, "keys") or set(layer.keys()) != set(keys):
                got = sorted(layer.keys()) if hasattr(layer, "keys") else type(layer).__name__
                raise ValueError(
                    f"parameters[{t}] must be a dict with keys {sorted(keys)} for "
                    f"parametrization={self.parametrization!r}; got {got}.")
            checked = {}
            for k in keys:
                try:
                    v = np.array(layer[k], dtype=self.dtype, order="C")
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"parameters[{t}][{k!r}] is not numeric: {exc}") from None
                if v.shape != shapes[k]:
                    raise ValueError(
                        f"parameters[{t}][{k!r}] must have shape {shapes[k]}; got {v.shape}.")
                if not np.all(np.isfinite(v)):
                    raise ValueError(f"parameters[{t}][{k!r}] contains NaN or infinity.")
                if k in _NONNEGATIVE and np.any(v < 0):
                    raise ValueError(
                        f"parameters[{t}][{k!r}] is a step size or threshold factor and "
                        f"must be >= 0; got min {float(v.min())!r}.")
                checked[k] = v          # np.array made a C-ordered copy (0-d stays 0-d)
            out.append(checked)
        return out

    # -- kernel arguments --------------------------------------------------

    def _fixed_matrices(self, dtype):
        """W, W^T, M = D W^T and M^T of the shared-W parametrizations, per dtype."""
        key = ("fixed", np.dtype(dtype).str)
        if key not in self._fixed:
            D64 = self.D.astype(np.float64)
            W = D64 if self.parametrization == "step" else alista_weights(D64)
            M = D64 @ W.T
            MT = M if self.parametrization == "step" else np.ascontiguousarray(M.T)
            cast = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
            self._fixed[key] = (cast(W[None]), cast(W.T[None]), cast(M), cast(MT))
        return self._fixed[key]

    def _kernel_args(self, dtype, n_layers):
        """Stacked parameters of the first n_layers layers, in dtype.

        With the transposes the kernels need (D^T, W^T, W_z^T): every product
        then runs as an untransposed GEMM, which BLAS does without packing
        at these sizes.
        """
        key = (np.dtype(dtype).str, n_layers)
        if key in self._cache:
            return self._cache[key]
        P = self._params[:n_layers]
        stack = lambda k: np.ascontiguousarray(  # noqa: E731
            np.stack([layer[k] for layer in P]), dtype=dtype)
        p = self.parametrization
        if p == "lista":
            Wz = stack("W_z")
            args = {"Wz": Wz, "WzT": np.ascontiguousarray(Wz.transpose(0, 2, 1)),
                    "Wx": stack("W_x"), "thr": stack("theta")}
        else:
            step_key, thr_key = {"step": ("alpha", "alpha"),
                                 "coupled": ("alpha", "beta"),
                                 "alista": ("gamma", "theta")}[p]
            step, thr = stack(step_key), stack(thr_key)
            if p == "coupled":
                empty = np.empty((0, 0), dtype=dtype)
                W, M, MT = stack("W"), empty, empty
                WT = np.ascontiguousarray(W.transpose(0, 2, 1))
            else:
                W, WT, M, MT = self._fixed_matrices(dtype)
            args = {"W": W, "WT": WT, "M": M, "MT": MT, "step": step, "thr": thr}
        args["DT"] = np.ascontiguousarray(self.D.T, dtype=dtype)
        if len(self._cache) > 8:
            self._cache.clear()
        self._cache[key] = args
        return args

    def _gram(self):
        # one GEMM through M (m x m) beats two through D and W (m x n) when m < 2 n
        return self.n_atoms < 2 * self.n_features

    # -- forward -----------------------------------------------------------

    def _forward(self, X, D, n_layers, lmbd, per_layer=False):
        """Codes z_T (and per-layer summed objectives) of validated X."""
        N = X.shape[0]
        dt = X.dtype.type
        a = self._kernel_args(X.dtype, n_layers)
        Z = np.empty((N, self.n_atoms), dtype=X.dtype)
        n_threads, block = _plan(N, self.n_atoms, self.n_features, n_layers)
        context, n_threads = _threads(n_threads)
        obj = np.zeros((n_threads, n_layers) if per_layer else (0, 0))
        with context:
            if self.parametrization == "lista":
                _unrolled.lista_forward(X, D, a["Wz"], a["Wx"], a["thr"], dt(lmbd),
                                        Z, obj, n_threads, block, _SPARSE_DENSITY)
            else:
                _unrolled.residual_forward(X, D, a["WT"], a["M"], a["step"], a["thr"],
                                           dt(lmbd), Z, obj, n_threads, block,
                                           _SPARSE_DENSITY, self._gram())
        return Z, obj.sum(axis=0)

    def _check_X(self, X):
        return check_X_D(X, self.D)

    def transform(self, X, n_layers=None, lmbd=None, refine_tol=None):
        """Codes of X: the output of the network (of its first layers).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_features,)
            Signals, one per row.
        n_layers : int, default=None
            Run only the first ``n_layers`` layers (1 <= n_layers <= T);
            None runs all of them.
        lmbd : float, default=None
            Regularisation level at which to evaluate the network
            (thresholds ``lmbd * theta_t``); None uses the network's.
        refine_tol : float, default=None
            If set, continue from the network's output with
            :func:`fastlista.solve_lasso` until every sample's duality gap is
            <= ``refine_tol * 1/2 ||x||^2``: a certified solution,
            warm-started by the network.

        Returns
        -------
        Z : ndarray of shape (n_samples, n_atoms) or (n_atoms,)
        """
        X, D, is_1d = self._check_X(X)
        n_layers = self._check_n_layers(n_layers, "transform")
        lmbd = self.lmbd if lmbd is None else check_scalar(lmbd, "lmbd", "transform", low=0.0)
        Z, _ = self._forward(X, D, n_layers, lmbd)
        if refine_tol is not None:
            refine_tol = check_scalar(refine_tol, "refine_tol", "transform", low=0.0)
            from .solvers import solve_lasso
            Z = solve_lasso(X, D, lmbd, tol=refine_tol, Z0=Z).codes
        return Z[0] if is_1d else Z

    def _check_n_layers(self, n_layers, func):
        if n_layers is None:
            return self.n_layers
        return check_scalar(n_layers, "n_layers", func, low=1, high=self.n_layers,
                            integer=True)

    def objective(self, X, per_layer=False):
        """Mean Lasso objective F_x of the output (or of every layer's output).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_features,)
        per_layer : bool, default=False
            Return the mean objective after each layer, shape (T,).

        Returns
        -------
        objective : float or ndarray of shape (n_layers,)
            Mean over samples of ``1/2 ||x - z D||^2 + lmbd ||z||_1`` at the
            network's lmbd.
        """
        X, D, _ = self._check_X(X)
        if X.shape[0] == 0:
            raise ValueError("X must contain at least one sample.")
        if per_layer:
            _, obj = self._forward(X, D, self.n_layers, self.lmbd, per_layer=True)
            return obj / X.shape[0]
        Z, _ = self._forward(X, D, self.n_layers, self.lmbd)
        return float(np.mean(lasso_objective(X, D, self.lmbd, Z)))

    # -- gradients ---------------------------------------------------------

    def _targets(self, X, D, loss, Z_target, func):
        """Kernel loss code and target codes (validated)."""
        loss = check_option(loss, "loss", func, LOSSES)
        if loss == "unsupervised":
            return _unrolled.LOSSES["unsupervised"], np.empty((0, 0), dtype=X.dtype)
        if loss == "semi-supervised" and Z_target is None:
            from .solvers import solve_lasso
            Z_target = solve_lasso(X, D, self.lmbd).codes
        if Z_target is None:
            raise ValueError(
                f"Z_target is required for loss={loss!r}: codes of shape "
                f"(n_samples, n_atoms) = {(X.shape[0], self.n_atoms)}.")
        S = check_array(Z_target, "Z_target", dtype=X.dtype, allow_1d=True, min_features=0)
        if S.shape != (X.shape[0], self.n_atoms):
            raise ValueError(
                f"Z_target must have shape (n_samples, n_atoms) = "
                f"{(X.shape[0], self.n_atoms)}; got Z_target.shape={S.shape}.")
        return _unrolled.LOSSES["supervised"], S

    def _loss_and_grad(self, X, D, loss_code, S, n_layers):
        """Mean loss at the output of layer n_layers and its gradients.

        Returns (loss, grads) with grads a dict key -> stacked array of
        shape (n_layers, *shape) in float64.
        """
        N = X.shape[0]
        m, n = self.n_atoms, self.n_features
        T = n_layers
        dt = X.dtype.type
        a = self._kernel_args(X.dtype, T)
        n_threads, block = _plan(N, m, n, T)
        context, n_threads = _threads(n_threads)
        dthr = np.zeros((n_threads, T * m))
        p = self.parametrization
        with context:
            if p == "lista":
                dWz = np.zeros((n_threads, T * m * m), dtype=X.dtype)
                dWxT = np.zeros((n_threads, T * m * n), dtype=X.dtype)
                total = _unrolled.lista_grad(
                    X, D, a["DT"], a["Wz"], a["WzT"], a["Wx"], a["thr"], dt(self.lmbd),
                    loss_code, S, dthr, dWz, dWxT, n_threads, block, _SPARSE_DENSITY)
            else:
                da = np.zeros((n_threads, T))
                dW = np.zeros((n_threads, T * m * n if p == "coupled" else 0),
                              dtype=X.dtype)
                total = _unrolled.residual_grad(
                    X, D, a["DT"], a["W"], a["WT"], a["M"], a["MT"], a["step"], a["thr"],
                    dt(self.lmbd),
                    loss_code, S, da, dthr, dW, n_threads, block, _SPARSE_DENSITY,
                    self._gram())
        dthr = dthr.sum(axis=0).reshape(T, m)
        if p == "lista":
            grads = {"W_z": dWz.sum(axis=0, dtype=np.float64).reshape(T, m, m),
                     "W_x": dWxT.sum(axis=0, dtype=np.float64).reshape(T, m, n)
                     .transpose(0, 2, 1),
                     "theta": dthr}
        else:
            da = da.sum(axis=0)
            if p == "step":
                grads = {"alpha": da + dthr.sum(axis=1)}
            elif p == "alista":
                grads = {"gamma": da, "theta": dthr.sum(axis=1)}
            else:
                grads = {"W": dW.sum(axis=0, dtype=np.float64).reshape(T, m, n),
                         "alpha": da, "beta": dthr.sum(axis=1)}
        return total / N, grads

    def loss_and_grad(self, X, loss="unsupervised", Z_target=None):
        """Mean training loss of the output and its analytic gradients.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training signals (at least one).
        loss : {"unsupervised", "supervised", "semi-supervised"}, default="unsupervised"
            ``unsupervised``: mean Lasso objective F_x(z_T) at the network's
            lmbd. ``supervised``: mean ``1/2 ||z_T - s||^2`` with ``s`` the
            rows of ``Z_target``. ``semi-supervised``: supervised with the
            Lasso solutions as targets (computed by
            :func:`fastlista.solve_lasso` when ``Z_target`` is None).
        Z_target : array-like of shape (n_samples, n_atoms), default=None
            Target codes of the supervised losses.

        Returns
        -------
        loss : float
        grads : list of dict
            One dict a layer with the keys and shapes of :attr:`parameters`.
        """
        X, D, _ = self._check_X(X)
        if X.shape[0] == 0:
            raise ValueError("X must contain at least one sample.")
        code, S = self._targets(X, D, loss, Z_target, "loss_and_grad")
        value, grads = self._loss_and_grad(X, D, code, S, self.n_layers)
        out = [{k: np.asarray(grads[k][t], dtype=self.dtype).copy()
                for k in _KEYS[self.parametrization]} for t in range(self.n_layers)]
        return value, out

    # -- training ----------------------------------------------------------

    def fit(self, X, loss="unsupervised", Z_target=None, optimizer="lbfgs",
            max_iter=100, tol=1e-8, per_layer="oneshot", verbose=False):
        """Learn the parameters on training signals X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training signals.
        loss : {"unsupervised", "supervised", "semi-supervised"}, default="unsupervised"
            See :meth:`loss_and_grad`; ``semi-supervised`` computes the
            targets once with :func:`fastlista.solve_lasso`.
        Z_target : array-like of shape (n_samples, n_atoms), default=None
            Target codes (required for ``supervised``).
        optimizer : {"lbfgs", "gd"}, default="lbfgs"
            ``lbfgs``: scipy's L-BFGS-B, with bounds keeping step sizes and
            threshold factors at or above 1e-6 / L (at 0 every code sits on
            the soft-threshold's kink, where the gradient is one-sided).
            ``gd``: full-batch gradient descent with the paper's adaptive
            rate (x4 after each accepted step, halved with backtracking when
            the loss rises).
        max_iter : int, default=100
            Iterations (in total, split evenly over the stages of
            ``per_layer="recursive"``). The many-parameter networks (lista,
            coupled) can overfit a small training set with many iterations.
        tol : float, default=1e-8
            Stop when an iteration decreases the loss by at most ``tol``
            times the decrease achieved since the start (relative to the
            decrease, not to the loss, which carries the unknown offset
            min F_x) and, for lbfgs, when the projected gradient falls below
            ``tol`` times its initial size.
        per_layer : {"oneshot", "recursive"}, default="oneshot"
            ``oneshot`` trains all layers on the output loss; ``recursive``
            trains layers 1..k on the loss of layer k's output, k = 1..T.
        verbose : bool, default=False
            Print the loss at every iteration.

        Returns
        -------
        self : Lista
            The parameters never end NaN or infinite: on a blow-up the
            optimiser rolls back to the last good point with a warning.
        """
        from .training import fit_network

        return fit_network(self, X, loss=loss, Z_target=Z_target,
                           optimizer=optimizer, max_iter=max_iter, tol=tol,
                           per_layer=per_layer, verbose=verbose)

    # -- analysis ----------------------------------------------------------

    def dictionary_distance(self):
        """Distance of each layer's effective dictionary to D, relative.

        ``||(alpha_t / beta_t) W_t - D||_F / ||D||_F`` for ``coupled``: by the
        theorem of Ablin et al. (2019), a coupled network that solves the
        Lasso asymptotically has (alpha_t / beta_t) W_t -> D in its deep
        layers, i.e. only learns a step size. 0 for ``step``;
        ``(gamma_t / theta_t) W~`` for ``alista``; for ``lista`` the x-weights
        ``W_x[t]^T`` with row j divided by ``theta_t[j]`` (D for an untrained
        network).

        Returns
        -------
        distance : ndarray of shape (n_layers,)
        """
        D = self.D.astype(np.float64)
        norm = np.linalg.norm(D)
        p = self.parametrization
        out = np.zeros(self.n_layers)
        for t, layer in enumerate(self._params):
            with np.errstate(divide="ignore", invalid="ignore"):
                if p == "step":
                    continue
                if p == "coupled":
                    E = float(layer["alpha"]) / float(layer["beta"]) * layer["W"]
                elif p == "alista":
                    E = float(layer["gamma"]) / float(layer["theta"]) * \
                        self._fixed_matrices(np.float64)[0][0]
                else:
                    E = layer["W_x"].T.astype(np.float64) / layer["theta"][:, None]
                out[t] = np.linalg.norm(E - D) / norm
        return out

    # -- persistence -------------------------------------------------------

    def save(self, path):
        """Save to ``path`` as a ``.npz`` archive (no pickle).

        The archive holds a format tag and version, D, lmbd, the
        parametrization, the parameters and ``loss_history_``; it is written
        to exactly ``path`` (no suffix is added).
        """
        arrays = {
            "format": np.array(_FORMAT),
            "format_version": np.array(_FORMAT_VERSION),
            "parametrization": np.array(self.parametrization),
            "lmbd": np.array(self.lmbd),
            "n_layers": np.array(self.n_layers),
            "D": self.D,
            "loss_history": np.asarray(self.loss_history_, dtype=np.float64),
        }
        for t, layer in enumerate(self._params):
            for k, v in layer.items():
                arrays[f"layer{t}_{k}"] = v
        with open(os.fspath(path), "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path):
        """Load a network written by :meth:`save`.

        Raises
        ------
        ValueError
            If the file is truncated, not a ``.npz`` archive, not a fastlista
            network, of a newer format version, or internally inconsistent.
        """
        try:
            with np.load(os.fspath(path), allow_pickle=False) as f:
                if not isinstance(f, np.lib.npyio.NpzFile):
                    raise ValueError("not an .npz archive")
                files = set(f.files)
                if "format" not in files or str(f["format"][()]) != _FORMAT:
                    raise ValueError(f"no {_FORMAT!r} format tag")
                version = int(f["format_version"][()])
                if version > _FORMAT_VERSION or version < 1:
                    raise ValueError(
                        f"format version {version} is not supported (this fastlista "
                        f"reads version {_FORMAT_VERSION})")
                par = str(f["parametrization"][()])
                n_layers = int(f["n_layers"][()])
                net = cls(f["D"], float(f["lmbd"][()]), n_layers, par)
                params = [{k: f[f"layer{t}_{k}"] for k in _KEYS[par]}
                          for t in range(n_layers)]
                extra = files - {"format", "format_version", "parametrization", "lmbd",
                                 "n_layers", "D", "loss_history"} \
                    - {f"layer{t}_{k}" for t in range(n_layers) for k in _KEYS[par]}
                if extra:
                    raise ValueError(f"unexpected entries {sorted(extra)[:5]}")
                net.set_parameters(params)
                net.loss_history_ = [float(v) for v in f["loss_history"]]
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            raise
        except Exception as exc:  # zip, npy, key and validation errors alike
            raise ValueError(
                f"{os.fspath(path)!r} is not a valid fastlista Lista file: {exc}") from exc
        return net

    def __repr__(self):
        return (f"Lista(D=<{self.n_atoms}x{self.n_features} {self.dtype}>, "
                f"lmbd={self.lmbd!r}, n_layers={self.n_layers}, "
                f"parametrization={self.parametrization!r})")
