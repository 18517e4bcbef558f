"""fastlista's row-major GEMM (_kernels/_gemm.h) against NumPy.

The networks' dense layers multiply through it where BLAS would pack every
call or the CPU has AVX-512 (``_kernels._gemm.OWN_GEMM``); here it is called
directly, whatever the CPU, and compared with a float64 NumPy product
within the rounding bound of a K-term dot product; each call on B itself
and on B's panels packed once (``packed=True``: the networks pack their
parameter matrices once a call), through each register tile the CPU runs
(``level``: the 32-byte tile of _gemm.h, the 64-byte one of
_gemm_avx512.h), which must also agree with each other bit for bit.
"""
import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

from fastlista._kernels import _gemm, _unrolled

from conftest import GEMM_IDS, cpu_flags

#: the register tiles this CPU runs, as the ``level`` of the test entry points
TILES = [level for level in _gemm.GEMM_KERNELS if level != _gemm.GEMM_BLAS]


@pytest.fixture(params=TILES, ids=GEMM_IDS)
def level(request):
    """Each register tile of _gemm.h the CPU runs."""
    return request.param


def bound(alpha, A, B, beta, C0):
    """Elementwise bound on |fl(alpha A B + beta C) - (alpha A B + beta C)|:
    (K + 2) u (|alpha| |A| |B| + |beta| |C|), u the unit roundoff."""
    u = np.finfo(A.dtype).eps / 2
    K = A.shape[1]
    scale = abs(alpha) * (np.abs(A).astype(float) @ np.abs(B).astype(float))
    if beta != 0:
        scale = scale + abs(beta) * np.abs(C0).astype(float)
    return (K + 2) * u * scale + np.finfo(A.dtype).tiny


