"""Tiny random models of the real architectures: test and demo equipment, never a fallback.

``--model tiny-random`` (and the same word for the scorers) builds such a model from configs, saves it
once under the cache folder with ``save_pretrained``, and the caller loads it back through the same
``from_pretrained`` code a real model takes. Nothing here downloads anything.

Shared pieces: :func:`tiny_clip_tokenizer` (a byte-level CLIP BPE tokenizer built from an in-memory
vocabulary), :func:`tiny_t5_tokenizer` (a T5 Unigram tokenizer over single characters, built with the
``tokenizers`` library), and one pipeline folder per family: :func:`tiny_text_to_image_dir` (Stable
Diffusion: UNet), :func:`tiny_flux_dir` (FLUX.1: MMDiT transformer, CLIP + T5, 16-channel VAE) and
:func:`tiny_sd3_dir` (Stable Diffusion 3.5: MMDiT transformer, two CLIP encoders with projection + T5,
16-channel VAE). The model registry (:data:`~imagenet_plus.models.registry.MODELS`) maps each ``--model`` word
to its builder.
"""

from __future__ import annotations

import os
from pathlib import Path

from imagenet_plus.io.cache import cache_dir

TINY_RANDOM = "tiny-random"
#: ``--model`` words of the tiny FLUX.1 and Stable Diffusion 3.5 pipelines (``tiny-random`` stays Stable Diffusion).
TINY_RANDOM_FLUX = "tiny-random-flux"
TINY_RANDOM_SD3 = "tiny-random-sd3"
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


