"""Threads: concurrent calls equal serial ones, the GIL is released, n_jobs.

* 8 Python threads released together by a ``threading.Barrier`` (NumPy's
  ``run_threaded`` pattern) call ``solve_lasso`` and the estimators'
  ``transform`` on distinct inputs sharing one read-only dictionary: every
  result equals the serial one, and no input is written.
* Heartbeat: a Python thread increments a counter while the main thread runs
  a long kernel call. The counter advances at least 10x faster than while the
  main thread runs a GIL-holding C call of the same length (``sum(range(n))``,
  which never releases the GIL; measured ~3e6/s against 0/s).
* The threading policy: in every kernel of a call, OpenMP threads x BLAS
  threads <= n_jobs (a spy on every kernel entry point), dask tasks run one
  thread, and the BLAS limit is restored whatever the interleaving of
  concurrent calls.
"""
import sys
import threading
import time

import numpy as np
import pytest
from numpy.testing import assert_allclose

import reference as ref
import fastlista
from fastlista import Lista

threadpoolctl = pytest.importorskip("threadpoolctl")

N_THREADS = 8
FREE_THREADED = not getattr(sys, "_is_gil_enabled", lambda: True)()


def run_threaded(func, args_list):
    """Run func(*args) for every args in 8 threads started by one Barrier."""
    barrier = threading.Barrier(len(args_list))
    results = [None] * len(args_list)
    errors = []

    def worker(i, args):
        try:
            barrier.wait()
            results[i] = func(*args)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i, a)) for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def blas_threads():
    return sorted(i["num_threads"] for i in threadpoolctl.threadpool_info()
                  if i["user_api"] == "blas")


def set_blas_threads(n):
    """Set the BLAS threads for good, and release OpenBLAS control.

    threadpoolctl >= 3.8 lets one "controlling" thread set the process-wide
    OpenBLAS pool; a limit set outside a ``with`` keeps that control, and
    would silently disable the limits of every other thread.
    """
    threadpoolctl.threadpool_limits(limits=n, user_api="blas")     # stays set
    try:
        threadpoolctl.OpenBLASController.clear_controlling_thread(force=True)
    except AttributeError:  # threadpoolctl < 3.8
        pass


@pytest.fixture(autouse=True)
def restore_blas_threads():
    """Whatever a test does to the (process-wide) BLAS threads, undo it."""
    before = blas_threads()
    yield
    if blas_threads() != before:
        set_blas_threads(max(before))


@pytest.fixture(scope="module")
def shared():
    """A read-only dictionary shared by all threads, and 8 distinct batches."""
    X, D = ref.make_problem(n_samples=8 * 150, n_features=24, n_atoms=48,
                            density=0.2, noise=0.05, seed=3)
    D.setflags(write=False)
    batches = [X[i::8].copy() for i in range(N_THREADS)]
    for b in batches:
        b.setflags(write=False)
    return D, batches


# ---------------------------------------------------------------------------
# concurrent calls equal serial ones
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["cd", "fista", "oista"])
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_concurrent_solve_lasso_equals_serial(shared, method, n_jobs):
    D, batches = shared
    D_before = D.copy()

    def solve(X):
        res = fastlista.solve_lasso(X, D, 0.2, method=method, tol=1e-10, n_jobs=n_jobs)
        return res.codes, res.gap, res.n_iter

    serial = [solve(X) for X in batches]
    concurrent = run_threaded(solve, [(X,) for X in batches])
    for (Z, gap, it), (Z_s, gap_s, it_s) in zip(concurrent, serial):
        assert_allclose(Z, Z_s, rtol=1e-12, atol=1e-14)
        assert_allclose(gap, gap_s, rtol=1e-9, atol=1e-15)
        np.testing.assert_array_equal(it, it_s)
    np.testing.assert_array_equal(D, D_before)


def test_concurrent_lista_transform_equals_serial(shared):
    D, batches = shared
    net = Lista(D, 0.2, n_layers=12, parametrization="coupled")
    serial = [net.transform(X) for X in batches]
    concurrent = run_threaded(net.transform, [(X,) for X in batches])
    for Z, Z_s in zip(concurrent, serial):
        assert_allclose(Z, Z_s, rtol=1e-12, atol=1e-14)
    # and the network is ISTA: the plain NumPy reference agrees
    assert_allclose(serial[0], ref.ista(batches[0], D, 0.2, 12)[0], rtol=1e-9, atol=1e-12)


