"""The ``fastlista`` command line (also ``python -m fastlista``).

::

    fastlista demo [--lmbd 0.8] [--dataset simulated|digits] [--out DIR] ...
    fastlista reproduce FIGURE [--quick] [--out DIR] [--seed N]
    fastlista bench [--small] [--json FILE] [--report-only]

Every command takes ``--help``. Exit status (see :data:`EXIT_STATUS`):
0 on success; 2 for bad arguments, with a message that names the argument
(argparse's convention), among them an ``--out`` where an output file cannot
be written (checked before any computation); 1 when the run fails (an
output file that cannot be written after all, not enough memory for the
sizes asked, a standard output that cannot be written: a full disk); 130
when interrupted (Ctrl-C); 141 (128 + SIGPIPE, as a shell reports a command
that SIGPIPE ended) without a message when the reader of the standard
output went away (``| head``). Errors are reported in one message, without
a Python traceback; only a Ctrl-C before :func:`main` runs (while Python
starts and imports ``fastlista``, about half a second) gives Python's own
traceback and status, and one after it returned (while Python shuts down,
every file complete) ends the process by SIGINT without a message.

The files of a result are written before its summary is printed, each to a
temporary file beside it; once all are complete they are renamed over the
files of an earlier run (a Ctrl-C there is held until the last rename), so
that an interrupted or failed run leaves either all of a result's files new
or none. (Where the Ctrl-C cannot be held, under another SIGINT handler or
outside the main thread, an interrupt between two renames is reported with
the files replaced and those left.) A device or a FIFO (a link to
``/dev/null``) is written in place, after the renames, never replaced.

The reproduction (:mod:`fastlista.paper`) is imported inside the commands
only: ``import fastlista`` and ``fastlista --help`` load neither the
experiments nor matplotlib.
"""
import argparse
import contextlib
import errno
import os
import secrets
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from . import __version__
from ._files import link_target, may_replace, new_file
from .datasets import N_DIGITS

__all__ = ["main", "build_parser"]

#: Output directory of every command, relative to the current directory.
DEFAULT_OUT = "fastlista_results"
SEED_MAX = 2**32 - 1
#: Largest --n-atoms, --n-features, --n-train and --n-test of ``demo``.
SIZE_MAX = 10**9
#: The exit statuses, as ``fastlista --help`` lists them.
EXIT_STATUS = (
    "exit status: 0 success; 2 bad arguments, including an --out where an output "
    "file cannot be written (checked before computing); 1 the run failed (an output "
    "file could not be written, not enough memory for the sizes asked, a standard "
    "output that cannot be written); 130 interrupted (Ctrl-C); 141 the reader of the "
    "standard output went away (| head).")
QUICK = "under 2 minutes on 2 idle cores"


# ---------------------------------------------------------------------------
# argument types: ranges checked at parse time (status 2 on error)
# ---------------------------------------------------------------------------

def _int_in(low, high=None):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {value}")
        return value
    parse.__name__ = "int"
    return parse


def _lmbd(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0 < value < 1):
        raise argparse.ArgumentTypeError(
            f"must be in (0, 1), got {text}: signals are scaled so that "
            "lambda_max = 1, and lmbd >= 1 gives all-zero codes")
    return value


_lmbd.__name__ = "lmbd"


def _nonempty(hint):
    """A path that is not empty (``Path("")`` would be the current directory)."""
    def parse(text):
        if not text:
            raise argparse.ArgumentTypeError(f"must not be empty ({hint})")
        return text
    parse.__name__ = "path"
    return parse


# ---------------------------------------------------------------------------
# the parser
# ---------------------------------------------------------------------------

