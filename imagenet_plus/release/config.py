"""Settings of ``imagenet-plus release``: the stage's options, declared once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from imagenet_plus.errors import ConfigError
from imagenet_plus.pipeline.config import setting
from imagenet_plus.release.card import model_license

#: Validation images per class when ``--val-per-class`` is not given (ImageNet's), unless the classes are small.
DEFAULT_VAL_PER_CLASS = 50
#: What to do with a class that keeps images but not more than ``val_per_class`` (see ``release.plan``).
SMALL_CLASS_POLICIES = ("error", "train", "drop")


@dataclass(frozen=True)
class ReleaseConfig:
    """Settings of ``imagenet-plus release`` (fields are its flags).

    Attributes:
        val_per_class: validation images per class (taken from the kept ones; 0 for no validation split). Unset:
            :func:`val_per_class_for` (50, ImageNet's, lowered to half the kept images of the smallest class).
        shard_size: largest number of samples per tar shard.
        imagefolder: also export ``train/{wnid}/*.JPEG`` and ``val/{wnid}/*.JPEG`` into this folder.
        seed: seed of the train/validation split and of the shuffle across classes.
        small_classes: a class keeping images but not more than ``val_per_class``: ``error`` (refuse),
            ``train`` (train only) or ``drop`` (left out); the card lists such classes.
        license: the dataset's licence when the generating model's is not in imagenet-plus's table (or to
            override it): a Hub licence id (``apache-2.0``) or ``other:NAME:LINK``. Without it, a model of
            unknown licence gives a card with ``license: other``, which ``publish`` refuses.
    """

    val_per_class: int | None = setting(
        None, f"Validation images per class (default: {DEFAULT_VAL_PER_CLASS}, lowered to half the kept images of "
        "the smallest class, so every class keeps at least as many for training).")
    shard_size: int = setting(1000, "Largest number of samples per tar shard.")
    imagefolder: str | None = setting(None, "Also write train/{wnid}/*.JPEG and val/{wnid}/*.JPEG here.")
    seed: int = setting(0, "Seed of the split and the shuffle.")
    small_classes: str = setting("error", "A class keeping <= val-per-class images: error, train (train only) or drop.")
    license: str | None = setting(
        None, "Dataset licence when the model's is unknown (or to override it): a Hub id or other:NAME:LINK.")

    def __post_init__(self) -> None:
        if self.license is not None:
            model_license("", override=self.license)  # a malformed licence is refused here, before any work
        if self.val_per_class is not None and self.val_per_class < 0:
            raise ConfigError(f"release config: 'val-per-class' must be >= 0, got {self.val_per_class}")
        if self.shard_size <= 0:
            raise ConfigError(f"release config: 'shard-size' must be positive, got {self.shard_size}")
        if self.seed < 0:
            raise ConfigError(f"release config: 'seed' must be >= 0, got {self.seed}")
        if self.small_classes not in SMALL_CLASS_POLICIES:
            raise ConfigError(f"release config: 'small-classes' must be one of {', '.join(SMALL_CLASS_POLICIES)}, "
                              f"got {self.small_classes!r}")


def val_per_class_for(kept_counts: Iterable[int], requested: int | None) -> int:
    """The validation images per class of a release: ``requested`` when given, else the adaptive default.

    The default is :data:`DEFAULT_VAL_PER_CLASS` (50, as ImageNet), lowered to half the kept images of the
    smallest class that keeps any (``n // 2``), so that every class keeps at least as many training images as
    validation ones and the default never stops a release: the demo's 6 kept images per class give 3 and 3; a
    class keeping a single image gives 0 (no validation split). An explicit value is used as given, and a class
    too small for it follows ``small_classes``.

    Args:
        kept_counts: images kept per class (classes keeping none are ignored).
        requested: ``--val-per-class``, or None.
    """
    if requested is not None:
        return requested
    return min([DEFAULT_VAL_PER_CLASS, *(n // 2 for n in kept_counts if n > 0)])
