"""fastlista.distributed on a real dask.distributed cluster.

One ``LocalCluster`` for the module: 2 worker processes of one thread each, on
the loopback interface, closed by the fixture's finaliser. Every result is
compared with the single-machine one (``Lista.transform``, ``Lista.fit``,
``fastlista.solve_lasso``, the estimators' ``transform``).
"""
import importlib.util
import os
import re
import sys
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import reference as ref  # noqa: E402
from contract import (assert_certified, assert_same_optimum, gap_allowance,  # noqa: E402
                      half_sq_norms)
import fastlista  # noqa: E402
from fastlista import distributed as fd  # noqa: E402
from fastlista import Lista  # noqa: E402

CLIENT_PID = os.getpid()


@pytest.fixture(scope="module")
def client(request):
    """A 2-process local cluster on 127.0.0.1, closed at the end of the module."""
    import cloudpickle

    # this module's helpers travel by value: the workers need not import it
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       host="127.0.0.1", dashboard_address=None)
    client = distributed.Client(cluster)

    def close():
        client.close()
        cluster.close()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])

    request.addfinalizer(close)
    return client


@pytest.fixture(scope="module")
def data():
    X, D = ref.make_problem(n_samples=600, n_features=20, n_atoms=40, density=0.3,
                            noise=0.05, seed=21)
    return X, D


def chunked(X, rows=130):
    return da.from_array(X, chunks=(rows, X.shape[1]))


# ---------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("parametrization", ["step", "lista"])
def test_encode_lista_equals_single_machine(client, data, parametrization):
    X, D = data
    net = Lista(D, 0.3, n_layers=6, parametrization=parametrization)
    net.fit(X[:200], max_iter=10)
    Z = fd.encode(net, chunked(X))
    assert isinstance(Z, da.Array) and Z.chunks == ((130,) * 4 + (80,), (40,))
    assert_allclose(Z.compute(), net.transform(X), rtol=1e-12, atol=1e-14)


def test_encode_solver_settings_equals_solve_lasso(client, data):
    X, D = data
    settings = {"D": D, "lmbd": 0.3, "tol": 1e-10}
    Z = fd.encode(settings, chunked(X)).compute()
    assert_allclose(Z, fastlista.solve_lasso(X, D, 0.3, tol=1e-10).codes,
                    rtol=1e-12, atol=1e-14)
    assert_allclose(Z, ref.solve_exact(X, D, 0.3), atol=1e-6)


def test_encode_estimators_equal_single_machine(client, data):
    # float32 codes from two blockings (chunks of 130 rows on the workers, one
    # batch here) may differ by rounding: never compare them at rtol 1e-6
    # (that failed once, 4e-7 apart), only within what float32 guarantees
    pytest.importorskip("sklearn")
    from fastlista.estimators import LassoSparseCoder, LearnedSparseCoder

    X, D = data
    X32, D32 = X.astype(np.float32), D.astype(np.float32)
    tol = 1e-5                          # reachable in float32
    lasso = LassoSparseCoder(D, alpha=0.3, tol=tol, n_jobs=1).fit(X[:5])
    Z = fd.encode(lasso, chunked(X32))
    assert Z.dtype == np.float32
    Z_dask, Z_local = Z.compute(), lasso.transform(X32)
    # both certified: within tol of the optimum by the gap of the codes
    # returned (long double reference), and so their objectives within the
    # sum of their gaps
    results = []
    for codes in (Z_dask, Z_local):
        F, gap, allowed, _ = gap_allowance(X32, D32, 0.3, codes, np.float32)
        assert np.all(gap <= tol * half_sq_norms(X32) + allowed)
        results.append((F, gap, allowed))
    (F1, g1, a1), (F2, g2, a2) = results
    assert np.all(np.abs(F1 - F2) <= g1 + g2 + a1 + a2)

    # the network: the same arithmetic up to summation order, T layers of
    # products over m + n terms, each rounded in float32
    learned = LearnedSparseCoder(D, alpha=0.3, n_layers=5, max_iter=10).fit(X[:200])
    Z = fd.encode(learned, chunked(X32))
    assert Z.dtype == np.float32
    Z_dask, Z_local = Z.compute(), learned.transform(X32)
    T, (m, n) = 5, D.shape
    atol = T * (m + n) * np.finfo(np.float32).eps * np.abs(Z_local).max()
    assert_allclose(Z_dask, Z_local, rtol=0, atol=atol)


def test_encode_is_lazy_and_ships_the_model_once(client, data):
    """One map_blocks; the model is one key, serialised once per worker."""
    X, D = data
    net = Lista(D, 0.3, n_layers=4)
    counts = {}
    for rows in (150, 40):                       # 4 and 15 chunks
        Xd = chunked(X, rows)
        Z = fd.encode(_CountingModel(net), Xd)
        graph = Z.__dask_graph__()
        encode_layers = [name for name in graph.layers if name.startswith("fastlista-encode")]
        assert len(encode_layers) == 1
        assert len(graph.layers[encode_layers[0]]) == Xd.numblocks[0]
        Z = Z.compute()
        counts[rows] = _CountingModel.pickled
        _CountingModel.pickled = 0
        assert_allclose(Z, net.transform(X), rtol=1e-12, atol=1e-14)
    # the model crossed the wire as many times for 15 chunks as for 4: at most
    # once per worker (the client scatters it to both)
    assert counts[150] == counts[40] <= len(client.scheduler_info()["workers"])


