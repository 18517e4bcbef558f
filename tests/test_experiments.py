"""The paper's claims, asserted at small scale, and the experiments' plumbing.

Claims (Ablin, Moreau, Massias & Gramfort, NeurIPS 2019):

* OISTA takes fewer iterations than ISTA (Fig 2, Fig E.2);
* learned SLISTA steps exceed 1/L in the deep layers and mostly lie within
  [1/L_S, 2/L_S] of the supports seen at each layer (Fig 4);
* the weights of a deep LISTA-CP network approach the dictionary (times a
  step) in its deep layers: the distance decreases with depth (Fig 5);
* L_S / L of random supports of a Gaussian dictionary follows
  ((1 + sqrt(zeta gamma)) / (1 + sqrt(gamma)))^2 (Fig E.1), within the
  tolerance stated in test_lipschitz_law_within_tolerance;
* SLISTA beats ISTA at equal depth at lmbd = 0.8 (Fig 6).

Beside Fig 6, the supervised sparse recovery of LISTA-CPSS (Chen et al.,
NeurIPS 2018) and ALISTA (Liu et al., ICLR 2019): its rows, its NMSE against
a NumPy recomputation, and its data generator.
"""
import csv
import re

import numpy as np
import pytest

from fastlista.paper import experiments as E
from fastlista.paper import plots
from fastlista.paper.figures import FIGURES, MODES
from fastlista.datasets import make_coding


# ------------------------------------------------------------------ OISTA
def test_oista_fewer_iterations_than_ista():
    res = E.oista_convergence(n_signals=100)          # Fig 2's problem, 100 signals
    s = res.summary
    # the paper's signal: ISTA does not reach 1e-10 much before 200 iterations,
    # OISTA does in about a third of them
    assert s["iterations_signal0"]["oista"] < s["iterations_signal0"]["ista"]
    med = s["median_iterations"]
    assert med["oista"] < 0.5 * med["ista"], med
    # never worse than ISTA, strictly better on most signals
    assert s["fraction_oista_at_most_ista"] == 1.0
    assert s["fraction_oista_fewer_than_ista"] >= 0.9
    # OISTA's steps are 1/L_S >= 1/L, mostly strictly larger
    assert s["fraction_oista_steps_above_1_over_L"] > 0.5
    steps = res.table["oista_step_x_L"][:-1]
    assert np.all(steps >= 1 - 1e-9)
    # F - F* is non-increasing for ISTA and OISTA (monotone methods)
    for m in ("ista", "oista"):
        gap = res.table[m]
        assert np.all(np.diff(gap) <= 1e-12)


def test_oista_fewer_iterations_than_ista_fig_e2_setting():
    res = E.iterative_comparison(n_features=50, n_atoms=100, lmbds=(0.4, 0.8),
                                 n_seeds=3, n_repeats=1)
    for lm in (0.4, 0.8):
        assert res.summary[f"lmbd={lm}: OISTA/ISTA iterations"] < 0.7
    t = res.table
    for lm in (0.4, 0.8):
        for seed in set(t["seed"]):
            sel = (t["lmbd"] == lm) & (t["seed"] == seed)
            it = dict(zip(t["method"][sel], t["n_iter"][sel]))
            assert it["OISTA"] < it["ISTA"]
    assert np.all(np.isfinite(t["time"])) and np.all(t["time"] > 0)


# ------------------------------------------------------------ SLISTA steps
@pytest.fixture(scope="module")
def steps_result():
    # the paper's Fig 4 setting (20 x 10 dictionary, 20 layers, lmbd = 0.2,
    # 100 iterations of the paper's gradient descent) with 500 training signals
    return E.learned_steps(n_train=500, n_test=500, compare_optimizer=None)


