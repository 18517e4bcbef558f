/* fastlista: SIMD row micro-kernels shared by the Cython kernels. */
#ifndef FASTLISTA_SIMD_H
#define FASTLISTA_SIMD_H
#include <Python.h>
/* Row micro-kernels of the hot loops, in C so that they can be compiled
   for the widest vector unit of the running CPU: the extension is built
   for the baseline ISA (SSE2 on x86-64: two doubles a vector), and
   target_clones makes GCC emit x86-64-v4 (AVX-512 with its byte and word
   instructions), x86-64-v3 (AVX2, FMA) and baseline versions (Clang and
   GCC before 12: AVX-512F, AVX2 and baseline), chosen once at load time
   (an ifunc: glibc on x86-64 only). Plain C, compiled once, elsewhere
   and in the debug build (FL_NO_CLONES), whose tests then run the
   baseline code. No -ffast-math: ST(u, s) is exactly 0 iff |u| <= s
   and NaN propagates.

   ST(v, s) = v - clip(v, -s, s) is written with two selects (min/max),
   and non-zeros are detected on the bit pattern with the sign shifted
   out (an integer OR or count, which vectorizes where a floating-point
   compare-and-count would not; memcpy is the aliasing-safe bit cast). */
#include <stdint.h>
#include <string.h>
/* FL_ISA_LEVEL (setup.py's FASTLISTA_ISA) caps the widest clone at that
   x86-64 level: 3 compiles the AVX2 + FMA and baseline clones only, so
   that an AVX-512 machine runs the code of an AVX2 one; 2 SSE4.2 and
   baseline; 0 no clones (as FL_NO_CLONES); undefined or 4 the three. */
#if defined(FL_ISA_LEVEL) && FL_ISA_LEVEL == 0 && !defined(FL_NO_CLONES)
#  define FL_NO_CLONES 1
#endif
#if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) \
    && defined(__GNUC__) && defined(__has_attribute) && !defined(FL_NO_CLONES)
#  if __has_attribute(target_clones) && !defined(__clang__) && __GNUC__ >= 12
     /* microarchitecture levels as clones: GCC 12 and later */
#    if defined(FL_ISA_LEVEL) && FL_ISA_LEVEL == 3
#      define FL_SIMD __attribute__((target_clones("arch=x86-64-v3", "default")))
#      define FL_AVX2_CLONE 1
#    elif defined(FL_ISA_LEVEL) && FL_ISA_LEVEL == 2
#      define FL_SIMD __attribute__((target_clones("arch=x86-64-v2", "default")))
#    else
#      define FL_SIMD __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", \
                                                    "default")))
#      define FL_AVX2_CLONE 1
#    endif
#  elif __has_attribute(target_clones)
#    if defined(FL_ISA_LEVEL) && FL_ISA_LEVEL == 3
#      define FL_SIMD __attribute__((target_clones("avx2", "default")))
#    elif defined(FL_ISA_LEVEL) && FL_ISA_LEVEL == 2
#      define FL_SIMD __attribute__((target_clones("sse4.2", "default")))
#    else
#      define FL_SIMD __attribute__((target_clones("avx512f", "avx2", "default")))
#    endif
#  endif
#endif
#ifndef FL_SIMD
#  define FL_SIMD
#endif

/* |x|: the sign bit cleared (NaN stays NaN; U the unsigned integer of T's
   width). Written x < 0 ? -x : x, GCC kept a branch on the sign and no
   vectors in the loops below that sum it in double (a code's signs are a
   coin toss to the branch predictor). */
#define FL_DEFINE_ABS(T, U, NAME)                                              \
static inline T NAME(T x) {                                                   \
    U b;                                                                      \
    memcpy(&b, &x, sizeof b);                                                 \
    b &= ~(U) 0 >> 1;                                                         \
    memcpy(&x, &b, sizeof x);                                                 \
    return x;                                                                 \
}

FL_DEFINE_ABS(double, uint64_t, fl_d_abs)
FL_DEFINE_ABS(float, uint32_t, fl_s_abs)

/* Of a non-zero word *w holding 8 flag bytes (each 0 or 1, as read from
   memory): the position in memory of the first byte set, which is then
   cleared. On a little-endian machine the first byte is the lowest: a
   count of trailing zeros. FL_SPAN: the span of a row the compaction
   kernels flag at a time (a multiple of 8). */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__BYTE_ORDER__) \
    && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
static inline int fl_pop_first_byte(uint64_t *w) {
    int i = __builtin_ctzll(*w) >> 3;
    *w &= *w - 1;
    return i;
}
#else
static inline int fl_pop_first_byte(uint64_t *w) {
    unsigned char b[8];
    memcpy(b, w, 8);
    for (int i = 0; i < 8; i++)
        if (b[i]) {
            b[i] = 0;
            memcpy(w, b, 8);
            return i;
        }
    return 8;
}
#endif
#define FL_SPAN 256

/* 1 if the running CPU has AVX-512F, else 0 (and on other compilers and
   architectures): the plans of the blocked kernels depend on it. */
static inline int fl_cpu_avx512f(void) {
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
#else
    return 0;
#endif
}
/* The CSR entries (OIDX, OVAL, counted in CNT) of the span of e entries
   yj = y + j0 whose non-zero flags (bytes 0 or 1) are in nz: the flags
   are read 8 at a time and only the set ones visited. */
