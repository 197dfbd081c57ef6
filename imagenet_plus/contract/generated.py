"""Generated shards: the sample's json fields, the shard stats record and the done rules of
``RUN/generated/NNNNN.{tar,json}``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.contract.names import GENERATED_PARTIAL_PATTERN, GENERATED_TAR_PATTERN
from imagenet_plus.contract.records import JsonRecord
from imagenet_plus.contract.typed import typed_from_dict


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
SAMPLE_FIELDS: dict[str, str] = {
    "class_id": "string", "class_name": "string", "label": "int64", "prompt": "string", "negative_prompt": "string",
    "seed": "int64", "model": "string", "scheduler": "string", "steps": "int64", "guidance": "float64",
    "width": "int64", "height": "int64", "attempt": "int64", "nsfw": "bool", "strategy": "string", "index": "int64",
}
