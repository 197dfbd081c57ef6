"""The report's tables: one row per class (``per_class.csv``), rates by WordNet group, and the class sample."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imagenet_plus.report.inputs import CLASS_STATS
from imagenet_plus.report.scan import CLASS_MEANS, ScoreScan

#: Columns of the per-class table shown on the page and written to per_class.csv, in order.
TABLE_COLUMNS = ("label", "class_id", "name", "group", "images", "kept", "pass_rate", "top1_rate", "top5_rate",
                 "clip_score_mean", "clip_class_prob_mean", *CLASS_STATS)


def group_name(group: str | None) -> str:
    """``noun.animal`` → ``animal``; empty (custom classes) → ``custom``."""
    if not group:
        return "custom"
    return str(group).split(".", 1)[-1]


def per_class_table(scan: ScoreScan, classes: list[dict[str, Any]], class_stats: Mapping[str, Mapping[str, Any]],
                    has_selection: bool) -> Any:
    """One row per class (label order): counts, pass/kept rate, classifier hits, CLIP means and summary stats.

    Classes without images have an image count of 0 and empty rates.

    Args:
        scan: the first pass over the shards.
        classes: ``classes.json``'s records.
        class_stats: class id → its per-class figures of summary.json (``ScoreFacts.per_class``).
        has_selection: whether the run has a selection (adds ``kept`` and ``pass_rate``).
    """
    import numpy as np
    import pandas as pd

    table = pd.DataFrame({
        "label": [c["label"] for c in classes],
        "class_id": [c["id"] for c in classes],
        "name": [c.get("name", c["id"]) for c in classes],
        "group": [group_name(c.get("group")) for c in classes],
        "images": scan.class_images,
    })
    have = scan.class_images > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        for out in CLASS_MEANS:
            if out in scan.sums:
                table[out] = np.where(scan.counts[out] > 0, scan.sums[out] / np.maximum(scan.counts[out], 1), np.nan)
        if has_selection:
            kept = pd.Series(np.where(have, scan.class_kept, np.nan))
            table["kept"] = kept.astype(int) if have.all() else kept
            table["pass_rate"] = np.where(have, scan.class_passed / np.maximum(scan.class_images, 1), np.nan)
    for key in CLASS_STATS:
        table[key] = [(class_stats.get(c) or {}).get(key) for c in table["class_id"]]
    floats = [key for key, is_float in CLASS_STATS.items() if is_float]
    table[floats] = table[floats].astype(float)
    return table


def group_table(table: Any) -> Any:
    """Rates by WordNet group: classes, images, kept, and mean per-class rates."""
    agg: dict[str, Any] = {"classes": ("class_id", "count"), "images": ("images", "sum")}
    for col in ("kept", "pass_rate", "top1_rate", "top5_rate", "clip_class_prob_mean", "clip_score_mean"):
        if col in table.columns:
            agg[col] = (col, "sum" if col == "kept" else "mean")
    return table.groupby("group").agg(**agg).reset_index().sort_values("images", ascending=False)


def sample_classes(table: Any, k: int, seed: int) -> list[str]:
    """``k`` class ids that have images, drawn with ``seed``, returned in label order."""
    import numpy as np

    have = table[table["images"] > 0]
    if len(have) <= k:
        return list(have["class_id"])
    idx = np.sort(np.random.default_rng(seed).choice(len(have), size=k, replace=False))
    return list(have["class_id"].iloc[idx])
