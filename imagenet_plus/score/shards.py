"""Pass 1 of the score stage: each generated shard scored once, on the rank that owns it.

Each image is decoded once into a ``uint8`` tensor (thread workers decode the next batch while the networks
run) and fed in batches to InceptionV3, CLIP, the classifier and the NSFW detector. A shard's ``.npy``
features, then its parquet, then its record (``NNNNN.stats.json``: the generated shard it scored) are written
atomically.
A shard that does not read back, or holds another number of samples than its stats say (a copy zero-filled
from a sample boundary on reads as a shorter valid tar), is a :class:`~imagenet_plus.errors.CorruptShard`: it
stops the stage, or with ``skip_bad_shards`` is marked bad (``NNNNN.bad.json``) and left out.

A shard's scores depend on that shard alone: its batches start at its first sample and never span shards, and
the CLIP text cache is emptied at its start (texts embedded together are padded alike), so a shard scored
by another process, after other shards, or in a run resumed after a kill, gets the same bytes.
A shard is done by :func:`~imagenet_plus.score.files.scores_problem` (files complete, rows as its samples,
scored from the generated shard now on disk); one that is not is scored again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
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
    COL_NSFW_SCORE,
    DATASET_PASS_COLUMNS,
    SCORE_COLUMNS,
    RunPaths,
    ScoreFiles,
    ShardStats,
    expected_count,
    image_member,
    stats_digest,
    stats_path,
)
from imagenet_plus.contract.scores import BadShard, ScoredShard
from imagenet_plus.errors import CorruptShard, UserError
from imagenet_plus.io.storage import location
from imagenet_plus.io.tar import iter_shard
from imagenet_plus.pipeline.progress import progress_bar
from imagenet_plus.pipeline.ranks import Dist, FileRendezvous
from imagenet_plus.score import metrics
from imagenet_plus.score.config import ScoreConfig
from imagenet_plus.score.files import drop_scores, save_npy_atomic, scores_problem, write_scores_parquet
from imagenet_plus.score.networks import Scorers, models_record
from imagenet_plus.score.scorers import decode_image

log = logging.getLogger(__name__)


@dataclass
class _Sample:
    key: str
    meta: dict[str, Any]
    data: bytes


def _parse_sample(sample: dict[str, Any], tar: Path, num_classes: int) -> _Sample:
    key = sample.get("__key__", "?")
    member = image_member(sample)
    if member is None or "json" not in sample:
        raise CorruptShard(tar, f"sample {key} lacks an image or json member")
    try:
        meta = json.loads(sample["json"])
        label = int(meta["label"])
        str(meta["class_id"])
    except (ValueError, KeyError, TypeError):
        raise CorruptShard(tar, f"sample {key} has malformed json (needs label and class_id)") from None
    if not 0 <= label < num_classes:
        raise CorruptShard(tar, f"sample {key} has label {label}, outside the run's {num_classes} classes")
    return _Sample(key=key, meta=meta, data=sample[member])


def _decode(sample: _Sample, tar: Path) -> Any:
    """The sample's image as a ``uint8`` tensor; an image that does not decode makes the shard corrupt."""
    try:
        return decode_image(sample.data, sample.key)
    except UserError as exc:
        raise CorruptShard(tar, exc.message) from None


def _decoded_batches(tar: Path, batch_size: int, num_classes: int, pool: ThreadPoolExecutor,
                     expected: int | None = None) -> Iterator[tuple[list[_Sample], list[Any]]]:
    """Batches of (samples, decoded ``uint8`` images) of one shard, from its first sample on; the next batch
    decodes while the caller runs networks. ``expected``: the samples the shard must hold (its stats)."""
    pending: tuple[list[_Sample], list[Future]] | None = None
    batch: list[_Sample] = []

    def submit(samples: list[_Sample]) -> tuple[list[_Sample], list[Future]]:
        return samples, [pool.submit(_decode, s, tar) for s in samples]

    for raw in iter_shard(tar, expected):
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
    """Run the networks on one batch and derive the per-image scores."""
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
                pool: ThreadPoolExecutor, bar: Any, check: Callable[[], None] | None = None) -> int:
    """Score one generated shard and write its parquet and feature files (atomically, parquet last).

    ``check`` (optional) is called after every batch; it raises to stop (another rank failed).

    Returns:
        The number of samples scored.

    Raises:
        CorruptShard: the shard, a sample's json or an image does not read back, or the shard holds another
            number of samples than its stats say (or has none).
    """
    columns: dict[str, list[Any]] = {}
    arrays: dict[str, list[np.ndarray]] = {"_pool": [], "_clip": [], "_logits": []}
    expected = expected_count(tar)
    models.clip.forget_texts()  # the prompts' embeddings depend on this shard alone
    for samples, images in _decoded_batches(tar, cfg.batch_size, num_classes, pool, expected):
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
    save_npy_atomic(files.inception, pool_feats.astype(np.float16))
    save_npy_atomic(files.clip, clip_feats.astype(np.float16))
    save_npy_atomic(files.logits, logits.astype(np.float32))
    write_scores_parquet(files.parquet, columns)
    return n


