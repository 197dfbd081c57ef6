"""Tests for the folder swap (io.atomic.building_folder, replace_folder) and io.digest.file_sha256."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagenet_plus.contract import PARTIAL_SUFFIX
from imagenet_plus.contract.names import PARTIAL_MARKER
from imagenet_plus.errors import ForeignFiles
from imagenet_plus.io import atomic
from imagenet_plus.io.atomic import building_folder, replace_folder
from imagenet_plus.io.digest import file_sha256


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _old(root: Path) -> Path:
    root.mkdir()
    (root / "sub").mkdir()
    (root / "sub" / "a.txt").write_text("old a")
    (root / "b.txt").write_text("old b")
    return root


def _any(rel: str) -> bool:
    return True


def test_new_folder_replaces_old(tmp_path: Path) -> None:
    final = _old(tmp_path / "rel")
    with building_folder(final, owned=_any) as tmp:
        assert tmp == tmp_path / f"rel{PARTIAL_SUFFIX}" and tmp.is_dir()
        assert [p.name for p in tmp.iterdir()] == [PARTIAL_MARKER], "a fresh partial folder holds only its marker"
        (tmp / "new.txt").write_text("new")
        assert _tree(final) == {"sub/a.txt": b"old a", "b.txt": b"old b"}, "the old folder stays until the end"
    assert _tree(final) == {"new.txt": b"new"}, "the marker does not reach the final folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]


def test_failure_while_building_leaves_the_old_folder(tmp_path: Path) -> None:
    final = _old(tmp_path / "rel")
    (tmp_path / "rel.partial").mkdir()
    (tmp_path / "rel.partial" / PARTIAL_MARKER).write_text("")
    (tmp_path / "rel.partial" / "leftover").write_text("from a killed run")
    with pytest.raises(RuntimeError, match="disk full"), building_folder(final, owned=_any) as tmp:
        assert not (tmp / "leftover").exists(), "a leftover partial folder of ours is emptied"
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("disk full")
    assert _tree(final) == {"sub/a.txt": b"old a", "b.txt": b"old b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]


def test_failed_rename_midway_puts_the_old_folder_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old folder is moved aside, then renaming the new one in fails: the old one is renamed back."""
    final = _old(tmp_path / "rel")
    new = tmp_path / "rel.partial"
    new.mkdir()
    (new / "new.txt").write_text("new")
    real_replace = os.replace

    def replace(src, dst):  # type: ignore[no-untyped-def]
        if Path(src) == new:
            raise OSError("device busy")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="device busy"):
        replace_folder(new, final, owned=_any)
    assert _tree(final) == {"sub/a.txt": b"old a", "b.txt": b"old b"}
    assert _tree(new) == {"new.txt": b"new", PARTIAL_MARKER: b""}, "the new folder stays the project's"
    assert not (tmp_path / "rel.old").exists()
    monkeypatch.undo()
    replace_folder(new, final, owned=_any)  # a later try swaps it in
    assert _tree(final) == {"new.txt": b"new"} and sorted(p.name for p in tmp_path.iterdir()) == ["rel"]


def test_replace_into_an_absent_folder_and_a_stale_old_one(tmp_path: Path) -> None:
    """No folder yet: a plain rename; a ``.old`` left by a killed swap (marked) is removed first."""
    (tmp_path / "rel.old").mkdir()
    (tmp_path / "rel.old" / PARTIAL_MARKER).write_text("")
    (tmp_path / "rel.old" / "stale").write_text("x")
    new = tmp_path / "new"
    new.mkdir()
    (new / "f").write_text("f")
    replace_folder(new, tmp_path / "rel", owned=_any)
    assert _tree(tmp_path / "rel") == {"f": b"f"} and not (tmp_path / "rel.old").exists()


def test_folders_the_project_did_not_make_are_refused_untouched(tmp_path: Path) -> None:
    """An unmarked ``NAME.partial``, an unmarked ``NAME.old`` and a ``NAME`` holding files the caller does not own
    stop the swap with a one-line error naming them; every file stays."""
    final = _old(tmp_path / "rel")
    mine = tmp_path / "rel.partial"
    mine.mkdir()
    (mine / "vacation").mkdir()
    (mine / "vacation" / "img001.txt").write_text("mine")
    before = _tree(tmp_path)
    with pytest.raises(ForeignFiles, match=f"{mine} was not made by imagenet-plus"), building_folder(final, _any):
        pytest.fail("the block must not run")
    assert _tree(tmp_path) == before
    (mine / "vacation" / "img001.txt").unlink()
    (mine / "vacation").rmdir()
    mine.rmdir()
    (tmp_path / "rel.old").mkdir()
    (tmp_path / "rel.old" / "keep.txt").write_text("mine")
    before = _tree(tmp_path)
    with pytest.raises(ForeignFiles, match="rel.old was not made by imagenet-plus"):
        with building_folder(final, owned=_any) as tmp:
            (tmp / "new.txt").write_text("new")
    assert _tree(tmp_path) == before and not mine.exists()
    (tmp_path / "rel.old" / "keep.txt").unlink()
    (tmp_path / "rel.old").rmdir()
    before = _tree(tmp_path)
    with pytest.raises(ForeignFiles, match=r"holds files imagenet-plus did not write \(sub and 1 more\)"):
        with building_folder(final) as tmp:  # owned=None: the old folder must be empty
            (tmp / "new.txt").write_text("new")
    assert _tree(tmp_path) == before and not mine.exists()


def test_file_sha256_matches_sha256sum(tmp_path: Path) -> None:
    """Against coreutils' sha256sum, on a file larger than one read block."""
    import shutil
    import subprocess

    if shutil.which("sha256sum") is None:
        pytest.skip("sha256sum not installed")
    p = tmp_path / "blob"
    p.write_bytes(os.urandom(3 * (1 << 20) + 123))
    expected = subprocess.run(["sha256sum", str(p)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert file_sha256(p) == expected
