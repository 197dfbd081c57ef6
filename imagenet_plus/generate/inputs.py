"""What a run reads besides its settings: real images, captions of them, descriptions written by a language model.

Resolved once per ``generate`` call, before anything is written (:func:`resolve_inputs`, called when the run is
planned):

- the **real images** of ``--real DIR`` (:func:`~imagenet_plus.generate.real.open_real`): their index, their
  fingerprint (names, sizes, modification times), which enters the run's config hash (``real_fingerprint`` in
  ``run.yaml``), and the classes that have none (refused, skipped or text-only as ``real-missing`` says);
- the **captioner** and the **prompt model**: that they can be loaded (``AutoConfig.from_pretrained``, the first
  step of the loading path a run takes: a local folder, the Hub, or its cache when offline), so an absent model
  is a one-line error before the run folder is touched;
- the **paired real images** of the images a plan adds: each one is opened (its header: no decoding), so an
  unreadable file is named before anything is written (:func:`check_paired_images`). A file damaged after its
  header is named when it is decoded.

Then, before the first shard (:func:`prepare_texts`), once per run and resumable: the captions of the real
images paired with this process's shards (``RUN/captions/``, :func:`~imagenet_plus.models.captioner.caption_shards`)
and the class descriptions of the ``llm`` strategy (``RUN/llm_prompts.json``,
:func:`~imagenet_plus.classes.llm.write_llm_prompts`: written by the main process; the others wait for the file).
The models are loaded only for what is missing and freed before the diffusion model is loaded.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagenet_plus.classes.llm import LlmSettings, read_llm_prompts, write_llm_prompts
from imagenet_plus.classes.prompts import choose_strategy
from imagenet_plus.classes.sets import ClassInfo
from imagenet_plus.contract.names import CAPTIONER_JSON, CAPTIONS_DIR
from imagenet_plus.errors import ModelUnavailable, UserError
from imagenet_plus.generate.config import GenerateConfig
from imagenet_plus.generate.images import caption_pairs, plan_images
from imagenet_plus.generate.plan import PlanItem, Segment, image_seed, segment_items
from imagenet_plus.generate.real import RealIndex, RealRef, fingerprint, load_real_image, open_real
from imagenet_plus.io.storage import location
from imagenet_plus.models.captioner import CaptionCache, Captioner, CaptionSettings, caption_shards
from imagenet_plus.models.tiny_text import TINY_RANDOM
from imagenet_plus.pipeline.progress import progress_bar

#: Bytes read from a tar member to check that it is an image (its header).
HEADER_BYTES = 1 << 16
#: Threads that open real images when a plan is checked (file opens wait on the disk, not the CPU).
CHECK_THREADS = 8
#: Generated shards whose caption pairs are listed at once (memory: one chunk's real image references).
CAPTION_CHUNK = 64
#: Seconds between two looks at ``RUN/llm_prompts.json`` while another process writes it.
WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class RunInputs:
    """The real images of a run (None without ``real``), their fingerprint and the classes without any."""

    real: RealIndex | None = None
    fingerprint: str | None = None
    without_real: frozenset[str] = frozenset()
    skip: bool = False

    def skipped_labels(self, classes: Sequence[ClassInfo]) -> frozenset[int]:
        """Labels whose images are not planned: classes without real images under ``real-missing: skip``."""
        if not self.skip:
            return frozenset()
        return frozenset(c.label for c in classes if c.id in self.without_real)


def check_text_model(model: str, what: str) -> None:
    """Refuse a captioner or prompt model that cannot be loaded, before anything is written.

    Reads the model's ``config.json`` with ``AutoConfig.from_pretrained`` (a local folder; else the Hub, or its
    cache when offline): the first step of the path :class:`~imagenet_plus.models.captioner.Captioner` and the
    prompt writer take. ``tiny-random`` is built on the spot and always there.

    Raises:
        ModelUnavailable: one line naming the model.
    """
    if model == TINY_RANDOM:
        return
    local = Path(model).expanduser()
    if not local.exists() and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise ModelUnavailable(f"cannot load {what} {model!r}: no such folder")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailable(f"cannot load {what} {model!r} (not a local folder, and not in the Hugging Face cache "
                               f"while offline?): {first}") from None


def resolve_inputs(cfg: GenerateConfig, classes: Sequence[ClassInfo], show_progress: bool = True) -> RunInputs:
    """Check the models the run's strategies need and index the real images (see the module docstring).

    Args:
        cfg: the resolved config.
        classes: the class set.
        show_progress: progress bars while tar shards are indexed and the folder is fingerprinted.

    Raises:
        ModelUnavailable: the captioner or the prompt model cannot be loaded.
        UserError: no real images folder, a class without real images under ``real-missing: error``.
    """
    if cfg.captioner is not None:
        check_text_model(cfg.captioner, "captioner")
    if cfg.prompt_model is not None:
        check_text_model(cfg.prompt_model, "prompt model")
    if cfg.real is None:
        return RunInputs()
    ids = [c.id for c in classes]
    index = open_real(cfg.real, ids, missing=cfg.real_missing, show_progress=show_progress)
    without = frozenset(c for c in ids if index.count(c) == 0)  # under 'error' an empty class folder raises here
    return RunInputs(index, fingerprint(index, show_progress=show_progress), without, cfg.real_missing == "skip")


def without_labels(segment: Segment, labels: frozenset[int]) -> Segment:
    """``segment`` without the ranges (and strategy overrides) of ``labels``."""
    if not labels:
        return segment
    ranges = tuple(r for r in segment.ranges if r[0] not in labels)
    strategies = tuple(s for s in segment.strategies if s[0] not in labels)
    return Segment(segment.kind, ranges, based_on=segment.based_on, strategies=strategies)


def paired_refs(items: Iterable[PlanItem], cfg: GenerateConfig, real: RealIndex) -> Iterator[RealRef]:
    """The distinct real images the items are paired with (img2img: every item; else the ``caption`` ones)."""
    seen: set[tuple[str, int]] = set()
    for item in items:
        if cfg.init_strength is None:
            seed = image_seed(cfg.seed, item.class_id, item.index)
            if (item.strategy or choose_strategy(cfg.prompt_strategy, seed)) != "caption":
                continue
        n = real.count(item.class_id)
        if n and (item.class_id, item.index % n) not in seen:
            seen.add((item.class_id, item.index % n))
            ref = real.pair(item.class_id, item.index)
            if ref is not None:
                yield ref


def check_readable(ref: RealRef) -> None:
    """Open a real image's header (no decoding).

    Raises:
        UserError: ``unreadable image …`` naming the file (or ``shard.tar:key``), as
            :func:`~imagenet_plus.generate.real.load_real_image` does.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if ref.offset < 0:
            with Image.open(ref.path):
                return
        with open(ref.path, "rb") as f:
            f.seek(ref.offset)
            data = f.read(min(ref.size, HEADER_BYTES))
        with Image.open(io.BytesIO(data)):
            return
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise UserError(f"unreadable image {ref.describe()}: {reason}") from None


