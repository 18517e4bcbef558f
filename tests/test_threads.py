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
  threads <= n_jobs (a spy on every kernel entry point), and BLAS runs one
  thread outside the kernels too (Lista's initial layer, Lista.fit's
  optimiser); dask tasks run one thread, and the BLAS limit is restored
  whatever the interleaving of concurrent calls.
* fork(): a child forked from a thread that ran a 2-thread call runs that
  thread's calls on one thread (GNU OpenMP's pool stays in the parent; a
  team would wait forever) and returns certified results within 60 s, or
  the test fails and kills it; a child forked from a thread that never did
  keeps n_jobs threads.
"""
import multiprocessing
import sys
import threading
import time
import types
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import contract
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


def _kernels(scale=1):
    # each call takes 0.05-0.3 s on one core at scale 1 (the samples grow
    # with scale)
    X, D = ref.make_problem(n_samples=2000 * scale, n_features=64, n_atoms=128, seed=5)
    net = Lista(D, 0.2, n_layers=40)
    return {
        "solve_lasso-cd": lambda: fastlista.solve_lasso(
            X, D, 0.05, method="cd", tol=0.0, max_iter=20, n_jobs=1),
        "solve_lasso-ista": lambda: fastlista.solve_lasso(
            X, D, 0.2, method="ista", tol=0.0, max_iter=60, n_jobs=1),
        "Lista.transform": lambda: net.transform(X),
        "Lista.loss_and_grad": lambda: net.loss_and_grad(X[:1000 * scale]),
    }


def long_call(kernel, seconds=0.2):
    """The call ``kernel`` of :func:`_kernels` on a batch large enough that
    one call on one thread takes at least ``seconds`` (doubling the samples
    up to 32 times the base batch): a faster kernel or machine must not
    leave too short a call to measure."""
    scale = 1
    while True:
        call = _kernels(scale)[kernel]
        call()                              # warm up (imports, caches)
        with threadpoolctl.threadpool_limits(1):
            t0 = time.perf_counter()
            call()
            elapsed = time.perf_counter() - t0
        if elapsed >= seconds or scale >= 32:
            return call
        scale *= 2


@pytest.mark.skipif(FREE_THREADED, reason="without a GIL both calls let the counter run")
@pytest.mark.parametrize("kernel", ["solve_lasso-cd", "solve_lasso-ista",
                                    "Lista.transform", "Lista.loss_and_grad"])
def test_gil_released_during_kernel(kernel):
    call = long_call(kernel)
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
           ("_unrolled", "loss_and_grad", 11)]


@pytest.fixture
def kernel_calls(monkeypatch):
    """Record (kernel, OpenMP threads allowed, BLAS threads) of every kernel call."""
    import importlib

    calls = []
    for module, name, pos in KERNELS:
        mod = importlib.import_module(f"fastlista._kernels.{module}")
        real = getattr(mod, name)

        def spy(*args, _real=real, _pos=pos, _name=name, **kwargs):
            calls.append((_name, args[_pos], max(blas_threads())))
            return _real(*args, **kwargs)

        monkeypatch.setattr(mod, name, spy)
    return calls


@pytest.fixture
def outside_kernel_calls(kernel_calls, monkeypatch):
    """Also record the BLAS threads of the work fastlista does outside its
    kernels: Lista's initial layer (lista: the GEMM D D^T) and Lista.fit's
    optimiser (L-BFGS-B's entry and every objective evaluation, both
    optimisers), as (name, 1 thread, BLAS threads)."""
    from fastlista import _training
    from fastlista._networks import _parameters

    real_minimize, real_initial = _training.minimize, _parameters.initial_layer
    real_objective = _training._Objective.__call__

    def minimize(*args, **kwargs):
        kernel_calls.append(("minimize", 1, max(blas_threads())))
        return real_minimize(*args, **kwargs)

    def objective(self, x):
        kernel_calls.append(("objective", 1, max(blas_threads())))
        return real_objective(self, x)

    def initial_layer(*args):
        kernel_calls.append(("initial_layer", 1, max(blas_threads())))
        return real_initial(*args)

    monkeypatch.setattr(_training, "minimize", minimize)
    monkeypatch.setattr(_training._Objective, "__call__", objective)
    monkeypatch.setattr(_parameters, "initial_layer", initial_layer)
    return kernel_calls


def test_distributed_fit_runs_its_optimiser_within_n_jobs(outside_kernel_calls):
    """distributed.fit's optimiser runs on the client: BLAS at one thread
    there too (it took the whole pool), its tasks' kernels within n_jobs."""
    da = pytest.importorskip("dask.array")
    import dask

    from fastlista import distributed
    set_blas_threads(2)
    X, D = ref.make_problem(n_samples=200, n_features=16, n_atoms=32, seed=6)
    with dask.config.set(scheduler="synchronous"):
        distributed.fit(Lista(D, 0.3, 3), da.from_array(X, chunks=50), max_iter=2)
    seen = [c for c in outside_kernel_calls if c[0] in ("minimize", "objective")]
    assert {c[0] for c in seen} == {"minimize", "objective"}
    assert all(c[2] == 1 for c in seen), seen
    assert not [c for c in outside_kernel_calls if c[1] * c[2] > 1]
    assert set(blas_threads()) == {2}


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_call_never_runs_more_than_n_jobs_threads(outside_kernel_calls, n_jobs):
    """OpenMP threads x BLAS threads <= n_jobs in every kernel of every call,
    and BLAS held to one thread outside the kernels (network construction,
    the optimiser of fit) as inside."""
    pytest.importorskip("sklearn")
    from fastlista.estimators import LassoSparseCoder, LearnedSparseCoder

    kernel_calls = outside_kernel_calls
    set_blas_threads(2)          # a BLAS that would take both cores if let
    X, D = ref.make_problem(n_samples=400, n_features=16, n_atoms=32, seed=6)
    for method in ("cd", "ista", "fista", "oista", "backtracking"):
        fastlista.solve_lasso(X, D, 0.3, method=method, tol=1e-6, n_jobs=n_jobs)
    fastlista.lipschitz(D, support=np.abs(X @ D.T) > 0.5, n_jobs=n_jobs)
    for p in ("step", "coupled", "alista", "lista"):
        net = Lista(D, 0.3, 3, parametrization=p, n_jobs=n_jobs)
        net.fit(X, max_iter=2)
        net.transform(X, refine_tol=1e-6)
    Lista(D, 0.3, 3, parametrization="lista", n_jobs=n_jobs).fit(
        X, max_iter=2, optimizer="gd")
    LassoSparseCoder(D, alpha=0.3, n_jobs=n_jobs).fit_transform(X)
    LearnedSparseCoder(D, alpha=0.3, n_layers=3, max_iter=2, n_jobs=n_jobs).fit(X).transform(X)
    seen = {name for name, _, _ in kernel_calls}
    assert seen == {name for _, name, _ in KERNELS} | {"minimize", "objective",
                                                       "initial_layer"}
    over = [c for c in kernel_calls if c[1] * c[2] > n_jobs]
    assert not over, over[:5]
    blas = [c for c in kernel_calls if c[2] != 1]
    assert not blas, blas[:5]
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


