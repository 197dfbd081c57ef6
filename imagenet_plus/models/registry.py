"""The model registry: pipeline families, known models and their published settings.

One owner for what the project knows about a model id: its family (how its arguments are mapped), the
settings its model card recommends, and the GPU memory its weights take (docs/models.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imagenet_plus.errors import UserError

#: Pipeline families: how a model's arguments are mapped (see docs/models.md). ``sd`` = Stable Diffusion 1.x/2.x
#: (and sd-turbo), ``sdxl`` = SDXL (and sdxl-turbo), ``flux`` = FLUX.1, ``sd3`` = Stable Diffusion 3 / 3.5.
FAMILIES = ("sd", "sdxl", "flux", "sd3")
#: Families whose plain text-to-image pipeline takes a negative prompt.
NEGATIVE_PROMPT_FAMILIES = ("sd", "sdxl", "sd3")
#: Families with a T5 text encoder, which take ``max_sequence_length`` (T5 tokens kept from the prompt).
T5_FAMILIES = ("flux", "sd3")
#: The diffusers pipeline class of each family (what ``model_index.json`` names as ``_class_name``).
FAMILY_PIPELINES = {
    "sd": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "flux": "FluxPipeline",
    "sd3": "StableDiffusion3Pipeline",
}
OFFLOAD_MODES = ("none", "model", "sequential")


@dataclass(frozen=True)
class ModelPreset:
    """A known model's recommended settings (from its model card) and what it needs.

    Attributes:
        family: pipeline family (:data:`FAMILIES`).
        steps: inference steps.
        guidance: ``guidance_scale`` (its meaning depends on the family: docs/models.md).
        resolution: image side in pixels.
        max_sequence_length: T5 tokens per prompt (FLUX/SD3 only).
        gpu_memory_gb: GPU memory the 16-bit weights of every component take without offload (parameter
            counts × 2 bytes, rounded up; activations add a few GB at 1024 px); ``None`` for the tiny
            test models. docs/models.md shows the arithmetic.
        guidance_ignored: the model has no guidance input at all (FLUX.1-schnell): any other guidance than
            0 would be silently dropped by the pipeline, so it is refused.
    """

    family: str
    steps: int
    guidance: float
    resolution: int
    max_sequence_length: int | None = None
    gpu_memory_gb: float | None = None
    guidance_ignored: bool = False


#: Known models and their published recommendations (each model card's example code; docs/models.md cites them).
MODEL_PRESETS: dict[str, ModelPreset] = {
    "stabilityai/sd-turbo": ModelPreset("sd", 1, 0.0, 512, gpu_memory_gb=3),
    "stabilityai/sdxl-turbo": ModelPreset("sdxl", 1, 0.0, 512, gpu_memory_gb=7),
    "stable-diffusion-v1-5/stable-diffusion-v1-5": ModelPreset("sd", 30, 2.0, 512, gpu_memory_gb=3),
    "runwayml/stable-diffusion-v1-5": ModelPreset("sd", 30, 2.0, 512, gpu_memory_gb=3),
    "CompVis/stable-diffusion-v1-4": ModelPreset("sd", 30, 2.0, 512, gpu_memory_gb=3),
    "stabilityai/stable-diffusion-2-1": ModelPreset("sd", 30, 2.0, 768, gpu_memory_gb=3),
    "stabilityai/stable-diffusion-2-1-base": ModelPreset("sd", 30, 2.0, 512, gpu_memory_gb=3),
    "stabilityai/stable-diffusion-xl-base-1.0": ModelPreset("sdxl", 30, 5.0, 1024, gpu_memory_gb=7),
    "black-forest-labs/FLUX.1-schnell": ModelPreset(
        "flux", 4, 0.0, 1024, max_sequence_length=256, gpu_memory_gb=34, guidance_ignored=True),
    "black-forest-labs/FLUX.1-dev": ModelPreset("flux", 50, 3.5, 1024, max_sequence_length=512, gpu_memory_gb=34),
    "stabilityai/stable-diffusion-3.5-large": ModelPreset(
        "sd3", 28, 3.5, 1024, max_sequence_length=256, gpu_memory_gb=28),
    "stabilityai/stable-diffusion-3.5-large-turbo": ModelPreset(
        "sd3", 4, 0.0, 1024, max_sequence_length=256, gpu_memory_gb=28),
    "stabilityai/stable-diffusion-3.5-medium": ModelPreset(
        "sd3", 40, 4.5, 1024, max_sequence_length=256, gpu_memory_gb=17),
    "tiny-random": ModelPreset("sd", 2, 2.0, 64),
    "tiny-random-flux": ModelPreset("flux", 2, 3.5, 32, max_sequence_length=64),
    "tiny-random-sd3": ModelPreset("sd3", 2, 3.5, 32, max_sequence_length=64),
}
#: Guidance and resolution for a model without a preset, by family (``steps`` must then be given).
FAMILY_DEFAULTS: dict[str, tuple[float, int, int | None]] = {
    "sd": (7.5, 512, None),
    "sdxl": (5.0, 1024, None),
    "flux": (3.5, 1024, 512),
    "sd3": (7.0, 1024, 256),
}
#: Guidance and resolution for a model of unknown family (a Hub id without a preset, not in a local folder).
UNKNOWN_FAMILY_DEFAULTS = (5.0, 512)


def family_from_folder(model: str) -> str | None:
    """The family of a local pipeline folder, from its ``model_index.json`` ``_class_name`` (``None`` if unknown)."""
    import json

    path = Path(model).expanduser() / "model_index.json"
    if not path.is_file():
        return None
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError, AttributeError):
        return None
    return family_of_pipeline_class(str(name))


def family_of_pipeline_class(class_name: str) -> str | None:
    """``FluxPipeline`` → ``flux`` … (``None`` for a class outside :data:`FAMILY_PIPELINES`)."""
    for family, cls in FAMILY_PIPELINES.items():
        if class_name == cls:
            return family
    return None


def check_family_arguments(family: str, model: str, negative_prompt: str, max_sequence_length: int | None) -> None:
    """Refuse settings a pipeline family cannot take (instead of letting diffusers drop them silently).

    Raises:
        UserError: a negative prompt for a family without one (FLUX); ``max-sequence-length`` for a family
            without a T5 encoder (SD, SDXL).
    """
    src = "generate config"
    if negative_prompt and family not in NEGATIVE_PROMPT_FAMILIES:
        raise UserError(
            f"{src}: 'negative-prompt' is not supported by model {model!r} ({family} pipelines have no negative "
            "prompt; guidance is distilled into the model): remove it"
        )
    if max_sequence_length is not None and family not in T5_FAMILIES:
        raise UserError(
            f"{src}: 'max-sequence-length' is for T5-based models (FLUX, SD3); {model!r} is a {family} model"
        )
