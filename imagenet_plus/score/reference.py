"""The real reference for FID/KID/precision/recall/realism: InceptionV3 pool3 features of real images.

A reference (``score --reference REAL``) is one of:

- an image folder: images (png/jpg/jpeg/webp/bmp) at any depth; the first-level subfolder names the class
  (``val/n01440764/*.JPEG`` as ImageNet's val set sorted into wnid folders), which gives per-class FID;
- WebDataset shards: a ``.tar`` file, or a folder of ``.tar`` files (an imagenet-plus release works); the
  image member is ``jpg``/``jpeg``/``png``/``webp`` and the class is ``json["class_id"]`` when present;
- a statistics file ``.npz`` with ``mu`` (2048) and ``sigma`` (2048×2048) (pytorch-fid's format), and
  optionally ``features`` (N×2048) and ``class_ids`` (N) as written by :func:`save_reference`; with
  statistics only, FID is computed but KID, precision/recall and realism are not.

Every real image of a folder or shards is cut to its largest centred square
(:func:`~imagenet_plus.scorers.inception.center_crop`, exact in ``uint8``), which is resized to Inception's
299 px in float by torch-fidelity's own resize and never rounded
(:meth:`~imagenet_plus.scorers.inception.InceptionScorer.features_full_batch`; the protocol named by
:data:`PROTOCOL`): the features are torch-fidelity's on the crops, and images of any shapes go through the
network in full batches of ``batch_size``.

Features of folders and shards are cached under ``cache_dir("reference")`` keyed by a hash of the file list
(relative names, sizes, modification times), the Inception weights and :data:`PROTOCOL`: a second run reads
the features instead of running the network, without re-reading the images (an edited or replaced file
changes its size or time, hence the key), and features cached under another protocol are extracted again.

Under a multi-process launch every rank extracts one contiguous block (:func:`load_reference_part`, cut by
:func:`part_block`) into a shared folder, and the main rank merges the blocks in order
(:meth:`ReferenceParts.merge`): the same features and cache entry as one process's :func:`load_reference`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import atomic_file
from imagenet_plus.io.cache import cache_dir
from imagenet_plus.io.storage import local_copy
from imagenet_plus.io.tar import iter_shard
from imagenet_plus.pipeline.progress import progress_bar
from imagenet_plus.score.metrics import fid_statistics
from imagenet_plus.score.scorers import decode_image
from imagenet_plus.score.scorers.inception import center_crop

#: Image file extensions read from a reference folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
#: Image members read from reference WebDataset shards.
WDS_IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
#: Feature size of a reference (torch-fidelity's pool3).
FEATURE_DIM = 2048
#: How real images become Inception inputs; part of the cache key, so that a change of protocol re-extracts.
#: v3: largest centred square, TF1 bilinear to 299 px in float, fed to the network unrounded, full batches.
#: v2 rounded the 299 px image to ``uint8`` (torch-fidelity's input type); v1 resized the whole image, unsquared.
PROTOCOL = "center-crop-299-float-v3"


@dataclass
class Reference:
    """Real features (or only their statistics) and where they came from."""

    path: str
    kind: str  # "folder" | "webdataset" | "statistics"
    content_hash: str
    weights_id: str | None
    features: np.ndarray | None  # M×2048 float32, None for a statistics-only file
    class_ids: list[str | None] | None
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    _by_class: dict[str | None, list[int]] | None = field(default=None, repr=False, compare=False)

    @property
    def num_images(self) -> int | None:
        """Number of real images (``None`` for a statistics-only file)."""
        return None if self.features is None else int(len(self.features))

    def class_features(self, class_id: str) -> np.ndarray | None:
        """Features of the real images of one class (``None`` when the reference has no class ids)."""
        if self.features is None or self.class_ids is None:
            return None
        if self._by_class is None:
            self._by_class = {}
            for i, c in enumerate(self.class_ids):
                self._by_class.setdefault(c, []).append(i)
        idx = self._by_class.get(class_id)
        return self.features[idx] if idx else None

    def describe(self) -> dict[str, Any]:
        """The summary.json entry: path, kind, hash, weights, extraction protocol, image count."""
        return {"path": self.path, "kind": self.kind, "hash": self.content_hash, "inception_weights": self.weights_id,
                "protocol": None if self.kind == "statistics" else PROTOCOL, "num_images": self.num_images,
                "per_class": self.class_ids is not None
                and any(c is not None for c in self.class_ids)}


def _sha256_file(path: Path, h: Any = None) -> Any:
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


def _hash_file_stat(h: Any, name: str, path: Path) -> None:
    """Add a file's name, size and modification time to the cache key (its bytes are not read)."""
    st = path.stat()
    h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())


