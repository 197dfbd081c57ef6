"""Stage ``publish``: ``REL/`` → a Hub dataset repo equal to it (validated first, resumable)."""

from typing import TYPE_CHECKING

from imagenet_plus.lazy import lazy_exports

if TYPE_CHECKING:
    from imagenet_plus.publish.config import PublishConfig
    from imagenet_plus.publish.plan import PublishResult
    from imagenet_plus.publish.stage import run_publish
    from imagenet_plus.publish.validate import validate_release

__getattr__, __dir__ = lazy_exports(__name__, {
    "PublishConfig": "config",
    "PublishResult": "plan",
    "run_publish": "stage",
    "validate_release": "validate",
})
__all__ = ["PublishConfig", "PublishResult", "run_publish", "validate_release"]
