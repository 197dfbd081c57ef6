"""Stage ``report``: ``RUN/`` (scored; selection and diagnosis optional) → ``RUN/report/index.html`` + PNGs."""

from imagenet_plus.report.stage import ReportConfig, run_report

__all__ = ["ReportConfig", "run_report"]
