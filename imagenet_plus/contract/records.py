"""Typed records of the contract's JSON and YAML files, each with ``read`` and ``write``.

A record validates what it reads (a missing key or a wrong shape is a one-line error naming the file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from imagenet_plus.contract.columns import PASSED_REASONS
from imagenet_plus.contract.names import RECORDED_LIBRARIES, RUN_YAML
from imagenet_plus.contract.paths import RunPaths
from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import write_bytes_atomic, write_json_atomic


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the output."""
    out = {}
    for name in RECORDED_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def read_run_yaml(paths: RunPaths) -> dict[str, Any]:
    """Read ``RUN/run.yaml``."""
    import yaml

    try:
        data = yaml.safe_load(paths.run_yaml.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"unreadable {paths.run_yaml}: {exc}") from None
    if not isinstance(data, dict) or "config" not in data:
        raise UserError(f"{paths.run_yaml} is not a {RUN_YAML} written by imagenet-plus (no 'config' key)")
    return data


def write_run_yaml(paths: RunPaths, data: dict[str, Any]) -> None:
    """Write ``RUN/run.yaml`` atomically."""
    import yaml

    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    write_bytes_atomic(paths.run_yaml, text.encode("utf-8"))


def read_json(path: Path, what: str = "") -> Any:
    """Read a JSON file of the contract, naming it when it is missing or malformed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"unreadable {what + ' ' if what else ''}{path}: {exc}") from None


def read_class_records(paths: RunPaths) -> list[dict[str, Any]]:
    """The run's class set as plain dicts, in label order (see classes.read_classes_json for ClassInfo)."""
    return read_json(paths.classes_json)



class _JsonRecord:
    """``to_dict``/``write``/``read`` of a JSON file of the contract, for a dataclass with ``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def read(cls, path: Path) -> Any:
        return cls.from_dict(read_json(path), path)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SelectionSummary(_JsonRecord):
    """``RUN/selection.json``: what ``select`` kept and why (per class and overall)."""

    thresholds: dict[str, Any]
    per_class_quota: int
    pass_rate: dict[str, float]
    kept: dict[str, int]
    short: dict[str, int]
    dropped_classes: list[str]
    flagged_classes: list[str]
    reasons: dict[str, int]
    num_kept: int
    num_scored: int

    @property
    def num_passed(self) -> int:
        """Samples that passed every threshold (kept or over the quota)."""
        return sum(self.reasons.get(r, 0) for r in PASSED_REASONS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path | str) -> SelectionSummary:
        return _dataclass_from_dict(cls, data, source)



@dataclass(frozen=True)
class SplitInfo:
    """One split of ``_info.json`` (timm's ``reader_wds`` format)."""

    name: str
    num_samples: int
    filenames: list[str]
    shard_lengths: list[int]


@dataclass(frozen=True)
class ReleaseInfo(_JsonRecord):
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
            split = _dataclass_from_dict(SplitInfo, s, f"{source} split {name!r}")
            if len(split.filenames) != len(split.shard_lengths):
                raise UserError(f"{source} split {name!r}: {len(split.filenames)} filenames but "
                                f"{len(split.shard_lengths)} shard_lengths")
            for fn in split.filenames:
                check_relative_name(fn, f"{source} split {name!r}")
            parsed[str(name)] = split
        return _dataclass_from_dict(cls, {**data, "splits": parsed}, source)



def check_relative_name(name: Any, where: str) -> str:
    """A file name read from a release or a Hub repo: relative, no ``..``, no backslash, else an error."""
    text = str(name)
    parts = text.replace("\\", "/").split("/")
    if not text or text.startswith("/") or "\\" in text or any(p in ("", ".", "..") for p in parts) or ":" in parts[0]:
        raise UserError(f"{where}: file name {text!r} is not a plain relative path inside the release")
    return text


def _dataclass_from_dict(cls: Any, data: Any, source: Path | str) -> Any:
    if not isinstance(data, Mapping):
        raise UserError(f"{source} is not a JSON object")
    names = [f.name for f in fields(cls)]
    missing = [n for n in names if n not in data and _required(cls, n)]
    if missing:
        raise UserError(f"{source} lacks key(s) {', '.join(missing)}")
    return cls(**{n: data[n] for n in names if n in data})


def _required(cls: Any, name: str) -> bool:
    from dataclasses import MISSING

    f = next(f for f in fields(cls) if f.name == name)
    return f.default is MISSING and f.default_factory is MISSING
