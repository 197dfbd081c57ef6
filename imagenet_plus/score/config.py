"""Settings of ``imagenet-plus score`` (the fields are its flags and the keys of a config's ``score:`` section)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagenet_plus.errors import ConfigError
from imagenet_plus.pipeline.config import config_from_mapping, require_positive, setting
from imagenet_plus.score.scorers.classifier import DEFAULT_CLASSIFIER
from imagenet_plus.score.scorers.clip import DEFAULT_CLIP
from imagenet_plus.score.scorers.nsfw import DEFAULT_NSFW

#: Size of the fixed random samples of generated and of real features behind KID, precision/recall and the
#: realism score's real k-NN balls (10,000 per side as in Naeem et al. 2020; Kynkäänniemi et al. 2019 use
#: 50,000: ``--metric-samples 50000``, seconds on a GPU). A set this size or smaller is used whole, in order.
METRIC_SAMPLES = 10_000


@dataclass(frozen=True)
class ScoreConfig:
    """Settings of the score stage (the fields are the ``imagenet-plus score`` flags).

    Attributes:
        reference: real images (folder with class subfolders, WebDataset shards, or a ``.npz`` of statistics);
            ``None``: no FID/KID/precision/recall/realism.
        clip_model: CLIP Hub id, local folder, or ``tiny-random``.
        inception_weights: torch-fidelity InceptionV3 weights ``.pth``, ``tiny-random``, or ``None`` for
            torch-fidelity's default weights.
        classifier: timm ImageNet-1k classifier name, ``hf-hub:ID``, local folder, or ``tiny-random``.
        nsfw_model: an independent NSFW image classifier (Hub id, local folder or ``tiny-random``) that gives
            every image its ``nsfw_score`` (P(nsfw)); ``none`` turns the check off (the column stays null).
            Needed for generators without a safety checker (sd-turbo, FLUX, SD 3.5), whose ``nsfw`` flag is
            always false.
        batch_size: images per network batch.
        skip_bad_shards: go on past a corrupt or truncated shard (listed in summary.json and on stderr).
        num_workers: threads decoding images while the networks run.
        metric_samples: size of the fixed random samples (generated and real) for KID, precision/recall and
            the realism score's real balls.
    """

    reference: str | None = setting(
        None, "Real images: folder (wnid subfolders), .tar shards, or .npz statistics.")
    clip_model: str = setting(DEFAULT_CLIP, "CLIP: Hub id, local folder, or tiny-random.")
    inception_weights: str | None = setting(
        None, "InceptionV3 .pth, or tiny-random (default: torch-fidelity's weights).")
    classifier: str = setting(
        DEFAULT_CLASSIFIER, "timm ImageNet-1k classifier: name, hf-hub:ID, folder, or tiny-random.")
    nsfw_model: str = setting(DEFAULT_NSFW, "NSFW image classifier: Hub id, folder, tiny-random, or none (off).")
    batch_size: int = setting(32, "Images per network batch.")
    skip_bad_shards: bool = setting(False, "Go on past corrupt shards (listed in summary.json).")
    num_workers: int = setting(2, "Image decoding threads.")
    metric_samples: int = setting(METRIC_SAMPLES, "Generated/real sample size for KID, precision/recall, realism.")

    def __post_init__(self) -> None:
        require_positive("score config", batch_size=self.batch_size, num_workers=self.num_workers,
                         metric_samples=self.metric_samples)
        for name in ("clip_model", "classifier", "nsfw_model"):
            if not str(getattr(self, name)).strip():
                raise ConfigError(f"score config: '{name.replace('_', '-')}' must not be empty")


def load_score_config(overrides: Mapping[str, Any], source: str = "command line") -> ScoreConfig:
    """Build a :class:`ScoreConfig` from flags or a YAML section (unknown keys and bad values are errors)."""
    return config_from_mapping(ScoreConfig, overrides, source)
