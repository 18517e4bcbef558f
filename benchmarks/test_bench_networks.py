"""Benchmarks of the unfolded networks (issue 3, "Performance").

Paper shape (64 features x 256 atoms x 10000 samples of ``make_coding``),
T = 30 layers, float64, untrained networks (ISTA steps 1/L). Each group times
the Cython network (``role="ours"``) beside its references in the same run;
``benchmarks/report.py`` prints the ratios (median of ours / median of
reference) and checks the targets:

* ``slista-forward lmbd=0.1``: ``Lista.transform`` vs the PyTorch autograd
  reference (``benchmarks/torch_reference.py``, no graph), ratio <= 0.4
  (>= 2.5x faster), and vs T times the GEMM pair of one dense layer on the
  whole batch (``Z @ D``, ``R @ D.T``), ratio <= 1.0;
* ``slista-forward lmbd=0.8``: vs torch, <= 0.1 (>= 10x faster);
* ``slista-loss_and_grad lmbd=0.1`` / ``0.8``: ``Lista.loss_and_grad`` vs
  torch's forward + ``loss.backward()``, <= 1/3 and <= 0.1;
* ``coupled-loss_and_grad lmbd=0.1``: LISTA-CP, vs torch, <= 0.5;
* ``slista-peak-memory lmbd=0.8``: peak extra resident memory of one
  ``loss_and_grad`` call, ours vs torch's, each in a fresh subprocess
  (recorded in ``extra_info["peak_extra_mb"]``; the times of that group
  include the interpreter start and mean nothing).

The torch entries are skipped when torch is not installed. Run::

    pytest benchmarks/test_bench_networks.py --benchmark-only
"""
import json
import os
import subprocess
import sys
import textwrap

from pathlib import Path

import numpy as np
import pytest

import fastlista
from fastlista import Lista

N_LAYERS = 30
FORWARD_TARGET = {0.1: 1 / 2.5, 0.8: 1 / 10}
GRAD_TARGET = {0.1: 1 / 3, 0.8: 1 / 10}
COUPLED_TARGET = 1 / 2

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


def _torch_reference():
    pytest.importorskip("torch")
    sys.path.insert(0, BENCH_DIR)
    try:
        import torch_reference
    finally:
        sys.path.remove(BENCH_DIR)
    return torch_reference


def _run(benchmark, func, *args, rounds=None, **kwargs):
    """``benchmark(func, ...)``, or a fixed number of rounds for slow calls."""
    if rounds is None:
        return benchmark(func, *args, **kwargs)
    return benchmark.pedantic(func, args=args, kwargs=kwargs, rounds=rounds,
                              iterations=1, warmup_rounds=1)


def _network(problem, lmbd, parametrization="step"):
    _, D = problem
    return Lista(D, lmbd, N_LAYERS, parametrization=parametrization)


def _codes_info(Z):
    return dict(nnz_mean=float(np.count_nonzero(Z, axis=1).mean()))


# ------------------------------------------------------------ SLISTA forward
@pytest.mark.parametrize("lmbd", [0.1, 0.8])
def test_slista_forward(benchmark, problem, info, lmbd):
    X, _ = problem
    net = _network(problem, lmbd)
    benchmark.group = f"slista-forward lmbd={lmbd}"
    info(benchmark, problem, role="ours", lmbd=lmbd, n_layers=N_LAYERS,
         label="fastlista Lista(step).transform")
    Z = _run(benchmark, net.transform, X)
    benchmark.extra_info.update(_codes_info(Z))


@pytest.mark.parametrize("lmbd", [0.1, 0.8])
def test_slista_forward_torch(benchmark, problem, info, lmbd):
    ref = _torch_reference()
    X, D = problem
    net = _network(problem, lmbd)
    tnet = ref.TorchLista(D, lmbd, net.parameters, "step")
    benchmark.group = f"slista-forward lmbd={lmbd}"
    info(benchmark, problem, role="reference", lmbd=lmbd, n_layers=N_LAYERS,
         label="torch autograd reference (no_grad)", target_ratio=FORWARD_TARGET[lmbd])
    Z = _run(benchmark, tnet.transform, X, rounds=5)
    benchmark.extra_info.update(_codes_info(Z))


def test_slista_forward_gemm_floor(benchmark, problem, info):
    X, D = problem
    lmbd = 0.1
    benchmark.group = f"slista-forward lmbd={lmbd}"
    info(benchmark, problem, role="reference", lmbd=lmbd, n_layers=N_LAYERS,
         label=f"{N_LAYERS} x NumPy GEMM pair Z @ D, R @ D.T", target_ratio=1.0)
    Z = np.ascontiguousarray(_network(problem, lmbd).transform(X))
    R = np.empty_like(X)
    U = np.empty_like(Z)
    DT = D.T

    def gemm_pairs():
        for _ in range(N_LAYERS):
            np.matmul(Z, D, out=R)
            np.matmul(R, DT, out=U)
        return U

    _run(benchmark, gemm_pairs, rounds=5)


