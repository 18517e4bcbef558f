"""Slow, plain NumPy/SciPy references for the test suite.

Nothing here is imported by ``fastlista``; nothing here imports ``fastlista``.
Every function follows the textbook definition literally, without any of the
package's tricks (Gram/GEMM choice, support awareness, blocking, Cython):
conventions are D (n_atoms, n_features), X (n_samples, n_features),
Z (n_samples, n_atoms), reconstruction Z @ D, and per sample
F(z) = 0.5 ||x - z D||^2 + lmbd ||z||_1.

Two variants run through the functions that take ``positive`` and ``lmbd``:

* ``positive=True``: the Lasso over non-negative codes, min_{z >= 0} F(z).
  Its prox is max(u - t, 0), its lambda_max is max(x D^T)_+, and its dual
  constraint is one-sided, (theta D^T)_j <= 1, so the dual point of the gap
  is theta = r / max(lmbd, max_j (r D^T)_j, 0); a code with a negative entry
  is infeasible (objective and gap +inf).
* ``lmbd`` a scalar or one value per sample (shape (n_samples,)).
"""
import numpy as np

__all__ = [
    "make_problem", "soft_thresholding", "objective", "gradient", "lambda_max",
    "duality_gap", "ista", "fista", "coordinate_descent", "solve_exact",
    "lipschitz", "lipschitz_support", "kkt_violation", "assert_kkt",
    "gap_terms_robust", "duality_gap_robust", "objective_robust",
    "strong_convexity", "lambda_max_robust", "solve_scaled", "duality_gap_batch",
    "per_sample", "orthonormal_dictionary",
    "make_dictionary_problem", "dictionary_bcd", "dictionary_surrogate",
    "match_atoms", "lasso_objective_exact", "lasso_suboptimality_exact",
]


# --------------------------------------------------------------------------
# problem generator
# --------------------------------------------------------------------------
def make_problem(n_samples=30, n_features=20, n_atoms=40, *, density=1.0,
                 noise=0.0, dtype=np.float64, seed=0):
    """Gaussian unit-norm atoms, Gaussian codes, x scaled so lambda_max = 1.

    Returns X (n_samples, n_features), D (n_atoms, n_features) in ``dtype``.
    ``density`` < 1 draws sparse codes (a Bernoulli mask), ``noise`` adds
    Gaussian noise of that relative level before the scaling.
    """
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((n_atoms, n_features))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    Z = rng.standard_normal((n_samples, n_atoms))
    if density < 1.0:
        Z *= rng.random((n_samples, n_atoms)) < density
    X = Z @ D
    if noise:
        X += noise * np.linalg.norm(X, axis=1, keepdims=True) / np.sqrt(n_features) \
            * rng.standard_normal(X.shape)
    # guard against an all-zero code row
    zero = ~np.any(X != 0, axis=1)
    X[zero] = rng.standard_normal((zero.sum(), n_features))
    X /= lambda_max(X, D)[:, None]
    return X.astype(dtype), D.astype(dtype)


# --------------------------------------------------------------------------
# Lasso toolkit
# --------------------------------------------------------------------------
def soft_thresholding(U, t, positive=False):
    """sign(u) * max(|u| - t, 0), elementwise, in the dtype of the result of
    NumPy's own arithmetic on (U, t). NaN propagates (np.sign(NaN) = NaN).
    ``positive``: max(u - t, 0), the prox of t ||.||_1 plus the indicator of
    z >= 0 (NaN propagates through np.maximum)."""
    U = np.asarray(U)
    if positive:
        return np.maximum(U - t, 0)
    return np.sign(U) * np.maximum(np.abs(U) - t, 0)


def per_sample(lmbd, n_samples, dtype=np.float64):
    """lmbd (a scalar or one a sample) as an array of shape (n_samples,)."""
    return np.broadcast_to(np.asarray(lmbd, dtype=dtype), (n_samples,))


def objective(X, D, lmbd, Z, positive=False):
    X, D, Z = (np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (X, D, Z))
    R = X - Z @ D
    F = 0.5 * np.sum(R * R, axis=1) + per_sample(lmbd, X.shape[0]) * np.sum(np.abs(Z), axis=1)
    if positive:
        F = np.where(np.any(Z < 0, axis=1), np.inf, F)
    return F


