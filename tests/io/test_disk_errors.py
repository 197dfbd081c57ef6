"""Issue 21 items 10 and 11: a full, read-only or forbidden disk is one line naming the device and the file
(exit 2), partial files are removed, a stage with nothing to write writes nothing, and a re-run on a working disk
ends with exactly the planned result.

A full disk is simulated without one: in this process by a ``TinyDisk`` whose writes fail with ENOSPC past a
budget, and in a subprocess by ``RLIMIT_FSIZE`` (with SIGXFSZ ignored the kernel answers EFBIG). A read-only
disk: in this process by ``ReadOnlyDisk`` (EROFS), and for real with ``chmod -R a-w`` in a subprocess that runs
without the capabilities that let root ignore permissions (``setpriv``; the tests run as root, and ``setuid`` to
``nobody`` is not possible here: the interpreter lives below ``/root``, which only root may enter).
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_fake_run
from release_fixtures import write_fake_scores
from safety_helpers import (
    ReadOnlyDisk,
    TinyDisk,
    class_file,
    fake_cli,
    generate_args,
    main_in_process,
    one_line_error,
    tar_digests,
    tree,
)

from imagenet_plus.contract.names import LOCK_NAME
from imagenet_plus.errors import StorageError
from imagenet_plus.io.atomic import atomic_file
from imagenet_plus.io.storage import mount_point, storage_error
from imagenet_plus.io.tar import PartialTarWriter
from imagenet_plus.select import SelectConfig, run_select


@pytest.fixture
def selected_run(tmp_path: Path) -> Path:
    run = write_fake_run(tmp_path / "run", per_class=8, shard_size=10, size=32)
    write_fake_scores(run)
    run_select(run, SelectConfig(per_class=6))
    return run


def test_messages_name_the_device_and_the_file(tmp_path: Path) -> None:
    target = tmp_path / "scores" / "00001.parquet"
    mount = mount_point(tmp_path)
    assert os.path.ismount(mount) and str(tmp_path).startswith(mount)
    for code, words in ((errno.ENOSPC, "no space left on"), (errno.EDQUOT, "disk quota exceeded on"),
                        (errno.EROFS, "is read-only"), (errno.EACCES, "permission denied"),
                        (errno.ENAMETOOLONG, "file name too long"), (errno.EFBIG, "file too large")):
        error = storage_error(OSError(code, os.strerror(code)), target)
        assert isinstance(error, StorageError) and error.errno == code
        assert words in error.message and str(target) in error.message and "\n" not in error.message
    assert mount in storage_error(OSError(errno.ENOSPC, "full"), target).message
    assert storage_error(OSError(errno.ENOENT, "missing"), target) is None  # not the disk's answer: not ours


def test_tar_writer_abort_removes_the_partial_even_when_closing_fails(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's first write past the disk's end fails, and so does the close that flushes its buffer: the
    original error is reported and the ``.partial`` goes."""
    disk = TinyDisk(tmp_path, capacity=3000)
    disk.install(monkeypatch)
    with pytest.raises(StorageError, match="no space left on .* while writing .*00000.tar"):
        with PartialTarWriter(tmp_path / "00000.tar") as w:
            for i in range(10):
                w.write({"__key__": f"k_{i:06d}", "jpg": os.urandom(1000)})
    assert disk.refused and sorted(p.name for p in tmp_path.iterdir()) == []


def test_score_files_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """score's writers (a parquet through pyarrow, a .npy through numpy) report a full disk as one line and leave
    no ``.partial``; the file that was there before is untouched."""
    from imagenet_plus.score.files import save_npy_atomic

    (tmp_path / "00001.clip.npy").write_bytes(b"an earlier file")
    disk = TinyDisk(tmp_path, capacity=1000)
    disk.install(monkeypatch)
    with pytest.raises(StorageError, match="no space left on .* while writing .*00001.clip.npy"):
        save_npy_atomic(tmp_path / "00001.clip.npy", np.zeros((100, 16), np.float16))
    with pytest.raises(StorageError, match="no space left"), atomic_file(tmp_path / "00001.parquet") as f:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"a": list(range(10_000))}), f)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00001.clip.npy"]
    assert (tmp_path / "00001.clip.npy").read_bytes() == b"an earlier file"


