/* fastlista: row-major GEMM for the networks' block products on AVX2. */
#ifndef FASTLISTA_GEMM_H
#define FASTLISTA_GEMM_H
/* C = alpha A B + beta C, all row-major: A (M x K, the block's rows), B
   (K x N, a layer's parameter matrix), C (M x N).

   Why not BLAS: without AVX-512, OpenBLAS copies ("packs") both operands
   of every call into its panel layouts, and scales C by beta in a pass of
   its own; on the networks' products (a block of 256 rows times a 256 x 64
   or 64 x 256 matrix) that was 15 % of a float32 forward pass. Here only
   B is copied, one panel of 2 W columns at a time (W: lanes of a 32-byte
   vector) into a buffer on the stack that stays in L1, and A is read in
   place: its rows are the natural streams of the register tile.

   Register tile: MR = 6 rows of C times 2 W columns, 12 vector
   accumulators; each k costs two vector loads of the packed panel and six
   broadcasts of A[i, k] (loads, not shuffles: the FMA ports stay free),
   for 12 FMAs. Each accumulator sums its k in order, one FMA a term (the
   x86-64-v3 clone; the others round a product and a sum), so the result
   does not depend on M, on the tile a row falls in, or on the thread. K
   is cut into panels of at most FL_GEMM_KC, beta applies to the first.

   beta == 0 never reads C (BLAS semantics: NaN in C does not leak). */
#include <stddef.h>
#include <string.h>
#include "_simd.h"      /* FL_SIMD: the per-ISA clones */

#define FL_GEMM_MR 6
#define FL_GEMM_KC 256

typedef float fl_s_vec __attribute__((vector_size(32)));
typedef double fl_d_vec __attribute__((vector_size(32)));
#define FL_SPLAT_fl_s(x) {x, x, x, x, x, x, x, x}
#define FL_SPLAT_fl_d(x) {x, x, x, x}

/* The register tile, written out in the body of the cloned function (an
   inline helper would be lowered for the baseline ISA before it is
   inlined into the x86-64-v3 clone, spilling and splitting its vectors):
   C[:R, :nc] = alpha A[:R, :kc] Bp + bt C[:R, :nc], with Bp the packed
   kc x NR panel (zero beyond column nc) and R a constant. */
#define FL_GEMM_TILE(T, V, P, R, A_, C_)                                   \
    {                                                                     \
        const T *a_ = (A_);                                               \
        T *c_ = (C_);                                                     \
        V c0[R], c1[R];                                                   \
        for (int r = 0; r < (R); r++) { c0[r] = (V){0}; c1[r] = (V){0}; } \
        _Pragma("GCC unroll 4")                                           \
        for (int k = 0; k < kc; k++) {                                    \
            V b0, b1;                                                     \
            memcpy(&b0, Bp + (ptrdiff_t) k * NR, sizeof b0);              \
            memcpy(&b1, Bp + (ptrdiff_t) k * NR + W, sizeof b1);          \
            for (int r = 0; r < (R); r++) {                               \
                T s_ = a_[r * (ptrdiff_t) lda + k];                       \
                V av = FL_SPLAT_##P(s_);                                  \
                c0[r] += av * b0;                                         \
                c1[r] += av * b1;                                         \
            }                                                             \
        }                                                                 \
        for (int r = 0; r < (R); r++) {                                   \
            T *c = c_ + r * (ptrdiff_t) ldc;                              \
            V o0 = va * c0[r], o1 = va * c1[r];                           \
            if (nc == NR) {                                               \
                if (bt != 0) {                                            \
                    V p0, p1;                                             \
                    memcpy(&p0, c, sizeof p0);                            \
                    memcpy(&p1, c + W, sizeof p1);                        \
                    o0 += vb * p0;                                        \
                    o1 += vb * p1;                                        \
                }                                                         \
                memcpy(c, &o0, sizeof o0);                                \
                memcpy(c + W, &o1, sizeof o1);                            \
            } else {                                                      \
                T o[2 * (sizeof(V) / sizeof(T))];                         \
                memcpy(o, &o0, sizeof o0);                                \
                memcpy(o + W, &o1, sizeof o1);                            \
                for (int j = 0; j < nc; j++)                              \
                    c[j] = bt != 0 ? o[j] + bt * c[j] : o[j];             \
            }                                                             \
        }                                                                 \
    }