def test_learned_steps_exceed_one_over_L_in_deep_layers(steps_result):
    s = steps_result.summary
    assert s["deep_layers_step_above_1_over_L"]
    step = steps_result.table["step_x_L"]
    deep = step[len(step) // 2:]
    assert np.all(deep > 1.2), step


def test_learned_steps_mostly_within_the_LS_band(steps_result):
    # in the deep layers, the learned step lies in [1/L_S, 2/L_S] for most
    # training samples (S = the sample's support at that layer)
    t = steps_result.table
    deep = slice(len(t["layer"]) // 2, None)
    assert steps_result.summary["deep_layers_mean_fraction_in_band"] >= 0.6
    assert np.mean(t["fraction_in_band"][deep] >= 0.5) >= 0.8, t["fraction_in_band"]
    # and between the median 1/L_S and twice it
    ratio = t["step_x_L"][deep] / t["inv_LS_median_x_L"][deep]
    assert np.median(ratio) >= 1 and np.median(ratio) <= 2, ratio


def test_learned_steps_beat_ista(steps_result):
    gap = steps_result.summary["test_gap"]
    assert gap["SLISTA (gd)"] < 0.5 * gap["ISTA"]


def test_learned_steps_band_matches_numpy_eigvalsh(steps_result):
    # recompute one layer's 1/L_S quantiles with numpy.linalg.eigvalsh
    from fastlista import Lista
    st = steps_result.settings
    X, D = make_coding(st["n_train"] + st["n_test"], st["n_atoms"], st["n_features"],
                       random_state=st["random_state"])
    L = np.linalg.eigvalsh(D @ D.T)[-1]
    np.testing.assert_allclose(steps_result.summary["L"], L, rtol=1e-10)
    t = steps_result.table
    net = Lista(D, st["lmbd"], st["n_layers"], "step")
    net.set_parameters([{"alpha": s / L} for s in t["step_x_L"]])
    layer = 5
    Z = net.transform(X[:st["n_train"]], n_layers=layer)
    inv = []
    for z in Z:
        idx = np.flatnonzero(z)
        if idx.size:
            inv.append(1 / np.linalg.eigvalsh(D[idx] @ D[idx].T)[-1])
    np.testing.assert_allclose(t["inv_LS_median_x_L"][layer - 1], np.median(inv) * L,
                               rtol=1e-6)
    # each quantile column holds the quantile its name gives, in percent
    named = {}
    for col in t:
        m = re.fullmatch(r"inv_LS_q(\d+(?:\.\d+)?)_x_L", col)
        if m:
            named[float(m.group(1))] = t[col][layer - 1]
    assert sorted(named) == [0.0, 9.5, 19.0, 28.5, 38.0, 47.5, 57.0, 66.5, 76.0, 85.5,
                             95.0]
    for percent, value in named.items():
        np.testing.assert_allclose(value, np.quantile(inv, percent / 100) * L, rtol=1e-6,
                                   err_msg=f"{percent} % quantile")


# ----------------------------------------------------- dictionary distance
@pytest.mark.parametrize("per_layer, factor", [("recursive", 0.1), ("oneshot", 0.6)])
def test_dictionary_distance_decreases_with_depth(per_layer, factor):
    # recursive is the paper's training; with oneshot every layer gets the
    # same number of updates, so deep layers are not close to D only for
    # having been trained less (a weaker decrease, which holds for the
    # default seed 1 and for 4 of the seeds 0-4: see docs/reproduction.md)
    res = E.dictionary_distance(n_samples=200, n_layers=12, max_iter=300,
                                per_layer=per_layer)
    rel = res.table["relative_distance"]
    s = res.summary
    assert s["relative_distance_last_quarter"] < factor * s["relative_distance_first_quarter"]
    # decreasing trend: negative correlation of distance and depth
    assert np.corrcoef(np.arange(len(rel)), rel)[0, 1] < -0.7
    # the network solves the Lasso better than ISTA (the theorem's premise)
    assert s["train_gap"]["LISTA-CP"] < 0.5 * s["train_gap"]["ISTA"]
    # the two measures agree on which layers are close to D
    fro = res.table["alphaW_minus_betaD_fro"]
    assert s["fro_last_quarter"] < s["fro_first_quarter"]
    assert np.all(fro >= 0)


# --------------------------------------------------------- learning curves
def test_samples_within_25_percent_of_the_best():
    # the best gap (1.0, at 20 samples) is not the largest size's (1.3)
    sizes, gaps = (10, 20, 40), (1.5, 1.0, 1.3)
    assert E._fewest_samples_within(sizes, gaps, 0.25) == 20
    assert E._fewest_samples_within(sizes, (2.0, 1.25, 1.0), 0.25) == 20
    assert E._fewest_samples_within(sizes, (1.26, 1.1, 1.0), 0.25) == 20
    assert E._fewest_samples_within(sizes, (np.nan, 1.0, 1.2), 0.25) == 20
    assert E._fewest_samples_within(sizes, (np.nan,) * 3, 0.25) is None


def test_learning_curves_summary_against_the_table():
    res = E.run("learning-curves", "tiny", train_sizes=(10, 30, 100))
    t = res.table
    for lab in ("LISTA-CP", "SLISTA"):
        med = [np.median(t["test_gap"][(t["method"] == lab) & (t["n_train"] == n)])
               for n in (10, 30, 100)]
        assert list(res.summary[f"{lab}: median test gap by n_train"].values()) == med
        expected = next(n for n, g in zip((10, 30, 100), med) if g <= 1.25 * min(med))
        assert res.summary[f"{lab}: samples to come within 25% of its best"] == expected


# --------------------------------------------------------- Lipschitz law
def test_lipschitz_law_within_tolerance():
    """Stated tolerance: at n = 100 features and gamma = 3 (300 atoms), the
    median of L_S / L over 10 random supports is within 7 % (relative) of
    the law for every zeta in {0.1, 0.2, ..., 1}. Measured: at most 2.7 %,
    3.0 %, 3.3 % for seeds 0, 1, 2 (at the paper's n = 200, 20 supports:
    4.5 %, at zeta = 0.1; the law is asymptotic in n)."""
    res = E.lipschitz_law(n_features=100, n_supports=10)
    t = res.table
    err = res.summary["max_abs_relative_error_of_median"]
    assert err <= 0.07, t["relative_error_of_median"]
    # the law lies above the line zeta (L_S / L > zeta): the gain of the
    # step 1/L_S over 1/L is real but smaller than 1/zeta
    assert res.summary["law_above_zeta"]
    assert np.all(t["median"][t["zeta"] < 1] > t["zeta"][t["zeta"] < 1])
    # measured ratio increasing in zeta, = 1 for the full support
    assert np.all(np.diff(t["median"]) > 0)
    np.testing.assert_allclose(t["median"][-1], 1.0, rtol=1e-8)


def test_theoretical_law_limits():
    law = E.theoretical_lipschitz_ratio
    np.testing.assert_allclose(law(1.0, 3), 1.0)
    np.testing.assert_allclose(law(0.0, 3), 1 / (1 + np.sqrt(3)) ** 2)
    assert np.all(np.diff(law(np.linspace(0, 1, 50), 3)) > 0)


# ------------------------------------------------- SLISTA against ISTA
def test_slista_beats_ista_at_equal_depth_lmbd_08():
    res = E.network_comparison(n_features=32, n_atoms=64, n_train=300, n_test=300,
                               lmbds=(0.8,), datasets=("simulated",), depths=(5, 10),
                               networks=("step",), max_iter=50, recovery=False)
    t = res.table
    for d in (5, 10):
        at = t["depth"] == d
        g = {m: float(v) for m, v in zip(t["method"][at], t["gap"][at])}
        assert g["SLISTA"] < 0.5 * g["ISTA"], g
        assert g["ISTA"] > 0
    assert res.summary["simulated, lmbd=0.8: SLISTA beats ISTA at"] == "2/2 depths"


# ------------------------------------- supervised sparse recovery (beside Fig 6)
RECOVERY_METHODS = ["ISTA", "FISTA", "LISTA-CP", "LISTA-CPSS", "ALISTA", "ALISTA-SS"]


@pytest.fixture(scope="module")
def networks_tiny():
    return E.run("networks", "tiny")


def _recovery_nmse(res, method):
    t = res.table
    sel = (t["problem"] == "recovery") & (t["method"] == method)
    order = np.argsort(t["depth"][sel])
    return t["depth"][sel][order], t["nmse_db"][sel][order]


def test_networks_recovery_rows(networks_tiny):
    res = networks_tiny
    t = res.table
    assert list(t) == list(E.NETWORK_COLUMNS)
    assert len({len(v) for v in t.values()}) == 1
    lasso = t["problem"] == "lasso"
    rec = t["problem"] == "recovery"
    assert lasso.any() and rec.any() and np.all(lasso | rec)
    # the unsupervised rows keep their F - F* and have no NMSE; the recovery
    # rows the reverse
    assert np.all(np.isfinite(t["gap"][lasso])) and np.all(np.isnan(t["nmse_db"][lasso]))
    assert np.all(np.isnan(t["gap"][rec])) and np.all(np.isnan(t["median_gap"][rec]))
    assert set(t["dataset"][rec]) == {"bernoulli-gaussian"}
    assert list(dict.fromkeys(t["method"][rec])) == RECOVERY_METHODS
    T = res.settings["recovery"]["n_layers"]
    for m in RECOVERY_METHODS:
        depth, nmse = _recovery_nmse(res, m)
        assert depth.tolist() == list(range(1, T + 1))
        assert np.all(np.isfinite(nmse)), (m, nmse)
        # every method gets closer to the ground truth with depth
        assert nmse[-1] < nmse[0], (m, nmse)
    # the networks beat ISTA at the last depth
    last = res.summary[f"recovery: test NMSE (dB) at depth {T}"]
    assert set(last) == set(RECOVERY_METHODS)
    for m in RECOVERY_METHODS[2:]:
        assert last[m] < last["ISTA"], last
    gain = res.summary[f"recovery: support selection at depth {T} (SS - no SS, dB; "
                       f"< 0: SS helps)"]
    assert gain == pytest.approx({
        "LISTA-CPSS - LISTA-CP": last["LISTA-CPSS"] - last["LISTA-CP"],
        "ALISTA-SS - ALISTA": last["ALISTA-SS"] - last["ALISTA"]})
    # the recovery summary follows the unsupervised one
    keys = list(res.summary)
    first = next(i for i, k in enumerate(keys) if k.startswith("recovery: "))
    assert first > 0 and all(k.startswith("recovery: ") for k in keys[first:])


def test_networks_recovery_leaves_the_lasso_rows_unchanged(networks_tiny):
    alone = E.run("networks", "tiny", recovery=False)
    lasso = networks_tiny.table["problem"] == "lasso"
    assert alone.n_rows == int(lasso.sum())
    for c in ("dataset", "lmbd", "method", "depth", "gap", "median_gap"):
        np.testing.assert_array_equal(alone.table[c], networks_tiny.table[c][lasso])
    assert list(alone.summary) == [k for k in networks_tiny.summary
                                   if not k.startswith("recovery: ")]
    assert alone.settings["recovery"] is None


def _numpy_ista(X, D, lmbd, n_iter):
    """ISTA with step 1/L, independently of fastlista: the iterates 1..n_iter."""
    L = np.linalg.eigvalsh(D @ D.T)[-1]
    Z = np.zeros((X.shape[0], D.shape[0]))
    out = []
    for _ in range(n_iter):
        U = Z - (Z @ D - X) @ D.T / L
        Z = np.sign(U) * np.maximum(np.abs(U) - lmbd / L, 0.0)
        out.append(Z)
    return out


def test_networks_recovery_nmse_matches_numpy(networks_tiny):
    res = networks_tiny
    st = res.settings["recovery"]
    # the test signals are the first ones drawn after D: make_sparse_recovery
    # with the same seed gives them
    X, D, S = E.make_sparse_recovery(st["n_test"], st["n_atoms"], st["n_features"],
                                     st["density"], st["snr"],
                                     random_state=st["random_state"])
    np.testing.assert_array_equal(res.curves["recovery_test_targets"], S)

    def nmse(Z):
        return 10 * np.log10(np.sum((Z - S) ** 2) / np.sum(S ** 2))

    # the outputs at the last depth give the table's NMSE
    T = st["n_layers"]
    for m, Z in res.curves["recovery_test_codes"].items():
        assert Z.shape == S.shape
        np.testing.assert_allclose(_recovery_nmse(res, m)[1][-1], nmse(Z), rtol=1e-12)
    # and ISTA's NMSE at every depth is that of a NumPy ISTA at its lmbd
    lmbd = res.summary["recovery: ISTA / FISTA lmbd (chosen on training signals)"]["ISTA"]
    assert lmbd in st["baseline_lmbds"]
    expected = [nmse(Z) for Z in _numpy_ista(X, D, lmbd, T)]
    np.testing.assert_allclose(_recovery_nmse(res, "ISTA")[1], expected, atol=1e-6)


def test_make_sparse_recovery_law():
    X, D, S = E.make_sparse_recovery(4000, n_atoms=40, n_features=20, density=0.1,
                                     snr=20.0, random_state=3)
    assert X.shape == (4000, 20) and D.shape == (40, 20) and S.shape == (4000, 40)
    np.testing.assert_allclose(np.linalg.norm(D, axis=1), 1.0, rtol=1e-12)
    assert abs(np.mean(S != 0) - 0.1) < 0.01
    clean = S @ D
    snr = 10 * np.log10(np.sum(clean ** 2) / np.sum((X - clean) ** 2))
    assert abs(snr - 20.0) < 0.3, snr
    X0, D0, S0 = E.make_sparse_recovery(10, 40, 20, snr=np.inf, random_state=3)
    np.testing.assert_array_equal(X0, S0 @ D0)


def test_layerwise_training_on_one_set_is_per_layer_recursive():
    # the recovery's stage loop (used with a batch a stage) is Lista.fit's
    # per_layer="recursive" when every stage gets the same signals
    from fastlista import Lista
    X, D, S = E.make_sparse_recovery(100, 24, 12, random_state=0)
    for par, ss in (("coupled", (1.2, 13)), ("alista", None)):
        net, _ = E._fit_layerwise(D, 0.4, 3, par, ss, lambda k: (X, S), 9, "lbfgs")
        ref = Lista(D, 0.4, 3, par, support_selection=ss).fit(
            X, loss="supervised", Z_target=S, per_layer="recursive", max_iter=9, tol=0)
        for a, b in zip(net.parameters, ref.parameters):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])


