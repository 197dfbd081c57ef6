"""The score files: the column table of ``RUN/scores/NNNNN.parquet``.

Its arrow schema, required columns, the card's feature types and the builder's columns derive from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from imagenet_plus.errors import UserError

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
# selection

