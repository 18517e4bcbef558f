/* fastlista: row-major GEMM for the networks' and solvers' block products. */
#ifndef FASTLISTA_GEMM_H
#define FASTLISTA_GEMM_H
/* C = alpha A B + beta C, all row-major: A (M x K, the block's rows), B
   (K x N, a layer's parameter matrix), C (M x N).

   Why not BLAS: without AVX-512, OpenBLAS copies ("packs") both operands
   of every call into its panel layouts, and scales C by beta in a pass of
   its own; on the networks' products (a block of 256 rows times a 256 x 64
   or 64 x 256 matrix) the copies took 13 % of a float32 forward pass and
   the beta pass 4 % (perf, AMD Zen 3); with AVX-512, OpenBLAS's
   small-matrix kernels do not pack, and run faster than the 32-byte tile
   below, but slower than the same tile at 64 bytes (_gemm_avx512.h: the
   same sums in the same order; docs/benchmarks.md). Here only
   B is copied, one panel of 2 W columns at a time (W: lanes of a 32-byte
   vector) into a buffer on the stack that stays in L1, and A is read in
   place: its rows are the natural streams of the register tile.

   Register tile: MR = 6 rows of C times 2 W columns, 12 vector
   accumulators; each k costs two vector loads of the packed panel and six
   broadcasts of A[i, k] (loads, not shuffles: the FMA ports stay free),
   for 12 FMAs. Each accumulator sums its k in order, one FMA a term (the
   AVX2 and AVX-512 clones; the baseline one rounds a product and a sum).
   K is cut into panels of at most FL_GEMM_KC, beta applies to the first.
   The dense layers' gradient step is fused into the product
   (P##_gemm_step): each tile is thresholded as it is stored; float32
   ISTA's, whose iterate is in double, widens each tile to double first
   (fl_s_gemm_step_wide).

   Packed once: B is a parameter matrix, the same for every block of rows
   of a call, and the copy of its panels is the same each time (at 256 x
   256 x 64 in float32 it took 9-12 % of a call's time, 33 % on blocks of
   64 rows; Zen 3). P##_gemm_pack copies all of B's panels, once, into
   the layout below, and the P##_gemm_packed_* calls read them from
   there; the plain calls still copy each panel as they go. Packed layout
   (the same for every ISA and both tiles: the vectors are 32 bytes in all
   clones, and the 64-byte tile of _gemm_avx512.h reads two panels): with
   Np = N rounded up to NR, the panel of rows [kb, kb + kc) and columns
   [j0, j0 + NR) is kc x NR, row-major, at kb Np + j0 kc, zero beyond
   column N; P##_gemm_packed_size(N, K) = K Np entries.

   beta == 0 never reads C (BLAS semantics: NaN in C does not leak). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "_simd.h"      /* FL_SIMD (the per-ISA clones), fl_?_st, fl_?_pst */

#define FL_GEMM_MR 6
#define FL_GEMM_KC 256
/* columns of a packed panel: two 32-byte vectors */
#define FL_GEMM_NR(T) ((int) (64 / sizeof(T)))

/* B[kb:kb + kc, j0:j0 + nc] into the panel at Bs, zero-padded to NR
   columns. A full row of a panel is one copy of 64 bytes: as a loop of
   nc entries (nc unknown to the compiler) GCC copied them one at a time
   in the 64-byte tile's function, and those copies took as long as the
   product of a 32-row block (its 32 FMAs a cycle against one copy). */
#define FL_GEMM_PACK(T, Bs)                                                \
    for (int k = 0; k < kc; k++) {                                        \
        const T *b = B + (ptrdiff_t) (kb + k) * ldb + j0;                 \
        T *p = (Bs) + (ptrdiff_t) k * NR;                                 \
        if (nc == NR) {                                                   \
            memcpy(p, b, sizeof(T) * (size_t) NR);                        \
        } else {                                                          \
            for (int j = 0; j < nc; j++) p[j] = b[j];                     \
            for (int j = nc; j < NR; j++) p[j] = 0;                       \
        }                                                                 \
    }

#if defined(__GNUC__) || defined(__clang__)
#define FL_GEMM_VECTOR_EXTENSIONS 1

typedef float fl_s_vec __attribute__((vector_size(32)));
typedef double fl_d_vec __attribute__((vector_size(32)));
typedef int32_t fl_s_ivec __attribute__((vector_size(32)));
typedef int64_t fl_d_ivec __attribute__((vector_size(32)));
#define FL_SPLAT_fl_s(x) {x, x, x, x, x, x, x, x}
#define FL_SPLAT_fl_d(x) {x, x, x, x}