def _desc(*paragraphs):
    """Paragraphs filled to 79 columns (RawDescriptionHelpFormatter keeps them)."""
    return "\n\n".join(textwrap.fill(p, 79) for p in paragraphs)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Raw descriptions; "(default: X)" after options whose default means something."""

    def _get_help_string(self, action):
        help = action.help or ""
        if (action.default not in (None, False, argparse.SUPPRESS)
                and action.option_strings and "%(default)" not in help):
            help += " (default: %(default)s)"
        return help


def _common(p, default_seed_help):
    p.add_argument("--out", type=_nonempty("--out . is the current directory"),
                   default=DEFAULT_OUT, metavar="DIR",
                   help="directory for the CSV, JSON and PNG files (created if "
                        "needed; exit status 2 before computing if one of them "
                        "cannot be written there)")
    p.add_argument("--seed", type=_int_in(0, SEED_MAX), default=None,
                   help=f"random seed ({default_seed_help})")
    p.add_argument("--no-plot", action="store_true",
                   help="write the CSV and JSON only, no PNG (no matplotlib needed); "
                        "the PNG of the same name left in --out by an earlier run is "
                        "removed, so that no figure of other data remains")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)


def build_parser():
    """The argparse parser of the ``fastlista`` command."""
    from .paper.figures import FIGURES

    figure_names = tuple(FIGURES) + ("all",)
    parser = argparse.ArgumentParser(
        prog="fastlista",
        description=_desc("Fast CPU sparse coding with learned step sizes: run the "
                          "demo, reproduce the figures of Ablin et al. (NeurIPS 2019), "
                          "run the benchmarks. `fastlista COMMAND --help` describes "
                          "each command.", EXIT_STATUS),
        formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"fastlista {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo", formatter_class=_Formatter,
        help="train SLISTA, LISTA-CP and ALISTA and compare them with ISTA and FISTA",
        description=_desc(
            "Build a paper-like Lasso problem, train SLISTA (learned step sizes), "
            "LISTA-CP and ALISTA networks, and print the held-out F - F* after each "
            "layer against ISTA and FISTA, with the learned SLISTA steps against 1/L "
            "and the median 1/L_S of the codes' supports. Writes demo.csv, demo.json "
            "and demo.png into --out. About a minute on 2 cores with the defaults. "
            f"The sizes --n-atoms, --n-features, --n-train and --n-test are at most "
            f"{SIZE_MAX}; a run that needs more memory than the machine has stops "
            "with exit status 1.", EXIT_STATUS))
    demo.add_argument("--dataset", choices=("simulated", "digits"), default="simulated",
                      help="simulated: Gaussian dictionary and dense Gaussian codes "
                           "(the paper's); digits: 8x8 digit images of scikit-learn")
    demo.add_argument("--lmbd", type=_lmbd, default=0.8,
                      help="regularisation, relative to lambda_max = 1")
    demo.add_argument("--n-atoms", type=_int_in(1, SIZE_MAX), default=256,
                      help="atoms m")
    demo.add_argument("--n-features", type=_int_in(1, SIZE_MAX), default=64,
                      help="features n (simulated only; digits have 64)")
    demo.add_argument("--n-train", type=_int_in(1, SIZE_MAX), default=None,
                      help="training signals (default: 1000)")
    demo.add_argument("--n-test", type=_int_in(1, SIZE_MAX), default=None,
                      help="held-out signals (default: 1000; digits: the images left, "
                           "541 with 256 atoms and 1000 training signals)")
    demo.add_argument("--n-layers", type=_int_in(1, 1000), default=20, help="layers T")
    demo.add_argument("--max-iter", type=_int_in(1), default=100,
                      help="training iterations of each network")
    _common(demo, "default 0")

    rep = sub.add_parser(
        "reproduce", formatter_class=_Formatter,
        help="reproduce one figure of the paper (CSV, JSON and PNG)",
        description=_desc(
            "Reproduce a figure of Ablin et al. (NeurIPS 2019). Writes FIGURE.csv "
            "(the data), FIGURE.json (key numbers and settings) and FIGURE.png into "
            "--out and prints the key numbers. Without --quick the paper's settings "
            f"are used (some take hours); --quick ends in {QUICK}.", EXIT_STATUS)
        + "\n\nfigures:\n"
        + "\n".join(f"  {k:<21}{f.title}" for k, f in FIGURES.items())
        + "\n  all                  every figure in turn")
    rep.add_argument("figure", choices=figure_names, metavar="FIGURE",
                     help="one of: " + ", ".join(figure_names))
    rep.add_argument("--quick", action="store_true", help=f"reduced sizes: {QUICK}")
    _common(rep, "default: the paper's seed of each figure")

    bench = sub.add_parser(
        "bench", formatter_class=_Formatter,
        help="run the benchmark suite and print the ratio table",
        description=_desc(
            "Run `pytest benchmarks --benchmark-only --benchmark-json=FILE` from a "
            "source checkout (benchmarks/ is not installed with the package) and "
            "print the ratio table of benchmarks/report.py. Needs the test extra "
            "(pytest-benchmark). The full suite takes several minutes. Exits with "
            "status 2 for bad arguments (a --checkout DIR without benchmarks/ too, "
            "and a --json FILE that is a directory or whose directory does not exist "
            "or is not writable, checked before the suite runs), 1 when no source "
            "checkout is found, 130 when interrupted, 141 when the reader of the "
            "standard output went away, and with the status of pytest or report.py "
            "when they fail."))
    bench.add_argument("--out", type=_nonempty("--out . is the current directory"),
                       default=DEFAULT_OUT, metavar="DIR",
                       help="directory of the JSON file")
    bench.add_argument("--json", type=_nonempty("without --json: DIR/benchmarks.json"),
                       metavar="FILE", default=None,
                       help="benchmark JSON to write (default DIR/benchmarks.json)")
    bench.add_argument("--report-only", action="store_true",
                       help="do not run the suite: print the table of an existing --json")
    bench.add_argument("--small", action="store_true",
                       help="1000 samples instead of 10000 (FASTLISTA_BENCH_SMALL=1)")
    bench.add_argument("--markdown", action="store_true", help="print a Markdown table")
    bench.add_argument("-k", dest="keyword", metavar="EXPR", default=None,
                       help="only the benchmarks matching EXPR (pytest -k)")
    bench.add_argument("--checkout", metavar="DIR", default=None,
                       help="repository root holding benchmarks/ (default: found from "
                            "the current directory or the package location)")
    bench.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    return parser


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _progress_bar():
    """A tqdm wrapper for the experiments' long loops (None without tqdm)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None

    def progress(iterable, desc=None, total=None):
        # disable=None: a bar on a terminal, nothing in logs and pipes
        return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False,
                    dynamic_ncols=True, disable=None)
    return progress


