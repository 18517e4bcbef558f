"""The ``fastlista`` command line: every command in its tiny mode, bad arguments."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastlista
from fastlista import _cli as cli
from fastlista.paper.figures import FIGURES


@pytest.fixture
def matplotlib():
    """The PNG-writing tests need the plot extra."""
    return pytest.importorskip("matplotlib")

REPO = Path(__file__).resolve().parent.parent
# subprocesses import the fastlista this test imported (installed, or built
# in place), from a neutral directory where no source tree can shadow it
SUB_ENV = {**os.environ, "PYTHONPATH": str(Path(fastlista.__file__).resolve().parent.parent)}


def run(argv, capsys):
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def assert_png(path, max_bytes=200_000):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 1000 < len(data) < max_bytes


# ----------------------------------------------------------------- help / usage
@pytest.mark.parametrize("argv", [[], ["demo"], ["reproduce"], ["bench"]])
def test_help_on_every_command(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv + ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fastlista")
    assert "--tiny" not in out          # hidden
    if argv == ["reproduce"]:
        for fig in FIGURES:
            assert fig in out
        assert "--quick" in out


def test_import_and_help_load_no_experiments_nor_matplotlib(tmp_path):
    # the library never imports the reproduction; the command line imports
    # only the figure registry to build its help
    code = ("import sys, fastlista, fastlista._cli as c\n"
            "lib = sorted(m for m in sys.modules if m.startswith('fastlista.paper'))\n"
            "try:\n    c.main(['reproduce', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'\n"
            "               or m in ('fastlista.paper.experiments', 'fastlista.paper.plots'))\n"
            "print('RESULT', lib, heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env=SUB_ENV, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "RESULT [] []"


def test_python_m_fastlista_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastlista", "--version"],
                          capture_output=True, text=True, cwd=tmp_path, env=SUB_ENV,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("fastlista ")
    proc = subprocess.run([sys.executable, "-m", "fastlista", "reproduce", "nope"],
                          capture_output=True, text=True, cwd=tmp_path, env=SUB_ENV,
                          timeout=60)
    assert proc.returncode == 2
    assert "invalid choice: 'nope'" in proc.stderr


@pytest.mark.parametrize("argv, message", [
    ([], "required: COMMAND"),
    (["demo", "--lmbd", "0"], "argument --lmbd: must be in (0, 1)"),
    (["demo", "--lmbd", "1.2"], "lmbd >= 1 gives all-zero codes"),
    (["demo", "--lmbd", "nan"], "argument --lmbd: must be in (0, 1)"),
    (["demo", "--lmbd", "abc"], "argument --lmbd: expected a number"),
    (["demo", "--n-layers", "0"], "argument --n-layers: must be an integer in [1, 1000]"),
    (["demo", "--n-train", "2.5"], "argument --n-train: expected an integer"),
    (["demo", "--n-atoms", "-3"], "argument --n-atoms: must be an integer >= 1"),
    (["demo", "--max-iter", "0"], "argument --max-iter"),
    (["demo", "--dataset", "mnist"], "argument --dataset: invalid choice"),
    (["demo", "--dataset", "digits", "--n-features", "32"], "digits images have 64 pixels"),
    (["demo", "--dataset", "digits", "--n-train", "1500", "--n-test", "100"],
     "has 1797 images"),
    (["demo", "--dataset", "digits", "--n-train", "1600"], "leave none for testing"),
    (["demo", "--seed", "-1"], "argument --seed: must be an integer in [0, 4294967295]"),
    (["reproduce"], "the following arguments are required: FIGURE"),
    (["reproduce", "fig2"], "argument FIGURE: invalid choice: 'fig2'"),
    (["reproduce", "oista", "--seed", "x"], "argument --seed: expected an integer"),
    (["reproduce", "oista", "--bogus"], "unrecognized arguments: --bogus"),
    (["bench", "--report-only", "--json", "/nonexistent/b.json"], "does not exist"),
])
def test_bad_arguments_exit_2(argv, message, capsys, tmp_path):
    if argv and argv[0] in ("demo", "bench"):
        argv = argv + ["--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: fastlista" in err
    assert message in err


def test_unwritable_out_exits_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exc:
        cli.main(["reproduce", "lipschitz-law", "--tiny", "--out", str(blocker / "sub")])
    assert exc.value.code == 2
    assert "argument --out: cannot create directory" in capsys.readouterr().err


# ------------------------------------------------------------------------- demo
def test_demo_tiny(tmp_path, capsys, matplotlib):
    status, out, _ = run(["demo", "--tiny", "--out", str(tmp_path), "--seed", "3"], capsys)
    assert status == 0
    header = next(line for line in out.splitlines() if line.lstrip().startswith("layer"))
    for col in ("ISTA", "FISTA", "SLISTA", "LISTA-CP", "ALISTA", "SLISTA step x L",
                "median 1/L_S x L"):
        assert col in header
    assert "F - F* at layer 4" in out
    cols, rows = read_csv(tmp_path / "demo.csv")
    assert cols[:6] == ["layer", "ISTA", "FISTA", "SLISTA", "LISTA-CP", "ALISTA"]
    assert len(rows) == 4
    # every F - F* is a finite number >= 0 (up to rounding)
    for r in rows:
        assert all(float(v) > -1e-9 for v in r[1:6])
    assert_png(tmp_path / "demo.png")
    meta = json.loads((tmp_path / "demo.json").read_text())
    assert meta["settings"]["random_state"] == 3


def test_demo_tiny_digits_no_plot(tmp_path, capsys):
    status, out, _ = run(["demo", "--tiny", "--dataset", "digits", "--lmbd", "0.5",
                          "--no-plot", "--out", str(tmp_path)], capsys)
    assert status == 0
    assert "digits, 32 atoms x 64 features, lmbd=0.5" in out
    assert (tmp_path / "demo.csv").is_file()
    assert not (tmp_path / "demo.png").exists()


# -------------------------------------------------------------------- reproduce
@pytest.mark.parametrize("figure", FIGURES)
def test_reproduce_tiny(figure, tmp_path, capsys, matplotlib):
    status, out, _ = run(["reproduce", figure, "--tiny", "--out", str(tmp_path)], capsys)
    assert status == 0
    assert f"fastlista reproduce {figure} (tiny settings)" in out
    cols, rows = read_csv(tmp_path / f"{figure}.csv")
    assert len(cols) >= 2 and len(rows) >= 2
    assert all(len(r) == len(cols) for r in rows)
    assert_png(tmp_path / f"{figure}.png")
    meta = json.loads((tmp_path / f"{figure}.json").read_text())
    assert meta["settings"]["mode"] == "tiny"
    assert meta["summary"]
    # the key numbers are printed
    first_key = next(iter(meta["summary"]))
    assert first_key in out


def test_reproduce_all_tiny(tmp_path, capsys):
    status, out, _ = run(["reproduce", "all", "--tiny", "--no-plot", "--out",
                          str(tmp_path)], capsys)
    assert status == 0
    for fig in FIGURES:
        assert (tmp_path / f"{fig}.csv").is_file()
        assert f"fastlista reproduce {fig} (tiny settings)" in out
    assert not list(tmp_path.glob("*.png"))


def test_reproduce_seed_changes_the_data(tmp_path, capsys):
    run(["reproduce", "lipschitz-law", "--tiny", "--no-plot", "--out", str(tmp_path / "a")],
        capsys)
    run(["reproduce", "lipschitz-law", "--tiny", "--no-plot", "--seed", "5",
         "--out", str(tmp_path / "b")], capsys)
    a = (tmp_path / "a" / "lipschitz-law.csv").read_text()
    b = (tmp_path / "b" / "lipschitz-law.csv").read_text()
    assert a != b
    run(["reproduce", "lipschitz-law", "--tiny", "--no-plot", "--out", str(tmp_path / "c")],
        capsys)
    assert (tmp_path / "c" / "lipschitz-law.csv").read_text() == a


# ------------------------------------------------------------------------ bench
def test_bench_outside_a_checkout(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, err = run(["bench", "--out", str(tmp_path), "--checkout", str(tmp_path)],
                           capsys)
    assert status == 1
    assert "no benchmarks/ directory found" in err
    assert "source checkout" in err


def test_bench_report_only(tmp_path, capsys):
    if not (REPO / "benchmarks" / "report.py").is_file():
        pytest.skip("not a source checkout")
    bench = {"benchmarks": [
        {"group": "g", "name": "ours", "stats": {"median": 0.002},
         "extra_info": {"role": "ours", "label": "fast"}},
        {"group": "g", "name": "ref", "stats": {"median": 0.004},
         "extra_info": {"role": "reference", "label": "numpy", "target_ratio": 1.0}},
    ]}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bench))
    status = cli.main(["bench", "--report-only", "--json", str(path), "--out",
                       str(tmp_path), "--checkout", str(REPO)])
    assert status == 0
    out = capsys.readouterr().out
    assert "ratio table" in out


def test_bench_tiny_runs_the_suite(tmp_path):
    if not (REPO / "benchmarks" / "conftest.py").is_file():
        pytest.skip("not a source checkout")
    pytest.importorskip("pytest_benchmark")
    # a subprocess, so that the nested pytest run cannot disturb this one
    proc = subprocess.run(
        [sys.executable, "-m", "fastlista", "bench", "--tiny", "--out", str(tmp_path),
         "--checkout", str(REPO)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, env=SUB_ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "benchmarks.json").is_file()
    assert "ratio table" in proc.stdout
    assert "lipschitz" in proc.stdout
