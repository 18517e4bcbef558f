/* fastlista: the sparse layers' gather-threshold-compact row, by hand in AVX-512. */
#ifndef FASTLISTA_GATHER_AVX512_H
#define FASTLISTA_GATHER_AVX512_H
/* P##_gather_##OP##_compact_v4 computes what P##_gather_##OP##_compact_v3
   (_gather_avx2.h) does, with the same operations in the same order (its
   results are those of the AVX2 kernel, bit for bit):

       y = a OP(src + alpha sum_q coef[q] (A[idx[q], :] + delta e_idx[q]), s)

   and y's CSR row (oidx, oval), returning its number of non-zeros: the
   sum accumulated onto src plus the diagonal terms one FMA a row of A, in
   the order of idx; OP is ST(v, s) = v - max(min(v, s), -s) or PST(v, s)
   = max(0, v - s) (a NaN propagates), and an entry is a non-zero when it
   compares unequal to 0 (NaN does, -0 does not).

   What AVX-512 changes, beside vectors of 64 bytes (16 floats, 8
   doubles: one cache line, half the instructions of AVX2 a row):

   - a vector's comparison lands in a mask register, moved to a general
     register and ORed at a constant shift into one 64-bit word of flags
     per 64 entries, whose set bits are then visited (count trailing
     zeros), as in the AVX2 kernel but without its movemask;
   - the last m % W entries of a row are loaded and stored under a mask
     (masked lanes are never read or written, so never fault), where the
     AVX2 kernel takes scalar steps;
   - the diagonal terms patch the whole vector of src that holds their
     entry (the last W entries for the last m % W, when m >= W; under the
     mask of the row's m entries when m < W), saved and restored last
     first, exactly, as the AVX2 kernel does with m >= W.

   A row of more than eight gathers adds the terms to y after its first
   pass instead. On an Intel Xeon with AVX-512 (two FMA units a core) the
   paper problem's SLISTA forward at lmbd = 0.8 runs through it in
   0.82-0.88 (float64) and 0.86-0.90 (float32) of its time through the
   AVX2 kernel (benchmarks/test_bench_networks.py, "AVX2 gather", two
   runs).

   Compiled for AVX-512F (with AVX2, FMA, BMI1 and BMI2) by a target
   attribute, on x86-64 with GCC or Clang, in every build not capped
   below x86-64-v4 (FASTLISTA_ISA), the debug and sanitized builds
   included; fl_gather_v4_runs() says whether the running CPU can execute
   it, fl_gather_v4_default() whether the networks use it unless told
   otherwise: in the optimised build, wherever it runs, for dictionaries
   of at least 128 atoms (fastlista/_networks/_execution.py: below that,
   its fixed cost a row, the diagonal terms' stores and loads of whole
   64-byte vectors, outweighs its wider vectors, and the AVX2 kernel
   runs). Elsewhere the _v4 names are the _v3 ones and both functions
   return 0. */
#include <stdint.h>
#include "_gather_avx2.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) \
    && !(defined(FL_ISA_LEVEL) && FL_ISA_LEVEL < 4)
#include <immintrin.h>
#define FL_V4_TARGET __attribute__((target("avx512f,avx2,fma,bmi,bmi2")))

/* The running CPU executes AVX-512F, AVX2, FMA, BMI1 and BMI2 */
static inline int fl_gather_v4_runs(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && fl_gather_v3_runs();
}

static inline int fl_gather_v4_default(void) {
#if defined(FL_AVX2_CLONE)
    return fl_gather_v4_runs();
#else
    return 0;
#endif
}

/* The thresholds on vectors (V: __m512 or __m512d, X: ps or pd), with
   the operand orders of fl_?_st and fl_?_pst */
#define FL_V4_ST(X, v, vs, vns, zero) \
    _mm512_sub_##X(v, _mm512_max_##X(_mm512_min_##X(v, vs), vns))
#define FL_V4_PST(X, v, vs, vns, zero) \
    _mm512_max_##X(zero, _mm512_sub_##X(v, vs))

/* Loads and stores of a whole vector, and under the mask of the row's
   last m % W entries (tail) */
#define FL_V4_LOAD(X, p) _mm512_loadu_##X(p)
#define FL_V4_STORE(X, p, v) _mm512_storeu_##X(p, v)
#define FL_V4_LOAD_TAIL(X, p) _mm512_maskz_loadu_##X(tail, p)
#define FL_V4_STORE_TAIL(X, p, v) _mm512_mask_storeu_##X(p, tail, v)

/* y[J : J + W] = a OP(from + sum_{q < R} c_q p_q, s) on one vector (R a
   constant: the loop over q unrolls), loaded and stored by LD and ST;
   the mask of its non-zeros in MASK */