class _RunError(Exception):
    """A failure of a command reported as one message, with exit status 1."""


class _Interrupted(KeyboardInterrupt):
    """A Ctrl-C while the files of a result were written: says what is on disk."""


class _StdoutError(Exception):
    """The standard output could not be written (its reader went away, a full
    disk); the ``OSError`` is the ``__cause__``."""


def _say(*args, **kwargs):
    """``print`` to the standard output; an ``OSError`` raises :class:`_StdoutError`."""
    try:
        print(*args, **kwargs)
    except OSError as exc:
        raise _StdoutError(exc) from exc


def _silence_stdout():
    """Point the standard output's descriptor at the null device.

    What is left in its buffer then goes nowhere when the interpreter flushes
    it at exit, instead of failing again ("Exception ignored ... BrokenPipeError").
    """
    try:
        fd = sys.stdout.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (AttributeError, OSError, ValueError):  # no descriptor (captured, None)
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)


@contextlib.contextmanager
def _sigint_held():
    """Hold a Ctrl-C back until the end of the block, then raise it.

    Only where Python's own handler is installed and this is the main thread;
    elsewhere the block runs as it is (an interrupt there is reported by what
    it stopped).
    """
    pending = []
    previous = None
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(1))
    except ValueError:                  # not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def _outdir(path, parser):
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"argument --out: cannot create directory {str(out)!r}: {exc}")
    if not os.access(out, os.W_OK):
        parser.error(f"argument --out: directory {str(out)!r} is not writable")
    return out


def _outputs(out, name):
    """The CSV, JSON and PNG files of the result ``name`` in the directory ``out``."""
    return tuple(out / f"{name}.{ext}" for ext in ("csv", "json", "png"))


