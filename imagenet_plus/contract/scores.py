"""The score files: the column table of ``RUN/scores/NNNNN.parquet`` and the records of ``RUN/scores/*.json``.

The parquet's arrow schema, required columns, the card's feature types and the builder's columns derive
from the column table. ``summary.json`` is :class:`ScoreSummary` (its dataset metrics,
:class:`DatasetMetrics`, with one :class:`ClassScores` per class), ``models.json`` is :class:`ModelsRecord`,
a shard's ``NNNNN.stats.json`` and ``NNNNN.bad.json`` are :class:`ScoredShard` and :class:`BadShard`.
The metrics' display names are :data:`METRIC_LABELS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from imagenet_plus.contract.generated import stats_digest, stats_path
from imagenet_plus.contract.typed import TypedRecord
from imagenet_plus.errors import CorruptShard, UserError

# ------------------------------------------------------------------------------------------------------------
# the score table

#: Score column names: the only place they are spelled (other modules use these constants).
COL_CLIP_SCORE = "clip_score"
COL_CLIP_CLASS_SCORE = "clip_class_score"
COL_CLIP_CLASS_PROB = "clip_class_prob"
COL_CLIP_CLASS_RANK = "clip_class_rank"
COL_ISC_KL = "isc_kl"
COL_CLASSIFIER_TOP1 = "classifier_top1"
COL_CLASSIFIER_TOP5 = "classifier_top5"
COL_CLASSIFIER_PROB = "classifier_prob"
COL_REALISM = "realism"
COL_NSFW_SCORE = "nsfw_score"
COL_DUP_OF = "dup_of"

#: ``RUN/scores/NNNNN.parquet``: (column, arrow/datasets dtype, copied into a release's ``json.scores``).
#: The one list every score column comes from: the parquet schema, required columns, the card's features
#: and the builder's columns are derived from it.
_SCORE_TABLE: tuple[tuple[str, str, bool], ...] = (
    ("key", "string", False),
    ("label", "int64", False),
    ("class_id", "string", False),
    (COL_CLIP_SCORE, "float64", True),
    (COL_CLIP_CLASS_SCORE, "float64", True),
    (COL_CLIP_CLASS_PROB, "float64", True),
    (COL_CLIP_CLASS_RANK, "int64", True),
    (COL_ISC_KL, "float64", True),
    (COL_CLASSIFIER_TOP1, "bool", True),
    (COL_CLASSIFIER_TOP5, "bool", True),
    (COL_CLASSIFIER_PROB, "float64", True),
    (COL_REALISM, "float64", True),
    (COL_NSFW_SCORE, "float64", True),
    (COL_DUP_OF, "string", False),
    ("nsfw", "bool", False),
    ("attempt", "int64", False),
    ("strategy", "string", False),
)
#: Columns of a scores parquet, in order.
SCORE_COLUMNS: tuple[str, ...] = tuple(name for name, _, _ in _SCORE_TABLE)
#: Columns later stages cannot do without.
REQUIRED_SCORE_COLUMNS = (
    "key", "label", "class_id", COL_CLIP_SCORE, COL_CLIP_CLASS_PROB, COL_ISC_KL, COL_DUP_OF, "nsfw",
)
#: Columns filled by the dataset pass (need every shard), null after pass 1.
DATASET_PASS_COLUMNS = (COL_ISC_KL, COL_REALISM, COL_DUP_OF)
#: Column of ``selection.parquet`` copied into release scores beside the score columns.
COMPOSITE = "composite"
#: ``json.scores`` of a release sample: score → datasets dtype (null when not computed).
RELEASE_SCORE_FIELDS: dict[str, str] = {
    **{name: dtype for name, dtype, in_release in _SCORE_TABLE if in_release},
    COMPOSITE: "float64",
}


@lru_cache(maxsize=1)
def score_schema() -> Any:
    """The pyarrow schema of a scores parquet (pyarrow imported only when asked)."""
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
    return pa.schema([(name, types[dtype]) for name, dtype, _ in _SCORE_TABLE])


def score_table(columns: Mapping[str, Any]) -> Any:
    """Build the arrow table of a scores parquet from column lists.

    Raises:
        UserError: a column is missing, or one that is not in the schema is given (a writer out of contract).
    """
    import pyarrow as pa

    schema = score_schema()
    extra = sorted(set(columns) - set(schema.names))
    if extra:
        raise UserError(f"score column(s) {', '.join(extra)} are not in the score schema (imagenet_plus.contract)")
    missing = [n for n in schema.names if n not in columns]
    if missing:
        raise UserError(f"score table lacks column(s) {', '.join(missing)}")
    return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)


def check_score_columns(names: Iterable[str], source: Path | str) -> None:
    """Raise naming ``source`` when a scores frame lacks a required column."""
    names = set(names)
    missing = [c for c in REQUIRED_SCORE_COLUMNS if c not in names]
    if missing:
        raise UserError(f"scores file {source} lacks column(s) {', '.join(missing)}")


# ------------------------------------------------------------------------------------------------------------
# RUN/scores/*.json


@dataclass(frozen=True)
class ModelsRecord(TypedRecord):
    """``RUN/scores/models.json``: the scorers the shards were computed with (the score config's model settings).

    Attributes:
        clip: CLIP Hub id, local folder or ``tiny-random``.
        inception_weights: the InceptionV3 weights file, ``tiny-random``, or ``torch-fidelity default``.
        classifier: the timm classifier.
        nsfw_detector: the NSFW image classifier, or ``none``.
    """

    clip: str
    inception_weights: str
    classifier: str
    nsfw_detector: str


#: ``models.json``'s ``inception_weights`` when the score config names none (torch-fidelity's own weights).
DEFAULT_INCEPTION_WEIGHTS = "torch-fidelity default"


@dataclass(frozen=True)
class SummaryModels(ModelsRecord):
    """``summary.json``'s ``models``: :class:`ModelsRecord` plus the identity of the Inception weights used.

    Attributes:
        inception_weights_id: the weights' identity (``sha256-…`` of the file, or torch-fidelity's default).
    """

    inception_weights_id: str


@dataclass(frozen=True)
class BadShard(TypedRecord):
    """A generated shard that did not read back and was skipped (``--skip-bad-shards``): ``NNNNN.bad.json``
    beside the scores, and an entry of ``summary.json``'s ``bad_shards``."""

    shard: str
    error: str


