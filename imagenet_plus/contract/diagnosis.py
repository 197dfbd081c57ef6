"""The diagnosis files: the verdicts, the column table of ``RUN/diagnosis.parquet``, the record of
``RUN/diagnosis.json`` (:class:`DiagnosisSummary`) and the centroids file ``RUN/diagnosis_centroids.npz``
(:class:`DiagnosisCentroids`).

Every column name of ``diagnosis.parquet`` is spelled once, in :class:`DiagnosisColumns`; the table
:data:`_DIAGNOSIS_TABLE` gives their order and types, from which :data:`DIAGNOSIS_COLUMNS`,
:func:`diagnosis_schema` and the writer's frame (:func:`diagnosis_frame`) derive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_plus.contract.records import read_json
from imagenet_plus.contract.typed import TypedRecord
from imagenet_plus.errors import UserError
from imagenet_plus.io import atomic  # the module: io.atomic imports contract.names, which runs this package
from imagenet_plus.io.storage import local_copy

# ------------------------------------------------------------------------------------------------------------
# verdicts

VERDICT_AMBIGUOUS = "ambiguous"
VERDICT_CONCEPT_FAILURE = "concept-failure"
VERDICT_LOW_DIVERSITY = "low-diversity"
VERDICT_LOW_ADHERENCE = "low-adherence"
#: Verdicts (and flags), most severe first: a class gets the first of its flags as its verdict.
VERDICTS = (VERDICT_AMBIGUOUS, VERDICT_CONCEPT_FAILURE, VERDICT_LOW_DIVERSITY, VERDICT_LOW_ADHERENCE)
#: The verdict of a class with no flag.
VERDICT_OK = "ok"
#: Verdict → its rank in a worst-first order (most severe 0, ``ok`` last).
VERDICT_SEVERITY = {v: i for i, v in enumerate((*VERDICTS, VERDICT_OK))}


# ------------------------------------------------------------------------------------------------------------
# RUN/diagnosis.parquet


class DiagnosisColumns:
    """Column names of ``RUN/diagnosis.parquet``: the only place they are spelled (see docs/diagnose.md)."""

    LABEL = "label"
    CLASS_ID = "class_id"
    NAME = "name"
    COUNT = "count"
    REAL_COUNT = "real_count"
    VERDICT = "verdict"
    FLAGS = "flags"
    REMEDY = "remedy"
    STRATEGY = "strategy"
    SHARED_LEMMAS = "shared_lemmas"
    SHARED_WITH = "shared_with"
    WORDNET_SENSES = "wordnet_senses"
    TEXT_TWINS = "text_twins"
    CONFUSION_SHARE = "confusion_share"
    CONFUSED_WITH = "confused_with"
    CONFUSED_WITH_SHARE = "confused_with_share"
    CLIP_SCORE_MEAN = "clip_score_mean"
    CLIP_CLASS_PROB_MEAN = "clip_class_prob_mean"
    CLASSIFIER_TOP1_RATE = "classifier_top1_rate"
    CLASSIFIER_TOP5_RATE = "classifier_top5_rate"
    VENDI = "vendi"
    REAL_VENDI = "real_vendi"
    VENDI_RATIO = "vendi_ratio"
    MEAN_PAIRWISE_SIMILARITY = "mean_pairwise_similarity"
    REAL_MEAN_PAIRWISE_SIMILARITY = "real_mean_pairwise_similarity"
    PAIRWISE_SIMILARITY_RATIO = "pairwise_similarity_ratio"
    ZERO_SHOT_CENTROID_CLASS = "zero_shot_centroid_class"
    NEAREST_REAL_CLASS = "nearest_real_class"
    NEAREST_REAL_COSINE = "nearest_real_cosine"
    CENTROID_COSINE = "centroid_cosine"
    SPREAD = "spread"
    REAL_SPREAD = "real_spread"
    SPREAD_RATIO = "spread_ratio"
    MODALITY_GAP = "modality_gap"
    REAL_MODALITY_GAP = "real_modality_gap"


_C = DiagnosisColumns
#: ``RUN/diagnosis.parquet``, one row per class in label order: (column, dtype). ``string`` columns may be
#: null; ``int64?`` is an integer that may be null (pandas ``Int64``); ``float64`` columns are NaN where a
#: figure is not available (real-side columns without a reference).
_DIAGNOSIS_TABLE: tuple[tuple[str, str], ...] = (
    (_C.LABEL, "int64"),
    (_C.CLASS_ID, "string"),
    (_C.NAME, "string"),
    (_C.COUNT, "int64"),
    (_C.REAL_COUNT, "int64"),
    (_C.VERDICT, "string"),
    (_C.FLAGS, "string"),
    (_C.REMEDY, "string"),
    (_C.STRATEGY, "string"),
    (_C.SHARED_LEMMAS, "string"),
    (_C.SHARED_WITH, "string"),
    (_C.WORDNET_SENSES, "int64?"),
    (_C.TEXT_TWINS, "string"),
    (_C.CONFUSION_SHARE, "float64"),
    (_C.CONFUSED_WITH, "string"),
    (_C.CONFUSED_WITH_SHARE, "float64"),
    (_C.CLIP_SCORE_MEAN, "float64"),
    (_C.CLIP_CLASS_PROB_MEAN, "float64"),
    (_C.CLASSIFIER_TOP1_RATE, "float64"),
    (_C.CLASSIFIER_TOP5_RATE, "float64"),
    (_C.VENDI, "float64"),
    (_C.REAL_VENDI, "float64"),
    (_C.VENDI_RATIO, "float64"),
    (_C.MEAN_PAIRWISE_SIMILARITY, "float64"),
    (_C.REAL_MEAN_PAIRWISE_SIMILARITY, "float64"),
    (_C.PAIRWISE_SIMILARITY_RATIO, "float64"),
    (_C.ZERO_SHOT_CENTROID_CLASS, "string"),
    (_C.NEAREST_REAL_CLASS, "string"),
    (_C.NEAREST_REAL_COSINE, "float64"),
    (_C.CENTROID_COSINE, "float64"),
    (_C.SPREAD, "float64"),
    (_C.REAL_SPREAD, "float64"),
    (_C.SPREAD_RATIO, "float64"),
    (_C.MODALITY_GAP, "float64"),
    (_C.REAL_MODALITY_GAP, "float64"),
)
#: Columns of ``diagnosis.parquet``, in order.
DIAGNOSIS_COLUMNS: tuple[str, ...] = tuple(name for name, _ in _DIAGNOSIS_TABLE)


@lru_cache(maxsize=1)
def diagnosis_schema() -> Any:
    """The pyarrow schema of ``diagnosis.parquet`` (pyarrow imported only when asked).

    The writer leaves a ``string`` column that is null in every row as pandas writes it (arrow's ``null``
    type), as the files of earlier versions have it; readers get the same values either way.
    """
    import pyarrow as pa

    types = {"string": pa.large_string(), "int64": pa.int64(), "int64?": pa.int64(), "float64": pa.float64()}
    return pa.schema([(name, types[dtype]) for name, dtype in _DIAGNOSIS_TABLE])


def diagnosis_frame(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The pandas frame of ``diagnosis.parquet`` from one mapping per class (column → value).

    Raises:
        UserError: a row lacks a column of the table or has one outside it (a writer out of contract).
    """
    import pandas as pd

    expected = set(DIAGNOSIS_COLUMNS)
    for row in rows:
        if set(row) != expected:
            extra, missing = sorted(set(row) - expected), sorted(expected - set(row))
            raise UserError(f"diagnosis row out of the diagnosis table (imagenet_plus.contract.diagnosis): "
                            f"extra column(s) {extra}, missing column(s) {missing}")
    frame = pd.DataFrame(list(rows), columns=list(DIAGNOSIS_COLUMNS))
    for name, dtype in _DIAGNOSIS_TABLE:
        if dtype == "int64?":
            frame[name] = frame[name].astype("Int64")
    return frame


