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
caller passes D^T and W^T): on blocks of a few dozen rows BLAS then
multiplies without packing the operands. A layer whose input codes are
sparse takes the support-aware path: z_t M gathers the k_i rows of M for the
non-zeros of row i (2 k_i m flops; ``coupled`` gathers rows of D for z_t D),
and the backward pass gathers the rows of M^T (or W, W_z^T) for the support
of z_{t+1}. Row loops run in L1; their elementwise work is in the C
micro-kernels below.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.float cimport DBL_EPSILON, FLT_EPSILON
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset
cimport openmp

import threading

import numpy as np

from ._simd cimport (fl_d_back_sign, fl_s_back_sign, fl_d_gather, fl_s_gather,
                     fl_d_scaled_st_compact, fl_s_scaled_st_compact, fl_d_st_step,
                     fl_s_st_step, fl_d_st_step_sign, fl_s_st_step_sign)


from ._blas cimport axpy, dot, gemm
from ._prox cimport sign, soft_threshold


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


cdef struct Dims:
    int nb          # rows of this block
    int nb_max      # rows of a full block (stride of the stored layers)
    int m           # atoms
    int n           # features
    int T           # layers run
    bint shared     # residual family with one W for all layers (M, M^T given)
    bint gram       # dense residual layers go through M (m < 2 n)
    double rho      # density below which a layer takes the sparse path


cdef inline Dims make_dims(int nb, int nb_max, int m, int n, int T, bint shared,
                          bint gram, double rho) noexcept nogil:
    cdef Dims d
    d.nb = nb
    d.nb_max = nb_max
    d.m = m
    d.n = n
    d.T = T
    d.shared = shared
    d.gram = gram
    d.rho = rho
    return d


# ---------------------------------------------------------------------------
# elementwise helpers
# ---------------------------------------------------------------------------

cdef inline int scaled_st_compact_row(int m, floating *y, floating a, floating s,
                                      int *idx, floating *val) noexcept nogil:
    """y <- a ST(y, s) in place, its CSR row in idx/val; returns nnz."""
    if floating is double:
        return fl_d_scaled_st_compact(m, y, a, s, idx, val)
    else:
        return fl_s_scaled_st_compact(m, y, a, s, idx, val)


cdef inline void gather_rows(int k, const int *idx, const floating *val,
                             floating alpha, const floating *A, int p,
                             floating *out) noexcept nogil:
    """out += alpha * sum_q val[q] * A[idx[q], :]   (A has p columns)"""
    if floating is double:
        fl_d_gather(k, idx, val, alpha, A, p, out)
    else:
        fl_s_gather(k, idx, val, alpha, A, p, out)


cdef inline void compact_block(Dims *d, floating *Z, int *ptr, int *idx,
                               floating *val) noexcept nogil:
    """CSR of the nb x m block Z, through the fused row kernel with a = 1
    and s = 0: ST(z, 0) = z exactly, so Z is rewritten with its own values."""
    cdef int i, m = d.m
    ptr[0] = 0
    for i in range(d.nb):
        ptr[i + 1] = ptr[i] + scaled_st_compact_row(m, &Z[<Py_ssize_t> i * m], 1, 0,
                                                    &idx[ptr[i]], &val[ptr[i]])


cdef inline Py_ssize_t count_nonzero(Py_ssize_t size, const floating *z) noexcept nogil:
    """Number of non-zero (or NaN) entries of z[:size].

    On the bit pattern x with the sign shifted out, (x | -x) has its top bit
    set iff x != 0: integer operations only, so the loop vectorizes.
    """
    cdef Py_ssize_t j, k = 0
    cdef uint64_t b64
    cdef uint32_t b32
    if floating is double:
        for j in range(size):
            memcpy(&b64, &z[j], 8)
            b64 = b64 << 1
            k += <Py_ssize_t> ((b64 | (0 - b64)) >> 63)
    else:
        for j in range(size):
            memcpy(&b32, &z[j], 4)
            b32 = b32 << 1
            k += <Py_ssize_t> ((b32 | (0 - b32)) >> 31)
    return k


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
    cdef int i, m = d.m, n = d.n, nb = d.nb
    cdef Py_ssize_t k
    if fmt == FMT_CSR:
        for i in range(nb):
            for k in range(n):
                R[i * n + k] = -X[i * n + k]
            gather_rows(ptr[i + 1] - ptr[i], &idx[ptr[i]], &val[ptr[i]], 1,
                        D, n, &R[i * n])
    else:
        memcpy(R, X, nb * n * sizeof(floating))
        gemm(False, False, nb, n, m, 1, Z, m, D, n, -1, R, n)


cdef double block_objective(Dims *d, const floating *X, const floating *D,
                            const floating *Z, int fmt, const int *ptr,
                            const int *idx, const floating *val, floating lmbd,
                            floating *R) noexcept nogil:
    """sum_i 1/2 ||x_i - z_i D||^2 + lmbd ||z_i||_1 over the block."""
    cdef Py_ssize_t j, size = <Py_ssize_t> d.nb * d.m
    cdef double l1 = 0
    residual_rows(d, X, D, Z, fmt, ptr, idx, val, R)
    if fmt == FMT_CSR:
        for j in range(ptr[d.nb]):
            l1 += val[j] if val[j] > 0 else -val[j]
    else:
        for j in range(size):
            l1 += Z[j] if Z[j] > 0 else -Z[j]
    return 0.5 * dot(d.nb * d.n, R, R) + lmbd * l1


