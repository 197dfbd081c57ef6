"""Folder locks: one process at a time writes a run folder (``RUN/.lock``) or builds a release (its partial folder).

A lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on a file; the file holds ``pid HOST`` of the holder, for the
message the next process gets (:class:`~imagenet_plus.errors.RunInUse`: "RUN is in use by pid N on HOST"). The
operating system releases a flock when the process ends however it ends, so a ``kill -9`` never leaves a stale
lock; the file itself stays (deleting a lock file races with a process opening it) and is harmless.

Hand-written on ``fcntl`` rather than with ``filelock``: the message needs the holder's pid and host written in
the file it locks, and a lock must be taken again by the same process without blocking itself (``run`` holds the
run's lock while each stage takes it too): both are a few lines here.

- **Re-entrant** in one process: a folder this process already holds is not locked twice.
- **One per launch**: under ``torchrun``/``accelerate launch`` only rank 0 (``RANK`` unset or ``0``) takes it; the
  other ranks of that launch work on the same run under its lock.
- **Read-only folders**: when the lock file cannot be created (a read-only disk, a folder this user may not
  write), the lock is taken on the existing file opened for reading, or not at all; such a process cannot
  write the folder either, and its first write is a one-line :class:`~imagenet_plus.errors.StorageError`.
- **Remote folders** (``s3://…``: object stores have no flock): no lock is taken (a DEBUG log says so); one
  writer per shard is what the engines guarantee, and one process per run is the user's affair there.
- **Network file systems**: flock is reliable on local disks; on some NFS/Lustre mounts it works per host only
  (two hosts may both get it). Give each host its own run folder there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from imagenet_plus.errors import RunInUse
from imagenet_plus.io.storage import STORAGE_ERRNOS, is_remote, location, storage_errors

log = logging.getLogger(__name__)

#: The lock file of a run folder (``RUN/.lock``; re-exported by the contract).
LOCK_NAME = ".lock"
#: Environment variable with the process's rank under torchrun / accelerate launch.
RANK_ENV = "RANK"

#: Lock files this process holds: real path → [file descriptor, depth].
_HELD: dict[str, list[int]] = {}


def is_main_process() -> bool:
    """Whether this process is rank 0 of its launch (or a plain process)."""
    return os.environ.get(RANK_ENV, "0").strip() in ("", "0")


def holds(path: str | Path) -> bool:
    """Whether this process holds the lock file ``path``."""
    return os.path.realpath(path) in _HELD


def _holder(fd: int) -> str:
    """``pid N on HOST`` from a held lock file (the holder may not have written it yet: one short retry)."""
    for _ in range(3):
        text = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
        if len(text) == 2 and text[0].isdigit():
            return f"pid {text[0]} on {text[1]}"
        time.sleep(0.05)
    return "another process"


def _open(path: Path, create: bool) -> tuple[int | None, bool]:
    """(descriptor, writable) of the lock file; (None, False) when it cannot be opened on a read-only folder."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o644), True
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS or exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG):
            raise
    try:
        return os.open(path, os.O_RDONLY), False
    except FileNotFoundError:
        return None, False


@contextlib.contextmanager
def hold_lock(path: str | Path, folder: str | Path, create: bool = True) -> Iterator[None]:
    """Hold the lock file ``path`` (for ``folder``: the name in the message) while the block runs.

    Args:
        path: the lock file (created when ``create`` and absent).
        folder: what the lock guards, named in the error.
        create: create the lock file when absent.

    Raises:
        RunInUse: another process holds it.
        StorageError: the lock file cannot be created (no space, a name too long).
    """
    path = Path(path)
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    with storage_errors(path):
        fd, writable = _open(path, create)
    if fd is None:
        log.debug("%s cannot be created (read-only folder): %s is used without a lock", path, folder)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInUse(folder, _holder(fd)) from None
        except OSError as exc:  # a file system without locks (ENOLCK), or one that wants a writable descriptor
            log.warning("cannot lock %s (%s): make sure no other process writes %s", path, exc.strerror, folder)
        holder = f"{os.getpid()} {socket.gethostname()}\n".encode()
        if writable and os.pread(fd, 256, 0) != holder:
            with storage_errors(path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder, 0)
        _HELD[key] = [fd, 1]
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # releases the flock


def folder_lock(folder: str | Path) -> contextlib.AbstractContextManager[None]:
    """Hold ``FOLDER/.lock`` while the block runs (rank 0 of a launch only; see the module docstring).

    The folder must exist. Raises :class:`~imagenet_plus.errors.RunInUse` when another process holds it.
    """
    if not is_main_process():
        return contextlib.nullcontext()
    folder = location(folder)
    if is_remote(folder):
        log.debug("%s is on object storage, which has no locks: it is used without one", folder)
        return contextlib.nullcontext()
    return hold_lock(Path(folder) / LOCK_NAME, folder)
