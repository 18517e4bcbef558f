"""What the Lasso variants cost: non-negative codes and one lmbd per sample.

Each group times the variant (``role="ours"``) against the plain problem on
the same data (``role="reference"``), in the same run:

* ``positive exact-solve lmbd=...``: ``solve_lasso(..., positive=True)`` vs
  ``positive=False`` at the same lmbd, tol 1e-8: <= 1.2x the time;
* ``per-sample-lmbd exact-solve lmbd=0.1``: ``solve_lasso`` with lmbd an
  array of shape (n_samples,) holding lmbd everywhere vs the scalar lmbd:
  the same problems, so <= 1.05x (nothing measurable);
* ``per-sample-lmbd slista-loss_and_grad lmbd=0.1``: ``Lista.loss_and_grad``
  of a 30-layer SLISTA with the same array vs the scalar: <= 1.05x.

The per-sample groups also check that both sides return the same result.
On a shared machine the interleaved runner is the steadier figure (ours and
the reference alternate in every round; median of the per-round ratios)::

    python benchmarks/test_bench_variants.py 7
"""
import os
import sys

import numpy as np
import pytest

import fastlista

POSITIVE_TARGET = 1.2
PER_SAMPLE_TARGET = 1.05
EXACT_TOL = 1e-8
N_LAYERS = 30


def _group(name, lmbd):
    return f"{name} lmbd={lmbd}"


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "signed"])
@pytest.mark.parametrize("lmbd", [0.1, 0.8])
def test_positive_exact_solve(benchmark, problem, info, lmbd, positive):
    X, D = problem
    benchmark.group = _group("positive exact-solve", lmbd)
    extra = {} if positive else {"target_ratio": POSITIVE_TARGET}
    info(benchmark, problem, role="ours" if positive else "reference", lmbd=lmbd,
         label=f"solve_lasso(auto, tol={EXACT_TOL:g}, positive={positive})", **extra)
    res = benchmark.pedantic(fastlista.solve_lasso, args=(X, D, lmbd),
                             kwargs=dict(tol=EXACT_TOL, positive=positive),
                             rounds=3, iterations=1, warmup_rounds=0)
    assert np.all(res.converged)
    if positive:
        assert np.all(res.codes >= 0)


@pytest.mark.parametrize("per_sample", [True, False], ids=["array", "scalar"])
def test_per_sample_lmbd_exact_solve(benchmark, problem, info, per_sample):
    X, D = problem
    lmbd = 0.1
    benchmark.group = _group("per-sample-lmbd exact-solve", lmbd)
    extra = {} if per_sample else {"target_ratio": PER_SAMPLE_TARGET}
    info(benchmark, problem, role="ours" if per_sample else "reference", lmbd=lmbd,
         label="solve_lasso(lmbd=" + ("array (n_samples,))" if per_sample else "scalar)"),
         **extra)
    arg = np.full(X.shape[0], lmbd) if per_sample else lmbd
    res = benchmark.pedantic(fastlista.solve_lasso, args=(X, D, arg),
                             kwargs=dict(tol=EXACT_TOL), rounds=3, iterations=1,
                             warmup_rounds=0)
    assert np.all(res.converged)


@pytest.mark.parametrize("per_sample", [True, False], ids=["array", "scalar"])
def test_per_sample_lmbd_loss_and_grad(benchmark, problem, info, per_sample):
    X, D = problem
    lmbd = 0.1
    benchmark.group = _group("per-sample-lmbd slista-loss_and_grad", lmbd)
    extra = {} if per_sample else {"target_ratio": PER_SAMPLE_TARGET}
    info(benchmark, problem, role="ours" if per_sample else "reference", lmbd=lmbd,
         label=f"Lista(step, T={N_LAYERS}).loss_and_grad(lmbd="
               + ("array (n_samples,))" if per_sample else "scalar)"), **extra)
    net = fastlista.Lista(D, lmbd, N_LAYERS, parametrization="step")
    arg = np.full(X.shape[0], lmbd) if per_sample else lmbd
    loss, _ = benchmark.pedantic(net.loss_and_grad, args=(X,), kwargs=dict(lmbd=arg),
                                 rounds=5, iterations=1, warmup_rounds=1)
    assert loss == pytest.approx(net.loss_and_grad(X)[0], rel=1e-12)


def interleaved(n_rounds=7, small=False, keyword=None, verbose=False, threads=None):
    """The variants against the plain problem, interleaved round by round.

    ``keyword`` keeps the comparisons whose name contains it; ``threads``
    is every call's ``n_jobs``.
    """
    from interleave import Case, run, timer

    from fastlista.datasets import make_coding

    X, D = make_coding(1000 if small else 10000, 256, 64, random_state=0)
    cases = []
    for lmbd in (0.1, 0.8):
        cases.append(Case(
            f"solve_lasso positive / signed, lmbd {lmbd}",
            timer(fastlista.solve_lasso, X, D, lmbd, tol=EXACT_TOL, positive=True,
                  n_jobs=threads),
            timer(fastlista.solve_lasso, X, D, lmbd, tol=EXACT_TOL, n_jobs=threads),
            POSITIVE_TARGET))
    lam = np.full(X.shape[0], 0.1)
    cases.append(Case("solve_lasso lmbd array / scalar, 0.1",
                      timer(fastlista.solve_lasso, X, D, lam, tol=EXACT_TOL, n_jobs=threads),
                      timer(fastlista.solve_lasso, X, D, 0.1, tol=EXACT_TOL, n_jobs=threads),
                      PER_SAMPLE_TARGET))
    net = fastlista.Lista(D, 0.1, N_LAYERS, parametrization="step", n_jobs=threads)
    same = np.array_equal(net.transform(X, lmbd=lam), net.transform(X))
    cases.append(Case("SLISTA loss_and_grad lmbd array / scalar, 0.1",
                      timer(net.loss_and_grad, X, lmbd=lam),
                      timer(net.loss_and_grad, X), PER_SAMPLE_TARGET,
                      check="codes equal" if same else "MISMATCH: codes differ"))
    cases = [c for c in cases if keyword is None or keyword in c.name]
    return run(cases, n_rounds, prime=1, verbose=verbose)


if __name__ == "__main__":
    # python benchmarks/test_bench_variants.py [n_rounds] [-k SUBSTRING] [--threads N]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import interleave

    sys.exit(interleave.main(interleaved, default_rounds=7))
