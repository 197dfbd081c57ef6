"""Select: thresholds and per-class quotas over the scores. Reads ``RUN/scores/``, writes ``RUN/selection.*``.

Input (written by ``score``): ``RUN/scores/{shard}.parquet`` (one row per sample key), the CLIP image
embeddings ``RUN/scores/{shard}.clip.npy`` (float16, L2-normalised, parquet row order) and
``RUN/scores/summary.json`` (its ``per_class`` FID drives the class rule).

Output:

- ``RUN/selection.parquet``: every key with ``key``, ``label``, ``class_id``, ``kept`` (bool),
  ``reason`` (``"kept"`` or the first rule it failed: ``"nsfw"``, ``"duplicate"``, ``"clip_score<20"``,
  ``"clip_class_prob<0.5"``, ``"isc_kl<0.1"``, ``"realism<1"``, ``"not_top5"``, ``"class_fid>80"``,
  ``"over_quota"``) and ``composite`` (float in [0, 1], higher is better);
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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.configio import config_from_mapping, load_yaml_mapping
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
from imagenet_plus.shards import write_bytes_atomic

#: Score columns averaged (as within-class percentile ranks) into the composite; absent/null ones are skipped.
COMPOSITE_COLUMNS = (COL_CLIP_SCORE, COL_CLIP_CLASS_PROB, COL_ISC_KL, COL_CLASSIFIER_PROB, COL_REALISM)
#: Every score column select reads (the rest of a scores parquet is never loaded).
SELECT_COLUMNS = tuple(dict.fromkeys((*REQUIRED_SCORE_COLUMNS, *COMPOSITE_COLUMNS, COL_CLASSIFIER_TOP5,
                                      COL_NSFW_SCORE)))
CLASS_FID_ACTIONS = ("flag", "drop")


@dataclass(frozen=True)
class Thresholds:
    """Per-image and per-class filters, loaded from a thresholds YAML (keys as below, ``-`` or ``_``).

    Attributes:
        clip_score_min: minimum CLIP score of the image against its prompt (0..100), or None.
        clip_class_prob_min: minimum zero-shot probability of the target class (0..1), or None.
        isc_kl_min: minimum per-image Inception-Score KL term (>= 0), or None.
        realism_min: minimum realism score (Kynkäänniemi et al.; >= 0), or None.
        classifier_top5: require the ImageNet classifier to have the class in its top 5.
        drop_duplicates: drop images marked as near-duplicates (``dup_of`` set).
        drop_nsfw: drop images flagged NSFW: by the generator's safety checker (``nsfw``) or by score's
            independent detector (``nsfw_score`` above ``nsfw_score_max``).
        nsfw_score_max: highest P(nsfw) from score's NSFW detector an image may have (0..1).
        class_fid_max: a class whose FID exceeds this is flagged or dropped, or None.
        class_fid_action: ``flag`` (list it in selection.json) or ``drop`` (drop all its images).
        diversity: weight of CLIP diversity against the composite when filling the quota (0..1).
    """

    clip_score_min: float | None = None
    clip_class_prob_min: float | None = None
    isc_kl_min: float | None = None
    realism_min: float | None = None
    classifier_top5: bool = False
    drop_duplicates: bool = True
    drop_nsfw: bool = True
    nsfw_score_max: float = 0.5
    class_fid_max: float | None = None
    class_fid_action: str = "flag"
    diversity: float = 0.3
    source: str = "thresholds"

    def __post_init__(self) -> None:
        src = self.source
        ranges = {
            "clip_score_min": (0.0, 100.0),
            "clip_class_prob_min": (0.0, 1.0),
            "nsfw_score_max": (0.0, 1.0),
            "isc_kl_min": (0.0, math.inf),
            "realism_min": (0.0, math.inf),
            "class_fid_max": (0.0, math.inf),
            "diversity": (0.0, 1.0),
        }
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if value is not None and not lo <= value <= hi:  # NaN fails the comparison too
                raise UserError(f"{src}: key '{name}' is out of range: {value} (must be within {lo:g}..{hi:g})")
        if self.class_fid_action not in CLASS_FID_ACTIONS:
            raise UserError(
                f"{src}: key 'class_fid_action' must be one of {', '.join(CLASS_FID_ACTIONS)}, "
                f"got {self.class_fid_action!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The thresholds as written to selection.json (without ``source``)."""
        out = asdict(self)
        out.pop("source")
        return out


