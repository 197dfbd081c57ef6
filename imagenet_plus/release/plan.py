"""What a release holds: the kept keys of ``RUN/selection.parquet``, their classes, and the train/validation split.

Nothing is written here. Shard counts: ``shard_size`` is an upper bound; the number of shards is rounded up to
1, 2, 4, 8 or a multiple of 8 (many divisors, so ``split_dataset_by_node`` gives every rank whole shards), and
samples are spread evenly over the shards.

Small classes: a class that keeps images but not more than ``val_per_class`` cannot give a validation image
and still train. ``small_classes`` says what happens: ``error`` (the default: stop and say which class),
``train`` (all its images go to train, none to validation) or ``drop`` (it is left out).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_plus.contract import COMPOSITE, KEY_PATTERN, RunPaths, read_class_records
from imagenet_plus.errors import UserError
from imagenet_plus.io.storage import local_copy
from imagenet_plus.release.config import ReleaseConfig, val_per_class_for


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
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    classes = read_class_records(paths)
    for c in classes:
        _check_name(str(c.get("id")), "class id", paths.classes_json)
    position = {c["id"]: i for i, c in enumerate(classes)}
    try:  # arrow, not pandas, kept rows only: no Python object per row but the kept keys themselves
        sel = pq.read_table(local_copy(paths.selection_parquet), columns=["key", "class_id", "kept", COMPOSITE],
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
    val_per_class = val_per_class_for(map(len, kept.values()), cfg.val_per_class)
    train, val = split_train_validation(kept, val_per_class, cfg.seed, cfg.small_classes)
    return ReleasePlan(classes=classes, rows=KeyRows(keys, paths.selection_parquet), class_index=class_index,
                       composite=composite,
                       splits={"train": train, "validation": val}, small=small_classes(kept, val_per_class))
