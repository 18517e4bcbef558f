"""Sizes and strides beyond a 32-bit int at the kernels' C-int interfaces.

The operands are views of 2**31 rows, columns or elements of row stride
that cost no memory: sparse files mapped by np.memmap (only the pages of
the entries written are ever stored) or row stride 0 over a small buffer.
The kernels' entry points either compute the exact result or refuse such
an operand with a ValueError before reading it; and the networks cut their
blocks so that a block's residuals, rows x features, stay within the
budget of its codes.
"""
import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided
from numpy.testing import assert_allclose

import fastlista._networks._execution as execution
from fastlista import Lista
from fastlista._kernels import _cd, _gemm

import reference as ref

BIG = 2**31


@pytest.fixture
def sparse(tmp_path):
    """sparse(shape, dtype): a zeroed array on a sparse file, removed after
    the test."""
    paths = []

    def make(shape, dtype=np.float32):
        path = tmp_path / f"sparse{len(paths)}.bin"
        paths.append(path)
        return np.memmap(path, dtype=dtype, mode="w+", shape=shape)

    yield make
    for path in paths:
        path.unlink()


def rows_apart(sparse, row, cols=2, dtype=np.float32):
    """A (2, cols) view whose rows are ``row`` elements apart."""
    buf = sparse((row + cols,), dtype)
    return as_strided(buf, shape=(2, cols), strides=(row * buf.itemsize, buf.itemsize))


# --------------------------------------------------------------------------
# _gemm.h's leading dimensions and dimensions
# --------------------------------------------------------------------------
def repeated(row, n_rows):
    """n_rows copies of the (1, n) array ``row`` (row stride 0)."""
    return as_strided(row, shape=(n_rows, row.shape[1]), strides=(0, row.strides[1]))


@pytest.mark.parametrize("row", [2**32 + 2, BIG], ids=["2**32+2", "2**31"])
@pytest.mark.parametrize("operand", ["A", "B", "C", "Z", "sg"])
@pytest.mark.parametrize("packed", [False, True], ids=["B", "packed"])
def test_gemm_refuses_row_strides_beyond_an_int(operand, row, packed, sparse):
    # an int leading dimension would wrap (2**32 + 2 -> 2: row 1 read from
    # inside row 0) or turn negative (2**31 -> -2**31: 8 GiB before it)
    ops = {"A": np.array([[1, 2], [3, 4]], np.float32), "B": np.eye(2, dtype=np.float32),
           "C": np.zeros((2, 2), np.float32), "Z": np.zeros((2, 2), np.float32),
           "sg": np.zeros((2, 2), np.int8)}
    wide = rows_apart(sparse, row, dtype=ops[operand].dtype)
    wide[...] = ops[operand]
    ops[operand] = wide
    message = f"{operand}'s row stride of {row} elements"
    if operand in ("A", "B", "C"):
        with pytest.raises(ValueError, match=message):
            _gemm.gemm(1.0, ops["A"], ops["B"], 0.0, ops["C"], packed=packed)
    if operand != "C":
        with pytest.raises(ValueError, match=message):
            _gemm.gemm_step(ops["A"], ops["B"], 1.0, np.zeros(2, np.float32), False,
                            ops["Z"], ops["sg"], packed=packed)


def test_gemm_takes_the_largest_int_row_stride(sparse):
    # 2**31 - 1 elements: the last leading dimension an int holds, exact
    A = rows_apart(sparse, BIG - 1)
    A[...] = [[1, 2], [3, 4]]
    B = np.array([[1, -2], [0.5, 3]], np.float32)
    C = np.zeros((2, 2), np.float32)
    _gemm.gemm(1.0, A, B, 0.0, C)
    np.testing.assert_array_equal(C, np.array(A) @ B)