def test_outputs_of_different_calls_never_share_keys(client, data):
    """Each call's graph has its own keys: results computed together, or one
    persisted on the cluster before another is computed, are each their own
    codes (a fixed key name made the second return the first's)."""
    X, D = data
    Xd, Xd_test = chunked(X[:300]), chunked(X[300:])
    exact = {lmbd: fastlista.solve_lasso(X, D, lmbd, tol=1e-10).codes
             for lmbd in (0.05, 0.5)}
    encodings = [fd.encode({"D": D, "lmbd": lmbd, "tol": 1e-10}, Xd)
                 for lmbd in (0.05, 0.5)]
    assert encodings[0].name != encodings[1].name
    for Z, lmbd in zip(dask.compute(*encodings), (0.05, 0.5)):
        assert_allclose(Z, exact[lmbd][:300], rtol=1e-12, atol=1e-14)
    # one persisted, the other computed after it
    first = encodings[0].persist()
    assert_allclose(encodings[1].compute(), exact[0.5][:300], rtol=1e-12, atol=1e-14)
    assert_allclose(first.compute(), exact[0.05][:300], rtol=1e-12, atol=1e-14)
    # one model, training and test signals computed together
    net = Lista(D, 0.3, n_layers=4)
    Z_train, Z_test = dask.compute(fd.encode(net, Xd), fd.encode(net, Xd_test))
    assert_allclose(Z_train, net.transform(X[:300]), rtol=1e-12, atol=1e-14)
    assert_allclose(Z_test, net.transform(X[300:]), rtol=1e-12, atol=1e-14)
    # solve_lasso at two levels on the same chunks
    results = [fd.solve_lasso(Xd, D, lmbd, tol=1e-10) for lmbd in (0.05, 0.5)]
    codes = dask.compute(*(res.codes for res in results))
    for Z, lmbd in zip(codes, (0.05, 0.5)):
        assert_allclose(Z, exact[lmbd][:300], rtol=1e-12, atol=1e-14)


def test_empty_chunks_are_encoded_and_skipped_in_training(client, data):
    """A filtered dask array has chunks of 0 rows: their codes are (0, m),
    whatever the model (estimators refuse 0 samples), and training ignores
    them."""
    X, D = data
    X = X[:400]
    Xd = da.from_array(X, chunks=((130, 0, 270, 0), (X.shape[1],)))
    net = Lista(D, 0.3, n_layers=4)
    models = [net, {"D": D, "lmbd": 0.3, "tol": 1e-10}]
    expected = [net.transform(X), fastlista.solve_lasso(X, D, 0.3, tol=1e-10).codes]
    if _has_sklearn():
        from fastlista.estimators import LassoSparseCoder

        models.append(LassoSparseCoder(D, alpha=0.3, tol=1e-10).fit(X[:5]))
        expected.append(expected[1])
    for model, Z_ref in zip(models, expected):
        Z = fd.encode(model, Xd)
        assert Z.chunks[0] == Xd.chunks[0]
        assert_allclose(Z.compute(), Z_ref, rtol=1e-12, atol=1e-14)
    local = Lista(D, 0.3, n_layers=4).fit(X, max_iter=10)
    dist = fd.fit(Lista(D, 0.3, n_layers=4), Xd, max_iter=10)
    assert_allclose(dist.loss_history_, local.loss_history_, rtol=1e-9)


def _has_sklearn():
    return importlib.util.find_spec("sklearn") is not None


class _CountingModel:
    """A Lista wrapper that counts how often the client pickles it."""

    pickled = 0

    def __init__(self, net):
        self.net = net

    def transform(self, X):
        return self.net.transform(X)

    def __reduce__(self):
        if os.getpid() == CLIENT_PID:
            type(self).pickled += 1
        return (_CountingModel, (self.net,))


# ---------------------------------------------------------------------------
# solve_lasso
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["auto", "fista"])
def test_solve_lasso_equals_single_machine(client, data, method):
    X, D = data
    res = fd.solve_lasso(chunked(X), D, 0.3, method=method, tol=1e-10)
    assert all(isinstance(a, da.Array) for a in (res.codes, res.gap, res.n_iter,
                                                  res.converged))
    codes, gap, n_iter, converged = dask.compute(res.codes, res.gap, res.n_iter,
                                                 res.converged)
    local = fastlista.solve_lasso(X, D, 0.3, method=method, tol=1e-10, n_jobs=1)
    assert res.method == local.method
    assert_allclose(codes, local.codes, rtol=1e-12, atol=1e-14)
    assert_allclose(gap, local.gap, rtol=1e-8, atol=1e-14)   # gaps are ~1e-11
    assert_array_equal(n_iter, local.n_iter)
    assert_array_equal(converged, local.converged) and converged.all()
    assert n_iter.dtype == local.n_iter.dtype


