"""The score stage: every generated image scored once, and the whole set measured against real images.

Reads ``RUN/generated/*.tar`` (and ``RUN/classes.json``); writes ``RUN/scores/``:

```
RUN/scores/00000.parquet            one row per sample key (columns: SCORE_COLUMNS)
RUN/scores/00000.inception.npy      N×2048 float16 torch-fidelity pool3 features, rows in parquet order
RUN/scores/00000.clip.npy           N×D float16 L2-normalised CLIP image embeddings
RUN/scores/00000.logits.npy         N×1008 float32 torch-fidelity logits_unbiased (for the IS terms)
RUN/scores/00000.stats.json         count, seconds, rank and world size of the process that scored it
RUN/scores/class_text_embeddings.npy  C×D float16 CLIP embeddings of "a photo of a {name}", label order
RUN/scores/models.json              the scorers the shards were computed with
RUN/scores/summary.json             dataset metrics; written last: the stage is done when it lists every shard
```

Pass 1 (every rank, shard ``s`` owned by rank ``s % world_size``, resumable per shard): each image is
decoded once into a ``uint8`` tensor and fed in batches to InceptionV3, CLIP and the classifier. Pass 2
(main process, no network runs except the reference's when it is not cached): the per-image Inception
Score terms against the dataset marginal, near-duplicates within each class across shards, the realism
score against the reference, then FID/KID/IS/precision/recall/Vendi; parquets are rewritten atomically.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_plus.configio import config_from_mapping, config_to_dict, require_positive
from imagenet_plus.contract import IMAGE_EXTENSIONS, RunPaths, read_class_records, run_paths
from imagenet_plus.errors import UserError
from imagenet_plus.scorers.classifier import DEFAULT_CLASSIFIER
from imagenet_plus.scorers.clip import DEFAULT_CLIP
from imagenet_plus.shards import atomic_file

#: Parquet columns of ``RUN/scores/{shard}.parquet``, in order (the contract other stages read).
SCORE_COLUMNS = (
    "key", "label", "class_id", "clip_score", "clip_class_score", "clip_class_prob", "clip_class_rank", "isc_kl",
    "classifier_top1", "classifier_top5", "classifier_prob", "realism", "dup_of", "nsfw", "attempt", "strategy",
)
#: Image members a generated sample may carry.
IMAGE_MEMBERS = IMAGE_EXTENSIONS
#: Summary keys of the dataset metrics (null when they cannot be computed).
SUMMARY_METRICS = ("fid", "kid_mean", "kid_std", "inception_score_mean", "inception_score_std", "clip_score_mean",
                   "precision", "recall")
#: Generated images used for precision/recall (its k-NN radii need all pairwise distances): a fixed subset.
MAX_PRC_SAMPLES = 50_000


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
        batch_size: images per network batch.
        skip_bad_shards: go on past a corrupt or truncated shard (listed in summary.json and on stderr).
        num_workers: threads decoding images while the networks run.
    """

    reference: str | None = None
    clip_model: str = DEFAULT_CLIP
    inception_weights: str | None = None
    classifier: str = DEFAULT_CLASSIFIER
    batch_size: int = 32
    skip_bad_shards: bool = False
    num_workers: int = 2

    def __post_init__(self) -> None:
        require_positive("score config", batch_size=self.batch_size, num_workers=self.num_workers)
        for name in ("clip_model", "classifier"):
            if not str(getattr(self, name)).strip():
                raise UserError(f"score config: '{name.replace('_', '-')}' must not be empty")


def load_score_config(overrides: Mapping[str, Any], source: str = "command line") -> ScoreConfig:
    """Build a :class:`ScoreConfig` from flags or a YAML section (unknown keys and bad values are errors)."""
    return config_from_mapping(ScoreConfig, overrides, source)


# ----------------------------------------------------------------------------------------------------------------
# files


@dataclass(frozen=True)
class ShardFiles:
    """The files of one shard's scores (same stem as its generated tar)."""

    scores: Path
    stem: str

    @property
    def parquet(self) -> Path:
        return self.scores / f"{self.stem}.parquet"

    @property
    def inception(self) -> Path:
        return self.scores / f"{self.stem}.inception.npy"

    @property
    def clip(self) -> Path:
        return self.scores / f"{self.stem}.clip.npy"

    @property
    def logits(self) -> Path:
        return self.scores / f"{self.stem}.logits.npy"

    @property
    def stats(self) -> Path:
        return self.scores / f"{self.stem}.stats.json"

    @property
    def bad(self) -> Path:
        return self.scores / f"{self.stem}.bad.json"

    def done(self) -> bool:
        """Pass 1 finished (the parquet is written last)."""
        return all(p.is_file() for p in (self.inception, self.clip, self.logits, self.parquet))

    def clean(self) -> None:
        """Remove leftovers of a killed writer and an old bad-shard marker."""
        for p in self.scores.glob(f"{self.stem}.*.partial"):
            p.unlink(missing_ok=True)
        self.bad.unlink(missing_ok=True)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as f:
        np.save(f, array)


