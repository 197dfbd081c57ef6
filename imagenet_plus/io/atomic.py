"""Crash-safe writes: a file (or a folder) appears under its final name only once it is complete.

Every file the pipeline writes goes through :func:`atomic_file` (``NAME.partial``, flushed, fsynced, then
renamed), so a reader never sees half a file and a kill leaves only a ``.partial`` that the next run removes.
A folder built as a whole (a release, an image-folder export, a report) is built in ``NAME.partial`` and
swapped in by :func:`replace_folder` (:func:`building_folder` does both).

Ownership: a partial folder is the project's only when it holds the marker file ``.imagenet-plus``
(:data:`PARTIAL_MARKER`), written first thing when the folder is made and locked (:mod:`~imagenet_plus.io.lock`)
while a process builds in it. A leftover marked partial folder of a killed process is emptied and reused; an
unmarked one, a ``NAME.old`` without the marker, or a ``NAME`` holding files the caller does not own is refused
(:class:`~imagenet_plus.errors.ForeignFiles`), with nothing deleted. Disk errors become one line
(:mod:`~imagenet_plus.io.storage`).

**Remote locations** (a ``UPath`` from :func:`~imagenet_plus.io.storage.location`): object stores have no rename,
but they make an uploaded object visible whole or not at all. :func:`atomic_file` writes a local scratch file and
uploads it once when the block succeeds (nothing appears on a failure or a kill); :func:`building_folder` builds in
a local scratch folder, uploads its files (the folder's done markers, the names given by ``last``, after
everything else), then deletes the old folder's files that the new one does not have, after checking they are the
project's. A remote folder has no lock: one writer per folder is the caller's affair (docs/safety.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from imagenet_plus.errors import ForeignFiles, UserError
from imagenet_plus.io.lock import hold_lock, holds
from imagenet_plus.io.storage import (
    Location,
    is_remote,
    location,
    remote_errors,
    remove_tree,
    scratch_dir,
    scratch_file,
    storage_errors,
    upload,
)

#: Suffix of a file being written (renamed to its final name once complete; re-exported by the contract).
PARTIAL_SUFFIX = ".partial"
#: File inside a partial folder (``NAME.partial/``) saying the project made it (re-exported by the contract).
PARTIAL_MARKER = ".imagenet-plus"


@contextlib.contextmanager
def atomic_file(path: str | Location, mode: str = "wb") -> Iterator[Any]:
    """Open ``path.partial`` for writing; on success flush, fsync and rename it to ``path``.

    On an exception the partial file is deleted and ``path`` is left as it was, so readers never see
    half a file (a kill leaves only a ``.partial``, which the next run removes). A full, read-only or forbidden
    disk is a :class:`~imagenet_plus.errors.StorageError` naming ``path``. A remote ``path`` is written to a local
    scratch file and uploaded once on success (see the module docstring).
    """
    path = location(path)
    if is_remote(path):
        with _remote_file(path, mode) as f:
            yield f
        return
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    encoding = None if "b" in mode else "utf-8"
    try:
        with storage_errors(path), open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        with storage_errors(path):
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the original error matters more
            tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _remote_file(path: Location, mode: str) -> Iterator[Any]:
    """:func:`atomic_file` for a remote ``path``: a local scratch file, uploaded once when the block succeeds."""
    tmp = scratch_file(path)
    encoding = None if "b" in mode else "utf-8"
    try:
        with storage_errors(tmp), open(tmp, mode, encoding=encoding) as f:
            yield f
        upload(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Location, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and a rename, so readers never see half a file."""
    with atomic_file(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def write_bytes_atomic(path: Location, data: bytes) -> None:
    """Write bytes to ``path`` via a temporary file and a rename."""
    with atomic_file(path) as f:
        f.write(data)


#: Suffix of the folder an old ``NAME`` is moved to while :func:`replace_folder` swaps the new one in.
OLD_SUFFIX = ".old"
#: Seconds a process waits for the marker of a partial folder another process has just made.
MARKER_WAIT_SECONDS = 0.5


def partial_folder(final: str | Path) -> Path:
    """``NAME.partial`` beside the folder ``NAME`` (where it is built).

    Raises:
        UserError: ``final`` names no folder (``.``, ``..``, ``/``).
    """
    final = Path(final)
    if final.name in ("", ".", ".."):
        raise UserError(f"{final} does not name a folder to create: give it a name (e.g. {final / 'release'})")
    return final.with_name(final.name + PARTIAL_SUFFIX)


def foreign_entries(folder: Path, owned: Callable[[str], bool] | None) -> list[str]:
    """Paths below ``folder`` (relative, ``/``-separated) that ``owned`` does not accept (None: accepts nothing).

    The marker file is the project's; a folder ``owned`` refuses is listed, not entered.
    """
    out: list[str] = []
    for root, dirs, files in os.walk(folder):
        here = Path(root).relative_to(folder)
        keep = []
        for name in sorted(dirs) + sorted(files):
            rel = (here / name).as_posix()
            if rel == PARTIAL_MARKER:
                continue
            if owned is None or not owned(rel):
                out.append(rel)
            elif name in dirs:
                keep.append(name)
        dirs[:] = keep
    return out


def _check_ours(folder: Path, owned: Callable[[str], bool] | None, marked: bool) -> None:
    """Refuse ``folder`` unless it is a real folder holding only what ``owned`` accepts (and the marker, if
    ``marked``)."""
    if folder.is_symlink() or not folder.is_dir():
        raise ForeignFiles(folder, "is in the way and is not a folder imagenet-plus made: move it away, then re-run")
    if marked and not (folder / PARTIAL_MARKER).is_file():
        raise ForeignFiles(folder, f"was not made by imagenet-plus (no {PARTIAL_MARKER} file inside): move it away "
                                   "or delete it, then re-run")
    foreign = foreign_entries(folder, owned)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ForeignFiles(folder, f"holds files imagenet-plus did not write ({foreign[0]}{more}): move them out, "
                                   "then re-run")


def replace_folder(tmp: str | Path, final: str | Path, owned: Callable[[str], bool] | None = None) -> None:
    """Replace the folder ``final`` by the finished folder ``tmp`` (two renames; the old folder is removed last).

    The old ``final`` (if any) is marked as the project's and renamed to ``final.old``, ``tmp`` to ``final``, then
    ``final.old`` is deleted. If the second rename fails, the old folder is renamed back, so a failure midway
    leaves ``final`` as it was; a kill between the two renames leaves ``final.old`` (marked: the next call starts by
    removing it) and ``tmp``. ``tmp``'s marker is removed just before its rename, so the final folder never holds
    it; a kill in that instant (two system calls) leaves an unmarked ``tmp``, which the next build refuses, naming
    it, until it is removed by hand.

    Args:
        tmp: the finished folder (its marker, if any, is removed before it takes the final name).
        final: the folder to replace.
        owned: accepts the relative paths (``a/b.png``) that may be in an old ``final``; None: it must be empty.

    Raises:
        ForeignFiles: ``final`` holds anything ``owned`` does not accept, or ``final.old`` exists without the
            marker (or holds such files): nothing is deleted.
    """
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(final.name + OLD_SUFFIX)
    with storage_errors(final):
        if old.exists() or old.is_symlink():
            _check_ours(old, owned, marked=True)
            shutil.rmtree(old)
        moved = final.exists() or final.is_symlink()
        if moved:
            _check_ours(final, owned, marked=False)
            (final / PARTIAL_MARKER).touch()
            os.replace(final, old)
        (tmp / PARTIAL_MARKER).unlink(missing_ok=True)
        try:
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                (tmp / PARTIAL_MARKER).touch()
                if moved:
                    os.replace(old, final)
                    (final / PARTIAL_MARKER).unlink()
            raise
    if moved:
        shutil.rmtree(old, ignore_errors=True)


def _make_partial(tmp: Path) -> bool:
    """Make ``tmp`` (True), or check that the existing one is the project's (False)."""
    try:
        tmp.mkdir(parents=True)
        return True
    except FileExistsError:
        pass
    deadline = time.monotonic() + MARKER_WAIT_SECONDS
    while True:  # another process may have just made it and not yet written its marker
        if tmp.is_dir() and not tmp.is_symlink() and (tmp / PARTIAL_MARKER).is_file():
            return False
        if time.monotonic() > deadline:
            _check_ours(tmp, None, marked=True)
        time.sleep(0.02)


def _empty(folder: Path) -> None:
    """Delete everything in a partial folder of the project but its marker."""
    for child in folder.iterdir():
        if child.name == PARTIAL_MARKER:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


@contextlib.contextmanager
def claimed_partial(final: str | Path) -> Iterator[Path]:
    """Hold ``final.partial`` for this process while the block runs; yields it, empty but for its marker.

    A fresh partial folder is made with its marker; a marked one left by a killed process is emptied; one
    another process holds is :class:`~imagenet_plus.errors.RunInUse` (untouched); an unmarked one is
    :class:`~imagenet_plus.errors.ForeignFiles` (untouched). The lock on the marker is the lock on building
    ``final`` (two ``release`` to one ``--out``). On an exception, or when the block swapped nothing in, the
    partial folder is removed. Inside a block that already holds it (this process), yields it unchanged. A remote
    ``final`` yields None (nothing to claim: :func:`building_folder` builds it in local scratch).
    """
    final = location(final)
    if is_remote(final):  # built in local scratch by building_folder; an object store has no lock to take
        yield None
        return
    tmp = partial_folder(final)
    marker = tmp / PARTIAL_MARKER
    if holds(marker):
        if not marker.is_file():
            raise RuntimeError(f"{tmp} was swapped in already by the block that holds it")
        yield tmp
        return
    with storage_errors(tmp):
        fresh = _make_partial(tmp)
    with hold_lock(marker, final):
        try:
            if not fresh:
                with storage_errors(tmp):
                    _empty(tmp)
            yield tmp
        finally:
            if tmp.is_dir() and marker.is_file():  # not swapped in
                shutil.rmtree(tmp, ignore_errors=True)


def remote_foreign_entries(folder: Location, owned: Callable[[str], bool] | None) -> list[str]:
    """:func:`foreign_entries` of a remote folder (its objects, relative, ``/``-separated)."""
    with remote_errors(folder):
        if not folder.fs.isdir(folder.path):
            return []
        base = folder.path.rstrip("/") + "/"
        names = sorted(p[len(base):] for p in folder.fs.find(folder.path) if p.startswith(base))
    return [n for n in names if n != PARTIAL_MARKER and (owned is None or not owned(n))]


def upload_folder(tmp: Path, final: Location, owned: Callable[[str], bool] | None = None,
                  last: tuple[str, ...] = ()) -> None:
    """Make the remote folder ``final`` hold what the local folder ``tmp`` holds: every file uploaded whole (the
    names in ``last``, the folder's done markers, after the others), then the old files ``tmp`` lacks deleted.

    Raises:
        ForeignFiles: ``final`` holds anything ``owned`` does not accept (checked before anything is written).
    """
    foreign = remote_foreign_entries(final, owned)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ForeignFiles(final, f"holds files imagenet-plus did not write ({foreign[0]}{more}): move them out, "
                                  "then re-run")
    files = sorted((p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()),
                   key=lambda rel: (rel in last, last.index(rel) if rel in last else 0, rel))
    files = [f for f in files if f != PARTIAL_MARKER]
    for rel in files:
        upload(tmp / rel, final / rel)
    base = final.path.rstrip("/") + "/"
    with remote_errors(final):
        old = [p for p in final.fs.find(final.path) if p.startswith(base) and p[len(base):] not in files]
        if old:
            final.fs.rm(old)


@contextlib.contextmanager
def building_folder(final: str | Location, owned: Callable[[str], bool] | None = None,
                    last: tuple[str, ...] = ()) -> Iterator[Path]:
    """Build the folder ``final`` in ``final.partial`` (:func:`claimed_partial`) and swap it in on success
    (:func:`replace_folder`, with ``owned`` telling which files of an old ``final`` may go).

    On an exception the partial folder is removed and ``final`` is left as it was; a disk error while building
    is a :class:`~imagenet_plus.errors.StorageError`. A remote ``final`` is built in a local scratch folder and
    uploaded by :func:`upload_folder` (``last``: the names uploaded after every other file).
    """
    final = location(final)
    if is_remote(final):
        with claimed_partial(scratch_dir("folders", os.urandom(8).hex()) / final.name) as tmp:
            with storage_errors(tmp):
                yield tmp
            upload_folder(tmp, final, owned, last)
            remove_tree(tmp)
        return
    with claimed_partial(final) as tmp:
        with storage_errors(tmp):
            yield tmp
        replace_folder(tmp, final, owned)
