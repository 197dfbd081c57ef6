"""User-facing errors.

Every problem caused by the user's input (a bad flag, a missing file, a malformed shard) is raised as
:class:`UserError`. The CLI prints its message as one line on stderr and exits with status 2; no
traceback is shown. Programming errors are left as ordinary exceptions so that they stay visible.
"""

from __future__ import annotations


class UserError(Exception):
    """An error in the user's input, reported as one line naming the culprit."""

    def __init__(self, message: str) -> None:
        # Keep it to one line whatever the caller passes (paths or nested errors may carry newlines).
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        """The one-line message."""
        return str(self.args[0])
