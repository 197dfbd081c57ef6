"""Publish: validate a release folder ``REL`` completely, then make a Hub dataset repo equal to it.

Input: ``REL`` (from ``release``). Output: the Hub repo ``--repo-id USER/NAME`` (branch ``--revision``,
optionally tagged ``--tag v1.0``).

Nothing is sent before the whole release checks out (:func:`validate_release`, in named steps): ``_info.json``
reads as :class:`~imagenet_plus.contract.ReleaseInfo` (file names relative, no ``..``), the card's YAML parses
as datasets reads it and its ``data_files`` patterns match exactly the shards ``_info.json`` lists, no stray
file is present, every tar is read to its end, every sample has the same members, the shard counts equal
``_info.json`` and the card, every label is within the class list, keys are unique.

What is sent (:func:`plan_publish` then :func:`run_publish`):

- the repo's current files are listed and compared by content hash (sha256 for LFS files, the git blob id
  otherwise) with the release: files that are new or changed are uploaded, files the release lacks are
  deleted (``.gitattributes`` is kept), unchanged files are left alone. Publishing the same release twice
  therefore sends nothing and makes no commit.
- the data shards' bytes go up first (``HfApi.preupload_lfs_files``); then **one commit** adds the shards,
  the card and ``_info.json`` and deletes the stale files. A Hub commit is atomic: before it the repo is the
  previous release, after it the new one, so the repo never has a card or ``_info.json`` that declares
  shards it lacks, and no stale shard is left for the card's ``data/{split}-*.tar`` patterns to pick up.
  An interrupted publish leaves the previous release in place; running it again sends only the shards the
  Hub does not have yet (the LFS batch endpoint reports the others as present) and then commits.
- more than :data:`MAX_COMMIT_FILES` changed files (the Hub's recommended commit size) go in several
  commits: first the card and ``_info.json`` are removed (a repo without them declares nothing), then the
  data files and deletions in commits of at most that many files, and the card and ``_info.json`` last.
  While it runs the repo has no card; it never has one that declares a missing or leaves a stale shard.
- the card that goes up is the release's card with ``USER/NAME`` in its examples replaced by the repo id,
  and a "Version" section stating the version (the ``--tag``), the run's config hash and the release
  fingerprint, and the imagenet-plus version that published it (:func:`published_card`).
- ``--tag v1.0`` tags the resulting commit (``HfApi.create_tag``): consumers pin
  ``load_dataset("USER/NAME", revision="v1.0")``. A tag is never moved: a tag that exists on another commit
  is refused; on the same commit it is left as it is.

``--dry-run`` validates, lists the repo (when the Hub can be reached) and prints what would be added,
changed and deleted, sending nothing.

The endpoint is ``$HF_ENDPOINT`` read when publishing (default https://huggingface.co) and passed to
``HfApi`` explicitly; the token comes only from ``$HF_TOKEN`` or the huggingface login
(``huggingface_hub.get_token()``). The token is never printed or written: error messages are scrubbed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagenet_plus.contract import CARD_NAME, INFO_NAME, PARTIAL_SUFFIX, ReleaseInfo, check_relative_name
from imagenet_plus.errors import UserError
from imagenet_plus.io.tar import iter_shard
from imagenet_plus.pipeline.progress import progress_bar
from imagenet_plus.release.card import validate_card

DEFAULT_ENDPOINT = "https://huggingface.co"
#: The Hub's repo-name rule: letters, digits, ``-``, ``_``, ``.``; no ``--``/``..``; not starting/ending in ``-``/``.``.
_NAME = r"(?!.*(--|\.\.))[A-Za-z0-9](?:[\w\-.]{0,94}[A-Za-z0-9_])?"
REPO_ID_PATTERN = re.compile(rf"^{_NAME}/{_NAME}$")
#: A git ref name we accept for ``--revision`` and ``--tag`` (no ``..``, no leading ``-``/``.``/``/``).
REF_PATTERN = re.compile(r"^(?!.*\.\.)(?![-./])[\w\-./]{1,200}(?<![./])$")
#: Repo files a publish never deletes.
KEEP_IN_REPO = (".gitattributes",)
#: Placeholder of the repo id in the card's loading examples, replaced when publishing.
REPO_PLACEHOLDER = "USER/NAME"
#: Files changed in one commit at most (the Hub's recommended commit size); larger publishes use several commits.
MAX_COMMIT_FILES = 100
#: Heading of the section :func:`published_card` adds.
VERSION_HEADING = "## Version"


@dataclass(frozen=True)
class PublishConfig:
    """Settings of ``imagenet-plus publish`` (fields are its flags).

    Attributes:
        repo_id: the dataset repo, ``USER/NAME`` or ``ORG/NAME``.
        private: create the repo as private (an existing repo keeps its visibility).
        revision: branch to push to (created from main if missing); None for main.
        tag: tag the published commit with this name (e.g. ``v1.0``); None for no tag.
        dry_run: validate and list what would be added, changed and deleted, send nothing.
    """

    repo_id: str = ""
    private: bool = False
    revision: str | None = None
    tag: str | None = None
    dry_run: bool = False

    def __post_init__(self) -> None:
        if not REPO_ID_PATTERN.match(self.repo_id or ""):
            raise UserError(
                f"malformed repo id {self.repo_id!r}: expected USER/NAME (letters, digits, '-', '_', '.'; "
                "no '--' or '..'; at most 96 characters each)"
            )
        if self.revision is not None and not REF_PATTERN.match(self.revision):
            raise UserError(f"malformed --revision {self.revision!r}: expected a branch name")
        if self.tag is not None and not REF_PATTERN.match(self.tag):
            raise UserError(f"malformed --tag {self.tag!r}: expected a tag name such as v1.0")


@dataclass(frozen=True)
class ReleaseFile:
    """One file of a release, as it would be uploaded."""

    path: str
    size: int


@dataclass(frozen=True)
class PublishPlan:
    """What a publish changes in the repo (paths relative to the repo root, sorted).

    Attributes:
        add: files the repo lacks.
        change: files whose content differs.
        delete: repo files the release lacks (never ``.gitattributes``).
        unchanged: files already there with the same content.
        sizes: bytes of every release file that would go up.
        repo_listed: False when the repo could not be listed (dry run offline): everything counts as added.
    """

    add: list[str]
    change: list[str]
    delete: list[str]
    unchanged: list[str]
    sizes: dict[str, int] = field(default_factory=dict)
    repo_listed: bool = True

    @property
    def empty(self) -> bool:
        """Nothing to add, change or delete: the repo already equals the release."""
        return not (self.add or self.change or self.delete)


# ------------------------------------------------------------------------------------------------------------
# validation, in named steps


def _check_folder(rel: Path) -> None:
    if not rel.is_dir():
        raise UserError(f"release folder not found: {rel}")


def _read_info(rel: Path) -> ReleaseInfo:
    """``_info.json`` as :class:`ReleaseInfo` (file names checked), with consistent, non-empty splits."""
    p = rel / INFO_NAME
    if not p.is_file():
        raise UserError(f"{p} not found: {rel} is not a release folder (run 'imagenet-plus release')")
    info = ReleaseInfo.read(p)
    if not info.splits:
        raise UserError(f"{p} has no 'splits'")
    for name, s in info.splits.items():
        try:
            lengths, n = [int(x) for x in s.shard_lengths], int(s.num_samples)
        except (TypeError, ValueError):
            raise UserError(f"{p}: split '{name}' has a non-integer num_samples or shard_lengths") from None
        if sum(lengths) != n:
            raise UserError(f"{p}: split '{name}' is inconsistent ({len(lengths)} shard_lengths summing to "
                            f"{sum(lengths)}, num_samples {n})")
    return info


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


def _list_files(rel: Path, info: ReleaseInfo) -> list[str]:
    """The release's files (relative posix paths, sorted); refuses leftovers, root scripts, unlisted tars."""
    names = sorted(p.relative_to(rel).as_posix() for p in rel.rglob("*")
                   if p.is_file() and ".cache" not in p.relative_to(rel).parts)
    for name in names:
        check_relative_name(name, str(rel))
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
        if card_splits and card_splits.get(split) != int(s.num_samples):
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
    total = sum(int(s.num_samples) for s in info.splits.values())
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
                if count != int(expected):
                    raise UserError(f"shard {shard} holds {count} samples but {rel / INFO_NAME} says {expected}")
    finally:
        bar.close()


