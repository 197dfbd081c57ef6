"""One answer to "is this output current?": a stage's fingerprint against the one it recorded.

Each stage declares what its outputs are made from, as :class:`StageInputs`: its settings (what changes
its outputs), the stages it reads (their recorded fingerprints stand for their outputs) and any other
input files (identified by name, size and modification time, never read: cheap at ImageNet size). The
fingerprint is the hash of that declaration. A stage is **current** when ``RUN/state/{stage}.json``
(:class:`~imagenet_plus.contract.state.StageState`, written last) holds the same fingerprint and its
declared outputs exist. ``imagenet-plus run`` and the stage itself ask the same question through
:func:`is_current`, so they cannot disagree; a stage that ran records itself with :func:`mark_current`.

A stage that reads another depends on the other's fingerprint, not on its files: re-running a stage
that rewrites the same outputs from the same inputs changes nothing downstream, and a changed input
anywhere upstream changes every fingerprint after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagenet_plus.contract import RunPaths
from imagenet_plus.contract.state import StageState
from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import write_json_atomic
from imagenet_plus.io.storage import location
from imagenet_plus.pipeline.config import stable_hash


def file_identity(path: Path) -> list[Any]:
    """``[name, size, mtime_ns]`` of a file (``[name, None]`` when it is absent): changes when it is rewritten."""
    try:
        st = location(path).stat()
    except FileNotFoundError:
        return [location(path).name, None]
    return [location(path).name, st.st_size, getattr(st, "st_mtime_ns", None) or int(st.st_mtime * 1e9)]


@dataclass(frozen=True)
class StageInputs:
    """What a stage's outputs are made from.

    Attributes:
        stage: the stage's name (its record is ``RUN/state/{stage}.json``).
        settings: JSON-able settings that change the outputs (not those that only change speed).
        upstream: stages whose outputs it reads; their recorded fingerprints enter its own.
        files: other input files (a thresholds file, a reference folder's listing, …).
        outputs: files that must exist for the stage to count as current (a deleted output re-runs it).
        intact: a cheap check that the outputs read back as written (footers, headers, row counts), asked last:
            false makes the stage not current (a cut output re-runs it). None: existing is enough.
    """

    stage: str
    settings: Any
    upstream: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()
    outputs: tuple[Path, ...] = field(default=(), compare=False)
    intact: Callable[[], bool] | None = field(default=None, compare=False)

    def describe(self, paths: RunPaths) -> dict[str, Any]:
        """The JSON-able declaration the fingerprint hashes (upstream fingerprints read from their records)."""
        return {
            "settings": self.settings,
            "upstream": {name: recorded_fingerprint(paths, name) for name in self.upstream},
            "files": [file_identity(p) for p in self.files],
        }


def fingerprint(paths: RunPaths, inputs: StageInputs) -> str:
    """The stage's fingerprint now: the hash of its declared inputs."""
    return stable_hash([inputs.stage, inputs.describe(paths)])


def read_state(paths: RunPaths, stage: str) -> StageState | None:
    """The stage's record, or None when it never finished (or its record does not read back)."""
    path = paths.stage_state(stage)
    if not path.is_file():
        return None
    try:
        return StageState.read(path)
    except UserError:
        return None  # a damaged record only means "not current": the stage runs again and rewrites it


def recorded_fingerprint(paths: RunPaths, stage: str) -> str | None:
    """The fingerprint the stage recorded when it last finished (None: it has not)."""
    state = read_state(paths, stage)
    return None if state is None else state.fingerprint


def is_current(paths: RunPaths, inputs: StageInputs) -> bool:
    """Whether the stage's recorded fingerprint equals its fingerprint now and its declared outputs exist (and,
    where the stage declares a check, read back)."""
    state = read_state(paths, inputs.stage)
    if state is None or state.fingerprint != fingerprint(paths, inputs):
        return False
    if not all(location(p).exists() for p in inputs.outputs):
        return False
    return inputs.intact is None or inputs.intact()


def what_changed(paths: RunPaths, inputs: StageInputs) -> list[str]:
    """Top-level parts of the declaration that differ from the record (``settings``, ``upstream``, ``files``)."""
    state = read_state(paths, inputs.stage)
    if state is None:
        return ["never finished"]
    now = inputs.describe(paths)
    return [key for key in now if now[key] != state.inputs.get(key)]


def mark_current(paths: RunPaths, inputs: StageInputs, facts: Mapping[str, Any] | None = None) -> StageState:
    """Record the stage as finished from ``inputs`` (call it last, after every output is written)."""
    described = inputs.describe(paths)
    state = StageState(stage=inputs.stage, fingerprint=stable_hash([inputs.stage, described]), inputs=described,
                       finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), facts=dict(facts or {}))
    path = paths.stage_state(inputs.stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, state.to_dict())
    return state


def forget(paths: RunPaths, stages: Iterable[str]) -> None:
    """Drop the records of ``stages`` (their outputs are about to change): they are no longer current."""
    for stage in stages:
        paths.stage_state(stage).unlink(missing_ok=True)