#define FL_COMPACT_SPAN(OIDX, OVAL, CNT)                                   \
    for (int j = e; j < ((e + 7) & ~7); j++)                              \
        nz[j] = 0;                                                        \
    for (int q8 = 0; q8 < e; q8 += 8) {                                   \
        uint64_t w; memcpy(&w, nz + q8, 8);                               \
        while (w) {                                                       \
            int j = q8 + fl_pop_first_byte(&w);                           \
            OIDX[CNT] = j0 + j; OVAL[CNT] = yj[j]; CNT++;                 \
        }                                                                 \
    }

/* The thresholds: ST(v, s) = v - clip(v, -s, s), two selects, exact 0 iff
   |v| <= s; its one-sided form for non-negative codes, PST(v, s) =
   max(v - s, 0), exact 0 iff v <= s. Both propagate NaN. */
#define FL_DEFINE_THRESHOLDS(T, P)                                         \
static inline T P##_st(T v, T s) {                                        \
    T c = v < s ? v : s;                                                  \
    c = c > -s ? c : -s;                                                  \
    return v - c;                                                         \
}                                                                         \
static inline T P##_pst(T v, T s) {                                       \
    T r = v - s;                                                          \
    return r < 0 ? 0 : r;                                                 \
}

/* Row kernels, for one threshold OP (st or pst) */
#define FL_DEFINE_ROWS(T, U, P, OP)                                        \
/* y <- a OP(y, s) in place and the CSR row of the result (idx, val);   \
   returns its number of non-zeros. Per span of 256 entries: a vector    \
   pass stores the results and a byte a entry, 1 for a non-zero (the     \
   sign shifted out: -0 is a zero, NaN is not); the bytes are then read  \
   8 at a time and only the set ones visited, so that a sparse row costs \
   one vector pass, m / 8 tests and a store per non-zero. */             \
static FL_SIMD int P##_scaled_##OP##_compact(int m, T *y, T a, T s,        \
                                             int *idx, T *val) {          \
    int k = 0;                                                            \
    unsigned char nz[FL_SPAN];                                            \
    for (int j0 = 0; j0 < m; j0 += FL_SPAN) {                             \
        int e = j0 + FL_SPAN < m ? FL_SPAN : m - j0;                      \
        T *yj = y + j0;                                                   \
        for (int j = 0; j < e; j++) {                                     \
            T v = a * P##_##OP(yj[j], s);                                 \
            yj[j] = v;                                                    \
            U b; memcpy(&b, &v, sizeof(T));                               \
            nz[j] = (U) (b << 1) != 0;                                    \
        }                                                                 \
        FL_COMPACT_SPAN(idx, val, k)                                      \
    }                                                                     \
    return k;                                                             \
}                                                                         \
/* z <- OP(z - a u, s) over n entries; returns the non-zeros (NaN     \
   included): (b | -b) has its top bit set iff b != 0 */                 \
static FL_SIMD Py_ssize_t P##_##OP##_step(Py_ssize_t n, T *z, const T *u,  \
                                          T a, T s) {                     \
    Py_ssize_t k = 0;                                                     \
    for (Py_ssize_t j = 0; j < n; j++) {                                  \
        T v = P##_##OP(z[j] - a * u[j], s);                               \
        z[j] = v;                                                         \
        U b; memcpy(&b, &v, sizeof(T));                                   \
        b <<= 1;                                                          \
        k += (Py_ssize_t) ((b | (0 - b)) >> (8 * sizeof(U) - 1));         \
    }                                                                     \
    return k;                                                             \
}                                                                         \
/* z <- OP(z - a u, s) as P##_##OP##_step, and the signs of the result \
   in sg (1, -1 or 0; NaN counts as a non-zero, -1): the support and    \
   signs are all the backward pass needs of a dense layer (its kernels  \
   mix T with bytes, which GCC vectorizes when the signs are only       \
   compared, never converted to T: AVX-512BW's byte instructions on     \
   x86-64-v4). Returns the number of non-zeros. */                       \
static FL_SIMD Py_ssize_t P##_##OP##_step_sign(Py_ssize_t n, T *__restrict z, \
                                               const T *__restrict u, T a,  \
                                               T s, signed char *__restrict sg) { \
    Py_ssize_t k = 0;                                                     \
    for (Py_ssize_t j = 0; j < n; j++) {                                  \
        T v = P##_##OP(z[j] - a * u[j], s);                               \
        z[j] = v;                                                         \
        sg[j] = (signed char) ((v > 0) - !(v >= 0));                      \
        k += v != 0;                                                      \
    }                                                                     \
    return k;                                                             \
}

#define FL_DEFINE_GATHER(T, NAME)                                          \
/* u += alpha sum_q coef[q] A[idx[q], :] (A has p columns): four rows   \
   a pass, so that u is loaded and stored once per four rows of A */     \
