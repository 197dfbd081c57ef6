"""The diagnose stage: why a class is weak, per class, and what to do about it.

Reads ``RUN/classes.json`` and the score stage's outputs (``RUN/scores/*.parquet``, the ``.clip.npy`` CLIP image
embeddings beside them, ``class_text_embeddings.npy``), and optionally a real reference; writes
``RUN/diagnosis.parquet`` (one row per class, label order), ``RUN/diagnosis_centroids.npz`` (the per-class CLIP
image centroids, synthetic and real, for the report's map) and ``RUN/diagnosis.json`` (the thresholds, counts per
verdict, the flagged classes worst first, the overall CLIP geometry and the prompt strategy to switch each
flagged class to). The score stage's ``summary.json`` is left alone (its presence marks ``score`` done).

Four failure modes are told apart, each from its own evidence (see :func:`class_verdicts` for the rules):

- ``ambiguous``: the class name is shared with another class of the set, is polysemous in WordNet, or its
  zero-shot text embedding is a near twin of another class's; *and* many of its images are classified (CLIP
  zero-shot, against every class text) as another class. Remedy: the ``gloss`` or ``hypernym`` prompt strategy.
- ``concept-failure``: the synthetic class centroid (CLIP image space) is nearer another class's real centroid
  than its own (with a reference), or nearer another class's text embedding than its own (without one).
  Remedy: drop the class or use another model.
- ``low-diversity``: low Vendi score or high mean pairwise CLIP similarity of the class's images, or a Vendi
  score far below the real images' of the same class. Remedy: the ``diverse`` strategy, or a wider range of
  steps and guidance.
- ``low-adherence``: low mean zero-shot class probability or classifier top-5 rate. Remedy: the ``hypernym``
  strategy (the class's parent named in the prompt) or a higher guidance scale.

The classifier's predicted class is not part of the score table, so "the most frequent wrong prediction" is
CLIP's zero-shot one (``confused_with``); the classifier's own top-1/top-5 rates are reported as they are.

The real reference (``--reference``) is a folder of real images with one subfolder per class id (ImageNet's
``val/n01440764/*.JPEG``), embedded with the run's CLIP model and cached under ``RUN/diagnosis-cache/``
(keyed by the file list, sizes, modification times and the model), or an ``.npz`` file with ``clip`` (``N×D``
CLIP image embeddings, same model as the run) and ``class_ids`` (``N`` strings). Without one the real-side
columns are null and ``diagnosis.json`` says so.

Memory is bounded by the number of classes: shards are read one at a time into per-class sums (count, sum of
embeddings, sum of squared norms, confusion counts), and the pairwise figures that need single images (Vendi)
use a fixed-size sample per class: the ``sample_per_class`` images whose keys hash lowest (the same sample
whatever the shard order).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_plus.contract import (
    COL_CLASSIFIER_TOP1,
    COL_CLASSIFIER_TOP5,
    COL_CLIP_CLASS_PROB,
    COL_CLIP_SCORE,
    RunPaths,
    read_class_records,
    read_json,
    run_paths,
)
from imagenet_plus.errors import UserError

#: Verdicts, most severe first (a class gets the first of its flags as its verdict).
VERDICTS = ("ambiguous", "concept-failure", "low-diversity", "low-adherence")
#: The verdict of a class with no flag.
VERDICT_OK = "ok"
#: What to do about each verdict.
REMEDIES = {
    "ambiguous": "use the gloss or hypernym prompt strategy (the name alone means several things)",
    "concept-failure": "drop the class or generate it with another model (this model does not draw the concept)",
    "low-diversity": "use the diverse prompt strategy, or a wider range of steps and guidance",
    "low-adherence": "use the hypernym prompt strategy or a higher guidance scale",
    VERDICT_OK: "",
}
#: The prompt strategy ``generate --top-up`` should switch a flagged class to (None: no prompt fixes it).
REMEDY_STRATEGIES: dict[str, str | None] = {
    "ambiguous": "gloss",
    "concept-failure": None,
    "low-diversity": "diverse",
    "low-adherence": "hypernym",
}
#: Arrays of ``RUN/diagnosis_centroids.npz``: per-class CLIP image centroids (``C×D`` float32, NaN rows for
#: classes without images; ``real`` only with a reference) and the class ids of their rows (label order).
CENTROIDS_SYNTHETIC = "synthetic"
CENTROIDS_REAL = "real"
CENTROIDS_CLASS_IDS = "class_ids"
#: Image file suffixes read from a reference folder.
REFERENCE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class DiagnoseConfig:
    """Settings of ``imagenet-plus diagnose`` (thresholds of the verdicts, reference, sample sizes).

    Attributes:
        reference: real images (a folder with one subfolder per class id) or an ``.npz`` of CLIP embeddings.
        max_confusion: ``ambiguous`` needs at least this share of the class's images to score another class's
            text at least as high as its own (CLIP zero-shot).
        text_twin_cosine: class texts whose embeddings are at least this cosine-similar count as the same name.
        min_vendi: ``low-diversity`` below this Vendi score (1 = every image the same).
        max_pairwise_similarity: ``low-diversity`` above this mean pairwise cosine similarity of CLIP embeddings.
        min_diversity_ratio: ``low-diversity`` when the synthetic Vendi score is below this share of the real
            one (with a reference).
        min_class_prob: ``low-adherence`` below this mean zero-shot class probability (``clip_class_prob``).
        min_top5_rate: ``low-adherence`` below this classifier top-5 rate (classes the classifier knows).
        sample_per_class: images per class (and real images per class) used for the Vendi score.
        batch_size: images per CLIP batch when embedding a reference folder.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``…
        worst: flagged classes listed in ``diagnosis.json`` (worst first).
    """

    reference: str | None = None
    max_confusion: float = 0.3
    text_twin_cosine: float = 0.98
    min_vendi: float = 1.5
    max_pairwise_similarity: float = 0.95
    min_diversity_ratio: float = 0.5
    min_class_prob: float = 0.2
    min_top5_rate: float = 0.1
    sample_per_class: int = 64
    batch_size: int = 32
    device: str = "auto"
    worst: int = 50

    def __post_init__(self) -> None:
        for name in ("max_confusion", "text_twin_cosine", "max_pairwise_similarity", "min_diversity_ratio",
                     "min_class_prob", "min_top5_rate"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise UserError(f"diagnose setting {name}={value!r} must be between 0 and 1")
        for name in ("sample_per_class", "batch_size", "worst"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"diagnose setting {name}={getattr(self, name)!r} must be a positive integer")
        if self.min_vendi < 1.0:
            raise UserError(f"diagnose setting min_vendi={self.min_vendi!r} must be at least 1 (Vendi's minimum)")
        if self.sample_per_class < 2:
            raise UserError("diagnose setting sample_per_class must be at least 2 (pairs of images)")


# ------------------------------------------------------------------------------------------------------------
# pure math on embeddings


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``a[i]`` and ``b[i]`` for each row (NaN where a row is zero)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, np.sum(a * b, axis=-1) / np.where(denom > 0, denom, 1.0), np.nan)


def rms_spread(count: np.ndarray, emb_sum: np.ndarray, sq_norm_sum: np.ndarray) -> np.ndarray:
    """Root-mean-square distance of a class's embeddings to their centroid, from running sums.

    ``sqrt(mean ||x||² − ||mean x||²)`` per class; NaN for classes with no image.
    """
    count = np.asarray(count, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = emb_sum / count[:, None]
        var = sq_norm_sum / count - np.sum(mean * mean, axis=1)
    return np.where(count > 0, np.sqrt(np.clip(var, 0.0, None)), np.nan)


def mean_pairwise_dot(count: np.ndarray, emb_sum: np.ndarray, sq_norm_sum: np.ndarray) -> np.ndarray:
    """Mean of ``x_i · x_j`` over ordered pairs ``i ≠ j`` of a class, from running sums (exact).

    ``(||Σx||² − Σ||x||²) / (n(n − 1))``; for L2-normalised embeddings this is the mean pairwise cosine
    similarity. NaN for classes with fewer than two images.
    """
    count = np.asarray(count, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (np.sum(emb_sum * emb_sum, axis=1) - sq_norm_sum) / (count * (count - 1))
    return np.where(count > 1, value, np.nan)


def vendi_cosine(embeddings: np.ndarray) -> float:
    """Vendi score (Friedman & Dieng 2023) with the cosine kernel: ``exp(−Σ λ log λ)``, λ eigenvalues of ``K/n``.

    From 1 (all images the same) to ``n``; NaN for fewer than two images.
    """
    x = normalize_rows(embeddings)
    n = len(x)
    if n < 2:
        return float("nan")
    gram = (x.T @ x) / n if x.shape[1] < n else (x @ x.T) / n
    lam = np.linalg.eigvalsh(gram)
    lam = lam[lam > 1e-12]
    return float(np.exp(-np.sum(lam * np.log(lam))))


def modality_gap(image_centroids: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Euclidean distance between each class's image centroid and its text embedding (Liang et al. 2022)."""
    return np.linalg.norm(np.asarray(image_centroids, np.float64) - np.asarray(text_embeddings, np.float64), axis=1)