@pytest.mark.parametrize("dim", ["M", "N", "K"])
@pytest.mark.parametrize("packed", [False, True], ids=["B", "packed"])
def test_gemm_refuses_dimensions_beyond_an_int(dim, packed, sparse):
    # 2**31 rows of A (one row repeated), columns of B and C, or terms of
    # the sum; as a C int each would be -2**31 and the call a silent no-op
    small = np.ones((1, 1), np.float32)
    if dim == "M":
        A, B, C = repeated(small, BIG), small, sparse((BIG, 1))
    elif dim == "N":
        A, B, C = small, sparse((1, BIG)), sparse((1, BIG))
    else:
        A, B, C = sparse((1, BIG)), repeated(small, BIG), np.full((1, 1), 7, np.float32)
    with pytest.raises(ValueError, match=f"{dim} = {BIG} is beyond the 32-bit dimensions"):
        _gemm.gemm(1.0, A, B, 0.0, C, packed=packed)
    if dim == "K":
        return
    thr = sparse((BIG,)) if dim == "M" else np.zeros(1, np.float32)
    with pytest.raises(ValueError, match=f"{dim} = {BIG} is beyond the 32-bit dimensions"):
        _gemm.gemm_step(A, B, 1.0, thr, False, C, packed=packed)


# --------------------------------------------------------------------------
# the Newton step's triangular solves
# --------------------------------------------------------------------------
def test_triangular_solves_refuse_a_leading_dimension_beyond_an_int(sparse):
    # ld = 2**32 + 3 would be 3 as an int: rows 1 and 2 of L^T read from
    # inside row 0
    k, ld = 3, 2**32 + 3
    LT = sparse((k, ld), np.float64)
    L = np.array([[2.0, 0, 0], [1.0, 4.0, 0], [0.5, -1.0, 3.0]])
    LT[:, :k] = L.T
    with pytest.raises(ValueError, match="leading dimension is beyond"):
        _cd.triangular_solves(LT, np.array([1.0, 2.0, 3.0]))


def test_triangular_solves_take_a_wide_leading_dimension():
    # ld > k within an int: the solves of L (first k entries of each row)
    rng = np.random.default_rng(0)
    k, ld = 5, 9
    L = np.tril(rng.standard_normal((k, k))) + 3 * np.eye(k)
    LT = np.full((k, ld), np.nan)
    LT[:, :k] = np.triu(L.T)
    v = rng.standard_normal(k)
    fwd, bwd = _cd.triangular_solves(LT, v)
    assert_allclose(fwd, np.linalg.solve(L, v), rtol=1e-13)
    assert_allclose(bwd, np.linalg.solve(L.T, v), rtol=1e-13)


# --------------------------------------------------------------------------
# the networks' blocks
# --------------------------------------------------------------------------
CONSTANTS = {"AVX2": (1 << 22, 256 * 256, 1), "AVX-512": (1 << 19, 128 * 256, 4)}


@pytest.mark.parametrize("cpu", CONSTANTS)
@pytest.mark.parametrize("shape", [(4096, 1, 2**20), (2048, 1, 2**20), (4096, 16, 4096),
                                   (10000, 100, 784), (10000, 4, 512),
                                   (100, 3, BIG - 1)])
def test_plan_keeps_a_blocks_residuals_within_the_budget(cpu, shape, monkeypatch):
    # rows x features of a GEMM chunk within the budget of its GEMMs (one
    # row at least): the residual workspaces R and P do not grow with the
    # features, and their element counts stay far from 2**31
    G, E, chunks = CONSTANTS[cpu]
    monkeypatch.setattr(execution, "_BLOCK_GEMM", G)
    monkeypatch.setattr(execution, "_BLOCK_ELEMENTS", E)
    monkeypatch.setattr(execution, "_WEIGHT_GRAD_CHUNKS", chunks)
    N, m, n = shape
    for weight_grads in (False, True):
        for n_threads in (1, 2, 8):
            _, block, chunk = execution.plan(N, m, n, 2, n_threads, weight_grads)
            assert block >= 1 and chunk >= 1
            assert chunk * n <= max(G, n)
            assert block * n <= max(G, n) * (chunks if weight_grads else 1)