def validate_release(rel: str | Path) -> list[ReleaseFile]:
    """Check a release folder completely (see the module docstring) and list its files.

    Args:
        rel: the release folder.

    Returns:
        The files that would be uploaded (path relative to ``rel``, size), sorted.

    Raises:
        UserError: naming the first problem (file, shard, sample, key).
    """
    rel = Path(rel)
    _check_folder(rel)
    info = _read_info(rel)
    meta, features = _read_card(rel)
    names = _list_files(rel, info)
    _check_card_matches_info(rel, meta, info, names)
    _check_shards(rel, info, features)
    return [ReleaseFile(n, (rel / n).stat().st_size) for n in names]


# ------------------------------------------------------------------------------------------------------------
# the card as published


def tool_version() -> str:
    """The installed imagenet-plus version."""
    from importlib import metadata

    try:
        return metadata.version("imagenet-plus")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


def published_card(text: str, info: ReleaseInfo, cfg: PublishConfig) -> str:
    """The card as it goes up: the repo id in the loading examples and a "Version" section at the end.

    The result depends only on its inputs (no dates), so publishing the same release with the same settings
    gives the same bytes and changes nothing on the Hub. A "Version" section already in ``text`` (a card
    downloaded from the Hub and re-published) is replaced, not repeated.
    """
    text = text.replace(REPO_PLACEHOLDER, cfg.repo_id)
    head, sep, _old = text.partition(f"\n{VERSION_HEADING}\n")
    text = head.rstrip("\n") + "\n"
    revision = cfg.revision or "main"
    if cfg.tag:
        version = (f"`{cfg.tag}`: pin it with `load_dataset(\"{cfg.repo_id}\", revision=\"{cfg.tag}\")` "
                   f"(branch `{revision}`)")
    else:
        version = f"untagged (branch `{revision}`)"
    rows = [("version", version), ("run config hash", f"`{info.config_hash or 'unknown'}`"),
            ("release fingerprint", f"`{info.fingerprint}`"), ("published with", f"imagenet-plus {tool_version()}")]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"{text}\n{VERSION_HEADING}\n\n| | |\n|---|---|\n{table}\n"