def load_thresholds(path: str | Path | None) -> Thresholds:
    """Read a thresholds YAML (None gives the defaults).

    Raises:
        UserError: the file is missing or malformed, has an unknown key, or a value out of range.
    """
    if path is None:
        return Thresholds()
    mapping = load_yaml_mapping(path)
    if "source" in mapping:
        raise UserError(f"{path}: unknown key 'source'")
    return config_from_mapping(Thresholds, {**mapping, "source": str(path)}, str(path))


@dataclass(frozen=True)
class SelectConfig:
    """Settings of ``imagenet-plus select`` (fields are its flags).

    Attributes:
        thresholds: the thresholds YAML, or None for the defaults (only nsfw and duplicates dropped).
        per_class: images to keep per class; None means the run's ``images_per_class``.
    """

    thresholds: str | None = None
    per_class: int | None = None

    def __post_init__(self) -> None:
        if self.per_class is not None and self.per_class <= 0:
            raise UserError(f"select config: 'per-class' must be positive, got {self.per_class}")


class ClipRows:
    """The CLIP image embeddings of a scores frame, read row by row from the shards' ``.clip.npy`` files.

    Nothing is loaded up front: :meth:`gather` memory-maps the few files that hold the rows asked for (a small
    LRU of maps, so open files stay bounded whatever the shard count) and copies only those rows, so picking the
    quota of one class reads that class's rows only.
    """

    #: Memory maps kept open at once (each holds one file descriptor).
    MAX_OPEN = 16

    def __init__(self, files: list[Path], shard: Any, row: Any, dim: int) -> None:
        """``files[shard[i]]`` row ``row[i]`` is the embedding of frame row ``i``; ``dim`` its width."""
        self.files, self.shard, self.row, self.dim = files, shard, row, dim
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
        """float32 (len(idx), dim) embeddings of frame rows ``idx``."""
        import numpy as np

        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.dim), dtype=np.float32)
        shard = self.shard[idx]
        for s in np.unique(shard):
            mask = shard == s
            out[mask] = self._map(int(s))[self.row[idx[mask]]]
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


def _read_scores(paths: RunPaths) -> tuple[Any, ClipRows]:
    """The score columns select needs from every scores parquet, concatenated, and where their embeddings are.

    Only :data:`SELECT_COLUMNS` are read and no embedding is loaded (see :class:`ClipRows`), so memory holds a
    few numbers per image, not its features.
    """
    import numpy as np
    import pandas as pd

    files = paths.scored_parquets()
    if not files:
        raise UserError(f"no scores in {paths.scores}: run 'imagenet-plus score {paths.root}' first")
    frames, npys, shard_of, row_of, dims = [], [], [], [], set()
    for s, f in enumerate(files):
        columns = _score_columns_of(f)
        try:
            df = pd.read_parquet(f, columns=columns)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise UserError(f"unreadable scores file {f}: {exc}") from None
        npy, dim = _clip_rows_of(paths.score_files(f.stem), len(df))
        frames.append(df)
        npys.append(npy)
        dims.add(dim)
        shard_of.append(np.full(len(df), s, dtype=np.int32))
        row_of.append(np.arange(len(df), dtype=np.int64))
    if len(dims) > 1:
        raise UserError(f"CLIP embeddings in {paths.scores} have different widths {sorted(dims)}")
    df = pd.concat(frames, ignore_index=True)
    del frames
    dup = df["key"][df["key"].duplicated()]
    if len(dup):
        raise UserError(f"key {dup.iloc[0]!r} appears twice in {paths.scores}")
    return df, ClipRows(npys, np.concatenate(shard_of), np.concatenate(row_of), dims.pop())


def composite_scores(df: Any) -> Any:
    """Mean within-class percentile rank of the score columns present (see module docstring).

    Args:
        df: a scores frame with ``class_id`` and some of :data:`COMPOSITE_COLUMNS`.

    Returns:
        A float Series in [0, 1] aligned with ``df`` (0.5 when no score column is present).
    """
    import pandas as pd

    ranks = []
    for col in COMPOSITE_COLUMNS:
        if col in df.columns and df[col].notna().any():
            values = pd.to_numeric(df[col], errors="coerce")
            ranks.append(values.groupby(df["class_id"]).rank(pct=True, method="average"))
    if not ranks:
        return pd.Series(0.5, index=df.index, dtype=float)
    return pd.concat(ranks, axis=1).mean(axis=1, skipna=True).fillna(0.0)


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