def test_n_jobs_none_takes_the_openmp_limit(kernel_calls):
    """n_jobs=None (and -1) took every core whatever OpenMP was told: inside
    joblib's workers, which set OMP_NUM_THREADS to share the cores (as
    GridSearchCV(n_jobs=k) runs them), k workers ran k x cores threads
    (found by an adversarial pass). Under threadpoolctl's OpenMP limit a
    call runs that many threads; explicit n_jobs stay as given."""
    X, D = ref.make_problem(n_samples=200, n_features=16, n_atoms=32, seed=7)
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        fastlista.solve_lasso(X, D, 0.3, n_jobs=None)
        fastlista.solve_lasso(X, D, 0.3, n_jobs=-1)
        limited = {c[1] for c in kernel_calls}
        kernel_calls.clear()
        fastlista.solve_lasso(X, D, 0.3, n_jobs=2)
        explicit = {c[1] for c in kernel_calls}
    assert limited == {1}
    assert explicit == {2}


def _n_jobs_none_in_a_worker():
    import os

    from fastlista._validation import check_n_jobs

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count()
    return min(int(os.environ["OMP_NUM_THREADS"]), cores), check_n_jobs(None, "worker")


def test_n_jobs_none_in_joblib_workers_takes_their_share_of_the_cores():
    """Real joblib (loky) workers: each one's n_jobs=None is the share of
    the cores joblib gave it in OMP_NUM_THREADS (its own record; a value
    inherited from the parent, which joblib keeps, counts up to the
    cores)."""
    joblib = pytest.importorskip("joblib")
    results = joblib.Parallel(n_jobs=2)(
        joblib.delayed(_n_jobs_none_in_a_worker)() for _ in range(2))
    for share, n in results:
        assert n == share


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


