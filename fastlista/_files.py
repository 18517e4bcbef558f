"""New files beside a target, for writes that replace it only once complete.

The command line's outputs and ``Lista.save`` write to a new file in the
target's directory and rename it over the target once it is complete and
synced: a reader never sees a partial file, and a failed write leaves the
target as it was.
"""
import errno
import os
import secrets
import stat

#: opening for writing, in binary mode where the C runtime has a text mode
WRITE = os.O_WRONLY | getattr(os, "O_BINARY", 0)


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
            return os.open(path, WRITE | os.O_CREAT | os.O_EXCL, mode), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", directory)


#: symbolic links followed before ELOOP (Linux's limit)
_MAX_LINKS = 40


def link_target(path):
    """The file that ``open(path, "w")`` writes: ``path`` with the symbolic
    links of its last component followed, each relative to the directory
    of the link, as the kernel follows them.

    Nothing is resolved lexically (``os.path.realpath`` takes
    ``missing/../file`` for ``file``, where ``open`` fails on ``missing``):
    the directories are left in the path for the kernel to resolve, so that
    a new file beside the target, and a rename onto it, fail where ``open``
    fails.

    Raises
    ------
    OSError
        ELOOP past 40 links.
    """
    path = os.fspath(path)
    for _ in range(_MAX_LINKS):
        try:
            text = os.readlink(path)
        except OSError:                 # not a link, or not there
            return path
        path = os.path.join(os.path.dirname(path), text)    # (an absolute text wins)
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)


def may_replace(target, st):
    """Whether a file renamed over ``target`` (of status ``st``) may replace
    it: in a sticky directory, only the file's or the directory's owner
    (or root) may."""
    where = os.stat(os.path.dirname(target) or os.curdir)
    if not where.st_mode & stat.S_ISVTX:
        return True
    return os.geteuid() in (0, st.st_uid, where.st_uid)

