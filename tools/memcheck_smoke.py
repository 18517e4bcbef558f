"""Exercise every kernel once on small and degenerate inputs (for valgrind).

Run by tools/memcheck.sh; each call also checks its result against NumPy so
that a silent wrong read shows up as an AssertionError.
"""
import numpy as np

import fastlista as fl
from fastlista import _solvers as solvers
from fastlista._kernels import _gemm, _unrolled
from fastlista._networks import _execution as networks


def main():
    rng = np.random.default_rng(0)
    for dtype in (np.float64, np.float32):
        D = rng.standard_normal((30, 12)).astype(dtype)
        D[3] = 0                                   # a zero atom
        X = rng.standard_normal((70, 12)).astype(dtype)
        lmbd = 0.3 * float(np.abs(X @ D.T).max())
        U = rng.standard_normal((5, 30)).astype(dtype)
        ref = np.sign(U) * np.maximum(np.abs(U) - 0.5, 0)
        np.testing.assert_allclose(fl.soft_thresholding(U, dtype(0.5)), ref)
        S = rng.random((40, 30)) < 0.3
        S[0] = False
        B = (D @ D.T).astype(np.float64)
        expected = [np.linalg.eigvalsh(B[np.ix_(s, s)])[-1] if s.any() else 0.0 for s in S]
        np.testing.assert_allclose(fl.lipschitz(D, support=S), expected, rtol=1e-3, atol=1e-6)
        # LAPACK on a multiple top eigenvalue (every eigenvalue of its interval
        # is stored), below and above the squaring's 16 atoms
        for m in (5, 20):
            assert np.allclose(fl.lipschitz(np.eye(m, dtype=dtype), np.ones((2, m), bool),
                                            max_iter=1), 1.0)
        tol = 1e-5 if dtype == np.float32 else 1e-6   # certifiable in the dtype
        Z_cd = fl.solve_lasso(X, D, lmbd, method="cd", tol=tol).codes
        for method in ("ista", "fista", "oista", "backtracking"):
            Z = fl.solve_lasso(X, D, lmbd, method=method, tol=tol, max_iter=3000,
                               record_history=method == "oista").codes
            np.testing.assert_allclose(Z, Z_cd, atol=1e-2)
        # degenerate: empty batch, one sample, lmbd >= lambda_max, lmbd = 0
        assert fl.solve_lasso(X[:0], D, lmbd).codes.shape == (0, 30)
        fl.solve_lasso(X[0], D, lmbd, method="ista", max_iter=50, tol=0)
        assert not fl.solve_lasso(X, D, 1e9).codes.any()
        fl.solve_lasso(X[:5], D, 0.0, method="fista", max_iter=20, tol=0)
        # the solvers' block gradients through each GEMM (BLAS, _gemm.h's
        # tiles the CPU runs): at a small lmbd the iterates stay dense, and ISTA through
        # _gemm.h steps inside the second product; against a NumPy ISTA
        X64, D64 = X.astype(np.float64), D.astype(np.float64)
        L = np.linalg.eigvalsh(D64 @ D64.T)[-1]
        for rel in (0.01, 0.3):
            Z_np = np.zeros((X.shape[0], D.shape[0]))
            for _ in range(20):
                U = Z_np - (Z_np @ D64 - X64) @ D64.T / L
                Z_np = np.sign(U) * np.maximum(np.abs(U) - rel * lmbd / L, 0)
            for own in _gemm.GEMM_KERNELS:
                saved, solvers._OWN_GEMM = solvers._OWN_GEMM, own
                try:
                    Z = fl.solve_lasso(X, D, rel * lmbd, method="ista", max_iter=20,
                                       tol=0).codes
                finally:
                    solvers._OWN_GEMM = saved
                np.testing.assert_allclose(Z, Z_np, rtol=1e-3, atol=1e-5 * np.abs(Z_np).max())
        # networks: an untrained SLISTA is ISTA; forward and backward of each
        # parametrization, dense, sparse and switching layers (lmbd small,
        # middle and large)
        Z_ista = fl.solve_lasso(X, D, lmbd, method="ista", max_iter=5, tol=0).codes
        np.testing.assert_allclose(fl.Lista(D, lmbd, 5).transform(X), Z_ista,
                                   rtol=1e-3, atol=1e-5)
        D_nz = D[np.any(D != 0, axis=1)]           # ALISTA needs non-zero atoms
        for parametrization in ("step", "coupled", "alista", "lista"):
            for rel in (0.05, 0.3, 0.8):
                net = fl.Lista(D_nz, rel * lmbd / 0.3, 4, parametrization=parametrization)
                loss, grads = net.loss_and_grad(X)
                assert np.isfinite(loss)
                assert all(np.all(np.isfinite(g)) for layer in grads for g in layer.values())
                # every layer dense (codes kept as signs) through each
                # GEMM (BLAS, _gemm.h's tiles), then every layer sparse (CSR
                # rows, run row by row) through each row kernel the CPU
                # runs (under valgrind: its CPU's), the portable one also
                # in runs of 3 layers: the same gradients
                cases = [(0.0, own, _unrolled.GATHER_PORTABLE, 32)
                         for own in _gemm.GEMM_KERNELS]
                cases += [(1.1, False, kernel, 32) for kernel in _unrolled.GATHER_KERNELS]
                cases += [(1.1, False, _unrolled.GATHER_PORTABLE, 3)]
                for rho, own, kernel, run in cases:
                    saved = (networks._SPARSE_DENSITY, networks._OWN_GEMM,
                             networks._GATHER, _unrolled.SPARSE_RUN)
                    (networks._SPARSE_DENSITY, networks._OWN_GEMM, networks._GATHER,
                     _unrolled.SPARSE_RUN) = rho, own, kernel, run
                    try:
                        _, other = net.loss_and_grad(X)
                    finally:
                        (networks._SPARSE_DENSITY, networks._OWN_GEMM, networks._GATHER,
                         _unrolled.SPARSE_RUN) = saved
                    for layer, layer_other in zip(grads, other):
                        for k, g in layer.items():
                            np.testing.assert_allclose(
                                layer_other[k], g, rtol=1e-8 if dtype == np.float64 else 1e-3,
                                atol=1e-5 * np.abs(g).max())
                net.loss_and_grad(X, loss="supervised",
                                  Z_target=np.delete(Z_ista, 3, axis=1))
    _gemm_kernels(rng)
    _dictionary_step(rng)
    print("memcheck smoke: all kernels ran and agreed with NumPy")


