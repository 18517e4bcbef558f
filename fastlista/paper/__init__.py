"""The reproduction of *Learning step sizes for unfolded sparse coding*.

Ablin, Moreau, Massias & Gramfort, NeurIPS 2019. Not part of the library:
the library (``fastlista``) imports nothing from here, and the command line
(``fastlista reproduce``, ``fastlista demo``) imports it only when it runs.

* :mod:`fastlista.paper.figures`: the registry of the figures (names, titles,
  settings);
* :mod:`fastlista.paper.experiments`: the computations, one function per
  figure, returning an :class:`~fastlista.paper.experiments.ExperimentResult`;
* :mod:`fastlista.paper.plots`: the drawings (matplotlib, the ``plot`` extra).
"""
