"""When the networks and the solvers multiply their blocks with fastlista's
GEMM (_gemm.h).

Every dense layer multiplies a block of rows by a parameter matrix (D,
W_t^T, M), as every dense gradient of the proximal-gradient solvers does
(D, D^T or the Gram matrix): C = alpha A B + beta C with A a block of up to
256 rows and B at most a few hundred square. Without AVX-512, OpenBLAS copies both
operands of every such call into its panel format and scales C by beta
in a pass of its own; ``_gemm.h`` copies only B, a 2-vector-wide panel at
a time into L1, reads A in place, applies alpha and beta as it stores C,
and can take a dense layer's gradient step (threshold, non-zeros, signs)
on each tile as it stores it. Where a call multiplies many blocks by the
same matrices (a network's parameters, a solver's D, D^T and Gram matrix),
their panels are packed once a call instead (``pack``): the copies took
9-12 % of a 256-row product's time. Measured on AMD Zen 3 (AVX2), one
thread a call, 256 x 256 x 64: 75 against 64 GFLOP/s in float32 and 35 against 31
in float64 (medians of 21 rounds, interleaved). On the paper shape (64
features x 256 atoms, 10 000 samples, T = 30 layers) at lmbd = 0.1, the
same calls through ``_gemm.h`` and through BLAS, alternating
(``benchmarks/test_bench_networks.py 11 -k "through BLAS"``), ours / BLAS:
SLISTA forward 0.82 in float32 and 0.95 in float64, ``loss_and_grad``
0.96 and 0.99.

In the solvers, the marginal dense ISTA iteration at lmbd = 0.1 on the
paper shape (``benchmarks/test_bench_solvers.py -k "GEMM pair"``), against
the NumPy GEMM pair (medians of 5 rounds): 0.98 through BLAS, 0.84 through
``_gemm.h`` in float64; 1.08 and 0.84 in float32. float32 ISTA has since
kept its iterate in double: its fused step (``gemm_step_wide``) widens
each float32 tile of R D^T to double as it is stored, and steps there.

With AVX-512, OpenBLAS multiplies small matrices without copying them,
and faster than ``_gemm.h``'s 32-byte tile, which leaves half of each FMA
unit's width unused. There the products run through the same tile at 64
bytes (``_gemm_avx512.h``; same operations in the same order, same bits).
On an Intel Xeon with AVX-512, the paper shape at lmbd = 0.1, the same
calls through it and through BLAS, alternating
(three runs of ``benchmarks/test_bench_networks.py 5``, "through BLAS"),
ours / BLAS: SLISTA forward 0.70-0.93 in float64 and 0.72-0.80 in
float32, ``loss_and_grad`` 0.77-0.83 and 0.80-0.83; a dense ISTA
iteration 0.75 and 0.80 (``benchmarks/test_bench_solvers.py 3``); through
the 32-byte tile instead, 0.64-0.72 (docs/benchmarks.md, "The fused
step's epilogue in AVX-512").
"""
from cython cimport floating
from libc.limits cimport INT_MAX

from ._cpu import BLAS_PACKS_SMALL_CALLS
from ._gemm cimport (FL_GEMM_AVX2, FL_GEMM_AVX512, FL_GEMM_KC, fl_gemm_v3_epilogue,
                     fl_gemm_v3_runs, fl_gemm_v4_runs, fl_s_gemm_packed_step_wide,
                     fl_s_gemm_step_wide,
                     fl_gemm_vectorized, own_gemm, own_gemm_pack, own_gemm_packed_from,
                     own_gemm_packed_size, own_gemm_packed_step, own_gemm_step)

import numpy as np

