"""Metric math as pure functions of features: per-image scores and dataset metrics.

Dataset metrics (FID, KID, Inception Score, precision/recall) go through torch-fidelity's own
feature → statistics → metric functions, so they equal ``torch_fidelity.calculate_metrics`` on the same
features. What torch-fidelity has no function for is written here, each with its definition:

- CLIP score (torchmetrics' definition): ``100 · max(cos(image, text), 0)``;
- zero-shot class probability and rank: softmax over all class texts of ``logit_scale · cos``;
- per-image Inception-Score term: ``KL(p(y|x) ‖ p(y))`` against the dataset marginal, so that
  ``exp(mean(isc_kl))`` is torch-fidelity's Inception Score with one split;
- realism score (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric", §5);
- Vendi score (Friedman & Dieng 2023) — three lines of linear algebra; the ``vendi-score`` package on PyPI
  is unmaintained since 2022 and would add a dependency for them;
- near-duplicates within a class (cosine similarity of CLIP image embeddings ≥ a threshold).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Nearest neighbour used by precision/recall and the realism score (torch-fidelity's default).
NEIGHBORHOOD = 3
#: Cosine similarity of CLIP image embeddings at or above which two images of a class are duplicates.
DUPLICATE_COSINE = 0.95
#: KID subset size and count (torch-fidelity's defaults; the subset shrinks to the smaller set's size).
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100
#: Inception Score splits and the seed of their shuffle (torch-fidelity's defaults).
ISC_SPLITS = 10
ISC_SEED = 2020
#: Float32 elements of one block of pairwise distances (128 MiB): k-NN work is done in blocks of this size.
DISTANCE_BLOCK_ELEMENTS = 1 << 25
#: Rows of logits turned into float64 probabilities at a time (bounded temporaries, about 16 MiB each).
LOGIT_CHUNK_ROWS = 2048


def _tensor(x: Any, dtype: Any = None) -> Any:
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))  # a copy: memmaps are read-only
    return t.to(dtype) if dtype is not None else t


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def clip_score(image_emb: Any, text_emb: Any) -> np.ndarray:
    """Per-row CLIP score ``100 · max(cos(image_i, text_i), 0)`` (torchmetrics' ``CLIPScore`` per image).

    Args:
        image_emb: ``N×D`` image embeddings (normalised or not).
        text_emb: ``N×D`` text embeddings, row ``i`` paired with image ``i``.
    """
    cos = np.sum(_normalize(image_emb) * _normalize(text_emb), axis=1)
    return 100.0 * np.maximum(cos, 0.0)


def zero_shot(image_emb: Any, class_emb: Any, targets: Any, logit_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """CLIP zero-shot check: the target class's softmax probability and its rank (1 = best) among all classes.

    Args:
        image_emb: ``N×D`` image embeddings.
        class_emb: ``C×D`` embeddings of the class texts, in label order.
        targets: ``N`` target labels.
        logit_scale: CLIP's temperature ``exp(logit_scale)`` (100 for OpenAI's models).
    """
    logits = logit_scale * (_normalize(image_emb) @ _normalize(class_emb).T)
    targets = np.asarray(targets, dtype=np.int64)
    logits = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    rows = np.arange(len(targets))
    target_logit = logits[rows, targets]
    rank = 1 + np.sum(logits > target_logit[:, None], axis=1)
    return prob[rows, targets], rank.astype(np.int64)


def isc_probability_sum(logits: Any) -> np.ndarray:
    """Sum over images of ``p(y|x) = softmax(logits)`` in float64 (accumulate shard by shard for the marginal).

    Works through ``logits`` in chunks of :data:`LOGIT_CHUNK_ROWS` rows (a memory map is read chunk by chunk).
    """
    total = np.zeros(np.shape(logits)[1], dtype=np.float64)
    for start in range(0, len(logits), LOGIT_CHUNK_ROWS):
        total += _tensor(logits[start : start + LOGIT_CHUNK_ROWS]).double().softmax(dim=1).sum(dim=0).numpy()
    return total


def isc_kl(logits: Any, marginal: Any) -> np.ndarray:
    """Per-image ``KL(p(y|x) ‖ p(y))`` with ``p(y|x) = softmax(logits)`` (float64, as torch-fidelity).

    Args:
        logits: ``N×C`` torch-fidelity ``logits_unbiased`` (worked through in chunks of :data:`LOGIT_CHUNK_ROWS`).
        marginal: ``C`` dataset marginal ``p(y)`` (mean of ``p(y|x)`` over every image of the dataset).
    """
    log_q = _tensor(marginal).double().log()[None, :]
    out = np.zeros(len(logits), dtype=np.float64)
    for start in range(0, len(logits), LOGIT_CHUNK_ROWS):
        feature = _tensor(logits[start : start + LOGIT_CHUNK_ROWS]).double()
        p = feature.softmax(dim=1)
        out[start : start + len(feature)] = (p * (feature.log_softmax(dim=1) - log_q)).sum(dim=1).numpy()
    return out


class InceptionScoreSplits:
    """torch-fidelity's Inception Score (``isc_features_to_metric``) over logits that arrive in chunks.

    torch-fidelity shuffles the ``n`` rows with ``np.random.RandomState(seed).permutation(n)`` and cuts the
    shuffled order into ``splits`` contiguous parts, each scored against its own marginal. Here each row's
    part is known from its index, so two streaming passes give the same numbers: :meth:`add_probabilities`
    (every chunk, in row order) sums ``p(y|x)`` per part, then :meth:`add_kl` (every chunk again) sums each
    row's KL against its part's marginal. State: ``splits × C`` float64 sums and two bytes per row.
    """

    def __init__(self, num_rows: int, num_logits: int, splits: int = ISC_SPLITS, seed: int = ISC_SEED) -> None:
        self.num_rows = num_rows
        self.splits = max(1, min(splits, num_rows))
        position = np.empty(num_rows, dtype=np.int64)
        position[np.random.RandomState(seed).permutation(num_rows)] = np.arange(num_rows)
        bounds = np.array([i * num_rows // self.splits for i in range(self.splits + 1)])
        self.part = (np.searchsorted(bounds, position, side="right") - 1).astype(np.int16)
        self.counts = np.bincount(self.part, minlength=self.splits)
        self.prob_sums = np.zeros((self.splits, num_logits), dtype=np.float64)
        self.kl_sums = np.zeros(self.splits, dtype=np.float64)

    def _one_hot(self, start: int, count: int) -> np.ndarray:
        part = self.part[start : start + count]
        out = np.zeros((count, self.splits), dtype=np.float64)
        out[np.arange(count), part] = 1.0
        return out

    def add_probabilities(self, start: int, logits: Any) -> None:
        """Add the ``p(y|x)`` of rows ``start … start + len(logits) - 1`` to their parts' sums."""
        for begin in range(0, len(logits), LOGIT_CHUNK_ROWS):
            p = _tensor(logits[begin : begin + LOGIT_CHUNK_ROWS]).double().softmax(dim=1).numpy()
            self.prob_sums += self._one_hot(start + begin, len(p)).T @ p

    def add_kl(self, start: int, logits: Any) -> np.ndarray:
        """Add each row's KL against its part's marginal (call after every :meth:`add_probabilities`).

        Returns:
            Each row's ``KL(p(y|x) ‖ p(y))`` against the whole dataset's marginal (the per-image ``isc_kl``).
        """
        log_parts = np.log(self.prob_sums / np.maximum(self.counts, 1)[:, None])
        log_all = np.log(self.marginal())
        out = np.zeros(len(logits), dtype=np.float64)
        for begin in range(0, len(logits), LOGIT_CHUNK_ROWS):
            feature = _tensor(logits[begin : begin + LOGIT_CHUNK_ROWS]).double()
            p = feature.softmax(dim=1).numpy()
            entropy = (p * feature.log_softmax(dim=1).numpy()).sum(axis=1)  # Σ p log p
            one_hot = self._one_hot(start + begin, len(p))
            self.kl_sums += one_hot.T @ (entropy - ((p @ log_parts.T) * one_hot).sum(axis=1))
            out[begin : begin + len(p)] = entropy - p @ log_all
        return out

    def marginal(self) -> np.ndarray:
        """The whole dataset's ``p(y)`` (after :meth:`add_probabilities` saw every row)."""
        return self.prob_sums.sum(axis=0) / max(self.num_rows, 1)

    def score(self) -> tuple[float, float]:
        """(mean, std) over the parts of ``exp(mean KL)``, as torch-fidelity."""
        scores = np.exp(self.kl_sums / np.maximum(self.counts, 1))
        return float(np.mean(scores)), float(np.std(scores))


