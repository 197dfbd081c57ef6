"""Crash-safe writes: a file appears under its final name only once it is complete.

Every file the pipeline writes goes through :func:`atomic_file` (``NAME.partial``, flushed, fsynced, then
renamed), so a reader never sees half a file and a kill leaves only a ``.partial`` that the next run removes.
"""

from __future__ import annotations

import contextlib
import json
import os
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
