"""The registry of the paper's figures: one entry per ``fastlista reproduce FIGURE``.

Each :class:`Figure` names the experiment that computes it (a function of
:mod:`fastlista.paper.experiments`), the paper's figure it reproduces and its
settings in the three modes of :data:`MODES`. The plot of a figure is
``plot_<name>`` of :mod:`fastlista.paper.plots` (``-`` read as ``_``).

This module imports neither the experiments nor matplotlib: the command
line reads it to build ``fastlista reproduce --help``.
"""
from dataclasses import dataclass

import numpy as np

__all__ = ["Figure", "FIGURES", "MODES"]

#: The settings of every figure: the paper's (the experiment's defaults, the
#: authors' settings), a reduced run (under 2 minutes on 2 idle cores) and a
#: smoke run of a few seconds (the hidden ``--tiny`` option).
MODES = ("paper", "quick", "tiny")


@dataclass(frozen=True)
class Figure:
    """One reproducible figure.

    Attributes
    ----------
    name : str
        The command-line name, also the stem of the CSV, JSON and PNG files.
    title : str
        The paper's figure and what it shows.
    experiment : str
        The function of :mod:`fastlista.paper.experiments` that computes it.
    presets : dict
        Mode (one of :data:`MODES`) -> keyword arguments of the experiment.
    slow : bool
        Whether the paper's settings take long (hours for ``networks``).
    """

    name: str
    title: str
    experiment: str
    presets: dict
    slow: bool = False


FIGURES = {f.name: f for f in (
    Figure("oista", "Fig 2: OISTA against ISTA, FISTA and backtracking",
           "oista_convergence", {
               "paper": dict(),
               "quick": dict(n_signals=200),
               "tiny": dict(max_iter=60, n_signals=20),
           }),
    Figure("steps", "Fig 4: learned SLISTA steps against 1/L_S",
           "learned_steps", {
               "paper": dict(),
               "quick": dict(),
               "tiny": dict(n_train=150, n_test=150, n_layers=6, max_iter=20,
                            compare_optimizer=None),
           }),
    Figure("dictionary-distance", "Fig 5: distance of LISTA-CP weights to D",
           "dictionary_distance", {
               "paper": dict(),
               "quick": dict(max_iter=3000),
               "tiny": dict(n_samples=100, n_layers=6, max_iter=30),
           }, slow=True),
    Figure("networks", "Fig 6: held-out F - F* against depth; supervised "
           "recovery NMSE with support selection",
           "network_comparison", {
               "paper": dict(),
               # recovery: the papers' 250 x 500 shrunk to 32 x 64 (same ratios:
               # measurements / atoms 1/2, 10 % non-zeros, selection percents),
               # 12 layers so that p_max = 13 % is reached (layer 11)
               "quick": dict(n_train=500, n_test=500, depths=(1, 2, 5, 10), max_iter=50,
                             recovery=dict(n_features=32, n_atoms=64, n_train=3000,
                                           n_test=1000, n_layers=12, max_iter=96)),
               "tiny": dict(n_features=16, n_atoms=32, n_train=60, n_test=60,
                            lmbds=(0.8,), depths=(1, 2), max_iter=5,
                            recovery=dict(n_features=16, n_atoms=32, n_train=100,
                                          n_test=100, n_layers=3, max_iter=6)),
           }, slow=True),
    Figure("lipschitz-law", "Fig E.1: L_S / L against support size",
           "lipschitz_law", {
               "paper": dict(),
               "quick": dict(n_supports=20),
               "tiny": dict(n_features=30, zetas=(0.2, 0.5, 1.0), n_supports=3),
           }),
    Figure("iterative", "Fig E.2: iterations and time of ISTA, FISTA, OISTA",
           "iterative_comparison", {
               "paper": dict(),
               "quick": dict(),
               "tiny": dict(n_features=20, n_atoms=40, lmbds=(0.4, 0.8), n_seeds=2,
                            n_repeats=1),
           }),
    Figure("learning-curves", "Fig E.3: learning curves of LISTA-CP and SLISTA",
           "learning_curves", {
               "paper": dict(),
               "quick": dict(max_iter=300),
               "tiny": dict(n_total=300, train_sizes=(10, 50), max_iter=20),
           }),
    Figure("lambda-transfer", "Networks trained at one lmbd, evaluated at others",
           "lambda_transfer", {
               "paper": dict(),
               "quick": dict(lmbd_tests=tuple(np.logspace(-2, 0, 15)), max_iter=1000),
               "tiny": dict(n_train=100, n_test=100, n_layers=5,
                            lmbd_tests=(0.02, 0.05, 0.3), max_iter=10),
           }, slow=True),
)}
