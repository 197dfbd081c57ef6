"""Helpers of the safety tests (issue 21): the command line as a user types it, in a subprocess or in-process,
with a fake diffusion model (``fake_model_cli``); snapshots and tar digests read with ``tarfile``; simulated
full and read-only disks.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import fake_model_cli
import pytest

from imagenet_plus import cli

TESTS = Path(__file__).resolve().parent
INTERRUPTED = "interrupted; re-run the same command to resume"

CLASSES_CSV = "name,description\nred apple,a red fruit\ngreen pear,a green fruit\nyellow lemon,a sour fruit\n"


def class_file(folder: Path) -> Path:
    """A custom class file of three classes."""
    path = folder / "classes.csv"
    path.write_text(CLASSES_CSV)
    return path


def generate_args(out: Path, classes: Path, *extra: str) -> list[str]:
    """``generate`` for 3 classes × 4 images in 6 shards of 2, with the fake model."""
    return ["generate", "--out", str(out), "--classes", str(classes), "--model", "fake/model",
            "--images-per-class", "4", "--shard-size", "2", "--batch-size", "1", "--resolution", "32",
            "--steps", "1", *extra]


def fake_cli_popen(*args: str, seconds: float = 0.0, **kwargs: Any) -> subprocess.Popen:
    """Start ``imagenet-plus ARGS`` (fake model, ``seconds`` per image) in a subprocess, capturing its output."""
    env = {**os.environ, "FAKE_MODEL_SECONDS": str(seconds), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("IMAGENET_PLUS_DEBUG", None)
    return subprocess.Popen([sys.executable, str(TESTS / "fake_model_cli.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def fake_cli(*args: str, seconds: float = 0.0, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run ``imagenet-plus ARGS`` (fake model) in a subprocess to its end."""
    proc = fake_cli_popen(*args, seconds=seconds, **kwargs)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def main_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """``imagenet-plus ARGS`` through ``cli.main`` in this process (fake model): (exit status, stderr)."""
    fake_model_cli.install(monkeypatch.setattr)
    monkeypatch.setattr(sys, "argv", ["imagenet-plus", *args])
    capsys.readouterr()
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def one_line_error(code: int, stderr: str, *needles: str, status: int = 2) -> str:
    """Exit ``status``; the last stderr line is the only ``error: …`` line, names every needle; no traceback."""
    assert code == status, (code, stderr)
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    for needle in needles:
        assert str(needle) in errors[0], errors[0]
    return errors[0]


def tree(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every path below ``root`` → (size, mtime_ns, bytes of a file): equal snapshots mean nothing was touched."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[p.relative_to(root).as_posix()] = (st.st_size if p.is_file() else 0, st.st_mtime_ns,
                                               p.read_bytes() if p.is_file() else None)
    return out


def tar_digests(folder: Path, pattern: str = "*.tar") -> dict[str, dict[str, str]]:
    """``{tar: {member: sha256}}`` of every tar below ``folder``, read with the standard library's ``tarfile``."""
    out: dict[str, dict[str, str]] = {}
    for path in sorted(folder.rglob(pattern)):
        with tarfile.open(path) as tar:
            out[path.relative_to(folder).as_posix()] = {
                m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest() for m in tar.getmembers() if m.isfile()
            }
    return out


def wait_for(check: Any, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Poll ``check()`` until true (fails if ``proc`` ends first or time runs out)."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended first ({proc.returncode}): {err[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting")
        time.sleep(0.02)


def lock_holder(path: Path) -> str:
    """The ``pid HOST`` a lock file holds ("" while none was written)."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------------------
# simulated disks


def _under(path: Any, root: Path) -> bool:
    try:
        return os.path.abspath(os.fspath(path)).startswith(str(root) + os.sep) or os.path.abspath(
            os.fspath(path)) == str(root)
    except TypeError:  # a file descriptor
        return False


class _CountingFile:
    """A file opened for writing on a :class:`TinyDisk`: ``write`` fails with ENOSPC once the disk is full."""

    def __init__(self, f: Any, disk: TinyDisk) -> None:
        self._f = f
        self._disk = disk

    def write(self, data: Any) -> int:
        n = len(data)
        if self._disk.used + n > self._disk.capacity:
            self._disk.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        self._disk.used += n
        return self._f.write(data)

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __iter__(self) -> Any:
        return iter(self._f)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


class TinyDisk:
    """Files opened for writing below ``root`` share ``capacity`` bytes; past it, ``write`` raises ENOSPC (as a
    full disk does) without a real full disk."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root = Path(root).resolve()
        self.capacity = capacity
        self.used = 0
        self.refused = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_open = builtins.open

        def tiny_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            f = real_open(file, mode, *args, **kwargs)
            if any(c in mode for c in "wax+") and _under(file, self.root):
                return _CountingFile(f, self)
            return f

        monkeypatch.setattr(builtins, "open", tiny_open)
        monkeypatch.setattr(io, "open", tiny_open)


class ReadOnlyDisk:
    """Every write below ``root`` fails with EROFS, as on a read-only mount (files, folders, renames, deletes,
    lock files); reads pass. ``attempts`` lists what was refused."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.attempts: list[str] = []

    def _refuse(self, what: str, path: Any) -> None:
        self.attempts.append(f"{what} {path}")
        raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
        real = {name: getattr(os, name) for name in ("replace", "rename", "unlink", "rmdir", "utime")}

        def ro_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if any(c in mode for c in "wax+") and _under(file, self.root):
                self._refuse("open", file)
            return real_open(file, mode, *args, **kwargs)

        def ro_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            writes = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
            if writes and (_under(path, self.root) or kwargs.get("dir_fd") is not None):
                self._refuse("os.open", path)
            return real_os_open(path, flags, *args, **kwargs)

        def ro_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
            if _under(path, self.root):
                if os.path.exists(path):
                    raise FileExistsError(errno.EEXIST, "File exists", os.fspath(path))
                self._refuse("mkdir", path)
            return real_mkdir(path, *args, **kwargs)

        def wrap(name: str) -> Any:
            def ro(path: Any, *args: Any, **kwargs: Any) -> Any:
                if _under(path, self.root) or kwargs.get("dir_fd") is not None:
                    self._refuse(name, path)
                return real[name](path, *args, **kwargs)
            return ro

        monkeypatch.setattr(builtins, "open", ro_open)
        monkeypatch.setattr(io, "open", ro_open)
        monkeypatch.setattr(os, "open", ro_os_open)
        monkeypatch.setattr(os, "mkdir", ro_mkdir)
        for name in real:
            monkeypatch.setattr(os, name, wrap(name))
