"""Loading a diffusers text-to-image pipeline and calling it with one seed per image.

Any model ``AutoPipelineForText2Image`` knows (SD 1.x, 2.x, sd-turbo, SDXL, FLUX.1, SD 3.5, …) by Hub id
or local folder, plus the tiny test pipelines ``tiny-random`` (SD), ``tiny-random-flux`` and
``tiny-random-sd3`` (see :mod:`imagenet_plus.models.tiny`). A model that cannot be found is a
:class:`~imagenet_plus.errors.UserError`, never a fallback to another model; a Hub id is looked up in the cache
first and the Hub asked once, briefly (:mod:`imagenet_plus.models.hub`), so no network is a one-line error in
seconds.

Arguments are mapped per pipeline family (:func:`pipeline_kwargs`, docs/models.md): SD, SDXL and SD3 take
a negative prompt, FLUX does not; FLUX and SD3 take ``max_sequence_length`` (T5 tokens). Loading can place
the model with diffusers' CPU offload (``offload="model"``/``"sequential"``, CUDA only) and speed it up with
``torch.compile`` (:func:`compile_pipeline`).

Image-to-image (``generate --init-strength``): the loaded pipeline's image-to-image twin, made with diffusers'
``AutoPipelineForImage2Image.from_pipe`` (the same components, nothing loaded again): SD →
``StableDiffusionImg2ImgPipeline``, SDXL → ``StableDiffusionXLImg2ImgPipeline``, FLUX → ``FluxImg2ImgPipeline``,
SD3 → ``StableDiffusion3Img2ImgPipeline``; each takes ``image`` and ``strength``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from imagenet_plus.errors import UserError
from imagenet_plus.models.hub import hub_model
from imagenet_plus.models.registry import (
    NEGATIVE_PROMPT_FAMILIES,
    T5_FAMILIES,
    check_family_arguments,
    family_of_pipeline_class,
    tiny_builder,
)

#: torch.compile mode on CUDA: autotuned kernels + CUDA graphs, as in diffusers' "accelerate inference" tutorial.
COMPILE_MODE_CUDA = "max-autotune"
#: Inductor settings diffusers' SDXL/FLUX speed-up recipes use on GPUs.
INDUCTOR_GPU_FLAGS = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True, "epilogue_fusion": False,
                      "coordinate_descent_check_all_directions": True}


class ImageSource(Protocol):
    """What the generator needs from a model: images for prompts and seeds, and NSFW flags.

    ``generate`` passes ``guidance`` only for a guidance range and ``init_images``/``strength`` only for img2img,
    so a source for plain runs (a test's fake) may take the three positional arguments alone.
    """

    scheduler_name: str

    def __call__(self, prompts: list[str], negatives: list[str], seeds: list[int], guidance: float | None = None,
                 init_images: list[Any] | None = None, strength: float | None = None) -> tuple[list[Any], list[bool]]:
        """Return one PIL image and one NSFW flag per prompt; image i depends only on prompts[i], seeds[i] (and
        init_images[i]); the batch shares one ``guidance`` (None: the source's own) and one ``strength``."""
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


def model_location(model: str, find: bool = False) -> str:
    """Where ``from_pretrained`` should load ``model`` from (builds a tiny pipeline on demand).

    Args:
        model: Hub id, local folder or tiny model word.
        find: for a Hub id, also decide where its files come from (:func:`imagenet_plus.models.hub.hub_model`:
            its cached snapshot folder, or the id once the Hub answered). Without it (config checks) a Hub id is
            returned as it is, with no network and no cache lookup.

    Raises:
        UserError: a local path that does not exist, or a folder that is not a diffusers pipeline.
        ModelUnavailable: with ``find``, a Hub id neither cached nor reachable, or not on the Hub.
    """
    tiny = tiny_builder(model)
    if tiny is not None:
        return str(tiny())
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise UserError(f"model folder {path} has no model_index.json (not a diffusers pipeline folder)")
        return str(path)
    if _looks_like_path(model):
        raise UserError(f"model path not found: {model}")
    return hub_model(model, f"model {model!r}", "model_index.json") if find else model


def check_offload(offload: str, device: Any) -> None:
    """Refuse CPU offload where there is no GPU to offload from.

    Raises:
        UserError: ``offload`` is ``model`` or ``sequential`` and ``device`` is not a CUDA device.
    """
    if offload != "none" and getattr(device, "type", str(device)) != "cuda":
        raise UserError(
            f"--offload {offload} moves model parts between CPU and GPU memory, but this process runs on "
            f"{device} (no CUDA GPU): remove --offload"
        )


def pipeline_components(pipe: Any) -> dict[str, Any]:
    """The pipeline's ``torch.nn.Module`` components by name (UNet/transformer, VAE, text encoders…)."""
    import torch

    return {name: c for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}


def compile_pipeline(pipe: Any, device: Any, backend: str = "inductor") -> list[str]:
    """Speed the pipeline up in place: fused QKV projections, channels-last, ``torch.compile``.

    The recipe of diffusers' "Accelerate inference of text-to-image diffusion models" tutorial (SDXL on an
    A100: 3.3 s → 2.5 s per image from compile + channels-last + fused QKV on top of bf16 + SDPA) and of
    flux-fast (FLUX.1 on an H100): QKV projections fused where the model offers ``fuse_qkv_projections``,
    convolutional parts (UNet, VAE) in ``channels_last``, and ``torch.compile`` of the denoiser (UNet or
    transformer) and of the VAE decoder. Compilation happens on the first call; later calls with the same
    shapes reuse the kernels.

    Args:
        pipe: a loaded diffusers pipeline.
        device: where it runs (CUDA gets ``max-autotune`` and diffusers' inductor flags).
        backend: the ``torch.compile`` backend; ``inductor`` generates kernels, the others (``aot_eager``)
            only trace, which tests use to check the traced graphs without minutes of kernel compilation.

    Returns:
        What was done, as short labels (for the log and run records).
    """
    import torch

    done: list[str] = []
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    vae = getattr(pipe, "vae", None)
    for name, module in (("denoiser", denoiser), ("vae", vae)):
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "dual_attention_layers", None):
            # SD 3.5's dual-attention blocks: diffusers' fused processor would give their self-only
            # attention a joint processor, which fails; those models run unfused.
            continue
        if module is not None and hasattr(module, "fuse_qkv_projections"):
            try:
                module.fuse_qkv_projections()
                done.append(f"fused-qkv:{name}")
            except ValueError:  # models with added KV projections cannot fuse
                pass
    for module in (getattr(pipe, "unet", None), vae):
        if module is not None:
            module.to(memory_format=torch.channels_last)
    done.append("channels-last")
    cuda = getattr(device, "type", str(device)) == "cuda"
    kwargs: dict[str, Any] = {"backend": backend}
    if cuda and backend == "inductor":
        kwargs["mode"] = COMPILE_MODE_CUDA
        import torch._inductor.config as inductor_config

        for key, value in INDUCTOR_GPU_FLAGS.items():
            setattr(inductor_config, key, value)
    if denoiser is not None:
        denoiser.compile(**kwargs)
        done.append("compile:denoiser")
    if vae is not None:
        vae.decoder.compile(**kwargs)
        done.append("compile:vae-decoder")
    return done


#: The key under which a transformers tokenizer remembers it already warned that a text is longer than its maximum.
TOO_LONG_WARNING = "sequence-length-is-longer-than-the-specified-maximum"


def _quiet_tiny_pipeline_warnings(pipe: Any) -> None:
    """The tiny tokenizers are character-level: prompts are cut at 77 characters, and diffusers would warn on
    every batch (its own "truncated" warning) and the tokenizer once ("Token indices sequence length is longer
    than the specified maximum sequence length for this model (87 > 77)": diffusers tokenizes each prompt a second
    time, uncut, only to find what was cut). Neither says anything about the demo, so both are silenced for the
    tiny pipelines only: diffusers' loggers, and each tokenizer marked as having warned already (the flag
    transformers itself sets after warning once). Real models keep their warnings."""
    from diffusers.utils import logging as diffusers_logging

    for name in ("stable_diffusion.pipeline_stable_diffusion", "flux.pipeline_flux",
                 "stable_diffusion_3.pipeline_stable_diffusion_3"):
        diffusers_logging.get_logger(f"diffusers.pipelines.{name}").setLevel(40)
    for component in pipe.components.values():
        warned = getattr(component, "deprecation_warnings", None)
        if isinstance(warned, dict):
            warned[TOO_LONG_WARNING] = True


def load_pipeline(model: str, device: Any, dtype_name: str = "auto", offload: str = "none",
                  compile: bool = False) -> Any:
    """Load a text-to-image pipeline onto ``device``.

    Args:
        model: Hub id, local folder, or a tiny model word (``tiny-random``, ``tiny-random-flux``, ``tiny-random-sd3``).
        device: torch device.
        dtype_name: ``auto``/``float32``/``float16``/``bfloat16``: every component is loaded in it.
        offload: ``none`` (everything on ``device``), ``model`` (diffusers' ``enable_model_cpu_offload``: one
            whole component on the GPU at a time) or ``sequential`` (``enable_sequential_cpu_offload``: one
            layer at a time; smallest memory, slowest). CUDA only.
        compile: apply :func:`compile_pipeline`.

    Raises:
        ModelUnavailable: a Hub id that is not in the cache while the Hub cannot be reached (within seconds, before
            diffusers' downloads would retry), or that the Hub does not have.
        UserError: the model does not load; offload without a CUDA device.
    """
    check_offload(offload, device)
    location = model_location(model, find=True)  # before diffusers is imported: no network is said in seconds
    from diffusers import AutoPipelineForText2Image

    dtype = resolve_dtype(dtype_name, device)
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(location, dtype=dtype)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot load model {model!r} (not a local folder, not on the Hub or in its cache): {first}"
        ) from None
    if tiny_builder(model) is not None:
        _quiet_tiny_pipeline_warnings(pipe)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe = pipe.to(device)
    if compile:
        compile_pipeline(pipe, device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_kwargs(family: str | None, steps: int, guidance: float, width: int, height: int,
                    max_sequence_length: int | None, negatives: list[str]) -> dict[str, Any]:
    """The keyword arguments of one pipeline call, mapped for the pipeline family (prompts and generators aside).

    ``negative_prompt`` goes only to families that take one, and only when some image has one;
    ``max_sequence_length`` only to the T5 families (FLUX, SD3). ``family=None`` (a pipeline outside the
    known families) gets the arguments every diffusers text-to-image pipeline shares.

    Raises:
        UserError: a negative prompt for a family without one (config checks catch this earlier).
    """
    kwargs: dict[str, Any] = {
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "height": height,
        "width": width,
    }
    if any(negatives):
        if family is not None and family not in NEGATIVE_PROMPT_FAMILIES:
            raise UserError(f"negative prompts are not supported by {family} pipelines")
        kwargs["negative_prompt"] = negatives
    if family in T5_FAMILIES and max_sequence_length is not None:
        kwargs["max_sequence_length"] = max_sequence_length
    return kwargs


def image_to_image_kwargs(pipe: Any, kwargs: dict[str, Any], init_images: list[Any], strength: float | None
                          ) -> dict[str, Any]:
    """A text-to-image call's arguments for the image-to-image pipeline ``pipe``: ``image`` and ``strength`` added,
    ``height``/``width`` kept only where its ``__call__`` takes them (FLUX, SD3; SD and SDXL take the size of the
    image, which ``generate`` has already cropped and resized to the resolution)."""
    import inspect

    accepted = inspect.signature(type(pipe).__call__).parameters
    out = {k: v for k, v in kwargs.items() if k not in ("height", "width") or k in accepted}
    out["image"] = list(init_images)
    if strength is not None:
        out["strength"] = strength
    return out


@dataclass
class DiffusersSource:
    """Calls a diffusers pipeline on a batch of different prompts with one ``torch.Generator`` per image.

    Generators live on the CPU, so the starting noise of an image is the same on every device and
    does not depend on the batch it is in (its pixels may still differ slightly: batched kernels round
    differently). Arguments are mapped by :func:`pipeline_kwargs` for ``family`` (``None``: read from the
    pipeline's class).
    """

    pipe: Any
    steps: int
    guidance: float
    width: int
    height: int
    family: str | None = None
    max_sequence_length: int | None = None
    _img2img: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        loaded = family_of_pipeline_class(type(self.pipe).__name__)
        if self.family is not None and loaded is not None and loaded != self.family:
            raise UserError(f"the model loaded as {type(self.pipe).__name__}, not a {self.family} pipeline")
        self.family = self.family or loaded

    def check_arguments(self, model: str, negative_prompt: str) -> None:
        """Refuse settings this pipeline's family cannot take (for models whose family was unknown at config time)."""
        if self.family is not None:
            check_family_arguments(self.family, model, negative_prompt, self.max_sequence_length)

    @property
    def scheduler_name(self) -> str:
        return type(self.pipe.scheduler).__name__

    def image_to_image(self) -> Any:
        """The pipeline's image-to-image twin (made once with ``AutoPipelineForImage2Image.from_pipe``).

        Raises:
            UserError: diffusers has no image-to-image pipeline for this pipeline's class.
        """
        twin = self._img2img
        if twin is None:
            from diffusers import AutoPipelineForImage2Image

            try:
                twin = AutoPipelineForImage2Image.from_pipe(self.pipe)
            except ValueError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(f"{type(self.pipe).__name__} has no image-to-image pipeline in diffusers, so "
                                f"'init-strength' (img2img) cannot be used with it: {first}") from None
            twin.set_progress_bar_config(disable=True)
            self._img2img = twin
        return twin

    def __call__(self, prompts: list[str], negatives: list[str], seeds: list[int], guidance: float | None = None,
                 init_images: list[Any] | None = None, strength: float | None = None) -> tuple[list[Any], list[bool]]:
        import torch

        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        kwargs = pipeline_kwargs(self.family, self.steps, self.guidance if guidance is None else guidance, self.width,
                                 self.height, self.max_sequence_length, negatives)
        pipe = self.pipe
        if init_images is not None:
            pipe = self.image_to_image()
            kwargs = image_to_image_kwargs(pipe, kwargs, init_images, strength)
        with torch.inference_mode():
            out = pipe(prompt=prompts, generator=generators, **kwargs)
        flags = getattr(out, "nsfw_content_detected", None)
        nsfw = [bool(f) for f in flags] if flags is not None else [False] * len(prompts)
        return list(out.images), nsfw