static FL_SIMD void NAME##_gather(int k, const int *idx, const T *coef,    \
                                  T alpha, const T *A, int p, T *u) {     \
    int q = 0;                                                            \
    for (; q + 4 <= k; q += 4) {                                          \
        const T *a0 = A + (size_t) idx[q] * p, *a1 = A + (size_t) idx[q + 1] * p; \
        const T *a2 = A + (size_t) idx[q + 2] * p, *a3 = A + (size_t) idx[q + 3] * p; \
        T c0 = alpha * coef[q], c1 = alpha * coef[q + 1];                 \
        T c2 = alpha * coef[q + 2], c3 = alpha * coef[q + 3];             \
        for (int j = 0; j < p; j++)                                       \
            u[j] += c0 * a0[j] + c1 * a1[j] + c2 * a2[j] + c3 * a3[j];    \
    }                                                                     \
    for (; q < k; q++) {                                                  \
        const T *a0 = A + (size_t) idx[q] * p;                            \
        T c0 = alpha * coef[q];                                           \
        for (int j = 0; j < p; j++)                                       \
            u[j] += c0 * a0[j];                                           \
    }                                                                     \
}

/* Up to eight rows of a gather at a time, in the kernels below (which
   name their matrix A, its columns COLS, the factor alpha, and declare
   const T *r_[8], T c_[8]): FL_TAKE_ROWS points r_ at the ROWS rows
   IDX[0..ROWS) of A and sets c_ to alpha COEF[.]; the other slots (never
   read) get A and 0. FL_ROW_COEFS declares c0..c7 = c_[0..7]. FL_ROWS_R
   is the sum of the first R terms c_q p_q[j] of a pass over entry j. */
#define FL_TAKE_ROWS(ROWS, IDX, COEF, COLS)                                \
    for (int q_ = 0; q_ < 8; q_++) {                                      \
        r_[q_] = q_ < (ROWS) ? A + (size_t) (IDX)[q_] * (COLS) : A;       \
        c_[q_] = q_ < (ROWS) ? alpha * (COEF)[q_] : 0;                    \
    }
#define FL_ROW_COEFS(T)                                                    \
    T c0 = c_[0], c1 = c_[1], c2 = c_[2], c3 = c_[3];                     \
    T c4 = c_[4], c5 = c_[5], c6 = c_[6], c7 = c_[7];                     \
    (void) c0; (void) c1; (void) c2; (void) c3;                           \
    (void) c4; (void) c5; (void) c6; (void) c7;
#define FL_ROW_POINTERS(T, OFF)                                            \
    const T *p0 = r_[0] + (OFF), *p1 = r_[1] + (OFF), *p2 = r_[2] + (OFF); \
    const T *p3 = r_[3] + (OFF), *p4 = r_[4] + (OFF), *p5 = r_[5] + (OFF); \
    const T *p6 = r_[6] + (OFF), *p7 = r_[7] + (OFF);                     \
    (void) p0; (void) p1; (void) p2; (void) p3;                           \
    (void) p4; (void) p5; (void) p6; (void) p7;
#define FL_ROWS_1 c0 * p0[j]
#define FL_ROWS_2 FL_ROWS_1 + c1 * p1[j]
#define FL_ROWS_3 FL_ROWS_2 + c2 * p2[j]
#define FL_ROWS_4 FL_ROWS_3 + c3 * p3[j]
#define FL_ROWS_5 FL_ROWS_4 + c4 * p4[j]
#define FL_ROWS_6 FL_ROWS_5 + c5 * p5[j]
#define FL_ROWS_7 FL_ROWS_6 + c6 * p6[j]
#define FL_ROWS_8 FL_ROWS_7 + c7 * p7[j]

/* One span loop of P##_gather_##OP##_compact's last pass: y = a OP(from
   + SUM, s) stored, flagged and compacted span by span, as in
   P##_scaled_##OP##_compact (SUM: FL_ROWS_R over the span's entries). */
#define FL_GATHER_COMPACT_SPANS(T, U, P, OP, SUM)                          \
    for (int j0 = 0; j0 < m; j0 += FL_SPAN) {                             \
        int e = j0 + FL_SPAN < m ? FL_SPAN : m - j0;                      \
        const T *fj = from + j0;                                          \
        T *yj = y + j0;                                                   \
        FL_ROW_POINTERS(T, j0)                                            \
        _Pragma("GCC ivdep")                                              \
        for (int j = 0; j < e; j++) {                                     \
            T v = a * P##_##OP(fj[j] + (SUM), s);                         \
            yj[j] = v;                                                    \
            U b; memcpy(&b, &v, sizeof(T));                               \
            nz[j] = (U) (b << 1) != 0;                                    \
        }                                                                 \
        FL_COMPACT_SPAN(oidx, oval, nnz)                                  \
    }

/* A sparse layer's row in one kernel:
       y = a OP(src + alpha sum_q coef[q] (A[idx[q], :] + delta e_idx[q]), s)
   (the rows of A + delta I, for distinct idx[q]) and its CSR row (oidx,
   oval); returns its number of non-zeros (A, src and y have m columns).
   The diagonal terms are added to src's entries for the pass (saved and
   restored exactly: src is left as it was), or for a row of more than
   eight gathers to y after its first pass. The sum takes eight rows of A
   a pass, and the pass with the last one to eight rows also thresholds,
   stores, flags and compacts: a row gathering at most eight rows (codes
   with at most eight non-zeros) is read and written once. A pass reads
   src, or y itself after the first one: every loop reads and writes entry
   j only (no other overlap), which the ivdep pragma asserts. */
