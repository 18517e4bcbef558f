"""The running CPU, as the plans of the blocked kernels need it.

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
"""

cdef extern from "_simd.h":
    int fl_cpu_avx512f() noexcept nogil

#: BLAS packs the operands of every call, however small (no AVX-512): the
#: blocked kernels then make taller calls.
BLAS_PACKS_SMALL_CALLS = not fl_cpu_avx512f()