def test_solve_lasso_float32_and_warm_start(client, data):
    X, D = data
    X32, D32 = X.astype(np.float32), D.astype(np.float32)
    # (a tolerance float32 codes can be certified to)
    res = fd.solve_lasso(chunked(X32), D32, 0.3, tol=1e-5)
    assert res.codes.dtype == np.float32 and res.gap.dtype == np.float32
    local = fastlista.solve_lasso(X32, D32, 0.3, tol=1e-5, n_jobs=1)
    # chunked and whole-batch runs differ in their blocking: certified, and
    # equal within their certificates, never compared more tightly
    res = fastlista.LassoResult(*(np.asarray(a) for a in dask.compute(
        res.codes, res.gap, res.n_iter, res.converged)))
    assert_certified(X32, D32, 0.3, 1e-5, res)
    assert_same_optimum(X32, D32, 0.3, res, local)
    # warm start from the solution: (almost) nothing left to do
    Z0 = da.from_array(local.codes.astype(np.float64), chunks=(200, 40))
    warm = fd.solve_lasso(chunked(X), D, 0.3, Z0=Z0, tol=1e-10)
    warm = fastlista.LassoResult(*(np.asarray(a) for a in dask.compute(
        warm.codes, warm.gap, warm.n_iter, warm.converged)))
    assert_certified(X, D, 0.3, 1e-10, warm)
    assert warm.n_iter.mean() <= 3
    assert_same_optimum(X, D, 0.3, warm, fastlista.solve_lasso(X, D, 0.3, tol=1e-10))


def test_solve_lasso_without_atoms_is_defined_like_the_local_one(client):
    """No atoms: (n, 0) codes and the gap 0 (the dual point x itself is
    feasible), as fastlista.solve_lasso gives (docs/reliability.md)."""
    X = np.arange(12.0).reshape(4, 3)
    res = fd.solve_lasso(chunked(X), np.zeros((0, 3)), 0.5)
    codes, gap, n_iter, converged = dask.compute(res.codes, res.gap, res.n_iter,
                                                 res.converged)
    assert codes.shape == (4, 0)
    assert_array_equal(gap, 0.0)
    assert_array_equal(n_iter, 0) and converged.all()


def test_solve_lasso_big_endian_float32_is_float32(client, data):
    """'>f4' chunks are float32 data (the local solver's rule): float32 codes
    equal to those of '<f4' chunks, not float64 ones."""
    X, D = data
    X32, D32 = X.astype(np.float32), D.astype(np.float32)
    res = fd.solve_lasso(chunked(X32.astype(">f4")), D32.astype(">f4"), 0.3, tol=1e-5)
    native = fd.solve_lasso(chunked(X32), D32, 0.3, tol=1e-5)
    codes, expected = dask.compute(res.codes, native.codes)
    assert res.codes.dtype == codes.dtype == np.float32
    assert_array_equal(codes, expected)


@pytest.mark.parametrize("n_jobs", ["default", 1, 2, None])
def test_solve_lasso_tasks_run_n_jobs_threads(data, monkeypatch, n_jobs):
    """Each task runs n_jobs threads: 1 by default, None every core, as in
    encode and fit (distributed.solve_lasso took None for one thread, the
    opposite of its siblings and of the README). Recorded from the solver
    each task calls, on dask's synchronous scheduler."""
    X, D = data
    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs["n_jobs"])
        return fastlista.solve_lasso(*args, **kwargs)

    monkeypatch.setattr(fd, "_solve", recording)
    kw = {} if n_jobs == "default" else dict(n_jobs=n_jobs)
    # (graph and tasks in this process, whether or not another test's
    # cluster is the default client)
    with dask.config.set(scheduler="synchronous"):
        res = fd.solve_lasso(chunked(X), D, 0.3, **kw)
        seen.clear()                     # (the client's one-sample run of "auto")
        codes = res.codes.compute()
    assert seen and set(seen) == {1 if n_jobs == "default" else n_jobs}
    assert_allclose(codes, fastlista.solve_lasso(X, D, 0.3, n_jobs=1).codes,
                    rtol=1e-6, atol=1e-8)


def test_solve_lasso_messages(data):
    X, D = data
    with pytest.raises(ValueError, match="X has 19 features, but D has 20 features"):
        fd.solve_lasso(chunked(X[:, :19]), D, 0.3)
    with pytest.raises(fastlista.InvalidParameterError, match="The 'lmbd' parameter"):
        fd.solve_lasso(chunked(X), D, -1.0)
    with pytest.raises(ValueError, match="2-D dask array"):
        fd.solve_lasso(da.ones(5), D, 0.3)
    # a dask lmbd is checked chunk by chunk, its samples named as X numbers them
    lam = np.full(X.shape[0], 0.3)
    lam[[265, 301]] = [np.nan, -1.0]          # in the chunk of rows 260-389
    with pytest.raises(fastlista.InvalidParameterError, match=r"samples \[265, 301\]"):
        fd.solve_lasso(chunked(X), D, da.from_array(lam, chunks=100)).codes.compute()
    # a dask lmbd of a dtype no lmbd array may have is refused at once, by
    # name, as a NumPy one is (bools were cast to 0 and 1 on the workers)
    for bad in (lam > 0, lam.astype(complex), lam.astype(str), lam.astype("m8[s]"),
                lam.astype(object)):
        dtype = re.escape(str(bad.dtype))
        with pytest.raises(fastlista.InvalidParameterError,
                           match=rf"The 'lmbd' parameter.*dask array of dtype {dtype} "):
            fd.solve_lasso(chunked(X), D, da.from_array(bad, chunks=100))
    # a 0-d dask lmbd is every sample's, as a 0-d NumPy one (it was refused
    # for its shape)
    codes = fd.solve_lasso(chunked(X), D, da.from_array(np.array(0.3))).codes.compute()
    assert_array_equal(codes, fd.solve_lasso(chunked(X), D, 0.3).codes.compute())
    # a solution beyond the float range: the chunk's numbering is stated
    Xs = X.copy()
    Xs[263] *= 1e200
    with pytest.raises(FloatingPointError,
                       match=r"samples \[3\].*chunk starting at sample 260 of X"):
        fd.solve_lasso(chunked(Xs), D * 1e-200, 0.3).codes.compute()