#: Who multiplies the networks' dense layers and the solvers' block
#: gradients, by level: BLAS (0), _gemm.h's 32-byte tile (3, in the widest
#: clone the CPU runs) or its 64-byte tile (4, _gemm_avx512.h).
GEMM_BLAS = 0
GEMM_AVX2 = FL_GEMM_AVX2
GEMM_AVX512 = FL_GEMM_AVX512
#: The levels this CPU and build run: BLAS and the 32-byte tile everywhere
#: (the plain loops where the compiler has no vector extensions), the
#: 64-byte tile where it is compiled and the CPU executes AVX-512F.
GEMM_KERNELS = ((GEMM_BLAS, GEMM_AVX2)
                + ((GEMM_AVX512,) if fl_gemm_v4_runs() else ()))
#: The default level: the 64-byte tile where it runs; the 32-byte one where
#: BLAS would pack every call and the AVX2 + FMA code runs; else BLAS.
OWN_GEMM = (GEMM_AVX512 if fl_gemm_v4_runs() else
            GEMM_AVX2 if BLAS_PACKS_SMALL_CALLS and fl_gemm_vectorized() else
            GEMM_BLAS)


#: Whether this CPU runs the AVX2 epilogue of the 32-byte tile's fused step
#: (_gemm_avx2.h), which the level-3 steps then take (the same bits as
#: _gemm.h's).
AVX2_EPILOGUE = bool(fl_gemm_v3_runs())


def use_avx2_epilogue(bint on):
    """Whether this module's level-3 ``gemm_step`` and ``gemm_step_wide``
    calls take the AVX2 epilogue where the CPU runs it (``on``, the
    default) or _gemm.h's vector-extension one: the tests compare the two
    bit for bit. Returns the previous setting; the kernels' own calls are
    not affected."""
    global fl_gemm_v3_epilogue
    previous = bool(fl_gemm_v3_epilogue)
    fl_gemm_v3_epilogue = on
    return previous


# _gemm.h indexes with C ints, and a loop over a dimension s of it reaches
# s - 1 + its step before it stops (6 rows, 16 columns, or a K panel of
# FL_GEMM_KC = 256): every dimension stays FL_GEMM_KC below INT_MAX.
cdef Py_ssize_t _MAX_DIM = INT_MAX - FL_GEMM_KC


cdef int _dim(str fn, str name, Py_ssize_t size) except -1:
    """size as the C int of _gemm.h's loops, or ValueError."""
    if size > _MAX_DIM:
        raise ValueError(f"{fn}: {name} = {size} is beyond the 32-bit dimensions of "
                         f"_gemm.h (at most 2**31 - 1 - {FL_GEMM_KC})")
    return <int> size


cdef int _ld(str fn, str name, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t row_stride,
             Py_ssize_t col_stride, Py_ssize_t itemsize, bint output) except? -1:
    """The leading dimension ld, in elements, under which _gemm.h addresses
    entry (i, j) of a (rows, cols) operand at i ld + j, exactly where the
    view holds it (i row_stride + j col_stride bytes); ValueError where no
    C int ld does.

    A row must be contiguous (col_stride = itemsize where cols > 1) and the
    row stride a whole number of elements, |ld| <= INT_MAX. The kernels'
    offsets are signed (ptrdiff_t): an input may repeat or reverse its rows
    (ld = 0 or ld < 0), while an output's rows must not overlap
    (|ld| >= cols). With at most one row, or nothing to address, ld is
    never applied: 1.
    """
    cdef Py_ssize_t ld
    if rows == 0 or cols == 0:
        return 1
    if cols > 1 and col_stride != itemsize:
        raise ValueError(f"{fn}: {name} needs unit stride along its rows")
    if rows == 1:
        return 1
    if row_stride % itemsize != 0:
        raise ValueError(f"{fn}: {name}'s row stride of {row_stride} bytes is not a "
                         f"multiple of its itemsize {itemsize}")
    ld = row_stride // itemsize
    if ld > INT_MAX or ld < -INT_MAX:
        raise ValueError(f"{fn}: {name}'s row stride of {ld} elements is beyond the "
                         f"32-bit leading dimension of _gemm.h (|ld| <= 2**31 - 1)")
    if output and (ld if ld >= 0 else -ld) < cols:
        raise ValueError(f"{fn}: {name}'s rows overlap (row stride of {ld} elements, "
                         f"rows of {cols})")
    return <int> ld