def test_concurrent_estimator_transform_equals_serial(shared):
    pytest.importorskip("sklearn")
    from fastlista.estimators import LassoSparseCoder, LearnedSparseCoder

    D, batches = shared
    lasso = LassoSparseCoder(D, alpha=0.2, tol=1e-10, n_jobs=1).fit(batches[0])
    learned = LearnedSparseCoder(D, alpha=0.2, n_layers=6, max_iter=20).fit(batches[0])
    before = blas_threads()
    for coder in (lasso, learned):
        serial = [coder.transform(X) for X in batches]
        concurrent = run_threaded(coder.transform, [(X,) for X in batches])
        for Z, Z_s in zip(concurrent, serial):
            assert_allclose(Z, Z_s, rtol=1e-12, atol=1e-14)
    # the per-call BLAS limit of LassoSparseCoder(n_jobs=1) was undone
    assert blas_threads() == before


# ---------------------------------------------------------------------------
# the GIL is released during long kernel calls
# ---------------------------------------------------------------------------

def heartbeat_rate(call, margin=0.2):
    """Increments per second of a Python counter thread while call() runs.

    The counter thread stamps the time every 64 increments; only the stamps
    in the middle of the call (its first and last ``margin`` fraction left
    out) count. A GIL-holding call still hands the GIL over at its Python
    boundaries (and on a loaded machine the hand-back may wait for an OS
    time slice): the margins keep those hand-overs out of the measurement.

    Returns (rate in increments per second, duration of the call in seconds).
    """
    stamps = []
    stop = threading.Event()
    running = threading.Event()
    clock = time.perf_counter

    def beat():
        running.set()
        i = 0
        while not stop.is_set():
            i += 1
            if not i & 63:
                stamps.append(clock())

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    running.wait()
    time.sleep(0.02)
    t0 = clock()
    call()
    t1 = clock()
    stop.set()
    t.join()
    lo, hi = t0 + margin * (t1 - t0), t1 - margin * (t1 - t0)
    ticks = np.asarray(stamps)
    n_mid = np.count_nonzero((ticks >= lo) & (ticks <= hi))
    return 64 * n_mid / (hi - lo), t1 - t0


def gil_holding_control(seconds):
    """A C call that holds the GIL for about ``seconds``: sum(range(n))."""
    t0 = time.perf_counter()
    sum(range(200_000))
    n = int(200_000 * seconds / max(time.perf_counter() - t0, 1e-6))
    return lambda: sum(range(n))


def _kernels():
    # each call takes 0.1-0.3 s on one core
    X, D = ref.make_problem(n_samples=2000, n_features=64, n_atoms=128, seed=5)
    net = Lista(D, 0.2, n_layers=40)
    return {
        "solve_lasso-cd": lambda: fastlista.solve_lasso(
            X, D, 0.05, method="cd", tol=0.0, max_iter=20, n_jobs=1),
        "solve_lasso-ista": lambda: fastlista.solve_lasso(
            X, D, 0.2, method="ista", tol=0.0, max_iter=60, n_jobs=1),
        "Lista.transform": lambda: net.transform(X),
        "Lista.loss_and_grad": lambda: net.loss_and_grad(X[:1000]),
    }


@pytest.mark.skipif(FREE_THREADED, reason="without a GIL both calls let the counter run")
@pytest.mark.parametrize("kernel", ["solve_lasso-cd", "solve_lasso-ista",
                                    "Lista.transform", "Lista.loss_and_grad"])
def test_gil_released_during_kernel(kernel):
    call = _kernels()[kernel]
    call()                                  # warm up (imports, caches)
    # one OpenMP and one BLAS thread, so the counter has a core of its own
    with threadpoolctl.threadpool_limits(1):
        released, seconds = heartbeat_rate(call)
        held, _ = heartbeat_rate(gil_holding_control(seconds))
    assert seconds > 0.05, f"kernel call too short to measure ({seconds:.3f} s)"
    assert released >= 10 * max(held, 1.0), (
        f"{kernel}: counter ran {released:.0f}/s during the kernel, {held:.0f}/s "
        f"during a GIL-holding call of {seconds:.2f} s")


# ---------------------------------------------------------------------------
# n_jobs: OpenMP and BLAS threads together
# ---------------------------------------------------------------------------

# Every kernel entry point, and the position of its n_threads argument (the
# OpenMP threads it may start; it starts at most that many).
KERNELS = [("_solvers", "correlations", 3), ("_solvers", "prox_grad", 15),
           ("_cd", "coordinate_descent", 10), ("_certify", "certify", 10),
           ("_lipschitz", "lipschitz_supports", 5), ("_unrolled", "forward", 6),
           ("_unrolled", "loss_and_grad", 9)]