cdef double block_loss(Dims *d, int loss, const floating *X, const floating *D,
                       const floating *DT, const floating *Z, int fmt, const int *ptr, const int *idx,
                       const floating *val, const floating *S, floating lmbd,
                       floating inv_n, floating *R, floating *G) noexcept nogil:
    """Loss of the block's output Z (summed) and G = d(mean loss)/dZ.

    unsupervised: F_x(z) = 1/2 ||x - z D||^2 + lmbd ||z||_1,
                  G = ((z D - x) D^T + lmbd sign(z)) / N
    supervised:   1/2 ||z - s||^2,  G = (z - s) / N
    """
    cdef Py_ssize_t j, size = <Py_ssize_t> d.nb * d.m
    cdef double out = 0
    cdef floating diff
    if loss == LOSS_UNSUPERVISED:
        out = block_objective(d, X, D, Z, fmt, ptr, idx, val, lmbd, R)
        # G = (R D^T + lmbd sign(Z)) / N with R = Z D - X
        gemm(False, False, d.nb, d.m, d.n, inv_n, R, d.n, DT, d.m, 0, G, d.m)
        for j in range(size):
            G[j] += lmbd * inv_n * sign(Z[j])
    else:
        for j in range(size):
            diff = Z[j] - S[j]
            out += 0.5 * diff * diff
            G[j] = diff * inv_n
    return out


cdef void mask_gradient(Dims *d, floating *G, int fmt, const int *ptr,
                        const int *idx, const floating *val, floating lmbd,
                        floating *wv, double *dthr) noexcept nogil:
    """w = g * 1[z != 0] in place in G; d thr[j] -= lmbd sum_i w_ij sign(z_ij).

    With a CSR z the support values of w are also gathered into wv (aligned
    with idx) for the sparse products that follow.
    """
    cdef int i, j, m = d.m
    cdef Py_ssize_t p
    cdef floating g
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
                dthr[idx[p]] -= lmbd * wv[p] * sign(val[p])
    elif fmt == FMT_SIGN:
        # selects only (w_j sign(z_j) = w_j or -w_j), so that the loop vectorizes
        for i in range(d.nb):
            Gi = &G[i * m]
            Si = <const signed char *> val + <Py_ssize_t> i * m
            for j in range(m):
                g = Gi[j] if Si[j] != 0 else 0
                Gi[j] = g
                dthr[j] -= lmbd * (g if Si[j] > 0 else -g)
    else:
        for i in range(d.nb):
            Gi = &G[i * m]
            Zi = &val[i * m]
            for j in range(m):
                g = Gi[j] if Zi[j] != 0 else 0
                Gi[j] = g
                dthr[j] -= lmbd * (g if Zi[j] > 0 else -g)


cdef double stored_dot(Dims *d, int fmt, const int *ptr, const int *idx,
                       const floating *val, const floating *V) noexcept nogil:
    """<z, V> for a stored block code z."""
    cdef int i
    cdef Py_ssize_t p
    cdef double out = 0
    if fmt == FMT_CSR:
        for i in range(d.nb):
            for p in range(ptr[i], ptr[i + 1]):
                out += val[p] * V[i * d.m + idx[p]]
        return out
    return dot(d.nb * d.m, val, V)


# ---------------------------------------------------------------------------
# residual family: step (SLISTA), alista, coupled (LISTA-CP)
# ---------------------------------------------------------------------------

