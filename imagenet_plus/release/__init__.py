"""Stage ``release``: ``RUN/`` (selected) → ``REL/`` (card ``README.md``, ``_info.json``,
``data/{split}-NNNNN.tar``)."""

from imagenet_plus.release.stage import ReleaseConfig, run_release

__all__ = ["ReleaseConfig", "run_release"]