def check(M, N, K, alpha, beta, dtype, packed, level):
    """One product on slices of wider arrays (leading dimensions beyond the
    widths); the columns of C beyond N are left as they were."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((M, K + 2)).astype(dtype)
    B = rng.standard_normal((K, N + 3)).astype(dtype)
    C = rng.standard_normal((M, N + 1)).astype(dtype)
    C0 = C.copy()
    if beta == 0:
        C[:, :N] = np.nan          # never read
    _gemm.gemm(alpha, A[:, :K], B[:, :N], beta, C[:, :N], packed=packed, level=level)
    a, b = A[:, :K].astype(float), B[:, :N].astype(float)
    expected = alpha * (a @ b) + (beta * C0[:, :N].astype(float) if beta != 0 else 0)
    assert np.all(np.abs(C[:, :N] - expected)
                  <= bound(alpha, A[:, :K], B[:, :N], beta, C0[:, :N]))
    np.testing.assert_array_equal(C[:, N:], C0[:, N:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, N, K", [
    (1, 1, 1), (7, 3, 5), (6, 16, 256), (6, 8, 64), (13, 17, 300), (5, 33, 600),
    (250, 64, 256), (250, 256, 64), (11, 40, 257), (3, 1, 513), (19, 48, 70)])
@pytest.mark.parametrize("alpha, beta", [(1, 0), (-0.5, 1), (1, -1), (1.5, 0.25)])
@pytest.mark.parametrize("packed", [False, True], ids=["B", "packed"])
def test_gemm_matches_numpy(M, N, K, alpha, beta, dtype, packed, level):
    # full and partial register tiles (32-byte tile: 6 rows, 2 vectors of
    # columns; 64-byte tile: 12, then 8, 4, 1-3 rows, two panels or an odd
    # last one, full or partial), K cut into panels of 256, and the four
    # (alpha, beta) the kernels use
    check(M, N, K, alpha, beta, dtype, packed, level)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, N, K", [(7, 3, 5), (13, 17, 300), (5, 33, 600), (250, 64, 256)])
def test_packed_gemm_computes_what_the_plain_one_does(M, N, K, dtype, level):
    # the packed panels hold B's entries where the plain call copies them
    # (zero beyond column N), so both sum the same products in one order
    rng = np.random.default_rng(K)
    A = rng.standard_normal((M, K)).astype(dtype)
    B = rng.standard_normal((K, N + 3)).astype(dtype)[:, :N]
    C1 = rng.standard_normal((M, N)).astype(dtype)
    C2 = C1.copy()
    _gemm.gemm(-0.5, A, B, 1.0, C1, level=level)
    _gemm.gemm(-0.5, A, B, 1.0, C2, packed=True, level=level)
    np.testing.assert_array_equal(C2, C1)
    if K <= 256:
        thr = rng.uniform(0, 1, M).astype(dtype)
        Z1 = rng.standard_normal((M, N)).astype(dtype)
        Z2 = Z1.copy()
        assert (_gemm.gemm_step(A, B, 0.3, thr, False, Z1, level=level)
                == _gemm.gemm_step(A, B, 0.3, thr, False, Z2, packed=True, level=level))
        np.testing.assert_array_equal(Z2, Z1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, cols", [(0, 0), (1, 1), (3, 5), (2, 17), (4, 16), (2, 1001)])
def test_kernel_buffers_start_on_64_bytes(rows, cols, dtype):
    # workspaces and packed panels: every row on a cache line's boundary,
    # at least the columns asked, a whole number of 64-byte lines a row
    item = np.dtype(dtype).itemsize
    a = _gemm.aligned_empty(rows, cols, dtype)
    assert a.dtype == dtype and a.shape[0] == rows and cols <= a.shape[1] < cols + 64 // item
    if a.size:
        assert a.strides == (a.shape[1] * item, item) and a.strides[0] % 64 == 0
        assert a.ctypes.data % 64 == 0
    # the packed panels: K rows of N rounded up to a panel (64 bytes),
    # zero beyond column N, as the unpacked calls copy them
    B = np.arange(1, rows * cols + 1, dtype=dtype).reshape(rows, cols)
    P = _gemm.pack(B)
    nr = 64 // item
    width = -(-cols // nr) * nr
    assert P.ctypes.data % 64 == 0 and P.size == max(1, rows * width)
    if rows and cols:
        panels = P.reshape(width // nr, rows, nr).transpose(1, 0, 2).reshape(rows, width)
        np.testing.assert_array_equal(panels[:, :cols], B)
        assert not panels[:, cols:].any()
    # the networks' per-thread workspaces: each thread's row, and each
    # buffer in it (offsets of 16 entries), on 64 bytes
    fws, _ = _unrolled._workspaces(dtype, rows + 1, cols + 1, 1)
    assert fws.ctypes.data % 64 == 0 and fws.strides[0] % 64 == 0
    offsets, _ = _unrolled._layout(rows + 1, cols + 1, 3, 2, True, True, 1)
    assert all(offset % 16 == 0 for offset in offsets.values() if offset != offsets["total"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("packed", [False, True], ids=["B", "packed"])
def test_gemm_degenerate_shapes(dtype, packed, level):
    # K = 0: C = beta C (0 where beta = 0, even over NaN); M or N = 0: nothing
    C = np.full((3, 4), np.nan, dtype)
    _gemm.gemm(1.0, np.empty((3, 0), dtype), np.empty((0, 4), dtype), 0.0, C, packed,
               level)
    np.testing.assert_array_equal(C, 0)
    C = np.arange(12, dtype=dtype).reshape(3, 4)
    _gemm.gemm(1.0, np.empty((3, 0), dtype), np.empty((0, 4), dtype), 2.0, C, packed,
               level)
    np.testing.assert_array_equal(C, 2 * np.arange(12).reshape(3, 4))
    C = np.empty((0, 4), dtype)
    _gemm.gemm(1.0, np.empty((0, 5), dtype), np.ones((5, 4), dtype), 0.0, C, packed,
               level)
    with pytest.raises(ValueError, match="shapes"):
        _gemm.gemm(1.0, np.ones((3, 5), dtype), np.ones((4, 4), dtype), 0.0,
                   np.ones((3, 4), dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("packed", [False, True], ids=["B", "packed"])
def test_gemm_propagates_non_finite_values(dtype, packed, level):
    # as BLAS: a NaN or inf in a row of A (or in C, with beta != 0) reaches
    # that row of C, and no other
    rng = np.random.default_rng(1)
    A = rng.standard_normal((9, 20)).astype(dtype)
    B = rng.standard_normal((20, 18)).astype(dtype)
    A[2, 7] = np.nan
    A[7, 3] = np.inf
    C = rng.standard_normal((9, 18)).astype(dtype)
    C[4, 5] = np.nan
    _gemm.gemm(1.0, A, B, 1.0, C, packed, level)
    assert np.isnan(C[2]).all() and not np.isfinite(C[7]).any()
    assert np.isnan(C[4, 5]) and np.isfinite(np.delete(C[4], 5)).all()
    assert np.isfinite(C[[0, 1, 3, 5, 6, 8]]).all()


def test_own_gemm_where_its_tiles_beat_blas():
    """The networks use _gemm.h's 64-byte tile wherever it runs (compiled,
    on a CPU with AVX-512F, AVX2 and FMA), its 32-byte tile on a CPU without
    AVX-512 (BLAS packs small calls) with AVX2 and FMA (its vector code
    runs), BLAS elsewhere; the test entry points refuse a tile the CPU does
    not run."""
    flags = cpu_flags()
    tile64 = _gemm.GEMM_AVX512 in _gemm.GEMM_KERNELS
    assert _gemm.GEMM_BLAS in _gemm.GEMM_KERNELS and _gemm.GEMM_AVX2 in _gemm.GEMM_KERNELS
    if flags is None:
        assert not tile64 and _gemm.OWN_GEMM == _gemm.GEMM_BLAS
        return
    if tile64:
        assert {"avx512f", "avx2", "fma"} <= flags
        assert _gemm.OWN_GEMM == _gemm.GEMM_AVX512
    elif _gemm.OWN_GEMM:
        assert _gemm.OWN_GEMM == _gemm.GEMM_AVX2
        assert {"avx2", "fma"} <= flags and "avx512f" not in flags
    if "avx512f" in flags:
        assert _gemm.OWN_GEMM != _gemm.GEMM_AVX2
    A, B = np.ones((2, 3)), np.ones((3, 2))
    for bad in (_gemm.GEMM_BLAS, 7) + (() if tile64 else (_gemm.GEMM_AVX512,)):
        with pytest.raises(ValueError, match=f"level={bad} is not a tile"):
            _gemm.gemm(1.0, A, B, 0.0, np.zeros((2, 2)), level=bad)
        with pytest.raises(ValueError, match=f"level={bad} is not a tile"):
            _gemm.gemm_step(A, B, 1.0, np.zeros(2), False, np.zeros((2, 2)), level=bad)


def test_kernels_refuse_a_gemm_the_cpu_lacks(monkeypatch):
    # the networks' and solvers' kernels take the level from their callers:
    # one the CPU or build lacks (the 64-byte tile without AVX-512 would be
    # an illegal instruction) is a ValueError naming it, never run
    import fastlista
    from fastlista import _solvers
    from fastlista._networks import _execution

    rng = np.random.default_rng(3)
    D = rng.standard_normal((12, 6))
    X = rng.standard_normal((5, 6))
    bad = [7] + ([] if _gemm.GEMM_AVX512 in _gemm.GEMM_KERNELS else [_gemm.GEMM_AVX512])
    for level in bad:
        monkeypatch.setattr(_execution, "_OWN_GEMM", level)
        monkeypatch.setattr(_solvers, "_OWN_GEMM", level)
        net = fastlista.Lista(D, 0.1, 2)
        with pytest.raises(ValueError, match=f"forward: own_gemm={level} is not a GEMM"):
            net.transform(X)
        with pytest.raises(ValueError, match=f"loss_and_grad: own_gemm={level} is not"):
            net.loss_and_grad(X)
        with pytest.raises(ValueError, match=f"prox_grad: own_gemm={level} is not"):
            fastlista.solve_lasso(X, D, 0.1, method="ista", max_iter=3, tol=0)
    # every level the CPU runs is taken, and computes what BLAS computes
    monkeypatch.setattr(_execution, "_OWN_GEMM", _gemm.GEMM_BLAS)
    expected = fastlista.Lista(D, 0.1, 2).transform(X)
    for level in _gemm.GEMM_KERNELS:
        monkeypatch.setattr(_execution, "_OWN_GEMM", level)
        np.testing.assert_allclose(fastlista.Lista(D, 0.1, 2).transform(X), expected,
                                   rtol=1e-12, atol=1e-14)


def tile_cases(dtype, seed):
    """(A, B, C0) on every row and column remainder of both tiles, K up to
    two panels of 256, with negative zeros, NaN and inf in A."""
    rng = np.random.default_rng(seed)
    for M, N, K in [(1, 1, 1), (3, 5, 7), (12, 16, 64), (19, 48, 70), (32, 64, 256),
                    (32, 256, 64), (29, 40, 300), (17, 33, 513), (50, 8, 3), (23, 24, 9)]:
        A = rng.standard_normal((M, K)).astype(dtype)
        B = rng.standard_normal((K, N)).astype(dtype)
        A[rng.random((M, K)) < 0.3] = 0
        A[0, 0] = -0.0
        if M > 2 and K > 1:
            A[1, 1], A[2, 0] = np.nan, np.inf
        yield A, B, rng.standard_normal((M, N)).astype(dtype)


def step_thresholds(M, dtype, seed):
    """Thresholds of a fused step: random, with a zero one (its -0 and +0
    lanes) where there are two rows or more."""
    thr = np.random.default_rng(seed).uniform(0, 2, M).astype(dtype)
    if M > 1:
        thr[1] = 0
    return thr


def with_avx2_epilogue(on, step, *args):
    """``step(*args)`` with _gemm_avx2.h's epilogue switched on or off (the
    vector-extension one of _gemm.h), the setting restored afterwards."""
    previous = _gemm.use_avx2_epilogue(on)
    try:
        return step(*args)
    finally:
        _gemm.use_avx2_epilogue(previous)


def fused_step(A, B, thr, positive, Z0, packed, level):
    """(non-zeros, codes, signs) of gemm_step at a step of 0.3 from codes Z0
    (signs preset to 7: every one written is checked); the same step
    without signs (the forward's, which counts with other comparisons)
    gives the same count and codes."""
    Z, sg = Z0.copy(), np.full(Z0.shape, 7, np.int8)
    n = _gemm.gemm_step(A, B, 0.3, thr, positive, Z, sg, packed, level)
    Z1 = Z0.copy()
    assert _gemm.gemm_step(A, B, 0.3, thr, positive, Z1, None, packed, level) == n
    np.testing.assert_array_equal(Z1.view(np.uint8), Z.view(np.uint8))
    return n, Z, sg


def assert_same_step(got, want):
    """Two fused steps' counts, codes (bit for bit) and signs equal."""
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1].view(np.uint8), want[1].view(np.uint8))
    np.testing.assert_array_equal(got[2], want[2])