#define FL_V4_VEC(V, X, VOP, R, J, MASK, LD, ST)                           \
    {                                                                     \
        V v = LD(X, from + (J));                                          \
        _Pragma("GCC unroll 8")                                           \
        for (int q_ = 0; q_ < (R); q_++)                                  \
            v = _mm512_fmadd_##X(cv_[q_], LD(X, r_[q_] + (J)), v);        \
        v = _mm512_mul_##X(va, VOP(X, v, vs, vns, zero));                 \
        ST(X, y + (J), v);                                                \
        MASK = _mm512_cmp_##X##_mask(v, zero, _CMP_NEQ_UQ);               \
    }

/* The diagonal term dc_[p] added to the vector of src at dst_[p] that
   holds entry j = idx[p] (saved in save_[p]): a whole vector when
   m >= W, the row's m entries under a mask when m < W */
#define FL_V4_PATCH(X, MT, W, p)                                           \
    {                                                                     \
        int j_ = idx[p], b_ = j_ & ~((W) - 1);                            \
        MT lane_ = (MT) (1u << (j_ & ((W) - 1)));                         \
        if (m >= (W)) {                                                   \
            if (b_ + (W) > m) {                                           \
                lane_ = (MT) (1u << (j_ - (m - (W))));                    \
                b_ = m - (W);                                             \
            }                                                             \
            dst_[p] = src + b_;                                           \
            save_[p] = _mm512_loadu_##X(dst_[p]);                         \
            _mm512_storeu_##X(dst_[p], _mm512_mask_add_##X(               \
                save_[p], lane_, save_[p], _mm512_set1_##X(dc_[p])));      \
        } else {                                                          \
            dst_[p] = src;                                                \
            save_[p] = _mm512_maskz_loadu_##X(tail, src);                 \
            _mm512_mask_storeu_##X(src, tail, _mm512_mask_add_##X(        \
                save_[p], lane_, save_[p], _mm512_set1_##X(dc_[p])));      \
        }                                                                 \
    }

/* One pass over the m entries, 64 at a time: the vectors of a whole word
   of flags unroll (their masks shift by constants); the last, partial
   word goes vector by vector, its last m % W entries under the tail
   mask; FL_V3_COMPACT (_gather_avx2.h) visits the flags' set bits.
   With patch, src's vectors holding idx[0..R) get the diagonal terms dc_
   for the pass. */
#define FL_V4_PASS(V, X, W, MT, VOP, R)                                    \
    {                                                                     \
        V cv_[8], save_[8];                                               \
        T_ *dst_[8];                                                      \
        _Pragma("GCC unroll 8")                                           \
        for (int q_ = 0; q_ < (R); q_++)                                  \
            cv_[q_] = _mm512_set1_##X(c_[q_]);                            \
        if (patch) {                                                      \
            _Pragma("GCC unroll 8")                                       \
            for (int p_ = 0; p_ < (R); p_++)                              \
                FL_V4_PATCH(X, MT, W, p_)                                 \
        }                                                                 \
        int j0 = 0;                                                       \
        for (; j0 + 64 <= m; j0 += 64) {                                  \
            uint64_t w = 0;                                               \
            _Pragma("GCC unroll 8")                                       \
            for (int v_ = 0; v_ < 64 / (W); v_++) {                       \
                MT mask_;                                                 \
                FL_V4_VEC(V, X, VOP, R, j0 + v_ * (W), mask_, FL_V4_LOAD, \
                          FL_V4_STORE)                                      \
                w |= (uint64_t) mask_ << (v_ * (W));                      \
            }                                                             \
            FL_V3_COMPACT(w, j0)                                          \
        }                                                                 \
        if (j0 < m) {                                                     \
            uint64_t w = 0;                                               \
            int j = 0, e = m - j0;                                        \
            for (; j + (W) <= e; j += (W)) {                              \
                MT mask_;                                                 \
                FL_V4_VEC(V, X, VOP, R, j0 + j, mask_, FL_V4_LOAD,       \
                          FL_V4_STORE)                                    \
                w |= (uint64_t) mask_ << j;                               \
            }                                                             \
            if (j < e) {                                                  \
                MT mask_;                                                 \
                FL_V4_VEC(V, X, VOP, R, j0 + j, mask_, FL_V4_LOAD_TAIL,   \
                          FL_V4_STORE_TAIL)                                  \
                w |= (uint64_t) (mask_ & tail) << j;                      \
            }                                                             \
            FL_V3_COMPACT(w, j0)                                          \
        }                                                                 \
        if (patch) {                                                      \
            _Pragma("GCC unroll 8")                                       \
            for (int p_ = (R) - 1; p_ >= 0; p_--) {                       \
                if (m >= (W))                                             \
                    _mm512_storeu_##X(dst_[p_], save_[p_]);               \
                else                                                      \
                    _mm512_mask_storeu_##X(dst_[p_], tail, save_[p_]);    \
            }                                                             \
        }                                                                 \
    }

