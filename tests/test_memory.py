"""Resident memory stays flat over many kernel calls (no leaks)."""
import sys

import numpy as np
import pytest

from fastlista import lipschitz, solve_lasso

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/statm")

#: allowed growth of the resident set over 10^4 calls (a leak of one 8-byte
#: value per call would already show 80 kB; a leaked workspace, megabytes)
RSS_BOUND = 4 * 1024**2

#: windows the calls are split into: a leak grows the resident set in every
#: one, while the heap's high-water mark (malloc keeps freed memory below
#: its trim threshold, and where a large temporary lands depends on what
#: else the process has allocated) rises once and settles
N_WINDOWS = 4


def _rss():
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _growth(call, n_calls=10_000, warmup=500):
    """Resident growth over ``n_calls`` calls, from its steadiest window.

    The calls run in ``N_WINDOWS`` windows; the smallest window's growth,
    times ``N_WINDOWS``, is what ``n_calls`` calls leak at the steady rate.
    """
    for _ in range(warmup):
        call()
    per_window = -(-n_calls // N_WINDOWS)
    growths = []
    for _ in range(N_WINDOWS):
        before = _rss()
        for _ in range(per_window):
            call()
        growths.append(_rss() - before)
    return N_WINDOWS * min(growths)


def test_growth_sees_a_steady_leak_and_not_a_one_off_rise():
    # in a fresh interpreter: memory that earlier tests freed would absorb a
    # small leak here (it is reused before the resident set grows)
    import os
    import subprocess

    code = """if True:
        from test_memory import RSS_BOUND, _growth
        leaked, once = [], []
        print(_growth(lambda: leaked.append(bytearray(1024)), n_calls=8_000))
        print(_growth(lambda: once or once.append(bytearray(8 * RSS_BOUND)),
                      n_calls=8_000, warmup=0))
    """
    import fastlista

    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fastlista.__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(__file__), env=env, check=True).stdout.split()
    steady, one_off = map(int, out)
    assert steady > 4_000_000
    assert one_off < RSS_BOUND


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    D = rng.standard_normal((12, 6))
    X = rng.standard_normal((4, 6))
    return X, D


@pytest.mark.parametrize("method, n_calls", [
    ("cd", 10_000), ("ista", 10_000), ("oista", 2_000), ("fista", 2_000),
    ("backtracking", 2_000)])
def test_solve_lasso_does_not_leak(tiny, method, n_calls):
    X, D = tiny
    Z_ref = solve_lasso(X, D, 0.3, method=method, max_iter=10, tol=0).codes

    def call():
        Z = solve_lasso(X, D, 0.3, method=method, max_iter=10, tol=0,
                        n_jobs=1).codes
        assert Z[0, 0] == Z_ref[0, 0]

    assert _growth(call, n_calls=n_calls) < RSS_BOUND


def test_lipschitz_supports_do_not_leak(tiny):
    _, D = tiny
    S = np.random.default_rng(1).random((50, D.shape[0])) < 0.5
    expected = lipschitz(D, support=S)
    assert _growth(lambda: np.testing.assert_array_equal(
        lipschitz(D, support=S), expected)) < RSS_BOUND


def test_lista_transform_and_gradient_do_not_leak(tiny):
    from fastlista import Lista

    X, D = tiny
    net = Lista(D, 0.3, 5)
    Z_ref = net.transform(X)
    loss_ref, _ = net.loss_and_grad(X)

    def call():
        assert net.transform(X)[0, 0] == Z_ref[0, 0]
        assert net.loss_and_grad(X)[0] == loss_ref

    assert _growth(call) < RSS_BOUND


# ---------------------------------------------------------------------------
# out of memory: every allocation of a kernel call failed in turn
# ---------------------------------------------------------------------------

