"""Shard IO: crash-safe writing, round trip through webdataset, corrupt shards named."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import pytest

from imagenet_plus.contract import TAR_MTIME, clean_partials, done_shards, make_key
from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import write_json_atomic
from imagenet_plus.io.tar import PartialTarWriter, TarStreamWriter, iter_shard, scan_tar


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


def _random_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(n))


def test_writer_is_byte_identical_to_webdatasets_tarwriter(tmp_path: Path) -> None:
    """Our tar bytes equal webdataset's TarWriter (i.e. tarfile) on the same samples: short ASCII names, sizes
    around the 512-byte blocks, a long name and a non-ASCII name (tarfile's pax path)."""
    import webdataset as wds

    rng = random.Random(0)
    samples = [{"__key__": make_key("n01440764", i), "jpg": _random_bytes(rng, size), "cls": str(i).encode(),
                "json": b"{}", "__url__": "ignored"} for i, size in enumerate((0, 1, 511, 512, 513, 5000))]
    samples.append({"__key__": "long/" + "x" * 120, "txt": b"long name"})
    samples.append({"__key__": "café_000001", "txt": "é".encode()})
    ours, theirs = io.BytesIO(), io.BytesIO()
    writer = TarStreamWriter(ours)
    for sample in samples:
        writer.write(sample)
    writer.close()
    with wds.TarWriter(theirs, encoder=False, mtime=TAR_MTIME) as w:
        for sample in samples:
            w.write(dict(sample))
    assert ours.getvalue() == theirs.getvalue()
    assert writer.offset == len(ours.getvalue())
    with tarfile.open(fileobj=io.BytesIO(ours.getvalue())) as tar:
        got = {m.name: (tar.extractfile(m).read(), m.mode, m.uname, m.mtime) for m in tar.getmembers()}
    assert got["n01440764_000003.jpg"][0] == samples[3]["jpg"]
    assert got["café_000001.txt"] == ("é".encode(), 0o444, "bigdata", TAR_MTIME)
    # no pax header per member: a short ASCII sample takes its blocks and nothing more
    one = io.BytesIO()
    TarStreamWriter(one).write({"__key__": "k", "cls": b"1"})
    assert len(one.getvalue()) == 1024


def test_writer_refuses_bad_samples() -> None:
    w = TarStreamWriter(io.BytesIO())
    with pytest.raises(ValueError, match="__key__"):
        w.write({"jpg": b"x"})
    with pytest.raises(ValueError, match="member 'cls' is str"):
        w.write({"__key__": "k", "cls": "3"})


def _dir_info() -> tarfile.TarInfo:
    info = tarfile.TarInfo("somedir")
    info.type = tarfile.DIRTYPE
    return info


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_scan_tar_matches_tarfile(tmp_path: Path, fmt: int) -> None:
    """scan_tar gives tarfile's names, data and data offsets, for ustar, pax (long names, float mtimes) and GNU
    tars with a directory and webdataset's ``__meta__`` names; skipped members come without data."""
    rng = random.Random(1)
    members = [("a_000001.jpg", 0), ("a_000001.cls", 1), ("b/" + "x" * 150 + ".json", 511), ("c.txt", 512),
               ("__meta__", 3), ("d_1.bin", 1025), ("é_2.json", 7)]
    if fmt == tarfile.USTAR_FORMAT:
        members = [(n, k) for n, k in members if len(n) < 100 and n.isascii()]
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, size in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = size, 1_700_000_000.5
            tar.addfile(info, io.BytesIO(_random_bytes(rng, size)))
        tar.addfile(_dir_info())
    with tarfile.open(path) as tar:
        expected = [(m.name, m.offset_data, m.size, tar.extractfile(m).read()) for m in tar.getmembers()
                    if m.isreg() and not m.name.startswith("__")]
        inside = tar.getmember("d_1.bin").offset_data + 100
    with open(path, "rb") as f:
        assert [tuple(m) for m in scan_tar(f, str(path))] == expected
    with open(path, "rb") as f:
        skipped = list(scan_tar(f, str(path), wanted=lambda name: name.endswith(".bin")))
    assert [(m.name, m.offset, m.size) for m in skipped] == [e[:3] for e in expected]
    assert [m.data is None for m in skipped] == [not e[0].endswith(".bin") for e in expected]
    with pytest.raises(UserError, match="corrupt or truncated shard cut.tar"):
        list(scan_tar(io.BytesIO(path.read_bytes()[:inside]), "cut.tar"))
