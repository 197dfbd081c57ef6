"""Guidance ranges: one classifier-free guidance value per image, drawn from its seed.

``guidance`` is a number (every image uses it) or a range ``[min, max]`` (YAML list) / ``min:max`` (CLI
string): each image then draws its own value, uniformly over :data:`DEFAULT_LEVELS` evenly spaced levels
of ``[min, max]`` (9 levels of ``[1, 5]`` are 1.0, 1.5, …, 5.0). "Diversity is Definitely Needed"
(Shipard et al., CVPR Workshops 2023) draws the guidance of every image at random in ``[1, 5]``: low
guidance gives varied, less prototypical images, high guidance images that follow the prompt closely.

**Why levels, not any real number.** diffusers' pipelines take one ``guidance_scale`` per call, for the
whole batch. A shard's images are therefore grouped by guidance value and batched within a group
(:func:`batches_by_guidance`); with a continuous draw every image would have its own value and every
batch would hold one image. With ``L`` levels a shard of ``n`` images runs in at most
``ceil(n / batch_size) + L - 1`` calls instead of ``ceil(n / batch_size)`` (each level adds at most one
partly filled batch): 256-image shards, batch 16 and 9 levels make at most 24 calls instead of 16, and fewer
when the levels fill whole batches. More levels mean a finer draw and more partial batches.

**Determinism.** An image's value depends on its seed alone (``random.Random(f"guidance:{seed}")``, which
hashes the string with SHA-512, never Python's salted ``hash()``), so it is the same at any batch size,
on any rank and machine, and a resumed run draws the same values.

Pure functions, no torch: the config, the plan and the tests use them without loading a model.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from imagenet_plus.errors import ConfigError

#: Levels of a range when not given: 9 levels of [1, 5] are steps of 0.5.
DEFAULT_LEVELS = 9
#: Digits a level is rounded to, so that ``1 + 4 * 3 / 8`` is exactly the ``2.5`` a user reads in run.yaml.
LEVEL_DIGITS = 6

T = TypeVar("T")

_NUMBER = r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*"
_RANGE_TEXT = re.compile(rf"^({_NUMBER}):({_NUMBER})$")


@dataclass(frozen=True)
class GuidanceRange:
    """Guidance drawn per image from ``levels`` evenly spaced values of ``[min, max]`` (both included).

    Attributes:
        min: the lowest value (>= 0).
        max: the highest value (> ``min``).
        levels: how many values (>= 2).
    """

    min: float
    max: float
    levels: int = DEFAULT_LEVELS

    def __post_init__(self) -> None:
        for name in ("min", "max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"'guidance': {name} must be a finite number, got {value!r}")
            if value < 0:
                raise ConfigError(f"'guidance': values must be >= 0, got {value}")
        if self.min >= self.max:
            raise ConfigError(f"'guidance': range min must be below max, got {self.min}:{self.max}")
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 2:
            raise ConfigError(f"'guidance': a range needs at least 2 levels, got {self.levels!r}")

    @property
    def values(self) -> tuple[float, ...]:
        """The levels, ascending: ``min``, ``min + step``, …, ``max``."""
        step = (self.max - self.min) / (self.levels - 1)
        inner = (round(self.min + i * step, LEVEL_DIGITS) for i in range(1, self.levels - 1))
        return (float(self.min), *inner, float(self.max))

    def __str__(self) -> str:
        """The CLI form, ``1.0:5.0``."""
        return f"{float(self.min)}:{float(self.max)}"


def parse_guidance(value: Any, levels: int = DEFAULT_LEVELS) -> float | GuidanceRange:
    """A fixed guidance (float) or a :class:`GuidanceRange` from a config value or a CLI string.

    Accepted: a number (``2``, ``7.5``, ``"7.5"``); a list of two numbers (YAML ``[1.0, 5.0]``); the CLI
    string ``"1.0:5.0"``; a :class:`GuidanceRange` (returned as is). A range whose ends are equal is that
    fixed number.

    Args:
        value: the setting.
        levels: levels of a range (see :data:`DEFAULT_LEVELS`).

    Raises:
        ConfigError: not a number or two numbers, NaN or infinite, negative, min above max, three numbers
            (``a:b:c``), fewer than two levels. The message is one line naming ``guidance``.
    """
    if isinstance(value, GuidanceRange):
        return value
    if isinstance(value, str):
        text = value.strip()
        match = _RANGE_TEXT.match(text)
        if match:
            return _range(float(match.group(1)), float(match.group(2)), levels)
        if ":" in text:
            raise ConfigError(f"'guidance' must be a number or MIN:MAX (two numbers), got {value!r}")
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(f"'guidance' must be a number or MIN:MAX, got {value!r}") from None
        return _fixed(number)
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(f"'guidance' as a list must be [min, max] (two numbers), got {list(value)!r}")
        lo, hi = (_number(v, value) for v in value)
        return _range(lo, hi, levels)
    return _fixed(_number(value, value))


def _number(v: Any, whole: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"'guidance' must be a number or [min, max], got {whole!r}")
    return float(v)


def _fixed(number: float) -> float:
    if not math.isfinite(number):
        raise ConfigError(f"'guidance' must be a finite number, got {number}")
    if number < 0:
        raise ConfigError(f"'guidance' must be >= 0, got {number}")
    return number


def _range(lo: float, hi: float, levels: int) -> float | GuidanceRange:
    for v in (lo, hi):
        _fixed(v)
    if lo == hi:
        return lo
    return GuidanceRange(lo, hi, levels)


def guidance_setting(g: float | GuidanceRange) -> float | list[float]:
    """The value to record in ``run.yaml`` / the config hash: the number, or ``[min, max]`` (levels aside)."""
    return [float(g.min), float(g.max)] if isinstance(g, GuidanceRange) else float(g)


def guidance_levels(g: float | GuidanceRange) -> tuple[float, ...]:
    """Every value an image may get: ``(g,)`` for a fixed guidance, the levels of a range."""
    return g.values if isinstance(g, GuidanceRange) else (float(g),)


def image_guidance(seed: int, g: float | GuidanceRange) -> float:
    """The guidance of the image whose seed is ``seed``: ``g`` itself, or a level of the range drawn uniformly.

    The draw uses ``random.Random(f"guidance:{seed}")`` only, so it is the same at any batch size, on any
    rank, machine or Python process (string seeds are hashed with SHA-512 by ``random``).
    """
    if not isinstance(g, GuidanceRange):
        return float(g)
    values = g.values
    return values[random.Random(f"guidance:{seed}").randrange(len(values))]


def batches_by_guidance(items: Iterable[T], guidance_of: Callable[[T], Hashable], batch_size: int) -> list[list[T]]:
    """Split a shard's items into batches that each share one guidance value.

    Items are grouped by ``guidance_of(item)``; groups come in ascending guidance order, items within a
    group keep the shard's order, and each group is cut into batches of ``batch_size`` (its last batch may
    be smaller). The result depends on the items and their values only, never on how they are later
    distributed, so a shard always runs in the same batches.

    Args:
        items: the shard's items, in shard order.
        guidance_of: an item's guidance value (e.g. ``lambda it: image_guidance(it.seed, g)``).
        batch_size: the largest batch.

    Raises:
        ValueError: ``batch_size`` below 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(guidance_of(item), []).append(item)
    batches: list[list[T]] = []
    for value in sorted(groups):
        group = groups[value]
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    return batches


def max_batches(n: int, batch_size: int, g: float | GuidanceRange) -> int:
    """The most batches :func:`batches_by_guidance` makes of n items: ``ceil(n / b) + levels - 1``, at most ``n``."""
    levels = len(guidance_levels(g))
    return min(n, math.ceil(n / batch_size) + levels - 1) if n else 0
