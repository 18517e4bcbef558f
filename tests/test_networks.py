"""Unfolded networks (fastlista.Lista) against independent references.

References written here, in plain NumPy: ISTA, a forward pass of each
parametrization that keeps every pre-activation, the projected-gradient
ALISTA weights of the reference code, and central finite differences; and,
when torch is installed, autograd.
"""
import ast
import copy
import errno
import io
import os
import pickle
import re
import stat
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from numpy.testing import assert_allclose

import fastlista
import fastlista._networks._execution as execution
from fastlista import InvalidParameterError, Lista, alista_weights
from fastlista._kernels import _gemm, _unrolled

from conftest import cpu_flags

PARAMETRIZATIONS = ("step", "coupled", "alista", "lista")
STEP_KEYS = ("alpha", "beta", "gamma", "theta")


# --------------------------------------------------------------------------
# problems and references
# --------------------------------------------------------------------------
def make_problem(n_samples=60, n_atoms=12, n_features=8, seed=0):
    """Unit-norm Gaussian atoms, signals z D + noise scaled to lambda_max = 1."""
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((n_atoms, n_features))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    Z = rng.standard_normal((n_samples, n_atoms)) * (rng.random((n_samples, n_atoms)) < 0.3)
    X = Z @ D + 0.1 * rng.standard_normal((n_samples, n_features))
    X /= np.abs(X @ D.T).max(axis=1, keepdims=True)
    return X, D


def st(U, s):
    return np.sign(U) * np.maximum(np.abs(U) - s, 0.0)


def numpy_ista(X, D, lmbd, n_iter, L):
    """n_iter ISTA iterations from 0 with step 1/L; codes after each."""
    Z = np.zeros((X.shape[0], D.shape[0]))
    out = []
    for _ in range(n_iter):
        Z = st(Z - (Z @ D - X) @ D.T / L, lmbd / L)
        out.append(Z)
    return out


def layer_input(p, Z, X, D, lmbd, parametrization, W_alista=None):
    """One layer's pre-activation U and threshold s from its input codes Z;
    lmbd a scalar or a column (one a sample)."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in p.items()}
    if parametrization == "step":
        return Z - p["alpha"] * (Z @ D - X) @ D.T, lmbd * p["alpha"]
    if parametrization == "coupled":
        return Z - p["alpha"] * (Z @ D - X) @ p["W"].T, lmbd * p["beta"]
    if parametrization == "alista":
        return Z - p["gamma"] * (Z @ D - X) @ W_alista.T, lmbd * p["theta"]
    return Z @ p["W_z"] + X @ p["W_x"], lmbd * p["theta"]


def numpy_forward(params, X, D, lmbd, parametrization, W_alista=None, positive=False):
    """Every layer's (pre-activation, threshold, output) of a network (with
    ``positive``, the one-sided threshold max(u - s, 0))."""
    Z = np.zeros((X.shape[0], D.shape[0]))
    layers = []
    for p in params:
        U, s = layer_input(p, Z, X, D, lmbd, parametrization, W_alista)
        Z = np.maximum(U - s, 0.0) if positive else st(U, s)
        layers.append((U, s, Z))
    return layers


def lasso_F(X, D, lmbd, Z):
    R = X - Z @ D
    return 0.5 * np.sum(R * R, axis=1) + lmbd * np.abs(Z).sum(axis=1)


def perturbed(net, seed=0, scale=0.3):
    """Parameters moved away from ISTA: steps x U(0.7, 1.3), matrices + noise."""
    rng = np.random.default_rng(seed)
    params = net.parameters
    for layer in params:
        for k, v in layer.items():
            if k in STEP_KEYS:
                layer[k] = v * rng.uniform(1 - scale, 1 + scale, size=v.shape)
            else:
                layer[k] = v + 0.1 * scale * rng.standard_normal(v.shape) * np.abs(v).max()
    return params


@pytest.fixture(params=["mixed", "dense", "dense-blas", "sparse", "sparse-avx2",
                        "sparse-portable"])
def path(request, monkeypatch):
    """Force the dense GEMM path, the sparse gather path, or let density choose.

    Also forces blocks of 16 rows, multiplied 5 rows a BLAS call (and 2
    threads for "mixed"), so that several blocks, a ragged last block, a
    ragged last GEMM chunk and the per-thread gradient accumulators are
    exercised. The dense products run through fastlista's GEMM (_gemm.h):
    its widest register tile the CPU runs for "dense" (64 bytes with
    AVX-512, _gemm_avx512.h), its 32-byte tile for "mixed"; through BLAS
    for "dense-blas" and the sparse paths. The sparse layers' rows
    through the widest kernel written by hand that the CPU runs (AVX-512,
    _gather_avx512.h, or AVX2, _gather_avx2.h), for "sparse-avx2" through
    the AVX2 one where the CPU runs it, for "sparse-portable" through the
    portable kernel, whatever the CPU would choose. The sparse layers run
    row by row in runs of SPARSE_RUN layers, 3 for "sparse-portable" (so
    that runs end within the networks' depths).
    """
    rho = {"mixed": execution._SPARSE_DENSITY, "dense": 0.0, "dense-blas": 0.0,
           "sparse": 1.1, "sparse-avx2": 1.1, "sparse-portable": 1.1}[request.param]
    n_threads = 2 if request.param == "mixed" else 1
    monkeypatch.setattr(execution, "_SPARSE_DENSITY", rho)
    monkeypatch.setattr(execution, "plan", lambda *shape, **kw: (n_threads, 16, 5))
    monkeypatch.setattr(execution, "_OWN_GEMM", {
        "mixed": _gemm.GEMM_AVX2, "dense": max(_gemm.GEMM_KERNELS)}.get(request.param,
                                                                         _gemm.GEMM_BLAS))
    kernels = _unrolled.GATHER_KERNELS
    monkeypatch.setattr(execution, "_GATHER", {
        "sparse-portable": _unrolled.GATHER_PORTABLE,
        "sparse-avx2": _unrolled.GATHER_AVX2 if _unrolled.GATHER_AVX2 in kernels
        else _unrolled.GATHER_PORTABLE}.get(request.param, max(kernels)))
    if request.param == "sparse-portable":
        monkeypatch.setattr(_unrolled, "SPARSE_RUN", 3)
    return request.param


def test_hand_gather_kernels_only_where_the_cpu_runs_them(monkeypatch):
    """The sparse rows' kernels written for AVX2 (_gather_avx2.h: AVX2, FMA,
    BMI1, BMI2) and AVX-512 (_gather_avx512.h: AVX-512F besides) run only
    on a CPU with those instructions; the default is one of them, or the
    portable kernel; forcing a kernel the CPU lacks is refused, never
    executed."""
    kernels = _unrolled.GATHER_KERNELS
    assert _unrolled.GATHER_PORTABLE in kernels and _unrolled.GATHER in kernels
    flags = cpu_flags()
    if flags is not None and _unrolled.GATHER_AVX2 in kernels:
        assert {"avx2", "fma", "bmi1", "bmi2"} <= flags
    if flags is not None and _unrolled.GATHER_AVX512 in kernels:
        assert {"avx512f", "avx2", "fma", "bmi1", "bmi2"} <= flags
        assert _unrolled.GATHER_AVX2 in kernels
    D = np.eye(3, 4)
    for missing in ({_unrolled.GATHER_AVX2, _unrolled.GATHER_AVX512, 7} - set(kernels)):
        monkeypatch.setattr(execution, "_GATHER", missing)
        with pytest.raises(ValueError, match=f"gather={missing}"):
            Lista(D, 0.1, 2).transform(np.ones((2, 4)))


def test_default_gather_kernel_follows_the_dictionary_size(monkeypatch):
    """By default the sparse rows take the AVX-512 kernel where the CPU
    runs it, except for dictionaries of fewer than
    _AVX512_GATHER_MIN_ATOMS atoms (its fixed cost a row outweighs its
    wider vectors there), which take the AVX2 one; a forced kernel is
    taken whatever the size; a network call hands the kernel its rule
    picks for its own dictionary."""
    lo = execution._AVX512_GATHER_MIN_ATOMS
    default = _unrolled.GATHER
    small = _unrolled.GATHER_AVX2 if default == _unrolled.GATHER_AVX512 else default
    assert execution._GATHER is None
    assert [execution.gather_kernel(m) for m in (1, lo - 1, lo, 4 * lo)] == \
        [small, small, default, default]
    monkeypatch.setattr(execution, "_GATHER", _unrolled.GATHER_PORTABLE)
    assert execution.gather_kernel(4 * lo) == _unrolled.GATHER_PORTABLE
    monkeypatch.setattr(execution, "_GATHER", None)
    seen = []
    forward = _unrolled.forward

    def spy(*args):
        seen.append(args[-1])
        return forward(*args)

    monkeypatch.setattr(_unrolled, "forward", spy)
    rng = np.random.default_rng(0)
    for m in (lo - 1, lo):
        D = rng.standard_normal((m, 5))
        Lista(D, 0.5, 2).transform(rng.standard_normal((3, 5)))
    assert seen == [small, default]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_atoms", [5, 16, 37, 256, 301])
@pytest.mark.parametrize("positive", [False, True])
def test_avx512_and_avx2_gathers_agree_bit_for_bit(n_atoms, dtype, positive, monkeypatch):
    """The AVX-512 kernel of the sparse rows performs the AVX2 kernel's
    operations in the same order: the same codes to the last bit, on rows
    shorter than a vector, with a ragged last vector, and gathering more
    than eight atoms (the supports of lmbd = 0.05 lmbd_max); both match a
    NumPy forward pass within float tolerance; perturbed (trained-like)
    steps, one a layer."""
    kernels = _unrolled.GATHER_KERNELS
    if not {_unrolled.GATHER_AVX2, _unrolled.GATHER_AVX512} <= set(kernels):
        pytest.skip("the CPU (or this build) runs no AVX-512 gather kernel")
    X, D = make_problem(n_samples=23, n_atoms=n_atoms, n_features=6, seed=n_atoms)
    D = D.astype(dtype).astype(np.float64)
    lmbd = 0.05 * float(np.abs(X @ D.T).max())
    net = Lista(D.astype(dtype), lmbd, 6, positive=positive)
    net.set_parameters(perturbed(net, seed=n_atoms))
    monkeypatch.setattr(execution, "_SPARSE_DENSITY", 1.1)
    monkeypatch.setattr(execution, "plan", lambda *shape, **kw: (1, 8, 5))
    codes = {}
    for kernel in (_unrolled.GATHER_AVX2, _unrolled.GATHER_AVX512):
        monkeypatch.setattr(execution, "_GATHER", kernel)
        codes[kernel] = net.transform(X.astype(dtype))
    np.testing.assert_array_equal(codes[_unrolled.GATHER_AVX512],
                                  codes[_unrolled.GATHER_AVX2])
    layers = numpy_forward(net.parameters, X.astype(dtype), D, lmbd, "step",
                           positive=positive)
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (2e-4, 1e-5)
    assert_allclose(codes[_unrolled.GATHER_AVX512], layers[-1][2], rtol=rtol, atol=atol)
    assert np.count_nonzero(layers[-2][2], axis=1).max() > min(8, n_atoms - 1)


def scipy_openblas_core():
    """The kernel set of SciPy's OpenBLAS as threadpoolctl reads it, or None."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's BLAS)
    for lib in threadpoolctl.threadpool_info():
        if (lib.get("internal_api") == "openblas" and "scipy.libs" in lib["filepath"]
                and "64_" not in lib["filepath"]):
            return lib.get("architecture")
    return None


def expected_heights(packs_small_calls, own_gemm):
    """The paper shape's (block, chunk) rows of README.md, for SLISTA and for
    training with weight gradients: 32-row calls through OpenBLAS's
    small-matrix kernels and through the 64-byte tile (blocks balanced over
    two threads: 314 of 32 rows, or 80 of 125 with four chunks of 32 for
    weight gradients), 256-row ones where BLAS packs every call (40 of 250)."""
    if packs_small_calls and own_gemm != _gemm.GEMM_AVX512:
        return (250, 256), (250, 256)
    return (32, 32), (125, 32)


