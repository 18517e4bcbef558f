"""Benchmarks of the unfolded networks, float64 and float32, with the
AVX-512 and AVX2 row kernels.

Paper shape (64 features x 256 atoms x 10000 samples of ``make_coding``),
T = 30 layers, untrained networks (ISTA steps 1/L), in float64 and in
float32 (``D`` and ``X`` cast to float32: a float32 ``Lista`` and torch's
default dtype). Each group times the Cython network (``role="ours"``) beside
its references in the same run; ``benchmarks/report.py`` prints the ratios
(median of ours / median of reference) and checks the targets. Groups (the
float32 ones carry " float32" in their name):

* ``slista-forward lmbd=0.1``: ``Lista.transform`` vs the PyTorch autograd
  reference (``benchmarks/torch_reference.py``, no graph), ratio <= 1/3
  (>= 3x faster), and vs T times the GEMM pair of one dense layer on the
  whole batch (``Z @ D``, ``R @ D.T``, same dtype), ratio <= 0.8;
* ``slista-forward lmbd=0.8``: vs torch, <= 1/12 (>= 12x faster);
* ``slista-loss_and_grad lmbd=0.1`` / ``0.8``: ``Lista.loss_and_grad`` vs
  torch's forward + ``loss.backward()``, <= 1/4 and <= 1/15; both sides'
  loss and gradients must agree (``torch_reference.RTOL``: 1e-10 / 1e-8 in
  float64, 1e-6 / 1e-4 in float32), checked by the test and recorded
  (``loss``, ``grad_rel_diff``);
* ``coupled-loss_and_grad lmbd=0.1``: LISTA-CP, vs torch, <= 1/3;
* ``slista-loss_and_grad float32/float64 lmbd=0.1``: the float32 network vs
  the float64 one, <= 0.6;
* ``slista-forward tall 4096x64 lmbd=0.5``: ``Lista.transform`` (10 layers)
  on a tall dictionary (4096 atoms of 64 features: codes 3-9 % dense, whose
  M = D D^T takes 128 MiB) vs a NumPy unrolled ISTA of the same layers,
  ratio <= 1; the codes must agree (rtol 1e-9);
* ``slista-peak-memory lmbd=0.8``: peak extra resident memory of one
  ``loss_and_grad`` call, ours vs torch's, each in a fresh subprocess
  (recorded in ``extra_info["peak_extra_mb"]``; the times of that group
  include the interpreter start and mean nothing).

The interleaved runs (below) add, where the networks' dense layers multiply
through fastlista's GEMM (``fastlista._kernels._gemm.OWN_GEMM``: AVX-512,
or no AVX-512 and AVX2 and FMA), ``SLISTA forward 0.1 / through BLAS`` and
``SLISTA loss_and_grad 0.1 / through BLAS``: the same calls with BLAS
instead, where that GEMM is its 64-byte tile (AVX-512) ``SLISTA forward
0.1 / 32-byte GEMM tile`` and ``SLISTA loss_and_grad 0.1 / 32-byte GEMM
tile``: the same calls through its 32-byte tile, and ``SLISTA forward 0.1
/ panels copied every block`` and
``SLISTA loss_and_grad 0.1 / panels copied every block``: the same calls
with the parameter matrices' panels copied by every product, not packed
once a call (``fastlista._kernels._unrolled.PACK_OPERANDS = False``), both
without a target; where the sparse layers' rows run through a kernel
written by hand (``fastlista._kernels._unrolled.GATHER``: AVX-512 or AVX2),
``SLISTA forward 0.8 / portable gather`` and ``SLISTA loss_and_grad 0.8 /
portable gather``: the same calls through the portable row kernel, and
where that kernel is the AVX-512 one, ``SLISTA forward 0.8 / AVX2 gather``
and ``SLISTA loss_and_grad 0.8 / AVX2 gather``: through the AVX2 kernel,
without a target;
``SLISTA forward 0.8 / one layer a run``: the forward with its sparse
layers run one layer at a time over the block
(``fastlista._kernels._unrolled.SPARSE_RUN = 1``), not row by row over
several, without a target; where the CPU runs the AVX-512 row kernel,
``SLISTA forward 0.8, m x m/4, AVX-512 / AVX2 gather`` for m = 32, 64 and
128: the forward on those dictionaries through the AVX-512 kernel against
the AVX2 one, without a target; and ``fused step with signs / plain product``:
the training forward's gradient step, fused into the product u = r D^T of
one 256-row block, against that product alone (what the epilogue costs).

torch's calls run after two untimed ones (a cold float32 call page-faults
its buffers). The torch entries are skipped when torch is not installed.
Run::

    pytest benchmarks/test_bench_networks.py --benchmark-only
    python benchmarks/test_bench_networks.py 7     # interleaved, steadier
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
from fastlista._kernels import _gemm, _unrolled
from fastlista._kernels._gemm import OWN_GEMM
from fastlista._networks import _execution as execution

N_LAYERS = 30
FORWARD_TARGET = {0.1: 1 / 3, 0.8: 1 / 12}
GRAD_TARGET = {0.1: 1 / 4, 0.8: 1 / 15}
COUPLED_TARGET = 1 / 3
GEMM_FLOOR_TARGET = 0.8
DTYPE_TARGET = 0.6          # float32 / float64 time, SLISTA loss_and_grad lmbd=0.1
TALL = (4096, 64)           # atoms x features of the tall dictionary
SMALL_ATOMS = (32, 64, 128)  # dictionaries of m atoms, m / 4 features
TALL_LMBD = 0.5
TALL_LAYERS = 10
TALL_TARGET = 1.0           # Lista.transform / NumPy unrolled ISTA
DTYPES = ["float64", "float32"]
TORCH_PRIME = 2             # untimed torch calls before the timed ones

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


def _torch_reference():
    pytest.importorskip("torch")
    sys.path.insert(0, BENCH_DIR)
    try:
        import torch_reference
    finally:
        sys.path.remove(BENCH_DIR)
    return torch_reference


def _run(benchmark, func, *args, rounds=None, warmup_rounds=1, **kwargs):
    """``benchmark(func, ...)``, or a fixed number of rounds for slow calls."""
    if rounds is None:
        return benchmark(func, *args, **kwargs)
    return benchmark.pedantic(func, args=args, kwargs=kwargs, rounds=rounds,
                              iterations=1, warmup_rounds=warmup_rounds)


def _group(name, lmbd, dtype):
    return f"{name}{'' if dtype == 'float64' else ' ' + dtype} lmbd={lmbd}"


def _network(problem, lmbd, parametrization="step"):
    _, D = problem
    return Lista(D, lmbd, N_LAYERS, parametrization=parametrization)


def _codes_info(Z):
    return dict(nnz_mean=float(np.count_nonzero(Z, axis=1).mean()))


def _torch_check(ref, net, tnet, X, benchmark):
    """Compare the torch reference's loss and gradients with ours (recorded
    on the reference entry; a mismatch beyond ``ref.RTOL`` fails the test)."""
    loss_rel, grad_rel = ref.differences(net.loss_and_grad(X), tnet.loss_and_grad(X))
    loss_tol, grad_tol = ref.RTOL[np.dtype(X.dtype)]
    benchmark.extra_info.update(loss_rel_diff=loss_rel, grad_rel_diff=grad_rel,
                                loss_rtol=loss_tol, grad_rtol=grad_tol)
    assert loss_rel <= loss_tol and grad_rel <= grad_tol, (
        f"torch and fastlista disagree ({X.dtype}): loss {loss_rel:.3g} "
        f"(<= {loss_tol:g}), gradients {grad_rel:.3g} (<= {grad_tol:g})")


def _compare(ref, dtype):
    loss_tol, grad_tol = ref.RTOL[np.dtype(dtype)]
    return {"loss": {"kind": "abs_rel_diff", "max": loss_tol},
            "grad_rel_diff": {"kind": "value", "max": grad_tol}}


def _torch_codes_check(ref, net, tnet, X):
    """The relative difference of torch's codes from ours and its bound (the
    gradients' bound of ``ref.RTOL``); a mismatch fails the test."""
    codes_rel = ref.code_difference(net.transform(X), tnet.transform(X))
    tol = ref.RTOL[np.dtype(X.dtype)][1]
    assert codes_rel <= tol, (
        f"torch and fastlista compute different codes ({X.dtype}): {codes_rel:.3g} "
        f"(<= {tol:g})")
    return codes_rel, tol


