"""Real images per class (``--real DIR``): the images that captions and img2img start from.

Two layouts are read:

- **ImageNet-style folder**: ``DIR/<class_id>/*.JPEG`` (class ids as in the class set; image extensions
  :data:`~imagenet_plus.contract.names.READ_IMAGE_EXTENSIONS`, any case; files directly in the class folder).
- **WebDataset / release folder**: tar shards whose sample keys start with the class id (``{class_id}_…``,
  e.g. ``n01440764_10026``). With an ``_info.json`` (timm's format, as a release writes it) the shards of its
  ``train`` split are read (or ``split=``); without one, every ``*.tar`` below ``DIR``. Samples whose key
  starts with no class id of the set (ImageNet's ``ILSVRC2012_val_…``) are ignored.

The real images of a class come in a fixed order (file names / keys sorted by their bytes); image ``i`` of
a class is paired with real image ``i mod n`` (:meth:`RealIndex.pair`). A class without real images is an
error naming it, unless ``missing="skip"`` (its images are dropped by the caller) or ``missing="text"``
(they are generated from text alone); :meth:`RealIndex.pair` returns ``None`` for such a class.

**Memory at ImageNet size** (1.28 M files, 1,000 classes): a class folder is listed when the class is
first asked for, and kept as one sorted numpy array of encoded file names (about 20 bytes per image, no
Python object per image: ~26 MB for all of ImageNet); tar shards are scanned once (headers only, data
skipped by seeking) into one numpy record array (key, shard, offset, size) sorted by class and key.

:func:`fingerprint` hashes what the images are (names, sizes and modification times, per class or per
shard) for the run's config hash; :func:`load_real_image` decodes one image (RGB) with a one-line error.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_plus.contract.names import INFO_NAME, READ_IMAGE_EXTENSIONS, split_member_name
from imagenet_plus.contract.records import read_json
from imagenet_plus.contract.release import parse_splits
from imagenet_plus.errors import UserError
from imagenet_plus.io.storage import local_tree
from imagenet_plus.io.tar import scan_tar
from imagenet_plus.pipeline.progress import progress_bar

log = logging.getLogger(__name__)

#: What to do with a class that has no real image: fail, drop its images, or generate them from text.
MISSING_POLICIES = ("error", "skip", "text")
#: Layouts of a real images folder.
FOLDER, WEBDATASET = "folder", "webdataset"
#: How many missing classes an error names.
NAMED_IN_ERRORS = 5
#: The split of an ``_info.json`` read by default.
DEFAULT_SPLIT = "train"

_EXTENSIONS = frozenset(e.lower() for e in READ_IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class RealRef:
    """One real image, as paired with a generated one.

    Attributes:
        class_id: its class.
        source: its path relative to the real images folder (folder layout), or its tar member key
            (WebDataset layout): what the generated sample records as its ``source``.
        path: the image file, or the tar shard holding it.
        offset: the member's data offset in the tar (``-1`` for a plain file).
        size: the member's size in bytes (``-1`` for a plain file).
    """

    class_id: str
    source: str
    path: Path
    offset: int = -1
    size: int = -1

    def describe(self) -> str:
        """How errors name the image: the file, or ``shard.tar:key``."""
        return str(self.path) if self.offset < 0 else f"{self.path}:{self.source}"


class RealIndex:
    """The real images of each class of a set, listed on demand (see the module docstring).

    Build it with :func:`open_real`.
    """

    def __init__(self, root: Path, class_ids: Sequence[str], missing: str, layout: str,
                 missing_classes: Sequence[str], shards: Sequence[str] = (),
                 records: np.ndarray | None = None, bounds: dict[str, tuple[int, int]] | None = None) -> None:
        self.root = root
        self.class_ids = tuple(class_ids)
        self.missing = missing
        self.layout = layout
        self.missing_classes = tuple(missing_classes)
        #: WebDataset layout: the shards read (relative to ``root``).
        self.shards = tuple(shards)
        self._records = records
        self._bounds = bounds or {}
        self._names: dict[str, np.ndarray] = {}
        self._known = frozenset(self.class_ids)

    def _check_class(self, class_id: str) -> None:
        if class_id not in self._known:
            raise UserError(f"class {class_id!r} is not in the class set of the real images index")

    def names(self, class_id: str) -> np.ndarray:
        """The class's real images in their fixed order: encoded file names (folder) or tar keys (``S`` array).

        Raises:
            UserError: the class has no real image and ``missing`` is ``error``.
        """
        self._check_class(class_id)
        if self.layout == WEBDATASET:
            start, stop = self._bounds.get(class_id, (0, 0))
            names = self._records["key"][start:stop]  # type: ignore[index]
        else:
            names = self._names.get(class_id)
            if names is None:
                names = self._names[class_id] = self._list_folder(class_id)
        if not len(names) and self.missing == "error":
            where = self.root / class_id if self.layout == FOLDER else self.root
            raise UserError(f"no real image of class {class_id!r} in {where} (extensions "
                            f"{', '.join(READ_IMAGE_EXTENSIONS)}; or let such classes be skipped or text-only)")
        return names

    def _list_folder(self, class_id: str) -> np.ndarray:
        folder = self.root / class_id
        if class_id in self.missing_classes:
            return np.array([], dtype="S1")
        try:
            with os.scandir(folder) as entries:
                found = [os.fsencode(e.name) for e in entries
                         if e.name.rpartition(".")[2].lower() in _EXTENSIONS and "." in e.name and e.is_file()]
        except OSError as exc:
            raise UserError(f"cannot list real images in {folder}: {exc.strerror or exc}") from None
        found.sort()
        return np.array(found, dtype=f"S{max((len(f) for f in found), default=1)}")

    def count(self, class_id: str) -> int:
        """How many real images the class has (0 for a missing class under ``skip``/``text``)."""
        return len(self.names(class_id))

    def pair(self, class_id: str, index: int) -> RealRef | None:
        """The real image paired with image ``index`` of the class: real image ``index mod n``.

        Returns:
            The reference, or ``None`` when the class has no real image (``missing`` is ``skip`` or ``text``:
            the caller drops the image or generates it from text).

        Raises:
            UserError: the class has no real image and ``missing`` is ``error``; an unknown class.
        """
        names = self.names(class_id)
        if not len(names):
            return None
        i = index % len(names)
        if self.layout == FOLDER:
            name = os.fsdecode(bytes(names[i]))
            return RealRef(class_id, f"{class_id}/{name}", self.root / class_id / name)
        start, _ = self._bounds[class_id]
        rec = self._records[start + i]  # type: ignore[index]
        return RealRef(class_id, os.fsdecode(bytes(rec["key"])), self.root / self.shards[int(rec["shard"])],
                       int(rec["offset"]), int(rec["size"]))

    def refs(self, class_id: str) -> Iterator[RealRef]:
        """Every real image of the class, in the fixed order."""
        for i in range(self.count(class_id)):
            ref = self.pair(class_id, i)
            if ref is not None:
                yield ref


def open_real(root: str | Path, class_ids: Sequence[str], missing: str = "error", split: str | None = None,
              show_progress: bool = True) -> RealIndex:
    """Index the real images of ``class_ids`` under ``root`` (layout detected, see the module docstring).

    Args:
        root: the real images folder (``--real DIR``).
        class_ids: the class set's ids, in label order.
        missing: :data:`MISSING_POLICIES`: ``error`` (default), ``skip`` or ``text``.
        split: WebDataset layout with ``_info.json``: the split to read (default ``train`` when it has one,
            else all of its splits).
        show_progress: a progress bar while tar shards are scanned (main process only).

    Raises:
        UserError: ``root`` is not a folder; no class folder and no tar shard in it; classes without real
            images under ``missing="error"`` (up to :data:`NAMED_IN_ERRORS` named); an unknown policy or split.
    """
    if missing not in MISSING_POLICIES:
        raise UserError(f"real images: missing classes must be one of {', '.join(MISSING_POLICIES)}, got {missing!r}")
    root = local_tree(root)  # a URL (s3://…) is read from a local copy (io.storage)
    if not root.is_dir():
        raise UserError(f"real images folder not found: {root}")
    ids = list(dict.fromkeys(class_ids))
    try:
        with os.scandir(root) as entries:
            folders = {e.name for e in entries if e.is_dir()}
    except OSError as exc:
        raise UserError(f"cannot list real images folder {root}: {exc.strerror or exc}") from None
    if any(c in folders for c in ids):
        absent = [c for c in ids if c not in folders]
        _check_missing(absent, len(ids), root, missing)
        return RealIndex(root, ids, missing, FOLDER, absent)
    shards = _tar_shards(root, split)
    if not shards:
        example = ids[0] if ids else "CLASS_ID"
        raise UserError(f"no real images in {root}: no folder named after a class id (e.g. {root / example}) "
                        "and no .tar shards")
    records, bounds = _scan_shards(root, shards, ids, show_progress)
    absent = [c for c in ids if c not in bounds]
    if len(absent) == len(ids):
        raise UserError(f"no sample key in the tar shards of {root} starts with a class id of the set "
                        f"(keys must look like {ids[0] + '_…' if ids else 'CLASS_ID_…'})")
    _check_missing(absent, len(ids), root, missing)
    return RealIndex(root, ids, missing, WEBDATASET, absent, shards, records, bounds)


def _check_missing(absent: Sequence[str], total: int, root: Path, missing: str) -> None:
    if not absent:
        return
    named = ", ".join(absent[:NAMED_IN_ERRORS]) + (", …" if len(absent) > NAMED_IN_ERRORS else "")
    if missing == "error":
        raise UserError(f"no real images in {root} for {len(absent)} of {total} classes: {named} "
                        "(let them be skipped or generated from text alone, or add their images)")
    log.info("real images: %d of %d classes have none in %s (%s): %s", len(absent), total, root,
             "skipped" if missing == "skip" else "text only", named)


def _tar_shards(root: Path, split: str | None) -> list[str]:
    """The shards to read, relative to ``root``: an ``_info.json``'s split, else every ``*.tar`` below ``root``."""
    info_path = root / INFO_NAME
    if not info_path.is_file():
        if split is not None:
            raise UserError(f"real images: split {split!r} asked but {root} has no {INFO_NAME}")
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tar") if p.is_file())
    splits = parse_splits(read_json(info_path, "real images description"), info_path)
    if split is None:
        chosen = [DEFAULT_SPLIT] if DEFAULT_SPLIT in splits else sorted(splits)
    elif split in splits:
        chosen = [split]
    else:
        raise UserError(f"{info_path} has no split {split!r} (it has {', '.join(sorted(splits))})")
    names = [name for s in chosen for name in splits[s].filenames]
    for name in names:
        if not (root / name).is_file():
            raise UserError(f"{info_path} lists {name}, which is not in {root}")
    return names


