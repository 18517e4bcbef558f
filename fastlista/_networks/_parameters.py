"""Parametrizations of the unfolded networks: keys, shapes, inits, checks.

A network of T layers maps a signal x to a code z_T, starting from z_0 = 0:

    z_{t+1} = ST(u_t, lmbd * theta_t),   ST(u, s) = sign(u) max(|u| - s, 0).

=========== ====================================== ============ =======================================
name        u_t                                    threshold    learned keys (init)
=========== ====================================== ============ =======================================
``step``    z - alpha (z D - x) D^T                lmbd alpha   ``alpha`` (1/L)
``coupled`` z - alpha (z D - x) W^T                lmbd beta    ``W`` (D), ``alpha``, ``beta`` (1/L)
``alista``  z - gamma (z D - x) W~^T, W~ fixed     lmbd theta   ``gamma`` (1/||D W~^T||_2), ``theta`` (1/L)
``lista``   z W_z + x W_x                          lmbd theta   ``W_z`` (I - B/L), ``W_x`` (D^T/L),
                                                                ``theta`` (1/L per atom)
=========== ====================================== ============ =======================================

L = ||D D^T||_2. ALISTA's W~ has w_i . d_i = 1, so D W~^T does not change
when D is scaled: its step starts at 1/||D W~^T||_2, which keeps the
untrained network convergent at any scale of D (1/L would make it diverge
for atoms of norm below about 0.7).

This module also defines the flat parameter vector of training (the
training interface of :class:`fastlista.Lista`): the parameters of layers
0..depth-1, key after key, each divided by its unit (the untrained value of
steps and thresholds; for W and W_x the scales of their untrained values,
D and D^T / L; 1 for W_z), so that one rate suits all of them at any scale
of D; steps and thresholds are bounded below by STEP_FLOOR units.
"""
import numpy as np
from scipy.linalg import solve_triangular

from .._validation import InvalidParameterError, check_array, check_scalar, not_real_reason

PARAMETRIZATIONS = ("step", "coupled", "alista", "lista")
LOSSES = ("unsupervised", "supervised", "semi-supervised")

#: parameter keys of one layer, in the order of the flat training vector
KEYS = {
    "step": ("alpha",),
    "coupled": ("W", "alpha", "beta"),
    "alista": ("gamma", "theta"),
    "lista": ("W_z", "W_x", "theta"),
}
#: step sizes and threshold factors: >= 0 (and >= a floor while training)
NONNEGATIVE = frozenset({"alpha", "beta", "gamma", "theta"})
#: lower bound of step sizes and threshold factors while training, in units
#: of their untrained values: at a zero step every code sits on the kink of
#: the soft-threshold, where the gradient is one-sided (in the first layer
#: exactly 0 while the right derivative is not), so a bound at 0 would trap
#: the optimiser
STEP_FLOOR = 1e-6


def alista_weights(D):
    """Analytic weights W~ of ALISTA (Liu, Chen, Wang & Yin, 2019).

    W~ minimises the off-diagonal mass of the "mutual coherence" matrix
    W~ D^T under a unit diagonal:

        min_W  sum_{i != j} (w_i . d_j)^2   s.t.   w_i . d_i = 1 for every atom i.

    The problem splits over atoms. On the constraint the objective of row i
    is ||D w_i||^2 - 1 = w_i^T G w_i - 1 with G = D^T D, so the Lagrange
    condition G w = mu d_i and the constraint give the closed form

        w_i = G^+ d_i / (d_i^T G^+ d_i),

    (components of w_i in the null space of D change neither the objective
    nor the constraint; the minimum-norm choice is taken): a row-normalised
    (D^+)^T. It is computed on the atoms' own scales, D = diag(lam) A with
    A's rows of unit norm and A = U S V^T (thin SVD):

    * atoms linearly independent (rank n_atoms): w_i . d_j = 0 for every
      j != i, whatever the norms, and W~ = diag(1 / lam) (A^+)^T, with rows
      scaled to w_i . d_i = 1; an atom far smaller than the others keeps its
      weight to full precision;
    * dependent atoms: the norms weigh the off-diagonal terms, and w_i is
      parallel to V S^{-1} R^{-1} q_i for diag(lam) U = Q R (Householder,
      rows sorted by decreasing norm: row-wise backward stable, Cox &
      Higham 1998).

    Parameters
    ----------
    D : array-like of shape (n_atoms, n_features)
        Dictionary, one atom per row; no atom may be zero.

    Returns
    -------
    W : ndarray of shape (n_atoms, n_features)
        ``diag(W @ D.T) == 1`` with the smallest off-diagonal Frobenius norm,
        of D's dtype (computed in float64). The rank of D is that of its
        atoms normalised (each atom's rounding is relative to its own norm),
        taken as ``numpy.linalg.matrix_rank`` does at the precision of D's
        dtype: the singular values that a float32 dictionary's rounding adds
        to a rank-deficient one are not inverted, and an atom a million
        times smaller than the others is not mistaken for rounding.

    Raises
    ------
    ValueError
        If D has a zero atom (no weight meets its constraint), if some
        weight overflows D's dtype, or if D's atoms are linearly dependent
        and some direction is carried only by atoms more than 2^26 times
        smaller than the largest: the rounding of the largest atoms
        (relative 2^-52) would reach them and their weights would not be
        determined (normalise the atoms first).

    Examples
    --------
    >>> import numpy as np
    >>> from fastlista import alista_weights
    >>> D = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> W = alista_weights(D)
    >>> np.allclose(np.diag(W @ D.T), 1.0)
    True
    """
    D = check_array(D, "D")
    if D.shape[0] == 0:
        raise ValueError(f"D must contain at least one atom; got D.shape={D.shape}.")
    with np.errstate(over="ignore"):
        return _finite_weights(np.ascontiguousarray(analytic_weights64(D), dtype=D.dtype))


