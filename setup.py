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
"""
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTLISTA_DEBUG", "0") not in ("", "0")
SANITIZE = os.environ.get("FASTLISTA_SANITIZE", "0") not in ("", "0")
if SANITIZE and sys.platform != "linux":
    sys.exit("FASTLISTA_SANITIZE=1 is supported with GCC on Linux only")

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
if SANITIZE:
    opt = ["-O1", "-g", "-fno-wrapv"] + sanitize

KERNELS = ["_prox", "_certify", "_lipschitz", "_solvers", "_cd", "_unrolled", "_dict"]

extensions = [
    Extension(
        f"fastlista._kernels.{name}",
        [f"fastlista/_kernels/{name}.pyx"],
        include_dirs=[np.get_include(), "fastlista/_kernels"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_22_API_VERSION")]
        + ([("FL_NO_CLONES", "1")] if DEBUG or SANITIZE else []),
        extra_compile_args=opt + openmp_compile,
        extra_link_args=openmp_link + (sanitize if SANITIZE else []),
    )
    for name in KERNELS
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        force=DEBUG or SANITIZE,
    )
)
