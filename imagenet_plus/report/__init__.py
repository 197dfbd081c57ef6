"""Stage ``report``: ``RUN/`` (scored; selection and diagnosis optional) → ``RUN/report/index.html`` + PNGs."""

from typing import TYPE_CHECKING

from imagenet_plus.lazy import lazy_exports

if TYPE_CHECKING:
    from imagenet_plus.report.stage import ReportConfig, run_report

__getattr__, __dir__ = lazy_exports(__name__, {
    "ReportConfig": "stage",
    "run_report": "stage",
})
__all__ = ["ReportConfig", "run_report"]
