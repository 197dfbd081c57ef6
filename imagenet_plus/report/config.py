"""Settings of ``imagenet-plus report``: declared once, as the fields of :class:`ReportConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from imagenet_plus.errors import ConfigError
from imagenet_plus.pipeline.config import setting


@dataclass(frozen=True)
class ReportConfig:
    """Settings of ``imagenet-plus report`` (fields are its flags and the keys of a config's ``report:`` section).

    Attributes:
        sample_classes: how many classes get a contact sheet (picked with ``seed``, shown in label order).
        sheet_images: best kept and worst rejected images shown per class.
        thumb_size: side of a contact-sheet thumbnail in pixels.
        seed: seed of the class sample.
    """

    sample_classes: int = setting(8, "Classes shown in the contact sheets.")
    sheet_images: int = setting(6, "Best and worst images per class in a sheet.")
    thumb_size: int = setting(112, "Contact-sheet thumbnail side in pixels.")
    seed: int = setting(0, "Seed of the class sample.")

    def __post_init__(self) -> None:
        for name in ("sample_classes", "sheet_images", "thumb_size"):
            value = getattr(self, name)
            if value <= 0:
                raise ConfigError(f"report config: '{name.replace('_', '-')}' must be positive, got {value}")
        if self.thumb_size > 512:
            raise ConfigError(f"report config: 'thumb-size' must be at most 512, got {self.thumb_size}")
        if self.seed < 0:
            raise ConfigError(f"report config: 'seed' must be >= 0, got {self.seed}")