#: with dependent atoms, alista_weights needs every direction carried by
#: atoms within 2^26 of the largest norm: the rounding of the largest (2^-52
#: of their norm) stays 2^-26 below them
_DEPENDENT_RANGE = 26


def analytic_weights64(D):
    """:func:`alista_weights` of a validated D, in float64 (the rank at the
    precision of D's dtype)."""
    zero = np.flatnonzero(~np.any(D != 0, axis=1))
    if zero.size:
        raise ValueError(
            f"D has zero atoms (rows {zero[:5].tolist()}): no weight satisfies "
            "w_i . d_i = 1 for them.")
    # D = diag(lam) A with A's rows of unit norm, lam = 2^e * nrm kept as
    # exponents: no square under- or overflows, whatever the atoms' norms
    e = np.frexp(np.max(np.abs(D), axis=1).astype(np.float64))[1]
    A = np.ldexp(D.astype(np.float64), -e[:, None])
    nrm = np.sqrt(np.einsum("ij,ij->i", A, A))
    A /= nrm[:, None]
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    rank = int(np.sum(s > s[0] * max(D.shape) * np.finfo(D.dtype).eps))
    U, s, Vt = U[:, :rank], s[:rank], Vt[:rank]
    if rank == D.shape[0]:
        # independent atoms: (A^+)^T, whose rows meet w_i . a_j = 0 (j != i)
        W = (U / s) @ Vt
    else:
        # On the rank-r D = diag(lam) U S V^T, w = V S^{-1} y turns row i
        # into min ||B y||^2 s.t. b_i . y = 1 with B = diag(lam) U: y parallel
        # to (B^T B)^{-1} b_i = R^{-1} q_i for B = Q R (lam up to a common
        # power of two)
        lam = np.ldexp(nrm, e - e.max())
        small = lam < lam.max() * 2.0 ** -_DEPENDENT_RANGE
        if small.any():
            # a direction carried only by atoms below the largest atoms'
            # rounding: the weights are not determined by the atoms
            cut = s[0] * max(D.shape) * np.finfo(D.dtype).eps
            sv = np.linalg.svd(A[~small], compute_uv=False)
            if np.sum(sv > cut) < rank:
                raise ValueError(
                    f"D's atoms are linearly dependent and some of their directions "
                    f"are carried only by atoms more than 2^{_DEPENDENT_RANGE} times "
                    f"smaller than the largest (among rows "
                    f"{np.flatnonzero(small)[:5].tolist()}): the rounding of the "
                    "largest atoms reaches them and their ALISTA weights are not "
                    "determined; normalise the atoms.")
        order = np.argsort(-lam, kind="stable")
        Q_sorted, R = np.linalg.qr(lam[order, None] * U[order])
        Q = np.empty_like(Q_sorted)
        Q[order] = Q_sorted
        W = (solve_triangular(R, Q.T).T / s) @ Vt
    # w_i . d_i = 1, d_i = 2^e_i nrm_i a_i: divided by its computed value
    # (0 for an atom whose norm underflows next to the largest: refused below)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        W /= np.einsum("ij,ij->i", W, A)[:, None] * nrm[:, None]
        return _finite_weights(np.ldexp(W, -e[:, None]))


def _finite_weights(W):
    """W, or a ValueError naming the atoms whose weights (about 1/||d_i||)
    overflow W's dtype."""
    big = np.flatnonzero(~np.isfinite(W).all(axis=1))
    if big.size:
        raise ValueError(
            f"the ALISTA weights of atoms (rows {big[:5].tolist()}) of D overflow "
            f"{W.dtype} (w_i . d_i = 1 needs |w_i| >= 1/|d_i|); rescale the atoms.")
    return W


