"""The report's small inputs: the one module that reads the score, select and diagnose stages' summary files.

Every place the report reads ``RUN/scores/summary.json``, ``RUN/diagnosis.parquet``, ``RUN/diagnosis.json`` and
``RUN/diagnosis_centroids.npz`` is here, and so is every key and column name of those files the report uses
(the other modules import the names below): :func:`read_score_facts` (summary.json), :func:`read_diagnosis`
(diagnosis.parquet), :func:`read_diagnosis_notes` (diagnosis.json), :func:`saved_centroids` (the centroids)
and :func:`worst_classes`. :func:`read_inputs` reads them all, with ``classes.json``, ``run.yaml``,
``selection.json`` (:class:`~imagenet_plus.contract.SelectionSummary`) and the class text embeddings, before
any work. The score shards themselves are streamed by :mod:`imagenet_plus.report.scan`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imagenet_plus.contract import (
    VERDICT_OK,
    VERDICTS,
    DiagnosisCentroids,
    DiagnosisSummary,
    RunPaths,
    ScoreSummary,
    SelectionSummary,
    headline_labels,
    read_class_records,
    read_run_yaml,
)
from imagenet_plus.contract import DiagnosisColumns as D
from imagenet_plus.errors import UserError
from imagenet_plus.io.storage import local_copy
from imagenet_plus.report.scan import columns_to_read

# ------------------------------------------------------------------------------------------------
# summary.json (written by score: contract.ScoreSummary)

#: Headline metrics of summary.json (ScoreSummary fields), with a readable name, in headline order.
HEADLINE = headline_labels()
#: Per-class figures of summary.json shown in the per-class table (``ClassScores`` fields): field → cast to float.
CLASS_STATS = {"fid": True, "vendi": True, "duplicates": False}


@dataclass(frozen=True)
class ScoreFacts:
    """What the report uses of ``RUN/scores/summary.json``.

    Attributes:
        headline: the :data:`HEADLINE` metrics present, by their summary.json key, in :data:`HEADLINE` order.
        per_class: class id → the :data:`CLASS_STATS` figures it has.
        models: scorer → the model it used.
        reference: the real reference ``score`` compared with (None when there was none).
    """

    headline: dict[str, Any] = field(default_factory=dict)
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    reference: Any = None


def read_score_facts(paths: RunPaths) -> ScoreFacts:
    """The headline metrics, per-class figures, scorer models and reference of ``summary.json``.

    Raises:
        UserError: the file is unreadable or not a score summary (the key at fault named).
    """
    summary = ScoreSummary.read(paths.summary_json)
    per_class = {str(cid): {k: getattr(v, k) for k in CLASS_STATS} for cid, v in summary.per_class.items()}
    return ScoreFacts(headline={k: getattr(summary, k) for k in HEADLINE}, per_class=per_class,
                      models=summary.models.to_dict(), reference=summary.reference)


# ------------------------------------------------------------------------------------------------
# diagnosis.parquet, diagnosis.json and diagnosis_centroids.npz (written by diagnose)

#: Columns of ``RUN/diagnosis.parquet`` the report reads by name.
DIAG_LABEL = D.LABEL
DIAG_CLASS_ID = D.CLASS_ID
DIAG_NAME = D.NAME
DIAG_VERDICT = D.VERDICT
DIAG_COUNT = D.COUNT
DIAG_CLIP_CLASS_PROB = D.CLIP_CLASS_PROB_MEAN
#: Columns of ``RUN/diagnosis.parquet`` shown in the worst-first table (those present), in order.
DIAGNOSIS_COLUMNS = (D.LABEL, D.CLASS_ID, D.NAME, D.VERDICT, D.FLAGS, D.COUNT, D.CONFUSION_SHARE, D.CONFUSED_WITH,
                     D.CLIP_CLASS_PROB_MEAN, D.CLASSIFIER_TOP5_RATE, D.VENDI, D.VENDI_RATIO,
                     D.MEAN_PAIRWISE_SIMILARITY, D.CENTROID_COSINE, D.NEAREST_REAL_CLASS, D.SPREAD_RATIO,
                     D.MODALITY_GAP, D.REMEDY)
#: Columns of diagnosis.parquet naming the class a flagged class's images lean to, in order of preference.
ARROW_COLUMNS = (D.NEAREST_REAL_CLASS, D.ZERO_SHOT_CENTROID_CLASS, D.CONFUSED_WITH)
#: Verdicts, most severe first, then the verdict of a class with no flag.
VERDICT_ORDER = (*VERDICTS, VERDICT_OK)
#: Classes (worst first, flagged only) that get a diagnosis contact sheet.
DIAGNOSIS_SHEETS = 4


def read_diagnosis(paths: RunPaths) -> Any | None:
    """``RUN/diagnosis.parquet`` (one row per class) sorted worst first, or None when ``diagnose`` has not run.

    Worst first: by verdict (``diagnose.VERDICTS`` order, most severe first, then ``ok``), then by the mean
    zero-shot class probability (lowest first), then by label.

    Raises:
        UserError: the file is unreadable or lacks ``class_id`` / ``verdict``.
    """
    import pandas as pd

    path = paths.diagnosis_parquet
    if not path.is_file():
        return None
    try:
        frame = pd.read_parquet(local_copy(path))
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise UserError(f"unreadable {path}: {type(exc).__name__}: {exc}") from None
    for col in (DIAG_CLASS_ID, DIAG_VERDICT):
        if col not in frame.columns:
            raise UserError(f"{path} has no column '{col}': re-run 'imagenet-plus diagnose'")
    rank = {v: i for i, v in enumerate(VERDICT_ORDER)}
    keys = ["_rank"] + [c for c in (DIAG_CLIP_CLASS_PROB, DIAG_LABEL) if c in frame.columns]
    frame = frame.assign(_rank=frame[DIAG_VERDICT].map(rank).fillna(len(rank)))
    return frame.sort_values(keys, na_position="first", kind="stable").drop(columns="_rank").reset_index(drop=True)


@dataclass(frozen=True)
class DiagnosisNotes:
    """What the report uses of ``RUN/diagnosis.json``.

    Attributes:
        reference: the real reference folder diagnose compared with (its class subfolders give real images).
        note: diagnose's note for the reader (e.g. that it ran without a reference).
    """

    reference: str | None = None
    note: str | None = None


def read_diagnosis_notes(paths: RunPaths) -> DiagnosisNotes:
    """The reference and note of ``RUN/diagnosis.json`` (empty when the file is absent).

    Raises:
        UserError: the file is unreadable or not a diagnosis summary.
    """
    if not paths.diagnosis_json.is_file():
        return DiagnosisNotes()
    summary = DiagnosisSummary.read(paths.diagnosis_json)
    return DiagnosisNotes(reference=summary.reference, note=summary.note)


def worst_classes(diagnosis: Any | None, k: int = DIAGNOSIS_SHEETS) -> list[str]:
    """The ``k`` worst flagged classes (verdict not ``ok``) that have images."""
    if diagnosis is None:
        return []
    flagged = diagnosis[diagnosis[DIAG_VERDICT] != VERDICT_OK]
    if DIAG_COUNT in flagged.columns:
        flagged = flagged[flagged[DIAG_COUNT] > 0]
    return [str(c) for c in flagged[DIAG_CLASS_ID].head(k)]


def saved_centroids(paths: RunPaths, class_ids: list[str]) -> tuple[Any, Any | None] | None:
    """The per-class centroids ``diagnose`` saved (``RUN/diagnosis_centroids.npz``), rows in ``class_ids`` order.

    Returns:
        ``(synthetic, real)`` (``C×D`` float64 each, NaN rows for classes without data; ``real`` None when
        diagnose ran without a reference), or None when the file is absent (a run diagnosed before it existed).

    Raises:
        UserError: the file is unreadable or its arrays disagree in shape.
    """
    import numpy as np

    if not paths.diagnosis_centroids.is_file():
        return None
    saved = DiagnosisCentroids.read(paths.diagnosis_centroids)
    row = {c: i for i, c in enumerate(saved.class_ids)}
    take = np.array([row.get(c, -1) for c in class_ids], dtype=np.int64)

    def reorder(a: Any) -> Any:
        out = np.full((len(class_ids), a.shape[1]), np.nan)
        out[take >= 0] = np.asarray(a, dtype=np.float64)[take[take >= 0]]
        return out

    return reorder(saved.synthetic), (reorder(saved.real) if saved.real is not None else None)


# ------------------------------------------------------------------------------------------------
# Every small input, read and checked before any work


@dataclass(frozen=True)
class ReportInputs:
    """The small inputs of a report, read and checked before any work.

    Attributes:
        paths: the run's paths.
        scores: what the report uses of summary.json.
        classes: ``classes.json``'s records, in label order.
        generate: the generate settings recorded in ``run.yaml``.
        selection: ``selection.json`` (None without a selection).
        text_embeddings: ``C×D`` float32 class text embeddings, or None when the file is absent.
        diagnosis: ``diagnosis.parquet`` worst first (:func:`read_diagnosis`), None when not diagnosed.
        diagnosis_notes: what the report uses of ``diagnosis.json``.
    """

    paths: RunPaths
    scores: ScoreFacts
    classes: list[dict[str, Any]]
    generate: Mapping[str, Any]
    selection: SelectionSummary | None
    text_embeddings: Any | None
    diagnosis: Any | None = None
    diagnosis_notes: DiagnosisNotes = field(default_factory=DiagnosisNotes)


def read_text_embeddings(paths: RunPaths, num_classes: int) -> Any | None:
    """``class_text_embeddings.npy`` as float32 (one row per class), or None when ``score`` did not write it.

    Raises:
        UserError: the file is unreadable or its row count differs from the class count.
    """
    import numpy as np

    path = paths.class_text_embeddings
    if not path.is_file():
        return None
    try:
        emb = np.load(local_copy(path)).astype(np.float32)
    except (OSError, ValueError) as exc:
        raise UserError(f"unreadable {path}: {exc}") from None
    if emb.ndim != 2 or len(emb) != num_classes:
        raise UserError(f"{path} has shape {emb.shape}, expected one row per class ({num_classes})")
    return emb


def read_inputs(paths: RunPaths) -> ReportInputs:
    """Check every scores parquet's columns; read summary.json, classes.json, run.yaml, selection.json (only
    when selection.parquet is there too), the class text embeddings and the diagnosis (when there is one).

    Raises:
        UserError: not scored yet, an unreadable file (named), or embeddings without one row per class.
    """
    if not paths.scored_parquets() or not paths.summary_json.is_file():
        raise UserError(f"no scores in {paths.scores}: run 'imagenet-plus score {paths.root}' before report")
    for f in paths.scored_parquets():  # every footer first: a broken shard is named before any work
        columns_to_read(f)
    classes = read_class_records(paths)
    has_selection = paths.selection_json.is_file() and paths.selection_parquet.is_file()
    selection = SelectionSummary.read(paths.selection_json) if has_selection else None
    emb = read_text_embeddings(paths, len(classes))
    diagnosis = read_diagnosis(paths)
    notes = read_diagnosis_notes(paths) if diagnosis is not None else DiagnosisNotes()
    return ReportInputs(paths, read_score_facts(paths), classes, read_run_yaml(paths).get("config", {}),
                        selection, emb, diagnosis, notes)
