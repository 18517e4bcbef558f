"""ThreadSanitizer's canary for the block driver (tools/sanitize.sh --thread).

Built only by FASTLISTA_SANITIZE=thread, as fastlista._kernels._tsan_canary.
It runs two block functions through the kernels' own driver,
``_blocks.run_blocks``, on two threads, in both of its schedules, so that
the sanitized run can check the two ways its findings could be wrong:

- ``run(False)``: each block reads what the caller wrote before the region
  and writes its own rows, which the caller reads after it. No race:
  a report here means that the driver's annotations of the region's start
  and end (FL_TSAN in _blocks.pxd) do not reach ThreadSanitizer, and every
  report of the kernel tests is suspect.
- ``run(True)``: every block also adds to one shared double, unprotected.
  A race: no report here means that the annotations (or the suppressions)
  hide races between the team's threads, and a clean run of the kernel
  tests proves nothing.
"""
from libc.stdlib cimport free, malloc

from fastlista._kernels._blocks cimport run_blocks

cdef enum:
    N_ROWS = 64


cdef struct Ctx:
    double *rows        # one value a row, written by the row's block only
    double *shared      # one value, read by every block (and, racy, written)
    bint race


cdef void _block(void *ctx, int tid, Py_ssize_t start, int nb) noexcept nogil:
    cdef Ctx *c = <Ctx *> ctx
    cdef Py_ssize_t i
    for i in range(start, start + nb):
        c.rows[i] = 2 * c.rows[i] + c.shared[0]
    if c.race:
        c.shared[0] += nb


def run(bint race):
    """The sum of the rows after one dynamic and one static pass of blocks
    of one row on two threads: 64 * (4 * 1 + 3 * 0.5) = 352.0 without the
    race (rows 1, shared 0.5)."""
    cdef Ctx c
    cdef Py_ssize_t i
    cdef double total = 0
    c.rows = <double *> malloc(N_ROWS * sizeof(double))
    c.shared = <double *> malloc(sizeof(double))
    if c.rows == NULL or c.shared == NULL:
        free(c.rows)
        free(c.shared)
        raise MemoryError()
    c.race = race
    for i in range(N_ROWS):
        c.rows[i] = 1
    c.shared[0] = 0.5
    with nogil:
        run_blocks(N_ROWS, 1, 2, True, _block, &c, False)
        run_blocks(N_ROWS, 1, 2, False, _block, &c, False)
    for i in range(N_ROWS):
        total += c.rows[i]
    free(c.rows)
    free(c.shared)
    return total
