"""The dataset pass of the score stage (main rank, no network): the set-level metrics, streamed shard by shard.

Its memory is bounded by the number of classes and fixed sample sizes, not by the number of images: the
Inception Score marginal and FID's mean/covariance are running sums; KID and precision/recall use fixed-size
seeded samples (``ScoreConfig.metric_samples``, seeds :data:`GENERATED_SAMPLE_SEED`/:data:`REFERENCE_SAMPLE_SEED`);
near-duplicates, Vendi and per-class FID read one block of classes at a time; the per-image terms
(``isc_kl``, ``realism``, ``dup_of``) are written back one parquet at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_plus.contract import (
    COL_CLASSIFIER_TOP1,
    COL_CLASSIFIER_TOP5,
    COL_CLIP_SCORE,
    COL_DUP_OF,
    COL_ISC_KL,
    COL_REALISM,
    SCORE_COLUMNS,
    RunPaths,
    ScoreFiles,
    read_class_records,
    run_paths,
    unreadable_scores,
)
from imagenet_plus.contract.scores import ClassScores, DatasetMetrics
from imagenet_plus.errors import CorruptShard, UserError
from imagenet_plus.io.storage import local_copy
from imagenet_plus.score import metrics
from imagenet_plus.score.config import METRIC_SAMPLES
from imagenet_plus.score.files import write_scores_parquet
from imagenet_plus.score.reference import detect_kind, load_reference

#: Seeds of the fixed samples (``numpy.random.default_rng(seed).choice(n, size, replace=False)``, sorted).
GENERATED_SAMPLE_SEED = 0
REFERENCE_SAMPLE_SEED = 1
#: Bytes of per-class features (CLIP, plus pool3 for per-class FID) held at once by the per-class step.
CLASS_BLOCK_BYTES = 256 << 20
#: Feature rows read from a memory-mapped ``.npy`` at a time.
FEATURE_CHUNK_ROWS = 4096


def _nan_to_none(value: Any) -> Any:
    if value is None:
        return None
    value = float(value)
    return None if not np.isfinite(value) else value


def _rate(hits: float, known: float) -> float | None:
    return float(hits / known) if known else None


def sample_indices(total: int, size: int, seed: int) -> np.ndarray:
    """Rows of a fixed-size seeded random sample of ``total`` rows, sorted; every row when ``total <= size``."""
    if total <= size:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size, replace=False))


@dataclass(frozen=True)
class _ShardRows:
    """One scored shard in the dataset pass: its files and where its rows sit in the whole set."""

    files: ScoreFiles
    start: int
    count: int


def _index_shards(paths: RunPaths, stems: list[str]) -> list[_ShardRows]:
    """Row counts from the parquet footers (no column is read)."""
    import pyarrow.parquet as pq

    out: list[_ShardRows] = []
    start = 0
    for stem in stems:
        files = paths.score_files(stem)
        try:
            count = pq.read_metadata(local_copy(files.parquet)).num_rows
        except Exception as exc:  # pyarrow raises several types for a cut or overwritten file
            raise unreadable_scores(files.parquet, exc) from None
        out.append(_ShardRows(files, start, count))
        start += count
    return out


@dataclass
class _Totals:
    """What the first streaming step keeps: per-label sums, running statistics and the generated sample."""

    labels: list[np.ndarray]  # per shard, int32: 4 bytes per image
    count: np.ndarray
    clip_sum: np.ndarray
    top1: np.ndarray  # 2×L: known, hits
    top5: np.ndarray
    moments: Any  # metrics.RunningMoments of the pool3 features
    isc: Any  # metrics.InceptionScoreSplits
    sample: np.ndarray  # generated pool3 features of the fixed sample, float32

    @property
    def num_images(self) -> int:
        return int(self.count.sum())


def _hit_counts(values: list[Any], labels: np.ndarray, num_labels: int) -> np.ndarray:
    known = np.array([v is not None for v in values], dtype=np.float64)
    hits = np.array([bool(v) for v in values], dtype=np.float64)
    return np.stack([np.bincount(labels, weights=known, minlength=num_labels),
                     np.bincount(labels, weights=hits, minlength=num_labels)])


def _accumulate(shards: list[_ShardRows], num_labels: int, sample_rows: np.ndarray) -> _Totals:
    """Step 1, one shard at a time: labels, per-label sums, IS probability sums, FID moments, the sample."""
    import pyarrow.parquet as pq

    total = sum(s.count for s in shards)
    first = next(s for s in shards if s.count)
    num_logits = np.load(local_copy(first.files.logits), mmap_mode="r").shape[1]
    dim = np.load(local_copy(first.files.inception), mmap_mode="r").shape[1]
    totals = _Totals(labels=[], count=np.zeros(num_labels, np.int64), clip_sum=np.zeros(num_labels),
                     top1=np.zeros((2, num_labels)), top5=np.zeros((2, num_labels)),
                     moments=metrics.RunningMoments(dim, FEATURE_CHUNK_ROWS),
                     isc=metrics.InceptionScoreSplits(total, num_logits),
                     sample=np.zeros((0, dim), np.float32))
    parts: list[np.ndarray] = []
    for shard in shards:
        cols = pq.read_table(local_copy(shard.files.parquet),
                             columns=["label", COL_CLIP_SCORE, COL_CLASSIFIER_TOP1, COL_CLASSIFIER_TOP5]).to_pydict()
        labels = np.asarray(cols["label"], dtype=np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= num_labels):
            raise CorruptShard(shard.files.parquet,
                               f"label {int(labels.max())} outside the run's {num_labels} classes")
        totals.labels.append(labels.astype(np.int32))
        totals.count += np.bincount(labels, minlength=num_labels)
        clip = np.asarray([np.nan if v is None else v for v in cols[COL_CLIP_SCORE]], dtype=np.float64)
        totals.clip_sum += np.bincount(labels, weights=clip, minlength=num_labels)
        totals.top1 += _hit_counts(cols[COL_CLASSIFIER_TOP1], labels, num_labels)
        totals.top5 += _hit_counts(cols[COL_CLASSIFIER_TOP5], labels, num_labels)
        totals.isc.add_probabilities(shard.start, np.load(local_copy(shard.files.logits), mmap_mode="r"))
        pool = np.load(local_copy(shard.files.inception), mmap_mode="r")
        totals.moments.update(pool)
        lo, hi = np.searchsorted(sample_rows, [shard.start, shard.start + shard.count])
        if hi > lo:
            parts.append(np.asarray(pool[sample_rows[lo:hi] - shard.start], dtype=np.float32))
        del pool
    if parts:
        totals.sample = np.concatenate(parts)
    return totals


def _class_blocks(count: np.ndarray, row_bytes: int, budget: int) -> Iterator[np.ndarray]:
    """Consecutive labels grouped so that one group's feature rows fit in ``budget`` bytes (one label at least)."""
    block: list[int] = []
    size = 0
    for label in np.nonzero(count)[0]:
        n = int(count[label]) * row_bytes
        if block and size + n > budget:
            yield np.array(block)
            block, size = [], 0
        block.append(int(label))
        size += n
    if block:
        yield np.array(block)