def _gemm_kernels(rng):
    """_gemm.h on partial tiles, K cut in two panels, and the fused step,
    through each register tile the CPU runs (32 and 64 bytes), on B and on
    its packed panels."""
    tiles = [level for level in _gemm.GEMM_KERNELS if level != _gemm.GEMM_BLAS]
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-3)):
        for level in tiles:
            for packed in (False, True):
                A = rng.standard_normal((13, 300)).astype(dtype)
                B = rng.standard_normal((300, 19)).astype(dtype)
                C = np.full((13, 19), np.nan, dtype)
                _gemm.gemm(1.0, A, B, 0.0, C, packed, level)
                np.testing.assert_allclose(C, A.astype(float) @ B, rtol=tol, atol=tol * 20)
                Z = rng.standard_normal((13, 19)).astype(dtype)
                thr = np.full(13, 0.5, dtype)
                V = Z.astype(float) - 0.1 * (A[:, :64].astype(float) @ B[:64])
                expected = np.sign(V) * np.maximum(np.abs(V) - 0.5, 0)
                sg = np.zeros((13, 19), np.int8)
                _gemm.gemm_step(A[:, :64], B[:64], 0.1, thr, False, Z, sg, packed, level)
                np.testing.assert_allclose(Z, expected, rtol=tol, atol=tol * 20)
                np.testing.assert_array_equal(sg, np.sign(Z))


def _dictionary_step(rng):
    """The dictionary step's kernel (_dict.bcd) against the same loop in
    NumPy, with an unused atom and non-negative atoms; and learn_dictionary
    end to end on a few degenerate inputs."""
    from fastlista.dictionary import learn_dictionary, update_dictionary

    for positive in (False, True):
        Z = rng.standard_normal((50, 9)) * (rng.random((50, 9)) < 0.4)
        Z[:, 2] = 0                                # an unused atom
        X = rng.standard_normal((50, 5))
        A, B = Z.T @ Z, Z.T @ X
        D = np.abs(rng.standard_normal((9, 5))) if positive else rng.standard_normal((9, 5))
        expected = D.copy()
        for _ in range(2):
            for k in range(9):
                if A[k, k] > 0:
                    u = expected[k] + (B[k] - A[k] @ expected) / A[k, k]
                    u = np.maximum(u, 0) if positive else u
                    n = np.linalg.norm(u)
                    if n > 0:
                        expected[k] = u / max(n, 1.0)
        update_dictionary(D, A, B, positive=positive, n_passes=2)
        np.testing.assert_allclose(D, expected, atol=1e-12)
    for X in (np.zeros((20, 4)), rng.standard_normal((20, 4)), np.ones((20, 4))):
        for method in ("online", "batch"):
            res = learn_dictionary(X, 6, 0.2, method=method, max_iter=2, batch_size=7,
                                   n_jobs=1, random_state=0)
            np.testing.assert_allclose(np.linalg.norm(res.D, axis=1), 1, rtol=1e-12)


if __name__ == "__main__":
    main()