@pytest.mark.skipif(_gemm.GEMM_AVX512 not in _gemm.GEMM_KERNELS,
                    reason="the 64-byte tile is not compiled or the CPU lacks AVX-512")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("packed", [False, True], ids=["B", "packed"])
def test_64_byte_tile_equals_the_32_byte_tile_bit_for_bit(dtype, packed):
    # the same sums in the same order (each entry from zero, its k in order,
    # one FMA a term) and epilogues of the same values: equal bits, on every row and
    # column remainder of both tiles, K over one panel of 256, negative
    # zeros, NaN and inf, both thresholds, signs and counts
    for A, B, C0 in tile_cases(dtype, 11):
        M, K = A.shape
        for alpha, beta in [(1, 0), (-0.5, 1), (1, -1), (1.5, 0.25)]:
            C1, C2 = C0.copy(), C0.copy()
            _gemm.gemm(alpha, A, B, beta, C1, packed, _gemm.GEMM_AVX2)
            _gemm.gemm(alpha, A, B, beta, C2, packed, _gemm.GEMM_AVX512)
            np.testing.assert_array_equal(C2.view(np.uint8), C1.view(np.uint8))
        if K > 256:
            continue
        thr = step_thresholds(M, dtype, M + K)
        for positive in (False, True):
            assert_same_step(fused_step(A, B, thr, positive, C0, packed, _gemm.GEMM_AVX512),
                             fused_step(A, B, thr, positive, C0, packed, _gemm.GEMM_AVX2))


