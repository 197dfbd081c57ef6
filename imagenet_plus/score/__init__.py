"""Stage ``score``: ``RUN/generated/`` (+ a real reference) → ``RUN/scores/`` (per-image scores,
features, ``summary.json``).

Pass 1 scores each shard (``scorers/``: CLIP, Inception, classifier, NSFW); the dataset pass streams the
features for the set-level metrics (``metrics``) against a real reference (``reference``).
"""

from typing import TYPE_CHECKING

from imagenet_plus.lazy import lazy_exports

if TYPE_CHECKING:
    from imagenet_plus.score.stage import ScoreConfig, is_finished, load_score_config, run_dataset_pass, run_score

__getattr__, __dir__ = lazy_exports(__name__, {
    "ScoreConfig": "stage",
    "is_finished": "stage",
    "load_score_config": "stage",
    "run_dataset_pass": "stage",
    "run_score": "stage",
})
__all__ = ["ScoreConfig", "is_finished", "load_score_config", "run_dataset_pass", "run_score"]
