# fastlista's row-major GEMM (_gemm.h): the networks' block products where
# BLAS packs the operands of every call (see _gemm.pyx for when).
from cython cimport floating

cdef extern from "_gemm.h":
    int FL_GEMM_KC
    int FL_GEMM_AVX2
    int FL_GEMM_AVX512
    void fl_s_gemm_from(int level, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, const float *C0,
                        int ldc0, float *C, int ldc) noexcept nogil
    void fl_d_gemm_from(int level, int M, int N, int K, double alpha, const double *A, int lda,
                        const double *B, int ldb, double beta, const double *C0,
                        int ldc0, double *C, int ldc) noexcept nogil
    Py_ssize_t fl_s_gemm_step(int level, int M, int N, int K, const float *A, int lda,
                              const float *B, int ldb, float step, const float *thr,
                              int positive, float *Z, int ldz, signed char *sg,
                              int ldsg) noexcept nogil
    Py_ssize_t fl_d_gemm_step(int level, int M, int N, int K, const double *A, int lda,
                              const double *B, int ldb, double step,
                              const double *thr, int positive, double *Z, int ldz,
                              signed char *sg, int ldsg) noexcept nogil
    void fl_s_gemm(int level, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C,
                   int ldc) noexcept nogil
    void fl_d_gemm(int level, int M, int N, int K, double alpha, const double *A, int lda,
                   const double *B, int ldb, double beta, double *C,
                   int ldc) noexcept nogil
    Py_ssize_t fl_s_gemm_packed_size(int N, int K) noexcept nogil
    Py_ssize_t fl_d_gemm_packed_size(int N, int K) noexcept nogil
    void fl_s_gemm_pack(int N, int K, const float *B, int ldb, float *BP) noexcept nogil
    void fl_d_gemm_pack(int N, int K, const double *B, int ldb, double *BP) noexcept nogil
    void fl_s_gemm_packed_from(int level, int M, int N, int K, float alpha, const float *A,
                               int lda, const float *BP, float beta, const float *C0,
                               int ldc0, float *C, int ldc) noexcept nogil
    void fl_d_gemm_packed_from(int level, int M, int N, int K, double alpha, const double *A,
                               int lda, const double *BP, double beta,
                               const double *C0, int ldc0, double *C,
                               int ldc) noexcept nogil
    Py_ssize_t fl_s_gemm_packed_step(int level, int M, int N, int K, const float *A, int lda,
                                     const float *BP, float step, const float *thr,
                                     int positive, float *Z, int ldz, signed char *sg,
                                     int ldsg) noexcept nogil
    Py_ssize_t fl_d_gemm_packed_step(int level, int M, int N, int K, const double *A, int lda,
                                     const double *BP, double step,
                                     const double *thr, int positive, double *Z,
                                     int ldz, signed char *sg, int ldsg) noexcept nogil
    # float32 with the iterate in double (float32 ISTA's z): Zd[i] <- OP(Zd[i]
    # - step (A B)[i], step lam[i]) in double, A B summed in float32 as in
    # fl_s_gemm_step, Z[i] <- its rounding to float; returns the non-zeros of
    # the new Zd (NaN counted). Needs K <= FL_GEMM_KC; BP: B packed by
    # fl_s_gemm_pack.
    Py_ssize_t fl_s_gemm_step_wide(int level, int M, int N, int K, const float *A, int lda,
                                   const float *B, int ldb, double step, const double *lam,
                                   int positive, double *Zd, int ldzd, float *Z,
                                   int ldz) noexcept nogil
    Py_ssize_t fl_s_gemm_packed_step_wide(int level, int M, int N, int K, const float *A,
                                          int lda, const float *BP, double step,
                                          const double *lam, int positive, double *Zd,
                                          int ldzd, float *Z, int ldz) noexcept nogil
    int fl_gemm_vectorized() noexcept nogil
    int fl_gemm_v4_runs() noexcept nogil
    int fl_gemm_v3_runs() noexcept nogil
    int fl_gemm_v3_epilogue


# Each call takes the tile's level first: FL_GEMM_AVX512 runs the 64-byte
# tile of _gemm_avx512.h (only where fl_gemm_v4_runs()), any other level the
# 32-byte tile of _gemm.h (its fused step's epilogue from _gemm_avx2.h where
# fl_gemm_v3_runs()); all compute the same bits (see _gemm.pyx,
# GEMM_KERNELS).

