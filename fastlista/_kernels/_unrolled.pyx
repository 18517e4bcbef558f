"""Unfolded ISTA networks: sample-blocked, layer-fused forward and backward.

A network of T layers maps a signal x (row of X, n features) to a code z_T
(m atoms), starting from z_0 = 0, by

    z_{t+1} = ST(u_t, lmbd thr_t),     ST(u, s) = sign(u) max(|u| - s, 0),

with one of two families of pre-activations u_t:

* residual (``step``, ``alista``, ``coupled``), one threshold a layer:
      u_t = z_t - a_t (z_t D - x) W_t^T = z_t - a_t (z_t M_t - c_t),
  M_t = D W_t^T (m, m), c_t = x W_t^T. ``step`` has W = D (so M = B = D D^T,
  c = x D^T) and thr_t = a_t; ``alista`` one fixed W; ``coupled`` one W_t a
  layer.
* ``lista``, one threshold an atom:  u_t = z_t W_z[t] + x W_x[t].

Backward pass, with g = d loss / d z_{t+1} and the support mask
w = g * 1[z_{t+1} != 0] (ST is linear with slope 1 on the support, 0 off it):

    d thr_t[j] = -lmbd sum_i w_ij sign(z_{t+1, ij})      (per atom; the
                 caller sums over atoms for a scalar threshold)
    residual:  d a_t  = -<w, z_t M_t - c_t> = -(<z_t, w M_t^T> - <w, c_t>)
                      = -<w W_t, z_t D - x>
               d W_t  = -a_t w^T (z_t D - x)
               d z_t  = w - a_t (w W_t) D^T = w - a_t w M_t^T
    lista:     d W_z[t] = z_t^T w,  d W_x[t] = x^T w,  d z_t = w W_z[t]^T

Losses at the output (means over the N samples, so G_T carries 1/N):
unsupervised F_x(z_T) with G_T = ((z_T D - x) D^T + lmbd sign(z_T)) / N,
supervised 1/2 ||z_T - s||^2 with G_T = (z_T - s) / N.

Execution (DESIGN §5): samples are independent and every loss is a sum over
samples, so the batch is cut into blocks of rows; each block runs through all
T layers and then (training) back through them, before the next block. The
block's codes of every layer are stored for the backward pass, as CSR rows
when the layer is sparse (nnz < rho nb m); a dense layer keeps only its
signs (bytes) beside r_t = z_t D - x, which it computes anyway (n wide
instead of m): the backward pass needs z_t's values only through
<z_t, w M^T> = <r_t + x, w W> (a dense copy is kept when the layers go
through M and compute no r_t). Nothing of size N x m x T exists, and a
block's storage stays in L2. Blocks go to OpenMP threads (static
schedule: results are deterministic for a given thread count), each with its
own workspace and gradient accumulators, summed by the caller; BLAS must run
single-threaded meanwhile (the caller's job, with threadpoolctl).

Dense layers take two GEMMs through D and W (4 m n flops a row), or one
through M when that is cheaper (m < 2 n). Every GEMM is untransposed (the
caller passes D^T and W^T): on blocks of a few dozen rows an AVX-512
OpenBLAS then multiplies without packing the operands (elsewhere the
blocks are taller, to amortise the packing: _kernels/_cpu.pyx, and the
products go through _gemm.h, on the parameter matrices packed once a
call when it takes several blocks). A layer
whose input codes are sparse takes the support-aware path: z_t M gathers
the k_i rows of M for the non-zeros of row i (2 k_i m flops; ``coupled``
gathers rows of D for z_t D), and the backward pass gathers the rows of
M^T (or W, W_z^T) for the support of z_{t+1}. With one W for all layers,
consecutive sparse layers run row by row: each row goes through up to
SPARSE_RUN layers forward (and through all the sparse ones backward)
before the next row, so that its c = x W^T, code and gradient stay in L1
and only the gathered rows of M come from L2. Row loops run in L1; their
elementwise work is in the C micro-kernels below.
"""
from cython cimport floating
from libc.float cimport DBL_EPSILON, FLT_EPSILON
from libc.limits cimport INT_MAX
from libc.string cimport memcpy, memset
cimport openmp

import threading

import numpy as np

from ._blocks cimport (in_main_thread, raise_interrupt, run_blocks, table_alloc,
                      table_free)
from ._simd cimport (fl_d_back_sign, fl_s_back_sign, fl_d_gather, fl_s_gather,
                     fl_d_gather_set, fl_s_gather_set,
                     fl_d_nonfinite, fl_s_nonfinite, fl_d_scaled_st_compact,
                     fl_s_scaled_st_compact, fl_d_scaled_pst_compact,
                     fl_s_scaled_pst_compact, fl_d_st_step, fl_s_st_step,
                     fl_d_pst_step, fl_s_pst_step, fl_d_st_step_sign,
                     fl_s_st_step_sign, fl_d_pst_step_sign, fl_s_pst_step_sign,
                     fl_d_count_nonzero, fl_s_count_nonzero, fl_d_abs_sum, fl_s_abs_sum,
                     FL_GATHER_PORTABLE, FL_GATHER_AVX2, FL_GATHER_AVX512,
                     fl_gather_v3_runs, fl_gather_v3_default,
                     fl_gather_v4_runs, fl_gather_v4_default,
                     fl_d_gather_row, fl_s_gather_row)


from ._blas cimport axpy, dot, gemm
from ._gemm cimport (FL_GEMM_KC, fl_d_gemm_pack, fl_d_gemm_packed_size,
                     fl_s_gemm_pack, fl_s_gemm_packed_size, own_gemm, own_gemm_from,
                     own_gemm_packed_from, own_gemm_packed_step, own_gemm_step)
from ._prox cimport sign, threshold

from ._gemm import aligned_empty, check_level


# storage formats of a stored layer
cdef enum:
    FMT_DENSE = 0   # a dense copy of z
    FMT_CSR = 1     # the non-zeros of z, row by row
    FMT_SIGN = 2    # sign(z) as bytes; the layer's r = z D - x is kept beside

# losses at the output z_T
cdef enum:
    LOSS_UNSUPERVISED = 1   # mean F_x(z_T)
    LOSS_SUPERVISED = 2     # mean 1/2 ||z_T - s||^2

LOSSES = {"unsupervised": LOSS_UNSUPERVISED, "supervised": LOSS_SUPERVISED}

# The kernels of the sparse layers' rows (_gather.h), by the x86-64 level
# they are written for: the portable one (0, _simd.h, vectorised by the
# compiler for the running CPU), by hand in AVX2 (3, _gather_avx2.h) and in
# AVX-512 (4, _gather_avx512.h); all compute the same values up to rounding, 3 and 4
# bit for bit the same. GATHER_KERNELS: those the running CPU executes in
# this build; GATHER: the networks' default, the widest of them in the
# optimised build (the portable one in the debug build, whose tests force
# each).
GATHER_PORTABLE, GATHER_AVX2, GATHER_AVX512 = (FL_GATHER_PORTABLE, FL_GATHER_AVX2,
                                               FL_GATHER_AVX512)
GATHER_KERNELS = ((GATHER_PORTABLE,) + ((GATHER_AVX2,) if fl_gather_v3_runs() else ())
                  + ((GATHER_AVX512,) if fl_gather_v4_runs() else ()))
GATHER = (GATHER_AVX512 if fl_gather_v4_default() else
          GATHER_AVX2 if fl_gather_v3_default() else GATHER_PORTABLE)


cdef struct Packed:
    # a parameter matrix B (K, N, leading dimension ldb) of the call's
    # products, its panels packed once for _gemm.h (own_gemm_pack) at BP
    const void *B
    int N
    int K
    int ldb
    const void *BP


cdef struct Dims:
    Py_ssize_t nb       # rows of this block
    Py_ssize_t nb_max   # rows of a full block (stride of the stored layers)
    Py_ssize_t chunk    # rows of one BLAS call (row_gemm)
    int own_gemm    # row_gemm multiplies through _gemm.h at this level (0: BLAS)
    const Packed *pk    # (n_pk,) the parameter matrices packed for _gemm.h
    int n_pk
    int gather      # kernel of the sparse rows (GATHER_KERNELS: the CPU runs it)
    int run         # layers a sparse shared-W block runs row by row (SPARSE_RUN)
    int *plan       # (T + 1,) plan[t]: layer t's input was sparse in the
                    # thread's previous block (0 before its first block)
    Py_ssize_t m        # atoms
    Py_ssize_t n        # features
    int T               # layers run
    bint shared     # residual family with one W for all layers (M, M^T given)
    bint gram       # dense residual layers go through M (m < 2 n)
    bint positive   # codes constrained >= 0 (one-sided threshold)
    double rho      # density below which a layer takes the sparse path
    # support selection (LISTA-CPSS): layer t passes the ks[t] entries of
    # largest magnitude unthresholded (ks NULL: none); the atoms selected in
    # the layer that wrote storage slot s are at sel[s nb_max kmax + i kmax:]
    const int *ks
    int kmax
    int *sel
    double *hkey    # (kmax,) heap keys
    unsigned char *mark     # (m,) zeroed


cdef inline Dims make_dims(Py_ssize_t nb, Py_ssize_t nb_max, Py_ssize_t m,
                          Py_ssize_t n, int T, bint shared, bint gram,
                          bint positive, double rho) noexcept nogil:
    cdef Dims d
    d.ks = NULL
    d.kmax = 0
    d.sel = NULL
    d.hkey = NULL
    d.mark = NULL
    d.nb = nb
    d.nb_max = nb_max
    d.chunk = nb_max
    d.own_gemm = 0
    d.pk = NULL
    d.n_pk = 0
    d.gather = FL_GATHER_PORTABLE
    d.run = 1
    d.plan = NULL
    d.m = m
    d.n = n
    d.T = T
    d.shared = shared
    d.gram = gram
    d.positive = positive
    d.rho = rho
    return d


cdef inline const floating *packed_of(Dims *d, const floating *B, int N, int K,
                                     int ldb) noexcept nogil:
    """B's packed panels if the call packed B (K, N, ldb), else NULL."""
    cdef int q
    for q in range(d.n_pk):
        if (d.pk[q].B == <const void *> B and d.pk[q].N == N and d.pk[q].K == K
                and d.pk[q].ldb == ldb):
            return <const floating *> d.pk[q].BP
    return NULL


