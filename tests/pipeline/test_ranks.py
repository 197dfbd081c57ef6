"""Ranks meet through marker files, never in a collective that waits on long work; a failure stops every rank."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import write_fake_run

from imagenet_plus.errors import PeerRankFailed, UserError
from imagenet_plus.pipeline.ranks import Dist, FileRendezvous, process_group_timeout

TINY_FLAGS = ["--clip-model", "tiny-random", "--inception-weights", "tiny-random", "--classifier", "tiny-random",
              "--nsfw-model", "tiny-random"]

#: Replaces a function of the score package wherever one of its modules holds it (defined there or imported).
WRAP = """
import importlib, pkgutil, sys
import imagenet_plus.score

def wrap_everywhere(name, make):
    for info in pkgutil.walk_packages(imagenet_plus.score.__path__, "imagenet_plus.score."):
        importlib.import_module(info.name)
    holders = [m for n, m in list(sys.modules.items()) if n.startswith("imagenet_plus.score.") and name in vars(m)]
    if not holders:
        raise SystemExit(f"no module of imagenet_plus.score holds {name}")
    original = vars(holders[0])[name]
    wrapped = make(original)
    for module in holders:
        if vars(module)[name] is original:
            setattr(module, name, wrapped)
"""

#: Runs the CLI after making the dataset pass sleep (so that it outlasts the process-group timeout).
SLOW_CLI = WRAP + """
import os, time

def make_slow(original):
    def slow(*args, **kwargs):
        time.sleep(float(os.environ["SLOW_DATASET_PASS"]))
        return original(*args, **kwargs)
    return slow

wrap_everywhere("measure", make_slow)
from imagenet_plus.cli import main

sys.argv = ["imagenet-plus", *sys.argv[1:]]
main()
"""


def test_markers_done_failed_and_wait(tmp_path: Path):
    folder = tmp_path / "markers" / "score"
    (folder / "old-launch").mkdir(parents=True)
    main = FileRendezvous.start(folder, Dist(rank=0, world_size=1, device="cpu", state=None))
    assert not (folder / "old-launch").exists()  # markers of an earlier launch never count
    token = main.folder.name
    rank0 = FileRendezvous(folder, token, rank=0, world_size=2, poll=0.05)
    rank1 = FileRendezvous(folder, token, rank=1, world_size=2, poll=0.05)
    rank0.done()
    with pytest.raises(UserError, match=r"rank\(s\) 1 did not finish within 0 s"):
        rank0.wait_for_all(timeout=0.1)
    rank1.done()
    rank0.wait_for_all(timeout=5)
    assert rank0.finished() == [0, 1]
    rank1.fail(UserError("corrupt shard RUN/generated/00001.tar: truncated"))
    start = time.monotonic()
    with pytest.raises(PeerRankFailed, match="rank 1 failed, stopping: corrupt shard .*00001.tar") as failed:
        rank0.wait_for_all()
    assert failed.value.rank == 1
    assert time.monotonic() - start < 1
    rank1.check()  # a rank does not stop on its own marker
    rank0.close()
    assert not folder.exists() and not (tmp_path / "markers").exists()


def test_process_group_timeout_setting(monkeypatch):
    monkeypatch.delenv("IMAGENET_PLUS_PG_TIMEOUT", raising=False)
    assert process_group_timeout() is None
    monkeypatch.setenv("IMAGENET_PLUS_PG_TIMEOUT", "2.5")
    assert process_group_timeout() == timedelta(seconds=2.5)
    for bad in ("ten", "0", "-3"):
        monkeypatch.setenv("IMAGENET_PLUS_PG_TIMEOUT", bad)
        with pytest.raises(UserError, match=f"IMAGENET_PLUS_PG_TIMEOUT='{bad}'"):
            process_group_timeout()


def _torchrun(script: Path, args: list[str], env_extra: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    from imagenet_plus.score.scorers.classifier import tiny_classifier_dir
    from imagenet_plus.score.scorers.clip import tiny_clip_dir
    from imagenet_plus.score.scorers.inception import tiny_inception_weights

    tiny_clip_dir(), tiny_classifier_dir(), tiny_inception_weights()  # built once here, not by two ranks at once
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env["OMP_NUM_THREADS"] = "1"
    env.update(env_extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           str(script), *args]
    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    return result, time.monotonic() - start


@pytest.mark.slow
def test_score_outlives_a_short_process_group_timeout(tmp_path: Path):
    """The dataset pass takes 3× the process-group timeout: rank 1 does not wait in a collective, so it completes."""
    run = write_fake_run(tmp_path / "run", per_class=1, shard_size=1, size=32)
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    result, _ = _torchrun(script, ["score", str(run), *TINY_FLAGS, "--batch-size", "2"],
                          {"IMAGENET_PLUS_PG_TIMEOUT": "3", "SLOW_DATASET_PASS": "9"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "scores" / "summary.json").read_text())
    assert summary["num_images"] == 3
    stats = {json.loads(p.read_text())["rank"] for p in (run / "scores").glob("*.stats.json")}
    assert stats == {0, 1}
    assert not (run / "markers").exists()


@pytest.mark.slow
def test_a_bad_shard_on_one_rank_stops_every_rank(tmp_path: Path):
    """Rank 1's shard is truncated; rank 0 would otherwise wait for it: both exit non-zero within seconds."""
    run = write_fake_run(tmp_path / "run", per_class=2, shard_size=1, size=32)
    tar = run / "generated" / "00001.tar"
    tar.write_bytes(tar.read_bytes()[:700])
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    result, seconds = _torchrun(script, ["score", str(run), *TINY_FLAGS, "--batch-size", "2"],
                                {"SLOW_DATASET_PASS": "0"})
    assert result.returncode != 0
    assert any(line.startswith("error: ") and "00001.tar" in line for line in result.stderr.splitlines()), \
        result.stderr[-3000:]
    assert not (run / "scores" / "summary.json").exists()
    assert seconds < 300  # a timeout (30 min for gloo) is never waited for


