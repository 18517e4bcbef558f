"""Compiled kernels of fastlista (Cython, nogil, fused float32/float64).

The kernels trust their inputs: shapes, dtypes, contiguity and finiteness are
validated once by the public Python functions that call them.
"""