def gradient(X, D, Z):
    X, D, Z = (np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (X, D, Z))
    return Z @ D @ D.T - X @ D.T


def lambda_max(X, D, positive=False):
    """||x D^T||_inf per sample; max(x D^T)_+ with ``positive``."""
    X, D = (np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (X, D))
    C = X @ D.T
    if positive:
        return np.maximum(np.max(C, axis=1, initial=-np.inf), 0.0)
    return np.max(np.abs(C), axis=1, initial=0.0)


def duality_gap(X, D, lmbd, Z):
    """The gap of fastlista.duality_gap's docstring, term by term: r = x - zD,
    theta = r / max(lmbd, ||r D^T||_inf), Dual = 0.5||x||^2 - 0.5||x - lmbd theta||^2."""
    X, D, Z = (np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (X, D, Z))
    gaps = np.empty(X.shape[0])
    lms = per_sample(lmbd, X.shape[0])
    for i in range(X.shape[0]):
        x, z, lm = X[i], Z[i], lms[i]
        r = x - z @ D
        corr = np.max(np.abs(D @ r), initial=0.0)
        # u = lm theta: r itself when corr <= lm (lm = 0 included), else scaled
        u = r if corr <= lm else r * (lm / corr)
        primal = 0.5 * r @ r + lm * np.sum(np.abs(z))
        dual = 0.5 * x @ x - 0.5 * np.sum((x - u) ** 2)
        gaps[i] = primal - dual
    return gaps


# --------------------------------------------------------------------------
# Lipschitz constants
# --------------------------------------------------------------------------
def lipschitz(D):
    D = np.asarray(D, dtype=np.float64)
    return float(np.linalg.eigvalsh(D @ D.T)[-1])


def lipschitz_support(D, support):
    """L_S = largest eigenvalue of B_SS; 0.0 for an empty support.
    ``support`` (m,) gives a float, (N, m) gives an (N,) array."""
    D = np.asarray(D, dtype=np.float64)
    support = np.asarray(support, dtype=bool)
    if support.ndim == 2:
        return np.array([lipschitz_support(D, s) for s in support])
    if not support.any():
        return 0.0
    DS = D[support]
    return float(np.linalg.eigvalsh(DS @ DS.T)[-1])


# --------------------------------------------------------------------------
# solvers (batched over samples, plain loops over iterations)
# --------------------------------------------------------------------------
def _prep(X, D, Z0):
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    D = np.asarray(D, dtype=np.float64)
    Z = np.zeros((X.shape[0], D.shape[0])) if Z0 is None else \
        np.array(np.atleast_2d(Z0), dtype=np.float64)
    return X, D, Z


def ista(X, D, lmbd, n_iter, Z0=None, positive=False):
    """n_iter plain ISTA steps with step 1/L; returns codes and the objective
    after each step (shape (n_iter + 1, N), row 0 = start). ``lmbd`` a scalar
    or one a sample; ``positive``: the one-sided threshold max(u - t, 0)."""
    X, D, Z = _prep(X, D, Z0)
    L = lipschitz(D)
    lm = per_sample(lmbd, X.shape[0])[:, None]
    hist = [objective(X, D, lmbd, Z, positive)]
    for _ in range(n_iter):
        Z = soft_thresholding(Z - ((Z @ D - X) @ D.T) / L, lm / L, positive)
        hist.append(objective(X, D, lmbd, Z, positive))
    return Z, np.array(hist)


def fista(X, D, lmbd, n_iter, Z0=None):
    """n_iter FISTA steps (Beck & Teboulle), no restart."""
    X, D, Z = _prep(X, D, Z0)
    L = lipschitz(D)
    Y, t = Z.copy(), 1.0
    for _ in range(n_iter):
        Z_new = soft_thresholding(Y - ((Y @ D - X) @ D.T) / L, lmbd / L)
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        Y = Z_new + (t - 1.0) / t_new * (Z_new - Z)
        Z, t = Z_new, t_new
    return Z


