"""Tests for imagenet_plus.data: the training loader on both backends, ranks, workers, transform, errors."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest
import torch
from release_fixtures import make_release

from imagenet_plus.data import make_loader
from imagenet_plus.errors import UserError

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def rel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes × 8 kept: 6 train + 2 validation per class; 18 train samples in 8 shards (of at most 3)."""
    return make_release(tmp_path_factory.mktemp("data"), per_class=8, quota=8, val_per_class=2, shard_size=3)


def _epoch(loader) -> tuple[list[str], Counter]:  # type: ignore[no-untyped-def]
    """Image digests (images are noise, so unique) and label counts of one epoch; checks batch types."""
    digests, labels = [], Counter()
    for images, y in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
        assert y.dtype == torch.int64 and len(y) == len(images)
        digests += [hashlib.sha1(im.numpy().tobytes()).hexdigest() for im in images]
        labels.update(y.tolist())
    return digests, labels


@pytest.mark.parametrize("backend", ["webdataset", "datasets"])
def test_one_epoch_reads_every_sample(rel: Path, backend: str) -> None:
    loader = make_loader(rel, split="train", batch_size=4, backend=backend, shuffle_buffer=8)
    digests, labels = _epoch(loader)
    assert len(digests) == 18 == loader.num_samples and len(set(digests)) == 18
    assert labels == Counter({0: 6, 1: 6, 2: 6})
    assert len(loader) == 5
    val, vlabels = _epoch(make_loader(rel, split="validation", batch_size=4, backend=backend, shuffle_buffer=0))
    assert len(val) == 6 and vlabels == Counter({0: 2, 1: 2, 2: 2}) and not set(val) & set(digests)


@pytest.mark.parametrize("backend", ["webdataset", "datasets"])
def test_ranks_partition_the_split(rel: Path, backend: str) -> None:
    parts = [_epoch(make_loader(rel, rank=r, world_size=2, batch_size=5, backend=backend))[0] for r in range(2)]
    assert len(parts[0]) + len(parts[1]) == 18
    assert not set(parts[0]) & set(parts[1])
    assert abs(len(parts[0]) - len(parts[1])) <= 3  # 8 shards of 2-3 samples: 4 whole shards each


def test_shuffle_and_epochs(rel: Path) -> None:
    plain = make_loader(rel, batch_size=18, shuffle_buffer=0)
    assert _epoch(plain)[0] == _epoch(plain)[0]  # no shuffle: the shard order
    shuffled = make_loader(rel, batch_size=18, shuffle_buffer=10, seed=1)
    first = _epoch(shuffled)[0]
    assert first == _epoch(shuffled)[0]  # same epoch, same order (reproducible)
    shuffled.set_epoch(1)
    second = _epoch(shuffled)[0]
    assert second != first and sorted(second) == sorted(first)
    assert first != _epoch(plain)[0]


def test_workers_and_transform(rel: Path) -> None:
    def to_small_float(image):  # type: ignore[no-untyped-def]
        import numpy as np

        return torch.from_numpy(np.asarray(image.resize((16, 16)), dtype=np.float32) / 255).permute(2, 0, 1)

    for backend in ("webdataset", "datasets"):
        loader = make_loader(rel, batch_size=4, num_workers=2, transform=to_small_float, backend=backend)
        n = 0
        for images, y in loader:
            assert images.dtype == torch.float32 and images.shape[1:] == (3, 16, 16)
            n += len(y)
        assert n == 18, backend


def test_bad_arguments(rel: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="split 'test' not in release"):
        make_loader(rel, split="test")
    with pytest.raises(UserError, match="rank 2 is not within world size 2"):
        make_loader(rel, rank=2, world_size=2)
    with pytest.raises(UserError, match="fewer than world size 16"):
        make_loader(rel, world_size=16)
    with pytest.raises(UserError, match="unknown backend"):
        make_loader(rel, backend="tfrecord")
    with pytest.raises(UserError, match="neither a folder nor a Hub repo id"):
        make_loader(tmp_path / "missing" / "deeper")
    with pytest.raises(UserError, match="_info.json not found"):
        make_loader(tmp_path)


def test_truncated_shard_is_named(rel: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(rel, tmp_path / "rel"))
    shard = copy / "data/train-00003.tar"
    shard.write_bytes(shard.read_bytes()[:700])
    with pytest.raises(UserError, match="corrupt or truncated shard"):
        _epoch(make_loader(copy, batch_size=4, shuffle_buffer=0))


def test_webdataset_backend_streams_from_the_hub(rel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Publish to the loopback fake Hub, then read it back by repo id (hf:// through HfFileSystem)."""
    from hub_server import FakeHub
    from huggingface_hub import constants

    from imagenet_plus.publish import PublishConfig, run_publish

    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", "hf_dataTestToken")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        run_publish(rel, PublishConfig(repo_id="someone/plus"))
        local, local_labels = _epoch(make_loader(rel, batch_size=4, shuffle_buffer=0))
        remote, remote_labels = _epoch(make_loader("someone/plus", batch_size=4, shuffle_buffer=0))
        assert remote == local and remote_labels == local_labels
        assert any("/resolve/main/data/train-" in p for _m, p, _a in hub.state.requests)
        with pytest.raises(UserError, match="split 'test' not in release someone/plus"):
            make_loader("someone/plus", split="test")
