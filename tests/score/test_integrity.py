"""Reading integrity of the score files and the shards they come from, through the command line as a user types it
(issue 21, items 4, 5, 6 and 7): a refusal is one ``error:`` line naming the culprit with exit status 2 and
nothing of the user's deleted; a stage that can repair by itself does (exit 0), and a re-run ends with exactly
the planned result.

One fake run (no diffusion model) is scored once with the tiny scorers of the real architectures; each test
works on a copy (``copytree`` keeps sizes and modification times: the copy is as current as the original).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import write_fake_run
from release_fixtures import check_subprocess_error, run_cli
from shard_faults import file_digests, sample_offsets, zero_fill_from

from imagenet_plus.contract import RunPaths
from imagenet_plus.pipeline.freshness import is_current
from imagenet_plus.score.config import ScoreConfig
from imagenet_plus.score.stage import stage_inputs

pytestmark = pytest.mark.slow



def score_flags(classifier: str = "tiny-random") -> list[str]:
    return ["--clip-model", "tiny-random", "--inception-weights", "tiny-random", "--classifier", classifier,
            "--nsfw-model", "tiny-random", "--batch-size", "2", "--num-workers", "1"]


TINY_FLAGS = score_flags()
TINY_CFG = ScoreConfig(clip_model="tiny-random", inception_weights="tiny-random", classifier="tiny-random",
                       nsfw_model="tiny-random", batch_size=2, num_workers=1)
#: Tiny random CLIP embeds every image alike: keep near-duplicates and every zero-shot probability.
THRESHOLDS = "drop_duplicates: false\nclip_class_prob_min: 0.0\n"
CLI_ENV = {"OMP_NUM_THREADS": "1"}


def cli(*args: str):  # type: ignore[no-untyped-def]
    return run_cli(*args, env=CLI_ENV, timeout=600)


def ok(proc) -> str:  # type: ignore[no-untyped-def]
    """Exit 0 and no traceback; returns what it printed (stdout, then stderr: the log and its warnings)."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes × 2 images in 3 shards of 2, scored and selected through the CLI."""
    base = tmp_path_factory.mktemp("integrity")
    run = write_fake_run(base / "run", per_class=2, shard_size=2, size=32)
    (base / "th.yaml").write_text(THRESHOLDS)
    ok(cli("score", str(run), *TINY_FLAGS))
    ok(cli("select", str(run), "--thresholds", str(base / "th.yaml")))
    return run


@pytest.fixture
def run(scored: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(scored, copy)
    (tmp_path / "th.yaml").write_text(THRESHOLDS)
    return copy


def test_item4_score_with_other_models_refuses_before_it_changes_anything(run: Path) -> None:
    paths = RunPaths(run)
    before = {p: p.read_bytes() for p in [*paths.scores.iterdir(), paths.stage_state("score")]}
    proc = cli("score", str(run), *score_flags(classifier="resnet18"))
    check_subprocess_error(proc, str(paths.scores), "other models", "classifier 'tiny-random' → 'resnet18'")
    assert {p: p.read_bytes() for p in before} == before  # summary.json and the stage's record are still there
    # select and report go on working from the scores as they were
    ok(cli("select", str(run), "--thresholds", str(run.parent / "th.yaml")))
    ok(cli("report", str(run), "--sample-classes", "1", "--sheet-images", "1"))
    # the original models: nothing to do
    assert "scored" in ok(cli("score", str(run), *TINY_FLAGS))
    assert paths.summary_json.read_bytes() == before[paths.summary_json]


def test_item6_a_cut_scores_parquet_is_named_then_scored_again(run: Path) -> None:
    paths = RunPaths(run)
    parquet = paths.score_files("00001").parquet
    good = file_digests(paths.scores, "*.parquet")
    parquet.write_bytes(parquet.read_bytes()[: parquet.stat().st_size // 2])
    assert not is_current(paths, stage_inputs(run, TINY_CFG))  # the stage's done rule sees it
    release = ["release", str(run), "--out", str(run.parent / "rel"), "--val-per-class", "1"]
    for command in (["diagnose", str(run)], ["select", str(run), "--per-class", "1"], ["report", str(run)], release):
        check_subprocess_error(cli(*command), str(parquet), "imagenet-plus score")
    assert not (run.parent / "rel").exists()
    # score repairs it by itself: that shard alone is scored again, to the same bytes
    other = paths.score_files("00000").inception.stat().st_mtime_ns
    err = ok(cli("score", str(run), *TINY_FLAGS))
    assert "scoring shard 00001 again" in err and str(parquet) in err
    assert paths.score_files("00000").inception.stat().st_mtime_ns == other
    assert file_digests(paths.scores, "*.parquet") == good
    assert is_current(paths, stage_inputs(run, TINY_CFG))
    # an .npy cut the same way (a lost tail) is found and scored again too
    npy = paths.score_files("00002").clip
    npy.write_bytes(npy.read_bytes()[:-10])
    assert "scoring shard 00002 again" in ok(cli("score", str(run), *TINY_FLAGS))
    assert file_digests(paths.scores, "*.parquet") == good
    ok(cli("diagnose", str(run)))


def test_item5_a_zero_filled_shard_is_named_by_every_reader(run: Path) -> None:
    paths = RunPaths(run)
    tar = paths.generated / "00001.tar"
    zero_fill_from(tar, sample_offsets(tar)[1])
    damaged = tar.read_bytes()
    # the release reads every generated shard: the lost sample is named, not left out
    check_subprocess_error(cli("release", str(run), "--out", str(run.parent / "rel"), "--val-per-class", "1"),
                           f"{tar}: holds 1 samples, its stats say 2")
    # score reads the shard again only when it scores it (here: its scores were cut)
    paths.score_files("00001").parquet.write_bytes(b"PAR1")
    check_subprocess_error(cli("score", str(run), *TINY_FLAGS), f"{tar}: holds 1 samples, its stats say 2")
    assert tar.read_bytes() == damaged and (paths.generated / "00001.json").is_file()  # nothing deleted
    check_subprocess_error(cli("score", str(run), *TINY_FLAGS), f"{tar}: holds 1 samples")  # the same again


def test_item7_deleted_stats_make_the_shard_not_done_and_its_scores_unused(run: Path) -> None:
    paths = RunPaths(run)
    stats = paths.generated / "00001.json"
    stats.unlink()
    assert not is_current(paths, stage_inputs(run, TINY_CFG))
    err = ok(cli("score", str(run), *TINY_FLAGS))  # scores the finished shards, names the unfinished one
    assert f"{paths.generated / '00001.tar'} is not finished" in err
    assert "00001" not in json.loads(paths.summary_json.read_text())["shards"]
    stale = paths.score_files("00001").parquet
    for command in (["select", str(run), "--thresholds", str(run.parent / "th.yaml")], ["diagnose", str(run)],
                    ["report", str(run)]):
        check_subprocess_error(cli(*command), f"the scores {stale} are stale", "00001.tar has no stats file",
                               "imagenet-plus generate")
    check_subprocess_error(cli("release", str(run), "--out", str(run.parent / "rel"), "--val-per-class", "1"),
                           f"{paths.generated / '00001.tar'}: it has no stats file 00001.json")
    assert (paths.generated / "00001.tar").is_file() and stale.is_file()  # nothing deleted
