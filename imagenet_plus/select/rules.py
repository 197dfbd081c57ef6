"""select's rules: the per-image filters of the thresholds, in their fixed order, over arrow score tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagenet_plus.contract import (
    COL_CLASSIFIER_TOP5,
    COL_CLIP_CLASS_PROB,
    COL_CLIP_SCORE,
    COL_DUP_OF,
    COL_ISC_KL,
    COL_NSFW_SCORE,
    COL_REALISM,
    REASON_DUPLICATE,
    REASON_NOT_TOP5,
    REASON_NSFW,
)
from imagenet_plus.select.config import Thresholds


def floats(table: Any, col: str) -> Any:
    """Column ``col`` of an arrow table as float64 (NaN where null; all NaN when the table lacks it)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if col not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return pc.cast(table.column(col), pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def bools(table: Any, col: str, value: bool) -> Any:
    """Where column ``col`` of an arrow table equals ``value`` (False where null or when the table lacks it)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if col not in table.column_names:
        return np.zeros(table.num_rows, dtype=bool)
    column = pc.cast(table.column(col), pa.bool_())
    return pc.fill_null(pc.equal(column, value), False).to_numpy(zero_copy_only=False).astype(bool, copy=False)


@dataclass(frozen=True)
class Rule:
    """One per-image rule: its reason, the score column it needs values of, and where a shard fails it.

    Attributes:
        reason: the ``reason`` of the images that fail it first.
        column: the score column that must have a value somewhere (else ``missing`` is raised), or None.
        missing: the UserError message when ``column`` has no value in any scores file.
        fails: ``fails(table, cls)``: bool array, where the rows of an arrow scores table fail the rule
            (``cls``: the rows' class codes, indices into ``classes.json``).
    """

    reason: str
    column: str | None
    missing: str
    fails: Any


def rules_of(th: Thresholds, dropped: Any) -> list[Rule]:
    """The rules in force under ``th``, in their fixed order (see the module docstring).

    Args:
        th: the thresholds.
        dropped: class codes (indices into ``classes.json``) dropped by the class FID rule; may be empty.
    """
    import numpy as np

    rules = []
    if len(dropped):
        rules.append(Rule(f"class_fid>{th.class_fid_max:g}", None, "",
                          lambda t, cls, codes=np.asarray(dropped): np.isin(cls, codes)))
    if th.drop_nsfw:
        rules.append(Rule(REASON_NSFW, None, "",
                          lambda t, cls, limit=th.nsfw_score_max: bools(t, "nsfw", True)
                          | (floats(t, COL_NSFW_SCORE) > limit)))
    if th.drop_duplicates:
        rules.append(Rule(REASON_DUPLICATE, None, "", lambda t, cls: _is_duplicate(t)))
    for col, key in ((COL_CLIP_SCORE, "clip_score_min"), (COL_CLIP_CLASS_PROB, "clip_class_prob_min"),
                     (COL_ISC_KL, "isc_kl_min"), (COL_REALISM, "realism_min")):
        limit = getattr(th, key)
        if limit is not None:
            missing = (f"{th.source}: key '{key}' is set but the scores have no '{col}' values "
                       "(re-run 'imagenet-plus score' with the scorer that computes it, or remove the key)")
            rules.append(Rule(f"{col}<{limit:g}", col, missing,
                              lambda t, cls, col=col, limit=limit: floats(t, col) < limit))
    if th.classifier_top5:
        missing = (f"{th.source}: key 'classifier_top5' is true but the scores have no ImageNet classifier results "
                   "(only ImageNet-1k classes have them)")
        rules.append(Rule(REASON_NOT_TOP5, COL_CLASSIFIER_TOP5, missing,
                          lambda t, cls: bools(t, COL_CLASSIFIER_TOP5, False)))
    return rules


def _is_duplicate(table: Any) -> Any:
    """Rows whose ``dup_of`` is set (not null, not empty)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    dup = pc.cast(table.column(COL_DUP_OF), pa.string())
    return pc.fill_null(pc.not_equal(dup, ""), False).to_numpy(zero_copy_only=False).astype(bool, copy=False)
