"""Issue 21 item 8: no reader of a release follows a path out of it.

Every reader of ``_info.json`` (the training loader ``imagenet_plus.data.make_loader``, ``imagenet-plus evaluate``,
``imagenet-plus publish``) goes through the contract's ``read_release_info``: a file name with ``../``, an absolute
path, a backslash or a NUL byte, and a name that leads out of the folder through a symlink (a ``data/`` folder or a
shard linked elsewhere, ``_info.json`` itself linked elsewhere) is refused with the same one line, exit 2, and the
release is left as it was. ``publish`` also refuses to upload any file that is a symlink out of the folder. A
release folder that is itself a symlink (kept on another disk) is read as any other.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import cli_in_process, only_error_line
from release_fixtures import make_release

from imagenet_plus.contract import INFO_NAME
from imagenet_plus.data import make_loader
from imagenet_plus.errors import UserError
from imagenet_plus.io.tar import iter_shard
from imagenet_plus.publish import PublishConfig, run_publish


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_release(tmp_path_factory.mktemp("release"), license="apache-2.0")


@pytest.fixture
def rel(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "rel", symlinks=True))


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The console entry point in-process: (exit status, its one ``error:`` line without ``error: ``)."""
    code, out, err = cli_in_process(args, monkeypatch, capsys)
    return code, only_error_line(out, err)[len("error: "):]


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry below ``folder`` (links as links): its sha256, or where a symlink points."""
    return {p.relative_to(folder).as_posix(): (f"-> {p.readlink()}" if p.is_symlink() else
                                                hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def messages_of_every_reader(rel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The error of the loader, of ``evaluate`` and of ``publish --dry-run`` on ``rel`` (the CLI ones exit 2)."""
    with pytest.raises(UserError) as err:
        make_loader(rel)
    messages = [err.value.message]
    for args in (["evaluate", "--train", str(rel), "--test", str(tmp_path / "real"), "--out", str(tmp_path / "eval")],
                 ["publish", str(rel), "--repo-id", "someone/plus", "--dry-run"]):
        code, line = run_main(args, monkeypatch, capsys)
        assert code == 2
        messages.append(line)
    assert not (tmp_path / "eval").exists()
    return messages


def check_every_sample_is_read(rel: Path) -> None:
    """A corrected release: the loader yields exactly the samples of its tars, and a dry run lists its files."""
    info = json.loads((rel / INFO_NAME).read_text())
    for split, meta in info["splits"].items():
        on_disk = sum(1 for name in meta["filenames"] for _ in iter_shard(rel / name))
        loader = make_loader(rel, split=split, batch_size=4, shuffle_buffer=0)
        assert sum(len(labels) for _images, labels in loader) == on_disk == meta["num_samples"]
    result = run_publish(rel, PublishConfig(repo_id="someone/plus", dry_run=True))
    assert result.added == sum(1 for p in rel.rglob("*") if p.is_file())


def _with_name(bad: str) -> Callable[[Path], None]:
    def damage(rel: Path) -> None:
        info = json.loads((rel / INFO_NAME).read_text())
        info["splits"]["train"]["filenames"][0] = bad
        (rel / INFO_NAME).write_text(json.dumps(info))

    return damage


@pytest.mark.parametrize("bad", ["../x.tar", "/etc/passwd", "data\\train-00000.tar", "data/train-00000.tar\0.txt"])
def test_hostile_file_names_in_info_json_are_the_same_one_line_for_every_reader(
        bad: str, rel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    original = (rel / INFO_NAME).read_bytes()
    _with_name(bad)(rel)
    before = snapshot(rel)
    messages = messages_of_every_reader(rel, tmp_path, monkeypatch, capsys)
    expected = (f"{rel / INFO_NAME} split 'train': file name {bad!r} is not a plain relative path inside the "
                "release")
    assert messages == [expected] * 3
    assert snapshot(rel) == before
    (rel / INFO_NAME).write_bytes(original)
    check_every_sample_is_read(rel)


def _link_data_folder(rel: Path) -> tuple[str, Callable[[Path], None]]:
    """``data/`` moved next to the release and linked back (the tars are the release's own, read from elsewhere)."""
    outside = rel.parent / "elsewhere"
    shutil.move(rel / "data", outside)
    (rel / "data").symlink_to(outside, target_is_directory=True)

    def undo(rel: Path) -> None:
        (rel / "data").unlink()
        shutil.move(outside, rel / "data")

    return f"split 'train': file name 'data/train-00000.tar' leads out of the release through a symlink (to " \
           f"{outside.resolve() / 'train-00000.tar'})", undo


def _link_one_shard(rel: Path) -> tuple[str, Callable[[Path], None]]:
    shard = rel / "data" / "validation-00000.tar"
    outside = rel.parent / "validation-00000.tar"
    shutil.move(shard, outside)
    shard.symlink_to(outside)

    def undo(rel: Path) -> None:
        shard.unlink()
        shutil.move(outside, shard)

    return f"split 'validation': file name 'data/validation-00000.tar' leads out of the release through a " \
           f"symlink (to {outside.resolve()})", undo


def _link_info_json(rel: Path) -> tuple[str, Callable[[Path], None]]:
    outside = rel.parent / "info-elsewhere.json"
    shutil.move(rel / INFO_NAME, outside)
    (rel / INFO_NAME).symlink_to(outside)

    def undo(rel: Path) -> None:
        (rel / INFO_NAME).unlink()
        shutil.move(outside, rel / INFO_NAME)

    return f"{rel}: file name '_info.json' leads out of the release through a symlink (to {outside.resolve()})", undo


@pytest.mark.parametrize("link", [_link_data_folder, _link_one_shard, _link_info_json])
def test_a_symlink_out_of_the_release_is_the_same_one_line_for_every_reader(
        link: Callable[[Path], tuple[str, Callable[[Path], None]]], rel: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    needle, undo = link(rel)
    before, outside = snapshot(rel), snapshot(rel.parent)
    messages = messages_of_every_reader(rel, tmp_path, monkeypatch, capsys)
    assert len(set(messages)) == 1 and needle in messages[0], messages
    assert snapshot(rel) == before and snapshot(rel.parent) == outside, "nothing moved, written or deleted"
    undo(rel)
    check_every_sample_is_read(rel)


def test_publish_refuses_to_upload_a_file_linked_out_of_the_release(
        rel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the Hub\n")
    (rel / "notes.txt").symlink_to(secret)
    code, line = run_main(["publish", str(rel), "--repo-id", "someone/plus", "--dry-run"], monkeypatch, capsys)
    assert code == 2
    assert line == (f"{rel}: file name 'notes.txt' leads out of the release through a symlink "
                    f"(to {secret.resolve()}); a release must hold its files itself")
    (rel / "notes.txt").unlink()
    check_every_sample_is_read(rel)


def test_a_release_folder_that_is_itself_a_symlink_is_read_as_any_other(rel: Path, tmp_path: Path) -> None:
    """Keeping a whole release on another disk and linking to it is fine: both sides of the check are resolved."""
    link = tmp_path / "linked-release"
    link.symlink_to(rel, target_is_directory=True)
    check_every_sample_is_read(link)