cdef void residual_forward_block(
        Dims *d, const floating *X, const floating *D, const floating *WT,
        const floating *M, const floating *step, const floating *thr,
        floating lmbd, bint store, floating *C, floating *Z, floating *U,
        floating *R, floating *Rst, int *fmt, int *ptr, int *idx,
        floating *val, double *obj) noexcept nogil:
    """Run the block through the T layers; z_T is left in Z.

    Layer t's code is in storage slot t (store) or t % 2 (inference):
    fmt[s], ptr[s (nb_max + 1):], idx/val[s nb_max m:]. Rst (training,
    NULL when the dense layers go through M) receives r_t = z_t D - x of
    every layer that computes it; a dense code z_t is then stored as its
    signs (FMT_SIGN): the backward pass needs z_t's values only through
    <z_t, w M^T> = <r_t + x, w W>, and the block's storage (bytes and
    the n-wide r_t, instead of m-wide floating codes) stays in L2. obj
    (if not NULL) accumulates the objective of every layer's output.
    """
    cdef int nb = d.nb, m = d.m, n = d.n, T = d.T, t, i, j, s_in, s_out, kz, q
    cdef Py_ssize_t cap = <Py_ssize_t> d.nb_max * m, size = <Py_ssize_t> nb * m
    cdef Py_ssize_t nnz = 0, r
    cdef const floating *WTt
    cdef const floating *vz
    cdef const int *iz
    cdef signed char *sg
    cdef floating a, sth, inv_a
    cdef floating eps = FLT_EPSILON if floating is float else DBL_EPSILON
    cdef floating *Rt
    cdef floating *Ui
    cdef floating *z = Z        # z_t (dense, always valid)
    cdef floating *u = U        # scratch; swapped with z by the sparse path
    cdef floating *tmp
    cdef int *pin
    cdef int *pout
    cdef bint sparse

    if d.shared:
        # c = x W^T, the constant part of the gradient step
        gemm(False, False, nb, m, n, 1, X, n, WT, m, 0, C, m)
    memset(z, 0, size * sizeof(floating))
    fmt[0] = FMT_CSR
    memset(ptr, 0, (nb + 1) * sizeof(int))

    for t in range(T):
        s_in = t if store else t % 2
        s_out = t + 1 if store else (t + 1) % 2
        pin = &ptr[s_in * (d.nb_max + 1)]
        pout = &ptr[s_out * (d.nb_max + 1)]
        a = step[t]
        sth = lmbd * thr[t]
        WTt = WT if d.shared else &WT[<Py_ssize_t> t * m * n]
        sparse = fmt[s_in] == FMT_CSR and nnz < d.rho * size

        if sparse and d.shared and a >= eps:
            # row by row, in L1, with u = a y:
            #     y = c - z M + z / a,   z+ = ST(u, s) = a ST(y, s / a),
            # the rows of M gathered for the k non-zeros of z (2 k m flops);
            # y then holds the dense z+ (swap) and its CSR row is stored.
            # (y carries the same absolute rounding error as u; a >= eps
            # keeps z / a far from overflow, smaller steps take the path below)
            inv_a = 1 / a
            pout[0] = 0
            for i in range(nb):
                Ui = &u[i * m]
                memcpy(Ui, &C[i * m], m * sizeof(floating))
                kz = pin[i + 1] - pin[i]
                iz = &idx[s_in * cap + pin[i]]
                vz = &val[s_in * cap + pin[i]]
                for q in range(kz):
                    Ui[iz[q]] += vz[q] * inv_a
                gather_rows(kz, iz, vz, -1, M, m, Ui)
                pout[i + 1] = pout[i] + scaled_st_compact_row(
                    m, Ui, a, sth * inv_a, &idx[s_out * cap + pout[i]],
                    &val[s_out * cap + pout[i]])
            tmp = z
            z = u
            u = tmp
            fmt[s_out] = FMT_CSR
            nnz = pout[nb]
        else:
            if d.shared and d.gram and not sparse:
                # u = z M - c  (one GEMM through the Gram matrix)
                gemm(False, False, nb, m, m, 1, z, m, M, m, 0, u, m)
                for r in range(size):
                    u[r] -= C[r]
            else:
                # r = z D - x (rows of D gathered when z is sparse), u = r W^T
                Rt = &Rst[<Py_ssize_t> t * d.nb_max * n] if Rst != NULL else R
                residual_rows(d, X, D, z, FMT_CSR if sparse else FMT_DENSE, pin,
                              &idx[s_in * cap], &val[s_in * cap], Rt)
                gemm(False, False, nb, m, n, 1, Rt, n, WTt, m, 0, u, m)
            # z+ = ST(z - a u, lmbd thr), in place in z
            if store and Rst != NULL:
                sg = <signed char *> &val[s_out * cap]
                if floating is double:
                    nnz = fl_d_st_step_sign(size, z, u, a, sth, sg)
                else:
                    nnz = fl_s_st_step_sign(size, z, u, a, sth, sg)
                fmt[s_out] = FMT_SIGN
                if nnz < d.rho * size:
                    store_layer(d, z, nnz, &fmt[s_out], pout, &idx[s_out * cap],
                                &val[s_out * cap])
            else:
                if floating is double:
                    nnz = fl_d_st_step(size, z, u, a, sth)
                else:
                    nnz = fl_s_st_step(size, z, u, a, sth)
                if store or nnz < d.rho * size:
                    store_layer(d, z, nnz, &fmt[s_out], pout, &idx[s_out * cap],
                                &val[s_out * cap])
                else:
                    fmt[s_out] = FMT_DENSE
        if obj != NULL:
            obj[t] += block_objective(d, X, D, z, fmt[s_out], pout,
                                      &idx[s_out * cap], &val[s_out * cap],
                                      lmbd, R)
    if z != Z:
        memcpy(Z, z, size * sizeof(floating))