/* The register tile, written out in the body of the cloned function (an
   inline helper would be lowered for the baseline ISA before it is
   inlined into the x86-64-v3 clone, spilling and splitting its vectors):
   acc = A[:R, :kc] Bp, with Bp the packed kc x NR panel (zero beyond
   column nc) and R a constant; then EPI(T, V, P, r, acc0, acc1) stores row
   r's two vectors of acc (columns j0 + [0, NR) of the tile's row i + r). */
#define FL_GEMM_TILE(T, V, P, R, EPI)                                      \
    {                                                                     \
        const T *a_ = a + (ptrdiff_t) i * lda;                            \
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
            EPI(T, V, P, r, c0[r], c1[r])                                 \
        }                                                                 \
    }

/* Every row tile of a packed panel: i runs over the rows, 6 at a time,
   then the 1-5 left */
#define FL_GEMM_ROWS(T, V, P, EPI)                                         \
    {                                                                     \
        int i = 0;                                                        \
        for (; i + FL_GEMM_MR <= M; i += FL_GEMM_MR)                      \
            FL_GEMM_TILE(T, V, P, FL_GEMM_MR, EPI)                        \
        switch (M - i) {                                                  \
        case 5: FL_GEMM_TILE(T, V, P, 5, EPI) break;                      \
        case 4: FL_GEMM_TILE(T, V, P, 4, EPI) break;                      \
        case 3: FL_GEMM_TILE(T, V, P, 3, EPI) break;                      \
        case 2: FL_GEMM_TILE(T, V, P, 2, EPI) break;                      \
        case 1: FL_GEMM_TILE(T, V, P, 1, EPI) break;                      \
        default: break;                                                   \
        }                                                                 \
    }

/* Epilogue of the plain product: C = alpha acc + bt C0 (bt = 0: C0 unread) */
#define FL_GEMM_EPI_AXPBY(T, V, P, r, acc0, acc1)                          \
    {                                                                     \
        T *c = C + (ptrdiff_t) (i + r) * ldc + j0;                        \
        const T *q = C0 + (ptrdiff_t) (i + r) * ldc0 + j0;                \
        V o0 = va * (acc0), o1 = va * (acc1);                             \
        if (nc == NR) {                                                   \
            if (bt != 0) {                                                \
                V p0, p1;                                                 \
                memcpy(&p0, q, sizeof p0);                                \
                memcpy(&p1, q + W, sizeof p1);                            \
                o0 += vb * p0;                                            \
                o1 += vb * p1;                                            \
            }                                                             \
            memcpy(c, &o0, sizeof o0);                                    \
            memcpy(c + W, &o1, sizeof o1);                                \
        } else {                                                          \
            T o[NR];                                                      \
            memcpy(o, &o0, sizeof o0);                                    \
            memcpy(o + W, &o1, sizeof o1);                                \
            for (int j = 0; j < nc; j++)                                  \
                c[j] = bt != 0 ? o[j] + bt * q[j] : o[j];                 \
        }                                                                 \
    }

/* The thresholds of _simd.h (P##_st, P##_pst) on vectors, select by
   select with the same comparisons, so that every entry (NaN and -0
   included) gets the value of the scalar function:
   ST(v, s) = v - c, c = max(min(v, s), -s); PST(v, s) = max(v - s, 0). */
#define FL_VSEL(IV, V, m, x, y) ((V) (((m) & (IV) (x)) | (~(m) & (IV) (y))))
#define FL_VST(IV, V, v, s)                                                \
    ({ V v_ = (v), s_ = (s), n_ = -s_;                                    \
       V c_ = FL_VSEL(IV, V, v_ < s_, v_, s_);                            \
       c_ = FL_VSEL(IV, V, c_ > n_, c_, n_);                              \
       v_ - c_; })
#define FL_VPST(IV, V, v, s)                                               \
    ({ V r_ = (v) - (s);                                                  \
       FL_VSEL(IV, V, r_ < (V){0}, (V){0}, r_); })

/* The signs of the 2 W lanes of v0, v1 (1, -1, 0; NaN -1: the scalar
   (v > 0) - !(v >= 0)) stored as bytes at g. As integer lanes a true
   comparison is -1, so the sign is -1 - [v > 0] - [v >= 0]; the low byte
   of each lane is then picked by one byte shuffle (GCC 12, clang; little
   endian), else the lanes are written one by one. */
#if defined(__has_builtin) && defined(__BYTE_ORDER__)
#  if __has_builtin(__builtin_shufflevector) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#    define FL_SHUFFLE_BYTES 1
#  endif
#endif
#ifdef FL_SHUFFLE_BYTES
typedef signed char fl_bytes32 __attribute__((vector_size(32)));
typedef signed char fl_s_bytes __attribute__((vector_size(16)));
typedef signed char fl_d_bytes __attribute__((vector_size(8)));
#define FL_VSIGN(IV, v) ((IV) {0} - 1 - (IV) ((v) > 0) - (IV) ((v) >= 0))
#define FL_LOW_BYTES_fl_s(s0, s1)                                          \
    __builtin_shufflevector((fl_bytes32) (s0), (fl_bytes32) (s1), 0, 4, 8, \
                            12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60)
