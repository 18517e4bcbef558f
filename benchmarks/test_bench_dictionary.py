"""Benchmarks of dictionary learning (fastlista.dictionary and its estimators).

Data: 8x8 grey patches of scikit-learn's bundled ``china.jpg`` (divided by
255, the mean of the three channels), drawn at random (``extract_patches_2d``,
``random_state=0``), each patch centred (its mean removed), then every pixel
standardised over the training patches (its mean and standard deviation):
50 000 training and 10 000 held-out patches (5 000 and 1 000 with
``FASTLISTA_BENCH_SMALL=1``). Without scikit-learn (or Pillow, which reads
the JPEG) the image is replaced by a seeded smooth random field (recorded
in ``extra_info["data"]``) and the scikit-learn references are skipped.

Each group times fastlista (``role="ours"``) beside scikit-learn
(``role="reference"``, skipped without scikit-learn) in the same run;
``benchmarks/report.py`` prints the ratios and checks the targets:

* ``dictionary-online-epoch``: one epoch of ``MiniBatchDictionaryLearning(
  n_components=256, alpha=1, batch_size=256, fit_algorithm="cd",
  max_iter=1)``, fastlista's against scikit-learn's (with ``tol=0,
  max_no_improvement=None``: its early stopping, which watches the change of
  the dictionary, otherwise ends its "epoch" after about 100 of the 196
  mini-batches); time ratio <= 0.2 (>= 5x faster), and the mean objective
  of the held-out patches coded exactly (``solve_lasso``, tol 1e-8) with
  each learned dictionary, ours / theirs <= 1.01. Also timed: fastlista with
  ``n_jobs=1``;
* ``dictionary-online-epoch slista vs cd``: the same epoch with
  ``fit_algorithm="slista"`` against fastlista's exact coder (no target:
  what the approximate coder gains and loses, in time and held-out
  objective);
* ``dictionary-batch-20``: ``DictionaryLearning(n_components=256, alpha=1,
  fit_algorithm="cd", max_iter=20, tol=0)`` on 5 000 training patches (1 000
  small), time ratio <= 0.2, and the mean objective of those patches coded
  exactly with each final dictionary, ours / theirs <= 1.0;
* ``dictionary-encode``: coding the held-out patches with a learned
  dictionary (learned by fastlista's one epoch above, and by
  scikit-learn's), ``solve_lasso(tol=1e-8)`` (every sample certified,
  asserted) against ``sparse_encode(algorithm="lasso_cd", alpha=1)``: time
  ratio <= 0.1 (>= 10x faster), objectives no worse (relative difference
  <= 1e-8); also with ``n_jobs=1`` (scikit-learn's sparse_encode runs one
  process).

Run::

    pytest benchmarks/test_bench_dictionary.py --benchmark-only

pytest-benchmark times the rounds of one entry one after the other; on a
shared machine ``python benchmarks/test_bench_dictionary.py [n_rounds]``
alternates every entry with its reference in each round and prints the
median per-round ratios (the figures of docs/dictionary.md).
"""
import os
import sys
import time
import warnings

import numpy as np
import pytest

import fastlista
from fastlista.dictionary import learn_dictionary
from interleave import small_problems

ONLINE_TARGET = 0.2         # >= 5x faster
ONLINE_OBJECTIVE_MAX = 1.01
BATCH_TARGET = 0.2
BATCH_OBJECTIVE_MAX = 1.0
ENCODE_TARGET = 0.1         # >= 10x faster
N_ATOMS = 256
ALPHA = 1.0
BATCH_ITER = 20




def _sklearn():
    try:
        import sklearn  # noqa: F401
        import PIL  # noqa: F401
    except ImportError:
        return False
    return True


