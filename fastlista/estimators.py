"""scikit-learn estimators: Lasso sparse coding and learned (unfolded) coders.

This module needs scikit-learn (an optional dependency); ``import fastlista``
does not import it.

* :class:`LassoSparseCoder` computes what
  :class:`sklearn.decomposition.SparseCoder` with
  ``transform_algorithm="lasso_cd"`` does: ``transform`` solves, for every row
  x of X, ``min_z 1/2 ||x - z D||^2 + alpha ||z||_1`` with
  :func:`fastlista.solve_lasso`, to a certified duality gap. Its parameters
  have their own names: ``alpha``, ``method``, ``max_iter`` for
  scikit-learn's ``transform_alpha`` (the same number),
  ``transform_algorithm`` and ``transform_max_iter``; there is no
  ``split_sign``.
* :class:`LearnedSparseCoder` trains an unfolded ISTA network
  (:class:`fastlista.Lista`) on the data passed to ``fit`` and encodes
  with it: a fixed, small number of layers instead of an iterative solver.

Both follow scikit-learn's conventions: parameters stored untouched by
``__init__``, validated in ``fit``/``transform``; fitted attributes with a
trailing underscore (``components_``, ``n_components_``, ``n_features_in_``);
float32 inputs give float32 codes; the validation messages are
scikit-learn's (for ``dictionary`` and ``y``, fastlista's, in the same
wording and naming the argument). They work inside
:class:`~sklearn.pipeline.Pipeline` and
:class:`~sklearn.model_selection.GridSearchCV`. A ``fit`` or
``partial_fit`` that raises (bad input, Ctrl-C) leaves the estimator as it
was.
"""
import functools
import numpy as np
from sklearn.base import (BaseEstimator, ClassNamePrefixFeaturesOutMixin,
                          TransformerMixin)
from sklearn.utils.validation import check_array, check_is_fitted

from ._lasso import check_atom_span, lasso_objective
from . import dictionary as _dictionary
from ._networks import LOSSES, PARAMETRIZATIONS, Lista
from ._solvers import CERTIFIABLE_TOL, METHODS, least_squares_codes, solve_lasso
from ._threads import kernel_threads
from ._validation import (InvalidParameterError, check_bool, check_max_iter,
                          check_n_jobs, check_option, check_random_state, check_scalar,
                          check_verbose, native_byte_order, check_real)
from ._validation import check_array as check_float_array  # (sklearn's is check_array)

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

def _all_or_nothing(method):
    """A fitting method that raises (bad input, an exception of the
    training, Ctrl-C) leaves the estimator's attributes as they were
    (``n_features_in_``, set by the validation, included)."""
    @functools.wraps(method)
    def fitting(self, *args, **kwargs):
        before = dict(vars(self))
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            # the copy becomes the attributes' dict: no allocation (clearing
            # and refilling the dict needed one, and with memory still out
            # left the estimator without attributes, its parameters too)
            self.__dict__ = before
            raise
    return fitting


def _as_floats(arr, name, estimator):
    """An array scikit-learn validated with ``dtype=None``, as float64 or
    float32 under fastlista's rule for arrays of numbers: an object array
    only of real numbers (scikit-learn's cast would parse text; other
    objects give TypeError, as scikit-learn's checks expect), an int beyond
    the float range refused by name."""
    check_real(arr, name)
    try:
        with np.errstate(over="ignore"):     # (beyond float64: inf, refused)
            return check_array(arr, dtype=list(_FLOATS), order="C", input_name=name,
                               estimator=estimator)
    except OverflowError:
        raise ValueError(f"Input {name} contains infinity or a value too large for "
                         "dtype('float64').") from None


