"""Stage ``score``: ``RUN/generated/`` (+ a real reference) → ``RUN/scores/`` (per-image scores,
features, ``summary.json``).

Pass 1 scores each shard (``shards``, with the networks of ``networks`` and ``scorers/``: CLIP, Inception,
classifier, NSFW); the dataset pass (``dataset_pass``) streams the features for the set-level metrics
(``metrics``) against a real reference (``reference``); ``stage`` runs both and says when they are current.
"""

from typing import TYPE_CHECKING

from imagenet_plus.lazy import lazy_exports

if TYPE_CHECKING:
    from imagenet_plus.score.config import ScoreConfig, load_score_config
    from imagenet_plus.score.dataset_pass import run_dataset_pass
    from imagenet_plus.score.files import read_scores
    from imagenet_plus.score.networks import Scorers
    from imagenet_plus.score.stage import is_finished, run_score, stage_inputs

__getattr__, __dir__ = lazy_exports(__name__, {
    "ScoreConfig": "config",
    "Scorers": "networks",
    "is_finished": "stage",
    "load_score_config": "config",
    "read_scores": "files",
    "run_dataset_pass": "dataset_pass",
    "run_score": "stage",
    "stage_inputs": "stage",
})
__all__ = ["ScoreConfig", "Scorers", "is_finished", "load_score_config", "read_scores", "run_dataset_pass", "run_score",
           "stage_inputs"]
