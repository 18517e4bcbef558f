"""Image denoising with patches: fastlista's pipeline beside scikit-learn's.

After scikit-learn's example "Image denoising using dictionary learning",
on the (bundled, no download) "china.jpg" sample image:

1. The image is made grey, halved in size, and Gaussian noise of standard
   deviation ``sigma`` is added to its right half.
2. A dictionary of 7x7 patches is learned on the clean left half (patches
   with their mean removed, divided by their overall standard deviation),
   twice: by scikit-learn's ``MiniBatchDictionaryLearning`` (its default
   LARS codes) and by fastlista's (``fastlista.estimators``, certified
   coordinate descent codes), with the same settings.
3. The noisy right half is denoised patch by patch: every (overlapping)
   patch, mean removed, is coded by the Lasso
   ``min_z 1/2 ||x - z D||^2 + alpha ||z||_1``, rebuilt as ``z D + mean``,
   and the overlapping patches are averaged back into an image.

Printed, in time and PSNR (against the clean image):

* the two pipelines: scikit-learn's (its dictionary, then
  ``SparseCoder(transform_algorithm="lasso_cd")``) and fastlista's (its
  dictionary, then ``LassoSparseCoder``): learning, coding, PSNR;
* the coders, all on fastlista's dictionary:
  ``SparseCoder(transform_algorithm="lasso_cd")`` (scikit-learn's exact
  Lasso), ``fastlista.estimators.LassoSparseCoder`` (the same Lasso,
  fastlista's solver), ``fastlista.estimators.LearnedSparseCoder`` (an
  unfolded network of ``n_layers`` layers with learned step sizes, trained
  unsupervised on a subsample of the noisy patches, then run on all of
  them) and the same network untrained, i.e. ``n_layers`` ISTA iterations.

Run ``python examples/denoise_patches.py`` (about 30 s on 2 cores), or with
``--quick`` (a crop of the image and a small dictionary, a few seconds), and
``--plot denoised.png`` to save the images and the two dictionaries (needs
matplotlib; docs/figures/dictionary.png is that figure of the full run).
"""
import argparse
import time

import numpy as np
from sklearn.datasets import load_sample_image
from sklearn.decomposition import MiniBatchDictionaryLearning, SparseCoder
from sklearn.feature_extraction.image import (extract_patches_2d,
                                              reconstruct_from_patches_2d)

from fastlista.estimators import LassoSparseCoder, LearnedSparseCoder
from fastlista.estimators import MiniBatchDictionaryLearning as FastMiniBatch

PATCH = (7, 7)


def psnr(image, reference):
    """Peak signal-to-noise ratio in dB, for images in [0, 1]."""
    mse = np.mean((np.asarray(image) - np.asarray(reference)) ** 2)
    return float(10 * np.log10(1.0 / mse))


def load_image(quick=False):
    """The grey "china.jpg" in [0, 1], halved (quick: a 64 x 96 crop of it)."""
    img = load_sample_image("china.jpg").astype(np.float64).mean(axis=2) / 255.0
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    img = img[:h, :w]
    img = (img[::2, ::2] + img[1::2, ::2] + img[::2, 1::2] + img[1::2, 1::2]) / 4
    if quick:
        img = img[60:124, 100:196]
    return np.ascontiguousarray(img)


def centred_patches(image, max_patches=None, random_state=None):
    """Patches as rows (n_patches, 49), and their means (removed)."""
    P = extract_patches_2d(image, PATCH, max_patches=max_patches,
                           random_state=random_state)
    P = P.reshape(P.shape[0], -1)
    mean = P.mean(axis=1, keepdims=True)
    return P - mean, mean


def rebuild(codes, D, mean, shape):
    """Average the overlapping patches ``codes @ D + mean`` into an image."""
    patches = (codes @ D + mean).reshape(-1, *PATCH)
    return reconstruct_from_patches_2d(patches, shape)


def timed(func, *args, **kwargs):
    t0 = time.perf_counter()
    out = func(*args, **kwargs)
    return out, time.perf_counter() - t0


