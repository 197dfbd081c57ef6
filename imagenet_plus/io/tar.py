"""WebDataset shard IO shared by every stage: crash-safe writing and checked reading.

A shard is written as ``NAME.tar.partial`` and renamed to ``NAME.tar`` only once it is complete and
flushed to disk (webdataset's ``ShardWriter`` would leave a truncated tar under its final name after
a kill). Its stats go to ``NAME.json`` (written atomically, after the tar): a shard is done when both
exist. Samples are grouped into members and back by webdataset's rules (``__key__`` + ``.ext``, members
of a sample adjacent, sorted by extension; :func:`webdataset.tariterators.group_by_keys` when reading); a
truncated or corrupt tar becomes a :class:`~imagenet_plus.errors.CorruptShard` naming the shard.

**Why the tar blocks are written and read here, not by** ``tarfile``: at ImageNet size a release moves
3.8 M members (image, ``cls``, ``json`` per sample), and Python's ``tarfile`` spends ~40 µs building and
~50 µs parsing each header through its general path (pax records, copies of ``TarInfo``): that was most of
``release``'s time. :func:`tar_member_header` writes, byte for byte, the ustar block ``tarfile`` writes for
the short ASCII names of this project (checked against ``tarfile`` and webdataset's ``TarWriter`` in
tests) and hands any other name to ``tarfile`` itself; :func:`scan_tar` reads ustar, pax and GNU headers
and can skip members it is not asked for.

A shard on object storage (a ``UPath`` location) is written to a local scratch file and uploaded once by
:meth:`PartialTarWriter.commit` (an object appears whole or not at all), and read through ``path.open("rb")``.
"""


from __future__ import annotations

import contextlib
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from imagenet_plus.errors import CorruptShard, UserError
from imagenet_plus.io.atomic import PARTIAL_SUFFIX
from imagenet_plus.io.storage import Location, is_remote, location, remote_errors, scratch_file, storage_errors, upload

#: Fixed tar member mtime, so the same samples always give the same bytes (an int: a float makes tarfile
#: put a 1 KiB pax header before every member).
TAR_MTIME = 1_700_000_000

#: Member metadata of every tar this project writes (what webdataset's ``TarWriter`` sets by default).
TAR_MODE = 0o444
TAR_OWNER = "bigdata"
_BLOCK = 512
_RECORD = 20 * _BLOCK  # tarfile pads an archive to whole records of 20 blocks
_ZERO_BLOCK = bytes(_BLOCK)
_OWNER_FIELD = TAR_OWNER.encode().ljust(32, b"\0")
_MAX_USTAR_SIZE = 8**11  # sizes from here on need a pax record


def tar_member_header(name: str, size: int, mtime: int = TAR_MTIME) -> bytes:
    """The header block(s) of one regular-file member, exactly as ``tarfile`` (PAX format, the default) writes it.

    A short ASCII name gets one ustar block built here; a longer or non-ASCII name, or a member of 8 GiB or
    more, is passed to ``tarfile.TarInfo.tobuf``, which adds the pax records it needs.
    """
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 100 or not raw.isascii() or size >= _MAX_USTAR_SIZE or not isinstance(mtime, int):
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = size, mtime, TAR_MODE, TAR_OWNER, TAR_OWNER
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    block = b"".join((
        raw.ljust(100, b"\0"), b"%07o\0" % TAR_MODE, b"0000000\0", b"0000000\0", b"%011o\0" % size,
        b"%011o\0" % mtime, b"        ", b"0", bytes(100), b"ustar\x0000", _OWNER_FIELD, _OWNER_FIELD,
        bytes(183),  # device numbers (empty for a regular file), prefix, padding
    ))
    return block[:148] + b"%06o\0" % sum(block) + block[155:]


