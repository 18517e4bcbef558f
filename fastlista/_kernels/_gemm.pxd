# fastlista's row-major GEMM (_gemm.h): the networks' block products where
# BLAS packs the operands of every call (see _gemm.pyx for when).
from cython cimport floating

cdef extern from "_gemm.h":
    int FL_GEMM_KC
    void fl_s_gemm_from(int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, const float *C0,
                        int ldc0, float *C, int ldc) noexcept nogil
    void fl_d_gemm_from(int M, int N, int K, double alpha, const double *A, int lda,
                        const double *B, int ldb, double beta, const double *C0,
                        int ldc0, double *C, int ldc) noexcept nogil
    Py_ssize_t fl_s_gemm_step(int M, int N, int K, const float *A, int lda,
                              const float *B, int ldb, float step, const float *thr,
                              int positive, float *Z, int ldz, signed char *sg,
                              int ldsg) noexcept nogil
    Py_ssize_t fl_d_gemm_step(int M, int N, int K, const double *A, int lda,
                              const double *B, int ldb, double step,
                              const double *thr, int positive, double *Z, int ldz,
                              signed char *sg, int ldsg) noexcept nogil
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


cdef inline void own_gemm_from(int M, int N, int K, floating alpha, const floating *A,
                               int lda, const floating *B, int ldb, floating beta,
                               const floating *C0, int ldc0, floating *C,
                               int ldc) noexcept nogil:
    """C[M, N] = alpha A[M, K] B[K, N] + beta C0 (C0 unread where beta = 0)."""
    if floating is float:
        fl_s_gemm_from(M, N, K, alpha, A, lda, B, ldb, beta, C0, ldc0, C, ldc)
    else:
        fl_d_gemm_from(M, N, K, alpha, A, lda, B, ldb, beta, C0, ldc0, C, ldc)


cdef inline Py_ssize_t own_gemm_step(int M, int N, int K, const floating *A, int lda,
                                     const floating *B, int ldb, floating step,
                                     const floating *thr, bint positive, floating *Z,
                                     int ldz, signed char *sg, int ldsg) noexcept nogil:
    """Z[i] <- ST(Z[i] - step (A B)[i], thr[i]) (one-sided if positive) for the
    M rows, their signs into sg unless NULL; returns the non-zeros (NaN
    counted). Needs K <= FL_GEMM_KC."""
    if floating is float:
        return fl_s_gemm_step(M, N, K, A, lda, B, ldb, step, thr, positive, Z, ldz,
                              sg, ldsg)
    return fl_d_gemm_step(M, N, K, A, lda, B, ldb, step, thr, positive, Z, ldz, sg,
                          ldsg)
