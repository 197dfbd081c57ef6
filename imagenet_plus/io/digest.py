"""Content hashes of files, read in blocks (memory stays flat whatever the file size).

Written by hand because :func:`hashlib.file_digest` needs Python 3.11 and the project supports 3.10.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: Bytes read at a time.
BLOCK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes (what the Hub reports for an LFS file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()
