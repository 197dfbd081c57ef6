"""Select: thresholds and per-class quotas over the scores. Reads ``RUN/scores/``, writes ``RUN/selection.*``.

Input (written by ``score``): ``RUN/scores/{shard}.parquet`` (one row per sample key), the CLIP image
embeddings ``RUN/scores/{shard}.clip.npy`` (float16, L2-normalised, parquet row order) and
``RUN/scores/summary.json`` (its ``per_class`` FID drives the class rule).

Output:

- ``RUN/selection.parquet``: every key with ``key``, ``label``, ``class_id``, ``kept`` (bool),
  ``reason`` (``"kept"`` or the first rule it failed: ``"nsfw"``, ``"duplicate"``, ``"clip_score<20"``,
  ``"clip_class_prob<0.5"``, ``"isc_kl<0.1"``, ``"realism<1"``, ``"not_top5"``, ``"class_fid>80"``,
  ``"over_quota"``) and ``composite`` (float in [0, 1], higher is better); rows sorted by label, then key;
- ``RUN/selection.json``: ``thresholds``, ``per_class_quota``, ``pass_rate`` {class_id: rate},
  ``kept`` {class_id: n}, ``short`` {class_id: missing count}, ``dropped_classes``, ``flagged_classes``.
  ``generate --top-up`` reads ``short`` and ``pass_rate``.

Rules are applied in a fixed order (class FID with action ``drop``, nsfw, duplicate, clip_score,
clip_class_prob, isc_kl, realism, classifier_top5); a sample's reason is the first rule it fails. A rule
whose score is null for a sample (e.g. no ImageNet classifier outside ImageNet-1k) does not reject that
sample; a rule set on a score that is null for every sample is a :class:`~imagenet_plus.errors.UserError`.

Composite: the mean, over the score columns present (``clip_score``, ``clip_class_prob``, ``isc_kl``,
``classifier_prob``, ``realism``), of each score's percentile rank within its class (0 = worst,
1 = best). Ranks make scores on different scales comparable and are insensitive to outliers.

Quota: within a class, the passing samples are picked greedily by maximal marginal relevance
(Carbonell & Goldstein 1998) on the CLIP embeddings: first the best composite, then each time the
candidate maximising ``(1 - diversity) * composite + diversity * min cosine distance to the picked
ones``. Near-identical images thus score low once one of them is picked and do not fill the quota.
Written by hand (a 20-line numpy loop) because no maintained library offers MMR over a score vector.

Memory: about 40 bytes per image and no Python object per image. One pass over the scores files (one at a
time) keeps each image's key (in one arrow string array), label, class code and the code of the first rule it
fails; each composite column is then read again on its own and folded into a running mean; the output is
written in row batches.
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
    COL_DUP_OF,
    COL_ISC_KL,
    COL_NSFW_SCORE,
    COL_REALISM,
    COMPOSITE,
    PASSED_REASONS,
    REASON_DUPLICATE,
    REASON_KEPT,
    REASON_NOT_TOP5,
    REASON_NSFW,
    REASON_OVER_QUOTA,
    REQUIRED_SCORE_COLUMNS,
    SELECTION_COLUMNS,
    RunPaths,
    ScoreFiles,
    SelectionSummary,
    check_score_columns,
    read_class_records,
    read_json,
    read_run_yaml,
    run_paths,
)
from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import atomic_file
from imagenet_plus.select.config import SelectConfig, Thresholds, load_thresholds

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
            arr = np.load(self.files[s], mmap_mode="r", allow_pickle=False)
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


def _score_columns_of(f: Path) -> list[str]:
    """The columns of ``f`` select reads, after checking that the required ones are there."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(f).names
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise UserError(f"unreadable scores file {f}: {exc}") from None
    check_score_columns(names, f)
    return [c for c in SELECT_COLUMNS if c in names]