_RECORD = [("cls", "i4"), ("shard", "i4"), ("offset", "i8"), ("size", "i8")]


def _class_of_key(key: str, known: frozenset[str]) -> str | None:
    """The class id a sample key starts with (``{class_id}_…``; the longest id of the set that fits)."""
    base = key.rsplit("/", 1)[-1]
    pos = base.rfind("_")
    while pos > 0:
        if base[:pos] in known:
            return base[:pos]
        pos = base.rfind("_", 0, pos)
    return None


def _scan_shards(root: Path, shards: Sequence[str], ids: Sequence[str],
                 show_progress: bool) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """One pass over the shards' headers → records sorted by (class, key) and each class's slice of them.

    Per shard, the first image member of each sample is kept (members of a sample are consecutive in a
    WebDataset tar, so only the previous key is remembered).
    """
    known = frozenset(ids)
    label = {c: i for i, c in enumerate(ids)}
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    with progress_bar(len(shards), "index real shards", unit="shard", enabled=show_progress) as bar:
        for s, name in enumerate(shards):
            rows: list[tuple[int, int, int, int]] = []
            keys: list[bytes] = []
            path = root / name
            last = None
            try:
                with open(path, "rb") as stream:
                    for member in scan_tar(stream, str(path), wanted=lambda _name: False):
                        try:
                            key, ext = split_member_name(member.name)
                        except UserError:
                            continue
                        if key == last or ext.lower() not in _EXTENSIONS:
                            continue
                        last = key
                        cls = _class_of_key(key, known)
                        if cls is not None:
                            rows.append((label[cls], s, member.offset, member.size))
                            keys.append(os.fsencode(key))
            except OSError as exc:
                raise UserError(f"cannot read real images shard {path}: {exc.strerror or exc}") from None
            parts.append((np.array(rows, dtype=_RECORD), np.array(keys, dtype=f"S{max(map(len, keys), default=1)}")))
            bar.update(1)
    keys_all = np.concatenate([k for _, k in parts]) if parts else np.array([], dtype="S1")
    records = np.empty(len(keys_all), dtype=[("key", keys_all.dtype), *_RECORD])
    if len(keys_all):
        base = np.concatenate([r for r, _ in parts])
        for field, _ in _RECORD:
            records[field] = base[field]
        records["key"] = keys_all
        records = records[np.lexsort((records["key"], records["cls"]))]
    bounds: dict[str, tuple[int, int]] = {}
    classes, starts, counts = np.unique(records["cls"], return_index=True, return_counts=True)
    for c, start, n in zip(classes.tolist(), starts.tolist(), counts.tolist()):
        bounds[ids[c]] = (start, start + n)
    return records, bounds


