"""Kernel adapters of the unfolded networks: forward and backward passes.

The Python side of ``_kernels/_unrolled.pyx``: it stacks a network's layer
parameters into the arrays the kernels read (``_unrolled.Params``, with the
transposes that make every product an untransposed GEMM), plans blocks and
threads, runs the kernels under the threading policy (``_threads.py``) and
refuses non-finite results.

Execution (sample-blocked, layer-fused): samples are independent and every
loss is a sum over samples, so the batch is cut into blocks of rows; each
block runs through all T layers and then (training) back through them,
before the next block. Nothing of size N x m x T exists; blocks go to
OpenMP threads with their own workspaces and gradient accumulators.
"""
import numpy as np

from .._kernels import _unrolled
from .._lasso import _LMBD_CAP, SCALE_LIMIT, _shift, _top_exponent
from .._kernels._cpu import BLAS_PACKS_SMALL_CALLS
from .._kernels._gemm import GEMM_AVX512, OWN_GEMM
from .._threads import kernel_threads
from ._parameters import analytic_weights64

# Execution tuning. A block has as many rows as keep its GEMMs (rows x m x n
# multiply-adds) within _BLOCK_GEMM, and every product is written
# untransposed. Where BLAS multiplies small matrices without packing them
# (OpenBLAS on AVX-512, _kernels/_cpu.pyx), that is 2^19: 32 rows on the
# paper shape, 64 x 256 (SLISTA loss_and_grad at lmbd = 0.1 in 0.38 s,
# against 0.47 s at 64 or 128 rows in the same run; 8 rows at 128 x 512, 128
# at 32 x 128). Where every call packs its operands (AVX2), 2^22: 256 rows on
# the paper shape, which amortise the packing (float32, lmbd = 0.1, medians
# of 5 or 7 calls on AMD Zen 3, 32 -> 256 rows: SLISTA forward 349 -> 189 ms,
# loss_and_grad 560 -> 379-475 ms, LISTA-CP loss_and_grad 721 -> 509-526
# ms; at lmbd = 0.8, sparse, within noise either way). Dictionaries too large
# for that take _BLOCK_ELEMENTS codes a block: 128 rows at 256 atoms with
# AVX-512, where a block's codes, gradient and c = x W^T stay in L2; 256
# rows without, where they spill from a 512 KB L2 and the taller calls
# still win (the figures above). A layer
# whose input codes are denser than _SPARSE_DENSITY in the block runs dense
# GEMMs, sparser ones gather rows of B (or W) for the non-zeros (measured on
# the paper shape, 64 x 256, where the gather wins up to roughly 10 %
# density: loss_and_grad at lmbd = 0.3 takes 0.39 s with 0.1, 0.45 s with
# 0.15, and the same at lmbd = 0.5 and 0.8; at lmbd = 0.1, codes 33-77 %
# dense, a float32 forward with 0.4 takes 1.7 x its time with 0.1); OpenMP
# threads only pay off above _THREAD_WORK multiply-adds a call (N T m n),
# below it their start and join dominate.
# Training with weight matrices (coupled: d W_t, T m n; lista: d W_z, d W_x)
# accumulates d W_t += w_t^T r_t once a block, reading and writing all T
# matrices: with 32-row GEMM calls such blocks are _WEIGHT_GRAD_CHUNKS = 4
# GEMM chunks tall (each product still runs chunk by chunk), so that the
# inner dimension of the d W_t products is 4 chunks and the matrices are
# streamed 4 times less (paper shape, loss_and_grad at lmbd = 0.1, one run:
# LISTA-CP 721 -> 627 ms in float64 and 355 -> 320 ms in float32, LISTA
# 2.66 -> 2.08 s; SLISTA, which has no weight matrix, is faster with one
# chunk a block, 467 against 535 ms, its stored layers then staying in L2).
# 256-row calls are tall enough on their own (one chunk a block: LISTA-CP
# float32 509-526 ms, against 519-655 ms with 2 or 4 chunks of 128 rows).
# Cutting those products into 32-row BLAS calls too (each then within
# OpenBLAS's small-matrix kernels, which a 256 x 64 x 128 product is not)
# gained nothing: LISTA-CP 0.98 x its time in float64, 0.995 x in float32
# (benchmarks/compare_builds.py, 9 rounds, Zen 4), LISTA within noise.
# Through the 64-byte tile of _gemm.h, which packs each parameter matrix
# once a call, the small blocks stay, whatever BLAS does: float64 SLISTA
# loss_and_grad at lmbd = 0.1 takes 1.10 x its time on 256-row blocks, the
# forward and float32 the same (Intel Xeon with AVX-512, 7 rounds
# alternating); the 32-byte tile keeps the tall ones (forward 0.93-0.95 x,
# loss_and_grad 1.01-1.03 x, same machine, x86-64-v3 build under
# OPENBLAS_CORETYPE=Haswell).
if BLAS_PACKS_SMALL_CALLS and OWN_GEMM != GEMM_AVX512:
    _BLOCK_GEMM = 1 << 22
    _BLOCK_ELEMENTS = 256 * 256
    _WEIGHT_GRAD_CHUNKS = 1
