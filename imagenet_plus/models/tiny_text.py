"""Tiny random text models of the real architectures: a BLIP captioner and a Qwen2 causal language model.

Test and demo equipment, never a fallback (``--captioner tiny-random``, ``--prompt-model tiny-random``):
each is built from configs with random weights from a fixed seed, saved once under the cache folder with
``save_pretrained`` (:func:`imagenet_plus.models.tiny.write_once`), and loaded back by the caller through
the same ``from_pretrained`` code a real model takes. Nothing here downloads anything.

- :func:`tiny_blip_dir`: ``BlipForConditionalGeneration`` (ViT image tower, BERT-style text decoder with
  cross-attention) and its ``BlipProcessor``: a ``BlipImageProcessor`` at 32 px and a ``BertTokenizer``
  (WordPiece, as Salesforce's BLIP checkpoints) over single characters with BLIP's ``[DEC]`` start token.
- :func:`tiny_causal_lm_dir`: ``Qwen2ForCausalLM`` (the architecture of ``Qwen/Qwen2.5-0.5B-Instruct``)
  with a ``Qwen2Tokenizer`` (byte-level BPE over the 256 byte symbols, no merges: every text tokenizes),
  Qwen's ``<|im_start|>``/``<|im_end|>`` chat template and a generation config like the instruct model's
  (sampling on by default), so the caller's overrides are exercised.
"""

from __future__ import annotations

import string
from pathlib import Path

from imagenet_plus.io.cache import cache_dir
from imagenet_plus.models.tiny import TINY_RANDOM, write_once

__all__ = ["TINY_RANDOM", "tiny_blip_dir", "tiny_causal_lm_dir"]

#: Image side of the tiny BLIP's vision tower (pixels).
TINY_BLIP_IMAGE_SIZE = 32
#: Qwen2.5's chat template, reduced to what the tiny model needs (roles and the generation prompt).
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _blip_tokenizer():
    """A ``BertTokenizer`` over lower-case printable characters (word starts and ``##`` continuations) + ``[DEC]``."""
    from transformers import BertTokenizer

    chars = sorted({c for c in string.printable.lower() if not c.isspace()})
    vocab: dict[str, int] = {}
    for token in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars), "[DEC]"]:
        vocab.setdefault(token, len(vocab))
    tok = BertTokenizer(vocab=vocab, model_max_length=64)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    return tok


def tiny_blip_dir() -> Path:
    """Save (once) and return the folder of a tiny random BLIP captioner (model + processor).

    Loads with ``AutoProcessor`` and ``AutoModelForImageTextToText`` (→ ``BlipForConditionalGeneration``),
    as ``Salesforce/blip-image-captioning-large`` does.
    """

    def build(folder: Path) -> None:
        import torch
        from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

        torch.manual_seed(0)
        tok = _blip_tokenizer()
        size = TINY_BLIP_IMAGE_SIZE
        config = BlipConfig(
            text_config=dict(
                vocab_size=len(tok), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                bos_token_id=tok.convert_tokens_to_ids("[DEC]"), sep_token_id=tok.sep_token_id,
                eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
                # 10x BERT's init scale, so that the cross-attention to the image moves the logits: at 0.02
                # every image gets the same caption.
                initializer_range=0.2,
            ),
            vision_config=dict(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                image_size=size, patch_size=8,
                # BLIP's default vision init (1e-10) makes every image embed alike.
                initializer_range=0.5,
            ),
            projection_dim=32, image_text_hidden_size=32,
        )
        model = BlipForConditionalGeneration(config)
        processor = BlipProcessor(
            image_processor=BlipImageProcessor(size={"height": size, "width": size}), tokenizer=tok
        )
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)

    return write_once(cache_dir("tiny-random", "blip-captioner-v1"), build)


def _qwen2_tokenizer():
    """A ``Qwen2Tokenizer`` over the 256 byte symbols (no merges) plus Qwen's special tokens and chat template."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab: dict[str, int] = {}
    for symbol in bytes_to_unicode().values():
        vocab.setdefault(symbol, len(vocab))
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    for token in specials:
        vocab[token] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         unk_token=None, model_max_length=512)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_causal_lm_dir() -> Path:
    """Save (once) and return the folder of a tiny random ``Qwen2ForCausalLM`` with its tokenizer.

    Loads with ``AutoTokenizer`` and ``AutoModelForCausalLM``, as ``Qwen/Qwen2.5-0.5B-Instruct`` does.
    """

    def build(folder: Path) -> None:
        import torch
        from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(0)
        tok = _qwen2_tokenizer()
        eos = tok.convert_tokens_to_ids("<|im_end|>")
        pad = tok.convert_tokens_to_ids("<|endoftext|>")
        config = Qwen2Config(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
            bos_token_id=pad, eos_token_id=eos, pad_token_id=pad,
        )
        model = Qwen2ForCausalLM(config)
        # the instruct model's own defaults (sampling on): the caller must override them to stay deterministic
        model.generation_config = GenerationConfig(
            bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad, do_sample=True, temperature=0.7, top_p=0.8,
            top_k=20, repetition_penalty=1.05,
        )
        model.save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)

    return write_once(cache_dir("tiny-random", "qwen2-causal-lm-v1"), build)
