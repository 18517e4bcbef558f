"""Input validation at the public boundary.

Every public function validates its arguments once, here, with messages that
name the argument and state what was expected (scikit-learn's wording where
one exists). Kernels downstream trust what they receive: C-contiguous float32
or float64 arrays of matching shapes, finite values.
"""
import numbers
import operator
import os
import sys

import numpy as np

__all__ = ["InvalidParameterError", "ConvergenceWarning"]

_BLAS_INT_MAX = 2**31 - 1


class InvalidParameterError(ValueError, TypeError):
    """A parameter has a bad type or value (a ValueError and a TypeError)."""


class ConvergenceWarning(UserWarning):
    """A solver stopped before reaching its tolerance: at ``max_iter``, or
    ("cd") where its iterations no longer lowered the gap; the message says
    which, and what would help."""


def _is_sparse(a):
    return hasattr(a, "tocsr") and hasattr(a, "nnz")


def check_dense(a, name):
    """Refuse a scipy.sparse ``a``, naming it."""
    if _is_sparse(a):
        raise TypeError(
            f"Sparse data was passed for {name}, but dense data is required. "
            "Use '.toarray()' to convert to a dense numpy array.")
    return a


def native_byte_order(a):
    """``a`` converted once to native byte order (C order) when it is a
    numeric ndarray in the other one; anything else unchanged.

    ``np.dtype('>f4') == np.float32`` is False: without this, big-endian
    float32 would take the float64 path of every dtype test downstream.
    """
    if isinstance(a, np.ndarray) and a.dtype.kind in "biufc" and not a.dtype.isnative:
        return a.astype(a.dtype.newbyteorder("="), order="C")
    return a


def as_array(a, name):
    """``np.asarray(a)`` in native byte order, naming ``a`` when it is not
    array-like (a ragged list); sparse matrices pass through unchanged."""
    if _is_sparse(a):
        return a
    if not isinstance(a, np.ndarray):
        try:
            a = np.asarray(a)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} could not be converted to an array: {exc}") from None
    return native_byte_order(a)


def short_repr(value, limit=80):
    """``repr(value)`` cut to about ``limit`` characters (an int of 10**400
    has 401 digits; beyond 4300, Python refuses to print it at all)."""
    try:
        r = repr(value)
    except ValueError:
        bits = f" of {value.bit_length()} bits" if isinstance(value, int) else ""
        return f"<{type(value).__name__}{bits}>"
    return r if len(r) <= limit else f"{r[:limit - 20]}...{r[-15:]}"


#: what an object array may hold: the values of a numeric dtype (a bool
#: array is numeric input too)
_REAL_ELEMENTS = (numbers.Real, np.bool_)
#: dates and durations: NumPy stores them as counts of a time unit (days,
#: seconds, ...; a date's since 1970), and ``np.timedelta64`` is even a
#: ``numbers.Integral``, but those counts are not the numbers a caller means
#: (a missing value, NaT, counts as -2**63)
_TIME_TYPES = (np.datetime64, np.timedelta64)


def not_real_reason(arr, name):
    """Why the values of ndarray ``arr`` are not real numbers, or None.

    Complex values (a cast to float would drop their imaginary parts),
    bytes or strings (a cast would parse them as text) and dates or
    durations (a cast would take their counts of a time unit) are refused
    wherever fastlista takes an array of numbers, in an object array too
    (its elements must be real numbers: int, float, bool or their NumPy
    types); the message names ``name``.
    """
    if np.iscomplexobj(arr):
        return f"Complex data not supported in {name}."
    if arr.dtype.kind in "USV":
        return (f"dtype='numeric' is not compatible with arrays of bytes/strings "
                f"({name} has dtype {arr.dtype}). Convert your data to numeric "
                "values explicitly instead.")
    if arr.dtype.kind in "mM":
        return (f"dtype='numeric' is not compatible with arrays of dates or durations "
                f"({name} has dtype {arr.dtype}), whose values would be taken as counts "
                "of their time unit. Convert your data to numeric values explicitly "
                "instead.")
    kind = _foreign_element(arr)
    if kind is not None:
        v = next(v for v in arr.flat if type(v) is kind)
        return (f"{name} is an object array holding a {kind.__name__} ({short_repr(v)}), "
                "where float()'s argument must be a real number (a string or any "
                "other object is not a number here). Convert your data to numeric "
                "values explicitly instead.")
    return None