def nearest_rows(queries: np.ndarray, keys: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the index of the most cosine-similar key row and that similarity.

    Rows of ``keys`` that are all NaN or zero (classes without data) are never chosen; a query with no data
    gets index -1 and NaN. Computed ``chunk`` queries at a time (memory ``chunk × len(keys)``).
    """
    q, k = normalize_rows(np.nan_to_num(queries)), normalize_rows(np.nan_to_num(keys))
    valid = np.linalg.norm(k, axis=1) > 0
    best = np.full(len(q), -1, dtype=np.int64)
    value = np.full(len(q), np.nan)
    if not valid.any():
        return best, value
    for start in range(0, len(q), chunk):
        sims = q[start:start + chunk] @ k.T
        sims[:, ~valid] = -np.inf
        idx = np.argmax(sims, axis=1)
        best[start:start + chunk] = idx
        value[start:start + chunk] = sims[np.arange(len(sims)), idx]
    empty = np.linalg.norm(q, axis=1) == 0
    return np.where(empty, -1, best), np.where(empty, np.nan, value)


def zero_shot_confusion(image_emb: np.ndarray, labels: np.ndarray, text_emb: np.ndarray) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """Per image: whether another class's text scores at least as high as its own, and the best other class.

    Args:
        image_emb: ``N×D`` image embeddings.
        labels: ``N`` own class labels.
        text_emb: ``C×D`` class text embeddings.

    Returns:
        ``(confused, other)``: bool ``N`` (a tie counts as confused: two identical texts cannot tell the
        classes apart), and int ``N`` the highest-scoring class other than the own one.
    """
    image_emb, text_emb = np.asarray(image_emb, np.float32), np.asarray(text_emb, np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    confused = np.zeros(len(image_emb), dtype=bool)
    other = np.zeros(len(image_emb), dtype=np.int64)
    if len(text_emb) < 2:
        return confused, other
    for start in range(0, len(image_emb), 1024):  # bounded memory: 1024 × C scores at a time
        sims = image_emb[start:start + 1024] @ text_emb.T
        rows, lab = np.arange(len(sims)), labels[start:start + 1024]
        own = sims[rows, lab].copy()
        sims[rows, lab] = -np.inf
        best = np.argmax(sims, axis=1)
        other[start:start + 1024] = best
        confused[start:start + 1024] = sims[rows, best] >= own
    return confused, other


def text_twins(text_emb: np.ndarray, threshold: float) -> list[list[int]]:
    """For each class, the other classes whose text embedding is at least ``threshold`` cosine-similar."""
    t = normalize_rows(text_emb)
    out: list[list[int]] = []
    for start in range(0, len(t), 512):  # bounded memory: 512 × C similarities at a time
        sims = t[start:start + 512] @ t.T
        for i, row in enumerate(sims):
            hits = np.flatnonzero(row >= threshold)
            out.append([int(j) for j in hits if j != start + i])
    return out


def sample_priority(keys: Iterable[str]) -> np.ndarray:
    """A fixed pseudo-random priority per key (lowest first is the sample), independent of order and process."""
    return np.array([int.from_bytes(hashlib.blake2b(k.encode("utf-8"), digest_size=8).digest(), "little")
                     for k in keys], dtype=np.uint64)


class ClassAccumulator:
    """Per-class running sums of embeddings plus a fixed-size sample of them; memory bounded by classes.

    Args:
        num_classes: number of classes (labels 0..C-1).
        dim: embedding size.
        sample_size: embeddings kept per class (those whose priority is lowest).
    """

    def __init__(self, num_classes: int, dim: int, sample_size: int) -> None:
        self.count = np.zeros(num_classes, dtype=np.int64)
        self.emb_sum = np.zeros((num_classes, dim), dtype=np.float64)
        self.sq_norm_sum = np.zeros(num_classes, dtype=np.float64)
        self.sample_size = sample_size
        self._samples: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, labels: np.ndarray, emb: np.ndarray, priority: np.ndarray) -> None:
        """Add a batch of embeddings with their class labels and sample priorities."""
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) == 0:
            return
        emb = np.asarray(emb, dtype=np.float64)
        order = np.argsort(labels, kind="stable")
        uniq, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        sorted_emb = emb[order]
        self.count[uniq] += counts
        self.emb_sum[uniq] += np.add.reduceat(sorted_emb, starts, axis=0)
        self.sq_norm_sum[uniq] += np.add.reduceat(np.sum(sorted_emb * sorted_emb, axis=1), starts)
        for lab, rows in zip(uniq, np.split(order, starts[1:]), strict=True):
            prio, kept = priority[rows], emb[rows].astype(np.float16)  # the precision of the .clip.npy files
            if int(lab) in self._samples:
                old_prio, old_emb = self._samples[int(lab)]
                prio, kept = np.concatenate([old_prio, prio]), np.concatenate([old_emb, kept])
            best = np.argsort(prio, kind="stable")[: self.sample_size]
            self._samples[int(lab)] = (prio[best], kept[best])

    def sample(self, label: int) -> np.ndarray:
        """The sampled embeddings of a class (``≤ sample_size × D``; empty when it has none)."""
        got = self._samples.get(int(label))
        return got[1] if got is not None else np.zeros((0, self.emb_sum.shape[1]), dtype=np.float16)

    def centroids(self) -> np.ndarray:
        """``C×D`` mean embedding per class (NaN rows for classes without data)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count[:, None] > 0, self.emb_sum / np.maximum(self.count, 1)[:, None], np.nan)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The state as plain arrays (for a cache file)."""
        labels = sorted(self._samples)
        flat_labels = np.concatenate([np.full(len(self._samples[lab][1]), lab) for lab in labels]) if labels else \
            np.zeros(0, dtype=np.int64)
        flat = np.concatenate([self._samples[lab][1] for lab in labels]) if labels else \
            np.zeros((0, self.emb_sum.shape[1]), np.float16)
        prio = np.concatenate([self._samples[lab][0] for lab in labels]) if labels else np.zeros(0, np.uint64)
        return {"count": self.count, "emb_sum": self.emb_sum, "sq_norm_sum": self.sq_norm_sum,
                "sample_labels": flat_labels.astype(np.int64), "sample_emb": flat, "sample_priority": prio}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], sample_size: int) -> ClassAccumulator:
        acc = cls(len(arrays["count"]), arrays["emb_sum"].shape[1], sample_size)
        acc.count, acc.emb_sum, acc.sq_norm_sum = arrays["count"], arrays["emb_sum"], arrays["sq_norm_sum"]
        for lab in np.unique(arrays["sample_labels"]):
            rows = arrays["sample_labels"] == lab
            acc._samples[int(lab)] = (arrays["sample_priority"][rows], arrays["sample_emb"][rows])
        return acc


# ------------------------------------------------------------------------------------------------------------
# verdicts


@dataclass(frozen=True)
class ClassEvidence:
    """What the verdict rules read for one class (NaN / None where a figure is not available)."""

    name_evidence: bool
    confusion_share: float
    concept_other: bool
    vendi: float
    mean_pairwise_similarity: float
    vendi_ratio: float
    clip_class_prob_mean: float
    classifier_top5_rate: float | None
    flags: list[str] = field(default_factory=list)


def class_flags(ev: ClassEvidence, cfg: DiagnoseConfig) -> list[str]:
    """The failure modes a class shows, most severe first (a subset of :data:`VERDICTS`).

    Rules (thresholds from ``cfg``):

    - ``ambiguous``: name evidence (shared lemma, WordNet polysemy or a text twin) and
      ``confusion_share ≥ max_confusion``;
    - ``concept-failure``: the synthetic centroid is nearer another class (its real centroid, or its text
      without a reference) than its own;
    - ``low-diversity``: ``vendi < min_vendi``, ``mean_pairwise_similarity > max_pairwise_similarity`` or
      ``vendi_ratio < min_diversity_ratio`` (ratio to real, with a reference);
    - ``low-adherence``: ``clip_class_prob_mean < min_class_prob`` or ``classifier_top5_rate < min_top5_rate``.
    """
    flags = []
    if ev.name_evidence and ev.confusion_share >= cfg.max_confusion:
        flags.append("ambiguous")
    if ev.concept_other:
        flags.append("concept-failure")
    if (ev.vendi < cfg.min_vendi or ev.mean_pairwise_similarity > cfg.max_pairwise_similarity
            or ev.vendi_ratio < cfg.min_diversity_ratio):  # NaN compares False: a missing figure flags nothing
        flags.append("low-diversity")
    top5 = ev.classifier_top5_rate
    if ev.clip_class_prob_mean < cfg.min_class_prob or (top5 is not None and top5 < cfg.min_top5_rate):
        flags.append("low-adherence")
    return flags


def verdict_of(flags: Sequence[str]) -> str:
    """The most severe flag, or ``ok``."""
    return next((v for v in VERDICTS if v in flags), VERDICT_OK)


# ------------------------------------------------------------------------------------------------------------
# reading the run


def _read_scores(paths: RunPaths, num_classes: int, text_emb: np.ndarray, sample_size: int) -> dict[str, Any]:
    """One pass over the score shards into per-class sums (memory bounded by the number of classes)."""
    import pyarrow.parquet as pq

    dim = text_emb.shape[1]
    acc = ClassAccumulator(num_classes, dim, sample_size)
    sums = {name: np.zeros(num_classes) for name in (COL_CLIP_SCORE, COL_CLIP_CLASS_PROB, COL_CLASSIFIER_TOP1,
                                                      COL_CLASSIFIER_TOP5)}
    counts = {name: np.zeros(num_classes, dtype=np.int64) for name in sums}
    confused = np.zeros(num_classes, dtype=np.int64)
    confused_pairs: dict[tuple[int, int], int] = {}
    for parquet in paths.scored_parquets():
        files = paths.score_files(parquet.stem)
        if not files.clip.is_file():
            raise UserError(f"{files.clip} is missing beside {parquet}: re-run 'imagenet-plus score'")
        table = pq.read_table(parquet, columns=["key", "label", *sums])
        emb = np.load(files.clip).astype(np.float32)
        if len(emb) != table.num_rows:
            raise UserError(f"{files.clip} has {len(emb)} rows but {parquet} has {table.num_rows}")
        if emb.ndim != 2 or emb.shape[1] != dim:
            raise UserError(f"{files.clip}: embeddings of size {emb.shape[-1]} but class texts of size {dim}")
        labels = np.asarray(table.column("label").to_numpy(zero_copy_only=False), dtype=np.int64)
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            raise UserError(f"{parquet}: label {int(labels[bad][0])} is outside the run's {num_classes} classes")
        keys = [str(k) for k in table.column("key").to_pylist()]
        acc.add(labels, emb, sample_priority(keys))
        for name in sums:
            col = table.column(name).to_pandas()
            present = col.notna().to_numpy()
            np.add.at(sums[name], labels[present], col[present].astype(float).to_numpy())
            np.add.at(counts[name], labels[present], 1)
        is_confused, other = zero_shot_confusion(emb, labels, text_emb)
        np.add.at(confused, labels, is_confused.astype(np.int64))
        pair, n = np.unique(labels[is_confused] * num_classes + other[is_confused], return_counts=True)
        for p, k in zip(pair.tolist(), n.tolist(), strict=True):
            key = (p // num_classes, p % num_classes)
            confused_pairs[key] = confused_pairs.get(key, 0) + k
    with np.errstate(invalid="ignore", divide="ignore"):
        means = {name: np.where(counts[name] > 0, sums[name] / np.maximum(counts[name], 1), np.nan) for name in sums}
    top_other = np.full(num_classes, -1, dtype=np.int64)
    top_other_count = np.zeros(num_classes, dtype=np.int64)
    for (c, j), k in sorted(confused_pairs.items()):
        if k > top_other_count[c]:
            top_other[c], top_other_count[c] = j, k
    return {"acc": acc, "means": means, "counts": counts, "confused": confused, "top_other": top_other,
            "top_other_count": top_other_count}


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _reference_files(root: Path, class_index: Mapping[str, int]) -> list[tuple[Path, int]]:
    """The images of a reference folder with the label of their class subfolder (sorted)."""
    out: list[tuple[Path, int]] = []
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not subdirs:
        raise UserError(f"reference {root} has no class subfolders (expected REAL/CLASS_ID/*.jpg)")
    unknown = [p.name for p in subdirs if p.name not in class_index]
    if unknown:
        raise UserError(f"reference {root} has class folder(s) the run lacks: {', '.join(unknown[:5])}"
                        f"{' …' if len(unknown) > 5 else ''}")
    for sub in subdirs:
        for f in sorted(sub.rglob("*")):
            if f.is_file() and f.suffix.lower() in REFERENCE_SUFFIXES:
                out.append((f, class_index[sub.name]))
    if not out:
        raise UserError(f"reference {root} holds no images ({', '.join(REFERENCE_SUFFIXES)})")
    return out


def _iter_decoded(files: list[tuple[Path, int]]) -> Iterator[tuple[Any, int, str]]:
    import torch
    from PIL import Image, UnidentifiedImageError

    for path, label in files:
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise UserError(f"unreadable reference image {path}: {exc}") from None
        yield torch.from_numpy(arr.copy()).permute(2, 0, 1), label, str(path)


def load_reference_embeddings(reference: str | Path, paths: RunPaths, class_ids: Sequence[str], clip_model: str,
                              cfg: DiagnoseConfig) -> ClassAccumulator:
    """Per-class sums and samples of the real reference's CLIP image embeddings (cached under the run).

    Raises:
        UserError: the reference is missing, has classes the run lacks, or an ``.npz`` lacks its arrays.
    """
    root = Path(reference)
    index = {cid: i for i, cid in enumerate(class_ids)}
    if root.is_file() and root.suffix == ".npz":
        try:
            with np.load(root, allow_pickle=False) as data:
                clip, ids = np.asarray(data["clip"], np.float32), [str(x) for x in data["class_ids"]]
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(f"reference {root} must be an .npz with arrays 'clip' (N×D) and 'class_ids' (N): "
                            f"{exc}") from None
        unknown = sorted(set(ids) - set(index))
        if unknown:
            raise UserError(f"reference {root} has class(es) the run lacks: {', '.join(unknown[:5])}"
                            f"{' …' if len(unknown) > 5 else ''}")
        if clip.ndim != 2 or len(clip) != len(ids):
            raise UserError(f"reference {root}: 'clip' has shape {clip.shape} but 'class_ids' has {len(ids)} rows")
        acc = ClassAccumulator(len(class_ids), clip.shape[1], cfg.sample_per_class)
        acc.add(np.array([index[c] for c in ids], dtype=np.int64), clip,
                sample_priority(f"{c}/{i}" for i, c in enumerate(ids)))
        return acc
    if not root.is_dir():
        raise UserError(f"reference not found: {root} (a folder of class subfolders, or an .npz of CLIP embeddings)")
    files = _reference_files(root, index)
    h = hashlib.sha256(f"{clip_model}\n{cfg.sample_per_class}\n".encode())
    for f, _ in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    cache = paths.diagnosis_cache / f"reference-{h.hexdigest()[:24]}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            return ClassAccumulator.from_arrays({k: data[k] for k in data.files}, cfg.sample_per_class)
    from imagenet_plus.score.scorers.clip import ClipScorer

    scorer = ClipScorer(clip_model, _device(cfg.device))
    acc = ClassAccumulator(len(class_ids), scorer.dim, cfg.sample_per_class)
    batch: list[tuple[Any, int, str]] = []
    for item in _iter_decoded(files):
        batch.append(item)
        if len(batch) == cfg.batch_size:
            _embed_batch(scorer, batch, acc, root)
            batch = []
    if batch:
        _embed_batch(scorer, batch, acc, root)
    from imagenet_plus.io.atomic import atomic_file

    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(cache) as f:
        np.savez(f, **acc.to_arrays())
    return acc


def _embed_batch(scorer: Any, batch: list[tuple[Any, int, str]], acc: ClassAccumulator, root: Path) -> None:
    emb = scorer.embed_images([b[0] for b in batch]).cpu().numpy()
    acc.add(np.array([b[1] for b in batch]), emb, sample_priority(str(Path(b[2]).relative_to(root)) for b in batch))


def _clip_model_of(paths: RunPaths) -> str:
    for source in (paths.models_json, paths.summary_json):
        if source.is_file():
            data = read_json(source)
            name = data.get("clip") if source == paths.models_json else (data.get("models") or {}).get("clip")
            if name:
                return str(name)
    raise UserError(f"{paths.models_json} does not name the run's CLIP model: re-run 'imagenet-plus score'")


def _shared_lemmas(records: Sequence[Mapping[str, Any]]) -> list[tuple[list[str], list[str]]]:
    """Per class: the lemmas (lower-case) it shares with other classes of the set, and those classes' ids."""
    owners: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        for lemma in {" ".join(str(x).lower().split()) for x in [r.get("name", ""), *r.get("lemmas", [])]} - {""}:
            owners.setdefault(lemma, []).append(i)
    out: list[tuple[list[str], list[str]]] = []
    for i, r in enumerate(records):
        lemmas = {" ".join(str(x).lower().split()) for x in [r.get("name", ""), *r.get("lemmas", [])]} - {""}
        shared = sorted(lem for lem in lemmas if len(owners[lem]) > 1)
        others = sorted({str(records[j]["id"]) for lem in shared for j in owners[lem] if j != i})
        out.append((shared, others))
    return out