def coordinate_descent(X, D, lmbd, n_sweeps, Z0=None, positive=False):
    """Cyclic coordinate descent, all samples at once, one atom at a time.
    An all-zero atom keeps a zero code. ``lmbd`` a scalar or one a sample;
    ``positive``: codes constrained >= 0."""
    X, D, Z = _prep(X, D, Z0)
    lm = per_sample(lmbd, X.shape[0])
    norms = np.sum(D * D, axis=1)
    R = X - Z @ D
    for _ in range(n_sweeps):
        for k in range(D.shape[0]):
            if norms[k] == 0.0:
                Z[:, k] = 0.0
                continue
            old = Z[:, k].copy()
            u = old + (R @ D[k]) / norms[k]
            Z[:, k] = soft_thresholding(u, lm / norms[k], positive)
            R -= np.outer(Z[:, k] - old, D[k])
    return Z


def solve_exact(X, D, lmbd, rel_gap=1e-15, max_sweeps=20000, positive=False):
    """High-accuracy solution by coordinate descent: runs until every
    sample's gap <= rel_gap * 0.5 ||x||^2 (or max_sweeps). ``lmbd`` a scalar
    or one a sample; ``positive``: the Lasso over z >= 0 (its one-sided gap)."""
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    D = np.asarray(D, dtype=np.float64)
    Z = np.zeros((X.shape[0], D.shape[0]))
    target = rel_gap * 0.5 * np.sum(X * X, axis=1)
    done = 0
    while done < max_sweeps:
        Z = coordinate_descent(X, D, lmbd, 20, Z0=Z, positive=positive)
        done += 20
        gap = (duality_gap_batch(X, D, lmbd, Z, positive=True)[0] if positive
               else duality_gap(X, D, per_sample(lmbd, X.shape[0]), Z))
        if np.all(gap <= target + 1e-300):
            break
    return Z


# --------------------------------------------------------------------------
# optimality conditions
# --------------------------------------------------------------------------
def kkt_violation(X, D, lmbd, Z):
    """Per sample, the largest violation of the Lasso KKT conditions,
    with c_k = d_k . r:  |c_k| - lmbd (positive part) where z_k = 0 and
    |c_k - lmbd sign(z_k)| where z_k != 0."""
    X, D, Z = (np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (X, D, Z))
    C = (X - Z @ D) @ D.T
    on = Z != 0
    viol_on = np.where(on, np.abs(C - lmbd * np.sign(Z)), 0.0)
    viol_off = np.where(on, 0.0, np.maximum(np.abs(C) - lmbd, 0.0))
    return np.maximum(viol_on, viol_off).max(axis=1, initial=0.0)


def assert_kkt(X, D, lmbd, Z, tol):
    """|d_k.r| <= lmbd (1 + tol) where z_k = 0, |d_k.r - lmbd sign z_k| <= tol
    lmbd where z_k != 0 (tol relative to lmbd; absolute when lmbd = 0)."""
    viol = kkt_violation(X, D, lmbd, Z)
    bound = tol * lmbd if lmbd > 0 else tol
    worst = int(np.argmax(viol)) if viol.size else 0
    assert np.all(viol <= bound), (
        f"KKT violated: max violation {viol.max():.3e} (sample {worst}) > {bound:.3e}")


def oista(X, D, lmbd, n_iter, Z0=None):
    """Oracle ISTA (Ablin et al. 2019), one sample at a time: with S the
    support of the current iterate, try the step 1/L_S; keep the new iterate
    if its support stays inside S, else take the ISTA step 1/L. An empty S
    takes 1/L. Returns codes and the steps taken, shape (n_iter, N)."""
    X, D, Z = _prep(X, D, Z0)
    L = lipschitz(D)
    steps = np.empty((n_iter, X.shape[0]))
    for i in range(X.shape[0]):
        x, z = X[i], Z[i]
        for t in range(n_iter):
            grad = (z @ D - x) @ D.T
            S = z != 0
            step = 1.0 / L
            if S.any():
                step_S = 1.0 / lipschitz_support(D, S)
                cand = soft_thresholding(z - step_S * grad, lmbd * step_S)
                if not np.any((cand != 0) & ~S):
                    z, steps[t, i] = cand, step_S
                    continue
            z = soft_thresholding(z - step * grad, lmbd * step)
            steps[t, i] = step
        Z[i] = z
    return Z, steps