def _folder_images(root: Path) -> list[Path]:
    files = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                files.append(Path(dirpath) / name)
    return sorted(files)


def _folder_tars(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.tar") if p.is_file())


def detect_kind(path: Path) -> str:
    """``folder``, ``webdataset`` or ``statistics`` for a ``--reference`` path.

    Raises:
        UserError: the path is missing, or is a folder with neither images nor tar shards.
    """
    if not path.exists():
        raise UserError(f"reference not found: {path}")
    if path.is_file():
        if path.suffix == ".npz":
            return "statistics"
        if path.suffix == ".tar":
            return "webdataset"
        raise UserError(f"reference {path}: expected an image folder, a .tar shard or a .npz statistics file")
    if _folder_images(path):
        return "folder"
    if _folder_tars(path):
        return "webdataset"
    raise UserError(f"reference folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}) and no .tar shards")


def _iter_folder(root: Path, files: list[Path]) -> Iterator[tuple[bytes, str, str | None]]:
    for p in files:
        rel = p.relative_to(root)
        class_id = rel.parts[0] if len(rel.parts) > 1 else None
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise UserError(f"unreadable image in reference: {p}: {exc}") from None
        yield data, str(p), class_id


def _iter_tars(tars: list[Path]) -> Iterator[tuple[bytes, str, str | None]]:
    import json


    for tar in tars:
        for sample in iter_shard(tar):
            member = next((m for m in WDS_IMAGE_MEMBERS if m in sample), None)
            if member is None:
                raise UserError(f"reference shard {tar}: sample {sample.get('__key__')} has no image member "
                                f"({'/'.join(WDS_IMAGE_MEMBERS)})")
            class_id = None
            if "json" in sample:
                try:
                    class_id = json.loads(sample["json"]).get("class_id")
                except (ValueError, AttributeError):
                    raise UserError(f"reference shard {tar}: sample {sample['__key__']} has malformed json") from None
            yield sample[member], f"{tar}:{sample['__key__']}", class_id


def _extract(samples: Iterator[tuple[bytes, str, str | None]], total: int, inception: Any, batch_size: int,
             show_progress: bool, desc: str = "reference features",
             check: Callable[[], None] | None = None) -> tuple[np.ndarray, list[str | None]]:
    """Features and class ids of ``samples`` in order (``0×2048`` when there are none); ``check`` runs per batch."""
    from concurrent.futures import ThreadPoolExecutor


    feats: list[np.ndarray] = []
    class_ids: list[str | None] = []
    bar = progress_bar(total, desc, enabled=show_progress)
    with bar, ThreadPoolExecutor(max_workers=2) as pool:
        batch: list[tuple[bytes, str, str | None]] = []

        def flush() -> None:
            if check is not None:
                check()
            images = list(pool.map(lambda s: center_crop(decode_image(s[0], f"in reference: {s[1]}")), batch))
            pool_feats, _ = inception.features_full_batch(images)
            feats.append(pool_feats.numpy().astype(np.float32))
            class_ids.extend(s[2] for s in batch)
            bar.update(len(batch))
            batch.clear()

        for sample in samples:
            batch.append(sample)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    if not feats:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32), class_ids
    return np.concatenate(feats), class_ids


def _write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    with atomic_file(path) as f:
        np.savez(f, **arrays)


