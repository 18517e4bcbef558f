"""The ``fastlista`` command line: every command in its tiny mode, bad arguments."""
import csv
import errno
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
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
    (["demo", "--n-atoms", "-3"], "argument --n-atoms: must be an integer in [1, 1000000000]"),
    (["demo", "--n-atoms", str(10**12)],
     "argument --n-atoms: must be an integer in [1, 1000000000], got 1000000000000"),
    (["demo", "--n-test", str(2**64)], "argument --n-test: must be an integer in [1, "),
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
    # an empty --out is not the current directory (--out . is)
    (["reproduce", "oista", "--out", ""], "argument --out: must not be empty"),
])
def test_bad_arguments_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)         # where an argument accepted by mistake writes
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


# --------------------------------------------------------- outputs and failures
@pytest.mark.parametrize("argv, blocker", [
    (["demo", "--tiny"], "demo.csv"),
    (["demo", "--tiny"], "demo.png"),
    (["reproduce", "lipschitz-law", "--tiny"], "lipschitz-law.json"),
    # every figure of "all" is checked before the first one is computed
    (["reproduce", "all", "--tiny"], "networks.png"),
])
def test_output_path_that_is_a_directory_exits_2_before_computing(argv, blocker,
                                                                   tmp_path, capsys):
    (tmp_path / blocker).mkdir()
    with pytest.raises(SystemExit) as exc:
        cli.main(argv + ["--out", str(tmp_path)])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert f"argument --out: cannot write '{tmp_path / blocker}': it is a directory" in err
    # nothing was computed nor written
    assert out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [blocker]


def test_png_directory_is_left_alone_with_no_plot(tmp_path, capsys):
    (tmp_path / "lipschitz-law.png").mkdir()
    status, _, _ = run(["reproduce", "lipschitz-law", "--tiny", "--no-plot", "--out",
                        str(tmp_path)], capsys)
    assert status == 0
    assert (tmp_path / "lipschitz-law.png").is_dir()
    assert (tmp_path / "lipschitz-law.csv").is_file()