class TarStreamWriter:
    """Write samples as tar members to a binary file (webdataset's ``TarWriter`` layout, without ``tarfile``).

    A sample is a mapping with ``__key__`` and ``ext → bytes`` members; keys starting with ``_`` are
    not written, members are written in sorted order as ``KEY.ext``, mode 0444, owner ``bigdata`` and a fixed
    mtime, so the same samples always give the same bytes.
    """

    def __init__(self, stream: BinaryIO, mtime: int = TAR_MTIME) -> None:
        self.stream = stream
        self.mtime = mtime
        self.offset = 0

    def write(self, sample: Mapping[str, Any]) -> None:
        """Append one sample.

        Raises:
            ValueError: no ``__key__``, or a member that is not bytes.
        """
        key = sample.get("__key__")
        if not isinstance(key, str):
            raise ValueError("a sample must have a str __key__")
        for ext in sorted(sample):
            if ext.startswith("_"):
                continue
            data = sample[ext]
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise ValueError(f"sample {key}: member {ext!r} is {type(data).__name__}, not bytes")
            self._member(f"{key}.{ext}", bytes(data))

    def _member(self, name: str, data: bytes) -> None:
        header = tar_member_header(name, len(data), self.mtime)
        pad = -len(data) % _BLOCK
        self.stream.write(header)
        self.stream.write(data)
        if pad:
            self.stream.write(bytes(pad))
        self.offset += len(header) + len(data) + pad

    def close(self) -> None:
        """Write the end-of-archive blocks and pad to a whole record, as ``tarfile`` does."""
        end = self.offset + 2 * _BLOCK
        self.stream.write(bytes(2 * _BLOCK + (-end % _RECORD)))
        self.offset = end + (-end % _RECORD)