# ------------------------------------------------------- SLISTA loss and grad
@pytest.mark.parametrize("lmbd", [0.1, 0.8])
def test_slista_loss_and_grad(benchmark, problem, info, lmbd):
    X, _ = problem
    net = _network(problem, lmbd)
    benchmark.group = f"slista-loss_and_grad lmbd={lmbd}"
    info(benchmark, problem, role="ours", lmbd=lmbd, n_layers=N_LAYERS,
         label="fastlista Lista(step).loss_and_grad")
    loss, _ = _run(benchmark, net.loss_and_grad, X)
    benchmark.extra_info["loss"] = loss


@pytest.mark.parametrize("lmbd", [0.1, 0.8])
def test_slista_loss_and_grad_torch(benchmark, problem, info, lmbd):
    ref = _torch_reference()
    X, D = problem
    net = _network(problem, lmbd)
    tnet = ref.TorchLista(D, lmbd, net.parameters, "step")
    benchmark.group = f"slista-loss_and_grad lmbd={lmbd}"
    info(benchmark, problem, role="reference", lmbd=lmbd, n_layers=N_LAYERS,
         label="torch autograd reference", target_ratio=GRAD_TARGET[lmbd],
         compare={"loss": {"kind": "rel_diff", "max": 1e-10}})
    loss, _ = _run(benchmark, tnet.loss_and_grad, X, rounds=5)
    benchmark.extra_info["loss"] = loss


# ---------------------------------------------------- LISTA-CP loss and grad
def test_coupled_loss_and_grad(benchmark, problem, info):
    X, _ = problem
    lmbd = 0.1
    net = _network(problem, lmbd, "coupled")
    benchmark.group = f"coupled-loss_and_grad lmbd={lmbd}"
    info(benchmark, problem, role="ours", lmbd=lmbd, n_layers=N_LAYERS,
         label="fastlista Lista(coupled).loss_and_grad")
    loss, _ = _run(benchmark, net.loss_and_grad, X, rounds=5)
    benchmark.extra_info["loss"] = loss


def test_coupled_loss_and_grad_torch(benchmark, problem, info):
    ref = _torch_reference()
    X, D = problem
    lmbd = 0.1
    net = _network(problem, lmbd, "coupled")
    tnet = ref.TorchLista(D, lmbd, net.parameters, "coupled")
    benchmark.group = f"coupled-loss_and_grad lmbd={lmbd}"
    info(benchmark, problem, role="reference", lmbd=lmbd, n_layers=N_LAYERS,
         label="torch autograd reference", target_ratio=COUPLED_TARGET,
         compare={"loss": {"kind": "rel_diff", "max": 1e-10}})
    loss, _ = _run(benchmark, tnet.loss_and_grad, X, rounds=5)
    benchmark.extra_info["loss"] = loss


# ------------------------------------------------------------- peak memory
_MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, {bench_dir!r})
    from fastlista.datasets import make_coding
    from fastlista import Lista

    def rss_kb(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])

    X, D = make_coding({n_samples}, {n_atoms}, {n_features}, random_state=0)
    net = Lista(D, {lmbd}, {n_layers})
    if {torch!r}:
        import torch_reference
        ref = torch_reference.TorchLista(D, {lmbd}, net.parameters, "step")
        run = lambda: ref.loss_and_grad(X)
        small = X[:8]
        ref.loss_and_grad(small)          # load torch's kernels first
    else:
        run = lambda: net.loss_and_grad(X)
        net.loss_and_grad(X[:8])
    base = rss_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:   # reset the peak (VmHWM)
            f.write("5")
    except OSError:     # not allowed here: the peak may then predate the call
        pass
    run()
    print(json.dumps({{"peak_extra_mb": (rss_kb("VmHWM") - base) / 1024}}))
