"""Shared fixtures: seeded small problems, cached reference solutions."""
import contextlib
import functools
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import reference as ref  # noqa: E402

# lmbd relative to lambda_max = 1 (every sample of make_problem has lambda_max 1)
LMBDS = (0.05, 0.3, 0.8)
METHODS = ("ista", "fista", "backtracking", "oista", "cd", "auto")

# ids of the levels of fastlista._kernels._gemm.GEMM_KERNELS (who multiplies
# the solvers' and networks' dense blocks): BLAS, _gemm.h's 32- and 64-byte
# register tiles
GEMM_IDS = {0: "blas", 3: "tile32", 4: "tile64"}.get

# seeded problems: under- and over-complete dictionaries, a batch of several
# blocks of samples, and sparse codes on a larger dictionary
PROBLEMS = {
    "under": dict(n_samples=40, n_features=30, n_atoms=20),
    "over": dict(n_samples=30, n_features=20, n_atoms=40),
    "batch": dict(n_samples=200, n_features=10, n_atoms=20),
    "sparse": dict(n_samples=60, n_features=30, n_atoms=60, density=0.1, noise=0.05),
}


@functools.lru_cache(maxsize=None)
def _problem(kind, seed):
    X, D = ref.make_problem(**PROBLEMS[kind], seed=seed)
    X.setflags(write=False)
    D.setflags(write=False)
    return X, D


def get_problem(kind="under", dtype=np.float64, seed=0):
    """Fresh (writeable) copies of a cached seeded problem, in ``dtype``."""
    X, D = _problem(kind, seed)
    return X.astype(dtype), D.astype(dtype)


@functools.lru_cache(maxsize=None)
def _exact(kind, lmbd, seed):
    X, D = _problem(kind, seed)
    Z = ref.solve_exact(X, D, lmbd)
    Z.setflags(write=False)
    return Z


def get_exact(kind, lmbd, seed=0):
    """Reference solution (NumPy coordinate descent, gap <= 1e-15 0.5||x||^2)."""
    return _exact(kind, lmbd, seed).copy()


#: the coordinate descent tolerance scikit-learn >= 1.8 gives the Lasso of
#: sparse_encode(algorithm="lasso_cd") (hard-coded, not a parameter)
SPARSE_ENCODE_LASSO_TOL = 1e-8


@contextlib.contextmanager
def sklearn_sparse_encode_tol(tol=SPARSE_ENCODE_LASSO_TOL):
    """scikit-learn's ``sparse_encode(algorithm="lasso_cd")`` -- hence
    ``SparseCoder`` and ``MiniBatchDictionaryLearning``, which code through
    it -- at coordinate descent tolerance ``tol`` on any version.

    scikit-learn >= 1.8 builds that ``Lasso`` with ``tol=1e-8``; earlier
    versions (1.7.2 is the newest for Python 3.10) build it without ``tol``,
    i.e. at ``Lasso``'s default 1e-4: a duality gap up to 1e-4 ||x||^2
    (measured: 1e-4 of 1/2 ||x||^2 on 1.7.2, 1e-8 on 1.9.1). Neither version
    exposes the tolerance, so within this context a ``Lasso`` that
    ``sklearn.decomposition._dict_learning`` builds without ``tol`` gets
    ``tol``; one built with a ``tol`` (>= 1.8) is left alone.

    Yields the list of the tolerances of the ``Lasso`` objects built in the
    context: a test asserts that it is not empty and holds only ``tol`` (so
    it fails, rather than compares with codes of another accuracy, if a
    version codes otherwise)."""
    from sklearn.decomposition import _dict_learning

    lasso = _dict_learning.Lasso
    built = []

    def with_tol(*args, **kwargs):
        kwargs.setdefault("tol", tol)
        built.append(kwargs["tol"])
        return lasso(*args, **kwargs)

    _dict_learning.Lasso = with_tol
    try:
        yield built
    finally:
        _dict_learning.Lasso = lasso


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param


def rtol_for(dtype):
    """A relative tolerance suited to results computed in ``dtype``."""
    return 1e-4 if np.dtype(dtype) == np.float32 else 1e-10


def assert_allclose_dtype(actual, desired, dtype, rtol=None, atol=0.0, **kw):
    """assert_allclose with a default rtol scaled to ``dtype``."""
    np.testing.assert_allclose(actual, desired, rtol=rtol_for(dtype) if rtol is None else rtol,
                               atol=atol, **kw)


def cpu_flags():
    """The running CPU's flags from /proc/cpuinfo on Linux x86-64, else None."""
    import platform
    if not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
        return None
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
    return flags


def fuzz_settings(name, long_examples, suppress=("too_slow", "data_too_large")):
    """The hypothesis settings of a fuzz module.

    By default the profile ``fastlista-{name}-ci``: derandomised, 60
    examples a test, no example database (CI). With ``FASTLISTA_FUZZ=long``,
    ``fastlista-{name}-long``: random, ``long_examples`` a test.
    ``FASTLISTA_FUZZ_EXAMPLES=N`` overrides the number of examples. Every
    test of the module takes the returned object as its decorator, so that
    another module's ``load_profile`` never changes its budget.
    """
    from hypothesis import HealthCheck, settings
    checks = [getattr(HealthCheck, c) for c in suppress]
    settings.register_profile(
        f"fastlista-{name}-ci", derandomize=True, deadline=None, max_examples=60,
        print_blob=True, database=None, suppress_health_check=checks)
    settings.register_profile(
        f"fastlista-{name}-long", derandomize=False, deadline=None,
        max_examples=long_examples, print_blob=True, suppress_health_check=checks)
    mode = "long" if os.environ.get("FASTLISTA_FUZZ") == "long" else "ci"
    examples = os.environ.get("FASTLISTA_FUZZ_EXAMPLES")
    return settings(settings.get_profile(f"fastlista-{name}-{mode}"),
                    **({"max_examples": int(examples)} if examples else {}))


@pytest.fixture
def sticky_dir():
    """A /tmp-like directory (mode 1777, owned by root) and ``as_nobody``,
    which runs a function as user "nobody" (65534) in a forked child that
    shares this process's modules: ``as_nobody(action)`` returns what
    ``action()`` returned, an int and a str. Root only (to act as another
    user); pytest's tmp_path is private to root, so the directory is made
    in the system's temporary directory."""
    import shutil
    import tempfile

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    top = tempfile.mkdtemp(prefix="fastlista-sticky-")
    shared = os.path.join(top, "shared")
    os.mkdir(shared)
    os.chmod(top, 0o755)
    os.chmod(shared, 0o1777)

    def as_nobody(action):
        import warnings

        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            # (Python 3.12+ warns on a fork of a process with threads: the
            # child runs no thread pool, only os calls and this module's
            # Python, and exits at once)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:                                # the child: never returns
            code = 99
            try:
                os.setgid(65534)
                os.setuid(65534)
                if not os.access(shared, os.W_OK | os.X_OK):
                    code = 97                       # a parent nobody may enter
                else:
                    code, text = action()
                    os.write(write_end, text.encode())
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as f:
            text = f.read().decode()
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if code == 97:
            pytest.skip(f"user nobody cannot enter {shared}")
        return code, text

    try:
        yield shared, as_nobody
    finally:
        shutil.rmtree(top)
