"""Figures of the experiments (matplotlib, the ``plot`` extra).

Each ``plot_<figure>(result, path)`` draws an
:class:`fastlista.paper.experiments.ExperimentResult` and writes a PNG. Matplotlib
is imported only when a plot is drawn, through its object-oriented API with
the Agg canvas: no pyplot state, no GUI backend, nothing changed for a user
who has pyplot open.
"""
import numpy as np

from .experiments import LABELS, theoretical_lipschitz_ratio
from .figures import FIGURES

__all__ = ["plot", "PLOTTERS"]

#: One colour per method, shared by every figure.
COLORS = {
    "ISTA": "indigo", "FISTA": "darkorange", "Backtracking ISTA": "seagreen",
    "OISTA": "indianred", "SLISTA": "indianred", "LISTA-CP": "mediumseagreen",
    "ALISTA": "cornflowerblue", "LISTA": "goldenrod",
    # support selection: the colour of the network without it, darker
    "LISTA-CPSS": "darkgreen", "ALISTA-SS": "navy", "LISTA-SS": "darkgoldenrod",
}
#: Line styles other than solid.
STYLES = {"FISTA": "--", "Backtracking ISTA": ":", "LISTA-CPSS": "--", "ALISTA-SS": "--",
          "LISTA-SS": "--"}
#: Order of the methods in the legends of the depth plots.
METHOD_ORDER = ("ISTA", "FISTA", "LISTA-CP", "LISTA-CPSS", "ALISTA", "ALISTA-SS", "SLISTA",
                "LISTA", "LISTA-SS")
#: The pairs (without, with support selection) of the recovery panel.
SS_PAIRS = (("LISTA-CP", "LISTA-CPSS"), ("ALISTA", "ALISTA-SS"), ("LISTA", "LISTA-SS"))
FLOOR = 1e-12     # F - F* below this is drawn at the floor (log axes)
DPI = 100


def _figure(nrows=1, ncols=1, figsize=(6.0, 4.0), **kw):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is the plot extra
        raise ImportError(
            "Plots need matplotlib: pip install 'fastlista[plot]' "
            "(or run with --no-plot).") from exc
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig, path):
    # PNG whatever the name (the command line writes a temporary file
    # before renaming it onto a link's target, of any name)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _floor(v):
    v = np.asarray(v, dtype=float)
    return np.where(np.isnan(v), np.nan, np.maximum(v, FLOOR))


def _integer_x(ax):
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _line(ax, x, y, label, display=None, **kw):
    """A method's line in its colour and style, labelled ``display`` or its name."""
    style = dict(color=COLORS.get(label), linestyle=STYLES.get(label, "-"), lw=2)
    style.update(kw)
    ax.plot(x, y, label=label if display is None else display, **style)


def _inv_ls_lines(ax, layers, median, where=""):
    """The median 1/L_S and 2/L_S of each layer (units of 1/L)."""
    ax.plot(layers, median, color="darkgoldenrod", lw=2, label=r"median $1/L_S$" + where)
    ax.plot(layers, 2 * median, color="steelblue", lw=1.5, ls="--",
            label=r"median $2/L_S$")


# ---------------------------------------------------------------------------

