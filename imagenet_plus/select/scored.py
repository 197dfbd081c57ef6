"""Reading the scores for select: one pass over ``RUN/scores/*.parquet`` into a few bytes a row, the composite,
and the CLIP embeddings row by row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.contract import (
    COL_CLASSIFIER_PROB,
    COL_CLASSIFIER_TOP5,
    COL_CLIP_CLASS_PROB,
    COL_CLIP_SCORE,
    COL_ISC_KL,
    COL_NSFW_SCORE,
    COL_REALISM,
    REQUIRED_SCORE_COLUMNS,
    RunPaths,
    ScoreFiles,
    check_score_columns,
    unreadable_scores,
)
from imagenet_plus.errors import UserError
from imagenet_plus.io.storage import local_copy
from imagenet_plus.select.rules import Rule, floats

#: Score columns averaged (as within-class percentile ranks) into the composite; absent/null ones are skipped.
COMPOSITE_COLUMNS = (COL_CLIP_SCORE, COL_CLIP_CLASS_PROB, COL_ISC_KL, COL_CLASSIFIER_PROB, COL_REALISM)
#: Every score column select reads (the rest of a scores parquet is never loaded).
SELECT_COLUMNS = tuple(dict.fromkeys((*REQUIRED_SCORE_COLUMNS, *COMPOSITE_COLUMNS, COL_CLASSIFIER_TOP5,
                                      COL_NSFW_SCORE)))


class ClipRows:
    """The CLIP image embeddings of the scored rows, read row by row from the shards' ``.clip.npy`` files.

    Nothing is loaded up front: :meth:`gather` memory-maps the few files that hold the rows asked for (a small
    LRU of maps, so open files stay bounded whatever the shard count) and copies only those rows, so picking the
    quota of one class reads that class's rows only. Rows are numbered across the files in order, so a row's
    file is found from the files' first rows alone (no per-row table).
    """

    #: Memory maps kept open at once (each holds one file descriptor).
    MAX_OPEN = 16

    def __init__(self, files: list[Path], starts: Any, dim: int) -> None:
        """``files[s]`` holds rows ``starts[s]`` to ``starts[s + 1] - 1`` (``len(starts) == len(files) + 1``)."""
        import numpy as np

        self.files, self.starts, self.dim = files, np.asarray(starts, dtype=np.int64), dim
        self._maps: dict[int, Any] = {}

    def _map(self, s: int) -> Any:
        import numpy as np

        arr = self._maps.pop(s, None)
        if arr is None:
            arr = np.load(local_copy(self.files[s]), mmap_mode="r", allow_pickle=False)
        self._maps[s] = arr  # most recently used last
        while len(self._maps) > self.MAX_OPEN:
            self._maps.pop(next(iter(self._maps)))
        return arr

    def gather(self, idx: Any) -> Any:
        """float32 (len(idx), dim) embeddings of rows ``idx``."""
        import numpy as np

        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.dim), dtype=np.float32)
        shard = np.searchsorted(self.starts, idx, side="right") - 1
        for s in np.unique(shard):
            mask = shard == s
            out[mask] = self._map(int(s))[idx[mask] - self.starts[s]]
        return out

    def close(self) -> None:
        """Drop every memory map."""
        self._maps.clear()


def score_columns_of(f: Path) -> list[str]:
    """The columns of ``f`` select reads, after checking that the required ones are there."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(local_copy(f)).names
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise unreadable_scores(f, exc) from None
    check_score_columns(names, f)
    return [c for c in SELECT_COLUMNS if c in names]


