"""Saving and loading networks: a versioned ``.npz`` archive, no pickle.

The archive holds a format tag and version, D, lmbd, the parametrization,
the number of layers, whether codes are non-negative, one entry per layer
and key (``layer{t}_{key}``) and the loss history. Saving replaces a file
only with a complete archive. Loading checks the whole table of contents
against the declared number of layers before building anything, so that a
crafted or truncated file fails fast with a ``ValueError``, never unpickles,
and refuses any entry a cast would change: a file it accepts is loaded
exactly.
"""
import contextlib
import errno
import os
import stat

import numpy as np

from .._files import WRITE, link_target, may_replace, new_file
from .._validation import not_real_reason, short_repr
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
    """Write ``net`` to exactly ``path`` (no suffix is added), atomically.

    The archive is written to a new file in the target's directory, flushed
    to disk, then renamed over the target: nothing is created at a new
    ``path`` before (a reader never finds it empty or partial), and a save
    that fails (a full disk, an interrupt, an error while writing) leaves
    the file at ``path`` as it was, no file where there was none, and no
    temporary file (only a process killed outright, by SIGKILL or a power
    loss, can leave its ``.fastlista-save-*.tmp`` beside the target, or a
    KeyboardInterrupt landing in the few bytecodes between the temporary's
    creation and its record; never a partial target). Otherwise ``path`` is
    treated as by ``open(path, "wb")``: symbolic links are followed (the
    file they point to is replaced, the links stay), a new file gets the
    mode ``open`` gives it (0o666 less the umask), a replaced file keeps its
    mode, and a device or a pipe is written in place. Unlike ``open``, the
    file is replaced rather than rewritten: other hard links to it keep the
    old archive, and the new file belongs to the user who saves it.

    Parameters
    ----------
    net : Lista
        The network.
    path : str, bytes or os.PathLike
        The file to write.

    Raises
    ------
    OSError
        As ``open(path, "wb")``: IsADirectoryError (``path`` is a directory
        or ends with a separator), FileNotFoundError (its directory does not
        exist, or ``path`` is empty), PermissionError (the file is not
        writable), NotADirectoryError, a loop of symbolic links (ELOOP), a
        name too long. PermissionError too when the file's directory is not
        writable (the new archive is written there), or when the file is
        another user's in a sticky directory (it cannot be replaced).
    """
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
    path = os.fspath(path)
    if path and not os.path.basename(path):
        # "name/": open(path, "wb") refuses it (EISDIR) once "name"'s own
        # directory resolves, whatever "name" is; otherwise os.open's error
        parent = os.path.dirname(path.rstrip(os.sep if isinstance(path, str) else b"/"))
        if os.path.isdir(parent or os.curdir):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    # open(path, "wb") without creating or truncating anything: its errors,
    # its symbolic links, a device or a pipe written in place
    try:
        fd = os.open(path, WRITE)
    except FileNotFoundError:
        if not os.path.basename(path):      # "" or "missing/name/": open's error
            raise
        # a new file (or a dangling symbolic link's new target): it appears
        # only when the complete archive is renamed onto it
        st = None
    else:
        with os.fdopen(fd, "wb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):    # a device or a pipe: nothing to replace
                np.savez(f, **arrays)
                return
    # the file open would write, its links followed as open follows them
    target = os.fsdecode(link_target(path))
    if not os.path.basename(target):        # a link to "name/": open's error
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if st is not None and not may_replace(target, st):
        raise PermissionError(errno.EPERM, "it belongs to another user, in a sticky "
                              "directory: the new archive cannot be renamed over it", path)
    directory = os.path.dirname(target) or os.curdir
    tmp = None
    try:
        try:
            # a new file's mode as open gives it (0o666 less the umask); a
            # replaced file's copy private until it gets that file's mode
            fd, tmp = new_file(directory, ".fastlista-save-", ".tmp",
                               0o666 if st is None else 0o600)
        except OSError as exc:
            # for a new file, open's error creating it in that directory
            raise OSError(exc.errno, exc.strerror, path if st is None else directory) from None
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        if st is not None:
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.replace(tmp, target)
    except BaseException:
        # nothing at the target changed before os.replace
        with contextlib.suppress(OSError):
            if tmp is not None:
                os.unlink(tmp)
        raise


def _scalar(f, key, kind=None):
    """The 0-d entry ``key``, as is (the constructor validates it) or through
    ``kind``: ``str``."""
    v = f[key]
    if v.shape != ():
        raise ValueError(f"{key!r} must be a scalar; got shape {v.shape}")
    return v[()] if kind is None else kind(v[()])


def _integer(f, key):
    """The 0-d entry ``key``, of an integer dtype (no float, bool, complex or
    text, whatever its value), as an int.

    Raises
    ------
    ValueError
        Naming ``key``, its value and dtype, and what was expected.
    """
    v = _scalar(f, key)
    if not isinstance(v, np.integer):       # (np.bool_ is not an np.integer)
        raise ValueError(f"entry {key!r} holds {short_repr(v.item())} ({v.dtype}): "
                         "expected an integer")
    return int(v)


def _check_exact(key, stored, loaded):
    """Refuse the entry ``key`` unless ``loaded``, the network's copy of the
    file's ``stored`` values, holds them exactly.

    A cast c = fl(v) rounds to nearest, and c = v exactly when casting c back
    to v's dtype gives v: a float c is exact in any wider float, and fl of an
    integer (or bool) is an integer that truncation returns unchanged.

    Raises
    ------
    ValueError
        Naming ``key``, its first value the cast changes and what it became.
    """
    stored = np.asarray(stored)
    loaded = np.asarray(loaded)
    with np.errstate(invalid="ignore", over="ignore"):   # (out of range: changed)
        changed = np.flatnonzero(loaded.astype(stored.dtype) != stored)
    if changed.size:
        i = changed[0]
        raise ValueError(
            f"entry {key!r} holds {stored.flat[i]} ({stored.dtype}), which loads as "
            f"{float(loaded.flat[i])!r} ({loaded.dtype}): expected values that "
            f"{loaded.dtype} represents exactly")


def load(cls, path):
    """Read a network written by :func:`save` (``cls`` builds it).

    Parameters
    ----------
    path : str, bytes or os.PathLike
        The file to read (a file name, as :func:`save` takes: not a file
        object).

    Raises
    ------
    TypeError
        ``path`` is not a str, bytes or os.PathLike.
    OSError
        As ``open(path, "rb")``: FileNotFoundError, IsADirectoryError,
        PermissionError, NotADirectoryError, a loop of symbolic links
        (ELOOP), a name too long.
    ValueError
        The file is not a valid network (naming the entry at fault), or
        reading it failed.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"The 'path' parameter of Lista.load must be a str, bytes or "
                        f"os.PathLike (a file name); got {type(path).__name__}.")
    path = os.fspath(path)
    # open's errors as they are; whatever reading the archive raises, the
    # contents' (a corrupt zip index raises OSError EINVAL, say)
    with open(path, "rb") as file:
        try:
            # an .npz archive is a zip file: anything else is named as such
            # (np.load took text for a pickle, and told the user to load it
            # unsafely; an .npy array failed as a context manager)
            head = file.read(4)
            file.seek(0)
            if head[:2] != b"PK":
                raise ValueError(
                    "not an .npz archive (a zip file, as Lista.save writes): "
                    + ("the file is empty" if not head else
                       "an .npy array" if head.startswith(b"\x93NUM") else
                       f"it starts with {head!r}"))
            with np.load(file, allow_pickle=False) as f:
                if not isinstance(f, np.lib.npyio.NpzFile):
                    raise ValueError("not an .npz archive")
                files = set(f.files)
                if "format" not in files or str(f["format"][()]) != FORMAT:
                    raise ValueError(f"no {FORMAT!r} format tag")
                missing = sorted(_HEADER - files)
                if missing:
                    raise ValueError(f"missing entries {missing}")
                version = _integer(f, "format_version")
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
                n_layers = _integer(f, "n_layers")
                # the table of contents first: nothing is built for a file that
                # does not hold every layer it declares (and no name is listed
                # for more layers than the file has entries)
                if n_layers < 1 or n_layers > len(files):
                    raise ValueError(f"declares n_layers={n_layers} but holds "
                                     f"{len(files) - len(header)} layer entries")
                layers = {f"layer{t}_{k}" for t in range(n_layers) for k in KEYS[par]}
                missing = sorted(layers - files)
                if missing:
                    raise ValueError(f"missing entries {missing[:5]} of its {n_layers} "
                                     f"{par!r} layers")
                extra = files - header - layers
                if extra:
                    raise ValueError(f"unexpected entries {sorted(extra)[:5]}")
                positive = _scalar(f, "positive") if version >= 2 else False
                # the entries the network casts: D to its dtype (float32 or
                # float64), the layers to that dtype, lmbd, support_selection and
                # the loss history to float64
                entries = {key: f[key] for key in ("D", "lmbd", "loss_history")}
                selection = None
                if version >= 2 and f["support_selection"].size:
                    entries["support_selection"] = f["support_selection"]
                    selection = tuple(entries["support_selection"].tolist())
                net = cls(entries["D"], _scalar(f, "lmbd"), n_layers, par, positive=positive,
                          support_selection=selection)
                for t in range(n_layers):
                    for k in KEYS[par]:
                        entries[f"layer{t}_{k}"] = f[f"layer{t}_{k}"]
                net.set_parameters([{k: entries[f"layer{t}_{k}"] for k in KEYS[par]}
                                    for t in range(n_layers)])
                history = entries["loss_history"]
                reason = not_real_reason(history, "loss_history")
                if reason is not None:
                    raise ValueError(reason)
                # (a fit records finite losses only)
                if history.ndim != 1 or not np.all(np.isfinite(history)):
                    raise ValueError("loss_history must be a one-dimensional array of "
                                     "finite losses")
                net.loss_history_ = [float(v) for v in history]
                loaded = {"D": net.D, "lmbd": net.lmbd, "loss_history": net.loss_history_,
                          "support_selection": net.support_selection}
                for t, layer in enumerate(net.parameters):
                    for k, v in layer.items():
                        loaded[f"layer{t}_{k}"] = v
                for key, stored in entries.items():
                    _check_exact(key, stored, loaded[key])
        except MemoryError:
            raise               # (the file may be good: no verdict on it)
        except Exception as exc:  # zip, npy, key and validation errors alike
            raise ValueError(f"{path!r} is not a valid fastlista Lista file: {exc}") from exc
    return net
