"""fastlista: fast CPU sparse coding with learned step sizes.

Solves many Lasso problems ``min_z 1/2 ||x - z D||^2 + lmbd ||z||_1`` that
share one dictionary ``D`` (n_atoms, n_features), by batched iterative
solvers and by unfolded ISTA networks whose weights are learned from data
(Ablin, Moreau, Massias & Gramfort, NeurIPS 2019).
"""
__version__ = "0.1.0"

from ._validation import ConvergenceWarning, InvalidParameterError
from ._lasso import (duality_gap, lambda_max, lasso_gradient, lasso_objective,
                    soft_thresholding)
from ._lipschitz import lipschitz
from ._networks import Lista, alista_weights
from ._solvers import (LassoResult, backtracking_ista, coordinate_descent, fista,
                      ista, oista, solve_lasso)
from ._training import TrainingWarning

__all__ = [
    "ConvergenceWarning", "InvalidParameterError",
    "duality_gap", "lambda_max", "lasso_gradient", "lasso_objective",
    "soft_thresholding", "lipschitz", "LassoResult", "solve_lasso", "ista",
    "fista", "oista", "backtracking_ista", "coordinate_descent", "Lista",
    "alista_weights", "TrainingWarning",
]


def __getattr__(name):
    # the scikit-learn estimators load scikit-learn (optional) on first use
    if name in ("LassoSparseCoder", "LearnedSparseCoder"):
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'fastlista' has no attribute {name!r}")
