"""Generated shards: the sample's json fields, the shard stats record and the done rules of
``RUN/generated/NNNNN.{tar,json}``.

Done: a shard is done when its tar and its stats JSON both exist (:func:`generated_done`, the cheap rule every
stage lists shards by). Every reader of a done shard compares the samples it read with the stats' ``count``
(:func:`expected_count`); generate, before it skips a shard, also counts its samples from the tar headers
(:func:`shard_problem`), so a shard zero-filled or cut after it was made is made again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.contract.names import (
    GENERATED_PARTIAL_PATTERN,
    GENERATED_TAR_PATTERN,
    MEMBER_NAME_PATTERN,
)
from imagenet_plus.contract.records import JsonRecord
from imagenet_plus.contract.typed import typed_from_dict
from imagenet_plus.errors import CorruptShard, UserError
from imagenet_plus.io.tar import count_mismatch, count_samples


@dataclass(frozen=True)
class ShardStats(JsonRecord):
    """``RUN/generated/NNNNN.json``: what making one shard took (written after its tar: it marks the shard done).

    Attributes:
        shard: the shard's stem (``00007``).
        count: samples in the shard.
        first_key: key of its first sample; ``last_key`` of its last.
        failures: samples still NSFW-flagged or black after every attempt (kept, listed in ``failed_keys``).
        regenerated: regeneration attempts by cause (``nsfw``, ``black``).
        seconds: time to make the shard; ``images_per_second`` the rate (None for a zero time).
        rank: the process that made it.
        model: the generating model.
    """

    shard: str
    count: int
    first_key: str
    last_key: str
    failures: int
    failed_keys: list[str]
    regenerated: dict[str, int]
    seconds: float
    images_per_second: float | None
    rank: int
    model: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path | str) -> ShardStats:
        return typed_from_dict(cls, data, source, refuse_unknown=True)


def stats_path(tar: Path) -> Path:
    """The stats JSON beside a generated shard (``00007.tar`` → ``00007.json``)."""
    return tar.with_suffix(".json")


def generated_done(tar: Path) -> bool:
    """A generated shard is done when its ``.tar`` and its stats ``.json`` both exist."""
    return tar.is_file() and stats_path(tar).is_file()


def member_key(name: str) -> str | None:
    """The sample key of a tar member name, as webdataset groups members (``None``: no extension, skipped)."""
    match = MEMBER_NAME_PATTERN.match(name)
    return None if match is None else match.group(1)


def expected_count(tar: Path) -> int:
    """The number of samples a generated shard holds by its stats: what every reader of the shard checks.

    Raises:
        CorruptShard: the shard has no stats JSON (it is not done: generate makes it again).
        UserError: the stats JSON does not read back (naming it).
    """
    stats = stats_path(tar)
    if not stats.is_file():
        raise CorruptShard(tar, f"it has no stats file {stats.name}, so it is not finished: run 'imagenet-plus "
                                f"generate --out {tar.parent.parent}' to make it again")
    return ShardStats.read(stats).count


def shard_problem(tar: Path) -> str | None:
    """Why a generated shard is not done, or ``None`` when it is (generate's rule, checked before it skips one).

    Done: the tar and its stats exist, the stats read back, and the samples counted from the tar's headers
    (:func:`~imagenet_plus.io.tar.count_samples`: data skipped) equal the stats' ``count``. A shard failing this
    was written by generate, so generate may replace it. Cost, stats read included: ~2.3 ms a shard of 256
    samples of 20 KB, ~11 s for ImageNet's 5,000 shards in one process (``benchmarks/tar_count.py``).
    """
    if not generated_done(tar):
        return "not finished"
    try:
        expected = ShardStats.read(stats_path(tar)).count
        found = count_samples(tar, member_key)
    except UserError as exc:
        return exc.message
    return None if found == expected else count_mismatch(tar, found, expected).message


def stats_digest(tar: Path) -> str | None:
    """SHA-256 of a generated shard's stats JSON (``None`` without one): which making of the shard scores belong to.

    A shard made again (after its stats went missing, or it was found corrupt) gets new stats (its timing), so
    scores recorded with the old digest are stale.
    """
    try:
        return hashlib.sha256(stats_path(tar).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def clean_partials(folder: Path) -> list[Path]:
    """Delete leftovers of a killed writer, and only those: files named as the project names them
    (``00007.tar.partial``, ``00007.json.partial``: :data:`~imagenet_plus.contract.names.GENERATED_PARTIAL_PATTERN`)
    and shard tars (``00007.tar``) that have no stats JSON. Any other file is left alone."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.iterdir()):
        leftover = GENERATED_PARTIAL_PATTERN.match(p.name) or (GENERATED_TAR_PATTERN.match(p.name)
                                                               and not generated_done(p))
        if leftover and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def done_shards(folder: Path) -> list[Path]:
    """The finished shards of a folder (``.tar`` with its ``.json`` beside it), sorted by name."""
    if not folder.is_dir():
        return []
    return [t for t in sorted(folder.glob("*.tar")) if generated_done(t)]


#: Fields of a generated sample's ``json`` member and their ``datasets`` dtypes (release shards add ``scores``).
#: ``guidance`` is the value the image was made with (one drawn per image from a guidance range).
SAMPLE_FIELDS: dict[str, str] = {
    "class_id": "string", "class_name": "string", "label": "int64", "prompt": "string", "negative_prompt": "string",
    "seed": "int64", "model": "string", "scheduler": "string", "steps": "int64", "guidance": "float64",
    "width": "int64", "height": "int64", "attempt": "int64", "nsfw": "bool", "strategy": "string", "index": "int64",
    "source": "string", "caption": "string", "init_strength": "float64",
}
#: Fields only the samples of a run that read real images (``generate --real``) carry, every one of them (null where
#: unused): the real image paired with it (its path relative to the real images folder, or its tar key), the caption
#: of that image in its prompt, and the img2img strength it was made with. A run without real images has none of
#: them, so its samples are what they were before real images existed.
REAL_IMAGE_FIELDS = ("source", "caption", "init_strength")
#: The fields every sample carries.
COMMON_SAMPLE_FIELDS: dict[str, str] = {k: v for k, v in SAMPLE_FIELDS.items() if k not in REAL_IMAGE_FIELDS}


def real_image_fields(source: str | None, caption: str | None, init_strength: float | None) -> dict[str, Any]:
    """The :data:`REAL_IMAGE_FIELDS` of one sample of a run that read real images (None where unused)."""
    return dict(zip(REAL_IMAGE_FIELDS, (source, caption, init_strength)))
