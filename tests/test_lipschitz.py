"""lipschitz(D) and lipschitz(D, support=S) against numpy.linalg.eigvalsh."""
import numpy as np
import pytest
from numpy.testing import assert_allclose

from fastlista import lipschitz

import reference as ref
from conftest import get_problem

# float32: the power iteration stops at 8 eps32 ~ 1e-6 relative change, which
# leaves errors of a few 1e-5 when the top two eigenvalues of B_SS are close
RTOL = {np.float64: 1e-8, np.float32: 1e-4}


@pytest.mark.parametrize("kind", ["under", "over"])
def test_global_L_matches_eigvalsh(kind, dtype):
    _, D = get_problem(kind, dtype)
    L = lipschitz(D)
    assert isinstance(L, float)
    assert_allclose(L, ref.lipschitz(D), rtol=RTOL[dtype])
    # support=None and an all-True support are the same constant
    assert_allclose(lipschitz(D, support=np.ones(D.shape[0], bool)), ref.lipschitz(D),
                    rtol=RTOL[dtype])


@pytest.mark.parametrize("shape", [(5, 40), (40, 5), (60, 30), (1, 7), (7, 1)])
def test_global_L_various_shapes(shape):
    rng = np.random.default_rng(sum(shape))
    D = rng.standard_normal(shape)
    assert_allclose(lipschitz(D), ref.lipschitz(D), rtol=1e-8)


@pytest.mark.parametrize("density", [0.05, 0.2, 0.5, 0.9, 1.0])
def test_single_support_matches_eigvalsh(density, dtype):
    _, D = get_problem("over", dtype)
    rng = np.random.default_rng(int(100 * density))
    for _ in range(5):
        S = rng.random(D.shape[0]) < density
        S[rng.integers(D.shape[0])] = True
        L_S = lipschitz(D, support=S)
        assert isinstance(L_S, float)
        assert_allclose(L_S, ref.lipschitz_support(D, S), rtol=RTOL[dtype])


@pytest.mark.parametrize("kind", ["under", "over"])
def test_batched_supports_match_eigvalsh(kind, dtype):
    _, D = get_problem(kind, dtype)
    m = D.shape[0]
    rng = np.random.default_rng(11)
    # sizes 0, 1, 2, 3, ... up to m: tiny (exact path), B_SS and D_S paths
    sizes = np.concatenate([np.arange(m + 1), rng.integers(0, m + 1, 150)])
    S = np.zeros((sizes.size, m), bool)
    for i, k in enumerate(sizes):
        S[i, rng.choice(m, k, replace=False)] = True
    L_S = lipschitz(D, support=S)
    assert isinstance(L_S, np.ndarray) and L_S.shape == (sizes.size,)
    expected = ref.lipschitz_support(D, S)
    assert_allclose(L_S, expected, rtol=RTOL[dtype], atol=0)
    assert np.all(L_S[sizes == 0] == 0.0)


def test_batched_supports_threads_agree():
    _, D = get_problem("over")
    rng = np.random.default_rng(12)
    S = rng.random((300, D.shape[0])) < 0.3
    L1 = lipschitz(D, support=S, n_jobs=1)
    L2 = lipschitz(D, support=S, n_jobs=2)
    Lall = lipschitz(D, support=S, n_jobs=-1)
    assert_allclose(L2, L1, rtol=1e-12)
    assert_allclose(Lall, L1, rtol=1e-12)
    assert_allclose(L1, ref.lipschitz_support(D, S), rtol=1e-8)


def test_empty_support_is_zero():
    _, D = get_problem("under")
    m = D.shape[0]
    assert lipschitz(D, support=np.zeros(m, bool)) == 0.0
    out = lipschitz(D, support=np.zeros((3, m), bool))
    assert out.shape == (3,) and np.all(out == 0.0)
    # no supports at all
    assert lipschitz(D, support=np.zeros((0, m), bool)).shape == (0,)
    # a dictionary without atoms, its support an empty list (NumPy's float64
    # []): refused as "not a boolean array" before
    assert lipschitz(np.zeros((0, 3)), support=[]) == 0.0
    assert_allclose(lipschitz(np.zeros((0, 3)), support=np.zeros((2, 0))), [0.0, 0.0])