def _check_outputs(out, names, no_plot, parser):
    """Exit with status 2, before any computation, if an output cannot be written.

    Each file of every result in ``names`` (its PNG only without
    ``no_plot``) is tried as :func:`_write` will write it: a directory or a
    read-only file is refused; a device or a FIFO is written in place; any
    other path is followed through its symbolic links as ``open`` follows
    them (a loop of links, or a link through a regular file, is refused as
    ``open`` refuses it), a temporary file is created and removed beside
    its target, and the target must be a file this user may replace. With
    ``no_plot``, a PNG of an earlier run must be one this user may remove.
    The directory ``out`` itself was checked by :func:`_outdir`.
    """
    for name in names:
        csv_path, json_path, png_path = _outputs(out, name)
        for path in (csv_path, json_path) + (() if no_plot else (png_path,)):
            why = _cannot_write(path)
            if why is not None:
                parser.error(f"argument --out: cannot write {str(path)!r}: {why}")
        if no_plot and (png_path.is_symlink() or png_path.is_file()):
            st = os.lstat(png_path)
            if not may_replace(png_path, st):
                parser.error(f"argument --out: cannot remove {str(png_path)!r}, the figure "
                             "of an earlier run (--no-plot removes it): it belongs to "
                             f"another user, in the sticky directory {str(out)!r}")


def _cannot_write(path):
    """Why :func:`_write` could not write ``path``, or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None                       # a new file, or a link to one
    except OSError as exc:              # a loop of links, a link through a file
        return exc.strerror or str(exc)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            return "it is a directory (remove it or choose another --out)"
        if not os.access(path, os.W_OK):
            return "the file is read-only"
        if not stat.S_ISREG(st.st_mode):
            return None                 # a device or a FIFO: written in place
    try:
        target = link_target(path)
    except OSError as exc:
        return exc.strerror
    if not os.path.basename(target):    # a link to "name/": open's EISDIR
        return f"{os.strerror(errno.EISDIR)} (the link's target {target!r})"
    try:
        with _sigint_held():            # (no probe left behind by a Ctrl-C)
            os.unlink(_temporary(target))
    except OSError as exc:
        where = os.path.dirname(target) or os.curdir
        return f"{exc.strerror or exc} (creating a file in {where!r})"
    if st is not None and not may_replace(target, st):
        return (f"it belongs to another user, in the sticky directory "
                f"{os.path.dirname(target) or os.curdir!r}")
    return None


def _temporary(target):
    """A new empty file beside the path ``target`` (a str, as
    :func:`link_target` gives it), created with 0o666 less the umask (the
    mode ``open`` gives a new file: see :func:`_keep_mode` for a replaced
    one), named after it: a long name keeps its first 25 characters, so
    that the temporary's fits where the target's does."""
    name = os.path.basename(target)
    if len(os.fsencode(name)) > 100:
        name = name[:25]
    fd, tmp = new_file(os.path.dirname(target) or os.curdir, f".{name}-", ".partial",
                       0o666)
    os.close(fd)
    return tmp


def _sync(path):
    """Flush the written file ``path`` to disk before it replaces another."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _keep_mode(tmp, target):
    """Give ``tmp`` the mode of the file ``target`` it replaces (after it is
    written and synced: a write-only or read-only mode would refuse that)."""
    if os.path.isfile(target):
        os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))


def _in_place(target):
    """Whether ``target`` exists and is not a regular file (a device, a
    FIFO): written in place as ``open(target, "w")`` does, never replaced
    (a link to /dev/null run as root would replace the device)."""
    try:
        return not stat.S_ISREG(os.stat(target).st_mode)
    except OSError:
        return False


