"""Crash-safe writes: a file (or a folder) appears under its final name only once it is complete.

Every file the pipeline writes goes through :func:`atomic_file` (``NAME.partial``, flushed, fsynced, then
renamed), so a reader never sees half a file and a kill leaves only a ``.partial`` that the next run removes.
A folder built as a whole (a release, an image-folder export, a report) is built in ``NAME.partial`` and
swapped in by :func:`replace_folder` (:func:`building_folder` does both).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Suffix of a file being written (renamed to its final name once complete; re-exported by the contract).
PARTIAL_SUFFIX = ".partial"



@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open ``path.partial`` for writing; on success flush, fsync and rename it to ``path``.

    On an exception the partial file is deleted and ``path`` is left as it was, so readers never see
    half a file (a kill leaves only a ``.partial``, which the next run removes).
    """
    path = Path(path)
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    encoding = None if "b" in mode else "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and a rename, so readers never see half a file."""
    with atomic_file(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write bytes to ``path`` via a temporary file and a rename."""
    with atomic_file(path) as f:
        f.write(data)


#: Suffix of the folder an old ``NAME`` is moved to while :func:`replace_folder` swaps the new one in.
OLD_SUFFIX = ".old"


def replace_folder(tmp: str | Path, final: str | Path) -> None:
    """Replace the folder ``final`` by the finished folder ``tmp`` (two renames; the old folder is removed last).

    The old ``final`` (if any) is renamed to ``final.old``, ``tmp`` to ``final``, then ``final.old`` is deleted. If
    the second rename fails, the old folder is renamed back, so a failure midway leaves ``final`` as it was; a
    kill between the two renames leaves ``final.old`` and ``tmp``, and the next call starts by removing a stale
    ``final.old``. Callers check beforehand that ``final`` is theirs to replace.
    """
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(final.name + OLD_SUFFIX)
    if old.exists():
        shutil.rmtree(old)
    moved = final.exists()
    if moved:
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if moved:
            os.replace(old, final)
        raise
    if moved:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def building_folder(final: str | Path) -> Iterator[Path]:
    """Build the folder ``final`` in a fresh ``final.partial`` and swap it in on success (:func:`replace_folder`).

    A leftover ``final.partial`` of an earlier try is removed first; on an exception the partial folder is
    removed and ``final`` is left as it was.
    """
    final = Path(final)
    tmp = final.with_name(final.name + PARTIAL_SUFFIX)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, final)