def test_single_atom_is_squared_norm():
    rng = np.random.default_rng(13)
    D = rng.standard_normal((10, 6)) * rng.uniform(0.1, 5, (10, 1))
    S = np.eye(10, dtype=bool)
    assert_allclose(lipschitz(D, support=S), np.sum(D * D, axis=1), rtol=1e-12)
    for k in range(10):
        assert_allclose(lipschitz(D, support=S[k]), D[k] @ D[k], rtol=1e-12)


def test_duplicate_and_opposite_pairs():
    rng = np.random.default_rng(14)
    d = rng.standard_normal(8)
    e = rng.standard_normal(8)
    D = np.stack([d, d, -d, e, 3.0 * e])
    n2 = d @ d
    assert_allclose(lipschitz(D, support=[True, True, False, False, False]), 2 * n2, rtol=1e-12)
    assert_allclose(lipschitz(D, support=[True, False, True, False, False]), 2 * n2, rtol=1e-12)
    assert_allclose(lipschitz(D, support=[True, True, True, False, False]), 3 * n2, rtol=1e-10)
    assert_allclose(lipschitz(D, support=[False, False, False, True, True]), 10 * (e @ e),
                    rtol=1e-12)


def test_orthogonal_atoms():
    Q, _ = np.linalg.qr(np.random.default_rng(15).standard_normal((6, 6)))
    D = Q[:4] * np.array([[1.0], [2.0], [3.0], [0.5]])
    assert_allclose(lipschitz(D), 9.0, rtol=1e-10)
    assert_allclose(lipschitz(D, support=[True, True, False, True]), 4.0, rtol=1e-10)
    assert_allclose(lipschitz(D, support=[True, False, False, True]), 1.0, rtol=1e-10)


def test_zero_atoms_and_zero_dictionary():
    rng = np.random.default_rng(16)
    D = rng.standard_normal((6, 5))
    D[[1, 4]] = 0.0
    # supports made of zero atoms only: 0, never NaN
    assert lipschitz(D, support=[False, True, False, False, True, False]) == 0.0
    assert lipschitz(D, support=[False, True, False, False, False, False]) == 0.0
    S = np.array([[True, True, False, False, True, False],
                  [True, True, True, True, True, True]])
    assert_allclose(lipschitz(D, support=S), ref.lipschitz_support(D, S), rtol=1e-8)
    # the all-zero dictionary
    Z = np.zeros((4, 3))
    assert lipschitz(Z) == 0.0
    assert np.all(lipschitz(Z, support=np.ones((2, 4), bool)) == 0.0)


def test_monotone_in_support():
    _, D = get_problem("over")
    m = D.shape[0]
    rng = np.random.default_rng(17)
    order = rng.permutation(m)
    S = np.zeros((m + 1, m), bool)
    for k in range(1, m + 1):
        S[k, order[:k]] = True
    L_S = lipschitz(D, support=S)
    assert L_S[0] == 0.0
    assert np.all(np.diff(L_S) >= -1e-9 * L_S[1:])
    assert_allclose(L_S[-1], lipschitz(D), rtol=1e-8)
    assert np.all(L_S <= lipschitz(D) * (1 + 1e-9))


@pytest.mark.parametrize("scale", [1e-100, 1e-3, 1e3, 1e100])
def test_scale_equivariance(scale):
    _, D = get_problem("under")
    assert_allclose(lipschitz(scale * D), scale ** 2 * ref.lipschitz(D), rtol=1e-8)
    S = np.random.default_rng(18).random((20, D.shape[0])) < 0.4
    assert_allclose(lipschitz(scale * D, support=S),
                    scale ** 2 * ref.lipschitz_support(D, S), rtol=1e-8)


