#!/usr/bin/env bash
# Build a copy of the project with a sanitizer and run the kernel tests on
# it. Fails (exit 1) on any sanitizer report or test failure; exit 2 if the
# sanitized build cannot be made here (not GCC on Linux, no sanitizer
# runtime, no Cython or setuptools >= 77 in this environment).
#
#   tools/sanitize.sh            FASTLISTA_SANITIZE=1: AddressSanitizer +
#                                UndefinedBehaviorSanitizer (signed overflow
#                                included, every report fatal; see setup.py),
#                                the kernel tests and tools/memcheck_smoke.py
#   tools/sanitize.sh --thread   FASTLISTA_SANITIZE=thread: ThreadSanitizer,
#                                the block driver's canary, then the kernel
#                                and thread tests with n_jobs = 2
#
# The copy is built in a temporary directory, so that the normal build here
# (in place or installed) is left as it is; it is removed after a clean run
# and kept, with the sanitizer logs, after a failing one (SANITIZE_KEEP=1
# keeps it always). Needs the build requirements installed
# (pip install "Cython>=3.0,<3.3" "setuptools>=77") and the test extras.
set -euo pipefail
mode=address
case "${1:-}" in
    "") ;;
    --thread) mode=thread ;;
    *) echo "usage: tools/sanitize.sh [--thread]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
root=$PWD
py=$(python -c "import sys; print(sys.executable)")

# the compiler setuptools will use, whose runtime libraries we must preload
cc=${CC:-$("$py" -c "import sysconfig; print(sysconfig.get_config_var('CC') or 'gcc')")}
cc=${cc%% *}
die2() { echo "sanitize: $*" >&2; exit 2; }
[ "$(uname -s)" = Linux ] || die2 "Linux only"
case $("$cc" --version 2>/dev/null || true) in
    *clang*|"") die2 "$cc is not GCC" ;;
esac
if [ "$mode" = thread ]; then
    runtimes=$("$cc" -print-file-name=libtsan.so)
    [ -e "$runtimes" ] || die2 "libtsan of $cc not found"
    switch=thread runtime_name=libtsan
else
    libasan=$("$cc" -print-file-name=libasan.so)
    libubsan=$("$cc" -print-file-name=libubsan.so)
    [ -e "$libasan" ] && [ -e "$libubsan" ] || die2 "libasan/libubsan of $cc not found"
    runtimes="$libasan $libubsan"
    switch=1 runtime_name=libasan
fi
"$py" - <<'EOF' || die2 'pip install "Cython>=3.0,<3.3" "setuptools>=77" first'
import Cython, numpy, scipy, setuptools
assert int(setuptools.__version__.split(".")[0]) >= 77, setuptools.__version__
EOF

work=$(mktemp -d "${TMPDIR:-/tmp}/fastlista-sanitize.XXXXXX")
src=$work/src
logs=$work/logs
mkdir -p "$src" "$logs"
status=1
cleanup() {
    if [ "$status" -eq 0 ] && [ "${SANITIZE_KEEP:-0}" = 0 ]; then
        rm -rf "$work"
    else
        echo "sanitize: build, generated C and logs kept in $work" >&2
    fi
}
trap cleanup EXIT

# sources only: no build products (.so, generated .c) of the tree here
tar -C "$root" --exclude='*.so' --exclude='*.c' --exclude=__pycache__ \
    -cf - setup.py pyproject.toml README.md fastlista tests tools/memcheck_smoke.py \
    tools/tsan_canary.pyx \
    | tar -C "$src" -xf -

start=$SECONDS
echo "sanitize: building a sanitized copy in $src (log: $work/build.log)"
if ! (cd "$src" && FASTLISTA_SANITIZE=$switch "$py" setup.py -q build_ext --inplace \
        --parallel "${SANITIZE_JOBS:-$(nproc)}") >"$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    die2 "sanitized build failed"
