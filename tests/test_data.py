"""Tests for imagenet_plus.data: the training loader on both backends, ranks, workers, transform, errors."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest
import torch
from release_fixtures import make_release

from imagenet_plus.contract import INFO_NAME
from imagenet_plus.data import make_loader
from imagenet_plus.errors import UserError

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def rel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes × 8 kept: 6 train + 2 validation per class; 18 train samples in 8 shards (of at most 3)."""
    return make_release(tmp_path_factory.mktemp("data"), per_class=8, quota=8, val_per_class=2, shard_size=3,
                        license="apache-2.0")


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
def test_ranks_get_equal_samples_from_their_own_shards(rel: Path, backend: str) -> None:
    loaders = [make_loader(rel, rank=r, world_size=2, batch_size=5, backend=backend) for r in range(2)]
    parts = [_epoch(loader)[0] for loader in loaders]
    assert [len(p) for p in parts] == [9, 9] and [loader.num_samples for loader in loaders] == [9, 9]
    assert len(set(parts[0]) | set(parts[1])) >= 16  # 18 samples; a rank may repeat or skip a few
    if backend == "webdataset":
        assert not set(parts[0]) & set(parts[1])  # whole shards per rank


def _batch_counts(rel: Path, world_size: int, batch_size: int, workers: int, backend: str = "webdataset",
                  epoch: int = 0) -> list[tuple[int, int, list[int]]]:
    """Per rank: (len(loader), batches yielded, batch sizes)."""
    out = []
    for r in range(world_size):
        loader = make_loader(rel, rank=r, world_size=world_size, batch_size=batch_size, num_workers=workers,
                             backend=backend, shuffle_buffer=4)
        loader.set_epoch(epoch)
        sizes = [len(y) for _x, y in loader]
        out.append((len(loader), len(sizes), sizes))
    return out


def test_ranks_with_unequal_shard_counts_get_equal_batch_counts(rel: Path) -> None:
    """8 train shards (3+3+2+2+2+2+2+2 samples) over 3 ranks: 3, 3 and 2 shards, 4 to 8 samples per rank."""
    import json

    info = json.loads((rel / INFO_NAME).read_text())["splits"]["train"]
    assert len(info["filenames"]) == 8 and info["num_samples"] == 18
    for workers in (0, 2):
        for epoch in (0, 1):
            counts = _batch_counts(rel, 3, 4, workers, epoch=epoch)
            # ceil(ceil(18 / 3) / 4) = 2 batches of 4 and 2 on every rank
            assert [c[:2] for c in counts] == [(2, 2)] * 3, (workers, epoch, counts)
            assert [sorted(c[2]) for c in counts] == [[2, 4]] * 3
    counts = _batch_counts(rel, 3, 4, 0, backend="datasets")
    assert [c[:2] for c in counts] == [(2, 2)] * 3


def test_worker_quotas_give_whole_batches() -> None:
    from imagenet_plus.data import worker_quotas

    for samples in range(1, 60):
        for batch in (1, 4, 7):
            for workers in (1, 2, 3, 5):
                q = worker_quotas(samples, batch, workers)
                assert sum(q) == samples and min(q) >= 0
                assert sum(-(-n // batch) for n in q) == -(-samples // batch)


def test_decode_straight_to_training_size(rel: Path) -> None:
    loader = make_loader(rel, batch_size=6, image_size=16, shuffle_buffer=0)
    images = [x for x, _y in loader]
    assert all(x.dtype == torch.uint8 and x.shape[1:] == (3, 16, 16) for x in images)
    assert sum(len(x) for x in images) == 18
    # the default path decodes with torchvision; the pixels equal PIL's decode of the same bytes
    import io

    import numpy as np
    import webdataset as wds
    from PIL import Image

    first = json_first = None
    for sample in wds.WebDataset(str(rel / "data/train-00000.tar"), shardshuffle=False):
        first, json_first = sample["jpg"], sample
        break
    from imagenet_plus.data import _Decode

    ours = _Decode(None)(json_first)[0]
    pil = torch.from_numpy(np.asarray(Image.open(io.BytesIO(first)).convert("RGB")).copy()).permute(2, 0, 1)
    assert ours.shape == pil.shape and (ours.int() - pil.int()).abs().max() <= 2


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

    from imagenet_plus.publish.stage import PublishConfig, run_publish

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


@pytest.mark.parametrize("bad", ["../x.tar", "/etc/passwd", "data\\train-00000.tar", "data/train-00000.tar\0.txt"])
def test_unsafe_file_names_in_info_are_one_line_errors_for_every_reader(rel: Path, tmp_path: Path, bad: str) -> None:
    """``_info.json`` naming a file outside the release: the loader, evaluate and publish refuse it alike."""
    import json
    import shutil

    from typer.testing import CliRunner

    from imagenet_plus.cli import app
    from imagenet_plus.publish import PublishConfig, run_publish

    copy = Path(shutil.copytree(rel, tmp_path / "rel"))
    info = json.loads((copy / INFO_NAME).read_text())
    info["splits"]["train"]["filenames"][0] = bad
    (copy / INFO_NAME).write_text(json.dumps(info))
    needle = f"file name {bad!r} is not a plain relative path"
    messages = []
    with pytest.raises(UserError) as err:
        make_loader(copy)
    messages.append(err.value.message)
    with pytest.raises(UserError) as err:
        run_publish(copy, PublishConfig(repo_id="someone/plus", dry_run=True))
    messages.append(err.value.message)
    result = CliRunner().invoke(app, ["evaluate", "--train", str(copy), "--test", str(tmp_path / "real"),
                                      "--out", str(tmp_path / "eval")])
    assert isinstance(result.exception, UserError), repr(result.exception)
    messages.append(result.exception.message)
    for message in messages:
        assert needle in message and str(copy / INFO_NAME) in message and "\n" not in message, message
    assert not (tmp_path / "eval").exists()