def fingerprint(index: RealIndex, show_progress: bool = False) -> str:
    """A stable hash of the real images: per class its names, sizes and modification times (folder layout), or
    per shard its name, size and modification time (WebDataset layout), plus the layout and class list.

    It changes when an image is added, removed, renamed or rewritten, so the run's config hash (and with it
    what the generated images were made from) follows the real images folder.
    """
    h = hashlib.sha256(f"{index.layout}\n".encode())
    if index.layout == WEBDATASET:
        for name in index.shards:
            st = (index.root / name).stat()
            h.update(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        h.update("\n".join(index.class_ids).encode())
        return h.hexdigest()
    with progress_bar(len(index.class_ids), "fingerprint real images", unit="class", enabled=show_progress) as bar:
        for class_id in index.class_ids:
            per_class = hashlib.sha256()
            if class_id not in index.missing_classes:
                folder = index.root / class_id
                for raw in index.names(class_id):
                    name = bytes(raw)
                    st = os.stat(folder / os.fsdecode(name))
                    per_class.update(name + f"\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            h.update(f"{class_id}\t{per_class.hexdigest()}\n".encode())
            bar.update(1)
    return h.hexdigest()


def load_real_image(ref: RealRef) -> Any:
    """Decode a real image as an RGB ``PIL.Image`` (fully loaded; the file is closed).

    Raises:
        UserError: the file is missing or not an image PIL can read (``unreadable image …`` naming it).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if ref.offset < 0:
            with Image.open(ref.path) as img:
                return img.convert("RGB")
        with open(ref.path, "rb") as f:
            f.seek(ref.offset)
            data = f.read(ref.size)
        if len(data) < ref.size:
            raise OSError("the tar member is cut short")
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise UserError(f"unreadable image {ref.describe()}: {reason}") from None
