"""What each image of a shard is made from: seed, prompt strategy, guidance, paired real image, prompt; and the
order its batches run in.

Pure functions of the plan and the config (plus the real images index, the captions and the language model's
descriptions that :mod:`~imagenet_plus.generate.inputs` provides), so every rank, a resumed run and another
batch size make the same choices:

- **seed** and **strategy**: as before real images existed (``image_seed``, the segment's override or
  ``choose_strategy``).
- **guidance**: :func:`~imagenet_plus.generate.guidance.image_guidance` of the image's own seed (a fixed
  guidance, or a level of the range); a regeneration attempt keeps it.
- **real image**: an image whose strategy is ``caption``, or every image of an img2img run (``init-strength``), is
  paired with real image ``index mod n`` of its class (:meth:`~imagenet_plus.generate.real.RealIndex.pair`). A
  class without real images under ``real-missing: text`` has no pair: its images use the first configured strategy
  that needs no input (``name`` when there is none) and run as text-to-image.
- **batches**: a shard's images are grouped by (guidance, img2img or not) and batched within a group in shard
  order (:func:`~imagenet_plus.generate.guidance.batches_by_guidance`); with one fixed guidance and no real images
  this is the shard order cut every ``batch_size`` images, as before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imagenet_plus.classes.prompts import INPUT_STRATEGIES, build_prompt, choose_strategy
from imagenet_plus.classes.sets import ClassInfo
from imagenet_plus.contract import make_key, real_image_fields
from imagenet_plus.generate.config import GenerateConfig
from imagenet_plus.generate.guidance import batches_by_guidance, image_guidance
from imagenet_plus.generate.plan import PlanItem, image_seed
from imagenet_plus.generate.real import RealIndex, RealRef, load_real_image

#: The strategy of an image whose strategy needs a real image its class does not have, when no text strategy is set.
TEXT_FALLBACK = "name"


@dataclass(frozen=True)
class ImagePlan:
    """One image of a shard, before its prompt: what its seed decides and the real image it is paired with."""

    item: PlanItem
    cls: ClassInfo
    key: str
    seed: int
    strategy: str
    guidance: float
    ref: RealRef | None

    @property
    def batch_key(self) -> tuple[float, bool]:
        """Images of one batch share this: the guidance, and whether they start from a real image."""
        return (self.guidance, self.ref is not None)


def text_strategy(strategies: Sequence[str]) -> str:
    """The strategy of an image that has no real image to caption: the first configured one that needs no input."""
    return next((s for s in strategies if s not in INPUT_STRATEGIES), TEXT_FALLBACK)


def plan_images(items: Sequence[PlanItem], cfg: GenerateConfig, classes: Sequence[ClassInfo],
                real: RealIndex | None) -> list[ImagePlan]:
    """Seed, strategy, guidance and real image of each item of a shard, in shard order (see the module docstring).

    Args:
        items: the shard's plan items.
        cfg: the resolved config (its guidance is set).
        classes: the class set, in label order.
        real: the run's real images, or None.

    Raises:
        UserError: a class without real images under ``real-missing: error`` (caught when the run is planned).
    """
    g = cfg.guidance_range
    if g is None:
        raise ValueError("plan_images needs a resolved config (guidance set)")
    img2img = cfg.init_strength is not None
    out = []
    for item in items:
        cls = classes[item.label]
        seed = image_seed(cfg.seed, cls.id, item.index)
        strategy = item.strategy or choose_strategy(cfg.prompt_strategy, seed)
        ref = None
        if real is not None and (img2img or strategy == "caption"):
            ref = real.pair(cls.id, item.index)
        if ref is None and strategy == "caption":
            strategy = text_strategy(cfg.prompt_strategy)
        out.append(ImagePlan(item, cls, make_key(cls.id, item.index), seed, strategy, image_guidance(seed, g), ref))
    return out


def caption_pairs(images: Sequence[ImagePlan]) -> list[tuple[str, RealRef]]:
    """The (key, real image) pairs whose captions go into prompts (images of the ``caption`` strategy)."""
    return [(im.key, im.ref) for im in images if im.strategy == "caption" and im.ref is not None]


def image_prompt(im: ImagePlan, captions: Mapping[str, str], descriptions: Mapping[str, Sequence[str]]) -> str:
    """The prompt of an image: its strategy's, with its caption or its class's descriptions where it needs them.

    Raises:
        UserError: a ``caption`` image without a caption, an ``llm`` image without descriptions.
    """
    return build_prompt(im.cls, im.strategy, im.seed, caption=captions.get(im.key),
                        descriptions=descriptions.get(im.cls.id))


def real_meta(cfg: GenerateConfig, im: ImagePlan, caption: str | None) -> dict[str, Any]:
    """The sample's real-image fields (only for a run with ``real``; empty otherwise, so plain runs are unchanged)."""
    if not cfg.uses_real:
        return {}
    used = im.ref is not None
    return real_image_fields(im.ref.source if used else None, caption if im.strategy == "caption" else None,
                             cfg.init_strength if used and cfg.init_strength is not None else None)


def init_image(ref: RealRef, resolution: int) -> Any:
    """The real image img2img starts from: decoded (RGB), centre-cropped to a square and resized to ``resolution``.

    ``PIL.ImageOps.fit`` does both in one step (bicubic, the crop centred), as torchvision's ``Resize`` +
    ``CenterCrop`` would in two.

    Raises:
        UserError: an unreadable image (naming it).
    """
    from PIL import Image, ImageOps

    return ImageOps.fit(load_real_image(ref), (resolution, resolution), Image.Resampling.BICUBIC)


def batch_order(images: Sequence[ImagePlan], batch_size: int) -> deque[int]:
    """The positions of a shard's images in the order they run: grouped by :attr:`ImagePlan.batch_key`
    (ascending), shard order within a group; :func:`next_batch` cuts it into batches."""
    batches = batches_by_guidance(range(len(images)), lambda pos: images[pos].batch_key, batch_size)
    return deque(pos for batch in batches for pos in batch)


def next_batch(pending: deque[tuple[int, int]], key_of: Callable[[int], Hashable], size: int) -> list[tuple[int, int]]:
    """Take the next batch of (position, attempt) from ``pending``: its head and the following entries with the
    head's batch key, up to ``size``; the others keep their order.

    Retried images (appended at the end) join the next batch of their key: with one key this is the first ``size``
    entries, the order plain runs always had.
    """
    head = pending.popleft()
    key = key_of(head[0])
    batch, skipped = [head], []
    while pending and len(batch) < size:
        entry = pending.popleft()
        (batch if key_of(entry[0]) == key else skipped).append(entry)
    pending.extendleft(reversed(skipped))
    return batch