#define FL_LOW_BYTES_fl_d(s0, s1)                                          \
    __builtin_shufflevector((fl_bytes32) (s0), (fl_bytes32) (s1), 0, 8,   \
                            16, 24, 32, 40, 48, 56)
#define FL_STORE_SIGNS(T, IV, P, v0, v1, g)                                \
    {                                                                     \
        P##_bytes b_ = FL_LOW_BYTES_##P(FL_VSIGN(IV, v0), FL_VSIGN(IV, v1)); \
        memcpy((g), &b_, sizeof b_);                                      \
    }
#else
#define FL_STORE_SIGNS(T, IV, P, v0, v1, g)                                \
    {                                                                     \
        T o_[2 * sizeof(v0) / sizeof(T)];                                 \
        memcpy(o_, &(v0), sizeof(v0));                                    \
        memcpy(o_ + sizeof(v0) / sizeof(T), &(v1), sizeof(v1));           \
        for (size_t j_ = 0; j_ < sizeof o_ / sizeof(T); j_++)             \
            (g)[j_] = (signed char) ((o_[j_] > 0) - !(o_[j_] >= 0));      \
    }
#endif

/* Epilogue of the fused gradient step: z <- OP(z - step acc, thr[i + r])
   on the tile's columns of row i + r (OP: P##_st, or P##_pst for the
   one-sided threshold; VOP the same on vectors), the non-zeros (NaN
   included) counted lane by lane in n0, n1 (summed once, at the end), the
   signs (1, -1, 0; NaN -1) written to sg when given: entry by entry the
   operations of P##_st_step and P##_st_step_sign in _simd.h. */
#define FL_GEMM_EPI_STEP(T, V, P, r, acc0, acc1, IV, VOP, OP)              \
    {                                                                     \
        T *z = Z + (ptrdiff_t) (i + r) * ldz + j0;                        \
        const T s = thr[i + r];                                           \
        if (nc == NR) {                                                   \
            V z0, z1;                                                     \
            const V vs = FL_SPLAT_##P(s);                                 \
            memcpy(&z0, z, sizeof z0);                                    \
            memcpy(&z1, z + W, sizeof z1);                                \
            V o0 = VOP(IV, V, z0 - vstep * (acc0), vs);                   \
            V o1 = VOP(IV, V, z1 - vstep * (acc1), vs);                   \
            memcpy(z, &o0, sizeof o0);                                    \
            memcpy(z + W, &o1, sizeof o1);                                \
            n0 -= (IV) (o0 != (V){0});                /* NaN != 0 */      \
            n1 -= (IV) (o1 != (V){0});                                    \
            if (sg != NULL)                                               \
                FL_STORE_SIGNS(T, IV, P, o0, o1,                          \
                               sg + (ptrdiff_t) (i + r) * ldsg + j0)      \
        } else {                                                          \
            T o[NR];                                                      \
            memcpy(o, &(acc0), sizeof(V));                                \
            memcpy(o + W, &(acc1), sizeof(V));                            \
            for (int j = 0; j < nc; j++) {                                \
                o[j] = OP(z[j] - step * o[j], s);                         \
                z[j] = o[j];                                              \
                tail += o[j] != 0;                                        \
                if (sg != NULL)                                           \
                    sg[(ptrdiff_t) (i + r) * ldsg + j0 + j] =             \
                        (signed char) ((o[j] > 0) - !(o[j] >= 0));        \
            }                                                             \
        }                                                                 \
    }
