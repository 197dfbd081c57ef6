"""The selection: reasons, the column table of ``RUN/selection.parquet``, and ``RUN/selection.json``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from imagenet_plus.contract.records import JsonRecord, dataclass_from_dict
from imagenet_plus.contract.scores import COMPOSITE


@dataclass(frozen=True)
class SelectionSummary(JsonRecord):
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
        return dataclass_from_dict(cls, data, source)


REASON_KEPT = "kept"


REASON_OVER_QUOTA = "over_quota"


REASON_NSFW = "nsfw"


REASON_DUPLICATE = "duplicate"


REASON_NOT_TOP5 = "not_top5"


#: Reasons that mean "passed every threshold".
PASSED_REASONS = (REASON_KEPT, REASON_OVER_QUOTA)


#: ``RUN/selection.parquet``: (column, arrow dtype), in order; its column names and schema derive from it.
_SELECTION_TABLE: tuple[tuple[str, str], ...] = (
    ("key", "string"),
    ("label", "int64"),
    ("class_id", "string"),
    ("kept", "bool"),
    ("reason", "string"),
    (COMPOSITE, "float64"),
)
#: Columns of ``selection.parquet``, in order.
SELECTION_COLUMNS: tuple[str, ...] = tuple(name for name, _ in _SELECTION_TABLE)


@lru_cache(maxsize=1)
def selection_schema() -> Any:
    """The pyarrow schema of ``selection.parquet`` (pyarrow imported only when asked)."""
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
    return pa.schema([(name, types[dtype]) for name, dtype in _SELECTION_TABLE])