def test_supports_of_atoms_far_smaller_than_the_largest():
    """L_S of atoms whose squares underflow next to D's largest: float32
    atoms 1e23 times smaller (their Gram entries were formed in float32 and
    lost), float64 atoms 1e170 times smaller (below float64's range once D is
    scaled to its largest). Reference: the eigenvalues of the supports'
    own Gram matrices."""
    rng = np.random.default_rng(21)
    unit = rng.standard_normal((3, 5))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    for big, dtype in ((1e23, np.float32), (1e170, np.float64)):
        D = np.vstack([big * np.eye(5)[:1], unit]).astype(dtype)
        S = np.array([[False, True, True, True], [False, False, True, False],
                      [False, True, True, False], [False, False, False, False]])
        expected = [np.linalg.eigvalsh(unit[s[1:]].astype(dtype).astype(np.float64)
                                       @ unit[s[1:]].astype(dtype).astype(np.float64).T
                                       )[-1] if s.any() else 0.0 for s in S]
        assert_allclose(lipschitz(D, support=S), expected, rtol=RTOL[dtype])
        assert_allclose(lipschitz(D, support=S[0]), expected[0], rtol=RTOL[dtype])
        # with the large atom, L_S is its squared norm, beyond the dtype: inf
        assert lipschitz(D, support=np.ones(4, bool)) == np.inf


@pytest.mark.parametrize("delta", [1e-3, 1e-5, 1e-6])
def test_nearly_degenerate_top_eigenvalue(delta):
    # top two singular values 1 and 1 - delta: a slow power iteration, whose
    # Rayleigh quotient changes little per step long before it is accurate
    rng = np.random.default_rng(19)
    U, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    V, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    s = np.concatenate([[1.0, 1.0 - delta], np.linspace(0.9, 0.1, 18)])
    D = (U[:, :20] * s) @ V.T
    assert_allclose(lipschitz(D), 1.0, rtol=1e-8)


def test_input_layouts():
    _, D = get_problem("over")
    rng = np.random.default_rng(20)
    S = rng.random((40, D.shape[0])) < 0.3
    expected = ref.lipschitz_support(D, S)
    assert_allclose(lipschitz(np.asfortranarray(D), support=np.asfortranarray(S)), expected,
                    rtol=1e-8)
    big = np.zeros((2 * D.shape[0], 2 * D.shape[1]))
    big[::2, 1::2] = D
    assert_allclose(lipschitz(big[::2, 1::2], support=S), expected, rtol=1e-8)
    assert_allclose(lipschitz(D.tolist(), support=S.tolist()), expected, rtol=1e-8)
    # float32 dictionary gives the float32 constant, close to float64
    assert_allclose(lipschitz(D.astype(np.float32), support=S), expected, rtol=1e-4)


def test_global_and_support_L_are_both_rounded_to_float32():
    # the documented dtype rule holds for the global L too: lipschitz(D)
    # equals lipschitz(D, every atom) for a float32 D, inf beyond its range
    D = np.diag(np.array([1e20, 3e19], np.float32))
    assert lipschitz(D) == np.inf
    assert lipschitz(D, support=[True, True]) == np.inf
    d = np.array([[1.1, 0.3, -0.2]], np.float32)
    expected = float(np.float32(np.sum(d.astype(np.float64) ** 2)))
    assert lipschitz(d) == expected
    assert lipschitz(d, support=[True]) == expected


def _kernel_start_vector(k):
    """The power iteration's start vector over atoms 0..k-1 (a splitmix64
    hash of the atom index, as in ``_lipschitz.pxd``): the adversary's view."""
    mask = (1 << 64) - 1
    v = np.empty(k)
    for a in range(k):
        h = (a + 0x9E3779B97F4A7C15) & mask
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
        h ^= h >> 31
        u = (h >> 11) / 9007199254740992.0
        v[a] = (0.5 + u) if h & 1 else -(0.5 + u)
    return v / np.linalg.norm(v)


def _dictionary_of_gram(B):
    """A square D with D D^T = B (B symmetric PSD)."""
    ev, V = np.linalg.eigh(B)
    return (V * np.sqrt(np.maximum(ev, 0))) @ V.T


