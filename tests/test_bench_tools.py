"""The benchmark tooling (benchmarks/report.py, interleave.py and
``fastlista bench``) on hand-made inputs whose answers are worked out here.

The speed figures of the project are ratios computed by these tools: a ratio
inverted, or a check that passes two results that disagree, would make every
figure wrong while the benchmarks still run.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
if not (BENCH_DIR / "report.py").is_file():
    pytest.skip("not a source checkout (benchmarks/ is not installed)",
                allow_module_level=True)
sys.path.insert(0, str(BENCH_DIR))

import interleave  # noqa: E402
import report  # noqa: E402

import fastlista  # noqa: E402

SUB_ENV_PATH = str(Path(fastlista.__file__).resolve().parent.parent)


def entry(group, role, median, label, **extra):
    return {"group": group, "name": label, "stats": {"median": median},
            "extra_info": {"role": role, "label": label, **extra}}


def test_report_ratio_target_and_one_and_two_sided_comparisons():
    benches = [
        entry("g", "ours", 0.002, "fast", loss=0.5, objective=1.0 - 1e-9),
        entry("g", "reference", 0.004, "slow", target_ratio=0.5, loss=1.0,
              objective=1.0,
              compare={"loss": {"kind": "abs_rel_diff", "max": 1e-10},
                       "objective": {"kind": "rel_diff", "max": 1e-10},
                       "grads": {"kind": "value", "max": 1e-8}}),
    ]
    [row] = report.compute_ratios(benches)
    # 2 ms / 4 ms = 0.5, exactly at the target: within it
    assert row["ratio"] == 0.5 and row["ok"] is True
    metrics = {m["name"]: m for m in row["metrics"]}
    # a loss half the reference's disagrees by 50 %, whichever side is lower
    assert metrics["loss"]["value"] == 0.5 and metrics["loss"]["ok"] is False
    # a lower objective than the reference's is "no worse": one-sided
    assert metrics["objective"]["value"] == pytest.approx(-1e-9)
    assert metrics["objective"]["ok"] is True
    # a value the reference should have measured, missing: a failure
    assert metrics["grads"]["value"] is None and metrics["grads"]["ok"] is False


def test_report_marginal_rows_and_a_negative_marginal():
    # k = 5 and k = 25 iterations a call: (0.3 - 0.1) / 20 = 10 ms an iteration
    benches = [entry("m", "ours", 0.1, "ista", calls_per_round=5),
               entry("m", "ours", 0.3, "ista", calls_per_round=25),
               entry("m", "reference", 0.02, "gemm", target_ratio=0.9,
                     target_rows="marginal")]
    rows = {r["ours"]: r for r in report.compute_ratios(benches)}
    marginal = rows["ista (marginal 5->25)"]
    assert marginal["ours_median"] == pytest.approx(0.01)
    assert marginal["ratio"] == pytest.approx(0.5) and marginal["ok"] is True
    assert rows["ista (k=5, per iteration)"]["ratio"] == pytest.approx(1.0)
    assert rows["ista (k=5, per iteration)"]["ok"] is None      # no target there
    # noise: the longer call ran faster, a negative "cost": it fails its target
    benches[1]["stats"]["median"] = 0.05
    rows = {r["ours"]: r for r in report.compute_ratios(benches)}
    assert rows["ista (marginal 5->25)"]["ratio"] < 0
    assert rows["ista (marginal 5->25)"]["ok"] is False


def test_report_lists_an_ours_entry_without_reference(tmp_path, capsys):
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"benchmarks": [entry("t", "ours", 0.1, "fastlista")]}))
    assert report.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "(no reference in this run)" in out


def test_interleaved_ratio_is_the_median_of_per_round_ratios_and_a_mismatch_fails():
    # rounds alternate ours/reference, then reference/ours; per-round ratios
    # 0.5, 1.0, 1.5, 2.0: median 1.25
    t_ours, t_ref = iter([1.0, 1.0, 3.0, 4.0]), iter([2.0, 1.0, 2.0, 2.0])
    order = []

    def ours():
        order.append("ours")
        return next(t_ours)

    def ref():
        order.append("ref")
        return next(t_ref)

    case = interleave.Case("c", ours, ref, target=1.25, check="loss 1e-16")
    [row] = interleave.run([case], n_rounds=4, prime=0, pause=0)
    assert order == ["ours", "ref", "ref", "ours", "ours", "ref", "ref", "ours"]
    assert row["ratio"] == 1.25 and row["ok"] is True
    assert row["spread"] == (0.875, 1.625)
    # a check that found a mismatch fails the row whatever its ratio
    fast = interleave.Case("d", lambda: 1.0, lambda: 10.0, target=1.0,
                           check="MISMATCH codes 1e-2")
    [row] = interleave.run([fast], n_rounds=2, prime=0, pause=0)
    assert row["ratio"] == 0.1 and row["ok"] is False
    assert "MISMATCH" in interleave.format_rows([row])


def fake_checkout(root, test_body):
    """A checkout whose benchmarks/ holds one benchmark test."""
    (root / "benchmarks").mkdir(parents=True)
    (root / "benchmarks" / "conftest.py").write_text("")
    (root / "benchmarks" / "report.py").write_text((BENCH_DIR / "report.py").read_text())
    (root / "benchmarks" / "test_fake.py").write_text(test_body)


def run_bench(checkout, out, *extra):
    return subprocess.run(
        [sys.executable, "-m", "fastlista", "bench", "--checkout", str(checkout),
         "--out", str(out), *extra],
        capture_output=True, text=True, cwd=out.parent, timeout=300,
        env={**os.environ, "PYTHONPATH": SUB_ENV_PATH})


def test_bench_exits_with_pytests_failure(tmp_path):
    pytest.importorskip("pytest_benchmark")
    fake_checkout(tmp_path / "repo", (
        "def test_ours(benchmark):\n"
        "    benchmark.extra_info.update(role='ours', label='ours')\n"
        "    benchmark(lambda: None)\n"
        "def test_ref(benchmark):\n"
        "    benchmark.extra_info.update(role='reference', label='ref')\n"
        "    benchmark(lambda: None)\n"
        "    assert False, 'the two sides disagree'\n"))
    proc = run_bench(tmp_path / "repo", tmp_path / "out")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "ratio table" in proc.stdout                 # the timings still shown
    assert "pytest failed (exit status 1)" in proc.stderr


def test_bench_never_reports_a_stale_json(tmp_path):
    pytest.importorskip("pytest_benchmark")
    fake_checkout(tmp_path / "repo", (
        "import pytest\n"
        "def test_skipped(benchmark):\n"
        "    pytest.skip('no reference library')\n"))
    out = tmp_path / "out"
    out.mkdir()
    stale = {"benchmarks": [entry("old", "ours", 1.0, "stale-ours"),
                            entry("old", "reference", 2.0, "stale-ref")]}
    (out / "benchmarks.json").write_text(json.dumps(stale))
    proc = run_bench(tmp_path / "repo", out)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no timings were written" in proc.stderr
    assert "stale-ours" not in proc.stdout
    # the earlier run's JSON is kept as it was (pytest writes beside it, and
    # only a complete JSON replaces it), never read for this run's table
    assert json.loads((out / "benchmarks.json").read_text()) == stale
    assert sorted(p.name for p in out.iterdir()) == ["benchmarks.json"]


def test_avx2_env_asks_every_library_for_its_avx2_kernels(tmp_path):
    """--avx2's environment takes each library that picks its kernels when it
    loads to its AVX2 ones, and a process started in it runs them: SciPy's
    OpenBLAS, which fastlista's plans follow (as threadpoolctl reads it
    where it is installed), and NumPy's dispatched loops."""
    env = interleave.avx2_env()
    assert env["OPENBLAS_CORETYPE"] == "Haswell"
    assert env["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert env[interleave.AVX2_MARK] == "1"
    code = ("import numpy as np\n"
            "from fastlista._kernels import _cpu\n"
            "try:\n"
            "    from numpy._core._multiarray_umath import __cpu_features__ as f\n"
            "except ImportError:\n"
            "    from numpy.core._multiarray_umath import __cpu_features__ as f\n"
            "print(_cpu.BLAS_CORE, _cpu.BLAS_PACKS_SMALL_CALLS, sep=';')\n"
            "print(*sorted(t for t in f if f[t]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env={**env, "PYTHONPATH": SUB_ENV_PATH},
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    blas, numpy_features = proc.stdout.splitlines()
    # NumPy's AVX-512 targets, disabled
    assert not set(env.get("NPY_DISABLE_CPU_FEATURES", "").split()) & set(
        numpy_features.split())
    core, packs = blas.split(";")
    if core != "None":                  # SciPy's BLAS is an OpenBLAS that says
        assert (core, packs) == ("Haswell", "True")


def test_avx2_run_refuses_a_build_with_avx512_kernels(tmp_path):
    """On a CPU with AVX-512F, ``--avx2`` on a build that is not capped at
    x86-64-v3 says so and runs nothing (its figures would not be AVX2's)."""
    from conftest import cpu_flags
    from fastlista._kernels import _gemm
    if _gemm.GEMM_AVX512 not in _gemm.GEMM_KERNELS:
        pytest.skip("this build or CPU has no AVX-512 GEMM to refuse")
    if cpu_flags() is not None:
        assert "avx512f" in cpu_flags()
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / "test_bench_solvers.py"), "1", "-k",
         "no such comparison", "--avx2"], capture_output=True, text=True,
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": SUB_ENV_PATH}, timeout=300)
    assert proc.returncode != 0
    assert "--avx2: still AVX-512 here: fastlista's AVX-512 kernels" in proc.stderr
    assert "comparison" not in proc.stdout          # no table started
