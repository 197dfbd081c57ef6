"""Which existing folder ``release`` (and so ``imagenet-plus run``) may replace with a new release of the same run.

A release folder (or an image-folder export) that holds another fingerprint is the release of other inputs. It
is replaced only when it is this run's own earlier release — the improve loop (``generate --top-up``, then
``run`` or ``score``/``select``/``release`` again) rebuilds the release of the same run — by the rule of
:mod:`imagenet_plus.contract.release`: its record names this run (``run_id`` and ``config_hash`` of
``RUN/run.yaml``) and the folder holds no file that release did not write. Anything else stays refused: a
release of another run folder (even one made with the same config), one made before releases recorded their
run, a folder that is not a release. The new release is built in ``NAME.partial`` and swapped in by
:func:`imagenet_plus.io.atomic.replace_folder`, so the old one stays whole until the new one is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from imagenet_plus.contract import (
    IMAGEFOLDER_MARKER,
    KEY_PATTERN,
    ImageFolderMarker,
    ReleaseInfo,
    RunRecord,
    release_file_names,
)
from imagenet_plus.contract.paths import ReleasePaths
from imagenet_plus.errors import UserError
from imagenet_plus.io.storage import files_under as _files_under
from imagenet_plus.release.writer import IMAGEFOLDER_EXT, IMAGEFOLDER_SPLITS


def _refuse_foreign(folder: Path, foreign: list[str], what: str) -> None:
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise UserError(f"{folder} holds this run's earlier release but also {foreign[0]!r}{more}, which the release "
                        f"did not write: move it out of the folder or choose another {what} folder")


def release_owned(info: ReleaseInfo) -> Callable[[str], bool]:
    """Accepts the relative paths (files and the folders above them) of the release ``info`` describes: what
    :func:`~imagenet_plus.io.atomic.replace_folder` may remove when a new release of the same run replaces it."""
    written = release_file_names(info)
    folders = {"/".join(name.split("/")[:i]) for name in written for i in range(1, name.count("/") + 1)}
    return lambda rel: rel in written or rel in folders


def imagefolder_owned(rel: str) -> bool:
    """Whether the relative path ``rel`` is one an image-folder export writes: the marker, the split and class
    folders, and ``{train,val}/{class_id}/{key}{ext}`` files."""
    parts = rel.split("/")
    if parts == [IMAGEFOLDER_MARKER]:
        return True
    if not 1 <= len(parts) <= 3 or parts[0] not in IMAGEFOLDER_SPLITS.values():
        return False
    if len(parts) >= 2 and not KEY_PATTERN.match(parts[1]):
        return False
    if len(parts) < 3:
        return True
    stem, dot, ext = parts[2].rpartition(".")
    return bool(dot) and f".{ext}" in IMAGEFOLDER_EXT.values() and bool(KEY_PATTERN.match(stem))


def replaceable_release(folder: Path, run: RunRecord) -> bool:
    """Whether the release folder ``folder`` is ``run``'s own earlier release, to be replaced by a new one.

    Raises:
        UserError: it is ``run``'s release but also holds files the release did not write (named).
    """
    try:
        info = ReleaseInfo.read(ReleasePaths(folder).info_json)
    except UserError:
        return False
    if not info.made_from(run.run_id, run.config_hash):
        return False
    written = release_file_names(info)
    _refuse_foreign(folder, [f for f in _files_under(folder) if f not in written], "--out")
    return True


def replaceable_imagefolder(folder: Path, run: RunRecord) -> bool:
    """Whether the image-folder export ``folder`` is ``run``'s own earlier export, to be replaced by a new one.

    Its files must be the marker and ``{train,val}/{class_id}/{key}{ext}`` files, as the export writes them.

    Raises:
        UserError: it is ``run``'s export but also holds other files (named).
    """
    try:
        marker = ImageFolderMarker.read(folder / IMAGEFOLDER_MARKER)
    except UserError:
        return False
    if not marker.made_from(run.run_id, run.config_hash):
        return False
    _refuse_foreign(folder, [f for f in _files_under(folder)
                                   if f != IMAGEFOLDER_MARKER and (f.count("/") != 2 or not imagefolder_owned(f))],
                    "--imagefolder")
    return True
