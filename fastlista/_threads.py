"""The threading policy: a call runs at most ``n_jobs`` threads in total.

fastlista parallelises over samples with OpenMP, in its kernels; inside a
kernel every thread calls BLAS on its own block of samples. So, for the
whole of a call that runs kernels:

* the kernels run at most ``n_jobs`` OpenMP threads (``n_jobs=None``: one a
  core this process may run on);
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
"""
import threading
from contextlib import contextmanager

from ._validation import check_n_jobs

__all__ = ["kernel_threads", "blas_thread_limit"]

_lock = threading.Lock()
_depth = 0
_limiter = None
_controller = None


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


@contextmanager
def blas_thread_limit(n_threads):
    """Hold BLAS to ``n_threads`` threads, safely across Python threads.

    ``n_threads=None`` leaves BLAS alone; without threadpoolctl the context
    does nothing. Overlapping entries run under the first one's limit.
    """
    global _depth, _limiter
    controller = None if n_threads is None else _threadpoolctl()
    if controller is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _release_blas_control(force=True)
            _limiter = controller.limit(limits=int(n_threads), user_api="blas")
            _release_blas_control()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _release_blas_control(force=True)
                _limiter.restore_original_limits()
                _release_blas_control()
                _limiter = None


@contextmanager
def kernel_threads(n_jobs, func):
    """The thread budget of one call: yields the kernels' OpenMP threads.

    Parameters
    ----------
    n_jobs : int or None
        The caller's ``n_jobs`` (validated here: None or -1 every core, -2
        all but one, k > 0 at most k).
    func : str
        The public function, for error messages.

    Yields
    ------
    n_threads : int
        OpenMP threads the kernels may use; BLAS runs one thread meanwhile
        (or, without threadpoolctl, ``n_threads`` is 1).
    """
    n = check_n_jobs(n_jobs, func)
    if _threadpoolctl() is None:
        yield 1
        return
    with blas_thread_limit(1):
        yield n
