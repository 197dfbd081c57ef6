"""Issue 19 (storage): runs and releases on object storage, against a real S3 API on loopback (moto's server mode,
reached through s3fs with an endpoint URL, as a user reaches MinIO or AWS).

- ``imagenet-plus run --config configs/demo.yaml --out s3://bucket/demo`` end to end (release to
  ``s3://bucket/demo-rel``), read back through the project's loader and ``datasets.load_dataset("webdataset",
  data_files=…, storage_options=…)``: the same keys and labels as the same run on local disk (read with webdataset);
- ``generate`` SIGKILLed while writing to the bucket, then re-run: exactly the planned keys, byte for byte the
  uninterrupted local run's, no partial object;
- bad input: an unknown URL scheme, a missing bucket, refused credentials, s3:// without s3fs, bad
  ``--storage-options``: one line, nothing written;
- remote writes appear whole or not at all; a remote run takes no lock (DEBUG log).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safety_helpers import (
    class_file,
    fake_cli,
    fake_cli_popen,
    generate_args,
    main_in_process,
    one_line_error,
    tar_digests,
    wait_for,
)

from imagenet_plus.io.atomic import atomic_file, write_json_atomic
from imagenet_plus.io.lock import folder_lock
from imagenet_plus.io.storage import is_remote, location
from imagenet_plus.io.tar import PartialTarWriter

REPO = Path(__file__).resolve().parents[2]


def _download(s3, prefix: str, dest: Path) -> Path:
    """Copy every object below ``bucket/prefix`` to ``dest`` with boto3 (an independent client)."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    for key in s3.keys("bucket", prefix + "/"):
        target = dest / key[len(prefix) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file("bucket", key, str(target))
    return dest


# ------------------------------------------------------------------------------------------------------------
# locations


def test_local_paths_stay_pathlib_paths(tmp_path: Path) -> None:
    assert location("runs/demo") == Path("runs/demo") and type(location("runs/demo")) is type(Path("x"))
    assert location(f"file://{tmp_path}") == tmp_path
    assert not is_remote(location(tmp_path)) and is_remote(location("memory://bucket/run"))


def test_remote_writes_appear_whole_or_not_at_all(s3) -> None:
    target = location("s3://bucket/atomic/a.json")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half")
        raise RuntimeError("killed while writing")
    assert s3.keys("bucket", "atomic/") == []
    with pytest.raises(RuntimeError), PartialTarWriter(location("s3://bucket/atomic/00000.tar")) as w:
        w.write({"__key__": "a_000000", "cls": b"0"})
        raise RuntimeError("killed while writing")
    assert s3.keys("bucket", "atomic/") == []
    write_json_atomic(target, {"a": 1})
    assert s3.keys("bucket", "atomic/") == ["atomic/a.json"] and target.read_text().split() == ["{", '"a":', "1", "}"]


def test_a_remote_run_takes_no_lock_and_says_so(s3, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="imagenet_plus.io.lock"), folder_lock(location("s3://bucket/lk")):
        pass
    assert any("no locks" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    assert s3.keys("bucket", "lk/") == []


def test_a_remote_start_killed_before_run_yaml_is_resumed_and_foreign_files_refused(s3) -> None:
    from imagenet_plus.contract.ownership import check_run_folder
    from imagenet_plus.errors import ForeignFiles

    location("s3://bucket/started/classes.json").write_text("[]")
    check_run_folder("s3://bucket/started")  # what a start killed before run.yaml leaves (no lock file there)
    location("s3://bucket/theirs/notes.txt").write_text("mine")
    with pytest.raises(ForeignFiles, match="notes.txt"):
        check_run_folder("s3://bucket/theirs")
    assert s3.keys("bucket", "theirs/") == ["theirs/notes.txt"]


# ------------------------------------------------------------------------------------------------------------
# bad input: one line, nothing written


def test_an_unknown_url_scheme_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                           tmp_path: Path) -> None:
    code, err = main_in_process(monkeypatch, capsys, *generate_args("nosuch://bucket/run", class_file(tmp_path)))
    one_line_error(code, err, "nosuch://", "unknown URL scheme")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.csv"]


@pytest.mark.parametrize("url", ["s3://", "s3:///run"])
def test_a_url_without_a_bucket_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                            tmp_path: Path, url: str) -> None:
    code, err = main_in_process(monkeypatch, capsys, *generate_args(url, class_file(tmp_path)))
    one_line_error(code, err, url, "names no bucket")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.csv"]


def test_s3_without_s3fs_names_the_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                         tmp_path: Path) -> None:
    import importlib

    registry = importlib.import_module("fsspec.registry")  # ``fsspec.registry`` the attribute is the mapping
    monkeypatch.delitem(registry._registry, "s3", raising=False)  # noqa: SLF001 (forget the imported backend)
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    code, err = main_in_process(monkeypatch, capsys, "select", "s3://bucket/run")
    one_line_error(code, err, "s3://bucket/run", "pip install 'imagenet-plus[s3]'")