# ------------------------------------------------------------------------------------------------------------
# planning: what the repo has vs what the release has


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports for a regular, non-LFS file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _same_content(remote: Any, local: bytes | Path) -> bool:
    """Compare a ``RepoFile`` of the Hub with local bytes or a local file: sha256 for LFS files, blob id else."""
    size = len(local) if isinstance(local, bytes) else local.stat().st_size
    if remote.size != size:
        return False
    if remote.lfs is not None:
        digest = hashlib.sha256(local).hexdigest() if isinstance(local, bytes) else _file_sha256(local)
        return remote.lfs.sha256 == digest
    data = local if isinstance(local, bytes) else local.read_bytes()
    return remote.blob_id == git_blob_sha1(data)


def _remote_files(api: Any, repo_id: str, revision: str) -> dict[str, Any] | None:
    """The repo's files at ``revision`` (path → ``RepoFile``); {} when the repo does not exist yet.

    A revision (branch) that does not exist yet is listed from ``main``, which it will be created from.
    """
    from huggingface_hub import RepoFile
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    for rev in dict.fromkeys((revision, "main")):
        try:
            entries = api.list_repo_tree(repo_id, repo_type="dataset", revision=rev, recursive=True)
            return {e.path: e for e in entries if isinstance(e, RepoFile)}
        except RepositoryNotFoundError:
            return {}
        except RevisionNotFoundError:
            continue
    return {}


