"""select's quota: per class, the passing images picked greedily by maximal marginal relevance."""

from __future__ import annotations

from typing import Any

from imagenet_plus.select.scored import ScoredRows


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
