"""Benchmarks of the Lipschitz constants L and L_S against NumPy.

* ``lipschitz-support lmbd=0.8``: the batched ``lipschitz(D, support=S)``
  for the N supports of the Lasso solutions at lmbd = 0.8 vs a per-sample
  ``numpy.linalg.eigvalsh`` loop on ``B[S, S]``: >= 20x faster (target),
  same values to 1e-6 relative (asserted);
* ``lipschitz-full``: ``lipschitz(D)`` vs ``eigvalsh(D @ D.T)[-1]`` (context).
"""
import numpy as np
import pytest

import fastlista

LS_TARGET = 1 / 20


def eigvalsh_loop(B, S):
    """L_S of every row of the boolean supports ``S`` (N, m), one eigvalsh each."""
    out = np.empty(S.shape[0])
    for i, s in enumerate(S):
        out[i] = np.linalg.eigvalsh(B[np.ix_(s, s)])[-1] if s.any() else 0.0
    return out


@pytest.fixture(scope="module")
def ls_reference(gram, supports_08):
    return eigvalsh_loop(gram, supports_08)


def _support_info(S):
    sizes = S.sum(axis=1)
    return dict(support_size_mean=float(sizes.mean()), support_size_max=int(sizes.max()),
                empty_supports=int((sizes == 0).sum()))


def test_lipschitz_support_fastlista(benchmark, problem, info, supports_08, ls_reference):
    _, D = problem
    benchmark.group = "lipschitz-support lmbd=0.8"
    info(benchmark, problem, role="ours", label="fastlista.lipschitz(D, support=S)",
         **_support_info(supports_08))
    values = benchmark(fastlista.lipschitz, D, support=supports_08)
    values = np.asarray(values)
    assert values.shape == ls_reference.shape
    np.testing.assert_allclose(values, ls_reference, rtol=1e-6, atol=0)


def test_lipschitz_support_eigvalsh_loop(benchmark, problem, info, gram, supports_08,
                                         ls_reference):
    benchmark.group = "lipschitz-support lmbd=0.8"
    info(benchmark, problem, role="reference", label="per-sample eigvalsh loop",
         target_ratio=LS_TARGET, **_support_info(supports_08))
    values = benchmark(eigvalsh_loop, gram, supports_08)
    np.testing.assert_array_equal(values, ls_reference)


def test_lipschitz_full_fastlista(benchmark, problem, info):
    _, D = problem
    benchmark.group = "lipschitz-full"
    info(benchmark, problem, role="ours", label="fastlista.lipschitz(D)")
    L = benchmark(fastlista.lipschitz, D)
    np.testing.assert_allclose(L, np.linalg.eigvalsh(D @ D.T)[-1], rtol=1e-8)


def test_lipschitz_full_eigvalsh(benchmark, problem, info):
    _, D = problem
    benchmark.group = "lipschitz-full"
    info(benchmark, problem, role="reference", label="eigvalsh(D @ D.T)[-1] (context)")
    benchmark(lambda: np.linalg.eigvalsh(D @ D.T)[-1])