def test_bad_storage_options_are_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("IMAGENET_PLUS_STORAGE_OPTIONS", raising=False)
    code, err = main_in_process(monkeypatch, capsys, "--storage-options", "{endpoint", "select", "s3://bucket/run")
    one_line_error(code, err, "--storage-options", "not JSON")
    code, err = main_in_process(monkeypatch, capsys, "--storage-options", "[1]", "select", "s3://bucket/run")
    one_line_error(code, err, "--storage-options", "JSON object")


def test_a_missing_bucket_is_one_line(s3, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                      tmp_path: Path) -> None:
    code, err = main_in_process(monkeypatch, capsys, *generate_args("s3://nobucket/run", class_file(tmp_path)))
    one_line_error(code, err, "s3://nobucket/run", "bucket does not exist")
    code, err = main_in_process(monkeypatch, capsys, "select", "s3://nobucket/run")
    one_line_error(code, err, "s3://nobucket/run", "bucket does not exist")
    assert "nobucket" not in _buckets(s3)


def test_refused_credentials_are_one_line(s3, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                          tmp_path: Path) -> None:
    from s3_server import strict_auth

    before = s3.keys("bucket")
    with strict_auth():
        code, err = main_in_process(monkeypatch, capsys, *generate_args("s3://bucket/denied", class_file(tmp_path)))
    one_line_error(code, err, "s3://bucket/denied", "access refused", "credentials")
    assert s3.keys("bucket") == before


def _buckets(s3) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    return [b["Name"] for b in client.list_buckets()["Buckets"]]


# ------------------------------------------------------------------------------------------------------------
# generate SIGKILLed while writing to the bucket


@pytest.mark.slow
def test_generate_killed_writing_to_a_bucket_then_rerun_gives_the_planned_keys(s3, tmp_path: Path) -> None:
    classes = class_file(tmp_path)
    reference = tmp_path / "reference"
    proc = fake_cli(*generate_args(reference, classes))
    assert proc.returncode == 0, proc.stderr
    url = "s3://bucket/killed"
    args = generate_args(url, classes)
    proc = fake_cli_popen(*args, seconds=0.3)
    wait_for(lambda: sum(k.endswith(".json") for k in s3.keys("bucket", "killed/generated/")) >= 2, proc, 120)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    left = s3.keys("bucket", "killed/generated/")
    assert 2 <= sum(k.endswith(".json") for k in left) < 6, "killed midway"
    assert not [k for k in left if k.endswith(".partial")], left
    rerun = fake_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    keys = s3.keys("bucket", "killed/generated/")
    assert not [k for k in keys if k.endswith(".partial")], keys
    local = _download(s3, "killed", tmp_path / "downloaded")
    assert tar_digests(local / "generated") == tar_digests(reference / "generated")
    members = {m.split(".")[0] for ms in tar_digests(local / "generated").values() for m in ms}
    assert len(members) == 12


# ------------------------------------------------------------------------------------------------------------
# imagenet-plus run against the bucket, read back by the loader and by datasets


def _run_demo(out: str, release: str, tmp_path: Path, env: dict[str, str]) -> None:
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config["release"]["out"] = release
    path = tmp_path / f"demo-{abs(hash(out))}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "imagenet_plus", "run", "--config", str(path), "--out", out],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _wds_keys_labels(folder: Path, split: str) -> list[tuple[str, int]]:
    """(key, label) of every sample of a local release split, read with webdataset (an independent reader)."""
    import webdataset as wds

    urls = sorted(str(p) for p in (folder / "data").glob(f"{split}-*.tar"))
    return [(s["__key__"], int(s["cls"])) for s in wds.WebDataset(urls, shardshuffle=False)]


