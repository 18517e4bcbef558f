"""Unfolded ISTA networks: LISTA, LISTA-CP, ALISTA and SLISTA.

* ``_parameters``: the parametrizations (keys, shapes, inits, validation,
  the flat training vector) and ALISTA's analytic weights;
* ``_execution``: the kernel adapters (forward and backward passes);
* ``_persistence``: the ``.npz`` model files;
* ``_lista``: the :class:`Lista` class, the public API.
"""
from ._lista import Lista, TrainingData
from ._parameters import LOSSES, PARAMETRIZATIONS, alista_weights

__all__ = ["Lista", "TrainingData", "alista_weights", "PARAMETRIZATIONS", "LOSSES"]
