"""scikit-learn estimators: Lasso sparse coding and learned (unfolded) coders.

This module needs scikit-learn (an optional dependency); ``import fastlista``
does not import it.

* :class:`LassoSparseCoder` is a drop-in for
  :class:`sklearn.decomposition.SparseCoder` with
  ``transform_algorithm="lasso_cd"``: ``transform`` solves, for every row x of
  X, ``min_z 1/2 ||x - z D||^2 + alpha ||z||_1`` with
  :func:`fastlista.solve_lasso` (``alpha`` is the same number as scikit-learn's
  ``transform_alpha``), to a certified duality gap.
* :class:`LearnedSparseCoder` trains an unfolded ISTA network
  (:class:`fastlista.Lista`) on the data passed to ``fit`` and encodes
  with it: a fixed, small number of layers instead of an iterative solver.

Both follow scikit-learn's conventions: parameters stored untouched by
``__init__``, validated in ``fit``/``transform``; fitted attributes with a
trailing underscore (``components_``, ``n_components_``, ``n_features_in_``);
float32 inputs give float32 codes; the validation messages are
scikit-learn's. They work inside :class:`~sklearn.pipeline.Pipeline` and
:class:`~sklearn.model_selection.GridSearchCV`.
"""
import numpy as np
from sklearn.base import (BaseEstimator, ClassNamePrefixFeaturesOutMixin,
                          TransformerMixin)
from sklearn.utils.validation import check_array, check_is_fitted

from ._lasso import lasso_objective
from ._networks import LOSSES, PARAMETRIZATIONS, Lista
from ._solvers import METHODS, solve_lasso
from ._validation import (check_bool, check_max_iter, check_n_jobs, check_option,
                          check_random_state, check_scalar)

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def _validate_data(estimator, X="no_validation", y="no_validation", **kwargs):
        return estimator._validate_data(X, y, **kwargs)

__all__ = ["LassoSparseCoder", "LearnedSparseCoder"]

_FLOATS = (np.float64, np.float32)


# ---------------------------------------------------------------------------
# shared validation
# ---------------------------------------------------------------------------

class _SparseCodingMixin(ClassNamePrefixFeaturesOutMixin, TransformerMixin):
    """Validation and reconstruction shared by the two coders."""

    def _check_dictionary(self, dtype=None):
        """The dictionary as a C-contiguous finite float array (not copied)."""
        D = check_array(self.dictionary, dtype=list(_FLOATS) if dtype is None else dtype,
                        order="C", input_name="dictionary", estimator=self)
        return D

    def _check_features(self, X, D):
        if X.shape[1] != D.shape[1]:
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                f"{D.shape[1]} features as input (the dictionary has shape {D.shape}: "
                "(n_atoms, n_features)).")

    def _validate_X(self, X, reset):
        """X validated by scikit-learn (float32 kept, C order)."""
        return _validate_data(self, X, reset=reset, dtype=list(_FLOATS), order="C")

    def inverse_transform(self, X):
        """Reconstruct signals from codes: ``X @ D``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components)
            Codes (the output of :meth:`transform`).

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
            ``X @ dictionary``, in the dtype of the codes.
        """
        Z = check_array(X, dtype=list(_FLOATS), input_name="X", estimator=self)
        D = self._reconstruction_dictionary()
        if Z.shape[1] != D.shape[0]:
            raise ValueError(
                f"X has {Z.shape[1]} components, but {type(self).__name__} is expecting "
                f"{D.shape[0]} components (atoms of the dictionary) as input.")
        return Z @ D.astype(Z.dtype, copy=False)

    def score(self, X, y=None):
        """Minus the mean Lasso objective of the codes, at ``alpha``.

        ``-mean_x [1/2 ||x - z D||^2 + alpha ||z||_1]`` with ``z`` the code of
        ``x`` given by :meth:`transform`: higher is better. Scores are
        comparable between models of the same ``alpha`` (e.g. the number of
        layers or the parametrization of a :class:`LearnedSparseCoder`), not
        across values of ``alpha``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : Ignored

        Returns
        -------
        score : float
        """
        Z = self.transform(X)
        X = check_array(X, dtype=Z.dtype, order="C", estimator=self)
        D = self._reconstruction_dictionary().astype(Z.dtype, copy=False)
        return -float(np.mean(lasso_objective(X, D, self._coding_alpha(), Z,
                                              positive=bool(self.positive_code))))

    @property
    def _n_features_out(self):
        """Number of transformed output features (for get_feature_names_out)."""
        return self.n_components_