# ------------------------------------------------------------ SLISTA forward
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lmbd", [0.1, 0.8])
def test_slista_forward(benchmark, problems, info, lmbd, dtype):
    problem = problems[dtype]
    X, _ = problem
    net = _network(problem, lmbd)
    benchmark.group = _group("slista-forward", lmbd, dtype)
    info(benchmark, problem, role="ours", lmbd=lmbd, n_layers=N_LAYERS,
         label="fastlista Lista(step).transform")
    Z = _run(benchmark, net.transform, X)
    benchmark.extra_info.update(_codes_info(Z))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lmbd", [0.1, 0.8])
def test_slista_forward_torch(benchmark, problems, info, lmbd, dtype):
    ref = _torch_reference()
    problem = problems[dtype]
    X, D = problem
    net = _network(problem, lmbd)
    tnet = ref.TorchLista(D, lmbd, net.parameters, "step", dtype=X.dtype)
    benchmark.group = _group("slista-forward", lmbd, dtype)
    codes_rel, tol = _torch_codes_check(ref, net, tnet, X)
    info(benchmark, problem, role="reference", lmbd=lmbd, n_layers=N_LAYERS,
         label="torch autograd reference (no_grad)", target_ratio=FORWARD_TARGET[lmbd],
         codes_rel_diff=codes_rel,
         compare={"codes_rel_diff": {"kind": "value", "max": tol}})
    Z = _run(benchmark, tnet.transform, X, rounds=5, warmup_rounds=TORCH_PRIME)
    benchmark.extra_info.update(_codes_info(Z))


