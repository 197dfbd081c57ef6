"""Settings of ``imagenet-plus publish``: the stage's options, declared once, and the Hub's name rules."""

from __future__ import annotations

import re
from dataclasses import dataclass

from imagenet_plus.errors import ConfigError
from imagenet_plus.pipeline.config import setting

#: The Hub's repo-name rule: letters, digits, ``-``, ``_``, ``.``; no ``--``/``..``; not starting/ending in ``-``/``.``.
_NAME = r"(?!.*(--|\.\.))[A-Za-z0-9](?:[\w\-.]{0,94}[A-Za-z0-9_])?"
REPO_ID_PATTERN = re.compile(rf"^{_NAME}/{_NAME}$")
#: A git ref name we accept for ``--revision`` and ``--tag`` (no ``..``, no leading ``-``/``.``/``/``).
REF_PATTERN = re.compile(r"^(?!.*\.\.)(?![-./])[\w\-./]{1,200}(?<![./])$")


@dataclass(frozen=True)
class PublishConfig:
    """Settings of ``imagenet-plus publish`` (fields are its flags).

    Attributes:
        repo_id: the dataset repo, ``USER/NAME`` or ``ORG/NAME``.
        private: create the repo as private (an existing repo keeps its visibility).
        revision: branch to push to (created from main if missing); None for main.
        tag: tag the published commit with this name (e.g. ``v1.0``); None for no tag.
        dry_run: validate and list what would be added, changed and deleted, send nothing.
        allow_permissive_license: publish a release made from real images (``generate --real``) under a permissive
            licence (apache-2.0, mit, cc-by-4.0, …), which is refused otherwise: the real images' own licence
            (ImageNet's: non-commercial research) binds such a release.
    """

    repo_id: str = setting("", "Hub dataset repo, USER/NAME.")
    private: bool = setting(False, "Create the repo as private.")
    revision: str | None = setting(None, "Branch to push to (created if missing).")
    tag: str | None = setting(None, "Tag the published commit (e.g. v1.0; load with revision='v1.0').")
    dry_run: bool = setting(False, "Validate and list what would be added, changed and deleted.")
    allow_permissive_license: bool = setting(
        False, "Publish a release made from real images under a permissive licence (you checked their terms allow it).")

    def __post_init__(self) -> None:
        if not REPO_ID_PATTERN.match(self.repo_id or ""):
            raise ConfigError(
                f"malformed repo id {self.repo_id!r}: expected USER/NAME (letters, digits, '-', '_', '.'; "
                "no '--' or '..'; at most 96 characters each)"
            )
        if self.revision is not None and not REF_PATTERN.match(self.revision):
            raise ConfigError(f"malformed --revision {self.revision!r}: expected a branch name")
        if self.tag is not None and not REF_PATTERN.match(self.tag):
            raise ConfigError(f"malformed --tag {self.tag!r}: expected a tag name such as v1.0")
