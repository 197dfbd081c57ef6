"""The data contract: every file the pipeline writes or reads, owned in one place.

Stages, tests and the dataset builder import file names, paths, column lists, member names and the
"done" rules from here; nothing else spells them. ARCHITECTURE.md describes the same contract in prose
and points here as its source of truth.

```
RUN/run.yaml                     resolved config, config hash, library versions, plan segments (written first)
RUN/classes.json                 the class set in label order
RUN/generated/00000.tar          a finished shard (00000.tar.partial while written) + 00000.json stats
RUN/scores/00000.parquet         one row per sample (SCORE_SCHEMA) + 00000.{inception,clip,logits}.npy features
RUN/scores/models.json           the scorers the shards were computed with
RUN/scores/class_text_embeddings.npy   C×D CLIP text embeddings of the zero-shot class texts
RUN/scores/summary.json          dataset metrics; written last: the stage is done when it lists every shard
RUN/selection.parquet            every key: kept yes/no, the reason, the composite (+ selection.json summary)
RUN/thresholds.yaml              thresholds written by `run` from a config's inline `select.thresholds`
RUN/pipeline.json                `run`'s record of finished stages
RUN/report/index.html            the report
REL/README.md, REL/_info.json, REL/data/{split}-NNNNN.tar       a release
```
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from imagenet_plus.errors import UserError

# ------------------------------------------------------------------------------------------------------------
# file names

RUN_YAML = "run.yaml"
CLASSES_JSON = "classes.json"
GENERATED_DIR = "generated"
SCORES_DIR = "scores"
SUMMARY_JSON = "summary.json"
MODELS_JSON = "models.json"
CLASS_TEXT_EMBEDDINGS = "class_text_embeddings.npy"
SELECTION_PARQUET = "selection.parquet"
#: ``diagnose``: one row per class (verdict and evidence) and the run-level summary beside it.
DIAGNOSIS_PARQUET = "diagnosis.parquet"
DIAGNOSIS_JSON = "diagnosis.json"
#: ``diagnose``: per-class CLIP image centroids (``synthetic``, ``real`` with a reference, ``class_ids``).
DIAGNOSIS_CENTROIDS = "diagnosis_centroids.npz"
#: ``diagnose``: cached CLIP image embeddings of a real reference (per-class sums and samples).
DIAGNOSIS_CACHE_DIR = "diagnosis-cache"
SELECTION_JSON = "selection.json"
THRESHOLDS_YAML = "thresholds.yaml"
PIPELINE_JSON = "pipeline.json"
#: Written by ``run``'s main process when a stage fails under a multi-process launch (the others stop waiting).
PIPELINE_FAILED = "pipeline.failed"
#: ``evaluate``'s result file inside its output folder.
EVAL_JSON = "eval.json"
#: Folder of the rank markers multi-process stages rendezvous through (``markers/{stage}/{job}/rank-NNNNN.*``).
MARKERS_DIR = "markers"
REPORT_DIR = "report"
REPORT_INDEX = "index.html"
#: The report's record: headline numbers and the fingerprint of its inputs (``run`` skips an up-to-date report).
REPORT_JSON = "report.json"
#: Release: timm's split description and the card.
INFO_NAME = "_info.json"
CARD_NAME = "README.md"
RELEASE_DATA_DIR = "data"
#: Suffix of a file being written (renamed to its final name once complete).
PARTIAL_SUFFIX = ".partial"

#: Fixed tar member mtime, so the same samples always give the same bytes (an int: a float makes tarfile
#: put a 1 KiB pax header before every member).
TAR_MTIME = 1_700_000_000
#: Image members a sample may carry (the first present is the image); chosen by ``generate``'s image_format.
IMAGE_EXTENSIONS = ("jpg", "png", "webp")
#: Image members accepted in a real reference or test set (JPEG files are often named ``.jpeg``).
READ_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
#: Keys are ``{class_id}_{index:06d}``; no dots (datasets/webdataset split keys at the first dot).
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
#: Release splits, in order.
SPLITS = ("train", "validation")

#: Libraries whose versions are recorded in run.yaml and the dataset card.
RECORDED_LIBRARIES = (
    "imagenet-plus", "torch", "diffusers", "transformers", "accelerate", "webdataset", "datasets", "huggingface-hub",
    "timm", "torch-fidelity", "torchmetrics", "nltk",
)


# ------------------------------------------------------------------------------------------------------------
# keys and shard names


def shard_name(index: int) -> str:
    """``7`` → ``00007`` (the stem of a generated shard's files)."""
    return f"{index:05d}"


def make_key(class_id: str, index: int) -> str:
    """The sample key ``{class_id}_{index:06d}``."""
    key = f"{class_id}_{index:06d}"
    if not KEY_PATTERN.match(key):
        raise UserError(f"class id {class_id!r} gives an invalid sample key {key!r} (letters, digits, _ and - only)")
    return key


#: How webdataset splits a member name into sample key and extension (``webdataset.tariterators.base_plus_ext``:
#: the key is everything before the first dot of the base name). Repeated here, not imported, because importing
#: webdataset imports torch (~8 s and ~700 MiB), which release and select otherwise never need; a test
#: checks the two agree.
MEMBER_NAME_PATTERN = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def split_member_name(name: str) -> tuple[str, str]:
    """A tar member name → (sample key, member extension), as webdataset groups them."""
    match = MEMBER_NAME_PATTERN.match(name)
    if match is None:
        raise UserError(f"tar member {name!r} has no extension: not a webdataset sample member")
    return match.group(1), match.group(2)


def image_member(sample: Mapping[str, Any], extensions: Iterable[str] = IMAGE_EXTENSIONS) -> str | None:
    """The image member of a sample (the first of ``extensions`` present), or ``None``."""
    return next((e for e in extensions if e in sample), None)


def release_shard_name(split: str, index: int) -> str:
    """``('train', 3)`` → ``data/train-00003.tar`` (relative to the release folder)."""
    return f"{RELEASE_DATA_DIR}/{split}-{index:05d}.tar"


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
        """Remove leftovers of a killed writer and an old bad-shard marker."""
        for p in self.scores.glob(f"{self.stem}.*{PARTIAL_SUFFIX}"):
            p.unlink(missing_ok=True)
        self.bad.unlink(missing_ok=True)


@dataclass(frozen=True)
class RunPaths:
    """Paths inside a run directory (nothing is created by building this)."""

    root: Path

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

    def generated_tar(self, index: int) -> Path:
        """``RUN/generated/NNNNN.tar`` of shard ``index``."""
        return self.generated / f"{shard_name(index)}.tar"

    def score_files(self, stem: str) -> ScoreFiles:
        """The score files of the generated shard with this stem."""
        return ScoreFiles(self.scores, stem)

    def scored_parquets(self) -> list[Path]:
        """Every ``RUN/scores/*.parquet``, sorted (shard order)."""
        return sorted(self.scores.glob("*.parquet")) if self.scores.is_dir() else []



def run_paths(run: str | Path, must_exist: bool = True) -> RunPaths:
    """Check that ``run`` is a run directory (has run.yaml) and return its paths.

    Raises:
        UserError: ``run`` is not a folder, or has no run.yaml (``generate`` was not run there).
    """
    root = Path(run)
    if must_exist:
        if not root.is_dir():
            raise UserError(f"run directory not found: {root}")
        if not (root / RUN_YAML).is_file():
            raise UserError(f"{root} is not a run directory (no {RUN_YAML}): run 'imagenet-plus generate' first")
    return RunPaths(root)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the output."""
    out = {}
    for name in RECORDED_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def read_run_yaml(paths: RunPaths) -> dict[str, Any]:
    """Read ``RUN/run.yaml``."""
    import yaml

    try:
        data = yaml.safe_load(paths.run_yaml.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"unreadable {paths.run_yaml}: {exc}") from None
    if not isinstance(data, dict) or "config" not in data:
        raise UserError(f"{paths.run_yaml} is not a {RUN_YAML} written by imagenet-plus (no 'config' key)")
    return data


def write_run_yaml(paths: RunPaths, data: dict[str, Any]) -> None:
    """Write ``RUN/run.yaml`` atomically."""
    import yaml

    from imagenet_plus.shards import write_bytes_atomic

    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    write_bytes_atomic(paths.run_yaml, text.encode("utf-8"))


def read_json(path: Path, what: str = "") -> Any:
    """Read a JSON file of the contract, naming it when it is missing or malformed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"unreadable {what + ' ' if what else ''}{path}: {exc}") from None