def tiny_t5_tokenizer(model_max_length: int = 512):
    """A real T5 tokenizer (``T5Tokenizer``, tokenizers-backed) over a character-level Unigram vocabulary.

    T5's layout: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, the word-start marker ``▁``, then every printable ASCII
    character; no sentinel ids. Built in memory (no SentencePiece file, no download); saved as
    ``tokenizer.json`` by ``save_pretrained``.
    """
    import string

    from transformers import T5Tokenizer

    chars = [c for c in string.printable if not c.isspace()]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(c, -3.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


#: Vocabulary size of :func:`tiny_t5_tokenizer` (4 specials + 94 printable characters).
TINY_T5_VOCAB = 98


def _tiny_t5_encoder(d_model: int):
    """A 2-layer ``T5EncoderModel`` (T5 v1.1 layout: gated GELU) over :func:`tiny_t5_tokenizer`'s vocabulary."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=TINY_T5_VOCAB,
            d_model=d_model,
            d_kv=8,
            d_ff=2 * d_model,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def _tiny_clip_config(projection_dim: int = TINY_TEXT_DIM):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=515,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=projection_dim,
    )


def _tiny_vae(sample_size: int, sixteen_channels: bool = False):
    """An ``AutoencoderKL`` with 8x downsampling: SD's 4 latent channels, or (``sixteen_channels``) the 16
    channels, no quant convs and the shift/scale of FLUX.1's and SD 3.5's VAEs."""
    from diffusers import AutoencoderKL

    latent = (dict(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                   scaling_factor=0.3611) if sixteen_channels else dict(latent_channels=4))
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=sample_size * 8,
        **latent,
    )


#: Seconds a process whose build could not be published waits for another process's build.
WAIT_FOR_BUILD_SECONDS = 600.0


#: File name endings of saved weights.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def weights_missing(folder: Path) -> list[Path]:
    """Parts of a freshly saved model folder whose weights were not written (empty list: complete).

    transformers 5 writes neither config nor weights on ranks other than 0 once ``torch.distributed`` is
    initialised, so under torchrun/accelerate a build made by another rank lacks its text encoders. A part
    is missing when: the folder holds no weights file at all; a pipeline component named in
    ``model_index.json`` has no folder or an empty one; or a ``config.json`` has no weights beside it.
    """
    import json

    folder = Path(folder)

    def has_weights(d: Path) -> bool:
        return any(p.is_file() and p.name.endswith(WEIGHT_SUFFIXES) for p in d.iterdir())

    missing: list[Path] = []
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in folder.rglob("*")):
        missing.append(folder)
    index = folder / "model_index.json"
    if index.is_file():
        for name, entry in json.loads(index.read_text(encoding="utf-8")).items():
            if name.startswith("_") or not isinstance(entry, list) or None in entry:
                continue
            part = folder / name
            if not part.is_dir() or not any(part.iterdir()):
                missing.append(part)
    missing += [c.parent for c in sorted(folder.rglob("config.json")) if not has_weights(c.parent)]
    return missing


def write_once(target: Path, build) -> Path:  # type: ignore[no-untyped-def]
    """Build into a temp folder and rename, so concurrent processes never see half a model.

    A build without its weights (made on a rank other than 0, see :func:`weights_missing`) is never
    published: that process waits for the complete build of another one (rank 0 builds the same model).

    Raises:
        RuntimeError: no complete build appeared within :data:`WAIT_FOR_BUILD_SECONDS`.
    """
    import shutil
    import time

    if (target / ".complete").exists():
        return target
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    build(tmp)
    if weights_missing(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        deadline = time.monotonic() + WAIT_FOR_BUILD_SECONDS
        while not (target / ".complete").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target}: this process cannot save the tiny model's weights (not rank 0) "
                                   "and no other process built it")
            time.sleep(0.2)
        return target
    (tmp / ".complete").write_text("ok\n")
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
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
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextModel

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
        vae = _tiny_vae(sample_size)
        text_encoder = CLIPTextModel(_tiny_clip_config())
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


def tiny_flux_dir(sample_size: int = 8) -> Path:
    """Save (once) and return the folder of a tiny random FLUX.1 pipeline (``FluxPipeline``).

    Real architecture, tiny sizes: ``FluxTransformer2DModel`` (1 double-stream and 1 single-stream block,
    guidance embedding as in FLUX.1-dev, 2x2 latent packing so ``in_channels`` = 4 x 16), a CLIP text
    encoder for the pooled vector, a ``T5EncoderModel`` with :func:`tiny_t5_tokenizer` for the sequence,
    the 16-channel VAE of :func:`_tiny_vae` and ``FlowMatchEulerDiscreteScheduler`` with FLUX's
    resolution-dependent shift. Images are any multiple of 16 pixels (the VAE's 8x times the 2x packing).
    """

    def build(folder: Path) -> None:
        import torch
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
        from transformers import CLIPTextModel

        torch.manual_seed(0)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=TINY_TEXT_DIM,
            pooled_projection_dim=TINY_TEXT_DIM,
            guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),
        )
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )
        pipe = FluxPipeline(
            scheduler=scheduler,
            vae=_tiny_vae(sample_size, sixteen_channels=True),
            text_encoder=CLIPTextModel(_tiny_clip_config()),
            tokenizer=tiny_clip_tokenizer(),
            text_encoder_2=_tiny_t5_encoder(TINY_TEXT_DIM),
            tokenizer_2=tiny_t5_tokenizer(),
            transformer=transformer,
        )
        pipe.save_pretrained(folder, safe_serialization=True)

    return write_once(cache_dir("tiny-random", f"flux-pipeline-{sample_size}"), build)


def tiny_sd3_dir(sample_size: int = 8) -> Path:
    """Save (once) and return the folder of a tiny random Stable Diffusion 3.5 pipeline (``StableDiffusion3Pipeline``).

    Real architecture, tiny sizes: ``SD3Transformer2DModel`` (2 MMDiT blocks, the first with SD 3.5's dual
    attention, RMS QK-norm, 2x2 patches of 16 latent channels), two ``CLIPTextModelWithProjection`` encoders
    whose pooled projections are concatenated, a ``T5EncoderModel`` whose width (64) equals the two CLIP
    widths side by side (SD3 pads the CLIP sequence to T5's width), the 16-channel VAE and
    ``FlowMatchEulerDiscreteScheduler(shift=3.0)``. Images are any multiple of 16 pixels.
    """

    def build(folder: Path) -> None:
        import torch
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
        from transformers import CLIPTextModelWithProjection

        torch.manual_seed(0)
        t5_dim = 2 * TINY_TEXT_DIM
        transformer = SD3Transformer2DModel(
            sample_size=sample_size,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=t5_dim,
            caption_projection_dim=32,
            pooled_projection_dim=2 * TINY_TEXT_DIM,
            pos_embed_max_size=32,
            dual_attention_layers=(0,),
            qk_norm="rms_norm",
        )
        pipe = StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
            vae=_tiny_vae(sample_size, sixteen_channels=True),
            text_encoder=CLIPTextModelWithProjection(_tiny_clip_config()),
            tokenizer=tiny_clip_tokenizer(),
            text_encoder_2=CLIPTextModelWithProjection(_tiny_clip_config()),
            tokenizer_2=tiny_clip_tokenizer(),
            text_encoder_3=_tiny_t5_encoder(t5_dim),
            tokenizer_3=tiny_t5_tokenizer(),
        )
        pipe.save_pretrained(folder, safe_serialization=True)

    return write_once(cache_dir("tiny-random", f"sd3-pipeline-{sample_size}"), build)