def _image():
    """The grey china.jpg in [0, 1], or a smooth random field without sklearn."""
    if _sklearn():
        from sklearn.datasets import load_sample_image

        return load_sample_image("china.jpg").astype(np.float64).mean(axis=2) / 255.0, \
            "china.jpg"
    rng = np.random.default_rng(0)
    field = rng.standard_normal((427, 640))
    for _ in range(3):          # smooth it: a crude image with edges and texture
        field = (field + np.roll(field, 1, 0) + np.roll(field, 1, 1)) / 3
    return field, "smooth random field (scikit-learn or Pillow absent)"


def _extract(image, n, seed=0):
    """n random 8x8 patches as rows (no scikit-learn needed)."""
    rng = np.random.default_rng(seed)
    h, w = image.shape
    i = rng.integers(0, h - 7, n)
    j = rng.integers(0, w - 7, n)
    windows = np.lib.stride_tricks.sliding_window_view(image, (8, 8))
    return windows[i, j].reshape(n, 64).copy()


def make_patches(small=False):
    """(X_train, X_test, description): centred, standardised 8x8 patches."""
    n_train, n_test = (5000, 1000) if small else (50000, 10000)
    image, source = _image()
    if _sklearn():
        from sklearn.feature_extraction.image import extract_patches_2d

        P = extract_patches_2d(image, (8, 8), max_patches=n_train + n_test,
                               random_state=0).reshape(n_train + n_test, 64)
    else:
        P = _extract(image, n_train + n_test)
    P = P - P.mean(axis=1, keepdims=True)
    mean, std = P[:n_train].mean(axis=0), P[:n_train].std(axis=0)
    P = (P - mean) / std
    return np.ascontiguousarray(P[:n_train]), np.ascontiguousarray(P[n_train:]), source


@pytest.fixture(scope="module")
def patches():
    X, X_test, source = make_patches(small_problems())
    X.setflags(write=False)
    X_test.setflags(write=False)
    return X, X_test, source


def exact_objective(X, D):
    """Mean objective of X coded exactly (certified, tol 1e-8) with D."""
    res = fastlista.solve_lasso(X, D, ALPHA, tol=1e-8)
    return float(np.mean(fastlista.lasso_objective(X, D, ALPHA, res.codes)))


def _rounds(benchmark, func, rounds=3):
    benchmark.extra_info["loadavg_1min"] = os.getloadavg()[0]
    benchmark.extra_info["cpus"] = os.cpu_count()
    return benchmark.pedantic(func, rounds=rounds, iterations=1, warmup_rounds=0)


def _info(benchmark, X, source, role, label, **extra):
    benchmark.extra_info.update(role=role, label=label, n_samples=X.shape[0],
                                n_atoms=N_ATOMS, n_features=X.shape[1], alpha=ALPHA,
                                dtype=str(X.dtype), data=source, calls_per_round=1,
                                **extra)


def _quiet(func):
    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # scikit-learn's ConvergenceWarnings
            return func()
    return run


# ---------------------------------------------------------------------------
# the learners
# ---------------------------------------------------------------------------

class _Learned:
    """learn_dictionary's result with the estimators' attribute names."""

    def __init__(self, res):
        self.components_, self.n_iter_, self.n_steps_ = res.D, res.n_iter, res.n_steps


def _fastlista(method, X, **kw):
    """fastlista's estimator (MiniBatchDictionaryLearning or
    DictionaryLearning), or, without scikit-learn, learn_dictionary with the
    same settings (the estimator's fit is that call)."""
    try:
        from fastlista.estimators import DictionaryLearning, MiniBatchDictionaryLearning
    except ImportError:
        kw = {{"fit_algorithm": "coder", "n_components": "n_atoms",
               "alpha": "lmbd"}.get(k, k): v for k, v in kw.items()}
        return _Learned(learn_dictionary(X, method=method, **kw))
    cls = MiniBatchDictionaryLearning if method == "online" else DictionaryLearning
    return cls(**kw).fit(X)


