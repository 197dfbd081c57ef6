"""Planning a publish: what the repo has against what the release has, and what a publish did.

Files are compared by content hash (sha256 for LFS files, the git blob id otherwise): new or changed files are
uploaded, files the release lacks are deleted (``.gitattributes`` is kept), unchanged files are left alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagenet_plus.io.digest import file_sha256

#: Repo files a publish never deletes.
KEEP_IN_REPO = (".gitattributes",)


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



def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports for a regular, non-LFS file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _same_content(remote: Any, local: bytes | Path) -> bool:
    """Compare a ``RepoFile`` of the Hub with local bytes or a local file: sha256 for LFS files, blob id else."""
    size = len(local) if isinstance(local, bytes) else local.stat().st_size
    if remote.size != size:
        return False
    if remote.lfs is not None:
        digest = hashlib.sha256(local).hexdigest() if isinstance(local, bytes) else file_sha256(local)
        return remote.lfs.sha256 == digest
    data = local if isinstance(local, bytes) else local.read_bytes()
    return remote.blob_id == git_blob_sha1(data)


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


@dataclass(frozen=True)
class PublishResult:
    """What :func:`~imagenet_plus.publish.run_publish` did (``str()`` gives the lines the CLI prints).

    Attributes:
        url: the dataset's page on the Hub (``…/tree/BRANCH`` with a revision).
        plan: the files added, changed, deleted and left unchanged (what would be, for a dry run).
        dry_run: nothing was sent.
        note: why the repo could not be listed (dry run offline), else empty.
        commit: the last commit made; None when nothing was committed.
        tag: the tag asked for, or None.
        tag_created: the tag was made now (False: it was already on the unchanged head, or none was asked).
    """

    url: str
    plan: PublishPlan
    dry_run: bool = False
    note: str = ""
    commit: str | None = None
    tag: str | None = None
    tag_created: bool = False

    @property
    def added(self) -> int:
        return len(self.plan.add)

    @property
    def changed(self) -> int:
        return len(self.plan.change)

    @property
    def deleted(self) -> int:
        return len(self.plan.delete)

    @property
    def unchanged(self) -> int:
        return len(self.plan.unchanged)

    def lines(self) -> list[str]:
        """The dry-run listing, or the URL and what was done (one line each)."""
        if self.dry_run:
            return describe_plan(self.plan, self.url, self.tag, self.note).split("\n")
        if self.plan.empty:
            done = ["unchanged: the repo already equals the release (no commit)"]
        else:
            done = [f"committed: {self.added} added, {self.changed} changed, {self.deleted} deleted, "
                    f"{self.unchanged} unchanged"]
        if self.tag:
            done.append(f"tagged: {self.tag}" if self.tag_created else f"tag already there: {self.tag}")
        return [self.url, *done]

    def __str__(self) -> str:
        return "\n".join(self.lines())
