"""Where files live: the one place that turns a ``RUN``/``REL``/input argument into a location, and the one place an
``OSError`` of a full, read-only or forbidden disk (or a refused bucket) becomes a one-line error.

**Locations.** :func:`location` turns ``runs/demo`` or ``file:///data/x`` into a :class:`pathlib.Path` (local disk:
behaviour and speed as before) and ``s3://bucket/run``, ``gs://…``, ``hf://…`` (any fsspec URL) into a
``universal_pathlib`` ``UPath``: pathlib's API (``/``, ``exists``, ``glob``, ``open``, ``stat``, ``unlink``) over
fsspec. Storage options (endpoint, credentials, …) come from ``--storage-options JSON`` (or any setting that calls
:func:`set_storage_options`; they are kept in ``IMAGENET_PLUS_STORAGE_OPTIONS`` so child processes see them),
merged by fsspec with the usual environment (s3fs reads ``AWS_*`` and ``AWS_ENDPOINT_URL``). What differs on object
storage is owned by ``io/``: :mod:`~imagenet_plus.io.atomic` and :mod:`~imagenet_plus.io.tar` write to local
scratch (:func:`scratch_dir`) and upload once (:func:`upload`: an object store makes a whole object visible at
once, so no rename is needed), :func:`local_copy` gives a real file to what needs one (numpy memory maps, pyarrow),
cached by the object's size and mtime. A bucket that does not exist, refused credentials or a missing fsspec
backend is one line (:func:`remote_errors`, :func:`location`).

Every writer of the package (``atomic_file``, the tar writer, the folder builder, the run lock) wraps its writes
in :func:`storage_errors`; the command line keeps :func:`storage_error` as a last resort for a write that is not
wrapped. The device is the mount point holding the file (found by walking up with :func:`os.path.ismount`) and,
when ``/proc/self/mounts`` names it, its source (``/dev/nvme0n1p1``).
"""

from __future__ import annotations

import contextlib
import errno as errnos
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from imagenet_plus.errors import StorageError, UserError

if TYPE_CHECKING:
    from upath import UPath

log = logging.getLogger(__name__)

#: A local folder or file (``pathlib.Path``) or an fsspec URL (``upath.UPath``).
Location = Union[Path, "UPath"]