#define FL_GEMM_EPI_STEP_ST(T, V, P, r, acc0, acc1)                        \
    FL_GEMM_EPI_STEP(T, V, P, r, acc0, acc1, P##_ivec, FL_VST, P##_st)
#define FL_GEMM_EPI_STEP_PST(T, V, P, r, acc0, acc1)                       \
    FL_GEMM_EPI_STEP(T, V, P, r, acc0, acc1, P##_ivec, FL_VPST, P##_pst)

/* The body of a fused-step function (P##_gemm_step_core, and
   _gemm_avx2.h's P##_gemm_step_core_v3 with its own epilogues EPI_ST and
   EPI_PST): every panel of B, every row tile, the non-zeros summed from
   the epilogues' vector counters n0, n1 and scalar count tail. */
#define FL_GEMM_STEP_BODY(T, V, P, EPI_ST, EPI_PST)                        \
    {                                                                     \
    enum { W = (int) (sizeof(V) / sizeof(T)), NR = 2 * W };               \
    T Bs[FL_GEMM_KC * NR] __attribute__((aligned(32)));                   \
    P##_ivec n0 = {0}, n1 = {0};                                          \
    ptrdiff_t tail = 0;                                                   \
    const V vstep = FL_SPLAT_##P(step);                                   \
    const int kb = 0, kc = K;                                             \
    for (int j0 = 0; j0 < N; j0 += NR) {                                  \
        const int nc = N - j0 < NR ? N - j0 : NR;                         \
        const T *Bp = Bs;                                                 \
        if (BP != NULL)                                                   \
            Bp = BP + (ptrdiff_t) j0 * kc;                                \
        else                                                              \
            FL_GEMM_PACK(T, Bs)                                           \
        const T *a = A;                                                   \
        if (positive) {                                                   \
            FL_GEMM_ROWS(T, V, P, EPI_PST)                                \
        } else {                                                          \
            FL_GEMM_ROWS(T, V, P, EPI_ST)                                 \
        }                                                                 \
    }                                                                     \
    ptrdiff_t nnz = tail;                                                 \
    for (int j = 0; j < W; j++) nnz += (ptrdiff_t) n0[j] + (ptrdiff_t) n1[j]; \
    return nnz;                                                           \
    }

/* The float32 tile's fused step with the iterate in double (float32 ISTA
   keeps z in double, Zd, and multiplies its rounding Z): for row i + r,
   v = Zd - step acc, acc (the float32 sums) widened to double exactly,
   o = OP(v, step lam[i + r]) (ST, or PST if positive: the double
   thresholds) stored to Zd and its rounding to float to Z, the non-zeros
   of o (NaN included) counted lane by lane in nw. Each 8-float vector of
   the tile is two 4-double vectors, taken by quarter q of the 16 columns.
   Entry by entry the operations of the unfused step (a float32 product
   into G, then z <- OP(z - step g, lam step) in double). */
typedef float fl_s_half __attribute__((vector_size(16)));
#ifdef FL_SHUFFLE_BYTES
#  define FL_WIDEN_LO(v)                                                   \
    __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3), fl_d_vec)
#  define FL_WIDEN_HI(v)                                                   \
    __builtin_convertvector(__builtin_shufflevector(v, v, 4, 5, 6, 7), fl_d_vec)
#else
#  define FL_WIDEN_LO(v)                                                   \
    ({ fl_s_half h_; memcpy(&h_, &(v), sizeof h_);                        \
       __builtin_convertvector(h_, fl_d_vec); })
#  define FL_WIDEN_HI(v)                                                   \
    ({ fl_s_half h_; memcpy(&h_, (const char *) &(v) + sizeof h_, sizeof h_); \
       __builtin_convertvector(h_, fl_d_vec); })
#endif
#define FL_GEMM_WIDE_QUARTER(q, a, VOP)                                    \
    {                                                                     \
        fl_d_vec zq_, o_;                                                 \
        memcpy(&zq_, zd + 4 * (q), sizeof zq_);                           \
        o_ = VOP(fl_d_ivec, fl_d_vec, zq_ - vstepd * (a), vs);            \
        memcpy(zd + 4 * (q), &o_, sizeof o_);                             \
        nw -= (fl_d_ivec) (o_ != (fl_d_vec){0});      /* NaN != 0 */      \
        fl_s_half f_ = __builtin_convertvector(o_, fl_s_half);            \
        memcpy(z + 4 * (q), &f_, sizeof f_);                              \
    }
#define FL_GEMM_EPI_WSTEP(T, V, P, r, acc0, acc1, VOP, OP)                 \
    {                                                                     \
        double *zd = Zd + (ptrdiff_t) (i + r) * ldzd + j0;                \
        float *z = Z + (ptrdiff_t) (i + r) * ldz + j0;                    \
        const double s = step * lam[i + r];                               \
        if (nc == NR) {                                                   \
            const fl_d_vec vs = FL_SPLAT_fl_d(s);                         \
            FL_GEMM_WIDE_QUARTER(0, FL_WIDEN_LO(acc0), VOP)               \
            FL_GEMM_WIDE_QUARTER(1, FL_WIDEN_HI(acc0), VOP)               \
            FL_GEMM_WIDE_QUARTER(2, FL_WIDEN_LO(acc1), VOP)               \
            FL_GEMM_WIDE_QUARTER(3, FL_WIDEN_HI(acc1), VOP)               \
        } else {                                                          \
            float o[NR];                                                  \
            memcpy(o, &(acc0), sizeof(V));                                \
            memcpy(o + W, &(acc1), sizeof(V));                            \
            for (int j = 0; j < nc; j++) {                                \
                const double v = OP(zd[j] - step * (double) o[j], s);     \
                zd[j] = v;                                                \
                z[j] = (float) v;                                         \
                tail += v != 0;                                           \
            }                                                             \
        }                                                                 \
    }
