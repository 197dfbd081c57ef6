"""Writing and reading the score files of ``RUN/scores/`` (names and columns from ``imagenet_plus.contract``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_plus.contract import run_paths, score_table
from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import atomic_file


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
    """All score rows of a run as one pandas DataFrame, in shard then row order (for downstream stages)."""
    import pandas as pd

    paths = run_paths(run)
    files = paths.scored_parquets()
    if not files:
        raise UserError(f"no scores in {paths.scores}: run 'imagenet-plus score {paths.root}' first")
    return pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
