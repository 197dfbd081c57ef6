"""The HTML page: ``index.html`` rendered from the Jinja2 template ``report_template.html``, and ``report.json``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from imagenet_plus.contract.report import ReportSummary
from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import atomic_file
from imagenet_plus.report.inputs import ReportInputs
from imagenet_plus.report.scan import ScoreScan
from imagenet_plus.report.sections import Section

#: The page template (package data beside this module).
TEMPLATE = Path(__file__).resolve().parent / "report_template.html"
#: Section anchors and their labels in the page's navigation line, in page order.
NAV = (("headline", "headline"), ("scores", "scores"), ("per-class", "per class"), ("groups", "groups"),
       ("class-map", "class map"), ("diagnosis", "diagnosis"), ("sheets", "contact sheets"))


def _fmt(v: Any) -> str:
    """A value as readable text: None/NaN → "—", floats with 4 significant digits, lists and dicts joined."""
    if v is None or v is _pandas_na():
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v) or "—"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "—"
    return str(v)


def _pandas_na() -> Any:
    import pandas as pd

    return pd.NA


def render_page(title: str, n_images: int, n_classes: int, sections: list[Section]) -> str:
    """The HTML page from ``report_template.html`` (autoescaped; ``fmt`` formats table cells)."""
    import jinja2

    if not TEMPLATE.is_file():
        raise UserError(f"report template not found: {TEMPLATE} (a broken installation of imagenet-plus)")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["fmt"] = _fmt
    present = {s.anchor for s in sections}
    nav = [(a, label) for a, label in NAV if a in present]
    return env.get_template(TEMPLATE.name).render(title=title, n_images=n_images, n_classes=n_classes, nav=nav,
                                                  sections=sections)


def write_page(inputs: ReportInputs, fingerprint: str, sections: list[Section], scan: ScoreScan,
               chosen: list[str], out: Path) -> ReportSummary:
    """Write ``index.html`` and ``report.json`` (:class:`~imagenet_plus.contract.report.ReportSummary`) into ``out``.

    Args:
        inputs: the report's small inputs.
        fingerprint: the report stage's fingerprint (recorded in report.json).
        sections: the page's sections.
        scan: the first pass over the shards (image and kept counts).
        chosen: the classes that got a contact sheet.
        out: the folder being written.

    Returns:
        The record written to report.json.
    """
    paths = inputs.paths
    page = render_page(f"imagenet-plus report — {paths.root.name}", scan.images, len(inputs.classes), sections)
    with atomic_file(out / paths.report_index.name, "w") as f:
        f.write(page)
    record = ReportSummary(fingerprint=fingerprint, headline=dict(inputs.scores.headline), classes=len(inputs.classes),
                           images=scan.images, kept=scan.kept if inputs.selection is not None else None,
                           sampled_classes=chosen)
    record.write(out / paths.report_json.name)
    return record
