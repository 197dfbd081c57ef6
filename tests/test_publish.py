"""Tests for imagenet_plus.publish against a loopback fake Hub (tests/hub_server.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hub_server import FakeHub
from release_fixtures import check_cli_error, check_subprocess_error, make_release, run_cli
from typer.testing import CliRunner

from imagenet_plus.cli import app
from imagenet_plus.errors import UserError
from imagenet_plus.publish import PublishConfig, run_publish, validate_release

TOKEN = "hf_fakeTOKENfortests0123456789abcdef"
REPO = "someone/imagenet-plus-test"


@pytest.fixture(scope="module")
def built_rel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_release(tmp_path_factory.mktemp("pub"), per_class=6, quota=5, val_per_class=1, shard_size=2)


@pytest.fixture
def rel(built_rel: Path, tmp_path: Path) -> Path:
    """A private copy of the release (tests may damage it)."""
    return Path(shutil.copytree(built_rel, tmp_path / "rel"))


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """A running fake Hub, HF_ENDPOINT pointing at it, a token in HF_TOKEN, offline mode off."""
    from huggingface_hub import constants

    hub = FakeHub().__enter__()
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield hub
    hub.__exit__(None, None, None)


def _subprocess_env(hub: FakeHub, token: str | None = TOKEN) -> dict[str, str | None]:
    return {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": token,
            "HUGGING_FACE_HUB_TOKEN": None}


def _assert_token_nowhere(*roots: Path, texts: tuple[str, ...] = ()) -> None:
    for t in texts:
        assert TOKEN not in t
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file():
                assert TOKEN.encode() not in p.read_bytes(), p


def _local_files(rel: Path) -> dict[str, bytes]:
    return {p.relative_to(rel).as_posix(): p.read_bytes() for p in rel.rglob("*") if p.is_file()}


def test_validate_and_dry_run(rel: Path) -> None:
    files = validate_release(rel)
    assert {f.path for f in files} == set(_local_files(rel))
    out = run_publish(rel, PublishConfig(repo_id=REPO, dry_run=True))
    assert out.startswith(f"dry run: would upload {len(files)} files")
    assert "data/train-00000.tar" in out and "README.md" in out
    size = (rel / "data/train-00000.tar").stat().st_size
    assert f"{size:,d}  data/train-00000.tar" in out


def test_upload_every_file_arrives_and_token_stays_secret(rel: Path, online: FakeHub, tmp_path: Path,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    url = run_publish(rel, PublishConfig(repo_id=REPO))
    assert url == f"{online.endpoint}/datasets/{REPO}"
    assert online.state.files(f"datasets/{REPO}") == _local_files(rel)
    assert online.state.repos[f"datasets/{REPO}"]["private"] is False
    auth = {a for m, p, a in online.state.requests if m == "POST"}
    assert auth == {f"Bearer {TOKEN}"}
    # a second publish of the same release sends no shard again and makes no empty commit
    puts, commits = len(online.state.puts), online.state.commits
    run_publish(rel, PublishConfig(repo_id=REPO))
    assert len(online.state.puts) == puts and online.state.commits == commits
    captured = capfd.readouterr()
    _assert_token_nowhere(tmp_path, texts=(captured.out, captured.err))
    import os

    _assert_token_nowhere(Path(os.environ["HF_HOME"]))


def test_interrupted_upload_completes_on_rerun(rel: Path, online: FakeHub) -> None:
    online.state.fail_put_after = 2
    with pytest.raises(UserError, match="re-run the same command to resume") as err:
        run_publish(rel, PublishConfig(repo_id=REPO, private=True))
    assert TOKEN not in err.value.message
    assert online.state.commits == 0 and len(online.state.puts) == 2
    first = set(online.state.puts)
    online.state.fail_put_after = None
    run_publish(rel, PublishConfig(repo_id=REPO, private=True))
    assert online.state.files(f"datasets/{REPO}") == _local_files(rel)
    assert online.state.repos[f"datasets/{REPO}"]["private"] is True
    n_tars = sum(1 for p in rel.rglob("*.tar"))
    assert len(online.state.puts) == n_tars, "every shard sent exactly once over both runs"
    assert not first & set(online.state.puts[2:])


def test_revision_creates_branch(rel: Path, online: FakeHub) -> None:
    url = run_publish(rel, PublishConfig(repo_id=REPO, revision="v1"))
    assert url.endswith("/tree/v1")
    assert online.state.files(f"datasets/{REPO}", "v1") == _local_files(rel)
    assert online.state.files(f"datasets/{REPO}", "main") == {}


@pytest.mark.slow
def test_cli_publish_subprocess(rel: Path, online: FakeHub) -> None:
    proc = run_cli("publish", str(rel), "--repo-id", REPO, env=_subprocess_env(online))
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    assert online.state.files(f"datasets/{REPO}") == _local_files(rel)


def _truncate(rel: Path) -> str:
    shard = rel / "data/train-00001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])
    return "train-00001.tar"


def _delete(rel: Path) -> str:
    (rel / "data/validation-00000.tar").unlink()
    return "validation-00000.tar"


def _edit_info(rel: Path) -> str:
    info = json.loads((rel / "_info.json").read_text())
    info["splits"]["train"]["shard_lengths"][0] += 1
    info["splits"]["train"]["num_samples"] += 1
    (rel / "_info.json").write_text(json.dumps(info))
    return "_info.json"


def _bad_label(rel: Path) -> str:
    from imagenet_plus.shards import PartialTarWriter, iter_shard

    shard = rel / "data/train-00000.tar"
    samples = list(iter_shard(shard))
    samples[0]["cls"] = b"7"
    with PartialTarWriter(shard) as w:
        for s in samples:
            w.write(s)
    return "label 7"


def _missing_member(rel: Path) -> str:
    from imagenet_plus.shards import PartialTarWriter, iter_shard

    shard = rel / "data/train-00002.tar"
    samples = list(iter_shard(shard))
    del samples[-1]["json"]
    with PartialTarWriter(shard) as w:
        for s in samples:
            w.write(s)
    return "has members"


def _broken_card(rel: Path) -> str:
    (rel / "README.md").write_text("---\npretty_name: [unclosed\n---\nbody\n")
    return "README.md"


@pytest.mark.parametrize("damage", [_truncate, _delete, _edit_info, _bad_label, _missing_member, _broken_card])
def test_invalid_release_refused_before_sending(rel: Path, online: FakeHub, damage) -> None:  # type: ignore[no-untyped-def]
    needle = damage(rel)
    before = _local_files(rel)
    result = CliRunner().invoke(app, ["publish", str(rel), "--repo-id", REPO])
    check_cli_error(result, needle)
    assert online.state.requests == [], "nothing may be sent before the release validates"
    assert _local_files(rel) == before, "nothing lost or changed"


@pytest.mark.slow
def test_invalid_release_subprocess_one_line(rel: Path, online: FakeHub) -> None:
    _truncate(rel)
    proc = run_cli("publish", str(rel), "--repo-id", REPO, env=_subprocess_env(online))
    check_subprocess_error(proc, "train-00001.tar", "truncated")
    assert online.state.requests == []


def test_no_token(rel: Path, online: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN")
    result = CliRunner().invoke(app, ["publish", str(rel), "--repo-id", REPO])
    check_cli_error(result, "no Hugging Face token", "HF_TOKEN")
    assert online.state.requests == []


@pytest.mark.slow
def test_no_token_subprocess(rel: Path, online: FakeHub) -> None:
    proc = run_cli("publish", str(rel), "--repo-id", REPO, env=_subprocess_env(online, token=None))
    check_subprocess_error(proc, "no Hugging Face token")
    assert online.state.requests == []


def test_rejected_token_is_not_echoed(rel: Path, online: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "x")  # the fake Hub wants "Bearer ..."; make it refuse by a blank token
    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "_build_hf_headers", lambda self, **kw: {})
    with pytest.raises(UserError, match="HTTP 401") as err:
        run_publish(rel, PublishConfig(repo_id=REPO))
    assert "token" in err.value.message


@pytest.mark.parametrize("repo_id", ["noslash", "a/b/c", "user/bad name", "user/-x", "user/a..b", "/name", ""])
def test_malformed_repo_id(rel: Path, repo_id: str) -> None:
    result = CliRunner().invoke(app, ["publish", str(rel), "--repo-id", repo_id])
    check_cli_error(result, "malformed repo id")


def test_malformed_repo_id_subprocess(rel: Path) -> None:
    proc = run_cli("publish", str(rel), "--repo-id", "not a repo")
    check_subprocess_error(proc, "malformed repo id", "'not a repo'")
