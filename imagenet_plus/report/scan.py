"""Streaming the score shards for the report: pyarrow tables and numpy arrays, no per-row Python objects.

:func:`scan_scores` (first pass: per-class sums and each score's range) and :func:`scan_histograms` (second pass:
histogram counts over fixed edges, and the rows of the sampled classes) read only the columns the page uses;
:class:`SelectionLookup` joins ``selection.parquet`` by key; :func:`class_centroids` streams the CLIP image
embeddings beside the shards.
"""

from __future__ import annotations

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
    PASSED_REASONS,
    SCORE_COLUMNS,
    RunPaths,
    unreadable_scores,
)
from imagenet_plus.errors import UserError
from imagenet_plus.io.storage import local_copy

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
            for batch in pq.ParquetFile(local_copy(path)).iter_batches(batch_size=batch_rows,
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


def columns_to_read(path: Path) -> list[str]:
    """The columns of one scores parquet the report uses (identity columns checked)."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(local_copy(path)).names
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise unreadable_scores(path, exc) from None
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
        columns = columns_to_read(f)
        try:
            table = pq.read_table(local_copy(f), columns=columns)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise unreadable_scores(f, exc) from None
        yield f.stem, table


def frame_of(stem: str, table: Any, lookup: SelectionLookup | None) -> Any:
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
    return pd.concat([frame_of(stem, t, lookup) for stem, t in iter_score_tables(paths)], ignore_index=True)


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
            rows.append(frame_of(stem, table.filter(mine), lookup))
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["key", "class_id", "_shard"])
    return Histograms(edges, counts), frame



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
            emb = np.load(local_copy(clip), mmap_mode="r")
        except (OSError, ValueError) as exc:
            return None, f"{clip} is unreadable ({exc})"
        try:
            codes = class_codes(pq.read_table(local_copy(f), columns=["class_id"]), ids)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise unreadable_scores(f, exc) from None
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