def _sense_counts(names: Sequence[str]) -> list[int | None]:
    """WordNet noun senses of each class name (None for all when WordNet is not installed)."""
    try:
        from imagenet_plus.classes.wordnet import noun_sense_count

        return [noun_sense_count(n) for n in names]
    except UserError:
        return [None] * len(names)


# ------------------------------------------------------------------------------------------------------------
# the stage


def diagnose_frame(records: Sequence[Mapping[str, Any]], text_emb: np.ndarray, scores: Mapping[str, Any],
                   real: ClassAccumulator | None, cfg: DiagnoseConfig,
                   sense_counts: Sequence[int | None] | None = None) -> tuple[Any, dict[str, Any]]:
    """The per-class diagnosis table and the run-level summary, from what :func:`_read_scores` accumulated.

    Args:
        records: the class set (``classes.json`` entries, label order).
        text_emb: ``C×D`` class text embeddings.
        scores: per-class sums of the synthetic side.
        real: per-class sums of the real reference, or None.
        cfg: thresholds.
        sense_counts: WordNet noun senses per class name (looked up when None).
    """
    import pandas as pd

    acc: ClassAccumulator = scores["acc"]
    num_classes = len(records)
    ids = [str(r["id"]) for r in records]
    names = [str(r["name"]) for r in records]
    sense_counts = list(sense_counts) if sense_counts is not None else _sense_counts(names)
    shared = _shared_lemmas(records)
    twins = text_twins(text_emb, cfg.text_twin_cosine)
    count = acc.count
    syn_centroid = acc.centroids()
    spread = rms_spread(count, acc.emb_sum, acc.sq_norm_sum)
    pairwise = mean_pairwise_dot(count, acc.emb_sum, acc.sq_norm_sum)
    vendi = np.array([vendi_cosine(acc.sample(c)) for c in range(num_classes)])
    gap = modality_gap(syn_centroid, text_emb)
    text_nearest, _ = nearest_rows(syn_centroid, text_emb)
    with np.errstate(invalid="ignore", divide="ignore"):
        confusion = np.where(count > 0, scores["confused"] / np.maximum(count, 1), np.nan)
        top_other_share = np.where(count > 0, scores["top_other_count"] / np.maximum(count, 1), np.nan)
    nan = np.full(num_classes, np.nan)
    real_count = np.zeros(num_classes, dtype=np.int64)
    real_vendi = real_pairwise = real_spread = real_gap = centroid_cos = nearest_real_cos = nan
    nearest_real = np.full(num_classes, -1)
    if real is not None:
        real_count = real.count
        real_centroid = real.centroids()
        real_vendi = np.array([vendi_cosine(real.sample(c)) for c in range(num_classes)])
        real_pairwise = mean_pairwise_dot(real_count, real.emb_sum, real.sq_norm_sum)
        real_spread = rms_spread(real_count, real.emb_sum, real.sq_norm_sum)
        real_gap = modality_gap(real_centroid, text_emb)
        centroid_cos = rowwise_cosine(syn_centroid, real_centroid)
        nearest_real, nearest_real_cos = nearest_rows(syn_centroid, real_centroid)
    with np.errstate(invalid="ignore", divide="ignore"):
        vendi_ratio = vendi / real_vendi
        pairwise_ratio = pairwise / real_pairwise
        spread_ratio = spread / real_spread
    means = scores["means"]
    top5_counts = scores["counts"][COL_CLASSIFIER_TOP5]
    rows = []
    for c in range(num_classes):
        has_real = real is not None and real_count[c] > 0
        if has_real:
            concept_other = bool(nearest_real[c] >= 0 and nearest_real[c] != c)
        else:
            concept_other = bool(count[c] > 0 and text_nearest[c] >= 0 and text_nearest[c] != c)
        senses = sense_counts[c]
        name_evidence = bool(shared[c][0] or (senses is not None and senses > 1) or twins[c])
        top5 = float(means[COL_CLASSIFIER_TOP5][c]) if top5_counts[c] > 0 else None
        ev = ClassEvidence(
            name_evidence=name_evidence, confusion_share=float(confusion[c]), concept_other=concept_other,
            vendi=float(vendi[c]), mean_pairwise_similarity=float(pairwise[c]), vendi_ratio=float(vendi_ratio[c]),
            clip_class_prob_mean=float(means[COL_CLIP_CLASS_PROB][c]), classifier_top5_rate=top5,
        )
        flags = class_flags(ev, cfg) if count[c] > 0 else []
        verdict = verdict_of(flags)
        other = int(scores["top_other"][c])
        rows.append({
            "label": c, "class_id": ids[c], "name": names[c], "count": int(count[c]), "real_count": int(real_count[c]),
            "verdict": verdict, "flags": ",".join(flags), "remedy": REMEDIES[verdict],
            "strategy": REMEDY_STRATEGIES.get(verdict),
            "shared_lemmas": "; ".join(shared[c][0]), "shared_with": "; ".join(shared[c][1]),
            "wordnet_senses": senses, "text_twins": "; ".join(ids[j] for j in twins[c]),
            "confusion_share": float(confusion[c]), "confused_with": ids[other] if other >= 0 else None,
            "confused_with_share": float(top_other_share[c]) if other >= 0 else 0.0,
            "clip_score_mean": float(means[COL_CLIP_SCORE][c]),
            "clip_class_prob_mean": float(means[COL_CLIP_CLASS_PROB][c]),
            "classifier_top1_rate": float(means[COL_CLASSIFIER_TOP1][c]),
            "classifier_top5_rate": float(means[COL_CLASSIFIER_TOP5][c]),
            "vendi": float(vendi[c]), "real_vendi": float(real_vendi[c]), "vendi_ratio": float(vendi_ratio[c]),
            "mean_pairwise_similarity": float(pairwise[c]), "real_mean_pairwise_similarity": float(real_pairwise[c]),
            "pairwise_similarity_ratio": float(pairwise_ratio[c]),
            "zero_shot_centroid_class": ids[text_nearest[c]] if text_nearest[c] >= 0 else None,
            "nearest_real_class": ids[nearest_real[c]] if nearest_real[c] >= 0 else None,
            "nearest_real_cosine": float(nearest_real_cos[c]),
            "centroid_cosine": float(centroid_cos[c]),
            "spread": float(spread[c]), "real_spread": float(real_spread[c]), "spread_ratio": float(spread_ratio[c]),
            "modality_gap": float(gap[c]), "real_modality_gap": float(real_gap[c]),
        })
    frame = pd.DataFrame(rows)
    frame["wordnet_senses"] = frame["wordnet_senses"].astype("Int64")
    summary = _summary(frame, acc, real, text_emb, cfg)
    return frame, summary


