"""Labelled image sources for ``evaluate``: a release's tars and image folders, as a map-style dataset.

A release is read through its ``_info.json`` (:func:`imagenet_plus.data.read_release_info`, the contract's
:class:`~imagenet_plus.contract.ReleaseInfo` checks) and its shards' headers (:func:`imagenet_plus.io.tar.scan_tar`);
each sample's class id comes from its key (the contract's key rule, :func:`~imagenet_plus.contract.class_id_of_key`).
Image folders follow torchvision's ``ImageFolder`` layout (one subfolder per class id) and accept the contract's
:data:`~imagenet_plus.contract.READ_IMAGE_EXTENSIONS`.

Preprocessing keeps aspect ratio. Real photos are rarely square and synthetic images always are, and a model
trained on square, centred synthetic images transfers worse to photos. Training images are therefore cropped to
a random photo-like aspect ratio and area, resized so the longer side fits, and placed at a random offset on a
square canvas (random margins); test images are letterboxed the same way, centred, without randomness.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.contract import (
    GENERATED_DIR,
    INFO_NAME,
    READ_IMAGE_EXTENSIONS,
    RELEASE_DATA_DIR,
    RUN_YAML,
    class_id_of_key,
    split_member_name,
)
from imagenet_plus.data import read_release_info, shard_urls
from imagenet_plus.errors import CorruptShard, UserError
from imagenet_plus.io.storage import local_copy, open_binary
from imagenet_plus.io.tar import scan_tar

#: ImageNet mean colour, the fill of letterbox margins.
FILL_RGB = (124, 116, 104)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Most tar files one process keeps open while reading release shards (least recently used closed first).
MAX_OPEN_SHARDS = 32
#: File extensions of images in an image folder (torchvision matches them case-insensitively).
_FILE_EXTENSIONS = tuple(f".{e}" for e in READ_IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class TarMember:
    """One image inside a tar: read by seeking to its data, so tars work as a map-style dataset."""

    tar: str
    offset: int
    size: int


@dataclass
class LabeledSet:
    """Images with class ids, in a fixed order."""

    name: str
    sources: list[Any]  # Path or TarMember
    class_ids: list[str]  # one per source

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.class_ids))




def _is_json_member(name: str) -> bool:
    return name.endswith(".json")


def read_release(rel: Path, split: str = "train") -> LabeledSet:
    """Index the images of a release split by tar offsets (headers only; ``json`` read when keys lack ids).

    Raises:
        UserError: no ``_info.json`` (or one that fails the contract's checks), a listed shard missing, a corrupt
            shard (:class:`~imagenet_plus.errors.CorruptShard`), or a sample without an image member.
    """
    info = read_release_info(rel)
    shards = [Path(u) for u in shard_urls(rel, split, info)]
    for shard in shards:
        if not shard.is_file():
            raise UserError(f"{rel / INFO_NAME} lists shard {shard.relative_to(rel).as_posix()!r} that is not in {rel}")
    sources: list[Any] = []
    class_ids: list[str] = []
    for shard in shards:
        for key, parts in _shard_samples(shard).items():
            image = next((parts[e] for e in READ_IMAGE_EXTENSIONS if e in parts), None)
            if image is None:
                raise UserError(f"{shard}: sample {key!r} has no image member")
            cid = class_id_of_key(key.rsplit("/", 1)[-1])
            if cid is None and "json" in parts:
                try:
                    cid = str(json.loads(parts["json"].data).get("class_id", "")) or None
                except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
                    raise CorruptShard(shard, f"the json of sample {key!r} is not a JSON object ({exc})") from None
            if cid is None:
                raise UserError(f"{shard}: cannot tell the class id of sample {key!r}")
            sources.append(TarMember(str(shard), image.offset, image.size))
            class_ids.append(cid)
    return LabeledSet(str(rel), sources, class_ids)


def _shard_samples(shard: Path) -> dict[str, dict[str, Any]]:
    """key → {member extension (lower case) → :class:`imagenet_plus.io.tar.TarMember`}, as webdataset groups them."""
    by_key: dict[str, dict[str, Any]] = {}
    try:
        with open_binary(shard) as f:
            for m in scan_tar(f, str(shard), wanted=_is_json_member):
                try:
                    key, ext = split_member_name(m.name)
                except UserError as exc:
                    raise CorruptShard(shard, exc.message) from None
                by_key.setdefault(key, {})[ext.lower()] = m
    except OSError as exc:
        raise CorruptShard(shard, str(exc)) from None
    return by_key


def read_image_folder(folder: Path, role: str) -> LabeledSet:
    """Index an image folder with one subfolder per class id (torchvision's ImageFolder layout).

    Raises:
        UserError: the folder is missing or holds no images in class subfolders.
    """
    from torchvision.datasets.folder import make_dataset

    if not folder.is_dir():
        raise UserError(f"{role} folder not found: {folder}")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    items = make_dataset(
        str(folder), {c: i for i, c in enumerate(classes)}, extensions=_FILE_EXTENSIONS, allow_empty=True
    ) if classes else []
    if not items:
        raise UserError(
            f"{role} folder {folder} holds no images: expected one subfolder per class id "
            f"(e.g. {folder}/n01440764/*.JPEG)"
        )
    return LabeledSet(str(folder), [Path(p) for p, _ in items], [classes[i] for _, i in items])


def read_training_set(path: Path) -> LabeledSet:
    """A release folder (has ``_info.json``, or tar shards in ``data/``) or an image folder."""
    if not path.exists():
        raise UserError(f"train folder not found: {path}")
    if (path / RUN_YAML).is_file() and (path / GENERATED_DIR).is_dir():
        raise UserError(
            f"{path} is a run directory: release it first ('imagenet-plus release {path} --out REL') "
            "and pass --train REL"
        )
    if (path / INFO_NAME).is_file() or any((path / RELEASE_DATA_DIR).glob("*.tar")):
        return read_release(path, "train")  # without _info.json: the contract's one-line "not a release folder"
    return read_image_folder(path, "train")


def _name_some(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def match_classes(train: LabeledSet, other: LabeledSet, role: str) -> None:
    """Every class of ``other`` must be a class of ``train`` (matched by class id).

    Raises:
        UserError: naming the classes of ``other`` that the training set lacks.
    """
    missing = sorted(set(other.classes) - set(train.classes))
    if missing:
        raise UserError(
            f"{role} set {other.name} has classes the training set {train.name} lacks: {_name_some(missing)} "
            f"(training classes: {_name_some(train.classes, 4)}); folders must be named by class id"
        )


class ImageDataset:
    """A map-style torch dataset over :class:`LabeledSet` sources (files or tar members).

    Tar members are read by seeking in their shard; at most ``max_open`` shards stay open per process (a
    least-recently-used cache of handles), whatever the number of shards.
    """

    def __init__(self, sources: list[Any], labels: list[int], transform: Any,
                 max_open: int = MAX_OPEN_SHARDS) -> None:
        self.sources = sources
        self.labels = labels
        self.transform = transform
        self.max_open = max(1, max_open)
        self._handles: OrderedDict[tuple[int, str], Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self.sources)

    def _read(self, src: Any) -> bytes:
        if isinstance(src, TarMember):
            # One handle per process: forked DataLoader workers must not share a file offset.
            key = (os.getpid(), src.tar)
            f = self._handles.get(key)
            if f is None:
                for old in [k for k in self._handles if k[0] != key[0]]:  # inherited from the parent: not ours
                    del self._handles[old]
                while len(self._handles) >= self.max_open:
                    self._handles.popitem(last=False)[1].close()
                f = self._handles[key] = open_binary(local_copy(src.tar))
            else:
                self._handles.move_to_end(key)
            f.seek(src.offset)
            data = f.read(src.size)
            if len(data) != src.size:
                raise CorruptShard(src.tar, f"the image at byte {src.offset} is cut short")
            return data
        return Path(src).read_bytes()

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image, UnidentifiedImageError

        src = self.sources[i]
        try:
            img = Image.open(io.BytesIO(self._read(src))).convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"unreadable image {src}: {exc}") from None
        return self.transform(img), self.labels[i]


class AspectPreservingTransform:
    """Letterbox to a square keeping aspect ratio; in training, random photo-like crops and margins.

    torchvision has no letterbox transform (``Resize`` + ``CenterCrop`` cuts, ``Resize((s, s))``
    distorts), so the geometry is chosen here and done with torchvision's functional ops.

    Args:
        size: output side in pixels.
        train: random crop (area ``min_crop``..1, aspect 3:4..4:3), random margins, random flip.
        min_crop: smallest crop area as a fraction of the image.
        max_margin: largest total margin as a fraction of the side.
    """

    def __init__(self, size: int, train: bool, min_crop: float = 0.5, max_margin: float = 0.2) -> None:
        self.size = size
        self.train = train
        self.min_crop = min_crop
        self.max_margin = max_margin

    def __call__(self, img: Any) -> Any:
        import torch
        from torchvision.transforms import v2
        from torchvision.transforms.v2 import functional as F

        if self.train:
            top, left, h, w = v2.RandomResizedCrop.get_params(img, scale=(self.min_crop, 1.0), ratio=(3 / 4, 4 / 3))
            img = F.crop(img, top, left, h, w)
            if random.random() < 0.5:
                img = F.horizontal_flip(img)
            inner = max(8, round(self.size * (1.0 - random.uniform(0.0, self.max_margin))))
        else:
            inner = self.size
        w, h = img.size
        scale = inner / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        img = F.resize(img, [nh, nw], antialias=True)
        dx, dy = self.size - nw, self.size - nh
        left = random.randint(0, dx) if self.train else dx // 2
        top = random.randint(0, dy) if self.train else dy // 2
        img = F.pad(img, [left, top, dx - left, dy - top], fill=list(FILL_RGB))
        t = F.to_dtype(F.to_image(img), torch.float32, scale=True)
        return F.normalize(t, list(IMAGENET_MEAN), list(IMAGENET_STD))