# ---------------------------------------------------------------------------
# fit: data-parallel training
# ---------------------------------------------------------------------------

def _worker_chunk(block_id=None, n_rows=None, client_pid=None):
    """A chunk of signals generated on a worker (never on the client)."""
    assert os.getpid() != client_pid, "a chunk was computed on the client"
    i = block_id[0]
    X, _ = ref.make_problem(n_samples=600, n_features=20, n_atoms=40, density=0.3,
                            noise=0.05, seed=21)
    return X[i * n_rows:(i + 1) * n_rows]


@pytest.mark.parametrize("parametrization,loss,per_layer", [
    ("step", "unsupervised", "oneshot"),
    ("coupled", "unsupervised", "oneshot"),
    ("alista", "supervised", "oneshot"),
    ("step", "semi-supervised", "oneshot"),
    ("lista", "unsupervised", "recursive"),
])
def test_fit_equals_single_machine(client, data, parametrization, loss, per_layer):
    X, D = data
    lmbd, T, it = 0.3, 5, 15
    Z_target = ref.solve_exact(X, D, lmbd) if loss == "supervised" else None
    local = Lista(D, lmbd, T, parametrization=parametrization)
    local.fit(X, loss=loss, Z_target=Z_target, max_iter=it, per_layer=per_layer)

    # the chunks are generated on the workers and stay there
    Xd = da.map_blocks(_worker_chunk, dtype=np.float64, chunks=((150,) * 4, (20,)),
                       n_rows=150, client_pid=CLIENT_PID)
    Zd = None if Z_target is None else da.from_array(Z_target, chunks=(300, 40))
    net = Lista(D, lmbd, T, parametrization=parametrization)
    out = fd.fit(net, Xd, loss=loss, Z_target=Zd, max_iter=it, per_layer=per_layer)
    assert out is net
    # the semi-supervised targets are Lasso solutions to a relative gap of
    # 1e-8, computed per chunk here and on the whole batch there: they agree
    # to ~1e-10, not to the rounding of a sum
    rtol = 1e-6 if loss == "semi-supervised" else 1e-9
    assert_allclose(net.loss_history_, local.loss_history_, rtol=rtol)
    for ours, theirs in zip(net.parameters, local.parameters):
        for k in theirs:
            assert_allclose(ours[k], theirs[k], rtol=1e-6 if rtol < 1e-6 else 1e-4,
                            atol=1e-9 * np.abs(theirs[k]).max())
    if loss == "unsupervised":
        assert net.objective(X) < Lista(D, lmbd, T, parametrization).objective(X)


@pytest.mark.parametrize("loss", ["unsupervised", "supervised"])
def test_fit_trains_signals_whose_loss_is_below_the_smallest_double(client, data, loss):
    """Signals and lmbd times 2**-560: the loss (about 4**-560) is below the
    smallest double. The chunks train in the units of the whole array, as
    Lista.fit does: the network trained on the data at scale 1, and the
    history its losses times 4**-560, here 0 (it trained nothing: every
    loss and gradient was 0)."""
    X, D = data
    e, lmbd, T, it = -560, 0.3, 4, 10
    Z_target = ref.solve_exact(X, D, lmbd) if loss == "supervised" else None
    local = Lista(D, lmbd, T).fit(X, loss=loss, Z_target=Z_target, max_iter=it)
    Zd = None if Z_target is None else da.from_array(np.ldexp(Z_target, e), chunks=(300, 40))
    net = fd.fit(Lista(D, np.ldexp(lmbd, e), T), chunked(np.ldexp(X, e), 150), loss=loss,
                 Z_target=Zd, max_iter=it)
    assert len(net.loss_history_) == len(local.loss_history_) > 3
    assert net.loss_history_ == np.ldexp(local.loss_history_, 2 * e).tolist()
    alphas = [float(p["alpha"]) for p in net.parameters]
    assert_allclose(alphas, [float(p["alpha"]) for p in local.parameters], rtol=1e-6)
    assert not np.allclose(alphas, [float(p["alpha"]) for p in Lista(D, lmbd, T).parameters])


def test_semi_supervised_fit_at_lmbd_zero_takes_least_squares_targets(client):
    """Per-sample lmbd (a dask array) with zeros: those samples' targets are
    least squares chunk by chunk, as Lista.fit's, the others certified
    Lasso solutions (they ran 10 000 iterations of coordinate descent a
    sample, and warned on the workers)."""
    rng = np.random.RandomState(4)
    D, X = rng.randn(12, 20), rng.randn(300, 20)
    lam = np.where(np.arange(300) % 3 == 0, 0.0, 0.4)
    local = Lista(D, 0.4, 3).fit(X, loss="semi-supervised", lmbd=lam, max_iter=8)
    net = fd.fit(Lista(D, 0.4, 3), chunked(X, 70), loss="semi-supervised",
                 lmbd=da.from_array(lam, chunks=70), max_iter=8)
    assert_allclose(net.loss_history_, local.loss_history_, rtol=1e-6)
    # the first loss against targets computed here: lstsq and the reference
    targets = np.where((lam == 0)[:, None], np.linalg.lstsq(D.T, X.T, rcond=None)[0].T,
                       ref.solve_exact(X, D, lam))
    Z = Lista(D, 0.4, 3).transform(X, lmbd=lam)
    assert_allclose(net.loss_history_[0], np.mean(0.5 * np.sum((Z - targets) ** 2, axis=1)),
                    rtol=1e-6)


