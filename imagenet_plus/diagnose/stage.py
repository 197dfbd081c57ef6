"""The diagnose stage: why a class is weak, per class, and what to do about it.

Reads ``RUN/classes.json`` and the score stage's outputs (``RUN/scores/*.parquet``, the ``.clip.npy`` CLIP image
embeddings beside them, ``class_text_embeddings.npy``), and optionally a real reference; writes
``RUN/diagnosis.parquet`` (one row per class, label order; columns from ``contract.diagnosis``),
``RUN/diagnosis_centroids.npz`` (the per-class CLIP image centroids, synthetic and real, for the report's map)
and ``RUN/diagnosis.json`` (:class:`~imagenet_plus.contract.diagnosis.DiagnosisSummary`: the thresholds,
counts per verdict, the flagged classes worst first, the overall CLIP geometry and the prompt strategy to
switch each flagged class to). The score stage's files are left alone. The stage is a no-op when it is
current (:func:`stage_inputs`): the same scores, settings and reference, every output present.

Four failure modes are told apart, each from its own evidence (see
:func:`~imagenet_plus.diagnose.verdicts.class_flags` for the rules):

- ``ambiguous``: the class name is shared with another class of the set, is polysemous in WordNet, or its
  zero-shot text embedding is a near twin of another class's; *and* many of its images are classified (CLIP
  zero-shot, against every class text) as another class. Remedy: the ``gloss`` or ``hypernym`` prompt strategy.
- ``concept-failure``: the synthetic class centroid (CLIP image space) is nearer another class's real centroid
  than its own (with a reference), or nearer another class's text embedding than its own (without one).
  Remedy: drop the class or use another model.
- ``low-diversity``: low Vendi score or high mean pairwise CLIP similarity of the class's images, or a Vendi
  score far below the real images' of the same class. Remedy: the ``diverse`` strategy, or a wider range of
  steps and guidance.
- ``low-adherence``: low mean zero-shot class probability or classifier top-5 rate. Remedy: the ``hypernym``
  strategy (the class's parent named in the prompt) or a higher guidance scale.

The classifier's predicted class is not part of the score table, so "the most frequent wrong prediction" is
CLIP's zero-shot one (``confused_with``); the classifier's own top-1/top-5 rates are reported as they are.

The real reference (``--reference``) is a folder of real images with one subfolder per class id (ImageNet's
``val/n01440764/*.JPEG``), embedded with the run's CLIP model and cached under ``RUN/diagnosis-cache/``
(keyed by the file list, sizes, modification times and the model), or an ``.npz`` file with ``clip`` (``N×D``
CLIP image embeddings, same model as the run) and ``class_ids`` (``N`` strings). Without one the real-side
columns are null and ``diagnosis.json`` says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_plus.contract import (
    COL_CLASSIFIER_TOP1,
    COL_CLASSIFIER_TOP5,
    COL_CLIP_CLASS_PROB,
    COL_CLIP_SCORE,
    RunPaths,
    read_class_records,
    run_paths,
)
from imagenet_plus.contract.diagnosis import (
    CENTROIDS_CLASS_IDS,
    CENTROIDS_REAL,
    CENTROIDS_SYNTHETIC,
    VERDICT_OK,
    VERDICT_SEVERITY,
    VERDICTS,
    DiagnosisCentroids,
    DiagnosisSummary,
    FlaggedClass,
    Geometry,
    diagnosis_frame,
    read_remedy_strategies_file,
)
from imagenet_plus.contract.diagnosis import DiagnosisColumns as C
from imagenet_plus.contract.ownership import locked_run
from imagenet_plus.diagnose.config import DiagnoseConfig
from imagenet_plus.diagnose.evidence import (
    ClassAccumulator,
    mean_pairwise_dot,
    modality_gap,
    nearest_rows,
    rms_spread,
    rowwise_cosine,
    text_twins,
    vendi_cosine,
)
from imagenet_plus.diagnose.inputs import (
    ScoreSums,
    clip_model_of,
    load_reference_embeddings,
    read_score_sums,
    reference_listing,
)
from imagenet_plus.diagnose.verdicts import (
    REMEDIES,
    REMEDY_STRATEGIES,
    ClassEvidence,
    class_flags,
    sense_counts,
    shared_lemmas,
    verdict_of,
)
from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import atomic_file
from imagenet_plus.io.storage import local_copy, location
from imagenet_plus.pipeline import freshness
from imagenet_plus.pipeline.freshness import StageInputs

__all__ = ["CENTROIDS_CLASS_IDS", "CENTROIDS_REAL", "CENTROIDS_SYNTHETIC", "STAGE", "VERDICTS", "VERDICT_OK",
           "DiagnoseConfig", "diagnose_frame", "overall_geometry", "read_remedy_strategies", "run_diagnose",
           "stage_inputs", "write_centroids"]

#: The stage's name: its record is ``RUN/state/diagnose.json``.
STAGE = "diagnose"


def _finite(value: Any) -> Any:
    """A float, or None for NaN and infinities (strict JSON)."""
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class _Figures:
    """Per-class arrays of the synthetic side, the real side (NaN without a reference) and their ratios."""

    spread: np.ndarray
    pairwise: np.ndarray
    vendi: np.ndarray
    gap: np.ndarray
    text_nearest: np.ndarray
    confusion: np.ndarray
    top_other_share: np.ndarray
    real_count: np.ndarray
    real_vendi: np.ndarray
    real_pairwise: np.ndarray
    real_spread: np.ndarray
    real_gap: np.ndarray
    centroid_cos: np.ndarray
    nearest_real: np.ndarray
    nearest_real_cos: np.ndarray


def _ratio(synthetic: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Synthetic over real, per class (NaN where either figure is missing)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return synthetic / real


def _class_figures(text_emb: np.ndarray, scores: ScoreSums, real: ClassAccumulator | None) -> _Figures:
    acc = scores.acc
    num_classes, count = len(acc.count), acc.count
    syn_centroid = acc.centroids()
    with np.errstate(invalid="ignore", divide="ignore"):
        confusion = np.where(count > 0, scores.confused / np.maximum(count, 1), np.nan)
        top_other_share = np.where(count > 0, scores.top_other_count / np.maximum(count, 1), np.nan)
    nan = np.full(num_classes, np.nan)
    real_side = dict(real_count=np.zeros(num_classes, dtype=np.int64), real_vendi=nan, real_pairwise=nan,
                     real_spread=nan, real_gap=nan, centroid_cos=nan, nearest_real=np.full(num_classes, -1),
                     nearest_real_cos=nan)
    if real is not None:
        real_centroid = real.centroids()
        nearest_real, nearest_real_cos = nearest_rows(syn_centroid, real_centroid)
        real_side = dict(real_count=real.count,
                         real_vendi=np.array([vendi_cosine(real.sample(c)) for c in range(num_classes)]),
                         real_pairwise=mean_pairwise_dot(real.count, real.emb_sum, real.sq_norm_sum),
                         real_spread=rms_spread(real.count, real.emb_sum, real.sq_norm_sum),
                         real_gap=modality_gap(real_centroid, text_emb),
                         centroid_cos=rowwise_cosine(syn_centroid, real_centroid),
                         nearest_real=nearest_real, nearest_real_cos=nearest_real_cos)
    return _Figures(
        spread=rms_spread(count, acc.emb_sum, acc.sq_norm_sum),
        pairwise=mean_pairwise_dot(count, acc.emb_sum, acc.sq_norm_sum),
        vendi=np.array([vendi_cosine(acc.sample(c)) for c in range(num_classes)]),
        gap=modality_gap(syn_centroid, text_emb), text_nearest=nearest_rows(syn_centroid, text_emb)[0],
        confusion=confusion, top_other_share=top_other_share, **real_side)


def diagnosis_rows(records: Sequence[Mapping[str, Any]], text_emb: np.ndarray, scores: ScoreSums,
                   real: ClassAccumulator | None, cfg: DiagnoseConfig,
                   senses: Sequence[int | None] | None = None) -> list[dict[str, Any]]:
    """One ``diagnosis.parquet`` row per class (column → value), in label order.

    Args:
        records: the class set (``classes.json`` entries, label order).
        text_emb: ``C×D`` class text embeddings.
        scores: per-class sums of the synthetic side.
        real: per-class sums of the real reference, or None.
        cfg: thresholds.
        senses: WordNet noun senses per class name (looked up when None).
    """
    ids = [str(r["id"]) for r in records]
    names = [str(r["name"]) for r in records]
    senses = list(senses) if senses is not None else sense_counts(names)
    shared = shared_lemmas(records)
    twins = text_twins(text_emb, cfg.text_twin_cosine)
    f = _class_figures(text_emb, scores, real)
    vendi_ratio, pairwise_ratio = _ratio(f.vendi, f.real_vendi), _ratio(f.pairwise, f.real_pairwise)
    spread_ratio = _ratio(f.spread, f.real_spread)
    count, means, top5_counts = scores.acc.count, scores.means, scores.counts[COL_CLASSIFIER_TOP5]
    rows = []
    for c in range(len(records)):
        if real is not None and f.real_count[c] > 0:
            concept_other = bool(f.nearest_real[c] >= 0 and f.nearest_real[c] != c)
        else:
            concept_other = bool(count[c] > 0 and f.text_nearest[c] >= 0 and f.text_nearest[c] != c)
        name_evidence = bool(shared[c][0] or (senses[c] is not None and senses[c] > 1) or twins[c])
        ev = ClassEvidence(
            name_evidence=name_evidence, confusion_share=float(f.confusion[c]), concept_other=concept_other,
            vendi=float(f.vendi[c]), mean_pairwise_similarity=float(f.pairwise[c]),
            vendi_ratio=float(vendi_ratio[c]), clip_class_prob_mean=float(means[COL_CLIP_CLASS_PROB][c]),
            classifier_top5_rate=float(means[COL_CLASSIFIER_TOP5][c]) if top5_counts[c] > 0 else None,
        )
        flags = class_flags(ev, cfg) if count[c] > 0 else []
        verdict = verdict_of(flags)
        other, text_nearest, nearest_real = int(scores.top_other[c]), f.text_nearest[c], f.nearest_real[c]
        rows.append({
            C.LABEL: c, C.CLASS_ID: ids[c], C.NAME: names[c], C.COUNT: int(count[c]),
            C.REAL_COUNT: int(f.real_count[c]), C.VERDICT: verdict, C.FLAGS: ",".join(flags),
            C.REMEDY: REMEDIES[verdict], C.STRATEGY: REMEDY_STRATEGIES.get(verdict),
            C.SHARED_LEMMAS: "; ".join(shared[c][0]), C.SHARED_WITH: "; ".join(shared[c][1]),
            C.WORDNET_SENSES: senses[c], C.TEXT_TWINS: "; ".join(ids[j] for j in twins[c]),
            C.CONFUSION_SHARE: float(f.confusion[c]), C.CONFUSED_WITH: ids[other] if other >= 0 else None,
            C.CONFUSED_WITH_SHARE: float(f.top_other_share[c]) if other >= 0 else 0.0,
            C.CLIP_SCORE_MEAN: float(means[COL_CLIP_SCORE][c]),
            C.CLIP_CLASS_PROB_MEAN: float(means[COL_CLIP_CLASS_PROB][c]),
            C.CLASSIFIER_TOP1_RATE: float(means[COL_CLASSIFIER_TOP1][c]),
            C.CLASSIFIER_TOP5_RATE: float(means[COL_CLASSIFIER_TOP5][c]),
            C.VENDI: float(f.vendi[c]), C.REAL_VENDI: float(f.real_vendi[c]),
            C.VENDI_RATIO: float(vendi_ratio[c]), C.MEAN_PAIRWISE_SIMILARITY: float(f.pairwise[c]),
            C.REAL_MEAN_PAIRWISE_SIMILARITY: float(f.real_pairwise[c]),
            C.PAIRWISE_SIMILARITY_RATIO: float(pairwise_ratio[c]),
            C.ZERO_SHOT_CENTROID_CLASS: ids[text_nearest] if text_nearest >= 0 else None,
            C.NEAREST_REAL_CLASS: ids[nearest_real] if nearest_real >= 0 else None,
            C.NEAREST_REAL_COSINE: float(f.nearest_real_cos[c]), C.CENTROID_COSINE: float(f.centroid_cos[c]),
            C.SPREAD: float(f.spread[c]), C.REAL_SPREAD: float(f.real_spread[c]),
            C.SPREAD_RATIO: float(spread_ratio[c]),
            C.MODALITY_GAP: float(f.gap[c]), C.REAL_MODALITY_GAP: float(f.real_gap[c]),
        })
    return rows


def diagnose_frame(records: Sequence[Mapping[str, Any]], text_emb: np.ndarray, scores: ScoreSums,
                   real: ClassAccumulator | None, cfg: DiagnoseConfig,
                   senses: Sequence[int | None] | None = None) -> tuple[Any, DiagnosisSummary]:
    """The per-class diagnosis table (a pandas frame) and the run-level summary (see :func:`diagnosis_rows`)."""
    rows = diagnosis_rows(records, text_emb, scores, real, cfg, senses)
    return diagnosis_frame(rows), _summary(rows, scores.acc, real, text_emb, cfg)


def overall_geometry(acc: ClassAccumulator, real: ClassAccumulator | None, text_emb: np.ndarray) -> Geometry:
    """Run-level CLIP geometry: all synthetic images vs all real ones and vs the texts of their classes.

    ``centroid_cosine``: cosine of the global synthetic and real centroids; ``spread``/``real_spread``: RMS
    distance of every image to the global centroid of its side; ``modality_gap``: distance between the
    synthetic image centroid and the mean of the class texts weighted by image counts (Liang et al. 2022).
    """

    def side(a: ClassAccumulator) -> tuple[int, np.ndarray, float]:
        n = int(a.count.sum())
        total = a.emb_sum.sum(axis=0)
        spread = rms_spread(np.array([n]), total[None], np.array([a.sq_norm_sum.sum()]))[0]
        return n, total / max(n, 1), float(spread)

    def text_mean(a: ClassAccumulator, n: int) -> np.ndarray:
        return (a.count[:, None] * np.asarray(text_emb, np.float64)).sum(axis=0) / max(n, 1)

    n, syn_mean, syn_spread = side(acc)
    gap = _finite(np.linalg.norm(syn_mean - text_mean(acc, n)))
    if real is None:
        return Geometry(images=n, spread=_finite(syn_spread), modality_gap=gap, real_images=None, real_spread=None,
                        centroid_cosine=None, real_modality_gap=None)
    rn, real_mean, real_spread = side(real)
    return Geometry(images=n, spread=_finite(syn_spread), modality_gap=gap, real_images=rn,
                    real_spread=_finite(real_spread),
                    centroid_cosine=_finite(rowwise_cosine(syn_mean[None], real_mean[None])[0]),
                    real_modality_gap=_finite(np.linalg.norm(real_mean - text_mean(real, rn))))


def _worst_first(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows by verdict severity, then lowest mean class probability (NaN first), then label."""
    def key(r: Mapping[str, Any]) -> tuple[int, int, float, int]:
        prob = r[C.CLIP_CLASS_PROB_MEAN]
        known = not math.isnan(prob)
        return VERDICT_SEVERITY[r[C.VERDICT]], int(known), prob if known else 0.0, r[C.LABEL]

    return sorted(rows, key=key)