def _apply_rules(df: Any, th: Thresholds, class_fid: dict[str, float], drop_classes: set[str]) -> Any:
    """The first failed rule of each row ("" when it passes every rule)."""
    import numpy as np
    import pandas as pd

    reason = pd.Series("", index=df.index, dtype=object)

    def fail(mask: Any, text: str) -> None:
        mask = mask.fillna(False).astype(bool) & (reason == "")
        reason[mask] = text

    def require_values(col: str, key: str) -> Any:
        if col not in df.columns or df[col].isna().all():
            raise UserError(
                f"{th.source}: key '{key}' is set but the scores have no '{col}' values "
                "(re-run 'imagenet-plus score' with the scorer that computes it, or remove the key)"
            )
        return pd.to_numeric(df[col], errors="coerce")

    if drop_classes:
        limit = th.class_fid_max
        fail(pd.Series(np.isin(df["class_id"], sorted(drop_classes)), index=df.index), f"class_fid>{limit:g}")
    if th.drop_nsfw:
        flagged = df["nsfw"].astype("boolean")
        if COL_NSFW_SCORE in df.columns:
            flagged = flagged | (pd.to_numeric(df[COL_NSFW_SCORE], errors="coerce") > th.nsfw_score_max)
        fail(flagged, REASON_NSFW)
    if th.drop_duplicates:
        fail(df[COL_DUP_OF].notna() & (df[COL_DUP_OF].astype(str) != ""), REASON_DUPLICATE)
    for col, key in ((COL_CLIP_SCORE, "clip_score_min"), (COL_CLIP_CLASS_PROB, "clip_class_prob_min"),
                     (COL_ISC_KL, "isc_kl_min"), (COL_REALISM, "realism_min")):
        limit = getattr(th, key)
        if limit is not None:
            fail(require_values(col, key) < limit, f"{col}<{limit:g}")
    if th.classifier_top5:
        if COL_CLASSIFIER_TOP5 not in df.columns or df[COL_CLASSIFIER_TOP5].isna().all():
            raise UserError(
                f"{th.source}: key 'classifier_top5' is true but the scores have no ImageNet classifier results "
                "(only ImageNet-1k classes have them)"
            )
        fail(df[COL_CLASSIFIER_TOP5].astype("boolean") == False, REASON_NOT_TOP5)  # noqa: E712 (nullable)
    return reason


def select_frame(df: Any, embeddings: Any, th: Thresholds, quota: int, class_fid: dict[str, float]) -> Any:
    """Apply the rules and the per-class quota.

    Args:
        df: the concatenated scores frame.
        embeddings: the CLIP image embeddings in row order: a (len(df), d) array, or a :class:`ClipRows`
            (then each class's rows are read when its quota is picked).
        th: the thresholds.
        quota: images to keep per class.
        class_fid: per-class FID from summary.json (may be empty).

    Returns:
        A frame with the columns of ``selection.parquet`` (``key``, ``label``, ``class_id``, ``kept``,
        ``reason``, ``composite``).
    """
    import numpy as np

    gather = embeddings.gather if isinstance(embeddings, ClipRows) else embeddings.__getitem__
    bad = set()
    if th.class_fid_max is not None:
        bad = {c for c, fid in class_fid.items() if fid is not None and float(fid) > th.class_fid_max}
    drop = bad if th.class_fid_action == "drop" else set()
    reason = _apply_rules(df, th, class_fid, drop)
    composite = composite_scores(df)
    comp = composite.to_numpy()
    passing = (reason == "").to_numpy()
    kept = np.zeros(len(df), dtype=bool)
    for _cid, idx in df.groupby("class_id", sort=True).indices.items():
        cand = idx[passing[idx]]
        if len(cand) == 0:
            continue
        order = mmr_pick(comp[cand], gather(cand), quota, th.diversity)
        kept[cand[order]] = True
    out_reason = reason.copy()
    out_reason[kept] = REASON_KEPT
    out_reason[passing & ~kept] = REASON_OVER_QUOTA
    out = df[["key", "label", "class_id"]].copy()
    out["label"] = out["label"].astype("int64")
    out["kept"] = kept
    out["reason"] = out_reason.astype(str)
    out[COMPOSITE] = composite.astype("float64")
    return out[list(SELECTION_COLUMNS)].sort_values(["label", "key"], kind="stable").reset_index(drop=True)