cdef inline void row_gemm(Dims *d, int N, int K, floating alpha, const floating *A,
                          int lda, const floating *B, int ldb, floating beta,
                          floating *C, int ldc) noexcept nogil:
    """C[nb, N] = alpha A[nb, K] B[K, N] + beta C, row-major.

    Through _gemm.h in one call (d.own_gemm; B's panels packed once a call
    where the call packed it), or BLAS d.chunk rows a call:
    each call small enough for an AVX-512 OpenBLAS's small-matrix kernels
    (no packing), while the block may be several chunks tall: the products
    whose inner dimension is the block's rows (d W_t += w_t^T r_t) then run
    once a block, over all of its rows.
    """
    cdef Py_ssize_t r = 0, k
    cdef const floating *BP
    if d.own_gemm:
        BP = packed_of(d, B, N, K, ldb)
        if BP != NULL:
            own_gemm_packed_from(d.own_gemm, <int> d.nb, N, K, alpha, A, lda, BP, beta,
                                 C, ldc, C, ldc)
        else:
            own_gemm(d.own_gemm, <int> d.nb, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
        return
    while r < d.nb:
        k = min(d.chunk, d.nb - r)
        gemm(False, False, <int> k, N, K, alpha, A + r * lda, lda, B, ldb, beta,
             C + r * ldc, ldc)
        r += k


cdef inline double long_dot(Py_ssize_t size, const floating *x,
                            const floating *y) noexcept nogil:
    """<x, y> over size entries, a block's rows x features or rows x atoms.

    <x, y> = sum_c <x_c, y_c> over consecutive chunks x_c of at most INT_MAX
    entries, each one BLAS dot (whose count is a C int): for size <= INT_MAX
    that is the single BLAS dot of all entries.
    """
    cdef Py_ssize_t k = min(size, <Py_ssize_t> INT_MAX), c
    cdef double out = dot(<int> k, x, y)
    while k < size:
        c = min(size - k, <Py_ssize_t> INT_MAX)
        out += dot(<int> c, x + k, y + k)
        k += c
    return out


# ---------------------------------------------------------------------------
# elementwise helpers
# ---------------------------------------------------------------------------

cdef inline int scaled_st_compact_row(int m, floating *y, floating a, floating s,
                                      int *idx, floating *val,
                                      bint positive) noexcept nogil:
    """y <- a ST(y, s) in place (one-sided for positive codes), its CSR row
    in idx/val; returns nnz."""
    if floating is double:
        if positive:
            return fl_d_scaled_pst_compact(m, y, a, s, idx, val)
        return fl_d_scaled_st_compact(m, y, a, s, idx, val)
    else:
        if positive:
            return fl_s_scaled_pst_compact(m, y, a, s, idx, val)
        return fl_s_scaled_st_compact(m, y, a, s, idx, val)


cdef inline int gather_st_compact_row(int k, const int *iz, const floating *vz,
                                      const floating *M, int m, floating *c,
                                      floating *u, floating a, floating s,
                                      int *idx, floating *val, bint positive,
                                      int gather) noexcept nogil:
    """u <- a ST(c - sum_q vz[q] (M - I / a)[iz[q], :], s) (one-sided for
    positive codes), its CSR row in idx/val, in one pass for k <= 8;
    returns nnz. c is patched for the pass and restored exactly. gather:
    the kernel's level (_gather.h)."""
    cdef floating delta = -1 / a
    if floating is double:
        return fl_d_gather_row(gather, positive, k, iz, vz, -1, delta, M, m, c, u, a, s,
                               idx, val)
    return fl_s_gather_row(gather, positive, k, iz, vz, -1, delta, M, m, c, u, a, s,
                           idx, val)


cdef inline Py_ssize_t st_step_row(Py_ssize_t m, floating *z, const floating *u,
                                   floating a, floating s, signed char *sg,
                                   bint positive) noexcept nogil:
    """z <- ST(z - a u, s) over a row (one-sided for positive codes), and
    its signs in sg unless NULL; returns nnz (NaN counted)."""
    if floating is double:
        if sg != NULL:
            if positive:
                return fl_d_pst_step_sign(m, z, u, a, s, sg)
            return fl_d_st_step_sign(m, z, u, a, s, sg)
        if positive:
            return fl_d_pst_step(m, z, u, a, s)
        return fl_d_st_step(m, z, u, a, s)
    else:
        if sg != NULL:
            if positive:
                return fl_s_pst_step_sign(m, z, u, a, s, sg)
            return fl_s_st_step_sign(m, z, u, a, s, sg)
        if positive:
            return fl_s_pst_step(m, z, u, a, s)
        return fl_s_st_step(m, z, u, a, s)


cdef inline void gather_rows(int k, const int *idx, const floating *val,
                             floating alpha, const floating *A, int p,
                             floating *out) noexcept nogil:
    """out += alpha * sum_q val[q] * A[idx[q], :]   (A has p columns)"""
    if floating is double:
        fl_d_gather(k, idx, val, alpha, A, p, out)
    else:
        fl_s_gather(k, idx, val, alpha, A, p, out)


cdef inline void gather_set_rows(int k, const int *idx, const floating *val,
                                 floating alpha, const floating *A, int p,
                                 floating *out) noexcept nogil:
    """out = alpha * sum_q val[q] * A[idx[q], :]   (A has p columns; 0 for k = 0)"""
    if floating is double:
        fl_d_gather_set(k, idx, val, alpha, A, p, out)
    else:
        fl_s_gather_set(k, idx, val, alpha, A, p, out)


cdef inline bint heap_less(double ka, int ia, double kb, int ib) noexcept nogil:
    """(ka, ia) ranks below (kb, ib): a smaller key, or an equal key and a
    later atom (the earlier atom wins ties)."""
    return ka < kb or (ka == kb and ia > ib)


cdef void select_top(Py_ssize_t m, const floating *v, int k, bint positive,
                     double *key, int *sel) noexcept nogil:
    """sel[:k] = the k atoms of largest |v_j| (largest v_j for positive
    codes), the earlier atom first among equal values: one pass with a
    min-heap of size k (key, sel) whose root is the entry to evict."""
    cdef Py_ssize_t j
    cdef int size = 0, c, p, child, ti
    cdef double kj, tk
    if k <= 0:
        return
    for j in range(m):
        kj = v[j] if positive else (v[j] if v[j] >= 0 else -v[j])
        if size < k:
            # push, sift up
            c = size
            size += 1
            key[c] = kj
            sel[c] = <int> j
            while c > 0:
                p = (c - 1) // 2
                if not heap_less(key[c], sel[c], key[p], sel[p]):
                    break
                tk = key[c]; key[c] = key[p]; key[p] = tk
                ti = sel[c]; sel[c] = sel[p]; sel[p] = ti
                c = p
        elif heap_less(key[0], sel[0], kj, <int> j):
            # replace the root, sift down
            key[0] = kj
            sel[0] = <int> j
            c = 0
            while True:
                child = 2 * c + 1
                if child >= k:
                    break
                if child + 1 < k and heap_less(key[child + 1], sel[child + 1],
                                               key[child], sel[child]):
                    child += 1
                if not heap_less(key[child], sel[child], key[c], sel[c]):
                    break
                tk = key[c]; key[c] = key[child]; key[child] = tk
                ti = sel[c]; sel[c] = sel[child]; sel[child] = ti
                c = child


cdef inline Py_ssize_t select_threshold_row(Dims *d, Py_ssize_t m, floating *z,
                                            const floating *v, const floating *s,
                                            floating s0, int k, int *sel,
                                            signed char *sg) noexcept nogil:
    """z = v with the k entries of largest magnitude (support selection)
    passed unthresholded (for positive codes max(v, 0)), the others
    ST(v_j, s_j) (s NULL: s0 for every atom); sel[:k] receives the
    selected atoms, sg (unless NULL) the signs. z may be v. Returns nnz."""
    cdef Py_ssize_t j, nnz = 0
    cdef int q
    cdef floating w
    select_top(m, v, k, d.positive, d.hkey, sel)
    for q in range(k):
        d.mark[sel[q]] = 1
    for j in range(m):
        if d.mark[j]:
            d.mark[j] = 0
            w = v[j]
            if d.positive and w < 0:
                w = 0
        else:
            w = threshold(v[j], s[j] if s != NULL else s0, d.positive)
        z[j] = w
        nnz += w != 0
        if sg != NULL:
            sg[j] = <signed char> ((w > 0) - (w < 0))
    return nnz


cdef void selected_threshold_gradient(Dims *d, const floating *G, int fmt,
                                      const floating *val, int k, const int *sel,
                                      const double *lam, double *dthr) noexcept nogil:
    """Take back the threshold gradient of the selected entries of a layer
    (they passed unthresholded): dthr[j] += lmbd_i w_ij sign(z_ij), with
    w = G already masked and z stored dense (FMT_DENSE) or as signs."""
    cdef Py_ssize_t i, m = d.m, j
    cdef int q
    cdef double sz
    for i in range(d.nb):
        for q in range(k):
            j = sel[i * d.kmax + q]
            if fmt == FMT_SIGN:
                sz = (<const signed char *> val)[i * m + j]
            else:
                sz = sign(val[i * m + j])
            dthr[j] += lam[i] * G[i * m + j] * sz


cdef inline void compact_block(Dims *d, floating *Z, int *ptr, int *idx,
                               floating *val) noexcept nogil:
    """CSR of the nb x m block Z, through the fused row kernel with a = 1
    and s = 0: ST(z, 0) = z exactly, so Z is rewritten with its own values."""
    cdef Py_ssize_t i, m = d.m
    ptr[0] = 0
    for i in range(d.nb):
        ptr[i + 1] = ptr[i] + scaled_st_compact_row(m, &Z[<Py_ssize_t> i * m], 1, 0,
                                                    &idx[ptr[i]], &val[ptr[i]], False)


cdef inline void expand_block(Dims *d, floating *Z, const int *ptr,
                              const int *idx, const floating *val) noexcept nogil:
    """The nb x m block Z from its CSR rows (ptr, idx, val)."""
    cdef Py_ssize_t i, p, m = d.m
    memset(Z, 0, d.nb * m * sizeof(floating))
    for i in range(d.nb):
        for p in range(ptr[i], ptr[i + 1]):
            Z[i * m + idx[p]] = val[p]


cdef inline Py_ssize_t count_nonzero(Py_ssize_t size, const floating *z) noexcept nogil:
    """Number of non-zero (or NaN) entries of z[:size] (_simd.h)."""
    if floating is double:
        return fl_d_count_nonzero(size, z)
    return fl_s_count_nonzero(size, z)


cdef inline double abs_sum(Py_ssize_t size, const floating *z) noexcept nogil:
    """||z[:size]||_1 in double (_simd.h)."""
    if floating is double:
        return fl_d_abs_sum(size, z)
    return fl_s_abs_sum(size, z)


cdef inline void store_layer(Dims *d, floating *Z, Py_ssize_t nnz,
                             int *fmt, int *ptr, int *idx, floating *val) noexcept nogil:
    """Store the block's code z: CSR when sparse, a dense copy otherwise."""
    if nnz < d.rho * d.nb * d.m:
        fmt[0] = FMT_CSR
        compact_block(d, Z, ptr, idx, val)
    else:
        fmt[0] = FMT_DENSE
        memcpy(val, Z, d.nb * d.m * sizeof(floating))


cdef void residual_rows(Dims *d, const floating *X, const floating *D,
                        const floating *Z, int fmt, const int *ptr, const int *idx,
                        const floating *val, floating *R) noexcept nogil:
    """R = Z D - X, gathering the rows of D for the non-zeros of sparse Z."""
    cdef Py_ssize_t i, k, m = d.m, n = d.n, nb = d.nb
    cdef const floating *BP
    if fmt == FMT_CSR:
        for i in range(nb):
            for k in range(n):
                R[i * n + k] = -X[i * n + k]
            gather_rows(ptr[i + 1] - ptr[i], &idx[ptr[i]], &val[ptr[i]], 1,
                        D, n, &R[i * n])
    elif d.own_gemm:
        BP = packed_of(d, D, <int> n, <int> m, <int> n)
        if BP != NULL:
            own_gemm_packed_from(d.own_gemm, <int> nb, <int> n, <int> m, 1, Z,
                                 <int> m, BP, -1, X, <int> n, R, <int> n)
        else:
            own_gemm_from(d.own_gemm, <int> nb, <int> n, <int> m, 1, Z, <int> m, D,
                          <int> n, -1, X, <int> n, R, <int> n)
    else:
        memcpy(R, X, nb * n * sizeof(floating))
        row_gemm(d, n, m, 1, Z, m, D, n, -1, R, n)


cdef double block_objective(Dims *d, const floating *X, const floating *D,
                            const floating *Z, int fmt, const int *ptr,
                            const int *idx, const floating *val, const double *lam,
                            floating *R) noexcept nogil:
    """sum_i 1/2 ||x_i - z_i D||^2 + lmbd_i ||z_i||_1 over the block."""
    cdef Py_ssize_t i, m = d.m
    cdef double out = 0
    residual_rows(d, X, D, Z, fmt, ptr, idx, val, R)
    for i in range(d.nb):
        if fmt == FMT_CSR:
            out += lam[i] * abs_sum(ptr[i + 1] - ptr[i], &val[ptr[i]])
        else:
            out += lam[i] * abs_sum(m, &Z[i * m])
    return 0.5 * long_dot(d.nb * d.n, R, R) + out


cdef double block_loss(Dims *d, int loss, const floating *X, const floating *D,
                       const floating *DT, const floating *Z, int fmt, const int *ptr,
                       const int *idx, const floating *val, const floating *S,
                       const double *lam, floating inv_n, bint support_only,
                       floating *R, floating *G) noexcept nogil:
    """Loss of the block's output Z (summed) and G = d(mean loss)/dZ.

    unsupervised: F_x(z) = 1/2 ||x - z D||^2 + lmbd ||z||_1,
                  G = ((z D - x) D^T + lmbd sign(z)) / N
    supervised:   1/2 ||z - s||^2,  G = (z - s) / N

    support_only: the backward pass reads G only on the support of a
    sparse (CSR) Z, and G's other entries are left as they are (k dot
    products of length n a row instead of the product R D^T).
    """
    cdef Py_ssize_t i, j, p, size = <Py_ssize_t> d.nb * d.m, m = d.m, n = d.n
    cdef double out = 0
    cdef floating diff, li
    if loss == LOSS_UNSUPERVISED:
        out = block_objective(d, X, D, Z, fmt, ptr, idx, val, lam, R)
        if support_only and fmt == FMT_CSR:
            for i in range(d.nb):
                li = <floating> (lam[i] * inv_n)
                for p in range(ptr[i], ptr[i + 1]):
                    j = idx[p]
                    G[i * m + j] = inv_n * dot(n, &R[i * n], &D[j * n]) + li * sign(val[p])
            return out
        # G = (R D^T + lmbd sign(Z)) / N with R = Z D - X
        row_gemm(d, d.m, d.n, inv_n, R, d.n, DT, d.m, 0, G, d.m)
        for i in range(d.nb):
            li = <floating> (lam[i] * inv_n)
            for j in range(i * m, (i + 1) * m):
                G[j] += li * sign(Z[j])
    else:
        for j in range(size):
            diff = Z[j] - S[j]
            out += 0.5 * diff * diff
            G[j] = diff * inv_n
    return out


cdef void mask_gradient(Dims *d, floating *G, int fmt, const int *ptr,
                        const int *idx, const floating *val, const double *lam,
                        floating *wv, double *dthr) noexcept nogil:
    """w = g * 1[z != 0] in place in G; d thr[j] -= lmbd sum_i w_ij sign(z_ij).

    With a CSR z the support values of w are also gathered into wv (aligned
    with idx) for the sparse products that follow.
    """
    cdef Py_ssize_t i, j, p, m = d.m
    cdef floating g, li
    cdef floating *Gi
    cdef const floating *Zi
    cdef const signed char *Si
    if fmt == FMT_CSR:
        for i in range(d.nb):
            for p in range(ptr[i], ptr[i + 1]):
                wv[p] = G[i * m + idx[p]]
            memset(&G[i * m], 0, m * sizeof(floating))
            for p in range(ptr[i], ptr[i + 1]):
                G[i * m + idx[p]] = wv[p]
                dthr[idx[p]] -= lam[i] * wv[p] * sign(val[p])
    elif fmt == FMT_SIGN:
        # selects only (w_j sign(z_j) = w_j or -w_j), so that the loop vectorizes
        for i in range(d.nb):
            Gi = &G[i * m]
            Si = <const signed char *> val + <Py_ssize_t> i * m
            li = <floating> lam[i]
            for j in range(m):
                g = Gi[j] if Si[j] != 0 else 0
                Gi[j] = g
                dthr[j] -= li * (g if Si[j] > 0 else -g)
    else:
        for i in range(d.nb):
            Gi = &G[i * m]
            Zi = &val[i * m]
            li = <floating> lam[i]
            for j in range(m):
                g = Gi[j] if Zi[j] != 0 else 0
                Gi[j] = g
                dthr[j] -= li * (g if Zi[j] > 0 else -g)


cdef double stored_dot(Dims *d, int fmt, const int *ptr, const int *idx,
                       const floating *val, const floating *V) noexcept nogil:
    """<z, V> for a stored block code z."""
    cdef Py_ssize_t i, p
    cdef double out = 0
    if fmt == FMT_CSR:
        for i in range(d.nb):
            for p in range(ptr[i], ptr[i + 1]):
                out += val[p] * V[i * d.m + idx[p]]
        return out
    return long_dot(d.nb * d.m, val, V)


# ---------------------------------------------------------------------------
# residual family: step (SLISTA), alista, coupled (LISTA-CP)
# ---------------------------------------------------------------------------

#: A shared-W block whose code is sparse runs up to SPARSE_RUN layers row by
#: row (sparse_rows_forward) before its density is looked at again. Each
#: run reads every row's c again, from beyond L2 (a block's c and M do not
#: both fit): at lmbd = 0.8 on the paper shape runs of 8 layers took
#: 1.01-1.08 of the time of runs of 32. A block whose codes grow denser
#: within a run keeps gathering rows: a float32 forward at lmbd = 0.1
#: (codes 33-77 % dense) took 1.85 times as long when every layer below
#: half density gathered (rho = 0.5) as with rho = 0.1. On the paper
#: problem ISTA's codes grow sparser with depth after the first layer
#: (77 -> 33 % dense at lmbd = 0.1, 39 -> 14 % at 0.3).
SPARSE_RUN = 32
#: A float32 network's weight gradients are summed over this many blocks in
#: float32, then added into double accumulators: the float32 partial sums
#: carry the rounding of a few blocks, not of the whole batch, and the
#: flushes cost a pass over the gradient every FLUSH_BLOCKS blocks.
cdef int FLUSH_BLOCKS = 8


cdef Py_ssize_t sparse_rows_forward(
        Dims *d, int t0, int t1, const floating *X, const floating *D,
        const floating *M, floating *C, const floating *step,
        const floating *thr, const double *lam, bint store, int s_in, int s_out,
        int *ptr, int *idx, floating *val, floating *u, int *ib, floating *vb,
        floating *R, double *obj) noexcept nogil:
    """Layers t0 <= t < t1 of a shared-W block, each row through all of them
    before the next row; returns the output's number of non-zeros.

    Row i of layer t, with a = a_t and s = lam_i thr_t:

        y = c_i - z M + z / a,     z+ = ST(z - a (z M - c_i), s) = a ST(y, s / a),

    the rows of M - I / a gathered for the k non-zeros of z (2 k m flops),
    thresholded and compacted into z+'s CSR row in one kernel; the dense
    row goes to u (one row of scratch, in L1). (y carries the same absolute
    rounding error as u; every step is at least eps, which keeps z / a far
    from overflow.) A row's c_i, and its code from layer to layer, stay in
    L1 over the t1 - t0 layers, where a layer at a time would read them
    from L2 in every layer (at lmbd = 0.8 on the paper shape on Zen 3, a
    forward pass in 0.81-0.86 (float32) and 0.75-0.81 (float64) of its
    time a layer at a time: benchmarks/test_bench_networks.py, "one layer
    a run", three runs).

    The input code is in slot s_in, the output in slot s_out; with store,
    layer t's output is written to slot t + 1 (s_out = t1), otherwise the
    intermediate rows go back and forth between the halves of ib and vb
    (2 m each). C's rows are patched and restored exactly around each
    kernel. obj (or NULL) accumulates every layer's objective, row by
    row (block_objective on one row, R's first row its scratch).
    d.plan[t + 1] receives whether layer t's output is sparse (fewer than
    rho nb m non-zeros).
    """
    cdef Py_ssize_t m = d.m, n = d.n, cap = <Py_ssize_t> d.nb_max * m, i
    cdef Py_ssize_t nnz = 0
    cdef int t, k, kn, so
    cdef const int *iz
    cdef const floating *vz
    cdef int *io
    cdef int *po
    cdef floating *vo
    cdef floating a
    cdef Dims row = d[0]
    cdef int rp[2]
    row.nb = 1
    rp[0] = 0
    for t in range(t0, t1):
        if store or t == t1 - 1:
            ptr[(t + 1 if store else s_out) * (d.nb_max + 1)] = 0
        d.plan[t + 1] = 0       # layer t's non-zeros, then whether sparse
    for i in range(d.nb):
        po = &ptr[s_in * (d.nb_max + 1)]
        k = po[i + 1] - po[i]
        iz = &idx[s_in * cap + po[i]]
        vz = &val[s_in * cap + po[i]]
        for t in range(t0, t1):
            a = step[t]
            if store or t == t1 - 1:
                so = t + 1 if store else s_out
                po = &ptr[so * (d.nb_max + 1)]
                io = &idx[so * cap + po[i]]
                vo = &val[so * cap + po[i]]
            else:
                io = &ib[(t - t0) % 2 * m]
                vo = &vb[(t - t0) % 2 * m]
            kn = gather_st_compact_row(k, iz, vz, M, <int> m, &C[i * m], u, a,
                                       <floating> (lam[i] * thr[t]) / a, io, vo,
                                       d.positive, d.gather)
            if store or t == t1 - 1:
                po[i + 1] = po[i] + kn
            d.plan[t + 1] += kn
            k = kn
            iz = io
            vz = vo
            if obj != NULL:
                # the row's objective, as a one-row block
                rp[1] = k
                obj[t] += block_objective(&row, &X[i * n], D, NULL, FMT_CSR, rp,
                                          iz, vz, &lam[i], R)
        nnz += k
    for t in range(t0, t1):
        d.plan[t + 1] = d.plan[t + 1] < d.rho * d.nb * m
    return nnz


cdef void residual_forward_block(
        Dims *d, const floating *X, const floating *D, const floating *WT,
        const floating *M, const floating *step, const floating *thr,
        const double *lam, bint store, floating *C, floating *Z, floating *U,
        floating *R, int *ib, floating *vb, floating *Rst, int *fmt, int *ptr,
        int *idx, floating *val, double *obj) noexcept nogil:
    """Run the block through the T layers; z_T is left in Z.

    Row i's thresholds are lam[i] * thr[t]. ib and vb (2 m each) are the
    scratch of sparse_rows_forward.

    Layer t's code is in storage slot t (store), or in one of two slots
    that alternate (inference): fmt[s], ptr[s (nb_max + 1):],
    idx/val[s nb_max m:]. Rst (training,
    NULL when the dense layers go through M) receives r_t = z_t D - x of
    every layer that computes it; a dense code z_t is then stored as its
    signs (FMT_SIGN): the backward pass needs z_t's values only through
    <z_t, w M^T> = <r_t + x, w W>, and the block's storage (bytes and
    the n-wide r_t, instead of m-wide floating codes) stays in L2. obj
    (if not NULL) accumulates the objective of every layer's output.
    """
    cdef Py_ssize_t nb = d.nb, m = d.m, n = d.n, i, j
    cdef int T = d.T, t = 0, t1, s_in, s_out, cur = 0
    cdef Py_ssize_t cap = <Py_ssize_t> d.nb_max * m, size = <Py_ssize_t> nb * m
    cdef Py_ssize_t nnz = 0, r
    cdef const floating *WTt
    cdef const floating *BP
    cdef signed char *sg
    cdef floating a
    cdef floating eps = FLT_EPSILON if floating is float else DBL_EPSILON
    cdef floating *Rt
    cdef floating *z = Z        # z_t, dense when zdense
    cdef floating *u = U        # scratch: a block (dense layers), a row (sparse)
    cdef int *pin
    cdef int *pout
    cdef bint sparse, zdense = True, fused = False

    if d.shared:
        # c = x W^T, the constant part of the gradient step
        row_gemm(d, m, n, 1, X, n, WT, m, 0, C, m)
    memset(z, 0, size * sizeof(floating))
    fmt[0] = FMT_CSR
    memset(ptr, 0, (nb + 1) * sizeof(int))

    while t < T:
        s_in = t if store else cur
        pin = &ptr[s_in * (d.nb_max + 1)]
        a = step[t]
        WTt = WT if d.shared else &WT[<Py_ssize_t> t * m * n]
        sparse = fmt[s_in] == FMT_CSR and nnz < d.rho * size

        if sparse and d.shared and a >= eps:
            # a run of layers row by row, up to d.run of them, each with a
            # step of at least eps (smaller steps take the path below) and,
            # after the first, an input that was sparse in the thread's
            # previous block (the blocks of a call share their profile of
            # densities: from z_0 = 0, a sparse first layer may well give
            # dense codes); the block's dense z is only expanded from the
            # CSR rows when a dense layer or the output needs it
            t1 = t + 1
            while t1 < T and t1 - t < d.run and step[t1] >= eps and d.plan[t1]:
                t1 += 1
            s_out = t1 if store else 1 - cur
            nnz = sparse_rows_forward(d, t, t1, X, D, M, C, step, thr, lam, store,
                                      s_in, s_out, ptr, idx, val, u, ib, vb, R, obj)
            for r in range(t + 1 if store else s_out, s_out + 1):
                fmt[r] = FMT_CSR
            pout = &ptr[s_out * (d.nb_max + 1)]
            zdense = False
            t = t1
            cur = s_out
            continue
        s_out = t + 1 if store else 1 - cur
        pout = &ptr[s_out * (d.nb_max + 1)]
        if not zdense:
            expand_block(d, z, pin, &idx[s_in * cap], &val[s_in * cap])
            zdense = True
        fused = False
        if d.shared and d.gram and not sparse:
            # u = z M - c  (one GEMM through the Gram matrix)
            row_gemm(d, m, m, 1, z, m, M, m, 0, u, m)
            for r in range(size):
                u[r] -= C[r]
        else:
            # r = z D - x (rows of D gathered when z is sparse), u = r W^T
            Rt = &Rst[<Py_ssize_t> t * d.nb_max * n] if Rst != NULL else R
            residual_rows(d, X, D, z, FMT_CSR if sparse else FMT_DENSE, pin,
                          &idx[s_in * cap], &val[s_in * cap], Rt)
            fused = d.own_gemm and d.ks == NULL and n <= FL_GEMM_KC
            if not fused:
                row_gemm(d, m, n, 1, Rt, n, WTt, m, 0, u, m)
        # z+ = ST(z - a u, lmbd thr), in place in z, row by row (each
        # row's lmbd); with support selection the ks[t] largest entries
        # of z - a u pass unthresholded. Fused: the step is taken as
        # _gemm.h stores each tile of u = r W^T, never stored (its
        # first nb entries hold the rows' thresholds)
        sg = <signed char *> &val[s_out * cap] if store and Rst != NULL else NULL
        nnz = 0
        if fused:
            for i in range(nb):
                u[i] = <floating> (lam[i] * thr[t])
            BP = packed_of(d, WTt, <int> m, <int> n, <int> m)
            if BP != NULL:
                nnz = own_gemm_packed_step(d.own_gemm, <int> nb, <int> m, <int> n, Rt,
                                           <int> n, BP, a, u, d.positive, z, <int> m,
                                           sg, <int> m)
            else:
                nnz = own_gemm_step(d.own_gemm, <int> nb, <int> m, <int> n, Rt, <int> n,
                                    WTt, <int> m, a, u, d.positive, z, <int> m, sg,
                                    <int> m)
        for i in range(0 if fused else nb):
            if d.ks != NULL and d.ks[t] > 0:
                for j in range(m):
                    z[i * m + j] -= a * u[i * m + j]
                nnz += select_threshold_row(
                    d, m, &z[i * m], &z[i * m], NULL, <floating> (lam[i] * thr[t]),
                    d.ks[t], &d.sel[(s_out * d.nb_max + i) * d.kmax],
                    &sg[i * m] if sg != NULL else NULL)
            else:
                nnz += st_step_row(m, &z[i * m], &u[i * m], a,
                                   <floating> (lam[i] * thr[t]),
                                   &sg[i * m] if sg != NULL else NULL, d.positive)
        if sg != NULL:
            fmt[s_out] = FMT_SIGN
            if nnz < d.rho * size:
                store_layer(d, z, nnz, &fmt[s_out], pout, &idx[s_out * cap],
                            &val[s_out * cap])
        else:
            if store or nnz < d.rho * size:
                store_layer(d, z, nnz, &fmt[s_out], pout, &idx[s_out * cap],
                            &val[s_out * cap])
            else:
                fmt[s_out] = FMT_DENSE
        if obj != NULL:
            obj[t] += block_objective(d, X, D, z, fmt[s_out], pout,
                                      &idx[s_out * cap], &val[s_out * cap],
                                      lam, R)
        d.plan[t + 1] = nnz < d.rho * size
        t += 1
        cur = s_out
    if not zdense:
        expand_block(d, z, pout, &idx[s_out * cap], &val[s_out * cap])


cdef void sparse_rows_backward(
        Dims *d, int t_lo, int t_hi, const floating *X, const floating *W,
        const floating *MT, const floating *step, const double *lam,
        const floating *C, floating *G, floating *P, const floating *Rst,
        const int *fmt, const int *ptr, const int *idx, const floating *val,
        floating *wv, double *da, double *dthr) noexcept nogil:
    """Back through layers t_hi - 1 down to t_lo of a shared-W block, whose
    outputs z_{t+1} are all sparse, each row through all of them before the
    next row (its gradient and its c stay in L1).

    Row i of layer t: w = g on supp(z_{t+1}) (k entries), d thr_t, <w, c>;
    d z_t = w - a w M^T with the k rows of M^T gathered, and <z_t, w M^T>,
    read off that row on supp(z_t) (sparse z_t), or <r_t + x, w W> (z_t
    stored as signs; w W gathers k rows of W). wv's first m entries hold w.
    """
    cdef Py_ssize_t m = d.m, n = d.n, cap = <Py_ssize_t> d.nb_max * m, i
    cdef int t, kw, kz, p, q
    cdef const int *pin
    cdef const int *pout
    cdef const int *iw
    cdef const int *iz
    cdef const floating *sw
    cdef const floating *vz
    cdef const floating *Rt
    cdef const floating *Mp
    cdef floating *Gi
    cdef floating *w = wv
    cdef floating a, acc
    cdef double wc, zv
    cdef floating eps = FLT_EPSILON if floating is float else DBL_EPSILON
    for i in range(d.nb):
        Gi = &G[i * m]
        for t in range(t_hi - 1, t_lo - 1, -1):
            a = step[t]
            pin = &ptr[t * (d.nb_max + 1)]
            pout = &ptr[(t + 1) * (d.nb_max + 1)]
            kw = pout[i + 1] - pout[i]
            iw = &idx[(t + 1) * cap + pout[i]]
            sw = &val[(t + 1) * cap + pout[i]]
            wc = 0
            zv = 0
            for p in range(kw):
                w[p] = Gi[iw[p]]
                dthr[t * m + iw[p]] -= lam[i] * w[p] * sign(sw[p])
                wc += w[p] * C[i * m + iw[p]]
            if t == 0:      # d z_0 is not needed (z_0 = 0 is no parameter)
                da[t] += wc
                continue
            # d z_t = w - a w M^T, the k rows of M^T gathered into G_i
            gather_set_rows(kw, iw, w, -a, MT, <int> m, Gi)
            if fmt[t] == FMT_CSR and a >= eps:
                # <z_t, w M^T> read off G_i = -a w M^T on supp(z_t)
                kz = pin[i + 1] - pin[i]
                iz = &idx[t * cap + pin[i]]
                vz = &val[t * cap + pin[i]]
                acc = 0
                for q in range(kz):
                    acc = acc + vz[q] * Gi[iz[q]]
                zv -= acc / a
            elif fmt[t] == FMT_CSR:
                # (a step below eps: G_i = -a w M^T is no longer a faithful
                # multiple of w M^T) sum_p w_p sum_q z_q M^T[j_p, j_q]
                kz = pin[i + 1] - pin[i]
                iz = &idx[t * cap + pin[i]]
                vz = &val[t * cap + pin[i]]
                for p in range(kw):
                    Mp = &MT[<Py_ssize_t> iw[p] * m]
                    acc = 0
                    for q in range(kz):
                        acc = acc + vz[q] * Mp[iz[q]]
                    zv += w[p] * acc
            elif fmt[t] == FMT_SIGN:
                Rt = &Rst[<Py_ssize_t> t * d.nb_max * n]
                gather_set_rows(kw, iw, w, 1, W, <int> n, &P[i * n])
                zv += dot(n, &P[i * n], &Rt[i * n]) + dot(n, &P[i * n], &X[i * n])
            else:
                for p in range(kw):
                    zv += w[p] * dot(m, &MT[<Py_ssize_t> iw[p] * m], &val[t * cap + i * m])
            for p in range(kw):
                Gi[iw[p]] += w[p]
            da[t] += wc - zv


cdef void residual_backward_block(
        Dims *d, const floating *X, const floating *D, const floating *DT,
        const floating *W, const floating *MT, const floating *step,
        const double *lam, const floating *C, floating *G, floating *V, floating *P,
        const floating *Rst, const int *fmt, const int *ptr, const int *idx,
        const floating *val, floating *wv, double *da, double *dthr,
        floating *dW) noexcept nogil:
    """Back-propagate G = d loss / d z_T through the T stored layers.

    Accumulates d a_t in da[t], d thr_t in dthr[t m:] (per atom), and
    (coupled) d W_t in dW[t m n:]. G is overwritten.
    """
    cdef Py_ssize_t nb = d.nb, m = d.m, n = d.n, i
    cdef int t, t_lo
    cdef Py_ssize_t cap = <Py_ssize_t> d.nb_max * m, size = <Py_ssize_t> nb * m
    cdef Py_ssize_t p
    cdef const int *pin
    cdef const int *pout
    cdef const floating *Wt
    cdef const floating *Rt
    cdef const signed char *sg
    cdef floating a
    cdef bint sparse_w, need_v, masked = False

    t = d.T - 1
    while t >= 0:
        a = step[t]
        pin = &ptr[t * (d.nb_max + 1)]
        pout = &ptr[(t + 1) * (d.nb_max + 1)]
        Wt = W if d.shared else &W[<Py_ssize_t> t * m * n]
        Rt = &Rst[<Py_ssize_t> t * d.nb_max * n] if Rst != NULL else NULL
        sparse_w = fmt[t + 1] == FMT_CSR
        need_v = t > 0          # d z_0 is not needed (z_0 = 0 is no parameter)

        if d.shared and sparse_w:
            # the run of layers down to t_lo whose outputs are all sparse,
            # row by row
            t_lo = t
            while t_lo > 0 and fmt[t_lo] == FMT_CSR:
                t_lo -= 1
            sparse_rows_backward(d, t_lo, t + 1, X, W, MT, step, lam, C, G, P, Rst,
                                 fmt, ptr, idx, val, wv, da, dthr)
            t = t_lo - 1
            continue

        if not masked:
            # w = g * 1[z_{t+1} != 0] (in G), d thr_t
            mask_gradient(d, G, fmt[t + 1], pout, &idx[(t + 1) * cap],
                          &val[(t + 1) * cap], lam, wv, &dthr[t * m])
        masked = False
        if d.ks != NULL and d.ks[t] > 0:
            selected_threshold_gradient(d, G, fmt[t + 1], &val[(t + 1) * cap], d.ks[t],
                                        &d.sel[(t + 1) * d.nb_max * d.kmax], lam,
                                        &dthr[t * m])

        if d.shared and fmt[t] != FMT_SIGN:
            # (dense w) d a_t = -(<z_t, V> - <w, c>) with V = w M^T, through
            # M^T (m < 2 n) or through P = w W and V = P D^T
            da[t] += long_dot(nb * m, G, C)
            if need_v:
                if d.gram:
                    row_gemm(d, m, m, 1, G, m, MT, m, 0, V, m)
                else:
                    row_gemm(d, n, m, 1, G, m, Wt, n, 0, P, n)
                    row_gemm(d, m, n, 1, P, n, DT, m, 0, V, m)
                da[t] -= stored_dot(d, fmt[t], pin, &idx[t * cap], &val[t * cap], V)
        else:
            # r_t is stored: P = w W_t, d a_t = -<P, r_t>, (coupled)
            # d W_t = -a w^T r_t, V = P D^T
            if sparse_w:
                for i in range(nb):
                    gather_set_rows(pout[i + 1] - pout[i], &idx[(t + 1) * cap + pout[i]],
                                    &wv[pout[i]], 1, Wt, n, &P[i * n])
                    for p in range(pout[i], pout[i + 1]):
                        axpy(n, -a * wv[p], &Rt[i * n],
                             &dW[<Py_ssize_t> t * m * n + idx[(t + 1) * cap + p] * n])
            else:
                row_gemm(d, n, m, 1, G, m, Wt, n, 0, P, n)
                if not d.shared:
                    gemm(True, False, m, n, nb, -a, G, m, Rt, n, 1,
                         &dW[<Py_ssize_t> t * m * n], n)
            da[t] -= long_dot(nb * n, P, Rt)
            if need_v:
                row_gemm(d, m, n, 1, P, n, DT, m, 0, V, m)

        if need_v and fmt[t] == FMT_SIGN:
            # one pass: d z_t = w - a V, masked by supp(z_t) into the w of
            # layer t - 1, with its d thr
            # (float32: d thr_{t-1} summed over the block's rows in wv, a
            # scratch row here, then added into dthr in double)
            sg = <const signed char *> &val[t * cap]
            if floating is double:
                for i in range(nb):
                    fl_d_back_sign(<int> m, &G[i * m], &V[i * m], &sg[i * m], a,
                                   lam[i], &dthr[(t - 1) * m])
            else:
                memset(wv, 0, m * sizeof(floating))
                for i in range(nb):
                    fl_s_back_sign(<int> m, &G[i * m], &V[i * m], &sg[i * m], a,
                                   <float> lam[i], wv)
                for p in range(m):
                    dthr[(t - 1) * m + p] += wv[p]
            masked = True
        elif need_v:
            # d z_t = w - a V
            for p in range(size):
                G[p] -= a * V[p]
        t -= 1


# ---------------------------------------------------------------------------
# lista (Gregor & LeCun)
# ---------------------------------------------------------------------------

cdef void lista_forward_block(
        Dims *d, const floating *X, const floating *D, const floating *Wz,
        const floating *Wx, const floating *thr, const double *lam, bint store,
        floating *Z, floating *U, floating *R, int *fmt, int *ptr, int *idx,
        floating *val, double *obj) noexcept nogil:
    """z+ = ST(z W_z[t] + x W_x[t], lmbd thr_t) for t < T; z_T left in Z."""
    cdef Py_ssize_t nb = d.nb, m = d.m, n = d.n, i, j
    cdef int t, s_in, s_out
    cdef Py_ssize_t cap = <Py_ssize_t> d.nb_max * m, size = <Py_ssize_t> nb * m
    cdef Py_ssize_t nnz = 0
    cdef const floating *th
    cdef const floating *Wzt
    cdef floating *Zi
    cdef floating *Ui
    cdef int *pin
    cdef int *pout
    cdef bint sparse

    memset(Z, 0, size * sizeof(floating))
    fmt[0] = FMT_CSR
    memset(ptr, 0, (nb + 1) * sizeof(int))
    for t in range(d.T):
        s_in = t if store else t % 2
        s_out = t + 1 if store else (t + 1) % 2
        pin = &ptr[s_in * (d.nb_max + 1)]
        pout = &ptr[s_out * (d.nb_max + 1)]
        th = &thr[t * m]
        Wzt = &Wz[<Py_ssize_t> t * m * m]
        sparse = fmt[s_in] == FMT_CSR and nnz < d.rho * size
        # U = x W_x[t] + z W_z[t], rows of W_z gathered when z is sparse
        row_gemm(d, m, n, 1, X, n, &Wx[<Py_ssize_t> t * n * m], m, 0, U, m)
        if sparse:
            for i in range(nb):
                gather_rows(pin[i + 1] - pin[i], &idx[s_in * cap + pin[i]],
                            &val[s_in * cap + pin[i]], 1, Wzt, m, &U[i * m])
        else:
            row_gemm(d, m, m, 1, Z, m, Wzt, m, 1, U, m)
        for i in range(nb):
            Zi = &Z[i * m]
            Ui = &U[i * m]
            if d.ks != NULL and d.ks[t] > 0:
                # the thresholds lmbd_i theta_j, then support selection
                for j in range(m):
                    Zi[j] = <floating> (lam[i] * th[j])
                select_threshold_row(d, m, Zi, Ui, Zi, 0, d.ks[t],
                                     &d.sel[(s_out * d.nb_max + i) * d.kmax], NULL)
            else:
                for j in range(m):
                    Zi[j] = threshold(Ui[j], <floating> (lam[i] * th[j]), d.positive)
        nnz = count_nonzero(size, Z)
        if store or nnz < d.rho * size:
            store_layer(d, Z, nnz, &fmt[s_out], pout, &idx[s_out * cap],
                        &val[s_out * cap])
        else:
            fmt[s_out] = FMT_DENSE
        if obj != NULL:
            obj[t] += block_objective(d, X, D, Z, fmt[s_out], pout,
                                      &idx[s_out * cap], &val[s_out * cap],
                                      lam, R)


cdef void lista_backward_block(
        Dims *d, const floating *X, const floating *WzT, const double *lam,
        floating *G, floating *V,
        const int *fmt, const int *ptr, const int *idx, const floating *val,
        floating *wv, double *dthr, floating *dWz, floating *dWxT) noexcept nogil:
    """Back-propagate G = d loss / d z_T; accumulates d thr, d W_z, d W_x^T."""
    cdef Py_ssize_t nb = d.nb, m = d.m, n = d.n, i
    cdef int t
    cdef Py_ssize_t cap = <Py_ssize_t> d.nb_max * m, size = <Py_ssize_t> nb * m
    cdef Py_ssize_t p, q, off
    cdef const int *pin
    cdef const int *pout
    cdef const int *iin
    cdef const int *iout
    cdef const floating *vin
    cdef floating *dWzt
    cdef floating *dWxt
    cdef bint sparse_w, sparse_z

    for t in range(d.T - 1, -1, -1):
        pin = &ptr[t * (d.nb_max + 1)]
        pout = &ptr[(t + 1) * (d.nb_max + 1)]
        iin = &idx[t * cap]
        iout = &idx[(t + 1) * cap]
        vin = &val[t * cap]
        dWzt = &dWz[<Py_ssize_t> t * m * m]
        dWxt = &dWxT[<Py_ssize_t> t * m * n]
        mask_gradient(d, G, fmt[t + 1], pout, iout, &val[(t + 1) * cap], lam,
                      wv, &dthr[t * m])
        if d.ks != NULL and d.ks[t] > 0:
            selected_threshold_gradient(d, G, fmt[t + 1], &val[(t + 1) * cap], d.ks[t],
                                        &d.sel[(t + 1) * d.nb_max * d.kmax], lam,
                                        &dthr[t * m])
        sparse_w = fmt[t + 1] == FMT_CSR
        sparse_z = fmt[t] == FMT_CSR
        # d W_x[t]^T += w^T x
        if sparse_w:
            for i in range(nb):
                for p in range(pout[i], pout[i + 1]):
                    axpy(n, wv[p], &X[i * n], &dWxt[iout[p] * n])
        else:
            gemm(True, False, m, n, nb, 1, G, m, X, n, 1, dWxt, n)
        if t == 0:
            break               # z_0 = 0: no d W_z[0], no d z_0
        # d W_z[t] += z_t^T w
        if sparse_z:
            for i in range(nb):
                for q in range(pin[i], pin[i + 1]):
                    off = <Py_ssize_t> iin[q] * m
                    if sparse_w:
                        for p in range(pout[i], pout[i + 1]):
                            dWzt[off + iout[p]] += vin[q] * wv[p]
                    else:
                        axpy(m, vin[q], &G[i * m], &dWzt[off])
        else:
            gemm(True, False, m, m, nb, 1, vin, m, G, m, 1, dWzt, m)
        # d z_t = w W_z[t]^T, rows of W_z^T gathered for the support of w
        if sparse_w:
            for i in range(nb):
                gather_set_rows(pout[i + 1] - pout[i], &iout[pout[i]], &wv[pout[i]],
                                1, &WzT[<Py_ssize_t> t * m * m], m, &G[i * m])
        else:
            row_gemm(d, m, m, 1, G, m, &WzT[<Py_ssize_t> t * m * m], m, 0, V, m)
            memcpy(G, V, size * sizeof(floating))


# ---------------------------------------------------------------------------
# drivers: blocks over OpenMP threads (_blocks.pxd), one context a call
# ---------------------------------------------------------------------------

cdef enum:
    FAMILY_RESIDUAL = 0     # step, alista, coupled
    FAMILY_LISTA = 1


cdef struct NetParams:
    int family
    int T
    bint shared     # residual family with one W for all layers (M, M^T given)
    bint gram       # dense residual layers go through M (m < 2 n)
    bint positive   # codes constrained >= 0
    Py_ssize_t m, n
    const void *D
    const void *DT
    const void *W
    const void *WT
    const void *M
    const void *MT
    const void *Wz
    const void *WzT
    const void *Wx
    const void *step
    const void *thr
    const int *ks       # (T,) support selection counts, or NULL
    int kmax


cdef class Params:
    """The arrays of a network's first T layers, as the kernels read them.

    Residual family (``W`` given): W (1 or T, m, n), its transposes WT
    (1 or T, n, m), step and thr (T,), and for a shared W (1, m, n) also
    M = D W^T and M^T (m, m; empty otherwise). LISTA (``Wz`` given): Wz and
    WzT (T, m, m), Wx (T, n, m), thr (T, m). Every array C-contiguous, of
    one float dtype; D and DT = D^T with them. ``positive``: codes
    constrained >= 0 (one-sided thresholds). ``ks`` (T,): support selection,
    the number of entries of largest magnitude that pass layer t
    unthresholded (None: none; the dense paths are then always taken). The
    object keeps references to the arrays the kernels point into.
    """
    cdef object arrays
    cdef readonly object dtype
    cdef NetParams c

    def __init__(self, D, DT, *, W=None, WT=None, M=None, MT=None, step=None,
                 thr=None, Wz=None, WzT=None, Wx=None, bint gram=False,
                 bint positive=False, ks=None):
        arrays = dict(D=D, DT=DT, W=W, WT=WT, M=M, MT=MT, step=step, thr=thr, Wz=Wz,
                      WzT=WzT, Wx=Wx)
        if ks is not None:
            ks = np.ascontiguousarray(ks, dtype=np.intc)
            if ks.shape != (thr.shape[0],) or ks.min(initial=0) < 0 or \
                    ks.max(initial=0) > D.shape[0]:
                raise ValueError("Params: ks must hold T counts in [0, n_atoms]")
        dtype = D.dtype
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"Params: unsupported dtype {dtype}")
        for name, a in arrays.items():
            if a is not None and (a.dtype != dtype or not a.flags.c_contiguous):
                raise ValueError(f"Params: {name} must be C-contiguous {dtype}")
        self.arrays = arrays
        self.arrays["ks"] = ks
        self.dtype = dtype
        self.c.m, self.c.n = D.shape[0], D.shape[1]
        self.c.family = FAMILY_LISTA if Wz is not None else FAMILY_RESIDUAL
        self.c.T = thr.shape[0]
        self.c.shared = (self.c.family == FAMILY_RESIDUAL and M is not None
                         and M.shape[0] == self.c.m)
        self.c.gram = gram
        self.c.positive = positive
        self.c.D = _ptr(D)
        self.c.DT = _ptr(DT)
        self.c.W = _ptr(W)
        self.c.WT = _ptr(WT)
        self.c.M = _ptr(M) if self.c.shared else NULL
        self.c.MT = _ptr(MT) if self.c.shared else NULL
        self.c.Wz = _ptr(Wz)
        self.c.WzT = _ptr(WzT)
        self.c.Wx = _ptr(Wx)
        self.c.step = _ptr(step)
        self.c.thr = _ptr(thr)
        self.c.ks = <const int *> _ptr(ks)
        self.c.kmax = 0 if ks is None else int(ks.max(initial=0))

    @property
    def n_layers(self):
        return self.c.T