def check_paired_images(segments: Sequence[Segment], class_ids: Sequence[str], cfg: GenerateConfig,
                        inputs: RunInputs, show_progress: bool = True) -> int:
    """Open the header of every real image the items of ``segments`` are paired with; return how many.

    Raises:
        UserError: the first unreadable image, named.
    """
    if inputs.real is None:
        return 0
    items = (it for seg in segments for it in segment_items(seg, class_ids))
    refs = list(paired_refs(items, cfg, inputs.real))
    with progress_bar(len(refs), "check real images", enabled=show_progress) as bar, \
            ThreadPoolExecutor(CHECK_THREADS) as pool:
        for _ in pool.map(check_readable, refs):
            bar.update(1)
    return len(refs)


# --------------------------------------------------------------------------------------------------
# captions and descriptions, before the shards


@dataclass(frozen=True)
class RunTexts:
    """The captions (per shard, from ``RUN/captions/``) and class descriptions the prompts use."""

    captions: CaptionCache | None = None
    descriptions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def shard_captions(self, shard: int) -> dict[str, str]:
        """``{sample key: caption}`` of a generated shard (empty without the caption strategy)."""
        return self.captions.captions(shard) if self.captions is not None else {}


def caption_settings(cfg: GenerateConfig) -> CaptionSettings:
    """The captioner of a config that uses the ``caption`` strategy (its other settings: the defaults)."""
    return CaptionSettings(model=str(cfg.captioner))