def plot_oista(result, path):
    t = result.table
    fig, axes = _figure(2, 1, figsize=(6, 4.5), sharex=True,
                        gridspec_kw={"height_ratios": [3, 1]})
    ax, ax2 = axes[:, 0]
    for key in ("ista", "fista", "backtracking", "oista"):
        _line(ax, t["iteration"], _floor(t[key]), LABELS[key])
    ax.set_yscale("log")
    ax.set_ylabel(r"$F_x - F_x^*$")
    ax.grid(alpha=0.4)
    s = result.settings
    ax.set_title(f"Fig 2: {s['n_atoms']} atoms x {s['n_features']} features, "
                 f"$\\lambda$={s['lmbd']}, one signal", fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    ax2.plot(t["iteration"], t["oista_step_x_L"], color=COLORS["OISTA"], lw=2)
    ax2.axhline(1.0, color="k", ls="--", lw=1)
    ax2.text(1, 1.05, "1/L", fontsize=8, va="bottom")
    ax2.set_ylabel("OISTA step\n(units of 1/L)", fontsize=8)
    ax2.set_xlabel("iterations")
    ax2.set_ylim(0, np.nanmax(t["oista_step_x_L"]) * 1.15)
    ax2.grid(alpha=0.4)
    return _save(fig, path)


def plot_steps(result, path):
    t = result.table
    layers = t["layer"]
    q = result.curves["quantiles"]
    cols = [c for c in t if c.startswith("inv_LS_q")]
    band = np.array([t[c] for c in cols])
    fig, axes = _figure(figsize=(6, 4))
    ax = axes[0, 0]
    n = len(cols)
    for i in range(n // 2):
        alpha = 0.15 + 0.5 * (i + 1) / n
        ax.fill_between(layers, band[i], band[n - 1 - i], color="sandybrown",
                        alpha=alpha, lw=0)
        ax.fill_between(layers, 2 * band[i], 2 * band[n - 1 - i], color="lightsteelblue",
                        alpha=alpha * 0.6, lw=0)
    _inv_ls_lines(ax, layers, t["inv_LS_median_x_L"], " (training supports)")
    s = result.settings
    ax.plot(layers, t["step_x_L"], color=COLORS["SLISTA"], lw=3, marker="o", ms=3,
            label=f"learned SLISTA step ({s.get('optimizer', 'gd')})")
    other = s.get("compare_optimizer")
    if other and f"step_x_L_{other}" in t:
        ax.plot(layers, t[f"step_x_L_{other}"], color="gray", lw=1.2, marker=".", ms=3,
                alpha=0.8, label=f"learned SLISTA step ({other}, max "
                f"{np.nanmax(t[f'step_x_L_{other}']):.3g})")
        top = 2.2 * float(np.nanmax(band[-1]))
        ax.set_ylim(0, max(top, 1.2 * float(np.nanmax(t["step_x_L"]))))
    ax.axhline(1.0, color="k", ls="--", lw=1, label="1/L")
    ax.set_xlabel("layer")
    _integer_x(ax)
    ax.set_ylabel("step (units of 1/L)")
    ax.set_title(f"Fig 4: SLISTA, {s['n_atoms']} x {s['n_features']}, "
                 f"$\\lambda$={s['lmbd']}, {s['n_layers']} layers "
                 f"(bands: {int(q[0]*100)}-{int(q[-1]*100)}% quantiles)", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.4)
    return _save(fig, path)


def plot_dictionary_distance(result, path):
    t = result.table
    fig, axes = _figure(1, 2, figsize=(8, 3.5))
    ax, ax2 = axes[0]
    ax.plot(t["layer"], t["alphaW_minus_betaD_fro"], color=COLORS["LISTA-CP"], lw=2.5,
            label="LISTA-CP")
    ax.axhline(0, color="k", ls="--", lw=1)
    ax.set_xlabel("layer")
    ax.set_ylabel(r"$\|\alpha^{(t)}W^{(t)} - \beta^{(t)}D\|_F$")
    ax.grid(alpha=0.4)
    ax.legend(fontsize=8)
    ax2.plot(t["layer"], t["relative_distance"], color=COLORS["LISTA-CP"], lw=2.5)
    ax2.axhline(0, color="k", ls="--", lw=1)
    ax2.set_xlabel("layer")
    ax2.set_ylabel(r"$\|(\alpha^{(t)}/\beta^{(t)})W^{(t)} - D\|_F / \|D\|_F$")
    ax2.grid(alpha=0.4)
    s = result.settings
    fig.suptitle(f"Fig 5: LISTA-CP, {s['n_atoms']} x {s['n_features']}, "
                 f"$\\lambda$={s['lmbd']}, {s['n_layers']} layers, {s['per_layer']} "
                 f"training", fontsize=10)
    return _save(fig, path)


def plot_networks(result, path):
    t = result.table
    lasso = t["problem"] == "lasso" if "problem" in t else np.ones(len(t["method"]), bool)
    recovery = ~lasso
    datasets = list(dict.fromkeys(t["dataset"][lasso]))
    lmbds = list(dict.fromkeys(t["lmbd"][lasso]))
    extra = int(recovery.any())
    ncols = max(len(lmbds), 2 if extra else 1)
    nrows = len(datasets) + extra
    fig, axes = _figure(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows))
    for ax in axes[:len(datasets), len(lmbds):].ravel():
        ax.set_axis_off()
    methods = [m for m in METHOD_ORDER if m in set(t["method"][lasso])]
    for i, ds in enumerate(datasets):
        for j, lm in enumerate(lmbds):
            ax = axes[i, j]
            for m in methods:
                sel = lasso & (t["dataset"] == ds) & (t["lmbd"] == lm) & (t["method"] == m)
                order = np.argsort(t["depth"][sel])
                _line(ax, t["depth"][sel][order], _floor(t["gap"][sel][order]), m,
                      marker="o", ms=3)
            ax.set_yscale("log")
            lo, hi = ax.get_ylim()
            ax.set_ylim(lo, min(hi, 1.0))      # the paper's axis stops at 1
            ax.set_title(f"{ds}, $\\lambda$={lm}", fontsize=10)
            ax.set_xlabel("layers / iterations")
            _integer_x(ax)
            ax.set_ylabel(r"test $F_x - F_x^*$")
            ax.grid(alpha=0.4)
    if datasets:
        axes[0, 0].legend(fontsize=8)
    title = ("Fig 6: held-out mean F - F* against depth (one network per depth; "
             "above 1: off the chart)")
    if extra:
        _plot_recovery(result, axes[-1], recovery)
        title += ("\nbottom: supervised sparse recovery, test NMSE by layer of one "
                  "network trained layer-wise")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _plot_recovery(result, axes, rows):
    """The recovery row of ``networks``: NMSE by depth, then the SS gain."""
    t = result.table
    s = result.settings.get("recovery") or {}
    ax = axes[0]
    methods = [m for m in METHOD_ORDER if m in set(t["method"][rows])]
    nmse = {}
    for m in methods:
        sel = rows & (t["method"] == m)
        order = np.argsort(t["depth"][sel])
        depth, value = t["depth"][sel][order], t["nmse_db"][sel][order]
        nmse[m] = dict(zip(depth.tolist(), value.tolist()))
        lab = m
        if m in ("ISTA", "FISTA"):
            lab = f"{m} ($\\lambda$={t['lmbd'][sel][0]:g})"
        _line(ax, depth, value, m, display=lab, marker="o", ms=3)
    ax.set_xlabel("layer / iteration")
    _integer_x(ax)
    ax.set_ylabel("test NMSE (dB)")
    ax.grid(alpha=0.4)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"recovery: {s.get('n_features', '?')} x {s.get('n_atoms', '?')}, "
                 f"{100 * s.get('density', np.nan):g}% non-zeros, "
                 f"SNR {s.get('snr', np.nan):g} dB", fontsize=10)
    if len(axes) < 2:
        return
    ax2 = axes[1]
    for base, ss in SS_PAIRS:
        if base in nmse and ss in nmse:
            d = sorted(set(nmse[base]) & set(nmse[ss]))
            _line(ax2, d, [nmse[ss][k] - nmse[base][k] for k in d], ss,
                  display=f"{ss} - {base}", marker="o", ms=3)
    ax2.axhline(0.0, color="k", lw=1)
    ax2.set_xlabel("layer")
    _integer_x(ax2)
    ax2.set_ylabel("SS - no SS, test NMSE (dB)\n(below 0: support selection helps)",
                   fontsize=9)
    ax2.grid(alpha=0.4)
    ax2.legend(fontsize=8)
    p = s.get("support_selection")
    ax2.set_title("support selection" + (f" (p={p[0]:g}%, p_max={p[1]:g}%)" if p else ""),
                  fontsize=10)
    for ax in axes[2:]:
        ax.set_axis_off()


