/* fastlista: the fused step's epilogue of _gemm.h's tile in AVX2. */
#ifndef FASTLISTA_GEMM_AVX2_H
#define FASTLISTA_GEMM_AVX2_H
/* P##_gemm_step_core_v3 computes what P##_gemm_step_core (_gemm.h)
   computes, and fl_s_gemm_step_wide_core_v3 what fl_s_gemm_step_wide_core
   computes, with the same tile and the same operations in the same order,
   the epilogue of a full panel written in AVX2 intrinsics: the same values,
   bit for bit (tests/test_gemm.py).

   Why: GNU C's vector extensions have no min, max or narrowing, and
   _gemm.h's epilogue spells the thresholds as selects (a comparison and a
   blend each), counts the non-zeros in two vector counters (beside the
   tile's 15 vector registers, of AVX2's 16) and narrows the signs by byte
   shuffles. Here: the thresholds by min and max (their second operand on
   NaN, as the selects), the count by a popcount of the comparisons'
   masks, the signs narrowed by two packs and two lane permutations. In a
   C harness (u = r W^T on 32-row blocks, 960 x 64 x 256, one thread, the
   x86-64-v3 clone against this; Intel Xeon, a second process loading the
   other core), float32: the step 1.19-1.26 x the plain product's time ->
   1.10-1.16 x, with the signs 1.28-1.38 x -> 1.14-1.18 x; float64 within
   the noise (1.15-1.25 x -> 1.18-1.23 x; with the signs 1.22-1.31 x ->
   1.22-1.25 x).

   Compiled for AVX2, FMA and POPCNT by a target attribute, on x86-64 with
   GCC or Clang, in every build not capped below x86-64-v3 (FASTLISTA_ISA);
   fl_gemm_v3_runs() says whether the running CPU executes it, and
   fl_gemm_v3_epilogue (1; 0 in a module that the tests set so) whether a
   level-3 step takes it there. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) \
    && !(defined(FL_ISA_LEVEL) && FL_ISA_LEVEL < 3) && defined(FL_GEMM_VECTOR_EXTENSIONS)
#define FL_GEMM_HAVE_V3 1
#define FL_GEMM_V3_TARGET __attribute__((target("avx2,fma,popcnt")))
#include <immintrin.h>

/* The running CPU executes AVX2, FMA and POPCNT */
static inline int fl_gemm_v3_runs(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
        && __builtin_cpu_supports("popcnt");
}
static int fl_gemm_v3_epilogue = 1;

/* ST(v, s) = v - max(min(v, s), -s) and PST(v, s) = max(0, v - s), as in
   _gemm_avx512.h */
#define FL_GEMM32_ST(X, v, vs)                                             \
    _mm256_sub_##X(v, _mm256_max_##X(_mm256_min_##X(v, vs),              \
                                     _mm256_sub_##X(_mm256_setzero_##X(), vs)))
#define FL_GEMM32_PST(X, v, vs)                                            \
    _mm256_max_##X(_mm256_setzero_##X(), _mm256_sub_##X(v, vs))

/* The signs of a row's two vectors, one byte a lane at g, from the masks
   (all ones where true) of the positive lanes (p0, p1) and of the
   negative or NaN ones (n0, n1): as integer lanes n - p is -1, 1 or 0;
   then narrowed to bytes, each pack working within 16-byte lanes, the
   permutations putting the halves back in order. */
#define FL_GEMM32_SIGNS_fl_s(g, p0, n0, p1, n1)                            \
    {                                                                     \
        __m256i s0_ = _mm256_sub_epi32(_mm256_castps_si256(n0),            \
                                       _mm256_castps_si256(p0));          \
        __m256i s1_ = _mm256_sub_epi32(_mm256_castps_si256(n1),            \
                                       _mm256_castps_si256(p1));          \
        /* 16-bit lanes: s0 0-3, s1 0-3 | s0 4-7, s1 4-7 -> s0 | s1 */    \
        __m256i h_ = _mm256_permute4x64_epi64(_mm256_packs_epi32(s0_, s1_), \
                                              0xD8);                      \
        /* bytes: s0 s0 | s1 s1 -> s0 s1 in the low 16 bytes */           \
        __m256i b_ = _mm256_permute4x64_epi64(_mm256_packs_epi16(h_, h_), \
                                              0x08);                      \
        _mm_storeu_si128((__m128i *) (g), _mm256_castsi256_si128(b_));    \
    }
