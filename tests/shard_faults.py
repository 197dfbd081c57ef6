"""Test helpers: faults done to a generated shard as a copy or a disk would do them, digests to compare runs, and
score files of the right shapes written without a network."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path


def sample_offsets(tar: Path) -> list[int]:
    """Where each sample's first header starts, read by Python's ``tarfile`` (independent of the project's scanner)."""
    starts, last = [], None
    with tarfile.open(tar) as tf:
        for m in tf.getmembers():
            key = m.name.split(".", 1)[0]
            if key != last:
                starts.append(m.offset)
                last = key
    return starts


def zero_fill_from(tar: Path, offset: int) -> None:
    """Overwrite the file with zeros from ``offset`` to its end, keeping its size (a copy or disk fault)."""
    size = tar.stat().st_size
    with open(tar, "r+b") as f:
        f.seek(offset)
        f.write(bytes(size - offset))


def member_digests(tars: list[Path]) -> dict[str, str]:
    """``{tar name/member name: sha256}`` of every member of ``tars``, read by ``tarfile``."""
    out: dict[str, str] = {}
    for tar in tars:
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                f = tf.extractfile(m)
                if f is not None:
                    out[f"{tar.name}/{m.name}"] = hashlib.sha256(f.read()).hexdigest()
    return out


def file_digests(folder: Path, pattern: str) -> dict[str, str]:
    """``{name: sha256}`` of the files of ``folder`` matching ``pattern``."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob(pattern))}


def write_score_files(run: Path, clip_dim: int = 8) -> list[str]:
    """Score files for every finished generated shard of ``run``, as the score stage lays them out (zeros and nulls:
    only their shapes and the record's link to the generated shard matter); returns the shard stems."""
    import numpy as np

    from imagenet_plus.contract import SCORE_COLUMNS, RunPaths, ShardStats, stats_digest
    from imagenet_plus.contract.scores import ScoredShard
    from imagenet_plus.score.files import save_npy_atomic, write_scores_parquet

    paths = RunPaths(run)
    paths.scores.mkdir(parents=True, exist_ok=True)
    stems = []
    for stats in sorted(paths.generated.glob("*.json")):
        files, n = paths.score_files(stats.stem), ShardStats.read(stats).count
        for path, width in ((files.inception, 2048), (files.clip, clip_dim), (files.logits, 1008)):
            save_npy_atomic(path, np.zeros((n, width), np.float16))
        write_scores_parquet(files.parquet, {c: [None] * n for c in SCORE_COLUMNS})
        ScoredShard(shard=stats.stem, count=n, rank=0, world_size=1, seconds=0.0,
                    generated=str(stats_digest(stats.with_suffix(".tar")))).write(files.stats)
        stems.append(stats.stem)
    return stems
