"""The score stage's networks: loaded on first use, checked before any loads, recorded in ``models.json``."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_plus.classes.prompts import class_texts
from imagenet_plus.contract.scores import DEFAULT_INCEPTION_WEIGHTS, ModelsRecord, SummaryModels
from imagenet_plus.io.storage import local_input
from imagenet_plus.models.tiny import TINY_RANDOM
from imagenet_plus.score.config import ScoreConfig
from imagenet_plus.score.reference import detect_kind
from imagenet_plus.score.scorers.classifier import ClassifierScorer, imagenet_targets, timm_name
from imagenet_plus.score.scorers.clip import ClipScorer
from imagenet_plus.score.scorers.inception import InceptionScorer, check_state_dict, resolve_inception_weights
from imagenet_plus.score.scorers.nsfw import NSFW_OFF, NsfwScorer


class Scorers:
    """The scorers and the class texts, loaded on first use (the dataset pass may need none of them).

    ``run_score`` builds one from its config; a caller that scores several runs (or a benchmark) may pass
    its own so that the networks are loaded once.
    """

    def __init__(self, cfg: ScoreConfig, device: Any, classes: list[Any]) -> None:
        """``classes``: the run's class set (``ClassInfo``), in label order."""
        self.cfg = cfg
        self.device = device
        self.classes = list(classes)
        self.class_ids = [c.id for c in self.classes]

    @cached_property
    def classifier(self) -> Any:
        return ClassifierScorer(self.cfg.classifier, self.device)

    @cached_property
    def clip(self) -> Any:
        return ClipScorer(self.cfg.clip_model, self.device)

    @cached_property
    def inception(self) -> Any:
        return InceptionScorer(self.cfg.inception_weights, self.device)

    @cached_property
    def class_embeddings(self) -> np.ndarray:
        """``C×D`` float32 L2-normalised CLIP embeddings of the class texts (never from the prompt cache: the same
        whatever was scored before)."""
        return self.clip.embed_texts(class_texts(self.classes), cache=False).cpu().numpy()

    @cached_property
    def imagenet_targets(self) -> list[int | None]:
        return imagenet_targets(self.class_ids)

    @cached_property
    def nsfw(self) -> Any:
        """The NSFW detector, or ``None`` when ``nsfw_model`` is ``none``."""
        if self.cfg.nsfw_model == NSFW_OFF:
            return None
        return NsfwScorer(self.cfg.nsfw_model, self.device)

    def load_all(self) -> None:
        """Load every network now (classifier first: an unknown name fails before the heavy loads)."""
        _ = self.classifier, self.clip, self.inception, self.nsfw


def check_inputs(cfg: ScoreConfig) -> None:
    """Cheap checks of every flag before any network loads: files exist, names are known."""
    if cfg.inception_weights not in (None, TINY_RANDOM):
        path, _ = resolve_inception_weights(cfg.inception_weights)
        if path is not None:
            check_state_dict(path)
    if cfg.classifier != TINY_RANDOM:
        timm_name(cfg.classifier)
    if cfg.reference is not None:
        detect_kind(Path(local_input(cfg.reference)))  # a URL is read from a local copy (io.storage)


def models_record(cfg: ScoreConfig) -> ModelsRecord:
    """``RUN/scores/models.json``: the scorers ``cfg`` names."""
    return ModelsRecord(clip=cfg.clip_model, inception_weights=cfg.inception_weights or DEFAULT_INCEPTION_WEIGHTS,
                        classifier=cfg.classifier, nsfw_detector=cfg.nsfw_model)


def summary_models(cfg: ScoreConfig) -> SummaryModels:
    """``summary.json``'s ``models``: :func:`models_record` plus the identity of the Inception weights.

    Raises:
        UserError: the Inception weights file does not exist.
    """
    return SummaryModels(**models_record(cfg).to_dict(),
                         inception_weights_id=resolve_inception_weights(cfg.inception_weights)[1])
