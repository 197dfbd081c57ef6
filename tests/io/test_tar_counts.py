"""Sample counts of a shard: every reader compares what it read with the stats' count, and generate's done rule
counts the samples from the tar headers alone (a shard zero-filled from a sample boundary on reads as a shorter,
valid archive: only the count shows what was lost)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from shard_faults import sample_offsets, zero_fill_from

from imagenet_plus.contract import ShardStats, make_key, member_key, shard_problem, stats_path
from imagenet_plus.errors import CorruptShard
from imagenet_plus.io.tar import PartialTarWriter, count_samples, iter_shard, scan_tar


def _sample(i: int, size: int = 700) -> dict:
    return {"__key__": make_key("n01440764", i), "jpg": bytes([i % 251 + 1]) * (size + 37 * i), "cls": b"0",
            "json": b'{"label": 0}'}


def _shard(folder: Path, n: int, name: str = "00000") -> Path:
    tar = folder / f"{name}.tar"
    with PartialTarWriter(tar) as w:
        for i in range(n):
            w.write(_sample(i))
    keys = [make_key("n01440764", i) for i in range(n)]
    ShardStats(shard=name, count=n, first_key=keys[0], last_key=keys[-1], failures=0, failed_keys=[],
               regenerated={"nsfw": 0, "black": 0}, seconds=0.0, images_per_second=None, rank=0,
               model="test").write(stats_path(tar))
    return tar


def _webdataset_count(tar: Path) -> int:
    """Samples as webdataset's own reader groups them (the reference for every count here)."""
    return sum(1 for _ in wds.WebDataset(str(tar), shardshuffle=False))


def test_header_count_equals_webdatasets_count_and_reads_no_data(tmp_path: Path) -> None:
    tar = _shard(tmp_path, 9)
    assert count_samples(tar, member_key) == _webdataset_count(tar) == 9
    assert shard_problem(tar) is None


def test_zero_filled_shard_is_a_shorter_valid_tar_that_every_reader_names(tmp_path: Path) -> None:
    tar = _shard(tmp_path, 8)
    good = tar.read_bytes()
    zero_fill_from(tar, sample_offsets(tar)[5])
    assert tar.stat().st_size == len(good)
    # what made this a silent loss: tarfile and webdataset read 5 valid samples and no error
    assert _webdataset_count(tar) == 5
    assert count_samples(tar, member_key) == 5
    assert shard_problem(tar) == f"corrupt or truncated shard {tar}: holds 5 samples, its stats say 8"
    with pytest.raises(CorruptShard, match=r"00000.tar: holds 5 samples, its stats say 8"):
        list(iter_shard(tar, expected=8))
    assert len(list(iter_shard(tar))) == 5  # without an expected count the archive is valid
    # a shard cut short inside a member fails the header walk, naming the shard
    tar.write_bytes(good)
    tar.write_bytes(good[: sample_offsets(tar)[3] + 700])
    assert shard_problem(tar) == f"corrupt or truncated shard {tar}: it ends without the end-of-archive blocks"
    with pytest.raises(CorruptShard, match=r"00000.tar: a member is cut short"):
        list(iter_shard(tar, expected=8))


def test_missing_or_unreadable_stats_make_a_shard_not_done(tmp_path: Path) -> None:
    tar = _shard(tmp_path, 3)
    stats = stats_path(tar)
    stats.write_text('{"count": 3')
    assert "00000.json" in shard_problem(tar)
    stats.unlink()
    assert shard_problem(tar) == "not finished"


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_foreign_headers_are_counted_like_webdataset(tmp_path: Path, fmt: int) -> None:
    """Long names (GNU ``L`` records, pax ``path`` records) and directories: the header walk falls back to
    the general scanner and still counts what webdataset yields."""
    tar = tmp_path / "foreign.tar"
    with tarfile.open(tar, "w", format=fmt) as tf:
        d = tarfile.TarInfo("sub")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for i in range(4):
            key = f"sub/{'x' * 120}_{i}" if i % 2 else f"sub/s{i}"
            for ext, data in (("jpg", bytes(300 + i)), ("cls", b"1")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    assert count_samples(tar, member_key) == _webdataset_count(tar) == 4
    with open(tar, "rb") as f:
        assert len([m for m in scan_tar(f, str(tar)) if m.name.endswith(".jpg")]) == 4


def test_bad_header_is_named(tmp_path: Path) -> None:
    tar = _shard(tmp_path, 3)
    data = bytearray(tar.read_bytes())
    data[sample_offsets(tar)[1] + 10] ^= 0xFF  # a flipped byte in a name: the checksum no longer matches
    tar.write_bytes(bytes(data))
    with pytest.raises(CorruptShard, match=r"00000.tar: bad header checksum"):
        count_samples(tar, member_key)
    with pytest.raises(CorruptShard, match=r"00000.tar: bad header checksum"):
        list(iter_shard(tar))