def remedy_strategies(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """``{class_id: prompt strategy}`` for flagged classes a prompt strategy can help (for ``generate --top-up``).

    ``concept-failure`` classes are left out (no prompt fixes them: drop them or change the model).
    """
    return {str(r[C.CLASS_ID]): str(r[C.STRATEGY]) for r in rows
            if r[C.VERDICT] != VERDICT_OK and isinstance(r[C.STRATEGY], str) and r[C.STRATEGY]}


def _summary(rows: Sequence[Mapping[str, Any]], acc: ClassAccumulator, real: ClassAccumulator | None,
             text_emb: np.ndarray, cfg: DiagnoseConfig) -> DiagnosisSummary:
    flagged = _worst_first([r for r in rows if r[C.VERDICT] != VERDICT_OK])[: cfg.worst]
    return DiagnosisSummary(
        thresholds=json_safe(cfg.thresholds()),
        reference=cfg.reference,
        note=None if real is not None else
        "no real reference: real-side columns are null; concept-failure is judged against the class texts",
        classes=len(rows),
        verdict_counts={v: sum(r[C.VERDICT] == v for r in rows) for v in (*VERDICTS, VERDICT_OK)},
        flagged_classes=[FlaggedClass(class_id=r[C.CLASS_ID], name=r[C.NAME], verdict=r[C.VERDICT], flags=r[C.FLAGS],
                                      remedy=r[C.REMEDY]) for r in flagged],
        strategies=remedy_strategies(rows),
        geometry=overall_geometry(acc, real, text_emb),
    )


def read_remedy_strategies(run: str | Path) -> dict[str, str]:
    """``{class_id: prompt strategy}`` of a diagnosed run (``RUN/diagnosis.json``); empty when not diagnosed."""
    paths = run_paths(run)
    if not paths.diagnosis_json.is_file():
        return {}
    return read_remedy_strategies_file(paths.diagnosis_json)


def _reference_id(reference: str | None) -> str | None:
    return None if reference is None else str(Path(reference).resolve())


def stage_inputs(run: str | Path, cfg: DiagnoseConfig) -> StageInputs:
    """What the diagnose stage's outputs are made from (``pipeline.freshness``).

    Settings: the thresholds and sample sizes (``DiagnoseConfig.thresholds``), the resolved reference path and,
    for a folder, the identity of its images (names, sizes, modification times). Upstream: ``score``. Files:
    ``summary.json`` (a re-score rewrites it, even where ``score`` kept no record) and an ``.npz`` reference.
    Outputs: ``diagnosis.parquet``, ``diagnosis.json``, ``diagnosis_centroids.npz``.
    """
    paths = RunPaths(location(run))
    ref = cfg.reference
    files = (paths.summary_json, *([Path(ref)] if ref is not None and Path(ref).is_file() else []))
    settings = {"verdict_settings": json_safe(cfg.thresholds()), "reference_path": _reference_id(ref),
                "reference_images": reference_listing(ref)}
    return StageInputs(stage=STAGE, settings=settings, upstream=("score",), files=files,
                       outputs=(paths.diagnosis_parquet, paths.diagnosis_json, paths.diagnosis_centroids))


def _class_text_embeddings(paths: RunPaths, num_classes: int) -> np.ndarray:
    if not paths.class_text_embeddings.is_file():
        raise UserError(f"{paths.class_text_embeddings} missing: re-run 'imagenet-plus score'")
    text_emb = np.load(local_copy(paths.class_text_embeddings)).astype(np.float32)
    if text_emb.ndim != 2 or len(text_emb) != num_classes:
        raise UserError(f"{paths.class_text_embeddings} has {len(text_emb)} rows but the run has {num_classes} "
                        "classes: re-run 'imagenet-plus score'")
    return text_emb


@locked_run
def run_diagnose(run: str | Path, cfg: DiagnoseConfig | None = None) -> DiagnosisSummary:
    """Diagnose every class of a scored run; writes ``RUN/diagnosis.parquet``, ``.json`` and ``_centroids.npz``.

    A no-op when the stage is current (:func:`stage_inputs`); it then returns the summary it wrote before.

    Returns:
        ``RUN/diagnosis.json``.

    Raises:
        UserError: the run is not scored, its score files disagree, or the reference is unusable.
    """
    cfg = cfg or DiagnoseConfig()
    paths = run_paths(run)
    if not paths.summary_json.is_file() or not paths.scored_parquets():
        raise UserError(f"{paths.root} is not scored ({paths.summary_json} missing): run 'imagenet-plus score' first")
    inputs = stage_inputs(paths.root, cfg)
    if freshness.is_current(paths, inputs):
        return DiagnosisSummary.read(paths.diagnosis_json)
    records = read_class_records(paths)
    text_emb = _class_text_embeddings(paths, len(records))
    class_ids = [str(r["id"]) for r in records]
    real = None
    if cfg.reference is not None:
        real = load_reference_embeddings(cfg.reference, paths, class_ids, clip_model_of(paths), cfg)
        if real.emb_sum.shape[1] != text_emb.shape[1]:
            raise UserError(f"reference {cfg.reference} has CLIP embeddings of size {real.emb_sum.shape[1]}, the run "
                            f"{text_emb.shape[1]}: embed it with the run's CLIP model")
    scores = read_score_sums(paths, len(records), text_emb, cfg.sample_per_class)
    frame, summary = diagnose_frame(records, text_emb, scores, real, cfg)
    with atomic_file(paths.diagnosis_parquet) as f:
        frame.to_parquet(f, index=False)
    DiagnosisCentroids(class_ids, scores.acc.centroids(), real.centroids() if real is not None else None).write(
        paths.diagnosis_centroids)
    summary.write(paths.diagnosis_json)
    freshness.mark_current(paths, inputs, {"num_classes": summary.classes, "num_flagged": summary.num_flagged})
    return summary


def write_centroids(path: Path, class_ids: Sequence[str], synthetic: np.ndarray, real: np.ndarray | None) -> None:
    """Write ``RUN/diagnosis_centroids.npz`` (``contract.DiagnosisCentroids``; NaN rows for empty classes)."""
    DiagnosisCentroids([str(c) for c in class_ids], synthetic, real).write(path)


def json_safe(value: Any) -> Any:
    """NaN and infinities → None, numpy scalars → Python ones, recursively (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