def overall_geometry(acc: ClassAccumulator, real: ClassAccumulator | None, text_emb: np.ndarray) -> dict[str, Any]:
    """Run-level CLIP geometry: all synthetic images vs all real ones and vs the texts of their classes.

    ``centroid_cosine``: cosine of the global synthetic and real centroids; ``spread``/``real_spread``: RMS
    distance of every image to the global centroid of its side; ``modality_gap``: distance between the
    synthetic image centroid and the mean of the class texts weighted by image counts (Liang et al. 2022).
    """

    def side(a: ClassAccumulator) -> tuple[float, np.ndarray, float]:
        n = int(a.count.sum())
        total = a.emb_sum.sum(axis=0)
        spread = rms_spread(np.array([n]), total[None], np.array([a.sq_norm_sum.sum()]))[0]
        return n, total / max(n, 1), float(spread)

    n, syn_mean, syn_spread = side(acc)
    text_mean = (acc.count[:, None] * np.asarray(text_emb, np.float64)).sum(axis=0) / max(n, 1)
    out: dict[str, Any] = {"images": n, "spread": syn_spread,
                           "modality_gap": float(np.linalg.norm(syn_mean - text_mean)),
                           "real_images": None, "real_spread": None, "centroid_cosine": None,
                           "real_modality_gap": None}
    if real is not None:
        rn, real_mean, real_spread = side(real)
        real_text = (real.count[:, None] * np.asarray(text_emb, np.float64)).sum(axis=0) / max(rn, 1)
        out.update(real_images=rn, real_spread=real_spread,
                   centroid_cosine=float(rowwise_cosine(syn_mean[None], real_mean[None])[0]),
                   real_modality_gap=float(np.linalg.norm(real_mean - real_text)))
    return out


