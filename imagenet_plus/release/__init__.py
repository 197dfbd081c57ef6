"""Stage ``release``: ``RUN/`` (selected) → ``REL/`` (card ``README.md``, ``_info.json``,
``data/{split}-NNNNN.tar``)."""

from typing import TYPE_CHECKING

from imagenet_plus.lazy import lazy_exports

if TYPE_CHECKING:
    from imagenet_plus.release.config import ReleaseConfig
    from imagenet_plus.release.stage import run_release, stage_inputs

__getattr__, __dir__ = lazy_exports(__name__, {
    "ReleaseConfig": "config",
    "run_release": "stage",
    "stage_inputs": "stage",
})
__all__ = ["ReleaseConfig", "run_release", "stage_inputs"]