def read_class_records(paths: RunPaths) -> list[dict[str, Any]]:
    """The run's class set as plain dicts, in label order (see classes.read_classes_json for ClassInfo)."""
    return read_json(paths.classes_json)


# ------------------------------------------------------------------------------------------------------------
# generated shards: the done rules


def generated_done(tar: Path) -> bool:
    """A generated shard is done when its ``.tar`` and its stats ``.json`` both exist."""
    return tar.is_file() and tar.with_suffix(".json").is_file()


def clean_partials(folder: Path) -> list[Path]:
    """Delete leftovers of a killed writer: ``*.partial`` files and tars that have no stats JSON."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.glob(f"*{PARTIAL_SUFFIX}")):
        p.unlink(missing_ok=True)
        removed.append(p)
    for tar in sorted(folder.glob("*.tar")):
        if not generated_done(tar):
            tar.unlink(missing_ok=True)
            removed.append(tar)
    return removed


def done_shards(folder: Path) -> list[Path]:
    """The finished shards of a folder (``.tar`` with its ``.json`` beside it), sorted by name."""
    if not folder.is_dir():
        return []
    return [t for t in sorted(folder.glob("*.tar")) if generated_done(t)]


# ------------------------------------------------------------------------------------------------------------
# the sample's json member

#: Fields of a generated sample's ``json`` member and their ``datasets`` dtypes (release shards add ``scores``).
SAMPLE_FIELDS: dict[str, str] = {
    "class_id": "string", "class_name": "string", "label": "int64", "prompt": "string", "negative_prompt": "string",
    "seed": "int64", "model": "string", "scheduler": "string", "steps": "int64", "guidance": "float64",
    "width": "int64", "height": "int64", "attempt": "int64", "nsfw": "bool", "strategy": "string", "index": "int64",
}
#: The member of a release sample's json that holds its scores.
SCORES_MEMBER = "scores"


# ------------------------------------------------------------------------------------------------------------
# the score table

#: Score column names: the only place they are spelled (other modules use these constants).
COL_CLIP_SCORE = "clip_score"
COL_CLIP_CLASS_SCORE = "clip_class_score"
COL_CLIP_CLASS_PROB = "clip_class_prob"
COL_CLIP_CLASS_RANK = "clip_class_rank"
COL_ISC_KL = "isc_kl"
COL_CLASSIFIER_TOP1 = "classifier_top1"
COL_CLASSIFIER_TOP5 = "classifier_top5"
COL_CLASSIFIER_PROB = "classifier_prob"
COL_REALISM = "realism"
COL_NSFW_SCORE = "nsfw_score"
COL_DUP_OF = "dup_of"

#: ``RUN/scores/NNNNN.parquet``: (column, arrow/datasets dtype, copied into a release's ``json.scores``).
#: The one list every score column comes from: the parquet schema, required columns, the card's features
#: and the builder's columns are derived from it.
_SCORE_TABLE: tuple[tuple[str, str, bool], ...] = (
    ("key", "string", False),
    ("label", "int64", False),
    ("class_id", "string", False),
    (COL_CLIP_SCORE, "float64", True),
    (COL_CLIP_CLASS_SCORE, "float64", True),
    (COL_CLIP_CLASS_PROB, "float64", True),
    (COL_CLIP_CLASS_RANK, "int64", True),
    (COL_ISC_KL, "float64", True),
    (COL_CLASSIFIER_TOP1, "bool", True),
    (COL_CLASSIFIER_TOP5, "bool", True),
    (COL_CLASSIFIER_PROB, "float64", True),
    (COL_REALISM, "float64", True),
    (COL_NSFW_SCORE, "float64", True),
    (COL_DUP_OF, "string", False),
    ("nsfw", "bool", False),
    ("attempt", "int64", False),
    ("strategy", "string", False),
)
#: Columns of a scores parquet, in order.
SCORE_COLUMNS: tuple[str, ...] = tuple(name for name, _, _ in _SCORE_TABLE)
#: Columns later stages cannot do without.
REQUIRED_SCORE_COLUMNS = (
    "key", "label", "class_id", COL_CLIP_SCORE, COL_CLIP_CLASS_PROB, COL_ISC_KL, COL_DUP_OF, "nsfw",
)
#: Columns filled by the dataset pass (need every shard), null after pass 1.
DATASET_PASS_COLUMNS = (COL_ISC_KL, COL_REALISM, COL_DUP_OF)
#: Column of ``selection.parquet`` copied into release scores beside the score columns.
COMPOSITE = "composite"
#: ``json.scores`` of a release sample: score → datasets dtype (null when not computed).
RELEASE_SCORE_FIELDS: dict[str, str] = {
    **{name: dtype for name, dtype, in_release in _SCORE_TABLE if in_release},
    COMPOSITE: "float64",
}


@lru_cache(maxsize=1)
def score_schema() -> Any:
    """The pyarrow schema of a scores parquet (pyarrow imported only when asked)."""
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
    return pa.schema([(name, types[dtype]) for name, dtype, _ in _SCORE_TABLE])


def score_table(columns: Mapping[str, Any]) -> Any:
    """Build the arrow table of a scores parquet from column lists.

    Raises:
        UserError: a column is missing, or one that is not in the schema is given (a writer out of contract).
    """
    import pyarrow as pa

    schema = score_schema()
    extra = sorted(set(columns) - set(schema.names))
    if extra:
        raise UserError(f"score column(s) {', '.join(extra)} are not in the score schema (imagenet_plus.contract)")
    missing = [n for n in schema.names if n not in columns]
    if missing:
        raise UserError(f"score table lacks column(s) {', '.join(missing)}")
    return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)


def check_score_columns(names: Iterable[str], source: Path | str) -> None:
    """Raise naming ``source`` when a scores frame lacks a required column."""
    names = set(names)
    missing = [c for c in REQUIRED_SCORE_COLUMNS if c not in names]
    if missing:
        raise UserError(f"scores file {source} lacks column(s) {', '.join(missing)}")


# ------------------------------------------------------------------------------------------------------------
# selection

REASON_KEPT = "kept"
REASON_OVER_QUOTA = "over_quota"
REASON_NSFW = "nsfw"
REASON_DUPLICATE = "duplicate"
REASON_NOT_TOP5 = "not_top5"
#: Reasons that mean "passed every threshold".
PASSED_REASONS = (REASON_KEPT, REASON_OVER_QUOTA)
#: Columns of ``selection.parquet``, in order.
SELECTION_COLUMNS = ("key", "label", "class_id", "kept", "reason", COMPOSITE)


class _JsonRecord:
    """``to_dict``/``write``/``read`` of a JSON file of the contract, for a dataclass with ``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def write(self, path: Path) -> None:
        from imagenet_plus.shards import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def read(cls, path: Path) -> Any:
        return cls.from_dict(read_json(path), path)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SelectionSummary(_JsonRecord):
    """``RUN/selection.json``: what ``select`` kept and why (per class and overall)."""

    thresholds: dict[str, Any]
    per_class_quota: int
    pass_rate: dict[str, float]
    kept: dict[str, int]
    short: dict[str, int]
    dropped_classes: list[str]
    flagged_classes: list[str]
    reasons: dict[str, int]
    num_kept: int
    num_scored: int

    @property
    def num_passed(self) -> int:
        """Samples that passed every threshold (kept or over the quota)."""
        return sum(self.reasons.get(r, 0) for r in PASSED_REASONS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path | str) -> SelectionSummary:
        return _dataclass_from_dict(cls, data, source)



