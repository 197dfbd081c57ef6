"""The report's record: ``RUN/report/report.json``, the headline numbers of a report and what it was made from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.contract.records import JsonRecord, dataclass_from_dict


@dataclass(frozen=True)
class ReportSummary(JsonRecord):
    """``RUN/report/report.json``: the numbers a report shows at the top, for tools that do not parse HTML.

    Attributes:
        fingerprint: the report stage's fingerprint when it was made (see :mod:`imagenet_plus.pipeline.freshness`).
        headline: the headline metrics of ``summary.json`` the page shows, by their ``summary.json`` key.
        classes: classes in ``classes.json``.
        images: scored images.
        kept: images kept by the selection (None when the run had no selection).
        sampled_classes: class ids that got a contact sheet, in label order.
    """

    fingerprint: str
    headline: dict[str, Any]
    classes: int
    images: int
    kept: int | None
    sampled_classes: list[str]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path | str) -> ReportSummary:
        return dataclass_from_dict(cls, data, source)