@pytest.mark.slow
def test_run_on_a_bucket_equals_the_local_run(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMAGENET_PLUS_SCRATCH": str(tmp_path / "scratch")}
    _run_demo(str(tmp_path / "local"), str(tmp_path / "local-rel"), tmp_path, env)
    _run_demo("s3://bucket/demo", "s3://bucket/demo-rel", tmp_path, env)
    keys = s3.keys("bucket", "demo-rel/")
    assert {"demo-rel/README.md", "demo-rel/_info.json"} <= set(keys) and "demo/report/index.html" in s3.keys("bucket")
    assert not [k for k in s3.keys("bucket") if k.endswith(".partial")]
    local = {split: _wds_keys_labels(tmp_path / "local-rel", split) for split in ("train", "validation")}
    assert len(local["train"]) == 15 and len(local["validation"]) == 3

    # the project's loader, straight from the bucket
    from imagenet_plus.data import make_loader, read_release_info, shard_urls

    for split in ("train", "validation"):
        loader = make_loader("s3://bucket/demo-rel", split=split, batch_size=4, shuffle_buffer=0,
                             num_workers=2)  # worker processes open the shards themselves
        labels = sorted(int(x) for _, batch in loader for x in batch)
        assert labels == sorted(label for _, label in local[split])

    # datasets' webdataset builder over the shard URLs, with storage options
    import datasets

    # datasets refuses any URL in offline mode (set for the suite); the server is on loopback (conftest's guard)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    info = read_release_info("s3://bucket/demo-rel")
    for split in ("train", "validation"):
        files = shard_urls("s3://bucket/demo-rel", split, info)
        assert all(f.startswith("s3://bucket/demo-rel/data/") for f in files)
        ds = datasets.load_dataset("webdataset", data_files={split: files}, split=split,
                                   storage_options=s3.storage_options, cache_dir=str(tmp_path / "hf"))
        got = sorted((row["__key__"], int(row["cls"])) for row in ds)
        assert got == sorted(local[split])
        loader = make_loader("s3://bucket/demo-rel", split=split, batch_size=4, shuffle_buffer=0, backend="datasets")
        assert sorted(int(x) for _, batch in loader for x in batch) == sorted(label for _, label in local[split])
    # and the release's bytes equal the local release's
    remote = _download(s3, "demo-rel", tmp_path / "rel-downloaded")
    assert tar_digests(remote / "data") == tar_digests(tmp_path / "local-rel" / "data")

    # publish validates a release at a URL and plans every file of it (dry run: the Hub is offline here)
    from imagenet_plus.publish import PublishConfig, run_publish

    result = run_publish("s3://bucket/demo-rel", PublishConfig(repo_id="user/demo", dry_run=True))
    assert sorted(result.plan.add) == sorted(k[len("demo-rel/"):] for k in keys)


# ------------------------------------------------------------------------------------------------------------
# --real at a URL


def test_real_images_at_a_url_index_like_the_local_folder(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import s3fs
    from PIL import Image

    from imagenet_plus.generate.real import fingerprint, load_real_image, open_real

    root = tmp_path / "real"
    for cls, colours in {"a": ["red", "green"], "b": ["blue"]}.items():
        (root / cls).mkdir(parents=True)
        for i, colour in enumerate(colours):
            Image.new("RGB", (6, 4), colour).save(root / cls / f"{i}.png")
    s3fs.S3FileSystem(endpoint_url=s3.endpoint).put(f"{root}/", "bucket/real/", recursive=True)
    monkeypatch.setenv("IMAGENET_PLUS_SCRATCH", str(tmp_path / "scratch"))
    local, remote = open_real(root, ["a", "b"]), open_real("s3://bucket/real", ["a", "b"])
    assert [list(map(bytes, remote.names(c))) for c in "ab"] == [list(map(bytes, local.names(c))) for c in "ab"]
    assert load_real_image(remote.pair("a", 1)).getpixel((0, 0)) == (0, 128, 0)
    first = fingerprint(remote)
    shutil.rmtree(tmp_path / "scratch")  # the copy made again keeps each object's mtime: the same fingerprint
    assert fingerprint(open_real("s3://bucket/real", ["a", "b"])) == first


# ------------------------------------------------------------------------------------------------------------
# other inputs at a URL (--reference, evaluate's --test and --train)


def test_inputs_at_a_url_are_read_from_local_copies(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import s3fs
    from PIL import Image

    from imagenet_plus.errors import UserError
    from imagenet_plus.io.storage import local_input

    folder = tmp_path / "ref"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        Image.new("RGB", (5, 5), "red" if cls == "a" else "blue").save(folder / cls / "0.png")
    np.savez(tmp_path / "stats.npz", mu=np.arange(3.0), sigma=np.eye(3))
    fs = s3fs.S3FileSystem(endpoint_url=s3.endpoint)
    fs.put(f"{folder}/", "bucket/ref/", recursive=True)
    fs.put_file(str(tmp_path / "stats.npz"), "bucket/stats.npz")
    monkeypatch.setenv("IMAGENET_PLUS_SCRATCH", str(tmp_path / "scratch"))

    assert local_input(str(folder)) == str(folder)  # a local path is passed on as given
    copy = Path(local_input("s3://bucket/ref"))
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == ["a/0.png", "b/0.png"]
    assert all((copy / n).read_bytes() == (folder / n).read_bytes() for n in ("a/0.png", "b/0.png"))
    stats = np.load(local_input("s3://bucket/stats.npz"))
    assert np.array_equal(stats["sigma"], np.eye(3))
    with pytest.raises(UserError, match=r"s3://bucket/nothing-here not found"):
        local_input("s3://bucket/nothing-here")

    from imagenet_plus.score.config import ScoreConfig
    from imagenet_plus.score.stage import _reference_id

    # the reference's identity in score's freshness rule is the URL, the same on every node (not the copy's path)
    assert _reference_id(ScoreConfig(reference="s3://bucket/ref")) == "s3://bucket/ref"
