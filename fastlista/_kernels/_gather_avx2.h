/* fastlista: the sparse layers' gather-threshold-compact row, by hand in AVX2. */
#ifndef FASTLISTA_GATHER_AVX2_H
#define FASTLISTA_GATHER_AVX2_H
/* P##_gather_##OP##_compact_v3 computes what P##_gather_##OP##_compact
   (_simd.h) does:

       y = a OP(src + alpha sum_q coef[q] (A[idx[q], :] + delta e_idx[q]), s)

   and y's CSR row (oidx, oval), returning its number of non-zeros. The
   sum is accumulated onto src plus the diagonal terms one FMA a row of A,
   in the order of idx (the portable kernel adds src last: the results
   agree up to rounding); OP is ST(v, s) = v - max(min(v, s), -s) or
   PST(v, s) = max(0, v - s), with the operand orders of fl_?_st and
   fl_?_pst (a NaN propagates), and an entry is a non-zero when it
   compares unequal to 0 (NaN does, -0 does not), as there.

   The diagonal terms alpha coef[q] delta are added to src itself for the
   pass, and src is restored exactly before returning: each term to the
   whole vector of src that holds its entry (the last W entries for the
   last m % W), loaded, saved and stored back, and the saved vectors put
   back last first. The patch is unrolled in the pass's instance for its
   number of rows R, as the pass itself: no branch on k. (Replaying the
   paper problem's float32 layers row by row on Zen 3, a row costs 89 ns
   so, 91-94 ns with patches in loops over k, vector or scalar, and 82 ns
   gathering from a copy of A with the diagonal in place, which would be
   one copy a step size.) A row of more than eight gathers adds the terms
   to y after its first pass instead, and one of fewer than W entries
   patches src entry by entry.

   Why by hand: what the vectorizer makes of the portable kernel on AVX2
   stores one flag byte an entry, packing each vector of comparisons to
   bytes through six shuffles and masks, and the flags are then read back
   8 at a time. Here a vector's comparison goes to a general register as
   a movemask (W bits), ORed at a constant shift into one 64-bit word per
   64 entries, whose set bits are then visited (count trailing zeros): the
   flags never go through memory. With the rows of A in L2, what is left
   is bound by L2's bandwidth (a 32-byte vector of A a cycle on Zen 3).
   On AMD Zen 3 the networks' forward pass at lmbd = 0.8, where this row
   is most of the work, runs with it in 0.79-0.81 (float32) and 0.68-0.71
   (float64) of its time through the portable kernel
   (benchmarks/test_bench_networks.py, "portable gather", two runs).

   Compiled for x86-64-v3 (AVX2, FMA) by a target attribute, on x86-64
   with GCC or Clang, in every build but one capped below that level
   (FASTLISTA_ISA=x86-64-v2 or baseline), the debug and sanitized builds
   included; fl_gather_v3_runs() says whether the running CPU can execute
   it, fl_gather_v3_default() whether the networks may use it unless told
   otherwise: in the optimised build, wherever it runs, unless the
   AVX-512 kernel (_gather_avx512.h, the same values bit for bit) runs
   there too. Against the portable kernel's AVX-512 clone, on AMD Zen 4:
   the networks' forward pass at lmbd = 0.8 runs with it in 0.92-0.93 of
   its time, loss_and_grad in 0.95-0.96 (float32 and float64, interleaved,
   7 rounds), and identically at lmbd = 0.3, where few rows are sparse.
   Elsewhere the _v3 names are the portable kernels and both functions
   return 0. */
#include <stdint.h>
#include "_simd.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) \
    && !(defined(FL_ISA_LEVEL) && FL_ISA_LEVEL < 3)
#include <immintrin.h>
#define FL_V3_TARGET __attribute__((target("avx2,fma,bmi,bmi2")))

/* The running CPU executes AVX2, FMA, BMI1 and BMI2 (all x86-64-v3 CPUs) */
static inline int fl_gather_v3_runs(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
           && __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
}

static inline int fl_gather_v3_default(void) {
#if defined(FL_AVX2_CLONE)
    return fl_gather_v3_runs();
#else
    return 0;
#endif
}

/* The thresholds on vectors (V: __m256 or __m256d, X: ps or pd), with
   the operand orders of fl_?_st and fl_?_pst */
#define FL_V3_ST(X, v, vs, vns, zero) \
    _mm256_sub_##X(v, _mm256_max_##X(_mm256_min_##X(v, vs), vns))
#define FL_V3_PST(X, v, vs, vns, zero) \
    _mm256_max_##X(zero, _mm256_sub_##X(v, vs))

/* y[J : J + W] = a OP(from + sum_{q < R} c_q p_q, s) on one vector (R a
   constant: the loop over q unrolls); the movemask of its non-zeros */
