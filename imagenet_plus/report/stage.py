"""Report: an HTML page with plots of a scored (and optionally selected) run. Reads RUN, writes RUN/report/.

Input: ``RUN/scores/*.parquet`` and ``RUN/scores/summary.json`` (required: run ``score`` first),
``RUN/scores/class_text_embeddings.npy`` (for the class map; the section is omitted with a note when
it is absent), ``RUN/selection.parquet`` + ``RUN/selection.json`` (optional: without them the
report shows scores only), ``RUN/diagnosis.parquet`` (optional: the diagnosis section;
``RUN/diagnosis_centroids.npz`` beside it puts the real class centroids on its map),
``RUN/classes.json``, ``RUN/run.yaml`` and the images in ``RUN/generated/*.tar`` (for the contact
sheets). No model is run. Every path comes from :class:`imagenet_plus.contract.RunPaths`.

Output, ``RUN/report/``:

- ``index.html`` (rendered from the Jinja2 template ``report_template.html``, one macro per section):
  headline metrics with the models used; score histograms with the thresholds drawn (``scores.png``);
  per-class pass rate and classifier top-1/top-5 hits (``per_class.png``) and a per-class table;
  rates by WordNet group (lexicographer file: animal, artifact, food, plant, …) as a table and
  ``groups.png``; a 2D class map (PCA of the CLIP text embeddings of the class names, coloured by
  group, sized by pass rate: ``class_map.png``); the diagnosis of failing classes when ``diagnose``
  has run; contact sheets of the best kept and the worst rejected images of a sample of classes
  (``sheets/{class_id}.jpg``);
- ``per_class.csv`` (the per-class table) and ``report.json`` (headline numbers and a fingerprint of
  the inputs, which ``imagenet-plus run`` uses to skip an up-to-date report).

Memory: the score parquets are streamed shard by shard, twice, reading only the columns the page
uses: the first pass sums per class (arrays of the class count) and finds each score's range, the
second counts histogram bins over fixed edges and keeps the rows of the sampled classes only. What
grows with the images is the selection lookup (sorted fixed-width keys plus kept, passed and
composite: about 30 bytes per image, ~40 MB at 1.28 M images) and one kept bit per image. Every file is written
through :func:`imagenet_plus.shards.atomic_file`, inside ``RUN/report.partial/``, and the folder is
swapped in when complete, so a killed report never leaves a half-written ``index.html``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagenet_plus.contract import (
    COL_CLASSIFIER_PROB,
    COL_CLASSIFIER_TOP1,
    COL_CLASSIFIER_TOP5,
    COL_CLIP_CLASS_PROB,
    COL_CLIP_CLASS_SCORE,
    COL_CLIP_SCORE,
    COL_ISC_KL,
    COL_REALISM,
    COMPOSITE,
    PARTIAL_SUFFIX,
    PASSED_REASONS,
    SCORE_COLUMNS,
    RunPaths,
    SelectionSummary,
    image_member,
    read_class_records,
    read_json,
    read_run_yaml,
    run_paths,
)
from imagenet_plus.errors import UserError
from imagenet_plus.pipeline.config import stable_hash

#: Score columns drawn as histograms (names from ``contract.SCORE_COLUMNS``), with a readable title.
SCORE_TITLES = {
    COL_CLIP_SCORE: "CLIP score (image vs prompt)",
    COL_CLIP_CLASS_SCORE: "CLIP score (image vs 'a photo of a {class}')",
    COL_CLIP_CLASS_PROB: "zero-shot probability of the class",
    COL_ISC_KL: "Inception-Score KL term",
    COL_CLASSIFIER_PROB: "classifier probability of the class",
    COL_REALISM: "realism score",
}
#: Per-class means of the table: output column → score column (rates of the classifier's boolean hits).
CLASS_MEANS = {
    "top1_rate": COL_CLASSIFIER_TOP1,
    "top5_rate": COL_CLASSIFIER_TOP5,
    "clip_score_mean": COL_CLIP_SCORE,
    "clip_class_score_mean": COL_CLIP_CLASS_SCORE,
    "clip_class_prob_mean": COL_CLIP_CLASS_PROB,
}
#: Identity columns every scores parquet must have.
ID_COLUMNS = ("key", "label", "class_id")
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
#: Classes up to which per-class plots use one bar per class (above: histograms over classes).
MAX_BAR_CLASSES = 60
#: Rows of the per-class HTML table (per_class.csv always has every class).
MAX_TABLE_ROWS = 1000
#: Classes up to which the class map writes each class's name.
MAX_MAP_LABELS = 40
#: The page template (package data beside this module).
TEMPLATE = Path(__file__).resolve().parent / "report_template.html"
#: Files of the report folder besides the PNGs and sheets.
PER_CLASS_CSV = "per_class.csv"
SHEETS_DIR = "sheets"
#: Columns of the per-class table shown on the page and written to per_class.csv, in order.
TABLE_COLUMNS = ("label", "class_id", "name", "group", "images", "kept", "pass_rate", "top1_rate", "top5_rate",
                 "clip_score_mean", "clip_class_prob_mean", "fid", "vendi", "duplicates")
#: Section anchors and their labels in the page's navigation line, in page order.
NAV = (("headline", "headline"), ("scores", "scores"), ("per-class", "per class"), ("groups", "groups"),
       ("class-map", "class map"), ("diagnosis", "diagnosis"), ("sheets", "contact sheets"))


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
    files += paths.scored_parquets()
    optional = [paths.selection_parquet, paths.selection_json, paths.class_text_embeddings, paths.diagnosis_parquet,
                paths.diagnosis_json, paths.diagnosis_centroids]
    return files + [p for p in optional if p.is_file()]


def inputs_fingerprint(paths: RunPaths, cfg: ReportConfig) -> str:
    """A hash of the report settings and of every input file (content; size and mtime for parquets and .npz)."""
    import hashlib

    from imagenet_plus.pipeline.config import config_to_dict

    stats: list[Any] = []
    for p in input_files(paths):
        if not p.exists():
            stats.append([p.name, None])
        elif p.suffix in (".parquet", ".npz"):  # large: size and mtime
            st = p.stat()
            stats.append([p.name, st.st_size, st.st_mtime_ns])
        else:  # small, and rewritten with the same content by some stages (run.yaml): content hash
            stats.append([p.name, hashlib.sha256(p.read_bytes()).hexdigest()])
    return stable_hash({"config": config_to_dict(cfg), "inputs": stats})


def is_up_to_date(run: str | Path, cfg: ReportConfig) -> bool:
    """Whether ``RUN/report`` exists and was made from the current inputs with these settings."""
    paths = RunPaths(Path(run))
    if not paths.report_index.is_file() or not paths.report_json.is_file() or not paths.summary_json.is_file():
        return False
    try:
        meta = read_json(paths.report_json)
        return isinstance(meta, dict) and meta.get("fingerprint") == inputs_fingerprint(paths, cfg)
    except UserError:
        return False


def _read_object(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


@dataclass(frozen=True)
class ReportInputs:
    """The small inputs of a report, read and checked before any work."""

    paths: RunPaths
    summary: dict[str, Any]
    classes: list[dict[str, Any]]
    generate: dict[str, Any]
    selection: SelectionSummary | None
    text_embeddings: Any | None  # C×D float32 array, or None when the file is absent
    diagnosis: Any | None = None  # diagnosis.parquet worst first (read_diagnosis), None when not diagnosed
    diagnosis_summary: dict[str, Any] | None = None  # diagnosis.json


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
        emb = np.load(path).astype(np.float32)
    except (OSError, ValueError) as exc:
        raise UserError(f"unreadable {path}: {exc}") from None
    if emb.ndim != 2 or len(emb) != num_classes:
        raise UserError(f"{path} has shape {emb.shape}, expected one row per class ({num_classes})")
    return emb


def read_inputs(paths: RunPaths) -> ReportInputs:
    """Check every scores parquet's columns; read summary.json, classes.json, run.yaml, selection.json (only
    when selection.parquet is there too) and the class text embeddings.

    Raises:
        UserError: not scored yet, an unreadable file (named), or embeddings without one row per class.
    """
    if not paths.scored_parquets() or not paths.summary_json.is_file():
        raise UserError(f"no scores in {paths.scores}: run 'imagenet-plus score {paths.root}' before report")
    for f in paths.scored_parquets():  # every footer first: a broken shard is named before any work
        _columns_to_read(f)
    classes = read_class_records(paths)
    has_selection = paths.selection_json.is_file() and paths.selection_parquet.is_file()
    selection = SelectionSummary.read(paths.selection_json) if has_selection else None
    emb = read_text_embeddings(paths, len(classes))
    diagnosis = read_diagnosis(paths)
    diagnosis_summary = _read_object(paths.diagnosis_json) if diagnosis is not None and \
        paths.diagnosis_json.is_file() else None
    return ReportInputs(paths, _read_object(paths.summary_json), classes, read_run_yaml(paths).get("config", {}),
                        selection, emb, diagnosis, diagnosis_summary)


# ------------------------------------------------------------------------------------------------
# Streaming the score shards (pyarrow tables and numpy arrays: no per-row Python objects)


def key_bytes(keys: Any) -> Any:
    """Sample keys (an arrow string array, or any sequence of str) → a fixed-width bytes array, sortable.

    Keys are ASCII by contract (one byte a character). When every key of an arrow array has the same length
    (ImageNet keys do), the array is a view of arrow's data buffer; otherwise each key is encoded.
    """
    import numpy as np
    import pyarrow as pa

    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if isinstance(keys, pa.Array) and keys.null_count == 0 and len(keys) and (
            pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
        width = np.int64 if pa.types.is_large_string(keys.type) else np.int32
        offsets = np.frombuffer(keys.buffers()[1], dtype=width)[keys.offset: keys.offset + len(keys) + 1]
        lengths = np.diff(offsets)
        if lengths[0] > 0 and (lengths == lengths[0]).all():
            data = np.frombuffer(keys.buffers()[2], dtype=np.uint8)[offsets[0]: offsets[-1]]
            return data.view(f"S{int(lengths[0])}")
    values = keys.to_pylist() if isinstance(keys, pa.Array) else list(keys)
    return np.char.encode(np.asarray(values, dtype=str), "utf-8")


def float_column(table: Any, name: str) -> Any:
    """A numeric or boolean column of an arrow table as float64 (nulls → NaN; True/False → 1.0/0.0)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class SelectionLookup:
    """``selection.parquet`` as sorted fixed-width keys with kept / passed / composite (about 30 bytes a key)."""

    keys: Any
    kept: Any
    passed: Any
    composite: Any

    @classmethod
    def read(cls, path: Path, batch_rows: int = 262_144) -> SelectionLookup:
        """Read the selection in row batches (only its key, kept, reason and composite columns).

        Raises:
            UserError: the parquet is unreadable or lacks one of those columns.
        """
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        keys, kept, passed, composite = [], [], [], []
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows,
                                                           columns=["key", "kept", "reason", COMPOSITE]):
                table = pa.Table.from_batches([batch])
                keys.append(key_bytes(table.column("key")))
                kept.append(pc.fill_null(table.column("kept"), False).to_numpy(zero_copy_only=False).astype(bool))
                passed.append(pc.fill_null(pc.is_in(table.column("reason"), value_set=pa.array(PASSED_REASONS)),
                                           False).to_numpy(zero_copy_only=False).astype(bool))
                composite.append(float_column(table, COMPOSITE))
        except Exception as exc:  # pyarrow raises several types for a broken file or a missing column
            raise UserError(f"unreadable {path}: {type(exc).__name__}: {exc}") from None
        if not keys:
            return cls(np.array([], dtype="S1"), np.array([], bool), np.array([], bool), np.array([], float))
        all_keys = np.concatenate(keys)
        order = np.argsort(all_keys, kind="stable")
        return cls(all_keys[order], np.concatenate(kept)[order], np.concatenate(passed)[order],
                   np.concatenate(composite)[order])

    def find(self, keys: Any) -> tuple[Any, Any, Any]:
        """(kept, passed, composite) of each key; keys the selection lacks give False, False, NaN."""
        import numpy as np

        wanted = key_bytes(keys)
        n = len(wanted)
        if not len(self.keys) or not n:
            return np.zeros(n, bool), np.zeros(n, bool), np.full(n, np.nan)
        pos = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        hit = self.keys[pos] == wanted
        return (np.where(hit, self.kept[pos], False), np.where(hit, self.passed[pos], False),
                np.where(hit, self.composite[pos], np.nan))


