"""What do the start-up checks of a finished shard cost? generate's (``io.tar.count_samples``: headers only) and
score's (``score.files.scores_problem``: footers and headers of its score files).

Generate counts the samples of every finished shard from its tar headers, seeking past the data, and compares
the count with the shard's stats (a zero-filled or cut shard is made again). This writes one realistic shard
(``--samples`` samples, each a ~``--jpeg-kb`` KB JPEG of noise + ``cls`` + ``json``, as generate writes them) and
times, from the page cache, in one run:

- count: ``contract.generated.shard_problem`` (stats read + header count), the check generate runs per shard;
- read: reading every sample back through ``io.tar.iter_shard`` (what a reader that checks the count after
  reading pays: every byte);
- scores: ``score.files.scores_problem`` on the shard's score files (a parquet of 256 rows, the three ``.npy``
  feature files of ViT-L/14 width, the shard's record), the check score runs per shard at start.

It prints µs per shard for each, the projection for ImageNet size (``--shards``, 5,000 shards of 256), and
the ratio; the last line is ``count_check_us_per_shard=<µs>``.

Usage: ``python benchmarks/tar_count.py [--samples 256] [--jpeg-kb 20] [--repeats 20] [--shards 5000]``
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path


def write_shard(folder: Path, samples: int, jpeg_kb: int) -> Path:
    import numpy as np
    from PIL import Image

    from imagenet_plus.contract import ShardStats, make_key, stats_path
    from imagenet_plus.io.tar import PartialTarWriter

    rng = np.random.default_rng(0)
    side = 8
    while True:  # the JPEG side whose noise image encodes to about jpeg_kb KB
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        if len(buf.getvalue()) >= jpeg_kb * 1024:
            break
        side += 8
    tar = folder / "00000.tar"
    keys = [make_key("n01440764", i) for i in range(samples)]
    with PartialTarWriter(tar) as w:
        for i, key in enumerate(keys):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
            meta = {"class_id": "n01440764", "label": 0, "index": i, "prompt": "a photo of a tench", "seed": i}
            w.write({"__key__": key, "jpg": buf.getvalue(), "cls": b"0", "json": json.dumps(meta).encode()})
    ShardStats(shard="00000", count=samples, first_key=keys[0], last_key=keys[-1], failures=0, failed_keys=[],
               regenerated={"nsfw": 0, "black": 0}, seconds=1.0, images_per_second=None, rank=0,
               model="bench").write(stats_path(tar))
    return tar


def write_scores(run: Path, samples: int) -> None:
    """Score files of shard 00000 as the score stage writes them (zeros; only their layout matters here)."""
    import numpy as np

    from imagenet_plus.contract import SCORE_COLUMNS, RunPaths, stats_digest
    from imagenet_plus.contract.scores import ScoredShard
    from imagenet_plus.score.files import save_npy_atomic, write_scores_parquet

    paths = RunPaths(run)
    paths.scores.mkdir()
    files = paths.score_files("00000")
    for path, shape, dtype in ((files.inception, 2048, np.float16), (files.clip, 768, np.float16),
                               (files.logits, 1008, np.float32)):
        save_npy_atomic(path, np.zeros((samples, shape), dtype))
    write_scores_parquet(files.parquet, {c: [None] * samples for c in SCORE_COLUMNS})
    ScoredShard(shard="00000", count=samples, rank=0, world_size=1, seconds=1.0,
                generated=str(stats_digest(paths.generated / "00000.tar"))).write(files.stats)


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--jpeg-kb", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--shards", type=int, default=5000, help="shards to project for (ImageNet: 5,000 of 256)")
    args = ap.parse_args()

    from imagenet_plus.contract import RunPaths
    from imagenet_plus.contract.generated import shard_problem
    from imagenet_plus.io.tar import iter_shard
    from imagenet_plus.score.files import scores_problem

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "generated").mkdir()
        tar = write_shard(Path(tmp) / "generated", args.samples, args.jpeg_kb)
        write_scores(Path(tmp), args.samples)
        paths = RunPaths(Path(tmp))
        assert shard_problem(tar) is None and scores_problem(paths, "00000") is None
        count = best_of(lambda: shard_problem(tar), args.repeats)
        read = best_of(lambda: sum(1 for _ in iter_shard(tar, expected=args.samples)), max(3, args.repeats // 4))
        scores = best_of(lambda: scores_problem(paths, "00000"), args.repeats)
        size_mb = tar.stat().st_size / 1e6
    print(f"shard: {args.samples} samples, {size_mb:.1f} MB")
    for what, seconds in (("count check (headers only)", count), ("full read (every byte)", read),
                          ("score's check (its files)", scores)):
        print(f"{what:27s} {seconds * 1e6:.0f} µs/shard → {seconds * args.shards:.1f} s for {args.shards} shards")
    print(f"full read / count check = {read / count:.1f}")
    print(f"count_check_us_per_shard={count * 1e6:.0f}")


if __name__ == "__main__":
    main()