class PartialTarWriter:
    """Write one WebDataset shard to ``path.partial``; :meth:`commit` renames it to ``path``.

    Samples are mappings with ``__key__`` and bytes/str members; members of a sample stay adjacent.
    Used as a context manager, an exception (or a failed commit) deletes the ``.partial`` file; a kill leaves it,
    and the next run removes it. A full, read-only or forbidden disk is a
    :class:`~imagenet_plus.errors.StorageError` naming the shard.
    """

    def __init__(self, path: str | Location) -> None:
        self.path = location(path)
        self.remote = is_remote(self.path)
        self.partial = scratch_file(self.path, PARTIAL_SUFFIX) if self.remote else \
            self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        with storage_errors(self.path):
            self._file = open(self.partial, "wb")
        self._writer = TarStreamWriter(self._file)
        self.count = 0
        self._closed = False

    def write(self, sample: Mapping[str, Any]) -> None:
        """Append one sample (see :class:`TarStreamWriter`)."""
        with storage_errors(self.path):
            self._writer.write(sample)
        self.count += 1

    def commit(self) -> None:
        """Close, flush to disk and rename to the final name (on failure the partial file is deleted)."""
        try:
            with storage_errors(self.path):
                self._writer.close()
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._closed = True
                if self.remote:
                    upload(self.partial, self.path)
                    self.partial.unlink()
                else:
                    os.replace(self.partial, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Close and delete the partial file (errors while closing a broken or full file are ignored: the error
        that made us abort is the one to report)."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                self._file.close()
        with contextlib.suppress(OSError):
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> PartialTarWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.commit()


class TarMember(NamedTuple):
    """One regular file of a tar: its name, where its data starts in the stream, its size, and its data."""

    name: str
    offset: int
    size: int
    data: bytes | None  # None when the member was skipped (see scan_tar's ``wanted``)


_META_NAME = re.compile(r"__[^/]*__($|/)")


def _octal_field(field: bytes) -> int:
    """A tar header number: NUL/space-terminated octal, or GNU base-256 (high bit of the first byte set)."""
    if field[:1] and field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_records(data: bytes, url: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise CorruptShard(url, "bad pax record") from None
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def scan_tar(stream: BinaryIO, url: str, wanted: Callable[[str], bool] | None = None) -> Iterator[TarMember]:
    """The regular files of a tar stream, in order (POSIX ustar/pax and GNU long names).

    Yields what webdataset's ``tar_file_iterator`` yields (regular files; webdataset's ``__…__`` metadata names
    skipped), with each member's data offset. Members for which ``wanted(name)`` is false are skipped
    (``seek`` when the stream can, so their bytes are never read) and come with ``data=None``.

    Raises:
        CorruptShard: a bad header checksum, a bad number or a truncated member (naming ``url``).
    """
    read = stream.read
    seekable = wanted is not None and stream.seekable()
    pos = stream.tell() if stream.seekable() else 0
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        header = read(_BLOCK)
        if header == _ZERO_BLOCK:
            return
        if not header:
            raise CorruptShard(url, "it ends without the end-of-archive blocks")
        if len(header) < _BLOCK:
            raise CorruptShard(url, "a header is cut short")
        try:
            checksum = _octal_field(header[148:156])
            size = int(pax["size"]) if "size" in pax else _octal_field(header[124:136])
        except ValueError:
            raise CorruptShard(url, "unreadable header numbers") from None
        if checksum != sum(header[:148]) + 256 + sum(header[156:]):
            raise CorruptShard(url, "bad header checksum")
        offset = pos + _BLOCK
        padded = size + (-size % _BLOCK)
        pos = offset + padded
        kind = header[156:157]
        if kind in (b"x", b"g", b"L"):
            data = read(padded)[:size]
            if len(data) < size:
                raise CorruptShard(url, "a member is cut short")
            if kind == b"x":  # pax extended header of the next member: "LEN key=value\n" records
                pax = _pax_records(data, url)
            elif kind == b"L":  # GNU long name of the next member
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        name = pax.get("path") or long_name
        if name is None:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
            if prefix:
                name = prefix.decode("utf-8", "surrogateescape") + "/" + name
        pax, long_name = {}, None
        regular = kind in (b"0", b"\0", b"7") and not _META_NAME.match(name)
        if regular and (wanted is None or wanted(name)):
            data = read(padded)
            if len(data) < padded:
                raise CorruptShard(url, "a member is cut short")
            yield TarMember(name, offset, size, data[:size] if padded != size else data)
            continue
        if seekable:
            stream.seek(padded, os.SEEK_CUR)
        elif len(read(padded)) < padded:
            raise CorruptShard(url, "a member is cut short")
        if regular:
            yield TarMember(name, offset, size, None)


def count_mismatch(url: str | Path, found: int, expected: int) -> CorruptShard:
    """The error of a shard holding another number of samples than its stats say (one wording for every reader)."""
    return CorruptShard(url, f"holds {found} samples, its stats say {expected}")


def iter_samples(stream: BinaryIO, url: str, expected: int | None = None) -> Iterator[dict[str, Any]]:
    """The samples of one tar stream, grouped by webdataset's ``group_by_keys`` (``__key__``, ``__url__`` and
    raw member bytes by extension).

    Args:
        stream: the tar stream.
        url: how errors name it.
        expected: the number of samples the stream must hold (a generated shard's stats ``count``); a stream
            that ends early, even as a valid shorter archive (a copy zero-filled from a sample boundary on),
            is then corrupt. Checked once the stream is exhausted.

    Raises:
        CorruptShard: the stream is truncated, not a tar, or holds another number of samples than ``expected``
            (the message names ``url``).
    """
    import webdataset as wds

    files = ({"fname": m.name, "data": m.data, "__url__": url} for m in scan_tar(stream, url))
    count = 0
    try:
        for sample in wds.tariterators.group_by_keys(files):
            count += 1
            yield sample
    except (EOFError, OSError, ValueError) as exc:
        reason = str(exc.args[0]) if exc.args else type(exc).__name__
        raise CorruptShard(url, reason.split(" @ ")[0]) from None
    if expected is not None and count != expected:
        raise count_mismatch(url, count, expected)


def iter_shard(path: str | Path, expected: int | None = None) -> Iterator[dict[str, Any]]:
    """Yield the samples of one tar shard as dicts (``__key__`` plus raw member bytes by extension).

    ``expected``: the number of samples the shard must hold (see :func:`iter_samples`).

    Raises:
        UserError: the shard is missing; CorruptShard: it is truncated, not a tar file, or holds another number
            of samples than ``expected`` (naming it).
    """
    p = location(path)
    with remote_errors(p):
        if not p.is_file():
            raise UserError(f"shard not found: {p}")
    try:
        with p.open("rb") as stream:
            for sample in iter_samples(stream, str(p), expected):
                sample.pop("__url__", None)
                yield sample
    except OSError as exc:
        raise CorruptShard(p, str(exc)) from None


def count_samples(path: str | Path, key_of: Callable[[str], str | None]) -> int:
    """The samples of a tar shard counted from its headers alone: member data is skipped, never read.

    A sample is a run of adjacent members with the same key (webdataset's grouping); ``key_of`` splits a member
    name into its key (``None``: not a sample member, skipped). This is the cheap structural check behind
    generate's done rule: a shard zero-filled from a sample boundary on reads as a shorter valid archive, and
    counts fewer samples than its stats say.

    Written by hand for speed: the shards this project writes hold one plain ustar header per member, read here
    with one ``pread`` each and checked by their checksum (taken as zlib's Adler-32 sum, which is the byte sum
    modulo 65521: ~10× faster than summing 512 bytes in Python), and a member whose name continues the last
    sample's key is not split again. A shard of 256 samples of ~20 KB JPEG (768 members, 6.3 MB) is counted in
    about 2 ms from the page cache, a third of reading it (``benchmarks/tar_count.py``): ~11 s for ImageNet's
    5,000 shards in one process, shared among ranks; on a cold network filesystem, one small read per member.
    Any other header (pax, GNU long names) sends the whole file through :func:`scan_tar`.

    Raises:
        CorruptShard: a bad header, a truncated member or an unreadable file (naming it).
    """
    p = location(path)
    if is_remote(p):
        try:
            with remote_errors(p), p.open("rb") as stream:
                return _count_keys((m.name for m in scan_tar(stream, str(p), wanted=_nothing)), key_of)
        except OSError as exc:
            raise CorruptShard(p, str(exc)) from None
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError as exc:
        raise CorruptShard(p, str(exc)) from None
    try:
        fast = _count_ustar(fd, str(p), key_of)
        if fast is not None:
            return fast
        with os.fdopen(os.dup(fd), "rb") as stream:
            return _count_keys((m.name for m in scan_tar(stream, str(p), wanted=_nothing)), key_of)
    except OSError as exc:
        raise CorruptShard(p, str(exc)) from None
    finally:
        os.close(fd)


def _count_keys(names: Iterable[str], key_of: Callable[[str], str | None]) -> int:
    count, last = 0, None
    for name in names:
        key = key_of(name)
        if key is not None and key != last:
            count, last = count + 1, key
    return count


def _count_ustar(fd: int, url: str, key_of: Callable[[str], str | None]) -> int | None:
    """:func:`count_samples` over plain ustar headers; ``None`` at the first header of another kind."""
    pos = 0
    count, last, same = 0, None, None
    while True:
        header = os.pread(fd, _BLOCK, pos)
        if header == _ZERO_BLOCK:
            return count
        if len(header) < _BLOCK:
            raise CorruptShard(url, "it ends without the end-of-archive blocks" if not header
                               else "a header is cut short")
        if header[257:263] != b"ustar\x00" or header[156:157] not in (b"0", b"\0"):
            return None
        try:
            checksum = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            raise CorruptShard(url, "unreadable header numbers") from None
        if (checksum - 256 + sum(header[148:156]) + 1) % 65521 != zlib.adler32(header) & 0xFFFF:
            raise CorruptShard(url, "bad header checksum")
        pos += _BLOCK + size + (-size % _BLOCK)
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if header[345:346] != b"\0":
            name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape") + "/" + name
        if same is not None and name.startswith(same) and "/" not in name[len(same):]:
            continue  # another member of the same sample: the key is the name up to the first dot of its last part
        if _META_NAME.match(name):
            continue
        key = key_of(name)
        if key is not None and key != last:
            count, last, same = count + 1, key, key + "."


def _nothing(name: str) -> bool:
    return False
