"""Generation settings: the frozen dataclass behind ``imagenet-plus generate`` and its YAML config.

A config file's keys are the CLI flags (``images-per-class`` or ``images_per_class``); flags given
on the command line override the file. A file used by ``imagenet-plus run`` may also hold one
section per later stage (``score:``, ``select:``, ``release:``, ``report:``, ``evaluate:``,
``publish:``); ``generate`` reads only the top-level keys.

Model presets: settings left unset (``steps``, ``guidance``, ``resolution``, ``max_sequence_length``) are filled from
:data:`MODEL_PRESETS` for known models, so ``run.yaml`` always records concrete values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imagenet_plus.contract import IMAGE_EXTENSIONS
from imagenet_plus.errors import UserError
from imagenet_plus.models.diffusion import model_location
from imagenet_plus.models.registry import (
    FAMILIES,
    FAMILY_DEFAULTS,
    MODEL_PRESETS,
    OFFLOAD_MODES,
    T5_FAMILIES,
    UNKNOWN_FAMILY_DEFAULTS,
    ModelPreset,
    check_family_arguments,
    family_from_folder,
)
from imagenet_plus.pipeline.config import (
    config_from_mapping,
    config_to_dict,
    merge_config,
    split_config_file,
    stable_hash,
)

PROMPT_STRATEGIES = ("name", "gloss", "hypernym", "diverse")
DTYPES = ("auto", "float32", "float16", "bfloat16")

#: Settings that may change between invocations on the same RUN without changing what an image depicts:
#: how many, how batched, and how the model is placed and executed (offload, torch.compile).
HASH_EXEMPT = ("images_per_class", "batch_size", "offload", "compile")


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
    family: str | None = None
    max_sequence_length: int | None = None
    offload: str = "none"
    compile: bool = False

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
        if self.family is not None and self.family not in FAMILIES:
            raise UserError(f"{src}: 'family' must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.max_sequence_length is not None and not 1 <= self.max_sequence_length <= 512:
            raise UserError(f"{src}: 'max-sequence-length' must be within 1..512, got {self.max_sequence_length}")
        if self.offload not in OFFLOAD_MODES:
            raise UserError(f"{src}: 'offload' must be one of {', '.join(OFFLOAD_MODES)}, got {self.offload!r}")

    @property
    def preset(self) -> ModelPreset | None:
        """The model's preset, if it is a known model."""
        return MODEL_PRESETS.get(self.model)

    def resolved(self) -> GenerateConfig:
        """Fill family, steps, guidance, resolution and max sequence length; check them against the family.

        Values come from the model's preset, else from the family's defaults (the family is read from a
        local folder's ``model_index.json``, or given as ``family``); an explicit setting always wins.

        Raises:
            UserError: a model without a preset and no ``steps``; a setting the family cannot take (a negative
                prompt for FLUX, ``max-sequence-length`` for a family without T5, a guidance FLUX.1-schnell
                would ignore); a ``family`` that contradicts the preset.
        """
        src = "generate config"
        preset = self.preset
        family = self.family
        if preset is not None:
            if family is not None and family != preset.family:
                raise UserError(
                    f"{src}: 'family' {family!r} contradicts model {self.model!r} (a {preset.family} model)"
                )
            family = preset.family
            steps, guidance, resolution = preset.steps, preset.guidance, preset.resolution
            max_len = preset.max_sequence_length
        else:
            model_location(self.model)  # a local path that does not exist is named as such
            if self.steps is None:
                raise UserError(
                    f"{src}: model {self.model!r} has no preset: give 'steps' (and 'guidance', 'resolution'; "
                    f"known models: {', '.join(sorted(MODEL_PRESETS))})"
                )
            family = family or family_from_folder(self.model)
            if family is not None:
                guidance, resolution, max_len = FAMILY_DEFAULTS[family]
            else:
                (guidance, resolution), max_len = UNKNOWN_FAMILY_DEFAULTS, None
            steps = self.steps
        if family is not None:
            check_family_arguments(family, self.model, self.negative_prompt, self.max_sequence_length)
        if preset is not None and preset.guidance_ignored and self.guidance not in (None, 0.0):
            raise UserError(
                f"{src}: model {self.model!r} has no guidance input (timestep-distilled): 'guidance' must be 0, "
                f"got {self.guidance}"
            )
        out = replace(
            self,
            family=family,
            steps=self.steps if self.steps is not None else steps,
            guidance=self.guidance if self.guidance is not None else guidance,
            resolution=self.resolution if self.resolution is not None else resolution,
            max_sequence_length=self.max_sequence_length if self.max_sequence_length is not None else max_len,
        )
        if family in T5_FAMILIES and out.resolution % 16 != 0:
            # the VAE's 8x and the transformer's 2x2 patches: diffusers would silently resize otherwise
            raise UserError(f"{src}: 'resolution' must be a multiple of 16 for {family} models, got {out.resolution}")
        return out

    def config_hash(self) -> str:
        """Hash of every setting that changes images (not images-per-class, which may grow, nor batch size)."""
        data = config_to_dict(self.resolved())
        for key in HASH_EXEMPT:
            data.pop(key, None)
        return stable_hash(data)


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