#: parametrizations with support selection (LISTA-CPSS, ALISTA-SS, LISTA-SS)
SUPPORT_SELECTION = ("coupled", "alista", "lista")


def check_support_selection(support_selection, parametrization, func):
    """None, or (p, p_max) percents with 0 < p <= p_max <= 100."""
    if support_selection is None:
        return None
    try:
        if isinstance(support_selection, (str, bytes)) or hasattr(support_selection, "keys") \
                or isinstance(support_selection, (set, frozenset)):
            raise TypeError      # no order (a dict's keys, a set) or text
        # each a real number (check_scalar's rule: no bool, no text)
        p, p_max = (check_scalar(v, "support_selection", func) for v in support_selection)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"The 'support_selection' parameter of {func} must be None or a pair "
            f"(p, p_max) of percents, 0 < p <= p_max <= 100; got "
            f"{support_selection!r}.") from None
    if not 0 < p <= p_max <= 100:
        raise InvalidParameterError(
            f"The 'support_selection' parameter of {func} must satisfy "
            f"0 < p <= p_max <= 100; got {support_selection!r}.")
    if parametrization not in SUPPORT_SELECTION:
        raise InvalidParameterError(
            f"support_selection is defined for the parametrizations "
            f"{SUPPORT_SELECTION}; got parametrization={parametrization!r}.")
    return (p, p_max)


def selection_counts(support_selection, n_layers, n_atoms):
    """Entries passing layer t unthresholded: ceil(min(p (t + 1), p_max) m / 100)
    (layers counted from 1, as in Chen et al. 2018 and Liu et al. 2019)."""
    p, p_max = support_selection
    t = np.arange(1, n_layers + 1)
    # (the rounding guard keeps exact percents of m exact)
    return np.ceil(np.minimum(p * t, p_max) * n_atoms / 100 - 1e-9).astype(np.intc)


def shapes(parametrization, n_atoms, n_features):
    """Shape of each parameter of one layer."""
    m, n = n_atoms, n_features
    return {"alpha": (), "beta": (), "gamma": (),
            "theta": (m,) if parametrization == "lista" else (),
            "W": (m, n), "W_z": (m, m), "W_x": (n, m)}


def units(parametrization, L, gamma0, d_unit):
    """The unit of each key in the flat training vector: its untrained
    scale, so that scaling D by s (and lmbd by s: the same problem, codes
    scaled by 1/s) scales every unit as its key and leaves the vector, its
    gradient and hence training unchanged. Steps and threshold factors:
    their untrained values (1/L, as 1/s^2). W, untrained D: ``d_unit``,
    the power of two nearest the largest atom norm (``atom_unit``); W_x,
    untrained D^T / L: d_unit / L; W_z = I - D D^T / L: 1. For atoms of
    norm about 1 these are 1 and 1/L, the units W and W_x always had:
    then, at any other scale of D, W sat far from the steps (at 1e-30 for
    D / 1e30, beside steps of 1), and coupled and lista training accepted
    no step, silently."""
    inv_L = 1.0 / L
    return {"alpha": inv_L, "beta": inv_L, "theta": inv_L, "W_x": d_unit * inv_L,
            "gamma": gamma0 if parametrization == "alista" else inv_L,
            "W": d_unit, "W_z": 1.0}


def atom_unit(D):
    """The power of two nearest the largest atom norm of D, 2**round(log2 r)
    from the exact exponent of r (np.frexp): it scales exactly with D by
    powers of two."""
    r = float(np.max(np.sqrt(np.einsum("ij,ij->i", D, D, dtype=np.float64)), initial=0.0))
    if not r > 0:
        return 1.0
    mant, e = np.frexp(r)               # r = mant 2**e, mant in [1/2, 1)
    return float(np.ldexp(1.0, int(e) - (1 if mant < np.sqrt(0.5) else 0)))


def initial_layer(parametrization, D, L, gamma0):
    """The parameters of one untrained layer (ISTA with step 1/L; ALISTA's
    step gamma0 = 1/||D W~^T||_2), in D's dtype."""
    dt = D.dtype
    m = D.shape[0]
    inv_L = 1.0 / L
    step = np.array(inv_L, dtype=dt)
    if parametrization == "step":
        return {"alpha": step}
    if parametrization == "coupled":
        return {"W": D.copy(), "alpha": step, "beta": step.copy()}
    if parametrization == "alista":
        return {"gamma": np.array(gamma0, dtype=dt), "theta": step}
    B = D.astype(np.float64) @ D.T.astype(np.float64)
    return {"W_z": (np.eye(m) - B * inv_L).astype(dt),
            "W_x": np.ascontiguousarray(D.T * inv_L, dtype=dt),
            "theta": np.full(m, inv_L, dtype=dt)}


