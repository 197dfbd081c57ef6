"""The model registry: pipeline families, and the one table of known model ids (:data:`MODELS`).

One owner for what the project knows about a model id: its family (how its arguments are mapped), the
settings its model card recommends, its licence (which the dataset card inherits: :func:`model_license`),
the GPU memory its weights take (docs/models.md), and for the tiny test ids the builder of the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imagenet_plus.errors import UserError
from imagenet_plus.models.tiny import (
    TINY_RANDOM,
    TINY_RANDOM_FLUX,
    TINY_RANDOM_SD3,
    tiny_flux_dir,
    tiny_sd3_dir,
    tiny_text_to_image_dir,
)

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
class KnownModel:
    """What the project knows about one model id: its family, the settings its model card recommends, its
    licence, the GPU memory it takes, and (for the tiny test models) how to build it.

    Attributes:
        family: pipeline family (:data:`FAMILIES`).
        steps: inference steps.
        guidance: ``guidance_scale`` (its meaning depends on the family: docs/models.md).
        resolution: image side in pixels.
        license: the dataset card's ``license`` for images of this model (a Hub licence id, or ``other``).
        license_name: ``license_name`` of an ``other`` licence; ``license_link`` its terms.
        max_sequence_length: T5 tokens per prompt (FLUX/SD3 only).
        gpu_memory_gb: GPU memory the 16-bit weights of every component take without offload (parameter
            counts × 2 bytes, rounded up; activations add a few GB at 1024 px); ``None`` for the tiny
            test models. docs/models.md shows the arithmetic.
        guidance_ignored: the model has no guidance input at all (FLUX.1-schnell): any other guidance than
            0 would be silently dropped by the pipeline, so it is refused.
        tiny: for a tiny random stand-in, the builder that saves it (once) and returns its folder; the folder
            is then loaded through the same ``from_pretrained`` code a real model takes.
    """

    family: str
    steps: int
    guidance: float
    resolution: int
    license: str
    license_name: str | None = None
    license_link: str | None = None
    max_sequence_length: int | None = None
    gpu_memory_gb: float | None = None
    guidance_ignored: bool = False
    tiny: Callable[[], Path] | None = None


def _stability(model: str, name: str) -> dict[str, str]:
    """The licence fields of a Stability AI model published under one of its own licences."""
    return {"license": "other", "license_name": name,
            "license_link": f"https://huggingface.co/stabilityai/{model}/blob/main/LICENSE.md"}


_OPENRAIL_M = {"license": "creativeml-openrail-m"}
_OPENRAIL_PP = {"license": "openrail++"}
#: The tiny test pipelines are random weights built by imagenet-plus itself.
_OURS = {"license": "apache-2.0"}

#: Known models: the one table keyed by model id (each model card's example code and licence; docs/models.md
#: cites them). ``generate`` fills unset settings from it, the release card takes its licence from it, and
#: the tiny ids build their pipeline from it.
MODELS: dict[str, KnownModel] = {
    "stabilityai/sd-turbo": KnownModel(
        "sd", 1, 0.0, 512, **_stability("sd-turbo", "sai-nc-community"), gpu_memory_gb=3),
    "stabilityai/sdxl-turbo": KnownModel(
        "sdxl", 1, 0.0, 512, **_stability("sdxl-turbo", "sai-nc-community"), gpu_memory_gb=7),
    "stable-diffusion-v1-5/stable-diffusion-v1-5": KnownModel("sd", 30, 2.0, 512, **_OPENRAIL_M, gpu_memory_gb=3),
    "runwayml/stable-diffusion-v1-5": KnownModel("sd", 30, 2.0, 512, **_OPENRAIL_M, gpu_memory_gb=3),
    "CompVis/stable-diffusion-v1-4": KnownModel("sd", 30, 2.0, 512, **_OPENRAIL_M, gpu_memory_gb=3),
    "stabilityai/stable-diffusion-2-1": KnownModel("sd", 30, 2.0, 768, **_OPENRAIL_PP, gpu_memory_gb=3),
    "stabilityai/stable-diffusion-2-1-base": KnownModel("sd", 30, 2.0, 512, **_OPENRAIL_PP, gpu_memory_gb=3),
    "stabilityai/stable-diffusion-xl-base-1.0": KnownModel("sdxl", 30, 5.0, 1024, **_OPENRAIL_PP, gpu_memory_gb=7),
    "black-forest-labs/FLUX.1-schnell": KnownModel(
        "flux", 4, 0.0, 1024, license="apache-2.0", max_sequence_length=256, gpu_memory_gb=34,
        guidance_ignored=True),
    "black-forest-labs/FLUX.1-dev": KnownModel(
        "flux", 50, 3.5, 1024, license="other", license_name="flux-1-dev-non-commercial-license",
        license_link="https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
        max_sequence_length=512, gpu_memory_gb=34),
    "stabilityai/stable-diffusion-3.5-large": KnownModel(
        "sd3", 28, 3.5, 1024, **_stability("stable-diffusion-3.5-large", "stabilityai-ai-community"),
        max_sequence_length=256, gpu_memory_gb=28),
    "stabilityai/stable-diffusion-3.5-large-turbo": KnownModel(
        "sd3", 4, 0.0, 1024, **_stability("stable-diffusion-3.5-large-turbo", "stabilityai-ai-community"),
        max_sequence_length=256, gpu_memory_gb=28),
    "stabilityai/stable-diffusion-3.5-medium": KnownModel(
        "sd3", 40, 4.5, 1024, **_stability("stable-diffusion-3.5-medium", "stabilityai-ai-community"),
        max_sequence_length=256, gpu_memory_gb=17),
    TINY_RANDOM: KnownModel("sd", 2, 2.0, 64, **_OURS, tiny=tiny_text_to_image_dir),
    TINY_RANDOM_FLUX: KnownModel("flux", 2, 3.5, 32, **_OURS, max_sequence_length=64, tiny=tiny_flux_dir),
    TINY_RANDOM_SD3: KnownModel("sd3", 2, 3.5, 32, **_OURS, max_sequence_length=64, tiny=tiny_sd3_dir),
}


def tiny_builder(model: str) -> Callable[[], Path] | None:
    """The builder of a tiny random stand-in (``tiny-random``, ``tiny-random-flux``, ``tiny-random-sd3``), else None."""
    known = MODELS.get(model)
    return None if known is None else known.tiny


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


def model_license(model: str, override: str | None = None,
                  required: bool = False) -> tuple[str, str | None, str | None, str]:
    """The card license for a generating model: the user's ``override``, else the model's entry in :data:`MODELS`.

    Args:
        model: the model id recorded in ``run.yaml``.
        override: a license the publisher names: a Hub license id (``apache-2.0``, ``mit``…) or
            ``other:NAME:LINK`` for a custom license (LINK may hold colons). Wins over the table.
        required: raise instead of falling back to ``other`` for a model outside the table (publish
            passes ``True``: a dataset must not go out under an unknown license).

    Returns:
        (license, license_name, license_link, note); an unknown model without override gives ``other`` and a
        note asking the publisher to check the model's license (when not ``required``).

    Raises:
        UserError: ``required`` and the model's license is unknown with no override; a malformed override.
    """
    if override:
        text = override.strip()
        if text.startswith("other:"):
            parts = text.split(":", 2)
            if len(parts) != 3 or not parts[1] or not parts[2]:
                raise UserError(f"license {override!r}: write other:NAME:LINK for a custom license")
            lic, name, link = "other", parts[1], parts[2]
        elif not text or ":" in text or " " in text:
            raise UserError(f"license {override!r}: give a Hub license id (e.g. apache-2.0) or other:NAME:LINK")
        else:
            lic, name, link = text, None, None
        note = (f"Images generated with `{model}`; the publisher states the license ({name or lic}). Check that "
                "the model's terms allow it.")
        return lic, name, link, note
    known = MODELS.get(model)
    if known is not None:
        lic, name, link = known.license, known.license_name, known.license_link
        note = f"Images generated with `{model}`; the dataset inherits that model's license ({name or lic})."
        if link:
            note += f" Terms: {link}"
        return lic, name, link, note
    if required:
        raise UserError(
            f"the license of model {model!r} is unknown to imagenet-plus: name the dataset's license "
            "(a Hub license id such as apache-2.0, or other:NAME:LINK) after checking the model's terms"
        )
    note = (f"The license of `{model}` is not in imagenet-plus's table: the card says `other`. Check the model's "
            "license and terms of use before publishing, and edit `license` accordingly.")
    return "other", None, None, note
