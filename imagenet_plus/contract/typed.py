"""Typed reading of the contract's JSON records: every key present and of its declared type.

:func:`typed_from_dict` builds a frozen dataclass from a JSON mapping the way
:func:`~imagenet_plus.contract.records.dataclass_from_dict` does, and also checks each value against the
field's annotation (``int``, ``float``, ``str``, ``bool``, ``X | None``, ``list[X]``, ``dict[str, X]``,
``Any`` and nested record dataclasses, recursively). A file that lacks a key or holds a value of the
wrong type is one :class:`~imagenet_plus.errors.UserError` line naming the file and the key.

Written by hand rather than with pydantic or a JSON-schema validator: the records are frozen dataclasses
with a handful of plain types, and the values are kept exactly as read (an ``int`` where a ``float`` is
declared stays an ``int``), so that ``to_dict()`` of a record read from a file gives back that file.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imagenet_plus.contract.records import JsonRecord
from imagenet_plus.errors import UserError

_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


class TypedRecord(JsonRecord):
    """A :class:`JsonRecord` whose ``from_dict`` (and so ``read``) checks every key and value type."""

    @classmethod
    def from_dict(cls, data: Any, source: Path | str) -> Any:
        return typed_from_dict(cls, data, source)


def typed_values(cls: Any, data: Any, source: Path | str, where: str = "", *, skip: tuple[str, ...] = (),
                 refuse_unknown: bool = False) -> dict[str, Any]:
    """The fields of the record dataclass ``cls`` read from ``data``, each checked against its annotation.

    Args:
        cls: a dataclass whose fields are annotated with the supported types.
        data: the JSON/YAML value read from ``source``.
        source: the file, named in errors.
        where: the path of ``data`` inside the file (``per_class.n01440764.``), for nested records.
        skip: fields the caller parses itself (their presence is still checked).
        refuse_unknown: a key that is not a field is an error (files a user may edit by hand, like run.yaml);
            otherwise it is ignored (a newer writer may add some).

    Returns:
        ``{field: value}`` for the fields ``data`` holds (optional ones may be absent).

    Raises:
        UserError: ``data`` is not an object, lacks a required key, has an unknown one (``refuse_unknown``), or
            holds a value of the wrong type.
    """
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: {repr(where.rstrip('.')) if where else 'the top level'} is not a mapping")
    hints = _type_hints(cls)
    fields = dataclasses.fields(cls)
    if refuse_unknown:
        names = [f.name for f in fields]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise UserError(f"{source}: unknown key '{where}{unknown[0]}' (known keys: {', '.join(names)})")
    missing = [where + f.name for f in fields if f.name not in data and _required(f)]
    if missing:
        raise UserError(f"{source}: missing key(s) {', '.join(repr(m) for m in missing)}")
    return {f.name: data[f.name] if f.name in skip else _checked(data[f.name], hints[f.name], source, where + f.name)
            for f in fields if f.name in data}


def typed_from_dict(cls: Any, data: Any, source: Path | str, where: str = "", *, refuse_unknown: bool = False) -> Any:
    """Build the record dataclass ``cls`` from ``data``, checking keys and value types (see :func:`typed_values`)."""
    return cls(**typed_values(cls, data, source, where, refuse_unknown=refuse_unknown))


@functools.cache
def _type_hints(cls: Any) -> dict[str, Any]:
    """``typing.get_type_hints`` of a record class, once (it evaluates every annotation: most of a small read)."""
    return typing.get_type_hints(cls)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(annotation))
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(annotation):
        return "an object"
    return _NAMES.get(annotation, str(annotation))


def _checked(value: Any, annotation: Any, source: Path | str, where: str) -> Any:
    """``value`` if it fits ``annotation`` (nested records built), else a ``UserError`` naming ``where``."""
    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None) and _fits(value, arg):
                return _checked(value, arg, source, where)
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(annotation)
            return [_checked(v, item, source, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            _key, item = typing.get_args(annotation)
            return {k: _checked(v, item, source, f"{where}.{k}") for k, v in value.items()}
    elif dataclasses.is_dataclass(annotation):
        if isinstance(value, Mapping):
            return typed_from_dict(annotation, value, source, f"{where}.")
    elif _fits(value, annotation):
        return value
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise UserError(f"{source}: key '{where}' must be {_describe(annotation)}, got {shown}")


def _fits(value: Any, annotation: Any) -> bool:
    """Whether ``value`` has the outer type of ``annotation`` (containers are checked item by item later)."""
    origin = typing.get_origin(annotation)
    if origin is list:
        return isinstance(value, list)
    if origin is dict or dataclasses.is_dataclass(annotation):
        return isinstance(value, Mapping)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    raise TypeError(f"record field type {annotation!r} is not supported by typed_from_dict")