#define FL_DEFINE_GATHER_COMPACT(T, U, P, OP)                              \
static FL_SIMD int P##_gather_##OP##_compact(                             \
        int k, const int *idx, const T *coef, T alpha, T delta,           \
        const T *A, int m, T *src, T *y, T a, T s, int *oidx, T *oval) {  \
    const T *from = src;                                                  \
    const T *r_[8];                                                       \
    T c_[8], save_[8];                                                    \
    unsigned char nz[FL_SPAN];                                            \
    int q = 0, nnz = 0, npatch = delta != 0 && k <= 8 ? k : 0;            \
    for (int p_ = 0; p_ < npatch; p_++) {                                 \
        save_[p_] = src[idx[p_]];                                         \
        src[idx[p_]] += alpha * coef[p_] * delta;                         \
    }                                                                     \
    for (;; q += 8) {                                                     \
        FL_TAKE_ROWS(k - q < 8 ? k - q : 8, idx + q, coef + q, m)         \
        if (k - q <= 8)                                                   \
            break;                                                        \
        FL_ROW_POINTERS(T, 0)                                             \
        FL_ROW_COEFS(T)                                                   \
        _Pragma("GCC ivdep")                                              \
        for (int j = 0; j < m; j++)                                       \
            y[j] = from[j] + (FL_ROWS_8);                                 \
        if (q == 0 && delta != 0)                                         \
            for (int p_ = 0; p_ < k; p_++)                                \
                y[idx[p_]] += alpha * coef[p_] * delta;                   \
        from = y;                                                         \
    }                                                                     \
    FL_ROW_COEFS(T)                                                       \
    switch (k - q) {                                                      \
    case 0: FL_GATHER_COMPACT_SPANS(T, U, P, OP, 0) break;                \
    case 1: FL_GATHER_COMPACT_SPANS(T, U, P, OP, FL_ROWS_1) break;        \
    case 2: FL_GATHER_COMPACT_SPANS(T, U, P, OP, FL_ROWS_2) break;        \
    case 3: FL_GATHER_COMPACT_SPANS(T, U, P, OP, FL_ROWS_3) break;        \
    case 4: FL_GATHER_COMPACT_SPANS(T, U, P, OP, FL_ROWS_4) break;        \
    case 5: FL_GATHER_COMPACT_SPANS(T, U, P, OP, FL_ROWS_5) break;        \
    case 6: FL_GATHER_COMPACT_SPANS(T, U, P, OP, FL_ROWS_6) break;        \
    case 7: FL_GATHER_COMPACT_SPANS(T, U, P, OP, FL_ROWS_7) break;        \
    default: FL_GATHER_COMPACT_SPANS(T, U, P, OP, FL_ROWS_8) break;       \
    }                                                                     \
    for (int p_ = npatch - 1; p_ >= 0; p_--)                              \
        src[idx[p_]] = save_[p_];                                         \
    return nnz;                                                           \
}

/* u = alpha sum_q coef[q] A[idx[q], :] (A has p columns; 0 for k = 0):
   the first eight rows in one pass that writes u (no zeroing pass before
   it), the others added four a pass by P##_gather. */
#define FL_DEFINE_GATHER_SET(T, P)                                         \
static FL_SIMD void P##_gather_set(int k, const int *idx, const T *coef,   \
                                   T alpha, const T *A, int p, T *u) {    \
    const T *r_[8];                                                       \
    T c_[8];                                                              \
    int rows = k < 8 ? k : 8;                                             \
    FL_TAKE_ROWS(rows, idx, coef, p)                                      \
    FL_ROW_POINTERS(T, 0)                                                 \
    FL_ROW_COEFS(T)                                                       \
    switch (rows) {                                                       \
    case 0: memset(u, 0, (size_t) p * sizeof(T)); break;                  \
    case 1: for (int j = 0; j < p; j++) u[j] = FL_ROWS_1; break;          \
    case 2: for (int j = 0; j < p; j++) u[j] = FL_ROWS_2; break;          \
    case 3: for (int j = 0; j < p; j++) u[j] = FL_ROWS_3; break;          \
    case 4: for (int j = 0; j < p; j++) u[j] = FL_ROWS_4; break;          \
    case 5: for (int j = 0; j < p; j++) u[j] = FL_ROWS_5; break;          \
    case 6: for (int j = 0; j < p; j++) u[j] = FL_ROWS_6; break;          \
    case 7: for (int j = 0; j < p; j++) u[j] = FL_ROWS_7; break;          \
    default: for (int j = 0; j < p; j++) u[j] = FL_ROWS_8; break;         \
    }                                                                     \
    if (k > 8)                                                            \
        P##_gather(k - 8, idx + 8, coef + 8, alpha, A, p, u);             \
}

/* Dense layers stored as signs (FMT_SIGN). */
#define FL_DEFINE_SIGN(T, U, NAME)                                             \
/* Backward through a dense residual layer into the one below it, on   \
   one row of m entries, in one pass: with sg the signs of the layer's   \
   input code z (its support masks the gradient of the layer below) and  \
   v = w M^T,                                                            \
       g      <- (g - a v) 1[z != 0]        (d z, masked: w below)       \
       acc[j] -= lmbd g_j sign(z_j)         (d thr of the layer below)   \
   acc: in double, the sums themselves; in float, a row the caller adds  \
   into its double sums once a block (a float partial sum over at most   \
   a block's rows, as the weight gradients' are: read and written in     \
   double for every row, a conversion an entry, the sums took 3 % of a   \
   float32 SLISTA loss_and_grad at lmbd = 0.1). The mask and the sign    \
   are bit operations on the pattern of T (keep all bits or none; flip   \
   the sign bit): exact, NaN kept on the support, and a loop GCC         \
   vectorizes for every target (selects on the bytes it leaves scalar    \
   on AVX2). */                                                          \
