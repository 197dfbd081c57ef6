"""Loading frozen config dataclasses from YAML files and CLI flags, validated on load.

Every stage has one frozen dataclass for its settings. This module turns a mapping (a YAML file, a
YAML section, or the flags a user gave) into such a dataclass: keys may be written as the CLI flag
(``images-per-class``) or as the field (``images_per_class``); unknown keys and values of the wrong
type are rejected with a :class:`~imagenet_plus.errors.UserError` naming the key and the source.
Range checks live in each dataclass's ``__post_init__`` and raise ``UserError`` too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from imagenet_plus.errors import UserError

T = TypeVar("T")


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping.

    Args:
        path: the YAML file.

    Returns:
        The mapping (an empty file gives ``{}``).

    Raises:
        UserError: the file is missing, is not valid YAML, or its top level is not a mapping.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{p}: malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a UTF-8 text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: the top level must be a mapping of keys to values, got {type(data).__name__}")
    return data


def field_name(key: str) -> str:
    """``images-per-class`` → ``images_per_class`` (flags and fields are the same names)."""
    return str(key).strip().lstrip("-").replace("-", "_")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert ``value`` to the annotated type (int, float, str, bool, Optional, tuple[str, ...])."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except UserError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_type, where) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where}: expected a string, got {value!r}")
    return value


def config_from_mapping(cls: type[T], mapping: Mapping[str, Any], source: str) -> T:
    """Build the frozen dataclass ``cls`` from ``mapping``, validating every key.

    Args:
        cls: a dataclass type whose fields are the accepted keys.
        mapping: keys as flags or field names; ``None`` values mean "use the default".
        source: where the mapping came from (a file name, ``"command line"``), used in errors.

    Returns:
        The dataclass instance (its ``__post_init__`` ran the range checks).

    Raises:
        UserError: an unknown key, or a value of the wrong type or out of range.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for raw_key, value in mapping.items():
        name = field_name(raw_key)
        if name not in fields or not fields[name].init:
            known = ", ".join(sorted(k.replace("_", "-") for k, f in fields.items() if f.init))
            raise UserError(f"{source}: unknown key '{raw_key}' (known keys: {known})")
        if value is None:
            continue
        values[name] = _coerce(value, hints[name], f"{source}: key '{raw_key}'")
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise UserError(f"{source}: {exc}") from None


def merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Flags override the file: keys normalised to field names, ``None`` overrides ignored."""
    merged = {field_name(k): v for k, v in base.items()}
    merged.update({field_name(k): v for k, v in overrides.items() if v is not None})
    return merged


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as plain YAML/JSON-friendly values (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def stable_hash(data: Any) -> str:
    """A short hash of JSON-able data, stable across runs and machines."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def require_positive(source: str, **values: int | float | None) -> None:
    """Raise ``UserError`` naming the first value that is not strictly positive."""
    for name, value in values.items():
        if value is not None and value <= 0:
            raise UserError(f"{source}: '{name.replace('_', '-')}' must be positive, got {value}")


#: Keys of a config file that hold the settings of later stages (read by ``imagenet-plus run``).
STAGE_SECTIONS = ("score", "diagnose", "select", "release", "report", "evaluate", "publish")


def split_config_file(path: str | Path | None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Read a config file into (generate keys, {stage section: keys})."""
    if path is None:
        return {}, {}
    data = load_yaml_mapping(path)
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in data.items():
        if key in STAGE_SECTIONS:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise UserError(f"{path}: section '{key}' must be a mapping, got {type(value).__name__}")
            sections[key] = value
        else:
            top[key] = value
    return top, sections
