"""Thread control: OpenMP threads in the kernels, BLAS single-threaded.

The kernels parallelise over blocks of samples with OpenMP, and each thread
calls BLAS on its own block: BLAS must then run one thread, or the two pools
oversubscribe the cores. threadpoolctl (optional) sets that; without it the
kernels run one OpenMP thread and leave the threading to BLAS.
"""
from contextlib import nullcontext

_controller = None


def blas_single_threaded(n_threads):
    """Context for a kernel call on ``n_threads`` OpenMP threads.

    Returns ``(context, n_threads)``: inside ``context`` BLAS runs one
    thread, and ``n_threads`` is what the kernel may use (1 when BLAS cannot
    be limited).
    """
    global _controller
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return nullcontext(), 1
    if _controller is None:
        # created once, after the kernels have loaded SciPy's BLAS: building
        # it scans the loaded libraries (~1 ms); a limit on it costs ~30 us
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas"), n_threads