def check_parameters(parameters, parametrization, n_layers, n_atoms, n_features,
                     dtype):
    """Validated copies of a list of per-layer parameter dicts.

    Raises
    ------
    ValueError
        Naming the layer and key: wrong type, keys or shape, not numeric,
        not finite, or negative for a step size or threshold factor.
    """
    keys = KEYS[parametrization]
    expected = shapes(parametrization, n_atoms, n_features)
    if isinstance(parameters, dict) or not hasattr(parameters, "__len__"):
        raise InvalidParameterError(
            f"parameters must be a list of {n_layers} dicts (one a layer) "
            f"with keys {list(keys)}; got {type(parameters).__name__}.")
    if len(parameters) != n_layers:
        raise ValueError(
            f"parameters must hold one dict per layer: expected {n_layers}, "
            f"got {len(parameters)}.")
    out = []
    for t, layer in enumerate(parameters):
        if not hasattr(layer, "keys") or set(layer.keys()) != set(keys):
            got = sorted(layer.keys()) if hasattr(layer, "keys") else type(layer).__name__
            raise ValueError(
                f"parameters[{t}] must be a dict with keys {sorted(keys)} for "
                f"parametrization={parametrization!r}; got {got}.")
        checked = {}
        for k in keys:
            try:
                v = np.asarray(layer[k])
                reason = not_real_reason(v, f"parameters[{t}][{k!r}]")
                if reason is None:
                    with np.errstate(over="ignore"):
                        v = np.array(v, dtype=dtype, order="C")
            except (TypeError, ValueError) as exc:
                reason = f"parameters[{t}][{k!r}] is not numeric: {exc}"
            except OverflowError:           # an int beyond the float range
                reason = (f"parameters[{t}][{k!r}] contains a value too large for "
                          f"{np.dtype(dtype).name}.")
            if reason is not None:
                raise ValueError(reason)
            if v.shape != expected[k]:
                raise ValueError(
                    f"parameters[{t}][{k!r}] must have shape {expected[k]}; got {v.shape}.")
            if not np.all(np.isfinite(v)):
                raise ValueError(
                    f"parameters[{t}][{k!r}] contains NaN or infinity (or a value "
                    f"too large for {np.dtype(dtype).name}).")
            if k in NONNEGATIVE and np.any(v < 0):
                raise ValueError(
                    f"parameters[{t}][{k!r}] is a step size or threshold factor and "
                    f"must be >= 0; got min {float(v.min())!r}.")
            checked[k] = v          # np.array made a C-ordered copy (0-d stays 0-d)
        out.append(checked)
    return out


class VectorLayout:
    """The flat training vector of layers 0..depth-1 (float64, in units).

    Parameters
    ----------
    parametrization : str
    shapes : dict
        Shape of each key (``shapes()``).
    units : dict
        Unit of each key (``units()``).
    depth : int
        Layers in the vector.
    """

    def __init__(self, parametrization, shapes, units, depth):
        self.depth = depth
        self.keys = KEYS[parametrization]
        self.items = []         # (layer, key, shape, offset, size, unit)
        offset = 0
        for t in range(depth):
            for k in self.keys:
                size = int(np.prod(shapes[k], dtype=np.int64))
                self.items.append((t, k, shapes[k], offset, size, units[k]))
                offset += size
        self.size = offset

    def lower_bounds(self):
        """STEP_FLOOR for steps and thresholds, -inf elsewhere."""
        lower = np.full(self.size, -np.inf)
        for t, k, shape, off, size, unit in self.items:
            if k in NONNEGATIVE:
                lower[off:off + size] = STEP_FLOOR
        return lower

    def pack(self, parameters):
        """Flat vector of a list of layer dicts."""
        x = np.empty(self.size)
        for t, k, shape, off, size, unit in self.items:
            x[off:off + size] = np.asarray(parameters[t][k], dtype=np.float64).ravel() / unit
        return x

    def unpack(self, x, parameters, dtype):
        """The layer dicts ``parameters`` with layers 0..depth-1 from x."""
        out = [dict(layer) for layer in parameters]
        with np.errstate(over="ignore"):
            for t, k, shape, off, size, unit in self.items:
                out[t][k] = np.array((x[off:off + size] * unit).reshape(shape), dtype=dtype)
        return out

    def pack_gradients(self, grads):
        """Flat gradient (in units) of stacked gradients key -> (depth, *shape)."""
        g = np.empty(self.size)
        with np.errstate(over="ignore", invalid="ignore"):     # (inf stays inf)
            for t, k, shape, off, size, unit in self.items:
                g[off:off + size] = np.asarray(grads[k][t], dtype=np.float64).ravel() * unit
        return g