def online_learners():
    """label -> (role, a function fitting a learner on X)."""
    def ours(fit="cd", **kw):
        return lambda X: _fastlista("online", X, n_components=N_ATOMS, alpha=ALPHA,
                                    batch_size=256, fit_algorithm=fit, max_iter=1,
                                    random_state=0, **kw)

    def theirs(X):
        from sklearn.decomposition import MiniBatchDictionaryLearning as Sk

        return Sk(N_ATOMS, alpha=ALPHA, batch_size=256, fit_algorithm="cd", max_iter=1,
                  tol=0, max_no_improvement=None, random_state=0).fit(X)
    return {
        "scikit-learn MiniBatchDictionaryLearning(cd), 1 epoch": ("reference", theirs),
        "fastlista MiniBatchDictionaryLearning(cd), 1 epoch": ("ours", ours()),
        "fastlista MiniBatchDictionaryLearning(cd, n_jobs=1), 1 epoch":
            ("ours", ours(n_jobs=1)),
    }


def slista_learners():
    """The approximate coder against the exact one (both fastlista's)."""
    def ours(fit):
        return lambda X: _fastlista("online", X, n_components=N_ATOMS, alpha=ALPHA,
                                    batch_size=256, fit_algorithm=fit, max_iter=1,
                                    random_state=0)
    return {
        "fastlista MiniBatchDictionaryLearning(cd), 1 epoch": ("reference", ours("cd")),
        "fastlista MiniBatchDictionaryLearning(slista), 1 epoch": ("ours", ours("slista")),
    }


def batch_learners():
    def ours(**kw):
        return lambda X: _fastlista("batch", X, n_components=N_ATOMS, alpha=ALPHA,
                                    max_iter=BATCH_ITER, tol=0, random_state=0, **kw)

    def theirs(X):
        from sklearn.decomposition import DictionaryLearning as Sk

        return Sk(N_ATOMS, alpha=ALPHA, max_iter=BATCH_ITER, tol=0, fit_algorithm="cd",
                  random_state=0).fit(X)
    return {
        f"scikit-learn DictionaryLearning(cd), {BATCH_ITER} iterations":
            ("reference", theirs),
        f"fastlista DictionaryLearning(cd), {BATCH_ITER} iterations": ("ours", ours()),
        f"fastlista DictionaryLearning(cd, n_jobs=1), {BATCH_ITER} iterations":
            ("ours", ours(n_jobs=1)),
    }


def _batch_data(X):
    return X[:1000] if small_problems() else X[:5000]


ONLINE = online_learners()
SLISTA = slista_learners()
BATCH = batch_learners()


@pytest.mark.parametrize("label", list(ONLINE))
def test_online_epoch(benchmark, patches, label):
    role, learn = ONLINE[label]
    if role == "reference" and not _sklearn():
        pytest.skip("scikit-learn (and Pillow) not installed")
    X, X_test, source = patches
    benchmark.group = "dictionary-online-epoch"
    extra = {}
    if role == "reference":
        extra = {"target_ratio": ONLINE_TARGET,
                 "compare": {"heldout_objective": {"kind": "ratio",
                                                   "max": ONLINE_OBJECTIVE_MAX}}}
    _info(benchmark, X, source, role, label, **extra)
    est = _rounds(benchmark, _quiet(lambda: learn(X)))
    benchmark.extra_info.update(heldout_objective=exact_objective(X_test, est.components_),
                                n_steps=int(est.n_steps_))


@pytest.mark.parametrize("label", list(SLISTA))
def test_online_epoch_slista(benchmark, patches, label):
    """What coder="slista" gains and loses against the exact coder: time
    ratio and held-out objective ratio, no target."""
    role, learn = SLISTA[label]
    X, X_test, source = patches
    benchmark.group = "dictionary-online-epoch slista vs cd"
    extra = {"compare": {"heldout_objective": {"kind": "ratio", "max": None}}} \
        if role == "reference" else {}
    _info(benchmark, X, source, role, label, **extra)
    est = _rounds(benchmark, _quiet(lambda: learn(X)), rounds=2)
    benchmark.extra_info.update(heldout_objective=exact_objective(X_test, est.components_),
                                n_steps=int(est.n_steps_))