# ------------------------------------------------------------------ seeds
def test_iterative_seeds_wrap_around_at_2_32():
    kw = dict(n_features=20, n_atoms=40, lmbds=(0.8,), n_seeds=3, n_repeats=1)
    top = E.iterative_comparison(random_state=2**32 - 2, **kw).table
    low = E.iterative_comparison(random_state=0, **kw).table
    assert list(dict.fromkeys(top["seed"])) == [2**32 - 2, 2**32 - 1, 0]
    # seed 0's signal is the one of a run from seed 0
    for m in ("ISTA", "FISTA", "OISTA"):
        a = top["n_iter"][(top["seed"] == 0) & (top["method"] == m)]
        b = low["n_iter"][(low["seed"] == 0) & (low["method"] == m)]
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ plumbing
def test_experiment_result_csv_roundtrip(tmp_path):
    res = E.ExperimentResult("x", {"a": np.array([1, 2]), "b": np.array([0.5, np.nan]),
                                   "c": np.array(["u", "v"])}, {}, {})
    path = tmp_path / "x.csv"
    res.to_csv(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["a", "b", "c"], ["1", "0.5", "u"], ["2", "nan", "v"]]


def test_run_rejects_unknown_figure():
    with pytest.raises(ValueError, match="unknown figure 'fig9'"):
        E.run("fig9")


def test_registry_covers_every_figure_and_mode():
    for name, fig in FIGURES.items():
        assert fig.name == name
        assert set(fig.presets) == set(MODES)
        assert callable(getattr(E, fig.experiment))
    assert set(plots.PLOTTERS) == set(FIGURES) | {"demo"}


def test_progress_callback_is_used():
    seen = []

    def progress(iterable, desc=None, total=None):
        seen.append(desc)
        return iterable

    E.run("lipschitz-law", "tiny", progress=progress)
    assert seen == ["supports"]


def test_format_summary_nested():
    text = E.format_summary({"a": 1.23456, "b": {"c": 1e-9, "d": None}, "e": True})
    assert text.splitlines() == ["a: 1.235", "b:", "  c: 1.000e-09", "  d: None", "e: True"]
