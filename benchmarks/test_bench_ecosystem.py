"""Benchmarks of the ecosystem layer: threads, Dask, scikit-learn.

Each group times fastlista (``role="ours"``) beside its reference in the same
run; ``benchmarks/report.py`` prints median(ours) / median(reference):

* ``threads solve_lasso lmbd=...``: ``solve_lasso(..., n_jobs=2)`` vs
  ``n_jobs=1`` on the paper's problem (``problem`` fixture): the speed-up
  from 1 to 2 threads is 1 / ratio (target ratio <= 0.7, i.e. >= 1.4x);
* ``threads Lista.transform lmbd=0.8``: a 30-layer SLISTA, BLAS and OpenMP
  both limited to 2 threads vs to 1 (threadpoolctl);
* ``dask-encode``: :func:`fastlista.distributed.encode` of 10**6 samples
  (10**4 with ``FASTLISTA_BENCH_SMALL=1``), 64 features, 256 atoms, float32,
  a 10-layer SLISTA at lmbd = 0.8, followed by a count of the non-zeros per
  atom, against the same on one machine (``Lista.transform`` on the whole
  array, 2 OpenMP threads): once with dask's threaded scheduler, once on a
  ``distributed.LocalCluster`` of 2 one-thread worker processes holding the
  data (the transfer of the data is not timed; shipping the model is). The
  overhead of Dask is ratio - 1 (target ratio <= 1.5);
* ``denoise-encode``: ``examples/denoise_patches.py``'s denoising (quick
  mode with ``FASTLISTA_BENCH_SMALL=1``): ``LearnedSparseCoder.transform``
  (10 trained layers) and ``LassoSparseCoder.transform`` vs scikit-learn's
  ``SparseCoder(transform_algorithm="lasso_cd").transform`` on all noisy
  patches; ``extra_info["mse"]`` compares the denoised images (the learned
  coder may lose at most 10 % of MSE, about 0.4 dB of PSNR).

Run::

    pytest benchmarks/test_bench_ecosystem.py --benchmark-only
"""
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import fastlista
from fastlista.datasets import make_coding
from fastlista import Lista
from interleave import small_problems

threadpoolctl = pytest.importorskip("threadpoolctl")




def _rounds(benchmark, func, *args, rounds=3, **kwargs):
    """``rounds`` timed calls after one warm-up; records the load average.

    Thread speed-ups need idle cores: ``extra_info["loadavg_1min"]`` (before
    the timed calls) says whether other processes competed for them.
    """
    benchmark.extra_info["loadavg_1min"] = os.getloadavg()[0]
    benchmark.extra_info["cpus"] = os.cpu_count()
    return benchmark.pedantic(func, args=args, kwargs=kwargs, rounds=rounds,
                              iterations=1, warmup_rounds=1)


# ---------------------------------------------------------------------------
# 1 -> 2 threads
# ---------------------------------------------------------------------------

THREADS_TARGET = 0.7


@pytest.mark.parametrize("lmbd", [0.1, 0.8])
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_threads_solve_lasso(benchmark, problem, info, lmbd, n_jobs):
    X, D = problem
    benchmark.group = f"threads solve_lasso lmbd={lmbd}"
    role = "reference" if n_jobs == 1 else "ours"
    extra = {"target_ratio": THREADS_TARGET} if n_jobs == 1 else {}
    info(benchmark, problem, role=role, lmbd=lmbd, n_jobs=n_jobs,
         label=f"solve_lasso(auto, n_jobs={n_jobs})", **extra)
    with threadpoolctl.threadpool_limits(n_jobs, user_api="blas"):
        res = _rounds(benchmark, fastlista.solve_lasso, X, D, lmbd, tol=1e-8,
                      n_jobs=n_jobs)
    assert res.converged.all()
    benchmark.extra_info["objective_mean"] = float(
        fastlista.lasso_objective(X, D, lmbd, res.codes).mean())