def inception_score(logits: Any, splits: int = ISC_SPLITS) -> tuple[float, float]:
    """Inception Score (mean, std over splits) via torch-fidelity's ``isc_features_to_metric``."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    feats = _tensor(logits, dtype=None).float()
    splits = max(1, min(splits, len(feats)))
    out = isc_features_to_metric(feats, splits=splits, shuffle=True, rng_seed=2020)
    return float(out[KEY_METRIC_ISC_MEAN]), float(out[KEY_METRIC_ISC_STD])


def fid_statistics(features: Any) -> dict[str, np.ndarray]:
    """``{"mu", "sigma"}`` of ``N×2048`` features by torch-fidelity's ``fid_features_to_statistics``."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(_tensor(features).float().cpu())


def fid_from_statistics(stat_1: dict[str, np.ndarray], stat_2: dict[str, np.ndarray]) -> float:
    """FID between two statistics by torch-fidelity's ``fid_statistics_to_metric`` (dtypes aligned first)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    def cast(stat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"mu": np.asarray(stat["mu"], dtype=np.float32), "sigma": np.asarray(stat["sigma"], dtype=np.float64)}

    return float(fid_statistics_to_metric(cast(stat_1), cast(stat_2), verbose=False)[KEY_METRIC_FID])


def fid(features_1: Any, features_2: Any) -> float:
    """FID between two feature sets (each needs at least 2 rows)."""
    return fid_from_statistics(fid_statistics(features_1), fid_statistics(features_2))


def fid_small_set(features_1: Any, features_2: Any) -> float:
    """FID when one set has fewer images than feature dimensions (per-class FID), exact and much faster.

    torch-fidelity takes ``tr sqrt(Σ1 Σ2)`` from the eigenvalues of the D×D product (D = 2048: seconds per
    call, an hour for 1000 classes). With ``Σ1 = AᵀA`` and ``Σ2 = BᵀB`` (``A``, ``B`` the centred features over
    ``sqrt(n − 1)``), the non-zero eigenvalues of ``Σ1 Σ2`` are the squared singular values of the n1×n2
    matrix ``A Bᵀ``, so ``tr sqrt(Σ1 Σ2)`` is the sum of its singular values; the traces are ``‖A‖²`` and
    ``‖B‖²``. When the second set has more rows than D, the n1×n1 matrix ``A Σ2 Aᵀ`` is used instead. Equal to
    :func:`fid` up to rounding; when the first set has more rows than D, :func:`fid` is used.
    """
    f1 = np.asarray(features_1, dtype=np.float32)
    f2 = np.asarray(features_2, dtype=np.float32)
    if len(f1) - 1 >= f1.shape[1]:
        return fid(features_1, features_2)
    a = (f1.astype(np.float64) - f1.mean(axis=0, dtype=np.float64)) / np.sqrt(len(f1) - 1)
    b = (f2.astype(np.float64) - f2.mean(axis=0, dtype=np.float64)) / np.sqrt(len(f2) - 1)
    if len(f2) - 1 >= f2.shape[1]:  # a large second set: the n1×n1 matrix A Σ2 Aᵀ
        small = a @ (b.T @ b) @ a.T
        tr_covmean = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((small + small.T) / 2), 0, None))))
    else:
        tr_covmean = float(np.sum(np.linalg.svd(a @ b.T, compute_uv=False)))
    diff = f1.mean(axis=0).astype(np.float64) - f2.mean(axis=0).astype(np.float64)  # float32 means, as torch-fidelity
    return float(diff @ diff + np.sum(a * a) + np.sum(b * b) - 2 * tr_covmean)


class RunningMoments:
    """Mean and covariance of feature rows that arrive in chunks: FID statistics in fixed memory.

    Rows are gathered in a fixed ``chunk_rows×D`` float32 buffer; each full chunk is centred on its own mean,
    its scatter matrix computed in float32 (one BLAS product) and merged into float64 sums with Chan et al.'s
    pairwise update: no cancellation, and a ``D×D`` float64 state (32 MiB for D = 2048) whatever the number
    of rows. :meth:`statistics` equals torch-fidelity's
    ``fid_features_to_statistics`` (``np.mean`` and ``np.cov``) on the concatenated rows up to rounding.
    """

    def __init__(self, dim: int, chunk_rows: int = 4096) -> None:
        self.count = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self.scatter = np.zeros((dim, dim), dtype=np.float64)
        self.chunk_rows = chunk_rows
        self._buffer = np.zeros((chunk_rows, dim), dtype=np.float32)
        self._buffered = 0

    def update(self, rows: Any) -> None:
        """Add ``n×D`` rows (any float dtype; a memory map is read a chunk at a time into a fixed buffer)."""
        start = 0
        while start < len(rows):
            take = min(len(rows) - start, self.chunk_rows - self._buffered)
            self._buffer[self._buffered : self._buffered + take] = rows[start : start + take]
            self._buffered += take
            start += take
            if self._buffered == self.chunk_rows:
                self._flush()

    def _flush(self) -> None:
        import torch

        n = self._buffered
        if n == 0:
            return
        x = self._buffer[:n]
        mean = x.mean(axis=0, dtype=np.float64)
        centred = torch.from_numpy(x - mean.astype(np.float32))
        scatter = (centred.T @ centred).numpy()
        total = self.count + n
        delta = mean - self.mean
        self.scatter += scatter
        self.scatter += np.outer(delta, delta * (self.count * n / total))
        self.mean += delta * (n / total)
        self.count = total
        self._buffered = 0

    def statistics(self) -> dict[str, np.ndarray]:
        """``{"mu", "sigma"}`` as torch-fidelity's ``fid_features_to_statistics`` (needs at least 2 rows)."""
        self._flush()
        return {"mu": self.mean.astype(np.float32), "sigma": self.scatter / max(self.count - 1, 1)}


