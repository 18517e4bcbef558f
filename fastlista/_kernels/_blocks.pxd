# One block driver for every sample-blocked kernel.
#
# Samples are independent: a kernel cuts the rows of its batch into blocks
# of at most nb_max rows and hands the blocks to OpenMP threads. Each kernel
# writes one block function
#
#     void fn(void *ctx, int tid, Py_ssize_t start, int nb)
#
# that runs rows [start, start + nb) with the workspace of thread tid (the
# kernel's context struct holds one workspace per thread). The loop below
# writes nothing but its own loop variable: every variable a kernel writes
# in parallel is a local of its block function, per-thread by construction.
from cython.parallel cimport prange, threadid

ctypedef void (*BlockFn)(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil


cdef inline Py_ssize_t n_blocks(Py_ssize_t n_rows, int nb_max) noexcept nogil:
    return (n_rows + nb_max - 1) // nb_max


cdef inline void run_blocks(Py_ssize_t n_rows, int nb_max, int n_threads,
                            bint dynamic, BlockFn fn, void *ctx) noexcept nogil:
    """fn(ctx, tid, start, nb) for every block, blocks over n_threads threads.

    ``dynamic``: blocks go to whichever thread is free (work that varies
    from block to block, the solvers); otherwise a static schedule (a
    block's thread depends only on the thread count, so that per-thread
    accumulators sum to the same result at every call: the networks).
    """
    cdef Py_ssize_t b, nbl = n_blocks(n_rows, nb_max)
    if nbl == 0:
        return
    if n_threads <= 1 or nbl == 1:
        for b in range(nbl):
            fn(ctx, 0, b * nb_max, <int> min(<Py_ssize_t> nb_max, n_rows - b * nb_max))
    elif dynamic:
        for b in prange(nbl, num_threads=n_threads, schedule="dynamic"):
            fn(ctx, threadid(), b * nb_max,
               <int> min(<Py_ssize_t> nb_max, n_rows - b * nb_max))
    else:
        for b in prange(nbl, num_threads=n_threads, schedule="static"):
            fn(ctx, threadid(), b * nb_max,
               <int> min(<Py_ssize_t> nb_max, n_rows - b * nb_max))
