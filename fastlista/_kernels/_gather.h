/* fastlista: the sparse layers' gather-threshold-compact row, by kernel. */
#ifndef FASTLISTA_GATHER_H
#define FASTLISTA_GATHER_H
/* P##_gather_row(level, positive, ...) computes

       y = a OP(src + alpha sum_q coef[q] (A[idx[q], :] + delta e_idx[q]), s)

   and y's CSR row (oidx, oval), returning its number of non-zeros (OP: ST,
   or PST with positive), through the kernel written for the x86-64 level
   `level`: FL_GATHER_AVX512 (_gather_avx512.h), FL_GATHER_AVX2
   (_gather_avx2.h), else the portable one (_simd.h). AVX-512 and AVX2
   give the same bits; the portable kernel adds src last (the same values
   up to rounding). Call a level only where the running CPU executes it
   (fl_gather_v4_runs, fl_gather_v3_runs). */
#include "_gather_avx512.h"

enum { FL_GATHER_PORTABLE = 0, FL_GATHER_AVX2 = 3, FL_GATHER_AVX512 = 4 };

#define FL_DEFINE_GATHER_ROW(T, P)                                         \
static inline int P##_gather_row(int level, int positive, int k,          \
        const int *idx, const T *coef, T alpha, T delta, const T *A,      \
        int m, T *src, T *y, T a, T s, int *oidx, T *oval) {             \
    if (level == FL_GATHER_AVX512)                                        \
        return positive                                                   \
            ? P##_gather_pst_compact_v4(k, idx, coef, alpha, delta, A, m, src, y, a, s, oidx, oval) \
            : P##_gather_st_compact_v4(k, idx, coef, alpha, delta, A, m, src, y, a, s, oidx, oval); \
    if (level == FL_GATHER_AVX2)                                          \
        return positive                                                   \
            ? P##_gather_pst_compact_v3(k, idx, coef, alpha, delta, A, m, src, y, a, s, oidx, oval) \
            : P##_gather_st_compact_v3(k, idx, coef, alpha, delta, A, m, src, y, a, s, oidx, oval); \
    return positive                                                       \
        ? P##_gather_pst_compact(k, idx, coef, alpha, delta, A, m, src, y, a, s, oidx, oval) \
        : P##_gather_st_compact(k, idx, coef, alpha, delta, A, m, src, y, a, s, oidx, oval); \
}
FL_DEFINE_GATHER_ROW(double, fl_d)
FL_DEFINE_GATHER_ROW(float, fl_s)

#endif