@pytest.mark.parametrize("n_threads", [1, 2])
def test_threads_lista_transform(benchmark, problem, info, n_threads):
    X, D = problem
    net = Lista(D, 0.8, n_layers=30)
    benchmark.group = "threads Lista.transform lmbd=0.8"
    role = "reference" if n_threads == 1 else "ours"
    extra = {"target_ratio": THREADS_TARGET} if n_threads == 1 else {}
    info(benchmark, problem, role=role, lmbd=0.8, n_threads=n_threads,
         label=f"Lista(step, T=30).transform, {n_threads} thread(s)", **extra)
    with threadpoolctl.threadpool_limits(n_threads):
        Z = _rounds(benchmark, net.transform, X)
    benchmark.extra_info["nnz_mean"] = float(np.count_nonzero(Z, axis=1).mean())


# ---------------------------------------------------------------------------
# Dask overhead
# ---------------------------------------------------------------------------

ENCODE_TARGET = 1.5
ENCODE_LMBD = 0.8
ENCODE_LAYERS = 10
ENCODE_CHUNK = 100_000


@pytest.fixture(scope="module")
def encode_problem():
    n_samples = 10_000 if small_problems() else 1_000_000
    X, D = make_coding(n_samples=n_samples, n_atoms=256, n_features=64, random_state=0)
    X = X.astype(np.float32)
    D = D.astype(np.float32)
    net = Lista(D, ENCODE_LMBD, n_layers=ENCODE_LAYERS)
    return X, D, net


def _nnz_per_atom(Z):
    return np.count_nonzero(Z, axis=0)


def _local_encode(net, X):
    return _nnz_per_atom(net.transform(X))


def _dask_encode(net, Xd):
    from fastlista.distributed import encode

    return encode(net, Xd).map_blocks(
        lambda z: _nnz_per_atom(z)[None], dtype=np.int64,
        chunks=((1,) * Xd.numblocks[0], (net.n_atoms,))).sum(axis=0).compute()


def _encode_info(benchmark, X, D, role, label, **extra):
    benchmark.extra_info.update(
        role=role, label=label, n_samples=X.shape[0], n_atoms=D.shape[0],
        n_features=D.shape[1], dtype=str(X.dtype), calls_per_round=1,
        n_layers=ENCODE_LAYERS, lmbd=ENCODE_LMBD, **extra)


@pytest.fixture(scope="module")
def encode_reference(encode_problem):
    X, _, net = encode_problem
    return _local_encode(net, X)


def test_encode_local(benchmark, encode_problem, encode_reference):
    X, D, net = encode_problem
    benchmark.group = "dask-encode"
    _encode_info(benchmark, X, D, "reference", "Lista.transform (one machine, 2 threads)",
                 target_ratio=ENCODE_TARGET)
    counts = _rounds(benchmark, _local_encode, net, X)
    np.testing.assert_array_equal(counts, encode_reference)