@pytest.mark.parametrize("label", list(BATCH))
def test_batch_iterations(benchmark, patches, label):
    role, learn = BATCH[label]
    if role == "reference" and not _sklearn():
        pytest.skip("scikit-learn (and Pillow) not installed")
    X, _, source = patches
    X = _batch_data(X)
    benchmark.group = f"dictionary-batch-{BATCH_ITER}"
    extra = {}
    if role == "reference":
        extra = {"target_ratio": BATCH_TARGET,
                 "compare": {"train_objective": {"kind": "ratio",
                                                 "max": BATCH_OBJECTIVE_MAX}}}
    _info(benchmark, X, source, role, label, **extra)
    est = _rounds(benchmark, _quiet(lambda: learn(X)), rounds=2)
    benchmark.extra_info.update(train_objective=exact_objective(X, est.components_),
                                n_iter=int(est.n_iter_))


# ---------------------------------------------------------------------------
# coding with a learned dictionary
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def learned(patches):
    """The dictionaries of one online epoch, by fastlista and scikit-learn."""
    X, _, _ = patches
    out = {"fastlista": ONLINE["fastlista MiniBatchDictionaryLearning(cd), 1 epoch"][1](
        X).components_}
    if _sklearn():
        sk = ONLINE["scikit-learn MiniBatchDictionaryLearning(cd), 1 epoch"][1]
        out["scikit-learn"] = _quiet(lambda: sk(X))().components_
    return out


def encode_ours(X, D, n_jobs=None):
    res = fastlista.solve_lasso(X, D, ALPHA, tol=1e-8, n_jobs=n_jobs)
    assert res.converged.all(), "every sample is certified to tol=1e-8"
    return res.codes


def encode_theirs(X, D):
    from sklearn.decomposition import sparse_encode

    return sparse_encode(X, D, algorithm="lasso_cd", alpha=ALPHA)


@pytest.mark.parametrize("learned_by", ["fastlista", "scikit-learn"])
@pytest.mark.parametrize("coder", ["solve_lasso", "solve_lasso n_jobs=1", "sparse_encode"])
def test_encode_with_learned_dictionary(benchmark, patches, learned, coder, learned_by):
    if not _sklearn() and (coder == "sparse_encode" or learned_by == "scikit-learn"):
        pytest.skip("scikit-learn (and Pillow) not installed")
    _, X_test, source = patches
    D = learned[learned_by]
    benchmark.group = f"dictionary-encode (dictionary learned by {learned_by})"
    if coder.startswith("solve_lasso"):
        n_jobs = 1 if coder.endswith("n_jobs=1") else None
        role, extra = "ours", {}
        func = lambda X, D: encode_ours(X, D, n_jobs)  # noqa: E731
        label = (f"fastlista.solve_lasso(tol=1e-8{', n_jobs=1' if n_jobs else ''}), "
                 "every sample certified")
    else:
        role, func = "reference", encode_theirs
        label = "scikit-learn sparse_encode(lasso_cd)"
        extra = {"target_ratio": ENCODE_TARGET,
                 "compare": {"objective_mean": {"kind": "rel_diff", "max": 1e-8}}}
    _info(benchmark, X_test, source, role, label, **extra)
    Z = _rounds(benchmark, _quiet(lambda: func(X_test, D)), rounds=5)
    benchmark.extra_info["objective_mean"] = float(
        np.mean(fastlista.lasso_objective(X_test, D, ALPHA, Z)))


# ---------------------------------------------------------------------------
# interleaved rounds (python benchmarks/test_bench_dictionary.py [n_rounds])
# ---------------------------------------------------------------------------