static FL_SIMD void NAME##_back_sign(int m, T *__restrict g,               \
                                     const T *__restrict v,               \
                                     const signed char *__restrict sg,    \
                                     T a, T lmbd, T *__restrict acc) {    \
    for (int j = 0; j < m; j++) {                                         \
        T w = g[j] - a * v[j], ws;                                        \
        U b, keep = (U) 0 - (U) (sg[j] != 0);                             \
        U flip = (U) (sg[j] < 0) << (8 * sizeof(U) - 1);                  \
        memcpy(&b, &w, sizeof b);                                         \
        b &= keep;                                                        \
        memcpy(&w, &b, sizeof b);                                         \
        g[j] = w;                                                         \
        b ^= flip;                                                        \
        memcpy(&ws, &b, sizeof b);         /* w sign(z) */                \
        acc[j] -= lmbd * ws;                                              \
    }                                                                     \
}

FL_DEFINE_THRESHOLDS(double, fl_d)
FL_DEFINE_THRESHOLDS(float, fl_s)
FL_DEFINE_ROWS(double, uint64_t, fl_d, st)
FL_DEFINE_ROWS(double, uint64_t, fl_d, pst)
FL_DEFINE_ROWS(float, uint32_t, fl_s, st)
FL_DEFINE_ROWS(float, uint32_t, fl_s, pst)
FL_DEFINE_GATHER(double, fl_d)
FL_DEFINE_GATHER(float, fl_s)
FL_DEFINE_GATHER_SET(double, fl_d)
FL_DEFINE_GATHER_SET(float, fl_s)
FL_DEFINE_GATHER_COMPACT(double, uint64_t, fl_d, st)
FL_DEFINE_GATHER_COMPACT(double, uint64_t, fl_d, pst)
FL_DEFINE_GATHER_COMPACT(float, uint32_t, fl_s, st)
FL_DEFINE_GATHER_COMPACT(float, uint32_t, fl_s, pst)
FL_DEFINE_SIGN(double, uint64_t, fl_d)
FL_DEFINE_SIGN(float, uint32_t, fl_s)
/* The four sums of the duality gap of one code (_gap.pxd), in double:
   rr = ||r||^2 and xr = <x, r> over the n features, l1 = ||z||_1 and
   gmax = max_j |g_j| (positive codes: max(0, max_j g_j)) over the m atoms,
   with g = r D^T. Reductions in simd lanes (OpenMP simd: the order of the
   additions is that of the lanes, fixed for a given build). A NaN in r or z
   reaches rr or l1; g = r D^T holds one only if they do. */
#define FL_DEFINE_GAP_SUMS(TZ, ABS, NAME)                                      \
static FL_SIMD void NAME(Py_ssize_t n, const double *__restrict x,           \
                         const double *__restrict r, Py_ssize_t m,           \
                         const TZ *__restrict z, const double *__restrict g, \
                         int positive, double *__restrict out) {             \
    double rr = 0, xr = 0, l1 = 0, gmax = 0;                                  \
    _Pragma("omp simd reduction(+:rr, xr)")                                   \
    for (Py_ssize_t j = 0; j < n; j++) {                                      \
        rr += r[j] * r[j];                                                    \
        xr += x[j] * r[j];                                                    \
    }                                                                         \
    _Pragma("omp simd reduction(+:l1) reduction(max:gmax)")                   \
    for (Py_ssize_t j = 0; j < m; j++) {                                      \
        double v = positive ? g[j] : (g[j] < 0 ? -g[j] : g[j]);              \
        l1 += (double) ABS(z[j]);                                             \
        gmax = v > gmax ? v : gmax;                                           \
    }                                                                         \
    out[0] = rr; out[1] = xr; out[2] = l1; out[3] = gmax;                     \
}

FL_DEFINE_GAP_SUMS(double, fl_d_abs, fl_d_gap_sums)
FL_DEFINE_GAP_SUMS(float, fl_s_abs, fl_s_gap_sums)
/* x.y in double, in simd lanes (their order of additions is fixed for a
   given build): a plain C loop's reduction cannot be vectorised without
   reassociation, and ran one multiply-add at a time. */
static FL_SIMD double fl_dot_dd(Py_ssize_t n, const double *__restrict x,
                                const double *__restrict y) {
    double acc = 0;
    _Pragma("omp simd reduction(+:acc)")
    for (Py_ssize_t j = 0; j < n; j++)
        acc += x[j] * y[j];
    return acc;
}

static FL_SIMD double fl_dot_sd(Py_ssize_t n, const float *__restrict x,
                                const double *__restrict y) {
    double acc = 0;
    _Pragma("omp simd reduction(+:acc)")
    for (Py_ssize_t j = 0; j < n; j++)
        acc += (double) x[j] * y[j];
    return acc;
}

/* Contraction of a*b + c into one FMA (GCC's default, across statements
   too) would break the error-free transformations of fl_dot2: off there. */
#if defined(__GNUC__) && !defined(__clang__)
#  define FL_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#  define FL_NO_CONTRACT
#endif
#include <math.h>