def _foreign_element(arr):
    """The type of an element of an object array that is not a real number
    (a date or duration is not one), or None (one issubclass test a type,
    not an element: an ABC's is slow)."""
    if arr.dtype != object:
        return None
    for kind in set(map(type, arr.flat)):
        if not issubclass(kind, _REAL_ELEMENTS) or issubclass(kind, _TIME_TYPES):
            return kind
    return None


def check_real(arr, name):
    """Refuse values of ndarray ``arr`` that are not real numbers
    (:func:`not_real_reason`), as ``float()`` would: ValueError for complex
    values and text, TypeError for dates, durations and other objects (a
    dict, None, a list)."""
    reason = not_real_reason(arr, name)
    if reason is not None:
        kind = _foreign_element(arr)
        other = (arr.dtype.kind in "mM"
                 or kind is not None and not issubclass(kind, (str, bytes)))
        raise (TypeError if other else ValueError)(reason)


def check_array(a, name, *, ndim=2, dtype=None, allow_1d=False,
                min_samples=0, min_features=1):
    """Return ``a`` as a C-contiguous, finite float32/float64 array.

    Parameters
    ----------
    a : array-like
        The input.
    name : str
        Its name in error messages.
    ndim : int, default=2
        The required number of dimensions.
    dtype : {None, np.float32, np.float64}, default=None
        Target dtype. ``None`` keeps float32 and float64 and converts anything
        else (integers, booleans, float16, object) to float64.
    allow_1d : bool, default=False
        With ``ndim=2``, accept a 1-D array as one sample (returned as 2-D).
    min_samples, min_features : int
        Lower bounds on the two axes of a 2-D array.

    Returns
    -------
    out : ndarray
        C-contiguous, finite, of the resolved dtype. It is the input itself
        when that already qualifies (kernels never write to their inputs).
    """
    arr = as_array(check_dense(a, name), name)        # (native byte order)
    check_real(arr, name)
    if dtype is None:
        dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64
    if arr.dtype == object:
        try:
            with np.errstate(over="ignore"):     # (beyond the dtype: inf, refused below)
                arr = arr.astype(dtype)
        except (TypeError, ValueError) as exc:
            raise type(exc)(
                f"{name} could not be converted to {np.dtype(dtype).name}: {exc}") from None
        except OverflowError:               # an int beyond the float range
            raise ValueError(f"Input {name} contains infinity or a value too large for "
                             f"dtype('{np.dtype(dtype).name}').") from None
    if ndim == 2 and allow_1d and arr.ndim == 1:
        arr = arr[np.newaxis, :]
    if arr.ndim != ndim:
        if arr.ndim == 0:
            raise ValueError(
                f"Expected {ndim}D array for {name}, got scalar array instead: "
                f"{name}={arr!r}. Reshape your data.")
        hint = ""
        if ndim == 2 and arr.ndim == 1 and name in ("D", "D0", "dictionary", "dict_init"):
            # (scikit-learn's hint below speaks of samples and features;
            # "dictionary" and "dict_init": the estimators' names of D and D0)
            hint = (f" A dictionary has shape (n_atoms, n_features): one atom is "
                    f"{name}.reshape(1, -1).")
        elif ndim == 2 and arr.ndim == 1:
            hint = (" Reshape your data either using array.reshape(-1, 1) if your data "
                    "has a single feature or array.reshape(1, -1) if it contains a "
                    "single sample.")
        raise ValueError(
            f"Expected {ndim}D array for {name}, got {arr.ndim}D array instead "
            f"(shape={arr.shape}).{hint}")
    if ndim == 2:
        if arr.shape[0] < min_samples:
            raise ValueError(
                f"Found array with {arr.shape[0]} sample(s) (shape={arr.shape}) while a "
                f"minimum of {min_samples} is required for {name}.")
        if arr.shape[1] < min_features:
            raise ValueError(
                f"Found array with {arr.shape[1]} feature(s) (shape={arr.shape}) while a "
                f"minimum of {min_features} is required for {name}.")
    if any(s > _BLAS_INT_MAX for s in arr.shape):
        raise ValueError(f"{name} has shape {arr.shape}: a dimension is too large "
                         "for 32-bit BLAS (at most 2**31 - 1).")
    with np.errstate(over="ignore"):    # beyond the dtype: inf, refused next
        arr = np.ascontiguousarray(arr, dtype=dtype)
    check_finite(arr, name)
    return arr