cdef inline void own_gemm(int level, int M, int N, int K, floating alpha, const floating *A,
                          int lda, const floating *B, int ldb, floating beta,
                          floating *C, int ldc) noexcept nogil:
    """C[M, N] = alpha A[M, K] B[K, N] + beta C, row-major (beta = 0: C unread)."""
    if floating is float:
        fl_s_gemm(level, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
    else:
        fl_d_gemm(level, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)


cdef inline void own_gemm_from(int level, int M, int N, int K, floating alpha, const floating *A,
                               int lda, const floating *B, int ldb, floating beta,
                               const floating *C0, int ldc0, floating *C,
                               int ldc) noexcept nogil:
    """C[M, N] = alpha A[M, K] B[K, N] + beta C0 (C0 unread where beta = 0)."""
    if floating is float:
        fl_s_gemm_from(level, M, N, K, alpha, A, lda, B, ldb, beta, C0, ldc0, C, ldc)
    else:
        fl_d_gemm_from(level, M, N, K, alpha, A, lda, B, ldb, beta, C0, ldc0, C, ldc)


cdef inline Py_ssize_t own_gemm_step(int level, int M, int N, int K, const floating *A, int lda,
                                     const floating *B, int ldb, floating step,
                                     const floating *thr, bint positive, floating *Z,
                                     int ldz, signed char *sg, int ldsg) noexcept nogil:
    """Z[i] <- ST(Z[i] - step (A B)[i], thr[i]) (one-sided if positive) for the
    M rows, their signs into sg unless NULL; returns the non-zeros (NaN
    counted). Needs K <= FL_GEMM_KC."""
    if floating is float:
        return fl_s_gemm_step(level, M, N, K, A, lda, B, ldb, step, thr, positive, Z, ldz,
                              sg, ldsg)
    return fl_d_gemm_step(level, M, N, K, A, lda, B, ldb, step, thr, positive, Z, ldz, sg,
                          ldsg)


# B packed once (the parameter matrices of a call): its panels in the layout
# of _gemm.h, own_gemm_packed_size(N, K) entries, written by own_gemm_pack
# and read by the packed calls below, which compute what their unpacked
# counterparts compute, in the same order.
cdef inline Py_ssize_t own_gemm_packed_size(floating *tag, int N, int K) noexcept nogil:
    """Entries of B (K, N) packed (tag: a NULL pointer of the dtype)."""
    if floating is float:
        return fl_s_gemm_packed_size(N, K)
    return fl_d_gemm_packed_size(N, K)


cdef inline void own_gemm_pack(int N, int K, const floating *B, int ldb,
                               floating *BP) noexcept nogil:
    """BP <- the panels of B (K, N, row-major, leading dimension ldb)."""
    if floating is float:
        fl_s_gemm_pack(N, K, B, ldb, BP)
    else:
        fl_d_gemm_pack(N, K, B, ldb, BP)


cdef inline void own_gemm_packed_from(int level, int M, int N, int K, floating alpha,
                                      const floating *A, int lda, const floating *BP,
                                      floating beta, const floating *C0, int ldc0,
                                      floating *C, int ldc) noexcept nogil:
    """own_gemm_from with B packed in BP."""
    if floating is float:
        fl_s_gemm_packed_from(level, M, N, K, alpha, A, lda, BP, beta, C0, ldc0, C, ldc)
    else:
        fl_d_gemm_packed_from(level, M, N, K, alpha, A, lda, BP, beta, C0, ldc0, C, ldc)


cdef inline Py_ssize_t own_gemm_packed_step(int level, int M, int N, int K, const floating *A,
                                            int lda, const floating *BP, floating step,
                                            const floating *thr, bint positive,
                                            floating *Z, int ldz, signed char *sg,
                                            int ldsg) noexcept nogil:
    """own_gemm_step with B packed in BP."""
    if floating is float:
        return fl_s_gemm_packed_step(level, M, N, K, A, lda, BP, step, thr, positive, Z, ldz,
                                     sg, ldsg)
    return fl_d_gemm_packed_step(level, M, N, K, A, lda, BP, step, thr, positive, Z, ldz, sg,
                                 ldsg)