def learn_dictionaries(P, n_atoms, epochs):
    """The dictionaries of scikit-learn's and fastlista's
    MiniBatchDictionaryLearning on the same patches and settings, and the
    seconds each took: {"scikit-learn": (D, s), "fastlista": (D, s)}."""
    settings = dict(n_components=n_atoms, alpha=1.0, batch_size=256, max_iter=epochs,
                    random_state=0)
    theirs, t_theirs = timed(MiniBatchDictionaryLearning(**settings).fit, P)
    ours, t_ours = timed(FastMiniBatch(**settings).fit, P)
    return {"scikit-learn": (theirs.components_, t_theirs),
            "fastlista": (ours.components_, t_ours)}


def objective(X, D, Z, alpha):
    """Mean Lasso objective of the codes."""
    return float(np.mean(0.5 * np.sum((X - Z @ D) ** 2, axis=1)
                         + alpha * np.abs(Z).sum(axis=1)))


def main(quick=False, sigma=0.075, alpha=0.1, n_layers=10, plot=None, verbose=True):
    """Run the comparison; returns a dict of results (times in seconds).

    Keys: ``"noisy_psnr"``; ``"pipelines"``: for "scikit-learn" and
    "fastlista", ``{"learn": s, "encode": s, "psnr": dB, "objective": mean
    Lasso objective of the codes}``; per coder name (all on fastlista's
    dictionary), ``{"fit": s, "encode": s, "psnr": dB, "objective": ...}``;
    plus ``"dictionary"`` (fastlista's atoms), ``"dictionaries"`` (both),
    ``"dictionary_time"`` (fastlista's learning) and ``"n_patches"``.
    """
    rng = np.random.RandomState(0)
    clean = load_image(quick)
    h, w = clean.shape
    noisy = clean.copy()
    noisy[:, w // 2:] += sigma * rng.randn(h, w - w // 2)
    truth, target = clean[:, w // 2:], noisy[:, w // 2:]

    # dictionaries from the clean left half
    n_train, n_atoms, epochs = (1000, 48, 1) if quick else (10000, 100, 2)
    P, _ = centred_patches(clean[:, : w // 2], max_patches=n_train, random_state=0)
    learned = learn_dictionaries(P / P.std(), n_atoms, epochs)
    D, t_dict = learned["fastlista"]              # unit-norm atoms

    X, mean = centred_patches(target)
    results = {"noisy_psnr": psnr(target, truth), "dictionary": D,
               "dictionaries": {k: v[0] for k, v in learned.items()},
               "n_patches": X.shape[0], "dictionary_time": t_dict}

    # the two pipelines: learn, then code the noisy patches exactly
    pipelines = {
        "scikit-learn": SparseCoder(learned["scikit-learn"][0],
                                    transform_algorithm="lasso_cd",
                                    transform_alpha=alpha, transform_max_iter=1000),
        "fastlista": LassoSparseCoder(D, alpha=alpha),
    }
    images = {}
    results["pipelines"] = {}
    for name, coder in pipelines.items():
        Dp, t_learn = learned[name]
        Z, t_enc = timed(coder.fit(X[:1]).transform, X)
        image = rebuild(Z, Dp, mean, target.shape)
        images[f"{name} pipeline"] = image
        results["pipelines"][name] = {"learn": t_learn, "encode": t_enc,
                                      "psnr": psnr(image, truth),
                                      "objective": objective(X, Dp, Z, alpha)}
    if verbose:
        print(f"image {clean.shape}, {X.shape[0]} noisy patches of {PATCH}; noisy PSNR "
              f"{results['noisy_psnr']:.2f} dB\n"
              f"dictionaries of {n_atoms} atoms, {epochs} epoch(s) of MiniBatchDictionaryLearning"
              f" on {P.shape[0]} clean patches (alpha=1, batches of 256)\n")
        print(f"{'pipeline':>14} {'learn (s)':>10} {'encode (s)':>11} {'total (s)':>10} "
              f"{'PSNR (dB)':>10} {'objective':>10}")
        for name, r in results["pipelines"].items():
            print(f"{name:>14} {r['learn']:10.2f} {r['encode']:11.3f} "
                  f"{r['learn'] + r['encode']:10.2f} {r['psnr']:10.2f} "
                  f"{r['objective']:10.5f}")
        print(f"\ncoders, all on fastlista's dictionary:")

    coders = {
        "SparseCoder(lasso_cd)": SparseCoder(D, transform_algorithm="lasso_cd",
                                             transform_alpha=alpha,
                                             transform_max_iter=1000),
        "LassoSparseCoder": LassoSparseCoder(D, alpha=alpha),
        f"ISTA ({n_layers} iterations)": None,
        f"LearnedSparseCoder ({n_layers} layers)": LearnedSparseCoder(
            D, alpha=alpha, n_layers=n_layers, max_iter=30 if quick else 50),
    }
    # the network trains on a subsample of the patches to denoise (no clean data)
    n_fit = 1000 if quick else 4000
    X_fit = X[rng.choice(X.shape[0], size=min(X.shape[0], n_fit), replace=False)]
    for name, coder in coders.items():
        if coder is None:               # ISTA = the untrained step network
            from fastlista import Lista
            net = Lista(D, alpha, n_layers)
            t_fit = 0.0
            Z, t_enc = timed(net.transform, X)
        else:
            fit_data = X_fit if isinstance(coder, LearnedSparseCoder) else X[:1]
            _, t_fit = timed(coder.fit, fit_data)
            Z, t_enc = timed(coder.transform, X)
        image = rebuild(Z, D, mean, target.shape)
        if name.startswith("LearnedSparseCoder"):
            images[name] = image
        results[name] = {"fit": t_fit, "encode": t_enc, "psnr": psnr(image, truth),
                         "objective": objective(X, D, Z, alpha)}
    if verbose:
        print(f"{'coder':>32} {'fit (s)':>8} {'encode (s)':>11} {'PSNR (dB)':>10} "
              f"{'objective':>10}")
        for name in coders:
            r = results[name]
            print(f"{name:>32} {r['fit']:8.2f} {r['encode']:11.3f} {r['psnr']:10.2f} "
                  f"{r['objective']:10.5f}")
    if plot:
        _plot(plot, truth, target, images, learned)
    return results


def _mosaic(D, shape=PATCH, columns=10):
    """The atoms as a grid of patches (each scaled to its own range)."""
    n = D.shape[0]
    rows = -(-n // columns)
    h, w = shape
    out = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1), np.nan)
    for k, atom in enumerate(D):
        a = atom.reshape(shape)
        a = (a - a.min()) / (np.ptp(a) or 1)
        r, c = divmod(k, columns)
        out[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = a
    return out


def _plot(path, truth, target, images, learned):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {"clean": truth, "noisy": target, **images}
    fig = plt.figure(figsize=(3 * len(shown), 7.2))
    grid = fig.add_gridspec(2, len(shown), height_ratios=[1, 1.15])
    for i, (name, image) in enumerate(shown.items()):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        title = name if name == "clean" else f"{name}\n{psnr(image, truth):.2f} dB"
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    half = len(shown) // 2
    for (name, (D, seconds)), cols in zip(learned.items(),
                                          (slice(0, half), slice(half, len(shown)))):
        ax = fig.add_subplot(grid[1, cols])
        ax.imshow(_mosaic(D), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{name} MiniBatchDictionaryLearning: {D.shape[0]} atoms, "
                     f"{seconds:.2f} s", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a crop of the image and a small dictionary (seconds)")
    parser.add_argument("--sigma", type=float, default=0.075, help="noise level")
    parser.add_argument("--alpha", type=float, default=0.1, help="Lasso lambda")
    parser.add_argument("--n-layers", type=int, default=10, help="network depth")
    parser.add_argument("--plot", default=None, help="save the images to this file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    main(quick=args.quick, sigma=args.sigma, alpha=args.alpha,
         n_layers=args.n_layers, plot=args.plot)