@pytest.mark.parametrize("capacity", [15_000, 40_000])
def test_generate_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                 reference_run: Path, capacity: int) -> None:
    run = tmp_path / "run"
    args = generate_args(run, class_file(tmp_path))
    disk = TinyDisk(tmp_path, capacity)
    disk.install(monkeypatch)
    code, err = main_in_process(monkeypatch, capsys, *args)
    line = one_line_error(code, err, "no space left on", mount_point(tmp_path), "free space and re-run")
    assert str(run) in line
    assert disk.refused and not list(run.rglob("*.partial")), "partial files are removed"
    monkeypatch.undo()  # space freed
    code, err = main_in_process(monkeypatch, capsys, *args)
    assert code == 0, err
    assert tar_digests(run / "generated") == tar_digests(reference_run / "generated")


def test_release_on_a_full_disk(tmp_path: Path, selected_run: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture) -> None:
    release = ["release", str(selected_run), "--val-per-class", "2", "--shard-size", "4", "--out"]
    expected = tmp_path / "expected"
    assert main_in_process(monkeypatch, capsys, *release, str(expected))[0] == 0
    out = tmp_path / "rel"
    TinyDisk(tmp_path, capacity=20_000).install(monkeypatch)
    code, err = main_in_process(monkeypatch, capsys, *release, str(out))
    one_line_error(code, err, "no space left on", "rel.partial")
    assert not out.exists() and not (tmp_path / "rel.partial").exists()
    monkeypatch.undo()
    code, err = main_in_process(monkeypatch, capsys, *release, str(out))
    assert code == 0, err
    assert tar_digests(out / "data") == tar_digests(expected / "data")


@pytest.mark.slow
def test_score_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """``score`` (tiny random scorers) runs out of space midway: one line, no ``.partial`` left, and the re-run
    scores exactly the planned keys, as an uninterrupted score of the same shards does."""
    import pandas as pd

    score = ["score", "--clip-model", "tiny-random", "--inception-weights", "tiny-random", "--classifier",
             "tiny-random", "--nsfw-model", "none", "--batch-size", "5", "--num-workers", "1"]
    expected = write_fake_run(tmp_path / "expected", per_class=4, shard_size=5, size=48)
    run = write_fake_run(tmp_path / "run", per_class=4, shard_size=5, size=48)
    code, err = main_in_process(monkeypatch, capsys, score[0], str(expected), *score[1:])
    assert code == 0, err
    disk = TinyDisk(run / "scores", capacity=60_000)
    disk.install(monkeypatch)
    code, err = main_in_process(monkeypatch, capsys, score[0], str(run), *score[1:])
    one_line_error(code, err, "no space left on", str(run / "scores"))
    assert disk.refused and not list(run.rglob("*.partial"))
    monkeypatch.undo()
    code, err = main_in_process(monkeypatch, capsys, score[0], str(run), *score[1:])
    assert code == 0, err
    names = sorted(p.name for p in (expected / "scores").glob("0*"))
    assert sorted(p.name for p in (run / "scores").glob("0*")) == names and names
    for name in (n for n in names if n.endswith(".parquet")):
        got, want = pd.read_parquet(run / "scores" / name), pd.read_parquet(expected / "scores" / name)
        assert list(got["key"]) == list(want["key"])
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-4)


@pytest.mark.slow
def test_generate_past_a_file_size_limit_in_a_subprocess(tmp_path: Path, reference_run: Path) -> None:
    """The kernel's own refusal: RLIMIT_FSIZE below one shard's size (SIGXFSZ ignored → EFBIG)."""
    run = tmp_path / "run"
    args = generate_args(run, class_file(tmp_path))

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8000, 8000))

    proc = fake_cli(*args, preexec_fn=limit)
    one_line_error(proc.returncode, proc.stderr, "file too large", str(run / "generated" / "00000.tar"))
    assert not list(run.rglob("*.partial"))
    rerun = fake_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert tar_digests(run / "generated") == tar_digests(reference_run / "generated")