def _columns_to_read(path: Path) -> list[str]:
    """The columns of one scores parquet the report uses (identity columns checked)."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise UserError(f"unreadable scores file {path}: {type(exc).__name__}: {exc}") from None
    for col in ID_COLUMNS:
        if col not in names:
            raise UserError(f"scores file {path} has no column '{col}'")
    wanted = {*ID_COLUMNS, *SCORE_TITLES, *CLASS_MEANS.values()}
    return [c for c in SCORE_COLUMNS if c in wanted and c in names]


def iter_score_tables(paths: RunPaths) -> Iterator[tuple[str, Any]]:
    """(shard stem, arrow table) per scores parquet, in shard order: only the columns the report uses.

    Raises:
        UserError: a malformed parquet (named) or missing identity columns.
    """
    import pyarrow.parquet as pq

    for f in paths.scored_parquets():
        columns = _columns_to_read(f)
        try:
            table = pq.read_table(f, columns=columns)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise UserError(f"unreadable scores file {f}: {type(exc).__name__}: {exc}") from None
        yield f.stem, table


def _frame(stem: str, table: Any, lookup: SelectionLookup | None) -> Any:
    """A shard's table as pandas with ``_shard`` and, with a selection, ``kept``/``passed``/``composite``."""
    df = table.to_pandas()
    df["_shard"] = stem
    if lookup is not None:
        df["kept"], df["passed"], df[COMPOSITE] = lookup.find(table.column("key"))
    return df