def kid(features_1: Any, features_2: Any, subset_size: int = KID_SUBSET_SIZE,
        subsets: int = KID_SUBSETS) -> tuple[float, float]:
    """KID (mean, std) by torch-fidelity's ``kid_features_to_metric`` (subset size capped by the smaller set)."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    f1, f2 = _tensor(features_1).float().cpu(), _tensor(features_2).float().cpu()
    size = min(subset_size, len(f1), len(f2))
    out = kid_features_to_metric(f1, f2, kid_subsets=subsets, kid_subset_size=size, verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def _block_rows(num_columns: int, budget: int = DISTANCE_BLOCK_ELEMENTS) -> int:
    """Rows of a distance block with ``num_columns`` columns that fit in ``budget`` float32 elements."""
    return max(1, budget // max(1, num_columns))


def knn_radii(real: Any, neighborhood: int = NEIGHBORHOOD, batch_size: int | None = None, device: Any = "cpu") -> Any:
    """Distance of each feature to its ``neighborhood``-th nearest other feature (float32 tensor, on ``device``).

    The ``(neighborhood + 1)``-th smallest distance of each row to every row (itself included, at 0), as
    torch-fidelity's ``kthvalue(neighborhood + 1)``; computed in row blocks of bounded size (on a GPU when
    ``device`` is one).
    """
    import torch

    r = _tensor(real).float().to(device)
    rows = batch_size or _block_rows(len(r))
    out = [torch.cdist(chunk, r).topk(neighborhood + 1, dim=1, largest=False).values[:, -1] for chunk in r.split(rows)]
    return torch.cat(out) if out else torch.zeros(0, device=device)


def precision_recall(generated: Any, real: Any, neighborhood: int = NEIGHBORHOOD,
                     device: Any = "cpu") -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019), as torch-fidelity's ``prc_features_to_metric``.

    Precision: the share of generated features inside at least one real k-NN ball; recall: the share of real
    features inside at least one generated k-NN ball (a point is inside when its distance is ≤ the radius).
    torch-fidelity's definition computed in bounded blocks: the generated×real distances are computed once
    (torch-fidelity computes them twice), on ``device`` (a GPU makes 50,000 per side take seconds).
    """
    import torch

    g = _tensor(generated).float().to(device)
    r = _tensor(real).float().to(device)
    radii_real = knn_radii(r, neighborhood, device=device)
    radii_gen = knn_radii(g, neighborhood, device=device)
    precise = torch.zeros(len(g), dtype=torch.bool, device=device)
    recalled = torch.zeros(len(r), dtype=torch.bool, device=device)
    rows = _block_rows(len(r))
    for start in range(0, len(g), rows):
        dist = torch.cdist(g[start : start + rows], r)
        precise[start : start + rows] = (dist <= radii_real[None, :]).any(dim=1)
        recalled |= (dist <= radii_gen[start : start + rows, None]).any(dim=0)
    return float(precise.float().mean().item()), float(recalled.float().mean().item())