@pytest.mark.skipif(not _gemm.AVX2_EPILOGUE,
                    reason="the AVX2 epilogue is not compiled or the CPU lacks AVX2")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("packed", [False, True], ids=["B", "packed"])
def test_avx2_step_epilogue_equals_the_vector_extension_one_bit_for_bit(dtype, packed):
    # _gemm_avx2.h's epilogue of the 32-byte tile's fused step against
    # _gemm.h's: the same values, counts and signs, bit for bit (NaN, inf,
    # -0, a zero threshold, both thresholds, every remainder)
    for A, B, C0 in tile_cases(dtype, 12):
        M, K = A.shape
        if K > 256:
            continue
        thr = step_thresholds(M, dtype, M + K)
        for positive in (False, True):
            out = [with_avx2_epilogue(on, fused_step, A, B, thr, positive, C0, packed,
                                      _gemm.GEMM_AVX2) for on in (True, False)]
            assert_same_step(*out)
            n1, Z1, s1 = out[0]
            # and against the definition, entry by entry
            assert n1 == np.count_nonzero(Z1)
            np.testing.assert_array_equal(s1, np.where(Z1 > 0, 1, np.where(Z1 >= 0, 0, -1)))


def step_reference(A, B, step, thr, positive, Z):
    """NumPy: OP(Z - step A B, thr) row by row (OP: ST or its one-sided
    version), the product and step in float64."""
    V = Z.astype(float) - step * (A.astype(float) @ B.astype(float))
    s = thr.astype(float)[:, None]
    return np.maximum(V - s, 0) if positive else np.sign(V) * np.maximum(np.abs(V) - s, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (7, 19, 5), (13, 32, 64), (250, 256, 64),
                                     (6, 40, 256), (5, 3, 0)])
