#!/usr/bin/env bash
# Run the kernel smoke script under valgrind's memcheck, on the build
# importable from here (the debug build is the most informative:
# FASTLISTA_DEBUG=1 python setup.py build_ext --inplace).
# Fails (exit 1) on any memcheck error (invalid read or write, use of an
# uninitialised value, invalid free) whose stack passes through fastlista's
# kernels; the dynamic loader's and CPython's own reports, which valgrind
# gives for any Python program, are counted apart.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }
log=${MEMCHECK_LOG:-memcheck.log}
# an in-place build here takes precedence over an installed fastlista
if compgen -G "fastlista/_kernels/_cd*.so" >/dev/null; then
    export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
fi
# one OpenMP/BLAS thread: valgrind serialises threads anyway
py=$(python -c "import sys; print(sys.executable)")   # not a shim script
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONMALLOC=malloc \
    valgrind --tool=memcheck --errors-for-leak-kinds=none \
    --leak-check=no --track-origins=yes --log-file="$log" \
    "$py" tools/memcheck_smoke.py
# an error record is a block of "==pid==" lines ended by an empty one
ours=$(awk '/^==[0-9]+== $/ { if (rec ~ /_kernels|__pyx/ && rec ~ /(Invalid|uninitialised|free)/) n++; rec = ""; next }
            { rec = rec "\n" $0 } END { print n + 0 }' "$log")
echo "valgrind: $(grep -E 'ERROR SUMMARY' "$log" | tail -1 | sed 's/^==[0-9]*== //')"
echo "valgrind: $ours error record(s) with fastlista's kernels on the stack (log: $log)"
[ "$ours" -eq 0 ]
