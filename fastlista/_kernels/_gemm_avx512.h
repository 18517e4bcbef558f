/* fastlista: the register tile of _gemm.h in AVX-512. */
#ifndef FASTLISTA_GEMM_AVX512_H
#define FASTLISTA_GEMM_AVX512_H
/* P##_gemm_core_v4 and P##_gemm_step_core_v4 compute what P##_gemm_core
   and P##_gemm_step_core (_gemm.h) compute, with the same operations in
   the same order: each entry of C sums its k in order, one FMA a term,
   from zero, and the epilogues compute the same values (alpha and beta
   by the same vector expressions; the fused step's threshold, non-zeros
   and signs in AVX-512F intrinsics, below). Their results are the
   32-byte tile's, bit for bit.

   What changes is the tile: 64-byte vectors (16 floats, 8 doubles), two
   of them across, so that a tile spans two of _gemm.h's packed panels
   (each NR = 64 bytes wide: the packed layout is the same for both
   kernels, and the panel of columns [j0 + NR, j0 + 2 NR) follows the one
   of [j0, j0 + NR), kc NR entries further), times FL_GEMM_MR_V4 = 12
   rows: 24 accumulators of the 32 vector registers; each k costs two
   vector loads of the panels and 12 broadcasts of A[i, k], for 24 FMAs.
   An odd last panel takes a tile one vector wide; full panels are
   stored through 64-byte epilogues, a partial one (N not a multiple of
   NR) through _gemm.h's, on the vector's two 32-byte halves.

   Why: on an Intel Xeon with AVX-512 (two FMA units a core) _gemm.h's
   32-byte tile, in its x86-64-v4 clone, leaves half of each FMA unit's
   width unused; OpenBLAS's small-matrix kernels ran the networks' 32-row
   products faster than it, and slower than this tile: SLISTA's calls at
   lmbd = 0.1 take 0.70-0.93 of their time through BLAS here, 0.64-0.70
   of their time through the 32-byte tile (three runs of
   benchmarks/test_bench_networks.py 5, "through BLAS" and "32-byte GEMM
   tile"; docs/benchmarks.md, "The fused step's epilogue in AVX-512").

   Compiled for AVX-512F (with AVX2, FMA and POPCNT) by a target attribute, on
   x86-64 with GCC or Clang, in every build not capped below x86-64-v4
   (FASTLISTA_ISA); fl_gemm_v4_runs() says whether the running CPU
   executes it. Elsewhere FL_GEMM_HAVE_V4 is undefined and _gemm.h's
   dispatch runs the 32-byte tile for every level. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) \
    && !(defined(FL_ISA_LEVEL) && FL_ISA_LEVEL < 4) && defined(FL_GEMM_VECTOR_EXTENSIONS)
#define FL_GEMM_HAVE_V4 1
#define FL_GEMM_V4_TARGET __attribute__((target("avx512f,avx2,fma,popcnt")))
#define FL_GEMM_MR_V4 12
#include <immintrin.h>

/* The running CPU executes AVX-512F, AVX2, FMA and POPCNT */
static inline int fl_gemm_v4_runs(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2")
        && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt");
}

typedef float fl_s_vec64 __attribute__((vector_size(64)));
typedef double fl_d_vec64 __attribute__((vector_size(64)));
typedef int32_t fl_s_ivec64 __attribute__((vector_size(64)));
typedef int64_t fl_d_ivec64 __attribute__((vector_size(64)));
#define FL_SPLAT64_fl_s(x) {x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}
#define FL_SPLAT64_fl_d(x) {x, x, x, x, x, x, x, x}

/* lo, hi <- the 32-byte halves of the 64-byte vector v (a shuffle where
   the compiler has one: a copy through memory would keep v out of the
   registers) */
#ifdef FL_SHUFFLE_BYTES
#  define FL_HALVES_fl_s(v, lo, hi)                                        \
    lo = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);           \
    hi = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
#  define FL_HALVES_fl_d(v, lo, hi)                                        \
    lo = __builtin_shufflevector(v, v, 0, 1, 2, 3);                       \
    hi = __builtin_shufflevector(v, v, 4, 5, 6, 7);
