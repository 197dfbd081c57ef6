"""Stage ``score``: ``RUN/generated/`` (+ a real reference) → ``RUN/scores/`` (per-image scores,
features, ``summary.json``).

Pass 1 scores each shard (``scorers/``: CLIP, Inception, classifier, NSFW); the dataset pass streams the
features for the set-level metrics (``metrics``) against a real reference (``reference``).
"""

from imagenet_plus.score.stage import ScoreConfig, is_finished, load_score_config, run_dataset_pass, run_score

__all__ = ["ScoreConfig", "is_finished", "load_score_config", "run_dataset_pass", "run_score"]