def load_frame(paths: RunPaths) -> Any:
    """All score rows (the columns the report uses, with a ``_shard`` column) joined with the selection.

    For small runs and tests; :func:`run_report` streams the shards instead (see the module docstring).

    Raises:
        UserError: no scores, a malformed parquet (named), or missing required columns.
    """
    import pandas as pd

    if not paths.scored_parquets() or not paths.summary_json.is_file():
        raise UserError(f"no scores in {paths.scores}: run 'imagenet-plus score {paths.root}' before report")
    lookup = SelectionLookup.read(paths.selection_parquet) if paths.selection_parquet.is_file() else None
    return pd.concat([_frame(stem, t, lookup) for stem, t in iter_score_tables(paths)], ignore_index=True)


def class_codes(table: Any, class_ids: Any) -> Any:
    """Each row's class index in ``class_ids`` (an arrow string array of classes.json's ids), -1 when absent."""
    import pyarrow.compute as pc

    return pc.fill_null(pc.index_in(table.column("class_id"), value_set=class_ids), -1).to_numpy(
        zero_copy_only=False).astype("int64")


@dataclass
class ScoreScan:
    """What the first pass over the shards gathers: per-class sums (arrays of the class count), column ranges,
    and each shard's kept flags as bits (1 bit an image: 160 kB at 1.28 M images) for the second pass."""

    num_classes: int
    images: int = 0
    kept: int = 0
    class_images: Any = None
    class_kept: Any = None
    class_passed: Any = None
    sums: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    ranges: dict[str, list[float]] = field(default_factory=dict)  # column → [min, max, finite count, non-null]
    kept_bits: dict[str, Any] = field(default_factory=dict)  # shard stem → its rows' kept flags (np.packbits)

    def __post_init__(self) -> None:
        import numpy as np

        self.class_images = np.zeros(self.num_classes, np.int64)
        self.class_kept = np.zeros(self.num_classes, np.int64)
        self.class_passed = np.zeros(self.num_classes, np.int64)

    def add(self, stem: str, table: Any, codes: Any, lookup: SelectionLookup | None) -> None:
        """Add one shard's rows (``codes``: class index of each row, -1 for a class not in classes.json)."""
        import numpy as np

        c = self.num_classes
        valid = codes >= 0
        self.images += table.num_rows
        self.class_images += np.bincount(codes[valid], minlength=c)
        if lookup is not None:
            kept, passed, _ = lookup.find(table.column("key"))
            self.kept_bits[stem] = np.packbits(kept)
            self.kept += int(kept.sum())
            self.class_kept += np.bincount(codes[valid & kept], minlength=c)
            self.class_passed += np.bincount(codes[valid & passed], minlength=c)
        names = set(table.column_names)
        for out, col in CLASS_MEANS.items():
            if col in names:
                v = float_column(table, col)
                m = valid & ~np.isnan(v)
                self.sums[out] = self.sums.get(out, 0) + np.bincount(codes[m], weights=v[m], minlength=c)
                self.counts[out] = self.counts.get(out, 0) + np.bincount(codes[m], minlength=c)
        for col in SCORE_TITLES:
            if col in names:
                v = float_column(table, col)
                finite = v[np.isfinite(v)]
                r = self.ranges.setdefault(col, [np.inf, -np.inf, 0, 0])
                if len(finite):
                    r[0], r[1] = min(r[0], float(finite.min())), max(r[1], float(finite.max()))
                r[2] += len(finite)
                r[3] += int((~np.isnan(v)).sum())

    def hist_columns(self) -> list[str]:
        """Score columns with at least one value (in SCORE_TITLES order)."""
        return [c for c in SCORE_TITLES if c in self.ranges and self.ranges[c][3] > 0]

    def bin_edges(self, col: str) -> Any:
        """The histogram edges of a column: as ``np.histogram_bin_edges`` over all its finite values."""
        import numpy as np

        lo, hi, n, _ = self.ranges[col]
        bins = min(40, max(5, int(np.sqrt(n)) + 1))
        return np.histogram_bin_edges(np.array([lo, hi] if n else [0.0, 1.0]), bins=bins)