def _write(result, out, no_plot, written):
    """Write the CSV, JSON and PNG of ``result`` into ``out``; the lines to print.

    Each file is first written to a new temporary file beside its target
    (symbolic links are followed), and only once all are complete are they
    renamed over the files of an earlier run, with a Ctrl-C held back until
    the last rename: a failure or an interrupt while writing leaves those
    files as they were, and no temporary file. Without a PNG (``no_plot``,
    or matplotlib missing), the PNG of the same name of an earlier run is
    removed, so that no figure of other data stays beside the new CSV.

    An ``OSError`` raises :class:`_RunError` and an interrupt
    :class:`_Interrupted`, whose messages say which files were replaced.
    The paths written are appended to the list ``written``.
    """
    csv_path, json_path, png_path = _outputs(out, result.name)
    writers = [(csv_path, result.to_csv), (json_path, result.to_json)]
    if not no_plot:
        from .paper.plots import plot
        writers.append((png_path, lambda path: plot(result, path)))
    kept = f"none was replaced, those in {out} are as they were"
    staged = []                         # (path, its temporary file, the target)
    in_place = []                       # (path, writer): devices and FIFOs
    done, removed = [], []              # the paths replaced, the stale PNG removed

    def progress():
        if not done and not removed:
            return kept
        left = [str(p) for p, _, _ in staged if p not in done]
        return "; ".join(
            [f"removed {p}, the figure of an earlier run" for p in removed]
            + (["replaced " + ", ".join(map(str, done))] if done else [])
            + (["not replaced (as they were) " + ", ".join(left)] if left else []))

    try:
        try:
            for path, writer in writers:
                try:
                    target = link_target(path)
                    if _in_place(target):
                        in_place.append((path, writer))
                        continue
                    # (a Ctrl-C between the temporary's creation and its
                    # record would leave it behind)
                    with _sigint_held():
                        tmp = _temporary(target)
                        staged.append((path, tmp, target))
                    writer(tmp)
                    _sync(tmp)
                    _keep_mode(tmp, target)
                except (OSError, ValueError) as exc:
                    # (ValueError: a writer that refuses its file)
                    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                    raise _RunError(f"cannot write {path}: {why} ({kept})") from None
                except ImportError as exc:
                    if path != png_path:
                        raise
                    print(f"fastlista: no PNG written: {exc}", file=sys.stderr)
                    with contextlib.suppress(OSError):
                        os.unlink(staged.pop()[1])
        except KeyboardInterrupt:
            raise _Interrupted(f"while writing the files of {result.name}: {kept}") \
                from None
        stale = None
        if (png_path not in [p for p, _, _ in staged] + [p for p, _ in in_place]
                and (png_path.is_file() or png_path.is_symlink())):
            stale = png_path
        try:
            with _sigint_held():
                if stale is not None:
                    try:
                        os.unlink(stale)
                    except OSError as exc:
                        raise _RunError(f"cannot remove {stale}: {exc.strerror or exc} "
                                        f"({kept})") from None
                    removed.append(stale)
                for path, tmp, target in staged:
                    try:
                        os.replace(tmp, target)
                    except OSError as exc:
                        raise _RunError(f"cannot replace {path}: {exc.strerror or exc} "
                                        f"({progress()})") from None
                    done.append(path)
        except KeyboardInterrupt:
            if len(done) < len(staged):
                raise _Interrupted(f"while replacing the files of {result.name}: "
                                   f"{progress()}") from None
            note = "".join(f" (removed {p}, the figure of an earlier run)" for p in removed)
            raise _Interrupted(f"after writing {', '.join(map(str, done))}{note}") from None
        # devices and FIFOs last, outside the held Ctrl-C (a FIFO without a
        # reader blocks, as open would)
        for path, writer in in_place:
            try:
                writer(path)
            except ImportError as exc:
                if path != png_path:
                    raise
                print(f"fastlista: no PNG written: {exc}", file=sys.stderr)
                continue
            except (OSError, ValueError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise _RunError(f"cannot write {path}: {why} ({progress()})") from None
            done.append(path)
    finally:
        written.extend(done)
        for path, tmp, _ in staged:
            if path not in done:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    return [f"removed {p} (the figure of an earlier run)" for p in removed]


# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------

def _cmd_demo(args, parser):
    from .paper import experiments as E

    n_train = 1000 if args.n_train is None else args.n_train
    n_test = args.n_test
    if n_test is None:
        n_test = 1000
        if args.dataset == "digits":
            n_test = min(1000, N_DIGITS - n_train - args.n_atoms)
            if n_test < 1:
                parser.error(
                    f"--dataset digits has {N_DIGITS} images: --n-train {n_train} and "
                    f"--n-atoms {args.n_atoms} leave none for testing")
    args.n_train, args.n_test = n_train, n_test
    if args.dataset == "digits":
        if args.n_features != 64:
            parser.error("argument --n-features: digits images have 64 pixels; "
                         f"got --n-features {args.n_features}")
        total = args.n_train + args.n_test + args.n_atoms
        if total > N_DIGITS:
            parser.error(
                f"--dataset digits has {N_DIGITS} images: --n-train + --n-test + "
                f"--n-atoms = {total} is too many (e.g. --n-train 1000 --n-test 500 "
                "--n-atoms 256)")
    kwargs = dict(dataset=args.dataset, lmbd=args.lmbd, n_atoms=args.n_atoms,
                  n_features=args.n_features, n_train=args.n_train, n_test=args.n_test,
                  n_layers=args.n_layers, max_iter=args.max_iter,
                  random_state=0 if args.seed is None else args.seed)
    if args.tiny:
        kwargs.update(n_atoms=min(args.n_atoms, 32), n_train=min(args.n_train, 100),
                      n_test=min(args.n_test, 100), n_layers=min(args.n_layers, 4),
                      max_iter=min(args.max_iter, 10))
        if args.dataset == "simulated":
            kwargs["n_features"] = min(args.n_features, 16)
    out = _outdir(args.out, parser)
    _check_outputs(out, ("demo",), args.no_plot, parser)
    _say(f"fastlista demo: {kwargs['dataset']} problem, {kwargs['n_atoms']} atoms x "
         f"{kwargs['n_features'] if args.dataset == 'simulated' else 64} features, "
         f"lmbd = {kwargs['lmbd']}, {kwargs['n_train']} training and "
         f"{kwargs['n_test']} held-out signals, {kwargs['n_layers']} layers",
         flush=True)
    result = E.demo(progress=_progress_bar(), **kwargs)
    # the files first: a standard output that fails loses the printout only
    written = len(args.files_written)
    notes = _write(result, out, args.no_plot, args.files_written)
    _say()
    _say("Held-out F - F* (mean over signals) after each layer / iteration; "
         "steps in units of 1/L:")
    _say(E.format_demo_table(result))
    _say()
    _say(E.format_summary(result.summary))
    for note in notes:
        _say(note)
    files = args.files_written[written:]
    _say(f"\nwrote {', '.join(map(str, files))}  ({result.elapsed:.1f} s)")
    return 0


def _cmd_reproduce(args, parser):
    from .paper import experiments as E
    from .paper.figures import FIGURES

    mode = "tiny" if args.tiny else ("quick" if args.quick else "paper")
    out = _outdir(args.out, parser)
    figures = tuple(FIGURES) if args.figure == "all" else (args.figure,)
    _check_outputs(out, figures, args.no_plot, parser)
    progress = _progress_bar()
    for fig in figures:
        _say(f"fastlista reproduce {fig} ({mode} settings): {FIGURES[fig].title}",
             flush=True)
        if mode == "paper" and FIGURES[fig].slow:
            _say("note: the paper's settings of this figure take long (hours for "
                 f"'networks'); --quick runs a reduced version in {QUICK}.", flush=True)
        result = E.run(fig, mode, random_state=args.seed, progress=progress)
        # the files first: a standard output that fails loses the printout only
        written = len(args.files_written)
        notes = _write(result, out, args.no_plot, args.files_written)
        _say(E.format_summary(result.summary))
        for note in notes:
            _say(note)
        files = args.files_written[written:]
        _say(f"wrote {', '.join(map(str, files))}  ({result.elapsed:.1f} s)\n", flush=True)
    return 0


def _find_checkout(explicit=None):
    """The repository root holding benchmarks/, absolute (None outside a checkout)."""
    candidates = [Path(explicit)] if explicit else [
        Path.cwd(), Path(__file__).resolve().parent.parent]
    for root in candidates:
        if (root / "benchmarks" / "conftest.py").is_file():
            return root.resolve()
    return None


#: pytest's main, run by ``python -c`` without the current directory that
#: ``-c`` (and ``-m``) put first on sys.path (PYTHONSAFEPATH, which drops
#: it, is Python >= 3.11 only)
_PYTEST_MAIN = ("import sys\n"
                "if sys.path[:1] == ['']:\n"
                "    del sys.path[0]\n"
                "import pytest\n"
                "raise SystemExit(pytest.console_main())")


def _cmd_bench(args, parser):
    out = _outdir(args.out, parser)
    # absolute: pytest and report.py run in the checkout, not in this directory
    json_path = (Path(args.json) if args.json else out / "benchmarks.json").resolve()
    # checked before the suite runs (pytest-benchmark would fail only at its end)
    if json_path.is_dir():
        parser.error(f"argument --json: {str(json_path)!r} is a directory (give the path "
                     "of a JSON file)")
    if json_path.exists() and not json_path.is_file():
        # (a device or a FIFO: nothing to read the table from, and never replaced)
        parser.error(f"argument --json: {str(json_path)!r} is not a regular file (give "
                     "the path of a JSON file)")
    if args.report_only:
        if not json_path.is_file():
            parser.error(f"argument --report-only: {str(json_path)!r} does not exist "
                         "(give the JSON of a previous run with --json FILE)")
    else:
        parent = json_path.parent
        why = (None if parent.is_dir() and os.access(parent, os.W_OK)
               else "is not writable" if parent.is_dir()
               else "is not a directory" if parent.exists() else "does not exist")
        if why:
            parser.error(f"argument --json: cannot write {str(json_path)!r}: the "
                         f"directory {str(parent)!r} {why}")
    root = _find_checkout(args.checkout)
    if root is None:
        where = args.checkout or f"{Path.cwd()} or {Path(__file__).resolve().parent.parent}"
        print("fastlista bench: no benchmarks/ directory found in " + where + ".\n"
              "The benchmark suite is not installed with the package: run this "
              "command from the root of a fastlista source checkout (git clone the "
              "repository, `pip install -e '.[test]'`), or pass --checkout DIR.",
              file=sys.stderr)
        return 2 if args.checkout else 1
    report = root / "benchmarks" / "report.py"
    if not args.report_only:
        # pytest writes a new file beside the JSON, renamed over it once
        # written: a JSON of an earlier run stays until then, and never
        # passes for this one's (pytest writes none when every selected
        # benchmark is skipped)
        fresh = json_path.with_name(f".{json_path.stem}-{secrets.token_hex(4)}.partial.json")
        cmd = [sys.executable, "-c", _PYTEST_MAIN, "benchmarks", "--benchmark-only",
               f"--benchmark-json={fresh}", "-p", "no:cacheprovider"]
        env = dict(os.environ)
        # benchmark the fastlista this command runs, not the source tree of the
        # checkout (where the kernels may not be built): no current directory
        # on sys.path (_PYTEST_MAIN), and this package's parent first on
        # PYTHONPATH
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parent.parent)]
            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        if args.small or args.tiny:
            env["FASTLISTA_BENCH_SMALL"] = "1"
        keyword = args.keyword
        if args.tiny:
            keyword = keyword or "lipschitz_full"
            cmd += ["--benchmark-min-rounds=1", "--benchmark-max-time=0.01",
                    "--benchmark-warmup=off", "-q"]
        if keyword:
            cmd += ["-k", keyword]
        _say("fastlista bench: pytest " + " ".join(cmd[3:]) + f"  (in {root})", flush=True)
        t0 = time.perf_counter()
        written = False
        try:
            status = subprocess.call(cmd, cwd=root, env=env)
            if fresh.is_file():
                _keep_mode(fresh, json_path)
                os.replace(fresh, json_path)
                written = True
        finally:
            with contextlib.suppress(OSError):
                fresh.unlink()
        _say(f"benchmarks ran in {time.perf_counter() - t0:.0f} s (pytest exit status "
             f"{status})", flush=True)
        if not written:
            why = ("no benchmark ran (all deselected or skipped)" if status in (0, 5)
                   else "is pytest-benchmark installed? pip install '.[test]'")
            print(f"fastlista bench: no timings were written to {json_path} ({why})",
                  file=sys.stderr)
            return status or 1
    if report.is_file():
        cmd = [sys.executable, str(report), str(json_path)]
        if args.markdown:
            cmd.append("--markdown")
        _say(f"\nratio table (median of ours / median of reference) from {json_path}:",
             flush=True)
        rc = subprocess.call(cmd, cwd=root)
        if rc:
            return rc
    else:
        _say(f"no {report} found: the timings are in {json_path}")
    if not args.report_only and status:
        # the table of the timings that ran, then pytest's failure (a check of
        # a benchmark failed: the two sides did not compute the same thing)
        print(f"fastlista bench: pytest failed (exit status {status})", file=sys.stderr)
        return status
    return 0