# --------------------------------------------------------------------------
# unfolded networks with one weight matrix (SLISTA, ALISTA)
# --------------------------------------------------------------------------
def residual_network(X, D, W, steps, thresholds, lmbd, positive=False):
    """Forward pass of z_{t+1} = ST(z_t - a_t (z_t D - x) W^T, lmbd thr_t)
    from z_0 = 0, one layer per entry of ``steps`` (a_t) and ``thresholds``
    (thr_t); ``lmbd`` a scalar or one a sample. Returns the codes
    [Z_0, ..., Z_T] and the pre-activations and thresholds [(U_t, S_t)] of
    the T layers, all float64."""
    X, D = (np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (X, D))
    W = np.asarray(W, dtype=np.float64)
    lm = per_sample(lmbd, X.shape[0])[:, None]
    Z = [np.zeros((X.shape[0], D.shape[0]))]
    layers = []
    for a, thr in zip(steps, thresholds):
        U = Z[-1] - float(a) * (Z[-1] @ D - X) @ W.T
        S = lm * float(thr)
        layers.append((U, S))
        Z.append(soft_thresholding(U, S, positive))
    return Z, layers


def residual_network_grad(X, D, W, steps, thresholds, lmbd, loss="unsupervised",
                          S=None, positive=False):
    """Loss of ``residual_network``'s output and its gradients in the steps
    and the thresholds, by the chain rule written out in NumPy.

    The loss is the mean over samples of F_x(z_T) (``"unsupervised"``) or of
    1/2 ||z_T - s||^2 (``"supervised"``, targets S). With g = d loss / d
    z_{t+1} and w = g on supp(z_{t+1}) (ST has slope 1 there, 0 elsewhere):
    d a_t = -<w, (z_t D - x) W^T>, d thr_t = -sum_i lmbd_i <w_i, sign(z_{t+1,i})>,
    d z_t = w - a_t (w W) D^T. Returns (loss, d_steps (T,), d_thresholds (T,)).
    """
    X, D = (np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (X, D))
    W = np.asarray(W, dtype=np.float64)
    N = X.shape[0]
    lm = per_sample(lmbd, N)[:, None]
    Z, _ = residual_network(X, D, W, steps, thresholds, lmbd, positive)
    R = Z[-1] @ D - X
    if loss == "unsupervised":
        f = np.mean(0.5 * np.sum(R * R, axis=1) + lm[:, 0] * np.abs(Z[-1]).sum(axis=1))
        G = (R @ D.T + lm * np.sign(Z[-1])) / N
    else:
        E = Z[-1] - np.asarray(S, dtype=np.float64)
        f = np.mean(0.5 * np.sum(E * E, axis=1))
        G = E / N
    T = len(steps)
    d_steps, d_thresholds = np.zeros(T), np.zeros(T)
    for t in range(T - 1, -1, -1):
        w = G * (Z[t + 1] != 0)
        d_thresholds[t] = -np.sum(lm * w * np.sign(Z[t + 1]))
        d_steps[t] = -np.sum(w * ((Z[t] @ D - X) @ W.T))
        G = w - float(steps[t]) * (w @ W) @ D.T
    return f, d_steps, d_thresholds


# --------------------------------------------------------------------------
# scale-robust duality gap (any finite float64 or float32 input, 1e+-300)
# --------------------------------------------------------------------------
def _exponent(A):
    """e with max|A| in [2**(e-1), 2**e) (0 for an all-zero or empty A)."""
    A = np.asarray(A, dtype=np.float64)
    top = np.max(np.abs(A)) if A.size else 0.0
    if not top > 0 or not np.isfinite(top):
        return 0
    return int(np.frexp(top)[1])


