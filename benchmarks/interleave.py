"""Interleaved timing: ours and the reference alternate in every round.

On a shared machine whose load changes during a run, timing all the rounds
of one function and then all those of another (as pytest-benchmark's groups
do) lets the load hit one side of a ratio and not the other. Here every
round times ours and its reference back to back (their order alternating
from round to round), and the ratio of a comparison is the median of the
per-round ratios. Used by ``python benchmarks/test_bench_networks.py N``
and ``python benchmarks/test_bench_solvers.py N``.

A case's ``ours`` and ``reference`` are *timers*: callables without
arguments that run the work and return the seconds it took (``timer(f, *a)``
times one call of ``f(*a)``; a marginal cost or a mean over repeated short
calls returns its own figure). Before the rounds each timer runs ``prime``
times untimed: the first calls of a process page-fault their buffers (torch
in float32 most of all) and load the BLAS kernels of a new dtype.

Only NumPy and the standard library are used (and, by ``main``, fastlista
and torch where installed, to say what runs).
"""
import time

import numpy as np

__all__ = ["Case", "avx2_env", "blas_threads", "timer", "repeated", "run", "format_rows",
           "main", "small_problems"]


def small_problems():
    """Whether ``FASTLISTA_BENCH_SMALL`` asks for the small problems (a quick
    look: ratios are only meaningful at the paper's shape)."""
    import os

    return os.environ.get("FASTLISTA_BENCH_SMALL", "0").strip().lower() not in (
        "", "0", "false", "no")


def blas_threads(n):
    """A context that holds the BLAS and OpenMP pools to n threads
    (threadpoolctl; nothing when n is None or threadpoolctl is missing)."""
    import contextlib

    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n)


class Case:
    """One comparison: ``ratio = median over rounds of ours / reference``.

    ``check`` (optional) is a string printed beside the ratio: what was
    compared between the two (codes, loss, gradients, on calls made before
    the rounds) and whether it agreed; a string starting with "MISMATCH"
    fails the row, whatever its ratio (a callable: called after the rounds,
    on what they computed). ``rounds`` and ``prime``
    override :func:`run`'s for this case (a reference of minutes).
    """

    def __init__(self, name, ours, reference, target=None, check="", rounds=None,
                 prime=None):
        self.name, self.ours, self.reference = name, ours, reference
        self.target, self.check = target, check
        self.rounds, self.prime = rounds, prime


def timer(func, *args, **kwargs):
    """A timer of one call ``func(*args, **kwargs)``."""
    def run_once():
        t0 = time.perf_counter()
        func(*args, **kwargs)
        return time.perf_counter() - t0
    return run_once


def repeated(func, n, *args, **kwargs):
    """A timer of the mean of ``n`` back-to-back calls (short functions)."""
    def run_n():
        t0 = time.perf_counter()
        for _ in range(n):
            func(*args, **kwargs)
        return (time.perf_counter() - t0) / n
    return run_n


def run(cases, n_rounds=7, prime=2, pause=0.2, verbose=False):
    """Time every case in ``n_rounds`` interleaved rounds.

    ``pause`` seconds of sleep precede every timed call: the thread pools of
    the previous call (OpenBLAS's, OpenMP's, torch's) busy-wait for a while
    after their work (OpenBLAS's about 2**28 cycles), and on a machine with
    as many threads as cores they would slow the next call down.

    Returns a list of dicts: name, ratio (median of the per-round ratios),
    target, ok (None without a target), ours and reference (median seconds),
    spread (the per-round ratios' interquartile range), check, rounds.
    """
    rows = []
    for case in cases:
        for _ in range(prime if case.prime is None else case.prime):
            case.ours()
            case.reference()
        t_ours, t_ref = [], []
        for k in range(n_rounds if case.rounds is None else case.rounds):
            first, second = ((case.ours, t_ours), (case.reference, t_ref))[::1 - 2 * (k % 2)]
            for timer_, times in (first, second):
                time.sleep(pause)
                times.append(timer_())
        ratios = np.array(t_ours) / np.array(t_ref)
        q1, q3 = np.percentile(ratios, [25, 75])
        ratio = float(np.median(ratios))
        check = case.check() if callable(case.check) else case.check
        mismatch = str(check).startswith("MISMATCH")
        row = dict(name=case.name, ratio=ratio, target=case.target,
                   ok=False if mismatch else None if case.target is None
                   else ratio <= case.target,
                   ours=float(np.median(t_ours)), reference=float(np.median(t_ref)),
                   spread=(float(q1), float(q3)), check=check,
                   rounds=len(ratios))
        rows.append(row)
        if verbose:
            print(format_rows([row], header=False), flush=True)
    return rows


def _fmt_time(t):
    return f"{t * 1e3:8.1f}ms" if t >= 1e-3 else f"{t * 1e6:8.1f}us"


def format_rows(rows, header=True):
    """The rows of :func:`run` as a plain-text table."""
    out = []
    if header:
        out.append(f"{'comparison':52s} {'ratio':>7s} {'(q1-q3)':>13s} {'target':>8s} "
                   f"{'ours':>10s} {'reference':>10s}")
    for r in rows:
        target = "" if r["target"] is None else f"<= {r['target']:.3g}"
        ok = "MISMATCH" if str(r["check"]).startswith("MISMATCH") else \
            {None: "", True: "ok", False: "MISS"}[r["ok"]]
        spread = f"{r['spread'][0]:.3f}-{r['spread'][1]:.3f}"
        out.append(f"{r['name']:52s} {r['ratio']:7.3f} {spread:>13s} {target:>8s} "
                   f"{_fmt_time(r['ours']):>10s} {_fmt_time(r['reference']):>10s}  {ok}"
                   + (f"  [{r['rounds']} rounds]" if r.get("rounds", 0) < 3 else "")
                   + (f"  [{r['check']}]" if r["check"] else ""))
    return "\n".join(out)


