"""The base of the contract's typed records: reading JSON with a one-line error, ``read``/``write``/``to_dict``,
and building a dataclass from a mapping with its keys checked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any

from imagenet_plus.errors import UserError
from imagenet_plus.io import atomic  # the module: io.atomic imports contract.names, which runs this package
from imagenet_plus.io.storage import location


def read_json(path: Path, what: str = "") -> Any:
    """Read a JSON file of the contract, naming it when it is missing or malformed."""
    try:
        return json.loads(location(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"unreadable {what + ' ' if what else ''}{path}: {exc}") from None


class JsonRecord:
    """``to_dict``/``write``/``read`` of a JSON file of the contract, for a dataclass with ``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def write(self, path: Path) -> None:
        atomic.write_json_atomic(path, self.to_dict())

    @classmethod
    def read(cls, path: Path) -> Any:
        return cls.from_dict(read_json(path), path)  # type: ignore[attr-defined]


def dataclass_from_dict(cls: Any, data: Any, source: Path | str) -> Any:
    if not isinstance(data, Mapping):
        raise UserError(f"{source} is not a JSON object")
    names = [f.name for f in fields(cls)]
    missing = [n for n in names if n not in data and _required(cls, n)]
    if missing:
        raise UserError(f"{source} lacks key(s) {', '.join(missing)}")
    return cls(**{n: data[n] for n in names if n in data})


def _required(cls: Any, name: str) -> bool:
    f = next(f for f in fields(cls) if f.name == name)
    return f.default is MISSING and f.default_factory is MISSING