@pytest.mark.parametrize("packed", [False, True], ids=["B", "packed"])
def test_gemm_step_matches_numpy(M, N, K, positive, dtype, packed, level):
    # the forward's fused gradient step: Z <- OP(Z - step A B, thr) with each
    # row's threshold, the non-zeros counted and the signs written
    rng = np.random.default_rng(M + N + K)
    A = rng.standard_normal((M, K + 1)).astype(dtype)[:, :K]
    B = rng.standard_normal((K, N + 2)).astype(dtype)[:, :N]
    Z = rng.standard_normal((M, N)).astype(dtype)
    thr = rng.uniform(0, 1.5, M).astype(dtype)
    step = 0.3
    expected = step_reference(A, B, step, thr, positive, Z)
    sg = np.full((M, N), 7, np.int8)
    Z0 = Z.copy()
    nnz = _gemm.gemm_step(A, B, step, thr, positive, Z, sg, packed, level)
    # within the rounding of the product, the step and the threshold
    u = np.finfo(dtype).eps / 2
    err = (K + 4) * u * (np.abs(Z0) + step * (np.abs(A).astype(float) @ np.abs(B))
                         + thr[:, None])
    assert np.all(np.abs(Z - expected) <= err)
    # the count and the signs are those of the returned codes, exactly
    assert nnz == np.count_nonzero(Z)
    np.testing.assert_array_equal(sg, np.sign(Z).astype(np.int8))
    # and without signs, the same codes
    Z2 = Z0.copy()
    assert _gemm.gemm_step(A, B, step, thr, positive, Z2, packed=packed, level=level) == nnz
    np.testing.assert_array_equal(Z2, Z)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_step_zero_and_infinite_thresholds_and_nan(dtype, level):
    # thr = 0 keeps every entry (ST(v, 0) = v), thr = inf zeroes its row;
    # NaN in a row of A is a non-zero with sign -1 (as the row kernels of
    # _simd.h count it), and stays in its row
    rng = np.random.default_rng(5)
    A = rng.standard_normal((8, 16)).astype(dtype)
    B = rng.standard_normal((16, 24)).astype(dtype)
    A[3, 2] = np.nan
    Z = rng.standard_normal((8, 24)).astype(dtype)
    thr = np.zeros(8, dtype)
    thr[5] = np.inf                      # everything thresholded to zero
    expected = Z.astype(float) - 0.5 * (A.astype(float) @ B)
    err = 18 * np.finfo(dtype).eps * (np.abs(Z) + 0.5 * (np.abs(A).astype(float) @ np.abs(B)))
    sg = np.zeros((8, 24), np.int8)
    nnz = _gemm.gemm_step(A, B, 0.5, thr, False, Z, sg, level=level)
    assert np.isnan(Z[3]).all() and (sg[3] == -1).all()
    np.testing.assert_array_equal(Z[5], 0)
    ok = [0, 1, 2, 4, 6, 7]
    assert np.all(np.abs(Z[ok] - expected[ok]) <= err[ok])
    assert nnz == np.count_nonzero(Z)