@pytest.mark.parametrize("k, l2", [(3, 0.9), (4, 0.85), (8, 0.7), (16, 0.55)])
def test_duplicated_atoms_do_not_hide_the_top_eigenvalue(k, l2):
    # atom 0 (squared norm l2) is orthogonal to k - 1 copies of one atom of
    # squared norm 1 / (k - 1): L_S = 1, spread over columns of small
    # diagonal, while e_0 is an exact eigenvector of a larger diagonal;
    # repeated squaring stopped on it (l2) when two quotients agreed
    D = np.zeros((k, 2))
    D[0, 0] = np.sqrt(l2)
    D[1:, 1] = np.sqrt(1.0 / (k - 1))
    expected = np.linalg.eigvalsh(D @ D.T)[-1]
    for tol in (1e-6, 1e-10, 1e-15):
        assert_allclose(lipschitz(D, support=np.ones(k, bool), tol=tol), expected, rtol=1e-13)


def test_equal_top_eigenvalues_of_a_tiny_support():
    # 15 atoms of squared norm 2/15 evenly spread over a plane (eigenvalues
    # 1 and 1) and an atom of squared norm 0.61 orthogonal to it, the
    # largest diagonal: the squaring's quotients agreed at 0.61, while
    # trace(B^p)^(1/p) stays above 1
    angle = np.pi * np.arange(15) / 15
    D = np.zeros((16, 3))
    D[0, 2] = np.sqrt(0.61)
    D[1:, 0] = np.sqrt(2 / 15) * np.cos(angle)
    D[1:, 1] = np.sqrt(2 / 15) * np.sin(angle)
    expected = np.linalg.eigvalsh(D @ D.T)[-1]
    for tol in (1e-6, 1e-10, 1e-15):
        assert_allclose(lipschitz(D, support=np.ones(16, bool), tol=tol), expected,
                        rtol=1e-12)
    # max_iter too small for the bracket to close (equal eigenvalues close
    # it slowly): LAPACK
    assert_allclose(lipschitz(D, support=np.ones(16, bool), max_iter=4), expected,
                    rtol=1e-12)


@pytest.mark.parametrize("k", [17, 50, 200])
def test_a_first_step_that_barely_moves_is_not_convergence(k):
    # orthonormal atoms, one of them sqrt(1 + 1e-4) long: L_S = 1 + 1e-4 with
    # every other eigenvalue 1. The power iteration stopped after its first
    # step (whose ratio of differences was taken against theta_0 itself) at
    # 1 + 4e-7, for an eigengap far above sqrt(tol)
    for long in (0, 7, k - 1):
        D = np.eye(k)
        D[long, long] = np.sqrt(1 + 1e-4)
        assert_allclose(lipschitz(D, support=np.ones(k, bool)), 1 + 1e-4, rtol=1e-12)


@pytest.mark.parametrize("c", [0.0, 1e-12, 1e-7, 1e-3])
def test_top_eigenvector_nearly_orthogonal_to_the_start_vector(c):
    # B_SS = I + 9 q q^T with q at angle arccos(c) to the kernel's start
    # vector: a power iteration from it stays near 1 while L_S = 10
    k = 20
    v0 = _kernel_start_vector(k)
    w = np.random.default_rng(3).standard_normal(k)
    w -= (w @ v0) * v0
    w /= np.linalg.norm(w)
    q = c * v0 + np.sqrt(1 - c * c) * w
    D = _dictionary_of_gram(np.eye(k) + 9 * np.outer(q, q))
    S = np.ones((2, k), bool)
    assert_allclose(lipschitz(D, support=S), 10.0, rtol=1e-12)


