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

Preprocessing keeps aspect ratio. Real photos are rarely square and synthetic images always are, and
a model trained on square, centred synthetic images transfers worse to photos. Training images are
therefore cropped to a random photo-like aspect ratio and area, resized so the longer side fits,
and placed at a random offset on a square canvas (random margins); test images are letterboxed the
same way, centred, without randomness.

Metrics come from torchmetrics: accuracy, macro precision / recall / F1, macro one-vs-rest ROC-AUC,
top-5 accuracy when there are more than 5 classes, per-class accuracy, and the ROC / PR curves that
are plotted. Training runs through accelerate (``accelerate launch -m imagenet_plus evaluate …``
uses every GPU; on CPU it is one process).
"""

from __future__ import annotations

import io
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.contract import INFO_NAME
from imagenet_plus.errors import UserError
from imagenet_plus.pipeline.config import config_to_dict

#: Models built here without timm; any other name must be a timm model name.
BUILTIN_MODELS = ("small-cnn",)
#: Image file extensions read from image folders.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff")
#: Image members read from release tars.
TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
#: Phase names (keys of ``eval.json["results"]``).
PHASE_SYNTHETIC = "synthetic"
PHASE_FINETUNED = "synthetic+real"
PHASE_REAL = "real"
#: ImageNet mean colour, the fill of letterbox margins.
FILL_RGB = (124, 116, 104)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Most tar files one process keeps open while reading release shards (least recently used closed first).
MAX_OPEN_SHARDS = 32


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of ``imagenet-plus evaluate`` (the fields are its flags)."""

    train: str = ""
    test: str = ""
    out: str = ""
    finetune: str | None = None
    model: str = "small-cnn"
    weights: str | None = None
    epochs: int = 5
    finetune_epochs: int | None = None
    image_size: int = 64
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    workers: int = 0
    seed: int = 0
    min_crop: float = 0.5
    max_margin: float = 0.2
    explain: int = 0

    def __post_init__(self) -> None:
        src = "evaluate config"
        for name, hint in (
            ("train", "the synthetic release folder"),
            ("test", "a folder of real images in class-id subfolders"),
            ("out", "the output folder"),
        ):
            if not str(getattr(self, name)).strip():
                raise UserError(f"{src}: '{name}' is required ({hint})")
        for name in ("epochs", "image_size", "batch_size", "lr"):
            if getattr(self, name) <= 0:
                raise UserError(f"{src}: '{name.replace('_', '-')}' must be positive, got {getattr(self, name)}")
        if self.finetune_epochs is not None and self.finetune_epochs <= 0:
            raise UserError(f"{src}: 'finetune-epochs' must be positive, got {self.finetune_epochs}")
        if self.image_size < 16:
            raise UserError(f"{src}: 'image-size' must be at least 16, got {self.image_size}")
        if self.workers < 0 or self.weight_decay < 0 or self.seed < 0 or self.explain < 0:
            raise UserError(f"{src}: 'workers', 'weight-decay', 'seed' and 'explain' must be >= 0")
        if not 0.05 <= self.min_crop <= 1.0:
            raise UserError(f"{src}: 'min-crop' must be within 0.05..1, got {self.min_crop}")
        if not 0.0 <= self.max_margin < 0.9:
            raise UserError(f"{src}: 'max-margin' must be within 0..0.9, got {self.max_margin}")
        check_model_name(self.model)
        if self.weights is not None and not Path(self.weights).is_file():
            raise UserError(f"{src}: weights file not found: {self.weights}")


def check_model_name(name: str) -> None:
    """Raise ``UserError`` unless ``name`` is ``small-cnn`` or a model timm knows."""
    if name in BUILTIN_MODELS:
        return
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5] if name else []
        hint = f" (similar timm names: {', '.join(close)})" if close else ""
        raise UserError(f"evaluate config: unknown model {name!r}: use small-cnn or a timm model name{hint}")


# ------------------------------------------------------------------------------------------------
# Data: labelled image sources from release tars and image folders.


@dataclass(frozen=True)
class TarMember:
    """One image inside a tar: read by seeking to its data, so tars work as a map-style dataset."""

    tar: str
    offset: int
    size: int