#define FL_V3_VEC(V, X, VOP, R, J, MASK)                                   \
    {                                                                     \
        V v = _mm256_loadu_##X(from + (J));                               \
        _Pragma("GCC unroll 8")                                           \
        for (int q_ = 0; q_ < (R); q_++)                                  \
            v = _mm256_fmadd_##X(cv_[q_], _mm256_loadu_##X(r_[q_] + (J)), v); \
        v = _mm256_mul_##X(va, VOP(X, v, vs, vns, zero));                 \
        _mm256_storeu_##X(y + (J), v);                                    \
        MASK = _mm256_movemask_##X(_mm256_cmp_##X(v, zero, _CMP_NEQ_UQ)); \
    }

/* The CSR entries of the non-zeros flagged in w, entries J0 + [0, 64) */
#define FL_V3_COMPACT(w, J0)                                               \
    while (w) {                                                           \
        int jj = (J0) + __builtin_ctzll(w);                               \
        w &= w - 1;                                                       \
        oidx[nnz] = jj;                                                   \
        oval[nnz] = y[jj];                                                \
        nnz++;                                                            \
    }

/* One pass over the m entries, 64 at a time: the vectors of a whole word
   of flags unroll (their masks shift by constants); the last, partial
   word goes vector by vector, and its last m % W entries take the scalar
   kernel's steps. With patch, src's vectors holding idx[0..R) get the
   diagonal terms dc_ for the pass (see above; LANE(l): the mask of lane
   l). */
#define FL_V3_PASS(T, V, X, W, FMA1, P, OP, VOP, R, LANE)                  \
    {                                                                     \
        V cv_[8], save_[8];                                               \
        T *dst_[8];                                                       \
        _Pragma("GCC unroll 8")                                           \
        for (int q_ = 0; q_ < (R); q_++)                                  \
            cv_[q_] = _mm256_set1_##X(c_[q_]);                            \
        if (patch) {                                                      \
            _Pragma("GCC unroll 8")                                       \
            for (int p_ = 0; p_ < (R); p_++) {                            \
                int j_ = idx[p_], b_ = j_ & ~((W) - 1);                   \
                b_ = b_ + (W) <= m ? b_ : m - (W);                        \
                dst_[p_] = src + b_;                                      \
                save_[p_] = _mm256_loadu_##X(dst_[p_]);                   \
                _mm256_storeu_##X(dst_[p_], _mm256_add_##X(save_[p_],     \
                    _mm256_and_##X(LANE(j_ - b_), _mm256_set1_##X(dc_[p_])))); \
            }                                                             \
        }                                                                 \
        int j0 = 0;                                                       \
        for (; j0 + 64 <= m; j0 += 64) {                                  \
            uint64_t w = 0;                                               \
            _Pragma("GCC unroll 16")                                      \
            for (int v_ = 0; v_ < 64 / (W); v_++) {                       \
                unsigned mask_;                                           \
                FL_V3_VEC(V, X, VOP, R, j0 + v_ * (W), mask_)             \
                w |= (uint64_t) mask_ << (v_ * (W));                      \
            }                                                             \
            FL_V3_COMPACT(w, j0)                                          \
        }                                                                 \
        if (j0 < m) {                                                     \
            uint64_t w = 0;                                               \
            int j = 0, e = m - j0;                                        \
            for (; j + (W) <= e; j += (W)) {                              \
                unsigned mask_;                                           \
                FL_V3_VEC(V, X, VOP, R, j0 + j, mask_)                    \
                w |= (uint64_t) mask_ << j;                               \
            }                                                             \
            for (; j < e; j++) {                                          \
                T v = from[j0 + j];                                       \
                _Pragma("GCC unroll 8")                                   \
                for (int q_ = 0; q_ < (R); q_++)                          \
                    v = FMA1(c_[q_], r_[q_][j0 + j], v);                  \
                v = a * P##_##OP(v, s);                                   \
                y[j0 + j] = v;                                            \
                w |= (uint64_t) (v != 0) << j;                            \
            }                                                             \
            FL_V3_COMPACT(w, j0)                                          \
        }                                                                 \
        if (patch) {                                                      \
            _Pragma("GCC unroll 8")                                       \
            for (int p_ = (R) - 1; p_ >= 0; p_--)                         \
                _mm256_storeu_##X(dst_[p_], save_[p_]);                   \
        }                                                                 \
    }

/* As P##_gather_##OP##_compact: eight rows of A a pass, y = from + sum,
   until the last one to eight, which FL_V3_PASS adds and thresholds (a
   row gathering at most eight rows is read and written once). */
