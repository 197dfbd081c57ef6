"""Captions of real images (``--captioner ID_OR_PATH``): an image-to-text model through transformers.

The caption-in-prompt recipes ("Image Captions are Natural Prompts", Real-Fake) prompt the generator with
a caption of a real image of the class. The default captioner is BLIP (Li et al., ICML 2022) fine-tuned
for captioning, :data:`DEFAULT_CAPTIONER` = ``Salesforce/blip-image-captioning-large``; any model that
``AutoProcessor`` + ``AutoModelForImageTextToText`` load and whose ``generate`` writes a caption from
``pixel_values`` works the same way (BLIP-2, ``Salesforce/blip2-opt-2.7b``, loads through the same classes;
only BLIP is tested here). ``tiny-random`` is a tiny random BLIP of the real architecture
(:func:`imagenet_plus.models.tiny_text.tiny_blip_dir`), for tests and demos.

**Deterministic**: greedy decoding (``do_sample=False``, one beam) with a fixed ``max_new_tokens``; an
optional text ``prompt`` conditions the caption (BLIP's "a photography of") and is cut from its start.

**Cached, resumable, bounded memory**: captions go to ``RUN/captions/NNNNN.parquet`` (columns
:data:`~imagenet_plus.contract.names.CAPTION_COLUMNS`: the generated sample's key, the real image's source,
the caption), one file per generated shard, written atomically when the shard's captions are complete;
a file is reused when it holds exactly the shard's (key, source) pairs. Only one shard and one batch of
images are in memory at a time. ``RUN/captions/captioner.json`` records the captioner and its settings;
a run that asks for another captioner or other settings is refused (captions must not mix models).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from imagenet_plus.contract.names import CAPTION_COLUMNS, CAPTIONER_JSON, CAPTIONS_DIR, shard_name
from imagenet_plus.contract.records import read_json
from imagenet_plus.errors import ConfigError, ModelUnavailable, UserError
from imagenet_plus.io.atomic import atomic_file, write_json_atomic
from imagenet_plus.io.storage import local_copy
from imagenet_plus.models.tiny_text import TINY_RANDOM, tiny_blip_dir
from imagenet_plus.pipeline.progress import progress_bar

log = logging.getLogger(__name__)

#: The default captioner (a Hub id; must be in the local Hugging Face cache when offline).
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-large"
#: The caption of an image for which the model wrote nothing (it stopped at once): prompts stay well formed.
EMPTY_CAPTION = "a photo"
#: Versions the way captions are made (decoding, cleaning); part of the cache record.
CAPTION_PROTOCOL = 1
DTYPES = ("auto", "float32", "float16", "bfloat16")


class HasSource(Protocol):
    """A real image reference: what it is called in the captions (``source``); the loader reads it."""

    source: str


@dataclass(frozen=True)
class CaptionSettings:
    """How captions are made.

    Attributes:
        model: a Hub id, a local folder, or ``tiny-random``.
        max_new_tokens: the longest caption (tokens); decoding is greedy.
        prompt: text the caption continues (``a photography of``); empty for an unconditional caption.
        dtype: ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16`` or ``bfloat16``.
        batch_size: images per forward pass (does not change the captions; not recorded).
    """

    model: str = DEFAULT_CAPTIONER
    max_new_tokens: int = 30
    prompt: str = ""
    dtype: str = "auto"
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not str(self.model).strip():
            raise ConfigError("'captioner' must name a model (a Hub id, a local folder or tiny-random)")
        if self.max_new_tokens < 1:
            raise ConfigError(f"'caption-max-tokens' must be positive, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ConfigError(f"'caption-batch-size' must be positive, got {self.batch_size}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"'caption-dtype' must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def record(self) -> dict[str, Any]:
        """What ``captioner.json`` records: every setting that changes a caption (the batch size does not)."""
        data = {k: v for k, v in asdict(self).items() if k != "batch_size"}
        return {**data, "decoding": "greedy", "protocol": CAPTION_PROTOCOL}


def _resolve_dtype(name: str, device: Any) -> Any:
    import torch

    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, name)


class Captioner:
    """A loaded image-to-text model that captions batches of ``PIL`` images.

    Args:
        settings: the model and decoding settings.
        device: torch device.

    Raises:
        ModelUnavailable: the model is not a local folder and cannot be loaded from the Hub or its cache
            (offline), or its files are not a captioning model.
    """

    def __init__(self, settings: CaptionSettings, device: Any = "cpu") -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.settings = settings
        self.device = torch.device(device)
        self.dtype = _resolve_dtype(settings.dtype, self.device)
        source = str(tiny_blip_dir()) if settings.model == TINY_RANDOM else settings.model
        try:
            self.processor = AutoProcessor.from_pretrained(source)
            model = AutoModelForImageTextToText.from_pretrained(source, dtype=self.dtype)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelUnavailable(f"cannot load captioner {settings.model!r} (not a local folder, and not in the "
                                   f"Hugging Face cache while offline?): {first}") from None
        self.model = model.to(self.device).eval()
        self.model.requires_grad_(False)

    def caption(self, images: Sequence[Any]) -> list[str]:
        """Captions of ``images`` (RGB ``PIL`` images), in order; batched by ``settings.batch_size``."""
        out: list[str] = []
        for start in range(0, len(images), self.settings.batch_size):
            out += self._caption_batch(images[start : start + self.settings.batch_size])
        return out

    def _caption_batch(self, images: Sequence[Any]) -> list[str]:
        import torch

        prompt = clean_caption(self.settings.prompt)
        kwargs: dict[str, Any] = {"images": list(images), "return_tensors": "pt"}
        if prompt:
            kwargs["text"] = [prompt] * len(images)
        inputs = self.processor(**kwargs)
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items() if hasattr(v, "to")}
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=self.settings.max_new_tokens, do_sample=False,
                                      num_beams=1)
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        return [strip_prompt(clean_caption(t), prompt) or EMPTY_CAPTION for t in texts]


def clean_caption(text: str) -> str:
    """One line, whitespace collapsed, no stray spaces or commas at the ends."""
    return " ".join(str(text).split()).strip(" ,")


def strip_prompt(caption: str, prompt: str) -> str:
    """``caption`` without the conditioning ``prompt`` it starts with (compared case-insensitively)."""
    if prompt and caption.lower().startswith(prompt.lower()):
        return caption[len(prompt) :].strip(" ,")
    return caption


class CaptionCache:
    """``RUN/captions/``: one parquet of captions per generated shard, and the captioner's record.

    Opening it checks ``captioner.json`` against ``settings`` (written when absent).

    Raises:
        ConfigError: the folder holds captions of another captioner or other settings.
    """

    def __init__(self, run_dir: str | Path, settings: CaptionSettings) -> None:
        self.folder = Path(run_dir) / CAPTIONS_DIR
        self.settings = settings
        record = settings.record()
        record_path = self.folder / CAPTIONER_JSON
        if record_path.is_file():
            old = read_json(record_path, "captioner record")
            if old != record:
                changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
                detail = ", ".join(f"{k} {old.get(k)!r} → {record.get(k)!r}" for k in changed)
                raise ConfigError(f"{self.folder} holds captions made with another captioner or settings ({detail}): "
                                  "use the same captioner, or another run folder")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(record_path, record)

    def path(self, shard: int) -> Path:
        """``RUN/captions/NNNNN.parquet`` of generated shard ``shard``."""
        return self.folder / f"{shard_name(shard)}.parquet"

    def read(self, shard: int) -> list[tuple[str, str, str]] | None:
        """The shard's (key, source, caption) rows, or ``None`` when it has none yet.

        Raises:
            UserError: the file does not read back as a captions table.
        """
        import pyarrow.parquet as pq

        path = self.path(shard)
        if not path.is_file():
            return None
        try:
            table = pq.read_table(local_copy(path), columns=list(CAPTION_COLUMNS))
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"unreadable captions {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        return list(zip(*(table.column(c).to_pylist() for c in CAPTION_COLUMNS)))

    def write(self, shard: int, rows: Sequence[tuple[str, str, str]]) -> None:
        """Write the shard's (key, source, caption) rows atomically (``.partial``, then rename)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = list(zip(*rows)) if rows else [(), (), ()]
        table = pa.table({c: pa.array(list(v), type=pa.string()) for c, v in zip(CAPTION_COLUMNS, columns)})
        with atomic_file(self.path(shard)) as f:
            pq.write_table(table, f)

    def captions(self, shard: int) -> dict[str, str]:
        """The shard's captions by sample key (empty when the shard has none yet)."""
        return {key: caption for key, _, caption in self.read(shard) or ()}