@pytest.mark.parametrize("where", [1, 2, 3, 4])
def test_interrupt_while_setting_the_blas_limit_leaves_no_limit(monkeypatch, where):
    """Ctrl-C (SIGINT, raised here at a fixed point) while a call sets or
    restores the BLAS limit: the KeyboardInterrupt reaches the caller, and
    BLAS keeps its threads. The limit is set between the first and second
    call of ``_release_blas_control`` (entry) and restored between the third
    and fourth (exit); a signal raised in the second or the third landed
    between those statements, and left BLAS at one thread for good (as
    random interrupts of a loop of calls did). The SIGINT handler is
    Python's own throughout (nothing swaps it: a handler installed from C,
    which Python cannot see, stays), installed by the test itself."""
    import signal

    from fastlista import _threads

    X, D = ref.make_problem(n_samples=20, n_features=8, n_atoms=16, seed=1)
    set_blas_threads(2)
    before = blas_threads()
    real, seen = _threads._release_blas_control, []

    def release(force=False):
        real(force)
        seen.append(force)
        if len(seen) == where:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(_threads, "_release_blas_control", release)
    # Python's own handler, whatever this process started with: a process
    # started with SIGINT ignored (a background job of a shell without job
    # control, nohup) has SIG_IGN instead, and raise_signal would do nothing
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            fastlista.solve_lasso(X, D, 0.3, n_jobs=2)
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(seen) >= where and seen[:2] == [True, False][:len(seen[:2])]
    assert not _threads._calls and not _threads._saved
    assert blas_threads() == before
    # and the next calls start from the real limits again
    res = fastlista.solve_lasso(X, D, 0.3, n_jobs=2)
    contract.assert_certified(X, D, 0.3, 1e-8, res)
    assert blas_threads() == before


def test_an_exit_that_keeps_failing_raises_and_does_not_hang(monkeypatch):
    """An error that recurs at every attempt of the exit (not a one-off
    interrupt) is raised after a bounded number of attempts; the next call
    restores the counts that exit left."""
    from fastlista import _threads

    X, D = ref.make_problem(n_samples=20, n_features=8, n_atoms=16, seed=1)
    set_blas_threads(2)
    before = blas_threads()
    attempts = []

    def broken():
        attempts.append(1)
        raise RuntimeError("restore failed")

    monkeypatch.setattr(_threads, "_restore_limits", broken)
    with pytest.raises(RuntimeError, match="restore failed"):
        fastlista.solve_lasso(X, D, 0.3, n_jobs=2)
    monkeypatch.undo()
    # (one at the entry, which restores what an earlier exit left, then the
    # exit's attempts)
    assert len(attempts) == 1 + _threads._EXIT_ATTEMPTS and not _threads._calls
    fastlista.solve_lasso(X, D, 0.3, n_jobs=2)
    assert blas_threads() == before and not _threads._saved


