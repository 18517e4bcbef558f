"""The unfolded network: LISTA, LISTA-CP, ALISTA and SLISTA.

``step`` is SLISTA (Ablin et al., 2019: only a step size a layer is
learned), ``coupled`` is LISTA-CP (Chen et al., 2018), ``alista`` is ALISTA
(Liu et al., 2019) with the analytic weights of :func:`alista_weights` and
``lista`` is LISTA (Gregor & LeCun, 2010); ``_parameters.py`` has their
table. Thresholds are lmbd times a learned factor, so a network trained at
one lmbd can be evaluated at another, and an untrained ``step``,
``coupled`` or ``lista`` network is exactly ISTA with step 1/L.

The class holds the parameters and the public API; the parametrizations'
definitions live in ``_parameters.py``, the kernel adapters in
``_execution.py``, persistence in ``_persistence.py`` and the optimisers in
``fastlista._training``, which reach the network only through its training
interface (``training_data``, ``training_vector``, ``set_training_vector``,
``training_bounds``, ``training_loss_and_grad``, ``training_zero_codes``).
"""
import copy

import numpy as np

from .._lasso import lambda_max, lasso_objective
from .._lipschitz import global_lipschitz
from .._solvers import lasso_targets, solve_lasso
from .._threads import kernel_threads
from .._training import fit_network
from .._validation import (check_array, check_bool, check_dictionary_shape,
                           check_lmbd, check_n_jobs, check_option,
                           check_random_state, check_scalar, check_X_D)
from . import _parameters as P
from ._execution import Executor, batch_exponent, to_units
from ._persistence import load as _load, save as _save

#: A network's L = ||D D^T||_2 must lie within 2**+-(max exponent * 3/4) of
#: its dtype: its steps 1/L and the layers' products stay normal numbers.
_L_RANGE = {np.dtype(np.float64): 768, np.dtype(np.float32): 96}

#: Lista attributes fixed when the network is built (read-only properties).
_FIXED = ("D", "parametrization", "n_layers", "positive", "support_selection",
          "lipschitz_")
#: Where the properties keep the values of attributes that were plain ones.
_PICKLED_NAMES = {"D": "_D", "parametrization": "_parametrization",
                  "n_layers": "_n_layers", "positive": "_positive",
                  "support_selection": "_support_selection",
                  "lipschitz_": "_lipschitz", "lmbd": "_lmbd_value",
                  "n_jobs": "_n_jobs_value"}


class TrainingData:
    """Validated training signals and targets (see :meth:`Lista.training_data`).

    Attributes
    ----------
    X : ndarray of shape (n_samples, n_features)
        The signals, in the network's dtype (or float64).
    lmbd : ndarray of shape (n_samples,)
        Each sample's regularisation level (float64).
    loss : {"unsupervised", "supervised"}
    targets : ndarray of shape (n_samples, n_atoms) or None
        The target codes of the supervised loss.
    """

    def __init__(self, X, lmbd, loss, targets):
        self.X, self.lmbd, self.loss, self.targets = X, lmbd, loss, targets

    @property
    def n_samples(self):
        return self.X.shape[0]

    def exponent(self):
        """The e <= 0 of the units where training runs on these data: the
        batch's exponent of the kernels' scaling (``batch_exponent``) where
        it is negative, i.e. max|X| below 2**-100 (float32: 2**-30), which
        takes in every batch whose loss, 4**e times the one computed in
        those units, would fall below the smallest double or among its
        subnormals; else 0 (the loss itself, finite wherever it is
        representable). The scaling is exact: training in these units is
        training on the data."""
        return min(batch_exponent(self.X, self.targets), 0)

    def scaled(self, e):
        """These data times 2**-e, exactly (lmbd clipped as the kernels
        clip it): the loss and gradient of a network on them are its loss
        and gradient on these, times 4**-e."""
        if not e:
            return self
        X, lmbd, S = to_units(self.X, self.lmbd, self.targets, e)
        return TrainingData(X, lmbd, self.loss, S)