@pytest.fixture
def kernel_calls(monkeypatch):
    """Record (kernel, OpenMP threads allowed, BLAS threads) of every kernel call."""
    import importlib

    calls = []
    for module, name, pos in KERNELS:
        mod = importlib.import_module(f"fastlista._kernels.{module}")
        real = getattr(mod, name)

        def spy(*args, _real=real, _pos=pos, _name=name):
            calls.append((_name, args[_pos], max(blas_threads())))
            return _real(*args)

        monkeypatch.setattr(mod, name, spy)
    return calls


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_call_never_runs_more_than_n_jobs_threads(kernel_calls, n_jobs):
    """OpenMP threads x BLAS threads <= n_jobs in every kernel of every call."""
    pytest.importorskip("sklearn")
    from fastlista.estimators import LassoSparseCoder, LearnedSparseCoder

    set_blas_threads(2)          # a BLAS that would take both cores if let
    X, D = ref.make_problem(n_samples=400, n_features=16, n_atoms=32, seed=6)
    for method in ("cd", "ista", "fista", "oista", "backtracking"):
        fastlista.solve_lasso(X, D, 0.3, method=method, tol=1e-6, n_jobs=n_jobs)
    fastlista.lipschitz(D, support=np.abs(X @ D.T) > 0.5, n_jobs=n_jobs)
    for p in ("step", "coupled", "alista", "lista"):
        net = Lista(D, 0.3, 3, parametrization=p, n_jobs=n_jobs)
        net.fit(X, max_iter=2)
        net.transform(X, refine_tol=1e-6)
    LassoSparseCoder(D, alpha=0.3, n_jobs=n_jobs).fit_transform(X)
    LearnedSparseCoder(D, alpha=0.3, n_layers=3, max_iter=2, n_jobs=n_jobs).fit(X).transform(X)
    seen = {name for name, _, _ in kernel_calls}
    assert seen == {name for _, name, _ in KERNELS}
    over = [c for c in kernel_calls if c[1] * c[2] > n_jobs]
    assert not over, over[:5]
    assert set(blas_threads()) == {2}               # and BLAS is given back


def test_dask_tasks_run_one_thread_by_default(kernel_calls):
    """Each dask task runs n_jobs threads (1 by default), whatever the model's."""
    pytest.importorskip("dask")
    import dask
    from fastlista import distributed

    X, D = ref.make_problem(n_samples=200, n_features=16, n_atoms=32, seed=7)
    net = Lista(D, 0.3, 3)                          # n_jobs=None: every core
    import dask.array as da
    Xd = da.from_array(X, chunks=(50, -1))
    with dask.config.set(scheduler="synchronous"):
        distributed.encode(net, Xd).compute()
        distributed.encode({"D": D, "lmbd": 0.3}, Xd).compute()
        distributed.solve_lasso(Xd, D, 0.3).codes.compute()
        distributed.fit(Lista(D, 0.3, 2), Xd, max_iter=2)
    assert kernel_calls and all(c[1] == 1 for c in kernel_calls), kernel_calls[:5]


def test_dask_solver_settings_n_jobs_none_takes_every_core(kernel_calls):
    """An explicit ``"n_jobs": None`` in encode's settings overrides the
    argument (None: every core), as a missing key does not."""
    pytest.importorskip("dask")
    import dask
    import dask.array as da
    from fastlista import distributed
    from fastlista._validation import check_n_jobs

    X, D = ref.make_problem(n_samples=200, n_features=16, n_atoms=32, seed=7)
    Xd = da.from_array(X, chunks=(50, -1))
    with dask.config.set(scheduler="synchronous"):
        distributed.encode({"D": D, "lmbd": 0.3, "n_jobs": None}, Xd).compute()
        every_core = {c[1] for c in kernel_calls}
        kernel_calls.clear()
        distributed.encode({"D": D, "lmbd": 0.3}, Xd, n_jobs=1).compute()
    assert every_core == {check_n_jobs(None, "test")}
    assert {c[1] for c in kernel_calls} == {1}


def test_blas_thread_limit_is_safe_across_threads():
    """Overlapping limits from 8 threads restore the original BLAS threads."""
    pytest.importorskip("sklearn")
    from fastlista._threads import blas_thread_limit

    before = blas_threads()
    inside = []

    def work(i):
        with blas_thread_limit(1):
            inside.append(blas_threads())
            time.sleep(0.001 * (i % 3))
        return i

    for _ in range(20):
        run_threaded(work, [(i,) for i in range(N_THREADS)])
        assert blas_threads() == before
    assert all(set(b) == {1} for b in inside)

    # and no thread kept control of OpenBLAS: another thread can limit it
    def limited():
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            return blas_threads()

    assert set(run_threaded(limited, [()])[0]) == {1}
    assert blas_threads() == before