cdef const void *_ptr(a) except? NULL:
    """Address of a C-contiguous array's data (NULL for None or empty)."""
    if a is None or a.size == 0:
        return NULL
    return <const void *> <size_t> a.ctypes.data


cdef struct NetWork:
    # one thread's block workspace (floating arrays as void *)
    void *Z         # (nb_max, m) z_T of the block (training)
    void *U         # (nb_max, m) pre-activations
    void *G         # (nb_max, m) gradients w.r.t. the codes
    void *V         # (nb_max, m)
    void *C         # (nb_max, m) c = x W^T
    void *wv        # (nb_max m,) w on the support of a sparse layer (backward)
    void *rowv      # (2 m,) a sparse row's values between layers (forward)
    void *R         # (nb_max, n) r = z D - x
    void *P         # (nb_max, n) w W
    void *Rst       # (T, nb_max, n) stored r_t (training, when kept)
    void *val       # (slots, nb_max m) stored codes (values or signs)
    int *fmt        # (slots,) storage format of each slot
    int *ptr        # (slots, nb_max + 1) CSR row pointers
    int *idx        # (slots, nb_max m) CSR atoms
    int *rowi       # (2 m,) a sparse row's atoms between layers (forward)
    int *plan       # (T + 1,) the layers whose input was sparse, last block
    int *sel        # (slots, nb_max, kmax) support selection: selected atoms
    double *hkey    # (kmax,) support selection: heap keys
    unsigned char *mark     # (m,) support selection: marks (kept zero)
    double *obj     # (T,) forward: summed objectives per layer, or NULL
    double *da      # (T,) training: d step
    double *dthr    # (T m,) training: d threshold per atom
    void *dW        # coupled (T m n) / lista d W_z (T m m)
    void *dWxT      # lista: d W_x^T (T m n)
    double *dW64    # float32 networks: dW and dWxT flushed into double,
    double *dWxT64  # every FLUSH_BLOCKS blocks (else NULL)
    int n_partial   # blocks summed in dW, dWxT since the last flush
    double loss     # training: summed loss of the thread's blocks