def shard_count(paths: RunPaths, stem: str) -> int:
    """The image count a generated shard's stats JSON gives (0 when unreadable: only the progress bar uses it)."""
    try:
        return ShardStats.read(stats_path(paths.generated / f"{stem}.tar")).count
    except UserError:
        return 0


def _needs_scoring(paths: RunPaths, stem: str) -> bool:
    """Whether a shard must be scored (``files.scores_problem``); scores that are there but not done (cut, stale:
    the stage's own files) are named in a warning and deleted first, and leftovers of a killed writer removed."""
    why = scores_problem(paths, stem)
    if why is None:
        return False
    if why != "not scored":
        log.warning("warning: scoring shard %s again: %s", stem, why)
        drop_scores(paths.score_files(stem))
    paths.score_files(stem).clean()
    return True


def score_one(paths: RunPaths, stem: str, models: Scorers, cfg: ScoreConfig, num_classes: int,
              pool: ThreadPoolExecutor, bar: Any, rank: int = 0, world_size: int = 1,
              check: Callable[..., None] | None = None) -> int:
    """Score one generated shard and write its record (``NNNNN.stats.json``, last); a corrupt shard is marked bad
    with ``skip_bad_shards`` (returns 0), else raised. The per-shard work every engine runs.

    Raises:
        CorruptShard: the shard does not read back (without ``skip_bad_shards``).
    """
    files = paths.score_files(stem)
    started = time.monotonic()
    generated = stats_digest(paths.generated / f"{stem}.tar")
    try:
        n = score_shard(paths.generated / f"{stem}.tar", files, models, cfg, num_classes, pool, bar,
                        check=None if check is None else (lambda: check(every=1.0)))
    except CorruptShard as exc:
        if not cfg.skip_bad_shards:
            raise
        BadShard(shard=stem, error=exc.message).write(files.bad)
        log.warning("warning: skipped bad shard %s: %s", stem, exc.message)
        return 0
    ScoredShard(shard=stem, count=n, rank=rank, world_size=world_size,
                seconds=round(time.monotonic() - started, 3), generated=str(generated)).write(files.stats)
    return n


class ShardScorer:
    """The per-shard work of ``score`` as an engine calls it: built from (run location, settings, class set),
    called with a shard's position in the sorted list of generated shards; returns the images it scored (0 for a
    shard already scored). The networks are loaded on the first shard that needs them and kept for the next ones.

    Args:
        run: the run folder.
        cfg: the score settings.
        stems: the generated shards' stems, sorted (a shard id is a position in this list).
        classes: the class records (``RUN/classes.json``).
    """

    def __init__(self, run: str | Path, cfg: ScoreConfig, stems: list[str], classes: list[dict[str, Any]]) -> None:
        self.paths = RunPaths(location(run))
        self.cfg, self.stems, self.classes = cfg, list(stems), classes
        self._models: Scorers | None = None
        self._pool: ThreadPoolExecutor | None = None

    def __call__(self, shard: int) -> int:
        stem = self.stems[shard]
        if not _needs_scoring(self.paths, stem):
            return 0
        if self._models is None:
            import torch

            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            self._models = Scorers(self.cfg, device, [ClassInfo.from_dict(c) for c in self.classes])
            self._models.load_all()
            self._pool = ThreadPoolExecutor(max_workers=self.cfg.num_workers)
        assert self._pool is not None
        return score_one(self.paths, stem, self._models, self.cfg, len(self.classes), self._pool,
                         progress_bar(0, "", enabled=False))


def score_own_shards(paths: RunPaths, stems: list[str], models: Scorers, cfg: ScoreConfig, num_classes: int,
                     dist: Dist, rdv: FileRendezvous, share: tuple[int, int] | None = None) -> None:
    """Pass 1 on this rank's shards that are not done (``files.scores_problem``); a corrupt shard is skipped
    (marked bad) or stops the stage. Scores that are there but not done (cut, stale: they are the stage's own
    files) are named in a warning and deleted before the shard is scored again. With a job ``share`` (index,
    count), only the shards at positions ``i % count == index`` are this job's (then split across its ranks).

    Raises:
        CorruptShard: a shard does not read back (without ``skip_bad_shards``).
        PeerRankFailed: another rank failed (never taken for a bad shard).
    """
    ours = [i for i in range(len(stems)) if share is None or i % share[1] == share[0]]
    mine = [stems[i] for k, i in enumerate(ours) if dist.owns(k) and _needs_scoring(paths, stems[i])]
    if not mine:
        return
    models.load_all()
    if dist.is_main and share is None:  # only once the networks loaded: a failed start does not pin the models
        models_record(cfg).write(paths.models_json)
    desc = f"score (rank {dist.rank})" if share is None else f"score (job {share[0]} of {share[1]}, rank {dist.rank})"
    bar = progress_bar(sum(shard_count(paths, s) for s in mine), desc, enabled=dist.is_main)
    with bar, ThreadPoolExecutor(max_workers=cfg.num_workers) as pool:
        for s in mine:
            rdv.check()
            score_one(paths, s, models, cfg, num_classes, pool, bar, dist.rank, dist.world_size, rdv.check)