def gap_terms_robust(X, D, lmbd, Z, c_rel=None, positive=False):
    """Primal objective, duality gap and size of each sample, in long double.

    The gap of DESIGN section 2 (``r = x - zD``, ``theta = r / max(lmbd,
    ||r D^T||_inf)``, ``gap = F(z) - (0.5||x||^2 - 0.5||x - lmbd theta||^2)``),
    computed sample by sample in ``np.longdouble`` after scaling x and D by
    exact powers of two (x by its own max, D by its max) so that no square
    overflows or underflows, then scaled back exactly. Returns three
    ``np.longdouble`` arrays of shape (n_samples,): ``primal`` (= F(z)),
    ``gap`` (clipped at 0) and ``size`` = 0.5 T^2 + lmbd ||z||_1 with
    T = ||x|| + sum_j |z_j| ||d_j||, the magnitude of the terms the gap is
    computed from (so ``1e-10 * size`` is a generous rounding allowance for
    any float64 gap). Values beyond the float64 range are kept (long double
    reaches 1e4932); NaN or inf in Z give NaN or inf, never a warning.

    With ``c_rel`` (a relative accuracy of the correlations ``c = r D^T``,
    computed by any method from terms of size T max_j ||d_j||), a fourth
    array: how much the gap may move when c is off by ``c_rel T max||d_j||``
    (at lmbd = 0: the difference of the two branches, u = r or u = 0, when
    the largest correlation is within that rounding of 0).
    The dual point divides by ``max(lmbd, ||c||_inf)``: when lmbd is near or
    below the rounding of c (x almost orthogonal to the atoms, lmbd ~ 0)
    no floating-point computation determines the gap better than that::

        (||x|| ||r|| + ||r||^2) min(1, 2 c_rel T max||d_j|| / max(lmbd, ||c||_inf))

    (the dual variable u = lmbd theta is r itself when ||c||_inf <= lmbd,
    lmbd = 0 included).

    ``lmbd`` is a scalar or one value a sample. With ``positive`` (codes
    constrained >= 0) the dual constraint is one-sided: ``theta = r /
    max(lmbd, max_j (r D^T)_j, 0)``; a code with a negative entry is
    infeasible: primal and gap +inf (size as usual).
    """
    ld = np.longdouble
    X, Z = np.atleast_2d(np.asarray(X)), np.atleast_2d(np.asarray(Z))
    D = np.asarray(D)
    N, m = Z.shape
    eD = _exponent(D)
    Ds = np.ldexp(D.astype(ld), -eD)                  # max|D_s| in [0.5, 1)
    lms = per_sample(lmbd, N, ld)
    dnorm = np.sqrt(np.sum(Ds * Ds, axis=1))
    dmax = np.max(dnorm, initial=ld(0))
    primal, gap, size, sens = (np.zeros(N, dtype=ld) for _ in range(4))
    with np.errstate(all="ignore"):
        for i in range(N):
            ex = _exponent(X[i])
            x = np.ldexp(X[i].astype(ld), -ex)
            z = np.ldexp(Z[i].astype(ld), eD - ex)    # x = 2^ex x_s, D = 2^eD D_s
            lam = np.ldexp(lms[i], -ex - eD)         # F = 4^ex F_s
            r = x - z @ Ds
            l1 = np.sum(np.abs(z))
            rr = r @ r
            p = ld(0.5) * rr + lam * l1
            if positive:
                corr = max(np.max(Ds @ r), ld(0)) if m else ld(0)
            else:
                corr = np.max(np.abs(Ds @ r)) if m else ld(0)
            # u = lam r / max(lam, corr): r itself when corr <= lam (lam = 0
            # included: r is then dual feasible), else scaled into the set
            scale = max(lam, corr)
            ratio = ld(1) if corr <= lam else lam / scale
            dual = ratio * (x @ r) - ld(0.5) * ratio * ratio * rr if ratio > 0 else ld(0)
            g = p - dual
            g = g if not g < 0 else ld(0)
            if positive and np.any(z < 0):
                p = g = ld(np.inf)
            T = np.sqrt(x @ x) + np.abs(z) @ dnorm
            s = ld(0.5) * T * T + lam * l1
            if c_rel is not None and lam > 0:
                e = min(ld(1), 2 * ld(c_rel) * T * dmax / scale)
                sens[i] = np.ldexp((np.sqrt(x @ x) * np.sqrt(rr) + rr) * e, 2 * ex)
            elif c_rel is not None and corr <= 2 * ld(c_rel) * T * dmax:
                # lam = 0 and no correlation above its rounding: whether u = r
                # is feasible (ratio 1) or only u = 0 (ratio 0) is the sign of
                # a rounding error; the gap is one of the two
                sens[i] = np.ldexp(abs(x @ r - ld(0.5) * rr), 2 * ex)
            primal[i], gap[i], size[i] = (np.ldexp(v, 2 * ex) for v in (p, g, s))
    if c_rel is not None:
        return primal, gap, size, sens
    return primal, gap, size


