"""The release's description: ``REL/_info.json`` (timm's split format plus what made the release), and the
marker file of an image-folder export.

Every reader of ``_info.json`` (``publish``, the training loader, ``evaluate``, ``release`` itself) gets it
through :meth:`ReleaseInfo.read` / :func:`read_release_info`, so one set of checks guards them all: the
keys are present, every split's counts are integers that add up, and every file name is a plain relative
path (:func:`check_relative_name`: no ``..``, absolute path, backslash or NUL byte) that stays inside the release
folder once symlinks are followed (:func:`inside_release`, for a local release).

**Which run made a release.** ``_info.json`` (and an image-folder export's marker) records the run it was
made from: the run's ``config_hash`` and its ``run_id`` (``RUN/run.yaml``: a random id given to the run
folder when its run.yaml is first written, kept through extensions and top-ups). ``release`` (and so
``run``) may replace an existing release folder only when both equal the run's own
(:meth:`ReleaseInfo.made_from`) and the folder holds nothing but the files that release wrote
(:func:`release_file_names`); the new release is built in ``REL.partial`` and swapped in
(:func:`imagenet_plus.io.atomic.replace_folder`). A folder made from another run, by an older version (no
``run_id``), or holding other files, is refused. See :mod:`imagenet_plus.release.ownership`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagenet_plus.contract.names import CARD_NAME, INFO_NAME
from imagenet_plus.contract.records import JsonRecord, dataclass_from_dict
from imagenet_plus.errors import UserError
from imagenet_plus.io.storage import is_remote, location, remote_errors

#: The marker of an image-folder export (``DIR/.imagenet-plus-release.json``): which release it holds.
IMAGEFOLDER_MARKER = ".imagenet-plus-release.json"


@dataclass(frozen=True)
class SplitInfo:
    """One split of ``_info.json`` (timm's ``reader_wds`` format)."""

    name: str
    num_samples: int
    filenames: list[str]
    shard_lengths: list[int]

    @classmethod
    def from_dict(cls, data: Any, source: str) -> SplitInfo:
        """Build and check one split: plain relative file names, one length per file, integer counts that add up.

        Raises:
            UserError: naming ``source`` and the first problem.
        """
        split = dataclass_from_dict(cls, data, source)
        if not isinstance(split.filenames, list) or not isinstance(split.shard_lengths, list):
            raise UserError(f"{source}: 'filenames' and 'shard_lengths' must be lists")
        for fn in split.filenames:  # first: a name outside the release is refused whatever else is wrong
            check_relative_name(fn, source)
        if len(split.filenames) != len(split.shard_lengths):
            raise UserError(f"{source}: {len(split.filenames)} filenames but {len(split.shard_lengths)} shard_lengths")
        if not all(_is_int(x) for x in (split.num_samples, *split.shard_lengths)):
            raise UserError(f"{source} has a non-integer num_samples or shard_lengths")
        if sum(split.shard_lengths) != split.num_samples:
            raise UserError(f"{source} is inconsistent ({len(split.shard_lengths)} shard_lengths summing to "
                            f"{sum(split.shard_lengths)}, num_samples {split.num_samples})")
        return split


@dataclass(frozen=True)
class ReleaseInfo(JsonRecord):
    """``REL/_info.json``: the release's splits in timm's format plus what made it.

    Attributes:
        fingerprint: the release stage's fingerprint (``RUN/state/release.json``) of the run state it was built
            from: the same release settings and inputs give the same fingerprint.
        config_hash: the ``config_hash`` of the run it was made from.
        run_id: the ``run_id`` of the run it was made from (None: made before releases recorded it).
    """

    name: str
    fingerprint: str
    created: str
    image_ext: str
    num_classes: int
    classes: list[dict[str, Any]]
    config_hash: str | None
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    run_id: str | None = None

    def made_from(self, run_id: str | None, config_hash: str | None) -> bool:
        """Whether this release records the run ``run_id`` with ``config_hash`` (never true without a run id)."""
        return made_from_run(self.run_id, self.config_hash, run_id, config_hash)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path | str) -> ReleaseInfo:
        return dataclass_from_dict(cls, {**data, "splits": parse_splits(data, source)}, source)