COMMANDS = {"demo": _cmd_demo, "reproduce": _cmd_reproduce, "bench": _cmd_bench}


def _memory_context(args):
    """The sizes a run of ``args`` asked for, for the out-of-memory message."""
    if args.command == "demo":
        return "the sizes " + ", ".join(
            f"--{name.replace('_', '-')} {getattr(args, name)}"
            for name in ("n_atoms", "n_features", "n_train", "n_test", "n_layers"))
    if args.command == "reproduce":
        mode = "tiny" if args.tiny else ("quick" if args.quick else "paper")
        return f"the {mode} settings of {args.figure}"
    return "this run"


def main(argv=None):
    """Entry point of the ``fastlista`` command.

    Parameters
    ----------
    argv : list of str or None
        The arguments (None: ``sys.argv[1:]``).

    Returns
    -------
    status : int
        0 on success, 1 when the run fails (an output that cannot be
        written, not enough memory, a standard output that cannot be
        written), 130 when interrupted, 141 when the reader of the standard
        output went away; bad arguments exit with status 2 (``SystemExit``,
        from argparse). Failures are reported as one message on stderr,
        without a traceback.
    """
    args = None
    written = []                        # the files written, for the messages
    try:
        # in the try: a Ctrl-C while the parser is built ends as any other
        # (one before main runs, while Python imports fastlista, cannot)
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            # the text of --help or --version: a failure to write it is
            # reported here, not by the interpreter's last flush
            _say(end="", flush=True)
            raise
        args.files_written = written
        sub = parser._subparsers._group_actions[0].choices[args.command]
        status = COMMANDS[args.command](args, sub)
        _say(end="", flush=True)        # what is buffered fails here, not at exit
        return status
    except KeyboardInterrupt as exc:
        # what is on disk: this result's files (_Interrupted), earlier ones
        detail = f" {exc}" if isinstance(exc, _Interrupted) else ""
        if written and not detail:
            detail = f" (written: {', '.join(map(str, written))})"
        print(f"{_prog(args)}: interrupted{detail}", file=sys.stderr)
        return 130
    except MemoryError as exc:
        context = _memory_context(args) if args is not None else "this run"
        print(f"{_prog(args)}: not enough memory for {context}: {exc}", file=sys.stderr)
        return 1
    except _RunError as exc:
        print(f"{_prog(args)}: {exc}", file=sys.stderr)
        return 1
    except _StdoutError as exc:
        _silence_stdout()
        error = exc.__cause__
        if isinstance(error, BrokenPipeError):
            return 141                  # the reader went away: nothing to tell it
        files = f" (written: {', '.join(map(str, written))})" if written else ""
        print(f"{_prog(args)}: cannot write to standard output: "
              f"{error.strerror or error}{files}", file=sys.stderr)
        return 1


def _prog(args):
    return "fastlista" if args is None else f"fastlista {args.command}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
