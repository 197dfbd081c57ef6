"""The score stage's done rule for one shard and the staleness rule later stages read scores by, without a network:
score files of the right shapes on a fake run, then each fault a disk, a kill or a hand can leave."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import write_fake_run
from shard_faults import sample_offsets, write_score_files, zero_fill_from

from imagenet_plus.contract import RunPaths, ShardStats, stats_path
from imagenet_plus.errors import CorruptShard, UserError
from imagenet_plus.pipeline.freshness import is_current, mark_current
from imagenet_plus.report.sheets import read_images
from imagenet_plus.score.config import ScoreConfig
from imagenet_plus.score.files import scores_problem
from imagenet_plus.score.stage import stage_inputs

CFG = ScoreConfig(clip_model="tiny-random", classifier="tiny-random", nsfw_model="none")


@pytest.fixture
def scored(tmp_path: Path) -> RunPaths:
    """A fake run (3 shards of 2) with score files for every shard and the stage recorded as current."""
    run = write_fake_run(tmp_path / "run", per_class=2, shard_size=2, size=16)
    write_score_files(run)
    paths = RunPaths(run)
    paths.summary_json.write_text("{}")
    mark_current(paths, stage_inputs(run, CFG))
    assert is_current(paths, stage_inputs(run, CFG))
    assert [scores_problem(paths, s) for s in ("00000", "00001", "00002")] == [None] * 3
    return paths


def _current(paths: RunPaths) -> bool:
    return is_current(paths, stage_inputs(paths.root, CFG))


def test_a_cut_parquet_or_npy_is_not_done_and_the_stage_not_current(scored: RunPaths) -> None:
    parquet = scored.score_files("00001").parquet
    good = parquet.read_bytes()
    parquet.write_bytes(good[:-9])
    assert scores_problem(scored, "00001").startswith(f"{parquet} does not read back")
    assert not _current(scored)
    parquet.write_bytes(good)
    assert _current(scored)
    npy = scored.score_files("00002").logits
    with open(npy, "r+b") as f:  # one row short, the header unchanged (a lost tail)
        f.truncate(os.path.getsize(npy) - 2 * 1008)
    assert scores_problem(scored, "00002").startswith(f"{npy} does not read back")
    assert not _current(scored)


def test_killed_before_the_record_is_not_scored(scored: RunPaths) -> None:
    scored.score_files("00000").stats.unlink()
    assert scores_problem(scored, "00000") == "not scored" and not _current(scored)


def test_scores_of_a_shard_made_again_or_unfinished_are_stale(scored: RunPaths) -> None:
    stats = stats_path(scored.generated / "00001.tar")
    record = ShardStats.read(stats)
    stats.write_text(json.dumps({**record.to_dict(), "seconds": record.seconds + 1.0}))  # made again
    why = f"{scored.generated / '00001.tar'} was made again after 00001.parquet was scored"
    assert scores_problem(scored, "00001") == why
    parquet = scored.score_files("00001").parquet
    with pytest.raises(UserError, match=f"the scores {parquet} are stale: {why}; run 'imagenet-plus generate"):
        scored.scored_parquets()
    stats.unlink()  # its stats deleted: the tar is not finished
    with pytest.raises(UserError, match="00001.tar has no stats file 00001.json"):
        scored.scored_parquets()
    (scored.generated / "00001.tar").unlink()  # and the tar too (generate's cleanup, killed before remaking it)
    with pytest.raises(UserError, match="stats .*00001.json are missing"):
        scored.scored_parquets()


def test_report_sheets_name_a_zero_filled_shard(scored: RunPaths) -> None:
    tar = scored.generated / "00001.tar"
    zero_fill_from(tar, sample_offsets(tar)[1])
    with pytest.raises(CorruptShard, match=f"{tar}: holds 1 samples, its stats say 2"):
        read_images(scored, {"00001": {"n01440764_000000"}})
