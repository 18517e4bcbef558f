from cython cimport floating


cdef inline floating soft_threshold(floating u, floating t) noexcept nogil:
    """sign(u) * max(|u| - t, 0); NaN propagates, exact 0 iff |u| <= t."""
    if u > t:
        return u - t
    if u < -t:
        return u + t
    if u != u:
        return u
    return 0
