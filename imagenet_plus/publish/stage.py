"""Publish: validate a release folder ``REL`` completely, then make a Hub dataset repo equal to it.

Input: ``REL`` (from ``release``). Output: the Hub repo ``--repo-id USER/NAME`` (branch ``--revision``,
optionally tagged ``--tag v1.0``).

Nothing is sent before the whole release checks out (:func:`~imagenet_plus.publish.validate.validate_release`,
in named steps: ``_info.json`` through :class:`~imagenet_plus.contract.ReleaseInfo`, the card, the file list,
every shard read to its end).

What is sent (:func:`~imagenet_plus.publish.plan.plan_publish` then :func:`run_publish`, which returns a
:class:`~imagenet_plus.publish.plan.PublishResult`):

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
changed and deleted, sending nothing. The token is checked first, before the release is read; then one short
request without retries (:func:`~imagenet_plus.models.hub.probe_repo`) says whether the Hub answers at all, so
no network is one line (a dry run: "repo not listed") within seconds.

The endpoint is ``$HF_ENDPOINT`` read when publishing (default https://huggingface.co) and passed to
``HfApi`` explicitly; the token comes only from ``$HF_TOKEN`` or the huggingface login
(``huggingface_hub.get_token()``). The token is never printed or written: error messages are scrubbed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from imagenet_plus.contract import CARD_NAME, INFO_NAME, ReleaseInfo
from imagenet_plus.errors import UserError
from imagenet_plus.io.storage import local_tree
from imagenet_plus.models.hub import MISSING, UNREACHABLE, probe_repo
from imagenet_plus.publish.config import PublishConfig
from imagenet_plus.publish.plan import PublishPlan, PublishResult, plan_publish
from imagenet_plus.publish.validate import ReleaseFile, check_real_images_license, validate, validate_release
from imagenet_plus.release.card import validate_card

__all__ = ["PublishConfig", "PublishResult", "run_publish", "validate_release"]

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
#: Placeholder of the repo id in the card's loading examples, replaced when publishing.
REPO_PLACEHOLDER = "USER/NAME"
#: Files changed in one commit at most (the Hub's recommended commit size); larger publishes use several commits.
MAX_COMMIT_FILES = 100
#: Heading of the section :func:`published_card` adds.
VERSION_HEADING = "## Version"


# ------------------------------------------------------------------------------------------------------------
# the card as published


def tool_version() -> str:
    """The installed imagenet-plus version."""
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
# the repo's files


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



def run_publish(rel: str | Path, cfg: PublishConfig) -> PublishResult:
    """Validate ``rel`` and make the Hub repo equal to it (or, with ``dry_run``, list what would change).

    Args:
        rel: the release folder.
        cfg: the publish settings.

    Returns:
        What was done: the dataset's URL (``result.url``), the plan's counts, the commit and the tag;
        ``str(result)`` is the URL and one line per action, or the dry-run listing.

    Raises:
        UserError: an invalid release, no token, offline mode, a tag on another commit, or a Hub error
            (message without the token).
    """
    from huggingface_hub import HfApi, constants, get_token

    rel = local_tree(rel)  # a release at a URL is read from a local copy (io.storage)
    token = get_token()
    if not cfg.dry_run:  # before the release is read to its end: a missing token is known at once
        if not token:
            raise UserError("no Hugging Face token: set HF_TOKEN or run 'hf auth login' (nothing was sent)")
        if constants.is_offline_mode():
            raise UserError("HF_HUB_OFFLINE is set: unset it to publish (nothing was sent)")
    info, files = validate(rel)
    check_real_images_license(rel, cfg.allow_permissive_license)
    card = published_card((rel / CARD_NAME).read_text(encoding="utf-8"), info, cfg)
    validate_card(card, f"{rel / CARD_NAME} (as published)")
    local = _local_files(rel, files, card)
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    revision = cfg.revision or "main"
    url = f"{endpoint}/datasets/{cfg.repo_id}" + (f"/tree/{revision}" if cfg.revision else "")

    # one short request first (no retries): no network is one line in seconds, not half a minute of retries
    found = probe_repo(cfg.repo_id, "dataset", token=token or False)
    unreachable = f"cannot reach the Hugging Face Hub at {endpoint} (offline?)"
    if cfg.dry_run:
        if constants.is_offline_mode():
            return PublishResult(url, plan_publish(local, None), dry_run=True, tag=cfg.tag,
                                 note="HF_HUB_OFFLINE is set: repo not listed")
        if found == UNREACHABLE:
            return PublishResult(url, plan_publish(local, None), dry_run=True, tag=cfg.tag,
                                 note=f"{unreachable}: repo not listed")
        api = HfApi(endpoint=endpoint, token=token or False)
        with _hub_errors(cfg.repo_id, endpoint, token, lambda: "list the repo"):
            remote = _remote_files(api, cfg.repo_id, revision) if found != MISSING else {}
        return PublishResult(url, plan_publish(local, remote), dry_run=True, tag=cfg.tag)

    if found == UNREACHABLE:
        raise UserError(f"{unreachable}: nothing was sent")
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
        head = None
        if not plan.empty:
            step = "upload"
            log.debug("publish: %d to add, %d to change, %d to delete", len(plan.add), len(plan.change),
                      len(plan.delete))
            head = _commit(api, cfg, plan, local, had_card=CARD_NAME in remote or INFO_NAME in remote,
                           message=f"imagenet-plus release {cfg.tag or rel.name}",
                           description=f"release fingerprint {info.fingerprint}")
        if new_tag:
            step = f"tag {cfg.tag}"
            tagged = head or api.repo_info(cfg.repo_id, repo_type="dataset", revision=revision).sha
            api.create_tag(cfg.repo_id, tag=cfg.tag, revision=tagged, repo_type="dataset",
                           tag_message=f"imagenet-plus release {cfg.tag}")
    return PublishResult(url, plan, commit=head, tag=cfg.tag, tag_created=new_tag)
