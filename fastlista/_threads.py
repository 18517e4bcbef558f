"""The threading policy: a call runs at most ``n_jobs`` threads in total.

fastlista parallelises over samples with OpenMP, in its kernels; inside a
kernel every thread calls BLAS on its own block of samples. So, for the
whole of a call that runs kernels:

* the kernels run at most ``n_jobs`` OpenMP threads (``n_jobs=None``: one a
  core this process may run on, or OpenMP's own limit where it is lower,
  ``OMP_NUM_THREADS`` or threadpoolctl's: joblib's workers set the first to
  share the cores among them);
* BLAS runs one thread, set through threadpoolctl (an optional dependency)
  on entry and restored on exit; the few products fastlista computes
  outside its kernels (D D^T, the Lipschitz constant) run under the same
  limit, or on the kernels' OpenMP threads (``_kernels._solvers.correlations``);

hence at most ``n_jobs`` x 1 threads compute at any time. Without
threadpoolctl BLAS cannot be held, and the kernels then run one OpenMP
thread and leave BLAS to its own pool (``OPENBLAS_NUM_THREADS`` and the
like decide).

BLAS thread counts are process-wide: two Python threads that each set and
restore a limit at overlapping times can restore each other's temporary
value and leave BLAS limited for good. The limit is therefore
reference-counted: the first of overlapping calls sets it to one thread, the
last exit restores the original. Every fastlista call asks for the same
limit (one thread), so overlapping calls never contend.

GNU OpenMP (libgomp) keeps, for each thread that started a team, a pool of
worker threads, and that pool does not survive ``fork()``: in the child,
the forking thread's next team waits forever for workers that only exist in
the parent (multiprocessing's "fork" start method, PyTorch DataLoader
workers). The pool belongs to the thread, so the tracking is per thread: a
thread records when :func:`kernel_threads` grants it two or more OpenMP
threads (a team may then have started), and in a child forked from such a
thread (or from a thread already so restricted) that thread runs the
kernels on one thread, whatever ``n_jobs`` (every fastlista kernel takes
its team size from kernel_threads, none from OpenMP's default). Threads the
child starts get pools of their own and run ``n_jobs`` threads; "spawn"
and "forkserver" children start afresh. Not recorded: a team another
library started on the same libgomp.

An explicit ``n_jobs >= 2`` in the restricted thread warns once a process
(RuntimeWarning): the caller asked for threads, and gets a call up to
``n_jobs`` times slower for a reason only they can remove (another start
method, workers started before the first parallel call, or the call made
from a thread the child starts). ``None`` and negative ``n_jobs`` ask for
"every core this thread can use", which there is one thread: no warning,
since a DataLoader worker calling with the defaults does nothing wrong.
Results do not change beyond what any change of thread count may change
(within the method's tolerance).

Setting and restoring the BLAS limit must not be cut in half: a
KeyboardInterrupt (or any exception a signal handler raises) landing
between the Python statements that set the limits, or count the calls
inside them, left BLAS at one thread for the rest of the process (NumPy's
own BLAS included). So every library's original thread count is saved
before it is changed, each call is one token in a list (its own entry and
exit are one list operation each), and the exit of the last call restores
every saved count, finishing that work when an exception lands in it and
raising the exception afterwards. The only window left is a second signal
within the microseconds of that exit.
"""
import os
import sys
import threading
import warnings
from contextlib import contextmanager

from ._validation import caller_stacklevel, check_n_jobs

__all__ = ["kernel_threads", "blas_thread_limit"]

_lock = threading.Lock()
# one token per call inside the BLAS limit (all threads); the limit is in
# force while it is not empty
_calls = []
# (library controller, its thread count before the limit), saved before it
# is changed; emptied as they are restored
_saved = []
_controller = None
# per thread: .granted, kernel_threads granted this thread >= 2 OpenMP
# threads (its libgomp pool may exist); .pool_lost, this is the thread a
# fork() copied from a thread that had (or had itself lost) a pool;
# .tokens, this thread's calls inside the BLAS limit (of _calls)
_local = threading.local()
_pool_lost_warned = False


def _after_fork_in_child():
    """In a fork()ed child: restrict the forking thread if its pool is lost,
    and take back the BLAS limit of calls other threads were in at fork."""
    global _lock, _pool_lost_warned
    _lock = threading.Lock()        # a parent thread may have held it at fork
    _pool_lost_warned = False
    if getattr(_local, "granted", False) or getattr(_local, "pool_lost", False):
        _local.granted = False
        _local.pool_lost = True
    # threadpoolctl's OpenBLAS lock, held by another parent thread at fork,
    # would stay held for good (its controlling thread does not exist here)
    tpc = sys.modules.get("threadpoolctl")
    state = getattr(getattr(tpc, "OpenBLASController", None), "_SHARED_STATE", None)
    if state is not None:
        state.lock = threading.Lock()
        state.controlling_thread = None
    # only the forking thread's calls go on in the child: a limit entered by
    # other threads alone would never be left, BLAS held to one thread for good
    own = list(getattr(_local, "tokens", ()))
    if not own:
        _restore_limits()
    _calls[:] = own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _warn_pool_lost(n_jobs, func):
    global _pool_lost_warned
    if _pool_lost_warned:
        return
    _pool_lost_warned = True
    warnings.warn(
        f"{func}: n_jobs={n_jobs} runs on one thread here: this process was created "
        "by fork() from a thread that had run fastlista calls on two or more OpenMP "
        "threads, and GNU OpenMP's "
        "thread pool does not survive fork (a parallel call would wait forever). "
        "Start the worker processes with the 'spawn' or 'forkserver' method, or "
        "before the first parallel fastlista call, or call from a thread the "
        "child starts, to run n_jobs threads. (Warned once a process.)",
        RuntimeWarning, stacklevel=caller_stacklevel())


