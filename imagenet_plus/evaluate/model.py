"""Models for ``evaluate``: a small CNN or any timm model (no downloads), and Grad-CAM maps of their decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagenet_plus.errors import UserError
from imagenet_plus.evaluate.config import check_model_name
from imagenet_plus.evaluate.images import IMAGENET_MEAN, IMAGENET_STD, ImageDataset


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
