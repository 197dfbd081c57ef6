"""The report's plots (matplotlib, Agg backend), each saved as a PNG through ``atomic_file``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagenet_plus.io.atomic import atomic_file
from imagenet_plus.report.inputs import (
    ARROW_COLUMNS,
    DIAG_CLASS_ID,
    DIAG_NAME,
    DIAG_VERDICT,
    VERDICT_OK,
    VERDICT_ORDER,
)
from imagenet_plus.report.scan import SCORE_TITLES, Histograms

#: Classes up to which per-class plots use one bar per class (above: histograms over classes).
MAX_BAR_CLASSES = 60
#: Classes up to which the class map writes each class's name.
MAX_MAP_LABELS = 40


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    """Save a figure through ``atomic_file`` (format from the suffix) and close it; returns the file name."""
    plt = _plt()
    with atomic_file(path) as f:
        fig.savefig(f, format=path.suffix.lstrip("."), dpi=100)
    plt.close(fig)
    return path.name


def threshold_lines(thresholds: dict[str, Any]) -> dict[str, list[tuple[str, float]]]:
    """``{'clip_score_min': 20}`` → ``{'clip_score': [('min', 20.0)]}`` (only numeric ``*_min``/``*_max``)."""
    lines: dict[str, list[tuple[str, float]]] = {}
    for key, value in (thresholds or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        for suffix in ("_min", "_max"):
            if key.endswith(suffix):
                lines.setdefault(key[: -len(suffix)], []).append((suffix[1:], float(value)))
    return lines


def plot_scores(hist: Histograms, thresholds: dict[str, Any], path: Path) -> str:
    """Histograms of every score column that has values, kept vs not kept, with threshold lines."""
    plt = _plt()
    cols = list(hist.edges)
    lines = threshold_lines(thresholds)
    n = max(1, len(cols))
    ncols = 3 if n > 4 else 2 if n > 1 else 1
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.3 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, col in zip(axes.flat, cols, strict=False):
        edges, counts = hist.edges[col], hist.counts[col]
        lefts = edges[:-1]
        if len(counts) == 2:
            ax.hist([lefts, lefts], bins=edges, weights=counts, stacked=True, color=["#2b8a3e", "#c92a2a"],
                    label=["kept", "not kept"], alpha=0.85)
        else:
            ax.hist(lefts, bins=edges, weights=counts[0], color="#1c7ed6", alpha=0.85, label="all")
        for kind, value in lines.get(col, []):
            ax.axvline(value, color="black", ls="--", lw=1.4, label=f"{kind} threshold {value:g}")
        ax.set_title(SCORE_TITLES[col], fontsize=10)
        ax.set_ylabel("images")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_per_class(table: Any, path: Path) -> str:
    """Bars per class (≤ 60 classes) or histograms over classes of pass rate and top-1/top-5 rates."""
    import numpy as np

    plt = _plt()
    series = [(c, t) for c, t in (("pass_rate", "pass rate"), ("top1_rate", "classifier top-1"),
                                  ("top5_rate", "classifier top-5"), ("clip_class_prob_mean", "zero-shot CLIP prob"))
              if c in table.columns and table[c].notna().any()]
    if not series:
        series = [("images", "images")]
    if len(table) <= MAX_BAR_CLASSES:
        fig, ax = plt.subplots(figsize=(9, max(2.5, 0.32 * len(table) + 1.2)))
        y = np.arange(len(table))
        h = 0.8 / len(series)
        for i, (col, title) in enumerate(series):
            ax.barh(y + i * h - 0.4 + h / 2, table[col].astype(float).fillna(0), height=h, label=title)
        ax.set_yticks(y)
        ax.set_yticklabels([f"{n} ({c})" for n, c in zip(table["name"], table["class_id"], strict=True)], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.0 if series[0][0] != "images" else None)
        ax.set_xlabel("rate")
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series), frameon=False)
    else:
        fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.3), squeeze=False)
        for ax, (col, title) in zip(axes.flat, series, strict=True):
            ax.hist(table[col].dropna().astype(float), bins=20, range=(0, 1), color="#1c7ed6")
            ax.set_title(f"{title} per class", fontsize=10)
            ax.set_xlabel("rate")
            ax.set_ylabel("classes")
    fig.tight_layout()
    return _save(fig, path)


def plot_groups(groups: Any, path: Path) -> str:
    """Bars of the mean per-class rates by WordNet group."""
    import numpy as np

    plt = _plt()
    cols = [(c, t) for c, t in (("pass_rate", "pass rate"), ("top1_rate", "top-1"), ("top5_rate", "top-5"),
                                ("clip_class_prob_mean", "zero-shot CLIP prob"))
            if c in groups.columns and groups[c].notna().any()]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(groups) + 2), 3.4))
    x = np.arange(len(groups))
    w = 0.8 / max(1, len(cols))
    for i, (col, title) in enumerate(cols):
        ax.bar(x + i * w - 0.4 + w / 2, groups[col].astype(float).fillna(0), width=w, label=title)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{g}\n({n})" for g, n in zip(groups["group"], groups["classes"], strict=True)], fontsize=8)
    ax.set_ylim(0, 1.2)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("mean rate over classes")
    if cols:
        ax.legend(fontsize=8, ncol=len(cols), loc="upper center")
    fig.tight_layout()
    return _save(fig, path)


def pca_2d(x: Any) -> Any:
    """Project rows of ``x`` onto their first two principal components (numpy SVD)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    if len(x) < 2:
        return np.zeros((len(x), 2))
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    out = u[:, :2] * s[:2]
    if out.shape[1] < 2:
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    return out


