"""The stages' records: ``RUN/state/{stage}.json``, what a finished stage's outputs were made from.

A stage writes its record last, after every output; the record holds the stage's fingerprint (see
:mod:`imagenet_plus.pipeline.freshness`) and what it was computed from, so a stage whose inputs or
settings changed can say what changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagenet_plus.contract.records import JsonRecord, dataclass_from_dict


@dataclass(frozen=True)
class StageState(JsonRecord):
    """``RUN/state/{stage}.json``.

    Attributes:
        stage: the stage's name.
        fingerprint: the hash of ``inputs``.
        inputs: what the fingerprint covers: the stage's settings, the fingerprints of the stages it reads,
            and the identities (name, size, modification time) of the input files it declares.
        facts: what the stage reports about its outputs (counts), for ``run``'s log and the report.
        finished: when it finished (UTC, ISO 8601).
    """

    stage: str
    fingerprint: str
    inputs: dict[str, Any]
    finished: str
    facts: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path | str) -> StageState:
        return dataclass_from_dict(cls, data, source)