def interleaved(n_rounds=3, small=False):
    """Every entry and its reference once a round, alternately; returns rows
    (comparison, median per-round time ratio, target, median ours s, median
    reference s, median quality ratio, quality limit)."""
    X, X_test, _ = make_patches(small)
    Xb = X[:1000] if small else X[:5000]
    times, quality = {}, {}

    def timed(key, func):
        t = time.perf_counter()
        out = _quiet(func)()
        times.setdefault(key, []).append(time.perf_counter() - t)
        return out

    def in_turn(items, r):
        # every other round in reverse: ours and the reference take turns
        # at going first
        items = list(items)
        return items if r % 2 == 0 else items[::-1]

    learned = {}
    for r in range(n_rounds):
        for label, (role, learn) in in_turn(ONLINE.items(), r):
            est = timed(label, lambda: learn(X))
            quality.setdefault(label, []).append(exact_objective(X_test, est.components_))
            if r == 0 and "(cd)" in label:
                learned["fastlista" if role == "ours" else "scikit-learn"] = est.components_
        label = "fastlista MiniBatchDictionaryLearning(slista), 1 epoch"
        est = timed(label, lambda: SLISTA[label][1](X))
        quality.setdefault(label, []).append(exact_objective(X_test, est.components_))
        for label, (role, learn) in in_turn(BATCH.items(), r):
            est = timed(label, lambda: learn(Xb))
            quality.setdefault(label, []).append(exact_objective(Xb, est.components_))
        for by, D in learned.items():
            for key, encode in in_turn([
                    (f"solve_lasso, D by {by}", lambda: encode_ours(X_test, D)),
                    (f"solve_lasso n_jobs=1, D by {by}", lambda: encode_ours(X_test, D, 1)),
                    (f"sparse_encode, D by {by}", lambda: encode_theirs(X_test, D))], r):
                timed(key, encode)
    rows = []

    def add(name, ours, ref, target, limit=None):
        ratio = np.median(np.array(times[ours]) / np.array(times[ref]))
        q = None
        if limit is not None:
            q = np.median(np.array(quality[ours]) / np.array(quality[ref]))
        rows.append((name, ratio, target, np.median(times[ours]), np.median(times[ref]),
                     q, limit))
    ref_online, ref_batch = (next(k for k, v in d.items() if v[0] == "reference")
                             for d in (ONLINE, BATCH))
    for label, (role, _) in ONLINE.items():
        if role == "ours":
            add(label, label, ref_online, ONLINE_TARGET, ONLINE_OBJECTIVE_MAX)
    slista = "fastlista MiniBatchDictionaryLearning(slista), 1 epoch"
    add(slista, slista, ref_online, None, ONLINE_OBJECTIVE_MAX)
    add(slista + " / fastlista cd", slista,
        "fastlista MiniBatchDictionaryLearning(cd), 1 epoch", None, float("inf"))
    for label, (role, _) in BATCH.items():
        if role == "ours":
            add(label, label, ref_batch, BATCH_TARGET, BATCH_OBJECTIVE_MAX)
    for by in learned:
        add(f"encode held-out patches, D learned by {by}", f"solve_lasso, D by {by}",
            f"sparse_encode, D by {by}", ENCODE_TARGET)
        add(f"encode held-out patches (n_jobs=1), D learned by {by}",
            f"solve_lasso n_jobs=1, D by {by}", f"sparse_encode, D by {by}",
            ENCODE_TARGET)
    return rows


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    print(f"{'comparison':66s} {'time ratio':>10s} {'target':>8s} {'ours':>8s} "
          f"{'reference':>9s} {'objective ratio':>15s}")
    for name, ratio, target, a, b, q, limit in interleaved(rounds, small_problems()):
        status = "" if target is None else ("ok" if ratio <= target else "MISS")
        qs = "" if q is None else (f"{q:.5f}" if limit == float("inf")
                                   else f"{q:.5f} (<= {limit})")
        print(f"{name:66s} {ratio:10.3f} {'' if target is None else '<= %.2g' % target:>8s} "
              f"{a:7.2f}s {b:8.2f}s {qs:>15s} {status}")