else:
    _BLOCK_GEMM = 1 << 19
    _BLOCK_ELEMENTS = 128 * 256
    _WEIGHT_GRAD_CHUNKS = 4
_SPARSE_DENSITY = 0.1
_THREAD_WORK = 2e7
# The dense layers' block products run through fastlista's GEMM where BLAS
# would pack every call and the CPU has AVX2 and FMA (_kernels/_gemm.pyx:
# SLISTA forward at lmbd = 0.1 on Zen 3 in 0.82 of its time through BLAS in
# float32, 0.95 in float64), and through its 64-byte tile where the CPU has
# AVX-512 (on an Intel Xeon, SLISTA forward and loss_and_grad at lmbd = 0.1
# in 0.70-0.93 of their time through BLAS, float64 and float32: three runs
# of benchmarks/test_bench_networks.py 5, "through BLAS"); the weight
# gradients' products (inner dimension: the block's rows) stay in BLAS. An
# integer: _kernels._gemm's level (GEMM_KERNELS), checked by the kernels.
_OWN_GEMM = OWN_GEMM
# The sparse layers' gather-threshold-compact rows run through the widest
# kernel written by hand that the CPU runs (_unrolled.GATHER: AVX-512 in
# _kernels/_gather_avx512.h, else AVX2 in _kernels/_gather_avx2.h; float32
# forward at lmbd = 0.8 on Zen 3 in 0.79-0.81 of its time through the
# portable kernel with AVX2: benchmarks/test_bench_networks.py, "portable
# gather" and "AVX2 gather"). None: that default, except that dictionaries
# of fewer than _AVX512_GATHER_MIN_ATOMS atoms take the AVX2 kernel (see
# gather_kernel); an integer forces that kernel (tests, benchmarks).
_GATHER = None
#: The AVX-512 row kernel adds the steps' diagonal terms to whole 64-byte
#: vectors of c (stored, then loaded by the pass) at a fixed cost a row
#: above the AVX2 kernel's: on the Intel AVX-512 machine of
#: docs/benchmarks.md, an untrained SLISTA forward at lmbd = 0.8 through it
#: took (float64 / float32) 1.23 / 1.29 of its time through the AVX2 kernel
#: with 32 atoms, 0.96 / 1.11 with 64, 0.91 / 1.01 with 128
#: (benchmarks/test_bench_networks.py 15 -k "AVX-512 / AVX2" --threads 1),
#: and 0.82-0.88 / 0.86-0.90 with the paper's 256 ("AVX2 gather").
_AVX512_GATHER_MIN_ATOMS = 128


def gather_kernel(n_atoms):
    """The sparse rows' kernel for a dictionary of ``n_atoms`` atoms: the
    forced one (``_GATHER`` not None), else the default, AVX2 instead of
    AVX-512 below ``_AVX512_GATHER_MIN_ATOMS`` atoms where the CPU runs
    both."""
    if _GATHER is not None:
        return _GATHER
    if (_unrolled.GATHER == _unrolled.GATHER_AVX512
            and n_atoms < _AVX512_GATHER_MIN_ATOMS):
        return _unrolled.GATHER_AVX2
    return _unrolled.GATHER

#: loss name -> the kernels' loss code
LOSS_CODES = _unrolled.LOSSES