def test_encode_dask_threads(benchmark, encode_problem, encode_reference):
    da = pytest.importorskip("dask.array")
    import dask

    X, D, net = encode_problem
    Xd = da.from_array(X, chunks=(min(ENCODE_CHUNK, X.shape[0] // 4), X.shape[1]))
    benchmark.group = "dask-encode"
    _encode_info(benchmark, X, D, "ours", "distributed.encode (dask threads)",
                 n_chunks=Xd.numblocks[0])
    with dask.config.set(scheduler="threads"):
        counts = _rounds(benchmark, _dask_encode, net, Xd)
    np.testing.assert_array_equal(counts, encode_reference)


def test_encode_dask_local_cluster(benchmark, encode_problem, encode_reference):
    da = pytest.importorskip("dask.array")
    distributed = pytest.importorskip("distributed")

    import sys

    import cloudpickle

    X, D, net = encode_problem
    # this module's helpers travel by value: the workers need not import it
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       host="127.0.0.1", dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        # the data lives on the workers, one scattered future a chunk (untimed)
        rows = min(ENCODE_CHUNK, X.shape[0] // 4)
        parts = [X[i:i + rows] for i in range(0, X.shape[0], rows)]
        futures = client.scatter(parts)
        Xd = da.concatenate([da.from_delayed(f, shape=p.shape, dtype=p.dtype)
                             for f, p in zip(futures, parts)])
        benchmark.group = "dask-encode"
        _encode_info(benchmark, X, D, "ours",
                     "distributed.encode (LocalCluster, 2 processes x 1 thread)",
                     n_chunks=Xd.numblocks[0])
        counts = _rounds(benchmark, _dask_encode, net, Xd)
    finally:
        client.close()
        cluster.close()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    np.testing.assert_array_equal(counts, encode_reference)


# ---------------------------------------------------------------------------
# denoising: LearnedSparseCoder vs SparseCoder
# ---------------------------------------------------------------------------

DENOISE_TARGET = 0.5     # time: at least 2x faster than SparseCoder
MSE_MAX = 1.10           # the learned coder's MSE: at most 10 % above the Lasso's


@pytest.fixture(scope="module")
def denoise_setup():
    pytest.importorskip("sklearn")
    pytest.importorskip("PIL")
    path = Path(__file__).resolve().parents[1] / "examples" / "denoise_patches.py"
    spec = importlib.util.spec_from_file_location("denoise_patches", path)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    from sklearn.decomposition import MiniBatchDictionaryLearning

    quick = small_problems()
    rng = np.random.RandomState(0)
    clean = ex.load_image(quick)
    h, w = clean.shape
    noisy = clean.copy()
    noisy[:, w // 2:] += 0.075 * rng.randn(h, w - w // 2)
    truth, target = clean[:, w // 2:], noisy[:, w // 2:]
    n_train, n_atoms, epochs = (1000, 48, 1) if quick else (10000, 100, 2)
    P, _ = ex.centred_patches(clean[:, : w // 2], max_patches=n_train, random_state=0)
    D = MiniBatchDictionaryLearning(n_components=n_atoms, alpha=1.0, batch_size=256,
                                    max_iter=epochs, random_state=0).fit(P / P.std()).components_
    X, mean = ex.centred_patches(target)
    return ex, D, X, mean, truth


def _mse(ex, Z, D, mean, truth):
    return float(np.mean((ex.rebuild(Z, D, mean, truth.shape) - truth) ** 2))


@pytest.mark.parametrize("coder", ["SparseCoder", "LassoSparseCoder", "LearnedSparseCoder"])
def test_denoise_encode(benchmark, denoise_setup, coder):
    from sklearn.decomposition import SparseCoder

    from fastlista.estimators import LassoSparseCoder, LearnedSparseCoder

    ex, D, X, mean, truth = denoise_setup
    alpha = 0.1
    if coder == "SparseCoder":
        est = SparseCoder(D, transform_algorithm="lasso_cd", transform_alpha=alpha,
                          transform_max_iter=1000).fit(X[:1])
        role, extra = "reference", {"target_ratio": DENOISE_TARGET,
                                    "compare": {"mse": {"kind": "ratio", "max": MSE_MAX}}}
    elif coder == "LassoSparseCoder":
        est = LassoSparseCoder(D, alpha=alpha).fit(X[:1])
        role, extra = "ours", {}
    else:
        rng = np.random.RandomState(0)
        X_fit = X[rng.choice(X.shape[0], size=min(X.shape[0], 4000), replace=False)]
        est = LearnedSparseCoder(D, alpha=alpha, n_layers=10, max_iter=50).fit(X_fit)
        role, extra = "ours", {}
    benchmark.group = "denoise-encode"
    benchmark.extra_info.update(role=role, label=f"{coder}.transform", calls_per_round=1,
                                n_samples=X.shape[0], n_atoms=D.shape[0],
                                n_features=D.shape[1], dtype=str(X.dtype), **extra)
    Z = _rounds(benchmark, est.transform, X)
    mse = _mse(ex, Z, D, mean, truth)
    benchmark.extra_info.update(mse=mse, psnr=float(10 * np.log10(1 / mse)))
    if coder == "LassoSparseCoder":
        ref = SparseCoder(D, transform_algorithm="lasso_cd", transform_alpha=alpha,
                          transform_max_iter=1000).transform(X[:200])
        np.testing.assert_allclose(Z[:200], ref, atol=1e-3)