# ---------------------------------------------------------------------------
# LassoSparseCoder
# ---------------------------------------------------------------------------

class LassoSparseCoder(_SparseCodingMixin, BaseEstimator):
    """Sparse coding by exact Lasso solutions, with a fixed dictionary.

    ``transform`` solves, for every row x of X,

        min_z  1/2 ||x - z D||^2 + alpha ||z||_1

    with :func:`fastlista.solve_lasso`: the same codes as
    ``SparseCoder(dictionary, transform_algorithm="lasso_cd",
    transform_alpha=alpha)``, to a certified relative duality gap ``tol``.

    Parameters
    ----------
    dictionary : array-like of shape (n_components, n_features)
        The atoms, one per row (scikit-learn's convention). Not copied.
    alpha : float, default=1.0
        Regularisation level lambda of the objective above (absolute, >= 0).
    method : {"auto", "ista", "fista", "backtracking", "oista", "cd"}, default="auto"
        Solver of :func:`fastlista.solve_lasso`.
    tol : float, default=1e-8
        A sample stops when its duality gap is <= ``tol * 1/2 ||x||^2``.
    max_iter : int, default=10000
        Maximum iterations per sample.
    n_jobs : int or None, default=None
        Threads of ``transform``: at most ``n_jobs`` run at any time (the
        solver's OpenMP threads, BLAS held to one thread meanwhile when
        threadpoolctl is installed). None uses every core; -1 too; -2 all
        but one.
    positive_code : bool, default=False
        Constrain the codes to be non-negative (scikit-learn's name;
        :func:`fastlista.solve_lasso` with ``positive=True``).

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        The validated dictionary (set by ``fit``).
    n_components_ : int
        Number of atoms.
    n_features_in_ : int
        Number of features seen during ``fit``.

    Notes
    -----
    Like ``SparseCoder``, the estimator is stateless: ``fit`` only validates,
    and ``transform`` works without it (against the dictionary's width).

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista.estimators import LassoSparseCoder
    >>> D = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> LassoSparseCoder(D, alpha=1.0).fit_transform(np.array([[3.0, 0.5]]))
    array([[2., 0.]])
    """

    def __init__(self, dictionary, alpha=1.0, method="auto", tol=1e-8,
                 max_iter=10000, n_jobs=None, positive_code=False):
        self.dictionary = dictionary
        self.alpha = alpha
        self.method = method
        self.tol = tol
        self.max_iter = max_iter
        self.n_jobs = n_jobs
        self.positive_code = positive_code

    def _check_params(self):
        name = type(self).__name__
        alpha = check_scalar(self.alpha, "alpha", name, low=0.0)
        check_bool(self.positive_code, "positive_code", name)
        check_option(self.method, "method", name, METHODS)
        check_scalar(self.tol, "tol", name, low=0.0)
        check_max_iter(self.max_iter, name)
        check_n_jobs(self.n_jobs, name)
        return alpha

    def fit(self, X, y=None):
        """Validate the parameters, the dictionary and X (nothing is learned).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Only used for validation (its width must match the dictionary's).
        y : Ignored

        Returns
        -------
        self : LassoSparseCoder
        """
        self._check_params()
        X = self._validate_X(X, reset=True)
        D = self._check_dictionary()
        self._check_features(X, D)
        self.components_ = D
        self.n_components_ = D.shape[0]
        return self

    def transform(self, X, y=None):
        """Lasso codes of X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : Ignored

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
            The codes, in the dtype of X (float32 stays float32).

        Warns
        -----
        fastlista.ConvergenceWarning
            When a sample does not reach ``tol`` in ``max_iter`` iterations.
        """
        alpha = self._check_params()
        X = self._validate_X(X, reset=False)
        D = self._check_dictionary(dtype=X.dtype)
        self._check_features(X, D)
        result = solve_lasso(X, D, alpha, method=self.method, tol=self.tol,
                             max_iter=self.max_iter, n_jobs=self.n_jobs,
                             positive=self.positive_code)
        return result.codes

    def _reconstruction_dictionary(self):
        return self._check_dictionary()

    def _coding_alpha(self):
        return check_scalar(self.alpha, "alpha", type(self).__name__, low=0.0)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"requires_fit": False, "preserves_dtype": [np.float64, np.float32]}