def caption_shards(run_dir: str | Path, shards: Mapping[int, Sequence[tuple[str, HasSource]]],
                   settings: CaptionSettings, load_image: Callable[[Any], Any], device: Any = "cpu",
                   show_progress: bool = True, captioner: Captioner | None = None) -> CaptionCache:
    """Caption the real images paired with each generated shard's samples; skip shards already captioned.

    Args:
        run_dir: the run folder (captions go to ``RUN/captions/``).
        shards: generated shard index → its (sample key, real image reference) pairs, in shard order; the
            reference's ``source`` names it in the captions (e.g. :class:`imagenet_plus.generate.real.RealRef`).
        settings: the captioner and its settings.
        load_image: reference → RGB ``PIL`` image (e.g. :func:`imagenet_plus.generate.real.load_real_image`).
        device: torch device of the model (loaded only when a shard needs captions).
        show_progress: a progress bar over the images to caption (main process only).
        captioner: an already loaded captioner with these settings (else loaded here when needed).

    Returns:
        The cache, for :meth:`CaptionCache.captions`.

    Raises:
        ConfigError: ``RUN/captions`` holds captions of another captioner.
        ModelUnavailable: the captioner cannot be loaded.
        UserError: an unreadable real image (naming it).
    """
    cache = CaptionCache(run_dir, settings)
    todo: dict[int, list[tuple[str, HasSource]]] = {}
    for shard, pairs in sorted(shards.items()):
        wanted = [(key, ref.source) for key, ref in pairs]
        done = cache.read(shard)
        if done is not None and [(k, s) for k, s, _ in done] == wanted:
            continue
        if done is not None:
            log.info("captions of shard %s were made for other real images: captioning it again", shard_name(shard))
        todo[shard] = list(pairs)
    if not todo:
        return cache
    total = sum(len({ref.source for _, ref in pairs}) for pairs in todo.values())
    captioner = captioner or Captioner(settings, device)
    batch = settings.batch_size
    with progress_bar(total, "caption real images", enabled=show_progress) as bar:
        for shard, pairs in todo.items():
            refs = list({ref.source: ref for _, ref in pairs}.values())  # each real image once per shard
            by_source: dict[str, str] = {}
            for start in range(0, len(refs), batch):
                chunk = refs[start : start + batch]
                texts = captioner.caption([load_image(ref) for ref in chunk])
                by_source.update(zip((ref.source for ref in chunk), texts))
                bar.update(len(chunk))
            cache.write(shard, [(key, ref.source, by_source[ref.source]) for key, ref in pairs])
    log.info("captioned %d real images in %d shard(s) (%s batches of %d)", total, len(todo),
             math.ceil(total / batch), batch)
    return cache
