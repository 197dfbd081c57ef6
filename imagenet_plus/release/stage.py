"""Release: the kept images of a run as an ImageNet-style WebDataset release. Reads ``RUN``, writes ``REL``.

Input: ``RUN/selection.parquet`` (from ``select``), ``RUN/generated/*.tar``, ``RUN/scores/*.parquet`` and
``summary.json``, ``RUN/classes.json``, ``RUN/run.yaml``. Output (names from :mod:`imagenet_plus.contract`)::

    REL/README.md                 dataset card (YAML configs + dataset_info.features) — see card.py
    REL/_info.json                per split: name, num_samples, filenames, shard_lengths (timm's format),
                                  plus the class list, the image member and the release fingerprint
    REL/data/train-00000.tar      training shards, samples shuffled across classes with a fixed seed
    REL/data/validation-00000.tar validation shards (``val_per_class`` images of every class)

and with ``--imagefolder DIR`` also ``DIR/train/{wnid}/{key}.JPEG`` and ``DIR/val/{wnid}/{key}.JPEG``
(torchvision's ``ImageFolder`` layout; ``.png``/``.webp`` when the run wrote those formats).

Image bytes are copied from the generated shards, never re-encoded. Each sample's ``json`` holds the
generation metadata and, under ``scores``, its scores and the select composite.

Safety: the release is built in ``REL.partial`` (each shard through :class:`~imagenet_plus.shards.PartialTarWriter`)
and renamed to ``REL`` only when complete, so a failure never leaves half a release under the final name.
``_info.json`` records a fingerprint of the inputs (selection, generated shards, scores, class set, run
config hash and the release settings). Releasing again into the same folder with the same fingerprint is a
no-op; a folder holding anything else (another release, other files) is refused. The image folder works the
same way (``DIR.partial``, fingerprint in ``DIR/.imagenet-plus-release.json``).

Shard counts: ``shard_size`` is an upper bound; the number of shards is rounded up to 1, 2, 4, 8 or a
multiple of 8 (many divisors, so ``split_dataset_by_node`` gives every rank whole shards), and samples are
spread evenly over the shards.

Small classes: a class that keeps images but not more than ``val_per_class`` cannot give a validation image
and still train. ``small_classes`` says what happens: ``error`` (the default: stop and say which class),
``train`` (all its images go to train, none to validation) or ``drop`` (it is left out). The card lists the
classes treated either way.

Scale: one pass over the generated tars records where each kept sample's members are (tar, byte offset,
size: a few integers per image, no image or json bytes); the scores are held as one typed array per column.
Samples are then copied in release order through a small LRU of open tars (:data:`MAX_OPEN_TARS`), so the
open files stay bounded whatever the shard count and the time is linear in the images.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imagenet_plus.contract import (
    COMPOSITE,
    IMAGE_EXTENSIONS,
    INFO_NAME,
    KEY_PATTERN,
    PARTIAL_SUFFIX,
    RELEASE_DATA_DIR,
    RELEASE_SCORE_FIELDS,
    SAMPLE_FIELDS,
    SCORES_MEMBER,
    SPLITS,
    ReleaseInfo,
    ReleasePaths,
    RunPaths,
    SelectionSummary,
    SplitInfo,
    read_class_records,
    read_json,
    read_run_yaml,
    release_shard_name,
    run_paths,
    split_member_name,
)
from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import write_json_atomic
from imagenet_plus.io.tar import PartialTarWriter, TarMember, scan_tar
from imagenet_plus.pipeline.config import stable_hash
from imagenet_plus.pipeline.progress import progress_bar
from imagenet_plus.release.card import (
    dataset_info_yaml,
    model_license,
    release_features,
    render_card,
    size_category,
    validate_card,
)

IMAGEFOLDER_MARKER = ".imagenet-plus-release.json"
#: File extension of the image-folder export for each image member (ImageNet uses ``.JPEG``).
IMAGEFOLDER_EXT = {"jpg": ".JPEG", "png": ".png", "webp": ".webp"}
#: Split name in the shards/_info.json → folder name in the image-folder export (ImageNet's names).
IMAGEFOLDER_SPLITS = {"train": "train", "validation": "val"}
#: What to do with a class that keeps images but not more than ``val_per_class`` (see the module docstring).
SMALL_CLASS_POLICIES = ("error", "train", "drop")
#: Generated tars kept open at once while copying samples.
MAX_OPEN_TARS = 32


@dataclass(frozen=True)
class ReleaseConfig:
    """Settings of ``imagenet-plus release`` (fields are its flags).

    Attributes:
        val_per_class: validation images per class (taken from the kept ones; 0 for no validation split).
        shard_size: largest number of samples per tar shard.
        imagefolder: also export ``train/{wnid}/*.JPEG`` and ``val/{wnid}/*.JPEG`` into this folder.
        seed: seed of the train/validation split and of the shuffle across classes.
        small_classes: a class keeping images but not more than ``val_per_class``: ``error`` (refuse),
            ``train`` (train only) or ``drop`` (left out); the card lists such classes.
        license: the dataset's licence when the generating model's is not in imagenet-plus's table (or to
            override it): a Hub licence id (``apache-2.0``) or ``other:NAME:LINK``. Without it, a model of
            unknown licence gives a card with ``license: other``, which ``publish`` refuses.
    """

    val_per_class: int = 50
    shard_size: int = 1000
    imagefolder: str | None = None
    seed: int = 0
    small_classes: str = "error"
    license: str | None = None

    def __post_init__(self) -> None:
        if self.license is not None:
            model_license("", override=self.license)  # a malformed licence is refused here, before any work
        if self.val_per_class < 0:
            raise UserError(f"release config: 'val-per-class' must be >= 0, got {self.val_per_class}")
        if self.shard_size <= 0:
            raise UserError(f"release config: 'shard-size' must be positive, got {self.shard_size}")
        if self.seed < 0:
            raise UserError(f"release config: 'seed' must be >= 0, got {self.seed}")
        if self.small_classes not in SMALL_CLASS_POLICIES:
            raise UserError(f"release config: 'small-classes' must be one of {', '.join(SMALL_CLASS_POLICIES)}, "
                            f"got {self.small_classes!r}")


def num_shards_for(n: int, shard_size: int) -> int:
    """Shards for ``n`` samples of at most ``shard_size`` each, rounded up to 1, 2, 4, 8 or a multiple of 8."""
    if n <= 0:
        return 0
    need = math.ceil(n / shard_size)
    for candidate in (1, 2, 4, 8):
        if need <= candidate:
            count = candidate
            break
    else:
        count = math.ceil(need / 8) * 8
    return min(count, n)


def split_evenly(items: list[Any], parts: int) -> list[list[Any]]:
    """Cut ``items`` into ``parts`` contiguous chunks whose sizes differ by at most one."""
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        out.append(items[start:stop])
        start = stop
    return out


def small_classes(kept: dict[str, list[str]], val_per_class: int) -> list[str]:
    """Classes that keep images but not more than ``val_per_class`` (no image would be left for train)."""
    if not val_per_class:
        return []
    return sorted(cid for cid, keys in kept.items() if keys and len(keys) <= val_per_class)


def split_train_validation(kept: dict[str, list[str]], val_per_class: int, seed: int,
                           small: str = "error") -> tuple[list[str], list[str]]:
    """Per class, ``val_per_class`` random kept keys go to validation, the rest to train; both shuffled.

    Args:
        kept: {class_id: kept keys}.
        val_per_class: validation images per class.
        seed: the seed (each class draws from its own ``random.Random(f"{seed}/{class_id}")``).
        small: what to do with :func:`small_classes`: ``error``, ``train`` (all to train) or ``drop``.

    Returns:
        (train keys, validation keys), each shuffled across classes.

    Raises:
        UserError: with ``small="error"``, a class has kept images but not more than ``val_per_class``.
    """
    too_small = set(small_classes(kept, val_per_class))
    train, val = [], []
    for cid in sorted(kept):
        keys = sorted(kept[cid])
        if not keys:
            continue
        if cid in too_small:
            if small == "error":
                raise UserError(
                    f"class {cid} has only {len(keys)} kept image(s), not more than --val-per-class "
                    f"{val_per_class}: lower --val-per-class, top the class up ('imagenet-plus generate --top-up') "
                    "or pass --small-classes train (or drop)"
                )
            if small == "train":
                train.extend(keys)
            continue
        random.Random(f"{seed}/{cid}").shuffle(keys)
        val.extend(keys[:val_per_class])
        train.extend(keys[val_per_class:])
    random.Random(f"{seed}/train").shuffle(train)
    random.Random(f"{seed}/validation").shuffle(val)
    return train, val


# ------------------------------------------------------------------------------------------------------------
# step 1: what goes where (selection + class set)


def _check_name(value: str, what: str, source: Path) -> None:
    """Class ids and keys become folder and file names: letters, digits, ``_`` and ``-`` only."""
    if not KEY_PATTERN.match(value):
        raise UserError(f"{source}: {what} {value!r} is not a safe name (letters, digits, _ and - only)")


class KeyRows:
    """Kept key → row (0…n-1, in ``keys`` order), over one pandas hash index.

    At ImageNet size a ``dict`` of a million keys costs ~100 bytes per key more (an int object and a dict slot
    each); the index holds a pointer and a hash slot per key and looks many keys up in one call.

    Raises:
        UserError: a key appears twice.
    """

    def __init__(self, keys: list[str], source: Path) -> None:
        import pandas as pd

        self.index = pd.Index(keys, dtype=object)
        if not self.index.is_unique:
            dup = self.index[self.index.duplicated()][0]
            raise UserError(f"{source}: key {dup!r} is listed twice")

    def __len__(self) -> int:
        return len(self.index)

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __getitem__(self, key: str) -> int:
        return int(self.index.get_loc(key))

    def positions(self, keys: Any) -> Any:
        """Rows of ``keys`` (an int64 array; -1 where a key is not kept)."""
        return self.index.get_indexer(keys)


@dataclass(frozen=True)
class ReleasePlan:
    """What the release holds: the class set, the kept samples and their split, in write order.

    Attributes:
        classes: the class records of ``classes.json``, in label order.
        rows: kept key → row in the per-sample arrays (here and in :class:`SampleIndex`).
        class_index: (n,) index into ``classes`` of each kept row.
        composite: (n,) the select composite of each kept row.
        splits: split → keys in the order they are written.
        small: classes too small for a validation image (see :func:`small_classes`).
    """

    classes: list[dict[str, Any]]
    rows: KeyRows
    class_index: Any
    composite: Any
    splits: dict[str, list[str]]
    small: list[str]

    def class_of(self, key: str) -> str:
        return self.classes[int(self.class_index[self.rows[key]])]["id"]

    def per_class_counts(self) -> dict[str, Counter]:
        """split → Counter of class id."""
        return {s: Counter(self.class_of(k) for k in keys) for s, keys in self.splits.items()}


def plan_release(paths: RunPaths, cfg: ReleaseConfig) -> ReleasePlan:
    """Read the kept rows of ``selection.parquet`` and split them (nothing is written).

    Raises:
        UserError: unreadable selection, nothing kept, a class id or key that is not a safe file name, a class
            id not in ``classes.json``, or (``small_classes="error"``) a class too small for validation.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    classes = read_class_records(paths)
    for c in classes:
        _check_name(str(c.get("id")), "class id", paths.classes_json)
    position = {c["id"]: i for i, c in enumerate(classes)}
    try:  # arrow, not pandas, kept rows only: no Python object per row but the kept keys themselves
        sel = pq.read_table(paths.selection_parquet, columns=["key", "class_id", "kept", COMPOSITE],
                            filters=[("kept", "==", True)], read_dictionary=["class_id"])
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise UserError(f"unreadable {paths.selection_parquet}: {exc}") from None
    if sel.num_rows == 0:
        raise UserError(f"{paths.selection_parquet} keeps no image: loosen the thresholds and run select again")
    keys: list[str] = sel["key"].cast("string").to_pylist()
    composite = sel[COMPOSITE].cast("double").fill_null(float("nan")).to_numpy()
    codes = sel["class_id"].combine_chunks()
    del sel
    if not isinstance(codes, pa.DictionaryArray):
        codes = pc.dictionary_encode(codes.cast("string"))
    code_ids = [str(c) for c in codes.dictionary.to_pylist()]
    for cid in code_ids:
        if cid not in position:
            _check_name(cid, "class id", paths.selection_parquet)
            raise UserError(f"{paths.selection_parquet}: class id {cid!r} is not in {paths.classes_json}")
    class_index = np.array([position[c] for c in code_ids], dtype=np.int32)[
        codes.indices.to_numpy(zero_copy_only=False)]
    for key in keys:
        _check_name(key, "key", paths.selection_parquet)
    kept: dict[str, list[str]] = {c["id"]: [] for c in classes}
    order = np.argsort(class_index, kind="stable")  # rows grouped by class, in file order within a class
    ends = np.cumsum(np.bincount(class_index, minlength=len(classes)))
    for ci, (start, end) in enumerate(zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True)):
        kept[classes[ci]["id"]] = [keys[i] for i in order[start:end].tolist()]
    train, val = split_train_validation(kept, cfg.val_per_class, cfg.seed, cfg.small_classes)
    return ReleasePlan(classes=classes, rows=KeyRows(keys, paths.selection_parquet), class_index=class_index,
                       composite=composite,
                       splits={"train": train, "validation": val}, small=small_classes(kept, cfg.val_per_class))


# ------------------------------------------------------------------------------------------------------------
# step 2: where the samples are (one pass over the generated tars) and their scores


@dataclass
class SampleIndex:
    """Byte ranges of each kept sample's image and json members, and what the metadata holds overall.

    Attributes:
        tars: the generated tars.
        tar: (n,) index into ``tars`` of each kept row (-1: not found).
        image: (n, 2) offset and size of the image member.
        json: (n, 2) offset and size of the json member (-1: none).
        has_cls: (n,) the sample has a ``cls`` member.
        image_exts: the image members seen.
        extra_meta: metadata fields beyond :data:`~imagenet_plus.contract.SAMPLE_FIELDS` → dtype.
        schedulers: the schedulers named in the metadata.
    """

    tars: list[Path]
    tar: Any
    image: Any
    json: Any
    has_cls: Any
    image_exts: set[str]
    extra_meta: dict[str, str]
    schedulers: set[str]

    @property
    def image_ext(self) -> str:
        return next(iter(self.image_exts))


def index_generated(paths: RunPaths, rows: KeyRows) -> SampleIndex:
    """Read the tar headers of ``RUN/generated/*.tar`` (and the json of kept samples) once.

    Raises:
        UserError: no shards, a corrupt shard, a kept key in no shard, a kept sample without an image, ``cls`` or
            ``json`` member, or kept samples with different image members.
    """
    import numpy as np

    tars = sorted(paths.generated.glob("*.tar"))
    if not tars:
        raise UserError(f"no shards in {paths.generated}: nothing to release")
    n = len(rows)
    idx = SampleIndex(tars, np.full(n, -1, np.int32), np.full((n, 2), -1, np.int64), np.full((n, 2), -1, np.int64),
                      np.zeros(n, bool), set(), {}, set())
    for t, tar in enumerate(tars):
        try:
            with open(tar, "rb") as f:
                members = list(scan_tar(f, str(tar), wanted=_is_json_member))
            names = [split_member_name(m.name) for m in members]
            where = rows.positions([key for key, _ in names]).tolist()
            for member, (_, ext), r in zip(members, names, where, strict=True):
                if r >= 0:
                    _index_member(idx, member, ext, t, r)
        except json.JSONDecodeError as exc:
            raise UserError(f"corrupt or truncated shard {tar}: a json member is not JSON ({exc})") from None
        except OSError as exc:
            raise UserError(f"corrupt or truncated shard {tar}: {exc}") from None
    _check_index(idx, rows, paths)
    return idx


def _is_json_member(name: str) -> bool:
    return name.endswith(".json")


def _index_member(idx: SampleIndex, member: TarMember, ext: str, t: int, r: int) -> None:
    idx.tar[r] = t
    if ext in IMAGE_EXTENSIONS:
        idx.image[r] = (member.offset, member.size)
        idx.image_exts.add(ext)
    elif ext == "cls":
        idx.has_cls[r] = True
    elif ext == "json":
        idx.json[r] = (member.offset, member.size)
        meta = json.loads(member.data)  # type: ignore[arg-type]
        if meta.get("scheduler"):
            idx.schedulers.add(str(meta["scheduler"]))
        for k, v in meta.items():
            if k not in SAMPLE_FIELDS and k != SCORES_MEMBER and (dtype := _infer_dtype(v)):
                idx.extra_meta.setdefault(k, dtype)


def _check_index(idx: SampleIndex, rows: KeyRows, paths: RunPaths) -> None:
    import numpy as np

    keys = rows.index
    missing = sorted(keys[i] for i in np.flatnonzero(idx.tar < 0))
    if missing:
        raise UserError(f"key {missing[0]} is in {paths.selection_parquet} but in no shard of {paths.generated}")
    if len(idx.image_exts) != 1:
        raise UserError(f"the kept samples in {paths.generated} mix image members {sorted(idx.image_exts)}")
    for what, bad in ((idx.image_ext, idx.image[:, 0] < 0), ("cls", ~idx.has_cls), ("json", idx.json[:, 0] < 0)):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserError(f"sample {keys[i]} in {idx.tars[idx.tar[i]]} has no '{what}' member")


class ScoreColumns:
    """The release scores of the kept rows, one typed array per column (NaN, or -1 for booleans, when null)."""

    def __init__(self, n: int) -> None:
        import numpy as np

        self.names = [k for k in RELEASE_SCORE_FIELDS if k != COMPOSITE]
        self.values = {k: (np.full(n, -1, np.int8) if RELEASE_SCORE_FIELDS[k] == "bool" else np.full(n, np.nan))
                       for k in self.names}

    def fill(self, rows: Any, df: Any) -> None:
        """Set rows ``rows`` from the matching rows of a scores frame."""
        import numpy as np
        import pandas as pd

        for k in self.names:
            if k not in df.columns:
                continue
            if RELEASE_SCORE_FIELDS[k] == "bool":
                b = df[k].astype("boolean")
                self.values[k][rows] = np.where(b.isna(), -1, b.fillna(False).astype(np.int8))
            else:
                self.values[k][rows] = pd.to_numeric(df[k], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)

    def row(self, r: int) -> dict[str, Any]:
        """The scores of row ``r`` as JSON values (None when not computed)."""
        out: dict[str, Any] = {}
        for k in self.names:
            v = self.values[k][r]
            dtype = RELEASE_SCORE_FIELDS[k]
            if dtype == "bool":
                out[k] = None if v < 0 else bool(v)
            elif math.isnan(v):
                out[k] = None
            else:
                out[k] = int(v) if dtype == "int64" else float(v)
        return out


def read_release_scores(paths: RunPaths, rows: KeyRows) -> ScoreColumns:
    """The score columns of the kept rows, read file by file (only the release score columns)."""
    import pandas as pd
    import pyarrow.parquet as pq

    out = ScoreColumns(len(rows))
    for f in paths.scored_parquets():
        try:
            names = pq.read_schema(f).names
            df = pd.read_parquet(f, columns=["key", *(c for c in out.names if c in names)])
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise UserError(f"unreadable scores file {f}: {exc}") from None
        where = rows.positions(df["key"])
        found = where >= 0
        if found.any():
            out.fill(where[found], df[found])
    return out


# ------------------------------------------------------------------------------------------------------------
# step 3: the samples, read through a bounded set of open tars


class TarReader:
    """Read byte ranges of tars through an LRU of at most ``max_open`` open files."""

    def __init__(self, tars: list[Path], max_open: int = MAX_OPEN_TARS) -> None:
        self.tars, self.max_open = tars, max_open
        self._open: OrderedDict[int, Any] = OrderedDict()

    def read(self, t: int, offset: int, size: int) -> bytes:
        f = self._open.pop(t, None)
        if f is None:
            f = open(self.tars[t], "rb")
            while len(self._open) >= self.max_open:
                self._open.popitem(last=False)[1].close()
        self._open[t] = f
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise UserError(f"corrupt or truncated shard {self.tars[t]}")
        return data

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def __enter__(self) -> TarReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class ReleaseSources:
    """Everything a release sample is built from."""

    plan: ReleasePlan
    index: SampleIndex
    scores: ScoreColumns

    def image(self, key: str, reader: TarReader) -> bytes:
        r = self.plan.rows[key]
        off, size = self.index.image[r]
        return reader.read(int(self.index.tar[r]), int(off), int(size))

    def sample(self, key: str, reader: TarReader) -> dict[str, Any]:
        """The release sample of ``key``: image bytes as generated, ``cls``, and the json with its scores."""
        r = self.plan.rows[key]
        off, size = self.index.json[r]
        meta = json.loads(reader.read(int(self.index.tar[r]), int(off), int(size)))
        doc = {k: _plain(meta.get(k)) for k in (*SAMPLE_FIELDS, *self.index.extra_meta)}
        doc[SCORES_MEMBER] = self.scores.row(r)
        doc[SCORES_MEMBER][COMPOSITE] = _plain(self.plan.composite[r])
        return {"__key__": key, self.index.image_ext: self.image(key, reader),
                "cls": str(int(meta["label"])).encode(), "json": json.dumps(doc, sort_keys=True).encode()}


def _plain(value: Any) -> Any:
    """numpy/pandas scalars → JSON values; NaN/NA → None."""
    import numpy as np
    import pandas as pd

    if value is None or value is pd.NA:
        return None
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return value


def _infer_dtype(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    return None


# ------------------------------------------------------------------------------------------------------------
# fingerprint and target folders


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def release_fingerprint(paths: RunPaths, cfg: ReleaseConfig) -> str:
    """A hash of everything a release is built from (selection, shards, scores, classes, settings)."""
    settings: dict[str, Any] = {"val_per_class": cfg.val_per_class, "shard_size": cfg.shard_size, "seed": cfg.seed}
    if cfg.small_classes != ReleaseConfig.small_classes:  # only when set: older fingerprints stay valid
        settings["small_classes"] = cfg.small_classes
    if cfg.license is not None:
        settings["license"] = cfg.license
    listing = {
        "selection": _file_digest(paths.selection_parquet),
        "classes": _file_digest(paths.classes_json),
        "generated": [(p.name, p.stat().st_size) for p in sorted(paths.generated.glob("*.tar"))],
        "scores": [(p.name, _file_digest(p)) for p in paths.scored_parquets()],
        "settings": settings,
        "config_hash": read_run_yaml(paths).get("config_hash"),
    }
    return stable_hash(listing)


def _existing_fingerprint(folder: Path, marker: str) -> str | None:
    try:
        return json.loads((folder / marker).read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _check_target(folder: Path, marker: str, fingerprint: str, what: str) -> bool:
    """True when ``folder`` already holds this build; False when it is absent or empty; else UserError."""
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder: choose another {what} folder")
    if not any(folder.iterdir()):
        return False
    found = _existing_fingerprint(folder, marker)
    if found == fingerprint:
        return True
    if found is None:
        raise UserError(f"{folder} is not empty and holds no imagenet-plus release: choose another {what} folder")
    raise UserError(
        f"{folder} holds a different release (fingerprint {found}, this one {fingerprint}): "
        f"choose another {what} folder or delete it"
    )


def _fresh_partial(final: Path) -> Path:
    tmp = final.with_name(final.name + PARTIAL_SUFFIX)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _promote(tmp: Path, final: Path) -> None:
    if final.exists():
        final.rmdir()  # only ever an empty folder here (checked by _check_target)
    os.replace(tmp, final)


# ------------------------------------------------------------------------------------------------------------
# the stage


def run_release(run: str | Path, out: str | Path, cfg: ReleaseConfig) -> Path:
    """Build the release folder ``out`` from the kept images of ``run`` (see the module docstring).

    Args:
        run: the run directory (``select`` done).
        out: the release folder to create.
        cfg: the release settings.

    Returns:
        The release folder.

    Raises:
        UserError: ``select`` not run, a class too small for the validation split, corrupt inputs, a class id
            or key that is not a safe file name, or ``out`` (or the image folder) holding something else.
    """
    paths = run_paths(run)
    out = Path(out)
    if not paths.selection_parquet.is_file():
        raise UserError(f"{paths.selection_parquet} not found: run 'imagenet-plus select {paths.root}' before release")
    fingerprint = release_fingerprint(paths, cfg)
    rel_done = _check_target(out, INFO_NAME, fingerprint, "--out")
    folder = Path(cfg.imagefolder) if cfg.imagefolder else None
    folder_done = _check_target(folder, IMAGEFOLDER_MARKER, fingerprint, "--imagefolder") if folder else True
    if rel_done and folder_done:
        return out
    plan = plan_release(paths, cfg)
    index = index_generated(paths, plan.rows)
    sources = ReleaseSources(plan, index, read_release_scores(paths, plan.rows))
    if not rel_done:
        _write_release(paths, out, cfg, fingerprint, sources)
    if folder is not None and not folder_done:
        _write_imagefolder(folder, fingerprint, sources)
    return out


@dataclass(frozen=True)
class WrittenSplits:
    """What :func:`_write_shards` wrote: the splits in ``_info.json``'s form and their sizes in bytes."""

    info: dict[str, SplitInfo]
    nbytes: dict[str, int]

    def counts(self) -> dict[str, int]:
        return {s: i.num_samples for s, i in self.info.items()}


def _write_shards(tmp: Path, cfg: ReleaseConfig, sources: ReleaseSources) -> WrittenSplits:
    """Write ``tmp/data/{split}-NNNNN.tar`` for every non-empty split."""
    rel = ReleasePaths(tmp)
    rel.data.mkdir(parents=True)
    info: dict[str, SplitInfo] = {}
    nbytes: dict[str, int] = {}
    splits = sources.plan.splits
    bar = progress_bar(sum(len(v) for v in splits.values()), "release")
    try:
        with TarReader(sources.index.tars) as reader:
            for split in SPLITS:
                keys = splits.get(split) or []
                if not keys:
                    continue
                names, lengths = [], []
                for s, chunk in enumerate(split_evenly(keys, num_shards_for(len(keys), cfg.shard_size))):
                    with PartialTarWriter(rel.shard(split, s)) as w:
                        for key in chunk:
                            w.write(sources.sample(key, reader))
                            bar.update(1)
                    names.append(release_shard_name(split, s))
                    lengths.append(len(chunk))
                info[split] = SplitInfo(name=split, num_samples=len(keys), filenames=names, shard_lengths=lengths)
                nbytes[split] = sum(rel.shard(split, s).stat().st_size for s in range(len(names)))
    finally:
        bar.close()
    return WrittenSplits(info, nbytes)


def _write_release(paths: RunPaths, out: Path, cfg: ReleaseConfig, fingerprint: str, sources: ReleaseSources) -> None:
    """Shards, then ``_info.json``, then the card, all in ``out.partial``; renamed to ``out`` when complete."""
    tmp = _fresh_partial(out)
    written = _write_shards(tmp, cfg, sources)
    run_yaml = read_run_yaml(paths)
    classes = sources.plan.classes
    info = ReleaseInfo(
        name=out.name,
        fingerprint=fingerprint,
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        image_ext=sources.index.image_ext,
        num_classes=len(classes),
        classes=[{"label": c["label"], "id": c["id"], "name": c["name"]} for c in classes],
        config_hash=run_yaml.get("config_hash"),
        splits=written.info,
    )
    rel = ReleasePaths(tmp)
    info.write(rel.info_json)
    card = _card_text(CardInputs.gather(paths, run_yaml, info, written, sources, cfg))
    validate_card(card, str(ReleasePaths(out).card))
    rel.card.write_text(card, encoding="utf-8")
    _promote(tmp, out)


# ------------------------------------------------------------------------------------------------------------
# the card


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "not computed"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _metrics_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    def pm(mean: Any, std: Any) -> str:
        return "not computed" if mean is None else f"{_fmt(mean)} ± {_fmt(std)}"

    return [
        ("FID (Inception pool3, vs reference)", _fmt(summary.get("fid"))),
        ("KID", pm(summary.get("kid_mean"), summary.get("kid_std"))),
        ("Inception Score", pm(summary.get("inception_score_mean"), summary.get("inception_score_std"))),
        ("CLIP score (mean, 100·cos)", _fmt(summary.get("clip_score_mean"))),
        ("precision (Kynkäänniemi et al.)", _fmt(summary.get("precision"))),
        ("recall (Kynkäänniemi et al.)", _fmt(summary.get("recall"))),
        ("images scored", _fmt(summary.get("num_images"))),
    ]


def _read_json_file(path: Path) -> dict[str, Any]:
    """A JSON file of the run, ``{}`` when it is absent (``contract.read_json`` names a malformed one)."""
    return read_json(path) if path.is_file() else {}


#: Classes listed by name in the card's small-class line (the rest are counted).
MAX_LISTED_CLASSES = 50


@dataclass(frozen=True)
class CardInputs:
    """What the card is rendered from."""

    run_yaml: dict[str, Any]
    summary: dict[str, Any]
    selection: SelectionSummary | None
    info: ReleaseInfo
    written: WrittenSplits
    per_class: dict[str, Counter]
    extra_meta: dict[str, str]
    scheduler: str
    small: list[str]
    small_policy: str
    license: str | None = None
    diagnosis: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def gather(cls, paths: RunPaths, run_yaml: dict[str, Any], info: ReleaseInfo, written: WrittenSplits,
               sources: ReleaseSources, cfg: ReleaseConfig) -> CardInputs:
        selection = SelectionSummary.read(paths.selection_json) if paths.selection_json.is_file() else None
        return cls(run_yaml=run_yaml, summary=_read_json_file(paths.summary_json), selection=selection, info=info,
                   written=written, per_class=sources.plan.per_class_counts(), extra_meta=sources.index.extra_meta,
                   scheduler=", ".join(sorted(sources.index.schedulers)), small=sources.plan.small,
                   small_policy=cfg.small_classes, license=cfg.license,
                   diagnosis=_read_json_file(paths.diagnosis_json))


def _card_yaml(inp: CardInputs) -> dict[str, Any]:
    """The card's YAML header: license from the model, configs per split, dataset_info from datasets."""
    config = inp.run_yaml.get("config", {})
    model = str(config.get("model", "unknown"))
    lic, lic_name, lic_link, _ = model_license(model, override=inp.license)
    counts = inp.written.counts()
    features = release_features([c["id"] for c in inp.info.classes], inp.info.image_ext, inp.extra_meta)
    card_yaml: dict[str, Any] = {
        "pretty_name": f"imagenet-plus: synthetic {config.get('classes', 'image classes')} ({model})",
        "license": lic,
        "task_categories": ["image-classification"],
        "size_categories": [size_category(sum(counts.values()))],
        "tags": ["synthetic", "imagenet", "webdataset", "diffusion"],
        "configs": [{"config_name": "default", "data_files": [
            {"split": s, "path": f"{RELEASE_DATA_DIR}/{s}-*.tar"} for s in counts]}],
        "dataset_info": dataset_info_yaml(features, counts, inp.written.nbytes),
    }
    if lic_name:
        card_yaml["license_name"] = lic_name
        card_yaml["license_link"] = lic_link
    return card_yaml


def _class_rows(inp: CardInputs) -> list[dict[str, Any]]:
    pass_rate = inp.selection.pass_rate if inp.selection else {}
    return [{"label": c["label"], "id": c["id"], "name": c["name"],
             "train": inp.per_class.get("train", Counter())[c["id"]],
             "validation": inp.per_class.get("validation", Counter())[c["id"]],
             "pass_rate": _fmt(pass_rate.get(c["id"]), 3)} for c in inp.info.classes]


def _selection_context(inp: CardInputs, released: int) -> dict[str, Any]:
    sel = inp.selection
    th = {k: v for k, v in ((sel.thresholds if sel else None) or {}).items() if v not in (None, False)}
    scored = (sel.num_scored if sel else 0) or 0
    passed = sel.num_passed if sel else 0
    listed = ", ".join(inp.small[:MAX_LISTED_CLASSES])
    if len(inp.small) > MAX_LISTED_CLASSES:
        listed += f" and {len(inp.small) - MAX_LISTED_CLASSES} more"
    return {
        "thresholds": ", ".join(f"`{k}: {v}`" for k, v in th.items()) or "defaults",
        "quota": sel.per_class_quota if sel else None,
        "num_kept": sel.num_kept if sel else released,
        "num_scored": scored,
        "overall_pass_rate": f"{passed / scored:.1%}" if scored else "n/a",
        "dropped_classes": (sel.dropped_classes if sel else None) or [],
        "flagged_classes": (sel.flagged_classes if sel else None) or [],
        "short_classes": ", ".join(f"{k} ({v} missing)" for k, v in ((sel.short if sel else None) or {}).items()),
        "train_only_classes": listed if inp.small_policy == "train" else "",
        "small_dropped_classes": listed if inp.small_policy == "drop" else "",
        "num_small_classes": len(inp.small),
    }


def _nsfw_filter_text(inp: CardInputs, models: dict[str, Any]) -> str:
    """One sentence for the card: which NSFW checks ran and whether select dropped what they flagged."""
    detector = models.get("nsfw_detector")
    th = (inp.selection.thresholds if inp.selection else None) or {}
    checks = ["the generator's safety checker, where the model has one"]
    if detector and detector != "none":
        checks.append(f"the independent detector `{detector}` run by `imagenet-plus score`")
    else:
        checks.append("no independent detector (`score --nsfw-model none`, or scored before it existed)")
    how = " and ".join(checks)
    if not th.get("drop_nsfw", True):
        return f"NSFW checks: {how}; flagged images were NOT dropped (`drop-nsfw: false`)."
    limit = th.get("nsfw_score_max", 0.5)
    return f"NSFW checks: {how}; images flagged by either (detector P(nsfw) > {limit}) were dropped."


def _joined(value: Any) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value or "")


def _diagnosis_context(diagnosis: dict[str, Any]) -> dict[str, Any] | None:
    """The card's diagnosis section from ``RUN/diagnosis.json`` (None when the run was not diagnosed).

    Lists the classes per verdict (``verdict_counts``) and the flagged classes worst first (``flagged_classes``,
    as many as ``diagnose`` listed), with the prompt strategies a ``generate --top-up --remedy`` would use.
    """
    from imagenet_plus.contract import DIAGNOSIS_JSON
    from imagenet_plus.diagnose.stage import VERDICT_OK

    if not diagnosis:
        return None
    counts = diagnosis.get("verdict_counts")
    flagged = diagnosis.get("flagged_classes")
    if not isinstance(counts, dict) or not isinstance(flagged, list):
        raise UserError(f"RUN/{DIAGNOSIS_JSON} lacks 'verdict_counts' or 'flagged_classes': "
                        "re-run 'imagenet-plus diagnose'")
    num_ok = int(counts.get(VERDICT_OK, 0) or 0)
    num_flagged = sum(int(v or 0) for k, v in counts.items() if k != VERDICT_OK)
    rows = [{"class_id": r.get("class_id"), "name": r.get("name"), "verdict": r.get("verdict"),
             "flags": _joined(r.get("flags")), "remedy": r.get("remedy") or ""} for r in flagged if isinstance(r, dict)]
    return {
        "verdict_counts": [(k, int(v or 0)) for k, v in counts.items()],
        "num_flagged": num_flagged,
        "num_ok": num_ok,
        "flagged": rows,
        "reference": diagnosis.get("reference"),
        "note": diagnosis.get("note"),
    }


def _card_text(inp: CardInputs) -> str:
    """Render the card (template variables in ``card_template.md``)."""
    config = inp.run_yaml.get("config", {})
    model = str(config.get("model", "unknown"))
    card_yaml = _card_yaml(inp)
    counts = inp.written.counts()
    n_train_shards = len(inp.info.splits["train"].filenames) if "train" in inp.info.splits else 0
    n_val_shards = len(inp.info.splits["validation"].filenames) if "validation" in inp.info.splits else 0
    models = inp.summary.get("models") or {}
    context = {
        "card_yaml": card_yaml,
        "pretty_name": card_yaml["pretty_name"],
        "num_classes": len(inp.info.classes),
        "num_train": counts.get("train", 0),
        "num_validation": counts.get("validation", 0),
        "versions": inp.run_yaml.get("versions") or {},
        "model": model,
        "license_note": model_license(model, override=inp.license)[3],
        "scheduler": config.get("scheduler") or inp.scheduler or "model default",
        "steps": config.get("steps"),
        "guidance": config.get("guidance"),
        "resolution": config.get("resolution"),
        "prompt_strategies": ", ".join(config.get("prompt_strategy") or []) or str(config.get("prompt_strategy", "")),
        "negative_prompt": config.get("negative_prompt", ""),
        "seed": config.get("seed"),
        "class_spec": config.get("classes"),
        "config_hash": inp.run_yaml.get("config_hash"),
        "metrics": _metrics_rows(inp.summary),
        "reference": inp.summary.get("reference"),
        "scoring_models": ", ".join(f"{k}: {v}" for k, v in models.items() if v) or "not recorded",
        "nsfw_filter": _nsfw_filter_text(inp, models),
        **_selection_context(inp, sum(counts.values())),
        "is_imagenet": config.get("classes") == "imagenet-1k",
        "classes": _class_rows(inp),
        "diagnosis": _diagnosis_context(inp.diagnosis),
        "image_ext": inp.info.image_ext,
        "train_shards": n_train_shards,
        "validation_shards": n_val_shards,
        "last_train_shard": f"{max(n_train_shards - 1, 0):05d}",
        "divisors": ", ".join(str(d) for d in range(1, n_train_shards + 1) if n_train_shards % d == 0),
        "year": datetime.now(timezone.utc).year,
    }
    return render_card(context)


# ------------------------------------------------------------------------------------------------------------
# the image-folder export


def _write_imagefolder(folder: Path, fingerprint: str, sources: ReleaseSources) -> None:
    tmp = _fresh_partial(folder)
    splits = sources.plan.splits
    suffix = IMAGEFOLDER_EXT[sources.index.image_ext]
    bar = progress_bar(sum(len(v) for v in splits.values()), "imagefolder")
    try:
        with TarReader(sources.index.tars) as reader:
            for split in SPLITS:
                for key in splits.get(split) or []:
                    d = tmp / IMAGEFOLDER_SPLITS[split] / sources.plan.class_of(key)
                    d.mkdir(parents=True, exist_ok=True)
                    (d / f"{key}{suffix}").write_bytes(sources.image(key, reader))
                    bar.update(1)
    finally:
        bar.close()
    write_json_atomic(tmp / IMAGEFOLDER_MARKER, {"fingerprint": fingerprint})
    _promote(tmp, folder)
