"""Writing and reading the score files of ``RUN/scores/`` (names and columns from ``imagenet_plus.contract``), and
the score stage's done rule for one shard (:func:`scores_problem`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_plus.contract import RunPaths, ScoreFiles, run_paths, score_table
from imagenet_plus.contract.scores import ScoredShard, stale_scores, unreadable_scores
from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import atomic_file
from imagenet_plus.io.storage import local_copy, location


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """``numpy.save`` through a ``.partial`` file renamed once complete."""
    with atomic_file(path) as f:
        np.save(f, array)


def write_scores_parquet(path: Path, columns: Mapping[str, Any]) -> None:
    """Write one scores parquet from column lists (``contract.score_table`` refuses a column out of schema)."""
    import pyarrow.parquet as pq

    table = score_table(columns)
    with atomic_file(path) as f:
        pq.write_table(table, f)


def read_scores(run: str | Path) -> Any:
    """All score rows of a run as one pandas DataFrame, in shard then row order (for downstream stages).

    Raises:
        UserError: no scores, stale scores (``RunPaths.scored_parquets``); CorruptShard: a parquet that does not
            read back (named).
    """
    import pandas as pd

    paths = run_paths(run)
    files = paths.scored_parquets()
    if not files:
        raise UserError(f"no scores in {paths.scores}: run 'imagenet-plus score {paths.root}' first")
    return pd.concat([read_scores_file(p) for p in files], ignore_index=True)


def read_scores_file(path: Path, columns: list[str] | None = None) -> Any:
    """One scores parquet as a pandas DataFrame (``columns``: only those).

    Raises:
        CorruptShard: the file does not read back (cut, overwritten), naming it and the command that redoes it.
    """
    import pandas as pd

    try:
        return pd.read_parquet(local_copy(path), columns=columns)
    except Exception as exc:  # pyarrow raises several types for a cut or overwritten file
        raise unreadable_scores(path, exc) from None



def _npy_rows(path: Path) -> int:
    """Rows of an ``.npy`` file from its header, checked against the file's size (a cut file is found).

    Raises:
        ValueError: not an ``.npy`` header, or a file shorter or longer than its header says.
    """
    fmt = np.lib.format
    with location(path).open("rb") as f:
        version = fmt.read_magic(f)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read_header(f)
        size = f.tell() + int(np.prod(shape)) * dtype.itemsize
    actual = location(path).stat().st_size
    if actual != size or not shape:
        raise ValueError(f"{actual} bytes, its header says {size}")
    return int(shape[0])


def _rows_problem(path: Path, rows: int) -> str | None:
    """Why a score file does not hold ``rows`` rows as written (from its footer or header alone), or None."""
    import pyarrow.parquet as pq

    try:
        found = pq.read_metadata(local_copy(path)).num_rows if path.suffix == ".parquet" else _npy_rows(path)
    except Exception as exc:  # pyarrow and numpy raise several types for a cut or overwritten file
        return f"{path} does not read back ({type(exc).__name__}: {exc})"
    return None if found == rows else f"{path} holds {found} rows, its shard {rows}"


def scores_problem(paths: RunPaths, stem: str) -> str | None:
    """Why a shard's scores are not done, or None when they are (the score stage's rule; a shard failing it is
    scored again).

    Done: the three ``.npy`` files, the parquet and then the shard's record (``NNNNN.stats.json``, written last)
    exist; the record reads back and names the generated shard as it is now (``contract.scores.stale_scores``);
    and each file holds one row per sample of it, checked from the parquet's footer and the ``.npy`` headers
    (a cut file does not read back; the record's count was checked against the generated shard's stats when it
    was scored, and those stats have not changed since). About 0.5 ms a shard (``benchmarks/tar_count.py``,
    mostly pyarrow reading the parquet's footer): the stage checks every shard when it starts.
    """
    files = paths.score_files(stem)
    if not files.done() or not files.stats.is_file():
        return "not scored"
    why = stale_scores(files.parquet, files.stats, paths.generated / f"{stem}.tar")
    if why is not None:
        return why
    rows = ScoredShard.read(files.stats).count
    for path in (files.parquet, files.inception, files.clip, files.logits):
        why = _rows_problem(path, rows)
        if why is not None:
            return why
    return None


def drop_scores(files: ScoreFiles) -> None:
    """Delete one shard's score files (the stage's own names; before it scores the shard again)."""
    for path in (files.stats, files.parquet, files.inception, files.clip, files.logits):
        path.unlink(missing_ok=True)