@dataclass(frozen=True)
class ScoredShard(TypedRecord):
    """``RUN/scores/NNNNN.stats.json``: who scored a shard, how long it took, and which making of the generated
    shard it scored (written after the shard's parquet: the last of its score files).

    Attributes:
        generated: SHA-256 of the generated shard's stats JSON when it was scored
            (``contract.generated.stats_digest``): scores whose generated shard was made again since, or lost
            its stats, are stale (:func:`stale_scores`).
    """

    shard: str
    count: int
    rank: int
    world_size: int
    seconds: float
    generated: str


def stale_scores(parquet: Path, record: Path, generated_tar: Path) -> str | None:
    """Why the scores of one shard must not be used (their generated shard is not the one they scored), or None.

    Stale: the generated tar is there without its stats (not finished: its stats were deleted, or a crash
    came between the two), or the shard's :class:`ScoredShard` record does not read back or names another
    making of the generated shard than the one now on disk. Scores written without a record (made outside the
    score stage) and without a generated tar are taken as they are.
    """
    stats = stats_path(generated_tar)
    if generated_tar.is_file() and not stats.is_file():
        return f"{generated_tar} has no stats file {stats.name} (it is not finished)"
    if not record.is_file():
        return None
    try:
        scored = ScoredShard.read(record)
    except UserError as exc:
        return exc.message
    now = stats_digest(generated_tar)
    if now is None:
        return f"their generated shard's stats {stats} are missing"
    if scored.generated != now:
        return f"{generated_tar} was made again after {parquet.name} was scored"
    return None


@dataclass(frozen=True)
class ClassScores(TypedRecord):
    """``summary.json``'s ``per_class`` entry of one class (null figures: no image, or not computable).

    Attributes:
        count: images of the class that were scored.
        fid: FID of the class's images against the reference's images of the class.
        vendi: Vendi score of the class's CLIP image embeddings.
        clip_score_mean: mean CLIP score (image vs its prompt).
        classifier_top1_rate: share of the class's images the classifier puts first (classes it knows).
        classifier_top5_rate: the same in its top 5.
        duplicates: images marked as near-duplicates of an earlier one (``dup_of`` set).
    """

    count: int
    fid: float | None
    vendi: float | None
    clip_score_mean: float | None
    classifier_top1_rate: float | None
    classifier_top5_rate: float | None
    duplicates: int


