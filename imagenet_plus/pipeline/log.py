"""Logging and error reporting for the command line.

Stages log through ``logging.getLogger(__name__)`` (loggers below ``imagenet_plus``); nothing prints
status lines by hand. :func:`setup_logging` sends them to stderr: INFO and above as bare messages by
default, DEBUG and above with the logger's name under ``--verbose`` or ``IMAGENET_PLUS_DEBUG=1``.

:func:`report_error` turns an exception that reached the command line into what the user sees: one
``error: …`` line and exit status 2 for a :class:`~imagenet_plus.errors.UserError`, plus its full
traceback and the library exception it came from when debugging is on.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

from imagenet_plus.errors import UserError

#: The root logger of the package.
LOGGER = "imagenet_plus"
#: Set to 1 to log at DEBUG level and show the traceback of every error (as ``--verbose`` does).
DEBUG_ENV = "IMAGENET_PLUS_DEBUG"
#: Exit status of a user error (bad input, bad environment), as click uses for usage errors.
EXIT_USER_ERROR = 2
#: Exit status after Ctrl-C (128 + SIGINT), the shell's convention.
EXIT_INTERRUPTED = 130


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted (test harnesses and notebooks replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def debug_enabled() -> bool:
    """Whether ``IMAGENET_PLUS_DEBUG`` asks for debug output."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def setup_logging(verbose: bool = False) -> None:
    """Send the package's log records to stderr (idempotent: a second call only changes the level).

    Args:
        verbose: DEBUG level with logger names (also when ``IMAGENET_PLUS_DEBUG`` is set); else INFO, bare.
    """
    verbose = verbose or debug_enabled()
    if verbose:
        os.environ[DEBUG_ENV] = "1"  # processes started from here (ranks, workers) debug too
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    fmt = "%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"
    handler = next((h for h in logger.handlers if getattr(h, "_imagenet_plus", False)), None)
    if handler is None:
        handler = _StderrHandler()
        handler._imagenet_plus = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    handler.setFormatter(logging.Formatter(fmt))


def report_error(exc: BaseException) -> int:
    """Print what the user should see for ``exc`` on stderr and return the exit status.

    A :class:`UserError` is one line (``error: MESSAGE``); with debugging on, its traceback and the
    exception it was raised from are printed first. Ctrl-C is one line and status 130. Anything else is
    a programming error: re-raised, so Python prints its traceback.
    """
    if isinstance(exc, KeyboardInterrupt):
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not isinstance(exc, UserError):
        raise exc
    if debug_enabled():
        exc.__suppress_context__ = False  # show the library error hidden by ``raise ... from None``
        traceback.print_exception(exc, file=sys.stderr)
    print(f"error: {exc.message}", file=sys.stderr)
    return EXIT_USER_ERROR
