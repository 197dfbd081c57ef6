"""Shard IO: crash-safe writing, round trip through webdataset, corrupt shards named."""

from __future__ import annotations

import pytest

from imagenet_plus.contract import clean_partials, done_shards, make_key
from imagenet_plus.errors import UserError
from imagenet_plus.shards import PartialTarWriter, iter_shard, write_json_atomic


def sample(i: int) -> dict:
    return {"__key__": make_key("n01440764", i), "jpg": bytes([i]) * 100, "cls": b"0", "json": b"{}"}


def test_round_trip_and_commit(tmp_path):
    path = tmp_path / "00000.tar"
    with PartialTarWriter(path) as w:
        for i in range(3):
            w.write(sample(i))
        assert (tmp_path / "00000.tar.partial").exists() and not path.exists()
    assert path.exists() and not (tmp_path / "00000.tar.partial").exists()
    got = list(iter_shard(path))
    assert [s["__key__"] for s in got] == ["n01440764_000000", "n01440764_000001", "n01440764_000002"]
    assert got[1]["jpg"] == bytes([1]) * 100 and got[1]["cls"] == b"0"
    # a fixed mtime: the same samples give the same bytes
    with PartialTarWriter(tmp_path / "again.tar") as w:
        for i in range(3):
            w.write(sample(i))
    assert (tmp_path / "again.tar").read_bytes() == path.read_bytes()


def test_exception_leaves_no_final_file(tmp_path):
    path = tmp_path / "00000.tar"
    with pytest.raises(RuntimeError):
        with PartialTarWriter(path) as w:
            w.write(sample(0))
            raise RuntimeError("boom")
    assert not path.exists() and not (tmp_path / "00000.tar.partial").exists()


def test_truncated_and_garbage_shards_are_named(tmp_path):
    path = tmp_path / "00000.tar"
    with PartialTarWriter(path) as w:
        for i in range(3):
            w.write(sample(i))
    bad = tmp_path / "00001.tar"
    bad.write_bytes(path.read_bytes()[:700])
    with pytest.raises(UserError, match=r"corrupt or truncated shard .*00001.tar"):
        list(iter_shard(bad))
    bad.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UserError, match="00001.tar"):
        list(iter_shard(bad))
    with pytest.raises(UserError, match="shard not found"):
        list(iter_shard(tmp_path / "nope.tar"))


def test_clean_partials_and_done(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"x")
    write_json_atomic(tmp_path / "00000.json", {"count": 1})
    (tmp_path / "00001.tar").write_bytes(b"x")  # no stats: not done
    (tmp_path / "00002.tar.partial").write_bytes(b"x")
    assert [p.name for p in done_shards(tmp_path)] == ["00000.tar"]
    removed = clean_partials(tmp_path)
    assert sorted(p.name for p in removed) == ["00001.tar", "00002.tar.partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.json", "00000.tar"]


def test_keys_have_no_dots():
    assert make_key("n01440764", 42) == "n01440764_000042"
    with pytest.raises(UserError, match="invalid sample key"):
        make_key("lemon.v2", 0)
