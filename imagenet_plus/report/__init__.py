"""Stage ``report``: ``RUN/`` (scored; selection and diagnosis optional) → ``RUN/report/index.html`` + PNGs."""

from typing import TYPE_CHECKING

from imagenet_plus.lazy import lazy_exports

if TYPE_CHECKING:
    from imagenet_plus.report.config import ReportConfig
    from imagenet_plus.report.stage import run_report, stage_inputs

__getattr__, __dir__ = lazy_exports(__name__, {
    "ReportConfig": "config",
    "run_report": "stage",
    "stage_inputs": "stage",
})
__all__ = ["ReportConfig", "run_report", "stage_inputs"]
