"""Settings of ``imagenet-plus diagnose`` (the fields are its flags and the keys of a config's ``diagnose:``
section): the thresholds of the verdicts, the reference, sample sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from imagenet_plus.errors import ConfigError
from imagenet_plus.pipeline.config import setting

#: Settings that change how the diagnosis is computed, not what it says (left out of ``diagnosis.json``).
NOT_THRESHOLDS = ("reference", "device", "batch_size")


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

    reference: str | None = setting(
        None, "Real images in class-id subfolders, or an .npz of CLIP embeddings.")
    max_confusion: float = setting(0.3, "Ambiguous from this zero-shot confusion.")
    text_twin_cosine: float = setting(0.98, "Class texts at least this cosine-similar count as the same name.")
    min_vendi: float = setting(1.5, "Low diversity below this Vendi score.")
    max_pairwise_similarity: float = setting(0.95, "Low diversity above this mean pairwise CLIP similarity.")
    min_diversity_ratio: float = setting(0.5, "Low diversity below this synthetic/real Vendi ratio.")
    min_class_prob: float = setting(0.2, "Low adherence below this class probability.")
    min_top5_rate: float = setting(0.1, "Low adherence below this top-5 rate.")
    sample_per_class: int = setting(64, "Images per class for the Vendi score.")
    batch_size: int = setting(32, "Images per CLIP batch when embedding a reference folder.")
    device: str = setting("auto", "auto, cpu or cuda (embedding a reference folder).")
    worst: int = setting(50, "Flagged classes listed in diagnosis.json (worst first).")

    def __post_init__(self) -> None:
        for name in ("max_confusion", "text_twin_cosine", "max_pairwise_similarity", "min_diversity_ratio",
                     "min_class_prob", "min_top5_rate"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"diagnose setting {name}={value!r} must be between 0 and 1")
        for name in ("sample_per_class", "batch_size", "worst"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"diagnose setting {name}={getattr(self, name)!r} must be a positive integer")
        if self.min_vendi < 1.0:
            raise ConfigError(f"diagnose setting min_vendi={self.min_vendi!r} must be at least 1 (Vendi's minimum)")
        if self.sample_per_class < 2:
            raise ConfigError("diagnose setting sample_per_class must be at least 2 (pairs of images)")

    def thresholds(self) -> dict[str, Any]:
        """The settings the verdicts depend on (``diagnosis.json``'s ``thresholds``)."""
        return {k: v for k, v in asdict(self).items() if k not in NOT_THRESHOLDS}
