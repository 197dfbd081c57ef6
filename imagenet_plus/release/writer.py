"""Writing a release: the shards, ``_info.json`` and the card into ``REL``, and the image-folder export.

Both folders are built in ``NAME.partial`` and swapped in only when complete
(:func:`~imagenet_plus.io.atomic.building_folder`), so a failure never leaves half a release under the final
name. A target folder is written only when it is absent, empty, already holds this very release (then it is
left alone) or holds this run's own earlier release (:mod:`~imagenet_plus.release.ownership`: then it is
replaced); one holding another release or other files is refused (:func:`check_target`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from imagenet_plus.contract import (
    IMAGEFOLDER_MARKER,
    INFO_NAME,
    SPLITS,
    ImageFolderMarker,
    ReleaseInfo,
    ReleasePaths,
    RunPaths,
    RunRecord,
    SplitInfo,
    read_run_yaml,
    release_shard_name,
)
from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import building_folder
from imagenet_plus.io.storage import is_remote
from imagenet_plus.io.tar import PartialTarWriter
from imagenet_plus.pipeline.progress import progress_bar
from imagenet_plus.release.card import CardInputs, card_text, validate_card
from imagenet_plus.release.config import ReleaseConfig
from imagenet_plus.release.plan import num_shards_for, split_evenly
from imagenet_plus.release.sources import ReleaseSources, TarReader

#: File extension of the image-folder export for each image member (ImageNet uses ``.JPEG``).
IMAGEFOLDER_EXT = {"jpg": ".JPEG", "png": ".png", "webp": ".webp"}
#: Split name in the shards/_info.json → folder name in the image-folder export (ImageNet's names).
IMAGEFOLDER_SPLITS = {"train": "train", "validation": "val"}


# ------------------------------------------------------------------------------------------------------------
# target folders


def release_fingerprint_of(folder: Path) -> str | None:
    """The fingerprint recorded in a release folder's ``_info.json`` (None: absent or unreadable)."""
    return _recorded(lambda: ReleaseInfo.read(folder / INFO_NAME).fingerprint)


def imagefolder_fingerprint_of(folder: Path) -> str | None:
    """The fingerprint recorded in an image-folder export's marker (None: absent or unreadable)."""
    return _recorded(lambda: ImageFolderMarker.read(folder / IMAGEFOLDER_MARKER).fingerprint)


def _recorded(read: Callable[[], str]) -> str | None:
    try:
        return read()
    except UserError:  # absent or damaged: the folder holds no release of ours
        return None


def check_target(folder: Path, recorded: Callable[[Path], str | None], fingerprint: str, what: str,
                 replaceable: Callable[[Path], bool] | None = None) -> bool:
    """True when ``folder`` already holds this build; False when it is absent or empty, or holds an earlier build
    that ``replaceable`` says may be replaced (:mod:`~imagenet_plus.release.ownership`); else UserError.

    Args:
        folder: the target folder.
        recorded: reads the fingerprint a folder records (:func:`release_fingerprint_of`, …).
        fingerprint: the fingerprint of the build.
        what: the option that named the folder (for the message).
        replaceable: whether a folder holding another fingerprint is this run's own, to be rebuilt.
    """
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder: choose another {what} folder")
    if not any(folder.iterdir()):
        return False
    found = recorded(folder)
    if found == fingerprint:
        return True
    if found is None:
        raise UserError(f"{folder} is not empty and holds no imagenet-plus release: choose another {what} folder")
    if replaceable is not None and replaceable(folder):
        return False
    raise UserError(
        f"{folder} holds a different release, not one made from this run (fingerprint {found}, this one "
        f"{fingerprint}): choose another {what} folder or delete it"
    )


def check_output_path(folder: Path, what: str) -> Path:
    """``folder`` when it names a folder of its own; refuses ``.``, ``..``, ``/``, the current folder and the folders
    above it (a build swaps its folder in by renames: that would move the shell's current folder away).

    Args:
        folder: the target folder as given.
        what: the option that named it (for the message).
    """
    if is_remote(folder):
        return folder
    if folder.name in ("", ".", ".."):
        raise UserError(f"{what} {folder} does not name a folder of its own: give it a name "
                        f"(e.g. {what} {folder / 'release'})")
    resolved, cwd = folder.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UserError(f"{what} {folder} is the current folder or holds it: give the build a folder of its own "
                        f"(e.g. {what} {folder / 'release'})")
    return folder


def check_apart(out: Path, imagefolder: Path) -> None:
    """Refuse an image folder that is the release folder, or inside it, or holds it."""
    if is_remote(out) or is_remote(imagefolder):
        if str(out).rstrip("/") == str(imagefolder).rstrip("/"):
            raise UserError(f"--imagefolder {imagefolder} overlaps --out {out}: give them separate folders")
        return
    a, b = out.resolve(), imagefolder.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise UserError(f"--imagefolder {imagefolder} overlaps --out {out}: give them separate folders")


# ------------------------------------------------------------------------------------------------------------
# the release


@dataclass(frozen=True)
class WrittenSplits:
    """What :func:`write_shards` wrote: the splits in ``_info.json``'s form and their sizes in bytes."""

    info: dict[str, SplitInfo]
    nbytes: dict[str, int]


def write_shards(tmp: Path, cfg: ReleaseConfig, sources: ReleaseSources) -> WrittenSplits:
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


def write_release(paths: RunPaths, out: Path, cfg: ReleaseConfig, fingerprint: str, sources: ReleaseSources,
                  owned: Callable[[str], bool] | None = None) -> ReleaseInfo:
    """Shards, then ``_info.json``, then the card, all in ``out.partial``; swapped in as ``out`` when complete.

    ``owned`` accepts the files of an earlier release in ``out`` that the new one replaces (None: ``out`` must be
    absent or empty)."""
    with building_folder(out, owned) as tmp:
        written = write_shards(tmp, cfg, sources)
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
            run_id=run_yaml.get("run_id"),
        )
        rel = ReleasePaths(tmp)
        info.write(rel.info_json)
        card = card_text(CardInputs.gather(paths, run_yaml, info, written.nbytes, sources, cfg.small_classes,
                                           cfg.license))
        validate_card(card, str(ReleasePaths(out).card))
        rel.card.write_text(card, encoding="utf-8")
    return info


# ------------------------------------------------------------------------------------------------------------
# the image-folder export


def write_imagefolder(folder: Path, fingerprint: str, sources: ReleaseSources, run: RunRecord | None = None,
                      owned: Callable[[str], bool] | None = None) -> None:
    """``folder/{train,val}/{class_id}/{key}.JPEG`` (torchvision's ImageFolder layout) and the marker, swapped in
    (``owned`` accepts the files of an earlier export it replaces)."""
    with building_folder(folder, owned) as tmp:
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
        ImageFolderMarker(fingerprint=fingerprint, config_hash=run.config_hash if run else None,
                          run_id=run.run_id if run else None).write(tmp / IMAGEFOLDER_MARKER)