def llm_settings(cfg: GenerateConfig) -> LlmSettings:
    """The prompt model of a config that uses the ``llm`` strategy; its random streams follow the run's seed."""
    return LlmSettings(model=str(cfg.prompt_model), per_class=cfg.llm_prompts_per_class, seed=cfg.seed)


def wait_for(ready: Callable[[], Any], check: Callable[[], None], poll: float = WAIT_SECONDS) -> Any:
    """Poll until ``ready()`` returns something true (what another process writes); ``check()`` raises when that
    process failed."""
    while True:
        check()
        found = ready()
        if found:
            return found
        time.sleep(poll)


def _descriptions_if_complete(run: Path, classes: Sequence[ClassInfo], per_class: int
                              ) -> dict[str, tuple[str, ...]] | None:
    try:
        found = read_llm_prompts(run)
    except UserError:  # not written yet
        return None
    if all(len(found.get(c.id, ())) == per_class for c in classes):
        return {c.id: found[c.id] for c in classes}
    return None


def prepare_texts(run: Path, cfg: GenerateConfig, classes: Sequence[ClassInfo], real: RealIndex | None,
                  shards: Mapping[int, Sequence[PlanItem]], device: Any, is_main: bool, check: Any) -> RunTexts:
    """Write what the prompts of ``shards`` (this process's) need, once and resumably; load it.

    Args:
        run: the run folder.
        cfg: the resolved config.
        classes: the class set.
        real: the real images (for captions).
        shards: shard number → its items, for the shards this process makes.
        device: where the captioner and the prompt model run.
        is_main: this process writes the class descriptions (the others wait for them).
        check: called while waiting; raises when another process failed.

    Raises:
        ModelUnavailable: a model cannot be loaded.
        UserError: an unreadable real image; a cache made with other settings.
    """
    captions = None
    if "caption" in cfg.prompt_strategy and real is not None:
        settings = caption_settings(cfg)
        if is_main:  # the captioner's record is written (or checked) once, before any process captions
            CaptionCache(run, settings)
        else:
            wait_for(lambda: (location(run) / CAPTIONS_DIR / CAPTIONER_JSON).is_file(), check)
        captions = _caption(run, cfg, classes, real, shards, settings, device, is_main)
    descriptions: dict[str, tuple[str, ...]] = {}
    if "llm" in cfg.prompt_strategy:
        llm = llm_settings(cfg)
        if is_main:
            descriptions = write_llm_prompts(run, classes, llm, device=device, show_progress=True)
        elif shards:
            descriptions = wait_for(lambda: _descriptions_if_complete(run, classes, llm.per_class), check)
    _free_accelerator_memory(device)
    return RunTexts(captions, descriptions)


class _LazyCaptioner:
    """The captioner, loaded on its first batch (never, when every shard's captions are cached)."""

    def __init__(self, settings: CaptionSettings, device: Any) -> None:
        self.settings, self.device, self.model = settings, device, None

    def caption(self, images: Sequence[Any]) -> list[str]:
        if self.model is None:
            self.model = Captioner(self.settings, self.device)
        return self.model.caption(images)


def _caption(run: Path, cfg: GenerateConfig, classes: Sequence[ClassInfo], real: RealIndex,
             shards: Mapping[int, Sequence[PlanItem]], settings: CaptionSettings, device: Any,
             show_progress: bool) -> CaptionCache:
    """Caption the real images paired with ``shards``, :data:`CAPTION_CHUNK` shards at a time (the pairs of a chunk
    in memory, not the run's), with one captioner and one progress bar."""
    captioner = _LazyCaptioner(settings, device)
    cache = CaptionCache(run, settings)
    numbers = sorted(shards)
    with progress_bar(len(numbers), "caption real images", unit="shard", enabled=show_progress) as bar:
        for start in range(0, len(numbers), CAPTION_CHUNK):
            chunk = numbers[start : start + CAPTION_CHUNK]
            pairs = {s: caption_pairs(plan_images(shards[s], cfg, classes, real)) for s in chunk}
            cache = caption_shards(run, pairs, settings, load_real_image, device=device, show_progress=False,
                                   captioner=captioner)  # type: ignore[arg-type]
            bar.update(len(chunk))
    return cache


def _free_accelerator_memory(device: Any) -> None:
    """Give the captioner's and prompt model's GPU memory back before the diffusion model loads."""
    if getattr(device, "type", str(device)) == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()
