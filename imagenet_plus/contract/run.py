"""The run record and class set: ``RUN/run.yaml`` (written first) and ``RUN/classes.json``.

``run.yaml`` is :class:`RunRecord`: the resolved generate config, its hash (config + class set), the library
versions, the class and image counts and the plan's :class:`Segment` list. It is read back validated: a
hand-edited file with a missing key or a value of the wrong type is a one-line error naming the key
(:func:`~imagenet_plus.contract.typed.typed_values`, the check every typed record uses), and so is a plan
that contradicts itself (:func:`check_plan`: no segments, overlapping or gapped indices, an
``images_per_class`` that is not what the segments hold). Whether the plan agrees with the shards on disk is
``generate``'s check (:func:`imagenet_plus.generate.state.check_shards_on_disk`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from imagenet_plus.contract.names import RECORDED_LIBRARIES, RUN_YAML
from imagenet_plus.contract.paths import RunPaths
from imagenet_plus.contract.records import read_json
from imagenet_plus.contract.typed import typed_values
from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import write_bytes_atomic
from imagenet_plus.io.storage import location


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------------------
# run.yaml


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: Kinds of plan segments: the first is ``initial``; raising images per class appends ``extend``, ``--top-up``
#: appends ``top-up``.
SEGMENT_KINDS = ("initial", "extend", "top-up")
#: Segment kinds that make up ``images_per_class`` (a top-up adds images past it).
PER_CLASS_KINDS = ("initial", "extend")
#: How a message about a run.yaml that contradicts itself or the run ends.
RESTORE_RUN_YAML = "restore run.yaml as 'generate' wrote it, or generate into another --out"


@dataclass(frozen=True)
class Segment:
    """A block of planned indices: ``ranges`` = ((label, start, stop), ...) with stop exclusive.

    ``strategies`` = ((label, strategy), ...): the prompt strategy of every new index of those labels in this
    segment, in place of the configured ones (``generate --top-up --remedy``); empty otherwise.
    """

    kind: str
    ranges: tuple[tuple[int, int, int], ...]
    based_on: str = ""
    strategies: tuple[tuple[int, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "ranges": [list(r) for r in self.ranges]}
        if self.based_on:
            out["based_on"] = self.based_on
        if self.strategies:
            out["strategies"] = [[label, strategy] for label, strategy in self.strategies]
        return out

    @staticmethod
    def from_dict(data: Any, source: Path | str = RUN_YAML, name: str = "segment") -> Segment:
        """A segment from its run.yaml mapping.

        Args:
            data: the mapping.
            source: the file it was read from; ``name`` its place there (``segments[1]``). Both name errors.

        Raises:
            UserError: a key missing, unknown or of the wrong type, named as ``segments[1].ranges``.
        """
        if not isinstance(data, Mapping):
            raise UserError(f"{source}: key '{name}' must be a mapping, got {_short_repr(data)}")
        checks = {
            "kind": (lambda v: isinstance(v, str), "a string"),
            "ranges": (lambda v: isinstance(v, list) and all(
                isinstance(r, list) and len(r) == 3 and all(_is_int(x) for x in r) for r in v),
                "a list of [label, start, stop] integer triples"),
            "based_on": (lambda v: isinstance(v, str), "a string"),
            "strategies": (lambda v: isinstance(v, list) and all(
                isinstance(p, list) and len(p) == 2 and _is_int(p[0]) and isinstance(p[1], str) for p in v),
                "a list of [label, strategy] pairs"),
        }
        for key in data:
            if key not in checks:
                raise UserError(f"{source}: unknown key '{name}.{key}'")
        for key, (ok, what) in checks.items():
            if key not in data:
                if key in ("kind", "ranges"):
                    raise UserError(f"{source}: missing key '{name}.{key}'")
            elif not ok(data[key]):
                raise UserError(f"{source}: key '{name}.{key}' must be {what}, got {_short_repr(data[key])}")
        return Segment(
            kind=data["kind"],
            ranges=tuple((a, b, c) for a, b, c in data["ranges"]),
            based_on=data.get("based_on", ""),
            strategies=tuple((label, strategy) for label, strategy in data.get("strategies", ())),
        )

    @property
    def num_items(self) -> int:
        return sum(stop - start for _, start, stop in self.ranges)


@dataclass(frozen=True)
class RunRecord:
    """``RUN/run.yaml``: what the run's images are made from, written before any image.

    Attributes:
        config: the resolved generate config (every setting, presets filled in).
        config_hash: hash of the settings that change images and of the class set (a re-run with another one
            is refused).
        versions: versions of the libraries that shape the output.
        num_classes: classes in ``classes.json``.
        num_images: images the plan holds (every segment).
        segments: the plan's segments, in order.
        run_id: a random id given to the run folder when its run.yaml is first written and kept for its life
            (extended, topped up): what a release folder records to say which run made it
            (:mod:`imagenet_plus.contract.release`). None in run folders made before it existed.
    """

    config: dict[str, Any]
    config_hash: str
    versions: dict[str, str]
    num_classes: int
    num_images: int
    segments: tuple[Segment, ...]
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The mapping written to run.yaml, keys in this order (``run_id`` only when the run has one)."""
        out: dict[str, Any] = {
            "config": self.config,
            "config_hash": self.config_hash,
            "versions": self.versions,
            "num_classes": self.num_classes,
            "num_images": self.num_images,
            "segments": [s.to_dict() for s in self.segments],
        }
        if self.run_id is not None:
            out["run_id"] = self.run_id
        return out

    @classmethod
    def from_dict(cls, data: Any, source: Path | str) -> RunRecord:
        """Validate a loaded run.yaml.

        Raises:
            UserError: an unknown or missing key, or a value of the wrong type, naming the key.
        """
        values = typed_values(cls, data, source, skip=("segments",), refuse_unknown=True)
        raw = values["segments"]
        if not isinstance(raw, list):
            raise UserError(f"{source}: key 'segments' must be a list, got {_short_repr(raw)}")
        segments = tuple(Segment.from_dict(s, source, f"segments[{i}]") for i, s in enumerate(raw))
        record = cls(**{**values, "config": dict(values["config"]), "versions": dict(values["versions"]),
                        "segments": segments})
        check_plan(record, source)
        return record

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        """Read and validate a run.yaml.

        Raises:
            UserError: unreadable, not YAML, or not a run record (naming the key at fault).
        """
        import yaml

        try:
            data = yaml.safe_load(location(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise UserError(f"unreadable {path}: {exc}") from None
        if not isinstance(data, Mapping):
            raise UserError(f"{path} is not a {RUN_YAML} written by imagenet-plus (not a mapping)")
        return cls.from_dict(data, path)

    def write(self, path: Path) -> None:
        """Write atomically (YAML, keys in record order)."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        write_bytes_atomic(path, text.encode("utf-8"))


def _indices(first: int, last: int) -> str:
    return f"index {first}" if first == last else f"indices {first}..{last}"


def check_plan(record: RunRecord, source: Path | str) -> None:
    """Refuse a plan that contradicts itself (a hand-edited run.yaml), naming the key at fault.

    The plan ``generate`` writes: the first segment is ``initial`` and holds indices ``0..images_per_class-1`` of
    every class (but the classes without real images of a run with ``real_missing: skip``, which no segment plans);
    each later segment gives a class at most one range, starting where that class's earlier ranges
    end (no index planned twice, none skipped); the ``initial`` and ``extend`` segments hold
    ``config.images_per_class`` indices of every class; a segment's ``strategies`` name classes it has indices of;
    ``num_images`` is the sum.

    Raises:
        UserError: the first contradiction, as one line naming ``source`` and the key.
    """
    segments, num_classes = record.segments, record.num_classes
    if not segments:
        raise UserError(f"{source}: key 'segments' is empty, but every run's plan starts with its 'initial' "
                        f"segment: {RESTORE_RUN_YAML}")
    if num_classes <= 0:
        raise UserError(f"{source}: key 'num_classes' must be positive, got {num_classes}")
    ipc = record.config.get("images_per_class")
    if not _is_int(ipc) or ipc <= 0:
        raise UserError(f"{source}: key 'config.images_per_class' must be a positive integer, got {_short_repr(ipc)}")
    # ``real_missing: skip`` plans no image of the classes without real images: the initial segment leaves them out
    skips_classes = record.config.get("real_missing") == "skip"
    skipped: set[int] = set()
    end: dict[int, int] = {}  # label → the first index no segment so far plans
    per_class = dict.fromkeys(range(num_classes), 0)  # label → indices of initial and extend segments
    for i, seg in enumerate(segments):
        name = f"segments[{i}]"
        expected = SEGMENT_KINDS[:1] if i == 0 else SEGMENT_KINDS[1:]
        if seg.kind not in expected:
            raise UserError(f"{source}: key '{name}.kind' is {seg.kind!r}, expected {' or '.join(map(repr, expected))}"
                            f" (the first segment is 'initial'): {RESTORE_RUN_YAML}")
        labels: set[int] = set()
        for j, (label, start, stop) in enumerate(seg.ranges):
            where = f"{source}: key '{name}.ranges[{j}]'"
            if not 0 <= label < num_classes:
                raise UserError(f"{where} names class {label}, but num_classes is {num_classes}: {RESTORE_RUN_YAML}")
            if label in labels:
                raise UserError(f"{where} gives class {label} a second range in one segment: {RESTORE_RUN_YAML}")
            if not start < stop:
                raise UserError(f"{where} is the empty range {start}..{stop} of class {label}: {RESTORE_RUN_YAML}")
            first = end.get(label, 0)
            if start < first:
                raise UserError(f"{where} starts class {label} at index {start}, but earlier segments already plan "
                                f"indices up to {first - 1}: {_indices(start, min(stop, first) - 1)} would be "
                                f"generated twice (duplicate keys): {RESTORE_RUN_YAML}")
            if start > first:
                raise UserError(f"{where} starts class {label} at index {start}, but earlier segments end at "
                                f"{first}: {_indices(first, start - 1)} would never be generated: {RESTORE_RUN_YAML}")
            labels.add(label)
            end[label] = stop
            if seg.kind in PER_CLASS_KINDS:
                per_class[label] += stop - start
        if i == 0 and skips_classes:
            skipped = set(range(num_classes)) - labels
        elif i == 0 and len(labels) != num_classes:
            missing = min(set(range(num_classes)) - labels)
            raise UserError(f"{source}: key '{name}.ranges' has no range of class {missing}, but the 'initial' "
                            f"segment plans every class (num_classes: {num_classes}): {RESTORE_RUN_YAML}")
        for k, (label, _strategy) in enumerate(seg.strategies):
            if label not in labels:
                raise UserError(f"{source}: key '{name}.strategies[{k}]' names class {label}, which has no range in "
                                f"this segment: {RESTORE_RUN_YAML}")
    short = next(((label, n) for label, n in per_class.items() if n != ipc and not (n == 0 and label in skipped)),
                 None)
    if short is not None:
        label, n = short
        raise UserError(f"{source}: key 'config.images_per_class' is {ipc}, but the 'initial' and 'extend' segments "
                        f"plan {n} images of class {label}: put back {n} (images per class are raised with "
                        f"'generate --images-per-class', which adds a segment), or {RESTORE_RUN_YAML}")
    planned = sum(s.num_items for s in segments)
    if record.num_images != planned:
        raise UserError(f"{source}: key 'num_images' is {record.num_images}, but the segments plan {planned} images: "
                        f"put back {planned}")


def new_run_id() -> str:
    """A fresh :attr:`RunRecord.run_id` (random: two run folders made with the same config still differ)."""
    return uuid.uuid4().hex


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the output."""
    out = {}
    for name in RECORDED_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def read_run_record(paths: RunPaths) -> RunRecord:
    """Read ``RUN/run.yaml`` as a validated :class:`RunRecord`."""
    return RunRecord.read(paths.run_yaml)


def read_run_yaml(paths: RunPaths) -> dict[str, Any]:
    """``RUN/run.yaml`` as a plain mapping, validated as a :class:`RunRecord` (prefer :func:`read_run_record`)."""
    return read_run_record(paths).to_dict()


def write_run_yaml(paths: RunPaths, record: RunRecord) -> None:
    """Write ``RUN/run.yaml`` atomically."""
    record.write(paths.run_yaml)


def read_class_records(paths: RunPaths) -> list[dict[str, Any]]:
    """The run's class set as plain dicts, in label order (see classes.read_classes_json for ClassInfo)."""
    return read_json(paths.classes_json)
