"""select's outputs: the row order and ``selection.parquet``, and the ``selection.json`` summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagenet_plus.contract import PASSED_REASONS, REASON_KEPT, SelectionSummary
from imagenet_plus.contract.selection import selection_schema
from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import atomic_file
from imagenet_plus.select.config import Thresholds
from imagenet_plus.select.scored import ScoredRows

#: Rows handled at once when checking keys and writing ``selection.parquet`` (bounds the per-batch copies).
BATCH_ROWS = 65_536


def output_order(keys: Any, label: Any) -> Any:
    """int64 row order of ``selection.parquet``: by label, then key; checks that no key appears twice.

    Raises:
        UserError: a key appears twice.
    """
    import numpy as np
    import pyarrow.compute as pc

    by_key = pc.sort_indices(keys).to_numpy(zero_copy_only=False).astype(np.int64)
    for i in range(0, max(len(by_key) - 1, 0), BATCH_ROWS):
        run = keys.take(by_key[i:i + BATCH_ROWS + 1])
        same = pc.equal(run.slice(0, len(run) - 1), run.slice(1)).to_numpy(zero_copy_only=False)
        if same.any():
            raise UserError(f"key {run[int(np.argmax(same))].as_py()!r} appears twice in the scores")
    return by_key[np.argsort(label[by_key], kind="stable")]


def summarize_selection(cls: Any, reason: Any, names: list[str], class_ids: list[str], th: Thresholds, quota: int,
                        class_fid: dict[str, Any]) -> SelectionSummary:
    """``selection.json`` of a selection: per-class pass rates, kept counts, short and dropped classes.

    Args:
        cls: each row's class code (index into ``class_ids``).
        reason: each row's reason code (index into ``names``).
        names: the reason of each code.
        class_ids: the class ids of ``classes.json``, in label order.
        th: the thresholds.
        quota: images to keep per class.
        class_fid: per-class FID from summary.json (may be empty).
    """
    import numpy as np

    flagged = []
    if th.class_fid_max is not None:
        flagged = sorted(c for c, f in class_fid.items() if f is not None and float(f) > th.class_fid_max)
    dropped = flagged if th.class_fid_action == "drop" else []
    codes = len(class_ids)
    passed_codes = [k for k, name in enumerate(names) if name in PASSED_REASONS]
    total = np.bincount(cls, minlength=codes)
    passed = np.bincount(cls[np.isin(reason, passed_codes)], minlength=codes)
    kept = np.bincount(cls[reason == names.index(REASON_KEPT)], minlength=codes)
    first = {}
    for i, c in enumerate(class_ids):
        first.setdefault(c, i)
    pass_rate = {c: round(float(passed[first[c]]) / float(total[first[c]]), 6) if total[first[c]] else 0.0
                 for c in class_ids}
    kept_n = {c: int(kept[first[c]]) for c in class_ids}
    per_reason = np.bincount(reason, minlength=len(names))
    return SelectionSummary(
        thresholds=th.to_dict(),
        per_class_quota=quota,
        pass_rate=pass_rate,
        kept=kept_n,
        short={c: quota - kept_n[c] for c in class_ids if kept_n[c] < quota and c not in dropped},
        dropped_classes=dropped,
        flagged_classes=flagged if th.class_fid_action == "flag" else [],
        reasons={names[k]: int(per_reason[k]) for k in sorted(np.flatnonzero(per_reason), key=lambda k: names[k])},
        num_kept=int(kept.sum()),
        num_scored=len(cls),
    )


def write_selection(path: Path, rows: ScoredRows, order: Any, class_ids: list[str], reason: Any,
                    names: list[str], composite: Any) -> None:
    """Write ``selection.parquet`` (:func:`~imagenet_plus.contract.selection.selection_schema`) in ``order``.

    Written :data:`BATCH_ROWS` rows at a time (one row group each), atomically.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = selection_schema()
    class_values = pa.array(class_ids, type=pa.string())
    reason_values = pa.array(names, type=pa.string())
    kept_code = names.index(REASON_KEPT)
    with atomic_file(path) as f, pq.ParquetWriter(f, schema) as writer:
        for i in range(0, len(order), BATCH_ROWS):
            idx = order[i:i + BATCH_ROWS]
            code = reason[idx]
            writer.write_table(pa.table([rows.keys.take(idx), pa.array(rows.label[idx], type=pa.int64()),
                                         class_values.take(rows.cls[idx]), pa.array(code == kept_code),
                                         reason_values.take(code), pa.array(composite[idx], type=pa.float64())],
                                        schema=schema))
