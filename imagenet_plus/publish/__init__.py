"""Stage ``publish``: ``REL/`` → a Hub dataset repo equal to it (validated first, resumable)."""

from imagenet_plus.publish.stage import PublishConfig, run_publish, validate_release

__all__ = ["PublishConfig", "run_publish", "validate_release"]
