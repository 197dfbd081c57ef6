"""The score stage: every generated image scored once, and the whole set measured against real images.

Input folder: ``RUN/generated/`` (the generated shards) and ``RUN/classes.json``; optionally a real
reference (``--reference``). Output folder: ``RUN/scores/`` (file names from ``imagenet_plus.contract``):

```
RUN/scores/00000.parquet            one row per sample key (columns: contract.SCORE_COLUMNS)
RUN/scores/00000.inception.npy      N×2048 float16 torch-fidelity pool3 features, rows in parquet order
RUN/scores/00000.clip.npy           N×D float16 L2-normalised CLIP image embeddings
RUN/scores/00000.logits.npy         N×1008 float32 torch-fidelity logits_unbiased (for the IS terms)
RUN/scores/00000.stats.json         count, seconds, rank and world size of the process that scored it
RUN/scores/class_text_embeddings.npy  C×D float16 CLIP embeddings of the zero-shot class texts (prompts.class_texts)
RUN/scores/models.json              the scorers the shards were computed with
RUN/scores/summary.json             dataset metrics; written last: the stage is done when it lists every shard
```

Pass 1 (every rank, shard ``s`` owned by rank ``s % world_size``, resumable per shard): each image is
decoded once into a ``uint8`` tensor and fed in batches to InceptionV3, CLIP and the classifier. Ranks
meet through marker files (``distributed.FileRendezvous``), never in a collective: a rank that is done
marks it and exits; the main rank waits for the markers, and a failed rank stops every other one.

The dataset pass (main rank, no network; :func:`run_dataset_pass`) streams the shards so that its memory
is bounded by the number of classes and fixed sample sizes, not by the number of images: the Inception
Score marginal and FID's mean/covariance are running sums; KID and precision/recall use fixed-size seeded
samples (:data:`METRIC_SAMPLES`, seeds :data:`GENERATED_SAMPLE_SEED`/:data:`REFERENCE_SAMPLE_SEED`);
near-duplicates, Vendi and per-class FID read one block of classes at a time; the per-image terms
(``isc_kl``, ``realism``, ``dup_of``) are written back one parquet at a time.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_plus.classes.sets import ClassInfo
from imagenet_plus.contract import (
    COL_CLASSIFIER_PROB,
    COL_CLASSIFIER_TOP1,
    COL_CLASSIFIER_TOP5,
    COL_CLIP_CLASS_PROB,
    COL_CLIP_CLASS_RANK,
    COL_CLIP_CLASS_SCORE,
    COL_CLIP_SCORE,
    COL_DUP_OF,
    COL_ISC_KL,
    COL_NSFW_SCORE,
    COL_REALISM,
    DATASET_PASS_COLUMNS,
    SCORE_COLUMNS,
    RunPaths,
    ScoreFiles,
    image_member,
    read_class_records,
    run_paths,
    score_table,
)
from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import atomic_file
from imagenet_plus.pipeline.config import config_from_mapping, config_to_dict, require_positive
from imagenet_plus.score.scorers.classifier import DEFAULT_CLASSIFIER
from imagenet_plus.score.scorers.clip import DEFAULT_CLIP
from imagenet_plus.score.scorers.nsfw import DEFAULT_NSFW, NSFW_OFF

__all__ = ["SCORE_COLUMNS", "ScoreConfig", "Scorers", "load_score_config", "read_scores", "run_dataset_pass",
           "run_score", "score_shard"]

#: Summary keys of the dataset metrics (null when they cannot be computed).
SUMMARY_METRICS = ("fid", "kid_mean", "kid_std", "inception_score_mean", "inception_score_std", "clip_score_mean",
                   "precision", "recall")
#: Size of the fixed random samples of generated and of real features behind KID, precision/recall and the
#: realism score's real k-NN balls (10,000 per side as in Naeem et al. 2020; Kynkäänniemi et al. 2019 use
#: 50,000: ``--metric-samples 50000``, seconds on a GPU). A set this size or smaller is used whole, in order.
METRIC_SAMPLES = 10_000
#: Seeds of those samples (``numpy.random.default_rng(seed).choice(n, size, replace=False)``, sorted).
GENERATED_SAMPLE_SEED = 0
REFERENCE_SAMPLE_SEED = 1
#: Bytes of per-class features (CLIP, plus pool3 for per-class FID) held at once by the per-class step.
CLASS_BLOCK_BYTES = 256 << 20
#: Feature rows read from a memory-mapped ``.npy`` at a time.
FEATURE_CHUNK_ROWS = 4096
#: Marker folder name of this stage under ``RunPaths.markers``.
STAGE = "score"


@dataclass(frozen=True)
class ScoreConfig:
    """Settings of the score stage (the fields are the ``imagenet-plus score`` flags).

    Attributes:
        reference: real images (folder with class subfolders, WebDataset shards, or a ``.npz`` of statistics);
            ``None``: no FID/KID/precision/recall/realism.
        clip_model: CLIP Hub id, local folder, or ``tiny-random``.
        inception_weights: torch-fidelity InceptionV3 weights ``.pth``, ``tiny-random``, or ``None`` for
            torch-fidelity's default weights.
        classifier: timm ImageNet-1k classifier name, ``hf-hub:ID``, local folder, or ``tiny-random``.
        nsfw_model: an independent NSFW image classifier (Hub id, local folder or ``tiny-random``) that gives
            every image its ``nsfw_score`` (P(nsfw)); ``none`` turns the check off (the column stays null).
            Needed for generators without a safety checker (sd-turbo, FLUX, SD 3.5), whose ``nsfw`` flag is
            always false.
        batch_size: images per network batch.
        skip_bad_shards: go on past a corrupt or truncated shard (listed in summary.json and on stderr).
        num_workers: threads decoding images while the networks run.
        metric_samples: size of the fixed random samples (generated and real) for KID, precision/recall and
            the realism score's real balls.
    """

    reference: str | None = None
    clip_model: str = DEFAULT_CLIP
    inception_weights: str | None = None
    classifier: str = DEFAULT_CLASSIFIER
    nsfw_model: str = DEFAULT_NSFW
    batch_size: int = 32
    skip_bad_shards: bool = False
    num_workers: int = 2
    metric_samples: int = METRIC_SAMPLES

    def __post_init__(self) -> None:
        require_positive("score config", batch_size=self.batch_size, num_workers=self.num_workers,
                         metric_samples=self.metric_samples)
        for name in ("clip_model", "classifier", "nsfw_model"):
            if not str(getattr(self, name)).strip():
                raise UserError(f"score config: '{name.replace('_', '-')}' must not be empty")


def load_score_config(overrides: Mapping[str, Any], source: str = "command line") -> ScoreConfig:
    """Build a :class:`ScoreConfig` from flags or a YAML section (unknown keys and bad values are errors)."""
    return config_from_mapping(ScoreConfig, overrides, source)


# ----------------------------------------------------------------------------------------------------------------
# files


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as f:
        np.save(f, array)


def _write_parquet_atomic(path: Path, columns: Mapping[str, Any]) -> None:
    """Write one scores parquet from column lists (``contract.score_table`` refuses a column out of schema)."""
    import pyarrow.parquet as pq

    table = score_table(columns)
    with atomic_file(path) as f:
        pq.write_table(table, f)


def read_scores(run: str | Path) -> Any:
    """All score rows of a run as one pandas DataFrame, in shard then row order (for downstream stages)."""
    import pandas as pd

    paths = run_paths(run)
    files = paths.scored_parquets()
    if not files:
        raise UserError(f"no scores in {paths.scores}: run 'imagenet-plus score {paths.root}' first")
    return pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)


# ----------------------------------------------------------------------------------------------------------------
# models


class Scorers:
    """The three scorers and the class texts, loaded on first use (pass 2 may need none of them).

    ``run_score`` builds one from its config; a caller that scores several runs (or a benchmark) may pass
    its own so that the networks are loaded once.
    """

    def __init__(self, cfg: ScoreConfig, device: Any, classes: list[Any]) -> None:
        """``classes``: the run's class set (``ClassInfo``), in label order."""
        self.cfg = cfg
        self.device = device
        self.classes = list(classes)
        self.class_ids = [c.id for c in self.classes]

    @cached_property
    def classifier(self) -> Any:
        from imagenet_plus.score.scorers.classifier import ClassifierScorer

        return ClassifierScorer(self.cfg.classifier, self.device)

    @cached_property
    def clip(self) -> Any:
        from imagenet_plus.score.scorers.clip import ClipScorer

        return ClipScorer(self.cfg.clip_model, self.device)

    @cached_property
    def inception(self) -> Any:
        from imagenet_plus.score.scorers.inception import InceptionScorer

        return InceptionScorer(self.cfg.inception_weights, self.device)

    @cached_property
    def class_embeddings(self) -> np.ndarray:
        """``C×D`` float32 L2-normalised CLIP embeddings of the class texts."""
        from imagenet_plus.classes.prompts import class_texts

        return self.clip.embed_texts(class_texts(self.classes)).cpu().numpy()

    @cached_property
    def imagenet_targets(self) -> list[int | None]:
        from imagenet_plus.score.scorers.classifier import imagenet_targets

        return imagenet_targets(self.class_ids)

    @cached_property
    def nsfw(self) -> Any:
        """The NSFW detector, or ``None`` when ``nsfw_model`` is ``none``."""
        if self.cfg.nsfw_model == NSFW_OFF:
            return None
        from imagenet_plus.score.scorers.nsfw import NsfwScorer

        return NsfwScorer(self.cfg.nsfw_model, self.device)

    def load_all(self) -> None:
        """Load every network now (classifier first: an unknown name fails before the heavy loads)."""
        _ = self.classifier, self.clip, self.inception, self.nsfw