def scale_units(X, lmbd, S=None, per_sample=True):
    """(X, lmbd, S, e): the batch in units of 2**e, exactly (``np.ldexp``).

    Every layer is positively homogeneous in (x, lmbd) (the thresholds are
    lmbd times a factor; the targets are codes, which scale as x), sample by
    sample: codes scale by 2**e and losses and gradients by 2**(2 e). In
    those units the kernels' squares and products of float32 signals of
    1e-24 neither underflow (their loss came out at 27 % of its value and
    their gradients 0) nor do those of large ones overflow.

    ``per_sample``: e of shape (n_samples,), each sample's max|x| brought
    within 2**+-SCALE_LIMIT (codes only: a tiny sample beside a huge one
    keeps its digits). Otherwise one e for the batch, whose sums (losses,
    gradients) the largest samples make: max|X| within 2**+-SCALE_LIMIT,
    unless that takes the targets S beyond it (tiny signals, large target
    codes), when e brings max|S| down to it and X no further. e = 0 (the
    inputs themselves) where the data are already within the limit. A
    lmbd scaled beyond _LMBD_CAP is clipped to it: above every lambda_max
    of the scaled data, the codes (0) and the objective are the same.
    """
    if per_sample:
        e = _shift(_top_exponent(X, axis=1), SCALE_LIMIT[X.dtype])
        if not e.any():
            return X, lmbd, S, 0
    else:
        e = batch_exponent(X, S)
        if e == 0:
            return X, lmbd, S, 0
    return (*to_units(X, lmbd, S, e), e)


def batch_exponent(X, S=None):
    """The one exponent e of a batch in :func:`scale_units` (``per_sample``
    False): max|X| brought within 2**+-SCALE_LIMIT, unless that takes the
    targets S beyond it. Only the extremes count: X and S may be any arrays
    holding their largest and smallest entries."""
    limit = SCALE_LIMIT[X.dtype]
    e = int(_shift(_top_exponent(X), limit))
    if S is not None and S.size and np.any(S != 0):
        e = max(e, int(_top_exponent(S)) - limit)
    return e


def to_units(X, lmbd, S, e):
    """(X, lmbd, S) times 2**-e, exactly (e an int, or one a sample), with
    lmbd clipped to _LMBD_CAP (see :func:`scale_units`); S may be None."""
    col = e[:, None] if np.ndim(e) else e
    with np.errstate(over="ignore", under="ignore"):
        X = np.ldexp(X, -col).astype(X.dtype, copy=False)
        lmbd = np.minimum(np.ldexp(lmbd, -e), _LMBD_CAP)
        if S is not None:
            S = np.ldexp(S, -col).astype(S.dtype, copy=False)
    return X, lmbd, S


