"""Two builds of fastlista side by side: did a change slow anything down?

    python benchmarks/compare_builds.py ROUNDS old=PATH new=PATH [-k SUBSTRING]

Each PATH is a directory that holds an importable ``fastlista`` package (a
source tree built in place with ``python setup.py build_ext --inplace``,
or a ``pip install --target`` directory). Every round runs each build in a
fresh process (the builds never share one), the two alternating, and each
process times every case ``--calls`` times (median). The report is the
median over rounds of each case's time, and new ÷ old for the last two
builds given. The cases are the paper's shape (64 features × 256 atoms ×
10 000 signals of ``make_coding``, seed 0; some cases take only its first
1 or 32 signals): exact solves, a few ISTA iterations, OISTA and FISTA to
a tolerance, and 30-layer networks' forward and ``loss_and_grad``; only
the public API of the first release is used, so that any two versions
compare.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

# name -> (kind, keyword arguments); "solve": solve_lasso(X, D, lmbd, **kw),
# "forward"/"loss_and_grad": a Lista(D, lmbd, 30, parametrization=...); "dtype"
# casts the problem (a float32 D makes a float32 network)
CASES = {
    "exact solve 0.1": ("solve", {"lmbd": 0.1}),
    "exact solve 0.8": ("solve", {"lmbd": 0.8}),
    "exact solve 0.1 float32": ("solve", {"lmbd": 0.1, "dtype": "float32", "tol": 1e-5}),
    "5 ISTA iterations 0.1": ("solve", {"lmbd": 0.1, "method": "ista", "tol": 0.0,
                                        "max_iter": 5}),
    "25 ISTA iterations 0.1": ("solve", {"lmbd": 0.1, "method": "ista", "tol": 0.0,
                                         "max_iter": 25}),
    "25 ISTA iterations 0.1 float32": ("solve", {"lmbd": 0.1, "method": "ista", "tol": 0.0,
                                                 "max_iter": 25, "dtype": "float32"}),
    "25 FISTA iterations 0.1 float32": ("solve", {"lmbd": 0.1, "method": "fista",
                                                  "tol": 0.0, "max_iter": 25,
                                                  "dtype": "float32"}),
    "OISTA to 1e-10, 0.8": ("solve", {"lmbd": 0.8, "method": "oista", "tol": 1e-10}),
    "OISTA to 1e-6, 0.1": ("solve", {"lmbd": 0.1, "method": "oista", "tol": 1e-6,
                                     "n_samples": 200}),
    "FISTA to 1e-8, 0.8": ("solve", {"lmbd": 0.8, "method": "fista", "tol": 1e-8}),
    "SLISTA forward 0.1": ("forward", {"lmbd": 0.1, "parametrization": "step"}),
    "SLISTA forward 0.8": ("forward", {"lmbd": 0.8, "parametrization": "step"}),
    "SLISTA loss_and_grad 0.1": ("loss_and_grad", {"lmbd": 0.1, "parametrization": "step"}),
    "SLISTA loss_and_grad 0.8": ("loss_and_grad", {"lmbd": 0.8, "parametrization": "step"}),
    "LISTA-CP loss_and_grad 0.1": ("loss_and_grad", {"lmbd": 0.1,
                                                     "parametrization": "coupled"}),
    "SLISTA forward 0.1 float32": ("forward", {"lmbd": 0.1, "parametrization": "step",
                                               "dtype": "float32"}),
    "SLISTA forward 0.8 float32": ("forward", {"lmbd": 0.8, "parametrization": "step",
                                               "dtype": "float32"}),
    "SLISTA loss_and_grad 0.1 float32": ("loss_and_grad", {"lmbd": 0.1,
                                                           "parametrization": "step",
                                                           "dtype": "float32"}),
    "SLISTA loss_and_grad 0.8 float32": ("loss_and_grad", {"lmbd": 0.8,
                                                           "parametrization": "step",
                                                           "dtype": "float32"}),
    "LISTA-CP loss_and_grad 0.1 float32": ("loss_and_grad", {"lmbd": 0.1,
                                                             "parametrization": "coupled",
                                                             "dtype": "float32"}),
    # calls of one block (no panels packed once a call): small batches
    "SLISTA forward 0.1, 1 sample": ("forward", {"lmbd": 0.1, "parametrization": "step",
                                                 "n_samples": 1}),
    "SLISTA forward 0.1, 32 samples": ("forward", {"lmbd": 0.1, "parametrization": "step",
                                                   "n_samples": 32}),
    "SLISTA forward 0.1, 32 samples float32": ("forward", {"lmbd": 0.1,
                                                           "parametrization": "step",
                                                           "n_samples": 32,
                                                           "dtype": "float32"}),
    "SLISTA loss_and_grad 0.1, 32 samples": ("loss_and_grad", {"lmbd": 0.1,
                                                               "parametrization": "step",
                                                               "n_samples": 32}),
    "SLISTA loss_and_grad 0.1, 1 sample": ("loss_and_grad", {"lmbd": 0.1,
                                                             "parametrization": "step",
                                                             "n_samples": 1}),
    "LISTA-CP forward 0.1, 1 sample": ("forward", {"lmbd": 0.1,
                                                   "parametrization": "coupled",
                                                   "n_samples": 1}),
    "LISTA-CP loss_and_grad 0.1, 32 samples": ("loss_and_grad", {"lmbd": 0.1,
                                                                 "parametrization": "coupled",
                                                                 "n_samples": 32}),
    "exact solve 0.1, 1 sample": ("solve", {"lmbd": 0.1, "n_samples": 1}),
}

# run in a fresh interpreter with the build's directory first on sys.path
WORKER = r"""
import json, sys, time, warnings
import numpy as np
sys.path.insert(0, sys.argv[1])
import fastlista
from fastlista.datasets import make_coding
warnings.simplefilter("ignore")
cases, calls = json.loads(sys.argv[2]), int(sys.argv[3])
X64, D64 = make_coding(n_samples=10000, n_atoms=256, n_features=64, random_state=0)
out = {"path": fastlista.__file__}
for name, (kind, kw) in cases.items():
    kw = dict(kw)
    lmbd, dtype = kw.pop("lmbd"), kw.pop("dtype", "float64")
    X, D = X64[:kw.pop("n_samples", len(X64))].astype(dtype), D64.astype(dtype)
    if kind == "solve":
        run = lambda: fastlista.solve_lasso(X, D, lmbd, **kw)
    else:
        net = fastlista.Lista(D, lmbd, 30, **kw)
        method = getattr(net, "transform" if kind == "forward" else "loss_and_grad")
        run = lambda: method(X)
    run()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    out[name] = float(np.median(times))