def _check_inputs(cfg: ScoreConfig) -> None:
    """Cheap checks of every flag before any network loads: files exist, names are known."""
    from imagenet_plus.models.tiny import TINY_RANDOM
    from imagenet_plus.score.reference import detect_kind
    from imagenet_plus.score.scorers.classifier import timm_name
    from imagenet_plus.score.scorers.inception import check_state_dict, resolve_inception_weights

    if cfg.inception_weights not in (None, TINY_RANDOM):
        path, _ = resolve_inception_weights(cfg.inception_weights)
        if path is not None:
            check_state_dict(path)
    if cfg.classifier != TINY_RANDOM:
        timm_name(cfg.classifier)
    if cfg.reference is not None:
        detect_kind(Path(cfg.reference))


def _models_record(cfg: ScoreConfig) -> dict[str, str]:
    return {"clip": cfg.clip_model, "inception_weights": cfg.inception_weights or "torch-fidelity default",
            "classifier": cfg.classifier, "nsfw_detector": cfg.nsfw_model}


# ----------------------------------------------------------------------------------------------------------------
# pass 1: one shard


@dataclass
class _Sample:
    key: str
    meta: dict[str, Any]
    data: bytes


def _parse_sample(sample: dict[str, Any], tar: Path, num_classes: int) -> _Sample:
    key = sample.get("__key__", "?")
    member = image_member(sample)
    if member is None or "json" not in sample:
        raise UserError(f"corrupt shard {tar}: sample {key} lacks an image or json member")
    try:
        meta = json.loads(sample["json"])
        label = int(meta["label"])
        str(meta["class_id"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"corrupt shard {tar}: sample {key} has malformed json (needs label and class_id)") from None
    if not 0 <= label < num_classes:
        raise UserError(f"shard {tar}: sample {key} has label {label}, outside the run's {num_classes} classes")
    return _Sample(key=key, meta=meta, data=sample[member])


def _decoded_batches(tar: Path, batch_size: int, num_classes: int,
                     pool: ThreadPoolExecutor) -> Iterator[tuple[list[_Sample], list[Any]]]:
    """Batches of (samples, decoded ``uint8`` images); the next batch decodes while the caller runs networks."""
    from imagenet_plus.io.tar import iter_shard
    from imagenet_plus.score.scorers import decode_image

    pending: tuple[list[_Sample], list[Future]] | None = None
    batch: list[_Sample] = []

    def submit(samples: list[_Sample]) -> tuple[list[_Sample], list[Future]]:
        return samples, [pool.submit(decode_image, s.data, f"{tar}:{s.key}") for s in samples]

    for raw in iter_shard(tar):
        batch.append(_parse_sample(raw, tar, num_classes))
        if len(batch) == batch_size:
            nxt = submit(batch)
            batch = []
            if pending is not None:
                yield pending[0], [f.result() for f in pending[1]]
            pending = nxt
    nxt = submit(batch) if batch else None
    if pending is not None:
        yield pending[0], [f.result() for f in pending[1]]
    if nxt is not None:
        yield nxt[0], [f.result() for f in nxt[1]]


def _score_batch(samples: list[_Sample], images: list[Any], models: Scorers) -> dict[str, Any]:
    """Run the three networks on one batch and derive the per-image scores."""
    from imagenet_plus.score import metrics as metrics

    pool, logits = models.inception.features(images)
    clip_emb = models.clip.embed_images(images)
    prompt_emb = models.clip.embed_texts([str(s.meta.get("prompt", "")) for s in samples])
    probs = models.classifier.probabilities(images)
    nsfw_score = [None] * len(samples) if models.nsfw is None else models.nsfw.score(images).tolist()

    labels = np.array([int(s.meta["label"]) for s in samples], dtype=np.int64)
    img = clip_emb.cpu().numpy()
    class_emb = models.class_embeddings
    class_prob, class_rank = metrics.zero_shot(img, class_emb, labels, models.clip.logit_scale)
    targets = [models.imagenet_targets[int(lab)] for lab in labels]
    top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices.cpu().numpy()
    probs_np = probs.cpu().numpy()
    top1_hit: list[bool | None] = []
    top5_hit: list[bool | None] = []
    target_prob: list[float | None] = []
    for i, t in enumerate(targets):
        if t is None:
            top1_hit.append(None)
            top5_hit.append(None)
            target_prob.append(None)
        else:
            top1_hit.append(bool(top5[i, 0] == t))
            top5_hit.append(bool(t in top5[i]))
            target_prob.append(float(probs_np[i, t]))
    return {
        "key": [s.key for s in samples],
        "label": labels.tolist(),
        "class_id": [str(s.meta["class_id"]) for s in samples],
        COL_CLIP_SCORE: metrics.clip_score(img, prompt_emb.cpu().numpy()).tolist(),
        COL_CLIP_CLASS_SCORE: metrics.clip_score(img, class_emb[labels]).tolist(),
        COL_CLIP_CLASS_PROB: class_prob.tolist(),
        COL_CLIP_CLASS_RANK: class_rank.tolist(),
        COL_CLASSIFIER_TOP1: top1_hit,
        COL_CLASSIFIER_TOP5: top5_hit,
        COL_CLASSIFIER_PROB: target_prob,
        COL_NSFW_SCORE: nsfw_score,
        "nsfw": [bool(s.meta.get("nsfw", False)) for s in samples],
        "attempt": [int(s.meta.get("attempt", 0)) for s in samples],
        "strategy": [s.meta.get("strategy") for s in samples],
        "_pool": pool.numpy(),
        "_clip": img,
        "_logits": logits.numpy(),
    }


def score_shard(tar: Path, files: ScoreFiles, models: Scorers, cfg: ScoreConfig, num_classes: int,
                pool: ThreadPoolExecutor, bar: Any, check: Any = None) -> int:
    """Score one generated shard and write its parquet and feature files (atomically, parquet last).

    ``check`` (optional) is called after every batch; it raises to stop (another rank failed).

    Returns:
        The number of samples scored.
    """
    columns: dict[str, list[Any]] = {}
    arrays: dict[str, list[np.ndarray]] = {"_pool": [], "_clip": [], "_logits": []}
    for samples, images in _decoded_batches(tar, cfg.batch_size, num_classes, pool):
        out = _score_batch(samples, images, models)
        for name, value in out.items():
            if name in arrays:
                arrays[name].append(value)
            else:
                columns.setdefault(name, []).extend(value)
        bar.update(len(samples))
        if check is not None:
            check()
    n = len(columns.get("key", []))
    dim = models.clip.dim
    pool_feats = np.concatenate(arrays["_pool"]) if n else np.zeros((0, 2048), np.float32)
    clip_feats = np.concatenate(arrays["_clip"]) if n else np.zeros((0, dim), np.float32)
    logits = np.concatenate(arrays["_logits"]) if n else np.zeros((0, 1008), np.float32)
    for name in SCORE_COLUMNS:
        columns.setdefault(name, [])
    columns.update({name: [None] * n for name in DATASET_PASS_COLUMNS})
    _save_npy_atomic(files.inception, pool_feats.astype(np.float16))
    _save_npy_atomic(files.clip, clip_feats.astype(np.float16))
    _save_npy_atomic(files.logits, logits.astype(np.float32))
    _write_parquet_atomic(files.parquet, columns)
    return n


# ----------------------------------------------------------------------------------------------------------------
# pass 2: dataset-level, streamed shard by shard


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
            count = pq.read_metadata(files.parquet).num_rows
        except OSError as exc:
            raise UserError(f"unreadable scores file {files.parquet}: {exc}") from None
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

    from imagenet_plus.score import metrics as metrics

    total = sum(s.count for s in shards)
    first = next(s for s in shards if s.count)
    num_logits = np.load(first.files.logits, mmap_mode="r").shape[1]
    dim = np.load(first.files.inception, mmap_mode="r").shape[1]
    totals = _Totals(labels=[], count=np.zeros(num_labels, np.int64), clip_sum=np.zeros(num_labels),
                     top1=np.zeros((2, num_labels)), top5=np.zeros((2, num_labels)),
                     moments=metrics.RunningMoments(dim, FEATURE_CHUNK_ROWS),
                     isc=metrics.InceptionScoreSplits(total, num_logits),
                     sample=np.zeros((0, dim), np.float32))
    parts: list[np.ndarray] = []
    for shard in shards:
        cols = pq.read_table(shard.files.parquet,
                             columns=["label", COL_CLIP_SCORE, COL_CLASSIFIER_TOP1, COL_CLASSIFIER_TOP5]).to_pydict()
        labels = np.asarray(cols["label"], dtype=np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= num_labels):
            raise UserError(f"{shard.files.parquet}: label {int(labels.max())} outside the run's {num_labels} classes")
        totals.labels.append(labels.astype(np.int32))
        totals.count += np.bincount(labels, minlength=num_labels)
        clip = np.asarray([np.nan if v is None else v for v in cols[COL_CLIP_SCORE]], dtype=np.float64)
        totals.clip_sum += np.bincount(labels, weights=clip, minlength=num_labels)
        totals.top1 += _hit_counts(cols[COL_CLASSIFIER_TOP1], labels, num_labels)
        totals.top5 += _hit_counts(cols[COL_CLASSIFIER_TOP5], labels, num_labels)
        totals.isc.add_probabilities(shard.start, np.load(shard.files.logits, mmap_mode="r"))
        pool = np.load(shard.files.inception, mmap_mode="r")
        totals.moments.update(pool)
        lo, hi = np.searchsorted(sample_rows, [shard.start, shard.start + shard.count])
        if hi > lo:
            parts.append(np.asarray(pool[sample_rows[lo:hi] - shard.start], dtype=np.float32))
        del pool
    if parts:
        totals.sample = np.concatenate(parts)
    return totals


def _class_blocks(count: np.ndarray, row_bytes: int, budget: int = CLASS_BLOCK_BYTES) -> Iterator[np.ndarray]:
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
        keys = pq.read_table(shard.files.parquet, columns=["key"]).column("key").to_pylist()
        clip = np.asarray(np.load(shard.files.clip, mmap_mode="r")[rows], dtype=np.float32)
        pool = np.asarray(np.load(shard.files.inception, mmap_mode="r")[rows], dtype=np.float32) if with_pool else None
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
    from imagenet_plus.score import metrics as metrics

    results = _ClassResults()
    class_ids = {int(c["label"]): str(c["id"]) for c in classes}
    with_pool = reference is not None and reference.features is not None and reference.class_ids is not None
    first = next(s for s in shards if s.count)
    row_bytes = 4 * np.load(first.files.clip, mmap_mode="r").shape[1] + (4 * totals.sample.shape[1] if with_pool else 0)
    for block in _class_blocks(totals.count, row_bytes):
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

    from imagenet_plus.score import metrics as metrics

    for shard in shards:
        kl = totals.isc.add_kl(shard.start, np.load(shard.files.logits, mmap_mode="r"))
        realism: list[float | None] = [None] * shard.count
        if balls is not None:
            realism = [float(x) for x in metrics.realism_from_balls(np.load(shard.files.inception), *balls)]
        cols = pq.read_table(shard.files.parquet).to_pydict()
        cols.update(_dataset_columns(shard, kl, realism, results.dup_of))
        for name in SCORE_COLUMNS:
            cols.setdefault(name, [None] * shard.count)
        _write_parquet_atomic(shard.files.parquet, cols)


def _reference_sample(reference: Any, size: int) -> np.ndarray | None:
    """The fixed-size seeded sample of the real features (``None`` without features)."""
    if reference is None or reference.features is None:
        return None
    rows = sample_indices(len(reference.features), size, REFERENCE_SAMPLE_SEED)
    return np.asarray(reference.features[rows], dtype=np.float32)


def _dataset_metrics(totals: _Totals, reference: Any, real: np.ndarray | None, device: Any) -> dict[str, Any]:
    """FID from the running moments; KID and precision/recall on the samples; IS from the split sums."""
    from imagenet_plus.score import metrics as metrics

    summary: dict[str, Any] = {k: None for k in SUMMARY_METRICS}
    summary["inception_score_mean"], summary["inception_score_std"] = totals.isc.score()
    summary["clip_score_mean"] = float(totals.clip_sum.sum() / totals.num_images)
    if reference is not None and totals.num_images >= 2:  # a covariance needs two images
        real_stats = reference.stats or metrics.fid_statistics(reference.features)  # a Reference built by hand
        summary["fid"] = metrics.fid_from_statistics(totals.moments.statistics(), real_stats)
        if real is not None and len(real) >= 2:
            summary["kid_mean"], summary["kid_std"] = metrics.kid(totals.sample, real)
            if len(totals.sample) > metrics.NEIGHBORHOOD and len(real) > metrics.NEIGHBORHOOD:
                summary["precision"], summary["recall"] = metrics.precision_recall(totals.sample, real, device=device)
    return {k: _nan_to_none(v) for k, v in summary.items()}


def _per_class_summary(classes: list[dict[str, Any]], totals: _Totals, results: _ClassResults) -> dict[str, Any]:
    per_class: dict[str, Any] = {}
    for c in classes:
        label = int(c["label"])
        n = int(totals.count[label]) if 0 <= label < len(totals.count) else 0
        entry: dict[str, Any] = {"count": n, "fid": None, "vendi": None, "clip_score_mean": None,
                                 "classifier_top1_rate": None, "classifier_top5_rate": None,
                                 "duplicates": int(results.duplicates.get(label, 0))}
        if n:
            entry["vendi"] = results.vendi[label]
            entry["clip_score_mean"] = float(totals.clip_sum[label] / n)
            entry["classifier_top1_rate"] = _rate(totals.top1[1, label], totals.top1[0, label])
            entry["classifier_top5_rate"] = _rate(totals.top5[1, label], totals.top5[0, label])
            entry["fid"] = _nan_to_none(results.fid.get(label))
        per_class[str(c["id"])] = entry
    return per_class


def _dataset_pass(paths: RunPaths, stems: list[str], classes: list[dict[str, Any]], reference: Any,
                  device: Any = "cpu", metric_samples: int = METRIC_SAMPLES) -> dict[str, Any]:
    """Per-image terms that need every shard, then the dataset metrics; parquets rewritten one at a time."""
    from imagenet_plus.score import metrics as metrics

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
    summary = _dataset_metrics(totals, reference, real, device)
    summary.update(num_images=total, per_class=_per_class_summary(classes, totals, results),
                   duplicates=len(results.dup_of),
                   classifier_top1_rate=_rate(totals.top1[1].sum(), totals.top1[0].sum()),
                   classifier_top5_rate=_rate(totals.top5[1].sum(), totals.top5[0].sum()))
    return summary


def _as_reference(reference: Any) -> Any:
    """A loaded ``Reference``, ``None``, or the path of a ``.npz`` statistics file (loaded here)."""
    if reference is None or not isinstance(reference, (str, Path)):
        return reference
    from imagenet_plus.score.reference import detect_kind, load_reference

    if detect_kind(Path(reference)) != "statistics":
        raise UserError(f"reference {reference}: pass a loaded Reference or a .npz statistics file to the dataset pass")
    return load_reference(reference, None)


def run_dataset_pass(run: str | Path, reference: Any = None, *, stems: list[str] | None = None, device: Any = "cpu",
                     metric_samples: int = METRIC_SAMPLES) -> dict[str, Any]:
    """The dataset pass alone, on a run whose ``RUN/scores/*.parquet`` and ``.npy`` features exist.

    Fills ``isc_kl``, ``realism`` and ``dup_of`` in every parquet (rewritten one at a time) and returns the
    dataset metrics (the summary without the run's metadata; ``run_score`` adds those and writes
    ``summary.json``). Memory is bounded by the number of classes and :data:`METRIC_SAMPLES`, plus a few
    bytes per image (labels, IS split ids, the keys of near-duplicates).

    Args:
        run: the run directory.
        reference: a loaded ``reference.Reference``, the path of a ``.npz`` statistics file, or ``None``.
        stems: the shards to include (default: every ``RUN/scores/*.parquet``).
        device: where k-NN distances are computed (a GPU makes large samples fast).
        metric_samples: size of the generated and real samples for KID, precision/recall and realism.
    """
    paths = run_paths(run)
    if stems is None:
        stems = [p.name[: -len(".parquet")] for p in paths.scored_parquets()]
    return _dataset_pass(paths, stems, read_class_records(paths), _as_reference(reference), device, metric_samples)


# ----------------------------------------------------------------------------------------------------------------
# the stage


def _done_stems(paths: RunPaths) -> list[str]:
    """Stems of the finished generated shards, sorted."""
    from imagenet_plus.contract import done_shards

    return [t.name[: -len(".tar")] for t in done_shards(paths.generated)]


def _generated_stems(paths: RunPaths) -> list[str]:
    stems = _done_stems(paths)
    if not stems:
        raise UserError(f"no generated shards in {paths.generated}: run 'imagenet-plus generate' first")
    return stems


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _shard_count(paths: RunPaths, stem: str) -> int:
    stats = _read_json(paths.generated / f"{stem}.json") or {}
    try:
        return int(stats.get("count", 0))
    except (TypeError, ValueError):
        return 0


def _reference_id(cfg: ScoreConfig) -> str | None:
    return None if cfg.reference is None else str(Path(cfg.reference).resolve())


def _reference_protocol_is_current(described: dict[str, Any] | None) -> bool:
    """Whether a summary's reference features were extracted with today's protocol (statistics files: any)."""
    from imagenet_plus.score.reference import PROTOCOL

    return not described or described.get("kind") == "statistics" or described.get("protocol") == PROTOCOL


def is_finished(run: str | Path, cfg: ScoreConfig) -> bool:
    """Whether ``RUN/scores/summary.json`` covers exactly the run's finished generated shards with ``cfg``'s
    models and reference (what ``run_score`` would skip); false after a top-up added shards."""
    paths = RunPaths(Path(run))
    stems = _done_stems(paths)
    return bool(stems) and _finished_summary(paths, stems, cfg) is not None


def _finished_summary(paths: RunPaths, stems: list[str], cfg: ScoreConfig) -> dict[str, Any] | None:
    """The summary of an earlier run with the same shards, models and reference (the stage is then a no-op)."""
    models_rec = _models_record(cfg)
    previous = _read_json(paths.summary_json)
    if (previous is not None and previous.get("shards") == stems and not previous.get("bad_shards")
            and {k: (previous.get("models") or {}).get(k) for k in models_rec} == models_rec
            and previous.get("reference_arg") == _reference_id(cfg)
            and _reference_protocol_is_current(previous.get("reference"))
            and (previous.get("config") or {}).get("metric_samples", METRIC_SAMPLES) == cfg.metric_samples
            and all(paths.score_files(s).parquet.is_file() for s in stems)):
        return previous
    return None


def _prepare_scores_folder(paths: RunPaths, cfg: ScoreConfig) -> None:
    """Create ``RUN/scores``, drop a stale summary, refuse scores made with other models."""
    models_rec = _models_record(cfg)
    paths.scores.mkdir(parents=True, exist_ok=True)
    paths.summary_json.unlink(missing_ok=True)  # not done: a stale summary must not mark it done after a crash
    recorded = _read_json(paths.models_json)
    has_outputs = any(paths.scores.glob("*.npy")) or any(paths.scores.glob("*.parquet"))
    if recorded is not None and recorded != models_rec and has_outputs:
        changed = ", ".join(f"{k} {recorded.get(k)!r} → {v!r}" for k, v in models_rec.items() if recorded.get(k) != v)
        raise UserError(f"{paths.scores} was scored with other models ({changed}): delete that folder to rescore")


def _load_reference(cfg: ScoreConfig, models: Scorers, dist: Any, rdv: Any) -> Any:
    """The real reference, loaded before scoring so that a bad reference stops the stage early.

    One process: ``reference.load_reference``. Several: every rank extracts the features of its block of
    the reference into the rendezvous folder (``reference.load_reference_part``; nothing when they are
    cached) and goes on scoring; a bad image stops every rank. Returns the ``Reference`` or, when the parts
    must still be merged (once every rank is done), the main rank's ``ReferenceParts``; ``None`` on the
    other ranks and without a reference.
    """
    if cfg.reference is None:
        return None
    from imagenet_plus.score.reference import load_reference, load_reference_part

    inception = models.inception if not str(cfg.reference).endswith(".npz") else None
    if dist.world_size == 1:
        return load_reference(cfg.reference, inception, cfg.batch_size, show_progress=True)
    return load_reference_part(cfg.reference, inception, rdv.folder, dist.rank, dist.world_size, cfg.batch_size,
                               show_progress=dist.is_main, check=lambda: rdv.check(every=1.0))


def _score_own_shards(paths: RunPaths, stems: list[str], models: Scorers, cfg: ScoreConfig, num_classes: int,
                      dist: Any, rdv: Any) -> None:
    """Pass 1 on this rank's unfinished shards; a bad shard is skipped (marked) or stops the stage."""
    from imagenet_plus.io.atomic import write_json_atomic
    from imagenet_plus.pipeline.progress import progress_bar

    mine = [s for i, s in enumerate(stems) if dist.owns(i) and not paths.score_files(s).done()]
    for s in mine:
        paths.score_files(s).clean()
    if not mine:
        return
    models.load_all()
    if dist.is_main:  # only once the networks loaded: a failed start does not pin the models
        write_json_atomic(paths.models_json, _models_record(cfg))
    bar = progress_bar(sum(_shard_count(paths, s) for s in mine), f"score (rank {dist.rank})", enabled=dist.is_main)
    with bar, ThreadPoolExecutor(max_workers=cfg.num_workers) as pool:
        for s in mine:
            rdv.check()
            files = paths.score_files(s)
            started = time.monotonic()
            try:
                n = score_shard(paths.generated / f"{s}.tar", files, models, cfg, num_classes, pool, bar,
                                check=lambda: rdv.check(every=1.0))
                write_json_atomic(files.stats, {"shard": s, "count": n, "rank": dist.rank,
                                                "world_size": dist.world_size,
                                                "seconds": round(time.monotonic() - started, 3)})
            except UserError as exc:
                if not cfg.skip_bad_shards or exc.message.startswith("rank "):
                    raise
                write_json_atomic(files.bad, {"shard": s, "error": exc.message})
                print(f"warning: skipped bad shard {s}: {exc.message}", file=sys.stderr)


def _scored_shards(paths: RunPaths, stems: list[str]) -> tuple[list[str], dict[str, str]]:
    """(good stems, {bad stem: error}) once every rank is done; a shard neither scored nor bad is an error."""
    bad = {s: (_read_json(paths.score_files(s).bad) or {}).get("error", "")
           for s in stems if paths.score_files(s).bad.is_file()}
    missing = [s for s in stems if s not in bad and not paths.score_files(s).done()]
    if missing:
        raise UserError(f"scores missing for shards {', '.join(missing)} in {paths.scores}: run score again")
    for s, err in bad.items():
        print(f"warning: bad shard {s} left out of the scores: {err}", file=sys.stderr)
    return [s for s in stems if s not in bad], bad


def _write_summary(paths: RunPaths, cfg: ScoreConfig, stems: list[str], classes: list[dict[str, Any]],
                   reference: Any, device: Any) -> dict[str, Any]:
    """The dataset pass over the good shards, then ``summary.json`` with the run's metadata (written last).

    ``reference`` may be the parts every rank extracted (``reference.ReferenceParts``): they are merged here
    (and cached), once every rank is done.
    """
    from imagenet_plus.contract import library_versions
    from imagenet_plus.io.atomic import write_json_atomic
    from imagenet_plus.score.reference import ReferenceParts
    from imagenet_plus.score.scorers.inception import resolve_inception_weights

    good, bad = _scored_shards(paths, stems)
    if isinstance(reference, ReferenceParts):
        reference = reference.merge(show_progress=True)
    models_rec = _models_record(cfg)
    write_json_atomic(paths.models_json, models_rec)
    summary = _dataset_pass(paths, good, classes, reference, device, cfg.metric_samples)
    summary.update(
        shards=stems,
        bad_shards=[{"shard": s, "error": e} for s, e in bad.items()],
        models={**models_rec, "inception_weights_id": resolve_inception_weights(cfg.inception_weights)[1]},
        reference=None if reference is None else reference.describe(),
        reference_arg=_reference_id(cfg),
        config=config_to_dict(cfg),
        versions=library_versions(),
    )
    write_json_atomic(paths.summary_json, summary)
    return summary


def run_score(run: str | Path, cfg: ScoreConfig, scorers: Scorers | None = None) -> dict[str, Any] | None:
    """Score every generated image of ``run`` and write ``RUN/scores`` (resumable; no-op when done).

    Under ``torchrun``/``accelerate launch`` each rank scores its own shards, marks itself done and returns
    ``None``; the main rank waits for the markers (no collective: no process-group timeout can fire), runs the
    dataset pass and returns the summary. A rank that fails marks it and every other rank stops within
    seconds with an error naming it. A reference folder or shards not yet cached is extracted by every rank
    before it scores, one contiguous block each, into the rendezvous folder; the main rank merges the blocks
    in order after the wait (the same features as one process), caches them and runs the dataset pass.

    Args:
        run: the run directory.
        cfg: the stage settings.
        scorers: already loaded networks (built from ``cfg`` when ``None``); they must match ``cfg``.

    Returns:
        The content of ``RUN/scores/summary.json`` (``None`` on ranks other than the main one).

    Raises:
        UserError: no shards, a corrupt shard (unless ``skip_bad_shards``), a missing model or weights file,
            an unknown classifier, an empty or unreadable reference, scores made with other models, or a
            failure on another rank.
    """
    from imagenet_plus.pipeline.ranks import FileRendezvous, init_dist

    paths = run_paths(run)
    stems = _generated_stems(paths)
    classes = read_class_records(paths)
    previous = _finished_summary(paths, stems, cfg)
    if previous is not None:
        return previous
    _check_inputs(cfg)
    _prepare_scores_folder(paths, cfg)
    dist = init_dist()
    rdv = FileRendezvous.start(paths.markers / STAGE, dist)
    try:
        models = scorers or Scorers(cfg, dist.device, [ClassInfo.from_dict(c) for c in classes])
        reference = _load_reference(cfg, models, dist, rdv)
        _score_own_shards(paths, stems, models, cfg, len(classes), dist, rdv)
        if dist.is_main and not paths.class_text_embeddings.is_file():
            _save_npy_atomic(paths.class_text_embeddings, models.class_embeddings.astype(np.float16))
    except BaseException as exc:
        rdv.fail(exc)
        raise
    rdv.done()
    if not dist.is_main:
        return None
    try:
        rdv.wait_for_all()
        return _write_summary(paths, cfg, stems, classes, reference, dist.device)
    finally:
        rdv.close()
