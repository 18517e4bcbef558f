"""Extension modules of fastlista; all metadata lives in pyproject.toml.

``FASTLISTA_DEBUG=1`` builds the kernels with bounds, wraparound and
initialisation checks on, unoptimised and with debug symbols. It also
compiles the C row kernels (_simd.h) once, for the baseline ISA, without
the per-ISA clones: its tests (in CI) then run that code rather than the
clone of the machine's widest vector unit, which the optimised build runs.

``FASTLISTA_SANITIZE=1`` builds the kernels with AddressSanitizer and
UndefinedBehaviorSanitizer (signed integer overflow and float-to-integer
overflow included; every report fatal), at -O1 -g with frame pointers,
OpenMP kept and, as in the debug build, the C row kernels compiled once
for the baseline ISA (FL_NO_CLONES), GCC on Linux only. It adds
-fno-wrapv: CPython's CFLAGS, which setuptools passes to every extension,
contain -fwrapv, under which GCC treats signed overflow as defined and
does not check it. The Cython checks of FASTLISTA_DEBUG stay off unless
both switches are set, so that the sanitizers check the C code of the
optimised build (the debug build, which CI runs too, would raise
IndexError before a sanitizer saw the access). Float division by zero is
not checked: IEEE arithmetic defines it (inf or NaN), and a kernel may
rely on it. Such a build loads only into a process that has the ASan
runtime loaded first: tools/sanitize.sh builds a copy and runs the kernel
tests on it.

``FASTLISTA_SANITIZE=thread`` builds them with ThreadSanitizer instead
(-O1 -g, FL_NO_CLONES as above), with FL_TSAN defined: the block driver
(_blocks.pxd) then tells ThreadSanitizer where each OpenMP region starts
and ends, which it cannot see in libgomp. Such a build loads only into a
process that has the TSan runtime loaded first: ``tools/sanitize.sh
--thread`` builds a copy and runs the threaded tests on it.

``FASTLISTA_ISA=x86-64-v3`` caps the per-ISA clones of the C row kernels
(_simd.h) at that x86-64 microarchitecture level: with x86-64-v3 they are
compiled for AVX2 + FMA and for the baseline only, with no AVX-512
(x86-64-v4) clone, so that an AVX-512 machine runs the AVX2 code an AVX2
machine would (to measure that code where no AVX2-only machine is at
hand). ``x86-64-v2`` (SSE4.2) and ``x86-64-v4`` (the default's widest)
cap them likewise; ``baseline`` compiles them once for the baseline ISA,
without clones, as the debug build does. Unset (or ``auto``): clones up to
x86-64-v4. The rest of the extension is built for the baseline ISA in
every case, and BLAS picks its own kernels at run time. The value is
recorded in build/fastlista-build-config.txt, a dependency of every
extension, so that switching it rebuilds the kernels.
"""
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTLISTA_DEBUG", "0") not in ("", "0")
SANITIZE_MODE = os.environ.get("FASTLISTA_SANITIZE", "0").strip().lower()
if SANITIZE_MODE not in ("", "0", "1", "thread"):
    sys.exit(f"FASTLISTA_SANITIZE={SANITIZE_MODE!r}: expected 0, 1 or thread")
SANITIZE = SANITIZE_MODE not in ("", "0")
TSAN = SANITIZE_MODE == "thread"
if SANITIZE and sys.platform != "linux":
    sys.exit("FASTLISTA_SANITIZE is supported with GCC on Linux only")
# the widest clone of the row kernels: FL_ISA_LEVEL in _simd.h (0: no clones)
ISA_LEVELS = {"auto": None, "x86-64-v4": 4, "x86-64-v3": 3, "x86-64-v2": 2,
              "baseline": 0}
ISA = os.environ.get("FASTLISTA_ISA", "").strip().lower() or "auto"
if ISA not in ISA_LEVELS:
    sys.exit(f"FASTLISTA_ISA={ISA!r}: expected one of {', '.join(ISA_LEVELS)}")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "nonecheck": False,
    "cdivision": True,
    "cpow": True,
}

if sys.platform == "win32":
    openmp_compile, openmp_link = ["/openmp"], []
elif sys.platform == "darwin":
    openmp_compile, openmp_link = ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
else:
    openmp_compile, openmp_link = ["-fopenmp"], ["-fopenmp"]

# never -ffast-math: it flushes subnormals to zero and breaks ST(u, t) == 0 <=> |u| <= t
opt = ["-O0", "-g"] if DEBUG else ["-O3"]
if sys.platform == "win32":
    opt = []
# the sanitized build, also with FASTLISTA_DEBUG, at -O1 (ASan's advice: -O0
# is slower for no more reports, -O2 and up can fold away checked code)
sanitize = ["-fsanitize=address,undefined,float-cast-overflow",
            "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
if TSAN:
    sanitize = ["-fsanitize=thread", "-fno-omit-frame-pointer"]
if SANITIZE:
    opt = ["-O1", "-g", "-fno-wrapv"] + sanitize

isa_macros = ([] if ISA_LEVELS[ISA] is None
              else [("FL_ISA_LEVEL", str(ISA_LEVELS[ISA]))])


def _config_stamp():
    """A file whose contents (and so mtime) change with the build switches."""
    path = os.path.join("build", "fastlista-build-config.txt")
    text = (f"FASTLISTA_DEBUG={int(DEBUG)} FASTLISTA_SANITIZE={SANITIZE_MODE or 0} "
            f"FASTLISTA_ISA={ISA}\n")
    try:
        with open(path) as f:
            if f.read() == text:
                return [path]
    except OSError:
        pass
    try:
        os.makedirs("build", exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    except OSError:         # a read-only tree: no stamp, no dependency
        return []
    return [path]


CONFIG_STAMP = _config_stamp()
KERNELS = ["_cpu", "_gemm", "_prox", "_certify", "_lipschitz", "_solvers", "_cd", "_unrolled",
           "_dict"]

extensions = [
    Extension(
        f"fastlista._kernels.{name}",
        [f"fastlista/_kernels/{name}.pyx"],
        include_dirs=[np.get_include(), "fastlista/_kernels"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_22_API_VERSION")]
        + ([("FL_NO_CLONES", "1")] if DEBUG or SANITIZE else [])
        + ([("FL_TSAN", "1")] if TSAN else [])
        + isa_macros,
        depends=["fastlista/_kernels/_simd.h", "fastlista/_kernels/_gemm.h",
                 "fastlista/_kernels/_gemm_avx512.h",
                 "fastlista/_kernels/_gemm_avx2.h",
                 "fastlista/_kernels/_gather_avx2.h",
                 "fastlista/_kernels/_gather_avx512.h",
                 "fastlista/_kernels/_gather.h"] + CONFIG_STAMP,
        extra_compile_args=opt + openmp_compile,
        extra_link_args=openmp_link + (sanitize if SANITIZE else []),
    )
    for name in KERNELS
]
if TSAN:
    # the block driver's canary, which tools/sanitize.sh --thread runs first
    extensions.append(Extension(
        "fastlista._kernels._tsan_canary", ["tools/tsan_canary.pyx"],
        include_dirs=["."], define_macros=[("FL_TSAN", "1")],
        extra_compile_args=opt + openmp_compile,
        extra_link_args=openmp_link + sanitize))

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        force=DEBUG or SANITIZE,
    )
)
