"""Which folders are the project's to write: a run folder holds ``run.yaml``; a stage that writes into one holds its
lock (``RUN/.lock``) while it runs.

A folder that is not a run (no ``run.yaml``) is never written, locked or cleaned: ``generate``/``run`` start a run
only in an absent or empty folder (:func:`check_run_folder`), and the other stages refuse it (``run_paths``)
before they take the lock (:func:`locked_run`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from imagenet_plus.contract.names import CLASSES_JSON, GENERATED_DIR, LOCK_NAME, MARKERS_DIR, PIPELINE_FAILED, RUN_YAML
from imagenet_plus.errors import ForeignFiles, UserError
from imagenet_plus.io.lock import folder_lock
from imagenet_plus.io.storage import is_remote, location, remote_errors

F = TypeVar("F", bound=Callable[..., Any])


#: What a ``generate`` or ``run`` killed before ``run.yaml`` was written may leave beside the lock file.
_STARTED = frozenset({LOCK_NAME, CLASSES_JSON, GENERATED_DIR, MARKERS_DIR, PIPELINE_FAILED})


def _left_by_a_start(root: Path, names: list[str]) -> bool:
    """Whether ``root`` holds only what a start killed before ``run.yaml`` leaves: the lock (which says the project
    started the run there; none on object storage), ``classes.json``, an empty ``generated/``, ``run``'s markers."""
    generated = root / GENERATED_DIR
    locked = LOCK_NAME in names or is_remote(root)  # object storage has no lock file: what a start left is enough
    return locked and set(names) <= _STARTED and (
        GENERATED_DIR not in names or (generated.is_dir() and not any(generated.iterdir())))


def check_run_folder(root: str | Path, option: str = "--out") -> None:
    """Refuse to start or continue a run in ``root`` unless it is absent, empty, or a run (holds ``run.yaml``).

    Args:
        root: the run folder.
        option: the option that named it (for the message).

    Raises:
        UserError: ``root`` is a file. ForeignFiles: a folder holding anything else (nothing is written or deleted).
    """
    root = location(root)
    with remote_errors(root):
        _check_run_folder(root, option)


def _check_run_folder(root: Any, option: str) -> None:
    if not root.exists():
        return
    if not root.is_dir():
        raise UserError(f"{option} {root} is a file, not a run directory")
    if (root / RUN_YAML).is_file():
        return
    names = sorted(p.name for p in root.iterdir())
    if not names or names == [LOCK_NAME] or _left_by_a_start(root, names):
        return
    raise ForeignFiles(root, f"is not empty and is not an imagenet-plus run (no {RUN_YAML}; it holds {names[0]}): "
                             f"choose another {option} folder")


def locked_run(func: F) -> F:
    """Decorate ``run_<stage>(run, …)``: the stage holds ``RUN/.lock`` while it runs.

    The lock is taken only when ``run`` is a run folder (holds ``run.yaml``): otherwise the stage refuses the
    folder itself, and no lock file is written into a folder that is not a run. Another process holding it is
    :class:`~imagenet_plus.errors.RunInUse` ("RUN is in use by pid N on HOST").
    """

    @functools.wraps(func)
    def wrapper(run: str | Path, *args: Any, **kwargs: Any) -> Any:
        if not (location(run) / RUN_YAML).is_file():
            return func(run, *args, **kwargs)
        with folder_lock(run):
            return func(run, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
