"""Extension modules of fastlista; all metadata lives in pyproject.toml.

``FASTLISTA_DEBUG=1`` builds the kernels with bounds, wraparound and
initialisation checks on, unoptimised and with debug symbols. It also
compiles the C row kernels (_simd.h) once, for the baseline ISA, without
the per-ISA clones: its tests (in CI) then run that code rather than the
clone of the machine's widest vector unit, which the optimised build runs.
"""
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTLISTA_DEBUG", "0") not in ("", "0")

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

KERNELS = ["_prox", "_certify", "_lipschitz", "_solvers", "_cd", "_unrolled"]

extensions = [
    Extension(
        f"fastlista._kernels.{name}",
        [f"fastlista/_kernels/{name}.pyx"],
        include_dirs=[np.get_include(), "fastlista/_kernels"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_22_API_VERSION")]
        + ([("FL_NO_CLONES", "1")] if DEBUG else []),
        extra_compile_args=opt + openmp_compile,
        extra_link_args=openmp_link,
    )
    for name in KERNELS
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        force=DEBUG,
    )
)