/* The unit roundoff of double, u = 2^-53. */
#define FL_ROUNDOFF 1.1102230246251565e-16

/* x.y to about twice the working precision: Dot2 (Ogita, Rump & Oishi,
   "Accurate sum and dot product", 2005) in 8 independent lanes, the lanes
   then added by the same error-free transformations:

       TwoProduct  p = fl(a b),  e = fma(a, b, -p):      a b = p + e exactly
       TwoSum      t = fl(s + p), z = t - s,
                   q = (s - (t - z)) + (p - z):           s + p = t + q exactly

   The high parts are summed in s, the errors w = fl(q + e) in c. Then
   x.y = tot + E exactly, tot the lanes' high parts added by TwoSum and E
   the sum of every q + e and of the 8 lane merges' own q; cc is E added
   in floating point (w = (q + e)(1 + delta), |delta| <= u, then the n + 8
   terms summed in some order), and the result res = fl(tot + cc) has its
   own error `last` from one more TwoSum. With u = 2^-53, K = 2 n + 8 and
   eta the smallest subnormal (TwoProduct is exact unless its error e
   falls below the normal range: |a b| < 2^-969), the a posteriori bound

       |res - x.y| <= |last| + gamma_K (sum |w| + sum |q of the merges|)
                      + n eta

   (the last term only when some product came that near the subnormals)
   is within a small factor of the paper's, gamma_2n^2 sum_i |x_i y_i|
   (|q| <= u |t| and |e| <= u |p|), and is 0 when every transformation was
   exact: x.y = 0 by products that cancel exactly (an x orthogonal to an
   atom with integer entries, say) is then certified 0, not merely tiny.
   (w = 0 only if q + e = 0 exactly: a sum rounds to 0 only when it is 0.)
   *bound receives twice it (the bound is computed rounded, and gamma_K =
   K u / (1 - K u)): |result - x.y| <= *bound. */
