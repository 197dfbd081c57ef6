"""torch-fidelity's InceptionV3 (pool3 2048-d features and ``logits_unbiased``), the FID/KID/IS network.

The extractor takes ``uint8`` ``B×3×H×W`` tensors and resizes them to 299 px itself (TF1-compatible
bilinear, in float32): that is why the score stage feeds it the decoded ``uint8`` image and nothing resized
(:meth:`InceptionScorer.features`), so its FID equals ``torch_fidelity.calculate_metrics``.
Real reference photos, of any shape, are cut to their largest centred square (:func:`center_crop`, exact
in ``uint8``) and go through :meth:`InceptionScorer.features_full_batch`: each square is resized to 299 px
in float32 by the extractor's own resize, and the unrounded 299 px batch runs through the same network, so
that photos of different sizes share full batches and their features are torch-fidelity's on the crops.

Weights: torch-fidelity's default file (downloaded once by torch-fidelity into the torch hub cache), a
local ``.pth`` (``--inception-weights PATH``) or ``tiny-random``: random weights of the same architecture
with batch-norm running statistics calibrated on varied images, so that features vary between images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from imagenet_plus.errors import UserError
from imagenet_plus.io.cache import cache_dir
from imagenet_plus.models.hub import url_file
from imagenet_plus.models.tiny import TINY_RANDOM, write_once

#: Feature layers the score stage asks for.
FEATURES = ("2048", "logits_unbiased")
#: Name under which torch-fidelity registers its InceptionV3 extractor.
EXTRACTOR_NAME = "inception-v3-compat"
#: Pool3 feature size.
POOL_DIM = 2048
#: InceptionV3's input side: torch-fidelity resizes every image to ``INPUT_SIZE``×``INPUT_SIZE``.
INPUT_SIZE = 299


#: torch-fidelity's InceptionV3 layers from the normalised 299 px input to pool3, in the order of its ``forward``.
TRUNK = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_2",
         "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a",
         "Mixed_7b", "Mixed_7c", "AvgPool")


def center_crop(image: Any) -> Any:
    """The largest centred square of a ``uint8`` ``3×H×W`` image (exact: pixels are copied, not resampled).

    The square's side is ``min(H, W)``; its top-left corner is at ``((H - side) // 2, (W - side) // 2)``, the
    box PIL's ``crop((left, top, left + side, top + side))`` cuts with the same integer offsets.
    """
    _channels, height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[:, top:top + side, left:left + side].contiguous()


def _weights_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _calibration_images(count: int, seed: int) -> Any:
    """Varied ``uint8`` images (noise of several scales, gradients, flat colours) for batch-norm statistics."""
    import torch

    g = torch.Generator().manual_seed(seed)
    side = 96
    out = []
    for i in range(count):
        kind = i % 4
        if kind == 0:  # fine noise
            img = torch.randint(0, 256, (3, side, side), generator=g).float()
        elif kind == 1:  # coarse blobs
            small = torch.rand((1, 3, 6, 6), generator=g) * 255
            img = torch.nn.functional.interpolate(small, size=(side, side), mode="bilinear")[0]
        elif kind == 2:  # gradient with noise
            ramp = torch.linspace(0, 255, side)
            img = torch.stack([ramp[None, :].expand(side, side), ramp[:, None].expand(side, side),
                               torch.full((side, side), float(torch.randint(0, 256, (1,), generator=g)))])
            img = img + torch.randn((3, side, side), generator=g) * 20
        else:  # flat colour + mild noise
            img = torch.rand((3, 1, 1), generator=g) * 255 + torch.randn((3, side, side), generator=g) * 10
        out.append(img.clamp(0, 255).to(torch.uint8))
    return torch.stack(out)


def tiny_inception_weights() -> Path:
    """Save (once) and return a ``.pth`` of random InceptionV3 weights with calibrated batch-norm statistics.

    The architecture is torch-fidelity's own ``FeatureExtractorInceptionV3`` (its ``state_dict`` keys and
    shapes), so the file loads through ``feature_extractor_weights_path`` like the real weights.
    """

    def build(folder: Path) -> None:
        import torch
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        class _Unloaded(FeatureExtractorInceptionV3):
            """The real architecture, left at PyTorch's random initialisation (an empty state dict is skipped)."""

            def load_state_dict(self, state_dict, strict=True, assign=False):  # type: ignore[no-untyped-def]
                if not state_dict:
                    return None
                return super().load_state_dict(state_dict, strict=strict, assign=assign)

        folder.mkdir(parents=True, exist_ok=True)
        empty = folder / "empty.pth"
        torch.save({}, empty)
        torch.manual_seed(0)
        model = _Unloaded(EXTRACTOR_NAME, list(FEATURES), feature_extractor_weights_path=str(empty))
        empty.unlink()
        # Calibrate batch norm: cumulative running statistics over a batch of varied images.
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        calibration = _calibration_images(8, seed=0)
        with torch.no_grad():
            model(calibration)
        model.eval()
        # Random fc weights at PyTorch's init give near-uniform p(y|x) (IS ~ 1). Re-draw them orthogonal to
        # the mean pool feature and scaled so that logits vary by about one unit between calibration images.
        with torch.no_grad():
            pool, _ = model(calibration)
            mean = torch.nn.functional.normalize(pool.mean(0), dim=0)
            w = torch.randn_like(model.fc.weight)
            w = w - (w @ mean)[:, None] * mean[None, :]
            spread = (pool - pool.mean(0)).norm(dim=1).mean()
            model.fc.weight.copy_(w * (1.0 / float(spread)))
            model.fc.bias.zero_()
        torch.save(model.state_dict(), folder / "inception.pth")

    return write_once(cache_dir("tiny-random", "inception-v3"), build) / "inception.pth"