#else
#  define FL_HALVES_fl_s(v, lo, hi)                                        \
    memcpy(&lo, &(v), sizeof lo);                                         \
    memcpy(&hi, (char *) &(v) + sizeof lo, sizeof hi);
#  define FL_HALVES_fl_d(v, lo, hi) FL_HALVES_fl_s(v, lo, hi)
#endif

/* The epilogues of a full panel, on the 64-byte vector acc holding row
   i + r's columns [j0, j0 + NR): the operations of _gemm.h's
   FL_GEMM_EPI_AXPBY and FL_GEMM_EPI_STEP on its two halves, at once (the
   signs, one byte a lane, through _gemm.h's shuffle of the halves). */
#define FL_GEMM_EPI64_AXPBY(T, V, P, r, acc)                               \
    {                                                                     \
        T *c = C + (ptrdiff_t) (i + r) * ldc + j0;                        \
        P##_vec64 o = va64 * (acc);                                       \
        if (bt != 0) {                                                    \
            P##_vec64 p;                                                  \
            memcpy(&p, C0 + (ptrdiff_t) (i + r) * ldc0 + j0, sizeof p);   \
            o += vb64 * p;                                                \
        }                                                                 \
        memcpy(c, &o, sizeof o);                                          \
    }
/* The fused step's epilogue on a full panel, in AVX-512F intrinsics (the
   operations of _gemm.h's FL_GEMM_EPI_STEP on the two halves at once, the
   same values): o = OP64(z - step acc, thr[i + r]) stored to z, where
   OP64 is the soft-threshold v - max(min(v, s), -s) (min and max return
   their second operand for a NaN, as FL_VST's selects do) or the
   one-sided max(0, v - s); two comparisons with 0 give the masks of the
   positive lanes and of the negative or NaN ones, whose union counts the
   non-zeros (a popcount added to tail: a vector count would hold one of
   the 32 registers the tile needs, and the compiler then spills a panel
   vector in the k loop) and which set the signs (1, -1, 0; NaN -1),
   narrowed from 32- or 64-bit lanes to one byte a lane (vpmovdb,
   vpmovqb) when sg is given. */
#define FL_GEMM64_ST(X, v, vs)                                             \
    _mm512_sub_##X(v, _mm512_max_##X(_mm512_min_##X(v, vs),              \
                                     _mm512_sub_##X(_mm512_setzero_##X(), vs)))
#define FL_GEMM64_PST(X, v, vs)                                            \
    _mm512_max_##X(_mm512_setzero_##X(), _mm512_sub_##X(v, vs))
/* the signs of the lanes, 1 on kp, -1 on kn, 0 elsewhere, one byte a lane
   at g */
#define FL_GEMM64_SIGNS_fl_s(g, kp, kn)                                    \
    {                                                                     \
        __m512i s_ = _mm512_maskz_mov_epi32(kp, _mm512_set1_epi32(1));    \
        s_ = _mm512_mask_mov_epi32(s_, kn, _mm512_set1_epi32(-1));        \
        _mm_storeu_si128((__m128i *) (g), _mm512_cvtepi32_epi8(s_));      \
    }
#define FL_GEMM64_SIGNS_fl_d(g, kp, kn)                                    \
    {                                                                     \
        __m512i s_ = _mm512_maskz_mov_epi64(kp, _mm512_set1_epi64(1));    \
        s_ = _mm512_mask_mov_epi64(s_, kn, _mm512_set1_epi64(-1));        \
        _mm_storel_epi64((__m128i *) (g), _mm512_cvtepi64_epi8(s_));      \
    }