fi
for so in "$src"/fastlista/_kernels/*.so; do
    readelf -d "$so" | grep -q "NEEDED.*$runtime_name" || die2 "$so is not instrumented"
done
echo "sanitize: built in $((SECONDS - start)) s"

# The interpreter is not instrumented: the sanitizer's runtime must be
# loaded first (before libc's malloc is bound), hence LD_PRELOAD, set only
# for the runs below. PYTHONMALLOC=malloc sends CPython's small objects
# through malloc too, so that ASan gives them red zones and ThreadSanitizer
# sees their reuse. Reports go to stderr, which pytest is told not to
# capture (--capture=sys), into one log ($logs/tests.log): captured output
# is lost when a report ends the process.
export PYTHONMALLOC=malloc
export PYTHONPATH=$src
cd "$src"
where=$(LD_PRELOAD="$runtimes" ASAN_OPTIONS=detect_leaks=0 \
    "$py" -c "import fastlista._kernels._cd as m; print(m.__file__)")
case $where in
    "$src"/*) ;;
    *) die2 "the tests would import $where, not the sanitized copy" ;;
esac
kernel_tests=(tests/test_lasso.py tests/test_lipschitz.py tests/test_solvers.py
    tests/test_gemm.py tests/test_large_indices.py tests/test_properties.py
    tests/test_degenerate.py tests/test_networks.py
    tests/test_training.py tests/test_certificate.py tests/test_variants.py
    tests/test_fuzz.py tests/test_dictionary.py)

if [ "$mode" = address ]; then
    # Leak detection is off: CPython never frees much of what it allocates
    # at startup (interned strings, static types, module state), so
    # LeakSanitizer would report thousands of "leaks" at exit that are not
    # fastlista's; tests/test_memory.py checks fastlista's own memory
    # instead. abort_on_error: a report ends the process with SIGABRT, on
    # which pytest's faulthandler prints the Python stack, i.e. the test.
    # UBSan's log_path is ignored when it runs beside ASan (GCC 12), hence
    # stderr. No suppressions: none of the kernel tests gives a report from
    # OpenBLAS, CPython or NumPy (which are not instrumented; only the
    # interceptors, e.g. memcpy, could report for them). Should one appear,
    # suppress it by library (ASan: "interceptor_via_lib:NAME" in a file
    # given as suppressions=...), never by turning a check off.
    export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1:report_error_type=1"
    tests=("${kernel_tests[@]}")
    extra=(tools/memcheck_smoke.py)
    # ASan's "==pid==ERROR: AddressSanitizer: ...", UBSan's
    # "file:line:col: runtime error: ..."
    report='^==[0-9]+==ERROR: |: runtime error: '
else
    # ThreadSanitizer reports a race where two threads access the same
    # memory, one of them writing, and no synchronisation it can see orders
    # them. It sees instrumented code (the kernels), the calls into libc it
    # intercepts (malloc, memcpy, pthreads, ...) and nothing else. Every
    # report is kept (halt_on_error=0), and the process then exits with 66.
    # Suppressed, by library or by place, never by kind:
    # - the BLAS libraries' calls into libc (called_from_lib): OpenBLAS's
    #   threads hand work over by spinning on plain variables, which
    #   ThreadSanitizer cannot see, so their memset of an output and
    #   NumPy's later read of it would be a race;
    # - races whose top frame is the block driver itself (race_top:
    #   run_blocks; its code, inlined in each kernel's OpenMP region): the
    #   region's shared-data block, which the calling thread fills inside
    #   the GOMP_parallel call after the region's annotated start, and the
    #   copies of prange's loop variable in (firstprivate) and out
    #   (lastprivate), ordered by a barrier inside libgomp. A block function
    #   is called through a pointer and is never that top frame: the
    #   canary checks that races between block functions are reported.
    supp=$logs/tsan.supp
    {
        echo "race_top:run_blocks"
        "$py" - <<'EOF'
import os

import numpy as np
import scipy.linalg  # noqa: F401 (loads SciPy's BLAS)

np.ones((64, 64)) @ np.ones((64, 64))
names = set()
with open("/proc/self/maps") as maps:
    for line in maps:
        name = os.path.basename(line.split()[-1])
        # OpenBLAS as NumPy's and SciPy's wheels ship it (not the Python
        # modules named *cython_blas*: a pattern must match one library)
        if name.startswith("lib") and "blas" in name.lower() and ".so" in name:
            names.add(name)
for name in sorted(names):
    print(f"called_from_lib:{name}")
EOF
    } > "$supp"
    export TSAN_OPTIONS="suppressions=$supp:print_suppressions=1:halt_on_error=0:exitcode=66"
    # the canary (tools/tsan_canary.pyx): no report for its race-free
    # blocks, one for its racy ones; else no run below could be trusted
    canary() {
        LD_PRELOAD="$runtimes" "$py" -c \
            "from fastlista._kernels import _tsan_canary as c; print(c.run($1))" \
            >"$logs/canary-$1.log" 2>&1
    }
    if ! canary False || grep -q 'WARNING: ThreadSanitizer' "$logs/canary-False.log" \
            || ! grep -qx '352.0' "$logs/canary-False.log"; then
        cat "$logs/canary-False.log" >&2
        echo "sanitize: FAILED, ThreadSanitizer reports races in race-free blocks:" \
             "the block driver's annotations (FL_TSAN) do not reach it" >&2
        exit 1
    fi
    canary True || true
    if ! grep -q 'data race.*_tsan_canary__block' "$logs/canary-True.log"; then
        cat "$logs/canary-True.log" >&2
        echo "sanitize: FAILED, ThreadSanitizer misses the canary's race between" \
             "blocks: a clean run of the tests would prove nothing" >&2
        exit 1
    fi
    echo "sanitize: the canary's race is reported, its race-free blocks are not"
    # the kernels with their default threads (n_jobs=None: every core) and
    # the thread tests, less those that fork(): ThreadSanitizer does not
    # support a child of a multi-threaded process that starts threads
    tests=("${kernel_tests[@]}" tests/test_threads.py -k "not fork")
    extra=()
    report='^WARNING: ThreadSanitizer: '
fi

start=$SECONDS
log=$logs/tests.log
rc=0
{
    LD_PRELOAD="$runtimes" "$py" -m pytest -q -p no:cacheprovider --capture=sys \
        "${tests[@]}" &&
    if [ ${#extra[@]} -gt 0 ]; then LD_PRELOAD="$runtimes" "$py" "${extra[@]}"; fi
} 2>&1 | tee "$log" || rc=$?
echo "sanitize: tests ran in $((SECONDS - start)) s"

n=$(grep -cE "$report" "$log" || true)
if [ "$n" -gt 0 ]; then
    # the reports again (their headers and stack frames), each frame in the
    # generated C annotated with the .pyx or .pxd line it comes from: the
    # nearest /* "file.pyx":N comment above it, for Cython's functions of
    # ours (__pyx_pf_, _pw_, _f_, _fuse_), not its utility code
    echo "===== sanitizer report(s), with Cython source lines"
    "$py" - "$log" <<'EOF'
import re, sys
src = {}
head = re.compile(r"^==\d+==ERROR: |: runtime error: |^SUMMARY: |^(READ|WRITE) of size"
                  r"|^WARNING: ThreadSanitizer: |^  (Previous )?(read|write|Read|Write)"
                  r"|^  Location is ")
for line in open(sys.argv[1], errors="replace"):
    if not (head.search(line) or re.match(r"\s+#\d+ ", line)):
        continue
    # ASan: "#0 0x... in FUNC FILE:LINE", ThreadSanitizer: "#0 FUNC FILE:LINE"
    m = re.search(r"#\d+ (?:0x[0-9a-f]+ in )?(\S+) (fastlista/_kernels/\w+\.c):(\d+)", line)
    if m and re.match(r"__pyx_(pf|pw|f|fuse)_", m[1]):
        lines = src.setdefault(m[2], open(m[2], errors="replace").read().splitlines())
        for k in range(int(m[3]) - 1, -1, -1):
            o = re.match(r'\s*/\* "(fastlista/_kernels/[\w.]+)":(\d+)$', lines[k])
            if o:
                line = line.rstrip("\n") + f"   [{o[1]}:{o[2]}]\n"
                break
    sys.stdout.write(line)
EOF
    echo "sanitize: FAILED, $n sanitizer report(s) (log: $log)" >&2
    exit 1
fi
if [ "$rc" -ne 0 ]; then
    echo "sanitize: FAILED, tests failed (exit $rc) without a sanitizer report" >&2
    exit 1
fi
echo "sanitize: no sanitizer report"
status=0