def test_failed_write_exits_1_with_a_message(tmp_path, capsys, monkeypatch):
    # a disk that fills while the PNG is flushed: no file is replaced
    # unless all were written
    sync = cli._sync

    def full_disk_at_the_png(path):
        if os.path.basename(path).startswith(".demo.png-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        sync(path)

    monkeypatch.setattr(cli, "_sync", full_disk_at_the_png)
    earlier = tmp_path / "demo.csv"
    earlier.write_text("an earlier run")
    status, out, err = run(["demo", "--tiny", "--out", str(tmp_path)], capsys)
    assert status == 1
    assert err.strip().splitlines() == [
        f"fastlista demo: cannot write {tmp_path / 'demo.png'}: No space left on device "
        f"(none was replaced, those in {tmp_path} are as they were)"]
    assert "wrote" not in out
    # no JSON nor new CSV without their PNG, no temporary file
    assert [p.name for p in tmp_path.iterdir()] == ["demo.csv"]
    assert earlier.read_text() == "an earlier run"


@pytest.mark.skipif(os.name != "posix", reason="POSIX symbolic links")
@pytest.mark.parametrize("link, why", [
    # each passed the checks made before computing: the first two failed
    # with status 1 after it, the loop was replaced by a regular file
    ("missing/demo.png", "No such file or directory (creating a file in '{tmp}/missing')"),
    ("file/demo.png", "Not a directory"),
    ("loop", "Too many levels of symbolic links"),
    # open() fails on "missing" (ENOENT), where os.path.realpath took the
    # target lexically for "file", which the run then replaced (exit 0)
    ("missing/../file", "No such file or directory (creating a file in "
                        "'{tmp}/missing/..')"),
    ("missing/..", "No such file or directory (creating a file in '{tmp}/missing')"),
    # a link to a directory name that does not exist yet: open's EISDIR
    # (the run created a file of that name)
    ("newdir/", "Is a directory (the link's target '{tmp}/newdir/')"),
])
def test_an_output_that_open_refuses_exits_2_before_computing(link, why, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "loop").symlink_to(tmp_path / "demo.png")
    if link != "loop":
        (tmp_path / "demo.png").unlink(missing_ok=True)
        os.symlink(f"{tmp_path}/{link}", tmp_path / "demo.png")
    else:
        (tmp_path / "demo.png").symlink_to(tmp_path / "loop")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--tiny", "--out", str(tmp_path)])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[-1].endswith(
        f"argument --out: cannot write '{tmp_path / 'demo.png'}': "
        + why.format(tmp=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "file").read_text() == "x"
    assert (tmp_path / "demo.png").is_symlink()


@pytest.mark.parametrize("name", ["r" * 240 + ".csv", "a." + "b" * 240])
def test_a_linked_output_with_a_long_name_is_written(name, tmp_path, capsys):
    # the temporary file beside a link's target took the target's name and
    # 24 more characters: a name that fits failed with "File name too long"
    # after the computation (a long suffix, kept whole, before it)
    target = tmp_path / name
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "lipschitz-law.csv").symlink_to(target)
    status, _, err = run(["reproduce", "lipschitz-law", "--tiny", "--no-plot", "--out",
                          str(tmp_path / "out")], capsys)
    assert status == 0, err
    header, rows = read_csv(target)
    assert rows and all(len(r) == len(header) for r in rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", target.name])


@pytest.mark.parametrize("owned, why", [
    # the rename over a file of root's, by another user, fails (EPERM): it
    # did so after the computation
    ("demo.csv", "cannot write '{d}/demo.csv': it belongs to another user, in the "
                 "sticky directory '{d}'"),
    # --no-plot removes an earlier run's PNG: it failed after the computation
    ("demo.png", "cannot remove '{d}/demo.png', the figure of an earlier run (--no-plot "
                 "removes it): it belongs to another user, in the sticky directory '{d}'"),
])
def test_another_user_s_file_in_a_sticky_directory_exits_2_before_computing(owned, why,
                                                                           sticky_dir):
    shared, as_nobody = sticky_dir
    with open(os.path.join(shared, owned), "w") as f:
        f.write("root's")
    os.chmod(os.path.join(shared, owned), 0o666)

    def demo():
        sys.stderr = io.StringIO()
        try:
            cli.main(["demo", "--tiny", "--no-plot", "--out", shared])
            return 0, sys.stderr.getvalue()
        except SystemExit as exc:
            return exc.code, sys.stderr.getvalue()

    code, err = as_nobody(demo)
    assert code == 2, err
    assert err.splitlines()[-1].endswith("argument --out: " + why.format(d=shared))
    assert os.listdir(shared) == [owned]
    with open(os.path.join(shared, owned)) as f:
        assert f.read() == "root's"


def test_no_plot_lists_every_file_and_removes_the_stale_png(tmp_path, capsys):
    stale = tmp_path / "lipschitz-law.png"
    stale.write_bytes(b"\x89PNG of an earlier run")
    status, out, _ = run(["reproduce", "lipschitz-law", "--tiny", "--no-plot", "--out",
                          str(tmp_path)], capsys)
    assert status == 0
    assert not stale.exists()
    assert f"removed {stale} (the figure of an earlier run)" in out
    assert (f"wrote {tmp_path / 'lipschitz-law.csv'}, {tmp_path / 'lipschitz-law.json'}  ("
            in out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lipschitz-law.csv",
                                                          "lipschitz-law.json"]


def test_no_plot_help_names_every_file_written(capsys):
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--no-plot write the CSV and JSON only, no PNG" in help_text
    assert "is removed" in help_text


def test_wrote_line_lists_csv_json_and_png(tmp_path, capsys, matplotlib):
    status, out, _ = run(["reproduce", "lipschitz-law", "--tiny", "--out", str(tmp_path)],
                         capsys)
    assert status == 0
    stem = tmp_path / "lipschitz-law"
    assert f"wrote {stem}.csv, {stem}.json, {stem}.png  (" in out


def test_out_of_memory_is_a_message_naming_the_sizes(tmp_path, capsys, monkeypatch):
    from fastlista.paper import experiments as E

    def demo(**kwargs):
        n = kwargs["n_atoms"]
        raise MemoryError(f"Unable to allocate for an array with shape ({n}, 64)")

    monkeypatch.setattr(E, "demo", demo)
    status, _, err = run(["demo", "--n-atoms", "1000000000", "--no-plot", "--out",
                          str(tmp_path)], capsys)
    assert status == 1
    assert err.strip().splitlines() == [
        "fastlista demo: not enough memory for the sizes --n-atoms 1000000000, "
        "--n-features 64, --n-train 1000, --n-test 1000, --n-layers 20: "
        "Unable to allocate for an array with shape (1000000000, 64)"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child is POSIX")
def test_ctrl_c_exits_130_without_a_traceback(tmp_path):
    # the paper's settings of dictionary-distance train for over a minute:
    # interrupted once the run has started
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastlista", "reproduce", "dictionary-distance",
         "--no-plot", "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env=SUB_ENV, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stdout.readline()
        assert first.startswith("fastlista reproduce dictionary-distance"), first
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "fastlista reproduce: interrupted"
    assert "Traceback" not in err
    assert not (tmp_path / "dictionary-distance.csv").exists()


# ------------------------------------------ standard output, interrupts, staging
class _ClosedAfterFirstLine(io.TextIOBase):
    """A standard output whose reader goes away after the first line (``| head -1``)."""

    def __init__(self, error):
        self.text, self.error = "", error

    def writable(self):
        return True

    def write(self, s):
        if "\n" in self.text:
            raise self.error
        self.text += s
        return len(s)


@pytest.mark.parametrize("error, status, message", [
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), 141, None),
    (OSError(errno.ENOSPC, "No space left on device"), 1,
     "fastlista reproduce: cannot write to standard output: No space left on device"),
])
def test_failed_stdout_after_the_first_line_keeps_the_results(error, status, message,
                                                              tmp_path, capsys,
                                                              monkeypatch):
    # the files are written before the summary is printed: a reader that
    # went away loses the printout, never the results
    stdout = _ClosedAfterFirstLine(error)
    monkeypatch.setattr(sys, "stdout", stdout)
    code = cli.main(["reproduce", "lipschitz-law", "--tiny", "--no-plot", "--out",
                     str(tmp_path)])
    err = capsys.readouterr().err
    assert code == status
    assert stdout.text.startswith("fastlista reproduce lipschitz-law (tiny settings)")
    stem = tmp_path / "lipschitz-law"
    if message is None:
        assert err == ""                  # a closed pipe ends the run quietly
    else:
        assert err.splitlines() == [f"{message} (written: {stem}.csv, {stem}.json)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lipschitz-law.csv",
                                                          "lipschitz-law.json"]
    assert read_csv(f"{stem}.csv")[1]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes and /dev/full")
