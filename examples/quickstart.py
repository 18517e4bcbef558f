"""Solve 10000 Lasso problems of the paper's shape with every method.

64 features, 256 unit-norm Gaussian atoms, dense Gaussian codes, each signal
scaled so that lambda_max = 1 (Ablin et al. 2019). Prints, per method, the
wall time, the iterations and the worst relative duality gap.
"""
import time

import numpy as np

import fastlista
from fastlista.datasets import make_coding


def main(n_samples=10000, lmbd=0.8):
    X, D = make_coding(n_samples=n_samples, n_atoms=256, n_features=64,
                       random_state=0)
    print(f"{n_samples} problems, D {D.shape}, lmbd = {lmbd}, "
          f"L = {fastlista.lipschitz(D):.3f}")
    print(f"{'method':>13} {'time (s)':>9} {'mean iter':>10} "
          f"{'max gap / (|x|^2/2)':>20} {'mean objective':>15}")
    xx = 0.5 * np.einsum("ij,ij->i", X, X)
    for method in ("cd", "fista", "oista", "backtracking", "ista"):
        t0 = time.perf_counter()
        res = fastlista.solve_lasso(X, D, lmbd, method=method, tol=1e-8)
        elapsed = time.perf_counter() - t0
        obj = fastlista.lasso_objective(X, D, lmbd, res.codes).mean()
        print(f"{method:>13} {elapsed:9.3f} {res.n_iter.mean():10.1f} "
              f"{(res.gap / xx).max():20.2e} {obj:15.10f}")
    nnz = (res.codes != 0).sum(axis=1)
    L_S = fastlista.lipschitz(D, support=res.codes != 0)
    print(f"solutions have {nnz.mean():.1f} non-zeros on average; "
          f"median L_S / L = {np.median(L_S) / fastlista.lipschitz(D):.3f}")


if __name__ == "__main__":
    main()