def _dictionary_in(D, dtype):
    """The (validated) dictionary in ``dtype``, refused by name where the cast
    leaves the dtype's range (a float64 dictionary used with float32 X): an
    entry beyond its largest float (inf), or a non-zero atom whose entries
    all lie below its smallest normal (lost, or left with a few bits)."""
    if D.dtype == dtype:
        return D
    with np.errstate(over="ignore", under="ignore"):
        D_cast = D.astype(dtype, copy=False)
    remedy = "the dtype of the X it is used with: pass X in float64, or rescale it."
    if not np.all(np.isfinite(D_cast)):
        raise ValueError(
            f"dictionary has entries beyond the range of {np.dtype(dtype)} (largest "
            f"|entry| {float(np.max(np.abs(D))):.3g}), {remedy}")
    top = np.max(np.abs(D), axis=1, initial=0.0)
    lost = np.flatnonzero((top > 0) & (top < np.finfo(dtype).tiny))
    if lost.size:
        raise ValueError(
            f"dictionary's atom {lost[0]} (largest |entry| {top[lost[0]]:.3g}) lies "
            f"below the range of {np.dtype(dtype)}, {remedy}")
    return D_cast


def _network_of(D, *args, **kwargs):
    """``Lista(D, ...)`` for an estimator: the network's refusals of its D (all
    zeros, an L beyond the dtype's range, ALISTA's zero atoms) name the
    estimator's argument."""
    try:
        return Lista(D, *args, **kwargs)
    except InvalidParameterError:
        raise                   # (about another parameter: as it is)
    except ValueError as exc:
        raise ValueError(f"dictionary refused as the network's D: {exc}") from None