def check_finite(arr, name):
    """Raise ValueError if ``arr`` holds NaN or infinity."""
    with np.errstate(all="ignore"):
        # summed in arr's own dtype: a float32 array is not cast to float64
        # first (a second pass over it on every call)
        suspicious = arr.size and not np.isfinite(arr.sum())
    if suspicious:
        # the cheap sum test has false positives only on overflow: refine
        if np.isnan(arr).any():
            raise ValueError(f"Input {name} contains NaN.")
        if np.isinf(arr).any():
            raise ValueError(
                f"Input {name} contains infinity or a value too large for "
                f"dtype('{arr.dtype}').")


#: LAPACK's workspace for one L_S (the power iteration's fallback) counts
#: 26 min(n_atoms, n_features) entries in a C int: the one product of the
#: shapes that the kernels index with 32 bits (every other index product is
#: 64-bit)
_LAPACK_DIM_MAX = (2**31 - 1) // 26


def check_dictionary_shape(D):
    """Refuse a dictionary whose shape the kernels cannot index."""
    if min(D.shape) > _LAPACK_DIM_MAX:
        raise ValueError(
            f"D has shape {D.shape}: min(n_atoms, n_features) must be at most "
            f"{_LAPACK_DIM_MAX} (LAPACK's workspace is indexed with 32-bit integers).")
    return D


def check_X_D(X, D, *, allow_1d=True, allow_no_atoms=False):
    """Validate a batch of signals against a dictionary.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or (n_features,)
        Signals, one per row; a 1-D ``X`` is one sample.
    D : array-like of shape (n_atoms, n_features)
        Dictionary, one atom per row.
    allow_1d : bool, default=True
        Accept a 1-D ``X``.
    allow_no_atoms : bool, default=False
        Accept a dictionary of shape (0, n_features) (the Lasso without atoms:
        the empty code is optimal).

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
    D : ndarray of shape (n_atoms, n_features)
        Both C-contiguous, of their common float dtype (float32 only if
        both are float32 or narrower).
    is_1d : bool
        Whether ``X`` was 1-D (callers return 1-D results then).
    """
    X, D = as_array(X, "X"), as_array(D, "D")
    is_1d = np.ndim(X) == 1 and allow_1d
    dtype = _common_dtype(X, D)
    D = check_dictionary_shape(check_array(D, "D", dtype=dtype, min_features=1))
    if D.shape[0] == 0 and not allow_no_atoms:
        raise ValueError(f"D must contain at least one atom; got D.shape={D.shape}.")
    X = check_array(X, "X", dtype=dtype, allow_1d=allow_1d, min_features=0)
    if X.shape[1] != D.shape[1]:
        raise ValueError(
            f"X has {X.shape[1]} features, but D has {D.shape[1]} features "
            f"(X.shape={X.shape}, D.shape={D.shape}).")
    return X, D, is_1d


def _common_dtype(*arrays):
    """float32 if every float input is float32 (or narrower), else float64."""
    dtypes = []
    for a in arrays:
        dt = getattr(a, "dtype", None)
        if dt is None:
            dt = np.asarray(a).dtype
        # ('>f4' is float32 too: compared in native byte order)
        dtypes.append(np.dtype(dt).newbyteorder("="))
    if all(dt == np.float32 for dt in dtypes):
        return np.float32
    return np.float64


def check_max_iter(max_iter, func, name="max_iter"):
    """An iteration count in [1, 2**31 - 1] (kernels count in C ints)."""
    return check_scalar(max_iter, name, func, low=1, high=MAX_ITER, integer=True)