@dataclass
class LabeledSet:
    """Images with class ids, in a fixed order."""

    name: str
    sources: list[Any]  # Path or TarMember
    class_ids: list[str]  # one per source

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.class_ids))


def _class_id_of_key(key: str) -> str | None:
    """``n01440764_000042`` → ``n01440764`` (keys are ``{class_id}_{index:06d}``)."""
    head, sep, tail = key.rpartition("_")
    return head if sep and head and tail.isdigit() else None


def release_shards(rel: Path, split: str = "train") -> list[Path]:
    """The tar shards of one split of a release (``REL/data/{split}-*.tar``, else ``REL/{split}-*.tar``)."""
    info = rel / INFO_NAME
    if info.is_file():
        try:
            data = json.loads(info.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"unreadable {info}: {exc}") from None
        splits = data.get("splits", data) if isinstance(data, dict) else {}
        names = splits.get(split, {}).get("filenames") if isinstance(splits.get(split), dict) else None
        if names:
            paths = []
            for n in names:
                for cand in (rel / n, rel / "data" / n):
                    if cand.is_file():
                        paths.append(cand)
                        break
                else:
                    raise UserError(f"{info} lists shard {n!r} that is not in {rel}")
            return paths
    for folder in (rel / "data", rel):
        found = sorted(folder.glob(f"{split}-*.tar"))
        if found:
            return found
    return []


def read_release(rel: Path, split: str = "train") -> LabeledSet:
    """Index the images of a release split by tar offsets (headers only; ``json`` read when keys lack ids).

    Raises:
        UserError: no shards, a corrupt shard (named), or a sample without an image member.
    """
    from imagenet_plus.io.tar import scan_tar

    shards = release_shards(rel, split)
    if not shards:
        raise UserError(f"no '{split}' shards in {rel} (expected {rel}/data/{split}-*.tar)")
    sources: list[Any] = []
    class_ids: list[str] = []
    for shard in shards:
        try:
            with open(shard, "rb") as f:
                by_key: dict[str, dict[str, Any]] = {}
                for m in scan_tar(f, str(shard), wanted=lambda name: name.endswith(".json")):
                    base = os.path.basename(m.name)
                    key, _, ext = base.partition(".")
                    prefix = os.path.dirname(m.name)
                    by_key.setdefault(f"{prefix}/{key}", {})[ext.lower()] = m
            for full_key, parts in by_key.items():
                image = next((parts[e] for e in TAR_IMAGE_EXTENSIONS if e in parts), None)
                if image is None:
                    raise UserError(f"{shard}: sample {full_key!r} has no image member")
                cid = _class_id_of_key(full_key.rsplit("/", 1)[-1])
                if cid is None and "json" in parts:
                    meta = json.loads(parts["json"].data)
                    cid = str(meta.get("class_id", "")) or None
                if cid is None:
                    raise UserError(f"{shard}: cannot tell the class id of sample {full_key!r}")
                sources.append(TarMember(str(shard), image.offset, image.size))
                class_ids.append(cid)
        except (OSError, json.JSONDecodeError, ValueError) as exc:
            raise UserError(f"corrupt or truncated shard {shard}: {exc}") from None
    return LabeledSet(str(rel), sources, class_ids)


def read_image_folder(folder: Path, role: str) -> LabeledSet:
    """Index an image folder with one subfolder per class id (torchvision's ImageFolder layout).

    Raises:
        UserError: the folder is missing or holds no images in class subfolders.
    """
    from torchvision.datasets.folder import make_dataset

    if not folder.is_dir():
        raise UserError(f"{role} folder not found: {folder}")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    items = make_dataset(
        str(folder), {c: i for i, c in enumerate(classes)}, extensions=IMAGE_EXTENSIONS, allow_empty=True
    ) if classes else []
    if not items:
        raise UserError(
            f"{role} folder {folder} holds no images: expected one subfolder per class id "
            f"(e.g. {folder}/n01440764/*.JPEG)"
        )
    return LabeledSet(str(folder), [Path(p) for p, _ in items], [classes[i] for _, i in items])