# ------------------------------------------------------------------------------------------------------------
# RUN/diagnosis.json


@dataclass(frozen=True)
class FlaggedClass(TypedRecord):
    """A flagged class as ``diagnosis.json`` lists it (worst first), with its row's figures of the same name."""

    class_id: str
    name: str
    verdict: str
    flags: str
    remedy: str


@dataclass(frozen=True)
class Geometry(TypedRecord):
    """Run-level CLIP geometry: all synthetic images vs all real ones and vs the texts of their classes.

    Attributes:
        images: synthetic images.
        spread: RMS distance of every synthetic image embedding to their global centroid.
        modality_gap: distance between the synthetic image centroid and the count-weighted mean class text.
        real_images: real reference images (null without a reference).
        real_spread: the same spread over the real images.
        centroid_cosine: cosine of the synthetic and real global centroids.
        real_modality_gap: the modality gap of the real images.
    """

    images: int
    spread: float | None
    modality_gap: float | None
    real_images: int | None
    real_spread: float | None
    centroid_cosine: float | None
    real_modality_gap: float | None


@dataclass(frozen=True)
class DiagnosisSummary(TypedRecord):
    """``RUN/diagnosis.json``: the run-level summary beside ``diagnosis.parquet``.

    Attributes:
        thresholds: the diagnose settings the verdicts were judged with (name → value).
        reference: the ``--reference`` given, or null.
        note: why real-side figures are missing (no reference), or null.
        classes: classes diagnosed.
        verdict_counts: verdict → classes, every verdict (most severe first, then ``ok``).
        flagged_classes: the flagged classes, worst first (at most the ``worst`` setting).
        strategies: class id → the prompt strategy ``generate --top-up --remedy`` gives its new images.
        geometry: the run-level CLIP geometry.
    """

    thresholds: dict[str, float | None]
    reference: str | None
    note: str | None
    classes: int
    verdict_counts: dict[str, int]
    flagged_classes: list[FlaggedClass]
    strategies: dict[str, str]
    geometry: Geometry

    @property
    def num_flagged(self) -> int:
        """Classes with a verdict other than ``ok``."""
        return sum(n for v, n in self.verdict_counts.items() if v != VERDICT_OK)

    def counts_by_severity(self) -> list[tuple[str, int]]:
        """``(verdict, classes)`` pairs, most severe first, ``ok`` last (the file stores them sorted by name)."""
        return sorted(self.verdict_counts.items(), key=lambda kv: VERDICT_SEVERITY.get(kv[0], len(VERDICT_SEVERITY)))


