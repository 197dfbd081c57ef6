"""Validating a release folder completely before anything is sent, in named steps.

``_info.json`` reads as :class:`~imagenet_plus.contract.ReleaseInfo` (its checks: integer counts that add up,
file names relative, no ``..``, no absolute path, no backslash, no NUL byte, no symlink out of the folder), no file
to upload is a symlink out of the folder, the card's YAML parses as datasets reads it and its ``data_files``
patterns match exactly the shards ``_info.json`` lists, no stray file is present, every tar is read to its end,
every sample has the same members, the shard counts equal ``_info.json`` and the card, every label is within the
class list, keys are unique.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.contract import (
    CARD_NAME,
    INFO_NAME,
    PARTIAL_SUFFIX,
    REAL_IMAGE_FIELDS,
    ReleaseInfo,
    read_release_info,
)
from imagenet_plus.contract.release import inside_release
from imagenet_plus.errors import UserError
from imagenet_plus.io.tar import iter_shard
from imagenet_plus.pipeline.progress import progress_bar
from imagenet_plus.release.card import validate_card


@dataclass(frozen=True)
class ReleaseFile:
    """One file of a release, as it would be uploaded."""

    path: str
    size: int


def _check_folder(rel: Path) -> None:
    if not rel.is_dir():
        raise UserError(f"release folder not found: {rel}")


def _read_card(rel: Path) -> tuple[dict[str, Any], Any]:
    """The card's YAML (validated as the loaders read it) and its ``datasets.Features``."""
    import datasets

    readme = rel / CARD_NAME
    if not readme.is_file():
        raise UserError(f"{readme} not found: the dataset card is missing")
    meta = validate_card(readme.read_text(encoding="utf-8"), str(readme))
    features = datasets.DatasetInfo._from_yaml_dict(dict(meta["dataset_info"])).features
    if not isinstance(features["cls"], datasets.ClassLabel):
        raise UserError(f"{readme}: 'cls' is not declared as a class_label")
    _check_license(meta, readme)
    return meta, features


def _check_license(meta: Mapping[str, Any], readme: Path) -> None:
    """A dataset does not go out under an unknown licence: ``license: other`` needs a ``license_name``.

    The release writes ``other`` without a name only when the generating model's licence is unknown to
    imagenet-plus and the user named none (``release --license``).
    """
    if meta.get("license") == "other" and not meta.get("license_name"):
        raise UserError(f"{readme}: the generating model's licence is unknown (license: other, no license_name); "
                        "re-run 'imagenet-plus release' with --license ID (e.g. apache-2.0) or "
                        "--license other:NAME:LINK")


#: Hub licence ids that allow commercial use and redistribution on any terms close to the author's: a release made
#: from real images under one of them would promise more than the real images' own licence allows.
PERMISSIVE_LICENSES = frozenset({
    "apache-2.0", "mit", "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "isc", "zlib", "unlicense",
    "wtfpl", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "odc-by",
    "odbl", "pddl", "mpl-2.0", "artistic-2.0", "ecl-2.0", "afl-3.0", "openrail", "openrail++", "bigscience-openrail-m",
    "creativeml-openrail-m", "cdla-permissive-1.0", "cdla-permissive-2.0", "cdla-sharing-1.0", "gpl-3.0", "lgpl-3.0",
})


def check_real_images_license(rel: str | Path, allow_permissive: bool) -> None:
    """Refuse to publish a release made from real images under a permissive licence, unless the user allows it.

    A release is made from real images when its samples carry the contract's real-image fields
    (:data:`~imagenet_plus.contract.REAL_IMAGE_FIELDS`, declared in the card's features).

    Raises:
        UserError: naming the licence and the two ways out (a licence that fits the real images, or the flag).
    """
    readme = Path(rel) / CARD_NAME
    meta, features = _read_card(Path(rel))
    real = isinstance(features.get("json"), dict) and REAL_IMAGE_FIELDS[0] in features["json"]
    license_id = str(meta.get("license") or "")
    if real and license_id in PERMISSIVE_LICENSES and not allow_permissive:
        raise UserError(f"{readme}: this release was made from real images, whose licence binds it (ImageNet's: "
                        f"non-commercial research), but its card says license: {license_id}; re-run 'imagenet-plus "
                        "release' with --license ID (e.g. other:imagenet-terms:https://image-net.org/download.php "
                        "or cc-by-nc-4.0), or pass --allow-permissive-license if the real images allow it")