def parse_splits(data: Any, source: Path | str) -> dict[str, SplitInfo]:
    """The checked splits of any timm-format ``_info.json`` (a release of this project, or another WebDataset
    export such as timm's own): split name → :class:`SplitInfo`.

    Raises:
        UserError: not a JSON object, no splits, or a split that fails :meth:`SplitInfo.from_dict`.
    """
    if not isinstance(data, Mapping):
        raise UserError(f"{source} is not a JSON object")
    splits = data.get("splits")
    if not isinstance(splits, Mapping):
        raise UserError(f"{source}: 'splits' must be an object of split name → split info")
    if not splits:
        raise UserError(f"{source} has no 'splits'")
    return {str(name): SplitInfo.from_dict(s, f"{source} split {name!r}") for name, s in splits.items()}


def made_from_run(recorded_id: str | None, recorded_hash: str | None, run_id: str | None,
                  config_hash: str | None) -> bool:
    """The ownership rule of the module docstring: both the run id and the config hash recorded equal the run's."""
    return recorded_id is not None and recorded_id == run_id and recorded_hash == config_hash


def release_file_names(info: ReleaseInfo) -> set[str]:
    """Every file a release writes, as paths relative to its folder: the card, ``_info.json`` and the shards
    (``_info.json`` lists them as ``data/{split}-NNNNN.tar``)."""
    return {CARD_NAME, INFO_NAME, *(fn for split in info.splits.values() for fn in split.filenames)}


def read_release_info(folder: str | Path) -> ReleaseInfo:
    """``folder/_info.json`` as a checked :class:`ReleaseInfo`.

    Raises:
        UserError: the folder has no ``_info.json`` (it is not a release), or it does not pass the checks.
    """
    path = location(folder) / INFO_NAME
    with remote_errors(path):
        found = path.is_file()
    if not found:
        raise UserError(f"{path} not found: {folder} is not a release folder (run 'imagenet-plus release')")
    inside_release(folder, INFO_NAME, str(folder))
    info = ReleaseInfo.read(path)
    for name, split in info.splits.items():
        for fn in split.filenames:
            inside_release(folder, fn, f"{path} split {name!r}")
    return info


def check_relative_name(name: Any, where: str) -> str:
    """A file name read from a release or a Hub repo: relative, no ``..``, no backslash, no NUL byte, else an error."""
    text = str(name)
    parts = text.replace("\\", "/").split("/")
    if (not isinstance(name, str) or not text or text.startswith("/") or "\\" in text or "\0" in text
            or any(p in ("", ".", "..") for p in parts) or ":" in parts[0]):
        raise UserError(f"{where}: file name {text!r} is not a plain relative path inside the release")
    return text


def inside_release(folder: str | Path, name: str, where: str) -> Path:
    """``folder / name``: a plain relative name (:func:`check_relative_name`) whose real path, symlinks followed,
    lies inside the real path of ``folder``.

    A release holds its files itself: a ``data/`` folder or a shard that is a symlink out of the release is
    refused like ``../`` (the loader would read, and ``publish`` would upload, whatever it points to). A release
    folder that is itself a symlink (kept on another disk) is fine: both sides are resolved.

    Raises:
        UserError: one line naming ``where``, the name and where it leads.
    """
    check_relative_name(name, where)
    if is_remote(folder):  # object stores have no symlinks: a plain relative name stays inside
        return location(folder) / name
    path = Path(folder) / name
    root, real = Path(folder).resolve(), path.resolve()
    if root not in real.parents:
        raise UserError(f"{where}: file name {name!r} leads out of the release through a symlink (to {real}); "
                        "a release must hold its files itself")
    return path


@dataclass(frozen=True)
class ImageFolderMarker(JsonRecord):
    """``DIR/.imagenet-plus-release.json``: the fingerprint of the release an image-folder export holds, and the
    run it was made from (``config_hash``, ``run_id``; None in markers written before they were recorded)."""

    fingerprint: str
    config_hash: str | None = None
    run_id: str | None = None

    def made_from(self, run_id: str | None, config_hash: str | None) -> bool:
        """Whether this export records the run ``run_id`` with ``config_hash`` (see :func:`made_from_run`)."""
        return made_from_run(self.run_id, self.config_hash, run_id, config_hash)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path | str) -> ImageFolderMarker:
        return dataclass_from_dict(cls, data, source)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: The member of a release sample's json that holds its scores.
SCORES_MEMBER = "scores"