class _SparseCodingMixin(ClassNamePrefixFeaturesOutMixin, TransformerMixin):
    """Validation and reconstruction shared by the two coders."""

    def _check_dictionary(self, dtype=None):
        """The dictionary as a C-contiguous finite float array (not copied),
        validated by fastlista's rule, whose messages name ``dictionary``
        (scikit-learn's name no argument for a 1-D or complex array)."""
        D = check_float_array(self.dictionary, "dictionary", min_samples=1)
        return D if dtype is None else _dictionary_in(D, dtype)

    def _check_features(self, X, D):
        if X.shape[1] != D.shape[1]:
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                f"{D.shape[1]} features as input (the dictionary has shape {D.shape}: "
                "(n_atoms, n_features)).")

    def _validate_X(self, X, reset):
        """X validated by scikit-learn (float32 kept, big-endian float32 too,
        C order)."""
        return _as_floats(_validate_data(self, native_byte_order(X), reset=reset,
                                         dtype=None), "X", self)

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

        Raises
        ------
        FloatingPointError
            If the reconstruction leaves the range of the codes' dtype.
        """
        Z = _as_floats(check_array(native_byte_order(X), dtype=None, input_name="X",
                                   estimator=self), "X", self)
        D = self._reconstruction_dictionary()
        if Z.shape[1] != D.shape[0]:
            raise ValueError(
                f"X has {Z.shape[1]} components, but {type(self).__name__} is expecting "
                f"{D.shape[0]} components (atoms of the dictionary) as input.")
        with np.errstate(over="ignore", invalid="ignore"):
            X_original = Z @ _dictionary_in(D, Z.dtype)
        if np.all(np.isfinite(X_original)):
            return X_original
        # (float32 codes and dictionary make products within float64's range)
        raise FloatingPointError(
            f"The reconstruction X @ dictionary leaves the range of {Z.dtype}: "
            + ("rescale the codes X or the dictionary." if Z.dtype == np.float64
               else "pass the codes X in float64."))

    def score(self, X, y=None):
        """Minus the mean Lasso objective of the codes, at the coding level.

        ``-mean_x [1/2 ||x - z D||^2 + alpha ||z||_1]`` with ``z`` the code of
        ``x`` given by :meth:`transform` and ``alpha`` the level it codes at
        (the dictionary learners' ``transform_alpha`` where set): higher is
        better. Scores are comparable between models of the same level
        (e.g. the number of layers or the parametrization of a
        :class:`LearnedSparseCoder`), not across levels.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : Ignored

        Returns
        -------
        score : float
        """
        # (an array whatever set_output makes transform return: a DataFrame
        # with transform="pandas")
        Z = np.asarray(self.transform(X))
        X = check_array(X, dtype=Z.dtype, order="C", estimator=self)
        D = self._reconstruction_dictionary().astype(Z.dtype, copy=False)
        return -float(np.mean(lasso_objective(X, D, self._coding_alpha(), Z,
                                              positive=self._coding_positive())))

    def _coding_positive(self):
        """Whether transform's codes are constrained non-negative."""
        return bool(self.positive_code)

    @property
    def _n_features_out(self):
        """Number of transformed output features (for get_feature_names_out)."""
        return self.n_components_


# ---------------------------------------------------------------------------
# LassoSparseCoder
# ---------------------------------------------------------------------------

def _certifiable(tol, dtype):
    """The estimators' coding tol: a float32 tol in (0, 1e-6) is taken as
    1e-6, the relative gap float32 codes can be certified to (below it
    most samples run max_iter iterations and warn); 0 stays 0."""
    if dtype == np.float32 and 0 < tol < CERTIFIABLE_TOL[dtype]:
        return CERTIFIABLE_TOL[dtype]
    return tol


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
        A sample stops when its duality gap is <= ``tol * 1/2 ||x||^2``
        (0: after ``max_iter`` iterations). On float32 data a tol in
        (0, 1e-6) is taken as 1e-6, the relative gap float32 codes can be
        certified to (their own rounding keeps most from 1e-8, which would
        run ``max_iter`` iterations and warn); use float64 data for tighter
        codes.
    max_iter : int, default=10000
        Maximum iterations per sample.
    n_jobs : int or None, default=None
        Threads of ``transform``: at most ``n_jobs`` run at any time (the
        solver's OpenMP threads, BLAS held to one thread meanwhile when
        threadpoolctl is installed). None uses every core (OpenMP's limit
        if lower); -1 too; -2 all but one.
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

    At ``alpha=0`` the Lasso is least squares, whose duality gap is
    ``1/2 ||x - z D||^2``: no solver certifies it unless x lies in the span
    of the atoms. ``transform`` then returns the least-squares codes of
    minimum norm (non-negative least squares with ``positive_code``), as
    the dictionary learners' ``transform`` does.

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

    @_all_or_nothing
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
        check_atom_span(_dictionary_in(D, X.dtype), "dictionary", widen="X")
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
        check_atom_span(D, "dictionary", widen="X")
        if alpha == 0:
            return least_squares_codes(X, D, self.positive_code, self.n_jobs)
        result = solve_lasso(X, D, alpha, method=self.method,
                             tol=_certifiable(self.tol, X.dtype),
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
        Number of layers (ISTA iterations unfolded), at most 2**31 - 1.
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
        On float32 data a refine_tol in (0, 1e-6) is taken as 1e-6, as the
        ``tol`` of :class:`LassoSparseCoder` (float32 codes cannot be
        certified much below it); use float64 data for tighter codes. At
        ``alpha=0`` the refined codes are the least-squares codes, as
        :class:`LassoSparseCoder`'s (non-negative with ``positive_code``).
    random_state : int, RandomState instance or None, default=None
        Passed to the network (its initialisation, ISTA, is deterministic).
    n_jobs : int or None, default=None
        Threads of ``fit`` and ``transform``: at most ``n_jobs`` run at any
        time (the network's OpenMP threads, BLAS held to one thread
        meanwhile). None uses every core (OpenMP's limit if lower); -1 too;
        -2 all but one. The gradients' sums depend on the thread count by
        rounding, which training can carry into the learned weights: to
        reproduce a fit on another machine, give ``n_jobs`` explicitly.
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
        check_scalar(self.n_layers, "n_layers", name, low=1, high=2**31 - 1, integer=True)
        check_option(self.parametrization, "parametrization", name, PARAMETRIZATIONS)
        check_option(self.loss, "loss", name, LOSSES)
        check_max_iter(self.max_iter, name)
        if self.refine_tol is not None:
            check_scalar(self.refine_tol, "refine_tol", name, low=0.0)
        check_random_state(self.random_state, name)
        check_n_jobs(self.n_jobs, name)
        check_bool(self.positive_code, "positive_code", name)
        return alpha

    @_all_or_nothing
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
            # fastlista's rule, as Lista.fit's for Z_target: text refused, not
            # parsed; messages naming y (1-D, complex, beyond the float range)
            # (a 1-D y is named by its own shape, not told to reshape)
            Z_target = check_float_array(y, "y", dtype=X.dtype, allow_1d=True)
            if Z_target.shape != (X.shape[0], D.shape[0]):
                raise ValueError(
                    "With loss='supervised', y must be the target codes, of shape "
                    f"(n_samples, n_components) = {(X.shape[0], D.shape[0])}; got "
                    f"y.shape={np.shape(y)}.")
        net = _network_of(D, alpha, self.n_layers, parametrization=self.parametrization,
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
        """The trained network on this estimator's n_jobs, for signals of
        ``dtype``: the network itself for its own dtype and for float64
        signals (a float32 network codes float64 signals in float64, with its
        own layers: a float64 copy would recompute ALISTA's analytic weights
        at float64's precision, and atoms dependent at float32's, such as
        zero-mean ones, would get weights of 1e7 and other codes); a float32
        copy for float32 signals of a float64 network (not cached)."""
        net = self.network_
        if net.dtype == dtype or dtype == np.float64:
            return net._with_n_jobs(self.n_jobs)
        twin = _network_of(_dictionary_in(net.D, dtype), net.lmbd, net.n_layers,
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
        alpha = self._check_params()
        X = self._validate_X(X, reset=False)
        net = self._network(X.dtype)
        refine_tol = self.refine_tol
        if refine_tol is not None:
            if alpha == 0:
                # the Lasso at lmbd = 0 is least squares, whose certificate
                # no refinement reaches when x is outside the atoms' span
                return least_squares_codes(X, net.D, net.positive, self.n_jobs)
            refine_tol = _certifiable(refine_tol, X.dtype)
        return net.transform(X, refine_tol=refine_tol)

    def _reconstruction_dictionary(self):
        check_is_fitted(self)
        return self.components_

    def _coding_alpha(self):
        return self.network_.lmbd

    def _coding_positive(self):
        # the trained network's, as transform uses it (not a positive_code
        # set after fit)
        return self.network_.positive

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"preserves_dtype": [np.float64, np.float32]}


# ---------------------------------------------------------------------------
# DictionaryLearning and MiniBatchDictionaryLearning
# ---------------------------------------------------------------------------

class _DictionaryLearningBase(_SparseCodingMixin, BaseEstimator):
    """Fit (learn_dictionary), transform (solve_lasso) and their validation."""

    _method = None

    def _check_common(self):
        name = type(self).__name__
        if self.n_components is not None:
            check_scalar(self.n_components, "n_components", name, low=1,
                         high=2**31 - 1, integer=True)
        check_scalar(self.alpha, "alpha", name, low=0.0)
        check_option(self.transform_algorithm, "transform_algorithm", name,
                     METHODS + ("lasso_cd",))
        if self.transform_alpha is not None:
            check_scalar(self.transform_alpha, "transform_alpha", name, low=0.0)
        if self.transform_tol is not None:
            check_scalar(self.transform_tol, "transform_tol", name, low=0.0)
        check_max_iter(self.transform_max_iter, name, "transform_max_iter")
        check_n_jobs(self.n_jobs, name)
        check_bool(self.positive_code, "positive_code", name)
        check_verbose(self.verbose, name)
        check_random_state(self.random_state, name)

    def _options(self, X, state=None, **extra):
        """learn_dictionary's validated options for X, in this estimator's
        names; to continue ``state`` (an OnlineState), its number of atoms and
        no initial dictionary."""
        name = type(self).__name__
        if state is None:
            n_components = X.shape[1] if self.n_components is None else self.n_components
            D0 = self.dict_init
        else:
            n_components, D0 = state.D.shape[0], None
        return _dictionary.check_options(
            name, X, n_components, self.alpha, method=self._method,
            max_iter=self.max_iter, tol=self.tol, D0=D0,
            positive_code=self.positive_code, positive_dict=self.positive_dict,
            coder=self.fit_algorithm, callback=self._callback(), progress=False,
            code_tol=None, code_max_iter=self.transform_max_iter,
            names={"n_atoms": "n_components", "lmbd": "alpha", "D0": "dict_init",
                   "coder": "fit_algorithm"}, **extra)

    def _callback(self):
        """The user's callback, and the verbose printing, as one callback."""
        user, verbose = self.callback, bool(self.verbose)
        if user is None and not verbose:
            return None
        if user is not None and not callable(user):
            return user                         # refused by check_options
        name, printed = type(self).__name__, [0]

        def callback(info):
            if verbose and len(info["objective"]) > printed[0]:
                printed[0] = len(info["objective"])
                print(f"[{name}] iteration {printed[0]}: mean objective "
                      f"{info['objective'][-1]:.10g} ({info['step']} dictionary steps, "
                      f"{info['n_reinit']} atoms re-initialised)")
            return user(info) if user is not None else False
        return callback

    def _set_fitted(self, result, X):
        self.components_ = result.D
        self.n_components_ = result.D.shape[0]
        self.objective_ = result.objective
        self.n_iter_ = int(result.n_iter)
        self.n_steps_ = int(result.n_steps)
        self.n_reinit_ = int(result.n_reinit)

    @_all_or_nothing
    def fit(self, X, y=None):
        """Learn the dictionary from X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training signals (float32 stays float32).
        y : Ignored

        Returns
        -------
        self
        """
        self._check_params()
        X = self._validate_X(X, reset=True)
        options = self._options(X)
        result, state = _dictionary.run(options, self.n_jobs,
                                        check_random_state(self.random_state),
                                        type(self).__name__)
        self._set_fitted(result, X)
        self._state = state
        return self

    def _transform_alpha(self):
        return self.alpha if self.transform_alpha is None else self.transform_alpha

    def transform(self, X, y=None):
        """Lasso codes of X with the learned dictionary (exact, certified).

        ``min_z 1/2 ||x - z D||^2 + transform_alpha ||z||_1`` for every row x,
        by :func:`fastlista.solve_lasso` with ``transform_algorithm``, to a
        relative duality gap ``transform_tol``. At ``transform_alpha=0`` the
        least-squares codes ``fit`` uses at ``alpha=0`` (of minimum norm, or
        non-negative least squares with ``positive_code``): there the Lasso's
        gap is 1/2 ||x - z D||^2, which no solver brings to 0 unless x lies
        in the span of the atoms.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : Ignored

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
            In the dtype of X.
        """
        check_is_fitted(self)
        self._check_params()
        X = self._validate_X(X, reset=False)
        D = self.components_.astype(X.dtype, copy=False)
        if self._transform_alpha() == 0:
            return least_squares_codes(X, D, self.positive_code, self.n_jobs)
        tol = self.transform_tol
        tol = CERTIFIABLE_TOL[X.dtype] if tol is None else _certifiable(tol, X.dtype)
        # (scikit-learn's name of coordinate descent for the same Lasso)
        method = {"lasso_cd": "cd"}.get(self.transform_algorithm, self.transform_algorithm)
        return solve_lasso(X, D, self._transform_alpha(), method=method,
                           tol=tol, max_iter=self.transform_max_iter, n_jobs=self.n_jobs,
                           positive=self.positive_code).codes

    def _reconstruction_dictionary(self):
        check_is_fitted(self)
        return self.components_

    def _coding_alpha(self):
        return self._transform_alpha()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"preserves_dtype": [np.float64, np.float32]}


class DictionaryLearning(_DictionaryLearningBase):
    """Dictionary learning, batch: exact codes of all of X at every iteration.

    Learns a dictionary of ``n_components`` unit-norm atoms (rows of
    ``components_``) minimising the mean over the rows x of X of

        1/2 ||x - z D||^2 + alpha ||z||_1

    by :func:`fastlista.dictionary.learn_dictionary` with ``method="batch"``:
    each iteration solves the Lasso of every signal with
    :func:`fastlista.solve_lasso` (warm-started from the previous codes,
    certified) and updates the atoms by block coordinate descent; the
    objective never increases. scikit-learn's
    :class:`sklearn.decomposition.DictionaryLearning` with the same parameter
    names, several times faster; codes that converge.

    Parameters
    ----------
    n_components : int or None, default=None
        Number of atoms (None: n_features).
    alpha : float, default=1.0
        Regularisation level of the codes during learning (absolute, >= 0).
    max_iter : int or None, default=100
        Maximum number of iterations (one code step of all of X and one
        dictionary step each); None is the default.
    tol : float or None, default=1e-4
        Stop when an iteration lowers the mean objective by at most ``tol``
        times its value. 0 runs ``max_iter`` iterations; None is the
        default.
    fit_algorithm : {"cd", "slista"}, default="cd"
        The code step: ``"cd"`` exact codes (coordinate descent, certified),
        ``"slista"`` a re-trained SLISTA network (approximate, see
        :func:`fastlista.dictionary.learn_dictionary`).
    transform_algorithm : str, default="auto"
        Solver of :func:`fastlista.solve_lasso` for ``transform`` (all exact,
        to ``transform_tol``): "auto", "ista", "fista", "backtracking",
        "oista" or "cd"; "lasso_cd", scikit-learn's name, is "cd".
    transform_alpha : float or None, default=None
        Regularisation of ``transform`` (None: ``alpha``).
    transform_tol : float or None, default=None
        Relative duality gap of the codes of ``transform`` (None: 1e-8, and
        1e-6 for float32 data; on float32 data a tol in (0, 1e-6) is taken
        as 1e-6, as in :class:`LassoSparseCoder`).
    transform_max_iter : int, default=10000
        Maximum iterations of the Lasso solver, in ``fit`` and ``transform``.
    n_jobs : int or None, default=None
        Threads of ``fit`` and ``transform``: at most ``n_jobs`` at any time.
        None uses every core (OpenMP's limit if lower).
    dict_init : array-like of shape (n_components, n_features), default=None
        Initial dictionary (default: ``n_components`` signals of X drawn at
        random, normalised).
    callback : callable, default=None
        Called after every iteration with a dict (``"iteration"``,
        ``"step"``, ``"D"``, ``"objective"``, ``"n_reinit"``); returning
        True stops the fit.
    verbose : bool or int, default=False
        Print the objective after every iteration.
    random_state : int, RandomState instance or None, default=None
        Draws the initial atoms.
    positive_code : bool, default=False
        Non-negative codes (in ``fit`` and ``transform``).
    positive_dict : bool, default=False
        Non-negative atoms.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        The atoms (unit norm), in the dtype of the training data.
    objective_ : ndarray of shape (n_iter_,)
        Mean objective after every iteration (non-increasing).
    n_iter_ : int
        Iterations run.
    n_steps_ : int
        Dictionary steps (= ``n_iter_``).
    n_reinit_ : int
        Unused atoms re-initialised during the fit.
    n_components_ : int
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista.estimators import DictionaryLearning
    >>> X = np.random.RandomState(0).randn(200, 8)
    >>> dl = DictionaryLearning(n_components=12, alpha=0.5, max_iter=20,
    ...                         random_state=0).fit(X)
    >>> dl.components_.shape, dl.transform(X).shape
    ((12, 8), (200, 12))
    """

    _method = "batch"

    def __init__(self, n_components=None, *, alpha=1.0, max_iter=100, tol=1e-4,
                 fit_algorithm="cd", transform_algorithm="auto", transform_alpha=None,
                 transform_tol=None, transform_max_iter=10000, n_jobs=None,
                 dict_init=None, callback=None, verbose=False, random_state=None,
                 positive_code=False, positive_dict=False):
        self.n_components = n_components
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol
        self.fit_algorithm = fit_algorithm
        self.transform_algorithm = transform_algorithm
        self.transform_alpha = transform_alpha
        self.transform_tol = transform_tol
        self.transform_max_iter = transform_max_iter
        self.n_jobs = n_jobs
        self.dict_init = dict_init
        self.callback = callback
        self.verbose = verbose
        self.random_state = random_state
        self.positive_code = positive_code
        self.positive_dict = positive_dict

    def _check_params(self):
        self._check_common()

    def _options(self, X):
        return super()._options(X, batch_size=1, shuffle=False)


class MiniBatchDictionaryLearning(_DictionaryLearningBase):
    """Online dictionary learning (Mairal et al. 2010) on mini-batches.

    Learns a dictionary of ``n_components`` unit-norm atoms minimising the
    mean over the rows x of X of ``1/2 ||x - z D||^2 + alpha ||z||_1`` by
    :func:`fastlista.dictionary.learn_dictionary` with ``method="online"``:
    every mini-batch is coded exactly (:func:`fastlista.solve_lasso`,
    certified) with the current dictionary, folded into the sufficient
    statistics (with scikit-learn's forgetting of the early batches), and
    the atoms take one pass of block coordinate descent. scikit-learn's
    :class:`sklearn.decomposition.MiniBatchDictionaryLearning` with the same
    parameter names, several times faster; codes that converge.

    Parameters
    ----------
    n_components : int or None, default=None
        Number of atoms (None: n_features).
    alpha : float, default=1.0
        Regularisation level of the codes during learning (absolute, >= 0).
    max_iter : int or None, default=10
        Maximum number of epochs (passes over X); None is the default.
    tol : float or None, default=1e-3
        Stop at the end of an epoch whose mean objective (every signal's
        objective when its mini-batch was coded) is at most ``tol`` times
        its value below the previous epoch's; 0 runs ``max_iter`` epochs;
        None is the default.
        (scikit-learn's ``tol`` watches the change of the dictionary between
        mini-batches instead.)
    fit_algorithm : {"cd", "slista"}, default="cd"
        The code step: ``"cd"`` exact codes, ``"slista"`` a SLISTA network
        re-trained on every mini-batch (approximate codes).
    batch_size : int, default=256
        Signals per mini-batch.
    shuffle : bool, default=True
        Visit the signals in a new random order every epoch.
    dict_init : array-like of shape (n_components, n_features), default=None
        Initial dictionary (default: ``n_components`` signals drawn at
        random from the data, normalised).
    transform_algorithm, transform_alpha, transform_tol, transform_max_iter
        As in :class:`DictionaryLearning`.
    n_jobs, verbose, random_state, positive_code, positive_dict
        As in :class:`DictionaryLearning`.
    callback : callable, default=None
        Called after every mini-batch with a dict (``"iteration"``: the
        epoch, ``"step"``, ``"D"``, ``"objective"``: completed epochs,
        ``"n_reinit"``); returning True stops the fit.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
    objective_ : ndarray of shape (epochs completed,)
        Mean online objective per epoch.
    n_iter_ : int
        Epochs run (the last maybe cut short by ``callback``).
    n_steps_ : int
        Mini-batches processed (``fit`` and every ``partial_fit``).
    n_reinit_ : int
        Unused atoms re-initialised.
    n_components_ : int
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista.estimators import MiniBatchDictionaryLearning
    >>> X = np.random.RandomState(0).randn(1000, 8)
    >>> mbdl = MiniBatchDictionaryLearning(n_components=12, alpha=0.5,
    ...                                    batch_size=100, max_iter=2,
    ...                                    random_state=0).fit(X)
    >>> mbdl.n_steps_, mbdl.n_iter_
    (20, 2)
    >>> mbdl.partial_fit(X[:100]).n_steps_
    21
    """

    _method = "online"

    def __init__(self, n_components=None, *, alpha=1.0, max_iter=10, tol=1e-3,
                 fit_algorithm="cd", batch_size=256, shuffle=True, dict_init=None,
                 transform_algorithm="auto", transform_alpha=None, transform_tol=None,
                 transform_max_iter=10000, n_jobs=None, verbose=False,
                 random_state=None, positive_code=False, positive_dict=False,
                 callback=None):
        self.n_components = n_components
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol
        self.fit_algorithm = fit_algorithm
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.dict_init = dict_init
        self.transform_algorithm = transform_algorithm
        self.transform_alpha = transform_alpha
        self.transform_tol = transform_tol
        self.transform_max_iter = transform_max_iter
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.random_state = random_state
        self.positive_code = positive_code
        self.positive_dict = positive_dict
        self.callback = callback

    def _check_params(self):
        self._check_common()

    def _options(self, X, state=None):
        return super()._options(X, state, batch_size=self.batch_size, shuffle=self.shuffle)

    @_all_or_nothing
    def partial_fit(self, X, y=None):
        """Update the dictionary with X as one mini-batch.

        The first call (without a previous ``fit``) initialises the
        dictionary from X (or ``dict_init``); later calls continue from the
        current dictionary and statistics (those of ``fit`` too). Every call
        reads the current parameters (``alpha``, ``fit_algorithm``,
        ``positive_code``, ``positive_dict``, ``transform_max_iter``,
        ``n_jobs``), as scikit-learn's does: ``set_params`` between calls
        takes effect at the next one (``positive_dict=True`` also sets the
        negative entries of the atoms to 0).

        X of any magnitude is learned exactly as X scaled by a power of two
        into range would be: the statistics keep the units of the first data
        (``fit``'s X, or the first batch), each batch is multiplied by the
        exact power of two into them, and a batch far from them (beyond
        ``2**+-100``, ``2**+-30`` for float32) moves them when it is the
        larger or is coded in its own units when it is the smaller (its share
        of the statistics scaled down: what underflows is below their
        rounding). The atoms of X times a power of two are those of X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            One mini-batch.
        y : Ignored

        Returns
        -------
        self
        """
        self._check_params()
        state = getattr(self, "_state", None)
        fitted = state is not None and hasattr(self, "components_")
        X = self._validate_X(X, reset=not fitted)
        o = self._options(X, state if fitted else None)
        name = type(self).__name__
        with kernel_threads(self.n_jobs, name) as n_threads:
            # the coder and the state's settings from the current parameters
            coder = _dictionary.make_coder(o["coder"], o["lmbd"], o["code_tol"],
                                           o["code_max_iter"], o["positive_code"], n_threads,
                                           previous=state.coder if fitted else None)
            if fitted:
                # the step works on a copy: a call that fails or is
                # interrupted leaves the fitted state as it was
                state = state.copy()
                state.configure(coder, o["lmbd"], o["positive_dict"])
            else:
                Xs, e = _dictionary.scale_exponent(X)
                D = _dictionary.start_dictionary(
                    Xs, o["n_atoms"], o["D0"], check_random_state(self.random_state),
                    o["positive_dict"], signed=not o["positive_code"])
                state = _dictionary.OnlineState(D, coder, o["lmbd"], o["positive_dict"],
                                                o["dict_passes"], exponent=e)
            state.step(X)
        # (an exception from here on is undone too: _all_or_nothing)
        self._state = state
        self.components_ = _dictionary._normalise(
            state.D.copy(), positive=state.positive_dict).astype(X.dtype)
        self.n_components_ = state.D.shape[0]
        self.n_steps_ = int(state.n_steps)
        self.n_reinit_ = int(state.n_reinit)
        return self


__all__ += ["DictionaryLearning", "MiniBatchDictionaryLearning"]
