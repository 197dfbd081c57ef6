"""CLIP image/text embeddings through transformers (``CLIPModel`` + ``CLIPProcessor``).

torchmetrics' ``CLIPScore`` crashes with transformers 5 and only returns batch means, so the score stage
embeds images and texts here and applies the same formula itself (:func:`imagenet_plus.metrics.clip_score`).
Images are preprocessed by the processor's torchvision backend from ``uint8`` ``3×H×W`` tensors, batched
and on the model's device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagenet_plus.errors import UserError
from imagenet_plus.io.cache import cache_dir
from imagenet_plus.models.tiny import TINY_RANDOM, tiny_clip_tokenizer, write_once
from imagenet_plus.score.scorers import load_pretrained, pretrained_source

#: Default CLIP model (a Hub id; must be in the local Hugging Face cache when offline).
DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def tiny_clip_dir(image_size: int = 32) -> Path:
    """Save (once) and return the folder of a tiny random ``CLIPModel`` with its ``CLIPProcessor``.

    Real architecture (ViT image tower, transformer text tower, projections), tiny sizes; the tokenizer is
    :func:`imagenet_plus.tiny.tiny_clip_tokenizer` and the image processor crops to ``image_size`` pixels.
    """

    def build(folder: Path) -> None:
        import torch
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

        torch.manual_seed(0)
        config = CLIPConfig(
            text_config=dict(
                hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=515,
                max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
            ),
            vision_config=dict(
                hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                image_size=image_size, patch_size=8,
                # 10× the default init scale: at the default, the class token dominates and every image gets
                # nearly the same embedding (cos ≈ 0.9, so half the images would look like near-duplicates).
                initializer_factor=10.0,
            ),
            projection_dim=32,
        )
        model = CLIPModel(config)
        processor = CLIPProcessor(
            image_processor=CLIPImageProcessor(
                size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
            ),
            tokenizer=tiny_clip_tokenizer(),
        )
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)

    return write_once(cache_dir("tiny-random", f"clip-v2-{image_size}"), build)


class ClipScorer:
    """A loaded CLIP model: L2-normalised image and text embeddings.

    Args:
        name: a Hub id, a local folder, or ``tiny-random``.
        device: torch device to run on.
    """

    def __init__(self, name: str, device: Any = "cpu") -> None:
        self.name = name
        source = str(tiny_clip_dir()) if name == TINY_RANDOM else name
        if source != name or Path(name).exists():
            if not (Path(source) / "config.json").is_file():
                raise UserError(f"CLIP model folder {source} has no config.json")
        what = f"CLIP model '{name}'"
        source = pretrained_source(source, what)
        import torch
        from transformers import CLIPModel, CLIPProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model, self.processor = load_pretrained(CLIPModel, CLIPProcessor, source, what, device)
        self.device = torch.device(device)
        self.logit_scale = float(self.model.logit_scale.exp().item())
        self._text_cache: dict[str, Any] = {}

    @property
    def dim(self) -> int:
        """Embedding size."""
        return int(self.model.config.projection_dim)

    def preprocess(self, images: list[Any]) -> Any:
        """``uint8`` ``3×H×W`` tensors → the model's ``pixel_values`` (resize, crop, normalise; batched)."""
        out = self.processor.image_processor(images=images, return_tensors="pt", device=self.device)
        return out["pixel_values"].to(self.device)

    def image_forward(self, pixel_values: Any) -> Any:
        """Bare forward: ``pixel_values`` → L2-normalised image embeddings (float32)."""
        import torch

        with torch.inference_mode():
            emb = self.model.get_image_features(pixel_values=pixel_values).pooler_output.float()
        return torch.nn.functional.normalize(emb, dim=-1)

    def embed_images(self, images: list[Any]) -> Any:
        """L2-normalised image embeddings (``N×D`` float32 tensor) of ``uint8`` ``3×H×W`` images."""
        return self.image_forward(self.preprocess(images))

    def forget_texts(self) -> None:
        """Empty the text cache: the score stage does it at each shard's start, so that which texts are embedded
        together (padded to the same length, so rounded alike) depends on the shard alone, never on the shards
        this process scored before it (a resumed run then gives the same bytes)."""
        self._text_cache = {}

    def embed_texts(self, texts: list[str], batch_size: int = 256, cache: bool = True) -> Any:
        """L2-normalised text embeddings (``N×D`` float32 tensor); texts seen before come from a cache.

        The texts not in the cache are embedded in chunks of ``batch_size`` in first-seen order. ``cache=False``
        embeds every text of ``texts`` (once each) whatever the cache holds, and leaves the cache as it was.
        """
        import torch

        if not cache:
            saved, self._text_cache = self._text_cache, {}
            try:
                return self.embed_texts(texts, batch_size)
            finally:
                self._text_cache = saved
        todo = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            tok = self.processor.tokenizer(chunk, padding=True, truncation=True, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                emb = self.model.get_text_features(
                    input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
                ).pooler_output.float()
            emb = torch.nn.functional.normalize(emb, dim=-1)
            for text, row in zip(chunk, emb, strict=True):
                self._text_cache[text] = row
        if len(self._text_cache) > 100_000:  # unbounded prompt sets: keep memory flat
            keep = set(texts)
            self._text_cache = {t: e for t, e in self._text_cache.items() if t in keep}
        if not texts:
            return torch.zeros((0, self.dim), device=self.device)
        return torch.stack([self._text_cache[t] for t in texts])