""")


def _peak_memory(problem, lmbd, torch, tmp_dir):
    X, D = problem
    script = _MEMORY_SCRIPT.format(bench_dir=BENCH_DIR, n_samples=X.shape[0],
                                   n_atoms=D.shape[0], n_features=D.shape[1],
                                   lmbd=lmbd, n_layers=N_LAYERS, torch=torch)
    # the fastlista under test (installed, or built in place), never a source
    # tree without compiled kernels from the current directory
    env = {**os.environ,
           "PYTHONPATH": str(Path(fastlista.__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True,
                         text=True, check=True, cwd=tmp_dir, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_mb"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("torch", [False, True], ids=["fastlista", "torch"])
def test_slista_peak_memory(benchmark, problem, info, torch, tmp_path):
    if torch:
        _torch_reference()
    lmbd = 0.8
    benchmark.group = f"slista-peak-memory lmbd={lmbd}"
    info(benchmark, problem, role="reference" if torch else "ours", lmbd=lmbd,
         n_layers=N_LAYERS,
         label=("torch" if torch else "fastlista") + " loss_and_grad, fresh process",
         **({"compare": {"peak_extra_mb": {"kind": "ratio", "max": None}}} if torch else {}))
    peak = _run(benchmark, _peak_memory, problem, lmbd, torch, tmp_path, rounds=1)
    benchmark.extra_info["peak_extra_mb"] = peak


# ------------------------------------------------ interleaved side by side
def interleaved(n_rounds=7, small=False):
    """Median over rounds of the per-round time ratios, ours / reference.

    Each round times ours and then every reference once, so that a change of
    the machine's load during the run hits both sides of a ratio alike (the
    pytest-benchmark groups time their entries one after the other). Returns
    a list of (comparison, median ratio, target, median ours s, median ref s).
    """
    import time

    from fastlista.datasets import make_coding

    ref = _torch_reference_module()
    X, D = make_coding(1000 if small else 10000, 256, 64, random_state=0)
    nets = {(p, lmbd): Lista(D, lmbd, N_LAYERS, parametrization=p)
            for p, lmbd in [("step", 0.1), ("step", 0.8), ("coupled", 0.1)]}
    torch_nets = {k: ref.TorchLista(D, k[1], net.parameters, k[0]) if ref else None
                  for k, net in nets.items()}
    Z = nets["step", 0.1].transform(X)
    R, U = np.empty_like(X), np.empty_like(Z)

    def gemm_pairs():
        for _ in range(N_LAYERS):
            np.matmul(Z, D, out=R)
            np.matmul(R, D.T, out=U)

    cases = [
        ("SLISTA forward 0.1 / torch", nets["step", 0.1].transform,
         torch_nets["step", 0.1] and torch_nets["step", 0.1].transform, FORWARD_TARGET[0.1]),
        ("SLISTA forward 0.1 / T x GEMM pair", nets["step", 0.1].transform, gemm_pairs, 1.0),
        ("SLISTA forward 0.8 / torch", nets["step", 0.8].transform,
         torch_nets["step", 0.8] and torch_nets["step", 0.8].transform, FORWARD_TARGET[0.8]),
        ("SLISTA loss_and_grad 0.1 / torch", nets["step", 0.1].loss_and_grad,
         torch_nets["step", 0.1] and torch_nets["step", 0.1].loss_and_grad, GRAD_TARGET[0.1]),
        ("SLISTA loss_and_grad 0.8 / torch", nets["step", 0.8].loss_and_grad,
         torch_nets["step", 0.8] and torch_nets["step", 0.8].loss_and_grad, GRAD_TARGET[0.8]),
        ("LISTA-CP loss_and_grad 0.1 / torch", nets["coupled", 0.1].loss_and_grad,
         torch_nets["coupled", 0.1] and torch_nets["coupled", 0.1].loss_and_grad,
         COUPLED_TARGET),
    ]
    out = []
    for name, ours, theirs, target in cases:
        if theirs is None:
            continue
        ours(X), theirs(X) if theirs is not gemm_pairs else theirs()   # warm up
        t_ours, t_ref = [], []
        for _ in range(n_rounds):
            t0 = time.perf_counter()
            ours(X)
            t_ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            theirs() if theirs is gemm_pairs else theirs(X)
            t_ref.append(time.perf_counter() - t0)
        ratio = float(np.median(np.array(t_ours) / np.array(t_ref)))
        out.append((name, ratio, target, float(np.median(t_ours)), float(np.median(t_ref))))
    return out


def _torch_reference_module():
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    sys.path.insert(0, BENCH_DIR)
    try:
        import torch_reference
    finally:
        sys.path.remove(BENCH_DIR)
    return torch_reference


if __name__ == "__main__":
    # python benchmarks/test_bench_networks.py [n_rounds]
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    small = os.environ.get("FASTLISTA_BENCH_SMALL", "0") not in ("", "0")
    print(f"{'comparison':38s} {'ratio':>7s} {'target':>8s} {'ours':>9s} {'reference':>10s}")
    for name, ratio, target, a, b in interleaved(rounds, small):
        print(f"{name:38s} {ratio:7.3f} {'<= %.3g' % target:>8s} {a * 1e3:7.1f}ms "
              f"{b * 1e3:8.1f}ms  {'ok' if ratio <= target else 'MISS'}")
