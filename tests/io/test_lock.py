"""Issue 21 item 9: one process at a time writes a run (``RUN/.lock``) or builds a release (its partial folder's
marker); the second gets "FOLDER is in use by pid N on HOST" (exit 2) at once; a kill -9 leaves no stale lock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_fake_run
from release_fixtures import write_fake_scores
from safety_helpers import (
    class_file,
    fake_cli,
    fake_cli_popen,
    generate_args,
    lock_holder,
    main_in_process,
    one_line_error,
    tar_digests,
    tree,
    wait_for,
)

from imagenet_plus.contract.names import LOCK_NAME, PARTIAL_MARKER
from imagenet_plus.errors import RunInUse
from imagenet_plus.generate import planned_keys
from imagenet_plus.io.lock import folder_lock, hold_lock
from imagenet_plus.select import SelectConfig, run_select

HOLD = """
import sys, time
from imagenet_plus.io.atomic import claimed_partial
from imagenet_plus.io.lock import folder_lock
with (folder_lock if sys.argv[1] == "run" else claimed_partial)(sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(kind: str, folder: Path) -> subprocess.Popen:
    """A process holding the lock of ``folder`` (``run``: RUN/.lock; ``build``: FOLDER.partial's marker)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, kind, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_lock_names_its_holder_is_reentrant_and_dies_with_it(tmp_path: Path) -> None:
    with folder_lock(tmp_path):
        assert lock_holder(tmp_path / LOCK_NAME) == f"{os.getpid()} {socket.gethostname()}"
        with folder_lock(tmp_path):  # `run` holds it while each stage takes it again
            pass
    holder = _holder("run", tmp_path)
    try:
        with pytest.raises(RunInUse, match=f"{tmp_path} is in use by pid {holder.pid} on {socket.gethostname()}"):
            with folder_lock(tmp_path):
                pytest.fail("the lock is held by another process")
    finally:
        _kill9(holder)
    with folder_lock(tmp_path):  # the OS released it with the process: no stale lock
        assert lock_holder(tmp_path / LOCK_NAME) == f"{os.getpid()} {socket.gethostname()}"


def test_other_ranks_of_a_launch_share_the_main_ranks_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = _holder("run", tmp_path)
    try:
        monkeypatch.setenv("RANK", "1")
        with folder_lock(tmp_path):  # rank 1 works under rank 0's lock
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RunInUse), folder_lock(tmp_path):
            pass
    finally:
        _kill9(holder)


def test_a_lock_file_that_cannot_be_created_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only folder: no lock file can be made (nobody can write there either), so none is taken."""
    import errno

    real_open = os.open

    def read_only(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if flags & (os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with hold_lock(tmp_path / LOCK_NAME, tmp_path):
        pass
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.slow
def test_two_generate_at_once_the_second_fails_fast(tmp_path: Path, reference_run: Path) -> None:
    run = tmp_path / "run"
    args = generate_args(run, class_file(tmp_path))
    first = fake_cli_popen(*args, seconds=0.2)
    wait_for(lambda: lock_holder(run / LOCK_NAME) == f"{first.pid} {socket.gethostname()}", first)
    start = time.monotonic()
    second = fake_cli(*args)
    assert time.monotonic() - start < 30
    one_line_error(second.returncode, second.stderr, f"{run} is in use by pid {first.pid} on {socket.gethostname()}")
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert tar_digests(run / "generated") == tar_digests(reference_run / "generated")
    assert len(planned_keys(run)) == 12


@pytest.mark.slow
def test_kill_9_of_the_holder_leaves_no_stale_lock(tmp_path: Path, reference_run: Path) -> None:
    run = tmp_path / "run"
    args = generate_args(run, class_file(tmp_path))
    first = fake_cli_popen(*args, seconds=0.3)
    wait_for(lambda: len(list((run / "generated").glob("*.json"))) >= 2, first)
    _kill9(first)
    rerun = fake_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert tar_digests(run / "generated") == tar_digests(reference_run / "generated")
    assert not list(run.rglob("*.partial"))


@pytest.fixture
def selected_run(tmp_path: Path) -> Path:
    run = write_fake_run(tmp_path / "run", per_class=8, shard_size=10, size=32)
    write_fake_scores(run)
    run_select(run, SelectConfig(per_class=6))
    return run


def test_every_stage_that_writes_a_run_takes_its_lock(tmp_path: Path, selected_run: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    run = selected_run
    config = tmp_path / "run.yaml"
    config.write_text("classes: fake\nmodel: fake/model\n")
    holder = _holder("run", run)
    try:
        before = tree(run)
        for args in (["score", str(run)], ["diagnose", str(run)], ["select", str(run), "--per-class", "5"],
                     ["report", str(run)], ["run", "--config", str(config), "--out", str(run)]):
            code, err = main_in_process(monkeypatch, capsys, *args)
            one_line_error(code, err, f"{run} is in use by pid {holder.pid} on {socket.gethostname()}")
            assert tree(run) == before, args[0]
    finally:
        _kill9(holder)
    code, err = main_in_process(monkeypatch, capsys, "select", str(run), "--per-class", "5")
    assert code == 0, err
    # generate on a run of its own config (the plan is checked, reading only, before the lock)
    generated = tmp_path / "generated-run"
    args = generate_args(generated, class_file(tmp_path), "--images-per-class", "2")
    assert main_in_process(monkeypatch, capsys, *args)[0] == 0
    holder = _holder("run", generated)
    try:
        before = tree(generated)
        code, err = main_in_process(monkeypatch, capsys, *generate_args(generated, class_file(tmp_path)))
        one_line_error(code, err, f"{generated} is in use by pid {holder.pid} on {socket.gethostname()}")
        assert tree(generated) == before
    finally:
        _kill9(holder)


def test_two_release_to_one_out(tmp_path: Path, selected_run: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture) -> None:
    release = ["release", str(selected_run), "--val-per-class", "2", "--shard-size", "4", "--out"]
    expected = tmp_path / "expected"
    assert main_in_process(monkeypatch, capsys, *release, str(expected))[0] == 0
    out = tmp_path / "rel"
    holder = _holder("build", out)  # another release building into rel.partial
    try:
        code, err = main_in_process(monkeypatch, capsys, *release, str(out))
        one_line_error(code, err, f"{out} is in use by pid {holder.pid} on {socket.gethostname()}")
        assert (tmp_path / "rel.partial" / PARTIAL_MARKER).is_file() and not out.exists()
    finally:
        _kill9(holder)  # killed midway: its marked partial folder stays, unlocked
    code, err = main_in_process(monkeypatch, capsys, *release, str(out))
    assert code == 0, err
    assert tar_digests(out / "data") == tar_digests(expected / "data")
    assert not (tmp_path / "rel.partial").exists()