cdef void residual_backward_block(
        Dims *d, const floating *X, const floating *D, const floating *DT,
        const floating *W, const floating *MT, const floating *step, floating lmbd,
        const floating *C, floating *G, floating *V, floating *P,
        const floating *Rst, const int *fmt, const int *ptr, const int *idx,
        const floating *val, floating *wv, double *da, double *dthr,
        floating *dW) noexcept nogil:
    """Back-propagate G = d loss / d z_T through the T stored layers.

    Accumulates d a_t in da[t], d thr_t in dthr[t m:], and (coupled) d W_t
    in dW[t m n:]. G is overwritten.
    """
    cdef int nb = d.nb, m = d.m, n = d.n, t, i, kw, kz, q
    cdef Py_ssize_t cap = <Py_ssize_t> d.nb_max * m, size = <Py_ssize_t> nb * m
    cdef Py_ssize_t p
    cdef const int *pin
    cdef const int *pout
    cdef const int *iw
    cdef const int *iz
    cdef const floating *sw
    cdef const floating *vz
    cdef const floating *Wt
    cdef const floating *Rt
    cdef const signed char *sg
    cdef floating *Gi
    cdef floating *w
    cdef floating a
    cdef double wc, zv
    cdef bint sparse_w, need_v, masked = False

    for t in range(d.T - 1, -1, -1):
        a = step[t]
        pin = &ptr[t * (d.nb_max + 1)]
        pout = &ptr[(t + 1) * (d.nb_max + 1)]
        Wt = W if d.shared else &W[<Py_ssize_t> t * m * n]
        Rt = &Rst[<Py_ssize_t> t * d.nb_max * n] if Rst != NULL else NULL
        sparse_w = fmt[t + 1] == FMT_CSR
        need_v = t > 0          # d z_0 is not needed (z_0 = 0 is no parameter)

        if d.shared and sparse_w:
            # row by row: w = g on supp(z+) (k entries), d thr_t, <w, c>;
            # d z_t = w - a w M^T with the k rows of M^T gathered, and
            # <z_t, w M^T> = sum_p w_p sum_q z_q M^T[j_p, j_q] (sparse z_t)
            # or <r_t + x, w W> (z_t stored as signs; w W gathers k rows of W)
            wc = 0
            zv = 0
            for i in range(nb):
                Gi = &G[i * m]
                kw = pout[i + 1] - pout[i]
                iw = &idx[(t + 1) * cap + pout[i]]
                sw = &val[(t + 1) * cap + pout[i]]
                w = &wv[pout[i]]
                for p in range(kw):
                    w[p] = Gi[iw[p]]
                    dthr[t * m + iw[p]] -= lmbd * w[p] * sign(sw[p])
                    wc += w[p] * C[i * m + iw[p]]
                if not need_v:
                    continue
                if fmt[t] == FMT_CSR:
                    kz = pin[i + 1] - pin[i]
                    iz = &idx[t * cap + pin[i]]
                    vz = &val[t * cap + pin[i]]
                    for p in range(kw):
                        for q in range(kz):
                            zv += w[p] * vz[q] * MT[<Py_ssize_t> iw[p] * m + iz[q]]
                elif fmt[t] == FMT_SIGN:
                    memset(&P[i * n], 0, n * sizeof(floating))
                    gather_rows(kw, iw, w, 1, Wt, n, &P[i * n])
                    zv += dot(n, &P[i * n], &Rt[i * n]) + dot(n, &P[i * n], &X[i * n])
                else:
                    for p in range(kw):
                        zv += w[p] * dot(m, &MT[<Py_ssize_t> iw[p] * m],
                                         &val[t * cap + i * m])
                memset(Gi, 0, m * sizeof(floating))
                gather_rows(kw, iw, w, -a, MT, m, Gi)
                for p in range(kw):
                    Gi[iw[p]] += w[p]
            da[t] += wc - zv
            continue

        if not masked:
            # w = g * 1[z_{t+1} != 0] (in G), d thr_t
            mask_gradient(d, G, fmt[t + 1], pout, &idx[(t + 1) * cap],
                          &val[(t + 1) * cap], lmbd, wv, &dthr[t * m])
        masked = False

        if d.shared and fmt[t] != FMT_SIGN:
            # (dense w) d a_t = -(<z_t, V> - <w, c>) with V = w M^T, through
            # M^T (m < 2 n) or through P = w W and V = P D^T
            da[t] += dot(nb * m, G, C)
            if need_v:
                if d.gram:
                    gemm(False, False, nb, m, m, 1, G, m, MT, m, 0, V, m)
                else:
                    gemm(False, False, nb, n, m, 1, G, m, Wt, n, 0, P, n)
                    gemm(False, False, nb, m, n, 1, P, n, DT, m, 0, V, m)
                da[t] -= stored_dot(d, fmt[t], pin, &idx[t * cap], &val[t * cap], V)
        else:
            # r_t is stored: P = w W_t, d a_t = -<P, r_t>, (coupled)
            # d W_t = -a w^T r_t, V = P D^T
            if sparse_w:
                for i in range(nb):
                    memset(&P[i * n], 0, n * sizeof(floating))
                    gather_rows(pout[i + 1] - pout[i], &idx[(t + 1) * cap + pout[i]],
                                &wv[pout[i]], 1, Wt, n, &P[i * n])
                    for p in range(pout[i], pout[i + 1]):
                        axpy(n, -a * wv[p], &Rt[i * n],
                             &dW[<Py_ssize_t> t * m * n + idx[(t + 1) * cap + p] * n])
            else:
                gemm(False, False, nb, n, m, 1, G, m, Wt, n, 0, P, n)
                if not d.shared:
                    gemm(True, False, m, n, nb, -a, G, m, Rt, n, 1,
                         &dW[<Py_ssize_t> t * m * n], n)
            da[t] -= dot(nb * n, P, Rt)
            if need_v:
                gemm(False, False, nb, m, n, 1, P, n, DT, m, 0, V, m)

        if need_v and fmt[t] == FMT_SIGN:
            # one pass: d z_t = w - a V, masked by supp(z_t) into the w of
            # layer t - 1, with its d thr
            sg = <const signed char *> &val[t * cap]
            if floating is double:
                fl_d_back_sign(nb, m, G, V, sg, a, lmbd, &dthr[(t - 1) * m])
            else:
                fl_s_back_sign(nb, m, G, V, sg, a, lmbd, &dthr[(t - 1) * m])
            masked = True
        elif need_v:
            # d z_t = w - a V
            for p in range(size):
                G[p] -= a * V[p]


