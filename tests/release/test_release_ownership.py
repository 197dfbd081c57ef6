"""Issue 20, item 1: ``release`` (and so ``run``) replaces the release this run made, never anything else.

A release folder records the run it was made from (``run_id`` and ``config_hash`` of ``RUN/run.yaml``). Releasing
the same run again with other inputs (after a top-up, other settings) replaces it through ``REL.partial`` and a
swap; a release of another run folder (same config, other run id), one without a run id, a release folder with a
file the release did not write, or a folder that is not a release are refused and left byte for byte as they were.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from conftest import write_fake_run
from release_fixtures import write_fake_scores

from imagenet_plus.contract import INFO_NAME, RunPaths, read_run_record, write_run_yaml
from imagenet_plus.errors import UserError
from imagenet_plus.release import ReleaseConfig, run_release
from imagenet_plus.select import SelectConfig, run_select


def _run(tmp: Path, name: str = "run", run_id: str | None = "run-a") -> Path:
    """A selected fake run whose run.yaml carries ``run_id`` (as generate writes it)."""
    run = write_fake_run(tmp / name, per_class=6, shard_size=10, size=16)
    paths = RunPaths(run)
    write_run_yaml(paths, dataclasses.replace(read_run_record(paths), run_id=run_id))
    write_fake_scores(run)
    run_select(run, SelectConfig(per_class=6))
    return run


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _info(rel: Path) -> dict:
    return json.loads((rel / INFO_NAME).read_text())


def test_release_of_the_same_run_is_replaced(tmp_path: Path) -> None:
    run = _run(tmp_path)
    rel, images = tmp_path / "rel", tmp_path / "images"
    run_release(run, rel, ReleaseConfig(val_per_class=1, shard_size=4, imagefolder=str(images)))
    first = _info(rel)
    assert first["run_id"] == "run-a" and first["config_hash"] == read_run_record(RunPaths(run)).config_hash
    assert json.loads((images / ".imagenet-plus-release.json").read_text())["run_id"] == "run-a"
    # other inputs of the same run (here another split): the release and the image folder are rebuilt in place
    run_release(run, rel, ReleaseConfig(val_per_class=2, shard_size=4, imagefolder=str(images)))
    second = _info(rel)
    assert second["fingerprint"] != first["fingerprint"]
    assert second["splits"]["validation"]["num_samples"] == 6 and second["splits"]["train"]["num_samples"] == 12
    assert len(list((images / "val").rglob("*.JPEG"))) == 6 and len(list((images / "train").rglob("*.JPEG"))) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "rel", "run"]  # no .partial / .old left


def test_release_of_another_run_is_refused(tmp_path: Path) -> None:
    run_a = _run(tmp_path, "a", run_id="run-a")
    run_b = tmp_path / "b"
    shutil.copytree(run_a, run_b)  # the same config hash: only the run id tells the runs apart
    paths_b = RunPaths(run_b)
    write_run_yaml(paths_b, dataclasses.replace(read_run_record(paths_b), run_id="run-b"))
    rel = tmp_path / "rel"
    run_release(run_a, rel, ReleaseConfig(val_per_class=1, shard_size=4))
    before = _snapshot(rel)
    with pytest.raises(UserError, match="different release, not one made from this run"):
        run_release(run_b, rel, ReleaseConfig(val_per_class=2, shard_size=4))
    assert _snapshot(rel) == before


def test_release_without_a_run_id_is_refused(tmp_path: Path) -> None:
    """A release written before releases recorded their run (or from a run.yaml without run_id) is not replaced."""
    run = _run(tmp_path, run_id=None)
    rel = tmp_path / "rel"
    run_release(run, rel, ReleaseConfig(val_per_class=1, shard_size=4))
    assert _info(rel)["run_id"] is None
    before = _snapshot(rel)
    with pytest.raises(UserError, match="different release"):
        run_release(run, rel, ReleaseConfig(val_per_class=2, shard_size=4))
    assert _snapshot(rel) == before


def test_a_users_file_in_this_runs_release_is_never_deleted(tmp_path: Path) -> None:
    run = _run(tmp_path)
    rel, images = tmp_path / "rel", tmp_path / "images"
    run_release(run, rel, ReleaseConfig(val_per_class=1, shard_size=4, imagefolder=str(images)))
    (rel / "notes.txt").write_text("mine")
    before = _snapshot(rel)
    with pytest.raises(UserError, match=r"also 'notes.txt'.*did not write"):
        run_release(run, rel, ReleaseConfig(val_per_class=2, shard_size=4, imagefolder=str(images)))
    assert _snapshot(rel) == before
    (rel / "notes.txt").unlink()
    (images / "train" / "mine.txt").write_text("mine")
    images_before = _snapshot(images)
    with pytest.raises(UserError, match=r"also 'train/mine.txt'"):
        run_release(run, rel, ReleaseConfig(val_per_class=2, shard_size=4, imagefolder=str(images)))
    assert _snapshot(images) == images_before


def test_a_folder_that_is_not_a_release_is_refused(tmp_path: Path) -> None:
    run = _run(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "_info.json").write_text("{}")  # not a release record
    (other / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no imagenet-plus release"):
        run_release(run, other, ReleaseConfig(val_per_class=1, shard_size=4))
    assert _snapshot(other) == {"_info.json": b"{}", "keep.txt": b"mine"}
