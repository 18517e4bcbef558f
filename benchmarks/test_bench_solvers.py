"""Benchmarks of the batch Lasso solvers against their references.

Each group times a fastlista function (``role="ours"``) and its reference
(``role="reference"``) in the same run; ``benchmarks/report.py`` turns a JSON
of the run into ratios. The targets (docs/benchmarks.md) hold in float64 and
float32 (the paper's problem cast to float32; the float32 groups carry
" float32" in their name):

* ``exact-solve lmbd=...``: ``solve_lasso`` (default method, tol 1e-8;
  float32: tol 1e-5, about the float32 certificate's floor) vs scikit-learn
  ``sparse_encode(algorithm="lasso_cd")`` on the same data (float32 data:
  scikit-learn's float32 coordinate descent): >= 10x faster at lmbd = 0.1 and
  at lmbd = 0.8, with no worse mean objective;
* ``ista-iteration lmbd=0.1``: the marginal cost of one dense ISTA iteration
  vs the two NumPy GEMMs it needs (``Z @ D`` and ``R @ D.T``, same dtype),
  <= 0.9x; a plain NumPy ISTA iteration is timed too, for context;
* ``oista-vs-ista lmbd=0.8``: OISTA vs ISTA to a relative duality gap of
  1e-10: <= 0.35x the iterations and <= 0.6x the time.

``python benchmarks/test_bench_solvers.py N`` times the exact solves and the
ISTA iteration interleaved with their references (``interleave.py``), and,
without a target, ``one sample a call, 0.1 / D D^T not kept`` (and 0.8):
100 calls of ``solve_lasso`` on one sample each with one dictionary,
against the same calls without the Gram matrix kept from the previous call;
where the block products run through fastlista's GEMM
(``fastlista._kernels._gemm.OWN_GEMM``), ``ISTA iteration 0.1 / through
BLAS``: the marginal iteration against the same through BLAS, and where
that GEMM is its 64-byte tile (AVX-512), ``ISTA iteration 0.1 / 32-byte
GEMM tile``: against the same through its 32-byte tile.
"""
import functools
import os
import sys
import time

import numpy as np
import pytest

import fastlista
from fastlista._kernels._gemm import GEMM_AVX2, GEMM_AVX512, GEMM_BLAS, OWN_GEMM

EXACT_TOL = {"float64": 1e-8, "float32": 1e-5}
# ISTA iterations per benchmarked call: two counts, so that the report can
# also give the marginal cost of one iteration (without per-call overhead)
ISTA_K = (5, 25)
WARM_START_ITER = 20
OISTA_TOL = 1e-10
DTYPES = ["float64", "float32"]


def _run(benchmark, func, *args, rounds=None, **kwargs):
    """``benchmark(func, ...)``, or a fixed number of rounds for slow calls."""
    if rounds is None:
        return benchmark(func, *args, **kwargs)
    return benchmark.pedantic(func, args=args, kwargs=kwargs, rounds=rounds,
                              iterations=1, warmup_rounds=0)


def _group(name, lmbd, dtype):
    return f"{name}{'' if dtype == 'float64' else ' ' + dtype} lmbd={lmbd}"


def _result_info(X, D, lmbd, Z):
    obj = fastlista.lasso_objective(X, D, lmbd, Z)
    gap = fastlista.duality_gap(X, D, lmbd, Z)
    return dict(objective_mean=float(np.mean(obj)),
                gap_max=float(np.max(gap)),
                nnz_mean=float(np.count_nonzero(Z, axis=1).mean()))


# ---------------------------------------------------------------- exact solve
EXACT_TARGET = {0.1: 1 / 10, 0.8: 1 / 10}
# no worse mean objective than scikit-learn's (whose own stopping rule is
# looser), up to the rounding of the dtype
EXACT_OBJECTIVE_RTOL = {"float64": 1e-8, "float32": 1e-5}


