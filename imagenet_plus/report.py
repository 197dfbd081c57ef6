"""Report: an HTML page with plots of a scored (and optionally selected) run. Reads RUN, writes RUN/report/.

Input: ``RUN/scores/*.parquet`` and ``RUN/scores/summary.json`` (required: run ``score`` first),
``RUN/scores/class_text_embeddings.npy`` (for the class map; the section is omitted with a note when
it is absent), ``RUN/selection.parquet`` + ``RUN/selection.json`` (optional: without them the
report shows scores only), ``RUN/classes.json``, ``RUN/run.yaml`` and the images in
``RUN/generated/*.tar`` (for the contact sheets). No model is run.

Output, ``RUN/report/``:

- ``index.html``: headline metrics with the models used; score histograms with the thresholds drawn
  (``scores.png``); per-class pass rate and classifier top-1/top-5 hits (``per_class.png``) and a
  per-class table; rates by WordNet group (lexicographer file: animal, artifact, food, plant, …)
  as a table and ``groups.png``; a 2D class map (PCA of the CLIP text embeddings of the class
  names, coloured by group, sized by pass rate: ``class_map.png``); contact sheets of the best kept
  and the worst rejected images of a sample of classes (``sheets/{class_id}.jpg``);
- ``per_class.csv`` (the per-class table) and ``report.json`` (headline numbers and a fingerprint of
  the inputs, which ``imagenet-plus run`` uses to skip an up-to-date report).

The folder is built as ``RUN/report.partial/`` and swapped in when complete, so a killed report never
leaves a half-written ``index.html``.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.configio import stable_hash
from imagenet_plus.contract import RunPaths, read_class_records, read_run_yaml, run_paths
from imagenet_plus.errors import UserError

#: Score columns drawn as histograms, with a readable title.
SCORE_COLUMNS = {
    "clip_score": "CLIP score (image vs prompt)",
    "clip_class_score": "CLIP score (image vs 'a photo of a {class}')",
    "clip_class_prob": "zero-shot probability of the class",
    "isc_kl": "Inception-Score KL term",
    "classifier_prob": "classifier probability of the class",
    "realism": "realism score",
}
#: Headline metrics of summary.json, with a readable name.
HEADLINE = {
    "num_images": "images scored",
    "fid": "FID",
    "kid_mean": "KID (mean)",
    "kid_std": "KID (std)",
    "inception_score_mean": "Inception Score (mean)",
    "inception_score_std": "Inception Score (std)",
    "clip_score_mean": "CLIP score (mean)",
    "precision": "precision (Kynkäänniemi)",
    "recall": "recall (Kynkäänniemi)",
}
#: Selection reasons that mean "passed every threshold".
PASSED_REASONS = ("kept", "over_quota")
#: Classes up to which per-class plots use one bar per class (above: histograms over classes).
MAX_BAR_CLASSES = 60
#: Rows of the per-class HTML table (per_class.csv always has every class).
MAX_TABLE_ROWS = 1000
#: Classes up to which the class map writes each class's name.
MAX_MAP_LABELS = 40


@dataclass(frozen=True)
class ReportConfig:
    """Settings of ``imagenet-plus report`` (fields are its flags).

    Attributes:
        sample_classes: how many classes get a contact sheet (picked with ``seed``, shown in label order).
        sheet_images: best kept and worst rejected images shown per class.
        thumb_size: side of a contact-sheet thumbnail in pixels.
        seed: seed of the class sample.
    """

    sample_classes: int = 8
    sheet_images: int = 6
    thumb_size: int = 112
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("sample_classes", "sheet_images", "thumb_size"):
            value = getattr(self, name)
            if value <= 0:
                raise UserError(f"report config: '{name.replace('_', '-')}' must be positive, got {value}")
        if self.thumb_size > 512:
            raise UserError(f"report config: 'thumb-size' must be at most 512, got {self.thumb_size}")
        if self.seed < 0:
            raise UserError(f"report config: 'seed' must be >= 0, got {self.seed}")


# ------------------------------------------------------------------------------------------------
# Inputs


def input_files(paths: RunPaths) -> list[Path]:
    """The files a report is made from (their sizes and mtimes form the fingerprint)."""
    files = [paths.summary_json, paths.classes_json, paths.run_yaml]
    files += sorted(paths.scores.glob("*.parquet"))
    files += [p for p in (paths.selection_parquet, paths.selection_json, paths.scores / "class_text_embeddings.npy")
              if p.is_file()]
    return files


def inputs_fingerprint(paths: RunPaths, cfg: ReportConfig) -> str:
    """A hash of the report settings and of every input file (content; size and mtime for parquets)."""
    import hashlib

    from imagenet_plus.configio import config_to_dict

    stats: list[Any] = []
    for p in input_files(paths):
        if not p.exists():
            stats.append([p.name, None])
        elif p.suffix == ".parquet":  # large: size and mtime
            st = p.stat()
            stats.append([p.name, st.st_size, st.st_mtime_ns])
        else:  # small, and rewritten with the same content by some stages (run.yaml): content hash
            stats.append([p.name, hashlib.sha256(p.read_bytes()).hexdigest()])
    return stable_hash({"config": config_to_dict(cfg), "inputs": stats})


def is_up_to_date(run: str | Path, cfg: ReportConfig) -> bool:
    """Whether ``RUN/report`` exists and was made from the current inputs with these settings."""
    paths = RunPaths(Path(run))
    meta = paths.report / "report.json"
    if not (paths.report / "index.html").is_file() or not meta.is_file() or not paths.summary_json.is_file():
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("fingerprint") == inputs_fingerprint(paths, cfg)
    except (OSError, json.JSONDecodeError):
        return False


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"unreadable {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def load_frame(paths: RunPaths) -> Any:
    """All score rows (with a ``_shard`` column) joined with the selection when there is one.

    Raises:
        UserError: no scores, a malformed parquet (named), or missing required columns.
    """
    import pandas as pd

    files = sorted(paths.scores.glob("*.parquet"))
    if not files or not paths.summary_json.is_file():
        raise UserError(f"no scores in {paths.scores}: run 'imagenet-plus score {paths.root}' before report")
    frames = []
    for f in files:
        try:
            df = pd.read_parquet(f)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise UserError(f"unreadable scores file {f}: {type(exc).__name__}: {exc}") from None
        for col in ("key", "label", "class_id"):
            if col not in df.columns:
                raise UserError(f"scores file {f} has no column '{col}'")
        df["_shard"] = f.stem
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    if paths.selection_parquet.is_file():
        try:
            sel = pd.read_parquet(paths.selection_parquet, columns=["key", "kept", "reason", "composite"])
        except Exception as exc:
            raise UserError(f"unreadable {paths.selection_parquet}: {type(exc).__name__}: {exc}") from None
        df = df.merge(sel, on="key", how="left")
        df["kept"] = df["kept"].astype("boolean").fillna(False).astype(bool)
    return df


def group_name(group: str | None) -> str:
    """``noun.animal`` → ``animal``; empty (custom classes) → ``custom``."""
    if not group:
        return "custom"
    return str(group).split(".", 1)[-1]


def per_class_table(df: Any, classes: list[dict[str, Any]], summary: dict[str, Any]) -> Any:
    """One row per class (label order): counts, pass/kept rate, classifier hits, CLIP means and summary stats."""
    import pandas as pd

    base = pd.DataFrame(
        {
            "label": [c["label"] for c in classes],
            "class_id": [c["id"] for c in classes],
            "name": [c.get("name", c["id"]) for c in classes],
            "group": [group_name(c.get("group")) for c in classes],
        }
    )
    # Vectorised (no per-group Python): nullable booleans become 1.0/0.0/NaN, and mean() skips NaN.
    cols = pd.DataFrame({"class_id": df["class_id"], "images": 1})
    for col, out in (("classifier_top1", "top1_rate"), ("classifier_top5", "top5_rate")):
        if col in df.columns:
            cols[out] = df[col].astype("Float64").astype(float)
    for col in ("clip_score", "clip_class_score", "clip_class_prob"):
        if col in df.columns:
            cols[f"{col}_mean"] = df[col].astype(float)
    if "kept" in df.columns:
        cols["kept"] = df["kept"].astype(int)
        cols["pass_rate"] = df["reason"].isin(PASSED_REASONS).astype(float)
    g = cols.groupby("class_id")
    stats = g.mean()
    stats["images"] = g["images"].count()
    if "kept" in stats.columns:
        stats["kept"] = g["kept"].sum().astype(int)
    table = base.merge(stats, left_on="class_id", right_index=True, how="left")
    table["images"] = table["images"].fillna(0).astype(int)
    per = summary.get("per_class") or {}
    for key in ("fid", "vendi", "duplicates"):
        table[key] = [(per.get(c) or {}).get(key) for c in table["class_id"]]
    table[["fid", "vendi"]] = table[["fid", "vendi"]].astype(float)
    return table


def group_table(table: Any) -> Any:
    """Rates by WordNet group: classes, images, kept, and mean per-class rates."""
    agg: dict[str, Any] = {"classes": ("class_id", "count"), "images": ("images", "sum")}
    for col in ("kept", "pass_rate", "top1_rate", "top5_rate", "clip_class_prob_mean", "clip_score_mean"):
        if col in table.columns:
            agg[col] = (col, "sum" if col == "kept" else "mean")
    return table.groupby("group").agg(**agg).reset_index().sort_values("images", ascending=False)


# ------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    plt = _plt()
    fig.savefig(path, format=path.suffix.lstrip("."), dpi=100)
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


def plot_scores(df: Any, thresholds: dict[str, Any], path: Path) -> tuple[str, list[str]]:
    """Histograms of every score column that has values, kept vs not kept, with threshold lines."""
    import numpy as np

    plt = _plt()
    cols = [c for c in SCORE_COLUMNS if c in df.columns and df[c].notna().any()]
    lines = threshold_lines(thresholds)
    n = max(1, len(cols))
    ncols = 3 if n > 4 else 2 if n > 1 else 1
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.3 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, col in zip(axes.flat, cols, strict=False):
        values = df[col].astype(float)
        finite = values[np.isfinite(values)]
        bins = np.histogram_bin_edges(finite, bins=min(40, max(5, int(np.sqrt(len(finite))) + 1)))
        if "kept" in df.columns:
            kept = df["kept"].to_numpy(bool)
            ax.hist([values[kept].dropna(), values[~kept].dropna()], bins=bins, stacked=True,
                    color=["#2b8a3e", "#c92a2a"], label=["kept", "not kept"], alpha=0.85)
        else:
            ax.hist(finite, bins=bins, color="#1c7ed6", alpha=0.85, label="all")
        for kind, value in lines.get(col, []):
            ax.axvline(value, color="black", ls="--", lw=1.4, label=f"{kind} threshold {value:g}")
        ax.set_title(SCORE_COLUMNS[col], fontsize=10)
        ax.set_ylabel("images")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path), cols


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


# ------------------------------------------------------------------------------------------------
# Contact sheets


def sample_classes(table: Any, k: int, seed: int) -> list[str]:
    """``k`` class ids that have images, drawn with ``seed``, returned in label order."""
    import numpy as np

    have = table[table["images"] > 0]
    if len(have) <= k:
        return list(have["class_id"])
    idx = np.sort(np.random.default_rng(seed).choice(len(have), size=k, replace=False))
    return list(have["class_id"].iloc[idx])


def pick_sheet_keys(df: Any, class_id: str, n: int) -> tuple[list[tuple[str, str, float]], list[tuple[str, str, float]],
                                                               str]:
    """(best kept, worst rejected, ranking column) of one class; entries are (key, shard, score).

    Ranked by the selection's composite when there is one, else by ``clip_class_score`` (or ``clip_score``);
    without a selection the "rejected" row is simply the lowest-ranked images.
    """
    c = df[df["class_id"] == class_id]
    col = "composite" if "composite" in c.columns and c["composite"].notna().any() else (
        "clip_class_score" if "clip_class_score" in c.columns and c["clip_class_score"].notna().any() else "clip_score")
    if "kept" in c.columns:
        good, bad = c[c["kept"]], c[~c["kept"]]
    else:
        good, bad = c, c
    # Ties are broken by key, so the sheet does not depend on row order.
    good = good.sort_values([col, "key"], ascending=[False, True], na_position="last")[:n]
    bad = bad.sort_values([col, "key"], ascending=[True, True], na_position="first")[:n]
    best = [(k, s, float(v)) for k, s, v in zip(good["key"], good["_shard"], good[col], strict=True)]
    worst = [(k, s, float(v)) for k, s, v in zip(bad["key"], bad["_shard"], bad[col], strict=True)]
    if "kept" not in c.columns:
        best_keys = {k for k, _, _ in best}
        worst = [w for w in worst if w[0] not in best_keys]
    return best, worst, col


def read_images(generated: Path, wanted: dict[str, set[str]]) -> dict[str, bytes]:
    """Image bytes of the wanted keys, ``{shard stem: {keys}}``, read through ``shards.iter_shard``."""
    from imagenet_plus.contract import IMAGE_EXTENSIONS
    from imagenet_plus.progress import progress_bar
    from imagenet_plus.shards import iter_shard

    out: dict[str, bytes] = {}
    bar = progress_bar(len(wanted), "report: contact sheets", unit="shard")
    for shard, keys in sorted(wanted.items()):
        tar = generated / f"{shard}.tar"
        bar.update(1)
        if not tar.is_file():
            continue
        for sample in iter_shard(tar):
            if sample["__key__"] in keys:
                data = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
                if data is not None:
                    out[sample["__key__"]] = data
    bar.close()
    return out


def draw_sheet(rows: list[tuple[str, list[tuple[str, str, float]]]], images: dict[str, bytes], n: int, thumb: int,
               title: str, path: Path) -> None:
    """Compose a contact sheet with PIL: one labelled row of thumbnails (with scores) per entry of ``rows``."""
    import io

    from PIL import Image, ImageDraw, ImageOps

    pad, label_w, caption = 4, 92, 14
    width = label_w + n * (thumb + pad) + pad
    height = 20 + len(rows) * (thumb + caption + pad) + pad
    sheet = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), title, fill=(0, 0, 0))
    for r, (row_label, entries) in enumerate(rows):
        y = 20 + r * (thumb + caption + pad)
        draw.text((pad, y + thumb // 2 - 6), row_label, fill=(60, 60, 60))
        if not entries:
            draw.text((label_w, y + thumb // 2 - 6), "(none)", fill=(120, 120, 120))
        for i, (key, _shard, score) in enumerate(entries):
            x = label_w + i * (thumb + pad)
            data = images.get(key)
            if data is None:
                draw.rectangle((x, y, x + thumb, y + thumb), outline=(200, 0, 0))
                continue
            try:
                img = Image.open(io.BytesIO(data)).convert("RGB")
            except OSError:
                draw.rectangle((x, y, x + thumb, y + thumb), outline=(200, 0, 0))
                continue
            img = ImageOps.contain(img, (thumb, thumb))
            sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
            draw.text((x, y + thumb + 1), f"{score:.3g}", fill=(0, 0, 0))
    sheet.save(path, format="JPEG", quality=88)


# ------------------------------------------------------------------------------------------------
# HTML


def _fmt(v: Any) -> str:
    import math

    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v) or "—"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "—"
    return str(v)


def _html_table(rows: list[list[Any]], header: list[str], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}th,td{border:1px solid #ddd;padding:.25em .6em;
text-align:left}th{background:#f3f3f3}tbody tr:nth-child(even){background:#fafafa}
img{max-width:100%;border:1px solid #eee}.note{color:#666;font-style:italic}.muted{color:#777;font-size:.9em}
.scroll{max-height:480px;max-width:100%;overflow:auto;display:inline-block}.sheet{margin:.4em 0 1.2em}
"""


