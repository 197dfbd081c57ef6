"""An independent NSFW check: a Hub image classifier gives each image its probability of being NSFW.

Some generators ship no safety checker (``stabilityai/sd-turbo``), so their ``nsfw`` flag is always false.
This scorer runs an image classifier loaded with transformers' ``AutoModelForImageClassification`` and
``AutoImageProcessor`` (by default ``Falconsai/nsfw_image_detection``, a ViT with labels ``normal``/``nsfw``;
any Hub id or local folder of an image classifier works) and returns, per image, the summed softmax
probability of its NSFW labels (:data:`NSFW_LABELS`, matched case-insensitively against the model's
``id2label``). ``tiny-random`` builds a tiny random ViT of the same architecture with labels
``{0: normal, 1: nsfw}``, saved once under the cache folder and loaded back through the same loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagenet_plus.errors import UserError
from imagenet_plus.io.cache import cache_dir
from imagenet_plus.models.tiny import TINY_RANDOM, write_once
from imagenet_plus.score.scorers import load_pretrained, pretrained_source

#: Default detector (a Hub id; must be in the local Hugging Face cache when offline).
DEFAULT_NSFW = "Falconsai/nsfw_image_detection"
#: ``nsfw_model`` value that turns the check off.
NSFW_OFF = "none"
#: Label names (lower case) that count as NSFW; P(nsfw) is the sum of their probabilities.
NSFW_LABELS = ("nsfw", "porn", "hentai", "sexy", "explicit", "unsafe")
#: Labels of the tiny random detector (the default detector's labels).
TINY_LABELS = {0: "normal", 1: "nsfw"}


def tiny_nsfw_dir(image_size: int = 32) -> Path:
    """Save (once) and return the folder of a tiny random ``ViTForImageClassification`` with its processor.

    Its weights are random, its head's bias favours ``normal`` (P(nsfw) ≈ 0.003, still varying per image),
    so the offline demo and tests keep their images unless a test builds a detector that flags them.
    """

    def build(folder: Path) -> None:
        import torch
        from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

        torch.manual_seed(0)
        config = ViTConfig(
            hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=image_size,
            patch_size=8, id2label=dict(TINY_LABELS), label2id={v: k for k, v in TINY_LABELS.items()},
        )
        model = ViTForImageClassification(config)
        with torch.no_grad():  # random weights, but a head biased to "normal": the demo keeps its images
            model.classifier.bias.copy_(torch.tensor([3.0, -3.0]))
        model.save_pretrained(folder, safe_serialization=True)
        ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)

    return write_once(cache_dir("tiny-random", f"nsfw-vit-normal-{image_size}"), build)


class NsfwScorer:
    """A loaded NSFW image classifier.

    Args:
        model_id: a Hub id, a local folder, or ``tiny-random``.
        device: torch device to run on.

    Raises:
        UserError: the model cannot be loaded, or none of its labels is an NSFW label.
    """

    def __init__(self, model_id: str = DEFAULT_NSFW, device: Any = "cpu") -> None:
        self.model_id = model_id
        source = str(tiny_nsfw_dir()) if model_id == TINY_RANDOM else model_id
        if (source != model_id or Path(model_id).exists()) and not (Path(source) / "config.json").is_file():
            raise UserError(f"NSFW detector folder {source} has no config.json")
        what = f"NSFW detector '{model_id}'"
        source = pretrained_source(source, what)
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model, self.processor = load_pretrained(AutoModelForImageClassification, AutoImageProcessor, source,
                                                     what, device)
        self.device = torch.device(device)
        labels = {int(i): str(name) for i, name in self.model.config.id2label.items()}
        self.nsfw_indices = sorted(i for i, name in labels.items() if name.strip().lower() in NSFW_LABELS)
        if not self.nsfw_indices:
            raise UserError(f"NSFW detector '{model_id}' has no NSFW label among {sorted(labels.values())} "
                            f"(expected one of {', '.join(NSFW_LABELS)})")
        self.labels = labels

    def score(self, images: Any) -> Any:
        """P(nsfw) per image.

        Args:
            images: ``uint8`` images, a ``N×3×H×W`` tensor or a list of ``3×H×W`` tensors (RGB).

        Returns:
            ``np.ndarray`` of shape ``(N,)``, float64 in [0, 1].
        """
        import numpy as np
        import torch

        batch = list(images)
        if not batch:
            return np.zeros((0,), dtype=np.float64)
        pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.inference_mode():
            logits = self.model(pixel_values=pixels).logits.float()
        probs = torch.softmax(logits, dim=-1)[:, self.nsfw_indices].sum(dim=-1)
        return probs.clamp(0.0, 1.0).cpu().numpy().astype(np.float64)

    def record(self) -> dict[str, Any]:
        """What ran, for ``models.json`` and the dataset card: the detector's id and the labels counted as NSFW."""
        return {"nsfw_detector": self.model_id, "nsfw_labels": [self.labels[i] for i in self.nsfw_indices]}