def duality_gap_robust(X, D, lmbd, Z, positive=False):
    """Duality gap per sample (see :func:`gap_terms_robust`) as float64:
    exact to ~1e-18 relatively of the size of its terms, at any scale; inf
    where the true gap exceeds the float64 range."""
    with np.errstate(over="ignore"):
        return gap_terms_robust(X, D, lmbd, Z, positive=positive)[1].astype(np.float64)


def objective_robust(X, D, lmbd, Z, positive=False):
    """F(z) per sample in long double (any scale, no overflow)."""
    return gap_terms_robust(X, D, lmbd, Z, positive=positive)[0]


def strong_convexity(D):
    """mu = smallest eigenvalue of D D^T (> 0 iff the atoms are independent)."""
    D = np.asarray(D, dtype=np.float64)
    if D.shape[0] == 0:
        return 0.0
    return float(max(np.linalg.eigvalsh(D @ D.T)[0], 0.0))


def lambda_max_robust(X, D, positive=False):
    """||x D^T||_inf per sample in long double, at any scale (max(x D^T)_+
    with ``positive``)."""
    ld = np.longdouble
    X = np.atleast_2d(np.asarray(X))
    D = np.asarray(D)
    eD = _exponent(D)
    Ds = np.ldexp(D.astype(ld), -eD)
    out = np.zeros(X.shape[0], dtype=ld)
    if D.shape[0] == 0:
        return out
    for i in range(X.shape[0]):
        ex = _exponent(X[i])
        c = Ds @ np.ldexp(X[i].astype(ld), -ex)
        top = max(np.max(c), ld(0)) if positive else np.max(np.abs(c))
        out[i] = np.ldexp(top, ex + eD)
    return out


def solve_scaled(X, D, lmbd, n_sweeps=60, Z0=None, positive=False):
    """Lasso codes by cyclic coordinate descent, at any scale.

    Each sample is solved in float64 on (x / 2^ex, D / 2^eD, lmbd / 2^(ex +
    eD)), with 2^ex and 2^eD near max|x| and max|D|, and its codes are
    scaled back in long double (they may lie beyond the float64 range).
    Atoms whose scaled squared norm underflows are treated as zero. A fixed
    number of sweeps: an approximation whose accuracy ``gap_terms_robust``
    measures. ``Z0`` (optional) is a warm start in the original scale.
    ``lmbd`` a scalar or one a sample; ``positive``: codes constrained >= 0.
    Returns an (n_samples, n_atoms) long double array.
    """
    ld = np.longdouble
    X = np.atleast_2d(np.asarray(X))
    D = np.asarray(D)
    N, m = X.shape[0], D.shape[0]
    eD = _exponent(D)
    Ds = np.ldexp(D.astype(np.float64), -eD)
    ex = np.array([_exponent(x) for x in X], dtype=int)
    with np.errstate(all="ignore"):
        Xs = np.ldexp(X.astype(np.float64), -ex[:, None])
        lam = np.ldexp(np.array(per_sample(lmbd, N)), -ex - eD)
        if Z0 is None:
            Z = np.zeros((N, m))
        else:
            Z = np.ldexp(np.atleast_2d(np.asarray(Z0)).astype(ld),
                         (eD - ex)[:, None]).astype(np.float64)
            Z[~np.isfinite(Z)] = 0.0
            if positive:
                Z = np.maximum(Z, 0.0)
        norms = np.sum(Ds * Ds, axis=1)
        R = Xs - Z @ Ds
        for _ in range(n_sweeps):
            for k in range(m):
                if not norms[k] > 0:
                    Z[:, k] = 0.0
                    continue
                old = Z[:, k].copy()
                u = old + (R @ Ds[k]) / norms[k]
                Z[:, k] = soft_thresholding(u, lam / norms[k], positive)
                R -= np.outer(Z[:, k] - old, Ds[k])
        return np.ldexp(Z.astype(ld), (ex - eD)[:, None])