def plot_class_map(emb: Any, table: Any, path: Path) -> str:
    """2D PCA map of the class text embeddings, coloured by group and sized by pass (or zero-shot) rate."""
    import numpy as np

    plt = _plt()
    xy = pca_2d(emb)
    size_col = next((c for c in ("pass_rate", "top1_rate", "clip_class_prob_mean") if c in table.columns
                     and table[c].notna().any()), None)
    rate = table[size_col].astype(float).fillna(0).to_numpy() if size_col else np.ones(len(table))
    fig, ax = plt.subplots(figsize=(8, 6.5))
    groups = list(dict.fromkeys(table["group"]))
    cmap = plt.get_cmap("tab20" if len(groups) > 10 else "tab10")
    for i, g in enumerate(groups):
        m = (table["group"] == g).to_numpy()
        ax.scatter(xy[m, 0], xy[m, 1], s=15 + 220 * rate[m], color=cmap(i % cmap.N), alpha=0.75, label=g,
                   edgecolors="white", linewidths=0.5)
    if len(table) <= MAX_MAP_LABELS:
        for (px, py), name in zip(xy, table["name"], strict=True):
            ax.annotate(str(name), (px, py), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    what = {"pass_rate": "pass rate", "top1_rate": "classifier top-1 rate",
            "clip_class_prob_mean": "zero-shot CLIP probability"}.get(size_col or "", "—")
    ax.set_title(f"classes: PCA of CLIP text embeddings (size = {what})", fontsize=10)
    ax.legend(fontsize=8, markerscale=0.6, loc="best")
    fig.tight_layout()
    return _save(fig, path)



def plot_centroid_map(centroids: Any, diagnosis: Any, path: Path, real: Any | None = None) -> str:
    """2D PCA map of the synthetic class centroids (CLIP image space), coloured by verdict.

    With ``real`` (``C×D`` real centroids, same rows), one PCA is fitted on the synthetic and real centroids
    together: synthetic centroids are dots, real ones crosses, and a thin line joins each class's pair.

    A flagged class gets an arrow to the first other class among its :data:`ARROW_COLUMNS` (the real centroid
    nearest to its synthetic one, else the class text nearest to it, else its zero-shot confusion): where its
    images sit instead of where they belong. The arrow ends at that class's real centroid when ``real`` is given.
    """
    import numpy as np

    plt = _plt()
    ids = list(diagnosis[DIAG_CLASS_ID])  # row i of ``centroids`` (and of ``real``) is class ids[i]
    by_id = {c: i for i, c in enumerate(ids)}
    have = ~np.isnan(centroids).any(axis=1)
    xy = np.full((len(centroids), 2), np.nan)
    real_have = ~np.isnan(real).any(axis=1) if real is not None else np.zeros(len(centroids), dtype=bool)
    real_xy = np.full((len(centroids), 2), np.nan)
    projected = pca_2d(np.concatenate([centroids[have], real[real_have]]) if real is not None else centroids[have])
    xy[have] = projected[:int(have.sum())]
    real_xy[real_have] = projected[int(have.sum()):]
    fig, ax = plt.subplots(figsize=(8, 6.5))
    colors = {v: plt.get_cmap("tab10")(i) for i, v in enumerate(VERDICT_ORDER)}
    verdicts = diagnosis[DIAG_VERDICT].to_numpy()
    for i in np.flatnonzero(have & real_have):
        ax.plot([xy[i, 0], real_xy[i, 0]], [xy[i, 1], real_xy[i, 1]], color=colors.get(verdicts[i], "#999"),
                lw=0.6, alpha=0.6, zorder=1)
    for verdict in VERDICT_ORDER:
        m = (verdicts == verdict) & have
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], s=40 if verdict != VERDICT_OK else 18, color=colors[verdict],
                       label=verdict, alpha=0.8, edgecolors="white", linewidths=0.5, zorder=2)
        m = (verdicts == verdict) & real_have
        if m.any():
            ax.scatter(real_xy[m, 0], real_xy[m, 1], s=36 if verdict != VERDICT_OK else 18, marker="x",
                       color=colors[verdict], alpha=0.8, linewidths=1.0, zorder=2)
    end = real_xy if real is not None else xy
    end_have = real_have if real is not None else have
    for src, row in enumerate(diagnosis.to_dict("records")):
        if row[DIAG_VERDICT] == VERDICT_OK:
            continue
        dst = next((by_id[t] for t in (row.get(c) for c in ARROW_COLUMNS) if t in by_id and by_id[t] != src), -1)
        if dst >= 0 and have[src] and end_have[dst]:
            ax.annotate("", xy=end[dst], xytext=xy[src], arrowprops={"arrowstyle": "->", "color": "#555", "lw": 0.8})
    if len(ids) <= MAX_MAP_LABELS:
        for i, name in enumerate(diagnosis.get(DIAG_NAME, diagnosis[DIAG_CLASS_ID])):
            if have[i]:
                ax.annotate(str(name), xy[i], fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    if real is not None:
        ax.scatter([], [], marker="o", color="#777", label="synthetic centroid")
        ax.scatter([], [], marker="x", color="#777", label="real centroid")
        ax.set_title("synthetic (dots) vs real (crosses) class centroids: one PCA of CLIP image embeddings\n"
                     "(line: a class's pair; arrow: the real centroid a flagged class sits nearer to)", fontsize=10)
    else:
        ax.set_title("synthetic class centroids: PCA of CLIP image embeddings (arrow: class it sits nearer to)",
                     fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, path)