def _threadpoolctl():
    """The cached ThreadpoolController, or None without threadpoolctl.

    Built once, after the kernels have loaded SciPy's BLAS: building it scans
    the loaded libraries (threadpool_limits, which builds one per call, took
    0.66 ms a call here; a limit on the cached controller 28 us).
    """
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return None
        _controller = ThreadpoolController()
    return _controller


def _release_blas_control(force=False):
    """Let any thread set OpenBLAS limits again (threadpoolctl >= 3.8).

    threadpoolctl 3.8 lets only one "controlling" Python thread change the
    process-wide OpenBLAS pool and ignores the others until it releases
    control.
    """
    try:
        from threadpoolctl import OpenBLASController
        OpenBLASController.clear_controlling_thread(force=force)
    except (ImportError, AttributeError):   # older threadpoolctl: no such notion
        pass


def _restore_limits():
    """Put back every saved thread count, last saved first (each stays
    saved until it is back: an interrupted restore is finished by the next
    one)."""
    if not _saved:
        return
    _release_blas_control(force=True)
    while _saved:
        lib, n = _saved[-1]
        lib.set_num_threads(n)
        _saved.pop()
    _release_blas_control()


def _limit(controller, n_threads):
    """Limit every BLAS library to n_threads, each saved before it changes."""
    _release_blas_control(force=True)
    for lib in controller.select(user_api="blas").lib_controllers:
        _saved.append((lib, lib.num_threads))
        lib.set_num_threads(n_threads)
    _release_blas_control()


#: attempts of an exit that exceptions cut (a signal handler's lands once;
#: an error that recurs is raised after these)
_EXIT_ATTEMPTS = 8


def _leave(token):
    """The exit of the call ``token``: the last call out restores the
    counts. Run to its end whatever exception lands in it (raised after;
    every step is idempotent, so an attempt cut short is taken again)."""
    pending = None
    for _ in range(_EXIT_ATTEMPTS):
        try:
            with _lock:
                if token in _calls:
                    _calls.remove(token)
                tokens = getattr(_local, "tokens", [])
                if token in tokens:
                    tokens.remove(token)
                if not _calls:
                    _restore_limits()
            break
        except BaseException as exc:    # a signal handler's: finish, then raise
            pending = pending or exc
    if pending is not None:
        raise pending


@contextmanager
def blas_thread_limit(n_threads):
    """Hold BLAS to ``n_threads`` threads, safely across Python threads.

    ``n_threads=None`` leaves BLAS alone; without threadpoolctl the context
    does nothing. Overlapping entries run under the first one's limit. An
    exception landing anywhere in the entry or the exit (Ctrl-C) leaves no
    limit behind (see the module docstring).
    """
    controller = None if n_threads is None else _threadpoolctl()
    if controller is None:
        yield
        return
    token = object()
    try:
        with _lock:
            if not _calls:
                _restore_limits()       # what an interrupted exit left
                _limit(controller, int(n_threads))
            _calls.append(token)
            if not hasattr(_local, "tokens"):
                _local.tokens = []
            _local.tokens.append(token)
        yield
    finally:
        _leave(token)


@contextmanager
def kernel_threads(n_jobs, func, blas=True):
    """The thread budget of one call: yields the kernels' OpenMP threads.

    Parameters
    ----------
    n_jobs : int or None
        The caller's ``n_jobs`` (validated here: None or -1 every core, or
        OpenMP's limit if lower, -2 all but one, k > 0 at most k).
    func : str
        The public function, for error messages.
    blas : bool, default=True
        Whether the kernels call BLAS. False (soft-thresholding) leaves BLAS
        alone: no limit to set and restore, which would cost a tiny call
        more than its work.

    Yields
    ------
    n_threads : int
        OpenMP threads the kernels may use; with ``blas``, BLAS runs one
        thread meanwhile (or, without threadpoolctl, ``n_threads`` is 1). 1
        in the thread of a fork()ed child whose OpenMP pool stayed in the
        parent (module docstring); an explicit ``n_jobs >= 2`` there warns
        once.
    """
    n = check_n_jobs(n_jobs, func)
    if blas and _threadpoolctl() is None:
        yield 1
        return
    if n > 1 and getattr(_local, "pool_lost", False):
        if n_jobs is not None and n_jobs > 0:
            _warn_pool_lost(n_jobs, func)
        n = 1
    if n > 1:
        _local.granted = True       # this thread may start an OpenMP team
    if not blas:
        yield n
        return
    with blas_thread_limit(1):
        yield n