static FL_SIMD FL_NO_CONTRACT double fl_dot2(Py_ssize_t n, const double *__restrict x,
                                             const double *__restrict y,
                                             double *__restrict bound) {
    const double tiny = 0x1p-969;  /* |p| below it: e (~ u |p|) may be subnormal */
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0}, c[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, under[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    double tot = 0, cc = 0, aa = 0, uu = 0;
    Py_ssize_t j = 0;
    for (; j + 8 <= n; j += 8) {
        _Pragma("omp simd")
        for (int l = 0; l < 8; l++) {
            double p = x[j + l] * y[j + l];
            double e = fma(x[j + l], y[j + l], -p);
            double t = s[l] + p, z = t - s[l];
            double w = ((s[l] - (t - z)) + (p - z)) + e;
            c[l] += w;
            s[l] = t;
            a[l] += fabs(w);
            /* a product this small may have lost bits of e */
            under[l] += (fabs(p) < tiny && x[j + l] != 0 && y[j + l] != 0) ? 1.0 : 0.0;
        }
    }
    for (; j < n; j++) {
        double p = x[j] * y[j];
        double e = fma(x[j], y[j], -p);
        double t = s[0] + p, z = t - s[0];
        double w = ((s[0] - (t - z)) + (p - z)) + e;
        c[0] += w;
        s[0] = t;
        a[0] += fabs(w);
        under[0] += (fabs(p) < tiny && x[j] != 0 && y[j] != 0) ? 1.0 : 0.0;
    }
    for (int l = 0; l < 8; l++) {
        double t = tot + s[l], z = t - tot;
        double q = (tot - (t - z)) + (s[l] - z);
        cc += q + c[l];
        tot = t;
        aa += a[l] + fabs(q);
        uu += under[l];
    }
    double res = tot + cc, z = res - tot;
    double last = (tot - (res - z)) + (cc - z);
    *bound = 2 * (fabs(last) + (2 * (double) n + 8) * FL_ROUNDOFF * aa
                  + (double) n * (uu > 0 ? 4.9406564584124654e-324 : 0));
    return res;
}

/* The certificate's correlation: a value no exact |r.d_j| exceeds (positive
   codes: no exact r.d_j, and at least 0), within a few ulps of the largest,
   so that r / max(lmbd, it) is exactly dual feasible. g holds the computed
   correlations (g = r D^T, D of shape (m, n) row-major), e dn_j a bound on
   |g_j - r.d_j| (dn: the atoms' norms). An atom whose bound
   cannot reach low = max(lmbd, max_j (|g_j| - e dn_j)) is not the largest
   (nor above lmbd); the others are recomputed by fl_dot2 and taken with its
   error bound, their sum rounded up (the next double above it, unless the
   bound is 0: fl_dot2 was then exact), so that the value is an upper bound
   also when the bound is below half an ulp of the dot product. */
static FL_SIMD double fl_certified_gmax(Py_ssize_t n, Py_ssize_t m, const double *__restrict r,
                                        const double *__restrict D,
                                        const double *__restrict g,
                                        const double *__restrict dn, double e,
                                        double lmbd, int positive) {
    double low = lmbd, best = 0, v, a, bound;
    /* (a max is exact in any order: simd lanes, not a chain of maxsd) */
    if (positive) {
        _Pragma("omp simd reduction(max:low)")
        for (Py_ssize_t j = 0; j < m; j++) {
            double w = g[j] - e * dn[j];
            low = w > low ? w : low;
        }
    } else {
        _Pragma("omp simd reduction(max:low)")
        for (Py_ssize_t j = 0; j < m; j++) {
            double w = fabs(g[j]) - e * dn[j];
            low = w > low ? w : low;
        }
    }
    /* the candidates, usually one or two: a chunk of 32 atoms whose
       largest bound (simd lanes) is below low has none */
    for (Py_ssize_t j0 = 0; j0 < m; j0 += 32) {
        Py_ssize_t j1 = j0 + 32 < m ? j0 + 32 : m;
        if (j1 - j0 == 32) {
            double hi = 0;
            if (positive) {
                _Pragma("omp simd reduction(max:hi)")
                for (int l = 0; l < 32; l++) {
                    double w = g[j0 + l] + e * dn[j0 + l];
                    hi = w > hi ? w : hi;
                }
            } else {
                _Pragma("omp simd reduction(max:hi)")
                for (int l = 0; l < 32; l++) {
                    double w = fabs(g[j0 + l]) + e * dn[j0 + l];
                    hi = w > hi ? w : hi;
                }
            }
            if (!(hi >= low))
                continue;
        }
        for (Py_ssize_t j = j0; j < j1; j++) {
            v = (positive ? g[j] : fabs(g[j])) + e * dn[j];
            if (!(v >= low))
                continue;
            a = fl_dot2(n, r, D + j * n, &bound);
            a = positive ? a : fabs(a);
            if (bound > 0)
                a = nextafter(a + bound, INFINITY);
            best = a > best ? a : best;
        }
    }
    return best;
}
/* lambda_max of one row c of C = X D^T: max_j |c_j|, or max(max_j c_j, 0)
   for positive codes (+0, never -0, when no entry exceeds 0). A max is
   exact whatever the order: OpenMP simd lanes. */
static FL_SIMD double fl_d_corr_max(Py_ssize_t n, const double *__restrict c,
                                    int positive) {
    double acc = 0;
    if (positive) {
        _Pragma("omp simd reduction(max:acc)")
        for (Py_ssize_t j = 0; j < n; j++)
            acc = c[j] > acc ? c[j] : acc;
    } else {
        _Pragma("omp simd reduction(max:acc)")
        for (Py_ssize_t j = 0; j < n; j++) {
            double v = fabs(c[j]);
            acc = v > acc ? v : acc;
        }
    }
    return acc;
}
/* Whether any of z[:n] is not finite (NaN or +-inf): all exponent bits
   set. Integer operations only, so that the loop vectorizes. */
#define FL_DEFINE_NONFINITE(T, U, EXP, NAME)                                   \
static FL_SIMD int NAME(Py_ssize_t n, const T *__restrict z) {               \
    U acc = 0;                                                                \
    for (Py_ssize_t j = 0; j < n; j++) {                                      \
        U b; memcpy(&b, &z[j], sizeof(T));                                    \
        acc |= (U) ((b & (EXP)) == (EXP));                                    \
    }                                                                         \
    return acc != 0;                                                          \
}

FL_DEFINE_NONFINITE(double, uint64_t, 0x7FF0000000000000ULL, fl_d_nonfinite)
FL_DEFINE_NONFINITE(float, uint32_t, 0x7F800000U, fl_s_nonfinite)

/* The number of non-zero entries of z[:n] (NaN counts, -0 does not): on
   the bit pattern b with the sign shifted out, (b | -b) has its top bit
   set iff b != 0. Integer operations only, so that the loop vectorizes (a
   floating-point compare-and-count stays scalar). */
#define FL_DEFINE_COUNT_NONZERO(T, U, NAME)                                    \
static FL_SIMD Py_ssize_t NAME(Py_ssize_t n, const T *__restrict z) {        \
    Py_ssize_t k = 0;                                                         \
    for (Py_ssize_t j = 0; j < n; j++) {                                      \
        U b; memcpy(&b, &z[j], sizeof(T));                                    \
        b <<= 1;                                                              \
        k += (Py_ssize_t) ((b | (0 - b)) >> (8 * sizeof(U) - 1));             \
    }                                                                         \
    return k;                                                                 \
}

FL_DEFINE_COUNT_NONZERO(double, uint64_t, fl_d_count_nonzero)
FL_DEFINE_COUNT_NONZERO(float, uint32_t, fl_s_count_nonzero)

/* ||z||_1 = sum_j |z_j| in double, in simd lanes (their order of additions
   fixed for a given build; NaN propagates). With the branch of
   z < 0 ? -z : z, the l1 term of a block's objective took 2 % of a
   float32 SLISTA loss_and_grad at lmbd = 0.1. */
#define FL_DEFINE_ABS_SUM(T, ABS, NAME)                                        \
static FL_SIMD double NAME(Py_ssize_t n, const T *__restrict z) {            \
    double acc = 0;                                                           \
    _Pragma("omp simd reduction(+:acc)")                                      \
    for (Py_ssize_t j = 0; j < n; j++)                                        \
        acc += (double) ABS(z[j]);                                            \
    return acc;                                                               \
}

FL_DEFINE_ABS_SUM(double, fl_d_abs, fl_d_abs_sum)
FL_DEFINE_ABS_SUM(float, fl_s_abs, fl_s_abs_sum)

/* Dense level-1/2 pieces of coordinate descent (_cd.pyx), in double (its
   Gram matrix too, whatever the codes' dtype):

   y <- y - a x               (a coordinate step: g <- g - d B_j; the
                               gradient from the support: g <- g - z_j B_j)
   v <- L^{-1} v, v <- L^{-T} v   (the Newton step's Cholesky factor: L lower,
                               column-major, leading dimension ld, and
                               dinv[j] = 1 / L[j, j])

   Both solves go four unknowns at a time. The forward one solves the
   block's 4 x 4 triangle by substitution, then updates the rows below it
   in one pass, v[i] -= L[i, j:j+4] . v[j:j+4] (contiguous columns; one
   load and store of v[i] for four multiply-adds). The backward one sums
   the four dot products L[i, j:j+4] . v[i] over the rows below the block
   in one pass (simd lanes, OpenMP simd: a fixed order for a given build),
   then solves the block's triangle. A solve a column at a time waited on
   a division, or on a horizontal sum, for every unknown; the unknowns of
   a block wait on four multiplications by dinv. */
static FL_SIMD void fl_d_sub_axpy(int n, double a, const double *__restrict x,
                                  double *__restrict y) {
    for (int j = 0; j < n; j++)
        y[j] -= a * x[j];
}

static FL_SIMD void fl_lower_solve(int k, int ld, const double *__restrict L,
                                   const double *__restrict dinv,
                                   double *__restrict v) {
    int j = 0;
    for (; j + 4 <= k; j += 4) {
        const double *L0 = L + (Py_ssize_t) j * ld, *L1 = L0 + ld, *L2 = L1 + ld,
                     *L3 = L2 + ld;
        double v0 = v[j] * dinv[j];
        double v1 = (v[j + 1] - L0[j + 1] * v0) * dinv[j + 1];
        double v2 = (v[j + 2] - L0[j + 2] * v0 - L1[j + 2] * v1) * dinv[j + 2];
        double v3 = (v[j + 3] - L0[j + 3] * v0 - L1[j + 3] * v1
                     - L2[j + 3] * v2) * dinv[j + 3];
        v[j] = v0;
        v[j + 1] = v1;
        v[j + 2] = v2;
        v[j + 3] = v3;
        _Pragma("omp simd")
        for (int i = j + 4; i < k; i++)
            v[i] -= L0[i] * v0 + L1[i] * v1 + L2[i] * v2 + L3[i] * v3;
    }
    for (; j < k; j++) {
        const double *Lj = L + (Py_ssize_t) j * ld;
        double vj = v[j] * dinv[j];
        v[j] = vj;
        for (int i = j + 1; i < k; i++)
            v[i] -= vj * Lj[i];
    }
}

static FL_SIMD void fl_lower_t_solve(int k, int ld, const double *__restrict L,
                                     const double *__restrict dinv,
                                     double *__restrict v) {
    int j = k;      /* v[j:] is solved */
    for (; j >= 4; j -= 4) {
        const double *L0 = L + (Py_ssize_t) (j - 4) * ld, *L1 = L0 + ld,
                     *L2 = L1 + ld, *L3 = L2 + ld;
        double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        _Pragma("omp simd reduction(+:a0, a1, a2, a3)")
        for (int i = j; i < k; i++) {
            a0 += L0[i] * v[i];
            a1 += L1[i] * v[i];
            a2 += L2[i] * v[i];
            a3 += L3[i] * v[i];
        }
        double y3 = (v[j - 1] - a3) * dinv[j - 1];
        double y2 = (v[j - 2] - a2 - L2[j - 1] * y3) * dinv[j - 2];
        double y1 = (v[j - 3] - a1 - L1[j - 2] * y2 - L1[j - 1] * y3) * dinv[j - 3];
        double y0 = (v[j - 4] - a0 - L0[j - 3] * y1 - L0[j - 2] * y2
                     - L0[j - 1] * y3) * dinv[j - 4];
        v[j - 4] = y0;
        v[j - 3] = y1;
        v[j - 2] = y2;
        v[j - 1] = y3;
    }
    for (j = j - 1; j >= 0; j--) {
        const double *Lj = L + (Py_ssize_t) j * ld;
        double acc = 0;
        for (int i = j + 1; i < k; i++)
            acc += Lj[i] * v[i];
        v[j] = (v[j] - acc) * dinv[j];
    }
}

/* The sums of coordinate descent's duality gap (_cd.pyx, gap_from), on w
   atoms with the negative gradient g = c - z B: z.c, z.g, ||z||_1 and
   max_j |g_j| (positive codes: max(0, max_j g_j)). A NaN in g reaches z.g
   (0 * NaN is NaN), one in z reaches ||z||_1. */
static FL_SIMD void fl_cd_gap_sums(int w, const double *__restrict z,
                                   const double *__restrict g,
                                   const double *__restrict c, int positive,
                                   double *__restrict out) {
    double zc = 0, zg = 0, l1 = 0, gmax = 0;
    _Pragma("omp simd reduction(+:zc, zg, l1) reduction(max:gmax)")
    for (int j = 0; j < w; j++) {
        double v = positive ? g[j] : (g[j] < 0 ? -g[j] : g[j]);
        zc += z[j] * c[j];
        zg += z[j] * g[j];
        l1 += z[j] < 0 ? -z[j] : z[j];
        gmax = v > gmax ? v : gmax;
    }
    out[0] = zc; out[1] = zg; out[2] = l1; out[3] = gmax;
}
#endif