@pytest.mark.parametrize("dtype", DTYPES)
def test_slista_forward_gemm_floor(benchmark, problems, info, dtype):
    problem = problems[dtype]
    X, D = problem
    lmbd = 0.1
    benchmark.group = _group("slista-forward", lmbd, dtype)
    info(benchmark, problem, role="reference", lmbd=lmbd, n_layers=N_LAYERS,
         label=f"{N_LAYERS} x NumPy GEMM pair Z @ D, R @ D.T",
         target_ratio=GEMM_FLOOR_TARGET)
    gemm_pairs = gemm_floor(X, D, _network(problem, lmbd).transform(X))
    _run(benchmark, gemm_pairs, rounds=5)


def gemm_floor(X, D, Z):
    """T times the GEMM pair of one dense layer on the whole batch, in the
    dtype of X: ``R = Z @ D`` and ``U = R @ D.T`` (a function to time)."""
    Z = np.ascontiguousarray(Z, dtype=X.dtype)
    R = np.empty_like(X)
    U = np.empty_like(Z)
    DT = D.T

    def gemm_pairs():
        for _ in range(N_LAYERS):
            np.matmul(Z, D, out=R)
            np.matmul(R, DT, out=U)
        return U

    return gemm_pairs


# ------------------------------------------------ SLISTA on a tall dictionary
def tall_problem(small):
    """(X, D): make_coding with TALL's atoms and features, lambda_max = 1."""
    from fastlista.datasets import make_coding

    X, D = make_coding(128 if small else 512, *TALL, random_state=0)
    return X, D


def numpy_ista(X, D, lmbd, n_layers):
    """A NumPy unrolled ISTA with steps 1/L from z_0 = 0 (a function to
    time): the untrained SLISTA network's layers."""
    L = np.linalg.norm(D, 2) ** 2
    DT = D.T

    def layers():
        Z = np.zeros((X.shape[0], D.shape[0]), X.dtype)
        for _ in range(n_layers):
            U = Z - ((Z @ D - X) @ DT) / L
            Z = np.sign(U) * np.maximum(np.abs(U) - lmbd / L, 0.0)
        return Z

    return layers


