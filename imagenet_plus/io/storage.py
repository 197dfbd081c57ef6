"""Disk errors as one line: the one place an ``OSError`` of a full, read-only or forbidden disk becomes a
:class:`~imagenet_plus.errors.StorageError` that names the device and the file.

Every writer of the package (``atomic_file``, the tar writer, the folder builder, the run lock) wraps its writes
in :func:`storage_errors`; the command line keeps :func:`storage_error` as a last resort for a write that is not
wrapped. The device is the mount point holding the file (found by walking up with :func:`os.path.ismount`) and,
when ``/proc/self/mounts`` names it, its source (``/dev/nvme0n1p1``).
"""

from __future__ import annotations

import contextlib
import errno as errnos
import os
from collections.abc import Iterator
from pathlib import Path

from imagenet_plus.errors import StorageError

#: The errnos that are the disk's or the file system's answer (not a bug): they become one line.
STORAGE_ERRNOS = frozenset({errnos.ENOSPC, errnos.EDQUOT, errnos.EFBIG, errnos.EROFS, errnos.EACCES, errnos.EPERM,
                            errnos.ENAMETOOLONG})


def mount_point(path: str | Path) -> str:
    """The mount point holding ``path`` (its nearest existing ancestor's), e.g. ``/`` or ``/data``."""
    p = os.path.abspath(os.fspath(path))
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    while not os.path.ismount(p):
        p = os.path.dirname(p)
    return p


def _mount_source(mount: str) -> str | None:
    """The device ``/proc/self/mounts`` lists for a mount point (``/dev/sda1``), or None (not Linux, a pseudo fs)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            rows = [line.split() for line in f]
    except OSError:
        return None
    sources = [r[0] for r in rows if len(r) > 1 and r[1].replace("\\040", " ") == mount]
    return sources[-1] if sources and sources[-1].startswith("/") else None


def device_of(path: str | Path) -> str:
    """``/data (/dev/nvme0n1p1)``: the mount point holding ``path`` and, when known, its device."""
    mount = mount_point(path)
    source = _mount_source(mount)
    return f"{mount} ({source})" if source else mount


def storage_error(exc: OSError, path: str | Path | None = None) -> StorageError | None:
    """The one-line error for a disk's ``OSError`` (None when ``exc`` is not one: a bug, a missing file…).

    Args:
        exc: the error.
        path: the file being written, when ``exc`` does not name it (a ``write`` or ``close`` does not).
    """
    code = exc.errno
    if code not in STORAGE_ERRNOS:
        return None
    file = str(exc.filename if exc.filename is not None else (path if path is not None else "a file"))
    where = file if exc.filename is not None or path is not None else os.getcwd()
    if code == errnos.ENOSPC:
        message = f"no space left on {device_of(where)} while writing {file}; free space and re-run"
    elif code == errnos.EDQUOT:
        message = f"disk quota exceeded on {device_of(where)} while writing {file}; free space (or raise the quota) " \
                  "and re-run"
    elif code == errnos.EFBIG:
        message = f"file too large for {device_of(where)} (a file size limit) while writing {file}; raise the " \
                  "limit or free space, and re-run"
    elif code == errnos.EROFS:
        message = f"{device_of(where)} is read-only: cannot write {file}; use a writable folder and re-run"
    elif code == errnos.ENAMETOOLONG:
        message = f"file name too long for the file system: {file}; use a shorter folder path or names"
    else:
        message = f"permission denied writing {file}; make its folder writable for this user, or use another folder"
    error = StorageError(file, code, message)
    error.__cause__ = exc
    return error


@contextlib.contextmanager
def storage_errors(path: str | Path) -> Iterator[None]:
    """Turn a disk's ``OSError`` raised inside the block into a :class:`StorageError` naming ``path`` (or the file
    the error names); any other exception passes unchanged."""
    try:
        yield
    except OSError as exc:
        error = storage_error(exc, path)
        if error is None:
            raise
        raise error from exc