def resolve_inception_weights(weights: str | None) -> tuple[str | None, str]:
    """``--inception-weights`` → (path for torch-fidelity or None for its default, identity for cache keys).

    Raises:
        UserError: the weights file does not exist.
    """
    if weights is None or weights in ("", "default"):
        return None, "torch-fidelity-default-6726825d"
    path = tiny_inception_weights() if weights == TINY_RANDOM else Path(weights)
    if not path.is_file():
        raise UserError(f"inception weights file not found: {path}")
    return str(path), f"sha256-{_weights_sha(path)}"


def check_state_dict(path: str | Path) -> None:
    """Refuse a weights file that is not a plain state dict (names → tensors), without running its pickle code.

    torch-fidelity loads ``feature_extractor_weights_path`` with ``torch.load(weights_only=False)``, which
    executes whatever the pickle holds; the file is first opened here with ``weights_only=True``.

    Raises:
        UserError: the file cannot be read, is not a torch file, holds objects other than tensors, or is not a
            mapping of names to tensors.
    """
    import pickle

    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise UserError(f"cannot read inception weights file {path}: {exc}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError, TypeError, KeyError,
            IndexError) as exc:  # what the unpickler raises on foreign bytes (KeyError: an unknown opcode)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"inception weights file {path} is not a PyTorch state dict "
                        f"(refused by torch.load(weights_only=True)): {first}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in data.items()):
        raise UserError(f"inception weights file {path} is not a PyTorch state dict of tensors "
                        f"(found {type(data).__name__})")


