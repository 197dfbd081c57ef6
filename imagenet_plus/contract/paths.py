"""Paths of a run folder and of a release folder, and the "done" rules of generated shards.

Building a :class:`RunPaths` or :class:`ReleasePaths` creates nothing; every path below ``RUN/`` and ``REL/``
that a stage uses is an attribute or method here. A root is a location of :mod:`imagenet_plus.io.storage`: a
local ``Path`` or a ``UPath`` of an fsspec URL (``s3://bucket/run``), whose children are ``UPath`` too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.contract.names import (
    CARD_NAME,
    CLASS_TEXT_EMBEDDINGS,
    CLASSES_JSON,
    DIAGNOSIS_CACHE_DIR,
    DIAGNOSIS_CENTROIDS,
    DIAGNOSIS_JSON,
    DIAGNOSIS_PARQUET,
    GENERATED_DIR,
    INFO_NAME,
    MARKERS_DIR,
    MODELS_JSON,
    PARTIAL_SUFFIX,
    PIPELINE_FAILED,
    PIPELINE_JSON,
    RELEASE_DATA_DIR,
    REPORT_DIR,
    REPORT_INDEX,
    REPORT_JSON,
    RUN_YAML,
    SCORE_PARTIAL_PATTERN,
    SCORES_DIR,
    SELECTION_JSON,
    SELECTION_PARQUET,
    STATE_DIR,
    SUMMARY_JSON,
    THRESHOLDS_YAML,
    release_shard_name,
    shard_name,
)
from imagenet_plus.contract.scores import stale_scores
from imagenet_plus.errors import UserError
from imagenet_plus.io.storage import Location, location, remote_errors

# ------------------------------------------------------------------------------------------------------------
# the run folder


class _Under:
    """A path below the object's ``root``: ``run_yaml = _Under(RUN_YAML)`` reads as ``paths.root / "run.yaml"``."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, obj: Any, owner: Any = None) -> Path:
        if obj is None:
            raise AttributeError("a path of an instance")
        return obj.root.joinpath(*self.parts)


@dataclass(frozen=True)
class ScoreFiles:
    """The files of one shard's scores (same stem as its generated tar)."""

    scores: Path
    stem: str

    def _file(self, suffix: str) -> Path:
        return self.scores / f"{self.stem}{suffix}"

    parquet = property(lambda self: self._file(".parquet"), doc="One row per sample (the score schema).")
    inception = property(lambda self: self._file(".inception.npy"), doc="N×2048 float16 pool3 features.")
    clip = property(lambda self: self._file(".clip.npy"), doc="N×D float16 L2-normalised CLIP image embeddings.")
    logits = property(lambda self: self._file(".logits.npy"), doc="N×1008 float32 Inception logits.")
    stats = property(lambda self: self._file(".stats.json"), doc="Count, seconds, rank of the scoring process.")
    bad = property(lambda self: self._file(".bad.json"), doc="Marker of a shard skipped as unreadable.")

    def done(self) -> bool:
        """Pass 1 finished (the parquet is written last)."""
        return all(p.is_file() for p in (self.inception, self.clip, self.logits, self.parquet))

    def clean(self) -> None:
        """Remove leftovers of a killed writer (the project's names only) and an old bad-shard marker."""
        for p in self.scores.glob(f"{self.stem}.*{PARTIAL_SUFFIX}"):
            if SCORE_PARTIAL_PATTERN.match(p.name):
                p.unlink(missing_ok=True)
        self.bad.unlink(missing_ok=True)


@dataclass(frozen=True)
class RunPaths:
    """Paths inside a run directory (nothing is created by building this)."""

    root: Location

    run_yaml = _Under(RUN_YAML)
    classes_json = _Under(CLASSES_JSON)
    generated = _Under(GENERATED_DIR)
    scores = _Under(SCORES_DIR)
    summary_json = _Under(SCORES_DIR, SUMMARY_JSON)
    models_json = _Under(SCORES_DIR, MODELS_JSON)
    class_text_embeddings = _Under(SCORES_DIR, CLASS_TEXT_EMBEDDINGS)
    selection_parquet = _Under(SELECTION_PARQUET)
    selection_json = _Under(SELECTION_JSON)
    diagnosis_parquet = _Under(DIAGNOSIS_PARQUET)
    diagnosis_json = _Under(DIAGNOSIS_JSON)
    diagnosis_centroids = _Under(DIAGNOSIS_CENTROIDS)
    diagnosis_cache = _Under(DIAGNOSIS_CACHE_DIR)
    thresholds_yaml = _Under(THRESHOLDS_YAML)
    pipeline_json = _Under(PIPELINE_JSON)
    pipeline_failed = _Under(PIPELINE_FAILED)
    report = _Under(REPORT_DIR)
    report_index = _Under(REPORT_DIR, REPORT_INDEX)
    report_json = _Under(REPORT_DIR, REPORT_JSON)
    #: Per-rank done/failed files of multi-process stages (see ``distributed.FileRendezvous``).
    markers = _Under(MARKERS_DIR)

    def stage_state(self, stage: str) -> Path:
        """``RUN/state/{stage}.json``: the record of what the stage's current outputs were made from."""
        return self.root / STATE_DIR / f"{stage}.json"

    def generated_tar(self, index: int) -> Path:
        """``RUN/generated/NNNNN.tar`` of shard ``index``."""
        return self.generated / f"{shard_name(index)}.tar"

    def score_files(self, stem: str) -> ScoreFiles:
        """The score files of the generated shard with this stem."""
        return ScoreFiles(self.scores, stem)

    def scored_parquets(self) -> list[Path]:
        """Every ``RUN/scores/*.parquet``, sorted (shard order), each checked to score its generated shard as it is
        now (what every later stage reads).

        Raises:
            UserError: stale scores (``contract.scores.stale_scores``: their generated shard is not finished, lost
                its stats, or was made again since), naming the parquet and what to run.
        """
        files = sorted(self.scores.glob("*.parquet")) if self.scores.is_dir() else []
        for f in files:
            stem = f.name[: -len(".parquet")]
            why = stale_scores(f, self.score_files(stem).stats, self.generated / f"{stem}.tar")
            if why is not None:
                raise UserError(f"the scores {f} are stale: {why}; run 'imagenet-plus generate --out {self.root}' "
                                f"(it makes unfinished shards again), then 'imagenet-plus score {self.root}'")
        return files


def run_paths(run: str | Location, must_exist: bool = True) -> RunPaths:
    """Check that ``run`` is a run directory (has run.yaml) and return its paths.

    Raises:
        UserError: ``run`` is not a folder, or has no run.yaml (``generate`` was not run there).
    """
    root = location(run)
    if must_exist:
        with remote_errors(root):
            if not (root / RUN_YAML).is_file():
                if not root.is_dir():
                    raise UserError(f"run directory not found: {root}")
                raise UserError(f"{root} is not a run directory (no {RUN_YAML}): run 'imagenet-plus generate' first")
    return RunPaths(root)


# ------------------------------------------------------------------------------------------------------------
# generated shards: the done rules


# ------------------------------------------------------------------------------------------------------------
# release


@dataclass(frozen=True)
class ReleasePaths:
    """Paths inside a release folder."""

    root: Location

    def shard(self, split: str, index: int) -> Path:
        """``REL/data/{split}-NNNNN.tar``."""
        return self.root / release_shard_name(split, index)

    card = _Under(CARD_NAME)
    info_json = _Under(INFO_NAME)
    data = _Under(RELEASE_DATA_DIR)
