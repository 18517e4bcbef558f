"""Property-based tests of the kernels (hypothesis, derandomised).

Each property is checked on generated inputs against an identity or an
independent NumPy computation: soft-thresholding identities, ISTA never
increasing the objective, the duality gap bounding F - F*, L_S <= L and its
monotonicity in S, L_S against eigvalsh on spectra built to fool an
eigenvalue iteration, the sparse and dense gradient paths of the solvers and
of the unfolded networks against a NumPy ISTA, float32 against float64.
"""
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

import reference as ref  # noqa: E402
from fastlista import (Lista, alista_weights, duality_gap,  # noqa: E402
                       lasso_objective, lipschitz, soft_thresholding, solve_lasso)
from fastlista import _solvers as solvers  # noqa: E402
from fastlista._kernels import _gemm, _unrolled  # noqa: E402
from fastlista._networks import _execution as execution  # noqa: E402

settings.register_profile("fastlista", derandomize=True, deadline=None,
                          max_examples=60, print_blob=True)
settings.load_profile("fastlista")

finite64 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
finite32 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def problems(draw, max_atoms=12, max_features=8, max_samples=6):
    """A random dictionary, signals and a relative lmbd."""
    seed = draw(st.integers(0, 2**32 - 1))
    m = draw(st.integers(1, max_atoms))
    n = draw(st.integers(1, max_features))
    N = draw(st.integers(1, max_samples))
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((m, n))
    D /= np.maximum(np.linalg.norm(D, axis=1, keepdims=True), 1e-12)
    X = rng.standard_normal((N, n))
    rel = draw(st.floats(0.01, 1.2))
    lmbd = rel * float(np.abs(X @ D.T).max())
    return X, D, lmbd


@given(arrays(np.float64, st.integers(0, 40), elements=finite64),
       st.floats(0, 1e6, allow_nan=False))
def test_soft_thresholding_identities_float64(u, t):
    out = soft_thresholding(u, t)
    # shrinkage, sign, exact zero iff |u| <= t, equal to NumPy (as values:
    # fastlista's zeros are +0, NumPy's sign(u) * max(...) gives -0 for u < 0)
    assert np.all(np.abs(out) <= np.abs(u))
    assert np.all((out == 0) | (np.sign(out) == np.sign(u)))
    np.testing.assert_array_equal(out == 0, np.abs(u) <= t)
    np.testing.assert_array_equal(out, ref.soft_thresholding(u, t))
    # odd
    np.testing.assert_array_equal(soft_thresholding(-u, t), -out)


@given(arrays(np.float32, st.integers(0, 40), elements=finite32),
       st.floats(0, 1e6, allow_nan=False, width=32))
def test_soft_thresholding_identities_float32(u, t):
    t = np.float32(t)
    out = soft_thresholding(u, t)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out == 0, np.abs(u) <= t)
    np.testing.assert_array_equal(out, ref.soft_thresholding(u, t))


@given(arrays(np.float64, st.integers(0, 40), elements=finite64),
       st.floats(0, 1e6, allow_nan=False))
def test_soft_thresholding_zeros_are_positive_and_the_rest_numpys_bits(u, t):
    """docs/reliability.md: equal to NumPy's sign(u) max(|u| - t, 0) as
    values; bit for bit away from 0, and every zero +0 (NumPy's product
    gives -0 for a negative u, which assert_array_equal does not see)."""
    out = soft_thresholding(u, t)
    expected = ref.soft_thresholding(u, t)
    assert not np.any(np.signbit(out[out == 0]))
    assert out[out != 0].tobytes() == expected[out != 0].tobytes()


@given(arrays(np.float64, st.integers(1, 30), elements=finite64),
       arrays(np.float64, st.integers(1, 30), elements=finite64),
       st.floats(0, 1e3, allow_nan=False))
def test_soft_thresholding_non_expansive(u, v, t):
    k = min(len(u), len(v))
    u, v = u[:k], v[:k]
    diff = np.abs(soft_thresholding(u, t) - soft_thresholding(v, t))
    assert np.all(diff <= np.abs(u - v) * (1 + 4 * np.finfo(float).eps) + 1e-300)


