"""The plan: seeds, segments, shard cuts and the rank partition."""

from __future__ import annotations

import pytest

from imagenet_plus.generate.plan import (
    SEED_MASK,
    Segment,
    attempt_seed,
    extend_segment,
    image_seed,
    initial_segment,
    next_index_per_class,
    plan_shards,
    shard_bounds,
    top_up_segment,
)
from imagenet_plus.pipeline.ranks import owner_of, shards_of_rank

IDS = ["a", "b", "c"]


def test_image_seed_is_stable_and_distinct():
    # A fixed value: the same on every machine and process (no salted hash()).
    assert image_seed(0, "n01440764", 0) == image_seed(0, "n01440764", 0)
    seeds = {image_seed(0, c, i) for c in IDS for i in range(100)}
    assert len(seeds) == 300
    assert image_seed(1, "a", 0) != image_seed(0, "a", 0)
    assert all(0 <= s <= SEED_MASK for s in seeds)
    assert attempt_seed(SEED_MASK, 1) == 0
    assert attempt_seed(5, 2) == 7


def test_shards_cover_plan_exactly_and_never_span_segments():
    segs = [initial_segment(3, 5)]
    segs.append(extend_segment(segs, 2))
    shards = plan_shards(segs, IDS, shard_size=4)
    items = [(it.class_id, it.index) for sh in shards for it in sh]
    assert sorted(items) == sorted((c, i) for c in IDS for i in range(7))
    assert len(items) == len(set(items))
    # first segment: 15 items → 4 shards (4,4,4,3); second: 6 items → 2 shards (4,2)
    assert [len(s) for s in shards] == [4, 4, 4, 3, 4, 2]
    # extending leaves the first segment's shards as they were
    assert plan_shards(segs[:1], IDS, 4) == shards[:4]


def test_top_up_adds_new_indices_after_the_last():
    segs = [initial_segment(3, 5)]
    segs.append(extend_segment(segs, 2))
    seg = top_up_segment(segs, {0: 2, 2: 3, 1: 0}, based_on="x")
    assert seg.ranges == ((0, 7, 9), (2, 7, 10))
    assert next_index_per_class(segs + [seg]) == {0: 9, 1: 7, 2: 10}
    assert Segment.from_dict(seg.to_dict()) == seg
    # raising images per class after a top-up: every class gets the same number of new indices, after its last
    more = extend_segment(segs + [seg], 3)
    assert more.ranges == ((0, 9, 12), (1, 7, 10), (2, 10, 13))
    items = [(it.class_id, it.index) for sh in plan_shards(segs + [seg, more], IDS, 4) for it in sh]
    assert len(items) == len(set(items)) == 15 + 6 + 5 + 9


@pytest.mark.parametrize("shard_size", [1, 3, 4, 7, 100])
def test_shard_bounds_are_those_of_the_listed_shards(shard_size):
    segs = [initial_segment(3, 5)]
    segs.append(extend_segment(segs, 2))
    segs.append(top_up_segment(segs, {2: 5, 0: 1}, based_on="x"))
    listed = [(len(sh), f"{sh[0].class_id}_{sh[0].index:06d}", f"{sh[-1].class_id}_{sh[-1].index:06d}")
              for sh in plan_shards(segs, IDS, shard_size)]
    assert [(b.count, b.first_key, b.last_key) for b in shard_bounds(segs, IDS, shard_size)] == listed


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_rank_partition_is_disjoint_and_complete(world_size):
    num_shards = 11
    owned = [shards_of_rank(num_shards, r, world_size) for r in range(world_size)]
    flat = [s for o in owned for s in o]
    assert sorted(flat) == list(range(num_shards))
    assert len(flat) == len(set(flat))
    for r, o in enumerate(owned):
        assert all(owner_of(s, world_size) == r for s in o)
        assert all(s % world_size == r for s in o)