def check_scalar(value, name, func, *, low=None, high=None, low_closed=True,
                 high_closed=True, integer=False):
    """Validate a real (or integer) scalar parameter against an interval.

    Raises
    ------
    InvalidParameterError
        "The '{name}' parameter of {func} must be {constraint}. Got {value!r}
        instead." NaN and infinity are always rejected for real parameters,
        and bools, dates and durations for every parameter.
    """
    kind = "an int" if integer else "a float"
    lo = "-inf" if low is None else (repr(low) if integer else repr(float(low)))
    hi = "inf" if high is None else (repr(high) if integer else repr(float(high)))
    constraint = (f"{kind} in the range {'[' if low_closed and low is not None else '('}"
                  f"{lo}, {hi}{']' if high_closed and high is not None else ')'}")
    bad = InvalidParameterError(
        f"The '{name}' parameter of {func} must be {constraint}. Got "
        f"{short_repr(value)} instead.")
    if isinstance(value, (bool, np.bool_, *_TIME_TYPES)):
        raise bad
    if integer:
        try:
            value = operator.index(value)
        except TypeError:
            raise bad from None
    else:
        if not isinstance(value, numbers.Real):
            if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu":
                value = value.item()
            else:
                raise bad
        try:
            value = float(value)
        except OverflowError:               # an int (or Fraction) of 10**400
            raise InvalidParameterError(
                f"{bad} It is beyond the float range (at most "
                f"{np.finfo(np.float64).max:.4g}).") from None
        if not np.isfinite(value):
            raise bad
    if low is not None and (value < low or (value == low and not low_closed)):
        raise bad
    if high is not None and (value > high or (value == high and not high_closed)):
        raise bad
    return value


def holds_bool(value, arr):
    """Whether ``value`` (as ndarray ``arr``) holds a bool: ``arr`` is a bool
    array, or a bool is an element of an object array or of a list or
    tuple (which NumPy casts to its other elements' type)."""
    if arr.dtype.kind == "b":
        return True
    items = arr.flat if arr.dtype == object else value if isinstance(value, (list, tuple)) \
        else ()
    return not {bool, np.bool_}.isdisjoint(map(type, items))


def check_lmbd(lmbd, n_samples, func):
    """A regularisation level: a float >= 0, or one per sample.

    Returns
    -------
    lmbd : float or ndarray of shape (n_samples,)
        A float for a scalar (or 0-d array), else a C-contiguous float64
        array (validated: finite, >= 0, of the right shape).

    Raises
    ------
    InvalidParameterError
        For any other value; in an array as for a scalar, bools, complex
        values, text, dates and durations are refused, not cast.
    """
    try:
        arr = np.asarray(lmbd)
    except (TypeError, ValueError):         # ragged
        arr = None
    if arr is not None and arr.ndim == 0:
        return check_scalar(lmbd, "lmbd", func, low=0.0)
    try:
        # (a long double beyond float64's range: inf, refused below)
        with np.errstate(over="ignore"):
            arr = None if (arr is None or not_real_reason(arr, "lmbd")
                           or holds_bool(lmbd, arr)) else arr.astype(np.float64)
    except (TypeError, ValueError):
        arr = None
    except OverflowError:                   # ints beyond the float range
        raise InvalidParameterError(
            f"The 'lmbd' parameter of {func} must hold finite floats >= 0; got values "
            f"beyond the float range (at most {np.finfo(np.float64).max:.4g}).") from None
    if arr is None:
        raise InvalidParameterError(
            f"The 'lmbd' parameter of {func} must be a float >= 0 or an array of "
            f"shape (n_samples,) = ({n_samples},) of them. Got {short_repr(lmbd)} instead.")
    if arr.shape != (n_samples,):
        raise InvalidParameterError(
            f"The 'lmbd' parameter of {func} must be a float or an array of shape "
            f"(n_samples,) = ({n_samples},), one per sample; got an array of shape "
            f"{arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise InvalidParameterError(f"The 'lmbd' parameter of {func} contains NaN or infinity "
                         f"(samples {np.flatnonzero(~np.isfinite(arr))[:5].tolist()}).")
    if np.any(arr < 0):
        raise InvalidParameterError(f"The 'lmbd' parameter of {func} must be >= 0; got negative "
                         f"values for samples {np.flatnonzero(arr < 0)[:5].tolist()}.")
    return np.ascontiguousarray(arr)