def sklearn_lasso_cd(X, D, lmbd, stats=None):
    """scikit-learn's ``sparse_encode(X, D, algorithm="lasso_cd")`` at lmbd
    (its float32 coordinate descent on float32 data). The number of samples
    that stopped at max_iter (its ConvergenceWarnings) goes to
    ``stats["not_converged"]`` when ``stats`` is a dict."""
    import warnings

    from sklearn.decomposition import sparse_encode

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Z = sparse_encode(X, D, algorithm="lasso_cd", alpha=lmbd, max_iter=10000)
    if stats is not None:
        stats["not_converged"] = sum("did not converge" in str(w.message)
                                     for w in caught)
    return Z


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lmbd", [0.1, 0.8])
def test_exact_solve_fastlista(benchmark, problems, info, lmbd, dtype):
    problem = problems[dtype]
    X, D = problem
    tol = EXACT_TOL[dtype]
    benchmark.group = _group("exact-solve", lmbd, dtype)
    info(benchmark, problem, role="ours", lmbd=lmbd,
         label=f"fastlista.solve_lasso(auto, tol={tol:g})")
    res = _run(benchmark, fastlista.solve_lasso, X, D, lmbd, tol=tol,
               rounds=3 if lmbd == 0.1 else None)
    assert res.codes.dtype == X.dtype
    benchmark.extra_info.update(_result_info(X, D, lmbd, res.codes))
    benchmark.extra_info.update(
        n_iter_mean=float(np.mean(res.n_iter)),
        converged_fraction=float(np.mean(res.converged)),
        method=str(getattr(res, "method", "auto")))
    assert np.all(res.converged), "the certified gaps must meet tol"


# scikit-learn on float32 data: its float32 coordinate descent (the float32
# reference), and, for context, on the same data cast to float64. Its float32
# solver cannot reach its own stopping rule on many samples (its gap is
# computed in float32) and runs them to max_iter: minutes a call, one round.
SKLEARN_CASES = [("float64", "float64"), ("float32", "float32"), ("float32", "float64")]


@pytest.mark.parametrize("dtype,solver_dtype", SKLEARN_CASES,
                         ids=["float64", "float32", "float32-data-float64-solver"])
@pytest.mark.parametrize("lmbd", [0.1, 0.8])
def test_exact_solve_sklearn(benchmark, problems, info, lmbd, dtype, solver_dtype):
    pytest.importorskip("sklearn.decomposition")
    problem = problems[dtype]
    X, D = problem
    context = dtype != solver_dtype
    benchmark.group = _group("exact-solve", lmbd, dtype)
    info(benchmark, problem, role="reference", lmbd=lmbd,
         label="sklearn sparse_encode(lasso_cd, max_iter=10000)"
         + (" on the data cast to float64 (context)" if context else ""),
         compare={"objective_mean": {"kind": "rel_diff",
                                     "max": EXACT_OBJECTIVE_RTOL[dtype]}},
         **({} if context else {"target_ratio": EXACT_TARGET[lmbd]}))
    stats = {}
    Xs, Ds = (np.asarray(A, dtype=solver_dtype) for A in problem)
    # ~10 s at lmbd = 0.1 on the paper shape (minutes in float32): one round
    Z = _run(benchmark, sklearn_lasso_cd, Xs, Ds, lmbd, stats,
             rounds=1 if (lmbd == 0.1 or solver_dtype == "float32") else 3)
    benchmark.extra_info["result_dtype"] = str(Z.dtype)
    benchmark.extra_info["not_converged"] = stats.get("not_converged")
    benchmark.extra_info.update(_result_info(X, D, lmbd, np.asarray(Z, dtype=dtype)))


# ---------------------------------------------------------- one ISTA iteration
ITER_LMBD = 0.1
ITER_TARGET = 0.9       # marginal cost of one iteration / GEMM pair