def _section(title: str, body: str, anchor: str) -> str:
    return f'<h2 id="{anchor}">{html.escape(title)}</h2>\n{body}\n'


def _img(name: str, alt: str) -> str:
    return f'<p><img src="{html.escape(name)}" alt="{html.escape(alt)}"></p>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


# ------------------------------------------------------------------------------------------------
# The stage


def run_report(run: str | Path, cfg: ReportConfig) -> Path:
    """Write ``RUN/report/index.html`` and its images from the run's scores and selection.

    Args:
        run: the run directory (scored; selection optional).
        cfg: the report settings.

    Returns:
        The path of ``index.html``.

    Raises:
        UserError: not a run directory, not scored yet, or an unreadable input (named).
    """
    import numpy as np

    paths = run_paths(run)
    df = load_frame(paths)
    summary = _read_json(paths.summary_json)
    classes = read_class_records(paths)
    run_yaml = read_run_yaml(paths)
    selection = _read_json(paths.selection_json) if paths.selection_json.is_file() else None
    has_selection = "kept" in df.columns
    fingerprint = inputs_fingerprint(paths, cfg)

    tmp = paths.root / "report.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "sheets").mkdir(parents=True)

    table = per_class_table(df, classes, summary)
    groups = group_table(table)
    thresholds = (selection or {}).get("thresholds") or {}
    sections: list[str] = []

    # Headline
    gen = run_yaml.get("config", {})
    rows = [[HEADLINE[k], summary.get(k)] for k in HEADLINE if k in summary]
    rows.append(["classes", len(classes)])
    if selection is not None:
        rows += [
            ["images kept", selection.get("num_kept", int(df["kept"].sum()) if has_selection else None)],
            ["per-class quota", selection.get("per_class_quota")],
            ["classes short of quota", len(selection.get("short") or {})],
            ["dropped classes", selection.get("dropped_classes") or []],
        ]
    models = summary.get("models") or {}
    setup = [
        ["generator", gen.get("model")],
        ["steps / guidance / resolution", f"{gen.get('steps')} / {gen.get('guidance')} / {gen.get('resolution')}"],
        ["prompt strategies", gen.get("prompt_strategy")],
        ["class set", gen.get("classes")],
        ["seed", gen.get("seed")],
    ] + [[f"scorer: {k}", v] for k, v in models.items()] + [["reference (real images)", summary.get("reference")]]
    body = _html_table(rows, ["metric", "value"])
    body += "<h3>Models and settings</h3>" + _html_table(setup, ["setting", "value"])
    if summary.get("reference") in (None, "", {}):
        body += _note("No real reference was given to 'score': FID, KID, precision, recall and realism are absent.")
    sections.append(_section("Headline metrics", body, "headline"))

    # Score histograms
    name, cols = plot_scores(df, thresholds, tmp / "scores.png")
    body = _img(name, "score histograms")
    if not has_selection:
        body += _note("No selection yet (run 'imagenet-plus select'): histograms show all images, no thresholds.")
    elif thresholds:
        used = {k: v for k, v in thresholds.items() if v is not None and v is not False}
        body += f'<p class="muted">Thresholds: {html.escape(_fmt(used))}</p>'
    if selection and selection.get("reasons"):
        body += "<h3>Selection outcome (first rule each image failed)</h3>" + _html_table(
            [[k, v] for k, v in sorted(selection["reasons"].items(), key=lambda kv: -kv[1])], ["reason", "images"]
        )
    sections.append(_section("Score distributions", body, "scores"))

    # Per class
    name = plot_per_class(table, tmp / "per_class.png")
    show = [c for c in ("label", "class_id", "name", "group", "images", "kept", "pass_rate", "top1_rate", "top5_rate",
                        "clip_score_mean", "clip_class_prob_mean", "fid", "vendi", "duplicates") if c in table.columns]
    csv_tmp = tmp / "per_class.csv"
    table[show].to_csv(csv_tmp, index=False)
    body = _img(name, "per-class rates")
    if "top1_rate" in table.columns and table["top1_rate"].isna().all():
        body += _note("No classifier hits: the classifier did not score these classes (outside ImageNet-1k or none).")
    body += ('<p class="muted">Full table: <a href="per_class.csv">per_class.csv</a></p><div class="scroll">'
             + _html_table(table[show].head(MAX_TABLE_ROWS).values.tolist(), show) + "</div>")
    if len(table) > MAX_TABLE_ROWS:
        body += _note(f"The table shows the first {MAX_TABLE_ROWS} of {len(table)} classes; per_class.csv has all.")
    sections.append(_section("Per class", body, "per-class"))

    # Groups
    name = plot_groups(groups, tmp / "groups.png")
    gcols = list(groups.columns)
    body = _img(name, "rates by WordNet group") + _html_table(groups.values.tolist(), gcols)
    body += _note("Groups are WordNet lexicographer files (noun.animal → animal); custom classes form 'custom'.")
    sections.append(_section("Rates by WordNet group", body, "groups"))

    # Class map
    emb_path = paths.scores / "class_text_embeddings.npy"
    if emb_path.is_file():
        emb = np.load(emb_path).astype(np.float32)
        if emb.ndim != 2 or len(emb) != len(classes):
            raise UserError(f"{emb_path} has shape {emb.shape}, expected one row per class ({len(classes)})")
        body = _img(plot_class_map(emb, table, tmp / "class_map.png"), "class map")
    else:
        body = _note(f"{emb_path.name} is missing (written by 'score'): no class map.")
    sections.append(_section("Class map", body, "class-map"))

    # Contact sheets
    chosen = sample_classes(table, cfg.sample_classes, cfg.seed)
    picks = {cid: pick_sheet_keys(df, cid, cfg.sheet_images) for cid in chosen}
    wanted: dict[str, set[str]] = {}
    for best, worst, _ in picks.values():
        for key, shard, _score in best + worst:
            wanted.setdefault(shard, set()).add(key)
    images = read_images(paths.generated, wanted)
    names = dict(zip(table["class_id"], table["name"], strict=True))
    parts = []
    for cid in chosen:
        best, worst, col = picks[cid]
        labels = ("best kept", "worst rejected") if has_selection else ("best", "worst")
        rows_ = [(labels[0], best), (labels[1], worst)]
        sheet = tmp / "sheets" / f"{cid}.jpg"
        draw_sheet(rows_, images, cfg.sheet_images, cfg.thumb_size, f"{names[cid]} ({cid}), ranked by {col}", sheet)
        caption = f"top row: {labels[0]}, bottom row: {labels[1]}, ranked by {col}"
        parts.append(f'<div class="sheet"><b>{html.escape(str(names[cid]))}</b> '
                     f'<span class="muted">{html.escape(cid)} — {html.escape(caption)}</span>'
                     f'{_img(f"sheets/{cid}.jpg", f"contact sheet {cid}")}</div>')
    body = "".join(parts) or _note("No class has images.")
    if missing := sum(len(k) for k in wanted.values()) - len(images):
        body += _note(f"{missing} image(s) could not be found in {paths.generated} (red frames).")
    sections.append(_section(f"Contact sheets ({len(chosen)} of {len(table)} classes)", body, "sheets"))

    title = f"imagenet-plus report — {paths.root.name}"
    nav = " · ".join(f'<a href="#{a}">{t}</a>' for a, t in (("headline", "headline"), ("scores", "scores"),
                                                             ("per-class", "per class"), ("groups", "groups"),
                                                             ("class-map", "class map"), ("sheets", "contact sheets")))
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
        f'<p class="muted">{len(df)} images, {len(classes)} classes · {nav}</p>\n'
        + "".join(sections)
        + "</body></html>\n"
    )
    (tmp / "index.html").write_text(page, encoding="utf-8")
    headline = {k: summary.get(k) for k in HEADLINE if k in summary}
    meta = {"fingerprint": fingerprint, "headline": headline, "classes": len(classes), "images": len(df),
            "kept": int(df["kept"].sum()) if has_selection else None, "sampled_classes": chosen}
    (tmp / "report.json").write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")

    # Swap the finished folder in.
    old = paths.root / "report.old"
    shutil.rmtree(old, ignore_errors=True)
    if paths.report.exists():
        os.replace(paths.report, old)
    os.replace(tmp, paths.report)
    shutil.rmtree(old, ignore_errors=True)
    return paths.report / "index.html"