class _Stop(Exception):
    """What the test's SIGINT handler raises."""


def test_a_kernel_answers_sigint_between_its_blocks(monkeypatch):
    """SIGINT while a long solve runs in its kernel (no GIL, where Python
    cannot run handlers): the kernel runs the handler between its blocks,
    skips the blocks not started, and its caller raises what the handler
    raised. Before, the handler ran only once all blocks were done.

    Deterministic: the interrupting thread waits for the kernel's call, and
    the main thread keeps the GIL (switch interval of 100 s) until the
    kernel releases it, so the signal arrives inside the kernel. Each of the
    250 blocks of 32 samples runs 3000 ISTA iterations (about 6 s in all
    here, where the check stops it within 50 ms of the signal and the blocks
    then running); the blocks not started keep n_iter = -1."""
    import _thread
    import signal

    from fastlista import _solvers

    rng = np.random.default_rng(0)
    D = rng.standard_normal((128, 32))
    X = rng.standard_normal((8000, 32))
    real, started, seen = _solvers._solvers.prox_grad, threading.Event(), []

    def prox_grad(*args):
        n_iter = args[21]
        n_iter[:] = -1
        seen.append(n_iter)
        started.set()
        return real(*args)

    def interrupt():
        started.wait()
        _thread.interrupt_main()

    def handler(signum, frame):
        raise _Stop

    monkeypatch.setattr(_solvers._solvers, "prox_grad", prox_grad)
    previous = signal.signal(signal.SIGINT, handler)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(100)
    thread = threading.Thread(target=interrupt)
    try:
        thread.start()
        with pytest.raises(_Stop), warnings.catch_warnings():
            warnings.simplefilter("ignore", fastlista.ConvergenceWarning)
            fastlista.solve_lasso(X, D, 0.1, method="ista", tol=0, max_iter=3000, n_jobs=2)
    finally:
        sys.setswitchinterval(interval)
        signal.signal(signal.SIGINT, previous)
        thread.join()
    n_iter = seen[0]
    assert n_iter.shape == (8000,) and np.count_nonzero(n_iter == -1) >= 32
    # and the next call is whole
    res = fastlista.solve_lasso(X[:50], D, 0.1, n_jobs=2)
    contract.assert_certified(X[:50], D, 0.1, 1e-8, res)


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


# ---------------------------------------------------------------------------
# fork(): GNU OpenMP's thread pool stays in the parent
# ---------------------------------------------------------------------------

FORK = "fork" in multiprocessing.get_all_start_methods()
FORK_TIMEOUT = 60