#: Set in the environment of a run that ``--avx2`` started (see avx2_env).
AVX2_MARK = "FASTLISTA_BENCH_AVX2"


def avx2_env():
    """The environment in which the libraries that pick their kernels when
    they load pick their AVX2 ones, as on a CPU without AVX-512: OpenBLAS
    (NumPy's and SciPy's; and so fastlista's plans, which ask SciPy's),
    MKL, torch's own kernels and oneDNN, and NumPy's dispatched loops (the
    AVX-512 targets this NumPy was built with)."""
    import os

    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__ as dispatch
    except ImportError:                 # NumPy < 2
        from numpy.core._multiarray_umath import __cpu_dispatch__ as dispatch
    wide = [t for t in dispatch if "512" in t or t == "X86_V4"]
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell", MKL_ENABLE_INSTRUCTIONS="AVX2",
               ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    env[AVX2_MARK] = "1"
    if wide:
        env["NPY_DISABLE_CPU_FEATURES"] = " ".join(wide)
    return env


def avx2_machine():
    """What runs in this process, checked to be AVX2 (a run of ``--avx2``):
    a description for the header, or SystemExit naming what is not."""
    from fastlista._kernels import _cpu, _gemm, _unrolled

    wide = []
    if _gemm.GEMM_AVX512 in _gemm.GEMM_KERNELS or \
            _unrolled.GATHER_AVX512 in _unrolled.GATHER_KERNELS:
        wide.append("fastlista's AVX-512 kernels (build it with "
                    "FASTLISTA_ISA=x86-64-v3, see README.md)")
    if _cpu.BLAS_CORE is None or _cpu.BLAS_CORE.lower() in _cpu.SMALL_MATRIX_CORES:
        wide.append(f"SciPy's BLAS (OpenBLAS core {_cpu.BLAS_CORE})")
    parts = [f"SciPy's OpenBLAS {_cpu.BLAS_CORE}"]
    try:
        import torch
    except ImportError:
        pass
    else:
        capability = torch.backends.cpu.get_cpu_capability()
        if "512" in capability:
            wide.append(f"torch ({capability})")
        parts.append(f"torch {capability}")
    if wide:
        raise SystemExit("--avx2: still AVX-512 here: " + "; ".join(wide))
    return "AVX2 machine: " + ", ".join(parts)


def main(interleaved, default_rounds, argv=None):
    """The command line of a suite's runner: ``python FILE [n_rounds] [-k
    SUBSTRING] [--threads N] [--avx2]``, then ``interleaved(n_rounds, small,
    keyword, verbose=True, threads=N)`` between a header (the package, the
    rounds, the load average) and the load average at the end. ``--avx2``
    runs it again in a new process whose libraries take their AVX2 kernels
    (``avx2_env``; fastlista must be a ``FASTLISTA_ISA=x86-64-v3`` build):
    on an AVX-512 machine, every side of every ratio then runs the code it
    runs on an AVX2 one. Returns the exit status: 1 if a comparison's check
    found a mismatch (the two sides did not compute the same thing), else 0
    (a ratio above its target is a measurement, not a failure)."""
    import argparse
    import os
    import sys

    import fastlista

    parser = argparse.ArgumentParser(description=interleaved.__doc__.splitlines()[0])
    parser.add_argument("n_rounds", nargs="?", type=int, default=default_rounds)
    parser.add_argument("-k", dest="keyword", default=None,
                        help="only the comparisons whose name contains this")
    parser.add_argument("--threads", type=int, default=None,
                        help="run every side on this many threads (default: the "
                             "default pools; 1 is steadier on a loaded machine)")
    parser.add_argument("--avx2", action="store_true",
                        help="run as on a CPU without AVX-512: OpenBLAS, MKL, torch "
                             "and NumPy on their AVX2 kernels (needs a "
                             "FASTLISTA_ISA=x86-64-v3 build)")
    args = parser.parse_args(argv)
    machine = ""
    if args.avx2:
        if os.environ.get(AVX2_MARK) != "1":
            # the libraries read their switches when they load: a new process
            sys.stdout.flush()
            argv = sys.argv[1:] if argv is None else list(argv)
            os.execve(sys.executable, [sys.executable, sys.argv[0], *argv], avx2_env())
        machine = ", " + avx2_machine()
    is_small = small_problems()
    print(f"fastlista {os.path.dirname(fastlista.__file__)}, {args.n_rounds} rounds"
          + (", small" if is_small else "")
          + (f", {args.threads} thread(s)" if args.threads else "")
          + machine
          + f", load average {os.getloadavg()[0]:.1f}", flush=True)
    print(format_rows([], header=True), flush=True)
    with blas_threads(args.threads):
        rows = interleaved(args.n_rounds, is_small, args.keyword, verbose=True,
                           threads=args.threads)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return int(any(str(r["check"]).startswith("MISMATCH") for r in rows))
