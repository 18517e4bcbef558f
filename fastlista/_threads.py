"""Thread control: OpenMP threads in the kernels, BLAS held to a count.

The kernels parallelise over blocks of samples with OpenMP, and each thread
calls BLAS on its own block: BLAS must then run one thread, or the two pools
oversubscribe the cores. threadpoolctl (optional) sets that; without it the
kernels run one OpenMP thread and leave the threading to BLAS.

BLAS thread counts are process-wide: two Python threads that each set and
restore a limit at overlapping times can restore each other's temporary
value and leave BLAS limited for good. ``blas_thread_limit`` is therefore
reference-counted: the first of overlapping entries sets the limit, the last
exit restores the original (overlapping calls run under the first limit).
"""
import threading
from contextlib import contextmanager, nullcontext

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
    does nothing.
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


def blas_single_threaded(n_threads):
    """Context for a kernel call on ``n_threads`` OpenMP threads.

    Returns ``(context, n_threads)``: inside ``context`` BLAS runs one
    thread, and ``n_threads`` is what the kernel may use (1 when BLAS cannot
    be limited).
    """
    if _threadpoolctl() is None:
        return nullcontext(), 1
    return blas_thread_limit(1), n_threads