def duality_gap_batch(X, D, lmbd, Z, positive=False):
    """The duality gap in long double, vectorised over samples, for large
    batches at moderate scales (no rescaling: |entries| within ~1e+-1000).
    Returns (gap, size) as long double arrays; see :func:`gap_terms_robust`
    (``lmbd`` a scalar or one a sample, ``positive`` its one-sided gap)."""
    ld = np.longdouble
    X, Z = (np.atleast_2d(np.asarray(a)).astype(ld) for a in (X, Z))
    D = np.asarray(D).astype(ld)
    lm = np.array(per_sample(lmbd, X.shape[0], ld))
    with np.errstate(all="ignore"):
        R = X - Z @ D
        rr = np.sum(R * R, axis=1)
        l1 = np.sum(np.abs(Z), axis=1)
        primal = ld(0.5) * rr + lm * l1
        C = R @ D.T
        if positive:
            corr = np.maximum(np.max(C, axis=1, initial=ld(-np.inf)), ld(0))
        else:
            corr = np.max(np.abs(C), axis=1, initial=ld(0))
        # r itself when corr <= lm (lm = 0 included), else scaled into the set
        ratio = np.where(corr <= lm, ld(1), lm / np.where(corr > 0, corr, 1))
        dual = ratio * np.sum(X * R, axis=1) - ld(0.5) * ratio * ratio * rr
        gap = np.maximum(primal - dual, ld(0))
        if positive:
            gap[np.any(Z < 0, axis=1)] = ld(np.inf)
        T = np.sqrt(np.sum(X * X, axis=1)) + np.abs(Z) @ np.sqrt(np.sum(D * D, axis=1))
        size = ld(0.5) * T * T + lm * l1
    return gap, size


def orthonormal_dictionary(n_atoms, n_features, seed=0):
    """D with orthonormal rows (n_atoms <= n_features): D D^T = I, so the
    Lasso is separable: z = ST(x D^T, lmbd), and z = max(x D^T - lmbd, 0)
    over z >= 0."""
    assert n_atoms <= n_features
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n_features, n_atoms)))
    return np.ascontiguousarray(Q.T)


# --------------------------------------------------------------------------
# dictionary learning
# --------------------------------------------------------------------------
def make_dictionary_problem(n_samples=2000, n_features=20, n_atoms=30, n_nonzero=3,
                            noise=0.01, seed=0):
    """Signals from a known dictionary: X = Z D + noise.

    D has Gaussian unit-norm atoms; every code has ``n_nonzero`` entries at
    random atoms, of random sign and magnitude in [1, 2]. Returns X
    (n_samples, n_features), D (n_atoms, n_features), Z (n_samples, n_atoms).
    """
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((n_atoms, n_features))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    Z = np.zeros((n_samples, n_atoms))
    for i in range(n_samples):
        idx = rng.choice(n_atoms, n_nonzero, replace=False)
        Z[i, idx] = rng.choice([-1.0, 1.0], n_nonzero) * rng.uniform(1, 2, n_nonzero)
    X = Z @ D + noise * rng.standard_normal((n_samples, n_features))
    return X, D, Z


def dictionary_surrogate(D, A, B):
    """1/2 tr(D^T A D) - tr(D^T B) (with B = Z^T X, A = Z^T Z): the
    objective of the dictionary step, 1/2 ||X - Z D||^2 up to a constant."""
    D = np.asarray(D, dtype=np.float64)
    return 0.5 * np.trace(D.T @ A @ D) - np.trace(D.T @ B)


def dictionary_bcd(D, A, B, n_passes=1, positive=False):
    """Block coordinate descent on dictionary_surrogate, atom after atom,
    each atom restricted to the unit ball (and to >= 0 with ``positive``).

    Atom k minimises 1/2 A_kk ||d||^2 - <B_k - sum_{j != k} A_kj d_j, d>,
    whose minimiser over the ball is the projection of
    u = (B_k - sum_{j != k} A_kj d_j) / A_kk (with ``positive``, of
    max(u, 0): the ball and the orthant are both symmetric). Atoms with
    A_kk <= 0 (unused) are left alone, as is an atom whose minimiser is 0.
    """
    D = np.array(D, dtype=np.float64)
    m = D.shape[0]
    for _ in range(n_passes):
        for k in range(m):
            if not A[k, k] > 0:
                continue
            others = np.zeros(D.shape[1])
            for j in range(m):
                if j != k:
                    others += A[k, j] * D[j]
            u = (B[k] - others) / A[k, k]
            if positive:
                u = np.maximum(u, 0.0)
            norm = np.sqrt(np.sum(u * u))
            if norm == 0:
                continue
            D[k] = u / max(norm, 1.0)
    return D