@dataclass
class _ClassResults:
    """Per-class outputs: Vendi score, FID against the class's real images, and the near-duplicates."""

    vendi: dict[int, float] = field(default_factory=dict)
    fid: dict[int, float] = field(default_factory=dict)
    duplicates: dict[int, int] = field(default_factory=dict)
    dup_of: dict[int, str] = field(default_factory=dict)  # global row → key of its earlier near-duplicate


def _read_class_rows(shards: list[_ShardRows], totals: _Totals, block: np.ndarray,
                     with_pool: bool) -> dict[int, list[tuple[list[str], np.ndarray, np.ndarray | None, np.ndarray]]]:
    """The rows of a block of labels: per label, chunks of (keys, CLIP, pool3 or None, global rows) in row order."""
    import pyarrow.parquet as pq

    in_block = np.zeros(len(totals.count), dtype=bool)
    in_block[block] = True
    parts: dict[int, list[tuple[list[str], np.ndarray, np.ndarray | None, np.ndarray]]] = {}
    for shard, labels in zip(shards, totals.labels, strict=True):
        rows = np.nonzero(in_block[labels])[0]
        if not len(rows):
            continue
        keys = pq.read_table(local_copy(shard.files.parquet), columns=["key"]).column("key").to_pylist()
        clip = np.asarray(np.load(local_copy(shard.files.clip), mmap_mode="r")[rows], dtype=np.float32)
        pool = np.asarray(np.load(local_copy(shard.files.inception), mmap_mode="r")[rows],
                          dtype=np.float32) if with_pool else None
        row_labels = labels[rows]
        for label in np.unique(row_labels):
            sel = row_labels == label
            parts.setdefault(int(label), []).append(
                ([keys[i] for i in rows[sel]], clip[sel], None if pool is None else pool[sel], shard.start + rows[sel]))
    return parts