def plan(n_rows, n_atoms, n_features, n_layers, n_threads, weight_grads=False):
    """(n_threads, block_size, gemm_rows) for a batch of n_rows samples.

    At most ``n_threads`` OpenMP threads, and several only for enough work;
    the blocks are balanced so that every thread gets as many rows; a GEMM
    call takes at most ``gemm_rows`` rows of a block. ``weight_grads``: the
    call accumulates the gradients of weight matrices (taller blocks).
    A GEMM chunk's codes (rows x atoms) take at most _BLOCK_ELEMENTS
    entries, its residuals (rows x features) at most _BLOCK_GEMM, or one row.
    """
    chunk = min(_BLOCK_GEMM // max(n_atoms * n_features, 1),
                _BLOCK_ELEMENTS // max(n_atoms, 1))
    if chunk < 8:
        # a chunk's GEMM beyond _BLOCK_GEMM multiply-adds: its rows bounded by
        # the codes' budget, and by the residuals' r = z D - x (their
        # workspaces, and element counts well within a C int)
        chunk = max(1, min(_BLOCK_ELEMENTS // max(n_atoms, 1),
                           _BLOCK_GEMM // max(n_features, 1)))
    block = chunk * (_WEIGHT_GRAD_CHUNKS if weight_grads else 1)
    work = float(n_rows) * n_layers * n_atoms * n_features
    if work < _THREAD_WORK or n_rows < 2 * 16:
        n_threads = 1
    n_blocks = max(-(-n_rows // block), n_threads)
    n_blocks = -(-n_blocks // n_threads) * n_threads
    return n_threads, max(1, -(-n_rows // n_blocks)), chunk


class Executor:
    """Runs one network's layers through the kernels.

    Parameters
    ----------
    D : ndarray of shape (n_atoms, n_features)
        The network's dictionary (read-only).
    parametrization : str
    gamma0 : float
        ALISTA's untrained step (not used by the other parametrizations).

    The kernel arrays are cached per (dtype, depth) for one list of layer
    dicts (a network replaces its list whenever its parameters change, so
    copies of a network may share an executor); the fixed matrices of
    ``step`` and ``alista`` (W, M = D W^T) per dtype for the network's life.
    """

    def __init__(self, D, parametrization, positive=False, ks=None):
        self.D = D
        self.parametrization = parametrization
        self.positive = positive
        self.ks = ks
        self._fixed = {}
        self._params = {}

    def __getstate__(self):
        # the caches (kernel pointers among them) are rebuilt where unpickled
        return {"D": self.D, "parametrization": self.parametrization,
                "positive": self.positive, "ks": self.ks}

    def __setstate__(self, state):
        self.__init__(state["D"], state["parametrization"], state["positive"],
                      state["ks"])

    @property
    def rho(self):
        """The density below which a layer takes the sparse path (support
        selection runs the dense paths only; with one W for all layers, a
        sparse layer starts a run of up to ``_unrolled.SPARSE_RUN`` sparse
        layers)."""
        if self.ks is not None:
            return 0.0
        m, n = self.D.shape
        if self.parametrization in ("step", "alista") and not self.gram():
            # a sparse row gathers k rows of M (k m flops), where the dense
            # path gathers k rows of D and multiplies by W^T (k n + m n):
            # on tall dictionaries the gather wins only below n / (m - n)
            return min(_SPARSE_DENSITY, n / (m - n))
        return _SPARSE_DENSITY

    def fixed_matrices(self, dtype):
        """W, W^T, M = D W^T and M^T of the shared-W parametrizations."""
        key = np.dtype(dtype).str
        if key not in self._fixed:
            D64 = self.D.astype(np.float64)
            W = D64 if self.parametrization == "step" else analytic_weights64(self.D)
            M = D64 @ W.T
            MT = M if self.parametrization == "step" else np.ascontiguousarray(M.T)
            cast = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
            self._fixed[key] = (cast(W[None]), cast(W.T[None]), cast(M), cast(MT))
        return self._fixed[key]

    def gram(self):
        # one GEMM through M (m x m) beats two through D and W (m x n) when m < 2 n
        return self.D.shape[0] < 2 * self.D.shape[1]

    def params(self, layers, depth, dtype):
        """``_unrolled.Params`` of the first ``depth`` of the layer dicts."""
        key = (np.dtype(dtype).str, depth)
        cached = self._params.get(key)
        if cached is not None and cached[0] is layers:
            return cached[1]
        stack = lambda k: np.ascontiguousarray(  # noqa: E731
            np.stack([layer[k] for layer in layers[:depth]]), dtype=dtype)
        D = np.ascontiguousarray(self.D, dtype=dtype)
        DT = np.ascontiguousarray(self.D.T, dtype=dtype)
        p = self.parametrization
        if p == "lista":
            Wz = stack("W_z")
            params = _unrolled.Params(
                D, DT, Wz=Wz, WzT=np.ascontiguousarray(Wz.transpose(0, 2, 1)),
                Wx=stack("W_x"), thr=stack("theta"), positive=self.positive,
                ks=None if self.ks is None else self.ks[:depth])
        else:
            step_key, thr_key = {"step": ("alpha", "alpha"),
                                 "coupled": ("alpha", "beta"),
                                 "alista": ("gamma", "theta")}[p]
            if p == "coupled":
                W = stack("W")
                WT = np.ascontiguousarray(W.transpose(0, 2, 1))
                M = MT = None
            else:
                W, WT, M, MT = self.fixed_matrices(dtype)
            params = _unrolled.Params(D, DT, W=W, WT=WT, M=M, MT=MT,
                                      step=stack(step_key), thr=stack(thr_key),
                                      gram=self.gram(), positive=self.positive,
                                      ks=None if self.ks is None else self.ks[:depth])
        if len(self._params) > 8:
            self._params.clear()
        self._params[key] = (layers, params)
        return params

    def forward(self, layers, depth, X, lmbd, n_jobs, per_layer=False):
        """Codes z_T of validated X through the first ``depth`` layers (and
        the per-layer summed objectives); lmbd is one float64 a sample.

        Raises
        ------
        FloatingPointError
            If the codes of some samples are not finite (parameters that
            make the layers overflow), naming the samples.
        """
        # per-layer objectives are sums over samples: one unit for the batch
        X, lmbd, _, e = scale_units(X, lmbd, per_sample=not per_layer)
        N, (m, n) = X.shape[0], self.D.shape
        T = depth
        Z = np.empty((N, m), dtype=X.dtype)
        bad = np.zeros(N, dtype=np.uint8)
        with kernel_threads(n_jobs, "Lista") as n_threads:
            n_threads, block, chunk = plan(N, m, n, T, n_threads)
            params = self.params(layers, depth, X.dtype)
            obj = np.zeros((n_threads, T) if per_layer else (0, 0))
            _unrolled.forward(X, params, lmbd, Z, obj, bad, n_threads, block, chunk,
                              self.rho, _OWN_GEMM, gather_kernel(m))
        if np.any(e):
            with np.errstate(over="ignore", under="ignore"):
                Z = np.ldexp(Z, e if per_layer else e[:, None]).astype(X.dtype, copy=False)
                obj = np.ldexp(obj, 2 * e) if per_layer else obj
            bad |= ~np.isfinite(Z).all(axis=1)
        rows = np.flatnonzero(bad)
        if rows.size:
            raise FloatingPointError(
                f"the network's codes of samples {rows[:10].tolist()} are not finite: "
                f"its parameters make the layers overflow {X.dtype} (steps far above "
                "2 / L?). Set smaller parameters, or train with fit (which rolls "
                "blow-ups back).")
        return Z, obj.sum(axis=0)

    def loss_and_grad(self, layers, depth, X, lmbd, loss, S, n_jobs):
        """Mean loss at the output of the first ``depth`` layers and its
        gradients (lmbd: one float64 a sample).

        Returns (loss, grads): grads a dict key -> stacked float64 array of
        shape (depth, *shape). Non-finite values are returned as they are
        (the caller decides).
        """
        X, lmbd, S, e = scale_units(X, lmbd, S, per_sample=False)
        N, (m, n) = X.shape[0], self.D.shape
        T = depth
        p = self.parametrization
        with kernel_threads(n_jobs, "Lista") as n_threads:
            n_threads, block, chunk = plan(N, m, n, T, n_threads,
                                           weight_grads=p in ("coupled", "lista"))
            params = self.params(layers, depth, X.dtype)
            dthr = np.zeros((n_threads, T * m))
            da = np.zeros((n_threads, T if p != "lista" else 0))
            sizes = {"coupled": (T * m * n, 0), "lista": (T * m * m, T * m * n)}
            s_w, s_wx = sizes.get(p, (0, 0))
            dW = np.zeros((n_threads, s_w), dtype=X.dtype)
            dWxT = np.zeros((n_threads, s_wx), dtype=X.dtype)
            # float32 weight gradients: partial sums of a few blocks, added
            # into these in double by the kernel
            wide = X.dtype != np.float64
            dW64 = np.zeros((n_threads, s_w if wide else 0))
            dWxT64 = np.zeros((n_threads, s_wx if wide else 0))
            S = np.empty((0, 0), X.dtype) if S is None else S
            total = _unrolled.loss_and_grad(X, params, lmbd, LOSS_CODES[loss], S,
                                            da, dthr, dW, dWxT, dW64, dWxT64, n_threads,
                                            block, chunk, self.rho, _OWN_GEMM,
                                            gather_kernel(m))

        def total_of(acc, acc64):
            """A weight gradient: the threads' sums (and their flushed parts)."""
            if wide:
                return acc.sum(axis=0, dtype=np.float64) + acc64.sum(axis=0)
            return acc.sum(axis=0)

        # (sums of terms that overflowed are inf or NaN, returned as they
        # are, without NumPy's warnings: the caller decides)
        with np.errstate(over="ignore", invalid="ignore"):
            dthr = dthr.sum(axis=0).reshape(T, m)
            if p == "lista":
                grads = {"W_z": total_of(dW, dW64).reshape(T, m, m),
                         "W_x": total_of(dWxT, dWxT64).reshape(T, m, n).transpose(0, 2, 1),
                         "theta": dthr}
            else:
                da = da.sum(axis=0)
                if p == "step":
                    grads = {"alpha": da + dthr.sum(axis=1)}
                elif p == "alista":
                    grads = {"gamma": da, "theta": dthr.sum(axis=1)}
                else:
                    grads = {"W": total_of(dW, dW64).reshape(T, m, n),
                             "alpha": da, "beta": dthr.sum(axis=1)}
            if e:
                total = np.ldexp(total, 2 * e)
                grads = {k: np.ldexp(g, 2 * e) for k, g in grads.items()}
        return total / N, grads