#define FL_GEMM_EPI_WSTEP_ST(T, V, P, r, acc0, acc1)                       \
    FL_GEMM_EPI_WSTEP(T, V, P, r, acc0, acc1, FL_VST, fl_d_st)
#define FL_GEMM_EPI_WSTEP_PST(T, V, P, r, acc0, acc1)                      \
    FL_GEMM_EPI_WSTEP(T, V, P, r, acc0, acc1, FL_VPST, fl_d_pst)

#define FL_DEFINE_GEMM(T, V, P)                                            \
/* C = alpha A B + beta C0 (row-major; see the top of the file); C0 may   \
   be C, and is not read where beta = 0. B's panels are read from BP      \
   (P##_gemm_pack) unless it is NULL, else copied from B as they go. */   \
static FL_SIMD void P##_gemm_core(int M, int N, int K, T alpha, const T *A, \
                                  int lda, const T *B, int ldb,           \
                                  const T *BP, T beta, const T *C0,       \
                                  int ldc0, T *C, int ldc) {              \
    enum { W = (int) (sizeof(V) / sizeof(T)), NR = 2 * W };               \
    T Bs[FL_GEMM_KC * NR] __attribute__((aligned(32)));                   \
    const ptrdiff_t Np = (ptrdiff_t) (N + NR - 1) / NR * NR;              \
    if (K <= 0) {                                                         \
        for (int i = 0; i < M; i++)                                       \
            for (int j = 0; j < N; j++)                                   \
                C[(ptrdiff_t) i * ldc + j] = beta != 0                    \
                    ? beta * C0[(ptrdiff_t) i * ldc0 + j] : 0;            \
        return;                                                           \
    }                                                                     \
    const V va = FL_SPLAT_##P(alpha);                                     \
    for (int kb = 0; kb < K; kb += FL_GEMM_KC) {                          \
        const int kc = K - kb < FL_GEMM_KC ? K - kb : FL_GEMM_KC;         \
        const T bt = kb == 0 ? beta : 1;                                  \
        const V vb = FL_SPLAT_##P(bt);                                    \
        if (kb > 0) { C0 = C; ldc0 = ldc; }    /* accumulate from here */ \
        for (int j0 = 0; j0 < N; j0 += NR) {                              \
            const int nc = N - j0 < NR ? N - j0 : NR;                     \
            const T *Bp = Bs;                                             \
            if (BP != NULL)                                               \
                Bp = BP + (ptrdiff_t) kb * Np + (ptrdiff_t) j0 * kc;      \
            else                                                          \
                FL_GEMM_PACK(T, Bs)                                       \
            const T *a = A + kb;                                          \
            FL_GEMM_ROWS(T, V, P, FL_GEMM_EPI_AXPBY)                      \
        }                                                                 \
    }                                                                     \
}                                                                         \
/* The gradient step of a dense layer, fused into the product: Z[i] <-   \
   OP(Z[i] - step (A B)[i], thr[i]) for the M rows (OP: ST, or the        \
   one-sided threshold if positive), sg[i] <- the signs of the result    \
   (unless sg is NULL); returns the non-zeros. Needs K <= FL_GEMM_KC (the \
   whole sum is in the tile when the step is taken). B's panels as in    \
   P##_gemm_core. */                                                     \
static FL_SIMD ptrdiff_t P##_gemm_step_core(int M, int N, int K, const T *A, \
                                            int lda, const T *B, int ldb, \
                                            const T *BP, T step,          \
                                            const T *thr, int positive,   \
                                            T *Z, int ldz, signed char *sg, \
                                            int ldsg)                     \
    FL_GEMM_STEP_BODY(T, V, P, FL_GEMM_EPI_STEP_ST, FL_GEMM_EPI_STEP_PST)

#else
/* Without GNU C's vector extensions: plain loops of the same semantics,
   for the tests (fl_gemm_vectorized() is 0, and the networks use BLAS). */
