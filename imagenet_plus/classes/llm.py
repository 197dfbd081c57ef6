"""Scene descriptions per class written by a local language model (``--prompt-model ID_OR_PATH``).

For the ``llm`` prompt strategy, an instruction-tuned causal language model writes ``per_class`` short
descriptions of a photo of each class, once per run, from the class name, hypernym and gloss
(:func:`instruction`); the prompt of an image is one of its class's descriptions, drawn by the image's
seed (:func:`imagenet_plus.classes.prompts.build_prompt`). The default model is
:data:`DEFAULT_PROMPT_MODEL` = ``Qwen/Qwen2.5-0.5B-Instruct`` (Apache-2.0, 0.5 B parameters: about 1 GB in
bfloat16); any model that ``AutoTokenizer`` + ``AutoModelForCausalLM`` load works, through its chat template
when its tokenizer has one (else the instruction is the plain prompt). ``tiny-random`` is a tiny random
Qwen2 of the real architecture (:func:`imagenet_plus.models.tiny_text.tiny_causal_lm_dir`) for tests.

**Deterministic sampling.** Description ``j`` of class ``c`` is sampled with its own random stream,
``random.Random(f"llm:{seed}:{c}:{j}:{attempt}")``: at each step one uniform number picks the token from the
model's distribution (temperature, then nucleus ``top_p``) by inverse CDF (:class:`SeededSampler`, a
``LogitsProcessor`` that leaves one candidate, so ``generate`` runs its greedy loop). The stream does not
depend on which classes share a batch or on the device's random generator; the model's arithmetic does
(a different batch size pads rows differently and may, rarely, flip a near-tie), which is why the texts
are written once and read back from the cache, never regenerated.

**Cleaning** (:func:`clean_description`): the first non-empty line, without control characters or undecodable
bytes (U+FFFD); list markers (``1.``, ``-``, ``*``),
labels (``Description:``) and quotes removed; whitespace collapsed; at most ``max_words`` words; no final
period. **An empty result is retried** with the next attempt number (a new random stream), at most
``retries`` times; a description still empty after that becomes the class's ``hypernym`` prompt
(``a photo of a {name}, a kind of {hypernym}``) and is counted in the cache's ``fallbacks``.

**Cache** ``RUN/llm_prompts.json`` (:class:`LlmPrompts`): the settings that shape the texts (model, number,
sampling, cleaning), the descriptions by class id and the fallback counts. It is rewritten atomically after
every batch of classes, so an interrupted run resumes with the classes still missing; a run asking for other
settings is refused. Classes are batched (``batch_size`` classes, ``per_class`` rows each) with left
padding; the time is bounded by ``ceil(classes / batch_size)`` calls of ``max_new_tokens`` steps (1000
ImageNet classes x 10 descriptions: 63 calls of 160 rows at the defaults).
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagenet_plus.classes.prompts import build_prompt, clean, short_gloss
from imagenet_plus.contract.names import LLM_PROMPTS_JSON
from imagenet_plus.contract.records import JsonRecord, dataclass_from_dict, read_json
from imagenet_plus.errors import ConfigError, ModelUnavailable, UserError
from imagenet_plus.models.tiny_text import TINY_RANDOM, tiny_causal_lm_dir
from imagenet_plus.pipeline.progress import progress_bar

if TYPE_CHECKING:
    from imagenet_plus.classes.sets import ClassInfo

log = logging.getLogger(__name__)

#: The default prompt model (a Hub id; must be in the local Hugging Face cache when offline).
DEFAULT_PROMPT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
#: Versions the instruction and the cleaning rule; part of the cache record.
LLM_PROTOCOL = 1
DTYPES = ("auto", "float32", "float16", "bfloat16")
#: The instruction given for each class (lines without a hypernym or gloss are left out).
INSTRUCTION = (
    "Object: {name}\n{details}"
    "Write one short sentence (at most {max_words} words) describing a realistic photo of a {name} in a typical "
    "scene: where it is and what is around it. Reply with the sentence only."
)


@dataclass(frozen=True)
class LlmSettings:
    """How the descriptions are written.

    Attributes:
        model: a Hub id, a local folder, or ``tiny-random``.
        per_class: descriptions per class (N).
        max_new_tokens: the longest answer (tokens).
        temperature: sampling temperature (> 0).
        top_p: nucleus sampling: the smallest set of tokens whose probability reaches ``top_p`` (0 < p <= 1).
        repetition_penalty: transformers' repetition penalty (1 = none).
        seed: the seed of every random stream (with class id, description index and attempt).
        max_words: descriptions are cut to this many words.
        retries: new attempts for an empty description before the fallback.
        dtype: ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32``, ``float16`` or ``bfloat16``.
        batch_size: classes per ``generate`` call (not recorded: see the module docstring).
    """

    model: str = DEFAULT_PROMPT_MODEL
    per_class: int = 10
    max_new_tokens: int = 48
    temperature: float = 0.8
    top_p: float = 0.95
    repetition_penalty: float = 1.05
    seed: int = 0
    max_words: int = 30
    retries: int = 2
    dtype: str = "auto"
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not str(self.model).strip():
            raise ConfigError("'prompt-model' must name a model (a Hub id, a local folder or tiny-random)")
        for name in ("per_class", "max_new_tokens", "max_words", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"'llm-{name.replace('_', '-')}' must be positive, got {getattr(self, name)}")
        if self.retries < 0:
            raise ConfigError(f"'llm-retries' must be >= 0, got {self.retries}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"'llm-temperature' must be a positive number, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"'llm-top-p' must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ConfigError(f"'llm-repetition-penalty' must be positive, got {self.repetition_penalty}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"'llm-dtype' must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def record(self) -> dict[str, Any]:
        """The settings the cache records (all but the batch size), with the protocol version."""
        data = {k: v for k, v in asdict(self).items() if k != "batch_size"}
        return {**data, "protocol": LLM_PROTOCOL}


@dataclass(frozen=True)
class LlmPrompts(JsonRecord):
    """``RUN/llm_prompts.json``: the settings, the descriptions by class id, the fallbacks by class id."""

    settings: dict[str, Any]
    descriptions: dict[str, list[str]] = field(default_factory=dict)
    fallbacks: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path | str) -> LlmPrompts:
        record = dataclass_from_dict(cls, data, source)
        if not isinstance(record.settings, dict) or not isinstance(record.descriptions, dict) or not all(
            isinstance(v, list) and all(isinstance(t, str) and t for t in v) for v in record.descriptions.values()
        ):
            raise UserError(f"{source}: 'settings' must be an object and 'descriptions' lists of non-empty texts")
        return record


def instruction(cls: ClassInfo, max_words: int) -> str:
    """The instruction for one class: its name, hypernym and short gloss, and what to write."""
    name = clean(cls.name)
    hypernym = clean(cls.hypernym)
    details = ""
    if hypernym and hypernym.lower() != name.lower():
        details += f"Kind of: {hypernym}\n"
    gloss = short_gloss(cls.definition)
    if gloss:
        details += f"Definition: {gloss}\n"
    return INSTRUCTION.format(name=name, details=details, max_words=max_words)


_MARKER = re.compile(r"^(?:[-*•·–]+|\(?\d{1,2}[.):])\s+")
_LABEL = re.compile(r"^(?:description|sentence|answer|caption|scene)\s*\d*\s*[:\-]\s*", re.IGNORECASE)
_QUOTES = "\"'“”‘’`«»"


def clean_description(text: str, max_words: int) -> str | None:
    """One description from a model's answer (see the module docstring), or ``None`` when nothing is left."""
    for raw in str(text).splitlines():
        line = "".join(ch for ch in raw if ch.isprintable() and ch != "\ufffd").strip()
        line = _LABEL.sub("", _MARKER.sub("", line)).strip().strip(_QUOTES).strip()
        if line:
            break
    else:
        return None
    words = line.split()[:max_words]
    result = " ".join(words).strip(_QUOTES + " ").rstrip(" ,;:.").strip(_QUOTES + " ")
    return result or None