def read_columns(f: Path, columns: list[str]) -> Any:
    """The arrow table of ``columns`` of the scores file ``f``."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(local_copy(f), columns=columns)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise unreadable_scores(f, exc) from None


def clip_rows_of(files: ScoreFiles, n: int) -> tuple[Path, int]:
    """The ``.clip.npy`` of a scores file of ``n`` rows, checked from its header only; returns (path, width)."""
    import numpy as np

    npy, f = files.clip, files.parquet
    if not npy.is_file():
        raise UserError(f"CLIP embeddings not found: {npy} (written by 'imagenet-plus score')")
    try:
        emb = np.load(local_copy(npy), mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise unreadable_scores(npy, exc) from None
    shape = emb.shape
    del emb
    if len(shape) != 2 or shape[0] != n:
        raise UserError(f"{npy} has shape {shape}, expected {n} rows (one per row of {f.name})")
    return npy, int(shape[1])



def has_values(table: Any, col: str) -> bool:
    """Whether column ``col`` of an arrow table has a non-null (and, for floats, non-NaN) value."""
    import numpy as np
    import pyarrow as pa

    if col not in table.column_names or table.column(col).null_count == table.num_rows:
        return False
    if pa.types.is_floating(table.column(col).type):
        return bool((~np.isnan(floats(table, col))).any())
    return True



@dataclass(frozen=True)
class ScoredRows:
    """What select keeps of every scored row: a few bytes each, no Python object per row.

    Rows are numbered across the scores files in file order, then row order.

    Attributes:
        files: the scores parquets, sorted.
        columns: per file, the columns of :data:`SELECT_COLUMNS` it has.
        starts: int64 (len(files) + 1,): the first row of each file, then the row count.
        keys: the keys, one arrow string array.
        label: int64 labels.
        cls: int32 class codes (indices into ``classes.json``).
        reason: uint8 code of the first rule each row fails (0: none; ``k``: ``rules[k - 1]``).
        scored: the columns of :data:`COMPOSITE_COLUMNS` with a value somewhere.
        clip: the CLIP embeddings of the rows.
    """

    files: list[Path]
    columns: list[list[str]]
    starts: Any
    keys: Any
    label: Any
    cls: Any
    reason: Any
    scored: tuple[str, ...]
    clip: ClipRows


def read_scored_rows(paths: RunPaths, class_ids: list[str], rules: list[Rule]) -> ScoredRows:
    """One pass over ``RUN/scores/*.parquet``: keys, labels, class codes and each row's first failed rule.

    Only :data:`SELECT_COLUMNS` are read, one file at a time, and no embedding is loaded (see :class:`ClipRows`).

    Raises:
        UserError: no scores, an unreadable or incomplete scores file, CLIP embeddings missing or of the wrong
            shape, a null key or label, a class id not in ``classes.json``, a key twice, or a rule on a score
            that has no value in any file.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    files = paths.scored_parquets()
    if not files:
        raise UserError(f"no scores in {paths.scores}: run 'imagenet-plus score {paths.root}' first")
    class_values = pa.array(class_ids, type=pa.string())
    keys, labels, codes, reasons, columns_of, npys = [], [], [], [], [], []
    starts, dims, seen, unknown = [0], set(), set(), set()
    for f in files:
        columns = score_columns_of(f)
        table = read_columns(f, columns)
        n = table.num_rows
        npy, dim = clip_rows_of(paths.score_files(f.stem), n)
        for name in ("key", "label"):
            if table.column(name).null_count:
                raise UserError(f"scores file {f} has a null '{name}'")
        code = pc.index_in(table.column("class_id"), value_set=class_values)
        if code.null_count:
            unknown.update(pc.unique(pc.filter(table.column("class_id"), pc.is_null(code))).to_pylist())
        cls = pc.fill_null(code, -1).to_numpy(zero_copy_only=False).astype(np.int32)
        reason = np.zeros(n, dtype=np.uint8)
        for k, rule in enumerate(rules, start=1):
            reason[np.asarray(rule.fails(table, cls), dtype=bool) & (reason == 0)] = k
        seen.update(c for c in {*COMPOSITE_COLUMNS, *(r.column for r in rules if r.column)} if has_values(table, c))
        keys.extend(pc.cast(table.column("key"), pa.string()).chunks)
        labels.append(pc.cast(table.column("label"), pa.int64()).to_numpy(zero_copy_only=False))
        codes.append(cls)
        reasons.append(reason)
        columns_of.append(columns)
        npys.append(npy)
        dims.add(dim)
        starts.append(starts[-1] + n)
        del table
    if len(dims) > 1:
        raise UserError(f"CLIP embeddings in {paths.scores} have different widths {sorted(dims)}")
    if unknown:
        raise UserError(f"scores in {paths.scores} name class id {sorted(map(str, unknown))[0]!r}, "
                        f"not in {paths.classes_json}")
    for rule in rules:
        if rule.column is not None and rule.column not in seen:
            raise UserError(rule.missing)
    all_keys = pa.chunked_array(keys, type=pa.string()).combine_chunks()
    del keys
    return ScoredRows(files=files, columns=columns_of, starts=np.asarray(starts, dtype=np.int64), keys=all_keys,
                      label=np.concatenate(labels), cls=np.concatenate(codes), reason=np.concatenate(reasons),
                      scored=tuple(c for c in COMPOSITE_COLUMNS if c in seen),
                      clip=ClipRows(npys, starts, dims.pop() if dims else 0))


def composite_of(rows: ScoredRows) -> Any:
    """float64 composite of every row: the mean within-class percentile rank of the score columns present.

    Each column is read again from the scores files on its own, so one float column is held at a time.

    Returns:
        An array in [0, 1] (0.5 everywhere when no score column has a value; 0 for a row with none).
    """
    import numpy as np
    import pandas as pd

    n = len(rows.cls)
    if not rows.scored:
        return np.full(n, 0.5)
    total = np.zeros(n)
    count = np.zeros(n, dtype=np.int32)
    for col in rows.scored:
        values = np.empty(n)
        for s, f in enumerate(rows.files):
            lo, hi = rows.starts[s], rows.starts[s + 1]
            values[lo:hi] = floats(read_columns(f, [col]), col) if col in rows.columns[s] else np.nan
        ranks = pd.Series(values).groupby(rows.cls).rank(pct=True, method="average").to_numpy()
        del values
        ok = ~np.isnan(ranks)
        total[ok] += ranks[ok]
        count += ok
        del ranks, ok
    return np.divide(total, count, out=np.zeros(n), where=count > 0)
