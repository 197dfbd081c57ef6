"""Stage ``release``: ``RUN/`` (selected) → ``REL/`` (card ``README.md``, ``_info.json``,
``data/{split}-NNNNN.tar``)."""

from typing import TYPE_CHECKING

from imagenet_plus.lazy import lazy_exports

if TYPE_CHECKING:
    from imagenet_plus.release.stage import ReleaseConfig, run_release

__getattr__, __dir__ = lazy_exports(__name__, {
    "ReleaseConfig": "stage",
    "run_release": "stage",
})
__all__ = ["ReleaseConfig", "run_release"]
