"""The generation plan: which (class, index) pairs exist, their seeds, and how they fall into shards.

Pure functions only; ``generate`` stores the plan's *segments* (:class:`~imagenet_plus.contract.run.Segment`)
in ``RUN/run.yaml``:

- the first segment holds indices ``0 .. images_per_class-1`` of every class;
- raising ``images_per_class`` on a re-run appends an ``extend`` segment with the new indices only (each
  class's next ones, after a top-up's too);
- ``generate --top-up`` appends a ``top-up`` segment with new indices for the classes that
  ``select`` found short of their quota; with ``--remedy`` the segment also records, per label, the prompt
  strategy that replaces the configured ones for its new indices (``strategies``, from ``diagnose``).

Within a segment items are ordered by (label, index) and cut into shards of ``shard_size``; a shard
never spans two segments, so adding a segment never changes a finished shard. Shard numbers run on
across segments. Shard ``s`` belongs to rank ``s % world_size`` (:mod:`imagenet_plus.pipeline.ranks`).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from imagenet_plus.contract.names import make_key
from imagenet_plus.contract.run import Segment

__all__ = [
    "SEED_MASK", "PlanItem", "Segment", "ShardBounds", "attempt_seed", "extend_segment", "image_seed",
    "initial_segment", "next_index_per_class", "plan_shards", "segment_items", "shard_bounds", "top_up_segment",
]

#: Seeds are 63-bit so that every library (torch, numpy, random) accepts them.
SEED_MASK = (1 << 63) - 1


@dataclass(frozen=True)
class PlanItem:
    """One planned image: its class label/id, its index within the class, and its prompt strategy override.

    ``strategy`` is empty when the image takes the configured strategies (the usual case).
    """

    label: int
    class_id: str
    index: int
    strategy: str = ""


def image_seed(global_seed: int, class_id: str, index: int) -> int:
    """The seed of image ``index`` of class ``class_id``: a hash, stable on every machine and process."""
    digest = hashlib.sha256(f"imagenet-plus/{global_seed}/{class_id}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & SEED_MASK


def attempt_seed(seed: int, attempt: int) -> int:
    """The seed of a regeneration attempt: the next seed (attempt 0 is the image's own seed)."""
    return (seed + attempt) & SEED_MASK


def initial_segment(num_classes: int, images_per_class: int) -> Segment:
    """Indices ``0 .. images_per_class-1`` of every class."""
    return Segment("initial", tuple((label, 0, images_per_class) for label in range(num_classes)))


def extend_segment(segments: Sequence[Segment], count: int) -> Segment:
    """``count`` more indices of every class (images per class raised by ``count``), after the highest it has.

    A class that got a top-up already holds indices past ``images_per_class``: its new indices start after
    them, so a raise never plans an index twice (the segments of a class stay contiguous from 0).
    """
    nxt = next_index_per_class(segments)
    return Segment("extend", tuple((label, nxt[label], nxt[label] + count) for label in sorted(nxt)))


def next_index_per_class(segments: Iterable[Segment]) -> dict[int, int]:
    """The first unused index of each class (labels that appear in a segment)."""
    nxt: dict[int, int] = {}
    for seg in segments:
        for label, _start, stop in seg.ranges:
            nxt[label] = max(nxt.get(label, 0), stop)
    return nxt


def top_up_segment(segments: Sequence[Segment], new_counts: dict[int, int], based_on: str,
                   strategies: dict[int, str] | None = None) -> Segment:
    """New indices for some classes, after the highest index each already has.

    Args:
        segments: the run's segments so far.
        new_counts: new images per label.
        based_on: the hash of the selection summary this top-up answers (one top-up per summary).
        strategies: prompt strategy per label for the new indices, in place of the configured ones; labels
            without new indices are left out of the segment.
    """
    nxt = next_index_per_class(segments)
    ranges = tuple(
        (label, nxt.get(label, 0), nxt.get(label, 0) + n) for label, n in sorted(new_counts.items()) if n > 0
    )
    topped = {label for label, _, _ in ranges}
    chosen = tuple(sorted((label, s) for label, s in (strategies or {}).items() if label in topped))
    return Segment("top-up", ranges, based_on=based_on, strategies=chosen)


def segment_items(segment: Segment, class_ids: Sequence[str]) -> list[PlanItem]:
    """A segment's items ordered by (label, index), each with the segment's strategy override of its label."""
    override = dict(segment.strategies)
    items = []
    for label, start, stop in sorted(segment.ranges):
        strategy = override.get(label, "")
        items.extend(PlanItem(label, class_ids[label], i, strategy) for i in range(start, stop))
    return items


def plan_shards(segments: Sequence[Segment], class_ids: Sequence[str], shard_size: int) -> list[list[PlanItem]]:
    """Cut each segment into shards of ``shard_size`` items; shard numbers run on across segments."""
    shards: list[list[PlanItem]] = []
    for seg in segments:
        items = segment_items(seg, class_ids)
        shards.extend(items[i : i + shard_size] for i in range(0, len(items), shard_size))
    return shards


@dataclass(frozen=True)
class ShardBounds:
    """What a planned shard holds, without its items: its count and its first and last keys."""

    count: int
    first_key: str
    last_key: str


def shard_bounds(segments: Sequence[Segment], class_ids: Sequence[str], shard_size: int) -> list[ShardBounds]:
    """The bounds of every shard of :func:`plan_shards`, worked out from the segments' ranges alone.

    Checking the plan against the shards on disk needs only these; listing every item of an ImageNet-size plan
    (1.3 M) takes seconds, this takes milliseconds.
    """
    out: list[ShardBounds] = []
    for seg in segments:
        ranges = sorted(seg.ranges)
        offsets = list(itertools.accumulate((stop - start for _, start, stop in ranges), initial=0))

        def key_at(position: int, ranges: list[tuple[int, int, int]] = ranges, offsets: list[int] = offsets) -> str:
            r = bisect.bisect_right(offsets, position) - 1
            label, start, _ = ranges[r]
            return make_key(class_ids[label], start + position - offsets[r])

        for first in range(0, offsets[-1], shard_size):
            last = min(first + shard_size, offsets[-1]) - 1
            out.append(ShardBounds(last - first + 1, key_at(first), key_at(last)))
    return out