/* VT, KT: the intrinsics' vector and mask types, X their suffix */
#define FL_GEMM_EPI64_STEP(T, P, X, VT, KT, r, acc, OP64)                  \
    {                                                                     \
        T *z = Z + (ptrdiff_t) (i + r) * ldz + j0;                        \
        P##_vec64 zv;                                                     \
        memcpy(&zv, z, sizeof zv);                                        \
        const VT v = (VT) (zv - vstep64 * (acc));                         \
        const VT o = OP64(X, v, _mm512_set1_##X(thr[i + r]));             \
        _mm512_storeu_##X(z, o);                                          \
        const KT kp = _mm512_cmp_##X##_mask(o, _mm512_setzero_##X(),      \
                                            _CMP_GT_OQ);                  \
        const KT kn = _mm512_cmp_##X##_mask(o, _mm512_setzero_##X(),      \
                                            _CMP_NGE_UQ);                 \
        tail += __builtin_popcount((unsigned) kp | (unsigned) kn);        \
        if (sg != NULL)                                                   \
            FL_GEMM64_SIGNS_##P(sg + (ptrdiff_t) (i + r) * ldsg + j0, kp, kn) \
    }
#define FL_GEMM_EPI64_STEP_fl_s(r, acc, OP64)                              \
    FL_GEMM_EPI64_STEP(float, fl_s, ps, __m512, __mmask16, r, acc, OP64)
#define FL_GEMM_EPI64_STEP_fl_d(r, acc, OP64)                              \
    FL_GEMM_EPI64_STEP(double, fl_d, pd, __m512d, __mmask8, r, acc, OP64)
#define FL_GEMM_EPI64_STEP_ST(T, V, P, r, acc)                             \
    FL_GEMM_EPI64_STEP_##P(r, acc, FL_GEMM64_ST)
#define FL_GEMM_EPI64_STEP_PST(T, V, P, r, acc)                            \
    FL_GEMM_EPI64_STEP_##P(r, acc, FL_GEMM64_PST)

/* The float32 step with z in double (_gemm.h's FL_GEMM_EPI_WSTEP) on a
   full panel: row i + r's 16 sums widened to two vectors of 8 doubles
   (exactly), o = OP64(Zd - step acc, step lam[i + r]) stored to Zd and,
   rounded to float, to Z; the non-zeros (o != 0, NaN included: an
   unordered-or-unequal comparison) counted by a popcount into tail */
#define FL_GEMM_EPI64_WSTEP(r, acc, OP64)                                  \
    {                                                                     \
        double *zd = Zd + (ptrdiff_t) (i + r) * ldzd + j0;                \
        float *z = Z + (ptrdiff_t) (i + r) * ldz + j0;                    \
        const __m512d vs = _mm512_set1_pd(step * lam[i + r]);             \
        const __m512 a_ = (__m512) (acc);                                 \
        const fl_d_vec64 d0_ = (fl_d_vec64) _mm512_cvtps_pd(              \
            _mm512_castps512_ps256(a_));                                  \
        const fl_d_vec64 d1_ = (fl_d_vec64) _mm512_cvtps_pd(_mm256_castpd_ps( \
            _mm512_extractf64x4_pd(_mm512_castps_pd(a_), 1)));            \
        fl_d_vec64 z0_, z1_;                                              \
        memcpy(&z0_, zd, sizeof z0_);                                     \
        memcpy(&z1_, zd + 8, sizeof z1_);                                 \
        const __m512d o0 = OP64(pd, (__m512d) (z0_ - vstepd64 * d0_), vs); \
        const __m512d o1 = OP64(pd, (__m512d) (z1_ - vstepd64 * d1_), vs); \
        _mm512_storeu_pd(zd, o0);                                         \
        _mm512_storeu_pd(zd + 8, o1);                                     \
        _mm256_storeu_ps(z, _mm512_cvtpd_ps(o0));                         \
        _mm256_storeu_ps(z + 8, _mm512_cvtpd_ps(o1));                     \
        const __mmask8 k0 = _mm512_cmp_pd_mask(o0, _mm512_setzero_pd(),   \
                                               _CMP_NEQ_UQ);              \
        const __mmask8 k1 = _mm512_cmp_pd_mask(o1, _mm512_setzero_pd(),   \
                                               _CMP_NEQ_UQ);              \
        tail += __builtin_popcount((unsigned) k0 | (unsigned) k1 << 8);   \
    }