#: Environment variable holding the storage options (JSON object) of this process and its children.
STORAGE_OPTIONS_ENV = "IMAGENET_PLUS_STORAGE_OPTIONS"
#: Environment variable naming the local scratch folder of remote writes and copies (default: the temp folder).
SCRATCH_ENV = "IMAGENET_PLUS_SCRATCH"
#: The optional extra to install for a URL scheme whose fsspec backend is a separate package.
SCHEME_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _parse_options(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not JSON ({exc.msg} at character {exc.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise UserError(f"{where}: must be a JSON object like '{{\"endpoint_url\": \"http://host:9000\"}}', "
                        f"not {type(value).__name__}")
    return value


def set_storage_options(options: str | dict[str, Any] | None, where: str = "--storage-options") -> None:
    """Set the storage options of this process and its children (``IMAGENET_PLUS_STORAGE_OPTIONS``).

    Args:
        options: a JSON object (text) or a mapping; None or empty clears nothing.
        where: how an error names the source (the option, or ``FILE: storage-options``).

    Raises:
        UserError: not a JSON object.
    """
    if options in (None, "", {}):
        return
    value = _parse_options(options, where) if isinstance(options, str) else options
    if not isinstance(value, dict):
        raise UserError(f"{where}: must be a mapping of fsspec options, not {type(value).__name__}")
    os.environ[STORAGE_OPTIONS_ENV] = json.dumps(value, sort_keys=True)


def storage_options() -> dict[str, Any]:
    """The storage options set for this process (:func:`set_storage_options`), or ``{}``."""
    text = os.environ.get(STORAGE_OPTIONS_ENV, "")
    return _parse_options(text, STORAGE_OPTIONS_ENV) if text.strip() else {}


def is_url(text: str | os.PathLike[str] | Any) -> bool:
    """Whether ``text`` is a URL of a remote filesystem (``s3://…``; ``file://`` is local)."""
    if not isinstance(text, str):
        return not isinstance(text, (Path, os.PathLike))
    match = _SCHEME.match(text)
    return match is not None and match.group(1).lower() not in ("file", "local")


def is_remote(path: Any) -> bool:
    """Whether a location (or a path or URL as text) is on a remote filesystem (a ``UPath``, not a local ``Path``)."""
    if isinstance(path, str):
        return is_url(path)
    return not isinstance(path, (Path, os.PathLike))


def location(text: str | os.PathLike[str] | Location, options: dict[str, Any] | None = None) -> Location:
    """The location of a run, release or input: a ``Path`` for a local path or ``file://`` URL, a ``UPath`` for any
    other fsspec URL (built with the storage options: ``options`` or those set for the process).

    Raises:
        UserError: an unknown URL scheme, or one whose fsspec backend is not installed (naming the extra).
    """
    if isinstance(text, Path):
        return text
    if not isinstance(text, str) and not isinstance(text, os.PathLike):
        return text  # already a UPath
    text = os.fspath(text)
    match = _SCHEME.match(text)
    if match is None:
        return Path(text)
    scheme = match.group(1).lower()
    if scheme in ("file", "local"):
        return Path(text[match.end():] or "/")
    from fsspec.registry import get_filesystem_class, known_implementations

    if scheme not in known_implementations:
        raise UserError(f"unknown URL scheme {scheme}:// in {text}: use a local path or an fsspec URL "
                        "(s3://, gs://, hf://, file://, …)")
    try:
        get_filesystem_class(scheme)
    except ImportError:
        extra = SCHEME_EXTRAS.get(scheme)
        how = f"pip install 'imagenet-plus[{extra}]'" if extra else \
            f"install the fsspec backend of {scheme}:// ({known_implementations[scheme].get('err', '')})"
        raise UserError(f"{text} needs the {scheme}:// filesystem, which is not installed: {how}") from None
    from upath import UPath

    if not text[match.end():].split("/", 1)[0] and scheme != "memory":  # s3:// or s3:///run: no bucket
        raise UserError(f"{text} names no bucket: give one, e.g. {scheme}://bucket/run")
    try:
        path = UPath(text, **{**storage_options(), **(options or {})})
    except (ValueError, TypeError) as exc:  # fsspec's own check of the URL ("bucket/container missing", …)
        raise UserError(f"{text} is not a usable {scheme}:// URL: {exc}") from None
    _check_bucket(path)
    return path


#: Buckets seen to exist (checked once per process).
_BUCKETS: set[str] = set()


def _check_bucket(path: Location) -> None:
    """Refuse a URL whose bucket does not exist (a write would otherwise create it: s3fs makes missing buckets).

    Raises:
        UserError: the bucket does not exist, or the store refuses the credentials.
    """
    if path.protocol not in ("s3", "s3a", "gs", "gcs", "az", "abfs", "adl"):
        return
    bucket = path.path.split("/", 1)[0]
    key = f"{path.protocol}://{bucket}"
    if key in _BUCKETS:
        return
    with remote_errors(path):
        found = path.fs.exists(bucket)
        if not found:
            path.fs.ls(bucket)  # tells a missing bucket (FileNotFoundError) from refused credentials
    if not found:
        raise UserError(f"{path}: the bucket {bucket} does not exist; create it or fix the URL")
    _BUCKETS.add(key)


def as_text(path: Location | str) -> str:
    """How messages and records name a location (a URL stays a URL)."""
    return str(path)


def scratch_dir(*parts: str) -> Path:
    """A local folder for remote writes (a file is written here, then uploaded) and copies of remote files
    (``$IMAGENET_PLUS_SCRATCH``, else ``imagenet-plus-scratch`` in the temp folder), created if missing."""
    base = Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "imagenet-plus-scratch")
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def scratch_file(path: Location, suffix: str = "") -> Path:
    """A fresh local file name to write ``path``'s bytes to before :func:`upload` (removed by the caller)."""
    fd, name = tempfile.mkstemp(prefix=f"{os.getpid()}-", suffix=f"-{path.name}{suffix}", dir=scratch_dir("uploads"))
    os.close(fd)
    return Path(name)


def upload(local: Path, remote: Location) -> None:
    """Upload the finished local file ``local`` to ``remote`` as one object (visible whole, or not at all)."""
    with remote_errors(remote):
        remote.fs.put_file(str(local), remote.path)


def local_copy(path: Location) -> Path:
    """A local file with ``path``'s bytes: ``path`` itself when local, else a copy in the scratch folder, downloaded
    once per object version (the cache key is the URL, size and mtime)."""
    path = location(path)
    if not is_remote(path):
        return path
    with remote_errors(path):
        info = path.stat()
        key = hashlib.sha256(f"{path}|{info.st_size}|{info.st_mtime}".encode()).hexdigest()[:24]
        target = scratch_dir("copies", key) / path.name
        if not target.is_file():
            part = target.with_name(f"{target.name}.{os.getpid()}.partial")
            path.fs.get_file(path.path, str(part))
            os.replace(part, target)
    return target


def files_under(folder: str | Location) -> list[str]:
    """Every file below ``folder`` (local or remote) as a ``/``-joined relative path, sorted."""
    folder = location(folder)
    if is_remote(folder):
        base = folder.path.rstrip("/") + "/"
        with remote_errors(folder):
            return sorted(p[len(base):] for p in folder.fs.find(folder.path) if p.startswith(base))
    out = []
    for root, _dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        out.extend((rel / f).as_posix() for f in files)
    return sorted(out)


def local_tree(path: str | Location) -> Path:
    """A local folder with ``path``'s files: ``path`` itself when local, else a copy in the scratch folder (kept
    while the folder's listing, with each file's size and mtime, stays the same; each copy has its object's
    mtime, so fingerprints of (name, size, mtime) do not change when the copy is made again). For inputs given as
    URLs (``--real``) and a release to ``publish``."""
    p = location(path)
    if not is_remote(p):
        return p
    with remote_errors(p):
        base = p.path.rstrip("/") + "/"
        found = {k[len(base):]: v for k, v in p.fs.find(p.path, detail=True).items() if k.startswith(base)}
        listing = sorted((name, info.get("size"), str(info.get("LastModified", info.get("mtime", ""))))
                         for name, info in found.items())
        key = hashlib.sha256(f"{p}|{listing}".encode()).hexdigest()[:24]
        target = scratch_dir("trees", key) / (p.name or "root")
        done = target.with_name(target.name + ".done")
        if not done.is_file():
            for name, info in found.items():
                dest = target / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                p.fs.get_file(base + name, str(dest))
                mtime = _mtime(info)
                if mtime is not None:  # the copy's identity (name, size, mtime) is the object's
                    os.utime(dest, (mtime, mtime))
            done.touch()
    return target


def local_input(text: str) -> str:
    """An input given as a path or URL (``--reference``, ``--test``, a release to train on), as a local path: the
    text itself when local, else the local copy of the object (:func:`local_copy`) or of the folder
    (:func:`local_tree`).

    Raises:
        UserError: the URL names nothing (or a bucket or credential error, as one line).
    """
    if not is_url(text):
        return text
    p = location(text)
    with remote_errors(p):
        if p.is_file():
            return str(local_copy(p))
        if not p.exists():
            raise UserError(f"{text} not found")
    return str(local_tree(p))


def _mtime(info: dict[str, Any]) -> float | None:
    """The modification time an fsspec listing gives (s3fs: ``LastModified``; others: ``mtime``), or None."""
    value = info.get("LastModified", info.get("mtime"))
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value) if isinstance(value, (int, float)) else None


def open_binary(path: str | Location, buffering: int = -1) -> Any:
    """Open a file for reading bytes: ``open`` for a local path, the fsspec file (read in 4 MiB blocks) for a
    remote one. For many reads at random offsets of a remote file, open its :func:`local_copy`."""
    p = location(path)
    if not is_remote(p):
        return open(p, "rb", buffering=buffering)
    with remote_errors(p):
        return p.fs.open(p.path, "rb", block_size=1 << 22)


def remove_tree(path: Location) -> None:
    """Delete a folder and everything under it (local or remote; the caller checked it is the project's)."""
    path = location(path)
    if is_remote(path):
        with remote_errors(path):
            if path.fs.exists(path.path):
                path.fs.rm(path.path, recursive=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _remote_message(exc: BaseException, url: str) -> str | None:
    text = " ".join(str(exc).split())
    low = text.lower()
    if "bucket" in low and ("not exist" in low or "nosuchbucket" in low):
        return f"{url}: the bucket does not exist ({text}); create it or fix the URL"
    if isinstance(exc, PermissionError) or any(w in low for w in ("accessdenied", "access denied", "invalidaccesskeyid",
                                                                  "signaturedoesnotmatch", "forbidden",
                                                                  "credentials", "access key")):
        return f"{url}: access refused ({text}); check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or " \
               "--storage-options)"
    if type(exc).__name__ in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError") or \
            "could not connect" in low or "cannot connect" in low:
        return f"{url}: cannot reach the storage endpoint ({text}); check AWS_ENDPOINT_URL or --storage-options"
    return None


@contextlib.contextmanager
def remote_errors(path: Location | str) -> Iterator[None]:
    """Turn a remote filesystem's refusal inside the block (no such bucket, refused credentials, unreachable
    endpoint) into a one-line :class:`~imagenet_plus.errors.UserError` naming the URL; anything else passes."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # botocore and aiohttp errors are not OSErrors
        if not is_remote(path):
            raise
        message = _remote_message(exc, str(path))
        if message is None:
            raise
        raise UserError(message) from exc

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
    with remote_errors(path):
        try:
            yield
        except OSError as exc:
            error = storage_error(exc, path)
            if error is None:
                raise
            raise error from exc