def test_gemm_step_rejects_long_sums():
    # the step needs the whole sum in one panel of the kernel (K <= 256)
    with pytest.raises(ValueError, match="K = 257"):
        _gemm.gemm_step(np.ones((2, 257)), np.ones((257, 3)), 1.0, np.zeros(2), False,
                        np.zeros((2, 3)))
    with pytest.raises(ValueError, match="K = 257"):
        _gemm.gemm_step_wide(np.ones((2, 257), np.float32), np.ones((257, 3), np.float32),
                             1.0, np.zeros(2), False, np.zeros((2, 3)),
                             np.zeros((2, 3), np.float32))


def wide_step(A, B, lam, positive, Zd0, packed, level, step=0.3):
    """(non-zeros, Zd, Z) of gemm_step_wide from Zd0, Z preset to NaN (every
    entry it writes is checked)."""
    Zd, Z = Zd0.copy(), np.full(Zd0.shape, np.nan, np.float32)
    n = _gemm.gemm_step_wide(A, B, step, lam, positive, Zd, Z, packed, level)
    return n, Zd, Z


def wide_cases(seed):
    """(A, B, lam, Zd0, positive) for the step with z in double: tile_cases
    within one panel (K <= 256), a zero threshold, both thresholds."""
    for A, B, C0 in tile_cases(np.float32, seed):
        M, K = A.shape
        if K > 256:
            continue
        lam = step_thresholds(M, np.float64, M + K)
        for positive in (False, True):
            yield A, B, lam, C0.astype(np.float64) / 3, positive


def assert_same_wide_step(got, want):
    """Two wide steps' counts, double codes and float32 codes (bit for bit)
    equal."""
    assert got[0] == want[0]
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_array_equal(g.view(np.uint8), w.view(np.uint8))


@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (7, 19, 5), (13, 32, 64), (250, 256, 64),
                                     (6, 40, 256), (29, 40, 70), (5, 3, 0)])
