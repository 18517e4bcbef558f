"""The running CPU and BLAS, as the plans of the blocked kernels need them.

The solvers and the networks multiply a block of rows by a fixed matrix
(D, D^T, W_t^T) in every BLAS call. OpenBLAS, the BLAS of NumPy's and
SciPy's wheels, multiplies small matrices without packing them only with
its AVX-512 kernels; elsewhere every call first copies both operands into
its panel format, and only taller calls amortise that copy. Measured on
the paper shape (64 features x 256 atoms, 10 000 samples, T = 30 layers):

* AMD Zen 4 (AVX-512), calls of 32 rows: float64 SLISTA ``loss_and_grad``
  at lmbd = 0.1 in 0.38 s, against 0.47 s with 64 or 128;
* AMD Zen 3 (AVX2 only), float32 SLISTA forward at lmbd = 0.1: 349, 256,
  207 and 189 ms with calls of 32, 64, 128 and 256 rows (one run of five
  calls each, medians); float32 ``loss_and_grad`` 560 ms with 32, 444 with
  128; one float32 ISTA iteration 8.0 ms on blocks of 32 rows, 6.3 on 128.

Which kernels OpenBLAS runs is its own choice, made when it loads: by the
CPU (an AVX-512 CPU it does not know gets its AVX2 kernels) or by the
``OPENBLAS_CORETYPE`` environment variable. So the plans ask the OpenBLAS
that SciPy's BLAS calls go to, and fall back on the CPU's AVX-512F flag
where that BLAS is not OpenBLAS or does not say.
"""
import ctypes

from scipy.linalg import cython_blas
from openmp cimport omp_get_max_threads

cdef extern from "_simd.h":
    int fl_cpu_avx512f() noexcept nogil

#: OpenBLAS's kernel sets with its small-matrix ("direct") GEMM kernels:
#: the AVX-512 ones (lower case).
SMALL_MATRIX_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})


def blas_core():
    """The kernel set OpenBLAS runs SciPy's BLAS with, as OpenBLAS names it
    (``"SkylakeX"``, ``"Haswell"``, ``"Zen"``...), or None where SciPy's
    BLAS is not OpenBLAS or does not say."""
    try:
        lib = ctypes.CDLL(cython_blas.__file__)
    except OSError:
        return None
    # SciPy's wheels prefix OpenBLAS's symbols with scipy_; other builds do not
    for symbol in ("scipy_openblas_get_corename", "openblas_get_corename"):
        corename = getattr(lib, symbol, None)
        if corename is not None:
            corename.restype = ctypes.c_char_p
            name = corename()
            return name.decode("ascii", "replace") if name else None
    return None


#: The kernel set of SciPy's OpenBLAS, or None (see blas_core).
BLAS_CORE = blas_core()
#: BLAS packs the operands of every call, however small (OpenBLAS without
#: its AVX-512 kernels; without OpenBLAS's word, a CPU without AVX-512F):
#: the blocked kernels then make taller calls.
BLAS_PACKS_SMALL_CALLS = (BLAS_CORE.lower() not in SMALL_MATRIX_CORES
                          if BLAS_CORE is not None else not fl_cpu_avx512f())


def openmp_max_threads():
    """OpenMP's thread budget for a team the calling thread starts.

    Returns
    -------
    n_threads : int
        ``omp_get_max_threads()``: ``OMP_NUM_THREADS`` where it is set (as
        joblib's worker processes and dask's nannies set it, to share the
        cores among them), a limit the calling thread set through
        ``omp_set_num_threads`` (threadpoolctl's OpenMP limit, which holds
        in the thread that set it only), else the cores OpenMP found at
        start-up.
    """
    return omp_get_max_threads()