class InceptionScorer:
    """torch-fidelity's InceptionV3 on a device: pool3 features and unbiased logits of ``uint8`` images.

    Args:
        weights: ``None`` (torch-fidelity's default weights), a ``.pth`` path, or ``tiny-random``.
        device: torch device to run on.
    """

    def __init__(self, weights: str | None, device: Any = "cpu") -> None:
        import pickle

        import torch
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3

        self.weights = weights
        path, self.weights_id = resolve_inception_weights(weights)
        if path is not None:
            check_state_dict(path)
        else:  # torch-fidelity's default weights: in torch.hub's checkpoint folder, or downloadable now
            url_file(URL_INCEPTION_V3, Path(torch.hub.get_dir()) / "checkpoints" / Path(URL_INCEPTION_V3).name,
                     "torch-fidelity's InceptionV3 weights file", "pass --inception-weights PATH")
        try:
            model = FeatureExtractorInceptionV3(EXTRACTOR_NAME, list(FEATURES), feature_extractor_weights_path=path)
        except RuntimeError as exc:  # load_state_dict: missing keys / size mismatch; or not a torch file
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            if not lines or "state_dict" not in lines[0]:
                raise UserError(f"inception weights file {path} is not a PyTorch state dict: {exc}") from None
            detail = lines[1] if len(lines) > 1 else lines[0]
            raise UserError(
                f"inception weights file {path} does not fit torch-fidelity's InceptionV3 (wrong shapes or keys): "
                f"{detail}"
            ) from None
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as exc:
            raise UserError(f"inception weights file {path} is not a PyTorch state dict: {exc}") from None
        except OSError as exc:  # default weights absent and no network
            if path is not None:
                raise UserError(f"cannot read inception weights file {path}: {exc}") from None
            raise UserError(
                f"torch-fidelity's default InceptionV3 weights are not cached and cannot be downloaded "
                f"({URL_INCEPTION_V3}): {exc}; pass --inception-weights PATH"
            ) from None
        self.device = torch.device(device)
        self.model = model.to(self.device)

    def forward(self, images: Any) -> tuple[Any, Any]:
        """Bare forward of a ``uint8`` ``B×3×H×W`` tensor → (pool3 ``B×2048``, logits_unbiased ``B×1008``)."""
        import torch

        with torch.inference_mode():
            pool, logits = self.model(images.to(self.device))
        return pool, logits

    def forward_resized(self, images: Any) -> tuple[Any, Any]:
        """The network on a float ``B×3×299×299`` batch already resized by :meth:`resize_to_input`.

        torch-fidelity's ``forward`` takes only ``uint8`` (it asserts the dtype), and would hence need the
        resized images rounded to whole grey levels. This is its ``forward`` from the step after its resize
        on: ``(x - 128) / 128``, the :data:`TRUNK` layers, pool3, then ``logits_unbiased`` = pool3 times the fc
        weights (no bias). Written out here because torch-fidelity has no entry point past its dtype check;
        a test checks it against torch-fidelity's own ``forward``.

        Returns:
            (pool3 ``B×2048``, logits_unbiased ``B×1008``), float32, on the device.
        """
        import torch

        model = self.model
        with torch.inference_mode():
            x = (images.to(self.device, model.feature_extractor_internal_dtype) - 128) / 128
            for name in TRUNK:
                x = getattr(model, name)(x)
            pool = torch.flatten(x, 1)
            logits = pool.mm(model.fc.weight.T)
        return pool.to(torch.float32), logits.to(torch.float32)

    def resize_to_input(self, image: Any) -> Any:
        """A ``uint8`` ``3×H×W`` image → ``1×3×299×299`` on the device, resized as torch-fidelity's extractor does.

        The extractor's own steps: the cast to its internal dtype (float32), then
        ``interpolate_bilinear_2d_like_tensorflow1x(align_corners=False)`` to 299 px; the result is not rounded.
        A 299×299 image comes out unchanged (that resize is then the identity).
        """
        import torch
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        x = image[None].to(self.device, self.model.feature_extractor_internal_dtype)
        with torch.inference_mode():
            return interpolate_bilinear_2d_like_tensorflow1x(x, size=(INPUT_SIZE, INPUT_SIZE), align_corners=False)

    def features(self, images: list[Any]) -> tuple[Any, Any]:
        """Pool3 features and unbiased logits (float32, CPU) of ``uint8`` ``3×H×W`` images of any sizes.

        torch-fidelity's own ``forward``: images of the same size go through the network together, and the
        extractor resizes each to 299 px (the generated images, all of one size in a run).
        """
        import torch

        pools: list[Any] = [None] * len(images)
        logits: list[Any] = [None] * len(images)
        for _shape, idx in _group_by_shape(images).items():
            pool, logit = self.forward(torch.stack([images[i] for i in idx]))
            for j, i in enumerate(idx):
                pools[i], logits[i] = pool[j], logit[j]
        if not images:
            return torch.zeros((0, POOL_DIM)), torch.zeros((0, 1008))
        return torch.stack(pools).float().cpu(), torch.stack(logits).float().cpu()

    def features_full_batch(self, images: list[Any]) -> tuple[Any, Any]:
        """Pool3 features and unbiased logits (float32, CPU) of ``uint8`` ``3×H×W`` images of any sizes, in one batch.

        Each image is resized on its own to 299 px in float (:meth:`resize_to_input`) and the batch runs through
        :meth:`forward_resized`: the features :meth:`features` gives (torch-fidelity's, up to floating-point
        rounding), but images of different sizes share one network batch (the reference's photos).
        """
        import torch

        if not images:
            return torch.zeros((0, POOL_DIM)), torch.zeros((0, 1008))
        pool, logits = self.forward_resized(torch.cat([self.resize_to_input(img) for img in images]))
        return pool.cpu(), logits.cpu()


def _group_by_shape(images: list[Any]) -> dict[tuple[int, ...], list[int]]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    return groups
