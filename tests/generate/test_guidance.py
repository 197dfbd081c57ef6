"""Guidance ranges: parsing, per-image draws (range, determinism, uniformity), batching by level."""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import subprocess
import sys

import pytest

from imagenet_plus.errors import ConfigError, UserError
from imagenet_plus.generate.guidance import (
    DEFAULT_LEVELS,
    GuidanceRange,
    batches_by_guidance,
    guidance_levels,
    guidance_setting,
    image_guidance,
    max_batches,
    parse_guidance,
)


def seeds(n: int) -> list[int]:
    """63-bit seeds as generate derives them (sha256 of run seed, class id and index), for a fixed list."""
    return [int.from_bytes(hashlib.sha256(f"0:n01440764:{i}".encode()).digest()[:8], "big") >> 1 for i in range(n)]


@pytest.mark.parametrize("value, expected", [
    (2, 2.0), (7.5, 7.5), (0, 0.0), ("7.5", 7.5), (" 3 ", 3.0),
    ([1.0, 5.0], GuidanceRange(1.0, 5.0)), ((1, 5), GuidanceRange(1.0, 5.0)), ("1.0:5.0", GuidanceRange(1.0, 5.0)),
    (" 1 : 5 ", GuidanceRange(1.0, 5.0)), ("0:2.5e0", GuidanceRange(0.0, 2.5)), ([3, 3], 3.0), ("4:4", 4.0),
])
def test_parse_guidance(value, expected) -> None:
    got = parse_guidance(value)
    assert got == expected and type(got) is type(expected)
    assert parse_guidance(GuidanceRange(1, 5, 3)) == GuidanceRange(1, 5, 3)
    assert parse_guidance("1:5", levels=5) == GuidanceRange(1.0, 5.0, 5)


@pytest.mark.parametrize("value, needle", [
    ([5.0, 1.0], "min must be below max"),
    ("5:1", "min must be below max"),
    (-1, ">= 0"),
    ("-1:5", ">= 0"),
    ([-2.0, 5.0], ">= 0"),
    (float("nan"), "finite"),
    ("nan", "finite"),
    ([1.0, float("inf")], "finite"),
    ([1.0, 2.0, 3.0], "two numbers"),
    ("1:2:3", "two numbers"),
    ("high", "number or MIN:MAX"),
    ("1:x", "two numbers"),
    ([1, "5"], "number or"),
    (True, "number"),
    (None, "number"),
    ({"min": 1}, "number"),
])
def test_bad_guidance_is_a_one_line_config_error(value, needle) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        parse_guidance(value)
    message = str(info.value)
    assert "'guidance'" in message and "\n" not in message
    assert isinstance(info.value, UserError)


def test_bad_levels() -> None:
    for levels in (1, 0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="'guidance': a range needs at least 2 levels"):
            parse_guidance([1, 5], levels=levels)


def test_levels_are_evenly_spaced() -> None:
    g = GuidanceRange(1.0, 5.0)
    assert DEFAULT_LEVELS == 9
    assert g.values == (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
    assert GuidanceRange(0.0, 1.0, 4).values == (0.0, 0.333333, 0.666667, 1.0)
    assert GuidanceRange(1.0, 5.0, 2).values == (1.0, 5.0)
    assert guidance_levels(7.5) == (7.5,) and guidance_levels(g) == g.values
    assert str(g) == "1.0:5.0" and parse_guidance(str(g)) == g
    assert guidance_setting(g) == [1.0, 5.0] and guidance_setting(2) == 2.0
    json.dumps(guidance_setting(g))  # goes into run.yaml / the config hash as plain data


def test_values_in_range_and_on_levels() -> None:
    g = GuidanceRange(1.0, 5.0)
    drawn = [image_guidance(s, g) for s in seeds(2000)]
    assert all(1.0 <= v <= 5.0 for v in drawn)
    assert set(drawn) == set(g.values)
    assert all(image_guidance(s, 7.5) == 7.5 for s in seeds(20))
    assert {image_guidance(s, GuidanceRange(2.0, 3.0, 3)) for s in seeds(200)} == {2.0, 2.5, 3.0}


def test_draws_are_deterministic_and_independent_of_order() -> None:
    g = GuidanceRange(1.0, 5.0)
    ours = [image_guidance(s, g) for s in seeds(500)]
    assert ours == [image_guidance(s, g) for s in seeds(500)]
    assert ours[::-1] == [image_guidance(s, g) for s in reversed(seeds(500))]
    # large seeds work too, and consecutive seeds are not correlated into one level
    assert image_guidance(2**63 - 1, g) in g.values
    assert len({image_guidance(s, g) for s in range(30)}) >= 6


def test_draws_are_the_same_in_another_process_with_another_hash_seed() -> None:
    ours = [image_guidance(s, GuidanceRange(1.0, 5.0)) for s in seeds(50)]
    code = (
        "import json, sys; from imagenet_plus.generate.guidance import GuidanceRange, image_guidance; "
        "print(json.dumps([image_guidance(s, GuidanceRange(1.0, 5.0)) for s in json.loads(sys.argv[1])]))"
    )
    env = dict(os.environ, PYTHONHASHSEED="4242")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(seeds(50))], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ours


def test_draws_are_uniform_over_levels() -> None:
    from scipy.stats import chisquare

    g = GuidanceRange(1.0, 5.0)
    counts = collections.Counter(image_guidance(s, g) for s in seeds(10_000))
    observed = [counts[v] for v in g.values]
    assert sum(observed) == 10_000
    result = chisquare(observed)  # expected: 10_000 / 9 per level
    assert result.pvalue > 0.01, (observed, result)
    assert max(observed) - min(observed) < 200  # about 1111 each, sd about 31


def test_batches_share_one_guidance_and_come_by_level_then_shard_order() -> None:
    g = GuidanceRange(1.0, 5.0)
    shard = [(i, s) for i, s in enumerate(seeds(256))]  # (index in shard, seed)
    of = {i: image_guidance(s, g) for i, s in shard}
    batches = batches_by_guidance(shard, lambda it: of[it[0]], 16)
    levels = [of[b[0][0]] for b in batches]
    assert levels == sorted(levels)
    for b in batches:
        assert 1 <= len(b) <= 16 and len({of[i] for i, _ in b}) == 1
    for level in g.values:
        order = [i for b in batches for i, _ in b if of[i] == level]
        assert order == sorted(order)  # the shard's order within a level
    assert len(batches) <= max_batches(256, 16, g) == 16 + 8
    # a fixed guidance: the shard in order, in full batches
    fixed = batches_by_guidance(shard, lambda it: 7.5, 16)
    assert [it for b in fixed for it in b] == shard and [len(b) for b in fixed] == [16] * 16
    assert batches_by_guidance([], lambda it: 1.0, 4) == []
    with pytest.raises(ValueError, match="batch_size"):
        batches_by_guidance(shard, lambda it: 1.0, 0)


@pytest.mark.parametrize("batch_size", [1, 3, 8, 17, 64, 1000])
def test_pairs_do_not_depend_on_batch_size(batch_size: int) -> None:
    g = GuidanceRange(1.0, 5.0)
    shard = seeds(300)
    reference = {(s, image_guidance(s, g)) for s in shard}
    batches = batches_by_guidance(shard, lambda s: image_guidance(s, g), batch_size)
    pairs = [(s, image_guidance(s, g)) for b in batches for s in b]
    assert len(pairs) == 300 and set(pairs) == reference
    assert len(batches) <= max_batches(300, batch_size, g)
    assert len(batches) >= math.ceil(300 / batch_size)