def residual_network_grads(X, D, Ws, alphas, betas, lmbd):
    """Mean F_x of every layer of z+ = ST(z - a (z D - x) W^T, lmbd b) from
    z = 0, and the gradients of the last one's in a, b and W (chain rule)."""
    Z = [np.zeros((X.shape[0], D.shape[0]))]
    for W, a, b in zip(Ws, alphas, betas):
        Z.append(ref.soft_thresholding(Z[-1] - a * (Z[-1] @ D - X) @ W.T, lmbd * b))
    objectives = [ref.objective(X, D, lmbd, z).mean() for z in Z[1:]]
    N = X.shape[0]
    G = ((Z[-1] @ D - X) @ D.T + lmbd * np.sign(Z[-1])) / N
    da, db, dW = [], [], []
    for t in range(len(Ws) - 1, -1, -1):
        w = G * (Z[t + 1] != 0)
        R = Z[t] @ D - X
        da.append(-np.sum(w * (R @ Ws[t].T)))
        db.append(-lmbd * np.sum(w * np.sign(Z[t + 1])))
        dW.append(-alphas[t] * w.T @ R)
        G = w - alphas[t] * (w @ Ws[t]) @ D.T
    return objectives, da[::-1], db[::-1], dW[::-1]


@pytest.mark.parametrize("parametrization", ["step", "coupled"])
def test_networks_over_many_features_match_numpy(parametrization):
    # 4 atoms of 512 features, in several blocks (and several GEMM chunks):
    # objectives and gradients as in one NumPy pass
    m, n, T, lmbd = 4, 512, 5, 0.1
    weight_grads = parametrization == "coupled"
    # a batch of two full blocks and a short one, whatever the CPU's constants
    N = 2 * execution.plan(10**6, m, n, T, 1, weight_grads)[1] + 37
    _, block, chunk = execution.plan(N, m, n, T, 1, weight_grads)
    assert chunk * n <= execution._BLOCK_GEMM and block < N
    X, D = ref.make_problem(n_samples=N, n_features=n, n_atoms=m, noise=0.3, seed=4)
    net = Lista(D, lmbd, T, parametrization=parametrization, n_jobs=1)
    rng = np.random.default_rng(5)
    params = net.parameters
    for p in params:
        p["alpha"] = p["alpha"] * rng.uniform(0.7, 1.3)
        if parametrization == "coupled":
            p["beta"] = p["beta"] * rng.uniform(0.7, 1.3)
            p["W"] = p["W"] + 0.05 * rng.standard_normal(p["W"].shape)
    net.set_parameters(params)
    params = net.parameters
    alphas = [float(p["alpha"]) for p in params]
    if parametrization == "step":
        Ws, betas = [D] * T, alphas
    else:
        Ws, betas = [p["W"] for p in params], [float(p["beta"]) for p in params]
    objectives, da, db, dW = residual_network_grads(X, D, Ws, alphas, betas, lmbd)

    assert_allclose(net.objective(X, per_layer=True), objectives, rtol=1e-10)
    f, grads = net.loss_and_grad(X)
    assert_allclose(f, objectives[-1], rtol=1e-10)
    scale = max(np.abs(da).max(), np.abs(db).max())
    if parametrization == "step":
        # alpha is both the step and the threshold's factor
        assert_allclose([float(g["alpha"]) for g in grads], np.add(da, db),
                        rtol=1e-8, atol=1e-12 * scale)
    else:
        assert_allclose([float(g["alpha"]) for g in grads], da, rtol=1e-8,
                        atol=1e-12 * scale)
        assert_allclose([float(g["beta"]) for g in grads], db, rtol=1e-8,
                        atol=1e-12 * scale)
        for g, w in zip(grads, dW):
            assert_allclose(g["W"], w, rtol=1e-8, atol=1e-12 * np.abs(w).max())