def _arrow_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()), ("label", pa.int64()), ("class_id", pa.string()), ("clip_score", pa.float64()),
        ("clip_class_score", pa.float64()), ("clip_class_prob", pa.float64()), ("clip_class_rank", pa.int64()),
        ("isc_kl", pa.float64()), ("classifier_top1", pa.bool_()), ("classifier_top5", pa.bool_()),
        ("classifier_prob", pa.float64()), ("realism", pa.float64()), ("dup_of", pa.string()), ("nsfw", pa.bool_()),
        ("attempt", pa.int64()), ("strategy", pa.string()),
    ])


def _write_parquet_atomic(path: Path, columns: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema()
    table = pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)
    with atomic_file(path) as f:
        pq.write_table(table, f)


def read_scores(run: str | Path) -> Any:
    """All score rows of a run as one pandas DataFrame, in shard then row order (for downstream stages)."""
    import pandas as pd

    paths = run_paths(run)
    files = sorted(paths.scores.glob("*.parquet"))
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

    def __init__(self, cfg: ScoreConfig, device: Any, class_names: list[str], class_ids: list[str]) -> None:
        self.cfg = cfg
        self.device = device
        self.class_names = class_names
        self.class_ids = class_ids

    @cached_property
    def classifier(self) -> Any:
        from imagenet_plus.scorers.classifier import ClassifierScorer

        return ClassifierScorer(self.cfg.classifier, self.device)

    @cached_property
    def clip(self) -> Any:
        from imagenet_plus.scorers.clip import ClipScorer

        return ClipScorer(self.cfg.clip_model, self.device)

    @cached_property
    def inception(self) -> Any:
        from imagenet_plus.scorers.inception import InceptionScorer

        return InceptionScorer(self.cfg.inception_weights, self.device)

    @cached_property
    def class_embeddings(self) -> np.ndarray:
        """``C×D`` float32 L2-normalised CLIP embeddings of the class texts."""
        from imagenet_plus.scorers.clip import class_texts

        return self.clip.embed_texts(class_texts(self.class_names)).cpu().numpy()

    @cached_property
    def imagenet_targets(self) -> list[int | None]:
        from imagenet_plus.scorers.classifier import imagenet_targets

        return imagenet_targets(self.class_ids)

    def load_all(self) -> None:
        """Load every network now (classifier first: an unknown name fails before the heavy loads)."""
        _ = self.classifier, self.clip, self.inception


def _check_inputs(cfg: ScoreConfig) -> None:
    """Cheap checks of every flag before any network loads: files exist, names are known."""
    from imagenet_plus.reference import detect_kind
    from imagenet_plus.scorers.classifier import _timm_name
    from imagenet_plus.scorers.inception import resolve_inception_weights
    from imagenet_plus.tiny import TINY_RANDOM

    if cfg.inception_weights not in (None, TINY_RANDOM):
        resolve_inception_weights(cfg.inception_weights)
    if cfg.classifier != TINY_RANDOM:
        _timm_name(cfg.classifier)
    if cfg.reference is not None:
        detect_kind(Path(cfg.reference))


def _models_record(cfg: ScoreConfig) -> dict[str, str]:
    return {"clip": cfg.clip_model, "inception_weights": cfg.inception_weights or "torch-fidelity default",
            "classifier": cfg.classifier}


# ----------------------------------------------------------------------------------------------------------------
# pass 1: one shard


@dataclass
class _Sample:
    key: str
    meta: dict[str, Any]
    data: bytes


