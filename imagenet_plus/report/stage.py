"""Report: an HTML page with plots of a scored (and optionally selected) run. Reads RUN, writes RUN/report/.

Input: ``RUN/scores/*.parquet`` and ``RUN/scores/summary.json`` (required: run ``score`` first),
``RUN/scores/class_text_embeddings.npy`` (for the class map; the section is omitted with a note when
it is absent), ``RUN/selection.parquet`` + ``RUN/selection.json`` (optional: without them the
report shows scores only), ``RUN/diagnosis.parquet`` (optional: the diagnosis section;
``RUN/diagnosis_centroids.npz`` beside it puts the real class centroids on its map),
``RUN/classes.json``, ``RUN/run.yaml`` and the images in ``RUN/generated/*.tar`` (for the contact
sheets). No model is run. Every path comes from :class:`imagenet_plus.contract.RunPaths`.

Output, ``RUN/report/``:

- ``index.html`` (rendered from the Jinja2 template ``report_template.html``, one macro per section):
  headline metrics with the models used; score histograms with the thresholds drawn (``scores.png``);
  per-class pass rate and classifier top-1/top-5 hits (``per_class.png``) and a per-class table;
  rates by WordNet group (lexicographer file: animal, artifact, food, plant, …) as a table and
  ``groups.png``; a 2D class map (PCA of the CLIP text embeddings of the class names, coloured by
  group, sized by pass rate: ``class_map.png``); the diagnosis of failing classes when ``diagnose``
  has run; contact sheets of the best kept and the worst rejected images of a sample of classes
  (``sheets/{class_id}.jpg``);
- ``per_class.csv`` (the per-class table) and ``report.json``
  (:class:`~imagenet_plus.contract.report.ReportSummary`: headline numbers and the stage's fingerprint).

Memory: the score parquets are streamed shard by shard, twice, reading only the columns the page
uses: the first pass sums per class (arrays of the class count) and finds each score's range, the
second counts histogram bins over fixed edges and keeps the rows of the sampled classes only. What
grows with the images is the selection lookup (sorted fixed-width keys plus kept, passed and
composite: about 30 bytes per image, ~40 MB at 1.28 M images) and one kept bit per image. Every file is written
through :func:`imagenet_plus.io.atomic.atomic_file`, inside ``RUN/report.partial/``, and the folder is
swapped in when complete (:func:`imagenet_plus.io.atomic.building_folder`), so a killed report never leaves a
half-written ``index.html``. The old ``RUN/report/`` is replaced only when it holds nothing but the report's own
files (``contract.names.REPORT_FILE_PATTERN``): a file a user put there (or in ``RUN/report.old/``) stops the
report with a one-line error naming the folder, and nothing is deleted.

Freshness: :func:`stage_inputs` declares what the report is made from (its settings, the records of
``score``, ``select`` and ``diagnose``, and the summary files of those stages); :func:`run_report` does nothing
when the report is current (:func:`imagenet_plus.pipeline.freshness.is_current`) and records itself last.

The stage is split by job: :mod:`~imagenet_plus.report.config` (settings), :mod:`~imagenet_plus.report.inputs`
(the small inputs: summary, selection, diagnosis, classes), :mod:`~imagenet_plus.report.scan` (streaming the
score shards), :mod:`~imagenet_plus.report.tables`, :mod:`~imagenet_plus.report.plots`,
:mod:`~imagenet_plus.report.sheets` (contact sheets), :mod:`~imagenet_plus.report.sections` and
:mod:`~imagenet_plus.report.page` (the HTML and report.json); this module runs them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from imagenet_plus.contract import RunPaths, run_paths
from imagenet_plus.contract.names import REPORT_FILE_PATTERN
from imagenet_plus.contract.ownership import locked_run
from imagenet_plus.io.atomic import building_folder
from imagenet_plus.io.storage import location
from imagenet_plus.pipeline.config import config_to_dict
from imagenet_plus.pipeline.freshness import StageInputs, fingerprint, is_current, mark_current
from imagenet_plus.report.config import ReportConfig
from imagenet_plus.report.inputs import read_inputs
from imagenet_plus.report.page import write_page
from imagenet_plus.report.scan import SelectionLookup
from imagenet_plus.report.sections import build_sections
from imagenet_plus.report.sheets import SHEETS_DIR

log = logging.getLogger(__name__)

#: The stage's name (its record is ``RUN/state/report.json``).
STAGE = "report"


def stage_inputs(run: str | Path, cfg: ReportConfig) -> StageInputs:
    """What the report is made from: its settings, the records of the stages it reads, and their summary files.

    The upstream stages are ``score``, ``select`` and ``diagnose``; the last two are optional (a stage that never
    ran has no record, which is part of the fingerprint too). ``summary.json``, ``selection.json``/``.parquet``
    and ``diagnosis.json``/``.parquet`` are declared as files as well (their presence decides which sections
    the page has), so a run made without stage records (by hand, or by an older version) is tracked too.
    """
    paths = RunPaths(location(run))
    return StageInputs(stage=STAGE, settings=config_to_dict(cfg), upstream=("score", "select", "diagnose"),
                       files=(paths.summary_json, paths.selection_json, paths.selection_parquet, paths.diagnosis_json,
                              paths.diagnosis_parquet),
                       outputs=(paths.report_index,))


def is_up_to_date(run: str | Path, cfg: ReportConfig) -> bool:
    """Whether ``RUN/report`` is current for ``cfg``: :func:`~imagenet_plus.pipeline.freshness.is_current`."""
    return is_current(RunPaths(location(run)), stage_inputs(run, cfg))


def _report_file(name: str) -> bool:
    """Whether a path below ``RUN/report/`` is one the report writes (a new report replaces only such files)."""
    return REPORT_FILE_PATTERN.match(name) is not None


@locked_run
def run_report(run: str | Path, cfg: ReportConfig) -> Path:
    """Write ``RUN/report/index.html`` and its images from the run's scores and selection.

    Does nothing when the report is current (see :func:`stage_inputs`).

    Args:
        run: the run directory (scored; selection optional).
        cfg: the report settings.

    Returns:
        The path of ``index.html``.

    Raises:
        UserError: not a run directory, not scored yet, or an unreadable input (named).
    """
    paths = run_paths(run)
    declared = stage_inputs(paths.root, cfg)
    if is_current(paths, declared):
        log.info("report: %s is up to date", paths.report_index)
        return paths.report_index
    stamp = fingerprint(paths, declared)
    inputs = read_inputs(paths)
    lookup = SelectionLookup.read(paths.selection_parquet) if inputs.selection is not None else None
    with building_folder(paths.report, owned=_report_file) as tmp:  # refuses a RUN/report holding other files
        (tmp / SHEETS_DIR).mkdir()
        sections, scan, chosen = build_sections(inputs, cfg, lookup, tmp)
        record = write_page(inputs, stamp, sections, scan, chosen, tmp)
    mark_current(paths, declared, {"images": record.images, "kept": record.kept})
    return paths.report_index
