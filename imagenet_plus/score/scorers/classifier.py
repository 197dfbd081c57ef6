"""An ImageNet-1k classifier from timm: probability, top-1 and top-5 hit of each image's target class.

Default: ``convnext_base.fb_in22k_ft_in1k`` (ConvNeXt-B, ImageNet-22k pre-trained and fine-tuned on
ImageNet-1k: 85.8 % top-1 at 224 px for 15 GFLOPs), a strong classifier that still runs at a few hundred
images per second on one GPU; EVA-02 (88.7 %) costs ~7× more at its 448 px input. Any timm model name,
``hf-hub:ID``, a local folder saved with ``timm.models.save_for_hf`` (``config.json`` + weights), or
``tiny-random`` (timm's ``test_convnext`` architecture with random weights and 1000 classes).

Labels are ImageNet-1k's standard order (sorted wnids, ``timm.data.ImageNetInfo``); a class whose id is
not one of those 1000 wnids gets no classifier columns (null).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagenet_plus.errors import UserError
from imagenet_plus.io.cache import cache_dir
from imagenet_plus.models.hub import hub_model
from imagenet_plus.models.tiny import TINY_RANDOM, write_once

#: Default classifier (timm name with pretrained tag).
DEFAULT_CLASSIFIER = "convnext_base.fb_in22k_ft_in1k"
#: Number of ImageNet-1k classes the classifier must predict.
NUM_IMAGENET_CLASSES = 1000


def tiny_classifier_dir() -> Path:
    """Save (once) and return a folder holding timm's ``test_convnext`` with random weights and 1000 classes.

    Saved with ``timm.models.save_for_hf`` (``config.json`` + ``model.safetensors``) at a 64 px input size,
    and loaded back through ``timm.create_model("local-dir:FOLDER", pretrained=True)`` like any local model.
    """

    def build(folder: Path) -> None:
        import timm
        import torch
        from timm.models import save_for_hf

        torch.manual_seed(0)
        model = timm.create_model("test_convnext", pretrained=False, num_classes=NUM_IMAGENET_CLASSES)
        data_config = dict(model.pretrained_cfg)
        data_config.update(input_size=(3, 64, 64), crop_pct=0.875)
        save_for_hf(model, str(folder), safe_serialization=True,
                    data_config={k: data_config[k] for k in ("input_size", "interpolation", "mean", "std",
                                                            "crop_pct", "crop_mode")})

    return write_once(cache_dir("tiny-random", "classifier-test-convnext"), build)


def timm_name(name: str) -> str:
    """The string handed to ``timm.create_model`` for a ``--classifier`` value."""
    import timm

    if name == TINY_RANDOM:
        return f"local-dir:{tiny_classifier_dir()}"
    if name.startswith(("hf-hub:", "local-dir:")):
        return name
    if Path(name).exists():
        if not (Path(name) / "config.json").is_file():
            raise UserError(f"classifier folder {name} has no config.json (save it with timm.models.save_for_hf)")
        return f"local-dir:{name}"
    if "/" in name:
        return f"hf-hub:{name}"
    if not timm.is_model(name):
        raise UserError(f"unknown classifier '{name}': timm has no model of that name (see timm.list_models())")
    return name


#: Weight files of a timm model on the Hub, in the order timm looks for them.
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def timm_weights(model_id: str, what: str) -> tuple[str, dict[str, Any]]:
    """Where ``timm.create_model(model_id, pretrained=True)`` should take the weights from, decided first by
    :func:`~imagenet_plus.models.hub.hub_model` (the Hugging Face cache, else one short look at the Hub).

    Returns:
        ``(model id, extra create_model arguments)``: a cached ``hf-hub:`` model as ``local-dir:`` of its snapshot;
        a cached timm name with ``pretrained_cfg_overlay={"file": cached weights}``; anything else unchanged (timm
        downloads it: the Hub answered).

    Raises:
        ModelUnavailable: the weights are not cached and the Hub cannot be reached, or has no such repo.
    """
    import timm

    if model_id.startswith("hf-hub:"):
        repo = model_id[len("hf-hub:"):]
        found = hub_model(repo, what, "config.json")
        return (f"local-dir:{found}" if found != repo else model_id), {}
    if model_id.startswith("local-dir:"):
        return model_id, {}
    cfg = timm.models.get_pretrained_cfg(model_id)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:  # weights behind a URL of timm's own (older models): left to timm
        return model_id, {}
    files = (cfg.hf_hub_filename,) if getattr(cfg, "hf_hub_filename", None) else TIMM_WEIGHT_FILES
    found = hub_model(repo, what, files)
    if found == repo:
        return model_id, {}
    weights = next((Path(found) / f for f in files if (Path(found) / f).is_file()), None)
    return model_id, ({"pretrained_cfg_overlay": {"file": str(weights)}} if weights else {})


def imagenet_targets(class_ids: list[str]) -> list[int | None]:
    """ImageNet-1k label of each class id (a wnid), ``None`` for classes outside ImageNet-1k."""
    from timm.data import ImageNetInfo

    index = {wnid: i for i, wnid in enumerate(ImageNetInfo("imagenet-1k").label_names())}
    return [index.get(c) for c in class_ids]


class ClassifierScorer:
    """A timm ImageNet-1k classifier: softmax probabilities of ``uint8`` images.

    Args:
        name: a timm model name, ``hf-hub:ID``, a local folder, or ``tiny-random``.
        device: torch device to run on.
    """

    def __init__(self, name: str, device: Any = "cpu") -> None:
        import timm
        import torch
        from timm.data import resolve_model_data_config

        self.name = name
        model_id, weights = timm_weights(timm_name(name), f"classifier '{name}'")
        try:
            model = timm.create_model(model_id, pretrained=True, **weights)
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"cannot load classifier '{name}' (weights not cached and no network, or not a timm model "
                f"folder?): {first}"
            ) from None
        if getattr(model, "num_classes", None) != NUM_IMAGENET_CLASSES:
            raise UserError(
                f"classifier '{name}' predicts {getattr(model, 'num_classes', '?')} classes, "
                f"not the {NUM_IMAGENET_CLASSES} of ImageNet-1k"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        cfg = resolve_model_data_config(model)
        self.input_size = int(cfg["input_size"][-1])
        self.scale_size = int(self.input_size / float(cfg.get("crop_pct") or 1.0))
        self.interpolation = str(cfg.get("interpolation") or "bicubic")
        self.mean = torch.tensor(cfg["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], device=self.device).view(1, 3, 1, 1)

    def preprocess(self, images: list[Any]) -> Any:
        """timm's eval transform on ``uint8`` ``3×H×W`` tensors: resize the short side, centre crop, normalise.

        Written with torchvision's tensor functions rather than ``timm.data.create_transform`` (a PIL
        pipeline, one image at a time) so that a whole batch is resized at once on the model's device.
        """
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                "nearest": InterpolationMode.NEAREST}.get(self.interpolation, InterpolationMode.BICUBIC)
        out: list[Any] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(tuple(img.shape), []).append(i)
        for idx in groups.values():
            batch = torch.stack([images[i] for i in idx]).to(self.device)
            batch = F.resize(batch, [self.scale_size], interpolation=mode, antialias=True)
            batch = F.center_crop(batch, [self.input_size, self.input_size])
            batch = (batch.float() / 255.0 - self.mean) / self.std
            for j, i in enumerate(idx):
                out[i] = batch[j]
        return torch.stack(out)

    def forward(self, pixels: Any) -> Any:
        """Bare forward: preprocessed pixels → softmax probabilities (``B×1000`` float32)."""
        import torch

        with torch.inference_mode():
            return self.model(pixels).float().softmax(dim=-1)

    def probabilities(self, images: list[Any]) -> Any:
        """Softmax probabilities over ImageNet-1k (``N×1000`` float32 tensor) of ``uint8`` ``3×H×W`` images."""
        return self.forward(self.preprocess(images))
