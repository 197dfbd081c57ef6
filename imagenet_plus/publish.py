"""Publish: validate a release folder ``REL`` completely, then push it to a Hub dataset repo.

Input: ``REL`` (from ``release``). Output: the Hub repo ``--repo-id USER/NAME`` (branch ``--revision``).

Nothing is sent before the whole release checks out: every tar is read to its end, every sample has the
same members, the shard counts equal ``_info.json``, every label is within the class list, keys are
unique, no shard is missing or unlisted, and the card's YAML loads and parses as datasets reads it.

The push is ``HfApi.create_repo(exist_ok=True, repo_type="dataset")`` followed by ``HfApi.upload_folder``.
upload_folder resumes by itself when run again after an interruption: with ``hf_xet`` it commits in
batches and skips committed files; without it (``HF_HUB_DISABLE_XET=1``) the LFS batch endpoint reports
the shards already uploaded, which are not sent again, and unchanged committed files are skipped.

The endpoint is ``$HF_ENDPOINT`` read when publishing (default https://huggingface.co) and passed to
``HfApi`` explicitly; the token comes only from ``$HF_TOKEN`` or the huggingface login
(``huggingface_hub.get_token()``). The token is never printed or written: error messages are scrubbed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.card import validate_card
from imagenet_plus.errors import UserError
from imagenet_plus.progress import progress_bar
from imagenet_plus.shards import iter_shard

DEFAULT_ENDPOINT = "https://huggingface.co"
#: The Hub's repo-name rule: letters, digits, ``-``, ``_``, ``.``; no ``--``/``..``; not starting/ending in ``-``/``.``.
_NAME = r"(?!.*(--|\.\.))[A-Za-z0-9](?:[\w\-.]{0,94}[A-Za-z0-9_])?"
REPO_ID_PATTERN = re.compile(rf"^{_NAME}/{_NAME}$")


@dataclass(frozen=True)
class PublishConfig:
    """Settings of ``imagenet-plus publish`` (fields are its flags).

    Attributes:
        repo_id: the dataset repo, ``USER/NAME`` or ``ORG/NAME``.
        private: create the repo as private (an existing repo keeps its visibility).
        revision: branch to push to (created from main if missing); None for main.
        dry_run: validate and list what would go up, send nothing.
    """

    repo_id: str = ""
    private: bool = False
    revision: str | None = None
    dry_run: bool = False

    def __post_init__(self) -> None:
        if not REPO_ID_PATTERN.match(self.repo_id or ""):
            raise UserError(
                f"malformed repo id {self.repo_id!r}: expected USER/NAME (letters, digits, '-', '_', '.'; "
                "no '--' or '..'; at most 96 characters each)"
            )
        if self.revision is not None and not re.match(r"^[\w\-./]{1,200}$", self.revision):
            raise UserError(f"malformed --revision {self.revision!r}: expected a branch name")


@dataclass(frozen=True)
class ReleaseFile:
    """One file of a release, as it would be uploaded."""

    path: str
    size: int


def _load_info(rel: Path) -> dict[str, Any]:
    p = rel / "_info.json"
    if not p.is_file():
        raise UserError(f"{p} not found: {rel} is not a release folder (run 'imagenet-plus release')")
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{p} is not valid JSON: {exc}") from None
    splits = info.get("splits") if isinstance(info, dict) else None
    if not isinstance(splits, dict) or not splits:
        raise UserError(f"{p} has no 'splits'")
    for name, s in splits.items():
        try:
            files, lengths, n = list(s["filenames"]), [int(x) for x in s["shard_lengths"]], int(s["num_samples"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{p}: split '{name}' lacks filenames, shard_lengths or num_samples") from None
        if len(files) != len(lengths) or sum(lengths) != n:
            raise UserError(
                f"{p}: split '{name}' is inconsistent ({len(files)} filenames, {len(lengths)} shard_lengths "
                f"summing to {sum(lengths)}, num_samples {n})"
            )
    return info


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
    if not rel.is_dir():
        raise UserError(f"release folder not found: {rel}")
    info = _load_info(rel)
    readme = rel / "README.md"
    if not readme.is_file():
        raise UserError(f"{readme} not found: the dataset card is missing")
    meta = validate_card(readme.read_text(encoding="utf-8"), str(readme))
    import datasets

    features = datasets.DatasetInfo._from_yaml_dict(dict(meta["dataset_info"])).features
    cls = features["cls"]
    if not isinstance(cls, datasets.ClassLabel):
        raise UserError(f"{readme}: 'cls' is not declared as a class_label")
    num_classes = cls.num_classes
    declared = set(features)
    card_splits = {s["name"]: int(s["num_examples"]) for s in meta["dataset_info"].get("splits", [])}

    files = sorted(p for p in rel.rglob("*") if p.is_file() and ".cache" not in p.relative_to(rel).parts)
    rel_names = [p.relative_to(rel).as_posix() for p in files]
    for name in rel_names:
        if name.endswith(".partial"):
            raise UserError(f"{rel / name} is a leftover of an interrupted write: rebuild the release")
        if "/" not in name and name.endswith(".py"):
            raise UserError(f"{rel / name}: a root .py file would make the Hub treat the repo as a dataset script "
                            "(datasets >= 4 refuses scripts): remove it")
    listed = [f for s in info["splits"].values() for f in s["filenames"]]
    unlisted = sorted(n for n in rel_names if n.endswith(".tar") and n not in listed)
    if unlisted:
        raise UserError(f"{rel / unlisted[0]} is not listed in {rel / '_info.json'}")
    total = sum(int(s["num_samples"]) for s in info["splits"].values())
    bar = progress_bar(total, "validate", unit="sample")
    members_ref: set[str] | None = None
    keys: set[str] = set()
    try:
        for split, s in info["splits"].items():
            if card_splits and card_splits.get(split) != int(s["num_samples"]):
                raise UserError(f"{readme} declares {card_splits.get(split)} {split} samples but "
                                f"{rel / '_info.json'} says {s['num_samples']}")
            for fname, expected in zip(s["filenames"], s["shard_lengths"], strict=True):
                shard = rel / fname
                if not shard.is_file():
                    raise UserError(f"shard {shard} listed in {rel / '_info.json'} is missing")
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
                    raise UserError(f"shard {shard} holds {count} samples but {rel / '_info.json'} says {expected}")
    finally:
        bar.close()
    return [ReleaseFile(n, p.stat().st_size) for n, p in zip(rel_names, files, strict=True)]


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def run_publish(rel: str | Path, cfg: PublishConfig) -> str:
    """Validate ``rel`` and push it to the Hub (or, with ``dry_run``, list what would go up).

    Args:
        rel: the release folder.
        cfg: the publish settings.

    Returns:
        The dataset URL on the Hub, or the dry-run listing.

    Raises:
        UserError: an invalid release, no token, offline mode, or a Hub error (message without the token).
    """
    files = validate_release(rel)
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    revision = cfg.revision or "main"
    url = f"{endpoint}/datasets/{cfg.repo_id}" + (f"/tree/{revision}" if cfg.revision else "")
    if cfg.dry_run:
        lines = [f"dry run: would upload {len(files)} files ({_human(sum(f.size for f in files))}) to {url}"]
        lines += [f"{f.size:>14,d}  {f.path}" for f in files]
        return "\n".join(lines)

    try:  # huggingface_hub 2.x talks through httpx2, 1.x through httpx
        import httpx2 as httpx_module
    except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
        import httpx as httpx_module
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = get_token()
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run 'hf auth login' (nothing was sent)")
    if constants.is_offline_mode():
        raise UserError("HF_HUB_OFFLINE is set: unset it to publish (nothing was sent)")
    api = HfApi(endpoint=endpoint, token=token)
    step = "create the repo"
    try:
        api.create_repo(cfg.repo_id, repo_type="dataset", private=cfg.private, exist_ok=True)
        if cfg.revision:
            step = f"create branch {cfg.revision}"
            api.create_branch(cfg.repo_id, branch=cfg.revision, repo_type="dataset", exist_ok=True)
        step = "upload"
        api.upload_folder(repo_id=cfg.repo_id, folder_path=str(rel), repo_type="dataset", revision=cfg.revision,
                          commit_message=f"imagenet-plus release {Path(rel).name}", ignore_patterns=["*.partial"])
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        hint = " (is the token valid, with write access?)" if status in (401, 403) else ""
        resume = "; re-run the same command to resume" if step == "upload" else ""
        msg = _scrub(str(exc).splitlines()[0], token)
        raise UserError(f"{cfg.repo_id}: could not {step}: HTTP {status}{hint}: {msg}{resume}") from None
    except (httpx_module.HTTPError, OSError, RuntimeError, ValueError) as exc:
        # RuntimeError/ValueError: huggingface_hub's wrappers for a failed LFS upload / malformed answer
        cause = exc.__cause__ or exc
        msg = _scrub(f"{exc} ({cause})" if cause is not exc else str(exc), token)
        resume = "; re-run the same command to resume (uploaded files are not sent again)" if step == "upload" else ""
        raise UserError(f"{cfg.repo_id}: could not {step} at {endpoint}: {msg}{resume}") from None
    return url
