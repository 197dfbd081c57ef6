"""Settings of every stage: declared once, as fields of a frozen dataclass, loaded from YAML and flags.

Every stage has one frozen dataclass for its settings. A field declared with :func:`setting` carries its
help text; from it come the stage's command-line options (:func:`config_options`, used by ``cli.py``:
``--images-per-class`` for ``images_per_class``) and its YAML keys (``images-per-class`` or
``images_per_class``), so a setting is written once. :func:`config_from_mapping` turns a mapping (a YAML
file, a YAML section, or the flags a user gave) into the dataclass; unknown keys and values of the wrong
type are a :class:`~imagenet_plus.errors.ConfigError` naming the key and the source. Range checks live
in each dataclass's ``__post_init__`` and raise ``ConfigError`` too. :func:`load_config` is the one
loader: a file's mapping, overridden by the flags given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from imagenet_plus.errors import ConfigError, UserError
from imagenet_plus.io.storage import location, remote_errors

T = TypeVar("T")

#: Key of a field's metadata that holds its :class:`Setting`.
SETTING = "imagenet_plus.setting"


@dataclasses.dataclass(frozen=True)
class Setting:
    """How a config field is offered to users: its help text, and whether it is a command-line option.

    Attributes:
        help: one line for ``--help`` (and the docs).
        cli: offered as ``--field-name`` (a setting only a config file gives, like a nested mapping, is not).
    """

    help: str
    cli: bool = True


def setting(default: Any = dataclasses.MISSING, help: str = "", *, cli: bool = True,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A config dataclass field with its help text: the one place a stage setting is declared.

    ``batch_size: int = setting(32, "Images per network batch.")`` gives the YAML key ``batch-size`` /
    ``batch_size`` and the option ``--batch-size`` with that help.
    """
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={SETTING: Setting(help=help, cli=cli)})


def settings_of(cls: type) -> dict[str, Setting]:
    """The declared settings of a config dataclass, in field order (fields without :func:`setting` are internal)."""
    out = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        spec = f.metadata.get(SETTING)
        if spec is not None and f.init:
            out[f.name] = spec
    return out


def flag_name(field: str) -> str:
    """``images_per_class`` → ``--images-per-class``."""
    return "--" + field.replace("_", "-")


def _option_type(annotation: Any) -> Any:
    """The type a command-line option of a field takes (``None`` = the field's default, so always Optional)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _option_type(args[0])
        return str  # a union of several types (e.g. a number or a range) is parsed by the config's coercion
    if origin is tuple:
        return str  # a comma list
    if annotation in (int, float, str, bool):
        return annotation
    return str


def config_options(cls: type) -> list[Any]:
    """``inspect.Parameter``s for typer: one ``--flag`` per declared setting of ``cls``, each defaulting to None.

    An option left out is None, so the config file's value (or the dataclass default) stands. Booleans get
    ``--flag/--no-flag``.
    """
    import inspect
    from typing import Annotated, Optional

    import typer

    hints = typing.get_type_hints(cls)
    params = []
    for name, spec in settings_of(cls).items():
        if not spec.cli:
            continue
        kind = _option_type(hints[name])
        decl = f"{flag_name(name)}/--no-{name.replace('_', '-')}" if kind is bool else flag_name(name)
        annotation = Annotated[Optional[kind], typer.Option(decl, help=spec.help)]  # noqa: UP045 (typer < 0.20)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return params


def with_config_options(*classes: type) -> Any:
    """Decorate a typer command so it also takes every setting of ``classes`` as an option.

    The command keeps its own parameters (positional arguments, ``--config``, ``--out``, …) and gets one more,
    ``flags``: ``{field: value}`` of the settings given on the command line (left-out options are absent).
    """
    import functools
    import inspect

    def decorate(func: Any) -> Any:
        own = [p for p in inspect.signature(func).parameters.values() if p.name != "flags"]
        own_hints = typing.get_type_hints(func, include_extras=True)
        extra: list[Any] = []
        for cls in classes:
            extra += [p for p in config_options(cls) if p.name not in {q.name for q in own + extra}]
        names = {p.name for p in extra}

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            flags = {k: v for k, v in kwargs.items() if k in names and v is not None}
            return func(**{k: v for k, v in kwargs.items() if k not in names}, flags=flags)

        params = [p.replace(annotation=own_hints.get(p.name, p.annotation)) for p in own]
        command.__signature__ = inspect.Signature(params + extra)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params + extra}
        del command.__wrapped__  # typer must read the new signature, not the wrapped function's
        return command

    return decorate


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

    p = location(path)
    with remote_errors(p):
        found = p.is_file()
    if not found:
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
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_type, where) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
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
        ConfigError: an unknown key, or a value of the wrong type or out of range (every message starts with
            ``source``, range checks of ``__post_init__`` included).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for raw_key, value in mapping.items():
        name = field_name(raw_key)
        if name not in fields or not fields[name].init:
            known = ", ".join(sorted(k.replace("_", "-") for k, f in fields.items() if f.init))
            raise ConfigError(f"{source}: unknown key '{raw_key}' (known keys: {known})")
        if value is None:
            continue
        values[name] = _coerce(value, hints[name], f"{source}: key '{raw_key}'")
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{source}: {exc}") from None
    except UserError as exc:  # a range check of __post_init__: a ConfigError named with the source too
        if "source" in values:  # a record that carries its source names it in its own errors (select's thresholds)
            raise
        raise ConfigError(f"{source}: {exc.message}") from None


def load_config(cls: type[T], file_mapping: Mapping[str, Any] | None, flags: Mapping[str, Any] | None,
                source: str) -> T:
    """The one config loader: a file's (or section's) keys, overridden by the flags given, as ``cls``.

    Errors in the file's keys name ``source``; a bad flag value names ``command line``.

    Raises:
        ConfigError: an unknown key, a wrong type, a value out of range.
    """
    file_mapping = dict(file_mapping or {})
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    if not flags:
        return config_from_mapping(cls, file_mapping, source)
    if file_mapping:
        config_from_mapping(cls, file_mapping, source)  # a bad key of the file is named with the file
    return config_from_mapping(cls, merge_config(file_mapping, flags), "command line" if not file_mapping else source)


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
            raise ConfigError(f"{source}: '{name.replace('_', '-')}' must be positive, got {value}")


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


def env_seconds(name: str) -> float | None:
    """The positive number of seconds the environment variable ``name`` holds, or None when it is unset or blank.

    Raises:
        UserError: the variable holds anything else (one line naming it and its value).
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:  # also refuses nan
        raise UserError(f"{name}={raw!r}: expected a positive number of seconds")
    return seconds
