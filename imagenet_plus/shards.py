"""WebDataset shard IO shared by every stage: crash-safe writing and checked reading.

A shard is written as ``NAME.tar.partial`` and renamed to ``NAME.tar`` only once it is complete and
flushed to disk (webdataset's ``ShardWriter`` would leave a truncated tar under its final name after
a kill). Its stats go to ``NAME.json`` (written atomically, after the tar): a shard is done when both
exist. Reading goes through webdataset's own tar expander and key grouping; a truncated or corrupt
tar becomes a :class:`~imagenet_plus.errors.UserError` naming the shard.
"""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from imagenet_plus.contract import PARTIAL_SUFFIX, TAR_MTIME
from imagenet_plus.errors import UserError


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


class PartialTarWriter:
    """Write one WebDataset shard to ``path.partial``; :meth:`commit` renames it to ``path``.

    Samples are mappings with ``__key__`` and bytes/str members; members of a sample stay adjacent.
    Used as a context manager, an exception leaves only the ``.partial`` file (removed on the next run).
    """

    def __init__(self, path: str | Path) -> None:
        import webdataset as wds

        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self._file = open(self.partial, "wb")
        self._writer = wds.TarWriter(self._file, encoder=False, mtime=TAR_MTIME)
        self.count = 0
        self._closed = False

    def write(self, sample: Mapping[str, Any]) -> None:
        """Append one sample."""
        self._writer.write(dict(sample))
        self.count += 1

    def commit(self) -> None:
        """Close, flush to disk and rename to the final name."""
        self._writer.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._closed = True
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Close and delete the partial file."""
        if not self._closed:
            self._closed = True
            try:
                self._writer.close()
            except Exception:  # the tar stream may already be broken; we delete it anyway
                pass
            self._file.close()
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> PartialTarWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.commit()


def iter_shard(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the samples of one tar shard as dicts (``__key__`` plus raw member bytes by extension).

    Raises:
        UserError: the shard is missing, truncated or not a tar file (the message names it).
    """
    import webdataset as wds

    p = Path(path)
    if not p.is_file():
        raise UserError(f"shard not found: {p}")
    try:
        with open(p, "rb") as stream:
            files = wds.tariterators.tar_file_expander([{"url": str(p), "stream": stream}])
            for sample in wds.tariterators.group_by_keys(files):
                sample.pop("__url__", None)
                yield sample
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        reason = str(exc.args[0]) if exc.args else type(exc).__name__
        reason = reason.split(" @ ")[0]
        raise UserError(f"corrupt or truncated shard {p}: {reason}") from None


def read_stats(path: Path) -> dict[str, Any]:
    """Read a shard's stats JSON, naming the file when it is malformed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"unreadable shard stats {path}: {exc}") from None


