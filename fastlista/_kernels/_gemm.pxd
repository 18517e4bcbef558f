# fastlista's row-major GEMM (_gemm.h): the networks' block products where
# BLAS packs the operands of every call (see _gemm.pyx for when).
from cython cimport floating

cdef extern from "_gemm.h":
    void fl_s_gemm(int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C,
                   int ldc) noexcept nogil
    void fl_d_gemm(int M, int N, int K, double alpha, const double *A, int lda,
                   const double *B, int ldb, double beta, double *C,
                   int ldc) noexcept nogil
    int fl_gemm_vectorized() noexcept nogil


cdef inline void own_gemm(int M, int N, int K, floating alpha, const floating *A,
                          int lda, const floating *B, int ldb, floating beta,
                          floating *C, int ldc) noexcept nogil:
    """C[M, N] = alpha A[M, K] B[K, N] + beta C, row-major (beta = 0: C unread)."""
    if floating is float:
        fl_s_gemm(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
    else:
        fl_d_gemm(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
