"""Tiny random models of the real architectures: test and demo equipment, never a fallback.

``--model tiny-random`` (and the same word for the scorers) builds such a model from configs, saves it
once under the cache folder with ``save_pretrained``, and the caller loads it back through the same
``from_pretrained`` code a real model takes. Nothing here downloads anything.

Shared pieces: :func:`tiny_clip_tokenizer` (a byte-level CLIP BPE tokenizer built from an in-memory
vocabulary) and :func:`tiny_text_to_image_dir` (a Stable-Diffusion-architecture pipeline).
"""

from __future__ import annotations

import os
from pathlib import Path

from imagenet_plus.cache import cache_dir

TINY_RANDOM = "tiny-random"
#: Size of the tiny text encoders' hidden state (and the UNet's cross-attention dim).
TINY_TEXT_DIM = 32


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by CLIP's byte-level BPE (GPT-2's table)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_clip_tokenizer():
    """A real ``CLIPTokenizer`` over a character-level vocabulary (no merges), max length 77.

    Every text tokenizes (each byte is a token), so prompts of any wording work; the vocabulary has
    515 entries: 3 specials, 256 bytes, and the 256 bytes as word ends.
    """
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _byte_level_alphabet():
        vocab.setdefault(ch, len(vocab))
    for ch in _byte_level_alphabet():
        vocab.setdefault(ch + "</w>", len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    return tok


def write_once(target: Path, build) -> Path:  # type: ignore[no-untyped-def]
    """Build into a temp folder and rename, so concurrent processes never see half a model."""
    if (target / ".complete").exists():
        return target
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    build(tmp)
    (tmp / ".complete").write_text("ok\n")
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def tiny_text_to_image_dir(sample_size: int = 8) -> Path:
    """Save (once) and return the folder of a tiny random Stable Diffusion pipeline.

    Real architecture, tiny sizes: ``UNet2DConditionModel`` (2 blocks, cross-attention), an
    ``AutoencoderKL`` with SD's 8× downsampling, a ``CLIPTextModel`` of hidden size 32, the tokenizer
    above, ``EulerDiscreteScheduler(steps_offset=1)`` and no safety checker. Weights come from a
    fixed seed, so every machine builds the same model.

    Args:
        sample_size: latent side; images are ``8 * sample_size`` pixels by default (64 px), and the
            pipeline takes any ``height``/``width`` multiple of 8.
    """

    def build(folder: Path) -> None:
        import torch
        from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=TINY_TEXT_DIM,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=sample_size * 8,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=TINY_TEXT_DIM,
                intermediate_size=64,
                num_attention_heads=4,
                num_hidden_layers=2,
                vocab_size=515,
                max_position_embeddings=77,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
                projection_dim=TINY_TEXT_DIM,
            )
        )
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        )
        pipe = StableDiffusionPipeline(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tiny_clip_tokenizer(),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(folder, safe_serialization=True)

    return write_once(cache_dir("tiny-random", f"sd-pipeline-{sample_size}"), build)