def _quota(paths: RunPaths, cfg: SelectConfig) -> int:
    quota = cfg.per_class
    if quota is None:
        quota = int(read_run_yaml(paths)["config"].get("images_per_class", 0)) or None
    if quota is None:
        raise UserError(f"{paths.run_yaml} has no images_per_class: pass --per-class")
    return quota


def summarize_selection(sel: Any, class_ids: list[str], th: Thresholds, quota: int,
                        class_fid: dict[str, Any]) -> SelectionSummary:
    """``selection.json`` of a selection frame: per-class pass rates, kept counts, short and dropped classes."""
    flagged = []
    if th.class_fid_max is not None:
        flagged = sorted(c for c, f in class_fid.items() if f is not None and float(f) > th.class_fid_max)
    dropped = flagged if th.class_fid_action == "drop" else []
    total = sel.groupby("class_id")["key"].count()
    passed = sel[sel["reason"].isin(list(PASSED_REASONS))].groupby("class_id")["key"].count()
    kept = sel[sel["kept"]].groupby("class_id")["key"].count()
    pass_rate = {c: round(float(passed.get(c, 0)) / float(total.get(c, 0)), 6) if total.get(c, 0) else 0.0
                 for c in class_ids}
    kept_n = {c: int(kept.get(c, 0)) for c in class_ids}
    reasons = sel["reason"].value_counts().to_dict()
    return SelectionSummary(
        thresholds=th.to_dict(),
        per_class_quota=quota,
        pass_rate=pass_rate,
        kept=kept_n,
        short={c: quota - kept_n[c] for c in class_ids if kept_n[c] < quota and c not in dropped},
        dropped_classes=dropped,
        flagged_classes=flagged if th.class_fid_action == "flag" else [],
        reasons={str(k): int(v) for k, v in sorted(reasons.items())},
        num_kept=int(sel["kept"].sum()),
        num_scored=len(sel),
    )


def run_select(run: str | Path, cfg: SelectConfig) -> dict[str, Any]:
    """Select the images to release: ``RUN/scores`` → ``RUN/selection.parquet`` + ``RUN/selection.json``.

    Memory: the score columns of :data:`SELECT_COLUMNS` (a few numbers per image); CLIP embeddings are read
    one class at a time (see :class:`ClipRows`).

    Args:
        run: the run directory.
        cfg: the select settings.

    Returns:
        The summary written to ``RUN/selection.json`` (:class:`~imagenet_plus.contract.SelectionSummary` as a dict).

    Raises:
        UserError: no run directory, ``score`` not run yet, malformed thresholds or scores.
    """
    import io

    paths = run_paths(run)
    if not paths.summary_json.is_file():
        raise UserError(f"{paths.summary_json} not found: run 'imagenet-plus score {paths.root}' before select")
    th = load_thresholds(cfg.thresholds)
    summary = read_json(paths.summary_json)
    quota = _quota(paths, cfg)
    df, emb = _read_scores(paths)
    class_ids = [c["id"] for c in read_class_records(paths)]
    unknown = sorted(set(df["class_id"]) - set(class_ids))
    if unknown:
        raise UserError(f"scores in {paths.scores} name class id {unknown[0]!r}, not in {paths.classes_json}")
    class_fid = {cid: v.get("fid") for cid, v in (summary.get("per_class") or {}).items() if isinstance(v, dict)}
    try:
        sel = select_frame(df, emb, th, quota, class_fid)
    finally:
        emb.close()
    del df
    result = summarize_selection(sel, class_ids, th, quota, class_fid)
    buf = io.BytesIO()
    sel.to_parquet(buf, index=False)
    write_bytes_atomic(paths.selection_parquet, buf.getvalue())
    result.write(paths.selection_json)
    return result.to_dict()
