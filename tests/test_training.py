"""Training of unfolded networks (Lista.fit, fastlista._training)."""
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose

from fastlista import InvalidParameterError, solve_lasso
from fastlista import Lista
from fastlista import TrainingWarning
from fastlista._networks._parameters import STEP_FLOOR
from test_networks import lasso_F, make_problem, numpy_ista

N_LAYERS = 6


@pytest.fixture(scope="module")
def data():
    """Train and held-out signals (lambda_max = 1 per sample), and D."""
    X, D = make_problem(n_samples=600, n_atoms=20, n_features=10, seed=0)
    return X[:300], X[300:], D


def gap_to_optimum(X, D, lmbd, Z):
    """Mean F_x(Z) - F_x(z*) with z* from solve_lasso."""
    Z_star = solve_lasso(X, D, lmbd, tol=1e-12).codes
    return np.mean(lasso_F(X, D, lmbd, Z) - lasso_F(X, D, lmbd, Z_star))


@pytest.mark.parametrize("parametrization, optimizer, per_layer, lmbd", [
    ("step", "lbfgs", "oneshot", 0.3),
    ("step", "gd", "oneshot", 0.6),
    ("step", "lbfgs", "recursive", 0.6),
    ("coupled", "lbfgs", "oneshot", 0.1),
    ("coupled", "gd", "recursive", 0.3),
    ("lista", "lbfgs", "oneshot", 0.3),
])
def test_trained_network_beats_ista_on_held_out_data(data, parametrization, optimizer,
                                                     per_layer, lmbd):
    X_train, X_test, D = data
    net = Lista(D, lmbd, N_LAYERS, parametrization=parametrization)
    net.fit(X_train, optimizer=optimizer, per_layer=per_layer, max_iter=60)
    L = float(np.linalg.eigvalsh(D @ D.T)[-1])
    ista = numpy_ista(X_test, D, lmbd, N_LAYERS, L)[-1]
    gap_ista = gap_to_optimum(X_test, D, lmbd, ista)
    gap_net = gap_to_optimum(X_test, D, lmbd, net.transform(X_test))
    assert gap_net < 0.6 * gap_ista, (gap_net, gap_ista)
    # the history starts at the untrained loss (ISTA on the training set) and
    # a oneshot run never ends above it
    ista_train = numpy_ista(X_train, D, lmbd, 1 if per_layer == "recursive" else N_LAYERS, L)[-1]
    assert_allclose(net.loss_history_[0], lasso_F(X_train, D, lmbd, ista_train).mean(),
                    rtol=1e-9)
    if per_layer == "oneshot":
        assert net.loss_history_[-1] < net.loss_history_[0]
        assert_allclose(net.loss_history_[-1], net.objective(X_train), rtol=1e-9)
    for layer in net.parameters:
        for k, v in layer.items():
            assert np.all(np.isfinite(v))
            if k in ("alpha", "beta", "gamma", "theta"):
                assert np.all(v >= STEP_FLOOR / L * (1 - 1e-12))


def test_gd_history_is_monotone_and_steps_grow(data):
    X_train, _, D = data
    lmbd = 0.6
    net = Lista(D, lmbd, N_LAYERS)
    net.fit(X_train, optimizer="gd", max_iter=30, tol=0)
    h = np.asarray(net.loss_history_)
    assert len(h) >= 2
    assert np.all(np.diff(h) <= 0)
    # SLISTA learns steps larger than 1/L in the sparse regime (Ablin et al.)
    alphas = np.array([float(p["alpha"]) for p in net.parameters])
    assert np.max(alphas) > 1.2 / net.lipschitz_


def test_supervised_and_semi_supervised_training(data):
    X_train, X_test, D = data
    lmbd = 0.3
    Z_train = solve_lasso(X_train, D, lmbd, tol=1e-12).codes
    Z_test = solve_lasso(X_test, D, lmbd, tol=1e-12).codes

    def err(net):
        return np.mean(np.sum((net.transform(X_test) - Z_test) ** 2, axis=1))

    untrained = err(Lista(D, lmbd, N_LAYERS, parametrization="coupled"))
    sup = Lista(D, lmbd, N_LAYERS, parametrization="coupled")
    sup.fit(X_train, loss="supervised", Z_target=Z_train, max_iter=40)
    semi = Lista(D, lmbd, N_LAYERS, parametrization="coupled")
    semi.fit(X_train, loss="semi-supervised", max_iter=40)
    assert err(sup) < 0.7 * untrained
    # the same targets (up to the solver's tolerance): the same training
    assert_allclose(semi.loss_history_[0], sup.loss_history_[0], rtol=1e-6)
    assert err(semi) < 0.7 * untrained


