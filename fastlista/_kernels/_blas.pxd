# Fused float32/float64 wrappers over scipy.linalg.cython_blas, header-only so
# that every kernel module inlines them. All matrices are ROW-major (C order):
# a row-major product C = op(A) op(B) is the column-major product
# C^T = op(B)^T op(A)^T, so each call swaps the operands and the dimensions.
from cython cimport floating
from scipy.linalg.cython_blas cimport (
    sgemm, dgemm, sgemv, dgemv, sdot, ddot, saxpy, daxpy, sscal, dscal,
    snrm2, dnrm2,
)


cdef inline void gemm(bint trans_a, bint trans_b, int M, int N, int K,
                      floating alpha, const floating *A, int lda,
                      const floating *B, int ldb, floating beta,
                      floating *C, int ldc) noexcept nogil:
    """C[M, N] = alpha * op(A) @ op(B) + beta * C, row-major."""
    cdef char ta = b't' if trans_a else b'n'
    cdef char tb = b't' if trans_b else b'n'
    if M == 0 or N == 0:
        return
    if floating is float:
        sgemm(&tb, &ta, &N, &M, &K, &alpha, <float *> B, &ldb,
              <float *> A, &lda, &beta, C, &ldc)
    else:
        dgemm(&tb, &ta, &N, &M, &K, &alpha, <double *> B, &ldb,
              <double *> A, &lda, &beta, C, &ldc)


cdef inline void gemv(bint trans, int M, int N, floating alpha,
                      const floating *A, int lda, const floating *x,
                      floating beta, floating *y) noexcept nogil:
    """y = alpha * op(A) @ x + beta * y with A[M, N] row-major."""
    # row-major A is the column-major A^T: flip the transpose flag
    cdef char t = b'n' if trans else b't'
    cdef int one = 1
    if M == 0 or N == 0:
        return
    if floating is float:
        sgemv(&t, &N, &M, &alpha, <float *> A, &lda, <float *> x, &one,
              &beta, y, &one)
    else:
        dgemv(&t, &N, &M, &alpha, <double *> A, &lda, <double *> x, &one,
              &beta, y, &one)


cdef inline floating dot(int n, const floating *x, const floating *y) noexcept nogil:
    """x @ y"""
    cdef int one = 1
    if floating is float:
        return sdot(&n, <float *> x, &one, <float *> y, &one)
    else:
        return ddot(&n, <double *> x, &one, <double *> y, &one)


cdef inline void axpy(int n, floating a, const floating *x, floating *y) noexcept nogil:
    """y += a * x"""
    cdef int one = 1
    if floating is float:
        saxpy(&n, &a, <float *> x, &one, y, &one)
    else:
        daxpy(&n, &a, <double *> x, &one, y, &one)


cdef inline void scal(int n, floating a, floating *x) noexcept nogil:
    """x *= a"""
    cdef int one = 1
    if floating is float:
        sscal(&n, &a, x, &one)
    else:
        dscal(&n, &a, x, &one)


cdef inline floating nrm2(int n, const floating *x) noexcept nogil:
    """np.linalg.norm(x)"""
    cdef int one = 1
    if floating is float:
        return snrm2(&n, <float *> x, &one)
    else:
        return dnrm2(&n, <double *> x, &one)
