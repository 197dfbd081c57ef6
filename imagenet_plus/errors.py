"""Errors the user can act on, typed so that code tells them apart by class, never by message text.

Every problem caused by the user's input or environment (a bad flag, a missing file, a corrupt shard, a
model that cannot be loaded, another process on the same run) is a :class:`UserError` or one of its
subclasses. The CLI prints its message as one line on stderr (``error: …``) and exits with status 2.
Programming errors stay ordinary exceptions, so their traceback is shown.

With ``--verbose`` or ``IMAGENET_PLUS_DEBUG=1`` the CLI also prints the full traceback of a
:class:`UserError`, including the library exception it was raised from (``raise … from None`` hides
the cause from users, not from this switch): what broke on a user's cluster can then be seen.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """An error in the user's input or environment, reported as one line naming the culprit."""

    def __init__(self, message: str) -> None:
        # Keep it to one line whatever the caller passes (paths or nested errors may carry newlines).
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        """The one-line message."""
        return str(self.args[0])


class ConfigError(UserError):
    """A setting in a config file or on the command line is unknown, of the wrong type or out of range."""


class CorruptShard(UserError):
    """A shard (generated tar, scores parquet, release tar) does not read back as written.

    Attributes:
        path: the shard.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        super().__init__(f"corrupt or truncated shard {self.path}: {reason}")


class PeerRankFailed(UserError):
    """Another process of a multi-process launch failed; this one stops too (its own work is kept).

    Attributes:
        rank: the rank that failed.
    """

    def __init__(self, rank: int, reason: str) -> None:
        self.rank = rank
        super().__init__(f"rank {rank} failed, stopping: {reason}")


class ModelUnavailable(UserError):
    """A model (generator, scorer, captioner) cannot be loaded: absent locally, unreachable, or malformed."""


class StorageError(UserError):
    """The disk refused a write: no space, over quota, read-only, permission denied, a name too long.

    Attributes:
        path: the file or folder being written.
        errno: the ``OSError``'s errno (``errno.ENOSPC``…).
    """

    def __init__(self, path: str | Path, errno: int, message: str) -> None:
        self.path = str(path)
        self.errno = errno
        super().__init__(message)


class RunInUse(UserError):
    """Another process holds the lock of a folder this process would write (a run, a release being built).

    Attributes:
        folder: the folder.
        holder: ``pid N on HOST`` of the process holding it (``another process`` when it cannot be told).
    """

    def __init__(self, folder: str | Path, holder: str) -> None:
        self.folder = str(folder)
        self.holder = holder
        super().__init__(f"{self.folder} is in use by {holder}: wait for it to finish (or stop it), then re-run")


class ForeignFiles(UserError):
    """A folder the project would create, replace or clean holds files it did not write: it is refused, untouched.

    Attributes:
        path: the folder (or file) in the way.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path} {reason}; nothing was deleted")