def _sampler_class():  # type: ignore[no-untyped-def]
    from transformers import LogitsProcessor

    class SeededSampler(LogitsProcessor):
        """Draw each row's next token from its own ``random.Random`` and leave only that token (see module doc)."""

        def __init__(self, streams: Sequence[random.Random], temperature: float, top_p: float) -> None:
            self.streams = list(streams)
            self.temperature = temperature
            self.top_p = top_p

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            import torch

            probs = torch.softmax(scores.float() / self.temperature, dim=-1)
            sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
            mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
            sorted_probs = sorted_probs.masked_fill(mass_before >= self.top_p, 0.0)  # the first token always stays
            cdf = sorted_probs.cumsum(dim=-1)
            u = torch.tensor([s.random() for s in self.streams], dtype=cdf.dtype, device=cdf.device)
            pick = (cdf < (u * cdf[:, -1]).unsqueeze(1)).sum(dim=-1).clamp(max=cdf.shape[-1] - 1)
            token = order.gather(1, pick.unsqueeze(1))
            out = torch.full_like(scores, float("-inf"))
            return out.scatter_(1, token, 0.0)

    return SeededSampler


class PromptWriter:
    """A loaded causal language model that writes descriptions for (class, index, attempt) rows.

    Raises:
        ModelUnavailable: the model is not a local folder and cannot be loaded from the Hub or its cache.
    """

    def __init__(self, settings: LlmSettings, device: Any = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.settings = settings
        self.device = torch.device(device)
        if settings.dtype == "auto":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, settings.dtype)
        source = str(tiny_causal_lm_dir()) if settings.model == TINY_RANDOM else settings.model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelUnavailable(f"cannot load prompt model {settings.model!r} (not a local folder, and not in "
                                   f"the Hugging Face cache while offline?): {first}") from None
        self.model = model.to(self.device).eval()
        self.model.requires_grad_(False)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, cls: ClassInfo) -> str:
        """The model's input text for a class: the chat template around the instruction, or the instruction."""
        text = instruction(cls, self.settings.max_words)
        if self.chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text + "\n"

    def write(self, rows: Sequence[tuple[ClassInfo, int, int]]) -> list[str | None]:
        """Cleaned descriptions (``None`` when empty) for (class, description index, attempt) rows, one call."""
        import torch
        from transformers import LogitsProcessorList

        s = self.settings
        texts = [self.render(cls) for cls, _, _ in rows]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not self.chat)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        streams = [random.Random(f"llm:{s.seed}:{cls.id}:{j}:{attempt}") for cls, j, attempt in rows]
        sampler = _sampler_class()(streams, s.temperature, s.top_p)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=s.max_new_tokens, do_sample=False, num_beams=1,
                repetition_penalty=s.repetition_penalty, logits_processor=LogitsProcessorList([sampler]),
                pad_token_id=self.tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None,
            )
        answers = self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [clean_description(a, s.max_words) for a in answers]


