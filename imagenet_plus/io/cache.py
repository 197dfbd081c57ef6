"""The imagenet-plus cache folder (tiny models, WordNet data folder, reference features).

``$IMAGENET_PLUS_CACHE`` if set, else ``$XDG_CACHE_HOME/imagenet-plus`` or ``~/.cache/imagenet-plus``.
Nothing in a run or release folder depends on it: it only saves recomputation.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The cache folder (or a subfolder of it), created if missing."""
    root = os.environ.get("IMAGENET_PLUS_CACHE")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imagenet-plus"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