#define FL_GEMM32_SIGNS_fl_d(g, p0, n0, p1, n1)                            \
    {                                                                     \
        const __m256i low_ = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);  \
        __m256i s0_ = _mm256_sub_epi64(_mm256_castpd_si256(n0),            \
                                       _mm256_castpd_si256(p0));          \
        __m256i s1_ = _mm256_sub_epi64(_mm256_castpd_si256(n1),            \
                                       _mm256_castpd_si256(p1));          \
        /* the low 32 bits of each 64-bit lane: s0 0-3 | s1 0-3 */        \
        __m256i t_ = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(s0_, low_), \
                                        _mm256_permutevar8x32_epi32(s1_, low_), \
                                        0xF0);                            \
        __m256i h_ = _mm256_packs_epi32(t_, t_);                          \
        __m256i b_ = _mm256_packs_epi16(h_, h_);                          \
        /* bytes 0-3 of each 16-byte lane, side by side */                \
        b_ = _mm256_permutevar8x32_epi32(b_, _mm256_setr_epi32(0, 4, 0, 0, \
                                                               0, 0, 0, 0)); \
        _mm_storel_epi64((__m128i *) (g), _mm256_castsi256_si128(b_));    \
    }

/* The fused step's epilogue on row i + r's two vectors acc0, acc1: on a
   full panel o = OP32(z - step acc, thr[i + r]) stored to z, the
   non-zeros (positive, or negative or NaN: 1, -1 as signs) counted by a
   popcount into tail, the signs stored when sg is given; a partial panel
   through _gemm.h's epilogue (its scalar path). VT: the intrinsics'
   vector type, X their suffix. */
#define FL_GEMM_EPI32_STEP(T, V, P, X, VT, r, acc0, acc1, OP32, VOP, OP)   \
    {                                                                     \
        if (nc == NR) {                                                   \
            T *z = Z + (ptrdiff_t) (i + r) * ldz + j0;                    \
            V z0, z1;                                                     \
            memcpy(&z0, z, sizeof z0);                                    \
            memcpy(&z1, z + W, sizeof z1);                                \
            const VT vs = _mm256_set1_##X(thr[i + r]);                    \
            const VT o0 = OP32(X, (VT) (z0 - vstep * (acc0)), vs);        \
            const VT o1 = OP32(X, (VT) (z1 - vstep * (acc1)), vs);        \
            _mm256_storeu_##X(z, o0);                                     \
            _mm256_storeu_##X(z + W, o1);                                 \
            const VT zero_ = _mm256_setzero_##X();                        \
            const VT p0_ = _mm256_cmp_##X(o0, zero_, _CMP_GT_OQ);         \
            const VT n0_ = _mm256_cmp_##X(o0, zero_, _CMP_NGE_UQ);        \
            const VT p1_ = _mm256_cmp_##X(o1, zero_, _CMP_GT_OQ);         \
            const VT n1_ = _mm256_cmp_##X(o1, zero_, _CMP_NGE_UQ);        \
            tail += __builtin_popcount(                                   \
                (unsigned) _mm256_movemask_##X(_mm256_or_##X(p0_, n0_))   \
                | (unsigned) _mm256_movemask_##X(_mm256_or_##X(p1_, n1_)) << W); \
            if (sg != NULL)                                               \
                FL_GEMM32_SIGNS_##P(sg + (ptrdiff_t) (i + r) * ldsg + j0, \
                                    p0_, n0_, p1_, n1_)                   \
        } else {                                                          \
            FL_GEMM_EPI_STEP(T, V, P, r, acc0, acc1, P##_ivec, VOP, OP)   \
        }                                                                 \
    }
#define FL_GEMM_EPI32_STEP_fl_s(r, acc0, acc1, OP32, VOP, OP)              \
    FL_GEMM_EPI32_STEP(float, fl_s_vec, fl_s, ps, __m256, r, acc0, acc1,   \
                       OP32, VOP, OP)
#define FL_GEMM_EPI32_STEP_fl_d(r, acc0, acc1, OP32, VOP, OP)              \
    FL_GEMM_EPI32_STEP(double, fl_d_vec, fl_d, pd, __m256d, r, acc0, acc1, \
                       OP32, VOP, OP)
#define FL_GEMM_EPI32_STEP_ST(T, V, P, r, acc0, acc1)                      \
    FL_GEMM_EPI32_STEP_##P(r, acc0, acc1, FL_GEMM32_ST, FL_VST, P##_st)
#define FL_GEMM_EPI32_STEP_PST(T, V, P, r, acc0, acc1)                     \
    FL_GEMM_EPI32_STEP_##P(r, acc0, acc1, FL_GEMM32_PST, FL_VPST, P##_pst)

#define FL_DEFINE_GEMM_V3(T, V, P)                                         \
/* P##_gemm_step_core with the epilogue above (its vector counters, used \
   by _gemm.h's epilogue on full panels only, stay zero) */              \
static FL_GEMM_V3_TARGET ptrdiff_t P##_gemm_step_core_v3(                 \
        int M, int N, int K, const T *A, int lda, const T *B, int ldb,    \
        const T *BP, T step, const T *thr, int positive, T *Z, int ldz,   \
        signed char *sg, int ldsg)                                        \
    FL_GEMM_STEP_BODY(T, V, P, FL_GEMM_EPI32_STEP_ST, FL_GEMM_EPI32_STEP_PST)