def realism_reference(real: Any, neighborhood: int = NEIGHBORHOOD, prune: bool = True,
                      device: Any = "cpu") -> tuple[Any, Any]:
    """The real k-NN balls the realism score uses: (centres ``M'×D``, radii ``M'``) on ``device``.

    With ``prune`` (as in the paper), the half of the real features with the largest radii is dropped.
    Computed once, then :func:`realism_from_balls` scores generated features in any number of chunks.
    """
    import torch

    r = _tensor(real).float().to(device)
    radii = knn_radii(r, neighborhood, device=device)
    if prune:
        keep = torch.argsort(radii, stable=True)[: (len(radii) + 1) // 2]
        r, radii = r[keep], radii[keep]
    return r, radii


def realism_from_balls(generated: Any, centres: Any, radii: Any, batch_size: int | None = None) -> np.ndarray:
    """``R(g) = max_r radius(r) / ‖g − r‖`` of each generated feature against balls from :func:`realism_reference`."""
    import torch

    rows = batch_size or _block_rows(len(centres))
    out = []
    for chunk in _tensor(generated).float().split(rows):
        dist = torch.cdist(chunk.to(centres.device), centres).clamp_min(1e-12)
        out.append((radii[None, :] / dist).max(dim=1).values.cpu())
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def realism_scores(generated: Any, real: Any, neighborhood: int = NEIGHBORHOOD, prune: bool = True,
                   batch_size: int | None = None, device: Any = "cpu") -> np.ndarray:
    """Realism score of each generated feature (Kynkäänniemi et al. 2019, §5).

    ``R(g) = max_r radius_k(r) / ‖g − r‖`` over real features ``r``, where ``radius_k(r)`` is the distance
    from ``r`` to its ``k``-th nearest real neighbour. As in the paper, the half of the real features with
    the largest radii is discarded first (``prune``) so that outliers do not inflate the score. ``R ≥ 1``
    means ``g`` lies inside at least one real k-NN ball (it would count towards precision).

    Args:
        generated: ``N×D`` generated features.
        real: ``M×D`` real features (``M > neighborhood``).
        neighborhood: ``k``.
        prune: drop the real features with the largest half of the radii.
        batch_size: generated rows per distance block (default: blocks of a bounded size).
        device: where the distances are computed (a GPU makes ImageNet-sized sets fast).
    """
    centres, radii = realism_reference(real, neighborhood, prune, device)
    return realism_from_balls(generated, centres, radii, batch_size)


def vendi_score(embeddings: Any) -> float:
    """Vendi score (Friedman & Dieng 2023) with the cosine kernel: ``exp(−Σ λ log λ)``, λ eigenvalues of ``K/n``.

    Between 1 (all images the same) and ``n`` (pairwise orthogonal embeddings). Computed from the ``D×D``
    matrix ``XᵀX/n``, which has the same non-zero eigenvalues as ``XXᵀ/n``.
    """
    x = _normalize(embeddings)
    n = len(x)
    if n == 0:
        return 0.0
    gram = (x.T @ x) / n if x.shape[1] < n else (x @ x.T) / n
    lam = np.linalg.eigvalsh(gram)
    lam = lam[lam > 1e-12]
    return float(np.exp(-np.sum(lam * np.log(lam))))


def near_duplicates(embeddings: Any, keys: list[str], threshold: float = DUPLICATE_COSINE,
                    batch_size: int = 2048) -> list[str | None]:
    """For each image, the key of the first earlier image (in the given order) with cosine ≥ ``threshold``.

    The first image of each group of near-duplicates gets ``None``; the others point at it (or at an earlier
    member), so "drop every row whose dup_of is set" keeps one image per group.
    """
    x = _normalize(embeddings)
    out: list[str | None] = [None] * len(keys)
    for start in range(0, len(x), batch_size):
        block = x[start : start + batch_size] @ x.T
        for row, sims in enumerate(block):
            i = start + row
            hits = np.nonzero(sims[:i] >= threshold)[0]
            if len(hits):
                out[i] = keys[int(hits[0])]
    return out