@pytest.mark.parametrize("packed", [False, True], ids=["B", "packed"])
def test_gemm_step_wide_is_the_double_step_of_the_float32_product(M, N, K, positive,
                                                                  packed, level):
    # float32 ISTA's fused step: its iterate Zd in double, the product in
    # float32, Zd <- OP(Zd - step A B, step lam) in double, Z its rounding
    rng = np.random.default_rng(M + N + K + 1)
    A = rng.standard_normal((M, K + 1)).astype(np.float32)[:, :K]
    B = rng.standard_normal((K, N + 2)).astype(np.float32)[:, :N]
    Zd0 = rng.standard_normal((M, N)) / 3
    lam = rng.uniform(0, 1.5, M)
    step = 0.3
    n, Zd, Z = wide_step(A, B, lam, positive, Zd0, packed, level, step)
    # against NumPy in float64, within the rounding of the float32 product
    u32, u64 = np.finfo(np.float32).eps / 2, np.finfo(np.float64).eps / 2
    AB = np.abs(A).astype(float) @ np.abs(B).astype(float)
    err = step * (K + 2) * u32 * AB + 4 * u64 * (np.abs(Zd0) + step * AB + step * lam[:, None])
    expected = step_reference(A, B, step, step * lam, positive, Zd0)
    assert np.all(np.abs(Zd - expected) <= err)
    # against the unfused step from the tile's own float32 product (gemm:
    # the same sums in the same order), within two roundings of double
    G = np.zeros((M, N), np.float32)
    _gemm.gemm(1.0, A, B, 0.0, G, packed, level)
    V = Zd0 - step * G.astype(float)
    s = step * lam[:, None]
    unfused = np.maximum(V - s, 0) if positive else np.sign(V) * np.maximum(np.abs(V) - s, 0)
    assert np.all(np.abs(Zd - unfused)
                  <= 4 * u64 * (np.abs(Zd0) + step * np.abs(G).astype(float) + s))
    # Z is Zd rounded to float32, the count Zd's non-zeros, exactly
    np.testing.assert_array_equal(Z, Zd.astype(np.float32))
    assert n == np.count_nonzero(Zd)


def test_gemm_step_wide_zero_and_infinite_thresholds_and_nan(level):
    # lam = 0 keeps every entry, lam = inf zeroes its row; NaN in a row of A
    # is a NaN row of Zd and Z, counted as non-zeros
    rng = np.random.default_rng(6)
    A = rng.standard_normal((8, 16)).astype(np.float32)
    B = rng.standard_normal((16, 40)).astype(np.float32)
    A[3, 2] = np.nan
    Zd0 = rng.standard_normal((8, 40))
    lam = np.zeros(8)
    lam[5] = np.inf
    n, Zd, Z = wide_step(A, B, lam, False, Zd0, False, level, step=0.5)
    assert np.isnan(Zd[3]).all() and np.isnan(Z[3]).all()
    np.testing.assert_array_equal(Zd[5], 0)
    np.testing.assert_array_equal(Z[5], 0)
    ok = [0, 1, 2, 4, 6, 7]
    AB = np.abs(A[ok]).astype(float) @ np.abs(B).astype(float)
    expected = Zd0[ok] - 0.5 * (A[ok].astype(float) @ B.astype(float))
    assert np.all(np.abs(Zd[ok] - expected)
                  <= 9 * np.finfo(np.float32).eps * AB + 1e-15 * np.abs(Zd0[ok]))
    assert n == np.count_nonzero(Zd)


@pytest.mark.skipif(not _gemm.AVX2_EPILOGUE,
                    reason="the AVX2 epilogue is not compiled or the CPU lacks AVX2")
@pytest.mark.parametrize("packed", [False, True], ids=["B", "packed"])
def test_avx2_wide_step_epilogue_equals_the_vector_extension_one_bit_for_bit(packed):
    # _gemm_avx2.h's epilogue of the float32 step with z in double against
    # _gemm.h's: the same codes in double and float32 and the same count
    for A, B, lam, Zd0, positive in wide_cases(14):
        out = [with_avx2_epilogue(on, wide_step, A, B, lam, positive, Zd0, packed,
                                  _gemm.GEMM_AVX2) for on in (True, False)]
        assert out[0][0] == np.count_nonzero(out[0][1])
        assert_same_wide_step(*out)


@pytest.mark.skipif(_gemm.GEMM_AVX512 not in _gemm.GEMM_KERNELS,
                    reason="the 64-byte tile is not compiled or the CPU lacks AVX-512")