def plans():
    return tuple(execution.plan(10000, 256, 64, 30, 2, w)[1:] for w in (False, True))


def test_call_heights_follow_who_multiplies():
    """BLAS_PACKS_SMALL_CALLS follows the kernel set SciPy's OpenBLAS runs
    (read by threadpoolctl; the CPU's flag where there is none), and the
    networks' and solvers' blocks have the heights the plans give for it."""
    from fastlista import _solvers
    from fastlista._kernels import _cpu
    core = scipy_openblas_core()
    if core is not None:
        assert _cpu.BLAS_CORE == core
        assert _cpu.BLAS_PACKS_SMALL_CALLS == (
            core not in ("SkylakeX", "Cooperlake", "SapphireRapids"))
    elif _cpu.BLAS_CORE is None and cpu_flags() is not None:
        assert _cpu.BLAS_PACKS_SMALL_CALLS == ("avx512f" not in cpu_flags())
    assert plans() == expected_heights(_cpu.BLAS_PACKS_SMALL_CALLS, _gemm.OWN_GEMM)
    blas_small = _gemm.OWN_GEMM == _gemm.GEMM_BLAS and not _cpu.BLAS_PACKS_SMALL_CALLS
    assert _solvers.BLOCK_SIZE == (32 if blas_small else 128)


def test_openblas_told_to_run_avx2_kernels_gets_tall_calls(tmp_path):
    """Under OPENBLAS_CORETYPE=Haswell (OpenBLAS's AVX2 kernels, which pack
    every call) the plans take tall blocks, except through the 64-byte tile."""
    if scipy_openblas_core() is None:
        pytest.skip("SciPy's BLAS is not an OpenBLAS that names its kernels")
    code = ("from fastlista._kernels import _cpu, _gemm\n"
            "from fastlista import _solvers\n"
            "from fastlista._networks import _execution as e\n"
            "print(_cpu.BLAS_CORE, _cpu.BLAS_PACKS_SMALL_CALLS, _gemm.OWN_GEMM,\n"
            "      _solvers.BLOCK_SIZE, *(e.plan(10000, 256, 64, 30, 2, w)[1:]\n"
            "                             for w in (False, True)), sep=';')")
    # the fastlista this test imported, from a directory that cannot shadow it
    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell",
           "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(
               fastlista.__file__)))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    core, packs, own, block, *heights = proc.stdout.split(";")
    assert (core, packs) == ("Haswell", "True")
    # the 64-byte tile where it runs; else the 32-byte one, or BLAS where
    # this build has no vector code for it
    if _gemm.OWN_GEMM == _gemm.GEMM_AVX512:
        assert int(own) == _gemm.GEMM_AVX512
    else:
        assert int(own) in (_gemm.GEMM_AVX2, _gemm.GEMM_BLAS)
    assert int(block) == 128
    assert [ast.literal_eval(h) for h in heights] == list(expected_heights(True, int(own)))


# --------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------
@pytest.mark.parametrize("parametrization", ["step", "coupled", "lista"])
@pytest.mark.parametrize("lmbd", [0.05, 0.3, 0.8])
def test_untrained_network_is_ista(parametrization, lmbd, path):
    X, D = make_problem(n_samples=70)
    net = Lista(D, lmbd, 8, parametrization=parametrization)
    L = float(np.linalg.eigvalsh(D @ D.T)[-1])
    assert_allclose(net.lipschitz_, L, rtol=1e-9)
    ref = numpy_ista(X, D, lmbd, 8, net.lipschitz_)
    assert_allclose(net.transform(X), ref[-1], rtol=1e-10, atol=1e-12)
    assert_allclose(net.transform(X, n_layers=3), ref[2], rtol=1e-10, atol=1e-12)
    per_layer = [lasso_F(X, D, lmbd, Z).mean() for Z in ref]
    assert_allclose(net.objective(X, per_layer=True), per_layer, rtol=1e-10)
    assert_allclose(net.objective(X), per_layer[-1], rtol=1e-10)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