#define FL_DEFINE_GATHER_COMPACT_V3(T, V, X, W, FMA1, P, OP, VOP, LANE)    \
static FL_V3_TARGET int P##_gather_##OP##_compact_v3(                     \
        int k, const int *idx, const T *coef, T alpha, T delta,           \
        const T *A, int m, T *src, T *y, T a, T s, int *oidx, T *oval) {  \
    const T *from = src;                                                  \
    const T *r_[8];                                                       \
    T c_[8], dc_[8], ssave_[8];                                           \
    int q = 0, nnz = 0;                                                   \
    const int patch = delta != 0 && k <= 8 && m >= (W);                   \
    const int spatch = delta != 0 && k <= 8 && m < (W);                   \
    V va = _mm256_set1_##X(a), vs = _mm256_set1_##X(s);                  \
    V vns = _mm256_set1_##X(-s), zero = _mm256_setzero_##X();             \
    for (;; q += 8) {                                                     \
        FL_TAKE_ROWS(k - q < 8 ? k - q : 8, idx + q, coef + q, m)         \
        if (k - q <= 8)                                                   \
            break;                                                        \
        int j = 0;                                                        \
        for (; j + (W) <= m; j += (W)) {                                  \
            V v = _mm256_loadu_##X(from + j);                             \
            for (int q_ = 0; q_ < 8; q_++)                                \
                v = _mm256_fmadd_##X(_mm256_set1_##X(c_[q_]),             \
                                     _mm256_loadu_##X(r_[q_] + j), v);    \
            _mm256_storeu_##X(y + j, v);                                  \
        }                                                                 \
        for (; j < m; j++) {                                              \
            T v = from[j];                                                \
            for (int q_ = 0; q_ < 8; q_++)                                \
                v = FMA1(c_[q_], r_[q_][j], v);                           \
            y[j] = v;                                                     \
        }                                                                 \
        if (q == 0 && delta != 0)                                         \
            for (int p_ = 0; p_ < k; p_++)                                \
                y[idx[p_]] += alpha * coef[p_] * delta;                   \
        from = y;                                                         \
    }                                                                     \
    for (int p_ = 0; p_ < 8; p_++)                                        \
        dc_[p_] = c_[p_] * delta;                                         \
    if (spatch)                                                           \
        for (int p_ = 0; p_ < k; p_++) {                                  \
            ssave_[p_] = src[idx[p_]];                                    \
            src[idx[p_]] += dc_[p_];                                      \
        }                                                                 \
    switch (k - q) {                                                      \
    case 0: FL_V3_PASS(T, V, X, W, FMA1, P, OP, VOP, 0, LANE) break;      \
    case 1: FL_V3_PASS(T, V, X, W, FMA1, P, OP, VOP, 1, LANE) break;      \
    case 2: FL_V3_PASS(T, V, X, W, FMA1, P, OP, VOP, 2, LANE) break;      \
    case 3: FL_V3_PASS(T, V, X, W, FMA1, P, OP, VOP, 3, LANE) break;      \
    case 4: FL_V3_PASS(T, V, X, W, FMA1, P, OP, VOP, 4, LANE) break;      \
    case 5: FL_V3_PASS(T, V, X, W, FMA1, P, OP, VOP, 5, LANE) break;      \
    case 6: FL_V3_PASS(T, V, X, W, FMA1, P, OP, VOP, 6, LANE) break;      \
    case 7: FL_V3_PASS(T, V, X, W, FMA1, P, OP, VOP, 7, LANE) break;      \
    default: FL_V3_PASS(T, V, X, W, FMA1, P, OP, VOP, 8, LANE) break;     \
    }                                                                     \
    if (spatch)                                                           \
        for (int p_ = k - 1; p_ >= 0; p_--)                               \
            src[idx[p_]] = ssave_[p_];                                    \
    return nnz;                                                           \
}

/* The mask of lane l of a vector (all bits set there, none elsewhere) */
#define FL_V3_LANE_PS(l) _mm256_castsi256_ps(_mm256_cmpeq_epi32(          \
    _mm256_set1_epi32(l), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)))
#define FL_V3_LANE_PD(l) _mm256_castsi256_pd(_mm256_cmpeq_epi64(          \
    _mm256_set1_epi64x(l), _mm256_setr_epi64x(0, 1, 2, 3)))

/* save_ and dst_ are written and read under the same patch flag, which
   GCC does not follow through the pass */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
FL_DEFINE_GATHER_COMPACT_V3(float, __m256, ps, 8, __builtin_fmaf, fl_s, st, FL_V3_ST,
                            FL_V3_LANE_PS)
FL_DEFINE_GATHER_COMPACT_V3(float, __m256, ps, 8, __builtin_fmaf, fl_s, pst, FL_V3_PST,
                            FL_V3_LANE_PS)
FL_DEFINE_GATHER_COMPACT_V3(double, __m256d, pd, 4, __builtin_fma, fl_d, st, FL_V3_ST,
                            FL_V3_LANE_PD)
FL_DEFINE_GATHER_COMPACT_V3(double, __m256d, pd, 4, __builtin_fma, fl_d, pst, FL_V3_PST,
                            FL_V3_LANE_PD)
#pragma GCC diagnostic pop
#else   /* no AVX2 code in this build: the portable kernels */
static inline int fl_gather_v3_runs(void) { return 0; }
static inline int fl_gather_v3_default(void) { return 0; }
#define fl_s_gather_st_compact_v3 fl_s_gather_st_compact
#define fl_s_gather_pst_compact_v3 fl_s_gather_pst_compact
#define fl_d_gather_st_compact_v3 fl_d_gather_st_compact
#define fl_d_gather_pst_compact_v3 fl_d_gather_pst_compact
#endif

#endif