# ------------------------------------------------------------------------------------------------------------
# read-only


def test_read_only_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                              reference_run: Path) -> None:
    run = tmp_path / "run"
    args = generate_args(run, class_file(tmp_path))
    assert main_in_process(monkeypatch, capsys, *args)[0] == 0
    before = tree(run)
    disk = ReadOnlyDisk(run)
    disk.install(monkeypatch)
    code, err = main_in_process(monkeypatch, capsys, *args)  # finished: nothing to write, nothing written
    assert code == 0, err
    assert [a for a in disk.attempts if not a.endswith(f"/{LOCK_NAME}")] == [], "only the lock is opened for writing"
    assert tree(run) == before
    monkeypatch.undo()
    (run / "generated" / "00004.tar").unlink()
    (run / "generated" / "00004.json").unlink()
    before = tree(run)
    ReadOnlyDisk(run).install(monkeypatch)
    code, err = main_in_process(monkeypatch, capsys, *args)
    one_line_error(code, err, "is read-only: cannot write", str(run))
    assert tree(run) == before
    monkeypatch.undo()
    assert main_in_process(monkeypatch, capsys, *args)[0] == 0
    assert tar_digests(run / "generated") == tar_digests(reference_run / "generated")


def test_read_only_downstream_stages(tmp_path: Path, selected_run: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    before = tree(selected_run)
    ReadOnlyDisk(selected_run).install(monkeypatch)
    for args in (["select", str(selected_run), "--per-class", "5"], ["report", str(selected_run)]):
        code, err = main_in_process(monkeypatch, capsys, *args)
        one_line_error(code, err, "is read-only: cannot write", str(selected_run))
        assert tree(selected_run) == before
    ReadOnlyDisk(tmp_path / "rel").install(monkeypatch)
    code, err = main_in_process(monkeypatch, capsys, "release", str(selected_run), "--out", str(tmp_path / "rel"),
                                "--val-per-class", "2")
    one_line_error(code, err, "is read-only: cannot write", "rel")


def _without_dac_override() -> list[str]:
    """A command prefix that runs a process as root without the capabilities to ignore file permissions."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or subprocess.run([setpriv, "--bounding-set=-dac_override", "true"]).returncode != 0:
        pytest.skip("setpriv cannot drop capabilities here")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--inh-caps=-all", "--"]


def _chmod_tree(root: Path, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.mark.slow
def test_chmod_a_minus_w_run_without_root_privileges(tmp_path: Path, selected_run: Path,
                                                     reference_run: Path) -> None:
    """``chmod -R a-w`` on a finished run, stages run by a process that permissions apply to: a finished generate
    writes nothing (exit 0), select is one line (exit 2); after ``chmod u+w`` the re-run finishes."""
    prefix = _without_dac_override()
    run = tmp_path / "generated-run"
    args = generate_args(run, class_file(tmp_path))
    assert fake_cli(*args).returncode == 0
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "FAKE_MODEL_SECONDS": "0"}
    script = str(Path(__file__).resolve().parents[1] / "fake_model_cli.py")
    _chmod_tree(run, writable=False)
    _chmod_tree(selected_run, writable=False)
    try:
        before = tree(run)
        proc = subprocess.run([*prefix, sys.executable, script, *args], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        assert tree(run) == before
        before = tree(selected_run)
        proc = subprocess.run([*prefix, sys.executable, script, "select", str(selected_run), "--per-class", "5"],
                              capture_output=True, text=True, env=env)
        one_line_error(proc.returncode, proc.stderr, "permission denied writing", str(selected_run))
        assert tree(selected_run) == before
    finally:
        _chmod_tree(run, writable=True)
        _chmod_tree(selected_run, writable=True)
    proc = subprocess.run([*prefix, sys.executable, script, "select", str(selected_run), "--per-class", "5"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert tar_digests(run / "generated") == tar_digests(reference_run / "generated")
