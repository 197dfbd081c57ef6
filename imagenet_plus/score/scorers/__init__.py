"""Scorers used by the score stage: CLIP (transformers), InceptionV3 (torch-fidelity), an ImageNet classifier (timm).

Each module has the real loader (a Hub id or a local path; a missing model is a one-line
:class:`~imagenet_plus.errors.UserError`, never a fallback) and a builder of the ``tiny-random`` model of
the same architecture, saved once under the cache folder and loaded back through the real loader.
All scorers take the same input: a list of decoded images as ``uint8`` tensors of shape ``3×H×W``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from imagenet_plus.errors import UserError
from imagenet_plus.models.hub import hub_model


def decode_image(data: bytes, name: str) -> Any:
    """Decode image bytes once into the input every scorer takes: a ``uint8`` ``3×H×W`` tensor (RGB).

    PIL's ``convert("RGB")`` followed by the array's HWC→CHW permutation is exactly what torch-fidelity's
    image-folder reader does (``pil_to_tensor``), so features match its own.

    Raises:
        UserError: the bytes are not an image PIL can read (``name`` says which one).
    """
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"unreadable image {name}: {exc}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def pretrained_source(source: str, what: str) -> str:
    """Where transformers should load ``source`` from: a local folder as it is; a Hub id as
    :func:`~imagenet_plus.models.hub.hub_model` decides (its cached snapshot, or the id once the Hub answered).

    Called before transformers is imported, so no network is named in seconds.

    Raises:
        ModelUnavailable: a Hub id neither in the Hugging Face cache nor reachable, or not on the Hub.
    """
    return source if Path(source).exists() else hub_model(source, what, "config.json")


def load_pretrained(model_class: Any, processor_class: Any, source: str, what: str, device: Any) -> tuple[Any, Any]:
    """``model_class.from_pretrained(source)`` (eval mode, no gradients, on ``device``) and its processor.

    Args:
        model_class: a transformers auto/model class.
        processor_class: the matching processor class.
        source: a Hub id or a local folder.
        what: how the error names the model (``CLIP model 'openai/clip-vit-large-patch14'``).
        device: torch device.

    Raises:
        UserError: the model cannot be loaded (not a local folder, not cached while offline, a bad config).
    """
    try:
        model = model_class.from_pretrained(source).to(device).eval()
        processor = processor_class.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load {what} (not a local folder, and not in the Hugging Face cache while "
                        f"offline?): {first}") from None
    model.requires_grad_(False)
    return model, processor