@pytest.mark.parametrize("packed", [False, True], ids=["B", "packed"])
def test_64_byte_wide_step_equals_the_32_byte_one_bit_for_bit(packed):
    # the float32 step with z in double: the same sums, the same double
    # epilogue (widened by a conversion, thresholds by min and max against
    # selects), every remainder, NaN and inf in A, a zero threshold
    for A, B, lam, Zd0, positive in wide_cases(13):
        assert_same_wide_step(wide_step(A, B, lam, positive, Zd0, packed, _gemm.GEMM_AVX512),
                              wide_step(A, B, lam, positive, Zd0, packed, _gemm.GEMM_AVX2))


def repeated_rows(A, n_rows):
    """A view of n_rows copies of A's first row (row stride 0)."""
    return as_strided(A, shape=(n_rows, A.shape[1]), strides=(0, A.strides[1]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("packed", [False, True], ids=["B", "packed"])
@pytest.mark.parametrize("layout", ["repeated", "reversed"])
def test_gemm_reads_repeated_and_reversed_rows_where_they_are(layout, dtype, packed,
                                                             level):
    # row stride 0 (every row the same) or negative: _gemm.h addresses row i
    # of an input at i ld with a signed ld, so it reads the view's entries
    rng = np.random.default_rng(2)
    A0 = rng.standard_normal((7, 19)).astype(dtype)
    B0 = rng.standard_normal((19, 11)).astype(dtype)
    if layout == "repeated":
        A, B = repeated_rows(A0, 7), repeated_rows(B0, 19)
    else:
        A, B = A0[::-1], B0[::-1]
    a, b = np.array(A), np.array(B)
    C = np.full((7, 11), np.nan, dtype)
    _gemm.gemm(1.0, A, B, 0.0, C, packed=packed, level=level)
    assert np.all(np.abs(C - a.astype(float) @ b) <= bound(1.0, a, b, 0.0, C))
    thr = np.full(7, 0.1, dtype)
    Z = rng.standard_normal((7, 11)).astype(dtype)
    expected = step_reference(a, b, 0.5, thr, False, Z)
    u = np.finfo(dtype).eps / 2
    err = 23 * u * (np.abs(Z) + 0.5 * (np.abs(a).astype(float) @ np.abs(b)) + 0.1)
    Z2 = Z[::-1].copy()[::-1]                     # the output reversed too
    _gemm.gemm_step(A, B, 0.5, thr, False, Z2, packed=packed, level=level)
    assert np.all(np.abs(Z2 - expected) <= err)


@pytest.mark.parametrize("step", [False, True], ids=["gemm", "gemm_step"])
def test_gemm_refuses_what_its_int_leading_dimensions_cannot_address(step):
    # a row stride that is not a whole number of elements, rows of an
    # output that overlap (they would be written in turn), and a single
    # row with a gap between its entries: refused, never misread
    buf = np.arange(6, dtype=np.float64)
    misaligned = as_strided(buf, shape=(2, 2), strides=(12, 8))
    eye = np.eye(2)

    def call(A, B, C):
        if step:
            return _gemm.gemm_step(A, B, 1.0, np.zeros(len(A)), False, C)
        return _gemm.gemm(1.0, A, B, 0.0, C)

    with pytest.raises(ValueError, match="row stride of 12 bytes is not a multiple"):
        call(misaligned, eye, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="row stride of 12 bytes is not a multiple"):
        call(eye, misaligned, np.zeros((2, 2)))
    out = "Z" if step else "C"
    with pytest.raises(ValueError, match=f"{out}'s rows overlap"):
        call(eye, eye, repeated_rows(np.zeros((1, 2)), 2))
    with pytest.raises(ValueError, match=f"{out}'s rows overlap"):
        call(eye, eye, as_strided(np.zeros(3), shape=(2, 2), strides=(8, 8)))
    with pytest.raises(ValueError, match="A needs unit stride"):
        call(np.arange(6.0).reshape(1, 6)[:, ::2], np.eye(3), np.zeros((1, 3)))
    if step:
        with pytest.raises(ValueError, match="sg's rows overlap"):
            _gemm.gemm_step(eye, eye, 1.0, np.zeros(2), False, np.zeros((2, 2)),
                            repeated_rows(np.zeros((1, 2), np.int8), 2))