@pytest.fixture(scope="module")
def tall():
    from interleave import small_problems

    return tall_problem(small_problems())


@pytest.mark.parametrize("side", ["ours", "numpy"])
def test_slista_forward_tall(benchmark, tall, info, side):
    X, D = tall
    net = Lista(D, TALL_LMBD, TALL_LAYERS)
    reference = numpy_ista(X, D, TALL_LMBD, TALL_LAYERS)
    benchmark.group = f"slista-forward tall {TALL[0]}x{TALL[1]} lmbd={TALL_LMBD}"
    if side == "ours":
        info(benchmark, tall, role="ours", lmbd=TALL_LMBD, n_layers=TALL_LAYERS,
             label="fastlista Lista(step).transform")
        Z = _run(benchmark, net.transform, X, rounds=5)
    else:
        info(benchmark, tall, role="reference", lmbd=TALL_LMBD, n_layers=TALL_LAYERS,
             label="NumPy unrolled ISTA", target_ratio=TALL_TARGET)
        Z = _run(benchmark, reference, rounds=5)
    np.testing.assert_allclose(net.transform(X), reference(), rtol=1e-9,
                               atol=1e-12 * np.abs(Z).max())
    benchmark.extra_info.update(_codes_info(Z))


# ------------------------------------------------------- SLISTA loss and grad
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lmbd", [0.1, 0.8])
def test_slista_loss_and_grad(benchmark, problems, info, lmbd, dtype):
    problem = problems[dtype]
    X, _ = problem
    net = _network(problem, lmbd)
    benchmark.group = _group("slista-loss_and_grad", lmbd, dtype)
    info(benchmark, problem, role="ours", lmbd=lmbd, n_layers=N_LAYERS,
         label="fastlista Lista(step).loss_and_grad")
    loss, _ = _run(benchmark, net.loss_and_grad, X)
    benchmark.extra_info["loss"] = loss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lmbd", [0.1, 0.8])
def test_slista_loss_and_grad_torch(benchmark, problems, info, lmbd, dtype):
    ref = _torch_reference()
    problem = problems[dtype]
    X, D = problem
    net = _network(problem, lmbd)
    tnet = ref.TorchLista(D, lmbd, net.parameters, "step", dtype=X.dtype)
    benchmark.group = _group("slista-loss_and_grad", lmbd, dtype)
    info(benchmark, problem, role="reference", lmbd=lmbd, n_layers=N_LAYERS,
         label="torch autograd reference", target_ratio=GRAD_TARGET[lmbd],
         compare=_compare(ref, dtype))
    loss, _ = _run(benchmark, tnet.loss_and_grad, X, rounds=5, warmup_rounds=TORCH_PRIME)
    benchmark.extra_info["loss"] = loss
    _torch_check(ref, net, tnet, X, benchmark)


@pytest.mark.parametrize("dtype", DTYPES)
def test_slista_loss_and_grad_dtype(benchmark, problems, info, dtype):
    """float32 (ours) vs float64 (reference): what float32 buys."""
    problem = problems[dtype]
    X, _ = problem
    lmbd = 0.1
    net = _network(problem, lmbd)
    benchmark.group = f"slista-loss_and_grad float32/float64 lmbd={lmbd}"
    info(benchmark, problem, role="ours" if dtype == "float32" else "reference",
         lmbd=lmbd, n_layers=N_LAYERS,
         label=f"fastlista Lista(step).loss_and_grad, {dtype}",
         **({} if dtype == "float32" else {"target_ratio": DTYPE_TARGET,
                                           "compare": {"loss": {"kind": "abs_rel_diff",
                                                                "max": 1e-6}}}))
    loss, _ = _run(benchmark, net.loss_and_grad, X)
    benchmark.extra_info["loss"] = loss