# ---------------------------------------------------------------------------
# lista (Gregor & LeCun)
# ---------------------------------------------------------------------------

cdef void lista_forward_block(
        Dims *d, const floating *X, const floating *D, const floating *Wz,
        const floating *Wx, const floating *thr, floating lmbd, bint store,
        floating *Z, floating *U, floating *R, int *fmt, int *ptr, int *idx,
        floating *val, double *obj) noexcept nogil:
    """z+ = ST(z W_z[t] + x W_x[t], lmbd thr_t) for t < T; z_T left in Z."""
    cdef int nb = d.nb, m = d.m, n = d.n, t, i, j, s_in, s_out
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
        gemm(False, False, nb, m, n, 1, X, n, &Wx[<Py_ssize_t> t * n * m], m, 0, U, m)
        if sparse:
            for i in range(nb):
                gather_rows(pin[i + 1] - pin[i], &idx[s_in * cap + pin[i]],
                            &val[s_in * cap + pin[i]], 1, Wzt, m, &U[i * m])
        else:
            gemm(False, False, nb, m, m, 1, Z, m, Wzt, m, 1, U, m)
        for i in range(nb):
            Zi = &Z[i * m]
            Ui = &U[i * m]
            for j in range(m):
                Zi[j] = soft_threshold(Ui[j], lmbd * th[j])
        nnz = count_nonzero(size, Z)
        if store or nnz < d.rho * size:
            store_layer(d, Z, nnz, &fmt[s_out], pout, &idx[s_out * cap],
                        &val[s_out * cap])
        else:
            fmt[s_out] = FMT_DENSE
        if obj != NULL:
            obj[t] += block_objective(d, X, D, Z, fmt[s_out], pout,
                                      &idx[s_out * cap], &val[s_out * cap],
                                      lmbd, R)


cdef void lista_backward_block(
        Dims *d, const floating *X, const floating *WzT, floating lmbd, floating *G, floating *V,
        const int *fmt, const int *ptr, const int *idx, const floating *val,
        floating *wv, double *dthr, floating *dWz, floating *dWxT) noexcept nogil:
    """Back-propagate G = d loss / d z_T; accumulates d thr, d W_z, d W_x^T."""
    cdef int nb = d.nb, m = d.m, n = d.n, t, i
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
        mask_gradient(d, G, fmt[t + 1], pout, iout, &val[(t + 1) * cap], lmbd,
                      wv, &dthr[t * m])
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
                memset(&G[i * m], 0, m * sizeof(floating))
                gather_rows(pout[i + 1] - pout[i], &iout[pout[i]], &wv[pout[i]],
                            1, &WzT[<Py_ssize_t> t * m * m], m, &G[i * m])
        else:
            gemm(False, False, nb, m, m, 1, G, m, &WzT[<Py_ssize_t> t * m * m], m,
                 0, V, m)
            memcpy(G, V, size * sizeof(floating))


# ---------------------------------------------------------------------------
# drivers: blocks over OpenMP threads
# ---------------------------------------------------------------------------

def max_threads():
    """OpenMP's thread budget (OMP_NUM_THREADS or the cores)."""
    return openmp.omp_get_max_threads()


cdef Py_ssize_t _round8(Py_ssize_t k) noexcept nogil:
    return (k + 7) // 8 * 8


def _layout(int nb_max, int m, int n, int T, bint store, bint rst):
    """Offsets of the per-thread floating and int workspaces."""
    cdef Py_ssize_t block = _round8(<Py_ssize_t> nb_max * m)
    cdef Py_ssize_t rows = _round8(<Py_ssize_t> nb_max * n)
    cdef int slots = T + 1 if store else 2
    f = {}
    off = 0
    for name, size in [("Z", block), ("U", block), ("G", block), ("V", block),
                       ("C", block), ("wv", block), ("R", rows), ("P", rows),
                       ("Rst", _round8(<Py_ssize_t> T * nb_max * n) if rst else 0),
                       ("val", slots * block)]:
        f[name] = off
        off += size
    f["total"] = max(off, 1)
    i = {"fmt": 0, "ptr": _round8(slots), "idx": _round8(slots) + _round8(slots * (nb_max + 1))}
    i["total"] = i["idx"] + slots * block
    return f, i