# ------------------------------------------------------------------------------------------------------------
# release


@dataclass(frozen=True)
class ReleasePaths:
    """Paths inside a release folder."""

    root: Path

    def shard(self, split: str, index: int) -> Path:
        """``REL/data/{split}-NNNNN.tar``."""
        return self.root / release_shard_name(split, index)

    card = _Under(CARD_NAME)
    info_json = _Under(INFO_NAME)
    data = _Under(RELEASE_DATA_DIR)


@dataclass(frozen=True)
class SplitInfo:
    """One split of ``_info.json`` (timm's ``reader_wds`` format)."""

    name: str
    num_samples: int
    filenames: list[str]
    shard_lengths: list[int]


@dataclass(frozen=True)
class ReleaseInfo(_JsonRecord):
    """``REL/_info.json``: the release's splits in timm's format plus what made it."""

    name: str
    fingerprint: str
    created: str
    image_ext: str
    num_classes: int
    classes: list[dict[str, Any]]
    config_hash: str | None
    splits: dict[str, SplitInfo] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path | str) -> ReleaseInfo:
        if not isinstance(data, Mapping):
            raise UserError(f"{source} is not a JSON object")
        splits = data.get("splits")
        if not isinstance(splits, Mapping):
            raise UserError(f"{source}: 'splits' must be an object of split name → split info")
        parsed = {}
        for name, s in splits.items():
            split = _dataclass_from_dict(SplitInfo, s, f"{source} split {name!r}")
            if len(split.filenames) != len(split.shard_lengths):
                raise UserError(f"{source} split {name!r}: {len(split.filenames)} filenames but "
                                f"{len(split.shard_lengths)} shard_lengths")
            for fn in split.filenames:
                check_relative_name(fn, f"{source} split {name!r}")
            parsed[str(name)] = split
        return _dataclass_from_dict(cls, {**data, "splits": parsed}, source)



def check_relative_name(name: Any, where: str) -> str:
    """A file name read from a release or a Hub repo: relative, no ``..``, no backslash, else an error."""
    text = str(name)
    parts = text.replace("\\", "/").split("/")
    if not text or text.startswith("/") or "\\" in text or any(p in ("", ".", "..") for p in parts) or ":" in parts[0]:
        raise UserError(f"{where}: file name {text!r} is not a plain relative path inside the release")
    return text


def _dataclass_from_dict(cls: Any, data: Any, source: Path | str) -> Any:
    if not isinstance(data, Mapping):
        raise UserError(f"{source} is not a JSON object")
    names = [f.name for f in fields(cls)]
    missing = [n for n in names if n not in data and _required(cls, n)]
    if missing:
        raise UserError(f"{source} lacks key(s) {', '.join(missing)}")
    return cls(**{n: data[n] for n in names if n in data})


def _required(cls: Any, name: str) -> bool:
    from dataclasses import MISSING

    f = next(f for f in fields(cls) if f.name == name)
    return f.default is MISSING and f.default_factory is MISSING
