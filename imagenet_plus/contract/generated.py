"""Generated shards: the sample's json fields, the shard stats record and the done rules of
``RUN/generated/NNNNN.{tar,json}``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.contract.names import PARTIAL_SUFFIX
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
    """Delete leftovers of a killed writer: ``*.partial`` files and tars that have no stats JSON."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.glob(f"*{PARTIAL_SUFFIX}")):
        p.unlink(missing_ok=True)
        removed.append(p)
    for tar in sorted(folder.glob("*.tar")):
        if not generated_done(tar):
            tar.unlink(missing_ok=True)
            removed.append(tar)
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