def read_training_set(path: Path) -> LabeledSet:
    """A release folder (has ``_info.json`` or train shards) or an image folder."""
    if not path.exists():
        raise UserError(f"train folder not found: {path}")
    if (path / "run.yaml").is_file() and (path / "generated").is_dir():
        raise UserError(
            f"{path} is a run directory: release it first ('imagenet-plus release {path} --out REL') "
            "and pass --train REL"
        )
    if (path / INFO_NAME).is_file() or release_shards(path, "train"):
        return read_release(path, "train")
    return read_image_folder(path, "train")


def _name_some(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def match_classes(train: LabeledSet, other: LabeledSet, role: str) -> None:
    """Every class of ``other`` must be a class of ``train`` (matched by class id).

    Raises:
        UserError: naming the classes of ``other`` that the training set lacks.
    """
    missing = sorted(set(other.classes) - set(train.classes))
    if missing:
        raise UserError(
            f"{role} set {other.name} has classes the training set {train.name} lacks: {_name_some(missing)} "
            f"(training classes: {_name_some(train.classes, 4)}); folders must be named by class id"
        )


class ImageDataset:
    """A map-style torch dataset over :class:`LabeledSet` sources (files or tar members).

    Tar members are read by seeking in their shard; at most ``max_open`` shards stay open per process (a
    least-recently-used cache of handles), whatever the number of shards.
    """

    def __init__(self, sources: list[Any], labels: list[int], transform: Any,
                 max_open: int = MAX_OPEN_SHARDS) -> None:
        from collections import OrderedDict

        self.sources = sources
        self.labels = labels
        self.transform = transform
        self.max_open = max(1, max_open)
        self._handles: OrderedDict[tuple[int, str], Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self.sources)

    def _read(self, src: Any) -> bytes:
        if isinstance(src, TarMember):
            # One handle per process: forked DataLoader workers must not share a file offset.
            key = (os.getpid(), src.tar)
            f = self._handles.get(key)
            if f is None:
                for old in [k for k in self._handles if k[0] != key[0]]:  # inherited from the parent: not ours
                    del self._handles[old]
                while len(self._handles) >= self.max_open:
                    self._handles.popitem(last=False)[1].close()
                f = self._handles[key] = open(src.tar, "rb")
            else:
                self._handles.move_to_end(key)
            f.seek(src.offset)
            return f.read(src.size)
        return Path(src).read_bytes()

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image, UnidentifiedImageError

        src = self.sources[i]
        try:
            img = Image.open(io.BytesIO(self._read(src))).convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"unreadable image {src}: {exc}") from None
        return self.transform(img), self.labels[i]


class AspectPreservingTransform:
    """Letterbox to a square keeping aspect ratio; in training, random photo-like crops and margins.

    torchvision has no letterbox transform (``Resize`` + ``CenterCrop`` cuts, ``Resize((s, s))``
    distorts), so the geometry is chosen here and done with torchvision's functional ops.

    Args:
        size: output side in pixels.
        train: random crop (area ``min_crop``..1, aspect 3:4..4:3), random margins, random flip.
        min_crop: smallest crop area as a fraction of the image.
        max_margin: largest total margin as a fraction of the side.
    """

    def __init__(self, size: int, train: bool, min_crop: float = 0.5, max_margin: float = 0.2) -> None:
        self.size = size
        self.train = train
        self.min_crop = min_crop
        self.max_margin = max_margin

    def __call__(self, img: Any) -> Any:
        import torch
        from torchvision.transforms import v2
        from torchvision.transforms.v2 import functional as F

        if self.train:
            top, left, h, w = v2.RandomResizedCrop.get_params(img, scale=(self.min_crop, 1.0), ratio=(3 / 4, 4 / 3))
            img = F.crop(img, top, left, h, w)
            if random.random() < 0.5:
                img = F.horizontal_flip(img)
            inner = max(8, round(self.size * (1.0 - random.uniform(0.0, self.max_margin))))
        else:
            inner = self.size
        w, h = img.size
        scale = inner / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        img = F.resize(img, [nh, nw], antialias=True)
        dx, dy = self.size - nw, self.size - nh
        left = random.randint(0, dx) if self.train else dx // 2
        top = random.randint(0, dy) if self.train else dy // 2
        img = F.pad(img, [left, top, dx - left, dy - top], fill=list(FILL_RGB))
        t = F.to_dtype(F.to_image(img), torch.float32, scale=True)
        return F.normalize(t, list(IMAGENET_MEAN), list(IMAGENET_STD))