cdef struct NetCtx:
    const NetParams *p
    int n_threads
    const void *X   # (N, n)
    void *Z         # (N, m) forward: the codes z_T
    const void *S   # (N, m) supervised targets, or NULL
    const double *lam   # (N,) each sample's lmbd
    int loss        # 0: forward only
    bint rst        # training keeps r_t (dense layers store their signs)
    Py_ssize_t nb_max
    Py_ssize_t chunk    # rows of one BLAS call
    int own_gemm        # dense products through _gemm.h at this level (0: BLAS)
    const Packed *pk    # (n_pk,) parameter matrices packed for _gemm.h
    int n_pk
    int gather          # kernel of the sparse rows (GATHER_KERNELS)
    int run             # SPARSE_RUN
    double rho
    double inv_n    # 1 / N
    unsigned char *bad  # (N,) forward: 1 where the code is not finite
    Py_ssize_t n_dw, n_dwx  # entries of a thread's dW and dWxT
    NetWork *work


cdef void net_block(floating *tag, NetCtx *c, int tid, Py_ssize_t start,
                    int nb) noexcept nogil:
    """Forward (and, when training, loss and backward) of rows [start, start + nb)."""
    cdef const NetParams *p = c.p
    cdef NetWork *w = &c.work[tid]
    cdef Py_ssize_t m = p.m, n = p.n, i, cap = c.nb_max * p.m
    cdef int T = p.T
    cdef bint train = c.loss != 0, lista = p.family == FAMILY_LISTA
    cdef Dims d = make_dims(nb, c.nb_max, m, n, T, p.shared, p.gram, p.positive,
                            c.rho)
    d.chunk = c.chunk
    d.own_gemm = c.own_gemm
    d.pk = c.pk
    d.n_pk = c.n_pk
    d.gather = c.gather
    d.run = c.run
    d.plan = w.plan
    if p.ks != NULL:
        d.ks = p.ks
        d.kmax = p.kmax
        d.sel = w.sel
        d.hkey = w.hkey
        d.mark = w.mark
    cdef const floating *X = <const floating *> c.X + start * n
    cdef const floating *D = <const floating *> p.D
    cdef const double *lam = c.lam + start
    cdef floating *Z = <floating *> w.Z if train else <floating *> c.Z + start * m
    cdef floating *val = <floating *> w.val
    cdef floating *Rst = <floating *> w.Rst if train and c.rst else NULL
    if lista:
        lista_forward_block(
            &d, X, D, <const floating *> p.Wz, <const floating *> p.Wx,
            <const floating *> p.thr, lam, train, Z, <floating *> w.U,
            <floating *> w.R, w.fmt, w.ptr, w.idx, val, w.obj)
    else:
        residual_forward_block(
            &d, X, D, <const floating *> p.WT, <const floating *> p.M,
            <const floating *> p.step, <const floating *> p.thr, lam, train,
            <floating *> w.C, Z, <floating *> w.U, <floating *> w.R,
            w.rowi, <floating *> w.rowv, Rst, w.fmt, w.ptr, w.idx, val, w.obj)
    if not train:
        for i in range(nb):
            if floating is double:
                c.bad[start + i] = fl_d_nonfinite(m, Z + i * m)
            else:
                c.bad[start + i] = fl_s_nonfinite(m, Z + i * m)
        return
    w.loss += block_loss(
        &d, c.loss, X, D, <const floating *> p.DT, Z, w.fmt[T],
        &w.ptr[T * (c.nb_max + 1)], &w.idx[T * cap], &val[T * cap],
        <const floating *> c.S + start * m if c.S != NULL else NULL, lam,
        <floating> c.inv_n, p.shared and not lista, <floating *> w.R,
        <floating *> w.G)
    if lista:
        lista_backward_block(
            &d, X, <const floating *> p.WzT, lam, <floating *> w.G,
            <floating *> w.V, w.fmt, w.ptr, w.idx, val, <floating *> w.wv, w.dthr,
            <floating *> w.dW, <floating *> w.dWxT)
    else:
        residual_backward_block(
            &d, X, D, <const floating *> p.DT, <const floating *> p.W,
            <const floating *> p.MT, <const floating *> p.step, lam,
            <floating *> w.C, <floating *> w.G, <floating *> w.V, <floating *> w.P,
            Rst, w.fmt, w.ptr, w.idx, val, <floating *> w.wv, w.da, w.dthr,
            NULL if p.shared else <floating *> w.dW)
    if w.dW64 != NULL or w.dWxT64 != NULL:
        w.n_partial += 1
        if w.n_partial == FLUSH_BLOCKS:
            flush_partial(<floating *> w.dW, w.dW64, c.n_dw)
            flush_partial(<floating *> w.dWxT, w.dWxT64, c.n_dwx)
            w.n_partial = 0


