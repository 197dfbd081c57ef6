"""Training and testing for ``evaluate``: AdamW with a one-cycle schedule through accelerate, and torchmetrics
scores with ROC / precision-recall plots."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imagenet_plus.evaluate.config import EvaluateConfig
from imagenet_plus.evaluate.images import ImageDataset
from imagenet_plus.io.atomic import atomic_file
from imagenet_plus.pipeline.progress import progress_bar


def _loader(ds: ImageDataset, cfg: EvaluateConfig, shuffle: bool, seed: int) -> Any:
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        num_workers=cfg.workers,
        generator=g,
        drop_last=False,
        worker_init_fn=_seed_worker,
        persistent_workers=cfg.workers > 0,
    )


def _seed_worker(worker_id: int) -> None:
    import torch

    random.seed(torch.initial_seed() % 2**32)


def train_model(
    model: Any, ds: ImageDataset, epochs: int, cfg: EvaluateConfig, accelerator: Any, desc: str, seed: int
) -> tuple[Any, list[float]]:
    """Train ``model`` with AdamW and a one-cycle schedule; returns the (unwrapped) model and the loss per epoch."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    loader = _loader(ds, cfg, shuffle=True, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    steps = max(1, epochs * len(loader))  # this process's steps (the prepared loader is already split)
    # Not passed to accelerator.prepare: its wrapper steps the schedule once per process per step,
    # which would overrun OneCycleLR's total under several processes.
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.2)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    losses = []
    bar = progress_bar(steps, desc, unit="batch", enabled=accelerator.is_main_process)
    for _epoch in range(epochs):
        model.train()
        total, n = 0.0, 0
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            accelerator.backward(loss)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(y)
            n += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{total / max(n, 1):.3f}")
        losses.append(total / max(n, 1))
    bar.close()
    return accelerator.unwrap_model(model), losses


def predict(model: Any, ds: ImageDataset, cfg: EvaluateConfig, accelerator: Any, desc: str) -> tuple[Any, Any]:
    """Logits and labels of a whole dataset (gathered from every process)."""
    import torch

    loader = _loader(ds, cfg, shuffle=False, seed=0)
    model, loader = accelerator.prepare(model, loader)
    model.eval()
    outs, ys = [], []
    bar = progress_bar(len(loader), desc, unit="batch", enabled=accelerator.is_main_process)
    with torch.no_grad():
        for x, y in loader:
            logits, y = accelerator.gather_for_metrics((model(x), y))
            outs.append(logits.float().cpu())
            ys.append(y.cpu())
            bar.update(1)
    bar.close()
    return torch.cat(outs), torch.cat(ys)


@dataclass(frozen=True)
class PhaseMetrics:
    """One phase's scores on the real test set, as ``eval.json`` holds them under ``results.{phase}``.

    Attributes:
        accuracy: top-1 accuracy; ``top5_accuracy`` top-5 (None with 5 classes or fewer).
        precision_macro, recall_macro, f1_macro, roc_auc_macro: macro averages over the classes.
        chance_accuracy: 1 / classes.
        num_samples: test images.
        per_class_accuracy: class id → its accuracy.
        epochs, train_loss, train_seconds: how the phase was trained (filled in by the stage).
    """

    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    roc_auc_macro: float
    chance_accuracy: float
    num_samples: int
    per_class_accuracy: dict[str, float]
    top5_accuracy: float | None = None
    epochs: int | None = None
    train_loss: list[float] = field(default_factory=list)
    train_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of eval.json (``top5_accuracy`` only when computed)."""
        out = asdict(self)
        if out["top5_accuracy"] is None:
            del out["top5_accuracy"]
        return out


def classification_metrics(logits: Any, target: Any, class_ids: list[str]) -> tuple[PhaseMetrics, dict[str, Any]]:
    """torchmetrics scores of ``logits`` (N×K) against ``target`` (N) and the ROC / PR curves.

    Returns:
        (metrics for eval.json, curves for plotting: per-class and micro-averaged ROC and PR).
    """
    import torch
    from torchmetrics.classification import (
        BinaryPrecisionRecallCurve,
        BinaryROC,
        MulticlassAccuracy,
        MulticlassAUROC,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassPrecisionRecallCurve,
        MulticlassRecall,
        MulticlassROC,
    )

    k = len(class_ids)
    probs = torch.softmax(logits.float(), dim=1)
    per_class = MulticlassAccuracy(k, average="none")(probs, target)
    m = PhaseMetrics(
        accuracy=MulticlassAccuracy(k, average="micro")(probs, target).item(),
        precision_macro=MulticlassPrecision(k, average="macro")(probs, target).item(),
        recall_macro=MulticlassRecall(k, average="macro")(probs, target).item(),
        f1_macro=MulticlassF1Score(k, average="macro")(probs, target).item(),
        roc_auc_macro=MulticlassAUROC(k, average="macro")(probs, target).item(),
        chance_accuracy=1.0 / k,
        num_samples=int(target.numel()),
        per_class_accuracy={cid: round(float(v), 6) for cid, v in zip(class_ids, per_class.tolist(), strict=True)},
        top5_accuracy=MulticlassAccuracy(k, top_k=5, average="micro")(probs, target).item() if k > 5 else None,
    )
    fpr, tpr, _ = MulticlassROC(k)(probs, target)
    prec, rec, _ = MulticlassPrecisionRecallCurve(k)(probs, target)
    onehot = torch.nn.functional.one_hot(target, k).flatten()
    mfpr, mtpr, _ = BinaryROC()(probs.flatten(), onehot)
    mprec, mrec, _ = BinaryPrecisionRecallCurve()(probs.flatten(), onehot)
    curves = {"roc": (fpr, tpr, mfpr, mtpr), "pr": (prec, rec, mprec, mrec)}
    return m, curves


def plot_curves(curves: dict[str, Any], class_ids: list[str], title: str, out: Path, phase: str) -> dict[str, str]:
    """Write ``roc_{phase}.png`` and ``pr_{phase}.png``; per-class curves (up to 20 labelled) and the micro average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    slug = phase.replace("+", "_")
    for kind, (xs_all, ys_all, mx, my), xlabel, ylabel in (
        ("roc", curves["roc"], "false positive rate", "true positive rate"),
        ("pr", (curves["pr"][1], curves["pr"][0], curves["pr"][3], curves["pr"][2]), "recall", "precision"),
    ):
        fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
        labelled = len(class_ids) <= 20
        for i, cid in enumerate(class_ids):
            ax.plot(xs_all[i].numpy(), ys_all[i].numpy(), lw=0.8, alpha=0.7 if labelled else 0.25,
                    label=cid if labelled else None)
        ax.plot(mx.numpy(), my.numpy(), color="black", lw=2.2, label="micro average")
        if kind == "roc":
            ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{kind.upper()}: {title}", fontsize=10)
        ax.legend(fontsize=6 if labelled else 8, loc="lower right" if kind == "roc" else "lower left")
        fig.tight_layout()
        name = f"{kind}_{slug}.png"
        with atomic_file(out / name) as f:
            fig.savefig(f, format="png")
        plt.close(fig)
        files[kind] = name
    return files


def save_model(model: Any, path: Path) -> None:
    """The model's state dict, written atomically."""
    import torch

    with atomic_file(path) as f:
        torch.save(model.state_dict(), f)