# ------------------------------------------------------------------------------------------------
# Models


def build_small_cnn(num_classes: int) -> Any:
    """A small 4-block CNN (conv-BN-ReLU, pooling, global average pool) that trains on CPU in seconds."""
    from torch import nn

    def block(cin: int, cout: int) -> nn.Sequential:
        conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    return nn.Sequential(
        block(3, 32),
        nn.MaxPool2d(2),
        block(32, 64),
        nn.MaxPool2d(2),
        block(64, 128),
        nn.MaxPool2d(2),
        block(128, 256),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(256, num_classes),
    )


def build_model(name: str, num_classes: int, weights: str | None = None) -> Any:
    """``small-cnn`` or a timm model with a fresh ``num_classes`` head; no downloads.

    Args:
        name: ``small-cnn`` or a timm model name (``resnet18``, ``vit_tiny_patch16_224``, …).
        num_classes: size of the classifier head.
        weights: a local checkpoint: for timm, its backbone is loaded and the head is new when the class
            count differs; for ``small-cnn``, a state dict of the same class count.

    Raises:
        UserError: unknown model name, or a checkpoint that does not fit.
    """
    check_model_name(name)
    if name == "small-cnn":
        model = build_small_cnn(num_classes)
        if weights:
            import torch

            try:
                model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            except (RuntimeError, OSError, KeyError) as exc:
                raise UserError(f"weights {weights} do not fit small-cnn with {num_classes} classes: {exc}") from None
        return model
    import timm

    try:
        if weights:
            return timm.create_model(
                name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay={"file": str(weights)}
            )
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        raise UserError(f"cannot build model {name!r} with weights {weights}: {exc}") from None


# ------------------------------------------------------------------------------------------------
# Training and testing


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

    from imagenet_plus.pipeline.progress import progress_bar

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

    from imagenet_plus.pipeline.progress import progress_bar

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


