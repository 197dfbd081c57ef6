"""Training data loader over a release (a local ``REL`` folder, an fsspec URL ``s3://bucket/rel``, or a Hub dataset
repo ``USER/NAME``).

Input: a release (``REL/_info.json`` + ``REL/data/{split}-NNNNN.tar``, locally or on the Hub). Output: an
iterable of ``(images, labels)`` batches (``images``: the transform's output stacked, by default uint8
``N×3×H×W``; ``labels``: int64 ``N``) for training loops, on one of two backends:

- ``webdataset`` (default, fastest): this rank's shards (``shards[rank::world_size]``, after a shuffle of
  the shard list that is the same on every rank), split again over DataLoader workers, samples shuffled in
  a buffer, decoded, batched inside the workers. Hub shards are streamed through
  ``huggingface_hub.HfFileSystem`` (token from HF_TOKEN / the login, never on a command line); shards at a URL
  through fsspec (:func:`imagenet_plus.io.storage.open_binary`, with the storage options of the process).
- ``datasets``: ``load_dataset(source, streaming=True)`` (the card's YAML drives the packaged webdataset
  builder) + ``split_dataset_by_node`` + ``shuffle(buffer_size=…)``; the same batches.

**Ranks stay in step.** Every rank yields exactly ``ceil(N / world_size)`` samples per epoch (``N`` the split's
``num_samples``), in ``len(loader) = ceil(ceil(N / world_size) / batch_size)`` batches, the last one of the same
size on every rank, so DDP never waits at the end of an epoch for a rank that ran out. Ranks get whole shards
(``shards[rank::world_size]`` of the epoch's shard order); a rank whose shards hold fewer samples reads its own
shards again for the missing ones (a few repeated samples), one whose shards hold more stops early (the rest
comes in other epochs, as the shard order changes every epoch). The same quota is split over DataLoader
workers in whole batches (:func:`worker_quotas`). Call ``set_epoch(e)`` before each epoch to reshuffle shards
and buffers differently.

**Decoding.** JPEGs are decoded by ``torchvision.io.decode_jpeg`` straight into ``uint8`` ``3×H×W`` tensors, or,
with ``image_size``, by PIL in JPEG draft mode at the smallest DCT scale that still covers the training size
(a quarter or a sixteenth of the pixels for 2× or 4× smaller targets) and resized; batches are stacked in one
copy.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from imagenet_plus.contract import IMAGE_EXTENSIONS, INFO_NAME, ReleaseInfo, read_json
from imagenet_plus.contract.release import read_release_info as read_local_release_info
from imagenet_plus.errors import UserError
from imagenet_plus.io.storage import is_url, location, open_binary, storage_options
from imagenet_plus.io.tar import iter_samples

BACKENDS = ("webdataset", "datasets")
_REPO_ID = re.compile(r"^[\w\-.]+/[\w\-.]+$")


def pil_to_uint8_tensor(image: Any) -> Any:
    """The default transform: a PIL image → uint8 tensor ``3×H×W`` (RGB), no resizing."""
    import numpy as np
    import torch

    if image.mode != "RGB":
        image = image.convert("RGB")
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def _endpoint() -> str | None:
    """``$HF_ENDPOINT`` read now (huggingface_hub reads it only at import time)."""
    return os.environ.get("HF_ENDPOINT") or None


def _is_local(source: str | Path) -> bool:
    """A release folder on disk or at an fsspec URL (``s3://…``), as opposed to a Hub repo id."""
    return is_url(source) or Path(source).exists()


def read_release_info(source: str | Path, revision: str | None = None) -> ReleaseInfo:
    """``_info.json`` of a local release folder or a Hub dataset repo, checked as
    :class:`~imagenet_plus.contract.ReleaseInfo` (every reader of a release goes through it).

    Raises:
        UserError: the folder has no ``_info.json``, ``source`` is neither a folder nor a repo id, or the file does
            not pass the contract's checks (a file name that is not a plain relative path, counts that disagree).
    """
    if _is_local(source):
        return read_local_release_info(source)
    if not _REPO_ID.match(str(source)):
        raise UserError(f"release not found: {source} is neither a folder nor a Hub repo id USER/NAME")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(str(source), INFO_NAME, repo_type="dataset", revision=revision, endpoint=_endpoint())
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise UserError(f"cannot read _info.json of Hub dataset {source}: {str(exc).splitlines()[0]}") from None
    return ReleaseInfo.from_dict(read_json(Path(path), f"{INFO_NAME} of Hub dataset {source}"),
                                 f"{INFO_NAME} of Hub dataset {source}")


def shard_urls(source: str | Path, split: str, info: ReleaseInfo, revision: str | None = None) -> list[str]:
    """The shard paths (local) or ``hf://`` URLs (Hub) of one split."""
    if split not in info.splits:
        raise UserError(f"split {split!r} not in release {source} (has {', '.join(sorted(info.splits)) or 'none'})")
    files = info.splits[split].filenames
    if _is_local(source):
        return [str(location(source) / f) for f in files]
    rev = f"@{revision}" if revision else ""
    return [f"hf://datasets/{source}{rev}/{f}" for f in files]


def _open_shards(urls: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """webdataset stage: ``{"url"}`` → ``{"url", "stream"}`` (local files, or hf:// through HfFileSystem)."""
    for item in urls:
        url = item["url"]
        if url.startswith("hf://"):
            from huggingface_hub import HfFileSystem

            stream = HfFileSystem(endpoint=_endpoint()).open(url, "rb", block_size=1 << 22)
        else:
            stream = open_binary(url, buffering=1 << 20)
        try:
            yield {"url": url, "stream": stream}
        finally:
            stream.close()


def _samples(urls: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """webdataset stage: opened shards → samples grouped by key (webdataset's grouping); a broken shard is a
    UserError naming it."""
    for shard in _open_shards(urls):
        yield from iter_samples(shard["stream"], shard["url"])


def decode_jpeg_uint8(data: bytes) -> Any:
    """JPEG bytes → contiguous ``uint8`` ``3×H×W`` RGB tensor by ``torchvision.io.decode_jpeg`` (libjpeg-turbo),
    or None when this torchvision has no decoder (the caller then uses PIL).

    torchvision 0.29 warns on every call that its decoders move to torchcodec; the warning is silenced here.
    """
    import warnings

    import torch

    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


class _Decode:
    """Picklable sample → (tensor, label) step.

    Without a transform, a JPEG is decoded by ``torchvision.io.decode_jpeg`` straight into a contiguous
    ``uint8`` ``3×H×W`` tensor (no PIL image, no HWC copy); with ``image_size``, PIL's JPEG draft mode decodes
    at the smallest DCT scale not below that size (1/2, 1/4, 1/8 of the pixels) and the image is resized to
    ``image_size × image_size``. Other formats, and any ``transform``, go through PIL.
    """

    def __init__(self, transform: Callable[[Any], Any] | None, image_size: int | None = None) -> None:
        self.transform = transform
        self.image_size = image_size

    def __call__(self, sample: dict[str, Any]) -> tuple[Any, int]:
        for ext in IMAGE_EXTENSIONS:
            if ext in sample:
                return self.image(sample[ext], ext), int(sample["cls"])
        raise UserError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no image member")

    def image(self, data: bytes, ext: str) -> Any:
        import io

        from PIL import Image

        if self.transform is None and self.image_size is None and ext == "jpg":
            decoded = decode_jpeg_uint8(data)
            if decoded is not None:
                return decoded
        image = Image.open(io.BytesIO(data))
        if self.image_size is not None:
            size = (self.image_size, self.image_size)
            if image.format == "JPEG":
                image.draft("RGB", size)
            if image.mode != "RGB":
                image = image.convert("RGB")
            if image.size != size:
                image = image.resize(size, Image.Resampling.BILINEAR)
        return (self.transform or pil_to_uint8_tensor)(image)

    def pil(self, image: Any) -> Any:
        """An already decoded PIL image (the ``datasets`` backend) → the same output."""
        if self.image_size is not None and image.size != (self.image_size, self.image_size):
            from PIL import Image

            image = image.convert("RGB").resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        return (self.transform or pil_to_uint8_tensor)(image)


class _Collate:
    """Picklable batch collation: (list of tensors, list of labels) → (stacked tensor, int64 tensor), one copy."""

    def __call__(self, samples: list[tuple[Any, int]]) -> tuple[Any, Any]:
        import torch
        from torch.utils.data import default_collate

        images = [s[0] for s in samples]
        labels = torch.tensor([s[1] for s in samples], dtype=torch.int64)
        if all(isinstance(im, torch.Tensor) for im in images):
            return torch.stack(images), labels
        return default_collate(images), labels


def samples_per_rank(total: int, world_size: int) -> int:
    """Samples every rank yields per epoch: ``ceil(total / world_size)`` (the same on every rank)."""
    return -(-int(total) // int(world_size))


def worker_quotas(samples: int, batch_size: int, workers: int) -> list[int]:
    """Split one rank's samples over its DataLoader workers so that batching in the workers gives exactly
    ``ceil(samples / batch_size)`` batches in all.

    Worker ``w`` gets whole batches (``nb // workers``, one more for the first ``nb % workers``); the short last
    batch is taken from the worker that yields it in the DataLoader's round-robin order.
    """
    if samples <= 0:
        return [0] * workers
    nb = -(-samples // batch_size)
    per = [nb // workers + (1 if w < nb % workers else 0) for w in range(workers)]
    quotas = [n * batch_size for n in per]
    quotas[(nb - 1) % workers] -= nb * batch_size - samples
    return quotas


class _QuotaSamples:
    """webdataset source stage: this worker's shards, read in passes until exactly its quota of samples.

    A rank (or worker) whose shards hold fewer samples than its quota reads them again (the next pass in
    another shuffled order); one whose shards hold more stops at the quota (the rest is read in other epochs,
    since the shard order changes every epoch).
    """

    def __init__(self, shards: list[str], quotas: list[int], seed: int) -> None:
        self.shards, self.quotas, self.seed = shards, quotas, seed

    def __call__(self) -> Iterator[dict[str, Any]]:
        from contextlib import closing

        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker = info.id if info is not None else 0
        mine, quota = self.shards[worker :: len(self.quotas)], self.quotas[worker]
        n, attempt = 0, 0
        while n < quota:
            order = list(mine)
            if attempt:
                random.Random(f"{self.seed}:{worker}:{attempt}").shuffle(order)
            before = n
            with closing(_samples(iter({"url": u} for u in order))) as samples:
                for sample in samples:
                    yield sample
                    n += 1
                    if n == quota:
                        return
            if n == before:
                raise UserError(f"shards {', '.join(order[:3])} hold no samples")
            attempt += 1


class ReleaseLoader:
    """Batches ``(images, labels)`` of one split for this rank; see :func:`make_loader`."""

    def __init__(self, loader_factory: Callable[[int], Any], num_samples: int, batch_size: int) -> None:
        self._factory = loader_factory
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle shards and buffers differently for epoch ``epoch`` (same on every rank)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return iter(self._factory(self.epoch))

    def __len__(self) -> int:
        """Batches per epoch on this rank: ``ceil(num_samples / batch_size)``, the same on every rank (exact)."""
        return max(1, -(-self.num_samples // self.batch_size))


def make_loader(
    source: str | Path,
    split: str = "train",
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 64,
    num_workers: int = 0,
    shuffle_buffer: int = 1000,
    transform: Callable[[Any], Any] | None = None,
    backend: str = "webdataset",
    seed: int = 0,
    revision: str | None = None,
    image_size: int | None = None,
) -> ReleaseLoader:
    """A training loader over a release.

    Every rank yields exactly ``ceil(num_samples_of_split / world_size)`` samples per epoch, in
    ``len(loader)`` batches, so DDP ranks stay in step (see the module docstring).

    Args:
        source: a local release folder, its URL (``s3://bucket/rel``: storage options from ``--storage-options`` /
            ``IMAGENET_PLUS_STORAGE_OPTIONS`` and the environment), or a Hub dataset repo id ``USER/NAME``.
        split: ``train`` or ``validation``.
        rank: this process's rank.
        world_size: number of processes.
        batch_size: samples per batch (the last batch may be smaller; its size is the same on every rank).
        num_workers: DataLoader worker processes (each reads its own shards; at most shards per rank are used).
        shuffle_buffer: sample shuffle buffer size; 0 disables shuffling (shards and samples in order).
        transform: PIL image → tensor (same size for every image); default uint8 ``3×H×W``.
        backend: ``webdataset`` or ``datasets`` (streaming).
        seed: seed of the shard shuffle and the buffers (combined with the epoch).
        revision: Hub branch/revision (Hub sources only).
        image_size: decode straight to ``image_size × image_size`` (JPEG draft mode, then a resize) before
            ``transform``; None keeps the stored size.

    Returns:
        A :class:`ReleaseLoader` (iterable of batches, ``set_epoch``, ``len``).

    Raises:
        UserError: bad arguments, an unknown split, a missing release.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is not within world size {world_size}")
    if batch_size < 1 or num_workers < 0 or shuffle_buffer < 0:
        raise UserError("batch_size must be positive; num_workers and shuffle_buffer must be >= 0")
    if image_size is not None and image_size < 1:
        raise UserError(f"image_size must be positive, got {image_size}")
    info = read_release_info(source, revision)
    urls = shard_urls(source, split, info, revision)
    if len(urls) < world_size:
        raise UserError(f"split {split!r} of {source} has {len(urls)} shard(s), fewer than world size {world_size}")
    num_samples = samples_per_rank(info.splits[split].num_samples, world_size)
    # every rank has at least len(urls) // world_size shards: no worker is left without one
    workers = min(num_workers, len(urls) // world_size)
    decode, collate = _Decode(transform, image_size), _Collate()
    if backend == "webdataset":
        factory = _webdataset_factory(urls, rank, world_size, batch_size, workers, shuffle_buffer, decode,
                                      collate, seed, num_samples)
    else:
        factory = _datasets_factory(source, split, rank, world_size, batch_size, workers, shuffle_buffer,
                                    decode, collate, seed, revision, num_samples)
    return ReleaseLoader(factory, num_samples, batch_size)


def _webdataset_factory(urls: list[str], rank: int, world_size: int, batch_size: int, num_workers: int,
                        shuffle_buffer: int, decode: _Decode, collate: _Collate, seed: int,
                        num_samples: int) -> Callable[[int], Any]:
    import webdataset as wds
    from torch.utils.data import DataLoader

    quotas = worker_quotas(num_samples, batch_size, max(1, num_workers))

    def build(epoch: int) -> Any:
        order = list(urls)
        if shuffle_buffer:
            random.Random(seed * 1_000_003 + epoch).shuffle(order)  # same permutation on every rank
        mine = order[rank::world_size]
        stages: list[Any] = [_QuotaSamples(mine, quotas, seed * 1_000_003 + epoch * 8191 + rank)]
        if shuffle_buffer:
            stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100),
                                      rng=random.Random(seed * 7919 + epoch * 31 + rank)))
        stages += [wds.map(decode), wds.batched(batch_size, collation_fn=collate, partial=True)]
        pipeline = wds.DataPipeline(*stages)
        if num_workers == 0:
            return pipeline
        return DataLoader(pipeline, batch_size=None, num_workers=num_workers, persistent_workers=False)

    return build


class _DatasetsStreamMixin:
    """Iterates a streaming datasets split as (tensor, label), exactly this worker's quota of samples (read
    again from the start when the worker's part is shorter); sharding over workers is datasets' own."""

    def __init__(self, ds: Any, decode: _Decode, image_col: str, quotas: list[int]) -> None:
        self.ds, self.decode, self.image_col, self.quotas = ds, decode, image_col, quotas

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        quota = self.quotas[info.id if info is not None else 0]
        n = 0
        while n < quota:
            before = n
            for ex in self.ds:
                yield self.decode.pil(ex[self.image_col]), int(ex["cls"])
                n += 1
                if n == quota:
                    return
            if n == before:
                raise UserError("a streaming datasets worker got no samples")


_LAZY_CLASSES: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """Module attribute ``_DatasetsStream``: a torch ``IterableDataset`` class built on first use (PEP 562),
    so that torch is imported lazily and worker processes can still unpickle it by name."""
    if name == "_DatasetsStream":
        if name not in _LAZY_CLASSES:
            import torch.utils.data

            cls = type(name, (_DatasetsStreamMixin, torch.utils.data.IterableDataset), {"__module__": __name__})
            _LAZY_CLASSES[name] = cls
        return _LAZY_CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _datasets_factory(source: str | Path, split: str, rank: int, world_size: int, batch_size: int, num_workers: int,
                      shuffle_buffer: int, decode: _Decode, collate: _Collate, seed: int,
                      revision: str | None, num_samples: int) -> Callable[[int], Any]:
    import datasets
    import torch.utils.data
    from datasets.distributed import split_dataset_by_node

    if is_url(source):  # the packaged webdataset builder over the shards' URLs, as the card's YAML would drive it
        # downloaded, then streamed from the local copy: datasets 5.2's streaming passes ``block_size`` into the
        # filesystem's options, which s3fs hands to its session (TypeError); docs/storage.md
        files = shard_urls(source, split, read_release_info(source))
        ds = datasets.load_dataset("webdataset", data_files={split: files}, split=split,
                                   storage_options=storage_options()).to_iterable_dataset()
    else:
        ds = datasets.load_dataset(str(source), split=split, streaming=True, revision=revision)
    image_col = next((c for c in IMAGE_EXTENSIONS if c in (ds.features or {})), None)
    if image_col is None:
        raise UserError(f"{source}: the card declares no image column ({', '.join(IMAGE_EXTENSIONS)})")
    ds = ds.select_columns([image_col, "cls"])
    ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
    if shuffle_buffer:
        ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)

    stream_cls = __getattr__("_DatasetsStream")

    def build(epoch: int) -> Any:
        ds.set_epoch(epoch)
        quotas = worker_quotas(num_samples, batch_size, max(1, num_workers))
        return torch.utils.data.DataLoader(stream_cls(ds, decode, image_col, quotas), batch_size=batch_size,
                                           num_workers=num_workers, collate_fn=collate)

    return build