class Lista:
    """Unfolded ISTA network with learned weights or step sizes.

    Parameters
    ----------
    D : array-like of shape (n_atoms, n_features)
        Dictionary, one atom per row. float32 dictionaries give a float32
        network. Its ``L = ||D D^T||_2`` must be positive and within
        2**+-768 (float32: 2**+-96): rescale D otherwise.
    lmbd : float
        Regularisation level (absolute, >= 0) of the Lasso the network is
        trained for: thresholds are ``lmbd`` times the learned factors.
    n_layers : int
        Number of layers T, >= 1.
    parametrization : {"step", "coupled", "alista", "lista"}, default="step"
        ``step`` is SLISTA (one step size a layer), ``coupled`` is LISTA-CP,
        ``alista`` ALISTA, ``lista`` LISTA (see :attr:`parameters`).
    random_state : None, int or numpy.random.RandomState, default=None
        Validated for API stability; the initialisation is deterministic
        (ISTA), so nothing random is drawn.
    n_jobs : int or None, default=None
        Threads of every call (OpenMP threads over blocks of samples, BLAS
        held to one thread meanwhile): at most ``n_jobs``. None uses every
        core (OpenMP's limit if lower); -1 too, -2 all but one. A call
        repeated at the same
        ``n_jobs`` gives the same bits; the gradients' sums depend on the
        thread count by rounding, which ``fit`` can carry into the learned
        parameters (to reproduce a fit on another machine, give ``n_jobs``).
    positive : bool, default=False
        Non-negative codes: every layer's threshold is one-sided,
        ``max(u - lmbd theta, 0)``, for the Lasso constrained to ``z >= 0``
        (refinement and targets solve that Lasso too).
    support_selection : None or (p, p_max), default=None
        Support selection of LISTA-CPSS (Chen et al., 2018) and ALISTA (Liu
        et al., 2019), in percent, 0 < p <= p_max <= 100, for the
        ``coupled``, ``alista`` and ``lista`` parametrizations: at layer t
        (from 1), for each sample, the ``ceil(min(p t, p_max) n_atoms /
        100)`` entries of largest magnitude of the pre-activation (of largest
        value for a ``positive`` network, whose negative entries are 0
        anyway) pass unthresholded (ties to the earlier atom), the others
        are soft-thresholded. Their papers use (1.2, 13). The layers then always
        run their dense paths.

    Attributes
    ----------
    D, parametrization, n_layers, positive, support_selection : see Parameters
        As built, read-only: the layers, the kernels' cached matrices and
        saved files derive from them (setting one raises AttributeError).
        ``lmbd`` and ``n_jobs`` may be set; they are validated as above.
    lipschitz_ : float
        L = largest eigenvalue of ``D D^T``; the untrained steps are 1/L.
    loss_history_ : list of float
        Training loss before the first and after every accepted iteration of
        the last :meth:`fit` (for ``per_layer="recursive"`` the stages'
        histories are concatenated, each at its own depth). An iteration is
        accepted only at a finite loss not above the last accepted one, so
        each stage's history is finite and never rises. Signals so small
        that the loss falls below the smallest double (float64 signals below
        about 1e-160) train as at scale 1 (in units of a power of two), and
        their history holds the loss itself: 0, or subnormal.

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
                 random_state=None, n_jobs=None, positive=False,
                 support_selection=None):
        D = check_dictionary_shape(check_array(D, "D"))
        if D.shape[0] == 0:
            raise ValueError(f"D must contain at least one atom; got D.shape={D.shape}.")
        self._D = D.copy()
        self._D.setflags(write=False)
        self.lmbd = lmbd
        self._n_layers = check_scalar(n_layers, "n_layers", "Lista", low=1,
                                      high=2**31 - 1, integer=True)
        self._parametrization = check_option(parametrization, "parametrization",
                                             "Lista", P.PARAMETRIZATIONS)
        check_random_state(random_state, "Lista")
        self.n_jobs = n_jobs
        self._positive = check_bool(positive, "positive", "Lista")
        self._support_selection = P.check_support_selection(
            support_selection, self.parametrization, "Lista")
        with kernel_threads(n_jobs, "Lista"):
            L = global_lipschitz(self.D)
        if not L > 0:
            raise ValueError("D must not be all zeros: its Lipschitz constant is 0.")
        limit = _L_RANGE[self.D.dtype]
        if not abs(np.log2(L)) <= limit:
            raise ValueError(
                f"D's Lipschitz constant ||D D^T||_2 = {L:.3g} is beyond 2**+-{limit}, "
                f"where the network's steps 1/L and its layers leave the range of "
                f"{self.D.dtype}: rescale D (e.g. to unit-norm atoms).")
        self._lipschitz = float(L)
        self.loss_history_ = []
        ks = None if self.support_selection is None else P.selection_counts(
            self.support_selection, self.n_layers, self.n_atoms)
        self._exec = Executor(self.D, self.parametrization, self.positive, ks)
        gamma0 = 1.0 / L
        if self.parametrization == "alista":
            with kernel_threads(n_jobs, "Lista"):
                M = self._exec.fixed_matrices(np.float64)[2]
                gamma0 = 1.0 / float(np.linalg.norm(M, 2))
        self._units = P.units(self.parametrization, L, gamma0, P.atom_unit(self.D))
        with kernel_threads(n_jobs, "Lista"):        # lista's D D^T is a GEMM
            layer = P.initial_layer(self.parametrization, self.D, L, gamma0)
        self._params = [{k: v.copy() for k, v in layer.items()}
                        for _ in range(self.n_layers)]

    # -- structure and settings ----------------------------------------------
    #
    # D, the parametrization, the depth, ``positive`` and
    # ``support_selection`` are fixed when the network is built: its layers,
    # the kernels' cached matrices, its training units and its saved files
    # derive from them. ``lmbd`` and ``n_jobs`` are settings of the calls,
    # validated when set.

    D = property(lambda self: self._D, doc="The dictionary (read-only).")
    parametrization = property(lambda self: self._parametrization,
                               doc="The parametrization (read-only).")
    n_layers = property(lambda self: self._n_layers, doc="The depth T (read-only).")
    positive = property(lambda self: self._positive,
                        doc="Whether codes are non-negative (read-only).")
    support_selection = property(lambda self: self._support_selection,
                                 doc="Support selection (p, p_max), or None (read-only).")
    lipschitz_ = property(lambda self: self._lipschitz,
                          doc="L = ||D D^T||_2 (read-only).")

    def __setattr__(self, name, value):
        if name == "lipschitz_":
            raise AttributeError("Lista.lipschitz_ is ||D D^T||_2 of the network's D, "
                                 "which is fixed when the network is built.")
        if name in _FIXED:
            raise AttributeError(
                f"Lista.{name} is fixed when the network is built (its layers, "
                f"cached matrices and saved files derive from it): build a new "
                f"Lista with the {name} you want.")
        super().__setattr__(name, value)

    @property
    def lmbd(self):
        """The regularisation level of calls that give none (float >= 0)."""
        return self._lmbd_value

    @lmbd.setter
    def lmbd(self, lmbd):
        self._lmbd_value = check_scalar(lmbd, "lmbd", "Lista", low=0.0)

    @property
    def n_jobs(self):
        """Threads of every call (int or None; see the class docstring)."""
        return self._n_jobs_value

    @n_jobs.setter
    def n_jobs(self, n_jobs):
        check_n_jobs(n_jobs, "Lista")
        self._n_jobs_value = n_jobs

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
        self._params = P.check_parameters(parameters, self.parametrization,
                                          self.n_layers, self.n_atoms,
                                          self.n_features, self.dtype)
        return self

    def __setstate__(self, state):
        # a network pickled when its structure and settings were plain
        # attributes: their values go where the properties keep them now
        for name, key in _PICKLED_NAMES.items():
            if name in state:
                state[key] = state.pop(name)
        self.__dict__.update(state)
        # pickle and deepcopy rebuild D writeable; lipschitz_ and the
        # kernels' cached matrices are derived from it: read-only, as built
        self.D.setflags(write=False)

    def _with_n_jobs(self, n_jobs):
        """A shallow copy running on ``n_jobs`` threads (shares the parameters
        and the kernel cache; either's new parameters are a new list)."""
        twin = copy.copy(self)
        twin.n_jobs = n_jobs
        return twin

    # -- forward -----------------------------------------------------------

    def _check_X(self, X):
        return check_X_D(X, self.D)

    def _lmbd(self, lmbd, n_samples, func):
        """lmbd (None: the network's) as one float64 a sample, and its
        validated value (a float or an array)."""
        lmbd = self.lmbd if lmbd is None else check_lmbd(lmbd, n_samples, func)
        return np.ascontiguousarray(np.broadcast_to(np.asarray(lmbd, dtype=np.float64),
                                                    (n_samples,))), lmbd

    def _check_n_layers(self, n_layers, func):
        if n_layers is None:
            return self.n_layers
        return check_scalar(n_layers, "n_layers", func, low=1, high=self.n_layers,
                            integer=True)

    def _check_depth(self, depth, func):
        """The training interface's ``depth`` (None: every layer), an int
        in [1, n_layers], named in the message of ``Lista.<func>``."""
        if depth is None:
            return self.n_layers
        return check_scalar(depth, "depth", f"Lista.{func}", low=1, high=self.n_layers,
                            integer=True)

    def transform(self, X, n_layers=None, lmbd=None, refine_tol=None):
        """Codes of X: the output of the network (of its first layers).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_features,)
            Signals, one per row.
        n_layers : int, default=None
            Run only the first ``n_layers`` layers (1 <= n_layers <= T);
            None runs all of them.
        lmbd : float or array-like of shape (n_samples,), default=None
            Regularisation level at which to evaluate the network
            (thresholds ``lmbd * theta_t``), shared or one per sample; None
            uses the network's.
        refine_tol : float, default=None
            If set, continue from the network's output with
            :func:`fastlista.solve_lasso` until every sample's duality gap is
            <= ``refine_tol * 1/2 ||x||^2``: a certified solution,
            warm-started by the network (a ConvergenceWarning names the
            samples that do not get there). ``refine_tol=0`` is
            solve_lasso's ``tol=0``: its max_iter iterations, no stopping
            test and no warning.

        Returns
        -------
        Z : ndarray of shape (n_samples, n_atoms) or (n_atoms,)

        Raises
        ------
        FloatingPointError
            If the codes of some samples are not finite (parameters that
            make the layers overflow), naming the samples.
        """
        X, D, is_1d = self._check_X(X)
        n_layers = self._check_n_layers(n_layers, "transform")
        lam, lmbd = self._lmbd(lmbd, X.shape[0], "transform")
        if refine_tol is not None:
            refine_tol = check_scalar(refine_tol, "refine_tol", "transform", low=0.0)
        Z, _ = self._exec.forward(self._params, n_layers, X, lam, self.n_jobs)
        if refine_tol is not None:
            Z = solve_lasso(X, D, lmbd, tol=refine_tol, Z0=Z, n_jobs=self.n_jobs,
                            positive=self.positive).codes
        return Z[0] if is_1d else Z

    def objective(self, X, per_layer=False, lmbd=None):
        """Mean Lasso objective F_x of the output (or of every layer's output).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_features,)
        per_layer : bool, default=False
            Return the mean objective after each layer, shape (T,).
        lmbd : float or array-like of shape (n_samples,), default=None
            The Lasso's regularisation (and the network's thresholds' scale),
            shared or one per sample; None uses the network's.

        Returns
        -------
        objective : float or ndarray of shape (n_layers,)
            Mean over samples of ``1/2 ||x - z D||^2 + lmbd ||z||_1``.
        """
        X, D, _ = self._check_X(X)
        if X.shape[0] == 0:
            raise ValueError("X must contain at least one sample.")
        per_layer = check_bool(per_layer, "per_layer", "objective")
        lam, lmbd = self._lmbd(lmbd, X.shape[0], "objective")
        Z, obj = self._exec.forward(self._params, self.n_layers, X, lam,
                                    self.n_jobs, per_layer=per_layer)
        if per_layer:
            return obj / X.shape[0]
        # (in double: a float32 objective beyond float32's range is a float)
        return float(np.mean(lasso_objective(X.astype(np.float64), D.astype(np.float64),
                                             lmbd, Z.astype(np.float64),
                                             positive=self.positive)))

    # -- gradients ---------------------------------------------------------

    def training_data(self, X, loss="unsupervised", Z_target=None, lmbd=None, *,
                      func="loss_and_grad"):
        """Validate training signals and targets once (training interface).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training signals (at least one).
        loss : {"unsupervised", "supervised", "semi-supervised"}, default="unsupervised"
            See :meth:`loss_and_grad`; ``semi-supervised`` computes the
            targets here with :func:`fastlista.solve_lasso` (least squares
            where lmbd = 0).
        Z_target : array-like of shape (n_samples, n_atoms), default=None
            Target codes of the supervised losses.
        lmbd : float or array-like of shape (n_samples,), default=None
            The samples' regularisation levels (None: the network's).
        func : str
            The public caller, for error messages.

        Returns
        -------
        data : TrainingData
        """
        X, D, _ = self._check_X(X)
        if X.shape[0] == 0:
            raise ValueError("X must contain at least one sample.")
        loss = check_option(loss, "loss", func, P.LOSSES)
        lam, lmbd = self._lmbd(lmbd, X.shape[0], func)
        # a Z_target given is validated whatever the loss (unsupervised
        # ignores it)
        S = None if Z_target is None else self._check_target(Z_target, X)
        if loss == "unsupervised":
            return TrainingData(X, lam, loss, None)
        if loss == "semi-supervised" and S is None:
            # certified to the relative gap the dtype's codes can reach (at
            # lmbd = 0: least squares)
            S = lasso_targets(X, D, lmbd, self.positive, self.n_jobs)
        if S is None:
            raise ValueError(
                f"Z_target is required for loss={loss!r}: codes of shape "
                f"(n_samples, n_atoms) = {(X.shape[0], self.n_atoms)}.")
        return TrainingData(X, lam, "supervised", S)

    def _check_target(self, Z_target, X):
        S = check_array(Z_target, "Z_target", dtype=X.dtype, allow_1d=True,
                        min_features=0)
        if S.shape != (X.shape[0], self.n_atoms):
            # the shape the caller passed (a 1-D target is one row here)
            raise ValueError(
                f"Z_target must have shape (n_samples, n_atoms) = "
                f"{(X.shape[0], self.n_atoms)}; got Z_target.shape="
                f"{np.shape(Z_target)}.")
        return S

    def _layout(self, depth):
        return P.VectorLayout(self.parametrization,
                              P.shapes(self.parametrization, self.n_atoms,
                                       self.n_features),
                              self._units, depth)

    def training_vector(self, depth=None):
        """Flat parameters of the first ``depth`` layers (training interface).

        Layer after layer and key after key (the order of
        :attr:`parameters`), each divided by its unit: the untrained value
        of a step or threshold factor, for ``W`` the power of two nearest
        the largest atom norm r, for ``W_x`` that over L, 1 for ``W_z``, so
        that the entries of an untrained network are O(1) at any scale of
        D, and training on D and lmbd scaled together is the same.

        Parameters
        ----------
        depth : int, default=None
            Layers taken, 1 <= depth <= n_layers (all by default), as for
            :meth:`set_training_vector`, :meth:`training_bounds` and
            :meth:`training_loss_and_grad`; another value raises
            :class:`fastlista.InvalidParameterError` naming ``depth``.

        Returns
        -------
        vector : ndarray of shape (n_params,), float64
            ``n_params`` is the size of one layer's parameters times
            ``depth``.
        """
        depth = self._check_depth(depth, "training_vector")
        return self._layout(depth).pack(self._params)

    def set_training_vector(self, x, depth=None):
        """Set the first ``depth`` layers from a flat vector (training
        interface; the inverse of :meth:`training_vector`).

        The vector is not validated: an optimiser's trial points may be
        anything, and the layers are only computed on, never returned, until
        :meth:`set_parameters` or the end of training validates them.

        Parameters
        ----------
        x : ndarray of shape (n_params,)
            As :meth:`training_vector` returns for the same ``depth``.
        depth : int, default=None
            Layers set, 1 <= depth <= n_layers (all by default); the others
            keep their parameters.

        Returns
        -------
        self : Lista
        """
        depth = self._check_depth(depth, "set_training_vector")
        self._params = self._layout(depth).unpack(x, self._params, self.dtype)
        return self

    def training_bounds(self, depth=None):
        """Lower bounds of :meth:`training_vector` (training interface).

        Parameters
        ----------
        depth : int, default=None
            Layers taken, 1 <= depth <= n_layers (all by default).

        Returns
        -------
        lower : ndarray of shape (n_params,), float64
            ``1e-6`` units for steps and threshold factors, -inf elsewhere.
        """
        depth = self._check_depth(depth, "training_bounds")
        return self._layout(depth).lower_bounds()

    def training_loss_and_grad(self, data, depth=None):
        """Mean loss at layer ``depth`` and its gradient w.r.t. the training
        vector (training interface). Non-finite values come back as they are:
        an optimiser treats them as a failed point.

        Parameters
        ----------
        data : TrainingData
            From :meth:`training_data`.
        depth : int, default=None
            Layers run, 1 <= depth <= n_layers (all by default).

        Returns
        -------
        loss : float
        grad : ndarray of shape (len(training_vector(depth)),)
        """
        depth = self._check_depth(depth, "training_loss_and_grad")
        value, grads = self._exec.loss_and_grad(self._params, depth, data.X, data.lmbd,
                                                data.loss, data.targets, self.n_jobs)
        return value, self._layout(depth).pack_gradients(grads)

    def training_zero_codes(self, data):
        """Whether the network's codes on ``data`` are all 0, and, if they
        are, whether its targets are not (training interface): a signal
        whose lmbd is below its :func:`fastlista.lambda_max` (unsupervised
        loss), or a non-zero target code. Where the codes are not all 0 the
        second value is True, unchecked (it costs a ``lambda_max``).

        Parameters
        ----------
        data : TrainingData
            From :meth:`training_data`.

        Returns
        -------
        all_zero, targets_not_zero : bool
        """
        if np.any(self.transform(data.X, lmbd=data.lmbd)):
            return False, True
        if data.loss == "supervised":
            return True, bool(np.any(data.targets))
        top = lambda_max(data.X, self.D, positive=self.positive)
        return True, bool(np.any(data.lmbd < top))

    def loss_and_grad(self, X, loss="unsupervised", Z_target=None, lmbd=None):
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
            :func:`fastlista.solve_lasso` when ``Z_target`` is None; at
            lmbd = 0, least squares of minimum norm; with ``positive``,
            SciPy's non-negative least squares, a basic solution of the
            NNLS problem, not its minimum-norm one).
        Z_target : array-like of shape (n_samples, n_atoms), default=None
            Target codes of the supervised losses.
        lmbd : float or array-like of shape (n_samples,), default=None
            The samples' regularisation levels (None: the network's): the
            thresholds scale with each sample's lmbd, the parameters are
            shared.

        Returns
        -------
        loss : float
        grads : list of dict
            One dict a layer with the keys and shapes of :attr:`parameters`.

        Raises
        ------
        FloatingPointError
            If the loss or a gradient is not finite (parameters that make the
            layers overflow).
        """
        data = self.training_data(X, loss, Z_target, lmbd)
        value, grads = self._exec.loss_and_grad(self._params, self.n_layers, data.X,
                                                data.lmbd, data.loss, data.targets,
                                                self.n_jobs)
        # in the network's dtype: a float32 network's gradient beyond
        # float32's range is refused as a non-finite one
        with np.errstate(over="ignore"):
            grads = {k: g.astype(self.dtype, copy=False) for k, g in grads.items()}
        bad = [k for k, g in grads.items() if not np.all(np.isfinite(g))]
        if not np.isfinite(value) or bad:
            raise FloatingPointError(
                f"Lista.loss_and_grad: the loss ({value!r}) or the gradients of "
                f"{bad or 'no key'} are not finite in {self.dtype}: the network's "
                "parameters make the layers overflow (steps far above 2 / L?), or the "
                "data's scale does (float64 data reach further).")
        return value, [{k: grads[k][t].copy() for k in P.KEYS[self.parametrization]}
                       for t in range(self.n_layers)]

    # -- training ----------------------------------------------------------

    def fit(self, X, loss="unsupervised", Z_target=None, optimizer="lbfgs",
            max_iter=100, tol=1e-8, per_layer="oneshot", verbose=False, lmbd=None):
        """Learn the parameters on training signals X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training signals.
        loss : {"unsupervised", "supervised", "semi-supervised"}, default="unsupervised"
            See :meth:`loss_and_grad`; ``semi-supervised`` computes the
            targets once with :func:`fastlista.solve_lasso` (to a relative
            gap of 1e-8, 1e-6 in float32; for samples at lmbd = 0, whose
            gap no solver can certify, the least-squares codes of minimum
            norm; with ``positive``, SciPy's non-negative least squares).
        Z_target : array-like of shape (n_samples, n_atoms), default=None
            Target codes (required for ``supervised``; validated but not
            used with ``unsupervised``).
        optimizer : {"lbfgs", "gd"}, default="lbfgs"
            ``lbfgs``: scipy's L-BFGS-B, with bounds keeping step sizes and
            threshold factors at or above 1e-6 times their untrained values
            (at 0 every code sits on the soft-threshold's kink, where the
            gradient is one-sided). ``gd``: full-batch gradient descent with
            the paper's adaptive rate (x4 after each accepted step, halved
            with backtracking when the loss rises).
        max_iter : int, default=100
            Iterations (in total, split evenly over the stages of
            ``per_layer="recursive"``; with fewer iterations than layers,
            the deepest stage of each share trains, the others are skipped).
            The many-parameter networks (lista, coupled) can overfit a small
            training set with many iterations.
        tol : float, default=1e-8
            Stop when an iteration decreases the loss by at most ``tol``
            times the decrease achieved since the start (relative to the
            decrease, not to the loss, which carries the unknown offset
            min F_x) and, for lbfgs, when the projected gradient falls below
            ``tol`` times its initial size.
        per_layer : {"oneshot", "recursive"}, default="oneshot"
            ``oneshot`` trains all layers on the output loss; ``recursive``
            trains layers 1..k on the loss of layer k's output, k = 1..T.
        verbose : bool or int >= 0, default=False
            Print the loss at every iteration (any level above 0).
        lmbd : float or array-like of shape (n_samples,), default=None
            The training samples' regularisation levels (None: the
            network's): a network keeps one set of parameters, its
            thresholds scale with each sample's lmbd.

        Returns
        -------
        self : Lista
            The parameters never end NaN or infinite: on a blow-up the
            training stage that met it is rolled back to its start, with a
            :class:`fastlista.TrainingWarning`. A fit that accepts no
            iteration leaves the parameters handed in, bit for bit. A fit
            that ends on a network whose codes on X are all 0 (a zero
            gradient: thresholds above every pre-activation, which no
            gradient step leaves) warns too, unless the zero codes are
            what the loss asks for (lmbd >= lambda_max of every signal, or
            zero targets).

        Notes
        -----
        The optimiser's trial points live on a private copy: other threads
        calling :meth:`transform` on this network while it trains see its
        parameters before ``fit``, then the trained ones, never a trial point.
        """
        return fit_network(self, X, loss=loss, Z_target=Z_target, lmbd=lmbd,
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
        if p == "step":
            return out
        for t, layer in enumerate(self._params):
            with np.errstate(divide="ignore", invalid="ignore"):
                if p == "coupled":
                    E = float(layer["alpha"]) / float(layer["beta"]) * layer["W"]
                elif p == "alista":
                    E = float(layer["gamma"]) / float(layer["theta"]) * \
                        self._exec.fixed_matrices(np.float64)[0][0]
                else:
                    E = layer["W_x"].T.astype(np.float64) / layer["theta"][:, None]
                out[t] = np.linalg.norm(E - D) / norm
        return out

    # -- persistence -------------------------------------------------------

    def save(self, path):
        """Save to ``path`` as a ``.npz`` archive (no pickle).

        The archive holds a format tag and version, D, lmbd, the
        parametrization, the parameters and ``loss_history_``; it is written
        to exactly ``path`` (no suffix is added). ``n_jobs`` is a setting of
        the running process and is not saved.

        The save is atomic: the archive is written to a new file in the same
        directory and renamed over ``path`` once complete, so a save that
        fails (a full disk, Ctrl-C) leaves the file that was there as it was.
        The directory must be writable.

        Parameters
        ----------
        path : str or path-like
            The file to write (replaced if it exists).
        """
        _save(self, path)

    @classmethod
    def load(cls, path):
        """Load a network written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
            A file written by :meth:`save`.

        Returns
        -------
        net : Lista
            The saved network, its parameters and ``loss_history_`` exactly
            as saved, with ``n_jobs=None``.

        Raises
        ------
        OSError
            As ``open(path, "rb")`` (FileNotFoundError, PermissionError, ...):
            the file cannot be opened (an error while reading it is a
            ValueError).
        ValueError
            If the file is truncated, not a ``.npz`` archive, not a fastlista
            network, of a newer format version, or internally inconsistent
            (checked before anything is built), or if an entry holds a value
            the network's dtype would round (a file that loads is loaded
            exactly).
        MemoryError
            When memory runs out while the file is read (not a verdict on
            the file).
        """
        return _load(cls, path)

    def __repr__(self):
        return (f"Lista(D=<{self.n_atoms}x{self.n_features} {self.dtype}>, "
                f"lmbd={self.lmbd!r}, n_layers={self.n_layers}, "
                f"parametrization={self.parametrization!r}"
                + (", positive=True" if self.positive else "")
                + (f", support_selection={self.support_selection!r}"
                   if self.support_selection is not None else "") + ")")