def save_reference(reference: Reference, path: str | Path) -> None:
    """Write a reference as a ``.npz`` (``mu``, ``sigma``, and ``features``/``class_ids`` when known).

    The file is itself a valid ``--reference``: it skips the image reading and the network altogether.
    """
    arrays: dict[str, np.ndarray] = {"mu": reference.stats["mu"], "sigma": reference.stats["sigma"]}
    if reference.features is not None:
        arrays["features"] = reference.features
    if reference.class_ids is not None:
        arrays["class_ids"] = np.array(["" if c is None else c for c in reference.class_ids], dtype=str)
    _write_npz_atomic(Path(path), **arrays)


def _load_statistics(path: Path) -> Reference:
    try:
        with np.load(local_copy(path), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise UserError(f"reference statistics file {path} is not a readable .npz: {exc}") from None
    for key in ("mu", "sigma"):
        if key not in arrays:
            raise UserError(f"reference statistics file {path} has no '{key}' array (expected mu and sigma)")
    mu, sigma = arrays["mu"], arrays["sigma"]
    if mu.shape != (FEATURE_DIM,) or sigma.shape != (FEATURE_DIM, FEATURE_DIM):
        raise UserError(f"reference statistics file {path}: mu must be ({FEATURE_DIM},) and sigma "
                        f"({FEATURE_DIM}, {FEATURE_DIM}), got {mu.shape} and {sigma.shape}")
    features = arrays.get("features")
    if features is not None and (features.ndim != 2 or features.shape[1] != FEATURE_DIM):
        raise UserError(f"reference statistics file {path}: features must be N×{FEATURE_DIM}, got {features.shape}")
    class_ids = None
    if "class_ids" in arrays and features is not None:
        class_ids = [str(c) or None for c in arrays["class_ids"].tolist()]
    return Reference(path=str(path), kind="statistics", content_hash=_sha256_file(path).hexdigest()[:16],
                     weights_id=None, features=None if features is None else features.astype(np.float32),
                     class_ids=class_ids, stats={"mu": mu, "sigma": sigma})


@dataclass(frozen=True)
class _Source:
    """A folder or shards reference: its items (image files or tars) in extraction order, and its content hash."""

    path: Path
    kind: str  # "folder" | "webdataset"
    items: tuple[Path, ...]
    content_hash: str

    def samples(self, items: tuple[Path, ...]) -> Iterator[tuple[bytes, str, str | None]]:
        """(bytes, name, class id) of the images of ``items`` (a slice of :attr:`items`), in order."""
        return _iter_folder(self.path, list(items)) if self.kind == "folder" else _iter_tars(list(items))

    def cache_file(self, weights_id: str) -> Path:
        """The cache entry of these images' features under ``weights_id`` and :data:`PROTOCOL`."""
        return cache_dir("reference") / f"{self.content_hash}-{weights_id}-{PROTOCOL}.npz"


def _source(path: Path, kind: str) -> _Source:
    """List a folder's images (or the shards) and hash their names, sizes and times (no image is read)."""
    if kind == "folder":
        items = _folder_images(path)
        h = hashlib.sha256(b"folder")
        for p in items:
            _hash_file_stat(h, str(p.relative_to(path)), p)
    else:
        items = [path] if path.is_file() else _folder_tars(path)
        h = hashlib.sha256(b"webdataset")
        for p in items:
            _hash_file_stat(h, p.name, p)
    return _Source(path=path, kind=kind, items=tuple(items), content_hash=h.hexdigest()[:16])


def _class_id_array(class_ids: list[str | None]) -> np.ndarray:
    return np.array(["" if c is None else c for c in class_ids], dtype=str)


def _read_features(path: Path) -> tuple[np.ndarray, list[str | None], dict[str, np.ndarray]] | None:
    """(features, class ids, other arrays) of a cache entry or part file; ``None`` when missing or damaged."""
    if not path.is_file():
        return None
    try:
        with np.load(local_copy(path), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        features = arrays.pop("features").astype(np.float32).reshape(-1, FEATURE_DIM)
        class_ids = [str(c) or None for c in arrays.pop("class_ids").tolist()]
    except (OSError, ValueError, KeyError):
        return None  # a damaged file is recomputed
    if len(class_ids) != len(features):
        return None
    return features, class_ids, arrays


def _check_count(path: Path, n: int) -> None:
    if n == 0:
        raise UserError(f"the reference {path} holds no images")
    if n < 2:
        raise UserError(f"reference {path} holds {n} image; FID needs at least 2")


def _reference(source: _Source, weights_id: str, features: np.ndarray, class_ids: list[str | None]) -> Reference:

    return Reference(path=str(source.path), kind=source.kind, content_hash=source.content_hash, weights_id=weights_id,
                     features=features, class_ids=class_ids, stats=fid_statistics(features))


def load_reference(spec: str | Path, inception: Any, batch_size: int = 32, show_progress: bool = True) -> Reference:
    """Real features of ``spec`` (from the cache when the same images and weights were seen before).

    One process extracts every image; under a multi-process launch :func:`load_reference_part` shares the
    work between the ranks and gives the same features and cache entry.

    Args:
        spec: an image folder, a ``.tar`` or folder of ``.tar`` shards, or a ``.npz`` statistics file.
        inception: a loaded :class:`~imagenet_plus.scorers.inception.InceptionScorer` (``weights_id`` keys
            the cache); may be ``None`` for a statistics file.
        batch_size: images per network batch (every batch is full but the last: each image is resized to 299 px
            on its own).
        show_progress: show a progress bar while extracting.

    Raises:
        UserError: missing path, fewer than 2 images, an unreadable image or corrupt shard (named), a malformed
            statistics file.
    """
    path = Path(spec)
    kind = detect_kind(path)
    if kind == "statistics":
        return _load_statistics(path)
    source = _source(path, kind)
    cache_file = source.cache_file(inception.weights_id)
    cached = _read_features(cache_file)
    if cached is not None:
        features, class_ids, _ = cached
    else:
        total = len(source.items) if kind == "folder" else 0
        features, class_ids = _extract(source.samples(source.items), total, inception, batch_size, show_progress)
        _check_count(path, len(features))
        _write_npz_atomic(cache_file, features=features, class_ids=_class_id_array(class_ids))
    return _reference(source, inception.weights_id, features, class_ids)


def part_block(kind: str, num_items: int, rank: int, world_size: int, batch_size: int) -> tuple[int, int]:
    """The items ``[start, stop)`` whose features rank ``rank`` of ``world_size`` extracts.

    Contiguous blocks in rank order. For a folder the items are images and the blocks are cut at whole batches
    of ``batch_size``, so every rank runs the very batches a single process would; for shards the items are
    the ``.tar`` files (their sample counts are unknown before reading). A block may be empty.
    """
    if kind == "folder":
        batches = -(-num_items // batch_size)
        return (min(batches * rank // world_size * batch_size, num_items),
                min(batches * (rank + 1) // world_size * batch_size, num_items))
    return num_items * rank // world_size, num_items * (rank + 1) // world_size


def _part_file(folder: Path, source: _Source, weights_id: str, rank: int, world_size: int) -> Path:
    return Path(folder) / (f"reference-{source.content_hash}-{weights_id}-{PROTOCOL}"
                           f"-part-{rank:05d}-of-{world_size:05d}.npz")


@dataclass(frozen=True)
class ReferenceParts:
    """The main rank's handle on a reference whose features every rank extracts (:func:`load_reference_part`)."""

    source: _Source
    inception: Any
    folder: Path
    world_size: int
    batch_size: int

    def merge(self, show_progress: bool = True) -> Reference:
        """Concatenate every rank's part in rank order, write the cache entry, and return the reference.

        Call it once every rank has written its part (after ``FileRendezvous.wait_for_all``: a rank writes its
        part before it scores). A part that is missing, damaged or covers other items (a rank that found the
        features in its own node's cache, or saw another file list) is extracted here instead.

        Raises:
            UserError: fewer than 2 images in all, or an unreadable image or corrupt shard in a block
                extracted here.
        """
        weights_id = self.inception.weights_id
        features: list[np.ndarray] = []
        class_ids: list[str | None] = []
        for rank in range(self.world_size):
            start, stop = part_block(self.source.kind, len(self.source.items), rank, self.world_size, self.batch_size)
            part = _read_features(_part_file(self.folder, self.source, weights_id, rank, self.world_size))
            if part is not None and part[2].get("block", np.zeros(0)).tolist() == [start, stop]:
                feats, ids = part[0], part[1]
            else:
                print(f"warning: no reference part from rank {rank}: extracting its items [{start}, {stop}) "
                      f"of {self.source.path} here", file=sys.stderr)
                total = stop - start if self.source.kind == "folder" else 0
                feats, ids = _extract(self.source.samples(self.source.items[start:stop]), total, self.inception,
                                      self.batch_size, show_progress, f"reference features (rank {rank}'s part)")
            features.append(feats)
            class_ids.extend(ids)
        merged = np.concatenate(features)
        _check_count(self.source.path, len(merged))
        _write_npz_atomic(self.source.cache_file(weights_id), features=merged, class_ids=_class_id_array(class_ids))
        return _reference(self.source, weights_id, merged, class_ids)


def load_reference_part(spec: str | Path, inception: Any, folder: str | Path, rank: int, world_size: int,
                        batch_size: int = 32, show_progress: bool = True,
                        check: Callable[[], None] | None = None) -> Reference | ReferenceParts | None:
    """This rank's share of a reference under a multi-process launch (every rank calls it, before scoring).

    Every rank lists and hashes the images (names, sizes, times: cheap) and looks in the cache. Cached: the
    main rank (0) reads the entry, the others do nothing. Otherwise rank ``r`` extracts the features of its
    block (:func:`part_block`: images cut at whole batches for a folder, ``.tar`` files for shards) at the
    full batch size on its own device, and writes them atomically as one ``.npz`` part into ``folder`` (the
    launch's rendezvous folder, shared by every node). The main rank then merges the parts in rank order
    (:meth:`ReferenceParts.merge`) once every rank is done: the features are in the order of a single-process
    :func:`load_reference`, so the cache entry and the metrics do not depend on the number of ranks (for a
    folder the batches are the same too; for shards a batch may be cut at a rank's first ``.tar``, which
    changes features only by floating-point rounding). A statistics ``.npz`` is read by the main rank alone.

    Args:
        spec: an image folder, a ``.tar`` or folder of ``.tar`` shards, or a ``.npz`` statistics file.
        inception: a loaded Inception scorer (``None`` for a statistics file).
        folder: where parts are written (the same folder on every rank).
        rank: this process's rank; rank 0 merges.
        world_size: number of ranks.
        batch_size: images per network batch.
        show_progress: show a progress bar of this rank's part (the main rank's only, in practice).
        check: called before every batch; raises to stop (``FileRendezvous.check``: another rank failed).

    Returns:
        On the main rank, the :class:`Reference` (statistics file or cached features) or the
        :class:`ReferenceParts` to merge; ``None`` on the other ranks.

    Raises:
        UserError: missing path, no images (or a folder of one), an unreadable image or corrupt shard in this
            rank's block (named), a malformed statistics file, or whatever ``check`` raises.
    """
    path = Path(spec)
    kind = detect_kind(path)
    is_main = rank == 0
    if kind == "statistics":
        return _load_statistics(path) if is_main else None
    source = _source(path, kind)
    if kind == "folder":
        _check_count(path, len(source.items))  # before any rank runs the network
    cache_file = source.cache_file(inception.weights_id)
    if is_main:
        cached = _read_features(cache_file)
        if cached is not None:
            return _reference(source, inception.weights_id, cached[0], cached[1])
    elif cache_file.is_file():
        return None  # the main rank reads it (it extracts this block itself if its own cache lacks it)
    start, stop = part_block(kind, len(source.items), rank, world_size, batch_size)
    unit = "img" if kind == "folder" else "shard"
    desc = f"reference features (rank {rank}'s part: {stop - start} of {len(source.items)} {unit})"
    features, class_ids = _extract(source.samples(source.items[start:stop]), stop - start if kind == "folder" else 0,
                                   inception, batch_size, show_progress, desc, check)
    _write_npz_atomic(_part_file(Path(folder), source, inception.weights_id, rank, world_size), features=features,
                      class_ids=_class_id_array(class_ids), block=np.array([start, stop], dtype=np.int64))
    if not is_main:
        return None
    return ReferenceParts(source=source, inception=inception, folder=Path(folder), world_size=world_size,
                          batch_size=batch_size)
