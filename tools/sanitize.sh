#!/usr/bin/env bash
# Build a copy of the project with FASTLISTA_SANITIZE=1 (AddressSanitizer +
# UndefinedBehaviorSanitizer, signed overflow included, every report fatal;
# see setup.py) and run the kernel tests and tools/memcheck_smoke.py on it.
# Fails (exit 1) on any sanitizer report or test failure; exit 2 if the
# sanitized build cannot be made here (not GCC on Linux, no libasan, no
# Cython or setuptools >= 77 in this environment).
#
# The copy is built in a temporary directory, so that the normal build here
# (in place or installed) is left as it is; it is removed after a clean run
# and kept, with the sanitizer logs, after a failing one (SANITIZE_KEEP=1
# keeps it always). Needs the build requirements installed
# (pip install "Cython>=3.0,<3.3" "setuptools>=77") and the test extras.
set -euo pipefail
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
libasan=$("$cc" -print-file-name=libasan.so)
libubsan=$("$cc" -print-file-name=libubsan.so)
[ -e "$libasan" ] && [ -e "$libubsan" ] || die2 "libasan/libubsan of $cc not found"
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
    | tar -C "$src" -xf -

start=$SECONDS
echo "sanitize: building a sanitized copy in $src (log: $work/build.log)"
if ! (cd "$src" && FASTLISTA_SANITIZE=1 "$py" setup.py -q build_ext --inplace \
        --parallel "${SANITIZE_JOBS:-$(nproc)}") >"$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    die2 "sanitized build failed"
fi
for so in "$src"/fastlista/_kernels/*.so; do
    readelf -d "$so" | grep -q 'NEEDED.*libasan' || die2 "$so is not instrumented"
done
echo "sanitize: built in $((SECONDS - start)) s"

# The interpreter is not instrumented: the ASan runtime must be loaded
# first (before libc's malloc is bound), hence LD_PRELOAD, and the UBSan one
# with it. Leak detection is off: CPython never frees much of what it
# allocates at startup (interned strings, static types, module state), so
# LeakSanitizer would report thousands of "leaks" at exit that are not
# fastlista's; tests/test_memory.py checks fastlista's own memory instead.
# PYTHONMALLOC=malloc sends CPython's small objects through malloc too, so
# that they get ASan's red zones. abort_on_error: a report ends the process
# with SIGABRT, on which pytest's faulthandler prints the Python stack, i.e.
# the test. Reports go to stderr, which pytest is told not to capture
# (--capture=sys), into one log ($logs/tests.log): UBSan's log_path is
# ignored when it runs beside ASan (GCC 12), and captured output is lost
# when a report ends the process.
# No suppressions: none of the kernel tests gives a report from OpenBLAS,
# CPython or NumPy (which are not instrumented; only the interceptors, e.g.
# memcpy, could report for them). Should one appear, suppress it by library
# (ASan: "interceptor_via_lib:NAME" in a file given as suppressions=...),
# never by turning a check off.
export LD_PRELOAD="$libasan $libubsan${LD_PRELOAD:+ $LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1:report_error_type=1"
export PYTHONMALLOC=malloc
export PYTHONPATH=$src
cd "$src"
where=$("$py" -c "import fastlista._kernels._cd as m; print(m.__file__)")
case $where in
    "$src"/*) ;;
    *) die2 "the tests would import $where, not the sanitized copy" ;;
esac

start=$SECONDS
log=$logs/tests.log
rc=0
{
    "$py" -m pytest -q -p no:cacheprovider --capture=sys \
        tests/test_lasso.py tests/test_lipschitz.py tests/test_solvers.py \
        tests/test_gemm.py tests/test_large_indices.py tests/test_properties.py \
        tests/test_degenerate.py tests/test_networks.py \
        tests/test_training.py tests/test_certificate.py tests/test_variants.py \
        tests/test_fuzz.py tests/test_dictionary.py &&
    "$py" tools/memcheck_smoke.py
} 2>&1 | tee "$log" || rc=$?
unset LD_PRELOAD
echo "sanitize: tests ran in $((SECONDS - start)) s"

# a report: ASan's "==pid==ERROR: AddressSanitizer: ...", UBSan's
# "file:line:col: runtime error: ..."
n=$(grep -cE '^==[0-9]+==ERROR: |: runtime error: ' "$log" || true)
if [ "$n" -gt 0 ]; then
    # the reports again (their headers and stack frames), each frame in the
    # generated C annotated with the .pyx or .pxd line it comes from: the
    # nearest /* "file.pyx":N comment above it, for Cython's functions of
    # ours (__pyx_pf_, _pw_, _f_, _fuse_), not its utility code
    echo "===== sanitizer report(s), with Cython source lines"
    "$py" - "$log" <<'EOF'
import re, sys
src = {}
head = re.compile(r"^==\d+==ERROR: |: runtime error: |^SUMMARY: |^(READ|WRITE) of size")
for line in open(sys.argv[1], errors="replace"):
    if not (head.search(line) or re.match(r"\s+#\d+ ", line)):
        continue
    m = re.search(r" in (\S+) (fastlista/_kernels/\w+\.c):(\d+)", line)
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