def _list_files(rel: Path, info: ReleaseInfo) -> list[str]:
    """The release's files (relative posix paths, sorted); refuses leftovers, root scripts, unlisted tars."""
    names = sorted(p.relative_to(rel).as_posix() for p in rel.rglob("*")
                   if p.is_file() and ".cache" not in p.relative_to(rel).parts)
    for name in names:
        inside_release(rel, name, str(rel))  # a symlink out of the release is not uploaded
        if name.endswith(PARTIAL_SUFFIX):
            raise UserError(f"{rel / name} is a leftover of an interrupted write: rebuild the release")
        if "/" not in name and name.endswith(".py"):
            raise UserError(f"{rel / name}: a root .py file would make the Hub treat the repo as a dataset script "
                            "(datasets >= 4 refuses scripts): remove it")
    listed = {f for s in info.splits.values() for f in s.filenames}
    unlisted = [n for n in names if n.endswith(".tar") and n not in listed]
    if unlisted:
        raise UserError(f"{rel / unlisted[0]} is not listed in {rel / INFO_NAME}")
    return names


def _check_card_matches_info(rel: Path, meta: Mapping[str, Any], info: ReleaseInfo, names: list[str]) -> None:
    """The card's split sizes equal ``_info.json``'s; its ``data_files`` patterns match exactly the listed shards."""
    readme = rel / CARD_NAME
    card_splits = {s["name"]: int(s["num_examples"]) for s in meta["dataset_info"].get("splits", [])}
    for split, s in info.splits.items():
        if card_splits and card_splits.get(split) != s.num_samples:
            raise UserError(f"{readme} declares {card_splits.get(split)} {split} samples but "
                            f"{rel / INFO_NAME} says {s.num_samples}")
    for config in meta.get("configs") or []:
        data_files = config.get("data_files") if isinstance(config, Mapping) else None
        if not isinstance(data_files, list):
            continue
        for entry in data_files:
            if not isinstance(entry, Mapping) or entry.get("split") not in info.splits:
                continue
            patterns = entry.get("path")
            patterns = [patterns] if isinstance(patterns, str) else list(patterns or [])
            matched = {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
            listed = set(info.splits[entry["split"]].filenames)
            if matched != listed:
                extra = sorted(matched - listed) or sorted(listed - matched)
                raise UserError(f"{readme}: split {entry['split']!r} pattern(s) {patterns} match "
                                f"{len(matched)} file(s) but {rel / INFO_NAME} lists {len(listed)} (e.g. {extra[0]})")


def _check_shards(rel: Path, info: ReleaseInfo, features: Any) -> None:
    """Read every shard to its end: counts, members, labels, unique keys."""
    readme = rel / CARD_NAME
    num_classes = features["cls"].num_classes
    declared = set(features)
    total = sum(s.num_samples for s in info.splits.values())
    bar = progress_bar(total, "validate", unit="sample")
    members_ref: set[str] | None = None
    keys: set[str] = set()
    try:
        for s in info.splits.values():
            for fname, expected in zip(s.filenames, s.shard_lengths, strict=True):
                shard = rel / fname
                if not shard.is_file():
                    raise UserError(f"shard {shard} listed in {rel / INFO_NAME} is missing")
                count = 0
                for sample in iter_shard(shard):
                    key = sample["__key__"]
                    members = set(sample) - {"__key__"}
                    if members_ref is None:
                        members_ref = members
                        undeclared = members - declared
                        if undeclared:
                            raise UserError(f"{readme} does not declare member(s) {sorted(undeclared)} of {shard}")
                    elif members != members_ref:
                        raise UserError(f"sample {key} in {shard} has members {sorted(members)}, "
                                        f"others have {sorted(members_ref)}")
                    if key in keys:
                        raise UserError(f"key {key} appears twice (again in {shard})")
                    keys.add(key)
                    try:
                        label = int(sample["cls"])
                    except (KeyError, ValueError):
                        raise UserError(f"sample {key} in {shard} has no integer 'cls'") from None
                    if not 0 <= label < num_classes:
                        raise UserError(f"sample {key} in {shard} has label {label}, outside 0..{num_classes - 1}")
                    count += 1
                    bar.update(1)
                if count != expected:
                    raise UserError(f"shard {shard} holds {count} samples but {rel / INFO_NAME} says {expected}")
    finally:
        bar.close()


def validate(rel: str | Path) -> tuple[ReleaseInfo, list[ReleaseFile]]:
    """:func:`validate_release`, also returning the release's ``_info.json``."""
    rel = Path(rel)
    _check_folder(rel)
    info = read_release_info(rel)
    meta, features = _read_card(rel)
    names = _list_files(rel, info)
    _check_card_matches_info(rel, meta, info, names)
    _check_shards(rel, info, features)
    return info, [ReleaseFile(n, (rel / n).stat().st_size) for n in names]


def validate_release(rel: str | Path) -> list[ReleaseFile]:
    """Check a release folder completely (see the module docstring) and list its files.

    Args:
        rel: the release folder.

    Returns:
        The files that would be uploaded (path relative to ``rel``, size), sorted.

    Raises:
        UserError: naming the first problem (file, shard, sample, key).
    """
    return validate(rel)[1]
