"""New files beside a target, for writes that replace it only once complete.

The command line's outputs and ``Lista.save`` write to a new file in the
target's directory and rename it over the target once it is complete and
synced: a reader never sees a partial file, and a failed write leaves the
target as it was.
"""
import errno
import os
import secrets

_WRITE = os.O_WRONLY | getattr(os, "O_BINARY", 0)


def new_file(directory, prefix, suffix, mode):
    """Create a file ``prefix + random hex + suffix`` in ``directory``.

    Created exclusively (never an existing file), for writing, with
    ``mode`` less the umask (and the directory's default ACL, as ``open``
    creates files).

    Returns
    -------
    fd : int
        Open for writing; the caller closes it.
    path : str

    Raises
    ------
    OSError
        As ``os.open`` creating a file there (a missing directory, no
        permission); FileExistsError if 100 random names were all taken.
    """
    directory = os.fspath(directory)
    for _ in range(100):
        path = os.path.join(directory, f"{prefix}{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(path, _WRITE | os.O_CREAT | os.O_EXCL, mode), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", directory)
