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
from imagenet_plus.contract import INFO_NAME
from imagenet_plus.errors import UserError
from imagenet_plus.publish.stage import PublishConfig, run_publish, validate_release

TOKEN = "hf_fakeTOKENfortests0123456789abcdef"
REPO = "someone/imagenet-plus-test"
HUB_REPO = f"datasets/{REPO}"


@pytest.fixture(scope="module")
def built_rel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_release(tmp_path_factory.mktemp("pub"), per_class=6, quota=5, val_per_class=1, shard_size=2,
                        license="apache-2.0")


@pytest.fixture(scope="module")
def built_small_rel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A re-made release of fewer samples in fewer, bigger shards (what a user publishes after a fix)."""
    return make_release(tmp_path_factory.mktemp("pub_small"), per_class=6, quota=3, val_per_class=1, shard_size=8,
                        license="apache-2.0")


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


def _check_repo_equals_release(hub: FakeHub, rel: Path, branch: str = "main", tag: str | None = None) -> None:
    """Every release file is in the repo byte for byte, nothing else is; the card is the release's card with
    the repo id filled in and a Version section (version, run config hash, fingerprint, tool version)."""
    from importlib import metadata

    remote = dict(hub.state.files(HUB_REPO, branch))
    local = _local_files(rel)
    card = remote.pop("README.md").decode()
    local_card = local.pop("README.md").decode()
    assert remote == local
    body, _, version = card.partition("\n## Version\n")
    assert body.rstrip("\n") == local_card.replace("USER/NAME", REPO).rstrip("\n")
    info = json.loads(local[INFO_NAME])
    assert f"`{info['config_hash']}`" in version and f"`{info['fingerprint']}`" in version
    assert f"imagenet-plus {metadata.version('imagenet-plus')}" in version
    assert (f'revision="{tag}"' in version) if tag else ("untagged" in version)


def _check_card_declares_only_present_shards(files: dict[str, bytes]) -> None:
    """What the repo's card and _info.json declare is there, and the card's patterns pick up nothing else."""
    import fnmatch

    import yaml

    if "README.md" not in files:
        return
    meta = yaml.safe_load(files["README.md"].decode().split("---\n")[1])
    info = json.loads(files[INFO_NAME])
    counts = {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]}
    for split, s in info["splits"].items():
        assert all(f in files for f in s["filenames"]), (split, s["filenames"], sorted(files))
        assert counts[split] == s["num_samples"]
    for df in meta["configs"][0]["data_files"]:
        matched = {f for f in files if fnmatch.fnmatchcase(f, df["path"])}
        assert matched == set(info["splits"][df["split"]]["filenames"]), (df, sorted(matched))


def test_validate_and_dry_run_offline(rel: Path) -> None:
    files = validate_release(rel)
    assert {f.path for f in files} == set(_local_files(rel))
    result = run_publish(rel, PublishConfig(repo_id=REPO, dry_run=True))
    assert result.dry_run and result.added == len(files) and result.commit is None
    out = str(result)
    assert out.startswith(f"dry run: would add {len(files)}, change 0, delete 0 file(s)")
    assert "HF_HUB_OFFLINE" in out.splitlines()[0]
    size = (rel / "data/train-00000.tar").stat().st_size
    assert f"add     {size:>14,d}  data/train-00000.tar" in out.splitlines()
    assert any(line.endswith("  README.md") for line in out.splitlines())


def test_upload_every_file_arrives_and_token_stays_secret(rel: Path, online: FakeHub, tmp_path: Path,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    result = run_publish(rel, PublishConfig(repo_id=REPO))
    assert result.url == str(result).splitlines()[0] == f"{online.endpoint}/datasets/{REPO}"
    assert result.added == len(_local_files(rel)) and result.commit is not None
    _check_repo_equals_release(online, rel)
    assert online.state.repos[HUB_REPO]["private"] is False
    auth = {a for m, p, a in online.state.requests if m == "POST"}
    assert auth == {f"Bearer {TOKEN}"}
    # the same release again: no shard sent, no commit, nothing changed
    puts, commits, before = len(online.state.puts), online.state.commits, dict(online.state.files(HUB_REPO))
    result = run_publish(rel, PublishConfig(repo_id=REPO))
    assert "no commit" in str(result) and result.commit is None and result.unchanged == len(_local_files(rel))
    assert len(online.state.puts) == puts and online.state.commits == commits
    assert online.state.files(HUB_REPO) == before
    # and its dry run says so
    dry = str(run_publish(rel, PublishConfig(repo_id=REPO, dry_run=True)))
    assert dry.startswith("dry run: would add 0, change 0, delete 0 file(s)") and len(dry.splitlines()) == 1
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
    assert online.state.files(HUB_REPO) == {}, "no card, no _info.json before every shard is up"
    first = set(online.state.puts)
    online.state.fail_put_after = None
    run_publish(rel, PublishConfig(repo_id=REPO, private=True))
    _check_repo_equals_release(online, rel)
    assert online.state.repos[HUB_REPO]["private"] is True
    n_tars = sum(1 for p in rel.rglob("*.tar"))
    assert len(online.state.puts) == n_tars, "every shard sent exactly once over both runs"
    assert not first & set(online.state.puts[2:])


def test_republish_smaller_release_deletes_stale_shards(rel: Path, built_small_rel: Path, online: FakeHub,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = Path(shutil.copytree(built_small_rel, tmp_path / "small"))
    run_publish(rel, PublishConfig(repo_id=REPO))
    old_tars = {n for n in _local_files(rel) if n.endswith(".tar")}
    new_tars = {n for n in _local_files(small) if n.endswith(".tar")}
    stale = sorted(old_tars - new_tars)
    assert stale, "the fixture must drop shards"
    monkeypatch.delenv("HF_TOKEN")  # the dry run of a public repo needs no token
    result = CliRunner().invoke(app, ["publish", str(small), "--repo-id", REPO, "--dry-run"])
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    dry = [ln for ln in result.stdout.splitlines() if ln.startswith(("dry run", "add", "change", "delete"))]
    assert [ln.split()[-1] for ln in dry if ln.startswith("delete")] == stale
    changed = sorted(n for n in new_tars & old_tars if _local_files(small)[n] != _local_files(rel)[n])
    assert [ln.split()[-1] for ln in dry if ln.startswith("change")] == sorted([*changed, "README.md", INFO_NAME])
    assert dry[0].startswith(f"dry run: would add 0, change {len(changed) + 2}, delete {len(stale)} file(s)")
    commits = online.state.commits
    result = run_publish(small, PublishConfig(repo_id=REPO))
    assert online.state.commits == commits + 1, "one atomic commit"
    assert f"{len(stale)} deleted" in str(result) and result.deleted == len(stale)
    _check_repo_equals_release(online, small)
    _check_card_declares_only_present_shards(online.state.files(HUB_REPO))


def test_publish_interrupted_after_the_shards_leaves_a_consistent_repo(rel: Path, built_small_rel: Path,
                                                                       online: FakeHub, tmp_path: Path) -> None:
    small = Path(shutil.copytree(built_small_rel, tmp_path / "small"))
    run_publish(rel, PublishConfig(repo_id=REPO))
    before = dict(online.state.files(HUB_REPO))
    puts = len(online.state.puts)
    online.state.fail_commits = 1  # every shard goes up, then the commit fails
    with pytest.raises(UserError, match="re-run the same command to resume"):
        run_publish(small, PublishConfig(repo_id=REPO))
    assert len(online.state.puts) > puts, "the shards went up"
    assert online.state.files(HUB_REPO) == before, "the repo is still the previous release"
    _check_card_declares_only_present_shards(online.state.files(HUB_REPO))
    puts = len(online.state.puts)
    run_publish(small, PublishConfig(repo_id=REPO))
    assert len(online.state.puts) == puts, "shards already up are not sent again"
    _check_repo_equals_release(online, small)
    _check_card_declares_only_present_shards(online.state.files(HUB_REPO))


def test_large_publish_goes_in_batches_and_never_declares_missing_shards(
        rel: Path, built_small_rel: Path, online: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_COMMIT_FILES files, several commits: every state the repo passes through is consistent."""
    from imagenet_plus.publish import stage as publish

    monkeypatch.setattr(publish, "MAX_COMMIT_FILES", 3)
    small = Path(shutil.copytree(built_small_rel, tmp_path / "small"))
    run_publish(rel, PublishConfig(repo_id=REPO))
    first_commits = online.state.commits
    n_data = sum(1 for n in _local_files(rel) if n != "README.md" and n != INFO_NAME)
    assert first_commits == -(-n_data // 3) + 1, "data in batches of 3, then the card and _info.json"
    _check_repo_equals_release(online, rel)
    # interrupted in the middle of the re-publish: the card is gone, nothing declares a missing shard
    calls = {"n": 0}
    real = publish._commit

    def fail_second_batch(api, cfg, plan, local, had_card, message, description):  # type: ignore[no-untyped-def]
        orig = api.create_commit

        def create_commit(*a, **kw):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 3:
                online.state.fail_commits = 1
            return orig(*a, **kw)

        api.create_commit = create_commit
        return real(api, cfg, plan, local, had_card, message, description)

    monkeypatch.setattr(publish, "_commit", fail_second_batch)
    with pytest.raises(UserError, match="re-run the same command to resume"):
        run_publish(small, PublishConfig(repo_id=REPO))
    middle = online.state.files(HUB_REPO)
    assert "README.md" not in middle and INFO_NAME not in middle
    monkeypatch.setattr(publish, "_commit", real)
    run_publish(small, PublishConfig(repo_id=REPO))
    _check_repo_equals_release(online, small)
    states = list(online.state.repos[HUB_REPO]["history"].values())
    assert len(states) == online.state.commits + 1  # + the empty initial state
    for files in states:
        _check_card_declares_only_present_shards(files)


def test_tag_pins_a_version(rel: Path, built_small_rel: Path, online: FakeHub, tmp_path: Path) -> None:
    small = Path(shutil.copytree(built_small_rel, tmp_path / "small"))
    out = run_publish(rel, PublishConfig(repo_id=REPO, tag="v1.0"))
    assert str(out).splitlines()[-1] == "tagged: v1.0" and out.tag_created
    head = online.state.repos[HUB_REPO]["branches"]["main"]["sha"]
    assert online.state.tags(HUB_REPO) == {"v1.0": head}
    _check_repo_equals_release(online, rel, tag="v1.0")
    # the same release and tag again: nothing changes
    commits = online.state.commits
    out = run_publish(rel, PublishConfig(repo_id=REPO, tag="v1.0"))
    assert online.state.commits == commits and str(out).splitlines()[-1] == "tag already there: v1.0"
    assert not out.tag_created
    # a changed release cannot move the tag: refused before anything is sent
    before = dict(online.state.files(HUB_REPO))
    with pytest.raises(UserError, match="tag 'v1.0' already exists.*nothing was sent"):
        run_publish(small, PublishConfig(repo_id=REPO, tag="v1.0"))
    assert online.state.commits == commits and online.state.files(HUB_REPO) == before
    run_publish(small, PublishConfig(repo_id=REPO, tag="v1.1"))
    tags = online.state.tags(HUB_REPO)
    assert tags["v1.0"] == head and tags["v1.1"] == online.state.repos[HUB_REPO]["branches"]["main"]["sha"]
    assert online.state.repos[HUB_REPO]["history"][tags["v1.0"]][INFO_NAME] == (rel / INFO_NAME).read_bytes()
    _check_repo_equals_release(online, small, tag="v1.1")


def test_revision_creates_branch(rel: Path, online: FakeHub) -> None:
    out = run_publish(rel, PublishConfig(repo_id=REPO, revision="v1"))
    assert out.url.endswith("/tree/v1")
    _check_repo_equals_release(online, rel, branch="v1")
    assert online.state.files(HUB_REPO, "main") == {}


_READ_BACK = """
import json, sys
import datasets
out = {}
for rev in sys.argv[1:]:
    revision = None if rev == "main" else rev
    ds = datasets.load_dataset(REPO, revision=revision)
    stream = datasets.load_dataset(REPO, split="train", streaming=True, revision=revision)
    keys = sorted(ex["__key__"] for ex in stream)
    out[rev] = {"splits": {k: len(v) for k, v in ds.items()}, "stream_keys": keys,
                "keys": sorted(ds["train"]["__key__"]), "classes": ds["train"].features["cls"].names}
print(json.dumps(out))
"""


def _read_back(hub: FakeHub, tmp_path: Path, *revisions: str) -> dict:
    """``datasets.load_dataset(REPO)`` (and ``streaming=True``) in a fresh process pointed at the fake Hub."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0",
               HF_HOME=str(tmp_path / "hf_home"), HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"))
    env.pop("HF_TOKEN", None)  # a public repo reads without a token
    code = f"REPO = {REPO!r}\n" + _READ_BACK
    proc = subprocess.run([sys.executable, "-c", code, *revisions], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _release_keys(rel: Path) -> dict[str, list[str]]:
    from imagenet_plus.io.tar import iter_shard

    info = json.loads((rel / INFO_NAME).read_text())
    return {split: sorted(s["__key__"] for f in v["filenames"] for s in iter_shard(rel / f))
            for split, v in info["splits"].items()}


@pytest.mark.slow
def test_datasets_reads_back_and_reads_the_new_counts_after_a_republish(
        rel: Path, built_small_rel: Path, online: FakeHub, tmp_path: Path) -> None:
    small = Path(shutil.copytree(built_small_rel, tmp_path / "small"))
    run_publish(rel, PublishConfig(repo_id=REPO, tag="v1.0"))
    first = _read_back(online, tmp_path / "read1", "main")["main"]
    keys = _release_keys(rel)
    assert first["splits"] == {k: len(v) for k, v in keys.items()}
    assert first["keys"] == keys["train"] and first["stream_keys"] == keys["train"]
    assert first["classes"] == [c["id"] for c in json.loads((rel / INFO_NAME).read_text())["classes"]]
    run_publish(small, PublishConfig(repo_id=REPO, tag="v2.0"))
    after = _read_back(online, tmp_path / "read2", "main", "v1.0")
    new_keys = _release_keys(small)
    assert after["main"]["splits"] == {k: len(v) for k, v in new_keys.items()} != first["splits"]
    assert after["main"]["keys"] == new_keys["train"] and after["main"]["stream_keys"] == new_keys["train"]
    assert after["v1.0"]["splits"] == first["splits"], "the old version stays loadable by its tag"
    assert after["v1.0"]["stream_keys"] == keys["train"]


@pytest.mark.slow
def test_cli_publish_subprocess(rel: Path, online: FakeHub) -> None:
    proc = run_cli("publish", str(rel), "--repo-id", REPO, "--tag", "v1.0", env=_subprocess_env(online))
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    _check_repo_equals_release(online, rel, tag="v1.0")
    assert "v1.0" in online.state.tags(HUB_REPO)


def _truncate(rel: Path) -> str:
    shard = rel / "data/train-00001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])
    return "train-00001.tar"


def _delete(rel: Path) -> str:
    (rel / "data/validation-00000.tar").unlink()
    return "validation-00000.tar"


def _edit_info(rel: Path) -> str:
    info = json.loads((rel / INFO_NAME).read_text())
    info["splits"]["train"]["shard_lengths"][0] += 1
    info["splits"]["train"]["num_samples"] += 1
    (rel / INFO_NAME).write_text(json.dumps(info))
    return INFO_NAME


def _escaping_info(rel: Path) -> str:
    info = json.loads((rel / INFO_NAME).read_text())
    info["splits"]["train"]["filenames"][0] = "../../outside.tar"
    (rel / INFO_NAME).write_text(json.dumps(info))
    return "file name '../../outside.tar' is not a plain relative path"


def _absolute_info(rel: Path) -> str:
    info = json.loads((rel / INFO_NAME).read_text())
    info["splits"]["validation"]["filenames"][0] = "/etc/passwd"
    (rel / INFO_NAME).write_text(json.dumps(info))
    return "file name '/etc/passwd' is not a plain relative path"


def _bad_label(rel: Path) -> str:
    from imagenet_plus.io.tar import PartialTarWriter, iter_shard

    shard = rel / "data/train-00000.tar"
    samples = list(iter_shard(shard))
    samples[0]["cls"] = b"7"
    with PartialTarWriter(shard) as w:
        for s in samples:
            w.write(s)
    return "label 7"


def _missing_member(rel: Path) -> str:
    from imagenet_plus.io.tar import PartialTarWriter, iter_shard

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


@pytest.mark.parametrize("damage", [_truncate, _delete, _edit_info, _escaping_info, _absolute_info, _bad_label,
                                    _missing_member, _broken_card])
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


def test_unknown_model_licence_is_refused_at_publish_until_the_user_names_one(tmp_path: Path) -> None:
    """The fake run's model ("fake") is in no licence table: its card says ``license: other`` with no name, and
    publish refuses it before sending anything; ``release --license`` names the licence and publish accepts it."""
    import yaml

    unnamed = make_release(tmp_path / "a", per_class=4, quota=3, val_per_class=1, shard_size=4)
    with pytest.raises(UserError, match="licence is unknown.*--license") as err:
        run_publish(unnamed, PublishConfig(repo_id=REPO, dry_run=True))
    assert "\n" not in str(err.value)
    named = make_release(tmp_path / "b", per_class=4, quota=3, val_per_class=1, shard_size=4,
                         license="other:my-licence:https://example.invalid/LICENSE")
    header = yaml.safe_load((named / "README.md").read_text().split("---")[1])
    assert (header["license"], header["license_name"]) == ("other", "my-licence")
    assert str(run_publish(named, PublishConfig(repo_id=REPO, dry_run=True))).startswith("dry run")
    with pytest.raises(UserError, match="other:NAME:LINK"):
        make_release(tmp_path / "c", per_class=4, quota=3, val_per_class=1, shard_size=4, license="other:x")


def test_cli_lists_each_publish_option_once() -> None:
    import re

    result = CliRunner().invoke(app, ["publish", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    options = re.findall(r"(?m)^\s+(--[a-z-]+)", result.output)
    assert sorted(options) == sorted({*options}), options
    assert set(options) == {"--repo-id", "--private", "--revision", "--tag", "--dry-run", "--allow-permissive-license",
                            "--help"}


def test_cli_prints_the_result(rel: Path, online: FakeHub) -> None:
    """The command prints the result's lines: the URL first (what ``run`` records), then what was done."""
    result = CliRunner().invoke(app, ["publish", str(rel), "--repo-id", REPO, "--private"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"{online.endpoint}/datasets/{REPO}" and lines[1].startswith("committed: ")
    assert online.state.repos[HUB_REPO]["private"] is True