def read_remedy_strategies_file(path: Path) -> dict[str, str]:
    """``diagnosis.json``'s ``strategies`` alone (``generate --top-up --remedy`` needs nothing else).

    Raises:
        UserError: the file is unreadable, or its ``strategies`` is not an object of strings.
    """
    data = read_json(path)
    strategies = data.get("strategies") if isinstance(data, dict) else None
    if not isinstance(strategies, dict):
        raise UserError(f"{path} lacks the 'strategies' object: re-run 'imagenet-plus diagnose'")
    return {str(k): str(v) for k, v in strategies.items()}


# ------------------------------------------------------------------------------------------------------------
# RUN/diagnosis_centroids.npz

#: Arrays of ``diagnosis_centroids.npz``.
CENTROIDS_SYNTHETIC = "synthetic"
CENTROIDS_REAL = "real"
CENTROIDS_CLASS_IDS = "class_ids"
#: Arrays of a real reference given to ``diagnose --reference`` as an ``.npz`` of CLIP image embeddings
#: (``N×D``, the run's CLIP model) and the class id of each row.
REFERENCE_CLIP = "clip"
REFERENCE_CLASS_IDS = "class_ids"


@dataclass(frozen=True)
class DiagnosisCentroids:
    """``RUN/diagnosis_centroids.npz``: per-class CLIP image centroids, for the report's map.

    Attributes:
        class_ids: the class of each row (label order).
        synthetic: ``C×D`` float32 centroids of the synthetic images (NaN rows for classes without images).
        real: ``C×D`` float32 centroids of the real reference's images, or None without a reference (the
            array is then absent from the file).
    """

    class_ids: list[str]
    synthetic: np.ndarray
    real: np.ndarray | None = None

    def write(self, path: Path) -> None:
        """Write the ``.npz`` atomically."""
        arrays = {CENTROIDS_SYNTHETIC: np.asarray(self.synthetic, np.float32),
                  CENTROIDS_CLASS_IDS: np.asarray([str(c) for c in self.class_ids], dtype=np.str_)}
        if self.real is not None:
            arrays[CENTROIDS_REAL] = np.asarray(self.real, np.float32)
        with atomic.atomic_file(path) as f:
            np.savez(f, **arrays)

    @classmethod
    def read(cls, path: Path) -> DiagnosisCentroids:
        """Read the file back, its arrays checked against the class ids.

        Raises:
            UserError: the file is unreadable, lacks an array, or its arrays disagree in shape.
        """
        try:
            with np.load(local_copy(path), allow_pickle=False) as data:
                arrays = {k: np.asarray(data[k]) for k in data.files}
            class_ids = [str(c) for c in arrays[CENTROIDS_CLASS_IDS]]
            synthetic = arrays[CENTROIDS_SYNTHETIC]
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(f"unreadable {path}: {type(exc).__name__}: {exc}: "
                            "re-run 'imagenet-plus diagnose'") from None
        real = arrays.get(CENTROIDS_REAL)
        for name, a in ((CENTROIDS_SYNTHETIC, synthetic), (CENTROIDS_REAL, real)):
            if a is not None and (a.ndim != 2 or len(a) != len(class_ids)):
                raise UserError(f"{path}: '{name}' has shape {a.shape} but '{CENTROIDS_CLASS_IDS}' has "
                                f"{len(class_ids)} rows: re-run 'imagenet-plus diagnose'")
        return cls(class_ids, synthetic, real)