# ---------------------------------------------------- LISTA-CP loss and grad
@pytest.mark.parametrize("dtype", DTYPES)
def test_coupled_loss_and_grad(benchmark, problems, info, dtype):
    problem = problems[dtype]
    X, _ = problem
    lmbd = 0.1
    net = _network(problem, lmbd, "coupled")
    benchmark.group = _group("coupled-loss_and_grad", lmbd, dtype)
    info(benchmark, problem, role="ours", lmbd=lmbd, n_layers=N_LAYERS,
         label="fastlista Lista(coupled).loss_and_grad")
    loss, _ = _run(benchmark, net.loss_and_grad, X, rounds=5)
    benchmark.extra_info["loss"] = loss


@pytest.mark.parametrize("dtype", DTYPES)
def test_coupled_loss_and_grad_torch(benchmark, problems, info, dtype):
    ref = _torch_reference()
    problem = problems[dtype]
    X, D = problem
    lmbd = 0.1
    net = _network(problem, lmbd, "coupled")
    tnet = ref.TorchLista(D, lmbd, net.parameters, "coupled", dtype=X.dtype)
    benchmark.group = _group("coupled-loss_and_grad", lmbd, dtype)
    info(benchmark, problem, role="reference", lmbd=lmbd, n_layers=N_LAYERS,
         label="torch autograd reference", target_ratio=COUPLED_TARGET,
         compare=_compare(ref, dtype))
    loss, _ = _run(benchmark, tnet.loss_and_grad, X, rounds=5, warmup_rounds=TORCH_PRIME)
    benchmark.extra_info["loss"] = loss
    _torch_check(ref, net, tnet, X, benchmark)


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
def interleaved(n_rounds=7, small=False, keyword=None, verbose=False, threads=None):
    """Median over rounds of the per-round time ratios, ours / reference.

    Every round times ours and its reference back to back (``interleave.py``),
    so that a change of the machine's load during the run hits both sides of
    a ratio alike (the pytest-benchmark groups time their entries one after
    the other). float64 and float32 (torch primed by two untimed calls);
    each torch comparison first checks that both sides compute the same
    loss and gradients (``torch_reference.RTOL``). ``keyword`` keeps the
    comparisons whose name contains it; ``threads`` runs every side on that
    many threads (``n_jobs``, ``torch.set_num_threads``, NumPy's BLAS) instead
    of the default pools. Returns the rows of ``interleave.run``.
    """
    import interleave
    from interleave import Case, timer

    from fastlista.datasets import make_coding

    ref = _torch_reference_module()
    if ref is not None and threads:
        ref.import_torch().set_num_threads(threads)
    X64, D64 = make_coding(1000 if small else 10000, 256, 64, random_state=0)
    cases = []
    for dtype in DTYPES:
        X, D = X64.astype(dtype), D64.astype(dtype)
        sfx = f" {dtype}"
        nets = {(p, lmbd): Lista(D, lmbd, N_LAYERS, parametrization=p, n_jobs=threads)
                for p, lmbd in [("step", 0.1), ("step", 0.8), ("coupled", 0.1)]}
        tnets = {k: ref.TorchLista(D, k[1], net.parameters, k[0], dtype=dtype) if ref
                 else None for k, net in nets.items()}

        def torch_case(name, key, method, target):
            if ref is None:
                return None
            net, tnet = nets[key], tnets[key]
            check = ""
            loss_tol, grad_tol = ref.RTOL[np.dtype(dtype)]
            if keyword is not None and keyword not in name:
                pass                            # not run: nothing to check
            elif method == "loss_and_grad":
                loss_rel, grad_rel = ref.differences(net.loss_and_grad(X),
                                                     tnet.loss_and_grad(X))
                bad = loss_rel > loss_tol or grad_rel > grad_tol
                check = (("MISMATCH " if bad else "")
                         + f"loss {loss_rel:.1e}, grads {grad_rel:.1e}")
            else:
                codes_rel = ref.code_difference(net.transform(X), tnet.transform(X))
                check = ("MISMATCH " if codes_rel > grad_tol else "") + \
                    f"codes {codes_rel:.1e}"
            return Case(name, timer(getattr(net, method), X),
                        timer(getattr(tnet, method), X), target, check)

        cases += [
            torch_case("SLISTA forward 0.1 / torch" + sfx, ("step", 0.1), "transform",
                       FORWARD_TARGET[0.1]),
            Case("SLISTA forward 0.1 / T x GEMM pair" + sfx,
                 timer(nets["step", 0.1].transform, X),
                 timer(gemm_floor(X, D, nets["step", 0.1].transform(X))),
                 GEMM_FLOOR_TARGET),
            torch_case("SLISTA forward 0.8 / torch" + sfx, ("step", 0.8), "transform",
                       FORWARD_TARGET[0.8]),
            torch_case("SLISTA loss_and_grad 0.1 / torch" + sfx, ("step", 0.1),
                       "loss_and_grad", GRAD_TARGET[0.1]),
            torch_case("SLISTA loss_and_grad 0.8 / torch" + sfx, ("step", 0.8),
                       "loss_and_grad", GRAD_TARGET[0.8]),
            torch_case("LISTA-CP loss_and_grad 0.1 / torch" + sfx, ("coupled", 0.1),
                       "loss_and_grad", COUPLED_TARGET),
        ]
        if OWN_GEMM:
            # where the dense layers multiply through _gemm.h: the same calls
            # with BLAS instead (no target: what the kernel buys)
            for method, name in [("transform", "forward"), ("loss_and_grad",
                                                          "loss_and_grad")]:
                cases.append(Case(f"SLISTA {name} 0.1 / through BLAS" + sfx,
                                  timer(getattr(nets["step", 0.1], method), X),
                                  timer(with_setting(execution, "_OWN_GEMM", False,
                                                     getattr(nets["step", 0.1], method)),
                                        X)))
                cases.append(Case(f"SLISTA {name} 0.1 / panels copied every block" + sfx,
                                  timer(getattr(nets["step", 0.1], method), X),
                                  timer(with_setting(_unrolled, "PACK_OPERANDS", False,
                                                     getattr(nets["step", 0.1], method)),
                                        X)))
            if OWN_GEMM == _gemm.GEMM_AVX512:
                # the 64-byte tile against the 32-byte one (same bits)
                for method, name in [("transform", "forward"), ("loss_and_grad",
                                                              "loss_and_grad")]:
                    cases.append(Case(
                        f"SLISTA {name} 0.1 / 32-byte GEMM tile" + sfx,
                        timer(getattr(nets["step", 0.1], method), X),
                        timer(with_setting(execution, "_OWN_GEMM", _gemm.GEMM_AVX2,
                                           getattr(nets["step", 0.1], method)), X)))
            cases.append(fused_step_case(X, D, nets["step", 0.1], sfx))
        # where the sparse layers' rows run through a kernel written by hand:
        # the same calls through the portable kernel, and through the AVX2
        # one where the default is AVX-512 (no target: what the kernel buys)
        others = []
        if _unrolled.GATHER != _unrolled.GATHER_PORTABLE:
            others.append((_unrolled.GATHER_PORTABLE, "portable"))
        if _unrolled.GATHER == _unrolled.GATHER_AVX512:
            others.append((_unrolled.GATHER_AVX2, "AVX2"))
        for kernel, label in others:
            for method, name in [("transform", "forward"), ("loss_and_grad",
                                                          "loss_and_grad")]:
                cases.append(Case(f"SLISTA {name} 0.8 / {label} gather" + sfx,
                                  timer(getattr(nets["step", 0.8], method), X),
                                  timer(with_setting(execution, "_GATHER", kernel,
                                                     getattr(nets["step", 0.8], method)),
                                        X)))
        # the sparse layers of the forward pass run row by row, SPARSE_RUN
        # layers a row: the same call one layer at a time (no target: what
        # the runs buy)
        cases.append(Case("SLISTA forward 0.8 / one layer a run" + sfx,
                          timer(nets["step", 0.8].transform, X),
                          timer(with_setting(_unrolled, "SPARSE_RUN", 1,
                                             nets["step", 0.8].transform), X)))
        if _unrolled.GATHER_AVX512 in _unrolled.GATHER_KERNELS:
            # the AVX-512 row kernel against the AVX2 one on smaller
            # dictionaries (no target: where execution._AVX512_GATHER_MIN_ATOMS
            # comes from)
            for m_small in SMALL_ATOMS:
                Xs, Ds = make_coding(X.shape[0], m_small, m_small // 4, random_state=0)
                Xs, Ds = Xs.astype(dtype), Ds.astype(dtype)
                net_s = Lista(Ds, 0.8, N_LAYERS, n_jobs=threads)
                cases.append(Case(
                    f"SLISTA forward 0.8, {m_small} x {m_small // 4}, AVX-512 / AVX2 "
                    f"gather" + sfx,
                    timer(with_setting(execution, "_GATHER", _unrolled.GATHER_AVX512,
                                       net_s.transform), Xs),
                    timer(with_setting(execution, "_GATHER", _unrolled.GATHER_AVX2,
                                       net_s.transform), Xs)))
    Xt, Dt = tall_problem(small)
    tall_net = Lista(Dt, TALL_LMBD, TALL_LAYERS, n_jobs=threads)
    agree = np.allclose(tall_net.transform(Xt), numpy_ista(Xt, Dt, TALL_LMBD, TALL_LAYERS)(),
                        rtol=1e-9, atol=1e-12)
    cases.append(Case(f"SLISTA forward {TALL_LMBD}, {TALL[0]} x {TALL[1]} / NumPy ISTA",
                      timer(tall_net.transform, Xt),
                      timer(numpy_ista(Xt, Dt, TALL_LMBD, TALL_LAYERS)), TALL_TARGET,
                      check="codes agree" if agree else "MISMATCH: codes differ"))
    X32, D32 = X64.astype(np.float32), D64.astype(np.float32)
    cases.append(Case("SLISTA loss_and_grad 0.1 float32 / float64",
                      timer(Lista(D32, 0.1, N_LAYERS, n_jobs=threads).loss_and_grad, X32),
                      timer(Lista(D64, 0.1, N_LAYERS, n_jobs=threads).loss_and_grad, X64),
                      DTYPE_TARGET))
    cases = [c for c in cases if c is not None and (keyword is None or keyword in c.name)]
    return interleave.run(cases, n_rounds, prime=TORCH_PRIME, verbose=verbose)


def fused_step_case(X, D, net, sfx):
    """The forward's fused gradient step on one 256-row block (threshold,
    non-zero count and signs in the epilogue of u = r D^T) against the plain
    product at the same shape, both through the register tile of _gemm.h
    that the networks use, on one thread: what the epilogue costs (no
    target; 1 would be free)."""
    from interleave import Case, repeated

    Z = np.ascontiguousarray(net.transform(X[:256]))
    R = Z @ D - X[:256]
    WT = np.ascontiguousarray(D.T)
    U = np.empty_like(Z)
    sg = np.empty(Z.shape, np.int8)
    step = float(net.parameters[-1]["alpha"])       # SLISTA: ST(z - a u, a lmbd)
    thr = np.full(len(Z), step * net.lmbd, Z.dtype)
    level = OWN_GEMM                    # the tile the networks multiply with
    return Case("fused step with signs / plain product, 256 x 64 x 256" + sfx,
                repeated(_gemm.gemm_step, 50, R, WT, step, thr, False, Z, sg, False,
                         level),
                repeated(_gemm.gemm, 50, 1.0, R, WT, 0.0, U, False, level))


def with_setting(module, name, value, method):
    """``method`` with ``module.name`` set to ``value`` during each call:
    the networks' dense products in BLAS (``execution._OWN_GEMM``), their
    panels copied by every product (``_unrolled.PACK_OPERANDS``), the sparse
    rows through another kernel (``execution._GATHER``), the sparse
    layers one at a time over the block (``_unrolled.SPARSE_RUN = 1``)."""
    def call(*args):
        default = getattr(module, name)
        setattr(module, name, value)
        try:
            return method(*args)
        finally:
            setattr(module, name, default)
    return call


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
    # python benchmarks/test_bench_networks.py [n_rounds] [-k SUBSTRING] [--threads N]
    sys.path.insert(0, BENCH_DIR)
    import interleave

    sys.exit(interleave.main(interleaved, default_rounds=7))
