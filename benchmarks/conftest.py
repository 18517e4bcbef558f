"""Shared problems for the pytest-benchmark suites.

Run the suite (real timings, a JSON for ``report.py``)::

    pytest benchmarks --benchmark-only --benchmark-json=out.json
    python benchmarks/report.py out.json

or as a one-shot smoke test (each benchmarked function runs once)::

    pytest benchmarks --benchmark-disable

Problem size: the paper's shape, 64 features x 256 atoms x 10000 samples of
``make_coding`` (float64, seed 0), and its float32 cast (fixture ``problems``:
{"float64": ..., "float32": ...}). ``FASTLISTA_BENCH_SMALL=1`` reduces it to
1000 samples (for a quick look; ratios are only meaningful at the paper shape).

Threads: nothing here limits or pins BLAS/OpenMP thread pools. Our functions
and the references run with the same (default) pools, so that the ratios are
what a user gets; the pools in use are recorded in the machine info of the
JSON (``fastlista_threadpools``) when threadpoolctl is installed.

Every benchmark records in ``extra_info``:

* ``role``: ``"ours"`` (a fastlista function) or ``"reference"`` (what it is
  compared with, in the same group and run);
* ``calls_per_round``: how many units of work (iterations) one benchmarked
  call performs; reported times are divided by it;
* on ``"reference"`` entries, ``target_ratio``: the largest acceptable
  ``median(ours) / median(reference)`` against that reference (the project's
  targets; ``target_rows="marginal"`` applies it to the marginal row only),
  and ``compare`` (numbers recorded beside the timings; see ``report.py``).

At the end of a timed run the ratio table is printed and added to the JSON
under ``fastlista_ratios``.
"""
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import fastlista
from fastlista.datasets import make_coding
from interleave import small_problems

N_FEATURES = 64
N_ATOMS = 256
N_SAMPLES_PAPER = 10000
N_SAMPLES_SMALL = 1000
SEED = 0




def _load_report():
    path = Path(__file__).with_name("report.py")
    spec = importlib.util.spec_from_file_location("_fastlista_bench_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def n_samples():
    """Number of samples of the benchmark problems (10000, or 1000 when small)."""
    return N_SAMPLES_SMALL if small_problems() else N_SAMPLES_PAPER


@pytest.fixture(scope="session")
def problem(n_samples):
    """(X, D): the paper's simulated problem, float64, lambda_max = 1 per row."""
    X, D = make_coding(n_samples=n_samples, n_atoms=N_ATOMS,
                       n_features=N_FEATURES, random_state=SEED)
    X.setflags(write=False)
    D.setflags(write=False)
    return X, D


@pytest.fixture(scope="session")
def problem32(problem):
    """(X, D) of :func:`problem` cast to float32 (float32 in, float32 out)."""
    X, D = (np.ascontiguousarray(A, dtype=np.float32) for A in problem)
    X.setflags(write=False)
    D.setflags(write=False)
    return X, D


@pytest.fixture(scope="session")
def problems(problem, problem32):
    """{"float64": problem, "float32": problem32}."""
    return {"float64": problem, "float32": problem32}


@pytest.fixture(scope="session")
def solution_08(problem):
    """Lasso solutions at lmbd = 0.8 (the sparse regime), shape (N, m)."""
    X, D = problem
    Z = np.asarray(fastlista.solve_lasso(X, D, 0.8, tol=1e-10).codes)
    Z.setflags(write=False)
    return Z


@pytest.fixture(scope="session")
def supports_08(solution_08):
    """Boolean supports (N, m) of the lmbd = 0.8 solutions."""
    S = np.ascontiguousarray(solution_08 != 0)
    S.setflags(write=False)
    return S


@pytest.fixture(scope="session")
def gram(problem):
    """B = D D^T, shape (m, m)."""
    _, D = problem
    return D @ D.T


def base_info(benchmark, problem, *, role, **extra):
    """Fill ``benchmark.extra_info`` with the problem shape and ``role``."""
    X, D = problem
    benchmark.extra_info.update(
        role=role, n_samples=X.shape[0], n_atoms=D.shape[0],
        n_features=D.shape[1], dtype=str(X.dtype), calls_per_round=1)
    benchmark.extra_info.update(extra)


@pytest.fixture
def info():
    """The helper :func:`base_info`, for the benchmark modules."""
    return base_info


# --------------------------------------------------------------------- hooks
def pytest_report_header(config):
    size = N_SAMPLES_SMALL if small_problems() else N_SAMPLES_PAPER
    return (f"fastlista benchmarks: {size} samples x {N_ATOMS} atoms x "
            f"{N_FEATURES} features, float64 and float32 (FASTLISTA_BENCH_SMALL="
            f"{os.environ.get('FASTLISTA_BENCH_SMALL', '')!r})")


def pytest_benchmark_update_machine_info(config, machine_info):
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # optional
        return
    machine_info["fastlista_threadpools"] = [
        {k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
        for p in threadpool_info()]
    machine_info["fastlista_cpu_count"] = os.cpu_count()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    try:
        report = _load_report()
        output_json["fastlista_ratios"] = report.compute_ratios(output_json["benchmarks"])
    except Exception as exc:  # never lose the timings over the summary
        output_json["fastlista_ratios_error"] = repr(exc)


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or getattr(session, "disabled", False):
        return
    benches = []
    for bench in getattr(session, "benchmarks", []):
        try:
            benches.append(bench.as_dict(include_data=False))
        except Exception:  # a benchmark without stats (failed or skipped)
            continue
    if not benches:
        return
    report = _load_report()
    rows = report.compute_ratios(benches)
    if rows:
        terminalreporter.write_sep("-", "fastlista ratios (median of ours / median of reference)")
        terminalreporter.write_line(report.format_table(rows))