@pytest.mark.parametrize("shape", [(12, 8), (12, 5)], ids=["gram", "two-gemms"])
def test_forward_matches_numpy(parametrization, shape, path):
    """Perturbed (trained-like) networks: Cython forward == NumPy forward."""
    X, D = make_problem(n_samples=50, n_atoms=shape[0], n_features=shape[1], seed=1)
    lmbd = 0.2
    net = Lista(D, lmbd, 5, parametrization=parametrization)
    net.set_parameters(perturbed(net, seed=2))
    ref = numpy_forward(net.parameters, X, D, lmbd, parametrization, alista_weights(D))
    assert_allclose(net.transform(X), ref[-1][2], rtol=1e-10, atol=1e-12)
    # another lmbd at evaluation time scales every threshold
    ref2 = numpy_forward(net.parameters, X, D, 2 * lmbd, parametrization, alista_weights(D))
    assert_allclose(net.transform(X, lmbd=2 * lmbd), ref2[-1][2], rtol=1e-10, atol=1e-12)
    objs = [lasso_F(X, D, lmbd, Z).mean() for _, _, Z in ref]
    assert_allclose(net.objective(X, per_layer=True), objs, rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_atoms", [255, 257, 600])
def test_rows_longer_than_one_compaction_span_match_numpy(n_atoms, dtype, path):
    """Sparse layers of more atoms than the row kernels flag at a time (256)."""
    X, D = make_problem(n_samples=24, n_atoms=n_atoms, n_features=16, seed=3)
    lmbd = 0.5
    net = Lista(D.astype(dtype), lmbd, 6, parametrization="step")
    ref = numpy_ista(X, D, lmbd, 6, net.lipschitz_)[-1]
    assert 0 < np.count_nonzero(ref) < 0.2 * ref.size
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (2e-4, 1e-5)
    assert_allclose(net.transform(X.astype(dtype)), ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rows_gathering_many_atoms_match_numpy(dtype, positive, path):
    """Sparse layers whose input rows hold more than eight non-zeros (the
    row kernels then gather in passes of eight rows of M), on rows of 203
    atoms (three 64-entry words of the AVX2 kernel's flags and a tail that
    is not a whole vector), signed and non-negative codes."""
    X, D = make_problem(n_samples=20, n_atoms=203, n_features=24, seed=5)
    lmbd = 0.05
    net = Lista(D.astype(dtype), lmbd, 6, parametrization="step", positive=positive)
    if positive:        # ISTA with the one-sided threshold max(u - s, 0)
        Z, ref = np.zeros((X.shape[0], D.shape[0])), []
        for _ in range(6):
            U = Z - (Z @ D - X) @ D.T / net.lipschitz_
            Z = np.maximum(U - lmbd / net.lipschitz_, 0.0)
            ref.append(Z)
    else:
        ref = numpy_ista(X, D, lmbd, 6, net.lipschitz_)
    assert np.count_nonzero(ref[-2], axis=1).max() > 8
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (2e-4, 1e-5)
    assert_allclose(net.transform(X.astype(dtype)), ref[-1], rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_atoms", [3, 6, 12])
def test_rows_shorter_than_a_vector_match_numpy(n_atoms, dtype, path):
    """Sparse layers of fewer atoms than one vector holds (AVX2: 8 entries
    in float32, 4 in float64; AVX-512: 16 and 8), where the AVX2 kernel
    adds the steps' diagonal terms entry by entry and the AVX-512 one under
    a mask; perturbed (trained-like) steps, one a layer."""
    X, D = make_problem(n_samples=30, n_atoms=n_atoms, n_features=4, seed=6)
    lmbd = 0.1
    net = Lista(D.astype(dtype), lmbd, 5, parametrization="step")
    net.set_parameters(perturbed(net, seed=3))
    ref = numpy_forward(net.parameters, X, D, lmbd, "step", alista_weights(D))
    assert np.count_nonzero(ref[-2][2]) > 0
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (2e-4, 1e-5)
    assert_allclose(net.transform(X.astype(dtype)), ref[-1][2], rtol=rtol, atol=atol)


@pytest.mark.parametrize("parametrization", ["step", "coupled", "alista"])
def test_extreme_steps_match_numpy(parametrization, path):
    """Zero, tiny (below machine epsilon) and large steps on every path."""
    X, D = make_problem(n_samples=40, seed=20)
    lmbd = 0.3
    net = Lista(D, lmbd, 4, parametrization=parametrization)
    params = net.parameters
    key = "gamma" if parametrization == "alista" else "alpha"
    for p, a in zip(params, [0.0, 1e-20, 1e-3, 2.5 / net.lipschitz_]):
        p[key] = np.array(a)
    net.set_parameters(params)
    ref = numpy_forward(params, X, D, lmbd, parametrization, alista_weights(D))
    assert_allclose(net.transform(X), ref[-1][2], rtol=1e-10, atol=1e-12)


def test_untrained_alista_uses_analytic_weights():
    X, D = make_problem()
    lmbd = 0.3
    net = Lista(D, lmbd, 6, parametrization="alista")
    W = alista_weights(D)
    L = net.lipschitz_
    # the step is scale-free: 1 / ||D W^T||_2 (D W^T has a unit diagonal
    # whatever the norms of the atoms); the threshold factor 1/L
    gamma = 1 / np.linalg.norm(D @ W.T, 2)
    Z = np.zeros((X.shape[0], D.shape[0]))
    for _ in range(6):
        Z = st(Z - gamma * (Z @ D - X) @ W.T, lmbd / L)
    assert_allclose(net.transform(X), Z, rtol=1e-10, atol=1e-12)


def test_one_sample_and_empty_batch():
    X, D = make_problem()
    net = Lista(D, 0.3, 4)
    z = net.transform(X[3])
    assert z.shape == (D.shape[0],)
    assert_allclose(z, net.transform(X)[3], rtol=1e-12, atol=1e-15)
    assert net.transform(X[:0]).shape == (0, D.shape[0])


def test_threads_and_blocks_do_not_change_results(monkeypatch):
    X, D = make_problem(n_samples=300, seed=3)
    net = Lista(D, 0.2, 6, parametrization="coupled")
    net.set_parameters(perturbed(net, seed=4))
    monkeypatch.setattr(execution, "plan", lambda *shape, **kw: (1, 10**6, 10**6))
    Z1 = net.transform(X)
    f1, g1 = net.loss_and_grad(X)
    monkeypatch.setattr(execution, "plan", lambda *shape, **kw: (2, 7, 3))
    Z2 = net.transform(X)
    f2, g2 = net.loss_and_grad(X)
    assert_allclose(Z2, Z1, rtol=1e-12, atol=1e-14)
    assert_allclose(f2, f1, rtol=1e-12)
    for a, b in zip(g1, g2):
        for k in a:
            assert_allclose(b[k], a[k], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("parametrization", ["step", "coupled", "alista"])
@pytest.mark.parametrize("shape", [(12, 8), (12, 5)], ids=["gram", "two-gemms"])
def test_gradient_through_switching_storage_formats(parametrization, shape, monkeypatch):
    # Layers store their codes densely (or, for the backward pass, as signs
    # beside r = z D - x) or as CSR rows, by density. With the switch set
    # between two consecutive layer densities, the stored formats change
    # inside the network (dense -> sparse where density falls, sparse ->
    # dense where it rises); the gradients must equal those of the all-dense
    # and all-sparse runs, which the finite-difference test checks.
    X, D = make_problem(n_samples=40, n_atoms=shape[0], n_features=shape[1], seed=6)
    T = 8
    net = Lista(D, 0.1, T, parametrization=parametrization)
    net.set_parameters(perturbed(net, seed=0))
    monkeypatch.setattr(execution, "plan", lambda *shape, **kw: (1, 10**6, 10**6))
    density = [np.count_nonzero(net.transform(X, n_layers=t)) / (X.shape[0] * shape[0])
               for t in range(1, T + 1)]
    switches = [(a + b) / 2 for a, b in zip(density, density[1:]) if a != b]
    assert any(a > b for a, b in zip(density, density[1:])), density

    assert_storage_switches_agree(net, X, switches, monkeypatch)


@pytest.mark.parametrize("parametrization", ["step", "alista"])
def test_gradient_with_steps_below_machine_epsilon(parametrization, monkeypatch):
    # The sparse backward pass reads <z_t, w M^T> off the row it gathers,
    # -a w M^T, divided by -a; a step below machine epsilon takes the direct
    # double sum instead. Both must give the gradients of the dense path,
    # whose GEMMs share neither (and which the finite differences check).
    X, D = make_problem(n_samples=40, n_atoms=12, n_features=5, seed=6)
    net = Lista(D, 0.1, 6, parametrization=parametrization)
    params = perturbed(net, seed=1)
    key = "alpha" if parametrization == "step" else "gamma"
    for t in (2, 3):
        params[t][key] = np.asarray(1e-20)
    net.set_parameters(params)
    monkeypatch.setattr(execution, "plan", lambda *shape, **kw: (1, 10**6, 10**6))
    runs = []
    for rho in (0.0, 1.1):
        monkeypatch.setattr(execution, "_SPARSE_DENSITY", rho)
        runs.append(net.loss_and_grad(X))
    (f_dense, g_dense), (f_sparse, g_sparse) = runs
    assert_allclose(f_sparse, f_dense, rtol=1e-12)
    for t in range(len(g_dense)):
        for k in g_dense[t]:
            assert_allclose(g_sparse[t][k], g_dense[t][k], rtol=1e-9, atol=1e-13)


def test_refine_tol_certifies_the_solution():
    from fastlista import duality_gap

    X, D = make_problem(seed=5)
    lmbd = 0.3
    net = Lista(D, lmbd, 5)
    tol = 1e-10
    Z = net.transform(X, refine_tol=tol)
    gap = duality_gap(X, D, lmbd, Z)
    assert np.all(gap <= tol * 0.5 * np.sum(X * X, axis=1))


# --------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------
def fd_gradient_errors(net, params, grads, loss_at, seed):
    """Central finite differences of a network's loss against its analytic
    gradients ``grads`` at ``params``: up to 3 entries (drawn with ``seed``)
    of every key of every layer, each moved by 1e-6 of its scale (its
    magnitude, at least 1/L for steps and thresholds, else 1). ``loss_at()``
    is the loss at the network's current parameters. A list of (t, key,
    index, fd, g, err), err = 1e-6 |fd - g| / tol with tol = 1e-6 max(|g|,
    1e-3) + 16 eps max(|loss(p + h)|, |loss(p - h)|) / h: err <= 1e-6 where
    fd is within 1e-6 relative of g, or within what rounding a few ulps of
    the two losses moves a difference over 2 h (eps: float64's; the
    kernels' rounding differs with the GEMM that runs, and alone put an
    entry of a gradient of 6e-4 at 1.06e-6 relative). The network is left
    at params."""
    rng = np.random.default_rng(seed)
    L = net.lipschitz_
    out = []
    for t in range(len(params)):
        for k, v in params[t].items():
            assert grads[t][k].shape == np.shape(v)
            flat = np.asarray(v).ravel()
            entries = (range(flat.size) if flat.size <= 3
                       else rng.choice(flat.size, 3, replace=False))
            for i in entries:
                unit = 1.0 / L if k in STEP_KEYS or k == "W_x" else 1.0
                h = 1e-6 * max(abs(float(flat[i])), unit)
                values = []
                for sign in (1, -1):
                    p = [dict(layer) for layer in params]
                    moved = np.array(p[t][k], dtype=np.float64)
                    moved.ravel()[i] += sign * h
                    p[t][k] = moved
                    net.set_parameters(p)
                    values.append(loss_at())
                net.set_parameters(params)
                fd = (values[0] - values[1]) / (2 * h)
                g = float(grads[t][k].ravel()[i])
                tol = (1e-6 * max(abs(g), 1e-3)
                       + 16 * np.finfo(np.float64).eps * max(map(abs, values)) / h)
                out.append((t, k, int(i), fd, g, 1e-6 * abs(fd - g) / tol))
    return out


def assert_fd_gradients(net, params, grads, loss_at, seed=9):
    """Every finite difference within 1e-6 relative of its gradient entry."""
    for t, k, i, fd, g, err in fd_gradient_errors(net, params, grads, loss_at, seed):
        assert err <= 1e-6, (t, k, i, fd, g)


def assert_loss_and_fd_gradients(net, params, X, D, lmbd, loss, S, Z, lmbd_arg=None):
    """The network's loss (at params, with targets S) equals the loss of the
    reference output Z, and its gradients the finite differences.
    ``lmbd_arg`` is passed to loss_and_grad."""
    f, grads = net.loss_and_grad(X, loss=loss, Z_target=S, lmbd=lmbd_arg)
    ref_f = (lasso_F(X, D, lmbd, Z) if loss == "unsupervised"
             else 0.5 * np.sum((Z - S) ** 2, axis=1)).mean()
    assert_allclose(f, ref_f, rtol=1e-12)
    assert_fd_gradients(net, params, grads,
                        lambda: net.loss_and_grad(X, loss, S, lmbd=lmbd_arg)[0])


def assert_storage_switches_agree(net, X, switches, monkeypatch, lmbd=None):
    """With the dense/sparse switch at each density of ``switches`` (so that
    stored formats change inside the network), loss and gradients equal
    those of the all-dense and the all-sparse runs."""
    def run(rho):
        monkeypatch.setattr(execution, "_SPARSE_DENSITY", rho)
        return net.loss_and_grad(X, lmbd=lmbd)

    f_dense, g_dense = run(0.0)
    f_sparse, g_sparse = run(1.1)
    assert_allclose(f_sparse, f_dense, rtol=1e-12)
    for rho in switches:
        f, g = run(rho)
        assert_allclose(f, f_dense, rtol=1e-12)
        for t in range(len(g)):
            for k in g[t]:
                assert_allclose(g[t][k], g_dense[t][k], rtol=1e-9, atol=1e-13)
                assert_allclose(g[t][k], g_sparse[t][k], rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
@pytest.mark.parametrize("loss", ["unsupervised", "supervised"])
@pytest.mark.parametrize("shape", [(12, 8), (12, 5)], ids=["gram", "two-gemms"])
def test_gradient_finite_differences(parametrization, loss, shape, path):
    X, D = make_problem(n_samples=40, n_atoms=shape[0], n_features=shape[1], seed=6)
    lmbd = 0.25
    T = 4
    net = Lista(D, lmbd, T, parametrization=parametrization)
    # a generic point: the first perturbation of the untrained parameters
    # whose pre-activations all stay 1e-5 away from their thresholds (the
    # finite-difference steps below move them by less than 1e-6)
    for seed in range(100):
        params = perturbed(net, seed=seed)
        layers = numpy_forward(params, X, D, lmbd, parametrization, alista_weights(D))
        if min(np.min(np.abs(np.abs(U) - s)) for U, s, _ in layers) > 1e-5:
            break
    else:
        pytest.fail("no generic point found")
    net.set_parameters(params)
    S = np.random.default_rng(8).standard_normal((X.shape[0], D.shape[0])) * 0.2
    assert_loss_and_fd_gradients(net, params, X, D, lmbd, loss, S, layers[-1][2])


def test_semi_supervised_targets_are_lasso_solutions():
    from fastlista import solve_lasso

    X, D = make_problem(seed=10)
    net = Lista(D, 0.3, 4, parametrization="coupled")
    net.set_parameters(perturbed(net, seed=11))
    S = solve_lasso(X, D, 0.3).codes
    f1, g1 = net.loss_and_grad(X, loss="semi-supervised")
    f2, g2 = net.loss_and_grad(X, loss="supervised", Z_target=S)
    assert_allclose(f1, f2, rtol=1e-8)
    for a, b in zip(g1, g2):
        for k in a:
            assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-12)


def _torch_loss(torch, params, X, D, lmbd, parametrization, W_alista, S=None):
    X, D = torch.tensor(X), torch.tensor(D)
    Wa = torch.tensor(W_alista)
    tp = [{k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True)
           for k, v in layer.items()} for layer in params]
    Z = torch.zeros(X.shape[0], D.shape[0], dtype=torch.float64)
    for p in tp:
        if parametrization == "step":
            U, s = Z - p["alpha"] * (Z @ D - X) @ D.T, lmbd * p["alpha"]
        elif parametrization == "coupled":
            U, s = Z - p["alpha"] * (Z @ D - X) @ p["W"].T, lmbd * p["beta"]
        elif parametrization == "alista":
            U, s = Z - p["gamma"] * (Z @ D - X) @ Wa.T, lmbd * p["theta"]
        else:
            U, s = Z @ p["W_z"] + X @ p["W_x"], lmbd * p["theta"]
        Z = torch.sign(U) * torch.relu(U.abs() - s)
    if S is None:
        R = X - Z @ D
        loss = (0.5 * (R * R).sum(1) + lmbd * Z.abs().sum(1)).mean()
    else:
        loss = (0.5 * ((Z - torch.tensor(S)) ** 2).sum(1)).mean()
    loss.backward()
    return float(loss.detach()), [{k: v.grad.numpy() for k, v in p.items()} for p in tp]


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
@pytest.mark.parametrize("loss", ["unsupervised", "supervised"])
def test_gradient_equals_autograd(parametrization, loss):
    torch = pytest.importorskip("torch")
    X, D = make_problem(n_samples=80, seed=12)
    lmbd = 0.2
    net = Lista(D, lmbd, 5, parametrization=parametrization)
    net.set_parameters(perturbed(net, seed=13))
    S = None if loss == "unsupervised" else \
        np.random.default_rng(14).standard_normal((X.shape[0], D.shape[0])) * 0.2
    f, grads = net.loss_and_grad(X, loss=loss, Z_target=S)
    tf, tgrads = _torch_loss(torch, net.parameters, X, D, lmbd, parametrization,
                             alista_weights(D), S)
    assert_allclose(f, tf, rtol=1e-12)
    for a, b in zip(grads, tgrads):
        for k in a:
            assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-12 * np.abs(b[k]).max())


# --------------------------------------------------------------------------
# float32
# --------------------------------------------------------------------------
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_float32_agrees_with_float64(parametrization, path):
    X, D = make_problem(n_samples=100, seed=15)
    lmbd = 0.3
    net64 = Lista(D, lmbd, 6, parametrization=parametrization)
    net64.set_parameters(perturbed(net64, seed=16, scale=0.1))
    net32 = Lista(D.astype(np.float32), lmbd, 6, parametrization=parametrization)
    net32.set_parameters(net64.parameters)
    assert net32.parameters[0][list(net32.parameters[0])[0]].dtype == np.float32
    Z32 = net32.transform(X.astype(np.float32))
    assert Z32.dtype == np.float32
    Z64 = net64.transform(X)
    assert np.max(np.abs(Z32 - Z64)) <= 1e-4 * np.max(np.abs(Z64))
    f32, g32 = net32.loss_and_grad(X.astype(np.float32))
    f64, g64 = net64.loss_and_grad(X)
    assert_allclose(f32, f64, rtol=1e-4)
    for a, b in zip(g32, g64):
        for k in a:
            assert a[k].dtype == np.float32
            assert np.max(np.abs(a[k] - b[k])) <= 1e-3 * np.max(np.abs(b[k])) + 1e-6


# --------------------------------------------------------------------------
# ALISTA weights
# --------------------------------------------------------------------------
def alista_weights_pgd(D, step=1e-2, n_iter=20000):
    """Projected gradient of the reference code (adopty get_alista_weights)."""
    W = D.copy()
    for _ in range(n_iter):
        W -= step * (W @ D.T - np.eye(D.shape[0])) @ D
        W += (1 - np.einsum("ij,ij->i", W, D))[:, None] * D / np.sum(D * D, axis=1)[:, None]
    return W


def off_diagonal_norm(W, D):
    G = W @ D.T
    return np.linalg.norm(G - np.diag(np.diag(G)))


@pytest.mark.parametrize("shape", [(12, 8), (8, 12), (20, 6)])
def test_alista_weights_closed_form(shape):
    rng = np.random.default_rng(shape[0])
    D = rng.standard_normal(shape)
    W = alista_weights(D)
    assert W.shape == D.shape
    assert_allclose(np.diag(W @ D.T), 1.0, rtol=1e-12)
    W_pgd = alista_weights_pgd(D)
    assert_allclose(np.diag(W_pgd @ D.T), 1.0, rtol=1e-10)
    # (with fewer atoms than features both are 0 up to rounding: 1e-12)
    assert off_diagonal_norm(W, D) <= off_diagonal_norm(W_pgd, D) * (1 + 1e-8) + 1e-12
    # optimality: no feasible perturbation (keeping w_i . d_i = 1) lowers it
    for _ in range(20):
        E = rng.standard_normal(shape) * 1e-3
        E -= (np.einsum("ij,ij->i", E, D) / np.sum(D * D, axis=1))[:, None] * D
        assert off_diagonal_norm(W + E, D) >= off_diagonal_norm(W, D) - 1e-12


def test_alista_weights_of_a_rank_deficient_float32_dictionary():
    """A rank-2 dictionary rounded to float32 has singular values of its
    rounding (~1e-8) that float64's rank cut kept and inverted: weights of
    ~1e8 and an untrained float32 network whose first layer's objective was
    1e15 times the zero code's. The rank is D's at its own precision."""
    rng = np.random.default_rng(0)
    D_exact = rng.standard_normal((12, 2)) @ rng.standard_normal((2, 8)) / 3
    D = D_exact.astype(np.float32)
    X = rng.standard_normal((20, 8))
    assert np.linalg.matrix_rank(D) == 2
    # reference: the row-normalised (D^+)^T, with numpy's rank cut for float32
    D64 = D.astype(np.float64)
    P = np.linalg.pinv(D64, rcond=max(D.shape) * np.finfo(np.float32).eps)
    W_ref = P.T / np.diag(D64 @ P)[:, None]
    W = alista_weights(D)
    assert W.dtype == np.float32
    assert_allclose(W, W_ref, rtol=1e-5, atol=1e-6 * np.abs(W_ref).max())
    # the untrained float32 network computes what the float64 one of the
    # unrounded (exactly rank-2) dictionary does
    objectives = [Lista(D_, 0.5, 3, parametrization="alista")
                  .objective(X.astype(D_.dtype), per_layer=True) for D_ in (D, D_exact)]
    assert_allclose(objectives[0], objectives[1], rtol=1e-4)


@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda net: pickle.loads(pickle.dumps(net))])
def test_copies_keep_the_dictionary_read_only(duplicate):
    """lipschitz_ and the kernels' cached matrices derive from D: a deep copy
    or an unpickled network keeps D read-only, as built (both came back
    writeable, and c.D *= 2 left a network matching neither D)."""
    X, D = make_problem()
    net = Lista(D, 0.3, 3)
    twin = duplicate(net)
    with pytest.raises(ValueError, match="read-only"):
        twin.D *= 2
    assert_allclose(twin.transform(X), net.transform(X), rtol=0, atol=0)