#define FL_DEFINE_GEMM(T, V, P)                                            \
static T P##_b_at(const T *B, int ldb, const T *BP, int N, int K, int k,  \
                  int j) {                                                \
    const int NR = FL_GEMM_NR(T), kb = k / FL_GEMM_KC * FL_GEMM_KC;       \
    const int kc = K - kb < FL_GEMM_KC ? K - kb : FL_GEMM_KC, j0 = j / NR * NR; \
    const ptrdiff_t Np = (ptrdiff_t) (N + NR - 1) / NR * NR;              \
    return BP == NULL ? B[(ptrdiff_t) k * ldb + j]                        \
        : BP[kb * Np + (ptrdiff_t) j0 * kc + (ptrdiff_t) (k - kb) * NR + j - j0]; \
}                                                                         \
static void P##_gemm_core(int M, int N, int K, T alpha, const T *A,        \
                          int lda, const T *B, int ldb, const T *BP,      \
                          T beta, const T *C0, int ldc0, T *C, int ldc) { \
    for (int i = 0; i < M; i++)                                           \
        for (int j = 0; j < N; j++) {                                     \
            T acc = 0;                                                    \
            for (int k = 0; k < K; k++)                                   \
                acc += A[(ptrdiff_t) i * lda + k] * P##_b_at(B, ldb, BP, N, K, k, j); \
            C[(ptrdiff_t) i * ldc + j] = beta != 0                        \
                ? alpha * acc + beta * C0[(ptrdiff_t) i * ldc0 + j] : alpha * acc; \
        }                                                                 \
}                                                                         \
static ptrdiff_t P##_gemm_step_core(int M, int N, int K, const T *A,       \
                                    int lda, const T *B, int ldb,         \
                                    const T *BP, T step, const T *thr,    \
                                    int positive, T *Z, int ldz,          \
                                    signed char *sg, int ldsg) {          \
    ptrdiff_t nnz = 0;                                                    \
    for (int i = 0; i < M; i++)                                           \
        for (int j = 0; j < N; j++) {                                     \
            T acc = 0, *z = Z + (ptrdiff_t) i * ldz + j, v;               \
            for (int k = 0; k < K; k++)                                   \
                acc += A[(ptrdiff_t) i * lda + k] * P##_b_at(B, ldb, BP, N, K, k, j); \
            v = positive ? P##_pst(*z - step * acc, thr[i])               \
                         : P##_st(*z - step * acc, thr[i]);               \
            *z = v;                                                       \
            nnz += v != 0;                                                \
            if (sg != NULL)                                               \
                sg[(ptrdiff_t) i * ldsg + j] = (signed char) ((v > 0) - !(v >= 0)); \
        }                                                                 \
    return nnz;                                                           \
}
#endif

FL_DEFINE_GEMM(float, fl_s_vec, fl_s)
FL_DEFINE_GEMM(double, fl_d_vec, fl_d)

/* The body of a float32 fused step with z in double (fl_s_gemm_step_wide_core,
   and _gemm_avx2.h's fl_s_gemm_step_wide_core_v3 with its own epilogues),
   as FL_GEMM_STEP_BODY with the epilogues above */
#define FL_GEMM_WSTEP_BODY(EPI_ST, EPI_PST)                                \
    {                                                                     \
    enum { W = 8, NR = 16 };                                              \
    float Bs[FL_GEMM_KC * NR] __attribute__((aligned(32)));               \
    fl_d_ivec nw = {0};                                                   \
    ptrdiff_t tail = 0;                                                   \
    const fl_d_vec vstepd = FL_SPLAT_fl_d(step);                          \
    const int kb = 0, kc = K;                                             \
    for (int j0 = 0; j0 < N; j0 += NR) {                                  \
        const int nc = N - j0 < NR ? N - j0 : NR;                         \
        const float *Bp = Bs;                                             \
        if (BP != NULL)                                                   \
            Bp = BP + (ptrdiff_t) j0 * kc;                                \
        else                                                              \
            FL_GEMM_PACK(float, Bs)                                       \
        const float *a = A;                                               \
        if (positive) {                                                   \
            FL_GEMM_ROWS(float, fl_s_vec, fl_s, EPI_PST)                  \
        } else {                                                          \
            FL_GEMM_ROWS(float, fl_s_vec, fl_s, EPI_ST)                   \
        }                                                                 \
    }                                                                     \
    ptrdiff_t nnz = tail;                                                 \
    for (int j = 0; j < 4; j++) nnz += (ptrdiff_t) nw[j];                 \
    return nnz;                                                           \
    }

/* The float32 gradient step with the iterate in double, fused into the
   product: Zd[i] <- OP(Zd[i] - step (A B)[i], step lam[i]) in double
   for the M rows (A B summed in float32 as P##_gemm_step sums it; OP: ST,
   or the one-sided threshold if positive), Z[i] <- its rounding to
   float; returns the non-zeros of the new Zd. Needs K <= FL_GEMM_KC. B's
   panels as in P##_gemm_core. */
#ifdef FL_GEMM_VECTOR_EXTENSIONS
static FL_SIMD ptrdiff_t fl_s_gemm_step_wide_core(int M, int N, int K, const float *A,
                                                 int lda, const float *B, int ldb,
                                                 const float *BP, double step,
                                                 const double *lam, int positive,
                                                 double *Zd, int ldzd, float *Z,
                                                 int ldz)
    FL_GEMM_WSTEP_BODY(FL_GEMM_EPI_WSTEP_ST, FL_GEMM_EPI_WSTEP_PST)