print(json.dumps(out))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", type=int)
    parser.add_argument("builds", nargs="+", metavar="NAME=PATH")
    parser.add_argument("-k", dest="keyword", default=None,
                        help="only the cases whose name contains this")
    parser.add_argument("--calls", type=int, default=3,
                        help="timed calls of each case in each process")
    args = parser.parse_args(argv)
    if not all("=" in b for b in args.builds):
        parser.error(f"builds must be NAME=PATH; got {args.builds}")
    builds = dict(b.split("=", 1) for b in args.builds)
    if len(builds) < 2:
        parser.error("give at least two builds, NAME=PATH")
    cases = {k: v for k, v in CASES.items()
             if args.keyword is None or args.keyword in k}
    times = {b: {k: [] for k in cases} for b in builds}
    for r in range(args.rounds):
        order = list(builds) if r % 2 == 0 else list(builds)[::-1]
        for b in order:
            proc = subprocess.run(
                [sys.executable, "-c", WORKER, os.path.abspath(builds[b]),
                 json.dumps(cases), str(args.calls)],
                capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"build {b}: {proc.stderr[-2000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            if r == 0:
                print(f"{b}: {os.path.dirname(result['path'])}")
            for k in cases:
                times[b][k].append(result[k])
    old, new = list(builds)[-2:]
    print(f"{'case':42s} " + " ".join(f"{b:>10s}" for b in builds)
          + f" {new + ' / ' + old:>14s}")
    for k in cases:
        med = {b: float(np.median(times[b][k])) for b in builds}
        print(f"{k:42s} " + " ".join(f"{med[b] * 1e3:8.1f}ms" for b in builds)
              + f" {med[new] / med[old]:14.3f}")


if __name__ == "__main__":
    main()
