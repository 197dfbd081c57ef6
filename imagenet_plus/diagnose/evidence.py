"""The diagnosis's evidence, as pure functions of CLIP embeddings: centroids, spreads, pairwise similarity,
Vendi score, modality gap, nearest classes, zero-shot confusion, text twins, and the per-class running sums
(:class:`ClassAccumulator`) that keep memory bounded by the number of classes.

Written with numpy rather than taken from a library: each figure is a line or two of linear algebra on
per-class running sums (``sklearn``'s pairwise helpers would need every embedding in memory at once), and
tests check each against a direct computation on all the embeddings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np


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
