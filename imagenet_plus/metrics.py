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
#: Inception Score splits (torch-fidelity's default).
ISC_SPLITS = 10


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
    """Sum over images of ``p(y|x) = softmax(logits)`` in float64 (accumulate shard by shard for the marginal)."""
    return _tensor(logits).double().softmax(dim=1).sum(dim=0).numpy()


def isc_kl(logits: Any, marginal: Any) -> np.ndarray:
    """Per-image ``KL(p(y|x) ‖ p(y))`` with ``p(y|x) = softmax(logits)`` (float64, as torch-fidelity).

    Args:
        logits: ``N×C`` torch-fidelity ``logits_unbiased``.
        marginal: ``C`` dataset marginal ``p(y)`` (mean of ``p(y|x)`` over every image of the dataset).
    """
    feature = _tensor(logits).double()
    p = feature.softmax(dim=1)
    log_p = feature.log_softmax(dim=1)
    q = _tensor(marginal).double()[None, :]
    return (p * (log_p - q.log())).sum(dim=1).numpy()


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
    """FID of a set with fewer images than feature dimensions (per-class FID), exact and much faster.

    torch-fidelity takes ``tr sqrt(Σ1 Σ2)`` from the eigenvalues of the D×D product (D = 2048: seconds per
    call, an hour for 1000 classes). With ``Σ1 = Aᵀ A`` (``A`` the centred features over ``sqrt(n1 − 1)``,
    n1×D), ``Σ1 Σ2`` has the same non-zero eigenvalues as the symmetric n1×n1 matrix ``A Σ2 Aᵀ``, so the
    trace comes from ``eigvalsh`` of that. Equal to :func:`fid` up to rounding; sets of n1 > D use it.
    """
    f1 = np.asarray(features_1, dtype=np.float32)
    if len(f1) - 1 >= f1.shape[1]:
        return fid(features_1, features_2)
    stat_1, stat_2 = fid_statistics(f1), fid_statistics(features_2)
    a = (f1.astype(np.float64) - f1.mean(axis=0, dtype=np.float64)) / np.sqrt(len(f1) - 1)
    small = a @ np.asarray(stat_2["sigma"], dtype=np.float64) @ a.T  # a: n1×D, Σ1 = aᵀa
    tr_covmean = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((small + small.T) / 2), 0, None))))
    diff = np.asarray(stat_1["mu"], dtype=np.float64) - np.asarray(stat_2["mu"], dtype=np.float64)
    return float(diff @ diff + np.trace(stat_1["sigma"]) + np.trace(stat_2["sigma"]) - 2 * tr_covmean)


def kid(features_1: Any, features_2: Any, subset_size: int = KID_SUBSET_SIZE,
        subsets: int = KID_SUBSETS) -> tuple[float, float]:
    """KID (mean, std) by torch-fidelity's ``kid_features_to_metric`` (subset size capped by the smaller set)."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    f1, f2 = _tensor(features_1).float().cpu(), _tensor(features_2).float().cpu()
    size = min(subset_size, len(f1), len(f2))
    out = kid_features_to_metric(f1, f2, kid_subsets=subsets, kid_subset_size=size, verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def precision_recall(generated: Any, real: Any, neighborhood: int = NEIGHBORHOOD) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) by torch-fidelity's ``prc_features_to_metric``."""
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    f1, f2 = _tensor(generated).float().cpu(), _tensor(real).float().cpu()
    out = prc_features_to_metric(f1, f2, prc_neighborhood=neighborhood, prc_batch_size=10000, save_cpu_ram=True,
                                 verbose=False)
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])


def knn_radii(real: Any, neighborhood: int = NEIGHBORHOOD, batch_size: int = 4096, device: Any = "cpu") -> Any:
    """Distance of each real feature to its ``neighborhood``-th nearest other real feature (float32 tensor)."""
    import torch

    r = _tensor(real).float().to(device)
    out = []
    for chunk in r.split(batch_size):
        out.append(torch.cdist(chunk, r).kthvalue(neighborhood + 1, dim=1).values)
    return torch.cat(out) if out else torch.zeros(0)


def realism_scores(generated: Any, real: Any, neighborhood: int = NEIGHBORHOOD, prune: bool = True,
                   batch_size: int = 1024, device: Any = "cpu") -> np.ndarray:
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
        batch_size: generated rows per distance block.
        device: where the distances are computed (a GPU makes ImageNet-sized sets fast).
    """
    import torch

    r = _tensor(real).float().to(device)
    radii = knn_radii(r, neighborhood, device=device)
    if prune:
        keep = torch.argsort(radii, stable=True)[: (len(radii) + 1) // 2]
        r, radii = r[keep], radii[keep]
    out = []
    for chunk in _tensor(generated).float().split(batch_size):
        dist = torch.cdist(chunk.to(device), r).clamp_min(1e-12)
        out.append((radii[None, :] / dist).max(dim=1).values.cpu())
    return torch.cat(out).double().numpy() if out else np.zeros(0)


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