# ---------------------------------------------------------------------------
# LearnedSparseCoder
# ---------------------------------------------------------------------------

class LearnedSparseCoder(_SparseCodingMixin, BaseEstimator):
    """Sparse coding by an unfolded ISTA network trained on the data.

    ``fit`` trains a :class:`fastlista.Lista` of ``n_layers`` layers
    on X for the Lasso ``min_z 1/2 ||x - z D||^2 + alpha ||z||_1``;
    ``transform`` runs it (a fixed cost per sample, no convergence test) and,
    with ``refine_tol``, continues with :func:`fastlista.solve_lasso` from the
    network's output to a certified solution.

    Parameters
    ----------
    dictionary : array-like of shape (n_components, n_features)
        The atoms, one per row. Not copied.
    alpha : float, default=1.0
        Regularisation level lambda (absolute, >= 0); the network's
        thresholds are ``alpha`` times learned factors.
    n_layers : int, default=10
        Number of layers (ISTA iterations unfolded).
    parametrization : {"step", "coupled", "alista", "lista"}, default="step"
        What each layer learns: ``step`` one step size (SLISTA, Ablin et al.
        2019), ``coupled`` LISTA-CP, ``alista`` ALISTA, ``lista`` LISTA.
    loss : {"unsupervised", "supervised", "semi-supervised"}, default="unsupervised"
        ``unsupervised`` minimises the mean Lasso objective of the output;
        ``supervised`` the mean ``1/2 ||z_T - y||^2`` to target codes passed
        as ``y`` to ``fit`` (shape (n_samples, n_components));
        ``semi-supervised`` the same with the exact Lasso codes as targets.
    max_iter : int, default=100
        Iterations of the L-BFGS-B training.
    refine_tol : float or None, default=None
        If set, ``transform`` refines the network's codes with
        :func:`fastlista.solve_lasso` to a relative duality gap ``refine_tol``.
    random_state : int, RandomState instance or None, default=None
        Passed to the network (its initialisation, ISTA, is deterministic).
    n_jobs : int or None, default=None
        Threads of ``fit`` and ``transform``: at most ``n_jobs`` run at any
        time (the network's OpenMP threads, BLAS held to one thread
        meanwhile). None uses every core; -1 too; -2 all but one.
    positive_code : bool, default=False
        A network of non-negative codes (one-sided thresholds), trained and
        refined for the Lasso constrained to ``z >= 0``.

    Attributes
    ----------
    network_ : fastlista.Lista
        The trained network, in the dtype of the training data.
    components_ : ndarray of shape (n_components, n_features)
        The dictionary, in the dtype of the training data.
    n_components_ : int
        Number of atoms.
    n_features_in_ : int
        Number of features seen during ``fit``.
    loss_history_ : list of float
        Training loss before the first and after every iteration.
    n_iter_ : int
        Training iterations run.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista.estimators import LearnedSparseCoder
    >>> rng = np.random.RandomState(0)
    >>> D, X = rng.randn(8, 4), rng.randn(100, 4)
    >>> coder = LearnedSparseCoder(D, alpha=0.5, n_layers=5, max_iter=20).fit(X)
    >>> coder.transform(X).shape
    (100, 8)
    """

    def __init__(self, dictionary, alpha=1.0, n_layers=10, parametrization="step",
                 loss="unsupervised", max_iter=100, refine_tol=None,
                 random_state=None, n_jobs=None, positive_code=False):
        self.dictionary = dictionary
        self.alpha = alpha
        self.n_layers = n_layers
        self.parametrization = parametrization
        self.loss = loss
        self.max_iter = max_iter
        self.refine_tol = refine_tol
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.positive_code = positive_code

    def _check_params(self):
        name = type(self).__name__
        alpha = check_scalar(self.alpha, "alpha", name, low=0.0)
        check_scalar(self.n_layers, "n_layers", name, low=1, integer=True)
        check_option(self.parametrization, "parametrization", name, PARAMETRIZATIONS)
        check_option(self.loss, "loss", name, LOSSES)
        check_max_iter(self.max_iter, name)
        if self.refine_tol is not None:
            check_scalar(self.refine_tol, "refine_tol", name, low=0.0)
        check_random_state(self.random_state)
        check_n_jobs(self.n_jobs, name)
        check_bool(self.positive_code, "positive_code", name)
        return alpha

    def fit(self, X, y=None):
        """Train the network on X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training signals; the network is trained in their dtype.
        y : array-like of shape (n_samples, n_components), default=None
            Target codes, required by ``loss="supervised"``; ignored by the
            other losses.

        Returns
        -------
        self : LearnedSparseCoder
        """
        alpha = self._check_params()
        X = self._validate_X(X, reset=True)
        D = self._check_dictionary(dtype=X.dtype)
        self._check_features(X, D)
        Z_target = None
        if self.loss == "supervised":
            if y is None:
                raise ValueError(
                    "loss='supervised' requires target codes: pass y of shape "
                    f"(n_samples, n_components) = {(X.shape[0], D.shape[0])} to fit.")
            Z_target = check_array(y, dtype=X.dtype, order="C", input_name="y",
                                   estimator=self)
            if Z_target.shape != (X.shape[0], D.shape[0]):
                raise ValueError(
                    "With loss='supervised', y must be the target codes, of shape "
                    f"(n_samples, n_components) = {(X.shape[0], D.shape[0])}; got "
                    f"y.shape={Z_target.shape}.")
        net = Lista(D, alpha, self.n_layers, parametrization=self.parametrization,
                    random_state=self.random_state, n_jobs=self.n_jobs,
                    positive=self.positive_code)
        net.fit(X, loss=self.loss, Z_target=Z_target, max_iter=self.max_iter)
        self.network_ = net
        self.components_ = net.D
        self.n_components_ = D.shape[0]
        self.loss_history_ = list(net.loss_history_)
        self.n_iter_ = max(len(self.loss_history_) - 1, 0)
        return self

    def _network(self, dtype):
        """The trained network on this estimator's n_jobs, in ``dtype`` (a
        copy in another dtype is not cached)."""
        net = self.network_
        if net.dtype == dtype:
            return net._with_n_jobs(self.n_jobs)
        twin = Lista(net.D.astype(dtype), net.lmbd, net.n_layers,
                     parametrization=net.parametrization, n_jobs=self.n_jobs,
                     positive=net.positive)
        return twin.set_parameters(net.parameters)

    def transform(self, X, y=None):
        """Codes of X given by the trained network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : Ignored

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
            The codes, in the dtype of X.
        """
        check_is_fitted(self)
        self._check_params()
        X = self._validate_X(X, reset=False)
        net = self._network(X.dtype)
        return net.transform(X, refine_tol=self.refine_tol)

    def _reconstruction_dictionary(self):
        check_is_fitted(self)
        return self.components_

    def _coding_alpha(self):
        return self.network_.lmbd

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"preserves_dtype": [np.float64, np.float32]}