def warm_start(X, D, lmbd=ITER_LMBD):
    """Codes after a few ISTA iterations: realistic iterates (X's dtype)."""
    Z0 = np.asarray(fastlista.solve_lasso(
        X, D, lmbd, method="ista", tol=0, max_iter=WARM_START_ITER).codes)
    Z0.setflags(write=False)
    return Z0


@pytest.fixture(scope="module")
def warm_starts(problems):
    """{dtype: codes after WARM_START_ITER ISTA iterations at lmbd = 0.1}."""
    return {dtype: warm_start(*problems[dtype]) for dtype in DTYPES}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", ISTA_K)
def test_ista_iteration_fastlista(benchmark, problems, info, warm_starts, k, dtype):
    problem = problems[dtype]
    X, D = problem
    Z0 = warm_starts[dtype]
    benchmark.group = _group("ista-iteration", ITER_LMBD, dtype)
    info(benchmark, problem, role="ours", lmbd=ITER_LMBD, calls_per_round=k,
         label="fastlista ISTA iteration", warm_start_iterations=WARM_START_ITER,
         nnz_mean_warm_start=float(np.count_nonzero(Z0, axis=1).mean()))
    res = benchmark(fastlista.solve_lasso, X, D, ITER_LMBD, method="ista",
                    tol=0, max_iter=k, Z0=Z0)
    n_iter = np.asarray(res.n_iter)
    benchmark.extra_info["n_iter_mean"] = float(n_iter.mean())
    # per-iteration times are the call time / k: only valid if tol=0 runs
    # exactly max_iter iterations
    assert np.all(n_iter == k), f"tol=0 ran {np.unique(n_iter)} iterations, not {k}"


def gemm_pair(X, D, Z):
    """The two GEMMs of one dense ISTA iteration, ``Z @ D`` and ``R @ D.T``,
    in the dtype of X (a function to time)."""
    Z = np.ascontiguousarray(Z, dtype=X.dtype)
    R = np.ascontiguousarray(Z @ D - X)
    out_n = np.empty_like(X)
    out_m = np.empty_like(Z)
    DT = D.T

    def pair():
        np.matmul(Z, D, out=out_n)
        np.matmul(R, DT, out=out_m)
        return out_m

    return pair