def plot_lipschitz_law(result, path):
    t = result.table
    fig, axes = _figure(figsize=(5.5, 4))
    ax = axes[0, 0]
    z = t["zeta"]
    zz = np.linspace(0, 1, 200)
    gamma = result.settings["gamma"]
    ax.plot(zz, theoretical_lipschitz_ratio(zz, gamma), color="k", lw=2,
            label=r"law $((1+\sqrt{\zeta\gamma})/(1+\sqrt{\gamma}))^2$")
    ax.plot(zz, zz, color="gray", ls=":", lw=1.5, label=r"$\zeta$")
    ax.fill_between(z, t["q05"], t["q95"], color="indianred", alpha=0.3, lw=0,
                    label="5-95% of random supports")
    ax.plot(z, t["median"], "o", color="indianred", label=r"measured $L_S/L$ (median)")
    ax.set_xlabel(r"$\zeta = |S| / m$")
    ax.set_ylabel(r"$L_S / L$")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.4)
    ax.legend(fontsize=8, loc="lower right")
    s = result.settings
    ax.set_title(f"Fig E.1: Gaussian D, n={s['n_features']}, $\\gamma$={gamma}",
                 fontsize=10)
    return _save(fig, path)


def plot_iterative(result, path):
    t = result.table
    lmbds = list(dict.fromkeys(t["lmbd"]))
    methods = list(dict.fromkeys(t["method"]))
    fig, axes = _figure(1, 2, figsize=(8, 3.5))
    width = 0.8 / len(methods)
    for ax, col, lab in ((axes[0, 0], "n_iter", "iterations to F* + eps"),
                         (axes[0, 1], "time", "time to F* + eps (s)")):
        for k, m in enumerate(methods):
            med, lo, hi = [], [], []
            for lm in lmbds:
                v = t[col][(t["lmbd"] == lm) & (t["method"] == m)].astype(float)
                med.append(np.nanmedian(v))
                lo.append(np.nanmin(v))
                hi.append(np.nanmax(v))
            x = np.arange(len(lmbds)) + (k - (len(methods) - 1) / 2) * width
            med, lo, hi = map(np.array, (med, lo, hi))
            ax.bar(x, med, width, color=COLORS.get(m), label=m,
                   yerr=[med - lo, hi - med], capsize=2)
        ax.set_xticks(np.arange(len(lmbds)), [f"$\\lambda$={lm}" for lm in lmbds])
        ax.set_yscale("log")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.4, axis="y")
    axes[0, 0].legend(fontsize=8)
    s = result.settings
    fig.suptitle(f"Fig E.2: {s['n_atoms']} x {s['n_features']}, {s['n_seeds']} signals "
                 f"(median, min-max), eps={s['eps']}", fontsize=10)
    return _save(fig, path)