def match_atoms(D, D_true):
    """Absolute correlations of the atoms of D_true with their best match in
    D, one to one (Hungarian assignment on |D_true D^T| of unit atoms)."""
    from scipy.optimize import linear_sum_assignment

    Dn = D / np.linalg.norm(D, axis=1, keepdims=True)
    Tn = D_true / np.linalg.norm(D_true, axis=1, keepdims=True)
    C = np.abs(Tn @ Dn.T)
    rows, cols = linear_sum_assignment(-C)
    return C[rows, cols]


# --------------------------------------------------------------------------
# exact (rational) solutions of tiny problems
# --------------------------------------------------------------------------

def _solve_rational(A, b):
    """x with A x = b for a square matrix of Fractions (Gauss-Jordan with
    exact pivots), or None when A is singular."""
    from fractions import Fraction
    n = len(b)
    M = [list(row) + [b[i]] for i, row in enumerate(A)]
    for k in range(n):
        pivot = next((i for i in range(k, n) if M[i][k] != 0), None)
        if pivot is None:
            return None
        M[k], M[pivot] = M[pivot], M[k]
        for i in range(n):
            if i != k and M[i][k] != 0:
                f = M[i][k] / M[k][k]
                M[i] = [a - f * c for a, c in zip(M[i], M[k])]
    return [M[i][n] / M[i][i] if n else Fraction(0) for i in range(n)]


def lasso_objective_exact(x, D, lmbd, z):
    """F_x(z) in rational arithmetic, from the float entries of x
    (n_features,), D (n_atoms, n_features), lmbd and z (n_atoms,) as they
    are."""
    from fractions import Fraction
    xq = [Fraction(float(v)) for v in x]
    zq = [Fraction(float(v)) for v in z]
    Dq = [[Fraction(float(v)) for v in row] for row in D]
    r = [xi - sum(zq[j] * Dq[j][i] for j in range(len(zq))) for i, xi in enumerate(xq)]
    return sum(v * v for v in r) / 2 + Fraction(float(lmbd)) * sum(abs(v) for v in zq)


def lasso_suboptimality_exact(x, D, lmbd, z, positive=False):
    """F_x(z) - min F_x in rational arithmetic, from the float entries of
    x (n_features,), D (n_atoms, n_features), lmbd and z (n_atoms,) as they
    are, for a D of full row rank and a few atoms (the minimiser is unique:
    the sign pattern whose KKT conditions hold, found by enumerating all
    3**n_atoms, or 2**n_atoms with ``positive``)."""
    import itertools
    from fractions import Fraction
    xq = [Fraction(float(v)) for v in x]
    Dq = [[Fraction(float(v)) for v in row] for row in D]
    lm = Fraction(float(lmbd))
    m = len(Dq)
    c = [sum(a * b for a, b in zip(xq, d)) for d in Dq]
    B = [[sum(a * b for a, b in zip(di, dj)) for dj in Dq] for di in Dq]

    for signs in itertools.product((0, 1) if positive else (-1, 0, 1), repeat=m):
        S = [j for j in range(m) if signs[j]]
        zS = _solve_rational([[B[i][j] for j in S] for i in S],
                             [c[i] - lm * signs[i] for i in S])
        if zS is None or any((v > 0) != (signs[j] > 0) or v == 0 for v, j in zip(zS, S)):
            continue
        w = [Fraction(0)] * m
        for v, j in zip(zS, S):
            w[j] = v
        g = [c[j] - sum(w[k] * B[k][j] for k in range(m)) for j in range(m)]
        if all((g[j] <= lm) if positive else (abs(g[j]) <= lm)
               for j in range(m) if not signs[j]):
            if positive and any(v < 0 for v in z):
                return float("inf")
            return lasso_objective_exact(x, D, lmbd, z) - lasso_objective_exact(x, D, lmbd, w)
    raise ValueError("no sign pattern satisfies the KKT conditions: is D of full row rank?")