/* As P##_gather_##OP##_compact_v3: eight rows of A a pass, y = from +
   sum, until the last one to eight, which FL_V4_PASS adds and thresholds
   (a row gathering at most eight rows is read and written once). */
#define FL_DEFINE_GATHER_COMPACT_V4(T, V, X, W, MT, P, OP, VOP)            \
static FL_V4_TARGET int P##_gather_##OP##_compact_v4(                     \
        int k, const int *idx, const T *coef, T alpha, T delta,           \
        const T *A, int m, T *src, T *y, T a, T s, int *oidx, T *oval) {  \
    typedef T T_;                                                         \
    const T *from = src;                                                  \
    const T *r_[8];                                                       \
    T c_[8], dc_[8];                                                      \
    int q = 0, nnz = 0;                                                   \
    const int patch = delta != 0 && k <= 8;                               \
    const MT tail = (MT) ((1u << (m % (W))) - 1);                         \
    V va = _mm512_set1_##X(a), vs = _mm512_set1_##X(s);                  \
    V vns = _mm512_set1_##X(-s), zero = _mm512_setzero_##X();             \
    for (;; q += 8) {                                                     \
        FL_TAKE_ROWS(k - q < 8 ? k - q : 8, idx + q, coef + q, m)         \
        if (k - q <= 8)                                                   \
            break;                                                        \
        int j = 0;                                                        \
        for (; j + (W) <= m; j += (W)) {                                  \
            V v = _mm512_loadu_##X(from + j);                             \
            for (int q_ = 0; q_ < 8; q_++)                                \
                v = _mm512_fmadd_##X(_mm512_set1_##X(c_[q_]),             \
                                     _mm512_loadu_##X(r_[q_] + j), v);    \
            _mm512_storeu_##X(y + j, v);                                  \
        }                                                                 \
        if (j < m) {                                                      \
            V v = _mm512_maskz_loadu_##X(tail, from + j);                 \
            for (int q_ = 0; q_ < 8; q_++)                                \
                v = _mm512_fmadd_##X(_mm512_set1_##X(c_[q_]),             \
                                     _mm512_maskz_loadu_##X(tail, r_[q_] + j), v); \
            _mm512_mask_storeu_##X(y + j, tail, v);                       \
        }                                                                 \
        if (q == 0 && delta != 0)                                         \
            for (int p_ = 0; p_ < k; p_++)                                \
                y[idx[p_]] += alpha * coef[p_] * delta;                   \
        from = y;                                                         \
    }                                                                     \
    for (int p_ = 0; p_ < 8; p_++)                                        \
        dc_[p_] = c_[p_] * delta;                                         \
    switch (k - q) {                                                      \
    case 0: FL_V4_PASS(V, X, W, MT, VOP, 0) break;                        \
    case 1: FL_V4_PASS(V, X, W, MT, VOP, 1) break;                        \
    case 2: FL_V4_PASS(V, X, W, MT, VOP, 2) break;                        \
    case 3: FL_V4_PASS(V, X, W, MT, VOP, 3) break;                        \
    case 4: FL_V4_PASS(V, X, W, MT, VOP, 4) break;                        \
    case 5: FL_V4_PASS(V, X, W, MT, VOP, 5) break;                        \
    case 6: FL_V4_PASS(V, X, W, MT, VOP, 6) break;                        \
    case 7: FL_V4_PASS(V, X, W, MT, VOP, 7) break;                        \
    default: FL_V4_PASS(V, X, W, MT, VOP, 8) break;                       \
    }                                                                     \
    return nnz;                                                           \
}

/* save_ and dst_ are written and read under the same patch flag, which
   GCC does not follow through the pass */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
FL_DEFINE_GATHER_COMPACT_V4(float, __m512, ps, 16, __mmask16, fl_s, st, FL_V4_ST)
FL_DEFINE_GATHER_COMPACT_V4(float, __m512, ps, 16, __mmask16, fl_s, pst, FL_V4_PST)
FL_DEFINE_GATHER_COMPACT_V4(double, __m512d, pd, 8, __mmask8, fl_d, st, FL_V4_ST)
FL_DEFINE_GATHER_COMPACT_V4(double, __m512d, pd, 8, __mmask8, fl_d, pst, FL_V4_PST)
#pragma GCC diagnostic pop
#else   /* no AVX-512 code in this build: the AVX2 (or portable) kernels */
static inline int fl_gather_v4_runs(void) { return 0; }
static inline int fl_gather_v4_default(void) { return 0; }
#define fl_s_gather_st_compact_v4 fl_s_gather_st_compact_v3
#define fl_s_gather_pst_compact_v4 fl_s_gather_pst_compact_v3
#define fl_d_gather_st_compact_v4 fl_d_gather_st_compact_v3
#define fl_d_gather_pst_compact_v4 fl_d_gather_pst_compact_v3
#endif

#endif