@pytest.mark.parametrize("dtype", DTYPES)
def test_ista_iteration_gemm_pair(benchmark, problems, info, warm_starts, dtype):
    problem = problems[dtype]
    X, D = problem
    benchmark.group = _group("ista-iteration", ITER_LMBD, dtype)
    info(benchmark, problem, role="reference", lmbd=ITER_LMBD,
         label="NumPy GEMM pair Z @ D, R @ D.T", target_ratio=ITER_TARGET,
         target_rows="marginal")
    benchmark(gemm_pair(X, D, warm_starts[dtype]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ista_iteration_numpy(benchmark, problems, info, warm_starts, dtype):
    problem = problems[dtype]
    X, D = problem
    benchmark.group = _group("ista-iteration", ITER_LMBD, dtype)
    info(benchmark, problem, role="reference", lmbd=ITER_LMBD,
         label="NumPy ISTA iteration (context)")
    L = X.dtype.type(np.linalg.eigvalsh(np.asarray(D, np.float64) @ D.T)[-1])
    Z = warm_starts[dtype]
    thresh = X.dtype.type(ITER_LMBD) / L

    def numpy_ista_iteration():
        U = Z - ((Z @ D - X) @ D.T) / L
        return np.sign(U) * np.maximum(np.abs(U) - thresh, 0)

    benchmark(numpy_ista_iteration)


# --------------------------------------------------------------- OISTA vs ISTA
OISTA_LMBD = 0.8


def _oista_vs_ista(benchmark, problem, info, method, role, **extra):
    X, D = problem
    benchmark.group = f"oista-vs-ista lmbd={OISTA_LMBD}"
    info(benchmark, problem, role=role, lmbd=OISTA_LMBD, tol=OISTA_TOL,
         label=f"solve_lasso(method={method!r}, tol={OISTA_TOL:g})", **extra)
    res = _run(benchmark, fastlista.solve_lasso, X, D, OISTA_LMBD, method=method,
               tol=OISTA_TOL, rounds=3)
    benchmark.extra_info.update(
        n_iter_mean=float(np.mean(res.n_iter)),
        n_iter_max=int(np.max(res.n_iter)),
        converged_fraction=float(np.mean(res.converged)))
    benchmark.extra_info.update(_result_info(X, D, OISTA_LMBD, res.codes))
    return res


def test_oista(benchmark, problem, info):
    _oista_vs_ista(benchmark, problem, info, "oista", "ours")


def test_ista_to_gap(benchmark, problem, info):
    _oista_vs_ista(benchmark, problem, info, "ista", "reference", target_ratio=0.6,
                   compare={"n_iter_mean": {"kind": "ratio", "max": 0.35},
                            "objective_mean": {"kind": "rel_diff", "max": 1e-10}})


# ------------------------------------------------ interleaved side by side
def _exact_case(name, X, D, lmbd, tol, solver_dtype, target, threads=None):
    """An interleaved case: solve_lasso vs sklearn_lasso_cd in solver_dtype;
    its check (evaluated after the rounds, on the last results) compares the
    mean objectives and tells how many samples sklearn ran to max_iter.
    scikit-learn's float32 solver takes minutes: one round, no priming."""
    from interleave import Case

    last = {}
    Xs, Ds = X.astype(solver_dtype), D.astype(solver_dtype)

    def ours():
        t0 = time.perf_counter()
        last["res"] = fastlista.solve_lasso(X, D, lmbd, tol=tol, n_jobs=threads)
        return time.perf_counter() - t0

    def reference():
        t0 = time.perf_counter()
        last["Z"] = sklearn_lasso_cd(Xs, Ds, lmbd, last)
        return time.perf_counter() - t0

    def check():
        res, Zs = last["res"], last["Z"]
        f_ours = float(np.mean(fastlista.lasso_objective(X, D, lmbd, res.codes)))
        f_ref = float(np.mean(fastlista.lasso_objective(X, D, lmbd,
                                                        Zs.astype(X.dtype))))
        rel = (f_ours - f_ref) / abs(f_ref)
        bad = rel > EXACT_OBJECTIVE_RTOL[str(X.dtype)] or not np.all(res.converged)
        return (("MISMATCH " if bad else "") + f"objective rel. diff {rel:.1e}, "
                f"certified {np.mean(res.converged):.0%}; sklearn in {Zs.dtype}, "
                f"{last['not_converged']} samples at max_iter")

    slow = solver_dtype == "float32"
    return Case(name, ours, reference, target, check, rounds=1 if slow else None,
                prime=0)


def interleaved(n_rounds=5, small=False, keyword=None, verbose=False, threads=None):
    """The exact solves and the ISTA iteration, interleaved with their
    references (median of the per-round ratios), float64 and float32.

    The marginal cost of one ISTA iteration is, within each round,
    (t(25 iterations) - t(5 iterations)) / 20 (each the faster of two calls)
    against the mean of 20 GEMM pairs. ``keyword`` keeps the comparisons whose name contains it.
    """
    import interleave
    from interleave import Case, repeated, timer

    from fastlista.datasets import make_coding

    X64, D64 = make_coding(1000 if small else 10000, 256, 64, random_state=0)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        sklearn = None
    cases = []
    for dtype in DTYPES:
        X, D = X64.astype(dtype), D64.astype(dtype)
        tol = EXACT_TOL[dtype]
        for lmbd in (0.1, 0.8):
            name = f"exact solve {lmbd} (tol {tol:g}) / sklearn lasso_cd {dtype}"
            if sklearn is None or (keyword is not None and keyword not in name):
                continue
            solvers = [(dtype, EXACT_TARGET[lmbd])]
            if dtype == "float32":     # context: scikit-learn in float64
                solvers.append(("float64", None))
            for solver_dtype, target in solvers:
                cases.append(_exact_case(name if solver_dtype == dtype
                                         else name + " (sklearn in float64)",
                                         X, D, lmbd, tol, solver_dtype, target,
                                         threads))
        k1, k2 = ISTA_K

        def marginal(X, D, Z0, gemm=None):
            # the faster of two calls of each length: a difference of two
            # noisy times is noisier still; gemm: _solvers._OWN_GEMM for
            # the calls (None: the default)
            t = {k1: np.inf, k2: np.inf}
            default = fastlista._solvers._OWN_GEMM
            if gemm is not None:
                fastlista._solvers._OWN_GEMM = gemm
            try:
                for k in (k1, k2, k1, k2):
                    t0 = time.perf_counter()
                    fastlista.solve_lasso(X, D, ITER_LMBD, method="ista", tol=0,
                                          max_iter=k, Z0=Z0, n_jobs=threads)
                    t[k] = min(t[k], time.perf_counter() - t0)
            finally:
                fastlista._solvers._OWN_GEMM = default
            return (t[k2] - t[k1]) / (k2 - k1)

        name = f"ISTA iteration 0.1 (marginal 5->25) / GEMM pair {dtype}"
        if keyword is None or keyword in name:
            Z0 = warm_start(X, D)
            # the marginal is one iteration's cost only if tol=0 ran exactly k
            ran = {k: np.unique(fastlista.solve_lasso(
                X, D, ITER_LMBD, method="ista", tol=0, max_iter=k, Z0=Z0,
                n_jobs=threads).n_iter).tolist() for k in (k1, k2)}
            check = ("" if all(ran[k] == [k] for k in ran) else "MISMATCH ") + \
                f"iterations run {ran[k1]}, {ran[k2]}"
            cases.append(Case(name, functools.partial(marginal, X, D, Z0),
                              repeated(gemm_pair(X, D, Z0), k2 - k1), ITER_TARGET, check))
        # where the block products run through _gemm.h: the same iterations
        # through BLAS, and through its 32-byte tile where the default is the
        # 64-byte one (no target: what the tiles buy)
        others = []
        if OWN_GEMM:
            others.append((GEMM_BLAS, "through BLAS"))
        if OWN_GEMM == GEMM_AVX512:
            others.append((GEMM_AVX2, "32-byte GEMM tile"))
        for level, label in others:
            name = f"ISTA iteration 0.1 (marginal 5->25) / {label} {dtype}"
            if keyword is None or keyword in name:
                Z0 = warm_start(X, D)
                cases.append(Case(name, functools.partial(marginal, X, D, Z0),
                                  functools.partial(marginal, X, D, Z0, level)))
        for lmbd in (0.1, 0.8):
            name = f"one sample a call, {lmbd} / D D^T not kept {dtype}"
            if keyword is None or keyword in name:
                cases.append(Case(name, timer(one_sample_calls(X[:100], D, lmbd, tol)),
                                  timer(one_sample_calls(X[:100], D, lmbd, tol,
                                                         keep_gram=False))))
    return interleave.run(cases, n_rounds, prime=1, verbose=verbose)


def one_sample_calls(X, D, lmbd=0.1, tol=1e-8, keep_gram=True):
    """A pipeline's calls: ``solve_lasso`` on each row of X in turn, one
    dictionary. ``keep_gram=False`` drops the Gram matrix that solve_lasso
    keeps from the previous call on the same dictionary (no target: what
    keeping it buys)."""
    from fastlista import _lipschitz

    def calls():
        for i in range(X.shape[0]):
            if not keep_gram:
                _lipschitz._last_gram = None
            fastlista.solve_lasso(X[i:i + 1], D, lmbd, tol=tol)
    return calls


if __name__ == "__main__":
    # python benchmarks/test_bench_solvers.py [n_rounds] [-k SUBSTRING] [--threads N]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import interleave

    sys.exit(interleave.main(interleaved, default_rounds=5))