def _parse_sample(sample: dict[str, Any], tar: Path, num_classes: int) -> _Sample:
    key = sample.get("__key__", "?")
    member = next((m for m in IMAGE_MEMBERS if m in sample), None)
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
    from imagenet_plus.scorers import decode_image
    from imagenet_plus.shards import iter_shard

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
    from imagenet_plus import metrics

    pool, logits = models.inception.features(images)
    clip_emb = models.clip.embed_images(images)
    prompt_emb = models.clip.embed_texts([str(s.meta.get("prompt", "")) for s in samples])
    probs = models.classifier.probabilities(images)

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
        "clip_score": metrics.clip_score(img, prompt_emb.cpu().numpy()).tolist(),
        "clip_class_score": metrics.clip_score(img, class_emb[labels]).tolist(),
        "clip_class_prob": class_prob.tolist(),
        "clip_class_rank": class_rank.tolist(),
        "classifier_top1": top1_hit,
        "classifier_top5": top5_hit,
        "classifier_prob": target_prob,
        "nsfw": [bool(s.meta.get("nsfw", False)) for s in samples],
        "attempt": [int(s.meta.get("attempt", 0)) for s in samples],
        "strategy": [s.meta.get("strategy") for s in samples],
        "_pool": pool.numpy(),
        "_clip": img,
        "_logits": logits.numpy(),
    }