@pytest.mark.parametrize("m", [3, 16, 17, 40, 100])
def test_lapack_on_a_multiple_top_eigenvalue_stays_in_its_workspace(m):
    # B_SS = I (every eigenvalue 1): LAPACK's dstebz stores every eigenvalue
    # of the interval it brackets before keeping the one asked for, and the
    # kernel gave it room for one: lipschitz(eye(20), ..., max_iter=1)
    # wrote 1.0 over the stack and crashed the interpreter (SIGSEGV); the
    # supports over 16 atoms now always go to LAPACK
    D = np.eye(m)
    for max_iter in (1, 10000):
        assert_allclose(lipschitz(D, support=np.ones((3, m), bool), max_iter=max_iter),
                        1.0, rtol=1e-14)
    D2 = np.vstack([D, D])                  # each eigenvalue of B twice: 2
    assert_allclose(lipschitz(D2, support=np.ones((2, 2 * m), bool), max_iter=1), 2.0,
                    rtol=1e-14)


def _unions_of_orthonormal_bases(n):
    """[I; DCT] and [DCT; Q] (Q a random orthonormal basis): D^T D = 2 I, so
    the top eigenvalue of B = D D^T is 2, n times, in a basis that is not
    the canonical one."""
    from scipy.fft import dct

    identity = np.eye(n)
    cosine = dct(identity, norm="ortho", axis=0)
    Q, _ = np.linalg.qr(np.random.default_rng(n).standard_normal((n, n)))
    return np.vstack([identity, cosine]), np.vstack([cosine, Q])


@pytest.mark.parametrize("n", [4, 16, 31, 64])
def test_a_union_of_orthonormal_bases(n):
    # LAPACK's bisection for the top eigenvalue alone (dstebz) failed on the
    # n-fold eigenvalue 2: scipy's eigh(subset_by_index) raised "Internal
    # Error" (lipschitz(D), and every proximal method with it), the kernel's
    # dsyevr returned NaN (FloatingPointError), and OpenBLAS's LAPACK wrote
    # one int before its workspace on that failure
    for D in _unions_of_orthonormal_bases(n):
        assert_allclose(lipschitz(D), 2.0, rtol=1e-13)
        S = np.ones((2, 2 * n), bool)
        S[1, ::3] = False
        expected = [np.linalg.eigvalsh(D[s] @ D[s].T)[-1] for s in S]
        assert_allclose(lipschitz(D, support=S), expected, rtol=1e-12)


@pytest.mark.parametrize("k", [8, 17, 40])
def test_a_repeated_top_eigenvalue_in_a_rotated_basis(k):
    # B_SS = Q diag(0.5, 1, ..., 1) Q^T: the top eigenvalue k - 1 times
    for seed in range(20):
        Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((k, k)))
        lam = np.ones(k)
        lam[0] = 0.5
        D = (Q * np.sqrt(lam)) @ Q.T
        for max_iter in (1, 10000):
            assert_allclose(lipschitz(D, support=np.ones((2, k), bool), max_iter=max_iter),
                            1.0, rtol=1e-12)


def test_float32_atoms_far_below_the_largest_keep_their_digits():
    # the power-of-two scaling ran in float32, before the cast to double:
    # next to an atom of 1e30, atoms of 1e-13 became subnormal (L_S 16 %
    # off) or 0
    D = np.array([[1e30, 0.0], [1.2345e-13, 0.0], [0.0, 3.3e-15], [1.7e-13, 0.9e-13]],
                 dtype=np.float32)
    D64 = D.astype(np.float64)
    for S in ([0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 1, 1]):
        S = np.array(S, bool)
        expected = np.float32(np.linalg.eigvalsh(D64[S] @ D64[S].T)[-1])
        assert_allclose(lipschitz(D, support=S), expected, rtol=1e-6, atol=0)


def test_support_is_refused_by_the_rule_for_array_arguments():
    """A scipy.sparse support is refused as sparse (it was "got dtype
    object"), and a ragged one names support (it was NumPy's message)."""
    from scipy import sparse
    D = np.eye(4)
    for S in (sparse.csr_matrix(np.ones((2, 4), bool)), sparse.coo_matrix(np.ones((1, 4), bool))):
        with pytest.raises(TypeError, match="^Sparse data was passed for support, but dense "
                                            "data is required"):
            lipschitz(D, support=S)
    with pytest.raises(ValueError, match="^support could not be converted to an array"):
        lipschitz(D, support=[[True] * 4, [True]])