def check_bool(value, name, func):
    """A bool (Python or NumPy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidParameterError(
            f"The '{name}' parameter of {func} must be a bool. Got {short_repr(value)} "
            "instead.")
    return bool(value)


def check_verbose(value, func, name="verbose"):
    """A bool, or an int >= 0 (scikit-learn's verbosity levels); text and
    other truthy objects are refused."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return check_scalar(value, name, func, low=0, integer=True)


def check_option(value, name, func, options):
    """Validate a string option; returns the matching entry of ``options``,
    a Python str: a str subclass equal to it (a numpy.str_ from a NumPy
    array of options such as a GridSearchCV grid, a ``(str, Enum)`` member)
    is refused by the kernels' ``str`` arguments, and ``str()`` of an Enum
    member is its name."""
    if not isinstance(value, str) or value not in options:
        raise InvalidParameterError(
            f"The '{name}' parameter of {func} must be a str among "
            f"{{{', '.join(repr(o) for o in sorted(options))}}}. Got "
            f"{short_repr(value)} instead.")
    return next(o for o in options if o == value)


#: Modules whose frames wrap fastlista's calls besides fastlista's own and
#: scikit-learn's (whose pipelines, searches and ``set_output`` wrappers
#: call the estimators: their user's line is the one to point at).
_WRAPPERS = frozenset({"contextlib", "functools"})


def caller_stacklevel():
    """The ``stacklevel`` that points a warning at the user's code: called
    by the function that calls ``warnings.warn``, the level of the first
    frame outside fastlista, scikit-learn and the wrappers of
    ``_WRAPPERS``, whichever public function, estimator or helper it came
    through."""
    frame, level = sys._getframe(2), 2
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not (module.split(".")[0] in ("fastlista", "sklearn") or module in _WRAPPERS):
            break
        frame, level = frame.f_back, level + 1
    return level


def n_cpus():
    """Threads ``n_jobs=None`` stands for: the cores this process may run
    on, or fewer where OpenMP is told so (``OMP_NUM_THREADS``, which
    joblib's workers set to share the cores among them, or threadpoolctl's
    OpenMP limit), as scikit-learn's OpenMP code counts them."""
    from ._kernels._cpu import openmp_max_threads

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, openmp_max_threads()))


#: The most threads a call may ask for (a thread each costs a stack).
MAX_N_JOBS = 1024
#: The most iterations a kernel counts (a C int).
MAX_ITER = 2**31 - 1


def check_n_jobs(n_jobs, func):
    """Resolve ``n_jobs``: None or -1 → every core (:func:`n_cpus`: OpenMP's
    limit where it is lower), -2 → all but one, k → k."""
    if n_jobs is None:
        return n_cpus()
    try:
        n_jobs = check_scalar(n_jobs, "n_jobs", func, integer=True, low=-MAX_N_JOBS,
                              high=MAX_N_JOBS)
        if n_jobs == 0:
            raise InvalidParameterError("no thread")
    except InvalidParameterError:
        # one message for every refusal, naming all that is accepted (the
        # range alone included the refused 0 and left out None)
        raise InvalidParameterError(
            f"The 'n_jobs' parameter of {func} must be None or a non-zero int in "
            f"[-{MAX_N_JOBS}, {MAX_N_JOBS}] (-1: every core, -2: all but one). "
            f"Got {n_jobs!r} instead.") from None
    if n_jobs < 0:
        return max(1, n_cpus() + 1 + n_jobs)
    return n_jobs


def check_random_state(seed, func=None):
    """Turn ``seed`` into a ``np.random.RandomState`` (sklearn's contract).

    Raises
    ------
    InvalidParameterError
        Naming ``random_state`` (and ``func`` when given) and what is
        accepted: None, an int in [0, 2**32 - 1] or a RandomState (a
        ``numpy.random.Generator`` is not one).
    """
    if seed is None or seed is np.random:
        return np.random.mtrand._rand
    if isinstance(seed, numbers.Integral) and not isinstance(seed, (bool, np.bool_)):
        if 0 <= seed <= 2**32 - 1:
            return np.random.RandomState(seed)
    elif isinstance(seed, np.random.RandomState):
        return seed
    of = "" if func is None else f" of {func}"
    raise InvalidParameterError(
        f"The 'random_state' parameter{of} must be None, an int in [0, 2**32 - 1] or a "
        f"numpy.random.RandomState instance; {short_repr(seed)} cannot be used to seed a "
        "numpy.random.RandomState.")