@given(problems(), st.sampled_from(["ista", "oista", "backtracking"]))
def test_descent_methods_never_increase_objective(problem, method):
    X, D, lmbd = problem
    res = solve_lasso(X, D, lmbd, method=method, tol=0, max_iter=40,
                      record_history=True)
    obj = np.atleast_2d(res.history["objective"].T).T
    increase = np.diff(obj, axis=0)
    assert np.all(increase <= 1e-12 * np.maximum(np.abs(obj[:-1]), 1e-300))
    # the recorded objective is the objective of the returned codes
    np.testing.assert_allclose(obj[-1], lasso_objective(X, D, lmbd, res.codes),
                               rtol=1e-10, atol=1e-14)


@given(problems())
def test_duality_gap_bounds_suboptimality(problem):
    X, D, lmbd = problem
    Z_star = ref.solve_exact(X, D, lmbd)
    F_star = ref.objective(X, D, lmbd, Z_star)
    Z = solve_lasso(X, D, lmbd, method="ista", tol=0, max_iter=5).codes
    gap = duality_gap(X, D, lmbd, Z)
    assert np.all(gap >= 0)
    assert np.all(lasso_objective(X, D, lmbd, Z) - F_star <= gap + 1e-10)


@given(st.integers(0, 2**32 - 1), st.integers(1, 30), st.integers(1, 12))
def test_support_lipschitz_bounded_and_monotone(seed, m, n):
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((m, n))
    L = lipschitz(D)
    S = rng.random(m) < 0.5
    T = S | (rng.random(m) < 0.5)           # S is a subset of T
    L_S, L_T = lipschitz(D, support=np.stack([S, T]))
    assert L_S <= L_T * (1 + 1e-9) + 1e-12
    assert L_T <= L * (1 + 1e-9) + 1e-12
    B = D @ D.T
    for mask, value in ((S, L_S), (T, L_T)):
        expected = np.linalg.eigvalsh(B[np.ix_(mask, mask)])[-1] if mask.any() else 0.0
        assert value == pytest.approx(expected, rel=1e-7, abs=1e-12)