@pytest.mark.parametrize("parametrization", ["step", "coupled", "alista", "lista"])
def test_fit_that_accepts_no_step_leaves_the_parameters_bit_for_bit(client, data,
                                                                    parametrization):
    """lmbd 100 times lambda_max: every code and gradient is 0, no step
    moves, and the parameters handed in come back bit for bit (values off
    their untrained ones, v + u |v|: before, their round trip through the
    training units moved some by an ulp)."""
    X, D = data
    lmbd = 100 * float(np.max(np.abs(X @ D.T)))
    net = Lista(D, lmbd, 3, parametrization=parametrization)
    rng = np.random.default_rng(5)
    params = net.parameters
    for layer in params:
        for k, v in layer.items():
            layer[k] = v + rng.uniform(-0.5, 0.5, size=v.shape) * np.abs(v)
    net.set_parameters(params)
    start = net.parameters
    fd.fit(net, da.from_array(X, chunks=(150, 20)), max_iter=5)
    for layer, handed in zip(net.parameters, start):
        for k in handed:
            assert_array_equal(layer[k], handed[k], strict=True)


@pytest.mark.parametrize("last_chunk_factor, warns", [(0.5, True), (1.01, False)])
def test_fit_ending_on_all_zero_codes_says_so_as_single_machine(client, data,
                                                                 last_chunk_factor, warns):
    """A network whose thresholds (1e6 lmbd) cut every code to 0 has a zero
    gradient: fit warns, as Lista.fit does, where some chunk's signal has
    lmbd below its lambda_max (the NumPy reference; here only the last
    chunk's), and not where every zero code is the Lasso solution.
    Per-sample lmbd, over the chunks."""
    X, D = data
    top = float(np.max(ref.lambda_max(X, D)))
    lam = np.full(X.shape[0], 1.01 * top)
    lam[-80:] = last_chunk_factor * top
    net = Lista(D, float(lam[0]), 3, parametrization="alista")
    params = net.parameters
    for layer in params:
        layer["theta"] = np.full_like(layer["theta"], 1e6)
    net.set_parameters(params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fd.fit(net, chunked(X), max_iter=5, lmbd=da.from_array(lam, chunks=170))
    flat = [w for w in caught if issubclass(w.category, fastlista.TrainingWarning)
            and "gradient of the loss is exactly 0" in str(w.message)]
    assert len(flat) == warns
    assert not np.any(net.transform(X))


def test_fit_with_per_sample_lmbd_on_a_client_equals_single_machine(client, data):
    """The persisted lmbd column stays referenced while training: a client
    released a temporary one at once, and the first evaluation lost it."""
    X, D = data
    lam = 0.1 + 0.3 * np.random.default_rng(3).random(X.shape[0])
    local = Lista(D, 0.2, 3).fit(X, max_iter=5, lmbd=lam)
    for lmbd in (lam, da.from_array(lam, chunks=170), 0.3):
        net = fd.fit(Lista(D, 0.2, 3), chunked(X), max_iter=5, lmbd=lmbd)
        expected = Lista(D, 0.2, 3).fit(X, max_iter=5, lmbd=0.3) \
            if isinstance(lmbd, float) else local
        # (chunked sums round differently: the tolerances of
        # test_fit_equals_single_machine, which L-BFGS's amplification fits)
        assert_allclose(net.loss_history_, expected.loss_history_, rtol=1e-9)
        x, x_ref = net.training_vector(), expected.training_vector()
        assert_allclose(x, x_ref, rtol=1e-4, atol=1e-9 * np.abs(x_ref).max())


def test_fit_gradient_is_the_single_machine_gradient(client, data):
    """One evaluation of the distributed objective: the mean loss and gradients."""
    X, D = data
    net = Lista(D, 0.3, 4, parametrization="lista")
    Xp = chunked(X, 170).persist()          # referenced: its chunks stay on the workers
    blocks = list(zip(Xp.to_delayed().ravel(), [None] * 4, [None] * 4))
    evaluate = fd._chunked_objective(fd._ship(net), blocks, "unsupervised", X.shape[0], 0)
    for depth in (2, 4):
        x = net.training_vector(depth)
        value, grad = evaluate(x, depth)
        value_ref, grad_ref = net.training_loss_and_grad(net.training_data(X), depth)
        assert_allclose(value, value_ref, rtol=1e-12)
        assert_allclose(grad, grad_ref, rtol=1e-9, atol=1e-12 * np.abs(grad_ref).max())
    # at full depth, the flat gradient is that of loss_and_grad, key by key
    value_4, grads = net.loss_and_grad(X)
    assert_allclose(value, value_4, rtol=1e-12)
    assert_allclose(grad_ref, np.concatenate(
        [np.ravel(g[k]) * u for g in grads for k, u in
         (("W_z", 1.0), ("W_x", 1 / net.lipschitz_), ("theta", 1 / net.lipschitz_))]),
        rtol=1e-12)


def test_fit_messages(data):
    X, D = data
    net = Lista(D, 0.3, 3)
    with pytest.raises(fastlista.InvalidParameterError, match="net must be a fastlista Lista"):
        fd.fit(object(), chunked(X))
    with pytest.raises(ValueError, match="X has 19 features, but the network's D has 20"):
        fd.fit(net, chunked(X[:, :19]))
    with pytest.raises(ValueError, match="Z_target is required for loss='supervised'"):
        fd.fit(net, chunked(X), loss="supervised")
    with pytest.raises(ValueError, match=r"Z_target must have shape \(n_samples, n_atoms\)"):
        fd.fit(net, chunked(X), loss="supervised", Z_target=da.zeros((600, 3)))
    with pytest.raises(fastlista.InvalidParameterError, match="The 'optimizer' parameter"):
        fd.fit(net, chunked(X), optimizer="adam")
    # nothing was trained by the failed calls
    for layer in net.parameters:
        assert_allclose(layer["alpha"], 1 / net.lipschitz_, rtol=1e-12)


def test_encode_messages(data):
    X, D = data
    with pytest.raises(fastlista.InvalidParameterError, match="model must be"):
        fd.encode(object(), chunked(X))
    with pytest.raises(fastlista.InvalidParameterError, match="keys 'D' and 'lmbd'"):
        fd.encode({"D": D}, chunked(X))
    with pytest.raises(fastlista.InvalidParameterError, match="Unknown solver settings"):
        fd.encode({"D": D, "lmbd": 0.1, "record_history": True}, chunked(X))
    # the user's X, not the one-sample probe (its message said X.shape=(1, 19)),
    # for each kind of model; parameters named by the function's full name
    X19 = chunked(X[:, :19])
    models = [Lista(D, 0.3, 2), {"D": D, "lmbd": 0.3}]
    if _has_sklearn():
        from fastlista.estimators import LassoSparseCoder

        models.append(LassoSparseCoder(D).fit(X[:5]))
    for model in models:
        with pytest.raises(ValueError, match=r"^X has 19 features, but the model takes 20 "
                                             r"\(X.shape=\(600, 19\)\)\.$"):
            fd.encode(model, X19)
    with pytest.raises(fastlista.InvalidParameterError,
                       match="'lmbd' parameter of fastlista.distributed.encode must"):
        fd.encode({"D": D, "lmbd": -1.0}, chunked(X))
    # one lmbd a sample is solve_lasso's (the README's "wherever lmbd is an
    # argument"): the message says where to go
    for lam in (np.full(X.shape[0], 0.1), [0.1] * X.shape[0], da.full(X.shape[0], 0.1),
                [0.1, [0.2, 0.3]]):
        with pytest.raises(fastlista.InvalidParameterError,
                           match=r"one float for every sample .*distributed\.solve_lasso"):
            fd.encode({"D": D, "lmbd": lam}, chunked(X))
    with pytest.raises(fastlista.InvalidParameterError,
                       match="'n_jobs' parameter of fastlista.distributed.encode"):
        fd.encode({"D": D, "lmbd": 0.1}, chunked(X), n_jobs=0)
    # every setting is named as encode's (they were checked by the client's
    # one-sample probe, whose messages named solve_lasso)
    for name, value in [("method", "bogus"), ("tol", -1.0), ("max_iter", 0),
                        ("positive", 1), ("n_jobs", 0)]:
        with pytest.raises(fastlista.InvalidParameterError,
                           match=f"^The '{name}' parameter of fastlista.distributed.encode "):
            fd.encode({"D": D, "lmbd": 0.1, name: value}, chunked(X))


# ---------------------------------------------------------------------------
# learn_dictionary: batch dictionary learning with the code step on the workers
# ---------------------------------------------------------------------------

def _worker_signals(block_id=None, n_rows=None, client_pid=None):
    """A chunk of signals of a known dictionary, generated on a worker."""
    assert os.getpid() != client_pid, "a chunk was computed on the client"
    X, _, _ = ref.make_dictionary_problem(n_samples=800, n_features=12, n_atoms=20,
                                          noise=0.05, seed=40)
    i = block_id[0]
    return X[i * n_rows:(i + 1) * n_rows]


@pytest.mark.parametrize("with_D0", [False, True])
def test_learn_dictionary_equals_single_machine(client, with_D0):
    """The chunks (generated on the workers) stay there with their codes; only
    D (broadcast once a pass) and the statistics (summed in a tree) travel.
    The result is the local batch method's up to the rounding of the sums:
    dictionaries to 1e-8, objectives to 1e-10 relative (measured on this
    2-worker cluster: 2.1e-15 and 4.4e-16; with the re-initialised atom
    3.3e-15 and 4.4e-16)."""
    from fastlista.dictionary import initial_dictionary, learn_dictionary

    X, _, _ = ref.make_dictionary_problem(n_samples=800, n_features=12, n_atoms=20,
                                          noise=0.05, seed=40)
    D0 = initial_dictionary(X, 20, np.random.RandomState(5)) if with_D0 else None
    if with_D0:
        D0[3] = 0                              # an unused atom: re-initialised
    Xd = da.map_blocks(_worker_signals, dtype=np.float64, chunks=((200,) * 4, (12,)),
                       n_rows=200, client_pid=CLIENT_PID)
    seen = []
    res = fd.learn_dictionary(Xd, 20, 0.3, max_iter=8, tol=0, D0=D0, random_state=0,
                              callback=lambda info: seen.append(info["step"]))
    local = learn_dictionary(X, 20, 0.3, method="batch", max_iter=8, tol=0, D0=D0,
                             random_state=0, n_jobs=1)
    assert (res.n_iter, res.n_steps, res.method, res.coder) == (8, 8, "batch", "cd")
    assert res.n_reinit == local.n_reinit == (1 if with_D0 else 0)
    assert seen == list(range(1, 9))
    assert_allclose(res.D, local.D, rtol=0, atol=1e-8)
    assert_allclose(res.objective, local.objective, rtol=1e-10)
    assert np.all(np.diff(res.objective) <= 1e-12 * res.objective[:-1])


def test_learn_dictionary_on_copies_of_signals_equals_single_machine(client):
    """4 distinct signals copied 10 times, D0 with 4 zero atoms: the atoms
    re-initialised were copies of one residual, the Lasso's codes split
    between them any way, and a 1-ulp difference of the chunked sums sent
    the Dask run 0.93 away from the local dictionary (objectives 2.4e-12
    apart). Re-initialised atoms take distinct directions: the runs agree
    to the rounding of the sums."""
    from fastlista.dictionary import learn_dictionary

    rng = np.random.RandomState(1)
    rng.randn(40, 6)            # (the draws of the first failing example)
    X = np.repeat(rng.randn(4, 6), 10, axis=0)
    D0 = rng.randn(8, 6)
    D0[[0, 2, 5, 7]] = 0
    local = learn_dictionary(X, 8, 0.3, method="batch", D0=D0, random_state=0, n_jobs=1)
    res = fd.learn_dictionary(chunked(X, 3), 8, 0.3, D0=D0, random_state=0)
    assert res.n_reinit == local.n_reinit > 0
    assert_allclose(res.D, local.D, rtol=0, atol=1e-8)
    assert_allclose(res.objective, local.objective, rtol=1e-10)


@pytest.mark.parametrize("k", [600, -600])
def test_learn_dictionary_scaled_far_from_one_equals_single_machine(client, k):
    """X far from 1 (beyond 2**+-100) is scaled by the exact power of two found
    on the workers, as the local batch method scales it: the atoms equal the
    local ones up to the rounding of the sums (1e-8; the local ones are
    exactly those of the unscaled data), the objectives too (in X's units:
    2**1200 times a mean objective overflows to inf in both). Unscaled, 2**600
    fails on NaN atoms and 2**-600 learns other atoms (A = Z^T Z
    underflows)."""
    from fastlista.dictionary import learn_dictionary

    X, _, _ = ref.make_dictionary_problem(n_samples=400, n_features=12, n_atoms=20,
                                          noise=0.05, seed=41)
    X = np.ldexp(X, k)
    lmbd = float(np.ldexp(0.3, k))
    res = fd.learn_dictionary(chunked(X, 100), 20, lmbd, max_iter=5, tol=0, random_state=0)
    local = learn_dictionary(X, 20, lmbd, method="batch", max_iter=5, tol=0, random_state=0,
                             n_jobs=1)
    assert res.n_reinit == local.n_reinit
    assert_allclose(res.D, local.D, rtol=0, atol=1e-8)
    assert_allclose(res.objective, local.objective, rtol=1e-10)


def _offset_signals():
    """Signals at an offset of 1e7 varying by ~3: the form 1/2||x||^2 - <B, D>
    + 1/2 <A, D D^T> of the objective cancels there (it read 6e-8 off)."""
    rng = np.random.RandomState(0)
    return 1e7 + rng.randn(200, 8) @ rng.randn(8, 8)


@pytest.mark.parametrize("stop", ["max_iter", "tol", "callback"])
def test_learn_dictionary_history_and_stops_equal_single_machine(client, stop):
    """The history is evaluated from the residuals, as the local one is (an
    iteration's entry by the next pass over the chunks, the last one by an
    extra pass): at an offset of 1e7 it equals the local history (checked
    against long double arithmetic in tests/test_dictionary.py; the old
    form stopped a tol=0 run after 5 of 8 iterations on a false increase).
    A stop on tol or by the callback ends at the local method's iteration,
    the callbacks seeing the same states."""
    from fastlista.dictionary import learn_dictionary

    X = _offset_signals()
    tol = 1e-3 if stop == "tol" else 0
    calls = {"dask": [], "local": []}

    def recorder(name):
        def callback(info):
            calls[name].append(info)
            return stop == "callback" and info["iteration"] == 2
        return callback
    res = fd.learn_dictionary(chunked(X, 60), 10, 0.5, max_iter=8, tol=tol,
                              random_state=0, callback=recorder("dask"))
    local = learn_dictionary(X, 10, 0.5, method="batch", max_iter=8, tol=tol,
                             random_state=0, n_jobs=1, callback=recorder("local"))
    n_iter = {"max_iter": 8, "tol": local.n_iter, "callback": 3}[stop]
    assert res.n_iter == local.n_iter == n_iter
    assert res.converged == local.converged == (stop == "tol")
    if stop == "tol":
        assert n_iter < 8
    assert_allclose(res.objective, local.objective, rtol=1e-12)
    assert np.all(np.diff(res.objective) <= 1e-12 * res.objective[:-1])
    assert_allclose(res.D, local.D, rtol=0, atol=1e-8)
    assert [c["step"] for c in calls["dask"]] == list(range(1, n_iter + 1))
    for got, want in zip(calls["dask"], calls["local"]):
        for key in ("iteration", "step", "n_reinit"):
            assert got[key] == want[key]
        assert_allclose(got["objective"], want["objective"], rtol=1e-12)
        assert_allclose(got["D"], want["D"], rtol=0, atol=1e-8)


def test_learn_dictionary_breaks_ties_like_the_local_method(client):
    """Equally bad signals: the lowest indices re-initialise the atoms, in
    every chunk and in the merge of chunks alike. +-1 signals (||x||^2 = 8
    for all) at lmbd = 2.7, above every |x . d| of D0: every atom is
    re-initialised, to x / ||x|| of signals 0, 1, 2, 3, which the chunks
    (2, 98, 200) split (the old selection: other signals locally and on
    Dask, 0.7 apart)."""
    from fastlista.dictionary import learn_dictionary

    rng = np.random.RandomState(0)
    X = rng.choice([-1.0, 1.0], size=(300, 8))
    D0 = np.linalg.qr(rng.randn(8, 8))[0][:4]
    Xd = da.from_array(X, chunks=((2, 98, 200), (8,)))
    res = fd.learn_dictionary(Xd, 4, 2.7, D0=D0, max_iter=1, tol=0)
    local = learn_dictionary(X, 4, 2.7, method="batch", D0=D0, max_iter=1, tol=0,
                             n_jobs=1)
    assert res.n_reinit == local.n_reinit == 4
    assert_allclose(res.D, X[:4] / np.sqrt(8), rtol=0, atol=1e-15)
    assert_allclose(local.D, X[:4] / np.sqrt(8), rtol=0, atol=1e-15)


@pytest.mark.parametrize("k", [0, 300])
def test_learn_dictionary_with_empty_chunks_equals_single_machine(client, k):
    """A filtered dask array has chunks of 0 rows (first, inside, last): the
    pass that checks X and finds its scale (k = 300: X scaled by 2**-300 on
    the workers), the draw of the initial atoms, the code steps and the
    last objective's pass skip them; the result is the local one."""
    from fastlista.dictionary import learn_dictionary

    rng = np.random.RandomState(0)
    X = np.ldexp(rng.randn(90, 6), k)
    X[30:45, 0] = -np.ldexp(1.0, k)        # one chunk loses all its rows to the filter
    Xd = da.from_array(X, chunks=(15, 6))
    Xf = Xd[Xd[:, 0] > -np.ldexp(1.0, k)]
    Xf.compute_chunk_sizes()
    assert Xf.chunks[0] == (12, 13, 0, 10, 15, 9)
    X = Xf.compute()
    local = learn_dictionary(X, 8, float(np.ldexp(0.4, k)), method="batch", max_iter=3,
                             tol=0, random_state=0, n_jobs=1)
    # and empty chunks at both ends
    for Xd in (Xf, Xf.rechunk(((0, 12, 13, 0, 10, 15, 9, 0), (6,)))):
        res = fd.learn_dictionary(Xd, 8, float(np.ldexp(0.4, k)), max_iter=3, tol=0,
                                  random_state=0)
        assert res.n_iter == local.n_iter == 3
        assert_allclose(res.D, local.D, rtol=0, atol=1e-8)
        assert_allclose(res.objective, local.objective, rtol=1e-10)


def test_learn_dictionary_fewer_signals_than_atoms_equals_single_machine(client):
    """5 signals for 8 atoms, in chunks of 2: the initial dictionary takes
    every signal and 3 random atoms, as locally; the result is the local one,
    which is optimal (each signal on its own atom: lmbd ||x|| - lmbd^2 / 2)."""
    from fastlista.dictionary import learn_dictionary

    rng = np.random.RandomState(0)
    X = rng.randn(5, 6)
    res = fd.learn_dictionary(da.from_array(X, chunks=(2, 6)), 8, 0.1, max_iter=20,
                              random_state=0)
    local = learn_dictionary(X, 8, 0.1, method="batch", max_iter=20, random_state=0,
                             n_jobs=1)
    assert res.converged and local.converged and res.n_iter == local.n_iter
    assert_allclose(res.D, local.D, rtol=0, atol=1e-8)
    norms = np.linalg.norm(X, axis=1)
    assert_allclose(res.objective[-1], np.mean(0.1 * norms - 0.005), rtol=1e-8)


def test_learn_dictionary_messages(data):
    X, _ = data
    with pytest.raises(fastlista.InvalidParameterError, match="The 'n_atoms' parameter"):
        fd.learn_dictionary(chunked(X), 0, 0.3)
    with pytest.raises(fastlista.InvalidParameterError, match="The 'lmbd' parameter"):
        fd.learn_dictionary(chunked(X), 5, -1.0)
    with pytest.raises(ValueError, match=r"D0 must have shape \(n_atoms, n_features\)"):
        fd.learn_dictionary(chunked(X), 5, 0.3, D0=np.ones((5, 3)))
    X_nan = X.copy()
    X_nan[3, 2] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        fd.learn_dictionary(chunked(X_nan), 5, 0.3)


@pytest.mark.parametrize("dtype", [np.complex128, "<U8", object])
def test_dask_arrays_that_are_not_real_numbers_are_refused(dtype):
    """Complex chunks lost their imaginary parts (a ComplexWarning) and text
    was parsed, in solve_lasso and learn_dictionary; refused by name, as
    locally. (An object dask array cannot be checked without computing it.)"""
    from fastlista.distributed import learn_dictionary
    X = np.arange(12.0).reshape(4, 3)
    bad = da.from_array(X.astype(dtype) if dtype is not object else X.astype(object),
                        chunks=2)
    D = np.eye(3)
    for call in (lambda: fd.solve_lasso(bad, D, 0.5),
                 lambda: learn_dictionary(bad, 2, 0.1, max_iter=1)):
        with pytest.raises(ValueError, match="X"):
            call()
