"""Select: thresholds and per-class quotas over the scores. Reads ``RUN/scores/``, writes ``RUN/selection.*``.

Input (written by ``score``): ``RUN/scores/{shard}.parquet`` (one row per sample key), the CLIP image
embeddings ``RUN/scores/{shard}.clip.npy`` (float16, L2-normalised, parquet row order) and
``RUN/scores/summary.json`` (its ``per_class`` FID drives the class rule).

Output:

- ``RUN/selection.parquet``: every key with ``key``, ``label``, ``class_id``, ``kept`` (bool),
  ``reason`` (``"kept"`` or the first rule it failed: ``"nsfw"``, ``"duplicate"``, ``"clip_score<20"``,
  ``"clip_class_prob<0.5"``, ``"isc_kl<0.1"``, ``"realism<1"``, ``"not_top5"``, ``"class_fid>80"``,
  ``"over_quota"``) and ``composite`` (float in [0, 1], higher is better); rows sorted by label, then key;
- ``RUN/selection.json``: ``thresholds``, ``per_class_quota``, ``pass_rate`` {class_id: rate},
  ``kept`` {class_id: n}, ``short`` {class_id: missing count}, ``dropped_classes``, ``flagged_classes``.
  ``generate --top-up`` reads ``short`` and ``pass_rate``.

Rules are applied in a fixed order (class FID with action ``drop``, nsfw, duplicate, clip_score,
clip_class_prob, isc_kl, realism, classifier_top5); a sample's reason is the first rule it fails. A rule
whose score is null for a sample (e.g. no ImageNet classifier outside ImageNet-1k) does not reject that
sample; a rule set on a score that is null for every sample is a :class:`~imagenet_plus.errors.UserError`.

Composite: the mean, over the score columns present (``clip_score``, ``clip_class_prob``, ``isc_kl``,
``classifier_prob``, ``realism``), of each score's percentile rank within its class (0 = worst,
1 = best). Ranks make scores on different scales comparable and are insensitive to outliers.

Quota: within a class, the passing samples are picked greedily by maximal marginal relevance
(Carbonell & Goldstein 1998) on the CLIP embeddings: first the best composite, then each time the
candidate maximising ``(1 - diversity) * composite + diversity * min cosine distance to the picked
ones``. Near-identical images thus score low once one of them is picked and do not fill the quota.
Written by hand (a 20-line numpy loop) because no maintained library offers MMR over a score vector.

Memory: about 40 bytes per image and no Python object per image. One pass over the scores files (one at a
time) keeps each image's key (in one arrow string array), label, class code and the code of the first rule it
fails; each composite column is then read again on its own and folded into a running mean; the output is
written in row batches.

The stage is split by job: :mod:`~imagenet_plus.select.rules` (the rules), :mod:`~imagenet_plus.select.scored`
(reading the scores, the composite), :mod:`~imagenet_plus.select.quota` (MMR), :mod:`~imagenet_plus.select.output`
(row order, ``selection.parquet``, the summary); this module runs them.

Freshness: :func:`stage_inputs` declares what the selection is made from (the settings with the thresholds
file's content, not its path; the ``score`` stage's record; ``summary.json``); :func:`run_select` does nothing
when the stage is current (:func:`imagenet_plus.pipeline.freshness.is_current`) and records itself last.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from imagenet_plus.contract import (
    REASON_KEPT,
    REASON_OVER_QUOTA,
    RunPaths,
    ScoreSummary,
    SelectionSummary,
    read_class_records,
    read_run_yaml,
    run_paths,
)
from imagenet_plus.contract.ownership import locked_run
from imagenet_plus.errors import UserError
from imagenet_plus.io.storage import location
from imagenet_plus.pipeline.config import config_to_dict
from imagenet_plus.pipeline.freshness import StageInputs, is_current, mark_current
from imagenet_plus.select.config import SelectConfig, Thresholds, load_thresholds
from imagenet_plus.select.output import output_order, summarize_selection, write_selection
from imagenet_plus.select.quota import pick_quota
from imagenet_plus.select.rules import rules_of
from imagenet_plus.select.scored import composite_of, read_scored_rows

log = logging.getLogger(__name__)

#: The stage's name (its record is ``RUN/state/select.json``).
STAGE = "select"


def class_fid_of(paths: RunPaths) -> dict[str, Any]:
    """Per-class FID from ``RUN/scores/summary.json``: ``{class_id: fid or None}`` (empty when it has none).

    The one place select reads ``summary.json``.
    """
    return {cid: scores.fid for cid, scores in ScoreSummary.read(paths.summary_json).per_class.items()}


def run_quota(paths: RunPaths) -> int | None:
    """The run's ``images_per_class`` from ``RUN/run.yaml`` (None when it has none).

    Raises:
        UserError: ``run.yaml`` is missing or unreadable.
    """
    return int(read_run_yaml(paths)["config"].get("images_per_class", 0)) or None


def _quota(paths: RunPaths, cfg: SelectConfig) -> int:
    quota = cfg.per_class if cfg.per_class is not None else run_quota(paths)
    if quota is None:
        raise UserError(f"{paths.run_yaml} has no images_per_class: pass --per-class")
    return quota


def _stage_inputs(paths: RunPaths, cfg: SelectConfig, th: Thresholds) -> StageInputs:
    settings = config_to_dict(cfg)
    settings["thresholds"] = th.to_dict()  # the file's content, not its path: an edited file re-runs select
    if cfg.per_class is None:  # the default quota comes from the run
        try:
            settings["per_class"] = run_quota(paths)
        except UserError:
            settings["per_class"] = None
    return StageInputs(stage=STAGE, settings=settings, upstream=("score",), files=(paths.summary_json,),
                       outputs=(paths.selection_parquet, paths.selection_json))


def stage_inputs(run: str | Path, cfg: SelectConfig) -> StageInputs:
    """What the selection is made from: the settings (the thresholds by content), ``score``'s record, summary.json.

    ``summary.json`` is declared as a file too, so a run scored without a ``score`` record (made by hand, or
    by an older version) still re-selects after a re-score.

    Raises:
        UserError: the thresholds file is missing or malformed.
    """
    return _stage_inputs(RunPaths(location(run)), cfg, load_thresholds(cfg.thresholds))


@locked_run
def run_select(run: str | Path, cfg: SelectConfig) -> SelectionSummary:
    """Select the images to release: ``RUN/scores`` → ``RUN/selection.parquet`` + ``RUN/selection.json``.

    Memory: about 40 bytes per image (its key in one arrow array, label, class code, reason code, composite)
    plus per-class and per-batch buffers; scores files are read one at a time, each composite column on its own,
    and CLIP embeddings one class at a time (see :class:`~imagenet_plus.select.scored.ClipRows`).

    Args:
        run: the run directory.
        cfg: the select settings.

    Returns:
        The summary written to ``RUN/selection.json`` (read back when the selection was already current).

    Raises:
        UserError: no run directory, ``score`` not run yet, malformed thresholds or scores.
    """
    paths = run_paths(run)
    if not paths.summary_json.is_file():
        raise UserError(f"{paths.summary_json} not found: run 'imagenet-plus score {paths.root}' before select")
    th = load_thresholds(cfg.thresholds)
    inputs = _stage_inputs(paths, cfg, th)
    if is_current(paths, inputs):
        log.info("select: %s is up to date", paths.selection_json)
        return SelectionSummary.read(paths.selection_json)
    quota = _quota(paths, cfg)
    if not paths.scored_parquets():
        raise UserError(f"no scores in {paths.scores}: run 'imagenet-plus score {paths.root}' first")
    class_ids = [c["id"] for c in read_class_records(paths)]
    th = th.for_classes(len(class_ids))  # clip_class_prob_min: 1/K
    class_fid = class_fid_of(paths)
    dropped: list[int] = []
    if th.class_fid_max is not None and th.class_fid_action == "drop":
        bad = {c for c, fid in class_fid.items() if fid is not None and float(fid) > th.class_fid_max}
        dropped = [i for i, c in enumerate(class_ids) if c in bad]
    rules = rules_of(th, dropped)
    names = ["", *(r.reason for r in rules), REASON_KEPT, REASON_OVER_QUOTA]
    rows = read_scored_rows(paths, class_ids, rules)
    try:
        order = output_order(rows.keys, rows.label)
        composite = composite_of(rows)
        kept = pick_quota(rows, composite, quota, th.diversity)
    finally:
        rows.clip.close()
    reason = rows.reason.copy()
    reason[(reason == 0) & kept] = names.index(REASON_KEPT)
    reason[reason == 0] = names.index(REASON_OVER_QUOTA)
    del kept
    result = summarize_selection(rows.cls, reason, names, class_ids, th, quota, class_fid)
    write_selection(paths.selection_parquet, rows, order, class_ids, reason, names, composite)
    result.write(paths.selection_json)
    mark_current(paths, inputs, {"kept": result.num_kept, "scored": result.num_scored})
    return result
