"""Saving and loading networks: a versioned ``.npz`` archive, no pickle.

The archive holds a format tag and version, D, lmbd, the parametrization,
the number of layers, whether codes are non-negative, one entry per layer
and key (``layer{t}_{key}``) and the loss history. Loading checks the whole table of contents against the
declared number of layers before building anything, so that a crafted or
truncated file fails fast with a ``ValueError``, and never unpickles.
"""
import operator
import os

import numpy as np

from .._validation import not_real_reason
from ._parameters import KEYS, PARAMETRIZATIONS

FORMAT = "fastlista.Lista"
#: 2 added "positive" and "support_selection" (files of version 1 load
#: with positive=False and no support selection)
FORMAT_VERSION = 2
_HEADER = frozenset({"format", "format_version", "parametrization", "lmbd", "n_layers",
                     "D", "loss_history"})
#: the entries version 2 added: required in a version-2 file (without
#: "positive", a non-negative network would load as a two-sided one)
_HEADER_V2 = _HEADER | {"positive", "support_selection"}


def save(net, path):
    """Write ``net`` to exactly ``path`` (no suffix is added)."""
    arrays = {
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION),
        "parametrization": np.array(net.parametrization),
        "lmbd": np.array(net.lmbd),
        "n_layers": np.array(net.n_layers),
        "positive": np.array(net.positive),
        "support_selection": np.array(net.support_selection or (), dtype=np.float64),
        "D": net.D,
        "loss_history": np.asarray(net.loss_history_, dtype=np.float64),
    }
    for t, layer in enumerate(net.parameters):
        for k, v in layer.items():
            arrays[f"layer{t}_{k}"] = v
    with open(os.fspath(path), "wb") as f:
        np.savez(f, **arrays)


def _scalar(f, key, kind=None):
    """The 0-d entry ``key``, as is (the constructor validates it) or through
    ``kind``: ``operator.index`` for integers (no float, bool or text), ``str``."""
    v = f[key]
    if v.shape != ():
        raise ValueError(f"{key!r} must be a scalar; got shape {v.shape}")
    return v[()] if kind is None else kind(v[()])


def load(cls, path):
    """Read a network written by :func:`save` (``cls`` builds it)."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            files = set(f.files)
            if "format" not in files or str(f["format"][()]) != FORMAT:
                raise ValueError(f"no {FORMAT!r} format tag")
            missing = sorted(_HEADER - files)
            if missing:
                raise ValueError(f"missing entries {missing}")
            version = _scalar(f, "format_version", operator.index)
            if version > FORMAT_VERSION or version < 1:
                raise ValueError(
                    f"format version {version} is not supported (this fastlista "
                    f"reads version {FORMAT_VERSION})")
            header = _HEADER_V2 if version >= 2 else _HEADER
            missing = sorted(header - files)
            if missing:
                raise ValueError(f"missing entries {missing} (format version {version})")
            par = _scalar(f, "parametrization", str)
            if par not in PARAMETRIZATIONS:
                raise ValueError(f"unknown parametrization {par!r}")
            n_layers = _scalar(f, "n_layers", operator.index)
            # the table of contents first: nothing is built for a file that
            # does not hold every layer it declares
            layers = {f"layer{t}_{k}" for t in range(min(n_layers, len(files)))
                      for k in KEYS[par]}
            if n_layers < 1 or len(files) < len(header) + n_layers * len(KEYS[par]):
                raise ValueError(f"declares n_layers={n_layers} but holds "
                                 f"{len(files) - len(header)} layer entries")
            missing = sorted(layers - files)
            if missing:
                raise ValueError(f"missing entries {missing[:5]}")
            extra = files - header - layers
            if extra:
                raise ValueError(f"unexpected entries {sorted(extra)[:5]}")
            positive = _scalar(f, "positive") if version >= 2 else False
            selection = None
            if version >= 2 and f["support_selection"].size:
                selection = tuple(f["support_selection"].tolist())
            net = cls(f["D"], _scalar(f, "lmbd"), n_layers, par, positive=positive,
                      support_selection=selection)
            net.set_parameters([{k: f[f"layer{t}_{k}"] for k in KEYS[par]}
                                for t in range(n_layers)])
            history = f["loss_history"]
            reason = not_real_reason(history, "loss_history")
            if reason is not None:
                raise ValueError(reason)
            # (a fit records finite losses only)
            if history.ndim != 1 or not np.all(np.isfinite(history)):
                raise ValueError("loss_history must be a one-dimensional array of "
                                 "finite losses")
            net.loss_history_ = [float(v) for v in history]
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # zip, npy, key and validation errors alike
        raise ValueError(
            f"{os.fspath(path)!r} is not a valid fastlista Lista file: {exc}") from exc
    return net