#define FL_GEMM_EPI64_WSTEP_ST(T, V, P, r, acc)                            \
    FL_GEMM_EPI64_WSTEP(r, acc, FL_GEMM64_ST)
#define FL_GEMM_EPI64_WSTEP_PST(T, V, P, r, acc)                           \
    FL_GEMM_EPI64_WSTEP(r, acc, FL_GEMM64_PST)

/* Row i + r's 64-byte vector acc of the panel at column jq (nq columns):
   the 64-byte epilogue EPI64 on a full panel, else _gemm.h's EPI on its
   halves (which handles the partial panel) */
#define FL_GEMM_STORE_V4(T, V, P, r, acc, jq, nq, EPI, EPI64)              \
    {                                                                     \
        const int j0 = (jq), nc = (nq);                                   \
        if (nc == NR) {                                                   \
            EPI64(T, V, P, r, acc)                                        \
        } else {                                                          \
            V lo_, hi_;                                                   \
            FL_HALVES_##P(acc, lo_, hi_)                                  \
            EPI(T, V, P, r, lo_, hi_)                                     \
        }                                                                 \
    }

/* The register tile: acc = A[:R, :kc] [Bp | Bp + kc NR], R rows (a
   constant) by NV = 1 or 2 panels (a constant), then each row's vectors
   stored through EPI64 / EPI. The body is written out in the target
   function, as in _gemm.h (an inline helper would be lowered for the
   baseline ISA first). */