#define FL_DEFINE_GEMM(T, V, P)                                            \
/* C = alpha A B + beta C (row-major; see the top of the file) */         \
static FL_SIMD void P##_gemm(int M, int N, int K, T alpha, const T *A,     \
                             int lda, const T *B, int ldb, T beta, T *C,  \
                             int ldc) {                                   \
    enum { W = (int) (sizeof(V) / sizeof(T)), NR = 2 * W };               \
    T Bp[FL_GEMM_KC * NR] __attribute__((aligned(32)));                   \
    if (K <= 0) {                                                         \
        for (int i = 0; i < M; i++)                                       \
            for (int j = 0; j < N; j++)                                   \
                C[(ptrdiff_t) i * ldc + j] = beta != 0                    \
                    ? beta * C[(ptrdiff_t) i * ldc + j] : 0;              \
        return;                                                           \
    }                                                                     \
    const V va = FL_SPLAT_##P(alpha);                                     \
    for (int kb = 0; kb < K; kb += FL_GEMM_KC) {                          \
        const int kc = K - kb < FL_GEMM_KC ? K - kb : FL_GEMM_KC;         \
        const T bt = kb == 0 ? beta : 1;                                  \
        const V vb = FL_SPLAT_##P(bt);                                    \
        for (int j0 = 0; j0 < N; j0 += NR) {                              \
            const int nc = N - j0 < NR ? N - j0 : NR;                     \
            for (int k = 0; k < kc; k++) {                                \
                const T *b = B + (ptrdiff_t) (kb + k) * ldb + j0;         \
                T *p = Bp + (ptrdiff_t) k * NR;                           \
                for (int j = 0; j < nc; j++) p[j] = b[j];                 \
                for (int j = nc; j < NR; j++) p[j] = 0;                   \
            }                                                             \
            const T *a = A + kb;                                          \
            T *c = C + j0;                                                \
            int i = 0;                                                    \
            for (; i + FL_GEMM_MR <= M; i += FL_GEMM_MR)                  \
                FL_GEMM_TILE(T, V, P, FL_GEMM_MR, a + (ptrdiff_t) i * lda, \
                             c + (ptrdiff_t) i * ldc)                     \
            switch (M - i) {                                              \
            case 5: FL_GEMM_TILE(T, V, P, 5, a + (ptrdiff_t) i * lda,     \
                                 c + (ptrdiff_t) i * ldc) break;          \
            case 4: FL_GEMM_TILE(T, V, P, 4, a + (ptrdiff_t) i * lda,     \
                                 c + (ptrdiff_t) i * ldc) break;          \
            case 3: FL_GEMM_TILE(T, V, P, 3, a + (ptrdiff_t) i * lda,     \
                                 c + (ptrdiff_t) i * ldc) break;          \
            case 2: FL_GEMM_TILE(T, V, P, 2, a + (ptrdiff_t) i * lda,     \
                                 c + (ptrdiff_t) i * ldc) break;          \
            case 1: FL_GEMM_TILE(T, V, P, 1, a + (ptrdiff_t) i * lda,     \
                                 c + (ptrdiff_t) i * ldc) break;          \
            default: break;                                               \
            }                                                             \
        }                                                                 \
    }                                                                     \
}

FL_DEFINE_GEMM(float, fl_s_vec, fl_s)
FL_DEFINE_GEMM(double, fl_d_vec, fl_d)

/* 1 if the calls above run their x86-64-v3 clone (AVX2 and FMA: a GCC 12+
   build with that clone, on a CPU that has both), the code they were
   written and measured for; else 0 (the baseline code: BLAS is faster). */
static inline int fl_gemm_vectorized(void) {
#if defined(FL_AVX2_CLONE)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

#endif