def test_float32_training(data):
    X_train, X_test, D = data
    lmbd = 0.3
    net = Lista(D.astype(np.float32), lmbd, N_LAYERS)
    net.fit(X_train.astype(np.float32), max_iter=30)
    assert net.dtype == np.float32
    assert net.parameters[0]["alpha"].dtype == np.float32
    ista = Lista(D, lmbd, N_LAYERS).objective(X_test)
    assert net.objective(X_test.astype(np.float32)) < ista


def test_blow_up_rolls_back_with_a_warning(data, monkeypatch):
    """A non-finite loss anywhere is never accepted, nor left in the network."""
    X_train, _, D = data
    net = Lista(D, 0.3, 3)
    limit = 1.5 / net.lipschitz_
    true_loss_and_grad = Lista.training_loss_and_grad

    def exploding(self, *args):
        # beyond a step of 1.5 / L the "network diverges"
        f, g = true_loss_and_grad(self, *args)
        if any(float(p["alpha"]) > limit for p in self._params):
            f = np.nan
        return f, g

    monkeypatch.setattr(Lista, "training_loss_and_grad", exploding)
    for optimizer in ("lbfgs", "gd"):
        net = Lista(D, 0.3, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TrainingWarning)
            net.fit(X_train, optimizer=optimizer, max_iter=20)
        assert all(np.isfinite(h) for h in net.loss_history_)
        alphas = [float(p["alpha"]) for p in net.parameters]
        assert np.all(np.isfinite(alphas)) and max(alphas) <= limit
    # a network that is non-finite from the start is left as it is, and warns
    net = Lista(D, 0.3, 3)
    params = net.parameters
    params[0]["alpha"] = np.array(10.0 / net.lipschitz_)
    net.set_parameters(params)
    with pytest.warns(TrainingWarning, match="rolled"):
        net.fit(X_train, max_iter=5)
    assert_allclose(float(net.parameters[0]["alpha"]), 10.0 / net.lipschitz_)


def test_overflowing_network_never_ends_with_nan(data):
    X_train, _, D = data
    net = Lista(D, 0.3, 40)
    params = net.parameters
    for p in params:
        p["alpha"] = np.array(3.0 / net.lipschitz_)    # ISTA diverges for steps > 2/L
    net.set_parameters(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainingWarning)
        net.fit(X_train * 1e150, optimizer="gd", max_iter=5)
    for p in net.parameters:
        assert np.isfinite(p["alpha"])


def test_recursive_trains_every_layer(data):
    X_train, _, D = data
    net = Lista(D, 0.6, 4)
    net.fit(X_train, per_layer="recursive", max_iter=20)
    alphas = np.array([float(p["alpha"]) for p in net.parameters])
    assert np.all(np.abs(alphas * net.lipschitz_ - 1) > 1e-3)


def test_verbose_prints(data, capsys):
    X_train, _, D = data
    Lista(D, 0.3, 2).fit(X_train, max_iter=2, verbose=True)
    Lista(D, 0.3, 2).fit(X_train, optimizer="gd", max_iter=2, verbose=True)
    out = capsys.readouterr().out
    assert "lbfgs iteration 1" in out and "gd iteration 1" in out


def test_fit_validation(data):
    X_train, _, D = data
    net = Lista(D, 0.3, 2)
    with pytest.raises(InvalidParameterError, match="optimizer"):
        net.fit(X_train, optimizer="adam")
    with pytest.raises(InvalidParameterError, match="per_layer"):
        net.fit(X_train, per_layer="greedy")
    with pytest.raises(InvalidParameterError, match="loss"):
        net.fit(X_train, loss="l2")
    with pytest.raises(InvalidParameterError, match="max_iter"):
        net.fit(X_train, max_iter=0)
    with pytest.raises(InvalidParameterError, match="tol"):
        net.fit(X_train, tol=-1.0)
    with pytest.raises(ValueError, match="Z_target"):
        net.fit(X_train, loss="supervised")
    with pytest.raises(ValueError, match="features"):
        net.fit(X_train[:, :3])


@pytest.mark.parametrize("optimizer", ["lbfgs", "gd"])
def test_training_is_not_stopped_by_the_loss_offset(data, optimizer):
    """At large lmbd, F* dwarfs what training removes: the stopping rule is
    relative to the decrease, so training still runs (regression test)."""
    X_train, X_test, D = data
    lmbd = 0.8
    net = Lista(D, lmbd, N_LAYERS)
    gap_ista = gap_to_optimum(X_test, D, lmbd, net.transform(X_test))
    net.fit(X_train, optimizer=optimizer, max_iter=30)
    assert len(net.loss_history_) > 5
    assert gap_to_optimum(X_test, D, lmbd, net.transform(X_test)) < 0.1 * gap_ista