#define FL_GEMM_TILE_V4(T, V, P, R, NV, EPI, EPI64)                        \
    {                                                                     \
        const T *a_ = a + (ptrdiff_t) i * lda;                            \
        P##_vec64 c0[R], c1[R];                                           \
        for (int r = 0; r < (R); r++) {                                   \
            c0[r] = (P##_vec64){0};                                       \
            c1[r] = (P##_vec64){0};                                       \
        }                                                                 \
        for (int k = 0; k < kc; k++) {                                    \
            P##_vec64 b0, b1 = {0};                                       \
            memcpy(&b0, Bp + (ptrdiff_t) k * NR, sizeof b0);              \
            if ((NV) == 2)                                                \
                memcpy(&b1, Bp + (ptrdiff_t) (kc + k) * NR, sizeof b1);   \
            for (int r = 0; r < (R); r++) {                               \
                T s_ = a_[r * (ptrdiff_t) lda + k];                       \
                P##_vec64 av = FL_SPLAT64_##P(s_);                        \
                c0[r] += av * b0;                                         \
                if ((NV) == 2) c1[r] += av * b1;                          \
            }                                                             \
        }                                                                 \
        for (int r = 0; r < (R); r++) {                                   \
            FL_GEMM_STORE_V4(T, V, P, r, c0[r], jp, nc0, EPI, EPI64)      \
            if ((NV) == 2)                                                \
                FL_GEMM_STORE_V4(T, V, P, r, c1[r], jp + NR, nc1, EPI, EPI64) \
        }                                                                 \
    }

/* Every row tile of a panel pair (or of the last, odd panel): i runs
   over the rows 12 at a time, then 8 and 4 rows at most once each (16
   and 8 accumulators), then the 1-3 left: a block of 32 rows is
   12 + 12 + 8, not 12 + 12 + 4 + 4, whose 4-row tiles' 8 independent
   sums barely cover the latency of two FMA units */
#define FL_GEMM_ROWS_V4(T, V, P, NV, EPI, EPI64)                           \
    {                                                                     \
        int i = 0;                                                        \
        for (; i + FL_GEMM_MR_V4 <= M; i += FL_GEMM_MR_V4)                \
            FL_GEMM_TILE_V4(T, V, P, FL_GEMM_MR_V4, NV, EPI, EPI64)       \
        if (i + 8 <= M) {                                                 \
            FL_GEMM_TILE_V4(T, V, P, 8, NV, EPI, EPI64)                   \
            i += 8;                                                       \
        }                                                                 \
        if (i + 4 <= M) {                                                 \
            FL_GEMM_TILE_V4(T, V, P, 4, NV, EPI, EPI64)                   \
            i += 4;                                                       \
        }                                                                 \
        switch (M - i) {                                                  \
        case 3: FL_GEMM_TILE_V4(T, V, P, 3, NV, EPI, EPI64) break;        \
        case 2: FL_GEMM_TILE_V4(T, V, P, 2, NV, EPI, EPI64) break;        \
        case 1: FL_GEMM_TILE_V4(T, V, P, 1, NV, EPI, EPI64) break;        \
        default: break;                                                   \
        }                                                                 \
    }
#define FL_GEMM_PAIR_V4(T, V, P, EPI, EPI64)                               \
    {                                                                     \
        if (nc1 > 0) FL_GEMM_ROWS_V4(T, V, P, 2, EPI, EPI64)              \
        else FL_GEMM_ROWS_V4(T, V, P, 1, EPI, EPI64)                      \
    }

/* The panels of columns [jp, jp + 2 NR) of B's rows [kb, kb + kc): at
   BP's packed layout if BP is given, else copied from B into Bs */
#define FL_GEMM_PANELS_V4(T)                                               \
    const T *Bp = Bs;                                                     \
    if (BP != NULL) {                                                     \
        Bp = BP + (ptrdiff_t) kb * Np + (ptrdiff_t) jp * kc;              \
    } else {                                                              \
        {                                                                 \
            const int j0 = jp, nc = nc0;                                  \
            FL_GEMM_PACK(T, Bs)                                           \
        }                                                                 \
        if (nc1 > 0) {                                                    \
            const int j0 = jp + NR, nc = nc1;                             \
            FL_GEMM_PACK(T, Bs + (ptrdiff_t) kc * NR)                     \
        }                                                                 \
    }

#define FL_DEFINE_GEMM_V4(T, V, P)                                         \
/* P##_gemm_core, 64-byte tile */                                         \
static FL_GEMM_V4_TARGET void P##_gemm_core_v4(                           \
        int M, int N, int K, T alpha, const T *A, int lda, const T *B,    \
        int ldb, const T *BP, T beta, const T *C0, int ldc0, T *C,        \
        int ldc) {                                                        \
    enum { W = (int) (sizeof(V) / sizeof(T)), NR = 2 * W };               \
    if (K <= 0) {                   /* C = beta C0: the 32-byte call's */ \
        P##_gemm_core(M, N, K, alpha, A, lda, B, ldb, BP, beta, C0, ldc0, \
                      C, ldc);                                            \
        return;                                                           \
    }                                                                     \
    T Bs[2 * FL_GEMM_KC * NR] __attribute__((aligned(64)));               \
    const ptrdiff_t Np = (ptrdiff_t) (N + NR - 1) / NR * NR;              \
    const V va = FL_SPLAT_##P(alpha);                                     \
    const P##_vec64 va64 = FL_SPLAT64_##P(alpha);                         \
    for (int kb = 0; kb < K; kb += FL_GEMM_KC) {                          \
        const int kc = K - kb < FL_GEMM_KC ? K - kb : FL_GEMM_KC;         \
        const T bt = kb == 0 ? beta : 1;                                  \
        const V vb = FL_SPLAT_##P(bt);                                    \
        const P##_vec64 vb64 = FL_SPLAT64_##P(bt);                        \
        if (kb > 0) { C0 = C; ldc0 = ldc; }    /* accumulate from here */ \
        for (int jp = 0; jp < N; jp += 2 * NR) {                          \
            const int nc0 = N - jp < NR ? N - jp : NR;                    \
            const int nc1 = N - jp - NR < NR ? N - jp - NR : NR;          \
            FL_GEMM_PANELS_V4(T)                                          \
            const T *a = A + kb;                                          \
            FL_GEMM_PAIR_V4(T, V, P, FL_GEMM_EPI_AXPBY, FL_GEMM_EPI64_AXPBY) \
        }                                                                 \
    }                                                                     \
}                                                                         \
/* P##_gemm_step_core, 64-byte tile */                                    \
static FL_GEMM_V4_TARGET ptrdiff_t P##_gemm_step_core_v4(                 \
        int M, int N, int K, const T *A, int lda, const T *B, int ldb,    \
        const T *BP, T step, const T *thr, int positive, T *Z, int ldz,   \
        signed char *sg, int ldsg) {                                      \
    enum { W = (int) (sizeof(V) / sizeof(T)), NR = 2 * W };               \
    T Bs[2 * FL_GEMM_KC * NR] __attribute__((aligned(64)));               \
    P##_ivec n0 = {0}, n1 = {0};                                          \
    ptrdiff_t tail = 0;                                                   \
    const V vstep = FL_SPLAT_##P(step);                                   \
    const P##_vec64 vstep64 = FL_SPLAT64_##P(step);                       \
    const int kb = 0, kc = K;                                             \
    const ptrdiff_t Np = 0;                 /* one K panel: kb Np = 0 */  \
    for (int jp = 0; jp < N; jp += 2 * NR) {                              \
        const int nc0 = N - jp < NR ? N - jp : NR;                        \
        const int nc1 = N - jp - NR < NR ? N - jp - NR : NR;              \
        FL_GEMM_PANELS_V4(T)                                              \
        const T *a = A;                                                   \
        if (positive)                                                     \
            FL_GEMM_PAIR_V4(T, V, P, FL_GEMM_EPI_STEP_PST, FL_GEMM_EPI64_STEP_PST) \
        else                                                              \
            FL_GEMM_PAIR_V4(T, V, P, FL_GEMM_EPI_STEP_ST, FL_GEMM_EPI64_STEP_ST) \
    }                                                                     \
    ptrdiff_t nnz = tail;                                                 \
    for (int j = 0; j < W; j++) nnz += (ptrdiff_t) n0[j] + (ptrdiff_t) n1[j]; \
    return nnz;                                                           \
}