def _severity_order(frame: Any) -> Any:
    rank = {v: i for i, v in enumerate((*VERDICTS, VERDICT_OK))}
    return frame.assign(_r=frame["verdict"].map(rank)).sort_values(
        ["_r", "clip_class_prob_mean", "label"], na_position="first").drop(columns="_r")


def _summary(frame: Any, acc: ClassAccumulator, real: ClassAccumulator | None, text_emb: np.ndarray,
             cfg: DiagnoseConfig) -> dict[str, Any]:
    flagged = _severity_order(frame[frame["verdict"] != VERDICT_OK])
    counts = {v: int((frame["verdict"] == v).sum()) for v in (*VERDICTS, VERDICT_OK)}
    return {
        "thresholds": {k: v for k, v in asdict(cfg).items() if k not in ("reference", "device", "batch_size")},
        "reference": cfg.reference,
        "note": None if real is not None else
        "no real reference: real-side columns are null; concept-failure is judged against the class texts",
        "classes": len(frame),
        "verdict_counts": counts,
        "flagged_classes": [
            {"class_id": r.class_id, "name": r.name, "verdict": r.verdict, "flags": r.flags, "remedy": r.remedy}
            for r in flagged.head(cfg.worst).itertuples()
        ],
        "strategies": remedy_strategies(frame),
        "geometry": overall_geometry(acc, real, text_emb),
    }