def scan_scores(paths: RunPaths, classes: list[dict[str, Any]], lookup: SelectionLookup | None) -> ScoreScan:
    """First pass: per-class counts, kept, passed and sums of the table's means; each score's range."""
    import pyarrow as pa

    ids = pa.array([str(c["id"]) for c in classes], type=pa.string())
    scan = ScoreScan(len(classes))
    for stem, table in iter_score_tables(paths):
        scan.add(stem, table, class_codes(table, ids), lookup)
    return scan


@dataclass(frozen=True)
class Histograms:
    """Bin counts per score column over fixed edges: ``{col: (edges, kept, not kept)}`` or ``(edges, all)``."""

    edges: dict[str, Any]
    counts: dict[str, list[Any]]


def scan_histograms(paths: RunPaths, scan: ScoreScan, lookup: SelectionLookup | None,
                    sample: list[str]) -> tuple[Histograms, Any]:
    """Second pass: histogram counts per score column, and the rows of the ``sample`` classes (for the sheets)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = scan.hist_columns()
    edges = {c: scan.bin_edges(c) for c in cols}
    parts = 2 if lookup is not None else 1
    counts = {c: [np.zeros(len(edges[c]) - 1, np.int64) for _ in range(parts)] for c in cols}
    wanted = pa.array(sample, type=pa.string())
    rows = []
    for stem, table in iter_score_tables(paths):
        # kept comes from the first pass's bits: no second key lookup
        kept = np.unpackbits(scan.kept_bits[stem], count=table.num_rows).astype(bool) if lookup is not None else None
        masks = [kept, ~kept] if kept is not None else [None]
        for col in cols:
            if col not in table.column_names:
                continue
            v = float_column(table, col)
            for i, m in enumerate(masks):
                x = v if m is None else v[m]
                counts[col][i] += np.histogram(x[np.isfinite(x)], bins=edges[col])[0]
        mine = pc.fill_null(pc.is_in(table.column("class_id"), value_set=wanted), False)
        if pc.any(mine).as_py():
            rows.append(_frame(stem, table.filter(mine), lookup))
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["key", "class_id", "_shard"])
    return Histograms(edges, counts), frame


def group_name(group: str | None) -> str:
    """``noun.animal`` → ``animal``; empty (custom classes) → ``custom``."""
    if not group:
        return "custom"
    return str(group).split(".", 1)[-1]


def per_class_table(scan: ScoreScan, classes: list[dict[str, Any]], summary: dict[str, Any],
                    has_selection: bool) -> Any:
    """One row per class (label order): counts, pass/kept rate, classifier hits, CLIP means and summary stats.

    Classes without images have an image count of 0 and empty rates.
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
    """Save a figure through ``atomic_file`` (format from the suffix) and close it; returns the file name."""
    from imagenet_plus.io.atomic import atomic_file

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


SheetEntry = tuple[str, str, float]  # (key, shard stem, score)


def rank_column(rows: Any) -> str:
    """The column images are ranked by: the selection's composite, else ``clip_class_score``, else ``clip_score``."""
    for col in (COMPOSITE, COL_CLIP_CLASS_SCORE):
        if col in rows.columns and rows[col].notna().any():
            return col
    return COL_CLIP_SCORE


def lowest_ranked(df: Any, class_id: str, n: int) -> tuple[list[SheetEntry], str]:
    """The ``n`` lowest-ranked images of a class, kept or not (ties broken by key), and the ranking column."""
    c = df[df["class_id"] == class_id]
    col = rank_column(c)
    low = c.sort_values([col, "key"], ascending=[True, True], na_position="first")[:n]
    return [(k, s, float(v)) for k, s, v in zip(low["key"], low["_shard"], low[col], strict=True)], col


def pick_sheet_keys(df: Any, class_id: str, n: int) -> tuple[list[SheetEntry], list[SheetEntry], str]:
    """(best kept, worst rejected, ranking column) of one class; entries are (key, shard, score).

    Ranked by the selection's composite when there is one, else by ``clip_class_score`` (or ``clip_score``);
    without a selection the "rejected" row is simply the lowest-ranked images.
    """
    c = df[df["class_id"] == class_id]
    col = rank_column(c)
    if "kept" in c.columns:
        kept = c["kept"].to_numpy(bool)
        good, bad = c[kept], c[~kept]
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


def read_images(paths: RunPaths, wanted: dict[str, set[str]]) -> dict[str, bytes]:
    """Image bytes of the wanted keys, ``{shard stem: {keys}}``, read through ``shards.iter_shard``."""
    from imagenet_plus.io.tar import iter_shard
    from imagenet_plus.pipeline.progress import progress_bar

    out: dict[str, bytes] = {}
    bar = progress_bar(len(wanted), "report: contact sheets", unit="shard")
    for shard, keys in sorted(wanted.items()):
        bar.update(1)
        tar = paths.generated_tar(int(shard)) if shard.isdigit() else None
        if tar is None or not tar.is_file():
            continue
        for sample in iter_shard(tar):
            if sample["__key__"] in keys:
                member = image_member(sample)
                if member is not None:
                    out[sample["__key__"]] = sample[member]
    bar.close()
    return out


