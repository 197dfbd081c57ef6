"""Settings of ``imagenet-plus select``: the stage's options and the thresholds file."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from imagenet_plus.errors import ConfigError
from imagenet_plus.pipeline.config import config_from_mapping, load_yaml_mapping, setting

CLASS_FID_ACTIONS = ("flag", "drop")
#: ``clip_class_prob_min: 1/K``: chance level, one over the number of classes of the run.
ONE_OVER_K = "1/K"


@dataclass(frozen=True)
class Thresholds:
    """Per-image and per-class filters, loaded from a thresholds YAML (keys as below, ``-`` or ``_``).

    Attributes:
        clip_score_min: minimum CLIP score of the image against its prompt (0..100), or None.
        clip_class_prob_min: minimum zero-shot probability of the target class (0..1), or ``1/K``: one over the
            number of classes, chance level (He et al., ICLR 2023, keep an image when CLIP's probability of its
            class exceeds 1/K), resolved by :meth:`for_classes` when the run's class set is known; or None.
        isc_kl_min: minimum per-image Inception-Score KL term (>= 0), or None.
        realism_min: minimum realism score (Kynkäänniemi et al.; >= 0), or None.
        classifier_top5: require the ImageNet classifier to have the class in its top 5.
        drop_duplicates: drop images marked as near-duplicates (``dup_of`` set).
        drop_nsfw: drop images flagged NSFW: by the generator's safety checker (``nsfw``) or by score's
            independent detector (``nsfw_score`` above ``nsfw_score_max``).
        nsfw_score_max: highest P(nsfw) from score's NSFW detector an image may have (0..1).
        class_fid_max: a class whose FID exceeds this is flagged or dropped, or None.
        class_fid_action: ``flag`` (list it in selection.json) or ``drop`` (drop all its images).
        diversity: weight of CLIP diversity against the composite when filling the quota (0..1).
        source: where they were read from, named in select's errors (not a key of the file: set by
            :func:`load_thresholds`).
    """

    clip_score_min: float | None = None
    clip_class_prob_min: float | str | None = None
    isc_kl_min: float | None = None
    realism_min: float | None = None
    classifier_top5: bool = False
    drop_duplicates: bool = True
    drop_nsfw: bool = True
    nsfw_score_max: float = 0.5
    class_fid_max: float | None = None
    class_fid_action: str = "flag"
    diversity: float = 0.3
    source: str = field(default="thresholds", init=False, compare=False)

    def __post_init__(self) -> None:
        ranges = {
            "clip_score_min": (0.0, 100.0),
            "clip_class_prob_min": (0.0, 1.0),
            "nsfw_score_max": (0.0, 1.0),
            "isc_kl_min": (0.0, math.inf),
            "realism_min": (0.0, math.inf),
            "class_fid_max": (0.0, math.inf),
            "diversity": (0.0, 1.0),
        }
        chance = self.clip_class_prob_min
        if isinstance(chance, str):
            if chance.replace(" ", "").upper() != ONE_OVER_K:
                raise ConfigError(f"key 'clip_class_prob_min' must be a number within 0..1 or {ONE_OVER_K} "
                                  f"(one over the number of classes), got {chance!r}")
            object.__setattr__(self, "clip_class_prob_min", ONE_OVER_K)
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if isinstance(value, str):
                continue
            if value is not None and not lo <= value <= hi:  # NaN fails the comparison too
                raise ConfigError(f"key '{name}' is out of range: {value} (must be within {lo:g}..{hi:g})")
        if self.class_fid_action not in CLASS_FID_ACTIONS:
            raise ConfigError(
                f"key 'class_fid_action' must be one of {', '.join(CLASS_FID_ACTIONS)}, got {self.class_fid_action!r}"
            )

    def named(self, source: str) -> Thresholds:
        """These thresholds, read from ``source`` (the file select's errors name)."""
        out = replace(self)
        object.__setattr__(out, "source", source)  # not an init field: no key of the file can set it
        return out

    def for_classes(self, num_classes: int) -> Thresholds:
        """The thresholds with ``clip_class_prob_min: 1/K`` resolved for ``K = num_classes`` (a number)."""
        if self.clip_class_prob_min != ONE_OVER_K:
            return self
        return replace(self, clip_class_prob_min=1.0 / max(num_classes, 1)).named(self.source)

    def to_dict(self) -> dict[str, Any]:
        """The thresholds as written to selection.json (without ``source``)."""
        out = asdict(self)
        out.pop("source")
        return out


def load_thresholds(path: str | Path | None) -> Thresholds:
    """Read a thresholds YAML (None gives the defaults).

    Raises:
        UserError: the file is missing or malformed, has an unknown key, or a value out of range (named with
            the file).
    """
    if path is None:
        return Thresholds()
    return config_from_mapping(Thresholds, load_yaml_mapping(path), str(path)).named(str(path))


def _shown(value: Any) -> str:
    """A threshold's value as its YAML file spells it: ``true``/``false``, ``none``, ``0.0``, ``flag``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


def _same(value: Any, default: Any) -> bool:
    """Equal and of the same kind: ``0.0`` is not the default ``None``, ``0`` is not the default ``False``."""
    if value is None or default is None or isinstance(value, bool) or isinstance(default, bool):
        return value is default
    return value == default


def non_default_thresholds(thresholds: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The thresholds that differ from :class:`Thresholds`' defaults, as ``(key, value as YAML spells it)`` pairs.

    The one rendering of select's thresholds, used by the dataset card and the report alike. Only ``None`` means
    "not set": ``clip_class_prob_min: 0.0`` and ``drop_duplicates: false`` are settings and are shown. Keys in
    :class:`Thresholds`' order; keys it does not know (a ``selection.json`` written by another version) follow.

    Args:
        thresholds: select's thresholds as ``selection.json`` records them (``Thresholds.to_dict()``), or None.
    """
    given = dict(thresholds or {})
    defaults = Thresholds().to_dict()
    names = [*defaults, *sorted(k for k in given if k not in defaults)]
    return [(name, _shown(given[name])) for name in names
            if name in given and not (name in defaults and _same(given[name], defaults[name]))]


@dataclass(frozen=True)
class SelectConfig:
    """Settings of ``imagenet-plus select`` (fields are its flags).

    Attributes:
        thresholds: the thresholds YAML, or None for the defaults (only nsfw and duplicates dropped).
        per_class: images to keep per class; None means the run's ``images_per_class``.
    """

    thresholds: str | None = setting(None, "Thresholds YAML (see docs/release.md); default: drop NSFW and duplicates.")
    per_class: int | None = setting(None, "Images to keep per class (default: images-per-class).")

    def __post_init__(self) -> None:
        if self.per_class is not None and self.per_class <= 0:
            raise ConfigError(f"select config: 'per-class' must be positive, got {self.per_class}")