@pytest.mark.parametrize("name, value", [
    ("positive", True), ("support_selection", (10, 20)), ("n_layers", 2),
    ("parametrization", "alista"), ("D", "other"), ("lipschitz_", 1.0)])
def test_structure_is_fixed_when_the_network_is_built(tmp_path, name, value):
    """``net.positive = True`` was accepted: the layers kept thresholding both
    ways (codes of -0.38) while ``objective`` assumed non-negative codes
    (inf), and the saved file loaded as another network (found by an
    adversarial pass). The structure is read-only; the network stays ISTA
    with step 1/L (the NumPy reference) and saves as itself."""
    import reference as ref

    X, D = make_problem()
    net = Lista(D, 0.3, 4, parametrization="coupled")
    with pytest.raises(AttributeError, match=f"Lista.{name} is "):
        setattr(net, name, D[::-1].copy() if value == "other" else value)
    expected = ref.ista(X, D, 0.3, 4)[0]
    assert_allclose(net.transform(X), expected, rtol=1e-12, atol=1e-14)
    net.save(tmp_path / "net.npz")
    assert_allclose(Lista.load(tmp_path / "net.npz").transform(X), expected,
                    rtol=1e-12, atol=1e-14)


def test_network_pickled_with_plain_attributes_still_loads():
    """A Lista pickled when its structure and settings were plain attributes
    (its state holds "D", "lmbd", "positive"...): unpickling gave one whose
    properties found nothing ("no attribute '_D'"), a fitted
    LearnedSparseCoder holding one too. Its state is the current one with
    the private names made public again; it loads as the same network."""
    X, D = make_problem()
    net = Lista(D, 0.3, 3, parametrization="coupled", positive=True)
    renamed = {"_D": "D", "_parametrization": "parametrization", "_n_layers": "n_layers",
               "_positive": "positive", "_support_selection": "support_selection",
               "_lipschitz": "lipschitz_", "_lmbd_value": "lmbd", "_n_jobs_value": "n_jobs"}
    old = {renamed.get(k, k): v for k, v in vars(net).items()}
    assert "D" in old and "_D" not in old
    twin = Lista.__new__(Lista)
    twin.__setstate__(old)
    assert twin.positive and twin.lmbd == 0.3 and twin.parametrization == "coupled"
    assert not twin.D.flags.writeable
    assert_allclose(twin.transform(X), net.transform(X), rtol=0, atol=0)


def test_lmbd_and_n_jobs_are_validated_when_set():
    """The call settings may change after construction, through the same
    validation as the constructor's: a network set to lmbd computes what
    one built at lmbd does (ISTA with step 1/L, the NumPy reference)."""
    import reference as ref

    X, D = make_problem()
    net = Lista(D, 0.3, 4)
    for bad in (-1.0, np.nan, "0.5"):
        with pytest.raises(InvalidParameterError, match="'lmbd' parameter of Lista"):
            net.lmbd = bad
    with pytest.raises(InvalidParameterError, match="'n_jobs' parameter of Lista"):
        net.n_jobs = 0
    assert net.lmbd == 0.3 and net.n_jobs is None
    net.lmbd, net.n_jobs = 0.5, 1
    assert_allclose(net.transform(X), ref.ista(X, D, 0.5, 4)[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ratio", [1e-4, 1e-8, 1e-12, 1e-14, 1e-17, 1e-30])
def test_alista_weights_of_an_atom_far_smaller_than_the_others(ratio, dtype):
    """An atom far below the others kept its weight only to eps / ratio
    (the constraint off by 1e-2 at 1e-14), and one below the rank cut got
    NaN weights. Reference: the closed form w_i = G^-1 d_i / (d_i . G^-1 d_i),
    G = D^T D, solved directly: G is well conditioned, as the other atoms
    span the features."""
    if dtype == np.float32 and ratio < 1e-30:
        pytest.skip("below float32's range")
    rng = np.random.default_rng(5)
    D = rng.standard_normal((6, 4))
    D[2] *= ratio
    D = D.astype(dtype)
    D64 = D.astype(np.float64)
    G = D64.T @ D64
    Y = np.linalg.solve(G, D64.T).T
    W_ref = Y / np.einsum("ij,ij->i", Y, D64)[:, None]
    W = alista_weights(D)
    assert W.dtype == dtype
    eps = np.finfo(dtype).eps
    # row by row, relatively to the row (G's condition number is about 30)
    err = np.abs(W - W_ref).max(axis=1) / np.abs(W_ref).max(axis=1)
    assert np.all(err <= 1e3 * eps)
    assert_allclose(np.einsum("ij,ij->i", W.astype(np.float64), D64), 1.0, rtol=50 * eps)
    # a diagonal dictionary: the exact weights are 1 / d_ii
    d = np.array([1.0, ratio, 3.0], dtype)
    assert_allclose(alista_weights(np.diag(d)), np.diag(1 / d.astype(np.float64)),
                    rtol=4 * eps, atol=0)
    assert np.isfinite(Lista(np.diag(d), 0.1, 2, "alista").transform(np.ones((1, 3), dtype))).all()


def test_alista_weights_beyond_the_dtype_are_refused_by_atom():
    D = np.diag([1.0, 1e-38, 2.0]).astype(np.float32)      # weight 1e38 fits
    assert_allclose(alista_weights(D)[1, 1], 1e38, rtol=1e-6)
    D = np.diag([1.0, 1e-39, 2.0]).astype(np.float32)      # 1e39 does not
    with pytest.raises(ValueError, match=r"atoms \(rows \[1\]\) of D overflow float32"):
        alista_weights(D)
    D = np.diag([1.0, 1e-310, 2.0])                        # 1e310 does not fit
    with pytest.raises(ValueError, match=r"atoms \(rows \[1\]\) of D overflow float64"):
        alista_weights(D)
    # dependent atoms: the norms weigh the off-diagonal terms, and within
    # 2^26 the weights are those of the closed form ...
    D = np.array([[1.0, 0.0], [1e-6, 0.0], [0.0, 1.0]])
    # row 0: min (w.d_1)^2 + (w.d_2)^2 with w.d_0 = 1: w = (1, 0), and the
    # same direction for row 1, scaled to w.d_1 = 1; row 2: (0, 1)
    assert_allclose(alista_weights(D), [[1.0, 0.0], [1e6, 0.0], [0.0, 1.0]], rtol=1e-15)
    # ... a direction carried only by atoms beyond it, below the largest
    # atoms' rounding: refused
    # (a small atom inside the span of larger ones is determined at any
    # ratio: test_alista_weights_of_an_atom_far_smaller_than_the_others)
    D = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1e-9]])
    with pytest.raises(ValueError, match=r"linearly dependent .*\(among rows \[2\]\)"):
        alista_weights(D)


def test_alista_weights_rejects_zero_atom():
    D = np.eye(3)
    D[1] = 0
    with pytest.raises(ValueError, match="zero atom"):
        alista_weights(D)


# --------------------------------------------------------------------------
# parameters, validation
# --------------------------------------------------------------------------
def test_parameters_keys_shapes_and_copies():
    X, D = make_problem()
    m, n = D.shape
    expected = {"step": {"alpha": ()},
                "coupled": {"W": (m, n), "alpha": (), "beta": ()},
                "alista": {"gamma": (), "theta": ()},
                "lista": {"W_z": (m, m), "W_x": (n, m), "theta": (m,)}}
    for p, shapes in expected.items():
        net = Lista(D, 0.3, 3, parametrization=p)
        params = net.parameters
        assert len(params) == 3
        assert {k: v.shape for k, v in params[0].items()} == shapes
        for v in params[0].values():
            v[...] = 123.0          # a copy: the network is unchanged
        assert not any(np.any(v == 123.0) for v in net.parameters[0].values())


@pytest.mark.parametrize("mutate, match", [
    (lambda P: P[:-1], "one dict per layer"),
    (lambda P: [{}] + P[1:], "keys"),
    (lambda P: [{**P[0], "extra": 1.0}] + P[1:], "keys"),
    (lambda P: [{**P[0], "W": P[0]["W"][:, :-1]}] + P[1:], "shape"),
    (lambda P: [{**P[0], "alpha": -1.0}] + P[1:], ">= 0"),
    (lambda P: [{**P[0], "beta": np.nan}] + P[1:], "NaN or infinity"),
    (lambda P: [{**P[0], "W": np.full_like(P[0]["W"], np.inf)}] + P[1:], "NaN or infinity"),
    # complex and text are refused, not cast (a cast drops the imaginary part
    # or parses the text)
    (lambda P: [{**P[0], "alpha": P[0]["alpha"] + 0.5j}] + P[1:], r"Complex.*\['alpha'\]"),
    (lambda P: [{**P[0], "W": P[0]["W"].astype(complex)}] + P[1:], r"Complex.*\['W'\]"),
    (lambda P: [{**P[0], "beta": "0.1"}] + P[1:], r"strings.*\['beta'\]"),
    (lambda P: [{**P[0], "beta": np.array(b"0.1")}] + P[1:], r"strings.*\['beta'\]"),
])
def test_set_parameters_validation(mutate, match):
    _, D = make_problem()
    net = Lista(D, 0.3, 3, parametrization="coupled")
    before = net.parameters
    with pytest.raises(ValueError, match=match):
        net.set_parameters(mutate(net.parameters))
    for a, b in zip(before, net.parameters):       # unchanged on error
        for k in a:
            assert_allclose(a[k], b[k])


