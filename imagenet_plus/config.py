"""Generation settings: the frozen dataclass behind ``imagenet-plus generate`` and its YAML config.

A config file's keys are the CLI flags (``images-per-class`` or ``images_per_class``); flags given
on the command line override the file. A file used by ``imagenet-plus run`` may also hold one
section per later stage (``score:``, ``select:``, ``release:``, ``report:``, ``evaluate:``,
``publish:``); ``generate`` reads only the top-level keys.

Model presets: settings left unset (``steps``, ``guidance``, ``resolution``) are filled from
:data:`MODEL_PRESETS` for known models, so ``run.yaml`` always records concrete values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imagenet_plus.configio import config_from_mapping, config_to_dict, load_yaml_mapping, merge_config, stable_hash
from imagenet_plus.contract import IMAGE_EXTENSIONS
from imagenet_plus.errors import UserError

#: Keys of a config file that hold the settings of later stages (read by ``imagenet-plus run``).
STAGE_SECTIONS = ("score", "select", "release", "report", "evaluate", "publish")

#: Known models: (steps, guidance, resolution). Published recommendations of each model card.
MODEL_PRESETS: dict[str, tuple[int, float, int]] = {
    "stabilityai/sd-turbo": (1, 0.0, 512),
    "stabilityai/sdxl-turbo": (1, 0.0, 512),
    "stable-diffusion-v1-5/stable-diffusion-v1-5": (30, 2.0, 512),
    "runwayml/stable-diffusion-v1-5": (30, 2.0, 512),
    "CompVis/stable-diffusion-v1-4": (30, 2.0, 512),
    "stabilityai/stable-diffusion-2-1": (30, 2.0, 768),
    "stabilityai/stable-diffusion-2-1-base": (30, 2.0, 512),
    "stabilityai/stable-diffusion-xl-base-1.0": (30, 5.0, 1024),
    "tiny-random": (2, 2.0, 64),
}
#: Used for models not in :data:`MODEL_PRESETS` when a setting is left unset.
DEFAULT_PRESET = (30, 5.0, 512)

PROMPT_STRATEGIES = ("name", "gloss", "hypernym", "diverse")
DTYPES = ("auto", "float32", "float16", "bfloat16")

#: Settings that may change between invocations on the same RUN without changing any image.
HASH_EXEMPT = ("images_per_class", "batch_size")


@dataclass(frozen=True)
class GenerateConfig:
    """Everything that determines a generation run. Validated on construction."""

    classes: str = "imagenet-1k"
    class_limit: int | None = None
    images_per_class: int = 10
    model: str = "stabilityai/sd-turbo"
    steps: int | None = None
    guidance: float | None = None
    resolution: int | None = None
    batch_size: int = 8
    seed: int = 0
    prompt_strategy: tuple[str, ...] = ("diverse",)
    negative_prompt: str = ""
    image_format: str = "jpg"
    quality: int = 90
    shard_size: int = 256
    dtype: str = "auto"
    max_attempts: int = 3
    black_threshold: float = 4.0

    def __post_init__(self) -> None:
        src = "generate config"
        for name in ("images_per_class", "batch_size", "shard_size", "max_attempts", "steps", "resolution"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"{src}: '{name.replace('_', '-')}' must be positive, got {value}")
        if self.class_limit is not None and self.class_limit <= 0:
            raise UserError(f"{src}: 'class-limit' must be positive, got {self.class_limit}")
        if self.resolution is not None and self.resolution % 8 != 0:
            raise UserError(f"{src}: 'resolution' must be a multiple of 8, got {self.resolution}")
        if self.guidance is not None and self.guidance < 0:
            raise UserError(f"{src}: 'guidance' must be >= 0, got {self.guidance}")
        if not self.prompt_strategy:
            raise UserError(f"{src}: 'prompt-strategy' is empty (choose from {', '.join(PROMPT_STRATEGIES)})")
        for s in self.prompt_strategy:
            if s not in PROMPT_STRATEGIES:
                raise UserError(
                    f"{src}: 'prompt-strategy' has unknown strategy {s!r} (choose from {', '.join(PROMPT_STRATEGIES)})"
                )
        if self.image_format not in IMAGE_EXTENSIONS:
            raise UserError(f"{src}: 'image-format' must be jpg, png or webp, got {self.image_format!r}")
        if not 1 <= self.quality <= 100:
            raise UserError(f"{src}: 'quality' must be within 1..100, got {self.quality}")
        if self.dtype not in DTYPES:
            raise UserError(f"{src}: 'dtype' must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.seed < 0:
            raise UserError(f"{src}: 'seed' must be >= 0, got {self.seed}")
        if not self.model.strip():
            raise UserError(f"{src}: 'model' is empty")
        if not self.classes.strip():
            raise UserError(f"{src}: 'classes' is empty")

    def resolved(self) -> GenerateConfig:
        """Fill ``steps``/``guidance``/``resolution`` from the model's preset."""
        steps, guidance, resolution = MODEL_PRESETS.get(self.model, DEFAULT_PRESET)
        return replace(
            self,
            steps=self.steps if self.steps is not None else steps,
            guidance=self.guidance if self.guidance is not None else guidance,
            resolution=self.resolution if self.resolution is not None else resolution,
        )

    def config_hash(self) -> str:
        """Hash of every setting that changes images (not images-per-class, which may grow, nor batch size)."""
        data = config_to_dict(self.resolved())
        for key in HASH_EXEMPT:
            data.pop(key, None)
        return stable_hash(data)


def split_config_file(path: str | Path | None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Read a config file into (generate keys, {stage section: keys})."""
    if path is None:
        return {}, {}
    data = load_yaml_mapping(path)
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in data.items():
        if key in STAGE_SECTIONS:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise UserError(f"{path}: section '{key}' must be a mapping, got {type(value).__name__}")
            sections[key] = value
        else:
            top[key] = value
    return top, sections


def load_generate_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> GenerateConfig:
    """Build a :class:`GenerateConfig` from a YAML file (optional) and flag overrides.

    Raises:
        UserError: malformed file, unknown key, or an invalid value (the message names the key).
    """
    top, _ = split_config_file(path)
    source = str(path) if path is not None else "command line"
    if path is not None:
        config_from_mapping(GenerateConfig, top, source)  # errors name the file's key
    merged = merge_config(top, overrides or {})
    return config_from_mapping(GenerateConfig, merged, source)
