"""Killed, damaged and resumed runs end byte for byte where an uninterrupted run does (issue 21, items 5, 7, 16).

One uninterrupted run of the tiny models (generate → score → select → release, each through the command line as
a user types it) is the baseline. Each test damages or kills a copy, re-runs the same commands, and compares the
sha256 of every member of every generated tar and release tar, and every scores parquet, with the baseline's.
``score`` killed with SIGKILL after its first shard and resumed must give the same bytes: a shard's scores do not
depend on the process that scored it or on what it scored before (item 16).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from release_fixtures import run_cli
from shard_faults import file_digests, member_digests, sample_offsets, zero_fill_from

pytestmark = pytest.mark.slow

#: Same threads in every process: the byte comparison is between processes.
CLI_ENV = {"OMP_NUM_THREADS": "1"}
SCORE_FLAGS = ["--clip-model", "tiny-random", "--inception-weights", "tiny-random", "--classifier", "tiny-random",
               "--nsfw-model", "tiny-random", "--batch-size", "2", "--num-workers", "1"]
THRESHOLDS = "drop_duplicates: false\nclip_class_prob_min: 0.0\n"


def generate_args(run: Path, classes: Path) -> list[str]:
    """8 images of 2 classes in shards of 3, 3 and 2 (score batches of 2 end inside a shard).

    One prompt per class (``name``), of different lengths: shard 00001 starts with the last image of the first
    class, whose prompt a process that scored shard 00000 before has embedded already. Texts embedded together
    are padded alike, so a text cache kept across shards gave that shard other bytes in a resumed run.
    """
    return ["generate", "--out", str(run), "--classes", str(classes), "--model", "tiny-random", "--images-per-class",
            "4", "--shard-size", "3", "--batch-size", "1", "--resolution", "32", "--steps", "2",
            "--prompt-strategy", "name"]


def cli(*args: str) -> str:
    proc = run_cli(*args, env=CLI_ENV, timeout=600)
    assert proc.returncode == 0, (args, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    return proc.stderr


def popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imagenet_plus", *args], env={**os.environ, **CLI_ENV},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(proc: subprocess.Popen, ready, what: str) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL ``proc`` as soon as ``ready()``; fail if it finished first."""
    deadline = time.time() + 300
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"{what} finished before it could be killed")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"{what}: timed out waiting for the moment to kill it")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def score_select_release(run: Path, classes: Path) -> Path:
    """The stages after generate, as a user types them; returns the release folder."""
    th = run.parent / "th.yaml"
    th.write_text(THRESHOLDS)
    cli("score", str(run), *SCORE_FLAGS)
    cli("select", str(run), "--thresholds", str(th), "--per-class", "3")
    rel = run.parent / "rel"
    cli("release", str(run), "--out", str(rel), "--val-per-class", "1", "--shard-size", "2")
    return rel


def outputs(run: Path, rel: Path | None = None) -> dict[str, dict[str, str]]:
    """Digests of every generated tar member, every scores parquet and every release tar member."""
    out = {"generated": member_digests(sorted((run / "generated").glob("*.tar")))}
    if (run / "scores").is_dir():
        out["scores"] = file_digests(run / "scores", "*.parquet")
    if rel is not None:
        out["release"] = member_digests(sorted((rel / "data").glob("*.tar")))
    return out


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, dict[str, str]]]:
    base = tmp_path_factory.mktemp("baseline")
    classes = base / "classes.csv"
    classes.write_text("name,description\napple,a fruit\nprickly pear cactus fruit,the fruit of a cactus\n")
    run = base / "run"
    cli(*generate_args(run, classes))
    rel = score_select_release(run, classes)
    digests = outputs(run, rel)
    assert len(digests["generated"]) == 8 * 3 and len(digests["scores"]) == 3 and digests["release"]
    return run, classes, digests


def record_times(run: Path) -> dict[str, int]:
    """Modification times of the scored shards' records (``NNNNN.stats.json``, rewritten only when scored)."""
    return {p.name[:5]: p.stat().st_mtime_ns for p in (run / "scores").glob("*.stats.json")}


def rescored(run: Path, before: dict[str, int]) -> list[str]:
    """The shards whose scores were made again since ``before``."""
    return sorted(s for s, t in record_times(run).items() if before.get(s) != t)


def copy_run(run: Path, dest: Path, generated_only: bool = False) -> Path:
    """A copy of the run (sizes and modification times kept); ``generated_only``: only what generate made."""
    if generated_only:
        dest.mkdir(parents=True)
        for name in ("run.yaml", "classes.json"):
            shutil.copy2(run / name, dest / name)
        shutil.copytree(run / "generated", dest / "generated")
        (dest / "state").mkdir()
        shutil.copy2(run / "state" / "generate.json", dest / "state" / "generate.json")
        return dest
    shutil.copytree(run, dest)
    return dest


def test_score_killed_after_a_shard_and_resumed_gives_the_same_bytes(baseline, tmp_path: Path) -> None:
    run0, classes, expected = baseline
    run = copy_run(run0, tmp_path / "run", generated_only=True)
    proc = popen("score", str(run), *SCORE_FLAGS)
    kill_when(proc, lambda: (run / "scores" / "00000.stats.json").is_file(), "score")
    assert not (run / "scores" / "summary.json").exists()
    assert not (run / "scores" / "00002.parquet").exists(), "the kill should come before the last shard"
    rel = score_select_release(run, classes)  # score resumes: the shards it had not finished
    assert outputs(run, rel) == expected


def test_generate_killed_inside_a_shard_and_resumed_gives_the_same_bytes(baseline, tmp_path: Path) -> None:
    _run0, classes, expected = baseline
    run = tmp_path / "run"
    gen = run / "generated"
    proc = popen(*generate_args(run, classes))
    kill_when(proc, lambda: gen.is_dir() and any(gen.glob("*.json")) and any(gen.glob("*.tar.partial")), "generate")
    assert not (gen / "00002.json").exists()
    cli(*generate_args(run, classes))
    assert not list(gen.glob("*.partial"))
    assert outputs(run) == {"generated": expected["generated"]}


def test_item5_a_zero_filled_shard_is_made_again_by_generate(baseline, tmp_path: Path) -> None:
    run0, classes, expected = baseline
    run = copy_run(run0, tmp_path / "run")
    tar = run / "generated" / "00001.tar"
    zero_fill_from(tar, sample_offsets(tar)[1])
    err = cli(*generate_args(run, classes))
    assert f"making shard {tar} again" in err and "holds 1 samples, its stats say 3" in err
    assert tar.read_bytes() == (run0 / "generated" / "00001.tar").read_bytes()
    records = record_times(run)
    rel = score_select_release(run, classes)
    assert rescored(run, records) == ["00001"]  # its stats are new: its scores were made again, alone
    assert outputs(run, rel) == expected


def test_item7_a_deleted_stats_file_is_made_again_and_its_scores_too(baseline, tmp_path: Path) -> None:
    run0, classes, expected = baseline
    run = copy_run(run0, tmp_path / "run")
    (run / "generated" / "00001.json").unlink()
    cli(*generate_args(run, classes))  # the tar without stats is a leftover: made again
    assert (run / "generated" / "00001.json").is_file()
    records = record_times(run)
    rel = score_select_release(run, classes)
    assert rescored(run, records) == ["00001"]  # the old scores of 00001 are stale: made again, alone
    assert outputs(run, rel) == expected