def _child_main(conn, work):
    """In the forked child: send ("ok", work(), RuntimeWarnings) or ("error", ...)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = work()
        conn.send(("ok", out, [str(w.message) for w in caught
                               if issubclass(w.category, RuntimeWarning)]))
    except BaseException as exc:  # pragma: no cover - reported by the parent
        conn.send(("error", repr(exc), []))
    finally:
        conn.close()


def run_in_forked_child(work, timeout=FORK_TIMEOUT):
    """work() in a child forked from the calling thread: (result, warnings).

    A child that sends nothing within ``timeout`` seconds hangs: it is killed
    and the test fails (it never blocks the suite).
    """
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_main, args=(send, work), daemon=True)
    child.start()
    send.close()
    try:
        if not recv.poll(timeout):
            pytest.fail(f"the forked child sent nothing in {timeout} s: it hangs "
                        "(killed)")
        try:
            status, out, warned = recv.recv()
        except EOFError:
            pytest.fail(f"the forked child died (exit code {child.join(5) or child.exitcode})")
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        recv.close()
    assert status == "ok", out
    return out, warned


def _granted(n_jobs):
    from fastlista._threads import kernel_threads

    with kernel_threads(n_jobs, "test") as n:
        return n


@pytest.mark.skipif(not FORK, reason="no fork start method on this platform")
def test_forked_child_after_an_openmp_team_runs_one_thread_and_does_not_hang():
    X, D = ref.make_problem(n_samples=2000, n_features=32, n_atoms=64, seed=10)
    lmbd, tol = 0.3, 1e-8
    # a 2-thread OpenMP team in this thread (2000 samples: 8 blocks): its
    # libgomp pool does not survive fork
    parent = fastlista.solve_lasso(X, D, lmbd, tol=tol, n_jobs=2)

    def work():
        out = {}
        for n_jobs in (None, 2, 2):      # None: no warning; 2: warned once
            res = fastlista.solve_lasso(X, D, lmbd, tol=tol, n_jobs=n_jobs)
            out[n_jobs] = (res.codes, res.gap, res.converged)
        out["granted"] = _granted(2), _granted(None)
        # a thread the child starts has a pool of its own: n_jobs threads
        new = {}
        t = threading.Thread(target=lambda: new.update(
            granted=_granted(2),
            codes=fastlista.solve_lasso(X, D, lmbd, tol=tol, n_jobs=2).codes))
        t.start()
        t.join()
        out["new thread"] = new
        return out

    out, warned = run_in_forked_child(work)
    assert out["granted"] == (1, 1)
    assert out["new thread"]["granted"] == 2
    assert len(warned) == 1 and "n_jobs=2 runs on one thread" in warned[0], warned
    contract.assert_certified(X, D, lmbd, tol, parent)
    for n_jobs in (None, 2):
        res = types.SimpleNamespace(codes=out[n_jobs][0], gap=out[n_jobs][1],
                                    converged=out[n_jobs][2])
        contract.assert_certified(X, D, lmbd, tol, res)
        # thread counts differ: equal within the certified gaps (codes are
        # never compared across thread counts)
        contract.assert_same_optimum(X, D, lmbd, parent, res)


@pytest.mark.skipif(not FORK, reason="no fork start method on this platform")
def test_forked_child_after_soft_thresholding_alone_does_not_hang():
    """soft_thresholding of more than 2^16 values runs a team too: it takes
    its size from kernel_threads, so a child forked from a thread that only
    ran it is restricted as well (it took OpenMP's default, untracked, and
    the child's next call waited forever). Values against NumPy."""
    rng = np.random.default_rng(5)
    U = rng.standard_normal(1 << 18)
    expected = np.sign(U) * np.maximum(np.abs(U) - 0.5, 0)

    def parent_then_child():
        # in a fresh thread: its only team is soft_thresholding's
        assert_array_equal(fastlista.soft_thresholding(U, 0.5), expected)
        return run_in_forked_child(lambda: (fastlista.soft_thresholding(U, 0.5),
                                            _granted(None)))

    (codes, granted), warned = run_threaded(parent_then_child, [()])[0]
    assert granted == 1 and warned == []
    assert_array_equal(codes, expected)


@pytest.mark.skipif(not FORK, reason="no fork start method on this platform")
def test_forked_child_of_a_thread_without_openmp_team_keeps_n_jobs():
    """The restriction follows the thread that forks: forked from a thread
    that never ran a multi-thread call, the child runs n_jobs threads."""
    X, D = ref.make_problem(n_samples=2000, n_features=32, n_atoms=64, seed=10)
    fastlista.solve_lasso(X, D, 0.3, n_jobs=2)      # the main thread has a pool
    # forked from a new thread (run_threaded re-raises its failures)
    out = run_threaded(lambda: run_in_forked_child(lambda: _granted(2)), [()])[0]
    assert out == (2, [])


@pytest.mark.skipif(not FORK, reason="no fork start method on this platform")
def test_forked_child_of_a_thread_that_ran_only_single_thread_calls_keeps_n_jobs():
    """A soft_thresholding of a few values runs one thread (no team): a child
    forked from its thread is not restricted (it was, with a warning saying
    the thread had run OpenMP threads)."""
    def parent_then_child():
        fastlista.soft_thresholding(np.ones(10), 0.5)
        return run_in_forked_child(lambda: _granted(2))

    assert run_threaded(parent_then_child, [()])[0] == (2, [])


@pytest.mark.skipif(not FORK, reason="no fork start method on this platform")
def test_fork_while_another_thread_is_in_a_call_gives_the_child_its_blas_back():
    """Another thread is inside a call (BLAS held to one thread) when this one
    forks: in the child that call never ends, and BLAS stayed at one thread
    for good; the child now starts with the original limit, which its own
    calls restore."""
    from fastlista._threads import kernel_threads

    set_blas_threads(2)
    inside, done = threading.Event(), threading.Event()

    def in_a_call():
        with kernel_threads(1, "test"):
            inside.set()
            done.wait(FORK_TIMEOUT)

    t = threading.Thread(target=in_a_call)
    t.start()
    try:
        assert inside.wait(FORK_TIMEOUT)
        assert set(blas_threads()) == {1}

        def child():
            first = set(blas_threads())
            fastlista.solve_lasso(np.ones((3, 4)), np.eye(4), 0.5, n_jobs=1)
            return first, set(blas_threads())

        out, warned = run_in_forked_child(child)
    finally:
        done.set()
        t.join()
    assert out == ({2}, {2}) and warned == []
    assert set(blas_threads()) == {2}


@pytest.mark.skipif(not FORK, reason="no fork start method on this platform")
def test_fork_while_another_thread_holds_threadpoolctls_lock_does_not_hang():
    """threadpoolctl (>= 3.8) guards OpenBLAS's limit with a class-level lock;
    held by another thread at fork, it stayed held in the child, whose first
    call waited forever (killed after FORK_TIMEOUT s here)."""
    state = getattr(threadpoolctl.OpenBLASController, "_SHARED_STATE", None)
    if state is None:
        pytest.skip("threadpoolctl without a shared OpenBLAS lock")
    X = np.ones((3, 4))
    with state.lock:            # as another thread inside threadpoolctl would
        out, warned = run_in_forked_child(
            lambda: fastlista.solve_lasso(X, np.eye(4), 0.5, n_jobs=1).codes)
    assert_allclose(out, np.full((3, 4), 0.5))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_repeated_calls_at_a_fixed_n_jobs_are_bit_identical(dtype):
    """The same call with the same n_jobs gives the same bits, whatever ran
    in between: samples are solved by one thread each, and the networks'
    blocks go to threads by a static schedule, their gradient sums added in
    thread order (docs/reliability.md, "Threads"). Only results of
    different thread counts may differ, by rounding."""
    X, D = ref.make_problem(n_samples=300, n_features=20, n_atoms=40)
    X, D = X.astype(dtype), D.astype(dtype)
    X_other = X[:37, ::-1].copy()
    tol = 1e-8 if dtype == np.float64 else 1e-6

    def calls():
        out = [fastlista.solve_lasso(X, D, 0.1, method=m, tol=tol, n_jobs=2).codes
               for m in ("cd", "fista")]
        for kind in ("step", "coupled"):
            net = Lista(D, 0.1, 8, parametrization=kind, n_jobs=2)
            loss, grads = net.loss_and_grad(X)
            out += [np.array(loss)] + [g for layer in grads for g in layer.values()]
            net.fit(X, max_iter=5)
            out += [p for layer in net.parameters for p in layer.values()]
        # something else in between: another shape, another thread count
        fastlista.solve_lasso(X_other, D[:, ::-1], 0.3, tol=tol, n_jobs=1)
        Lista(D[:, ::-1], 0.3, 3, n_jobs=1).loss_and_grad(X_other)
        return out

    first, second = calls(), calls()
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert_array_equal(a, b)
