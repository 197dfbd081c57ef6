"""Generation settings: the frozen dataclass behind ``imagenet-plus generate`` and its YAML config.

A config file's keys are the CLI flags (``images-per-class`` or ``images_per_class``); flags given
on the command line override the file. A file used by ``imagenet-plus run`` may also hold one
section per later stage (``score:``, ``select:``, ``release:``, ``report:``, ``evaluate:``,
``publish:``); ``generate`` reads only the top-level keys.

Model presets: settings left unset (``steps``, ``guidance``, ``resolution``, ``max_sequence_length``) are filled from
:data:`MODELS` for known models, so ``run.yaml`` always records concrete values; so are the captioner and the prompt
model of the ``caption`` and ``llm`` strategies (:data:`DEFAULT_CAPTIONER`, :data:`DEFAULT_PROMPT_MODEL`).

Recipes (docs/recipes.md): ``guidance`` may be a range (``[1, 5]`` / ``1:5``, one value per image from its seed);
``real`` names real images per class, which the ``caption`` strategy captions (``captioner``) and img2img starts
from (``init-strength``); the ``llm`` strategy's descriptions come from ``prompt-model``. The settings added with
them (:data:`LATER_SETTINGS`) are left out of ``run.yaml`` and the config hash while at their defaults, so a run
made before they existed keeps its hash.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from imagenet_plus.classes.llm import DEFAULT_PROMPT_MODEL
from imagenet_plus.classes.prompts import STRATEGIES
from imagenet_plus.contract import IMAGE_EXTENSIONS
from imagenet_plus.errors import ConfigError
from imagenet_plus.generate.guidance import DEFAULT_LEVELS, GuidanceRange, guidance_setting, parse_guidance
from imagenet_plus.generate.real import MISSING_POLICIES
from imagenet_plus.models.captioner import DEFAULT_CAPTIONER
from imagenet_plus.models.diffusion import model_location
from imagenet_plus.models.registry import (
    FAMILIES,
    FAMILY_DEFAULTS,
    MODELS,
    OFFLOAD_MODES,
    T5_FAMILIES,
    UNKNOWN_FAMILY_DEFAULTS,
    KnownModel,
    check_family_arguments,
    family_from_folder,
)
from imagenet_plus.pipeline.config import config_to_dict, load_config, setting, split_config_file, stable_hash
from imagenet_plus.pipeline.engines import split_execution

DTYPES = ("auto", "float32", "float16", "bfloat16")

#: Settings that may change between invocations on the same RUN without changing what an image depicts:
#: how many, how batched, and how the model is placed and executed (offload, torch.compile).
#: ``real`` too: the folder is identified by its fingerprint (``real_fingerprint``), so a moved folder still resumes.
HASH_EXEMPT = ("images_per_class", "batch_size", "offload", "compile", "real")
#: Settings added after runs existed: left out of run.yaml and the hash while at their default (see the module doc).
LATER_SETTINGS = ("guidance_levels", "real", "real_missing", "captioner", "prompt_model", "llm_prompts_per_class",
                  "init_strength")
#: The key under which run.yaml records the fingerprint of the real images (:func:`run_settings`).
REAL_FINGERPRINT = "real_fingerprint"


@dataclass(frozen=True)
class GenerateConfig:
    """Everything that determines a generation run (fields are ``generate``'s flags). Validated on construction."""

    classes: str = setting("imagenet-1k", "Class set spec (see 'imagenet-plus classes').")
    class_limit: int | None = setting(None, "Keep only the first N classes.")
    images_per_class: int = setting(10, "Images per class (may grow on a re-run).")
    model: str = setting("stabilityai/sd-turbo", "Diffusers model: Hub id, local path, or tiny-random.")
    steps: int | None = setting(None, "Inference steps (default: model preset).")
    guidance: float | list[float] | None = setting(
        None, "Classifier-free guidance: a number, or a range MIN:MAX ([min, max] in YAML) drawn per image.")
    guidance_levels: int = setting(DEFAULT_LEVELS, "Evenly spaced values of a guidance range an image draws from.")
    resolution: int | None = setting(None, "Image side in pixels, multiple of 8.")
    batch_size: int = setting(8, "Images per pipeline call.")
    seed: int = setting(0, "Global seed.")
    prompt_strategy: tuple[str, ...] = setting(
        ("diverse",), f"Comma list of {','.join(STRATEGIES)}; one is picked per image.")
    negative_prompt: str = setting("", "Negative prompt for every image ('default' = a stock list).")
    image_format: str = setting("jpg", "jpg, png or webp.")
    quality: int = setting(90, "JPEG/WebP quality.")
    shard_size: int = setting(256, "Images per shard.")
    dtype: str = setting("auto", "auto, float32, float16 or bfloat16.")
    max_attempts: int = setting(3, "Tries per image when NSFW-flagged or black.")
    black_threshold: float = setting(
        4.0, "Mean pixel value (0-255) below which an image counts as black and is regenerated.", cli=False)
    family: str | None = setting(None, "Pipeline family of a model without a preset: sd, sdxl, flux or sd3.")
    max_sequence_length: int | None = setting(None, "T5 tokens kept per prompt (FLUX, SD3; default: model preset).")
    offload: str = setting("none", "none, model or sequential: diffusers' CPU offload for small GPUs.")
    compile: bool = setting(False, "torch.compile the UNet/transformer and VAE decoder.")
    real: str | None = setting(None, "Real images per class: DIR/<class_id>/*.JPEG, or a WebDataset/release folder.")
    real_missing: str = setting("error", "Classes without real images: error, skip (not generated) or text.")
    captioner: str | None = setting(
        None, f"Image-to-text model of the caption strategy (default {DEFAULT_CAPTIONER}; tiny-random for tests).")
    prompt_model: str | None = setting(
        None, f"Language model of the llm strategy (default {DEFAULT_PROMPT_MODEL}; tiny-random for tests).")
    llm_prompts_per_class: int = setting(10, "Scene descriptions the prompt model writes per class (llm strategy).")
    init_strength: float | None = setting(
        None, "img2img from the paired real image with this strength, 0 < S < 1 (needs real images).")

    def __post_init__(self) -> None:
        src = "generate config"
        if self.guidance is not None:
            object.__setattr__(self, "guidance", _guidance_value(self.guidance, self.guidance_levels))
        _check_recipe_settings(self, src)
        for name in ("images_per_class", "batch_size", "shard_size", "max_attempts", "steps", "resolution"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{src}: '{name.replace('_', '-')}' must be positive, got {value}")
        if self.class_limit is not None and self.class_limit <= 0:
            raise ConfigError(f"{src}: 'class-limit' must be positive, got {self.class_limit}")
        if self.resolution is not None and self.resolution % 8 != 0:
            raise ConfigError(f"{src}: 'resolution' must be a multiple of 8, got {self.resolution}")
        if not self.prompt_strategy:
            raise ConfigError(f"{src}: 'prompt-strategy' is empty (choose from {', '.join(STRATEGIES)})")
        for s in self.prompt_strategy:
            if s not in STRATEGIES:
                raise ConfigError(
                    f"{src}: 'prompt-strategy' has unknown strategy {s!r} (choose from {', '.join(STRATEGIES)})"
                )
        if self.image_format not in IMAGE_EXTENSIONS:
            raise ConfigError(f"{src}: 'image-format' must be jpg, png or webp, got {self.image_format!r}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"{src}: 'quality' must be within 1..100, got {self.quality}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"{src}: 'dtype' must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.seed < 0:
            raise ConfigError(f"{src}: 'seed' must be >= 0, got {self.seed}")
        if not self.model.strip():
            raise ConfigError(f"{src}: 'model' is empty")
        if not self.classes.strip():
            raise ConfigError(f"{src}: 'classes' is empty")
        if self.family is not None and self.family not in FAMILIES:
            raise ConfigError(f"{src}: 'family' must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.max_sequence_length is not None and not 1 <= self.max_sequence_length <= 512:
            raise ConfigError(f"{src}: 'max-sequence-length' must be within 1..512, got {self.max_sequence_length}")
        if self.offload not in OFFLOAD_MODES:
            raise ConfigError(f"{src}: 'offload' must be one of {', '.join(OFFLOAD_MODES)}, got {self.offload!r}")

    @property
    def preset(self) -> KnownModel | None:
        """The model's entry in the registry, if it is a known model."""
        return MODELS.get(self.model)

    @property
    def guidance_range(self) -> float | GuidanceRange | None:
        """The guidance as :mod:`~imagenet_plus.generate.guidance` takes it: a number, a range, or None (unset)."""
        return None if self.guidance is None else parse_guidance(self.guidance, self.guidance_levels)

    @property
    def guidance_is_range(self) -> bool:
        """Whether each image draws its own guidance (a range ``[min, max]``)."""
        return isinstance(self.guidance, tuple)

    @property
    def uses_real(self) -> bool:
        """Whether images start from or are described by real images (``real`` is set)."""
        return self.real is not None

    def resolved(self) -> GenerateConfig:
        """Fill family, steps, guidance, resolution and max sequence length; check them against the family.

        Values come from the model's preset, else from the family's defaults (the family is read from a
        local folder's ``model_index.json``, or given as ``family``); an explicit setting always wins.

        Raises:
            ConfigError: a model without a preset and no ``steps``; a setting the family cannot take (a negative
                prompt for FLUX, ``max-sequence-length`` for a family without T5, a guidance FLUX.1-schnell
                would ignore); a ``family`` that contradicts the preset.
        """
        src = "generate config"
        preset = self.preset
        family = self.family
        if preset is not None:
            if family is not None and family != preset.family:
                raise ConfigError(
                    f"{src}: 'family' {family!r} contradicts model {self.model!r} (a {preset.family} model)"
                )
            family = preset.family
            steps, guidance, resolution = preset.steps, preset.guidance, preset.resolution
            max_len = preset.max_sequence_length
        else:
            model_location(self.model)  # a local path that does not exist is named as such
            if self.steps is None:
                raise ConfigError(
                    f"{src}: model {self.model!r} has no preset: give 'steps' (and 'guidance', 'resolution'; "
                    f"known models: {', '.join(sorted(MODELS))})"
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
            raise ConfigError(
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
            captioner=self.captioner or (DEFAULT_CAPTIONER if "caption" in self.prompt_strategy else None),
            prompt_model=self.prompt_model or (DEFAULT_PROMPT_MODEL if "llm" in self.prompt_strategy else None),
        )
        if family in T5_FAMILIES and out.resolution % 16 != 0:
            # the VAE's 8x and the transformer's 2x2 patches: diffusers would silently resize otherwise
            raise ConfigError(f"{src}: 'resolution' must be a multiple of 16 for {family} models, got {out.resolution}")
        return out

    def config_hash(self) -> str:
        """Hash of every setting that changes images (not images-per-class, which may grow, nor batch size)."""
        return stable_hash(hashed_settings(self.resolved()))


def run_settings(cfg: GenerateConfig, real_fingerprint: str | None = None) -> dict[str, Any]:
    """What ``run.yaml`` records of a resolved config: every setting except the :data:`LATER_SETTINGS` left at
    their default, plus the fingerprint of the real images (:data:`REAL_FINGERPRINT`) when the run reads some."""
    data = config_to_dict(cfg)
    for name in LATER_SETTINGS:
        if data[name] == _DEFAULTS[name] or (name == "guidance_levels" and not cfg.guidance_is_range):
            del data[name]
    if real_fingerprint is not None:
        data[REAL_FINGERPRINT] = real_fingerprint
    return data


def hashed_settings(cfg: GenerateConfig | dict[str, Any]) -> dict[str, Any]:
    """The settings of a resolved config (or its run.yaml mapping) that change images: all but :data:`HASH_EXEMPT`."""
    data = run_settings(cfg) if isinstance(cfg, GenerateConfig) else dict(cfg)
    for key in HASH_EXEMPT:
        data.pop(key, None)
    return data


_DEFAULTS = {f.name: f.default for f in fields(GenerateConfig)}


def _guidance_value(value: Any, levels: int) -> float | tuple[float, float]:
    """The setting's stored form: a number, or ``(min, max)`` of a range (a range of equal ends is that number).

    Raises:
        ConfigError: see :func:`~imagenet_plus.generate.guidance.parse_guidance` (one line naming ``guidance``).
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ConfigError(f"generate config: 'guidance-levels' must be an integer >= 2, got {levels!r}")
    try:
        parsed = guidance_setting(parse_guidance(value, levels))
    except ConfigError as exc:
        raise ConfigError(f"generate config: {exc.message}") from None
    return tuple(parsed) if isinstance(parsed, list) else parsed


def _check_recipe_settings(cfg: GenerateConfig, src: str) -> None:
    """One-line errors for the settings of real images, captions, language-model prompts and img2img."""
    if cfg.real_missing not in MISSING_POLICIES:
        raise ConfigError(f"{src}: 'real-missing' must be one of {', '.join(MISSING_POLICIES)}, "
                          f"got {cfg.real_missing!r}")
    if cfg.real is not None and not str(cfg.real).strip():
        raise ConfigError(f"{src}: 'real' is empty (a folder of real images per class)")
    if cfg.real is not None and "://" in cfg.real:  # a URL is read from a local copy (io.storage.local_tree)
        from fsspec.registry import known_implementations

        scheme = cfg.real.split("://", 1)[0].lower()
        if scheme not in known_implementations and scheme not in ("file", "local"):
            raise ConfigError(f"{src}: 'real' has the unknown URL scheme {scheme}:// ({cfg.real!r}): use a local "
                              "folder or an fsspec URL (s3://, gs://, hf://, …)")
    strength = cfg.init_strength
    if strength is not None and not 0 < strength < 1:  # NaN fails too
        raise ConfigError(f"{src}: 'init-strength' must be within 0 < S < 1 (the share of the steps run from the real "
                          f"image), got {strength}")
    if strength is not None and cfg.real is None:
        raise ConfigError(f"{src}: 'init-strength' needs 'real' (the real images img2img starts from)")
    if "caption" in cfg.prompt_strategy and cfg.real is None:
        raise ConfigError(f"{src}: 'prompt-strategy' caption needs 'real' (the real images to caption)")
    if cfg.real is not None and strength is None and "caption" not in cfg.prompt_strategy:
        raise ConfigError(f"{src}: 'real' is set but nothing uses it: add the caption prompt strategy or "
                          "'init-strength' (img2img), or remove 'real'")
    if cfg.real is None and cfg.real_missing != "error":
        raise ConfigError(f"{src}: 'real-missing' needs 'real'")
    if cfg.captioner is not None and "caption" not in cfg.prompt_strategy:
        raise ConfigError(f"{src}: 'captioner' is set but the caption prompt strategy is not used")
    if cfg.prompt_model is not None and "llm" not in cfg.prompt_strategy:
        raise ConfigError(f"{src}: 'prompt-model' is set but the llm prompt strategy is not used")
    for name in ("captioner", "prompt_model"):
        value = getattr(cfg, name)
        if value is not None and not str(value).strip():
            raise ConfigError(f"{src}: '{name.replace('_', '-')}' is empty")
    if cfg.llm_prompts_per_class < 1:
        raise ConfigError(f"{src}: 'llm-prompts-per-class' must be positive, got {cfg.llm_prompts_per_class}")


def load_generate_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> GenerateConfig:
    """Build a :class:`GenerateConfig` from a YAML file's top-level keys (optional) and flag overrides.

    Raises:
        ConfigError: unknown key, or an invalid value (the message names the key and the file).
        UserError: a missing or malformed file.
    """
    top, _ = split_config_file(path)
    top = split_execution(top)[0]  # engine, job share: where and how, read by load_execution
    return load_config(GenerateConfig, top, overrides, str(path) if path is not None else "command line")