@pytest.mark.parametrize("stdout, argv, unbuffered", [
    ("closed", ["reproduce", "lipschitz-law", "--tiny", "--no-plot"], False),
    ("closed", ["reproduce", "lipschitz-law", "--tiny", "--no-plot"], True),
    # (unbuffered, argparse ignores the failure of --help's text: status 0)
    ("closed", ["--help"], False),
    ("/dev/full", ["reproduce", "lipschitz-law", "--tiny", "--no-plot"], False),
    ("/dev/full", ["reproduce", "lipschitz-law", "--tiny", "--no-plot"], True),
])
def test_closed_or_full_stdout_gives_no_traceback(stdout, argv, unbuffered, tmp_path):
    env = {k: v for k, v in SUB_ENV.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    if stdout == "closed":
        # a pipe whose reader is gone before the command starts
        read_end, fd = os.pipe()
        os.close(read_end)
    elif os.path.exists(stdout):
        fd = os.open(stdout, os.O_WRONLY)
    else:
        pytest.skip(f"no {stdout}")
    try:
        proc = subprocess.run([sys.executable, "-m", "fastlista", *argv],
                              stdout=fd, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                              env=env, timeout=120)
    finally:
        os.close(fd)
    if stdout == "closed":
        assert (proc.returncode, proc.stderr) == (141, "")
    else:
        assert proc.returncode == 1
        assert proc.stderr.splitlines() == [
            "fastlista reproduce: cannot write to standard output: No space left on device"]


def run_interrupted(argv, capsys):
    """:func:`run`, failing the test (not ending the session) on a KeyboardInterrupt."""
    try:
        return run(argv, capsys)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")


def _old_outputs(out, name):
    """The CSV, JSON and PNG an earlier run left in ``out``; their contents."""
    old = {}
    for ext in ("csv", "json", "png"):
        path = out / f"{name}.{ext}"
        path.write_text(f"{ext} of an earlier run")
        old[path.name] = path.read_text()
    return old


def _contents(out):
    return {p.name: p.read_text(errors="replace") for p in sorted(out.iterdir())}


@pytest.fixture
def sigint():
    """Python's own Ctrl-C handler, whatever the process was started with."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield lambda: signal.raise_signal(signal.SIGINT)
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_while_writing_leaves_the_earlier_files_as_they_were(tmp_path, capsys,
                                                                     monkeypatch,
                                                                     sigint):
    from fastlista.paper.experiments import ExperimentResult

    old = _old_outputs(tmp_path, "lipschitz-law")
    # Ctrl-C once the CSV is written, while the JSON is
    monkeypatch.setattr(ExperimentResult, "to_json", lambda self, path: sigint())
    status, out, err = run_interrupted(["reproduce", "lipschitz-law", "--tiny", "--no-plot",
                                        "--out", str(tmp_path)], capsys)
    assert status == 130
    assert err.splitlines()[-1] == (
        "fastlista reproduce: interrupted while writing the files of lipschitz-law: "
        f"none was replaced, those in {tmp_path} are as they were")
    # every file as the earlier run left it (its PNG too, despite --no-plot),
    # and no temporary file
    assert _contents(tmp_path) == old
    assert "wrote" not in out


def test_ctrl_c_while_the_files_are_renamed_is_held_until_they_all_are(tmp_path, capsys,
                                                                        monkeypatch,
                                                                        sigint):
    _old_outputs(tmp_path, "lipschitz-law")
    replace = os.replace

    def replace_and_interrupt(src, dst):
        sigint()
        replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_and_interrupt)
    status, out, err = run_interrupted(["reproduce", "lipschitz-law", "--tiny", "--no-plot",
                                        "--out", str(tmp_path)], capsys)
    stem = tmp_path / "lipschitz-law"
    assert status == 130
    assert err.splitlines()[-1] == (f"fastlista reproduce: interrupted after writing "
                                    f"{stem}.csv, {stem}.json (removed {stem}.png, the "
                                    "figure of an earlier run)")
    assert sorted(_contents(tmp_path)) == ["lipschitz-law.csv", "lipschitz-law.json"]
    assert read_csv(f"{stem}.csv")[1]
    assert json.loads(Path(f"{stem}.json").read_text())["settings"]["mode"] == "tiny"


def test_interrupt_between_two_renames_names_the_files_replaced(tmp_path, capsys,
                                                                monkeypatch):
    # where Ctrl-C cannot be held back (a handler of the embedding program):
    # the message names the files replaced and those left
    old = _old_outputs(tmp_path, "lipschitz-law")
    replace, calls = os.replace, []

    def replace_once(src, dst):
        if calls:
            raise KeyboardInterrupt
        calls.append(dst)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_once)
    status, _, err = run_interrupted(["reproduce", "lipschitz-law", "--tiny", "--out",
                                      str(tmp_path)], capsys)
    stem = tmp_path / "lipschitz-law"
    assert status == 130
    assert err.splitlines()[-1] == (
        "fastlista reproduce: interrupted while replacing the files of lipschitz-law: "
        f"replaced {stem}.csv; not replaced (as they were) {stem}.json, {stem}.png")
    contents = _contents(tmp_path)
    assert sorted(contents) == ["lipschitz-law.csv", "lipschitz-law.json",
                                "lipschitz-law.png"]
    assert contents["lipschitz-law.csv"] != old["lipschitz-law.csv"]
    assert contents["lipschitz-law.json"] == old["lipschitz-law.json"]


def test_ctrl_c_after_a_figure_names_the_files_written(tmp_path, capsys, monkeypatch,
                                                      sigint):
    from fastlista.paper import experiments as E

    first, second = list(FIGURES)[:2]
    run_figure = E.run

    def run_first_only(fig, *args, **kwargs):
        if fig != first:
            sigint()
        return run_figure(fig, *args, **kwargs)

    monkeypatch.setattr(E, "run", run_first_only)
    status, out, err = run_interrupted(["reproduce", "all", "--tiny", "--no-plot", "--out",
                                        str(tmp_path)], capsys)
    stem = tmp_path / first
    assert status == 130
    assert err.splitlines()[-1] == (
        f"fastlista reproduce: interrupted (written: {stem}.csv, {stem}.json)")
    assert f"fastlista reproduce {second}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{first}.csv", f"{first}.json"]


@pytest.mark.parametrize("at, message", [
    # the checks before computing create (and remove) a temporary for the
    # CSV and one for the JSON: an interrupt between the two must not leave
    # it there
    (1, "fastlista reproduce: interrupted"),
    # the third is the write's: the interrupt landed between its creation
    # and its record (seen once in 185 real SIGINTs), and a .partial file
    # stayed in --out
    (3, "fastlista reproduce: interrupted while writing the files of lipschitz-law: "
        "none was replaced, those in {out} are as they were"),
])
def test_ctrl_c_while_a_temporary_is_created_leaves_none(at, message, tmp_path, capsys,
                                                        monkeypatch, sigint):
    old = _old_outputs(tmp_path, "lipschitz-law")
    temporary = cli._temporary
    calls = []

    def temporary_then_interrupt(target):
        tmp = temporary(target)
        calls.append(target)
        if len(calls) == at:
            sigint()
        return tmp

    monkeypatch.setattr(cli, "_temporary", temporary_then_interrupt)
    status, out, err = run_interrupted(["reproduce", "lipschitz-law", "--tiny", "--no-plot",
                                        "--out", str(tmp_path)], capsys)
    assert status == 130
    assert len(calls) == at
    assert err.splitlines()[-1] == message.format(out=tmp_path)
    assert "wrote" not in out
    assert _contents(tmp_path) == old


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_a_fifo_or_device_target_is_written_in_place(tmp_path, capsys):
    # the files were written beside a link's target and renamed over it: a
    # link to a FIFO (or, run as root, to /dev/null) replaced the node by a
    # regular file
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    out.mkdir()
    (out / "lipschitz-law.csv").symlink_to(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    status, stdout, err = run(["reproduce", "lipschitz-law", "--tiny", "--no-plot",
                               "--out", str(out)], capsys)
    reader.join(timeout=60)
    assert status == 0, err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert (out / "lipschitz-law.csv").is_symlink()
    # the reader got the whole CSV: a header and rows of numbers
    rows = list(csv.reader(io.StringIO(received[0])))
    assert len(rows) > 1 and all(len(r) == len(rows[0]) for r in rows)
    assert (out / "lipschitz-law.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["lipschitz-law.csv",
                                                     "lipschitz-law.json"]


@pytest.mark.parametrize("name", ["fig.txt", "figure", ".figure"])
def test_a_figure_linked_to_any_name_is_written_as_png(name, tmp_path, capsys, matplotlib):
    # matplotlib took the format from the name it wrote: demo.png -> fig.txt
    # raised its ValueError ("Format 'txt' is not supported"), and a target
    # without a suffix failed after the computation (the temporary's name
    # ended in ".partial")
    (tmp_path / "lipschitz-law.png").symlink_to(tmp_path / name)
    status, out, err = run(["reproduce", "lipschitz-law", "--tiny", "--out", str(tmp_path)],
                           capsys)
    assert status == 0, err
    assert (tmp_path / "lipschitz-law.png").is_symlink()
    assert_png(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["lipschitz-law.png", "lipschitz-law.csv", "lipschitz-law.json", name])


def test_ctrl_c_while_building_the_parser_exits_130(capsys, monkeypatch, sigint):
    def build_parser():
        sigint()

    monkeypatch.setattr(cli, "build_parser", build_parser)
    status, out, err = run_interrupted(["demo", "--tiny"], capsys)
    assert status == 130
    assert (out, err) == ("", "fastlista: interrupted\n")


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


def test_reproduce_iterative_largest_seed(tmp_path, capsys):
    # the tiny preset has two seeds: from the largest, they wrap around to 0
    status, _, _ = run(["reproduce", "iterative", "--tiny", "--no-plot", "--seed",
                        str(cli.SEED_MAX), "--out", str(tmp_path / "max")], capsys)
    assert status == 0
    cols, rows = read_csv(tmp_path / "max" / "iterative.csv")
    seed, n_iter = cols.index("seed"), cols.index("n_iter")
    assert sorted({int(r[seed]) for r in rows}) == [0, 2**32 - 1]
    # the signal of seed 0 is the one a run from seed 0 draws
    run(["reproduce", "iterative", "--tiny", "--no-plot", "--seed", "0",
         "--out", str(tmp_path / "zero")], capsys)
    _, ref = read_csv(tmp_path / "zero" / "iterative.csv")

    def iterations(rows, s):
        return [(r[0], r[2], r[n_iter]) for r in rows if int(r[seed]) == s]

    assert iterations(rows, 0) == iterations(ref, 0)
    assert iterations(rows, 2**32 - 1) != iterations(ref, 0)


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
BENCH = {"benchmarks": [
    {"group": "g", "name": "ours", "stats": {"median": 0.002},
     "extra_info": {"role": "ours", "label": "fast"}},
    {"group": "g", "name": "ref", "stats": {"median": 0.004},
     "extra_info": {"role": "reference", "label": "numpy", "target_ratio": 1.0}},
]}


def test_bench_outside_a_checkout(tmp_path, capsys, monkeypatch):
    # a --checkout DIR without benchmarks/ is a bad argument: status 2
    monkeypatch.chdir(tmp_path)
    status, out, err = run(["bench", "--out", str(tmp_path), "--checkout", str(tmp_path)],
                           capsys)
    assert status == 2
    assert "no benchmarks/ directory found" in err
    assert "source checkout" in err


def test_bench_report_only(tmp_path, capsys):
    if not (REPO / "benchmarks" / "report.py").is_file():
        pytest.skip("not a source checkout")
    path = tmp_path / "b.json"
    path.write_text(json.dumps(BENCH))
    status = cli.main(["bench", "--report-only", "--json", str(path), "--out",
                       str(tmp_path), "--checkout", str(REPO)])
    assert status == 0
    out = capsys.readouterr().out
    assert "ratio table" in out


@pytest.mark.parametrize("json_arg, out_arg", [
    ("b.json", "results"),                   # a relative --json
    (None, "results"),                       # the default DIR/benchmarks.json
])
def test_bench_report_only_relative_paths(json_arg, out_arg, tmp_path, capfd,
                                          monkeypatch):
    if not (REPO / "benchmarks" / "report.py").is_file():
        pytest.skip("not a source checkout")
    # report.py runs in the checkout: the relative paths are this directory's
    monkeypatch.chdir(tmp_path)
    path = tmp_path / (json_arg or Path(out_arg, "benchmarks.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(BENCH))
    argv = ["bench", "--report-only", "--out", out_arg, "--checkout", str(REPO)]
    status = cli.main(argv + (["--json", json_arg] if json_arg else []))
    out, err = capfd.readouterr()
    assert status == 0, err
    assert f"ratio table (median of ours / median of reference) from {path}:" in out
    # the row of report.py: 2 ms against 4 ms, ratio 0.5, within the target 1
    row = next(line for line in out.splitlines() if line.startswith("g "))
    assert row.split() == ["g", "fast", "numpy", "2", "ms", "4", "ms", "0.500", "<=", "1",
                           "ok"]


@pytest.mark.parametrize("json_arg, report_only, message", [
    ("jsondir", False, "argument --json: {path!r} is a directory"),
    ("jsondir", True, "argument --json: {path!r} is a directory"),
    ("missing/sub/b.json", False,
     "argument --json: cannot write {path!r}: the directory {parent!r} does not exist"),
    ("", False, "argument --json: must not be empty"),
    # a FIFO (a device alike): its path was unlinked before the suite ran
    # (as root, --json /dev/null deleted the device)
    ("fifo", False, "argument --json: {path!r} is not a regular file"),
    ("fifo", True, "argument --json: {path!r} is not a regular file"),
])
def test_bench_json_is_checked_before_the_suite_runs(json_arg, report_only, message,
                                                     tmp_path, capsys, monkeypatch):
    def call(*args, **kwargs):
        raise AssertionError("the suite ran")

    monkeypatch.setattr(subprocess, "call", call)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jsondir").mkdir()
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
    elif json_arg == "fifo":
        pytest.skip("no FIFOs")
    path = (tmp_path / json_arg).resolve()
    argv = ["bench", "--json", json_arg, "--out", str(tmp_path), "--checkout", str(REPO)]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv + (["--report-only"] if report_only else []))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: fastlista bench" in err
    assert message.format(path=str(path), parent=str(path.parent)) in err
    if json_arg == "fifo":
        assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)


def test_bench_empty_out_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--report-only", "--out", "", "--checkout", str(REPO)])
    assert exc.value.code == 2
    assert "argument --out: must not be empty" in capsys.readouterr().err


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