def test_concurrent_prox_grad_restores_blas_threads():
    X, D = ref.make_problem(n_samples=2000, n_features=32, n_atoms=64, seed=8)
    # start from 2 BLAS threads (an earlier overlap may have left 1)
    set_blas_threads(2)
    before = blas_threads()
    for _ in range(25):
        run_threaded(lambda X: fastlista.solve_lasso(X, D, 0.5, method="fista",
                                                     tol=1e-6, n_jobs=2),
                     [(X,)] * N_THREADS)
        assert blas_threads() == before


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_dictionary_learning_never_runs_more_than_n_jobs_threads(kernel_calls, monkeypatch,
                                                                 n_jobs):
    """learn_dictionary (online, batch, the SLISTA coder) and the dictionary
    estimators: OpenMP threads x BLAS threads <= n_jobs in every kernel, in
    the dictionary step's kernel (one thread, BLAS gemv) and in the NumPy
    products of the statistics (BLAS held to one thread)."""
    pytest.importorskip("sklearn")
    from fastlista import dictionary
    from fastlista._kernels import _dict
    from fastlista.estimators import DictionaryLearning, MiniBatchDictionaryLearning

    real_bcd, real_residuals = _dict.bcd, dictionary._residuals

    def bcd(*args):
        kernel_calls.append(("bcd", 1, max(blas_threads())))
        return real_bcd(*args)

    def residuals(*args):
        kernel_calls.append(("residuals (NumPy)", 1, max(blas_threads())))
        return real_residuals(*args)

    monkeypatch.setattr(_dict, "bcd", bcd)
    monkeypatch.setattr(dictionary, "_residuals", residuals)
    set_blas_threads(2)
    X, _ = ref.make_problem(n_samples=300, n_features=16, n_atoms=32, seed=8)
    for method, coder in (("online", "cd"), ("batch", "cd"), ("online", "slista")):
        dictionary.learn_dictionary(X, 20, 0.3, method=method, coder=coder, max_iter=2,
                                    batch_size=100, n_jobs=n_jobs, random_state=0)
    DictionaryLearning(20, alpha=0.3, max_iter=2, n_jobs=n_jobs).fit(X).transform(X)
    est = MiniBatchDictionaryLearning(20, alpha=0.3, max_iter=1, batch_size=100,
                                      n_jobs=n_jobs).fit(X)
    est.partial_fit(X[:100]).transform(X)
    names = {name for name, _, _ in kernel_calls}
    assert {"bcd", "residuals (NumPy)", "coordinate_descent", "loss_and_grad"} <= names
    over = [c for c in kernel_calls if c[1] * c[2] > n_jobs]
    assert not over, over[:5]
    assert set(blas_threads()) == {2}               # and BLAS is given back


def test_dask_dictionary_learning_runs_one_thread_a_task(kernel_calls, monkeypatch):
    pytest.importorskip("dask")
    import dask
    import dask.array as da
    from fastlista import distributed

    from fastlista import dictionary

    from fastlista._kernels import _dict

    real_residuals, real_bcd = dictionary._residuals, _dict.bcd

    def residuals(*args):                # the NumPy products of a chunk's statistics
        kernel_calls.append(("residuals (NumPy)", 1, max(blas_threads())))
        return real_residuals(*args)

    def bcd(*args):                      # the dictionary step, on the client
        kernel_calls.append(("bcd", 1, max(blas_threads())))
        return real_bcd(*args)

    monkeypatch.setattr(dictionary, "_residuals", residuals)
    monkeypatch.setattr(_dict, "bcd", bcd)
    set_blas_threads(2)
    X, _ = ref.make_problem(n_samples=200, n_features=16, n_atoms=32, seed=9)
    with dask.config.set(scheduler="synchronous"):
        distributed.learn_dictionary(da.from_array(X, chunks=(50, -1)), 12, 0.3,
                                     max_iter=2, random_state=0)
    assert {c[0] for c in kernel_calls} >= {"residuals (NumPy)", "bcd"}
    assert kernel_calls and all(c[1] * c[2] == 1 for c in kernel_calls), kernel_calls[:5]
    assert set(blas_threads()) == {2}
