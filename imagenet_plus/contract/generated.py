"""Generated shards: the sample's json fields and the done rules of ``RUN/generated/NNNNN.{tar,json}``."""

from __future__ import annotations

from pathlib import Path

from imagenet_plus.contract.names import PARTIAL_SUFFIX


def generated_done(tar: Path) -> bool:
    """A generated shard is done when its ``.tar`` and its stats ``.json`` both exist."""
    return tar.is_file() and tar.with_suffix(".json").is_file()


def clean_partials(folder: Path) -> list[Path]:
    """Delete leftovers of a killed writer: ``*.partial`` files and tars that have no stats JSON."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.glob(f"*{PARTIAL_SUFFIX}")):
        p.unlink(missing_ok=True)
        removed.append(p)
    for tar in sorted(folder.glob("*.tar")):
        if not generated_done(tar):
            tar.unlink(missing_ok=True)
            removed.append(tar)
    return removed


def done_shards(folder: Path) -> list[Path]:
    """The finished shards of a folder (``.tar`` with its ``.json`` beside it), sorted by name."""
    if not folder.is_dir():
        return []
    return [t for t in sorted(folder.glob("*.tar")) if generated_done(t)]


#: Fields of a generated sample's ``json`` member and their ``datasets`` dtypes (release shards add ``scores``).
SAMPLE_FIELDS: dict[str, str] = {
    "class_id": "string", "class_name": "string", "label": "int64", "prompt": "string", "negative_prompt": "string",
    "seed": "int64", "model": "string", "scheduler": "string", "steps": "int64", "guidance": "float64",
    "width": "int64", "height": "int64", "attempt": "int64", "nsfw": "bool", "strategy": "string", "index": "int64",
}
