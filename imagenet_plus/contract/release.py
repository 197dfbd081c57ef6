"""The release's description: ``REL/_info.json`` (timm's split format plus what made the release)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagenet_plus.contract.records import JsonRecord, dataclass_from_dict
from imagenet_plus.errors import UserError


@dataclass(frozen=True)
class SplitInfo:
    """One split of ``_info.json`` (timm's ``reader_wds`` format)."""

    name: str
    num_samples: int
    filenames: list[str]
    shard_lengths: list[int]


@dataclass(frozen=True)
class ReleaseInfo(JsonRecord):
    """``REL/_info.json``: the release's splits in timm's format plus what made it."""

    name: str
    fingerprint: str
    created: str
    image_ext: str
    num_classes: int
    classes: list[dict[str, Any]]
    config_hash: str | None
    splits: dict[str, SplitInfo] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path | str) -> ReleaseInfo:
        if not isinstance(data, Mapping):
            raise UserError(f"{source} is not a JSON object")
        splits = data.get("splits")
        if not isinstance(splits, Mapping):
            raise UserError(f"{source}: 'splits' must be an object of split name → split info")
        parsed = {}
        for name, s in splits.items():
            split = dataclass_from_dict(SplitInfo, s, f"{source} split {name!r}")
            if len(split.filenames) != len(split.shard_lengths):
                raise UserError(f"{source} split {name!r}: {len(split.filenames)} filenames but "
                                f"{len(split.shard_lengths)} shard_lengths")
            for fn in split.filenames:
                check_relative_name(fn, f"{source} split {name!r}")
            parsed[str(name)] = split
        return dataclass_from_dict(cls, {**data, "splits": parsed}, source)


def check_relative_name(name: Any, where: str) -> str:
    """A file name read from a release or a Hub repo: relative, no ``..``, no backslash, else an error."""
    text = str(name)
    parts = text.replace("\\", "/").split("/")
    if not text or text.startswith("/") or "\\" in text or any(p in ("", ".", "..") for p in parts) or ":" in parts[0]:
        raise UserError(f"{where}: file name {text!r} is not a plain relative path inside the release")
    return text


#: The member of a release sample's json that holds its scores.
SCORES_MEMBER = "scores"