def test_constructor_validation():
    X, D = make_problem()
    with pytest.raises(InvalidParameterError, match="n_layers"):
        Lista(D, 0.3, 0)
    with pytest.raises(InvalidParameterError, match="parametrization"):
        Lista(D, 0.3, 3, parametrization="hessian")
    with pytest.raises(InvalidParameterError, match="lmbd"):
        Lista(D, -1.0, 3)
    with pytest.raises(ValueError, match="D"):
        Lista(np.zeros((0, 3)), 0.3, 3)


def test_method_validation():
    X, D = make_problem()
    net = Lista(D, 0.3, 3)
    with pytest.raises(ValueError, match="features"):
        net.transform(X[:, :-1])
    with pytest.raises(InvalidParameterError, match="n_layers"):
        net.transform(X, n_layers=4)
    with pytest.raises(InvalidParameterError, match="loss"):
        net.loss_and_grad(X, loss="hinge")
    with pytest.raises(ValueError, match="Z_target"):
        net.loss_and_grad(X, loss="supervised")
    with pytest.raises(ValueError, match="Z_target"):
        net.loss_and_grad(X, loss="supervised", Z_target=np.zeros((X.shape[0], 3)))
    with pytest.raises(ValueError, match="sample"):
        net.loss_and_grad(X[:0])


def test_dictionary_distance():
    X, D = make_problem()
    for p in ("step", "coupled", "lista"):
        assert_allclose(Lista(D, 0.3, 4, parametrization=p).dictionary_distance(),
                        np.zeros(4), atol=1e-12)
    net = Lista(D, 0.3, 2, parametrization="coupled")
    params = net.parameters
    params[1]["W"] = 2 * params[1]["W"]
    params[1]["beta"] = 2 * params[1]["beta"]        # (alpha / beta) W = D again
    params[0]["W"] = params[0]["W"] + 0.1 * D
    net.set_parameters(params)
    assert_allclose(net.dictionary_distance(), [0.1, 0.0], atol=1e-12)


# --------------------------------------------------------------------------
# persistence
# --------------------------------------------------------------------------
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_save_load_round_trip(tmp_path, parametrization):
    X, D = make_problem()
    net = Lista(D.astype(np.float32) if parametrization == "lista" else D, 0.3, 3,
                parametrization=parametrization)
    net.set_parameters(perturbed(net, seed=17))
    net.loss_history_ = [3.0, 2.0, 1.5]
    path = tmp_path / "net"               # no suffix: written as given
    net.save(path)
    back = Lista.load(path)
    assert back.parametrization == parametrization
    assert back.lmbd == net.lmbd and back.n_layers == net.n_layers
    assert back.dtype == net.dtype
    assert back.loss_history_ == net.loss_history_
    for a, b in zip(net.parameters, back.parameters):
        for k in a:
            assert_allclose(a[k], b[k], rtol=0)
    assert_allclose(back.transform(X), net.transform(X), rtol=0)