#else
static ptrdiff_t fl_s_gemm_step_wide_core(int M, int N, int K, const float *A, int lda,
                                          const float *B, int ldb, const float *BP,
                                          double step, const double *lam,
                                          int positive, double *Zd, int ldzd,
                                          float *Z, int ldz) {
    ptrdiff_t nnz = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float acc = 0;
            double *zd = Zd + (ptrdiff_t) i * ldzd + j, v;
            for (int k = 0; k < K; k++)
                acc += A[(ptrdiff_t) i * lda + k] * fl_s_b_at(B, ldb, BP, N, K, k, j);
            v = positive ? fl_d_pst(*zd - step * (double) acc, step * lam[i])
                         : fl_d_st(*zd - step * (double) acc, step * lam[i]);
            *zd = v;
            Z[(ptrdiff_t) i * ldz + j] = (float) v;
            nnz += v != 0;
        }
    return nnz;
}
#endif

#include "_gemm_avx512.h"   /* the same tile at 64 bytes: P##_gemm_*core_v4 */
#include "_gemm_avx2.h"     /* the step's epilogue in AVX2: P##_gemm_step_core_v3 */

/* The tile a call runs, by x86-64 level: FL_GEMM_AVX512 the 64-byte tile
   of _gemm_avx512.h (where compiled; call it only where fl_gemm_v4_runs()),
   any other level the 32-byte tile above (its widest clone the CPU runs;
   its fused step through the epilogue of _gemm_avx2.h where the CPU runs
   that). All give the same bits. */
enum { FL_GEMM_AVX2 = 3, FL_GEMM_AVX512 = 4 };
#ifdef FL_GEMM_HAVE_V4
#  define FL_GEMM_V4_CALL(level, call)                                     \
    if ((level) == FL_GEMM_AVX512) { call; }
#else
#  define FL_GEMM_V4_CALL(level, call)
#endif
#ifdef FL_GEMM_HAVE_V3
#  define FL_GEMM_V3_CALL(level, call)                                     \
    if ((level) == FL_GEMM_AVX2 && fl_gemm_v3_epilogue && fl_gemm_v3_runs()) { call; }
#else
#  define FL_GEMM_V3_CALL(level, call)
#endif

/* The calls, on B itself or on its panels packed by P##_gemm_pack:
   C = alpha A B + beta C0 (P##_gemm_from), C = alpha A B + beta C
   (P##_gemm), the fused gradient step (P##_gemm_step); level as above. */
#define FL_DEFINE_GEMM_CALLS(T, P)                                         \
static inline void P##_gemm_run(int level, int M, int N, int K, T alpha,   \
                                const T *A, int lda, const T *B, int ldb, \
                                const T *BP, T beta, const T *C0,         \
                                int ldc0, T *C, int ldc) {                \
    FL_GEMM_V4_CALL(level, P##_gemm_core_v4(M, N, K, alpha, A, lda, B,    \
                    ldb, BP, beta, C0, ldc0, C, ldc); return)             \
    P##_gemm_core(M, N, K, alpha, A, lda, B, ldb, BP, beta, C0, ldc0, C, ldc); \
}                                                                         \
static inline ptrdiff_t P##_gemm_step_run(int level, int M, int N, int K, \
        const T *A, int lda, const T *B, int ldb, const T *BP, T step,    \
        const T *thr, int positive, T *Z, int ldz, signed char *sg,       \
        int ldsg) {                                                       \
    FL_GEMM_V4_CALL(level, return P##_gemm_step_core_v4(M, N, K, A, lda,  \
                    B, ldb, BP, step, thr, positive, Z, ldz, sg, ldsg))   \
    FL_GEMM_V3_CALL(level, return P##_gemm_step_core_v3(M, N, K, A, lda,  \
                    B, ldb, BP, step, thr, positive, Z, ldz, sg, ldsg))   \
    return P##_gemm_step_core(M, N, K, A, lda, B, ldb, BP, step, thr,     \
                              positive, Z, ldz, sg, ldsg);                \
}                                                                         \
static inline ptrdiff_t P##_gemm_packed_size(int N, int K) {              \
    const int NR = FL_GEMM_NR(T);                                         \
    return (ptrdiff_t) (N + NR - 1) / NR * NR * (K > 0 ? K : 0);          \
}                                                                         \
static void P##_gemm_pack(int N, int K, const T *B, int ldb, T *BP) {     \
    const int NR = FL_GEMM_NR(T);                                         \
    const ptrdiff_t Np = (ptrdiff_t) (N + NR - 1) / NR * NR;              \
    for (int kb = 0; kb < K; kb += FL_GEMM_KC) {                          \
        const int kc = K - kb < FL_GEMM_KC ? K - kb : FL_GEMM_KC;         \
        for (int j0 = 0; j0 < N; j0 += NR) {                              \
            const int nc = N - j0 < NR ? N - j0 : NR;                     \
            T *Bs = BP + (ptrdiff_t) kb * Np + (ptrdiff_t) j0 * kc;       \
            FL_GEMM_PACK(T, Bs)                                           \
        }                                                                 \
    }                                                                     \
}                                                                         \
static inline void P##_gemm_from(int level, int M, int N, int K, T alpha, \
                                 const T *A, int lda, const T *B, int ldb, \
                                 T beta, const T *C0, int ldc0, T *C,     \
                                 int ldc) {                               \
    P##_gemm_run(level, M, N, K, alpha, A, lda, B, ldb, NULL, beta, C0, ldc0, \
                 C, ldc);                                                 \
}                                                                         \
static inline void P##_gemm_packed_from(int level, int M, int N, int K,  \
                                        T alpha, const T *A, int lda,     \
                                        const T *BP, T beta, const T *C0, \
                                        int ldc0, T *C, int ldc) {        \
    P##_gemm_run(level, M, N, K, alpha, A, lda, NULL, 0, BP, beta, C0, ldc0, \
                 C, ldc);                                                 \
}                                                                         \
static inline void P##_gemm(int level, int M, int N, int K, T alpha,      \
                            const T *A, int lda, const T *B, int ldb,     \
                            T beta, T *C, int ldc) {                      \
    P##_gemm_run(level, M, N, K, alpha, A, lda, B, ldb, NULL, beta, C, ldc, \
                 C, ldc);                                                 \
}                                                                         \
static inline ptrdiff_t P##_gemm_step(int level, int M, int N, int K,    \
                                      const T *A, int lda, const T *B,    \
                                      int ldb, T step, const T *thr,      \
                                      int positive, T *Z, int ldz,        \
                                      signed char *sg, int ldsg) {        \
    return P##_gemm_step_run(level, M, N, K, A, lda, B, ldb, NULL, step,  \
                             thr, positive, Z, ldz, sg, ldsg);            \
}                                                                         \
static inline ptrdiff_t P##_gemm_packed_step(int level, int M, int N,    \
                                             int K, const T *A, int lda,  \
                                             const T *BP, T step,         \
                                             const T *thr, int positive,  \
                                             T *Z, int ldz,               \
                                             signed char *sg, int ldsg) { \
    return P##_gemm_step_run(level, M, N, K, A, lda, NULL, 0, BP, step,   \
                             thr, positive, Z, ldz, sg, ldsg);            \
}