def wanted_images(picks: list[tuple[list[SheetEntry], list[SheetEntry]]]) -> dict[str, set[str]]:
    """``{shard stem: {keys}}`` of every image on the given sheets."""
    wanted: dict[str, set[str]] = {}
    for best, worst in picks:
        for key, shard, _score in best + worst:
            wanted.setdefault(shard, set()).add(key)
    return wanted


def draw_sheet(rows: list[tuple[str, list[SheetEntry]]], images: dict[str, bytes], n: int, thumb: int,
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
            if score == score:  # no caption for NaN (real images have no score)
                draw.text((x, y + thumb + 1), f"{score:.3g}", fill=(0, 0, 0))
    from imagenet_plus.io.atomic import atomic_file

    with atomic_file(path) as f:
        sheet.save(f, format="JPEG", quality=88)


# ------------------------------------------------------------------------------------------------
# Diagnosis (written by the diagnose stage)

#: Columns of ``RUN/diagnosis.parquet`` shown in the worst-first table (those present), in order.
DIAGNOSIS_COLUMNS = ("label", "class_id", "name", "verdict", "flags", "count", "confusion_share", "confused_with",
                     "clip_class_prob_mean", "classifier_top5_rate", "vendi", "vendi_ratio",
                     "mean_pairwise_similarity", "centroid_cosine", "nearest_real_class", "spread_ratio",
                     "modality_gap", "remedy")
#: Columns of diagnosis.parquet naming the class a flagged class's images lean to, in order of preference.
ARROW_COLUMNS = ("nearest_real_class", "zero_shot_centroid_class", "confused_with")
#: Rows of the worst-first diagnosis table.
MAX_DIAGNOSIS_ROWS = 200
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

    from imagenet_plus.diagnose.stage import VERDICT_OK, VERDICTS

    path = paths.diagnosis_parquet
    if not path.is_file():
        return None
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise UserError(f"unreadable {path}: {type(exc).__name__}: {exc}") from None
    for col in ("class_id", "verdict"):
        if col not in frame.columns:
            raise UserError(f"{path} has no column '{col}': re-run 'imagenet-plus diagnose'")
    rank = {v: i for i, v in enumerate((*VERDICTS, VERDICT_OK))}
    keys = ["_rank"] + [c for c in ("clip_class_prob_mean", "label") if c in frame.columns]
    frame = frame.assign(_rank=frame["verdict"].map(rank).fillna(len(rank)))
    return frame.sort_values(keys, na_position="first", kind="stable").drop(columns="_rank").reset_index(drop=True)


def worst_classes(diagnosis: Any | None, k: int = DIAGNOSIS_SHEETS) -> list[str]:
    """The ``k`` worst flagged classes (verdict not ``ok``) that have images."""
    from imagenet_plus.diagnose.stage import VERDICT_OK

    if diagnosis is None:
        return []
    flagged = diagnosis[diagnosis["verdict"] != VERDICT_OK]
    if "count" in flagged.columns:
        flagged = flagged[flagged["count"] > 0]
    return [str(c) for c in flagged["class_id"].head(k)]


def class_centroids(paths: RunPaths, class_ids: list[str]) -> tuple[Any | None, str | None]:
    """Per-class mean of the CLIP image embeddings (``.clip.npy`` beside each scores parquet), streamed.

    Returns:
        (C×D centroids with NaN rows for classes without images, None) or (None, why not).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = pa.array(class_ids, type=pa.string())
    sums = counts = None
    for f in paths.scored_parquets():
        clip = paths.score_files(f.stem).clip
        if not clip.is_file():
            return None, f"{clip.name} is missing"
        try:
            emb = np.load(clip, mmap_mode="r")
        except (OSError, ValueError) as exc:
            return None, f"{clip} is unreadable ({exc})"
        codes = class_codes(pq.read_table(f, columns=["class_id"]), ids)
        if emb.ndim != 2 or len(emb) != len(codes):
            return None, f"{clip} has shape {emb.shape}, its parquet {len(codes)} rows"
        if sums is None:
            sums, counts = np.zeros((len(ids), emb.shape[1])), np.zeros(len(ids))
        valid = codes >= 0
        np.add.at(sums, codes[valid], np.asarray(emb[valid], dtype=np.float64))
        counts += np.bincount(codes[valid], minlength=len(ids))
    if sums is None:
        return None, "no scores"
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None], None


def saved_centroids(paths: RunPaths, class_ids: list[str]) -> tuple[Any, Any | None] | None:
    """The per-class centroids ``diagnose`` saved (``RUN/diagnosis_centroids.npz``), rows in ``class_ids`` order.

    Returns:
        ``(synthetic, real)`` (``C×D`` each, NaN rows for classes without data; ``real`` None when diagnose ran
        without a reference), or None when the file is absent (a run diagnosed before it existed).

    Raises:
        UserError: the file is unreadable or its arrays disagree in shape.
    """
    import numpy as np

    from imagenet_plus.diagnose.stage import CENTROIDS_CLASS_IDS, CENTROIDS_REAL, CENTROIDS_SYNTHETIC

    path = paths.diagnosis_centroids
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
        saved_ids = [str(c) for c in arrays[CENTROIDS_CLASS_IDS]]
        syn = arrays[CENTROIDS_SYNTHETIC].astype(np.float64)
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"unreadable {path}: {type(exc).__name__}: {exc}: re-run 'imagenet-plus diagnose'") from None
    real = arrays[CENTROIDS_REAL].astype(np.float64) if CENTROIDS_REAL in arrays else None
    for name, a in ((CENTROIDS_SYNTHETIC, syn), (CENTROIDS_REAL, real)):
        if a is not None and (a.ndim != 2 or len(a) != len(saved_ids)):
            raise UserError(f"{path}: '{name}' has shape {a.shape} but '{CENTROIDS_CLASS_IDS}' has {len(saved_ids)} "
                            "rows: re-run 'imagenet-plus diagnose'")
    row = {c: i for i, c in enumerate(saved_ids)}
    take = np.array([row.get(c, -1) for c in class_ids], dtype=np.int64)

    def reorder(a: Any) -> Any:
        out = np.full((len(class_ids), a.shape[1]), np.nan)
        out[take >= 0] = a[take[take >= 0]]
        return out

    return reorder(syn), (reorder(real) if real is not None else None)


def plot_centroid_map(centroids: Any, diagnosis: Any, path: Path, real: Any | None = None) -> str:
    """2D PCA map of the synthetic class centroids (CLIP image space), coloured by verdict.

    With ``real`` (``C×D`` real centroids, same rows), one PCA is fitted on the synthetic and real centroids
    together: synthetic centroids are dots, real ones crosses, and a thin line joins each class's pair.

    A flagged class gets an arrow to the first other class among its :data:`ARROW_COLUMNS` (the real centroid
    nearest to its synthetic one, else the class text nearest to it, else its zero-shot confusion): where its
    images sit instead of where they belong. The arrow ends at that class's real centroid when ``real`` is given.
    """
    import numpy as np

    from imagenet_plus.diagnose.stage import VERDICT_OK, VERDICTS

    plt = _plt()
    ids = list(diagnosis["class_id"])  # row i of ``centroids`` (and of ``real``) is class ids[i]
    by_id = {c: i for i, c in enumerate(ids)}
    have = ~np.isnan(centroids).any(axis=1)
    xy = np.full((len(centroids), 2), np.nan)
    real_have = ~np.isnan(real).any(axis=1) if real is not None else np.zeros(len(centroids), dtype=bool)
    real_xy = np.full((len(centroids), 2), np.nan)
    projected = pca_2d(np.concatenate([centroids[have], real[real_have]]) if real is not None else centroids[have])
    xy[have] = projected[:int(have.sum())]
    real_xy[real_have] = projected[int(have.sum()):]
    fig, ax = plt.subplots(figsize=(8, 6.5))
    colors = {v: plt.get_cmap("tab10")(i) for i, v in enumerate((*VERDICTS, VERDICT_OK))}
    verdicts = diagnosis["verdict"].to_numpy()
    for i in np.flatnonzero(have & real_have):
        ax.plot([xy[i, 0], real_xy[i, 0]], [xy[i, 1], real_xy[i, 1]], color=colors.get(verdicts[i], "#999"),
                lw=0.6, alpha=0.6, zorder=1)
    for verdict in (*VERDICTS, VERDICT_OK):
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
        if row["verdict"] == VERDICT_OK:
            continue
        dst = next((by_id[t] for t in (row.get(c) for c in ARROW_COLUMNS) if t in by_id and by_id[t] != src), -1)
        if dst >= 0 and have[src] and end_have[dst]:
            ax.annotate("", xy=end[dst], xytext=xy[src], arrowprops={"arrowstyle": "->", "color": "#555", "lw": 0.8})
    if len(ids) <= MAX_MAP_LABELS:
        for i, name in enumerate(diagnosis.get("name", diagnosis["class_id"])):
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


def real_images(reference: str | None, class_id: str, n: int) -> list[tuple[str, bytes]]:
    """Up to ``n`` real images of a class from a reference folder (``REF/{class_id}/*``, sorted), or none."""
    from imagenet_plus.contract import READ_IMAGE_EXTENSIONS

    if not reference:
        return []
    folder = Path(reference) / class_id
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.suffix.lower().lstrip(".") in READ_IMAGE_EXTENSIONS)[:n]
    return [(f"real:{p.name}", p.read_bytes()) for p in files]


def diagnosis_sheets(inputs: ReportInputs, rows: Any, worst: list[str], cfg: ReportConfig, names: dict[str, Any],
                     out: Path) -> list[dict[str, str]]:
    """One sheet per worst class: its lowest-ranked synthetic images, beside real ones when a reference is known."""
    reference = (inputs.diagnosis_summary or {}).get("reference")
    picks = {cid: lowest_ranked(rows, cid, cfg.sheet_images) for cid in worst}
    images = read_images(inputs.paths, wanted_images([([], low) for low, _ in picks.values()]))
    sheets = []
    for cid in worst:
        low, col = picks[cid]
        real = real_images(reference, cid, cfg.sheet_images)
        images.update(dict(real))
        sheet_rows = [("synthetic", low)] + ([("real", [(k, "", float("nan")) for k, _ in real])] if real else [])
        src = f"{SHEETS_DIR}/diagnosis-{cid}.jpg"
        draw_sheet(sheet_rows, images, cfg.sheet_images, cfg.thumb_size, f"{names.get(cid, cid)} ({cid})", out / src)
        caption = f"lowest {col} synthetic images" + (", real images below" if real else " (no real reference)")
        sheets.append({"name": str(names.get(cid, cid)), "class_id": cid, "src": src, "caption": caption})
    return sheets


def diagnosis_section(inputs: ReportInputs, table: Any, rows: Any, worst: list[str], cfg: ReportConfig,
                      out: Path) -> Section:
    """Why classes fail (``RUN/diagnosis.parquet``), or a note when ``diagnose`` has not run."""
    empty = {"counts": [], "rows": [], "header": [], "image": None, "sheets": [], "notes": []}
    diagnosis = inputs.diagnosis
    if diagnosis is None:
        note = "No diagnosis (run 'imagenet-plus diagnose' after 'score'): why classes fail is not shown."
        return Section("diagnosis", "diagnosis", "Diagnosis", {**empty, "notes": [note]})
    from imagenet_plus.diagnose.stage import VERDICT_OK, VERDICTS

    counts = [[v, int((diagnosis["verdict"] == v).sum())] for v in (*VERDICTS, VERDICT_OK)]
    header = [c for c in DIAGNOSIS_COLUMNS if c in diagnosis.columns]
    notes = []
    if len(diagnosis) > MAX_DIAGNOSIS_ROWS:
        notes.append(f"The table shows the {MAX_DIAGNOSIS_ROWS} worst of {len(diagnosis)} classes; "
                     f"{inputs.paths.diagnosis_parquet.name} has all.")
    note = (inputs.diagnosis_summary or {}).get("note")
    if note:
        notes.append(str(note))
    saved = saved_centroids(inputs.paths, list(diagnosis["class_id"]))
    if saved is not None:
        centroids, real = saved
        why = None
    else:  # diagnosed before the centroids were saved: the synthetic ones, streamed from the .clip.npy files
        (centroids, why), real = class_centroids(inputs.paths, list(diagnosis["class_id"])), None
    image = plot_centroid_map(centroids, diagnosis, out / "diagnosis_map.png", real) if centroids is not None else None
    if image is None:
        notes.append(f"No centroid map: {why}.")
    elif real is not None:
        notes.append("The map shows synthetic (dots) and real (crosses) class centroids in one PCA of CLIP image "
                     "embeddings; a thin line joins each class's pair, and an arrow leads from a flagged class to "
                     "the real centroid it sits nearer to.")
    else:
        notes.append("Real class centroids are not on the map (diagnose ran without a reference, or before it saved "
                     f"{inputs.paths.diagnosis_centroids.name}): arrows lead to the class a synthetic centroid is "
                     "nearest to, and the table gives the synthetic-vs-real centroid cosine where known.")
    names = dict(zip(table["class_id"], table["name"], strict=True))
    sheets = diagnosis_sheets(inputs, rows, worst, cfg, names, out)
    return Section("diagnosis", "diagnosis", "Diagnosis: why classes fail (worst first)",
                   {"counts": counts, "header": header, "image": image, "sheets": sheets, "notes": notes,
                    "rows": diagnosis[header].head(MAX_DIAGNOSIS_ROWS).values.tolist()})


# ------------------------------------------------------------------------------------------------
# Sections: one function each, returning the data its macro in report_template.html renders


@dataclass(frozen=True)
class Section:
    """One section of the page: the template macro (``kind``), its anchor, title and data."""

    kind: str
    anchor: str
    title: str
    data: dict[str, Any]


def headline_section(inputs: ReportInputs) -> Section:
    """Headline metrics of summary.json, the selection's totals, the generator and scorer models."""
    summary, gen, selection = inputs.summary, inputs.generate, inputs.selection
    rows = [[HEADLINE[k], summary.get(k)] for k in HEADLINE if k in summary]
    rows.append(["classes", len(inputs.classes)])
    if selection is not None:
        rows += [
            ["images kept", selection.num_kept],
            ["per-class quota", selection.per_class_quota],
            ["classes short of quota", len(selection.short or {})],
            ["dropped classes", selection.dropped_classes or []],
        ]
    models = summary.get("models") or {}
    setup = [
        ["generator", gen.get("model")],
        ["steps / guidance / resolution", f"{gen.get('steps')} / {gen.get('guidance')} / {gen.get('resolution')}"],
        ["prompt strategies", gen.get("prompt_strategy")],
        ["class set", gen.get("classes")],
        ["seed", gen.get("seed")],
    ] + [[f"scorer: {k}", v] for k, v in models.items()] + [["reference (real images)", summary.get("reference")]]
    notes = []
    if summary.get("reference") in (None, "", {}):
        notes.append("No real reference was given to 'score': FID, KID, precision, recall and realism are absent.")
    return Section("headline", "headline", "Headline metrics", {"rows": rows, "setup": setup, "notes": notes})


def scores_section(inputs: ReportInputs, hist: Histograms, out: Path) -> Section:
    """Score histograms (kept vs not kept) with the thresholds, and why images were not kept."""
    selection = inputs.selection
    thresholds = selection.thresholds if selection is not None else {}
    image = plot_scores(hist, thresholds or {}, out / "scores.png")
    notes, used, reasons = [], None, []
    if selection is None:
        notes.append("No selection yet (run 'imagenet-plus select'): histograms show all images, no thresholds.")
    else:
        used = {k: v for k, v in (thresholds or {}).items() if v is not None and v is not False} or None
        reasons = [[k, v] for k, v in sorted((selection.reasons or {}).items(), key=lambda kv: -kv[1])]
    return Section("scores", "scores", "Score distributions",
                   {"image": image, "notes": notes, "thresholds": used, "reasons": reasons})


def per_class_section(table: Any, out: Path) -> Section:
    """Per-class rates (plot), the table (first rows) and per_class.csv (every class)."""
    from imagenet_plus.io.atomic import atomic_file

    image = plot_per_class(table, out / "per_class.png")
    show = [c for c in TABLE_COLUMNS if c in table.columns]
    with atomic_file(out / PER_CLASS_CSV, "w") as f:
        table[show].to_csv(f, index=False)
    notes = []
    if "top1_rate" in table.columns and table["top1_rate"].isna().all():
        notes.append("No classifier hits: the classifier did not score these classes (outside ImageNet-1k or none).")
    after = []
    if len(table) > MAX_TABLE_ROWS:
        after.append(f"The table shows the first {MAX_TABLE_ROWS} of {len(table)} classes; {PER_CLASS_CSV} has all.")
    return Section("per_class", "per-class", "Per class",
                   {"image": image, "notes": notes, "csv": PER_CLASS_CSV, "header": show,
                    "rows": table[show].head(MAX_TABLE_ROWS).values.tolist(), "after": after})


def groups_section(table: Any, out: Path) -> Section:
    """Mean per-class rates by WordNet group (plot and table)."""
    groups = group_table(table)
    image = plot_groups(groups, out / "groups.png")
    notes = ["Groups are WordNet lexicographer files (noun.animal → animal); custom classes form 'custom'."]
    return Section("groups", "groups", "Rates by WordNet group",
                   {"image": image, "header": list(groups.columns), "rows": groups.values.tolist(), "notes": notes})


def class_map_section(inputs: ReportInputs, table: Any, out: Path) -> Section:
    """PCA map of the class text embeddings, or a note when ``score`` did not write them."""
    if inputs.text_embeddings is None:
        note = f"{inputs.paths.class_text_embeddings.name} is missing (written by 'score'): no class map."
        return Section("class_map", "class-map", "Class map", {"image": None, "notes": [note]})
    image = plot_class_map(inputs.text_embeddings, table, out / "class_map.png")
    return Section("class_map", "class-map", "Class map", {"image": image, "notes": []})


def sheets_section(inputs: ReportInputs, table: Any, rows: Any, chosen: list[str], cfg: ReportConfig,
                   out: Path) -> Section:
    """Contact sheets of the sampled classes: best kept and worst rejected images with their scores."""
    picks = {cid: pick_sheet_keys(rows, cid, cfg.sheet_images) for cid in chosen}
    wanted = wanted_images([(b, w) for b, w, _ in picks.values()])
    images = read_images(inputs.paths, wanted)
    names = dict(zip(table["class_id"], table["name"], strict=True))
    labels = ("best kept", "worst rejected") if inputs.selection is not None else ("best", "worst")
    sheets = []
    for cid in chosen:
        best, worst, col = picks[cid]
        src = f"{SHEETS_DIR}/{cid}.jpg"
        draw_sheet([(labels[0], best), (labels[1], worst)], images, cfg.sheet_images, cfg.thumb_size,
                   f"{names[cid]} ({cid}), ranked by {col}", out / src)
        sheets.append({"name": str(names[cid]), "class_id": cid, "src": src,
                       "caption": f"top row: {labels[0]}, bottom row: {labels[1]}, ranked by {col}"})
    notes = [] if sheets else ["No class has images."]
    if missing := sum(len(k) for k in wanted.values()) - len(images):
        notes.append(f"{missing} image(s) could not be found in {inputs.paths.generated} (red frames).")
    return Section("sheets", "sheets", f"Contact sheets ({len(chosen)} of {len(table)} classes)",
                   {"sheets": sheets, "notes": notes})


# ------------------------------------------------------------------------------------------------
# Rendering and the stage


def _fmt(v: Any) -> str:
    """A value as readable text: None/NaN → "—", floats with 4 significant digits, lists and dicts joined."""
    import math

    if v is None or v is _pandas_na():
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


def _pandas_na() -> Any:
    import pandas as pd

    return pd.NA


def render_page(title: str, n_images: int, n_classes: int, sections: list[Section]) -> str:
    """The HTML page from ``report_template.html`` (autoescaped; ``fmt`` formats table cells)."""
    import jinja2

    if not TEMPLATE.is_file():
        raise UserError(f"report template not found: {TEMPLATE} (a broken installation of imagenet-plus)")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["fmt"] = _fmt
    present = {s.anchor for s in sections}
    nav = [(a, label) for a, label in NAV if a in present]
    return env.get_template(TEMPLATE.name).render(title=title, n_images=n_images, n_classes=n_classes, nav=nav,
                                                  sections=sections)


def build_sections(inputs: ReportInputs, cfg: ReportConfig, lookup: SelectionLookup | None,
                   out: Path) -> tuple[list[Section], ScoreScan, list[str]]:
    """Stream the shards (two passes) and build every section's plots and data into ``out``."""
    scan = scan_scores(inputs.paths, inputs.classes, lookup)
    table = per_class_table(scan, inputs.classes, inputs.summary, lookup is not None)
    chosen = sample_classes(table, cfg.sample_classes, cfg.seed)
    worst = worst_classes(inputs.diagnosis)
    hist, rows = scan_histograms(inputs.paths, scan, lookup, chosen + worst)
    sections = [
        headline_section(inputs),
        scores_section(inputs, hist, out),
        per_class_section(table, out),
        groups_section(table, out),
        class_map_section(inputs, table, out),
        diagnosis_section(inputs, table, rows, worst, cfg, out),
        sheets_section(inputs, table, rows, chosen, cfg, out),
    ]
    return sections, scan, chosen


def write_page(inputs: ReportInputs, cfg: ReportConfig, sections: list[Section], scan: ScoreScan,
               chosen: list[str], out: Path) -> None:
    """Write ``index.html`` and ``report.json`` (headline numbers, fingerprint) into ``out``."""
    from imagenet_plus.io.atomic import atomic_file, write_json_atomic

    paths = inputs.paths
    page = render_page(f"imagenet-plus report — {paths.root.name}", scan.images, len(inputs.classes), sections)
    with atomic_file(out / paths.report_index.name, "w") as f:
        f.write(page)
    headline = {k: inputs.summary.get(k) for k in HEADLINE if k in inputs.summary}
    meta = {"fingerprint": inputs_fingerprint(paths, cfg), "headline": headline, "classes": len(inputs.classes),
            "images": scan.images, "kept": scan.kept if inputs.selection is not None else None,
            "sampled_classes": chosen}
    write_json_atomic(out / paths.report_json.name, meta)


def swap_in(paths: RunPaths, tmp: Path) -> None:
    """Replace ``RUN/report`` by the finished ``tmp`` folder (the old one is removed after the rename)."""
    old = paths.root / f"{paths.report.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if paths.report.exists():
        os.replace(paths.report, old)
    os.replace(tmp, paths.report)
    shutil.rmtree(old, ignore_errors=True)


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
    paths = run_paths(run)
    inputs = read_inputs(paths)
    lookup = SelectionLookup.read(paths.selection_parquet) if inputs.selection is not None else None
    tmp = paths.root / f"{paths.report.name}{PARTIAL_SUFFIX}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / SHEETS_DIR).mkdir(parents=True)
    try:
        sections, scan, chosen = build_sections(inputs, cfg, lookup, tmp)
        write_page(inputs, cfg, sections, scan, chosen, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(paths, tmp)
    return paths.report_index
