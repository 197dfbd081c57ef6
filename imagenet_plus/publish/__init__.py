"""Stage ``publish``: ``REL/`` → a Hub dataset repo equal to it (validated first, resumable)."""

from typing import TYPE_CHECKING

from imagenet_plus.lazy import lazy_exports

if TYPE_CHECKING:
    from imagenet_plus.publish.stage import PublishConfig, run_publish, validate_release

__getattr__, __dir__ = lazy_exports(__name__, {
    "PublishConfig": "stage",
    "run_publish": "stage",
    "validate_release": "stage",
})
__all__ = ["PublishConfig", "run_publish", "validate_release"]
