"""Issue 21 (S1): the project never deletes or overwrites a user's files, and faults are one line.

Each test feeds the hostile input through the command line as a user types it (``cli.main`` in this process, or
``python -m``-style subprocesses with the fake model of ``fake_model_cli``) and checks: the user's files are still
there, the message is one line naming the culprit, exit 2 (130 after Ctrl-C), and a re-run ends with exactly the
planned result (tar member digests read with ``tarfile``, compared with an uninterrupted run). Locks and disk
errors have their own files (``tests/io/test_lock.py``, ``tests/io/test_disk_errors.py``).
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
from conftest import write_fake_run
from release_fixtures import write_fake_scores
from safety_helpers import (
    INTERRUPTED,
    class_file,
    fake_cli,
    fake_cli_popen,
    generate_args,
    main_in_process,
    one_line_error,
    tar_digests,
    tree,
    wait_for,
)

from imagenet_plus.contract import RunPaths
from imagenet_plus.contract.names import LOCK_NAME, PARTIAL_MARKER, REPORT_FILE_PATTERN
from imagenet_plus.generate import planned_keys
from imagenet_plus.select import SelectConfig, run_select


def _keys(run: Path) -> list[str]:
    return sorted({m.split(".")[0] for members in tar_digests(run / "generated").values() for m in members})


def _assert_planned(run: Path, reference: Path) -> None:
    """Exactly the planned keys, and every tar member byte-identical to the uninterrupted run."""
    assert _keys(run) == sorted(planned_keys(run)) and len(_keys(run)) == 12
    assert tar_digests(run / "generated") == tar_digests(reference / "generated")
    assert not list(run.rglob("*.partial"))


# ------------------------------------------------------------------------------------------------------------
# item 1: generate --out on a folder that is not a run; cleanup deletes only the project's names


def test_generate_refuses_a_folder_that_is_not_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture, reference_run: Path) -> None:
    mine = tmp_path / "mine"
    (mine / "generated").mkdir(parents=True)
    (mine / "generated" / "my_dataset.tar").write_bytes(b"my data")
    (mine / "generated" / "thesis.docx.partial").write_bytes(b"my thesis")
    (mine / "notes.txt").write_text("notes")
    before = tree(mine)
    classes = class_file(tmp_path)
    code, err = main_in_process(monkeypatch, capsys, *generate_args(mine, classes))
    one_line_error(code, err, mine, "not an imagenet-plus run", "--out")
    assert tree(mine) == before, "nothing written, nothing deleted (not even a lock file)"
    # `run` refuses it the same way
    config = tmp_path / "run.yaml"
    config.write_text(f"classes: {classes}\nmodel: fake/model\nimages_per_class: 4\nshard_size: 2\nresolution: 32\n")
    code, err = main_in_process(monkeypatch, capsys, "run", "--config", str(config), "--out", str(mine))
    one_line_error(code, err, mine, "not an imagenet-plus run")
    assert tree(mine) == before
    for stage in ("score", "diagnose", "select", "report"):  # no lock file is written into it either
        code, err = main_in_process(monkeypatch, capsys, stage, str(mine))
        one_line_error(code, err, mine, "not a run directory")
        assert tree(mine) == before, stage
    # the user moves their files away; the same command then makes exactly the planned run
    shutil.move(mine, tmp_path / "moved")
    code, err = main_in_process(monkeypatch, capsys, *generate_args(mine, classes))
    assert code == 0, err
    _assert_planned(mine, reference_run)


def test_cleanup_deletes_only_the_projects_leftovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture, reference_run: Path) -> None:
    """In a run, a restart removes a killed writer's ``00002.tar.partial`` and a tar without stats, and leaves
    every other file of ``RUN/generated`` alone (a ``*.partial`` of the user's included)."""
    run = tmp_path / "run"
    classes = class_file(tmp_path)
    assert main_in_process(monkeypatch, capsys, *generate_args(run, classes))[0] == 0
    gen = run / "generated"
    (gen / "00002.tar.partial").write_bytes(b"half a shard")
    (gen / "00003.json").unlink()  # a finished tar whose stats were never written
    user = {"my_dataset.tar": b"my data", "thesis.docx.partial": b"my thesis", "00001.tar.bak": b"a backup"}
    for name, data in user.items():
        (gen / name).write_bytes(data)
    code, err = main_in_process(monkeypatch, capsys, *generate_args(run, classes))
    assert code == 0, err
    assert {name: (gen / name).read_bytes() for name in user} == user
    for name in user:
        (gen / name).unlink()
    _assert_planned(run, reference_run)


def test_a_start_killed_before_run_yaml_is_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture, reference_run: Path) -> None:
    """What a ``generate``/``run`` killed before it wrote ``run.yaml`` leaves (its lock file, ``classes.json``, an
    empty ``generated/``, ``run``'s markers) is the project's: the same command resumes there."""
    run = tmp_path / "run"
    (run / "generated").mkdir(parents=True)
    (run / "markers" / "run").mkdir(parents=True)
    (run / LOCK_NAME).write_text("4711 elsewhere\n")
    (run / "classes.json").write_text("[]")
    classes = class_file(tmp_path)
    code, err = main_in_process(monkeypatch, capsys, *generate_args(run, classes))
    assert code == 0, err
    _assert_planned(run, reference_run)