@st.composite
def structured_dictionaries(draw):
    """Dictionaries whose B_SS has the spectra that fool an eigenvalue
    iteration: duplicated atoms (the top eigenvector spread over columns of
    small diagonal), equal or clustered top singular values, one atom a
    hair longer than orthonormal others, a top eigenvalue repeated in a
    rotated basis, unions of orthonormal bases (LAPACK's bisection failed on
    the last two), and plain random ones."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["duplicated", "clustered", "spike", "rotated", "union",
                                 "random"]))
    m = draw(st.integers(1, 40))
    if kind == "rotated":
        # the top eigenvalue repeated in a basis that is not the canonical one
        n = m
        Q, _ = np.linalg.qr(rng.standard_normal((m, m)))
        lam = np.ones(m)
        lam[rng.random(m) < 0.3] = rng.uniform(0.0, 1.0)
        D = (Q * np.sqrt(lam)) @ Q.T
    elif kind == "union":
        # orthonormal bases stacked: D^T D = p I
        from scipy.fft import dct

        n = max(m // 2, 1)
        D = np.vstack([np.eye(n), dct(np.eye(n), norm="ortho", axis=0)])
        m = D.shape[0]
    elif kind == "duplicated":
        n = draw(st.integers(1, 6))
        base = rng.standard_normal((draw(st.integers(1, 4)), n))
        D = base[rng.integers(0, len(base), m)] * rng.choice([-1.0, 1.0], (m, 1))
        D *= rng.choice([1.0, rng.uniform(0.1, 1.0)], (m, 1))
    elif kind == "clustered":
        n = draw(st.integers(2, 12))
        r = min(m, n)
        gap = draw(st.sampled_from([0.0, 1e-12, 1e-9, 1e-6, 1e-3]))
        sv = np.sort(rng.uniform(0.1, 0.9, r))[::-1]
        sv[:2] = [1.0, 1.0 - gap][:min(r, 2)]
        U, _ = np.linalg.qr(rng.standard_normal((m, m)))
        V, _ = np.linalg.qr(rng.standard_normal((n, n)))
        D = (U[:, :r] * sv) @ V[:, :r].T
    elif kind == "spike":
        n = m
        D = np.eye(m)
        D[rng.integers(m)] *= np.sqrt(1 + draw(st.sampled_from([1e-8, 1e-4, 0.5])))
    else:
        n = draw(st.integers(1, 12))
        D = rng.standard_normal((m, n))
    S = rng.random((3, m)) < draw(st.sampled_from([0.2, 0.6, 1.0]))
    return D, S


@given(structured_dictionaries())
def test_support_lipschitz_is_the_top_eigenvalue_of_any_spectrum(case):
    # every path (closed forms, the squaring bracket up to 16 atoms, LAPACK
    # beyond) against eigvalsh, to the default tol of 1e-10 (and rounding)
    D, S = case
    B = D @ D.T
    expected = [np.linalg.eigvalsh(B[np.ix_(s, s)])[-1] if s.any() else 0.0 for s in S]
    scale = max(np.max(np.diag(B)), 1e-300)
    np.testing.assert_allclose(lipschitz(D, support=S), expected, rtol=1e-9,
                               atol=1e-13 * scale)


@pytest.mark.parametrize("shape", [(48, 12), (20, 16)])
@pytest.mark.parametrize("rel_lmbd", [0.9, 0.3, 0.01])
@given(seed=st.integers(0, 2**32 - 1), own_gemm=st.sampled_from(_gemm.GEMM_KERNELS),
       positive=st.booleans(), dtype=st.sampled_from([np.float64, np.float32]))
@settings(max_examples=15)
def test_sparse_and_dense_paths_match_numpy_ista(rel_lmbd, shape, seed, own_gemm,
                                                 positive, dtype):
    # rel_lmbd 0.9 keeps the iterates very sparse (gather of rows of B),
    # 0.01 dense: two GEMMs through D for 48 atoms of 12 features (with
    # fastlista's GEMM, ISTA's step is taken inside the second), one through
    # the Gram matrix for 20 atoms of 16: all equal a NumPy ISTA.
    rng = np.random.default_rng(seed)
    D = rng.standard_normal(shape)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = rng.standard_normal((70, shape[0])) @ D
    X /= np.abs(X @ D.T).max(axis=1, keepdims=True)
    default, solvers._OWN_GEMM = solvers._OWN_GEMM, own_gemm
    try:
        Z = solve_lasso(X.astype(dtype), D.astype(dtype), rel_lmbd, method="ista",
                        tol=0, max_iter=25, positive=positive).codes
    finally:
        solvers._OWN_GEMM = default
    Z_ref, _ = ref.ista(X, D, rel_lmbd, n_iter=25, positive=positive)
    assert Z.dtype == dtype
    tol = 1e-9 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(Z, Z_ref, rtol=tol, atol=max(1e-12, tol * np.abs(Z_ref).max()))


@given(seed=st.integers(0, 2**32 - 1), n_atoms=st.integers(1, 600),
       n_features=st.integers(1, 12), rel_lmbd=st.sampled_from([0.95, 0.6, 0.2]),
       dtype=st.sampled_from([np.float64, np.float32]), positive=st.booleans(),
       own_gemm=st.sampled_from(_gemm.GEMM_KERNELS),
       gather=st.sampled_from(_unrolled.GATHER_KERNELS))
@settings(max_examples=40)
def test_network_rows_match_numpy_ista(seed, n_atoms, n_features, rel_lmbd, dtype,
                                       positive, own_gemm, gather):
    # an untrained SLISTA network is ISTA with step 1/L: its sparse layers
    # threshold and compact rows of any length (one span of the row kernels
    # is 256 atoms, one word of the hand kernels' flags 64) through each
    # kernel the CPU runs (portable, AVX2, AVX-512), its dense ones go
    # through GEMMs (fastlista's or BLAS's)
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((n_atoms, n_features))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = rng.standard_normal((9, n_features))
    lmbd = rel_lmbd * float(np.abs(X @ D.T).max())
    net = Lista(D.astype(dtype), lmbd, 4, parametrization="step", positive=positive)
    Z_ref, _ = ref.ista(X, D, lmbd, n_iter=4, positive=positive)
    default = execution._OWN_GEMM, execution._GATHER
    execution._OWN_GEMM = own_gemm
    execution._GATHER = gather
    try:
        Z = net.transform(X.astype(dtype))
    finally:
        execution._OWN_GEMM, execution._GATHER = default
    assert Z.dtype == dtype
    tol = 1e-8 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(Z, Z_ref, rtol=tol, atol=tol * np.abs(Z_ref).max())


def _relative_margins(layers, positive):
    """Per sample, the smallest relative distance of a pre-activation to its
    threshold over the layers: min | |u| - s | / (|u| + s) (u - s with
    ``positive``), where a rounding of u can move an entry in or out of the
    support (where u = s = 0, a zero step's exact 0, there is none to keep)."""
    out = np.inf
    for U, S in layers:
        num = np.abs((U if positive else np.abs(U)) - S)
        den = np.abs(U) + np.broadcast_to(S, U.shape)
        gap = np.divide(num, den, out=np.full(U.shape, np.inf), where=den > 0)
        out = np.minimum(out, gap.min(axis=1, initial=np.inf))
    return out


@pytest.mark.parametrize("loss", ["unsupervised", "supervised"])
@pytest.mark.parametrize("positive", [False, True])
def test_reference_chain_rule_is_finite_differences(loss, positive):
    # the NumPy chain rule below checks the networks; it is itself checked
    # here against central differences of the NumPy forward pass, at a point
    # whose pre-activations stay 1e-4 (relative) away from their thresholds
    # (each difference moves one step or threshold by 1e-5 of itself)
    rng = np.random.default_rng(5)
    D = rng.standard_normal((15, 6))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = rng.standard_normal((7, 6))
    W = rng.standard_normal((15, 6)) * 0.3 + D
    lmbd = 0.2 * float(np.abs(X @ D.T).max()) * rng.uniform(0.5, 1.5, 7)
    S = rng.standard_normal((7, 15)) * 0.2
    L = np.linalg.norm(D, 2) ** 2
    steps, thresholds = rng.uniform(0.5, 1.2, 5) / L, rng.uniform(0.5, 1.2, 5) / L
    _, layers = ref.residual_network(X, D, W, steps, thresholds, lmbd, positive)
    assert _relative_margins(layers, positive).min() > 1e-4
    f, d_steps, d_thr = ref.residual_network_grad(X, D, W, steps, thresholds, lmbd,
                                                  loss=loss, S=S, positive=positive)
    assert np.count_nonzero(d_steps) == 5 and np.count_nonzero(d_thr) == 5
    for which, grad in ((0, d_steps), (1, d_thr)):
        for t in range(5):
            h = 1e-5 * (steps, thresholds)[which][t]
            values = []
            for sign in (1, -1):
                moved = [np.array(steps), np.array(thresholds)]
                moved[which][t] += sign * h
                values.append(ref.residual_network_grad(X, D, W, *moved, lmbd, loss=loss,
                                                        S=S, positive=positive)[0])
            fd = (values[0] - values[1]) / (2 * h)
            assert fd == pytest.approx(grad[t], rel=1e-6, abs=1e-9 * np.abs(grad).max())


@given(seed=st.integers(0, 2**32 - 1), n_atoms=st.integers(1, 300),
       n_features=st.integers(1, 12), n_samples=st.integers(1, 48),
       n_layers=st.integers(1, 7), rel_lmbd=st.sampled_from([0.95, 0.6, 0.3]),
       parametrization=st.sampled_from(["step", "alista"]), positive=st.booleans(),
       per_sample=st.booleans(), tiny_step=st.sampled_from([None, 1e-20, 1e-300]),
       loss=st.sampled_from(["unsupervised", "supervised"]),
       dtype=st.sampled_from([np.float64, np.float32]),
       rho=st.sampled_from([None, 0.5, 1.1]), own_gemm=st.sampled_from(_gemm.GEMM_KERNELS),
       pack=st.booleans(), gather=st.sampled_from(_unrolled.GATHER_KERNELS),
       run=st.sampled_from([1, 2, 3, 32]), block=st.sampled_from([1, 3, 16]),
       n_threads=st.sampled_from([1, 2]))
@settings(max_examples=80)
def test_shared_weight_networks_match_numpy_chain_rule(
        seed, n_atoms, n_features, n_samples, n_layers, rel_lmbd, parametrization,
        positive, per_sample, tiny_step, loss, dtype, rho, own_gemm, pack, gather,
        run, block, n_threads):
    # Networks with one W for all layers (SLISTA, ALISTA) take their sparse
    # layers row by row in runs of SPARSE_RUN layers, which follow each
    # thread's profile of densities over its previous blocks and end at
    # steps below machine epsilon (where z / a could overflow); the others
    # take GEMMs (fastlista's, on parameter matrices packed once a call or
    # not, or BLAS). On any shape, blocking, thread count, kernel and run
    # length, with trained-like steps (one a layer, perhaps one tiny), the
    # codes equal a NumPy forward pass and (float64) the loss and the
    # gradients in every step and threshold the NumPy chain rule.
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((n_atoms, n_features))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    Z0 = rng.standard_normal((n_samples, n_atoms)) * (rng.random((n_samples, n_atoms)) < 0.1)
    X = Z0 @ D + 0.1 * rng.standard_normal((n_samples, n_features))
    lmbd = rel_lmbd * float(np.abs(X @ D.T).max())
    lm = lmbd * rng.uniform(0.5, 1.5, n_samples) if per_sample else None
    net = Lista(D.astype(dtype), lmbd, n_layers, parametrization=parametrization,
                positive=positive)
    params = net.parameters
    for p in params:
        for k in p:
            p[k] = p[k] * rng.uniform(0.7, 1.3)
    if tiny_step is not None:
        key = "alpha" if parametrization == "step" else "gamma"
        params[rng.integers(n_layers)][key] = np.array(tiny_step)
    net.set_parameters(params)
    params = net.parameters     # as the network holds them (float32 steps)
    if parametrization == "step":
        W, steps = D, [float(p["alpha"]) for p in params]
        thresholds = steps
    else:
        W = alista_weights(D.astype(dtype)).astype(np.float64)
        steps = [float(p["gamma"]) for p in params]
        thresholds = [float(p["theta"]) for p in params]
    lm_ref = lmbd if lm is None else lm
    Dr, Xr = D.astype(dtype).astype(np.float64), X.astype(dtype).astype(np.float64)
    Z_ref, layers = ref.residual_network(Xr, Dr, W, steps, thresholds, lm_ref, positive)
    S = rng.standard_normal((n_samples, n_atoms)) * 0.2

    saved = (execution.plan, execution._SPARSE_DENSITY, execution._OWN_GEMM,
             execution._GATHER, _unrolled.SPARSE_RUN, _unrolled.PACK_OPERANDS)
    execution.plan = lambda *shape, **kw: (n_threads, block, 5)
    if rho is not None:
        execution._SPARSE_DENSITY = rho
    execution._OWN_GEMM = own_gemm
    execution._GATHER = gather
    _unrolled.SPARSE_RUN = run
    _unrolled.PACK_OPERANDS = pack
    try:
        Z = net.transform(X.astype(dtype), lmbd=lm)
        f, grads = (net.loss_and_grad(X, loss=loss, Z_target=S, lmbd=lm)
                    if dtype == np.float64 else (None, None))
    finally:
        (execution.plan, execution._SPARSE_DENSITY, execution._OWN_GEMM,
         execution._GATHER, _unrolled.SPARSE_RUN, _unrolled.PACK_OPERANDS) = saved

    assert Z.dtype == dtype
    margins = _relative_margins(layers, positive)
    if dtype == np.float32:
        # rows whose supports float32 rounding cannot change
        rows = margins > 1e-3
        scale = max(np.abs(Z_ref[-1]).max(), 1e-30)
        np.testing.assert_allclose(Z[rows], Z_ref[-1][rows], rtol=1e-3, atol=1e-4 * scale)
        return
    hypothesis.assume(margins.min(initial=np.inf) > 1e-9)
    scale = max(np.abs(Z_ref[-1]).max(), 1e-300)
    np.testing.assert_allclose(Z, Z_ref[-1], rtol=1e-9, atol=1e-12 * scale)
    f_ref, d_steps, d_thr = ref.residual_network_grad(
        X, D, W, steps, thresholds, lm_ref, loss=loss, S=S, positive=positive)
    np.testing.assert_allclose(f, f_ref, rtol=1e-10, atol=1e-14 * abs(f_ref))
    if parametrization == "step":
        got = {"alpha": [g["alpha"] for g in grads]}
        want = {"alpha": d_steps + d_thr}
    else:
        got = {"gamma": [g["gamma"] for g in grads], "theta": [g["theta"] for g in grads]}
        want = {"gamma": d_steps, "theta": d_thr}
    for k in want:
        g_scale = max(np.abs(want[k]).max(), 1e-300)
        np.testing.assert_allclose(np.array(got[k], dtype=np.float64), want[k],
                                   rtol=1e-7, atol=1e-9 * g_scale, err_msg=k)


@given(problems(max_atoms=20, max_features=10, max_samples=8))
@settings(max_examples=25)
def test_float32_agrees_with_float64(problem):
    X, D, lmbd = problem
    r64 = solve_lasso(X, D, lmbd, tol=1e-10)
    r32 = solve_lasso(X.astype(np.float32), D.astype(np.float32),
                      np.float32(lmbd), tol=1e-6)
    assert r32.codes.dtype == np.float32
    F64 = lasso_objective(X, D, lmbd, r64.codes)
    F32 = lasso_objective(X, D, lmbd, r32.codes.astype(np.float64))
    np.testing.assert_allclose(F32, F64, rtol=1e-4, atol=1e-6 * np.abs(X).max() ** 2)


@given(seed=st.integers(0, 2**32 - 1), M=st.integers(0, 20), N=st.integers(0, 40),
       K=st.integers(0, 600), alpha=st.sampled_from([1.0, -0.5, 2.0]),
       beta=st.sampled_from([0.0, 1.0, -1.0, 0.3]),
       dtype=st.sampled_from([np.float64, np.float32]), scale=st.sampled_from([1e-20, 1.0, 1e15]),
       packed=st.booleans())
@settings(max_examples=60)
def test_gemm_within_the_dot_product_bound(seed, M, N, K, alpha, beta, dtype, scale, packed):
    # fastlista's GEMM (_gemm.h) on any shape (partial tiles, K cut into
    # panels of 256) and scale, on B or on its panels packed once: within
    # (K + 2) u (|alpha| |A| |B| + |beta| |C|) of the product computed in
    # long double
    rng = np.random.default_rng(seed)
    A = (scale * rng.standard_normal((M, K))).astype(dtype)
    B = rng.standard_normal((K, N)).astype(dtype)
    C = (scale * rng.standard_normal((M, N))).astype(dtype)
    C0 = C.copy()
    _gemm.gemm(alpha, A, B, beta, C, packed=packed)
    wide = np.longdouble
    exact = alpha * (A.astype(wide) @ B.astype(wide)) + beta * C0.astype(wide)
    u = np.finfo(dtype).eps / 2
    bound = (K + 2) * u * (abs(alpha) * (np.abs(A).astype(wide) @ np.abs(B).astype(wide))
                           + abs(beta) * np.abs(C0).astype(wide))
    assert np.all(np.abs(C.astype(wide) - exact) <= bound + np.finfo(dtype).tiny)
