"""fastlista: fast CPU sparse coding with learned step sizes.

Solves many Lasso problems ``min_z 1/2 ||x - z D||^2 + lmbd ||z||_1`` that
share one dictionary ``D`` (n_atoms, n_features), by batched iterative
solvers and by unfolded ISTA networks whose weights are learned from data
(Ablin, Moreau, Massias & Gramfort, NeurIPS 2019).

The public API is this namespace (``__all__``) and the modules
``fastlista.datasets`` (problems and data), ``fastlista.dictionary``
(dictionary learning on the fast coder: ``learn_dictionary``, online and
batch), ``fastlista.estimators`` (scikit-learn estimators, among them
``DictionaryLearning`` and ``MiniBatchDictionaryLearning``; needs
scikit-learn), ``fastlista.distributed`` (Dask helpers, with
``learn_dictionary`` on the workers; needs Dask) and ``fastlista.paper``
(the reproduction of the paper's figures, behind the ``fastlista``
command). Modules whose name starts with an underscore are private.
"""
__version__ = "0.1.0"

from ._lasso import (duality_gap, lambda_max, lasso_gradient, lasso_objective,
                     soft_thresholding)
from ._lipschitz import lipschitz
from ._networks import Lista, alista_weights
from ._solvers import (LassoResult, backtracking_ista, coordinate_descent, fista,
                       ista, oista, solve_lasso)
from ._training import TrainingWarning
from ._validation import ConvergenceWarning, InvalidParameterError

#: scikit-learn estimators, loaded (with scikit-learn, optional) on first use
_ESTIMATORS = ("LassoSparseCoder", "LearnedSparseCoder", "DictionaryLearning",
               "MiniBatchDictionaryLearning")

__all__ = [
    "ConvergenceWarning", "InvalidParameterError", "TrainingWarning",
    "duality_gap", "lambda_max", "lasso_gradient", "lasso_objective",
    "soft_thresholding", "lipschitz", "LassoResult", "solve_lasso", "ista",
    "fista", "oista", "backtracking_ista", "coordinate_descent", "Lista",
    "alista_weights",
]
# (the estimators are listed by dir() but not in __all__: a star import
# must not need scikit-learn)


def __getattr__(name):
    if name in _ESTIMATORS:
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'fastlista' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_ESTIMATORS))