def _per_class(shards: list[_ShardRows], totals: _Totals, classes: list[dict[str, Any]],
               reference: Any) -> _ClassResults:
    """Step 2, one block of classes at a time: near-duplicates (in key order), Vendi, per-class FID.

    The matrices are small (a class's images × D), so BLAS runs on one thread here: thread start-up and
    synchronisation would cost ten times the arithmetic (measured on 2 busy cores).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _per_class_blocks(shards, totals, classes, reference)


def _per_class_blocks(shards: list[_ShardRows], totals: _Totals, classes: list[dict[str, Any]],
                      reference: Any) -> _ClassResults:
    results = _ClassResults()
    class_ids = {int(c["label"]): str(c["id"]) for c in classes}
    with_pool = reference is not None and reference.features is not None and reference.class_ids is not None
    first = next(s for s in shards if s.count)
    row_bytes = 4 * np.load(local_copy(first.files.clip), mmap_mode="r").shape[1] + \
        (4 * totals.sample.shape[1] if with_pool else 0)
    for block in _class_blocks(totals.count, row_bytes, CLASS_BLOCK_BYTES):  # read now: tests lower it
        for label, chunks in _read_class_rows(shards, totals, block, with_pool).items():
            keys = [k for chunk in chunks for k in chunk[0]]
            clip = np.concatenate([chunk[1] for chunk in chunks])
            rows = np.concatenate([chunk[3] for chunk in chunks])
            order = np.argsort(np.array(keys), kind="stable")
            dups = metrics.near_duplicates(clip[order], [keys[i] for i in order])
            for pos, dup in zip(order, dups, strict=True):
                if dup is not None:
                    results.dup_of[int(rows[pos])] = dup
            results.duplicates[label] = sum(d is not None for d in dups)
            results.vendi[label] = metrics.vendi_score(clip)
            real_c = reference.class_features(class_ids.get(label, "")) if with_pool else None
            if real_c is not None and len(real_c) >= 2 and len(clip) >= 2:
                pool = np.concatenate([chunk[2] for chunk in chunks])
                results.fid[label] = metrics.fid_small_set(pool, real_c)
    return results


def _dataset_columns(shard: _ShardRows, kl: np.ndarray, realism: list[float | None],
                     dup_of: Mapping[int, str]) -> dict[str, list[Any]]:
    """The columns the dataset pass fills (``contract.DATASET_PASS_COLUMNS``) for one shard."""
    return {
        COL_ISC_KL: [float(x) for x in kl],
        COL_REALISM: realism,
        COL_DUP_OF: [dup_of.get(shard.start + i) for i in range(shard.count)],
    }


def _write_back(shards: list[_ShardRows], totals: _Totals, results: _ClassResults, balls: Any) -> None:
    """Step 3, one shard at a time: per-image ``isc_kl`` and ``realism``, IS split sums; parquet rewritten."""
    import pyarrow.parquet as pq

    for shard in shards:
        kl = totals.isc.add_kl(shard.start, np.load(local_copy(shard.files.logits), mmap_mode="r"))
        realism: list[float | None] = [None] * shard.count
        if balls is not None:
            realism = [float(x) for x in metrics.realism_from_balls(np.load(local_copy(shard.files.inception)), *balls)]
        cols = pq.read_table(local_copy(shard.files.parquet)).to_pydict()
        cols.update(_dataset_columns(shard, kl, realism, results.dup_of))
        for name in SCORE_COLUMNS:
            cols.setdefault(name, [None] * shard.count)
        write_scores_parquet(shard.files.parquet, cols)


def _reference_sample(reference: Any, size: int) -> np.ndarray | None:
    """The fixed-size seeded sample of the real features (``None`` without features)."""
    if reference is None or reference.features is None:
        return None
    rows = sample_indices(len(reference.features), size, REFERENCE_SAMPLE_SEED)
    return np.asarray(reference.features[rows], dtype=np.float32)


def _set_metrics(totals: _Totals, reference: Any, real: np.ndarray | None,
                 device: Any) -> tuple[float | None, ...]:
    """``(fid, kid_mean, kid_std, is_mean, is_std, precision, recall)``: FID from the running moments, KID and
    precision/recall on the samples, IS from the split sums (None where not computable)."""
    fid = kid_mean = kid_std = precision = recall = None
    is_mean, is_std = totals.isc.score()
    if reference is not None and totals.num_images >= 2:  # a covariance needs two images
        real_stats = reference.stats or metrics.fid_statistics(reference.features)  # a Reference built by hand
        fid = metrics.fid_from_statistics(totals.moments.statistics(), real_stats)
        if real is not None and len(real) >= 2:
            kid_mean, kid_std = metrics.kid(totals.sample, real)
            if len(totals.sample) > metrics.NEIGHBORHOOD and len(real) > metrics.NEIGHBORHOOD:
                precision, recall = metrics.precision_recall(totals.sample, real, device=device)
    return tuple(_nan_to_none(v) for v in (fid, kid_mean, kid_std, is_mean, is_std, precision, recall))


def _class_scores(classes: list[dict[str, Any]], totals: _Totals, results: _ClassResults) -> dict[str, ClassScores]:
    per_class: dict[str, ClassScores] = {}
    for c in classes:
        label = int(c["label"])
        n = int(totals.count[label]) if 0 <= label < len(totals.count) else 0
        duplicates = int(results.duplicates.get(label, 0))
        if not n:
            per_class[str(c["id"])] = ClassScores(count=0, fid=None, vendi=None, clip_score_mean=None,
                                                  classifier_top1_rate=None, classifier_top5_rate=None,
                                                  duplicates=duplicates)
            continue
        per_class[str(c["id"])] = ClassScores(
            count=n, fid=_nan_to_none(results.fid.get(label)), vendi=results.vendi[label],
            clip_score_mean=float(totals.clip_sum[label] / n),
            classifier_top1_rate=_rate(totals.top1[1, label], totals.top1[0, label]),
            classifier_top5_rate=_rate(totals.top5[1, label], totals.top5[0, label]), duplicates=duplicates)
    return per_class


def measure(paths: RunPaths, stems: list[str], classes: list[dict[str, Any]], reference: Any,
            device: Any = "cpu", metric_samples: int = METRIC_SAMPLES) -> DatasetMetrics:
    """Per-image terms that need every shard, then the dataset metrics; parquets rewritten one at a time.

    ``reference`` is a loaded ``reference.Reference`` or None; ``stems`` the scored shards to include.
    """
    shards = _index_shards(paths, stems)
    total = sum(s.count for s in shards)
    if total == 0:
        raise UserError(f"no images to score in {paths.generated}: every shard is empty or bad")
    totals = _accumulate(shards, len(classes), sample_indices(total, metric_samples, GENERATED_SAMPLE_SEED))
    results = _per_class(shards, totals, classes, reference)
    real = _reference_sample(reference, metric_samples)
    balls = None
    if real is not None and len(real) > metrics.NEIGHBORHOOD:
        balls = metrics.realism_reference(real, device=device)
    _write_back(shards, totals, results, balls)
    fid, kid_mean, kid_std, is_mean, is_std, precision, recall = _set_metrics(totals, reference, real, device)
    return DatasetMetrics(
        fid=fid, kid_mean=kid_mean, kid_std=kid_std, inception_score_mean=is_mean, inception_score_std=is_std,
        clip_score_mean=_nan_to_none(totals.clip_sum.sum() / totals.num_images), precision=precision,
        recall=recall, num_images=total, duplicates=len(results.dup_of),
        classifier_top1_rate=_rate(totals.top1[1].sum(), totals.top1[0].sum()),
        classifier_top5_rate=_rate(totals.top5[1].sum(), totals.top5[0].sum()),
        per_class=_class_scores(classes, totals, results))


def _as_reference(reference: Any) -> Any:
    """A loaded ``Reference``, ``None``, or the path of a ``.npz`` statistics file (loaded here)."""
    if reference is None or not isinstance(reference, (str, Path)):
        return reference
    if detect_kind(Path(reference)) != "statistics":
        raise UserError(f"reference {reference}: pass a loaded Reference or a .npz statistics file to the dataset pass")
    return load_reference(reference, None)


def run_dataset_pass(run: str | Path, reference: Any = None, *, stems: list[str] | None = None, device: Any = "cpu",
                     metric_samples: int = METRIC_SAMPLES) -> DatasetMetrics:
    """The dataset pass alone, on a run whose ``RUN/scores/*.parquet`` and ``.npy`` features exist.

    Fills ``isc_kl``, ``realism`` and ``dup_of`` in every parquet (rewritten one at a time) and returns the
    dataset metrics (``summary.json`` without the run's fields; ``run_score`` adds those and writes it).
    Memory is bounded by the number of classes and ``metric_samples``, plus a few bytes per image (labels,
    IS split ids, the keys of near-duplicates).

    Args:
        run: the run directory.
        reference: a loaded ``reference.Reference``, the path of a ``.npz`` statistics file, or ``None``.
        stems: the shards to include (default: every ``RUN/scores/*.parquet``).
        device: where k-NN distances are computed (a GPU makes large samples fast).
        metric_samples: size of the generated and real samples for KID, precision/recall and realism.

    Returns:
        The dataset metrics (``contract.DatasetMetrics``).

    Raises:
        CorruptShard: a scores parquet does not read back, or holds a label outside the run's classes.
        UserError: no image in the shards, or a reference that is neither loaded nor a statistics file.
    """
    paths = run_paths(run)
    if stems is None:
        stems = [p.name[: -len(".parquet")] for p in paths.scored_parquets()]
    return measure(paths, stems, read_class_records(paths), _as_reference(reference), device, metric_samples)