def plot_learning_curves(result, path):
    t = result.table
    fig, axes = _figure(figsize=(5.5, 4))
    ax = axes[0, 0]
    for m in dict.fromkeys(t["method"]):
        sizes = np.array(sorted(set(t["n_train"][t["method"] == m])))
        med = [np.median(t["test_gap"][(t["method"] == m) & (t["n_train"] == n)])
               for n in sizes]
        _line(ax, sizes, _floor(med), m, marker="o", ms=4)
    ax.axhline(max(result.curves["ista_gap"], FLOOR), color=COLORS["ISTA"], ls="--",
               lw=1.5, label=f"ISTA ({result.settings['n_layers']} iterations)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training samples")
    ax.set_ylabel(r"median test $F_x - F_x^*$")
    ax.grid(alpha=0.4)
    ax.legend(fontsize=8)
    s = result.settings
    ax.set_title(f"Fig E.3: {s['n_atoms']} x {s['n_features']}, {s['n_layers']} layers, "
                 f"$\\lambda$={s['lmbd']}", fontsize=10)
    return _save(fig, path)


def plot_lambda_transfer(result, path):
    t = result.table
    s = result.settings
    fig, axes = _figure(figsize=(6, 4))
    ax = axes[0, 0]
    ax.axhline(1.0, color=COLORS["ISTA"], lw=2, label="ISTA")
    for c in t:
        if c.endswith("_relative_gain"):
            lab = c[: -len("_relative_gain")]
            _line(ax, t["lmbd_test"], t[c], lab)
    ax.axvline(s["lmbd_train"], color="k", ls="--", lw=1)
    ax.text(s["lmbd_train"], 0.95, r" $\lambda_{train}$", transform=ax.get_xaxis_transform(),
            fontsize=9, va="top")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"$\lambda_{test}$")
    ax.set_ylabel(r"relative gain $(F_{net} - F^*) / (F_{ISTA} - F^*)$")
    ax.grid(alpha=0.4)
    ax.legend(fontsize=8)
    ax.set_title(f"{s['n_layers']} layers trained at $\\lambda$={s['lmbd_train']} "
                 f"({s['n_atoms']} x {s['n_features']})", fontsize=10)
    return _save(fig, path)


def plot_demo(result, path):
    t = result.table
    s = result.settings
    has_steps = "SLISTA step x L" in t
    fig, axes = _figure(1, 2 if has_steps else 1, figsize=(9 if has_steps else 5.5, 3.8))
    ax = axes[0, 0]
    for m in METHOD_ORDER:
        if m in t:
            _line(ax, t["layer"], _floor(t[m]), m, marker="o", ms=3)
    ax.set_yscale("log")
    ax.set_xlabel("layers / iterations")
    _integer_x(ax)
    ax.set_ylabel(r"held-out $F_x - F_x^*$")
    ax.grid(alpha=0.4)
    ax.legend(fontsize=8)
    ax.set_title(f"{s['dataset']}, {s['n_atoms']} x {s['n_features']}, "
                 f"$\\lambda$={s['lmbd']}", fontsize=10)
    if has_steps:
        ax2 = axes[0, 1]
        ax2.plot(t["layer"], t["SLISTA step x L"], color=COLORS["SLISTA"], lw=2.5,
                 marker="o", ms=3, label="learned SLISTA step")
        _inv_ls_lines(ax2, t["layer"], t["median 1/L_S x L"])
        ax2.axhline(1.0, color="k", ls="--", lw=1, label="1/L")
        ax2.set_xlabel("layer")
        _integer_x(ax2)
        ax2.set_ylabel("step (units of 1/L)")
        ax2.grid(alpha=0.4)
        ax2.legend(fontsize=8)
        ax2.set_title("SLISTA steps against the local constants", fontsize=10)
    return _save(fig, path)


#: Figure name -> its plot: ``plot_<name>`` for every figure of the registry,
#: and the demo's.
PLOTTERS = {name: globals()["plot_" + name.replace("-", "_")]
            for name in (*FIGURES, "demo")}


def plot(result, path):
    """Draw ``result`` (an ExperimentResult) into the PNG file ``path``."""
    return PLOTTERS[result.name](result, path)