_local = threading.local()
# workspaces up to this size are kept between calls (per Python thread and
# dtype): a fresh allocation costs its page faults on every call
_WORKSPACE_CACHE_BYTES = 1 << 28


def _workspaces(dtype, int n_threads, Py_ssize_t n_float, Py_ssize_t n_int):
    """Per-thread floating and int workspaces of at least the given sizes.

    Rows are threads; a row may be longer than asked. Reused between the
    calls of one Python thread (kernels of two threads never share them).
    """
    cache = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    key = np.dtype(dtype).char
    fws, iws = cache.get(key, (None, None))
    if (fws is None or fws.shape[0] < n_threads or fws.shape[1] < n_float
            or iws.shape[1] < n_int):
        rows = max(n_threads, 0 if fws is None else fws.shape[0])
        fws = np.empty((rows, max(n_float, 0 if fws is None else fws.shape[1])), dtype=dtype)
        iws = np.empty((rows, max(n_int, 0 if iws is None else iws.shape[1])), dtype=np.intc)
        if fws.nbytes + iws.nbytes <= _WORKSPACE_CACHE_BYTES:
            cache[key] = (fws, iws)
        else:
            cache.pop(key, None)
    return fws, iws


def _blocks(int N, int block_size, int n_threads, int m, int n, int T,
            bint store, bint rst, dtype):
    """Block plan and per-thread workspaces of a kernel call.

    Returns (nb_max, n_blocks, n_threads, fws, iws, fo, io): rows of a full
    block, the number of blocks, the threads used (at most one a block), the
    floating and int workspaces and their layouts (offsets, see _layout).
    """
    nb_max = min(block_size, max(N, 1))
    n_blocks = (N + nb_max - 1) // nb_max
    n_threads = max(1, min(n_threads, n_blocks))
    fo, io = _layout(nb_max, m, n, T, store, rst)
    fws, iws = _workspaces(dtype, n_threads, fo["total"], io["total"])
    return nb_max, n_blocks, n_threads, fws, iws, fo, io


cdef inline floating *_f(floating[:, ::1] ws, int tid, Py_ssize_t off) noexcept nogil:
    return &ws[tid, 0] + off


cdef inline int *_i(int[:, ::1] ws, int tid, Py_ssize_t off) noexcept nogil:
    return &ws[tid, 0] + off


def residual_forward(const floating[:, ::1] X, const floating[:, ::1] D,
                     const floating[:, :, ::1] WT, const floating[:, ::1] M,
                     const floating[::1] step, const floating[::1] thr,
                     floating lmbd, floating[:, ::1] Z_out, double[:, ::1] obj,
                     int n_threads, int block_size, double rho, bint gram):
    """Codes z_T of the residual network for every row of X (into Z_out).

    WT holds the transposes of the network's W: shape (1, n, m) (shared:
    step, alista; then M = D W^T) or (T, n, m) (coupled; M unused); every
    product then runs as an untransposed GEMM, which BLAS does without
    packing at these sizes. thr has shape (T,): thresholds are
    lmbd * thr. obj, of shape (n_threads, T) or (0, 0), accumulates the
    summed objective of every layer's output per thread.
    """
    cdef int N = X.shape[0], n = X.shape[1], m = D.shape[0], T = step.shape[0]
    cdef bint shared = M.shape[0] == m
    cdef int b, tid, start
    cdef Dims d
    cdef int nb_max, n_blocks
    if N == 0:
        return
    dtype = np.float32 if floating is float else np.float64
    nb_max, n_blocks, n_threads, fws_, iws_, fo, io = _blocks(
        N, block_size, n_threads, m, n, T, False, False, dtype)
    cdef floating[:, ::1] fws = fws_
    cdef int[:, ::1] iws = iws_
    cdef Py_ssize_t oU = fo["U"], oC = fo["C"], oR = fo["R"], oval = fo["val"]
    cdef Py_ssize_t ofmt = io["fmt"], optr = io["ptr"], oidx = io["idx"]
    cdef bint with_obj = obj.shape[0] > 0
    cdef const floating *Mp = &M[0, 0] if M.shape[0] > 0 else NULL
    with nogil:
        for b in prange(n_blocks, num_threads=n_threads, schedule="static"):
            tid = threadid()
            start = b * nb_max
            d = make_dims(min(nb_max, N - start), nb_max, m, n, T, shared, gram, rho)
            residual_forward_block(
                &d, &X[start, 0], &D[0, 0], &WT[0, 0, 0], Mp,
                &step[0], &thr[0], lmbd, False, _f(fws, tid, oC), &Z_out[start, 0], _f(fws, tid, oU),
                _f(fws, tid, oR), NULL, _i(iws, tid, ofmt), _i(iws, tid, optr),
                _i(iws, tid, oidx), _f(fws, tid, oval),
                &obj[tid, 0] if with_obj else NULL)