@dataclass(frozen=True)
class DatasetMetrics(TypedRecord):
    """What the dataset pass measures over every scored image (``score.run_dataset_pass``).

    Null where a figure cannot be computed (no reference, too few images, a statistics-only reference).

    Attributes:
        fid: Fréchet Inception distance to the reference.
        kid_mean: kernel Inception distance (mean over subsets).
        kid_std: its standard deviation over subsets.
        inception_score_mean: Inception Score (mean over splits).
        inception_score_std: its standard deviation over splits.
        clip_score_mean: mean CLIP score (image vs its prompt).
        precision: improved precision (Kynkäänniemi et al. 2019).
        recall: improved recall.
        num_images: images scored.
        duplicates: images marked as near-duplicates.
        classifier_top1_rate: the classifier's top-1 rate over the images of classes it knows.
        classifier_top5_rate: its top-5 rate.
        per_class: class id → :class:`ClassScores`, in label order.
    """

    fid: float | None
    kid_mean: float | None
    kid_std: float | None
    inception_score_mean: float | None
    inception_score_std: float | None
    clip_score_mean: float | None
    precision: float | None
    recall: float | None
    num_images: int
    duplicates: int
    classifier_top1_rate: float | None
    classifier_top5_rate: float | None
    per_class: dict[str, ClassScores]


@dataclass(frozen=True)
class ScoreSummary(DatasetMetrics):
    """``RUN/scores/summary.json``: the dataset metrics and what they were computed from (written last).

    Attributes:
        shards: stems of every finished generated shard when the stage ran (bad ones included).
        bad_shards: the shards skipped as unreadable.
        models: the scorers.
        reference: the real reference as ``score.reference.Reference.describe()`` gives it (path, kind,
            content hash, Inception weights, extraction protocol, image count, per class), or null.
        reference_arg: the ``--reference`` path, resolved (null without one).
        config: the score config.
        versions: library → installed version.
    """

    shards: list[str]
    bad_shards: list[BadShard]
    models: SummaryModels
    reference: dict[str, Any] | None
    reference_arg: str | None
    config: dict[str, Any]
    versions: dict[str, str | None]

    @classmethod
    def of(cls, metrics: DatasetMetrics, **run: Any) -> ScoreSummary:
        """The summary of a run: the dataset pass's ``metrics`` and the run's fields (``shards=…``, …)."""
        return cls(**{f.name: getattr(metrics, f.name) for f in fields(DatasetMetrics)}, **run)


def unreadable_scores(path: Path, exc: BaseException) -> CorruptShard:
    """The one-line error for a scores file that does not read back: re-running ``score`` scores it again."""
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    return CorruptShard(path, f"unreadable scores file ({type(exc).__name__}: {reason}); run "
                              f"'imagenet-plus score {path.parent.parent}' to score that shard again")


# ------------------------------------------------------------------------------------------------------------
# display names of the metrics


@dataclass(frozen=True)
class MetricLabel:
    """How a summary figure is named where people read it.

    Attributes:
        key: the :class:`ScoreSummary` field.
        label: its name in a table of single figures (the report's headline).
        card_label: its name in the dataset card's metrics table, where a mean and its standard deviation
            share one row (``mean ± std``); None for a standard deviation (shown in its mean's row).
        std_key: the field holding this figure's standard deviation, if any.
    """

    key: str
    label: str
    card_label: str | None
    std_key: str | None = None


#: The summary's figures and their display names, the one place they are spelled (headline order).
METRIC_LABELS: tuple[MetricLabel, ...] = (
    MetricLabel("num_images", "images scored", "images scored"),
    MetricLabel("fid", "FID", "FID (Inception pool3, vs reference)"),
    MetricLabel("kid_mean", "KID (mean)", "KID", std_key="kid_std"),
    MetricLabel("kid_std", "KID (std)", None),
    MetricLabel("inception_score_mean", "Inception Score (mean)", "Inception Score", std_key="inception_score_std"),
    MetricLabel("inception_score_std", "Inception Score (std)", None),
    MetricLabel("clip_score_mean", "CLIP score (mean)", "CLIP score (mean, 100·cos)"),
    MetricLabel("precision", "precision (Kynkäänniemi)", "precision (Kynkäänniemi et al.)"),
    MetricLabel("recall", "recall (Kynkäänniemi)", "recall (Kynkäänniemi et al.)"),
)


def headline_labels() -> dict[str, str]:
    """Summary field → its name in a table of single figures, in headline order."""
    return {m.key: m.label for m in METRIC_LABELS}


def card_metric_rows() -> list[MetricLabel]:
    """The rows of the card's metrics table, in card order: the dataset metrics, then the image count."""
    rows = [m for m in METRIC_LABELS if m.card_label is not None]
    return [m for m in rows if m.key != "num_images"] + [m for m in rows if m.key == "num_images"]