def _read_columns(f: Path, columns: list[str]) -> Any:
    """The arrow table of ``columns`` of the scores file ``f``."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(f, columns=columns)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise UserError(f"unreadable scores file {f}: {exc}") from None


def _clip_rows_of(files: ScoreFiles, n: int) -> tuple[Path, int]:
    """The ``.clip.npy`` of a scores file of ``n`` rows, checked from its header only; returns (path, width)."""
    import numpy as np

    npy, f = files.clip, files.parquet
    if not npy.is_file():
        raise UserError(f"CLIP embeddings not found: {npy} (written by 'imagenet-plus score')")
    try:
        emb = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"unreadable CLIP embeddings {npy}: {exc}") from None
    shape = emb.shape
    del emb
    if len(shape) != 2 or shape[0] != n:
        raise UserError(f"{npy} has shape {shape}, expected {n} rows (one per row of {f.name})")
    return npy, int(shape[1])


def _floats(table: Any, col: str) -> Any:
    """Column ``col`` of an arrow table as float64 (NaN where null; all NaN when the table lacks it)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if col not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return pc.cast(table.column(col), pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _bools(table: Any, col: str, value: bool) -> Any:
    """Where column ``col`` of an arrow table equals ``value`` (False where null or when the table lacks it)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if col not in table.column_names:
        return np.zeros(table.num_rows, dtype=bool)
    column = pc.cast(table.column(col), pa.bool_())
    return pc.fill_null(pc.equal(column, value), False).to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _has_values(table: Any, col: str) -> bool:
    """Whether column ``col`` of an arrow table has a non-null (and, for floats, non-NaN) value."""
    import numpy as np
    import pyarrow as pa

    if col not in table.column_names or table.column(col).null_count == table.num_rows:
        return False
    if pa.types.is_floating(table.column(col).type):
        return bool((~np.isnan(_floats(table, col))).any())
    return True


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
                          lambda t, cls, limit=th.nsfw_score_max: _bools(t, "nsfw", True)
                          | (_floats(t, COL_NSFW_SCORE) > limit)))
    if th.drop_duplicates:
        rules.append(Rule(REASON_DUPLICATE, None, "", lambda t, cls: _is_duplicate(t)))
    for col, key in ((COL_CLIP_SCORE, "clip_score_min"), (COL_CLIP_CLASS_PROB, "clip_class_prob_min"),
                     (COL_ISC_KL, "isc_kl_min"), (COL_REALISM, "realism_min")):
        limit = getattr(th, key)
        if limit is not None:
            missing = (f"{th.source}: key '{key}' is set but the scores have no '{col}' values "
                       "(re-run 'imagenet-plus score' with the scorer that computes it, or remove the key)")
            rules.append(Rule(f"{col}<{limit:g}", col, missing,
                              lambda t, cls, col=col, limit=limit: _floats(t, col) < limit))
    if th.classifier_top5:
        missing = (f"{th.source}: key 'classifier_top5' is true but the scores have no ImageNet classifier results "
                   "(only ImageNet-1k classes have them)")
        rules.append(Rule(REASON_NOT_TOP5, COL_CLASSIFIER_TOP5, missing,
                          lambda t, cls: _bools(t, COL_CLASSIFIER_TOP5, False)))
    return rules


def _is_duplicate(table: Any) -> Any:
    """Rows whose ``dup_of`` is set (not null, not empty)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    dup = pc.cast(table.column(COL_DUP_OF), pa.string())
    return pc.fill_null(pc.not_equal(dup, ""), False).to_numpy(zero_copy_only=False).astype(bool, copy=False)


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
        columns = _score_columns_of(f)
        table = _read_columns(f, columns)
        n = table.num_rows
        npy, dim = _clip_rows_of(paths.score_files(f.stem), n)
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
        seen.update(c for c in {*COMPOSITE_COLUMNS, *(r.column for r in rules if r.column)} if _has_values(table, c))
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
            values[lo:hi] = _floats(_read_columns(f, [col]), col) if col in rows.columns[s] else np.nan
        ranks = pd.Series(values).groupby(rows.cls).rank(pct=True, method="average").to_numpy()
        del values
        ok = ~np.isnan(ranks)
        total[ok] += ranks[ok]
        count += ok
        del ranks, ok
    return np.divide(total, count, out=np.zeros(n), where=count > 0)


def mmr_pick(composite: Any, embeddings: Any, k: int, diversity: float) -> list[int]:
    """Greedy maximal-marginal-relevance pick of ``k`` rows.

    Args:
        composite: (n,) quality scores in [0, 1].
        embeddings: (n, d) L2-normalised embeddings.
        k: how many to pick (at most n).
        diversity: 0 = by composite only; 1 = greedy max-min cosine distance only.

    Returns:
        Row indices in pick order.
    """
    import numpy as np

    comp = np.asarray(composite, dtype=np.float64)
    n = len(comp)
    k = min(k, n)
    if k == 0:
        return []
    emb = np.asarray(embeddings, dtype=np.float32)
    picked = [int(np.argmax(comp))]
    available = np.ones(n, dtype=bool)
    available[picked[0]] = False
    min_dist = 1.0 - emb @ emb[picked[0]]
    while len(picked) < k:
        objective = (1.0 - diversity) * comp + diversity * min_dist
        objective[~available] = -np.inf
        nxt = int(np.argmax(objective))
        picked.append(nxt)
        available[nxt] = False
        np.minimum(min_dist, 1.0 - emb @ emb[nxt], out=min_dist)
    return picked


def pick_quota(rows: ScoredRows, composite: Any, quota: int, diversity: float) -> Any:
    """Bool array: the rows kept, ``quota`` per class picked by :func:`mmr_pick` among the passing rows.

    A class's candidates are its passing rows in row order; only their embeddings are read.
    """
    import numpy as np

    passing = np.flatnonzero(rows.reason == 0)
    passing = passing[np.argsort(rows.cls[passing], kind="stable")]
    bounds = np.flatnonzero(np.diff(rows.cls[passing])) + 1
    kept = np.zeros(len(rows.cls), dtype=bool)
    for cand in np.split(passing, bounds) if len(passing) else []:
        order = mmr_pick(composite[cand], rows.clip.gather(cand), quota, diversity)
        kept[cand[order]] = True
    return kept


def _quota(paths: RunPaths, cfg: SelectConfig) -> int:
    quota = cfg.per_class
    if quota is None:
        quota = int(read_run_yaml(paths)["config"].get("images_per_class", 0)) or None
    if quota is None:
        raise UserError(f"{paths.run_yaml} has no images_per_class: pass --per-class")
    return quota


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
    """Write ``selection.parquet`` (columns :data:`~imagenet_plus.contract.SELECTION_COLUMNS`) in ``order``.

    Written :data:`BATCH_ROWS` rows at a time (one row group each), atomically.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"key": pa.string(), "label": pa.int64(), "class_id": pa.string(), "kept": pa.bool_(),
             "reason": pa.string(), COMPOSITE: pa.float64()}
    schema = pa.schema([(name, types[name]) for name in SELECTION_COLUMNS])
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


def run_select(run: str | Path, cfg: SelectConfig) -> dict[str, Any]:
    """Select the images to release: ``RUN/scores`` → ``RUN/selection.parquet`` + ``RUN/selection.json``.

    Memory: about 40 bytes per image (its key in one arrow array, label, class code, reason code, composite)
    plus per-class and per-batch buffers; scores files are read one at a time, each composite column on its own,
    and CLIP embeddings one class at a time (see :class:`ClipRows`).

    Args:
        run: the run directory.
        cfg: the select settings.

    Returns:
        The summary written to ``RUN/selection.json`` (:class:`~imagenet_plus.contract.SelectionSummary` as a dict).

    Raises:
        UserError: no run directory, ``score`` not run yet, malformed thresholds or scores.
    """
    paths = run_paths(run)
    if not paths.summary_json.is_file():
        raise UserError(f"{paths.summary_json} not found: run 'imagenet-plus score {paths.root}' before select")
    th = load_thresholds(cfg.thresholds)
    summary = read_json(paths.summary_json)
    quota = _quota(paths, cfg)
    if not paths.scored_parquets():
        raise UserError(f"no scores in {paths.scores}: run 'imagenet-plus score {paths.root}' first")
    class_ids = [c["id"] for c in read_class_records(paths)]
    class_fid = {cid: v.get("fid") for cid, v in (summary.get("per_class") or {}).items() if isinstance(v, dict)}
    dropped: list[int] = []
    if th.class_fid_max is not None and th.class_fid_action == "drop":
        bad = {c for c, fid in class_fid.items() if fid is not None and float(fid) > th.class_fid_max}
        dropped = [i for i, c in enumerate(class_ids) if c in bad]
    rules = rules_of(th, dropped)
    names = ["", *(r.reason for r in rules), REASON_KEPT, REASON_OVER_QUOTA]
    rows = read_scored_rows(paths, class_ids, rules)
    try:
        order = output_order(rows.keys, rows.label)
        composite = composite_of(rows)
        kept = pick_quota(rows, composite, quota, th.diversity)
    finally:
        rows.clip.close()
    reason = rows.reason.copy()
    reason[(reason == 0) & kept] = names.index(REASON_KEPT)
    reason[reason == 0] = names.index(REASON_OVER_QUOTA)
    del kept
    result = summarize_selection(rows.cls, reason, names, class_ids, th, quota, class_fid)
    write_selection(paths.selection_parquet, rows, order, class_ids, reason, names, composite)
    result.write(paths.selection_json)
    return result.to_dict()
