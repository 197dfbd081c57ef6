"""The verdict rules: which failure modes a class shows, its verdict, and what to do about it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imagenet_plus.classes.wordnet import noun_sense_count
from imagenet_plus.contract.diagnosis import (
    VERDICT_AMBIGUOUS,
    VERDICT_CONCEPT_FAILURE,
    VERDICT_LOW_ADHERENCE,
    VERDICT_LOW_DIVERSITY,
    VERDICT_OK,
    VERDICTS,
)
from imagenet_plus.diagnose.config import DiagnoseConfig
from imagenet_plus.errors import UserError

#: What to do about each verdict.
REMEDIES = {
    VERDICT_AMBIGUOUS: "use the gloss or hypernym prompt strategy (the name alone means several things)",
    VERDICT_CONCEPT_FAILURE: "drop the class or generate it with another model (this model does not draw the concept)",
    VERDICT_LOW_DIVERSITY: "use the diverse prompt strategy, or a wider range of steps and guidance",
    VERDICT_LOW_ADHERENCE: "use the hypernym prompt strategy or a higher guidance scale",
    VERDICT_OK: "",
}
#: The prompt strategy ``generate --top-up`` should switch a flagged class to (None: no prompt fixes it).
REMEDY_STRATEGIES: dict[str, str | None] = {
    VERDICT_AMBIGUOUS: "gloss",
    VERDICT_CONCEPT_FAILURE: None,
    VERDICT_LOW_DIVERSITY: "diverse",
    VERDICT_LOW_ADHERENCE: "hypernym",
}


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
        flags.append(VERDICT_AMBIGUOUS)
    if ev.concept_other:
        flags.append(VERDICT_CONCEPT_FAILURE)
    if (ev.vendi < cfg.min_vendi or ev.mean_pairwise_similarity > cfg.max_pairwise_similarity
            or ev.vendi_ratio < cfg.min_diversity_ratio):  # NaN compares False: a missing figure flags nothing
        flags.append(VERDICT_LOW_DIVERSITY)
    top5 = ev.classifier_top5_rate
    if ev.clip_class_prob_mean < cfg.min_class_prob or (top5 is not None and top5 < cfg.min_top5_rate):
        flags.append(VERDICT_LOW_ADHERENCE)
    return flags


def verdict_of(flags: Sequence[str]) -> str:
    """The most severe flag, or ``ok``."""
    return next((v for v in VERDICTS if v in flags), VERDICT_OK)


def _lemmas(record: Mapping[str, Any]) -> set[str]:
    return {" ".join(str(x).lower().split()) for x in [record.get("name", ""), *record.get("lemmas", [])]} - {""}


def shared_lemmas(records: Sequence[Mapping[str, Any]]) -> list[tuple[list[str], list[str]]]:
    """Per class: the lemmas (lower-case) it shares with other classes of the set, and those classes' ids."""
    owners: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        for lemma in _lemmas(r):
            owners.setdefault(lemma, []).append(i)
    out: list[tuple[list[str], list[str]]] = []
    for i, r in enumerate(records):
        shared = sorted(lem for lem in _lemmas(r) if len(owners[lem]) > 1)
        others = sorted({str(records[j]["id"]) for lem in shared for j in owners[lem] if j != i})
        out.append((shared, others))
    return out


def sense_counts(names: Sequence[str]) -> list[int | None]:
    """WordNet noun senses of each class name (None for all when WordNet is not installed)."""
    try:
        return [noun_sense_count(n) for n in names]
    except UserError:
        return [None] * len(names)
