"""The run directory: one folder per generation run, shared by every stage.

```
RUN/run.yaml              resolved config + config hash + library versions + plan segments
RUN/classes.json          the resolved class set, in label order
RUN/generated/00000.tar   finished shard (+ 00000.json stats); *.partial while being written
RUN/scores/00000.parquet  per-sample scores (+ .npy features), RUN/scores/summary.json
RUN/selection.parquet     every key: kept yes/no and the reason (+ selection.json summary)
RUN/report/index.html     the report
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from imagenet_plus.errors import UserError

#: Libraries whose versions are recorded in run.yaml and the dataset card.
RECORDED_LIBRARIES = (
    "imagenet-plus",
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "webdataset",
    "datasets",
    "huggingface-hub",
    "timm",
    "torch-fidelity",
    "torchmetrics",
    "nltk",
)


@dataclass(frozen=True)
class RunPaths:
    """Paths inside a run directory (nothing is created by building this)."""

    root: Path

    @property
    def run_yaml(self) -> Path:
        return self.root / "run.yaml"

    @property
    def classes_json(self) -> Path:
        return self.root / "classes.json"

    @property
    def generated(self) -> Path:
        return self.root / "generated"

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    @property
    def summary_json(self) -> Path:
        return self.root / "scores" / "summary.json"

    @property
    def selection_parquet(self) -> Path:
        return self.root / "selection.parquet"

    @property
    def selection_json(self) -> Path:
        return self.root / "selection.json"

    @property
    def report(self) -> Path:
        return self.root / "report"


def run_paths(run: str | Path, must_exist: bool = True) -> RunPaths:
    """Check that ``run`` is a run directory (has run.yaml) and return its paths.

    Raises:
        UserError: ``run`` is not a folder, or has no run.yaml (``generate`` was not run there).
    """
    root = Path(run)
    if must_exist:
        if not root.is_dir():
            raise UserError(f"run directory not found: {root}")
        if not (root / "run.yaml").is_file():
            raise UserError(f"{root} is not a run directory (no run.yaml): run 'imagenet-plus generate' first")
    return RunPaths(root)


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
        raise UserError(f"{paths.run_yaml} is not a run.yaml written by imagenet-plus (no 'config' key)")
    return data


def write_run_yaml(paths: RunPaths, data: dict[str, Any]) -> None:
    """Write ``RUN/run.yaml`` atomically."""
    import yaml

    from imagenet_plus.shards import write_bytes_atomic

    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    write_bytes_atomic(paths.run_yaml, text.encode("utf-8"))


def read_class_records(paths: RunPaths) -> list[dict[str, Any]]:
    """The run's class set as plain dicts, in label order (see classes.read_classes_json for ClassInfo)."""
    try:
        return json.loads(paths.classes_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"unreadable {paths.classes_json}: {exc}") from None