def check_level(name, level):
    """Refuse a level (who multiplies: BLAS or a tile of _gemm.h) the running
    CPU or this build lacks: the kernels' entry points take one, and the
    64-byte tile on a CPU without AVX-512 would be an illegal instruction."""
    if level not in GEMM_KERNELS:
        raise ValueError(f"{name}: own_gemm={level!r} is not a GEMM this CPU runs in "
                         f"this build (GEMM_KERNELS: {GEMM_KERNELS})")


cdef int _level(str fn, int level) except -1:
    """level, a tile of _gemm.h this CPU runs, or ValueError."""
    if level not in GEMM_KERNELS or level == GEMM_BLAS:
        raise ValueError(f"{fn}: level={level} is not a tile of _gemm.h this CPU "
                         f"runs (expected one of "
                         f"{[k for k in GEMM_KERNELS if k != GEMM_BLAS]})")
    return level


def aligned_empty(Py_ssize_t rows, Py_ssize_t cols, dtype):
    """An uninitialized (rows, cols') array of ``dtype``, cols' >= cols the
    least multiple of 64 bytes, whose rows start on 64-byte boundaries.

    The kernels' workspaces and packed matrices live in such rows: a
    64-byte vector (_gemm_avx512.h's tile, the row kernels' AVX-512
    clones) read from them never straddles two cache lines. NumPy
    aligns its arrays to 16 bytes only, and a row of an odd number of
    floats shifts the next thread's row by 4 bytes.
    """
    cdef Py_ssize_t item = np.dtype(dtype).itemsize, per = max(1, 64 // item)
    rows = max(rows, 0)
    cols = (max(cols, 0) + per - 1) // per * per
    raw = np.empty(rows * cols + per, dtype=dtype)
    skip = (-raw.ctypes.data % 64) // item
    return raw[skip:skip + rows * cols].reshape(rows, cols)


cdef _packed(const floating *B, int K, int N, int ldb):
    """The panels of B (K, N, leading dimension ldb; NULL when empty) as
    _gemm.h packs them, in a new 1-d array (at least one entry), 64-byte
    aligned."""
    cdef Py_ssize_t size = max(1, own_gemm_packed_size(<floating *> NULL, N, K))
    BP = aligned_empty(1, size, np.float32 if floating is float else np.float64)[0, :size]
    BP.fill(np.nan)
    cdef floating[::1] bp = BP
    if K > 0 and N > 0:
        with nogil:
            own_gemm_pack(N, K, B, ldb, &bp[0])
    return BP


def pack(const floating[:, ::1] B):
    """B (K, N, C-contiguous) with its panels packed for _gemm.h: a new 1-d
    array of its dtype, which the packed calls read in place of B."""
    cdef int K = _dim("pack", "K", B.shape[0]), N = _dim("pack", "N", B.shape[1])
    return _packed(&B[0, 0] if K > 0 and N > 0 else <const floating *> NULL, K, N,
                   max(1, N))


def gemm(double alpha, floating[:, :] A, floating[:, :] B, double beta,
         floating[:, :] C, bint packed=False, int level=GEMM_AVX2):
    """C = alpha A B + beta C in place through _gemm.h, whatever the CPU.

    The kernels' own entry point, for the tests: A (M, K), B (K, N) and
    C (M, N) of one dtype (alpha and beta are rounded to it), each with unit
    stride along its rows (a slice of a wider C-ordered array gives a
    leading dimension beyond its width; A and B may also repeat or reverse
    their rows, C's rows must be distinct). ``packed``: B's panels packed
    first (own_gemm_pack), then read from there. ``level``: the tile
    (GEMM_AVX2 or GEMM_AVX512, one of GEMM_KERNELS). ValueError where the C
    ints of _gemm.h cannot address the operands exactly (see _dim and _ld),
    or for a tile this CPU does not run.
    """
    cdef Py_ssize_t M = A.shape[0], K = A.shape[1], N = B.shape[1]
    cdef Py_ssize_t item = sizeof(floating)
    if B.shape[0] != K or C.shape[0] != M or C.shape[1] != N:
        raise ValueError(f"gemm: shapes {(M, K)} @ {(B.shape[0], N)} into "
                         f"{(C.shape[0], C.shape[1])}")
    cdef int m = _dim("gemm", "M", M), n = _dim("gemm", "N", N), k = _dim("gemm", "K", K)
    cdef int lda = _ld("gemm", "A", M, K, A.strides[0], A.strides[1], item, False)
    cdef int ldb = _ld("gemm", "B", K, N, B.strides[0], B.strides[1], item, False)
    cdef int ldc = _ld("gemm", "C", M, N, C.strides[0], C.strides[1], item, True)
    _level("gemm", level)
    if m == 0 or n == 0:
        return
    cdef floating[::1] bp
    if packed:
        bp = _packed(&B[0, 0] if k > 0 else <const floating *> NULL, k, n, ldb)
        with nogil:
            own_gemm_packed_from(level, m, n, k, <floating> alpha,
                                 &A[0, 0] if k > 0 else NULL, lda, &bp[0],
                                 <floating> beta, &C[0, 0], ldc, &C[0, 0], ldc)
        return
    with nogil:
        own_gemm(level, m, n, k, <floating> alpha, &A[0, 0] if k > 0 else NULL, lda,
                 &B[0, 0] if k > 0 else NULL, ldb, <floating> beta, &C[0, 0], ldc)


def gemm_step(floating[:, :] A, floating[:, :] B, double step, floating[::1] thr,
              bint positive, floating[:, :] Z, signed char[:, :] sg=None,
              bint packed=False, int level=GEMM_AVX2):
    """Z[i] <- ST(Z[i] - step (A B)[i], thr[i]) in place through _gemm.h
    (one-sided if positive), the signs of the result into sg if given;
    returns the non-zeros of the new Z (NaN counted). For the tests, as gemm:
    A (M, K) with K <= 256, B (K, N), Z (M, N), sg (M, N) int8 (Z's and
    sg's rows distinct); ``packed`` and ``level`` as in gemm."""
    cdef Py_ssize_t M = A.shape[0], K = A.shape[1], N = B.shape[1]
    cdef Py_ssize_t item = sizeof(floating)
    if B.shape[0] != K or Z.shape[0] != M or Z.shape[1] != N or thr.shape[0] != M:
        raise ValueError(f"gemm_step: shapes {(M, K)} @ {(B.shape[0], N)} into "
                         f"{(Z.shape[0], Z.shape[1])}, {thr.shape[0]} thresholds")
    if K > FL_GEMM_KC:
        raise ValueError(f"gemm_step: K = {K} > {FL_GEMM_KC}")
    if sg is not None and (sg.shape[0] != M or sg.shape[1] != N):
        raise ValueError("gemm_step: sg must have Z's shape")
    cdef int m = _dim("gemm_step", "M", M), n = _dim("gemm_step", "N", N), k = <int> K
    cdef int lda = _ld("gemm_step", "A", M, K, A.strides[0], A.strides[1], item, False)
    cdef int ldb = _ld("gemm_step", "B", K, N, B.strides[0], B.strides[1], item, False)
    cdef int ldz = _ld("gemm_step", "Z", M, N, Z.strides[0], Z.strides[1], item, True)
    cdef int ldsg = (_ld("gemm_step", "sg", M, N, sg.strides[0], sg.strides[1], 1, True)
                     if sg is not None else 0)
    cdef signed char *sgp = &sg[0, 0] if sg is not None and m > 0 and n > 0 else NULL
    cdef Py_ssize_t nnz
    _level("gemm_step", level)
    if m == 0 or n == 0:
        return 0
    cdef floating[::1] bp
    if packed:
        bp = _packed(&B[0, 0] if k > 0 else <const floating *> NULL, k, n, ldb)
        with nogil:
            nnz = own_gemm_packed_step(level, m, n, k, &A[0, 0] if k > 0 else NULL,
                                       lda, &bp[0], <floating> step, &thr[0],
                                       positive, &Z[0, 0], ldz, sgp, ldsg)
        return nnz
    with nogil:
        nnz = own_gemm_step(level, m, n, k, &A[0, 0] if k > 0 else NULL, lda,
                            &B[0, 0] if k > 0 else NULL, ldb, <floating> step,
                            &thr[0], positive, &Z[0, 0], ldz, sgp, ldsg)
    return nnz


def gemm_step_wide(float[:, :] A, float[:, :] B, double step, const double[::1] lam,
                   bint positive, double[:, :] Zd, float[:, :] Z, bint packed=False,
                   int level=GEMM_AVX2):
    """The float32 step with the iterate in double, through _gemm.h:
    Zd[i] <- ST(Zd[i] - step (A B)[i], step lam[i]) in double in place (one-
    sided if positive), A B summed in float32 as ``gemm_step`` sums it,
    Z[i] <- Zd[i] rounded to float32; returns the non-zeros of the new Zd
    (NaN counted). For the tests: A (M, K) with K <= 256 and B (K, N)
    float32, lam (M,) and Zd (M, N) float64, Z (M, N) float32 (Zd's and Z's
    rows distinct); ``packed`` and ``level`` as in gemm."""
    cdef Py_ssize_t M = A.shape[0], K = A.shape[1], N = B.shape[1]
    if (B.shape[0] != K or Zd.shape[0] != M or Zd.shape[1] != N or Z.shape[0] != M
            or Z.shape[1] != N or lam.shape[0] != M):
        raise ValueError(f"gemm_step_wide: shapes {(M, K)} @ {(B.shape[0], N)} into "
                         f"{(Zd.shape[0], Zd.shape[1])} and {(Z.shape[0], Z.shape[1])}, "
                         f"{lam.shape[0]} lambdas")
    if K > FL_GEMM_KC:
        raise ValueError(f"gemm_step_wide: K = {K} > {FL_GEMM_KC}")
    cdef int m = _dim("gemm_step_wide", "M", M), n = _dim("gemm_step_wide", "N", N)
    cdef int k = <int> K
    cdef int lda = _ld("gemm_step_wide", "A", M, K, A.strides[0], A.strides[1], 4, False)
    cdef int ldb = _ld("gemm_step_wide", "B", K, N, B.strides[0], B.strides[1], 4, False)
    cdef int ldzd = _ld("gemm_step_wide", "Zd", M, N, Zd.strides[0], Zd.strides[1], 8,
                        True)
    cdef int ldz = _ld("gemm_step_wide", "Z", M, N, Z.strides[0], Z.strides[1], 4, True)
    cdef Py_ssize_t nnz
    _level("gemm_step_wide", level)
    if m == 0 or n == 0:
        return 0
    cdef float[::1] bp
    if packed:
        bp = _packed(&B[0, 0] if k > 0 else <const float *> NULL, k, n, ldb)
        with nogil:
            nnz = fl_s_gemm_packed_step_wide(level, m, n, k, &A[0, 0] if k > 0 else NULL,
                                             lda, &bp[0], step, &lam[0], positive,
                                             &Zd[0, 0], ldzd, &Z[0, 0], ldz)
        return nnz
    with nogil:
        nnz = fl_s_gemm_step_wide(level, m, n, k, &A[0, 0] if k > 0 else NULL, lda,
                                  &B[0, 0] if k > 0 else NULL, ldb, step, &lam[0],
                                  positive, &Zd[0, 0], ldzd, &Z[0, 0], ldz)
    return nnz