FL_DEFINE_GEMM_CALLS(float, fl_s)
FL_DEFINE_GEMM_CALLS(double, fl_d)

/* The float32 step with z in double (fl_s_gemm_step_wide_core), on B itself
   or on its panels packed by fl_s_gemm_pack; level as above */
static inline ptrdiff_t fl_s_gemm_step_wide_run(int level, int M, int N, int K,
        const float *A, int lda, const float *B, int ldb, const float *BP,
        double step, const double *lam, int positive, double *Zd, int ldzd,
        float *Z, int ldz) {
    FL_GEMM_V4_CALL(level, return fl_s_gemm_step_wide_core_v4(M, N, K, A, lda, B,
                    ldb, BP, step, lam, positive, Zd, ldzd, Z, ldz))
    FL_GEMM_V3_CALL(level, return fl_s_gemm_step_wide_core_v3(M, N, K, A, lda, B,
                    ldb, BP, step, lam, positive, Zd, ldzd, Z, ldz))
    return fl_s_gemm_step_wide_core(M, N, K, A, lda, B, ldb, BP, step, lam,
                                    positive, Zd, ldzd, Z, ldz);
}
static inline ptrdiff_t fl_s_gemm_step_wide(int level, int M, int N, int K,
        const float *A, int lda, const float *B, int ldb, double step,
        const double *lam, int positive, double *Zd, int ldzd, float *Z,
        int ldz) {
    return fl_s_gemm_step_wide_run(level, M, N, K, A, lda, B, ldb, NULL, step,
                                   lam, positive, Zd, ldzd, Z, ldz);
}
static inline ptrdiff_t fl_s_gemm_packed_step_wide(int level, int M, int N, int K,
        const float *A, int lda, const float *BP, double step,
        const double *lam, int positive, double *Zd, int ldzd, float *Z,
        int ldz) {
    return fl_s_gemm_step_wide_run(level, M, N, K, A, lda, NULL, 0, BP, step,
                                   lam, positive, Zd, ldzd, Z, ldz);
}

/* 1 if the calls above run their x86-64-v3 clone (AVX2 and FMA: a GCC 12+
   build with that clone, on a CPU that has both), the code they were
   written and measured for; else 0 (baseline code, or the plain loops:
   BLAS is faster). */
static inline int fl_gemm_vectorized(void) {
#if defined(FL_AVX2_CLONE)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

#endif
