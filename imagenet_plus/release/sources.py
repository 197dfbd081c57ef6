"""Where the kept samples are and what they carry: one pass over the generated tars, the score columns, and
reading samples back through a bounded set of open tars.

Scale: one pass over the generated tars records where each kept sample's members are (tar, byte offset, size:
a few integers per image, no image or json bytes); the scores are held as one typed array per column. Samples
are then read in release order through a small LRU of open tars (:data:`MAX_OPEN_TARS`), so the open files
stay bounded whatever the shard count and the time is linear in the images.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_plus.contract import (
    COMMON_SAMPLE_FIELDS,
    COMPOSITE,
    IMAGE_EXTENSIONS,
    RELEASE_SCORE_FIELDS,
    SAMPLE_FIELDS,
    SCORES_MEMBER,
    RunPaths,
    expected_count,
    split_member_name,
    unreadable_scores,
)
from imagenet_plus.errors import CorruptShard, UserError
from imagenet_plus.io.storage import local_copy, open_binary
from imagenet_plus.io.tar import TarMember, count_mismatch, scan_tar
from imagenet_plus.release.plan import KeyRows, ReleasePlan

#: Generated tars kept open at once while copying samples.
MAX_OPEN_TARS = 32


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
        extra_meta: metadata fields beyond :data:`~imagenet_plus.contract.COMMON_SAMPLE_FIELDS` → dtype (the
            contract's :data:`~imagenet_plus.contract.REAL_IMAGE_FIELDS` of a run with real images among them).
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

    Every shard must be done (its stats JSON beside it) and hold the number of samples its stats say: a shard
    zero-filled from a sample boundary on reads as a shorter valid tar, and its lost samples would be missing.

    Raises:
        CorruptShard: a shard without stats (not finished), one that does not read back, or one holding another
            number of samples than its stats say (naming it).
        UserError: no shards, a kept key in no shard, a kept sample without an image, ``cls`` or ``json`` member,
            or kept samples with different image members.
    """
    tars = sorted(paths.generated.glob("*.tar"))
    if not tars:
        raise UserError(f"no shards in {paths.generated}: nothing to release")
    n = len(rows)
    idx = SampleIndex(tars, np.full(n, -1, np.int32), np.full((n, 2), -1, np.int64), np.full((n, 2), -1, np.int64),
                      np.zeros(n, bool), set(), {}, set())
    for t, tar in enumerate(tars):
        expected = expected_count(tar)
        try:
            with open_binary(local_copy(tar)) as f:
                members = list(scan_tar(f, str(tar), wanted=_is_json_member))
            names = [split_member_name(m.name) for m in members]
            found = sum(1 for i, (key, _) in enumerate(names) if i == 0 or key != names[i - 1][0])
            if found != expected:
                raise count_mismatch(tar, found, expected)
            where = rows.positions([key for key, _ in names]).tolist()
            for member, (_, ext), r in zip(members, names, where, strict=True):
                if r >= 0:
                    _index_member(idx, member, ext, t, r)
        except json.JSONDecodeError as exc:
            raise CorruptShard(tar, f"a json member is not JSON ({exc})") from None
        except OSError as exc:
            raise CorruptShard(tar, str(exc)) from None
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
            dtype = SAMPLE_FIELDS.get(k) or _infer_dtype(v)  # the real-image fields: the contract's dtype
            if k not in COMMON_SAMPLE_FIELDS and k != SCORES_MEMBER and dtype:
                idx.extra_meta.setdefault(k, dtype)


def _check_index(idx: SampleIndex, rows: KeyRows, paths: RunPaths) -> None:
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
        self.names = [k for k in RELEASE_SCORE_FIELDS if k != COMPOSITE]
        self.values = {k: (np.full(n, -1, np.int8) if RELEASE_SCORE_FIELDS[k] == "bool" else np.full(n, np.nan))
                       for k in self.names}

    def fill(self, rows: Any, df: Any) -> None:
        """Set rows ``rows`` from the matching rows of a scores frame."""
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
            names = pq.read_schema(local_copy(f)).names
            df = pd.read_parquet(local_copy(f), columns=["key", *(c for c in out.names if c in names)])
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise unreadable_scores(f, exc) from None
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
            f = open_binary(local_copy(self.tars[t]))
            while len(self._open) >= self.max_open:
                self._open.popitem(last=False)[1].close()
        self._open[t] = f
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise CorruptShard(self.tars[t], f"{size} bytes at offset {offset} cut short")
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
        doc = {k: _plain(meta.get(k)) for k in (*COMMON_SAMPLE_FIELDS, *self.index.extra_meta)}
        doc[SCORES_MEMBER] = self.scores.row(r)
        doc[SCORES_MEMBER][COMPOSITE] = _plain(self.plan.composite[r])
        return {"__key__": key, self.index.image_ext: self.image(key, reader),
                "cls": str(int(meta["label"])).encode(), "json": json.dumps(doc, sort_keys=True).encode()}


def _plain(value: Any) -> Any:
    """numpy/pandas scalars → JSON values; NaN/NA → None."""
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