_FAULT_CASES = ["cd", "ista", "fista", "oista", "backtracking", "duality_gap", "lipschitz",
                "step_forward", "coupled_gradient", "lista_gradient", "dictionary_step"]


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="needs _testcapi")
@pytest.mark.parametrize("case", _FAULT_CASES)
def test_a_kernel_call_out_of_memory_raises_and_frees_its_work_table(case):
    # tests/allocation_faults.py, in a child (a crash must not end the
    # suite): every Python allocation inside the kernel fails in turn. Each
    # failed call raises: MemoryError, or where the failure is not checked
    # by its own code, NumPy's SystemError ("NULL object passed to
    # Py_BuildValue", from ndarray.ctypes) or Cython's TypeError (its fused
    # functions' dispatch: "No matching signature found"). It frees its
    # work table (leaked when the failure came between the table's
    # allocation and the try that frees it), and corrupts nothing: Cython
    # 3.3 compiles a list comprehension whose append fails into a second
    # decref of the item, and its build crashed here (pyproject.toml keeps
    # Cython < 3.3)
    import json
    import os
    import subprocess

    pytest.importorskip("_testcapi")
    if np.lib.NumpyVersion(np.__version__) < "2.0.0":
        pytest.skip("NumPy 1.x crashes itself on a failed allocation: np.cumsum of a "
                    "list, alone, segfaults under the same sweep (1.25.2)")
    import fastlista

    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fastlista.__file__)))
    run = subprocess.run([sys.executable, "allocation_faults.py", case, "2"],
                         capture_output=True, text=True, cwd=os.path.dirname(__file__),
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["faults"].get("MemoryError", 0) >= 10, out
    assert set(out["faults"]) <= {"MemoryError", "SystemError", "TypeError"}, out
    assert out["tables"] == 0, out
    assert out["same"], out


def test_a_gram_matrix_beyond_memory_is_named():
    """The solvers' one work array beyond the size of their inputs and codes
    is D's Gram matrix: 20 000 atoms of one feature (160 kB) need 3 GiB.
    Under an address-space limit 1 GiB above the child's start, solve_lasso
    raised NumPy's "Unable to allocate 2.98 GiB for an array with shape
    (20000, 20000)", naming no argument; it names D's atoms, and the same
    process then solves a D of 100 atoms (nothing was lost). Called as
    fastlista.ista, the message named solve_lasso, which the user had not
    called (1e9fc23 renamed the shortcuts' other messages)."""
    import os
    import subprocess

    code = """if True:
        import resource
        import numpy as np
        import fastlista
        from fastlista import solve_lasso
        with open("/proc/self/status") as f:
            size = int(f.read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, size + 2**30))
        D = np.random.default_rng(0).standard_normal((20000, 1))
        for method in ("auto", "ista"):
            try:
                solve_lasso(np.ones((1, 1)), D, 0.5, method=method, n_jobs=1)
            except MemoryError as exc:
                print(exc)
        try:
            fastlista.ista(np.ones((1, 1)), D, 0.5, n_jobs=1)
        except MemoryError as exc:
            print(exc)
        res = solve_lasso(np.ones((1, 1)), D[:100], 0.5, n_jobs=1)
        print(bool(res.converged[0]), float(np.abs(res.codes).sum()))
    """
    import fastlista

    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fastlista.__file__)),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    # (in the tests' directory: "python -c" puts the working directory first
    # on the path, where a source checkout's unbuilt package would shadow the
    # installed one)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(__file__), env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    message = ("solve_lasso: D has 20000 atoms, and the solvers work on its Gram matrix "
               "D D^T (20000 x 20000 float64, 2.98 GiB, and a float32 copy for float32 "
               "data), which does not fit in the memory available.")
    assert lines[:2] == [message, message], run.stdout
    # the shortcut ista names itself, as its other messages do
    assert lines[2] == message.replace("solve_lasso:", "ista:"), run.stdout
    # one feature: the whole code on the largest atom a = max |d_j|, where
    # 1/2 (1 - a u)^2 + 0.5 u is least: |z|_1 = u = (a - 0.5) / a^2
    a = np.abs(np.random.default_rng(0).standard_normal((20000, 1))[:100]).max()
    converged, l1 = lines[3].split()
    assert converged == "True"
    assert abs(float(l1) - (a - 0.5) / a**2) <= 1e-7
