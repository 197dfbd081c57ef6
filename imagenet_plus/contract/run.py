"""The run record and class set: ``RUN/run.yaml`` (written first) and ``RUN/classes.json``."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from imagenet_plus.contract.names import RECORDED_LIBRARIES, RUN_YAML
from imagenet_plus.contract.paths import RunPaths
from imagenet_plus.contract.records import read_json
from imagenet_plus.errors import UserError
from imagenet_plus.io import atomic  # the module: io.atomic imports contract.names, which runs this package


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
    atomic.write_bytes_atomic(paths.run_yaml, text.encode("utf-8"))


def read_class_records(paths: RunPaths) -> list[dict[str, Any]]:
    """The run's class set as plain dicts, in label order (see classes.read_classes_json for ClassInfo)."""
    return read_json(paths.classes_json)