def classification_metrics(logits: Any, target: Any, class_ids: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
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
    m: dict[str, Any] = {
        "accuracy": MulticlassAccuracy(k, average="micro")(probs, target).item(),
        "precision_macro": MulticlassPrecision(k, average="macro")(probs, target).item(),
        "recall_macro": MulticlassRecall(k, average="macro")(probs, target).item(),
        "f1_macro": MulticlassF1Score(k, average="macro")(probs, target).item(),
        "roc_auc_macro": MulticlassAUROC(k, average="macro")(probs, target).item(),
        "chance_accuracy": 1.0 / k,
        "num_samples": int(target.numel()),
    }
    if k > 5:
        m["top5_accuracy"] = MulticlassAccuracy(k, top_k=5, average="micro")(probs, target).item()
    per_class = MulticlassAccuracy(k, average="none")(probs, target)
    m["per_class_accuracy"] = {cid: round(float(v), 6) for cid, v in zip(class_ids, per_class.tolist(), strict=True)}
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
        tmp = out / (name + ".partial")
        fig.savefig(tmp, format="png")
        plt.close(fig)
        os.replace(tmp, out / name)
        files[kind] = name
    return files


def _save_model(model: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".partial")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# Explanation maps (Grad-CAM)


def gradcam_target_layer(model: Any, name: str) -> Any:
    """The layer Grad-CAM reads: the model's last ``Conv2d``.

    Raises:
        UserError: the model has attention blocks (Grad-CAM of a transformer needs a token reshape that is
            model-specific) or no convolution at all, naming the model.
    """
    from torch import nn

    if any("attention" in type(m).__name__.lower() for m in model.modules()):
        raise UserError(f"--explain: Grad-CAM maps cannot be computed for model {name!r}: it is attention-based "
                        "(use a convolutional model such as small-cnn or resnet18)")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError(f"--explain: Grad-CAM maps cannot be computed for model {name!r}: it has no Conv2d layer")
    return convs[-1]


def gradcam_maps(model: Any, images: Any, targets: list[int], name: str) -> Any:
    """Grad-CAM maps (``pytorch-grad-cam``) of ``images`` (``N×3×H×W``) for the given target classes.

    Returns:
        ``N×H×W`` float32 maps in ``[0, 1]``, at the input's size.

    Raises:
        UserError: the maps cannot be computed for this model (named).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = gradcam_target_layer(model, name)
    was_training = model.training
    model.eval()
    try:
        with GradCAM(model=model, target_layers=[layer]) as cam:
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    except (RuntimeError, ValueError, IndexError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--explain: Grad-CAM maps cannot be computed for model {name!r}: {first}") from None
    finally:
        model.train(was_training)
    return maps


def explain_phase(model: Any, ds: ImageDataset, class_ids: list[str], per_class: int, out: Path, phase: str,
                  name: str) -> dict[str, str]:
    """Grad-CAM of ``per_class`` real test images per class for one phase's model, as a PNG grid.

    Writes ``gradcam_{phase}.png`` (one row per class: each image beside its map over it, titled with the
    predicted class) and ``gradcam_{phase}.npz`` (``images`` N×H×W×3 uint8, ``maps`` N×H×W, ``labels``,
    ``predictions``). Maps are taken for the true class of each image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from pytorch_grad_cam.utils.image import show_cam_on_image

    picked: list[int] = []
    for label in range(len(class_ids)):
        picked += [i for i, y in enumerate(ds.labels) if y == label][:per_class]
    if not picked:
        return {}
    device = next(model.parameters()).device
    x = torch.stack([ds[i][0] for i in picked]).to(device)
    labels = [ds.labels[i] for i in picked]
    maps = gradcam_maps(model, x, labels, name)
    with torch.no_grad():
        predictions = model(x).argmax(dim=1).cpu().numpy()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (x.cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy().astype(np.float32)
    rows = sorted(set(labels))
    cols = max(labels.count(r) for r in rows) * 2
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.7 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    slot = {r: 0 for r in rows}
    for k, label in enumerate(labels):
        r, c = rows.index(label), slot[label]
        slot[label] += 2
        axes[r, c].imshow(rgb[k])
        axes[r, c].set_title(class_ids[label], fontsize=7)
        axes[r, c + 1].imshow(show_cam_on_image(rgb[k], maps[k], use_rgb=True))
        axes[r, c + 1].set_title(f"→ {class_ids[int(predictions[k])]}", fontsize=7)
    fig.suptitle(f"Grad-CAM, {phase} model, real test images", fontsize=9)
    fig.tight_layout()
    stem = f"gradcam_{phase.replace('+', '_')}"
    fig.savefig(out / f"{stem}.png", dpi=100)
    plt.close(fig)
    np.savez_compressed(out / f"{stem}.npz", images=(rgb * 255).round().astype(np.uint8),
                        maps=np.asarray(maps, np.float32), labels=np.asarray(labels),
                        predictions=np.asarray(predictions))
    return {"grid": f"{stem}.png", "maps": f"{stem}.npz"}


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
    train_set = read_training_set(Path(cfg.train))
    test_set = read_image_folder(Path(cfg.test), "test")
    match_classes(train_set, test_set, "test")
    real_set = None
    if cfg.finetune:
        real_set = read_image_folder(Path(cfg.finetune), "finetune")
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
            metrics.update(epochs=epochs, train_loss=[round(v, 5) for v in losses], train_seconds=round(seconds, 2))
            results[phase] = metrics
            plots[phase] = plot_curves(curves, test_classes, f"{phase} → real test", out, phase)
            _save_model(model, out / f"model_{phase.replace('+', '_')}.pt")
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
        from imagenet_plus.io.atomic import write_json_atomic

        write_json_atomic(out / "eval.json", report)
    accelerator.wait_for_everyone()
    return report