def residual_grad(const floating[:, ::1] X, const floating[:, ::1] D,
                  const floating[:, ::1] DT, const floating[:, :, ::1] W,
                  const floating[:, :, ::1] WT, const floating[:, ::1] M,
                  const floating[:, ::1] MT, const floating[::1] step,
                  const floating[::1] thr, floating lmbd, int loss,
                  const floating[:, ::1] S, double[:, ::1] da,
                  double[:, ::1] dthr, floating[:, ::1] dW, int n_threads,
                  int block_size, double rho, bint gram):
    """Summed loss of the residual network's output and its gradients.

    The gradients are those of the MEAN loss (G_T carries 1/N). da (n_threads,
    T) and dthr (n_threads, T m: per atom, to be summed over atoms) are
    per-thread accumulators, as is dW
    (n_threads, T m n) for coupled (W of shape (T, m, n)); the caller zeroes
    and sums them. M, MT = D W^T, W D^T when W is shared (shape (1, m, n));
    DT and WT are the transposes of D and of W's matrices. S is the target
    codes for the supervised loss.
    """
    cdef int N = X.shape[0], n = X.shape[1], m = D.shape[0], T = step.shape[0]
    cdef bint shared = M.shape[0] == m
    # r_t = z_t D - x is kept for the backward pass unless the dense layers
    # go through M (then they compute no r_t and keep their codes)
    cdef bint rst = not (shared and gram)
    cdef int nb_max, n_blocks
    cdef int b, tid, start
    cdef Py_ssize_t cap, sT
    cdef Dims d
    cdef floating inv_n = 1.0 / max(N, 1)
    cdef floating *Zb
    cdef int *fmtp
    cdef int *ptrp
    cdef int *idxp
    cdef floating *valp
    if N == 0:
        return 0.0
    dtype = np.float32 if floating is float else np.float64
    nb_max, n_blocks, n_threads, fws_, iws_, fo, io = _blocks(
        N, block_size, n_threads, m, n, T, True, rst, dtype)
    cdef floating[:, ::1] fws = fws_
    cdef int[:, ::1] iws = iws_
    cdef double[::1] loss_acc = np.zeros(n_threads)
    cdef Py_ssize_t oZ = fo["Z"], oU = fo["U"], oG = fo["G"], oV = fo["V"]
    cdef Py_ssize_t oC = fo["C"], owv = fo["wv"], oR = fo["R"], oP = fo["P"]
    cdef Py_ssize_t oRst = fo["Rst"], oval = fo["val"]
    cdef Py_ssize_t ofmt = io["fmt"], optr = io["ptr"], oidx = io["idx"]
    cdef const floating *Mp = &M[0, 0] if shared else NULL
    cdef const floating *MTp = &MT[0, 0] if shared else NULL
    cdef floating *dWp
    cdef const floating *Sp
    cap = <Py_ssize_t> nb_max * m
    with nogil:
        for b in prange(n_blocks, num_threads=n_threads, schedule="static"):
            tid = threadid()
            start = b * nb_max
            d = make_dims(min(nb_max, N - start), nb_max, m, n, T, shared, gram, rho)
            Zb = _f(fws, tid, oZ)
            fmtp = _i(iws, tid, ofmt)
            ptrp = _i(iws, tid, optr)
            idxp = _i(iws, tid, oidx)
            valp = _f(fws, tid, oval)
            dWp = NULL if shared else &dW[tid, 0]
            Sp = &S[start, 0] if loss == LOSS_SUPERVISED else NULL
            residual_forward_block(
                &d, &X[start, 0], &D[0, 0], &WT[0, 0, 0], Mp,
                &step[0], &thr[0], lmbd, True, _f(fws, tid, oC), Zb, _f(fws, tid, oU),
                _f(fws, tid, oR), _f(fws, tid, oRst) if rst else NULL,
                fmtp, ptrp, idxp, valp, NULL)
            sT = <Py_ssize_t> T
            loss_acc[tid] += block_loss(
                &d, loss, &X[start, 0], &D[0, 0], &DT[0, 0], Zb, fmtp[T],
                &ptrp[sT * (nb_max + 1)], &idxp[sT * cap], &valp[sT * cap],
                Sp, lmbd, inv_n, _f(fws, tid, oR), _f(fws, tid, oG))
            residual_backward_block(
                &d, &X[start, 0], &D[0, 0], &DT[0, 0], &W[0, 0, 0], MTp, &step[0], lmbd,
                _f(fws, tid, oC), _f(fws, tid, oG), _f(fws, tid, oV),
                _f(fws, tid, oP), _f(fws, tid, oRst) if rst else NULL, fmtp, ptrp,
                idxp, valp,
                _f(fws, tid, owv), &da[tid, 0], &dthr[tid, 0], dWp)
    return float(np.sum(loss_acc))