def remedy_strategies(frame: Any) -> dict[str, str]:
    """``{class_id: prompt strategy}`` for flagged classes a prompt strategy can help (for ``generate --top-up``).

    ``concept-failure`` classes are left out (no prompt fixes them: drop them or change the model).
    """
    return {str(r.class_id): str(r.strategy) for r in frame.itertuples()
            if r.verdict != VERDICT_OK and isinstance(r.strategy, str) and r.strategy}


def read_remedy_strategies(run: str | Path) -> dict[str, str]:
    """``{class_id: prompt strategy}`` of a diagnosed run (``RUN/diagnosis.json``); empty when not diagnosed."""
    paths = run_paths(run)
    if not paths.diagnosis_json.is_file():
        return {}
    data = read_json(paths.diagnosis_json)
    strategies = data.get("strategies") if isinstance(data, dict) else None
    if not isinstance(strategies, dict):
        raise UserError(f"{paths.diagnosis_json} lacks the 'strategies' object: re-run 'imagenet-plus diagnose'")
    return {str(k): str(v) for k, v in strategies.items()}


def run_diagnose(run: str | Path, cfg: DiagnoseConfig | None = None) -> dict[str, Any]:
    """Diagnose every class of a scored run; writes ``RUN/diagnosis.parquet``, ``.json`` and ``_centroids.npz``.

    Returns:
        The ``diagnosis.json`` content.

    Raises:
        UserError: the run is not scored, its score files disagree, or the reference is unusable.
    """
    from imagenet_plus.io.atomic import atomic_file, write_json_atomic

    cfg = cfg or DiagnoseConfig()
    paths = run_paths(run)
    if not paths.summary_json.is_file() or not paths.scored_parquets():
        raise UserError(f"{paths.root} is not scored ({paths.summary_json} missing): run 'imagenet-plus score' first")
    if not paths.class_text_embeddings.is_file():
        raise UserError(f"{paths.class_text_embeddings} missing: re-run 'imagenet-plus score'")
    records = read_class_records(paths)
    text_emb = np.load(paths.class_text_embeddings).astype(np.float32)
    if text_emb.ndim != 2 or len(text_emb) != len(records):
        raise UserError(f"{paths.class_text_embeddings} has {len(text_emb)} rows but the run has {len(records)} "
                        "classes: re-run 'imagenet-plus score'")
    real = None
    if cfg.reference is not None:
        real = load_reference_embeddings(cfg.reference, paths, [str(r["id"]) for r in records],
                                         _clip_model_of(paths), cfg)
        if real.emb_sum.shape[1] != text_emb.shape[1]:
            raise UserError(f"reference {cfg.reference} has CLIP embeddings of size {real.emb_sum.shape[1]}, the run "
                            f"{text_emb.shape[1]}: embed it with the run's CLIP model")
    scores = _read_scores(paths, len(records), text_emb, cfg.sample_per_class)
    frame, summary = diagnose_frame(records, text_emb, scores, real, cfg)
    with atomic_file(paths.diagnosis_parquet) as f:
        frame.to_parquet(f, index=False)
    write_centroids(paths.diagnosis_centroids, [str(r["id"]) for r in records], scores["acc"].centroids(),
                    real.centroids() if real is not None else None)
    summary = json_safe(summary)
    write_json_atomic(paths.diagnosis_json, summary)
    return summary


def write_centroids(path: Path, class_ids: Sequence[str], synthetic: np.ndarray, real: np.ndarray | None) -> None:
    """Write the per-class centroids (``RUN/diagnosis_centroids.npz``, atomically) for the report's map.

    Args:
        path: the ``.npz`` to write.
        class_ids: the class of each row (label order).
        synthetic: ``C×D`` synthetic centroids (NaN rows for classes without images).
        real: ``C×D`` real centroids, or None without a reference (the array is then left out).
    """
    from imagenet_plus.io.atomic import atomic_file

    arrays = {CENTROIDS_SYNTHETIC: np.asarray(synthetic, np.float32),
              CENTROIDS_CLASS_IDS: np.asarray([str(c) for c in class_ids], dtype=np.str_)}
    if real is not None:
        arrays[CENTROIDS_REAL] = np.asarray(real, np.float32)
    with atomic_file(path) as f:
        np.savez(f, **arrays)


def json_safe(value: Any) -> Any:
    """NaN and infinities → None, numpy scalars → Python ones, recursively (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
