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
# writes nothing but its own loop variable and the stop flag below: every
# variable a kernel writes in parallel is a local of its block function,
# per-thread by construction.
#
# Ctrl-C. A kernel holds no GIL, so Python cannot run its signal handlers
# until the kernel returns: a long solve answered SIGINT only at its end
# (a minute later, say). The calling thread, when it is the main thread
# (the only one that runs handlers), asks Python with the GIL between its
# blocks, at most every CHECK_NS: a handler that raises (KeyboardInterrupt)
# sets the stop flag, the blocks not yet started are skipped, and the
# kernel's caller raises that exception once the team is done (its outputs
# are then partial, and not returned). A check costs a GIL acquisition, so
# the other threads only read the flag.
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree
from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport uintptr_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cdef extern from *:
    """
    /* the stop flag, written by the calling thread, read by the team */
    static inline int fl_flag_load(const int *p)
    { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void fl_flag_store(int *p, int v)
    { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    /* Python's pending signal handlers, with the GIL: -1 when one raised
       (its exception left set). Out of line and cold: inlined in the block
       loop, the GIL's code changed GCC's inlining of the modules' block
       functions (FISTA 20 % slower) */
    static __attribute__((noinline, cold)) int fl_check_signals(void)
    {
        PyGILState_STATE state = PyGILState_Ensure();
        int r = PyErr_CheckSignals();
        PyGILState_Release(state);
        return r;
    }
    /* The thread-sanitized build (FASTLISTA_SANITIZE=thread defines
       FL_TSAN). ThreadSanitizer sees the synchronisation of instrumented
       code and of pthreads, not libgomp's (futexes and atomics in an
       uninstrumented library): without help it would call every write of
       the calling thread before a parallel region, read by the team, a
       race, and every write of the team read after it. So the region's two
       edges are annotated: the calling thread releases `start` before the
       region and each team thread acquires it; each team thread releases
       `end` after its blocks and the calling thread acquires it after the
       region. No team thread acquires what another released, so races
       between the team's threads stay visible. Elsewhere no-ops. */
    #ifdef FL_TSAN
    void __tsan_acquire(void *addr);
    void __tsan_release(void *addr);
    static inline void fl_tsan_acquire(void *p) { __tsan_acquire(p); }
    static inline void fl_tsan_release(void *p) { __tsan_release(p); }
    #else
    static inline void fl_tsan_acquire(void *p) { (void)p; }
    static inline void fl_tsan_release(void *p) { (void)p; }
    #endif
    """
    int fl_flag_load(const int *p) noexcept nogil
    void fl_flag_store(int *p, int v) noexcept nogil
    int fl_check_signals() noexcept nogil
    void fl_tsan_acquire(void *p) noexcept nogil
    void fl_tsan_release(void *p) noexcept nogil

ctypedef void (*BlockFn)(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil


# Work tables: the only memory the kernels allocate themselves (a kernel's
# per-thread table of pointers into its NumPy workspaces, the dictionary
# step's one vector). A table comes from Python's raw allocator (malloc;
# callable without the GIL, and failed on purpose by the tests' allocation
# faults) and is registered with tracemalloc in its own domain, so that the
# tests can check that none outlives its call, also when the call raised
# (tests/test_memory.py).
cdef extern from "Python.h":
    int PyTraceMalloc_Track(unsigned int domain, uintptr_t ptr, size_t size) nogil
    int PyTraceMalloc_Untrack(unsigned int domain, uintptr_t ptr) nogil

# the tracemalloc domain of the tables (_solvers.TABLE_DOMAIN for Python)
cdef enum:
    TABLE_DOMAIN = 0x464c


cdef inline void *table_alloc(size_t n, size_t size) except NULL nogil:
    """n zeroed entries of size bytes; MemoryError when memory is out."""
    cdef void *p = PyMem_RawCalloc(n, size)
    if p == NULL:
        with gil:
            raise MemoryError()
    PyTraceMalloc_Track(TABLE_DOMAIN, <uintptr_t> p, n * size)
    return p


cdef inline void table_free(void *p) noexcept nogil:
    """Free a table_alloc table (NULL: nothing)."""
    if p != NULL:
        PyTraceMalloc_Untrack(TABLE_DOMAIN, <uintptr_t> p)
        PyMem_RawFree(p)

# nanoseconds between two checks for signals (the latency of Ctrl-C, beyond
# the block running when it comes)
cdef enum:
    CHECK_NS = 50000000


cdef struct Signals:
    bint check          # the calling thread runs Python's handlers
    int stop            # a handler raised: skip the blocks not started
    long long next_ns   # the time of the next check
    char start, end     # addresses of the region's edges (fl_tsan_*)


cdef inline bint in_main_thread():
    """Whether the calling thread is Python's main thread (with the GIL)."""
    import threading
    return threading.get_ident() == threading.main_thread().ident


cdef inline long long _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long> ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline bint _stopped(Signals *sig, int tid) noexcept nogil:
    """Whether to skip the next block: the calling thread (tid 0) runs the
    pending signal handlers first, at most every CHECK_NS."""
    cdef long long t
    if tid == 0 and sig.check:
        t = _now_ns()
        if t >= sig.next_ns:
            sig.next_ns = t + CHECK_NS
            if fl_check_signals() != 0:
                fl_flag_store(&sig.stop, 1)
    return fl_flag_load(&sig.stop) != 0


cdef inline int raise_interrupt() except -1:
    """Raise the exception a signal handler left set (after run_blocks
    returned 1)."""
    return -1


cdef inline Py_ssize_t n_blocks(Py_ssize_t n_rows, int nb_max) noexcept nogil:
    return (n_rows + nb_max - 1) // nb_max


cdef inline int run_blocks(Py_ssize_t n_rows, int nb_max, int n_threads,
                           bint dynamic, BlockFn fn, void *ctx,
                           bint check) noexcept nogil:
    """fn(ctx, tid, start, nb) for every block, blocks over n_threads threads.

    ``dynamic``: blocks go to whichever thread is free (work that varies
    from block to block, the solvers); otherwise a static schedule (a
    block's thread depends only on the thread count, so that per-thread
    accumulators sum to the same result at every call: the networks).
    ``check``: the caller is the main thread (``in_main_thread()``), which
    runs signal handlers between its blocks. Returns 1 when a handler
    raised: the remaining blocks were skipped, and the caller must raise
    (``raise_interrupt()``, with the GIL); else 0.
    """
    cdef Py_ssize_t b, nbl = n_blocks(n_rows, nb_max)
    cdef Signals sig
    sig.check, sig.stop, sig.next_ns = check, 0, 0
    if nbl == 0:
        return 0
    if n_threads <= 1 or nbl == 1:
        for b in range(nbl):
            if _stopped(&sig, 0):
                break
            fn(ctx, 0, b * nb_max, <int> min(<Py_ssize_t> nb_max, n_rows - b * nb_max))
    else:
        fl_tsan_release(&sig.start)
        with parallel(num_threads=n_threads):
            fl_tsan_acquire(&sig.start)
            if dynamic:
                for b in prange(nbl, schedule="dynamic"):
                    if not _stopped(&sig, threadid()):
                        fn(ctx, threadid(), b * nb_max,
                           <int> min(<Py_ssize_t> nb_max, n_rows - b * nb_max))
            else:
                for b in prange(nbl, schedule="static"):
                    if not _stopped(&sig, threadid()):
                        fn(ctx, threadid(), b * nb_max,
                           <int> min(<Py_ssize_t> nb_max, n_rows - b * nb_max))
            fl_tsan_release(&sig.end)
        fl_tsan_acquire(&sig.end)
    return sig.stop