def score_shard(tar: Path, files: ShardFiles, models: Scorers, cfg: ScoreConfig, num_classes: int,
                pool: ThreadPoolExecutor, bar: Any) -> int:
    """Score one generated shard and write its parquet and feature files (atomically, parquet last).

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
    n = len(columns.get("key", []))
    dim = models.clip.dim
    pool_feats = np.concatenate(arrays["_pool"]) if n else np.zeros((0, 2048), np.float32)
    clip_feats = np.concatenate(arrays["_clip"]) if n else np.zeros((0, dim), np.float32)
    logits = np.concatenate(arrays["_logits"]) if n else np.zeros((0, 1008), np.float32)
    for name in ("key", "label", "class_id", "clip_score", "clip_class_score", "clip_class_prob", "clip_class_rank",
                 "classifier_top1", "classifier_top5", "classifier_prob", "nsfw", "attempt", "strategy"):
        columns.setdefault(name, [])
    columns["isc_kl"] = [None] * n
    columns["realism"] = [None] * n
    columns["dup_of"] = [None] * n
    _save_npy_atomic(files.inception, pool_feats.astype(np.float16))
    _save_npy_atomic(files.clip, clip_feats.astype(np.float16))
    _save_npy_atomic(files.logits, logits.astype(np.float32))
    _write_parquet_atomic(files.parquet, columns)
    return n


# ----------------------------------------------------------------------------------------------------------------
# pass 2: dataset-level


def _nan_to_none(value: Any) -> Any:
    if value is None:
        return None
    value = float(value)
    return None if not np.isfinite(value) else value


def _rate(values: list[Any]) -> float | None:
    known = [bool(v) for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _dataset_pass(paths: RunPaths, stems: list[str], classes: list[dict[str, Any]], reference: Any,
                  device: Any = "cpu") -> dict[str, Any]:
    """Per-image terms that need every shard, then the dataset metrics; parquets rewritten atomically."""
    import pyarrow.parquet as pq

    from imagenet_plus import metrics

    shard_files = [ShardFiles(paths.scores, s) for s in stems]
    tables = {f.stem: pq.read_table(f.parquet).to_pydict() for f in shard_files}
    logits_sum: np.ndarray | None = None
    count = 0
    for f in shard_files:
        lg = np.load(f.logits, mmap_mode="r")
        if len(lg):
            s = metrics.isc_probability_sum(np.asarray(lg))
            logits_sum = s if logits_sum is None else logits_sum + s
            count += len(lg)
    if count == 0:
        raise UserError(f"no images to score in {paths.generated}: every shard is empty or bad")
    marginal = logits_sum / count
    all_logits = np.concatenate([np.load(f.logits) for f in shard_files])
    pool = np.concatenate([np.load(f.inception) for f in shard_files]).astype(np.float32)
    clip = np.concatenate([np.load(f.clip) for f in shard_files]).astype(np.float32)
    keys: list[str] = []
    labels: list[int] = []
    for f in shard_files:
        keys.extend(tables[f.stem]["key"])
        labels.extend(tables[f.stem]["label"])
    labels_np = np.asarray(labels, dtype=np.int64)

    kl = metrics.isc_kl(all_logits, marginal)
    dup_of: list[str | None] = [None] * len(keys)
    for label in np.unique(labels_np):
        idx = np.nonzero(labels_np == label)[0]
        idx = idx[np.argsort([keys[i] for i in idx], kind="stable")]
        for i, d in zip(idx, metrics.near_duplicates(clip[idx], [keys[i] for i in idx]), strict=True):
            dup_of[i] = d
    realism: list[float | None] = [None] * len(keys)
    if reference is not None and reference.features is not None and len(reference.features) > metrics.NEIGHBORHOOD:
        realism = [float(x) for x in metrics.realism_scores(pool, reference.features, device=device)]

    start = 0
    for f in shard_files:
        cols = tables[f.stem]
        n = len(cols["key"])
        cols["isc_kl"] = [float(x) for x in kl[start : start + n]]
        cols["dup_of"] = dup_of[start : start + n]
        cols["realism"] = realism[start : start + n]
        for name in SCORE_COLUMNS:
            cols.setdefault(name, [None] * n)
        _write_parquet_atomic(f.parquet, cols)
        start += n

    summary: dict[str, Any] = {k: None for k in SUMMARY_METRICS}
    summary["inception_score_mean"], summary["inception_score_std"] = metrics.inception_score(all_logits)
    clip_scores = np.concatenate([np.asarray(tables[f.stem]["clip_score"], dtype=np.float64) for f in shard_files])
    summary["clip_score_mean"] = float(clip_scores.mean())
    if reference is not None and len(pool) >= 2:  # a covariance needs two images
        summary["fid"] = metrics.fid_from_statistics(metrics.fid_statistics(pool), reference.stats)
        if reference.features is not None and len(reference.features) >= 2:
            real = reference.features
            summary["kid_mean"], summary["kid_std"] = metrics.kid(pool, real)
            gen = pool
            if len(gen) > MAX_PRC_SAMPLES:
                gen = gen[np.random.default_rng(0).choice(len(gen), MAX_PRC_SAMPLES, replace=False)]
            if len(gen) > metrics.NEIGHBORHOOD and len(real) > metrics.NEIGHBORHOOD:
                summary["precision"], summary["recall"] = metrics.precision_recall(gen, real)

    def column(name: str) -> list[Any]:
        out: list[Any] = []
        for f in shard_files:
            out.extend(tables[f.stem][name])
        return out

    top1, top5 = column("classifier_top1"), column("classifier_top5")
    per_class: dict[str, Any] = {}
    for c in classes:
        idx = np.nonzero(labels_np == int(c["label"]))[0]
        entry: dict[str, Any] = {"count": int(len(idx)), "fid": None, "vendi": None, "clip_score_mean": None,
                                 "classifier_top1_rate": None, "classifier_top5_rate": None,
                                 "duplicates": int(sum(dup_of[i] is not None for i in idx))}
        if len(idx):
            entry["vendi"] = metrics.vendi_score(clip[idx])
            entry["clip_score_mean"] = float(clip_scores[idx].mean())
            entry["classifier_top1_rate"] = _rate([top1[i] for i in idx])
            entry["classifier_top5_rate"] = _rate([top5[i] for i in idx])
            real_c = reference.class_features(str(c["id"])) if reference is not None else None
            if real_c is not None and len(real_c) >= 2 and len(idx) >= 2:
                entry["fid"] = _nan_to_none(metrics.fid_small_set(pool[idx], real_c))
        per_class[str(c["id"])] = entry
    summary = {k: _nan_to_none(v) for k, v in summary.items()}
    summary.update(num_images=int(len(keys)), per_class=per_class,
                   duplicates=int(sum(d is not None for d in dup_of)),
                   classifier_top1_rate=_rate(top1), classifier_top5_rate=_rate(top5))
    return summary


# ----------------------------------------------------------------------------------------------------------------
# the stage


def _generated_stems(paths: RunPaths) -> list[str]:
    from imagenet_plus.contract import done_shards

    stems = [t.name[: -len(".tar")] for t in done_shards(paths.generated)]
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


def run_score(run: str | Path, cfg: ScoreConfig, scorers: Scorers | None = None) -> dict[str, Any]:
    """Score every generated image of ``run`` and write ``RUN/scores`` (resumable; no-op when done).

    Under ``torchrun``/``accelerate launch`` each rank scores its own shards; the main process then runs the
    dataset pass. Every rank returns the summary.

    Args:
        run: the run directory.
        cfg: the stage settings.
        scorers: already loaded networks (built from ``cfg`` when ``None``); they must match ``cfg``.

    Returns:
        The content of ``RUN/scores/summary.json``.

    Raises:
        UserError: no shards, a corrupt shard (unless ``skip_bad_shards``), a missing model or weights file,
            an unknown classifier, an empty or unreadable reference, or scores made with other models.
    """
    from imagenet_plus.contract import library_versions
    from imagenet_plus.distributed import init_dist
    from imagenet_plus.progress import progress_bar
    from imagenet_plus.scorers.inception import resolve_inception_weights
    from imagenet_plus.shards import write_json_atomic

    paths = run_paths(run)
    stems = _generated_stems(paths)
    classes = read_class_records(paths)
    models_rec = _models_record(cfg)
    previous = _read_json(paths.summary_json)
    if (previous is not None and previous.get("shards") == stems and not previous.get("bad_shards")
            and {k: (previous.get("models") or {}).get(k) for k in models_rec} == models_rec
            and previous.get("reference_arg") == _reference_id(cfg)
            and all(ShardFiles(paths.scores, s).parquet.is_file() for s in stems)):
        return previous
    _check_inputs(cfg)
    paths.scores.mkdir(parents=True, exist_ok=True)
    paths.summary_json.unlink(missing_ok=True)  # not done: a stale summary must not mark it done after a crash
    recorded = _read_json(paths.scores / "models.json")
    has_outputs = any(paths.scores.glob("*.npy")) or any(paths.scores.glob("*.parquet"))
    if recorded is not None and recorded != models_rec and has_outputs:
        changed = ", ".join(f"{k} {recorded.get(k)!r} → {v!r}" for k, v in models_rec.items() if recorded.get(k) != v)
        raise UserError(f"{paths.scores} was scored with other models ({changed}): delete that folder to rescore")

    dist = init_dist()
    models = scorers or Scorers(cfg, dist.device, [str(c["name"]) for c in classes], [str(c["id"]) for c in classes])
    shard_files = {s: ShardFiles(paths.scores, s) for s in stems}
    mine = [s for i, s in enumerate(stems) if dist.owns(i) and not shard_files[s].done()]
    for s in mine:
        shard_files[s].clean()
    reference = None
    if dist.is_main and cfg.reference is not None:
        from imagenet_plus.reference import load_reference

        inception = models.inception if not str(cfg.reference).endswith(".npz") else None
        reference = load_reference(cfg.reference, inception, cfg.batch_size, show_progress=True)
    text_file = paths.scores / "class_text_embeddings.npy"
    if mine:
        models.load_all()
        if dist.is_main:  # only once the networks loaded: a failed start does not pin the models
            write_json_atomic(paths.scores / "models.json", models_rec)
        total = sum(_shard_count(paths, s) for s in mine)
        bar = progress_bar(total, f"score (rank {dist.rank})", enabled=dist.is_main)
        with bar, ThreadPoolExecutor(max_workers=cfg.num_workers) as pool:
            for s in mine:
                started = time.monotonic()
                try:
                    n = score_shard(paths.generated / f"{s}.tar", shard_files[s], models, cfg, len(classes), pool, bar)
                    write_json_atomic(shard_files[s].stats, {"shard": s, "count": n, "rank": dist.rank,
                                                             "world_size": dist.world_size,
                                                             "seconds": round(time.monotonic() - started, 3)})
                except UserError as exc:
                    if not cfg.skip_bad_shards:
                        raise
                    write_json_atomic(shard_files[s].bad, {"shard": s, "error": exc.message})
                    print(f"warning: skipped bad shard {s}: {exc.message}", file=sys.stderr)
    if dist.is_main and not text_file.is_file():
        _save_npy_atomic(text_file, models.class_embeddings.astype(np.float16))
    dist.barrier()

    if dist.is_main:
        bad = {s: (_read_json(shard_files[s].bad) or {}).get("error", "")
               for s in stems if shard_files[s].bad.is_file()}
        missing = [s for s in stems if s not in bad and not shard_files[s].done()]
        if missing:
            raise UserError(f"scores missing for shards {', '.join(missing)} in {paths.scores}: run score again")
        for s, err in bad.items():
            print(f"warning: bad shard {s} left out of the scores: {err}", file=sys.stderr)
        good = [s for s in stems if s not in bad]
        write_json_atomic(paths.scores / "models.json", models_rec)
        summary = _dataset_pass(paths, good, classes, reference, dist.device)
        weights_id = resolve_inception_weights(cfg.inception_weights)[1]
        summary.update(
            shards=stems,
            bad_shards=[{"shard": s, "error": e} for s, e in bad.items()],
            models={**models_rec, "inception_weights_id": weights_id},
            reference=None if reference is None else reference.describe(),
            reference_arg=_reference_id(cfg),
            config=config_to_dict(cfg),
            versions=library_versions(),
        )
        write_json_atomic(paths.summary_json, summary)
    dist.barrier()
    result = _read_json(paths.summary_json)
    if result is None:
        raise UserError(f"{paths.summary_json} was not written")
    return result