def _npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_load_rejects_bad_files(tmp_path):
    _, D = make_problem()
    net = Lista(D, 0.3, 2, parametrization="coupled")
    good = tmp_path / "good.npz"
    net.save(good)
    data = good.read_bytes()
    cases = {
        "truncated.npz": data[: len(data) // 2],
        "empty.npz": b"",
        "text.npz": b"not a network\n",
        "foreign.npz": _npz_bytes(a=np.arange(3)),
    }
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    cases["future.npz"] = _npz_bytes(**{**arrays, "format_version": np.array(99)})
    cases["shape.npz"] = _npz_bytes(**{**arrays, "layer0_W": arrays["layer0_W"][:, :2]})
    cases["missing.npz"] = _npz_bytes(**{k: v for k, v in arrays.items() if k != "layer1_beta"})
    cases["negative.npz"] = _npz_bytes(**{**arrays, "layer0_alpha": np.array(-1.0)})
    # values that a cast would change: refused, not converted
    cases["complex.npz"] = _npz_bytes(**{**arrays, "layer0_alpha": np.array(0.1 + 0.5j)})
    cases["text_lmbd.npz"] = _npz_bytes(**{**arrays, "lmbd": np.array("0.3")})
    cases["float_layers.npz"] = _npz_bytes(**{**arrays, "n_layers": np.array(2.5)})
    cases["text_positive.npz"] = _npz_bytes(**{**arrays, "positive": np.array("False")})
    cases["text_selection.npz"] = _npz_bytes(**{**arrays,
                                                "support_selection": np.array(["1", "5"])})
    # a fit records finite losses only
    cases["nan_history.npz"] = _npz_bytes(**{**arrays, "loss_history": np.array([1.0, np.nan])})
    cases["npy.npz"] = None
    # the zip's central directory one byte off: zipfile's seek raises OSError
    # EINVAL, which load passed on as an error of open's
    end = data.rfind(b"PK\x05\x06")
    offset = int.from_bytes(data[end + 16:end + 20], "little") + 1
    cases["index.npz"] = data[:end + 16] + offset.to_bytes(4, "little") + data[end + 20:]
    for name, content in cases.items():
        path = tmp_path / name
        if content is None:
            np.save(path, np.arange(3))
            path = tmp_path / (name + ".npy")
        else:
            path.write_bytes(content)
        with pytest.raises(ValueError, match="not a valid fastlista Lista file"):
            Lista.load(path)
    # the error names what is missing (it said "declares n_layers=2 but holds
    # 5 layer entries")
    with pytest.raises(ValueError, match=r"missing entries \['layer1_beta'\] of its 2"):
        Lista.load(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError):
        Lista.load(tmp_path / "nowhere.npz")
    # no pickles are written
    with zipfile.ZipFile(good) as z:
        for name in z.namelist():
            with z.open(name) as f:
                assert b"pickle" not in f.read(200).lower()


def test_load_names_a_file_that_is_not_a_zip_archive(tmp_path):
    """A file that is not a zip archive (an .npz is one) is named as such.
    Text and pickles were reported as "This file contains pickled (object)
    data. If you trust the file you can load it unsafely using the
    `allow_pickle=` keyword argument" (NumPy's advice: Lista.load has no
    such argument and a network is never a pickle), an .npy array as
    "'numpy.ndarray' object does not support the context manager protocol"
    (found by a docstring review: the docstring promises a ValueError for a
    file that is "not a .npz archive")."""
    cases = {"text.npz": (b"not a network\n", r"it starts with b'not '"),
             "pickled.npz": (pickle.dumps({"D": [[1.0]]}), r"it starts with b'\\x80"),
             "empty.npz": (b"", "the file is empty"),
             "array.npy": (None, r"an \.npy array")}
    for name, (content, detail) in cases.items():
        path = tmp_path / name
        if content is None:
            np.save(path, np.arange(3.0))
        else:
            path.write_bytes(content)
        assert not zipfile.is_zipfile(path)
        with pytest.raises(ValueError) as info:
            Lista.load(path)
        message = str(info.value)
        assert re.search(r"is not a valid fastlista Lista file: not an \.npz archive \(a zip "
                         r"file, as Lista\.save writes\): " + detail, message), message
        reason = message.split("Lista file: ", 1)[1]
        assert "pickle" not in reason and "context manager" not in reason
    # a zip archive still goes on to the entries' checks
    _, D = make_problem()
    good = tmp_path / "good.npz"
    Lista(D, 0.3, 2).save(good)
    assert zipfile.is_zipfile(good)
    assert Lista.load(good).n_layers == 2


@pytest.mark.parametrize("error", [KeyboardInterrupt(),
                                   OSError(errno.ENOSPC, "No space left on device")],
                         ids=["interrupt", "disk-full"])
def test_failed_save_leaves_the_old_file_as_it_was(tmp_path, monkeypatch, error):
    """A save that fails while writing (an interrupt, a full disk) leaves the
    file it was replacing byte for byte, no file where there was none and no
    temporary file; the next save replaces the file."""
    X, D = make_problem()
    old = Lista(D, 0.3, 3, parametrization="step")
    old.set_parameters(perturbed(old, seed=3))
    path = tmp_path / "model.npz"
    old.save(path)
    data = path.read_bytes()
    codes = Lista.load(path).transform(X)
    new = Lista(D, 0.3, 8, parametrization="lista")      # a larger archive
    new.set_parameters(perturbed(new, seed=4))
    savez = np.savez

    def savez_failing_midway(file, **arrays):
        # half the entries reach the file, then the error
        savez(file, **dict(list(arrays.items())[: len(arrays) // 2]))
        raise error

    if sys.platform != "win32":
        # a dangling symbolic link: its target is a new path too
        (tmp_path / "link.npz").symlink_to("linked.npz")
    monkeypatch.setattr(np, "savez", savez_failing_midway)
    with pytest.raises(type(error)):
        new.save(path)
    with pytest.raises(type(error)):
        new.save(tmp_path / "other.npz")
    if sys.platform != "win32":
        with pytest.raises(type(error)):
            new.save(tmp_path / "link.npz")
        (tmp_path / "link.npz").unlink()
    monkeypatch.undo()
    assert path.read_bytes() == data
    np.testing.assert_array_equal(Lista.load(path).transform(X), codes)
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]
    new.save(path)
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]
    back = Lista.load(path)
    assert back.parametrization == "lista"
    for a, b in zip(back.parameters, new.parameters):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes, links and devices")
def test_save_writes_the_path_as_open_wb_does(tmp_path):
    """A new file gets the mode of open(path, "wb") (0o666 less the umask), a
    replaced file keeps its mode, a symbolic link's file is replaced and the
    link stays (a dangling one included), a device is written in place, and
    a directory or a missing directory raises open's error."""
    _, D = make_problem()
    net = Lista(D, 0.3, 2)

    def mode(p):
        return stat.S_IMODE(os.stat(p).st_mode)

    umask = os.umask(0o027)
    try:
        net.save(tmp_path / "new.npz")
        with open(tmp_path / "reference", "wb"):
            pass
    finally:
        os.umask(umask)
    assert mode(tmp_path / "new.npz") == mode(tmp_path / "reference") == 0o640
    os.chmod(tmp_path / "new.npz", 0o604)
    net.save(os.fsencode(tmp_path / "new.npz"))
    assert mode(tmp_path / "new.npz") == 0o604
    (tmp_path / "link.npz").symlink_to("new.npz")
    (tmp_path / "dangling.npz").symlink_to("target.npz")
    for name, target in (("link.npz", "new.npz"), ("dangling.npz", "target.npz")):
        net.save(str(tmp_path / name))
        assert (tmp_path / name).is_symlink()
        assert Lista.load(tmp_path / target).n_layers == 2
    net.save(os.devnull)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    with pytest.raises(IsADirectoryError):
        net.save(tmp_path)
    with pytest.raises(FileNotFoundError):
        net.save(tmp_path / "missing" / "net.npz")
    assert sorted(os.listdir(tmp_path)) == ["dangling.npz", "link.npz", "new.npz",
                                            "reference", "target.npz"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX symbolic links")
def test_save_creates_a_new_path_only_with_the_complete_archive(tmp_path, monkeypatch):
    """While the archive is being written, a new path (a dangling symbolic
    link's target too) does not exist and an existing file holds its old
    bytes: a reader never sees an empty or partial archive. A save that
    fails after writing (the rename refused) leaves no file and no
    temporary behind. (Saving created an empty placeholder at a new path
    before writing, to learn open's mode.)"""
    _, D = make_problem()
    net = Lista(D, 0.3, 2)
    old = tmp_path / "old.npz"
    net.save(old)
    old_bytes = old.read_bytes()
    (tmp_path / "dangling.npz").symlink_to("linked.npz")
    savez = np.savez
    seen = []

    def savez_checking_the_target(file, **arrays):
        seen.append((target, os.path.lexists(target),
                     old.read_bytes() == old_bytes, sorted(os.listdir(tmp_path))))
        savez(file, **arrays)

    monkeypatch.setattr(np, "savez", savez_checking_the_target)
    for name, target in (("new.npz", tmp_path / "new.npz"),
                         ("dangling.npz", tmp_path / "linked.npz"),
                         ("old.npz", old)):
        net.save(tmp_path / name)
    monkeypatch.undo()
    assert [(t, exists, same) for t, exists, same, _ in seen] == [
        (tmp_path / "new.npz", False, True),
        (tmp_path / "linked.npz", False, True),
        (old, True, True)]
    # the archive was written to one temporary file beside the target
    for _, _, _, names in seen:
        assert len([n for n in names if n.endswith(".tmp")]) == 1
    for name in ("new.npz", "linked.npz", "old.npz"):
        assert Lista.load(tmp_path / name).n_layers == 2

    def replace_failing(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    before = sorted(os.listdir(tmp_path))
    monkeypatch.setattr(os, "replace", replace_failing)
    for name in ("other.npz", "old.npz"):
        with pytest.raises(OSError, match="Input/output error"):
            net.save(tmp_path / name)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before


def test_save_errors_name_the_path_as_open_does(tmp_path):
    """A missing directory or a directory path raise open's error, naming
    the path asked for (not a temporary file), and leave nothing behind."""
    _, D = make_problem()
    net = Lista(D, 0.3, 2)
    for path, error in ((tmp_path / "missing" / "net.npz", FileNotFoundError),
                        (tmp_path, IsADirectoryError),
                        (str(tmp_path / "new.npz") + os.sep, IsADirectoryError),
                        (str(tmp_path / "missing" / "new") + os.sep, FileNotFoundError)):
        with pytest.raises(error) as info:
            net.save(path)
        assert os.fspath(info.value.filename) == os.fspath(path)
        with pytest.raises(error):
            open(path, "wb")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX symbolic links")
def test_save_follows_a_dangling_link_as_open_does(tmp_path):
    # "missing/../file": os.path.realpath resolved it lexically to "file",
    # an existing file that save then replaced; open(path, "wb") fails
    (tmp_path / "file").write_text("x")
    os.symlink(f"{tmp_path}/missing/../file", tmp_path / "net.npz")
    _, D = make_problem()
    with pytest.raises(FileNotFoundError):
        open(tmp_path / "net.npz", "wb")
    with pytest.raises(FileNotFoundError):
        Lista(D, 0.1, 2).save(tmp_path / "net.npz")
    assert (tmp_path / "file").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "net.npz"]


def test_save_over_another_user_s_file_in_a_sticky_directory(sticky_dir):
    """open(path, "wb") rewrites another user's 0o666 file in a sticky
    directory; save, which renames a new file over it, cannot: it raised
    EPERM naming its temporary file (already removed). It names the path."""
    shared, as_nobody = sticky_dir
    path = os.path.join(shared, "net.npz")
    with open(path, "wb") as f:
        f.write(b"root's")
    os.chmod(path, 0o666)
    _, D = make_problem()
    net = Lista(D, 0.3, 2)

    def save():
        try:
            net.save(path)
        except PermissionError as exc:
            return 1, f"{exc.errno} {exc.filename}"
        return 0, ""

    assert as_nobody(save) == (1, f"{errno.EPERM} {path}")
    assert os.listdir(shared) == ["net.npz"]
    with open(path, "rb") as f:
        assert f.read() == b"root's"


def test_load_passes_memory_error_on(tmp_path, monkeypatch):
    """Memory running out while a good file is read is a MemoryError: it
    was reported as "not a valid fastlista Lista file", and a user told so
    may delete a good model."""
    from fastlista._networks import _persistence

    D = np.random.RandomState(0).randn(6, 4)
    path = tmp_path / "net.npz"
    Lista(D, 0.2, 3).save(path)

    def out_of_memory(*args):
        raise MemoryError

    monkeypatch.setattr(_persistence, "_check_exact", out_of_memory)
    with pytest.raises(MemoryError):
        Lista.load(path)
    monkeypatch.undo()
    assert Lista.load(path).n_layers == 3


@pytest.mark.skipif(os.name != "posix", reason="POSIX paths and symbolic links")
def test_save_and_load_raise_open_s_error_for_every_unusable_path(tmp_path, monkeypatch):
    """save raises what open(path, "wb") raises, load what open(path, "rb")
    raises (load reported the last three as "not a valid fastlista Lista
    file", save("") an IsADirectoryError and save("file/") a
    NotADirectoryError), and neither creates anything."""
    _, D = make_problem()
    net = Lista(D, 0.3, 2)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_bytes(b"x")
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    before = sorted(os.listdir(tmp_path))
    for path in ("", "file/", "file/x", "loop1", "loop1/", "x" * 300):
        for act, reference in ((net.save, lambda p: open(p, "wb")),
                               (Lista.load, lambda p: open(p, "rb"))):
            with pytest.raises(OSError) as expected:
                reference(path)
            with pytest.raises(OSError) as got:
                act(path)
            assert type(got.value) is type(expected.value), (act, path)
            assert got.value.errno == expected.value.errno, (act, path)
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("key, value", [
    ("n_layers", np.array(2.0)), ("n_layers", np.array(3.5)), ("n_layers", np.array("2")),
    ("n_layers", np.array(True)), ("n_layers", np.array(2 + 0j)),
    ("format_version", np.array(2.0)), ("format_version", np.array(True)),
    ("format_version", np.array("2")),
])
def test_load_names_an_integer_entry_that_is_not_an_integer(tmp_path, key, value):
    """n_layers and format_version must be integers: anything else is refused
    naming the entry, its value and what was expected (the message was
    "'numpy.float64' object cannot be interpreted as an integer")."""
    _, D = make_problem()
    good = tmp_path / "good.npz"
    Lista(D, 0.3, 2).save(good)
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    path = tmp_path / "crafted.npz"
    np.savez(path, **{**arrays, key: value})
    with pytest.raises(ValueError, match=rf"not a valid fastlista Lista file: entry '{key}' "
                                         rf"holds .* \({value.dtype}\): expected an integer"):
        Lista.load(path)


def test_load_refuses_a_file_object_with_one_clean_error(tmp_path):
    """load takes a path (str, bytes or os.PathLike), as save does: a file
    object is a TypeError naming the argument, not an error raised while
    handling another."""
    _, D = make_problem()
    path = tmp_path / "net.npz"
    Lista(D, 0.3, 2).save(path)
    with open(path, "rb") as f:
        with pytest.raises(TypeError, match="'path'.*str, bytes or os.PathLike") as info:
            Lista.load(f)
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert Lista.load(os.fsencode(path)).n_layers == 2


@pytest.mark.parametrize("seed", [np.random.default_rng(0), 1.0, "seed", -1, 2**32])
def test_bad_random_state_is_named(seed):
    """The message names the argument and what is accepted (it was NumPy's
    "Generator(PCG64) ... cannot be used to seed a numpy.random.RandomState
    instance")."""
    _, D = make_problem()
    with pytest.raises(InvalidParameterError,
                       match=r"'random_state' parameter of Lista must be None, an int in "
                             r"\[0, 2\*\*32 - 1\] or a numpy.random.RandomState"):
        Lista(D, 0.3, 2, random_state=seed)


def test_load_refuses_entries_a_cast_would_change(tmp_path):
    """An entry whose cast (to the network's dtype, float32 here; to float64
    for D, lmbd, support_selection and the loss history) would change a value
    is refused naming it; entries a cast keeps exactly load exactly."""
    _, D = make_problem()
    net = Lista(D.astype(np.float32), 0.3, 2, parametrization="coupled",
                support_selection=(10.0, 50.0))
    net.set_parameters(perturbed(net, seed=5))
    net.loss_history_ = [2.0, 1.5]
    good = tmp_path / "good.npz"
    net.save(good)
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    big = 2**53 + 1                         # an integer float64 rounds
    D_int = np.round(4 * D).astype(np.int64)
    D_int[0, 0] = big
    changed = {
        "layer0_alpha": np.array(0.1),      # float64 in a float32 network
        "layer1_beta": np.array(1e-50),     # a non-zero step that float32 makes 0
        "layer0_W": arrays["layer0_W"].astype(np.float64) + 2.0**-40,
        "D": D_int,
        "lmbd": np.array(big),
        "loss_history": np.array([big, 1]),
    }
    if np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant:
        changed["support_selection"] = np.array([10, 50], dtype=np.longdouble) + \
            np.longdouble(2)**-55
    for key, value in changed.items():
        path = tmp_path / f"{key}.npz"
        np.savez(path, **{**arrays, key: value})
        with pytest.raises(ValueError, match=rf"not a valid fastlista Lista file: "
                                             rf"entry '{key}' holds .* represents exactly"):
            Lista.load(path)
    exact = {
        "layer0_alpha": np.array(0.5),      # float64, a float32 value
        "layer1_beta": arrays["layer1_beta"].astype(">f4"),
        "layer1_W": arrays["layer1_W"].astype(np.float64),
        "lmbd": np.array(3),
        "loss_history": np.array([2, 1], dtype=np.int32),
        "support_selection": np.array([10, 50], dtype=np.float32),
    }
    path = tmp_path / "exact.npz"
    np.savez(path, **{**arrays, **exact})
    back = Lista.load(path)
    assert back.dtype == np.float32
    assert back.lmbd == 3.0 and back.loss_history_ == [2.0, 1.0]
    assert back.support_selection == (10.0, 50.0)
    np.testing.assert_array_equal(back.D, arrays["D"])
    file = {**arrays, **exact}
    for t, layer in enumerate(back.parameters):
        for k, v in layer.items():
            assert v.dtype == np.float32
            np.testing.assert_array_equal(v, file[f"layer{t}_{k}"])


# --------------------------------------------------------------------------
# crafted files (hypothesis): derandomised for CI, FASTLISTA_FUZZ=long for
# a long random run (conftest.fuzz_settings)
# --------------------------------------------------------------------------
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st_  # noqa: E402

from conftest import fuzz_settings  # noqa: E402

CRAFT = fuzz_settings("persistence", 2000)
# what replaces an entry's value v
CRAFTS = ("nan", "inf", "negative", "zero", "huge", "float32", "int", "bool", "complex",
          "text", "bytes", "empty", "scalar", "extra_axis", "transposed", "shorter",
          "rounded")


def _craft(kind, v):
    """Entry value v (an ndarray read from a saved file) replaced by ``kind``."""
    numeric = v.dtype.kind in "fiub"
    f = v.astype(np.float64) if numeric else np.zeros(v.shape)
    with np.errstate(all="ignore"):
        if kind in ("nan", "inf"):
            f = f.copy()
            f.flat[:1] = np.nan if kind == "nan" else np.inf
            return f
        return {
            "negative": lambda: -np.abs(f) - 1.0,
            "zero": lambda: np.zeros_like(f),
            "huge": lambda: f * 1e300 + 1e300,
            "float32": lambda: f.astype(np.float32),
            "int": lambda: np.round(3 * f).astype(np.int64),
            "bool": lambda: f != 0,
            "complex": lambda: f + 0.5j,
            "text": lambda: v.astype(str),
            "bytes": lambda: v.astype(str).astype(bytes),
            "empty": lambda: np.zeros((0,)),
            "scalar": lambda: np.array(1.0),
            "extra_axis": lambda: v[np.newaxis],
            "transposed": lambda: v.T,
            "shorter": lambda: v.ravel()[:-1] if v.size else np.zeros(1),
            # float64 values a float32 network would round
            "rounded": lambda: f * (1 + 2.0 ** -40) + 2.0 ** -70,
        }[kind]()


@CRAFT
@given(parametrization=st_.sampled_from(PARAMETRIZATIONS),
       dtype=st_.sampled_from([np.float64, np.float32]), n_layers=st_.integers(1, 3),
       positive=st_.booleans(), entry=st_.integers(0, 10**6),
       change=st_.sampled_from(("replace", "replace", "drop", "add")),
       kind=st_.sampled_from(CRAFTS), seed=st_.integers(0, 2**32 - 1))
def test_fuzz_load_crafted_files(tmp_path_factory, parametrization, dtype, n_layers,
                                 positive, entry, change, kind, seed):
    """A saved network with one entry replaced, dropped or added: Lista.load
    refuses it with its ValueError, or returns exactly the network the file
    holds (its values, which the network's dtype represents exactly)
    computing the NumPy forward of those values."""
    X, D = make_problem(n_samples=9, n_atoms=7, n_features=5, seed=seed % 1000)
    net = Lista(D.astype(dtype), 0.3, n_layers, parametrization=parametrization,
                positive=positive)
    net.set_parameters(perturbed(net, seed=seed))
    net.loss_history_ = [2.0, 1.5]
    path = tmp_path_factory.mktemp("craft") / "net.npz"
    net.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    key = sorted(arrays)[entry % len(arrays)]
    if change == "drop":
        del arrays[key]
    elif change == "add":
        arrays[f"layer{n_layers}_{key}"] = arrays[key]
    else:
        arrays[key] = _craft(kind, arrays[key])
    path.write_bytes(_npz_bytes(**arrays))
    try:
        back = Lista.load(path)
    except ValueError as exc:
        assert "is not a valid fastlista Lista file" in str(exc)
        return
    # accepted: every value is the file's, and valid
    assert change == "replace"
    assert back.parametrization == str(arrays["parametrization"])
    assert back.n_layers == int(arrays["n_layers"]) and back.positive == bool(arrays["positive"])
    assert back.lmbd == float(arrays["lmbd"]) and back.support_selection is None
    np.testing.assert_array_equal(back.D, arrays["D"].astype(back.D.dtype))
    assert back.loss_history_ == [float(v) for v in arrays["loss_history"]]
    assert all(np.isfinite(back.loss_history_))
    file_params = [{k: arrays[f"layer{t}_{k}"].astype(back.dtype) for k in layer}
                   for t, layer in enumerate(back.parameters)]
    # loaded exactly: no value the cast to the network's dtype rounded
    for t, layer in enumerate(file_params):
        for k, v in layer.items():
            stored = arrays[f"layer{t}_{k}"]
            np.testing.assert_array_equal(v.astype(stored.dtype), stored)
    for a, b in zip(back.parameters, file_params):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
            assert np.all(np.isfinite(a[k]))
            if k in STEP_KEYS:
                assert np.all(a[k] >= 0)
    # (a file may hold another valid network: D transposed, with scalar
    # steps, is one over n_features atoms)
    Xd = X.astype(back.dtype) if back.n_features == X.shape[1] else \
        np.random.default_rng(seed).standard_normal((9, back.n_features)).astype(back.dtype)
    with np.errstate(all="ignore"):
        layers = numpy_forward(file_params, Xd.astype(np.float64), back.D.astype(np.float64),
                               back.lmbd, back.parametrization,
                               alista_weights(back.D).astype(np.float64), back.positive)
        ref = layers[-1][2]
        scale = max(float(np.max(np.abs(U), initial=0.0)) for U, _, _ in layers)
    if not (np.all(np.isfinite(ref)) and np.isfinite(scale)):
        return                  # a forward beyond the float range (see test_degenerate)
    rtol = 1e-10 if back.dtype == np.float64 else 1e-4
    assert_allclose(back.transform(Xd), ref, rtol=rtol, atol=rtol * scale)


# --------------------------------------------------------------------------
# support selection (LISTA-CPSS, ALISTA-SS)
# --------------------------------------------------------------------------
SELECTING = ("coupled", "alista", "lista")


def numpy_forward_ss(params, X, D, lmbd, parametrization, ks, W_alista=None):
    """numpy_forward with support selection: at layer t the ks[t] entries of
    largest |u| of each row (earlier atom first among ties) pass
    unthresholded. Every layer's (pre-activation, threshold, selected mask,
    output)."""
    Z = np.zeros((X.shape[0], D.shape[0]))
    layers = []
    for p, k in zip(params, ks):
        U, s = layer_input(p, Z, X, D, lmbd, parametrization, W_alista)
        # a stable sort of -|u|: equal magnitudes keep the atoms' order
        order = np.argsort(-np.abs(U), axis=1, kind="stable")[:, :k]
        sel = np.zeros(U.shape, dtype=bool)
        np.put_along_axis(sel, order, True, axis=1)
        Z = np.where(sel, U, st(U, s))
        layers.append((U, s, sel, Z))
    return layers


def test_selection_counts_follow_the_papers():
    from fastlista._networks._parameters import selection_counts

    # ceil(min(p t, p_max) m / 100), t from 1: 1.2 % of 256 atoms is 3.07 -> 4
    ks = selection_counts((1.2, 13), 16, 256)
    expected = [int(np.ceil(min(1.2 * t, 13) * 256 / 100 - 1e-9)) for t in range(1, 17)]
    assert ks.tolist() == expected and ks[0] == 4 and ks[-1] == 34
    assert selection_counts((50, 100), 3, 10).tolist() == [5, 10, 10]


@pytest.mark.parametrize("parametrization", SELECTING)
@pytest.mark.parametrize("shape", [(12, 8), (12, 5)], ids=["gram", "two-gemms"])
def test_support_selection_forward_matches_numpy(parametrization, shape):
    X, D = make_problem(n_samples=50, n_atoms=shape[0], n_features=shape[1], seed=11)
    net = Lista(D, 0.4, 5, parametrization=parametrization, support_selection=(10, 30))
    net.set_parameters(perturbed(net, seed=2))
    ks = [int(np.ceil(min(10 * t, 30) * shape[0] / 100 - 1e-9)) for t in range(1, 6)]
    layers = numpy_forward_ss(net.parameters, X, D, 0.4, parametrization, ks,
                              alista_weights(D))
    for t in range(5):
        assert_allclose(net.transform(X, n_layers=t + 1), layers[t][3], rtol=1e-12,
                        atol=1e-14)
    # the selection is effective: the codes differ from plain thresholding
    plain = Lista(D, 0.4, 5, parametrization=parametrization)
    plain.set_parameters(net.parameters)
    assert np.abs(plain.transform(X) - net.transform(X)).max() > 1e-3


def test_support_selection_ties_go_to_the_earlier_atom():
    # an orthonormal D and x with equal magnitudes: one coupled layer at
    # alpha = 1 has u = x D^T, all |u_j| equal: the first atoms are selected
    D = np.eye(4)
    X = np.array([[0.5, -0.5, 0.5, -0.5]])
    net = Lista(D, 0.1, 1, parametrization="coupled", support_selection=(50, 50))
    net.set_parameters([{"W": D, "alpha": np.array(1.0), "beta": np.array(1.0)}])
    assert_allclose(net.transform(X), [[0.5, -0.5, 0.4, -0.4]], rtol=1e-15)


def test_positive_support_selection_ranks_by_value():
    # as documented: a positive network selects the largest values, not
    # magnitudes (u = x at alpha = 1: -1 is not selected, 0.5 passes
    # unthresholded, -1 is thresholded to 0)
    D = np.eye(2)
    net = Lista(D, 0.1, 1, parametrization="coupled", support_selection=(50, 50),
                positive=True)
    net.set_parameters([{"W": D, "alpha": np.array(1.0), "beta": np.array(1.0)}])
    assert_allclose(net.transform(np.array([[-1.0, 0.5]])), [[0.0, 0.5]], rtol=1e-15)


@pytest.mark.parametrize("parametrization", SELECTING)
@pytest.mark.parametrize("loss", ["unsupervised", "supervised"])
@pytest.mark.parametrize("shape", [(12, 8), (12, 5)], ids=["gram", "two-gemms"])
def test_support_selection_gradient_finite_differences(parametrization, loss, shape):
    X, D = make_problem(n_samples=40, n_atoms=shape[0], n_features=shape[1], seed=6)
    lmbd, T, ks = 0.25, 4, None
    net = Lista(D, lmbd, T, parametrization=parametrization, support_selection=(15, 40))
    ks = [int(np.ceil(min(15 * t, 40) * shape[0] / 100 - 1e-9)) for t in range(1, T + 1)]
    W_a = alista_weights(D)
    # a generic point: every pre-activation 1e-5 away from its threshold and
    # every selection decided by a margin of 1e-5 (the finite-difference
    # steps below move the pre-activations by less than 1e-6)
    for seed in range(200):
        params = perturbed(net, seed=seed)
        layers = numpy_forward_ss(params, X, D, lmbd, parametrization, ks, W_a)
        margins = []
        for (U, s, sel, _), k in zip(layers, ks):
            A = -np.sort(-np.abs(U), axis=1)
            margins.append(np.min(A[:, k - 1] - A[:, k]))
            margins.append(np.min(np.where(sel, np.inf, np.abs(np.abs(U) - s))))
        if min(margins) > 1e-5:
            break
    else:
        pytest.fail("no generic point found")
    net.set_parameters(params)
    S = np.random.default_rng(8).standard_normal((X.shape[0], D.shape[0])) * 0.2
    assert_loss_and_fd_gradients(net, params, X, D, lmbd, loss, S, layers[-1][3])


@pytest.mark.parametrize("bad, match", [
    ((0, 10), "0 < p <= p_max <= 100"), ((5, 2), "0 < p <= p_max <= 100"),
    ((5, 101), "0 < p <= p_max <= 100"), ((np.nan, 10), "0 < p <= p_max"),
    ("1.2", "pair"), ((1.2,), "pair"), (5, "pair"), (("1", "5"), "pair"),
    ((True, 5), "pair"), ((1 + 0j, 5), "pair"),
    # a mapping or a set has no order (a dict {1.2: 0, 13: 0} was read as its
    # keys, silently)
    ({1.2: 0, 13: 0}, "pair"), ({1.2, 13}, "pair")])
def test_support_selection_validation(bad, match):
    X, D = make_problem()
    with pytest.raises(InvalidParameterError, match=match):
        Lista(D, 0.3, 3, parametrization="coupled", support_selection=bad)
    with pytest.raises(InvalidParameterError, match="support_selection is defined"):
        Lista(D, 0.3, 3, parametrization="step", support_selection=(1.2, 13))


def test_support_selection_is_saved(tmp_path):
    X, D = make_problem()
    net = Lista(D, 0.3, 4, parametrization="alista", support_selection=(1.2, 13))
    net.set_parameters(perturbed(net, seed=1))
    net.save(tmp_path / "ss.npz")
    back = Lista.load(tmp_path / "ss.npz")
    assert back.support_selection == (1.2, 13)
    assert_allclose(back.transform(X), net.transform(X), rtol=0, atol=0)


# --------------------------------------------------------------------------
# alista_weights (hypothesis): any rank, atoms of any relative scale
# --------------------------------------------------------------------------
ALISTA_FUZZ = fuzz_settings("alista-weights", 3000)


def _min_off_diagonal_objective(D, i):
    """min ||D w||^2 s.t. d_i . w = 1, by least squares on w = d_i / ||d_i||^2
    + N y with N an orthonormal basis of the complement of d_i (independent
    of alista_weights' factorisations)."""
    d = D[i]
    w0 = d / (d @ d)
    Q, _ = np.linalg.qr(np.column_stack([d, np.eye(D.shape[1])]))
    N = Q[:, 1:D.shape[1]]
    if N.shape[1] == 0:
        return float(np.sum((D @ w0) ** 2))
    # singular values of D N at D's rounding (relative to ||D||, not to
    # ||D N||, which may be rounding itself) are cut
    U, sv, Vt = np.linalg.svd(D @ N, full_matrices=False)
    keep = sv > max(D.shape) * np.finfo(np.float64).eps * np.linalg.norm(D, 2)
    y = Vt[keep].T @ ((U[:, keep].T @ -(D @ w0)) / sv[keep])
    return float(np.sum((D @ (w0 + N @ y)) ** 2))


@ALISTA_FUZZ
@given(seed=st_.integers(0, 2**31), m=st_.integers(1, 9), n=st_.integers(1, 9),
       deficient=st_.booleans(), spread=st_.sampled_from([0, 10, 40]),
       dtype=st_.sampled_from([np.float64, np.float32]))
def test_fuzz_alista_weights_meet_their_constraint_at_any_rank_and_scale(
        seed, m, n, deficient, spread, dtype):
    """Exactly rank-deficient dictionaries (integer products), atoms scaled by
    exact powers of two up to 2^±spread: unit constraints to the dtype's
    rounding of the products; where the scales leave the off-diagonal
    products computable (spread 0 and 10, float64), an objective no larger
    than a least-squares minimiser's."""
    rng = np.random.default_rng(seed)
    r = int(rng.integers(1, min(m, n) + 1)) if deficient else min(m, n)
    D = (rng.integers(-3, 4, (m, r)) @ rng.integers(-3, 4, (r, n))).astype(np.float64)
    D[~np.any(D != 0, axis=1)] = np.eye(m, n)[~np.any(D != 0, axis=1)] + 1  # no zero atom
    D = np.ldexp(D, rng.integers(-spread, spread + 1, m)[:, None]).astype(dtype)
    # the documented refusal: dependent atoms, and a direction carried only
    # by atoms more than 2^26 below the largest norm
    norms = np.linalg.norm(D.astype(np.float64), axis=1)
    A = D.astype(np.float64) / norms[:, None]
    cut = np.linalg.svd(A, compute_uv=False)[0] * max(m, n) * np.finfo(dtype).eps
    rank = np.linalg.matrix_rank(A, tol=cut)
    large = norms >= norms.max() * 2.0 ** -26
    if rank < m and np.linalg.matrix_rank(A[large], tol=cut) < rank:
        with pytest.raises(ValueError, match="linearly dependent"):
            alista_weights(D)
        return
    W = alista_weights(D)
    assert W.dtype == dtype and np.isfinite(W).all()
    W64, D64 = W.astype(np.float64), D.astype(np.float64)
    eps = np.finfo(dtype).eps
    terms = np.einsum("ij,ij->i", np.abs(W64), np.abs(D64))
    assert np.all(np.abs(np.einsum("ij,ij->i", W64, D64) - 1) <= 64 * eps * terms)
    if dtype == np.float64 and spread <= 10:
        for i in range(m):
            ours = float(np.sum((D64 @ W64[i]) ** 2))
            assert ours <= _min_off_diagonal_objective(D64, i) * (1 + 1e-7) + 1e-9


@pytest.mark.parametrize("parametrization, key", [("coupled", "W"), ("lista", "W_z")])
def test_float32_weight_gradients_do_not_drift_with_the_batch_size(parametrization, key):
    """A batch of 1000 copies of 32 signals has the gradient of those 32.
    float32 weight gradients summed over every block in float32 drifted from
    it by 6e-6 (relative to the largest entry) on 32-row blocks; summed over
    a few blocks, then in double, they stay at a few float32 roundings."""
    rng = np.random.default_rng(0)
    D = rng.standard_normal((256, 256))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    base = (rng.standard_normal((32, 256)) * (rng.random((32, 256)) < 0.2)) @ D
    base /= np.abs(base @ D.T).max(axis=1)[:, None]
    base, D = base.astype(np.float32), D.astype(np.float32)
    net = Lista(D, 0.1, 3, parametrization=parametrization, n_jobs=2)
    _, expected = net.loss_and_grad(base)
    _, grads = net.loss_and_grad(np.tile(base, (1000, 1)))
    got = np.stack([layer[key] for layer in grads])
    want = np.stack([layer[key] for layer in expected])
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_kernel_refuses_half_given_double_accumulators():
    """The private loss_and_grad flushes dW and dWxT together: a full dW64
    beside an empty dWxT64 (a float32 LISTA) is refused, where it passed a
    per-array check and a flush then wrote through a null pointer."""
    rng = np.random.default_rng(0)
    m, n, T = 6, 4, 2
    D = rng.standard_normal((m, n)).astype(np.float32)
    net = Lista(D, 0.1, T, parametrization="lista")
    X = rng.standard_normal((40, n)).astype(np.float32)
    params = net._exec.params(net._params, T, np.float32)
    dW = np.zeros((1, T * m * m), np.float32)
    dWxT = np.zeros((1, T * m * n), np.float32)
    with pytest.raises(ValueError, match="must both be empty or both"):
        _unrolled.loss_and_grad(
            X, params, np.full(40, 0.1), execution.LOSS_CODES["unsupervised"],
            np.empty((0, 0), np.float32), np.zeros((1, 0)), np.zeros((1, T * m)), dW,
            dWxT, np.zeros((1, T * m * m)), np.zeros((1, 0)), 1, 4, 4, net._exec.rho,
            execution._OWN_GEMM, execution.gather_kernel(m))


@pytest.mark.parametrize("parametrization", ["step", "coupled", "alista", "lista"])
@pytest.mark.parametrize("exponent", [-80, 70])
# (ALISTA's analytic start is worse than the zero code here: its fit ends on
# all-zero codes, which lower the objective, and says so)
@pytest.mark.filterwarnings("ignore:Lista.fit. training ended where the gradient")
def test_float32_signals_far_from_one_train_on_their_own_loss(parametrization, exponent):
    """float32 signals of 2**-80 (1e-24, ordinary float32 numbers) made the
    kernels' squares underflow: SLISTA's loss came out at 27 % of its value,
    its gradients 0, and fit returned a network whose objective had risen,
    without a warning; at 2**70 the squares overflow. Every layer is
    homogeneous in (x, lmbd), and the batch runs in units where max|X| is
    near 1: codes, losses and gradients are those of the unit-scale batch
    times 2**e and 4**e, exactly, and the loss is the NumPy reference's."""
    import reference as ref

    rng = np.random.RandomState(0)
    D = rng.randn(20, 10)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = rng.randn(60, 10).astype(np.float32)
    lmbd = 0.3 * float(np.max(np.abs(X @ D.T)))
    X_e = np.ldexp(X, exponent)
    net = Lista(D.astype(np.float32), lmbd, 3, parametrization=parametrization)
    scaled = copy.deepcopy(net)
    scaled.lmbd = np.ldexp(lmbd, exponent)
    assert_allclose(scaled.transform(X_e), np.ldexp(net.transform(X), exponent),
                    rtol=0, atol=0)
    assert_allclose(scaled.objective(X_e, per_layer=True),
                    np.ldexp(net.objective(X, per_layer=True), 2 * exponent), rtol=0, atol=0)
    f, g = net.training_loss_and_grad(net.training_data(X))
    f_e, g_e = scaled.training_loss_and_grad(scaled.training_data(X_e))
    assert f_e == np.ldexp(f, 2 * exponent)
    assert_allclose(g_e, np.ldexp(g, 2 * exponent), rtol=0, atol=0)
    assert np.any(g != 0)
    if parametrization == "step":
        alpha = np.array([float(p["alpha"]) for p in net.parameters])
        D32 = D.astype(np.float32)
        f_ref, _, _ = ref.residual_network_grad(X, D32, D32, alpha, alpha, lmbd)
        assert_allclose(f_e, np.ldexp(f_ref, 2 * exponent), rtol=1e-5)
    # and fit lowers the objective the signals really have (at unit scale,
    # in float64: at 2**70 it is beyond float32's range)
    before = np.mean(ref.objective(X, D, lmbd, net.transform(X)))
    scaled.fit(X_e, max_iter=10)
    Z = np.ldexp(scaled.transform(X_e).astype(np.float64), -exponent)
    assert np.mean(ref.objective(X, D, lmbd, Z)) < 0.99 * before


@pytest.mark.parametrize("flag", ["no", "False", 1, None, np.array([True])])
def test_objective_per_layer_must_be_a_bool(flag):
    # any truthy value gave the per-layer objectives, as every other flag of
    # the API refuses
    rng = np.random.RandomState(0)
    D = rng.randn(8, 5)
    X = rng.randn(4, 5)
    net = Lista(D, 0.1, 3)
    with pytest.raises(InvalidParameterError, match="'per_layer' parameter of objective "
                                                    "must be a bool"):
        net.objective(X, per_layer=flag)
    # numpy bools are bools: the per-layer values, the last one the output's
    per_layer = net.objective(X, per_layer=np.bool_(True))
    assert per_layer.shape == (3,)
    assert_allclose(per_layer[-1], net.objective(X, per_layer=np.bool_(False)), rtol=1e-12)


@pytest.mark.parametrize("dtype, big, small", [(np.float32, 1e30, 1e-15),
                                               (np.float64, 1e250, 1e-100)])
def test_a_sample_codes_the_same_beside_any_other(dtype, big, small):
    """Codes run each sample at its own scale: one exponent for the batch
    (its largest sample's) sent a tiny sample beside a huge one to 0. (The
    batch of two and the sample alone may take different kernel paths:
    compared within the dtype's rounding, not bit for bit.)"""
    rng = np.random.RandomState(0)
    D = rng.randn(8, 5).astype(dtype)
    x = rng.randn(1, 5)
    X = np.vstack([x * big, x * small]).astype(dtype)
    for parametrization in ("step", "coupled", "alista", "lista"):
        net = Lista(D, 0.1, 5, parametrization=parametrization)
        alone = net.transform(X[1:], lmbd=[0.1 * small])
        assert np.any(alone != 0)
        assert_allclose(net.transform(X, lmbd=[0.1 * big, 0.1 * small])[1:], alone,
                        rtol=1e-4 if dtype == np.float32 else 1e-12,
                        atol=1e-4 * np.abs(alone).max() if dtype == np.float32
                        else 1e-12 * np.abs(alone).max())


def test_networks_far_from_one_keep_large_targets_and_lmbd():
    """The batch's unit for its sums follows the targets when tiny signals
    come with large target codes (their scaling overflowed: loss inf and a
    RuntimeWarning, where the true loss is 3.7e20), and a lmbd scaled
    beyond 1e300 is clipped there (inf thresholds gave objectives NaN):
    the codes are 0 at any lmbd above lambda_max."""
    import warnings

    import reference as ref

    rng = np.random.RandomState(0)
    D = rng.randn(8, 5).astype(np.float32)
    X = (rng.randn(4, 5) * 1e-30).astype(np.float32)
    S = (rng.randn(4, 8) * 1e10).astype(np.float32)
    net = Lista(D, 1e-31, 3)
    alpha = np.array([float(p["alpha"]) for p in net.parameters])
    f_ref, d_alpha, d_thr = ref.residual_network_grad(X, D, D, alpha, alpha, 1e-31,
                                                      loss="supervised", S=S)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f, g = net.loss_and_grad(X, "supervised", S)
    assert_allclose(f, f_ref, rtol=1e-6)
    assert_allclose([float(p["alpha"]) for p in g], d_alpha + d_thr, rtol=1e-4)
    # float64 signals of 1e-290 at lmbd = 1e20: codes 0, objective 1/2 ||x||^2
    X64 = rng.randn(4, 5) * 1e-290
    net = Lista(D.astype(np.float64), 0.1, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.all(net.transform(X64, lmbd=1e20) == 0)
        assert_allclose(net.objective(X64, per_layer=True, lmbd=1e20),
                        np.full(3, np.mean(0.5 * np.sum(X64 ** 2, axis=1))), rtol=1e-14)
        f, g = net.loss_and_grad(X64, lmbd=1e20)
    assert_allclose(f, np.mean(0.5 * np.sum(X64 ** 2, axis=1)), rtol=1e-14)


def test_float32_network_values_beyond_float32_range():
    """A float32 network's gradient beyond float32's range came back as
    -inf with "overflow encountered in cast": it is refused as a non-finite
    one. Its mean objective beyond float32's range is a float (it was inf
    from the float32 objectives' mean), the float64 reference's."""
    import warnings

    import reference as ref

    rng = np.random.RandomState(1)
    D = rng.randn(7, 5).astype(np.float32)
    net = Lista(D, 0.1, 3)
    X = (rng.randn(6, 5) * 4e19).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FloatingPointError, match=r"gradients of \[.*\] are not finite "
                                                     "in float32"):
            net.loss_and_grad(X, lmbd=4e18)
    D = rng.randn(5, 4)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = rng.randn(4, 4)
    X = (X / np.abs(X).max() * 1e38).astype(np.float32)
    net = Lista(D.astype(np.float32), 0.1, 3)
    Z = net.transform(X, lmbd=1e36).astype(np.float64)
    expected = np.mean(ref.objective(X, D.astype(np.float32), 1e36, Z))
    assert np.isfinite(expected) and expected > 1e75
    assert_allclose(net.objective(X, lmbd=1e36), expected, rtol=1e-12)
