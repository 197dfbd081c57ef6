"""Evaluate a release by training on it and testing on real images (classification accuracy score).

Input: a synthetic training set ``--train`` (a release folder REL, read from ``REL/data/train-*.tar``,
or an image folder with one subfolder per class id), a real test set ``--test`` (an image folder with
one subfolder per class id, as ImageNet's validation set sorted into wnid folders) and optionally a
real training set ``--finetune`` (same layout). Output: the folder ``--out`` with ``eval.json``, ROC
and precision-recall plots per phase (``roc_{phase}.png``, ``pr_{phase}.png``) and the trained
weights (``model_{phase}.pt``).

Phases: ``synthetic`` (train on the synthetic set, test on real); with ``--finetune`` also
``synthetic+real`` (the synthetic model fine-tuned on real images) and ``real`` (a real-only
baseline of the same model and budget).

Classes are matched by class id (folder name = the release's ``class_id``); a test class that the
training set lacks is an error naming it. When the training set has more classes than the test set,
the scores are computed over the test set's classes only (the other outputs are ignored) and
``eval.json`` says so.

Preprocessing keeps aspect ratio (see :mod:`imagenet_plus.evaluate.images`, which also reads the sets).

Metrics come from torchmetrics: accuracy, macro precision / recall / F1, macro one-vs-rest ROC-AUC,
top-5 accuracy when there are more than 5 classes, per-class accuracy, and the ROC / PR curves that
are plotted (:mod:`imagenet_plus.evaluate.train`). Training runs through accelerate (``accelerate launch -m
imagenet_plus evaluate …`` uses every GPU; on CPU it is one process). Models: :mod:`imagenet_plus.evaluate.model`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from imagenet_plus.contract import EVAL_JSON
from imagenet_plus.errors import UserError
from imagenet_plus.evaluate.config import EvaluateConfig
from imagenet_plus.evaluate.images import (
    AspectPreservingTransform,
    ImageDataset,
    match_classes,
    read_image_folder,
    read_training_set,
)
from imagenet_plus.evaluate.model import build_model, explain_phase, gradcam_target_layer
from imagenet_plus.evaluate.train import classification_metrics, plot_curves, predict, save_model, train_model
from imagenet_plus.io.atomic import write_json_atomic
from imagenet_plus.io.storage import local_input
from imagenet_plus.pipeline.config import config_to_dict

__all__ = ["EvaluateConfig", "run_evaluate"]

log = logging.getLogger(__name__)

#: Phase names (keys of ``eval.json["results"]``).
PHASE_SYNTHETIC = "synthetic"
PHASE_FINETUNED = "synthetic+real"
PHASE_REAL = "real"


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Train on the synthetic set (and optionally fine-tune / train on real), test on real; write ``eval.json``.

    Args:
        cfg: the evaluation settings.

    Returns:
        The contents of ``eval.json``.

    Raises:
        UserError: missing or empty folders, class sets that do not match (named), an unknown model.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"evaluate output {out} is a file, not a folder")
    train_set = read_training_set(Path(local_input(cfg.train)))  # URLs are read from local copies (io.storage)
    test_set = read_image_folder(Path(local_input(cfg.test)), "test")
    match_classes(train_set, test_set, "test")
    real_set = None
    if cfg.finetune:
        real_set = read_image_folder(Path(local_input(cfg.finetune)), "finetune")
        match_classes(train_set, real_set, "finetune")
    train_classes = train_set.classes
    if len(train_classes) < 2:
        raise UserError(f"training set {train_set.name} has {len(train_classes)} class; at least 2 are needed")
    test_classes = test_set.classes
    if len(test_classes) < 2:
        raise UserError(f"test set {test_set.name} has {len(test_classes)} class; at least 2 are needed")
    index = {c: i for i, c in enumerate(train_classes)}
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    train_tf = AspectPreservingTransform(cfg.image_size, True, cfg.min_crop, cfg.max_margin)
    test_tf = AspectPreservingTransform(cfg.image_size, False)
    synth_ds = ImageDataset(train_set.sources, [index[c] for c in train_set.class_ids], train_tf)
    test_ds = ImageDataset(test_set.sources, [index[c] for c in test_set.class_ids], test_tf)
    # Scores over the test classes only: the other outputs of the head are ignored.
    cols = torch.tensor([index[c] for c in test_classes])
    remap = torch.full((len(train_classes),), -1, dtype=torch.long)
    remap[cols] = torch.arange(len(test_classes))

    results: dict[str, Any] = {}
    plots: dict[str, Any] = {}
    explained: dict[str, Any] = {}

    def evaluate_phase(phase: str, model: Any, losses: list[float], seconds: float, epochs: int) -> None:
        logits, y = predict(model, test_ds, cfg, accelerator, f"evaluate: test {phase}")
        if accelerator.is_main_process:
            metrics, curves = classification_metrics(logits[:, cols], remap[y], test_classes)
            metrics = replace(metrics, epochs=epochs, train_loss=[round(v, 5) for v in losses],
                              train_seconds=round(seconds, 2))
            results[phase] = metrics.to_dict()
            plots[phase] = plot_curves(curves, test_classes, f"{phase} → real test", out, phase)
            save_model(model, out / f"model_{phase.replace('+', '_')}.pt")
            if cfg.explain:
                explained[phase] = explain_phase(model, test_ds, train_classes, cfg.explain, out, phase, cfg.model)

    set_seed(cfg.seed)
    t0 = time.perf_counter()
    model = build_model(cfg.model, len(train_classes), cfg.weights)
    if cfg.explain:
        gradcam_target_layer(model, cfg.model)  # fail before training, not after
    model, losses = train_model(model, synth_ds, cfg.epochs, cfg, accelerator, "evaluate: train synthetic", cfg.seed)
    evaluate_phase(PHASE_SYNTHETIC, model, losses, time.perf_counter() - t0, cfg.epochs)
    if real_set is not None:
        ft_epochs = cfg.finetune_epochs or cfg.epochs
        real_ds = ImageDataset(real_set.sources, [index[c] for c in real_set.class_ids], train_tf)
        t0 = time.perf_counter()
        desc = "evaluate: fine-tune real"
        model, losses = train_model(model, real_ds, ft_epochs, cfg, accelerator, desc, cfg.seed + 1)
        evaluate_phase(PHASE_FINETUNED, model, losses, time.perf_counter() - t0, ft_epochs)
        set_seed(cfg.seed)
        t0 = time.perf_counter()
        model = build_model(cfg.model, len(train_classes), cfg.weights)
        model, losses = train_model(model, real_ds, ft_epochs, cfg, accelerator, "evaluate: train real", cfg.seed + 2)
        evaluate_phase(PHASE_REAL, model, losses, time.perf_counter() - t0, ft_epochs)

    report = {
        "config": config_to_dict(cfg),
        "train_samples": len(train_set.sources),
        "test_samples": len(test_set.sources),
        "finetune_samples": len(real_set.sources) if real_set is not None else None,
        "train_classes": len(train_classes),
        "test_classes": test_classes,
        "classes_only_in_train": sorted(set(train_classes) - set(test_classes)),
        "note": (
            "scores are computed over the test set's classes only"
            if len(test_classes) < len(train_classes)
            else "train and test have the same classes"
        ),
        "results": results,
        "plots": plots,
        "explain": explained,
        "world_size": accelerator.num_processes,
    }
    if accelerator.is_main_process:
        write_json_atomic(out / EVAL_JSON, report)
        log.debug("evaluate: wrote %s", out / EVAL_JSON)
    accelerator.wait_for_everyone()
    return report
