"""Loading a diffusers text-to-image pipeline and calling it with one seed per image.

Any model ``AutoPipelineForText2Image`` knows (SD 1.x, 2.x, sd-turbo, SDXL, …) by Hub id or local
folder, plus ``tiny-random`` (see :mod:`imagenet_plus.tiny`). A model that cannot be found is a
:class:`~imagenet_plus.errors.UserError`, never a fallback to another model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from imagenet_plus.errors import UserError
from imagenet_plus.tiny import TINY_RANDOM, tiny_text_to_image_dir


class ImageSource(Protocol):
    """What the generator needs from a model: images for prompts and seeds, and NSFW flags."""

    scheduler_name: str

    def __call__(self, prompts: list[str], negatives: list[str], seeds: list[int]) -> tuple[list[Any], list[bool]]:
        """Return one PIL image and one NSFW flag per prompt; image i depends only on prompts[i], seeds[i]."""
        ...


def resolve_dtype(name: str, device: Any) -> Any:
    """``auto`` → bfloat16 on GPUs that support it, else float16 on GPU, float32 on CPU."""
    import torch

    if name == "auto":
        if getattr(device, "type", str(device)) == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


def _looks_like_path(model: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else (``./x``, ``/x``, ``~/x``, ``a/b/c``) is a path."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or (os.sep != "/" and os.sep in model)


def model_location(model: str) -> str:
    """Where ``from_pretrained`` should load ``model`` from (builds the tiny pipeline on demand).

    Raises:
        UserError: a local path that does not exist.
    """
    if model == TINY_RANDOM:
        return str(tiny_text_to_image_dir())
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise UserError(f"model folder {path} has no model_index.json (not a diffusers pipeline folder)")
        return str(path)
    if _looks_like_path(model):
        raise UserError(f"model path not found: {model}")
    return model


def load_pipeline(model: str, device: Any, dtype_name: str = "auto") -> Any:
    """Load a text-to-image pipeline onto ``device``.

    Args:
        model: Hub id, local folder, or ``tiny-random``.
        device: torch device.
        dtype_name: ``auto``/``float32``/``float16``/``bfloat16``.

    Raises:
        UserError: the model is not a local folder and cannot be found on the Hub or in its cache.
    """
    from diffusers import AutoPipelineForText2Image

    location = model_location(model)
    dtype = resolve_dtype(dtype_name, device)
    if model == TINY_RANDOM:
        # The tiny tokenizer is character-level: prompts are cut at 77 characters, and diffusers would
        # warn on every batch. Real models keep their warnings.
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.get_logger("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion").setLevel(40)
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(location, dtype=dtype)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot load model {model!r} (not a local folder, not on the Hub or in its cache): {first}"
        ) from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass
class DiffusersSource:
    """Calls a diffusers pipeline on a batch of different prompts with one ``torch.Generator`` per image.

    Generators live on the CPU, so the starting noise of an image is the same on every device and
    does not depend on the batch it is in (design.md §5).
    """

    pipe: Any
    steps: int
    guidance: float
    width: int
    height: int

    @property
    def scheduler_name(self) -> str:
        return type(self.pipe.scheduler).__name__

    def __call__(self, prompts: list[str], negatives: list[str], seeds: list[int]) -> tuple[list[Any], list[bool]]:
        import torch

        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        kwargs: dict[str, Any] = {}
        if any(negatives):
            kwargs["negative_prompt"] = negatives
        with torch.inference_mode():
            out = self.pipe(
                prompt=prompts,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                generator=generators,
                height=self.height,
                width=self.width,
                **kwargs,
            )
        flags = getattr(out, "nsfw_content_detected", None)
        nsfw = [bool(f) for f in flags] if flags is not None else [False] * len(prompts)
        return list(out.images), nsfw
