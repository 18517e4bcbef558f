from cython cimport floating


cdef inline floating soft_threshold(floating u, floating t) noexcept nogil:
    """ST(u, t) = sign(u) max(|u| - t, 0) = u - clip(u, -t, t).

    Exact 0 iff |u| <= t, NaN propagates (clip gives t, and NaN - t is
    NaN). Two selects (min/max) and no branch, so that loops over it
    vectorize.
    """
    cdef floating c = u if u < t else t
    c = c if c > -t else -t
    return u - c


cdef inline floating nonneg_threshold(floating u, floating t) noexcept nogil:
    """The proximal operator of t ||.||_1 + the indicator of z >= 0:
    max(u - t, 0). Exact 0 iff u <= t; NaN propagates (NaN < 0 is false)."""
    cdef floating r = u - t
    return 0 if r < 0 else r


cdef inline floating threshold(floating u, floating t, bint positive) noexcept nogil:
    """``nonneg_threshold`` for non-negative codes, else ``soft_threshold``
    (a loop-invariant branch, which the compiler hoists out of loops)."""
    return nonneg_threshold(u, t) if positive else soft_threshold(u, t)


cdef inline floating sign(floating v) noexcept nogil:
    """-1, 0 or 1 (0 for NaN)."""
    return <floating> ((v > 0) - (v < 0))