def lista_forward(const floating[:, ::1] X, const floating[:, ::1] D,
                  const floating[:, :, ::1] Wz, const floating[:, :, ::1] Wx,
                  const floating[:, ::1] thr, floating lmbd,
                  floating[:, ::1] Z_out, double[:, ::1] obj, int n_threads,
                  int block_size, double rho):
    """Codes z_T of the LISTA network (Wz (T, m, m), Wx (T, n, m))."""
    cdef int N = X.shape[0], n = X.shape[1], m = D.shape[0], T = thr.shape[0]
    cdef int b, tid, start
    cdef Dims d
    cdef int nb_max, n_blocks
    if N == 0:
        return
    dtype = np.float32 if floating is float else np.float64
    nb_max, n_blocks, n_threads, fws_, iws_, fo, io = _blocks(
        N, block_size, n_threads, m, n, T, False, False, dtype)
    cdef floating[:, ::1] fws = fws_
    cdef int[:, ::1] iws = iws_
    cdef Py_ssize_t oU = fo["U"], oR = fo["R"], oval = fo["val"]
    cdef Py_ssize_t ofmt = io["fmt"], optr = io["ptr"], oidx = io["idx"]
    cdef bint with_obj = obj.shape[0] > 0
    with nogil:
        for b in prange(n_blocks, num_threads=n_threads, schedule="static"):
            tid = threadid()
            start = b * nb_max
            d = make_dims(min(nb_max, N - start), nb_max, m, n, T, False, False, rho)
            lista_forward_block(
                &d, &X[start, 0], &D[0, 0], &Wz[0, 0, 0], &Wx[0, 0, 0], &thr[0, 0],
                lmbd, False, &Z_out[start, 0], _f(fws, tid, oU), _f(fws, tid, oR),
                _i(iws, tid, ofmt), _i(iws, tid, optr), _i(iws, tid, oidx),
                _f(fws, tid, oval), &obj[tid, 0] if with_obj else NULL)


def lista_grad(const floating[:, ::1] X, const floating[:, ::1] D,
               const floating[:, ::1] DT, const floating[:, :, ::1] Wz, const floating[:, :, ::1] WzT,
               const floating[:, :, ::1] Wx, const floating[:, ::1] thr,
               floating lmbd, int loss, const floating[:, ::1] S,
               double[:, ::1] dthr, floating[:, ::1] dWz, floating[:, ::1] dWxT,
               int n_threads, int block_size, double rho):
    """Summed loss of the LISTA output and per-thread gradient accumulators:
    dthr (n_threads, T m), dWz (n_threads, T m m), dWxT (n_threads, T m n)
    (the transposes of d W_x[t])."""
    cdef int N = X.shape[0], n = X.shape[1], m = D.shape[0], T = thr.shape[0]
    cdef int nb_max, n_blocks
    cdef int b, tid, start
    cdef Py_ssize_t cap, sT
    cdef Dims d
    cdef floating inv_n = 1.0 / max(N, 1)
    cdef floating *Zb
    cdef int *fmtp
    cdef int *ptrp
    cdef int *idxp
    cdef floating *valp
    cdef const floating *Sp
    if N == 0:
        return 0.0
    dtype = np.float32 if floating is float else np.float64
    nb_max, n_blocks, n_threads, fws_, iws_, fo, io = _blocks(
        N, block_size, n_threads, m, n, T, True, False, dtype)
    cap = <Py_ssize_t> nb_max * m
    cdef floating[:, ::1] fws = fws_
    cdef int[:, ::1] iws = iws_
    cdef double[::1] loss_acc = np.zeros(n_threads)
    cdef Py_ssize_t oZ = fo["Z"], oU = fo["U"], oG = fo["G"], oV = fo["V"]
    cdef Py_ssize_t owv = fo["wv"], oR = fo["R"], oval = fo["val"]
    cdef Py_ssize_t ofmt = io["fmt"], optr = io["ptr"], oidx = io["idx"]
    with nogil:
        for b in prange(n_blocks, num_threads=n_threads, schedule="static"):
            tid = threadid()
            start = b * nb_max
            d = make_dims(min(nb_max, N - start), nb_max, m, n, T, False, False, rho)
            Zb = _f(fws, tid, oZ)
            fmtp = _i(iws, tid, ofmt)
            ptrp = _i(iws, tid, optr)
            idxp = _i(iws, tid, oidx)
            valp = _f(fws, tid, oval)
            Sp = &S[start, 0] if loss == LOSS_SUPERVISED else NULL
            lista_forward_block(
                &d, &X[start, 0], &D[0, 0], &Wz[0, 0, 0], &Wx[0, 0, 0], &thr[0, 0],
                lmbd, True, Zb, _f(fws, tid, oU), _f(fws, tid, oR),
                fmtp, ptrp, idxp, valp, NULL)
            sT = <Py_ssize_t> T
            loss_acc[tid] += block_loss(
                &d, loss, &X[start, 0], &D[0, 0], &DT[0, 0], Zb, fmtp[T],
                &ptrp[sT * (nb_max + 1)], &idxp[sT * cap], &valp[sT * cap],
                Sp, lmbd, inv_n, _f(fws, tid, oR), _f(fws, tid, oG))
            lista_backward_block(
                &d, &X[start, 0], &WzT[0, 0, 0], lmbd,
                _f(fws, tid, oG), _f(fws, tid, oV),
                fmtp, ptrp, idxp, valp, _f(fws, tid, owv), &dthr[tid, 0],
                &dWz[tid, 0], &dWxT[tid, 0])
    return float(np.sum(loss_acc))