def llm_prompts_path(run_dir: str | Path) -> Path:
    """``RUN/llm_prompts.json``."""
    return Path(run_dir) / LLM_PROMPTS_JSON


def _open_cache(path: Path, settings: LlmSettings) -> LlmPrompts:
    record = settings.record()
    if not path.is_file():
        return LlmPrompts(settings=record)
    cached = LlmPrompts.read(path)
    if cached.settings != record:
        changed = sorted(k for k in set(cached.settings) | set(record) if cached.settings.get(k) != record.get(k))
        detail = ", ".join(f"{k} {cached.settings.get(k)!r} → {record.get(k)!r}" for k in changed)
        raise ConfigError(f"{path} was written with other prompt model settings ({detail}): use the same settings, "
                          "or another run folder")
    return cached


def write_llm_prompts(run_dir: str | Path, classes: Sequence[ClassInfo], settings: LlmSettings, device: Any = "cpu",
                      show_progress: bool = True, writer: PromptWriter | None = None) -> dict[str, tuple[str, ...]]:
    """Write (or reuse) ``settings.per_class`` descriptions for every class; return them by class id.

    Args:
        run_dir: the run folder (``RUN/llm_prompts.json``).
        classes: the class set.
        settings: the model and its settings.
        device: torch device of the model (loaded only when a class lacks descriptions).
        show_progress: a progress bar over classes (main process only).
        writer: an already loaded model with these settings (else loaded here when needed).

    Raises:
        ConfigError: the cache was written with other settings.
        ModelUnavailable: the model cannot be loaded.
    """
    path = llm_prompts_path(run_dir)
    cache = _open_cache(path, settings)
    descriptions = dict(cache.descriptions)
    fallbacks = dict(cache.fallbacks)
    todo = [c for c in classes if len(descriptions.get(c.id, ())) != settings.per_class]
    if todo:
        writer = writer or PromptWriter(settings, device)
        path.parent.mkdir(parents=True, exist_ok=True)
        with progress_bar(len(todo), "write class descriptions", unit="class", enabled=show_progress) as bar:
            for start in range(0, len(todo), settings.batch_size):
                batch = todo[start : start + settings.batch_size]
                texts: dict[tuple[str, int], str] = {}
                pending = [(cls, j, 0) for cls in batch for j in range(settings.per_class)]
                while pending:
                    results = writer.write(pending)
                    retry = []
                    for (cls, j, attempt), text in zip(pending, results):
                        if text is not None:
                            texts[(cls.id, j)] = text
                        elif attempt < settings.retries:
                            retry.append((cls, j, attempt + 1))
                        else:
                            texts[(cls.id, j)] = build_prompt(cls, "hypernym", 0)
                            fallbacks[cls.id] = fallbacks.get(cls.id, 0) + 1
                    pending = retry
                for cls in batch:
                    descriptions[cls.id] = [texts[(cls.id, j)] for j in range(settings.per_class)]
                LlmPrompts(settings=settings.record(), descriptions=descriptions, fallbacks=fallbacks).write(path)
                bar.update(len(batch))
        used = sum(fallbacks.get(c.id, 0) for c in todo)
        if used:
            log.info("llm prompts: %d of %d descriptions were empty after %d retries and use the hypernym prompt",
                     used, len(todo) * settings.per_class, settings.retries)
    return {c.id: tuple(descriptions[c.id]) for c in classes}


def read_llm_prompts(run_dir: str | Path) -> dict[str, tuple[str, ...]]:
    """The descriptions of ``RUN/llm_prompts.json`` by class id.

    Raises:
        UserError: the file is missing or malformed.
    """
    path = llm_prompts_path(run_dir)
    if not path.is_file():
        raise UserError(f"no class descriptions in {path.parent} (the llm prompt strategy needs a prompt model)")
    return {k: tuple(v) for k, v in LlmPrompts.from_dict(read_json(path, "class descriptions"), path)
            .descriptions.items()}