FL_DEFINE_GEMM_V4(float, fl_s_vec, fl_s)
FL_DEFINE_GEMM_V4(double, fl_d_vec, fl_d)

/* fl_s_gemm_step_wide_core (_gemm.h), 64-byte tile; a partial panel
   through _gemm.h's epilogue (whose vector counter nw stays zero here) */
static FL_GEMM_V4_TARGET ptrdiff_t fl_s_gemm_step_wide_core_v4(
        int M, int N, int K, const float *A, int lda, const float *B, int ldb,
        const float *BP, double step, const double *lam, int positive,
        double *Zd, int ldzd, float *Z, int ldz) {
    enum { W = 8, NR = 16 };
    float Bs[2 * FL_GEMM_KC * NR] __attribute__((aligned(64)));
    fl_d_ivec nw = {0};
    ptrdiff_t tail = 0;
    const fl_d_vec vstepd = FL_SPLAT_fl_d(step);
    const fl_d_vec64 vstepd64 = FL_SPLAT64_fl_d(step);
    const int kb = 0, kc = K;
    const ptrdiff_t Np = 0;                 /* one K panel: kb Np = 0 */
    for (int jp = 0; jp < N; jp += 2 * NR) {
        const int nc0 = N - jp < NR ? N - jp : NR;
        const int nc1 = N - jp - NR < NR ? N - jp - NR : NR;
        FL_GEMM_PANELS_V4(float)
        const float *a = A;
        if (positive)
            FL_GEMM_PAIR_V4(float, fl_s_vec, fl_s, FL_GEMM_EPI_WSTEP_PST,
                            FL_GEMM_EPI64_WSTEP_PST)
        else
            FL_GEMM_PAIR_V4(float, fl_s_vec, fl_s, FL_GEMM_EPI_WSTEP_ST,
                            FL_GEMM_EPI64_WSTEP_ST)
    }
    ptrdiff_t nnz = tail;
    for (int j = 0; j < 4; j++) nnz += (ptrdiff_t) nw[j];
    return nnz;
}

#else
static inline int fl_gemm_v4_runs(void) { return 0; }
#endif

#endif