cdef void flush_partial(floating *acc, double *total, Py_ssize_t size) noexcept nogil:
    """total += acc; acc = 0 (acc may be NULL when size is 0)."""
    cdef Py_ssize_t k
    for k in range(size):
        total[k] += acc[k]
        acc[k] = 0


cdef void _block_d(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    net_block(<double *> NULL, <NetCtx *> ctx, tid, start, nb)


cdef void _block_s(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    net_block(<float *> NULL, <NetCtx *> ctx, tid, start, nb)


cdef Py_ssize_t _round16(Py_ssize_t k) noexcept nogil:
    """k rounded up to 16 entries (64 bytes of float32): the workspaces'
    offsets keep the 64-byte alignment of their rows (aligned_empty)."""
    return (k + 15) // 16 * 16


def _layout(Py_ssize_t nb_max, Py_ssize_t m, Py_ssize_t n, int T, bint store,
            bint rst, int kmax):
    """Offsets of the per-thread floating and int workspaces."""
    cdef Py_ssize_t block = _round16(nb_max * m)
    cdef Py_ssize_t rows = _round16(nb_max * n)
    cdef int slots = T + 1 if store else 2
    f = {}
    off = 0
    for name, size in [("Z", block), ("U", block), ("G", block), ("V", block),
                       ("C", block), ("wv", block), ("R", rows), ("P", rows),
                       ("Rst", _round16(T * nb_max * n) if rst else 0),
                       ("rowv", _round16(2 * m)),
                       ("val", slots * block)]:
        f[name] = off
        off += size
    f["total"] = off + 1
    i = {"fmt": 0, "ptr": _round16(slots),
         "idx": _round16(slots) + _round16(slots * (nb_max + 1))}
    i["rowi"] = i["idx"] + slots * block
    i["plan"] = i["rowi"] + _round16(2 * m)
    i["sel"] = i["plan"] + _round16(T + 1)
    i["total"] = i["sel"] + slots * nb_max * kmax + 1
    return f, i


_local = threading.local()
#: Per-thread workspaces up to this size are kept between calls, per Python
#: thread and dtype (a fresh allocation costs its page faults on every call);
#: larger ones are allocated for the call and freed after it. The cache lives
#: in a threading.local: it is freed when its Python thread ends.
WORKSPACE_CACHE_BYTES = 1 << 25


def _cache():
    """This Python thread's cache of arrays kept between calls."""
    cache = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    return cache


def _workspaces(dtype, int n_threads, Py_ssize_t n_float, Py_ssize_t n_int):
    """Per-thread floating and int workspaces of at least the given sizes.

    Rows are threads; a row may be longer than asked. Reused between the
    calls of one Python thread (kernels of two threads never share them).
    """
    cache = _cache()
    key = np.dtype(dtype).char
    fws, iws = cache.get(key, (None, None))
    if (fws is None or fws.shape[0] < n_threads or fws.shape[1] < n_float
            or iws.shape[1] < n_int):
        cache.pop(key, None)
        rows = max(n_threads, 0 if fws is None else fws.shape[0])
        fws = aligned_empty(rows, max(n_float, 0 if fws is None else fws.shape[1]), dtype)
        iws = np.empty((rows, max(n_int, 0 if iws is None else iws.shape[1])), dtype=np.intc)
        if fws.nbytes + iws.nbytes <= WORKSPACE_CACHE_BYTES:
            cache[key] = (fws, iws)
    return fws, iws


cdef int _prepare(NetCtx *c, Params params, Py_ssize_t N, int n_threads,
                  int block_size, int gemm_rows, bint train, bint rst,
                  list keep) except -1:
    """Block plan and per-thread workspaces of one call, in c.

    ``keep`` receives the arrays the workspaces live in (alive for the call);
    c.n_threads the threads used (at most one a block). c.work holds the
    table of workspaces from its allocation on: the caller, which set it to
    NULL, frees it, also when this raises.
    """
    cdef const NetParams *p = &params.c
    cdef Py_ssize_t nb_max = min(block_size, max(N, 1)), t
    n_threads = <int> max(1, min(n_threads, (N + nb_max - 1) // nb_max))
    fo, io = _layout(nb_max, p.m, p.n, p.T, train, rst, p.kmax)
    fws, iws = _workspaces(params.dtype, n_threads, fo["total"], io["total"])
    # support selection: heap keys and zeroed marks
    sws = np.zeros((n_threads, p.kmax + 1))
    mws = np.zeros((n_threads, p.m + 1), dtype=np.uint8)
    keep += [fws, iws, sws, mws]
    cdef size_t fbase = fws.ctypes.data, ibase = iws.ctypes.data
    cdef size_t fstride = fws.strides[0], istride = iws.strides[0]
    cdef size_t item = fws.itemsize, iitem = iws.itemsize
    cdef NetWork *work = <NetWork *> table_alloc(n_threads, sizeof(NetWork))
    c.work = work
    for t in range(n_threads):
        f = fbase + t * fstride
        work[t].Z = <void *> <size_t> (f + fo["Z"] * item)
        work[t].U = <void *> <size_t> (f + fo["U"] * item)
        work[t].G = <void *> <size_t> (f + fo["G"] * item)
        work[t].V = <void *> <size_t> (f + fo["V"] * item)
        work[t].C = <void *> <size_t> (f + fo["C"] * item)
        work[t].wv = <void *> <size_t> (f + fo["wv"] * item)
        work[t].R = <void *> <size_t> (f + fo["R"] * item)
        work[t].P = <void *> <size_t> (f + fo["P"] * item)
        work[t].Rst = <void *> <size_t> (f + fo["Rst"] * item)
        work[t].val = <void *> <size_t> (f + fo["val"] * item)
        work[t].rowv = <void *> <size_t> (f + fo["rowv"] * item)
        i = ibase + t * istride
        work[t].fmt = <int *> <size_t> (i + io["fmt"] * iitem)
        work[t].ptr = <int *> <size_t> (i + io["ptr"] * iitem)
        work[t].idx = <int *> <size_t> (i + io["idx"] * iitem)
        work[t].rowi = <int *> <size_t> (i + io["rowi"] * iitem)
        work[t].plan = <int *> <size_t> (i + io["plan"] * iitem)
        memset(work[t].plan, 0, (p.T + 1) * sizeof(int))
        work[t].sel = <int *> <size_t> (i + io["sel"] * iitem)
        work[t].hkey = <double *> <size_t> (sws.ctypes.data + t * sws.strides[0])
        work[t].mark = <unsigned char *> <size_t> (mws.ctypes.data + t * mws.strides[0])
    c.p = p
    c.nb_max = nb_max
    c.chunk = max(1, min(gemm_rows, nb_max))
    c.n_threads = n_threads
    c.n_pk = 0
    return 0


#: Whether the calls that multiply several blocks through _gemm.h pack their
#: parameter matrices once (_pack_operands); read at every call.
PACK_OPERANDS = True


def _operands(Params params, bint train):
    """The parameter matrices B of the call's dense products through
    _gemm.h, as (name, layers, K, N): B = array[name][layer], K x N,
    row-major (leading dimension N)."""
    cdef const NetParams *p = &params.c
    cdef Py_ssize_t m = p.m, n = p.n
    a = params.arrays
    out = [("D", 1, m, n)]                         # r = z D - x
    if train:
        out.append(("DT", 1, n, m))                # r D^T, (w W) D^T
    if p.family == FAMILY_LISTA:
        out += [("Wx", p.T, n, m), ("Wz", p.T, m, m)]
        if train:
            out.append(("WzT", p.T, m, m))
        return out
    layers = a["WT"].shape[0]
    out.append(("WT", layers, n, m))               # c = x W^T, u = r W^T
    if train:
        out.append(("W", layers, m, n))            # w W
    if p.shared and p.gram:
        out.append(("M", 1, m, m))                 # u = z M - c
        if train:
            out.append(("MT", 1, m, m))            # w M^T
    return out


cdef int _pack_operands(NetCtx *c, Params params, Py_ssize_t N, bint train,
                        list keep) except -1:
    """Pack the call's parameter matrices for _gemm.h, once: c.pk (from its
    allocation on; the caller, which set it to NULL, frees it, also when
    this raises) and c.n_pk are set, or nothing packed.

    Only when the products go through _gemm.h, and only the matrices read
    more than once a call: every one where the batch takes several blocks
    (each block reads the same panels, where the unpacked calls copy each
    of them again: 9-12 % of the time of a 256-row block's product on Zen
    3; _gemm.h), and in a call of one block the matrices that every layer
    shares (D, and W, M of the shared-W parametrizations): the block reads
    them once a layer, and unpacked, a batch of one sample spent most of
    its time copying them (SLISTA forward at lmbd = 0.1 on 1 sample, float64,
    60 % of its samples in the products' copies, Intel Xeon with AVX-512).
    A layer's own matrix, read once by a single block, is copied as it goes.
    The buffer is cached as the workspaces are (``keep`` receives it).
    """
    cdef bint single = params.dtype == np.float32
    cdef Py_ssize_t total = 0, size, l, item = params.dtype.itemsize
    cdef Packed *pk
    cdef int q = 0, K, Nc
    cdef size_t src, dst
    cdef bint one_block = N <= c.nb_max
    if not (PACK_OPERANDS and c.own_gemm):
        return 0
    specs = []
    seen = set()
    for name, layers, K, Nc in _operands(params, train):
        if one_block and (layers > 1 or params.c.T < 2):
            continue    # read once (or twice, training) by the one block
        arr = params.arrays[name]
        if arr is None or arr.size == 0 or (arr.ctypes.data, K, Nc) in seen:
            continue    # (one copy of an array passed twice: SLISTA's M = M^T)
        seen.add((arr.ctypes.data, K, Nc))
        # (a multiple of 64 bytes: every packed matrix stays aligned)
        size = fl_s_gemm_packed_size(Nc, K) if single else fl_d_gemm_packed_size(Nc, K)
        specs.append((arr.ctypes.data, layers, K, Nc, size))
        total += layers * size
    count = sum(spec[1] for spec in specs)
    if count == 0:
        return 0
    buf = _pack_buffer(params.dtype, total)
    keep.append(buf)
    pk = <Packed *> table_alloc(count, sizeof(Packed))
    c.pk = pk
    dst = buf.ctypes.data
    for src, layers, K, Nc, size in specs:
        for l in range(layers):
            pk[q].B = <const void *> (src + l * K * Nc * item)
            pk[q].N = Nc
            pk[q].K = K
            pk[q].ldb = Nc
            pk[q].BP = <const void *> dst
            with nogil:
                if single:
                    fl_s_gemm_pack(Nc, K, <const float *> pk[q].B, Nc, <float *> dst)
                else:
                    fl_d_gemm_pack(Nc, K, <const double *> pk[q].B, Nc, <double *> dst)
            dst += size * item
            q += 1
    c.n_pk = q
    return 0


def _pack_buffer(dtype, Py_ssize_t n):
    """A 64-byte aligned float array of n entries, cached between the calls
    of one Python thread as the workspaces are."""
    cache = _cache()
    key = "pack" + np.dtype(dtype).char
    buf = cache.get(key)
    if buf is None or buf.size < n:
        cache.pop(key, None)
        buf = aligned_empty(1, n, dtype)[0]
        if buf.nbytes <= WORKSPACE_CACHE_BYTES:
            cache[key] = buf
    return buf[:n]


def _check_gather(name, gather):
    """Refuse a sparse-row kernel the running CPU (or this build) lacks."""
    if gather not in GATHER_KERNELS:
        raise ValueError(f"{name}: gather={gather!r} is not a kernel this CPU runs in "
                         f"this build (GATHER_KERNELS: {GATHER_KERNELS})")


def forward(const floating[:, ::1] X, Params p, const double[::1] lmbd,
            floating[:, ::1] Z_out, double[:, ::1] obj, unsigned char[::1] bad,
            int n_threads, int block_size, int gemm_rows, double rho,
            int own_gemm, int gather):
    """Codes z_T of every row of X (into Z_out) through the T layers of p.

    Row i's thresholds are lmbd[i] * thr. obj, of shape (n_threads, T) or (0, 0),
    accumulates the summed objective of every layer's output per thread;
    bad[i] = 1 where the code of row i is not finite. The dense products
    run through _gemm.h's tile of level own_gemm (_gemm.GEMM_KERNELS) or,
    with 0, through BLAS, gemm_rows rows a call; the
    sparse layers' rows through the kernel numbered gather (GATHER_KERNELS:
    0 portable, 3 AVX2, 4 AVX-512; only one the CPU runs).
    """
    cdef Py_ssize_t N = X.shape[0], t
    cdef NetCtx c
    cdef list keep = []
    if N == 0:
        return
    if p.dtype.itemsize != sizeof(floating):
        raise ValueError("forward: X and the parameters differ in dtype")
    _check_gather("forward", gather)
    check_level("forward", own_gemm)
    cdef bint check, stopped
    c.work = NULL
    c.pk = NULL
    try:
        _prepare(&c, p, N, n_threads, block_size, gemm_rows, False, False, keep)
        for t in range(c.n_threads):
            c.work[t].obj = &obj[t, 0] if obj.shape[0] > 0 else NULL
        c.X = &X[0, 0]
        c.Z = &Z_out[0, 0]
        c.S = NULL
        c.lam = &lmbd[0]
        c.loss = 0
        c.rst = False
        c.rho = rho
        c.run = SPARSE_RUN
        c.own_gemm = own_gemm
        c.gather = gather
        _pack_operands(&c, p, N, c.loss != 0, keep)
        c.inv_n = 1.0 / N
        c.bad = &bad[0]
        check = in_main_thread()
        with nogil:
            stopped = run_blocks(N, <int> c.nb_max, c.n_threads, False,
                                 _block_d if floating is double else _block_s, &c, check)
        if stopped:
            raise_interrupt()
    finally:
        table_free(c.work)
        table_free(c.pk)


def loss_and_grad(const floating[:, ::1] X, Params p, const double[::1] lmbd, int loss,
                  const floating[:, ::1] S, double[:, ::1] da, double[:, ::1] dthr,
                  floating[:, ::1] dW, floating[:, ::1] dWxT, double[:, ::1] dW64,
                  double[:, ::1] dWxT64, int n_threads,
                  int block_size, int gemm_rows, double rho, int own_gemm,
                  int gather):
    """Summed loss of the output of p's T layers, and per-thread gradients.

    The gradients are those of the MEAN loss (G_T carries 1/N), accumulated
    per thread: da (n_threads, T), dthr (n_threads, T m: per atom, the caller
    sums over atoms for a scalar threshold), dW (n_threads, T m n) for
    coupled and (n_threads, T m m) = d W_z for lista, dWxT (n_threads, T m n)
    = d W_x^T for lista; the caller zeroes and sums them. A float32
    network's weight gradients are summed in dW and dWxT over at most
    FLUSH_BLOCKS blocks, then added into dW64 and dWxT64 (double, of their
    shapes; (n_threads, 0) for float64): the gradient is the sum of both.
    Summed over every block in float32, its error grew with the number of
    blocks (2e-5 relatively for 1000 copies of one batch, whose exact
    gradient is that batch's). S holds the target
    codes of the supervised loss. own_gemm, gather and gemm_rows: as in
    forward.
    """
    cdef Py_ssize_t N = X.shape[0], t
    cdef NetCtx c
    cdef list keep = []
    cdef double total = 0
    # r_t = z_t D - x is kept for the backward pass unless the dense layers
    # go through M (then they compute no r_t and keep their codes)
    cdef bint rst = p.c.family == FAMILY_RESIDUAL and not (p.c.shared and p.c.gram)
    if N == 0:
        return 0.0
    if p.dtype.itemsize != sizeof(floating):
        raise ValueError("loss_and_grad: X and the parameters differ in dtype")
    _check_gather("loss_and_grad", gather)
    check_level("loss_and_grad", own_gemm)
    # (both empty, or both of the shapes of dW and dWxT: a flush writes both)
    if ((dW64.shape[1] > 0 or dWxT64.shape[1] > 0)
            and (dW64.shape[1] != dW.shape[1] or dWxT64.shape[1] != dWxT.shape[1]
                 or dW64.shape[0] < dW.shape[0] or dWxT64.shape[0] < dWxT.shape[0])):
        raise ValueError("loss_and_grad: dW64 and dWxT64 must both be empty or both "
                         "of the shapes of dW and dWxT")
    cdef bint check, stopped
    c.work = NULL
    c.pk = NULL
    try:
        _prepare(&c, p, N, n_threads, block_size, gemm_rows, True, rst, keep)
        for t in range(c.n_threads):
            c.work[t].obj = NULL
            c.work[t].da = &da[t, 0] if da.shape[1] > 0 else NULL
            c.work[t].dthr = &dthr[t, 0]
            c.work[t].dW = &dW[t, 0] if dW.shape[1] > 0 else NULL
            c.work[t].dWxT = &dWxT[t, 0] if dWxT.shape[1] > 0 else NULL
            c.work[t].dW64 = &dW64[t, 0] if dW64.shape[1] > 0 else NULL
            c.work[t].dWxT64 = &dWxT64[t, 0] if dWxT64.shape[1] > 0 else NULL
            c.work[t].n_partial = 0
            c.work[t].loss = 0
        c.X = &X[0, 0]
        c.Z = NULL
        c.S = &S[0, 0] if loss == LOSS_SUPERVISED else NULL
        c.lam = &lmbd[0]
        c.loss = loss
        c.rst = rst
        c.rho = rho
        c.run = SPARSE_RUN
        c.own_gemm = own_gemm
        c.gather = gather
        _pack_operands(&c, p, N, c.loss != 0, keep)
        c.inv_n = 1.0 / N
        c.bad = NULL
        c.n_dw = dW.shape[1]
        c.n_dwx = dWxT.shape[1]
        check = in_main_thread()
        with nogil:
            stopped = run_blocks(N, <int> c.nb_max, c.n_threads, False,
                                 _block_d if floating is double else _block_s, &c, check)
        if stopped:
            raise_interrupt()
        for t in range(c.n_threads):
            total += c.work[t].loss
    finally:
        table_free(c.work)
        table_free(c.pk)
    return total