def plan_publish(local: Mapping[str, bytes | Path], remote: Mapping[str, Any] | None) -> PublishPlan:
    """Compare the files to publish with the repo's.

    Args:
        local: path in the repo → the bytes to upload, or the local file.
        remote: path → ``RepoFile`` (``size``, ``blob_id``, ``lfs.sha256``), or None when the repo was not listed.

    Returns:
        The plan: added, changed, deleted, unchanged paths.
    """
    sizes = {p: (len(v) if isinstance(v, bytes) else v.stat().st_size) for p, v in local.items()}
    if remote is None:
        return PublishPlan(sorted(local), [], [], [], sizes, repo_listed=False)
    add, change, same = [], [], []
    for path in sorted(local):
        if path not in remote:
            add.append(path)
        elif _same_content(remote[path], local[path]):
            same.append(path)
        else:
            change.append(path)
    delete = sorted(p for p in remote if p not in local and p not in KEEP_IN_REPO)
    return PublishPlan(add, change, delete, same, sizes)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def describe_plan(plan: PublishPlan, url: str, tag: str | None = None, note: str = "") -> str:
    """The dry-run listing: a summary line, then one line per file added, changed or deleted."""
    up = plan.add + plan.change
    head = (f"dry run: would add {len(plan.add)}, change {len(plan.change)}, delete {len(plan.delete)} file(s) "
            f"({_human(sum(plan.sizes[p] for p in up))} to upload; {len(plan.unchanged)} unchanged) at {url}")
    lines = [head + (f" ({note})" if note else "")]
    lines += [f"add     {plan.sizes[p]:>14,d}  {p}" for p in plan.add]
    lines += [f"change  {plan.sizes[p]:>14,d}  {p}" for p in plan.change]
    lines += [f"delete  {'':>14}  {p}" for p in plan.delete]
    if tag:
        lines.append(f"tag     {'':>14}  {tag}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# publishing


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


@contextmanager
def _hub_errors(repo_id: str, endpoint: str, token: str | None, step: Callable[[], str]) -> Iterator[None]:
    """Turn Hub/network errors into one-line :class:`UserError` messages without the token."""
    try:  # huggingface_hub 2.x talks through httpx2, 1.x through httpx
        import httpx2 as httpx_module
    except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
        import httpx as httpx_module
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        hint = " (is the token valid, with write access?)" if status in (401, 403) else ""
        resume = "; re-run the same command to resume" if step() == "upload" else ""
        msg = _scrub(str(exc).splitlines()[0], token)
        raise UserError(f"{repo_id}: could not {step()}: HTTP {status}{hint}: {msg}{resume}") from None
    except (httpx_module.HTTPError, OSError, RuntimeError, ValueError) as exc:
        # RuntimeError/ValueError: huggingface_hub's wrappers for a failed LFS upload / malformed answer
        cause = exc.__cause__ or exc
        msg = _scrub(f"{exc} ({cause})" if cause is not exc else str(exc), token)
        resume = "; re-run the same command to resume (uploaded files are not sent again)" if step() == "upload" else ""
        raise UserError(f"{repo_id}: could not {step()} at {endpoint}: {msg}{resume}") from None


def _local_files(rel: Path, files: list[ReleaseFile], card: str) -> dict[str, bytes | Path]:
    """Path in the repo → what goes up: the card's published text, the other files from disk."""
    return {f.path: (card.encode("utf-8") if f.path == CARD_NAME else rel / f.path) for f in files}


def _check_tag_free(api: Any, cfg: PublishConfig, plan: PublishPlan, revision: str) -> bool:
    """Before anything is sent: is ``cfg.tag`` new (True), or already on the head that stays unchanged (False)?

    Raises:
        UserError: the tag exists on another commit, or the publish would change the repo (tags are not moved).
    """
    refs = api.list_repo_refs(cfg.repo_id, repo_type="dataset")
    existing = {t.name: t.target_commit for t in refs.tags}
    if cfg.tag not in existing:
        return True
    head = api.repo_info(cfg.repo_id, repo_type="dataset", revision=revision).sha
    if plan.empty and existing[cfg.tag] == head:
        return False
    raise UserError(f"{cfg.repo_id}: tag {cfg.tag!r} already exists on commit {existing[cfg.tag][:12]} and tags are "
                    "not moved: publish this release under a new version (nothing was sent)")


def _commit(api: Any, cfg: PublishConfig, plan: PublishPlan, local: Mapping[str, bytes | Path], had_card: bool,
            message: str, description: str) -> str:
    """Send the plan's changes; returns the last commit's sha.

    Up to :data:`MAX_COMMIT_FILES` files: the shards' bytes first, then one atomic commit (the repo goes from the
    old release to the new one at once). More than that (the Hub's recommended commit size): the card and
    ``_info.json`` are removed first (a repo without them declares nothing), then the data files go up and the
    stale ones go in commits of at most :data:`MAX_COMMIT_FILES`, and the card and ``_info.json`` come back last.
    Either way the repo never has a card or ``_info.json`` that declares a shard it lacks.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    def add(path: str) -> Any:
        v = local[path]
        return CommitOperationAdd(path_in_repo=path, path_or_fileobj=v if isinstance(v, bytes) else str(v))

    def commit(ops: list[Any], title: str) -> str:
        data = [op for op in ops if isinstance(op, CommitOperationAdd)]
        if data:  # the bytes go up before the commit that declares them
            api.preupload_lfs_files(cfg.repo_id, additions=data, repo_type="dataset", revision=cfg.revision)
        return api.create_commit(cfg.repo_id, operations=ops, repo_type="dataset", revision=cfg.revision,
                                 commit_message=title, commit_description=description).oid

    declaring = (CARD_NAME, INFO_NAME)
    changed = plan.add + plan.change
    if len(changed) + len(plan.delete) <= MAX_COMMIT_FILES:
        ops = [add(p) for p in changed] + [CommitOperationDelete(path_in_repo=p) for p in plan.delete]
        return commit(ops, message)
    if had_card:
        commit([CommitOperationDelete(path_in_repo=p) for p in declaring if p not in plan.add], f"{message}: "
               f"remove the card and {INFO_NAME} while the data changes")
    data_ops = [*(CommitOperationDelete(path_in_repo=p) for p in plan.delete if p not in declaring),
                *(p for p in changed if p not in declaring)]
    for start in range(0, len(data_ops), MAX_COMMIT_FILES):
        batch = [add(x) if isinstance(x, str) else x for x in data_ops[start:start + MAX_COMMIT_FILES]]
        commit(batch, f"{message}: data files {start + 1}-{start + len(batch)} of {len(data_ops)}")
    return commit([add(p) for p in declaring if p in local], message)


def run_publish(rel: str | Path, cfg: PublishConfig) -> str:
    """Validate ``rel`` and make the Hub repo equal to it (or, with ``dry_run``, list what would change).

    Args:
        rel: the release folder.
        cfg: the publish settings.

    Returns:
        The dataset URL on the Hub (first line) and what was done, or the dry-run listing.

    Raises:
        UserError: an invalid release, no token, offline mode, a tag on another commit, or a Hub error
            (message without the token).
    """
    rel = Path(rel)
    files = validate_release(rel)
    info = ReleaseInfo.read(rel / INFO_NAME)
    card = published_card((rel / CARD_NAME).read_text(encoding="utf-8"), info, cfg)
    validate_card(card, f"{rel / CARD_NAME} (as published)")
    local = _local_files(rel, files, card)
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    revision = cfg.revision or "main"
    url = f"{endpoint}/datasets/{cfg.repo_id}" + (f"/tree/{revision}" if cfg.revision else "")

    from huggingface_hub import HfApi, constants, get_token

    token = get_token()
    if cfg.dry_run:
        if constants.is_offline_mode():
            return describe_plan(plan_publish(local, None), url, cfg.tag, "HF_HUB_OFFLINE is set: repo not listed")
        api = HfApi(endpoint=endpoint, token=token or False)
        with _hub_errors(cfg.repo_id, endpoint, token, lambda: "list the repo"):
            remote = _remote_files(api, cfg.repo_id, revision)
        return describe_plan(plan_publish(local, remote), url, cfg.tag)

    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run 'hf auth login' (nothing was sent)")
    if constants.is_offline_mode():
        raise UserError("HF_HUB_OFFLINE is set: unset it to publish (nothing was sent)")
    api = HfApi(endpoint=endpoint, token=token)
    step = "create the repo"
    with _hub_errors(cfg.repo_id, endpoint, token, lambda: step):
        api.create_repo(cfg.repo_id, repo_type="dataset", private=cfg.private, exist_ok=True)
        if cfg.revision:
            step = f"create branch {cfg.revision}"
            api.create_branch(cfg.repo_id, branch=cfg.revision, repo_type="dataset", exist_ok=True)
        step = "list the repo"
        remote = _remote_files(api, cfg.repo_id, revision) or {}
        plan = plan_publish(local, remote)
        new_tag = False
        if cfg.tag:
            step = "list the tags"
            new_tag = _check_tag_free(api, cfg, plan, revision)
        done = ["unchanged: the repo already equals the release (no commit)"]
        head = None
        if not plan.empty:
            step = "upload"
            head = _commit(api, cfg, plan, local, had_card=CARD_NAME in remote or INFO_NAME in remote,
                           message=f"imagenet-plus release {cfg.tag or rel.name}",
                           description=f"release fingerprint {info.fingerprint}")
            done = [f"committed: {len(plan.add)} added, {len(plan.change)} changed, {len(plan.delete)} deleted, "
                    f"{len(plan.unchanged)} unchanged"]
        if cfg.tag and not new_tag:
            done.append(f"tag already there: {cfg.tag}")
        elif cfg.tag:
            step = f"tag {cfg.tag}"
            head = head or api.repo_info(cfg.repo_id, repo_type="dataset", revision=revision).sha
            api.create_tag(cfg.repo_id, tag=cfg.tag, revision=head, repo_type="dataset",
                           tag_message=f"imagenet-plus release {cfg.tag}")
            done.append(f"tagged: {cfg.tag}")
    return "\n".join([url, *done])
