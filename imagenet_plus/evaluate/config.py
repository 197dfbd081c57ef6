"""Settings of ``imagenet-plus evaluate``: the stage's options, declared once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imagenet_plus.errors import ConfigError
from imagenet_plus.pipeline.config import setting

#: Models built here without timm; any other name must be a timm model name.
BUILTIN_MODELS = ("small-cnn",)


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of ``imagenet-plus evaluate`` (the fields are its flags)."""

    train: str = setting("", "Synthetic training set: a release folder (or class-id image folder).")
    test: str = setting("", "Real test images in class-id subfolders (e.g. ImageNet val by wnid).")
    out: str = setting("", "Output folder for eval.json, plots and weights.")
    finetune: str | None = setting(
        None, "Real training images (class-id subfolders): adds fine-tune and real-only.")
    model: str = setting("small-cnn", "small-cnn (default), resnet18 or any timm model name.")
    weights: str | None = setting(None, "Local checkpoint to start from (no downloads).")
    epochs: int = setting(5, "Epochs on the synthetic set.")
    finetune_epochs: int | None = setting(None, "Epochs on real images (default: --epochs).")
    image_size: int = setting(64, "Input side in pixels (aspect kept, letterboxed).")
    batch_size: int = setting(64, "Batch size per process.")
    lr: float = setting(2e-3, "Peak learning rate (AdamW, one-cycle).")
    weight_decay: float = setting(0.05, "AdamW weight decay.")
    workers: int = setting(0, "DataLoader worker processes.")
    seed: int = setting(0, "Seed.")
    min_crop: float = setting(0.5, "Smallest random crop area (training).")
    max_margin: float = setting(0.2, "Largest random margin fraction (training).")
    explain: int = setting(0, "Grad-CAM grids of N real test images per class, per phase.")

    def __post_init__(self) -> None:
        src = "evaluate config"
        for name, hint in (
            ("train", "the synthetic release folder"),
            ("test", "a folder of real images in class-id subfolders"),
            ("out", "the output folder"),
        ):
            if not str(getattr(self, name)).strip():
                raise ConfigError(f"{src}: '{name}' is required ({hint})")
        for name in ("epochs", "image_size", "batch_size", "lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{src}: '{name.replace('_', '-')}' must be positive, got {getattr(self, name)}")
        if self.finetune_epochs is not None and self.finetune_epochs <= 0:
            raise ConfigError(f"{src}: 'finetune-epochs' must be positive, got {self.finetune_epochs}")
        if self.image_size < 16:
            raise ConfigError(f"{src}: 'image-size' must be at least 16, got {self.image_size}")
        if self.workers < 0 or self.weight_decay < 0 or self.seed < 0 or self.explain < 0:
            raise ConfigError(f"{src}: 'workers', 'weight-decay', 'seed' and 'explain' must be >= 0")
        if not 0.05 <= self.min_crop <= 1.0:
            raise ConfigError(f"{src}: 'min-crop' must be within 0.05..1, got {self.min_crop}")
        if not 0.0 <= self.max_margin < 0.9:
            raise ConfigError(f"{src}: 'max-margin' must be within 0..0.9, got {self.max_margin}")
        check_model_name(self.model)
        if self.weights is not None and not Path(self.weights).is_file():
            raise ConfigError(f"{src}: weights file not found: {self.weights}")


def check_model_name(name: str) -> None:
    """Raise ``ConfigError`` unless ``name`` is ``small-cnn`` or a model timm knows."""
    if name in BUILTIN_MODELS:
        return
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5] if name else []
        hint = f" (similar timm names: {', '.join(close)})" if close else ""
        raise ConfigError(f"evaluate config: unknown model {name!r}: use small-cnn or a timm model name{hint}")