# ------------------------------------------------------------------------------------------------------------
# item 2: release --out photos with a photos.partial/ (and --imagefolder mine with mine.partial/) of the user's


@pytest.fixture
def selected_run(tmp_path: Path) -> Path:
    run = write_fake_run(tmp_path / "run", per_class=8, shard_size=10, size=32)
    write_fake_scores(run)
    run_select(run, SelectConfig(per_class=6))
    return run


def _release(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, run: Path, out: Path,
             *extra: str) -> tuple[int, str]:
    return main_in_process(monkeypatch, capsys, "release", str(run), "--out", str(out), "--val-per-class", "2",
                           "--shard-size", "4", *extra)


def test_release_never_deletes_a_partial_folder_it_did_not_mark(tmp_path: Path, selected_run: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    expected = tmp_path / "expected"
    assert _release(monkeypatch, capsys, selected_run, expected)[0] == 0
    for option, name in (("--out", "photos"), ("--imagefolder", "mine")):
        user = tmp_path / f"{name}.partial"
        (user / "vacation").mkdir(parents=True)
        (user / "vacation" / "img001.txt").write_text("my holiday")
        before = tree(tmp_path)
        out = tmp_path / ("photos" if option == "--out" else "rel")
        extra = ("--imagefolder", str(tmp_path / "mine")) if option == "--imagefolder" else ()
        code, err = _release(monkeypatch, capsys, selected_run, out, *extra)
        one_line_error(code, err, user, "was not made by imagenet-plus", "nothing was deleted")
        assert tree(tmp_path) == before, f"{option}: nothing written, nothing deleted"
        shutil.move(user, tmp_path / f"{name}-moved")
        code, err = _release(monkeypatch, capsys, selected_run, out, *extra)
        assert code == 0, err
        assert tar_digests(out / "data") == tar_digests(expected / "data")
        assert (tmp_path / f"{name}-moved" / "vacation" / "img001.txt").read_text() == "my holiday"
    released = {m.split(".")[0] for members in tar_digests(expected / "data").values() for m in members}
    assert {p.stem for p in (tmp_path / "mine").rglob("*.JPEG")} == released
    # a partial folder the project marked (left by a killed release) is emptied and reused
    stale = tmp_path / "again.partial"
    stale.mkdir()
    (stale / PARTIAL_MARKER).write_text("")
    (stale / "data").mkdir()
    (stale / "data" / "train-00000.tar").write_bytes(b"half a shard")
    code, err = _release(monkeypatch, capsys, selected_run, tmp_path / "again")
    assert code == 0, err
    assert not stale.exists() and tar_digests(tmp_path / "again" / "data") == tar_digests(expected / "data")
    assert PARTIAL_MARKER not in {p.name for p in (tmp_path / "again").iterdir()}


# ------------------------------------------------------------------------------------------------------------
# item 3: report never deletes files a user put in RUN/report/ or RUN/report.old/


def test_report_never_deletes_user_files(tmp_path: Path, selected_run: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    run = selected_run
    report = RunPaths(run).report
    code, err = main_in_process(monkeypatch, capsys, "report", str(run), "--sample-classes", "1")
    assert code == 0, err
    written = sorted(p.relative_to(report).as_posix() for p in report.rglob("*"))
    assert all(REPORT_FILE_PATTERN.match(name) for name in written), written  # the pattern covers every file
    for folder in (report, run / "report.old"):
        folder.mkdir(exist_ok=True)
        (folder / "notes.txt").write_text("my notes")
        before = tree(run)
        code, err = main_in_process(monkeypatch, capsys, "report", str(run), "--sample-classes", "2")
        one_line_error(code, err, folder, "nothing was deleted")
        assert tree(run) == before, "the old report and the user's file are untouched"
        (folder / "notes.txt").unlink()
    (run / "report.old").rmdir()
    code, err = main_in_process(monkeypatch, capsys, "report", str(run), "--sample-classes", "2")
    assert code == 0, err
    assert len(list((report / "sheets").glob("*.jpg"))) == 2 and not (run / "report.old").exists()
    assert not (run / "report.partial").exists()


# ------------------------------------------------------------------------------------------------------------
# item 12: release --out . and other paths that name no folder of their own


@pytest.mark.parametrize("bad", [".", "..", "/", "here/..", "CWD"])
def test_release_refuses_paths_that_name_no_folder(tmp_path: Path, selected_run: Path, bad: str,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    cwd = tmp_path / "cwd"
    (cwd / "here").mkdir(parents=True)
    monkeypatch.chdir(cwd / "here")
    target = str(cwd / "here") if bad == "CWD" else bad
    before = tree(tmp_path)
    for option in ("--out", "--imagefolder"):
        extra = ("--imagefolder", target) if option == "--imagefolder" else ()
        out = target if option == "--out" else str(tmp_path / "rel")
        code, err = _release(monkeypatch, capsys, selected_run, Path(out), *extra)
        one_line_error(code, err, f"{option} {target}")
        assert tree(tmp_path) == before
    code, err = _release(monkeypatch, capsys, selected_run, Path("rel"), "--imagefolder", "rel/images")
    one_line_error(code, err, "overlaps")
    assert tree(tmp_path) == before
    code, err = _release(monkeypatch, capsys, selected_run, Path("rel"))  # the user names a folder: released
    assert code == 0, err
    assert tar_digests(cwd / "here" / "rel" / "data")


# ------------------------------------------------------------------------------------------------------------
# item 15: Ctrl-C


@pytest.mark.slow
def test_ctrl_c_is_one_line_exit_130_and_a_rerun_finishes(tmp_path: Path, reference_run: Path) -> None:
    run = tmp_path / "run"
    args = generate_args(run, class_file(tmp_path))
    proc = fake_cli_popen(*args, seconds=0.3)
    wait_for(lambda: len(list((run / "generated").glob("*.json"))) >= 2, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130, err
    assert lines[-1] == INTERRUPTED and "Traceback" not in err and "Aborted" not in err, err
    assert 2 <= len(list((run / "generated").glob("*.json"))) < 6, "interrupted midway"
    rerun = fake_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    _assert_planned(run, reference_run)


def test_ctrl_c_in_any_stage_is_the_same_line(tmp_path: Path, selected_run: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    """In-process: a KeyboardInterrupt inside a stage reaches the user as the one line (typer alone would exit
    130 silently, click would print 'Aborted!')."""
    import imagenet_plus.select as select_face

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(select_face, "run_select", interrupted)
    code, err = main_in_process(monkeypatch, capsys, "select", str(selected_run))
    assert code == 130 and [ln for ln in err.splitlines() if ln.strip()] == [INTERRUPTED], err