FL_DEFINE_GEMM_V3(float, fl_s_vec, fl_s)
FL_DEFINE_GEMM_V3(double, fl_d_vec, fl_d)

/* The float32 step with z in double (_gemm.h's FL_GEMM_EPI_WSTEP) on a
   full panel, in AVX2: each 8-float vector of row i + r widened to two
   vectors of 4 doubles (exactly), o = OP32(Zd - step acc, step lam[i + r])
   stored to Zd and, rounded to float, to Z; the non-zeros (o != 0, NaN
   included: an unordered-or-unequal comparison) counted by one popcount
   of the four comparisons' masks into tail. A partial panel through
   _gemm.h's epilogue. */
#define FL_GEMM32_WIDE_QUARTER(q, d, OP32, mask)                           \
    {                                                                     \
        fl_d_vec zq_;                                                     \
        memcpy(&zq_, zd + 4 * (q), sizeof zq_);                           \
        const __m256d o_ = OP32(pd, (__m256d) (zq_ - vstepd * (fl_d_vec) (d)), vs); \
        _mm256_storeu_pd(zd + 4 * (q), o_);                               \
        _mm_storeu_ps(z + 4 * (q), _mm256_cvtpd_ps(o_));                  \
        mask |= (unsigned) _mm256_movemask_pd(                            \
            _mm256_cmp_pd(o_, _mm256_setzero_pd(), _CMP_NEQ_UQ)) << 4 * (q); \
    }
#define FL_GEMM_EPI32_WSTEP(T, V, P, r, acc0, acc1, OP32, VOP, OP)         \
    {                                                                     \
        if (nc == NR) {                                                   \
            double *zd = Zd + (ptrdiff_t) (i + r) * ldzd + j0;            \
            float *z = Z + (ptrdiff_t) (i + r) * ldz + j0;                \
            const __m256d vs = _mm256_set1_pd(step * lam[i + r]);         \
            const __m256 a0_ = (__m256) (acc0), a1_ = (__m256) (acc1);    \
            unsigned m_ = 0;                                              \
            FL_GEMM32_WIDE_QUARTER(0, _mm256_cvtps_pd(_mm256_castps256_ps128(a0_)), \
                                   OP32, m_)                              \
            FL_GEMM32_WIDE_QUARTER(1, _mm256_cvtps_pd(_mm256_extractf128_ps(a0_, 1)), \
                                   OP32, m_)                              \
            FL_GEMM32_WIDE_QUARTER(2, _mm256_cvtps_pd(_mm256_castps256_ps128(a1_)), \
                                   OP32, m_)                              \
            FL_GEMM32_WIDE_QUARTER(3, _mm256_cvtps_pd(_mm256_extractf128_ps(a1_, 1)), \
                                   OP32, m_)                              \
            tail += __builtin_popcount(m_);                               \
        } else {                                                          \
            FL_GEMM_EPI_WSTEP(T, V, P, r, acc0, acc1, VOP, OP)            \
        }                                                                 \
    }
#define FL_GEMM_EPI32_WSTEP_ST(T, V, P, r, acc0, acc1)                     \
    FL_GEMM_EPI32_WSTEP(T, V, P, r, acc0, acc1, FL_GEMM32_ST, FL_VST, fl_d_st)
#define FL_GEMM_EPI32_WSTEP_PST(T, V, P, r, acc0, acc1)                    \
    FL_GEMM_EPI32_WSTEP(T, V, P, r, acc0, acc1, FL_GEMM32_PST, FL_VPST, fl_d_pst)

/* fl_s_gemm_step_wide_core with the epilogue above (its vector counter,
   used by _gemm.h's epilogue on full panels only, stays zero) */
static FL_GEMM_V3_TARGET ptrdiff_t fl_s_gemm_step_wide_core_v3(
        int M, int N, int K, const float *A, int lda, const float *B, int ldb,
        const float *BP, double step, const double *lam, int positive,
        double *Zd, int ldzd, float *Z, int ldz)
    FL_GEMM_WSTEP_BODY(FL_GEMM_EPI32_WSTEP_ST, FL_GEMM_EPI32_WSTEP_PST)

#else
static inline int fl_gemm_v3_runs(void) { return 0; }
static int fl_gemm_v3_epilogue = 0;
#endif

#endif