#: Runs the CLI after making every rank record the reference part it wrote (block and rows) in RECORD_DIR.
RECORDING_CLI = WRAP + """
import json, os
from pathlib import Path
import numpy as np

def make_recording(original):
    def recording(spec, inception, folder, rank, world_size, *args, **kwargs):
        result = original(spec, inception, folder, rank, world_size, *args, **kwargs)
        for part in Path(folder).glob(f"reference-*-part-{rank:05d}-of-{world_size:05d}.npz"):
            with np.load(part) as data:
                record = {"block": data["block"].tolist(), "rows": len(data["features"]), "world_size": world_size}
            Path(os.environ["RECORD_DIR"], f"rank-{rank}.json").write_text(json.dumps(record))
        return result
    return recording

wrap_everywhere("load_reference_part", make_recording)
from imagenet_plus.cli import main

sys.argv = ["imagenet-plus", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_every_rank_extracts_its_block_of_the_reference(tmp_path: Path):
    """torchrun, 2 ranks, an uncached 5-image reference folder in batches of 2: rank 0 extracts images 0-1, rank 1
    images 2-4. The merged cache entry equals a one-process ``load_reference`` (made first, with one thread as the
    ranks have, then removed from the cache) bit for bit, and summary.json's FID is the FID of the scored
    features against it."""
    import numpy as np
    import torch
    from PIL import Image

    from imagenet_plus.score import metrics as metrics
    from imagenet_plus.score.reference import load_reference
    from imagenet_plus.score.scorers.inception import InceptionScorer

    run = write_fake_run(tmp_path / "run", per_class=1, shard_size=1, size=32)
    ref = tmp_path / "ref"
    rng = np.random.default_rng(5)
    for c, (wnid, count) in enumerate((("n01440764", 2), ("n02102040", 2), ("n03000684", 1))):
        (ref / wnid).mkdir(parents=True)
        for i in range(count):
            img = np.clip(np.array([80 * c, 60, 200 - 50 * c]) + rng.normal(0, 50, (40, 56, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(ref / wnid / f"{i}.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks (OMP_NUM_THREADS=1): the same kernels, hence the same bits
    try:
        single = load_reference(ref, InceptionScorer("tiny-random", "cpu"), batch_size=2, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    (entry,) = (Path(os.environ["IMAGENET_PLUS_CACHE"]) / "reference").glob(f"{single.content_hash}-*.npz")
    entry.unlink()

    script = tmp_path / "recording_cli.py"
    script.write_text(RECORDING_CLI)
    (tmp_path / "records").mkdir()
    result, _ = _torchrun(script, ["score", str(run), *TINY_FLAGS, "--batch-size", "2", "--reference", str(ref)],
                          {"RECORD_DIR": str(tmp_path / "records")})
    assert result.returncode == 0, result.stderr[-3000:]
    records = {p.name: json.loads(p.read_text()) for p in (tmp_path / "records").iterdir()}
    assert records == {"rank-0.json": {"block": [0, 2], "rows": 2, "world_size": 2},
                       "rank-1.json": {"block": [2, 5], "rows": 3, "world_size": 2}}
    assert "no reference part" not in result.stderr and not (run / "markers").exists()
    with np.load(entry) as data:  # written again, by the main rank's merge
        np.testing.assert_array_equal(data["features"], single.features)
        assert data["class_ids"].tolist() == single.class_ids == ["n01440764"] * 2 + ["n02102040"] * 2 + ["n03000684"]
    summary = json.loads((run / "scores" / "summary.json").read_text())
    assert summary["reference"] == single.describe() and summary["reference"]["num_images"] == 5
    generated = np.concatenate([np.load(p) for p in sorted((run / "scores").glob("*.inception.npy"))])
    # The pass's FID comes from streamed moments, metrics.fid from one covariance; with 3 images in 2048
    # dimensions both covariances are rank-deficient and the matrix square root amplifies rounding (seen: 2e-6).
    assert summary["fid"] == pytest.approx(metrics.fid(generated, single.features), rel=1e-4)
