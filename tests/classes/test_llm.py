"""LLM class descriptions: a tiny random Qwen2 saved and loaded back through from_pretrained; N descriptions per
class, seeded sampling, cache reuse and resume, changed settings refused, absent model, cleaning and fallback."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from imagenet_plus.classes.llm import (
    LlmSettings,
    PromptWriter,
    clean_description,
    instruction,
    llm_prompts_path,
    read_llm_prompts,
    write_llm_prompts,
)
from imagenet_plus.classes.prompts import build_prompt
from imagenet_plus.classes.sets import ClassInfo
from imagenet_plus.errors import ConfigError, ModelUnavailable, UserError

TENCH = ClassInfo(0, "n01440764", "tench", ("tench",), "freshwater dace-like game fish of Europe and western Asia",
                  "cyprinid", "noun.animal")
SAW = ClassInfo(1, "n03000684", "chain saw", ("chain saw",), "portable power saw", "power saw", "noun.artifact")
OTTER = ClassInfo(2, "sea-otter", "sea otter")
CLASSES = [TENCH, SAW, OTTER]
TINY = LlmSettings(model="tiny-random", per_class=3, max_new_tokens=10, max_words=8, batch_size=2)


@pytest.fixture(scope="module")
def writer() -> PromptWriter:
    return PromptWriter(TINY)


def test_n_descriptions_per_class(tmp_path: Path) -> None:
    got = write_llm_prompts(tmp_path, CLASSES, TINY, show_progress=False)  # loads the tiny model from its folder
    assert list(got) == [c.id for c in CLASSES]
    for texts in got.values():
        assert len(texts) == 3
        for t in texts:
            assert t and t == t.strip() and "\n" not in t and len(t.split()) <= 8 and "\ufffd" not in t
    record = json.loads(llm_prompts_path(tmp_path).read_text())
    assert record["settings"]["model"] == "tiny-random" and record["settings"]["per_class"] == 3
    assert record["fallbacks"] == {}  # every text is the model's own
    assert {k: tuple(v) for k, v in record["descriptions"].items()} == got
    assert read_llm_prompts(tmp_path) == got
    # the llm strategy draws one of them per seed, with the class name in front when it lacks it
    prompt = build_prompt(TENCH, "llm", 5, descriptions=got[TENCH.id])
    assert prompt.startswith("tench") and any(t in prompt for t in got[TENCH.id])


def test_same_seed_same_text_other_seed_other_text(tmp_path: Path, writer: PromptWriter) -> None:
    a = write_llm_prompts(tmp_path / "a", CLASSES, TINY, show_progress=False, writer=writer)
    b = write_llm_prompts(tmp_path / "b", CLASSES, TINY, show_progress=False, writer=writer)
    assert a == b
    # one class at a time (another batch composition): the same texts
    single = LlmSettings(model="tiny-random", per_class=3, max_new_tokens=10, max_words=8, batch_size=1)
    c = write_llm_prompts(tmp_path / "c", CLASSES[::-1], single, show_progress=False, writer=writer)
    assert c == {k: a[k] for k in c}
    other = LlmSettings(model="tiny-random", per_class=3, max_new_tokens=10, max_words=8, seed=1)
    d = write_llm_prompts(tmp_path / "d", CLASSES, other, show_progress=False, writer=PromptWriter(other))
    assert d != a
    assert len({t for texts in a.values() for t in texts}) >= 6  # descriptions vary within and across classes


def test_sampling_follows_the_model_distribution(writer: PromptWriter) -> None:
    """One row decoded by hand (forward passes, temperature, top-p, the row's uniform numbers) gives the same text."""
    import torch

    s = TINY
    model, tok = writer.model, writer.tokenizer
    ids = tok(writer.render(SAW), return_tensors="pt", add_special_tokens=False)["input_ids"]
    stream = random.Random(f"llm:{s.seed}:{SAW.id}:1:0")
    eos = set(model.generation_config.eos_token_id)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(s.max_new_tokens):
            logits = model(torch.cat([ids, torch.tensor([new], dtype=torch.long)], dim=1)).logits[0, -1].double()
            # the repetition penalty (transformers' formula) on every token seen so far
            seen = torch.unique(torch.cat([ids[0], torch.tensor(new, dtype=torch.long)]))
            picked = logits[seen]
            logits[seen] = torch.where(picked < 0, picked * s.repetition_penalty, picked / s.repetition_penalty)
            probs = torch.softmax(logits / s.temperature, dim=-1).tolist()
            ranked = sorted(range(len(probs)), key=lambda i: -probs[i])
            kept, mass = [], 0.0
            for i in ranked:
                if mass >= s.top_p:
                    break
                kept.append(i)
                mass += probs[i]
            u = stream.random() * sum(probs[i] for i in kept)
            acc, token = 0.0, kept[-1]
            for i in kept:
                acc += probs[i]
                if acc >= u:
                    token = i
                    break
            new.append(token)
            if token in eos:
                break
    by_hand = clean_description(tok.decode(new, skip_special_tokens=True), s.max_words)
    assert writer.write([(SAW, 1, 0)]) == [by_hand]
    # batched with other rows and left-padded: the same text
    assert writer.write([(OTTER, 0, 0), (SAW, 1, 0), (TENCH, 2, 1)])[1] == by_hand


def test_cache_reuse_and_resume(tmp_path: Path, writer: PromptWriter, monkeypatch) -> None:
    import imagenet_plus.classes.llm as llm_module

    first = write_llm_prompts(tmp_path, CLASSES[:2], TINY, show_progress=False, writer=writer)

    def no_model(*args, **kwargs):
        raise AssertionError("every class is cached: the model must not be loaded")

    with monkeypatch.context() as m:
        m.setattr(llm_module, "PromptWriter", no_model)
        assert write_llm_prompts(tmp_path, CLASSES[:2], TINY, show_progress=False) == first

    rows: list[tuple[str, int, int]] = []

    class Counting:
        def write(self, batch):
            rows.extend((c.id, j, a) for c, j, a in batch)
            return writer.write(batch)

    more = write_llm_prompts(tmp_path, CLASSES, TINY, show_progress=False, writer=Counting())
    assert {r[0] for r in rows} == {OTTER.id} and {k: more[k] for k in first} == first  # only the new class

    # an interrupted run keeps the finished batches (the file is rewritten after each batch)
    class Failing:
        def write(self, batch):
            if any(c is OTTER for c, _, _ in batch):  # killed during the second batch
                raise KeyboardInterrupt
            return writer.write(batch)

    run = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        write_llm_prompts(run, CLASSES, TINY, show_progress=False, writer=Failing())
    assert set(read_llm_prompts(run)) == {TENCH.id, SAW.id}  # batch_size 2: the first two classes
    rows.clear()
    assert write_llm_prompts(run, CLASSES, TINY, show_progress=False, writer=Counting()) == more
    assert {r[0] for r in rows} == {OTTER.id}


def test_changed_settings_are_refused(tmp_path: Path, writer: PromptWriter) -> None:
    write_llm_prompts(tmp_path, CLASSES, TINY, show_progress=False, writer=writer)
    same = LlmSettings(model="tiny-random", per_class=3, max_new_tokens=10, max_words=8, batch_size=7)
    write_llm_prompts(tmp_path, CLASSES, same, show_progress=False, writer=writer)  # batch size is not recorded
    for other, needle in [
        (LlmSettings(model="tiny-random", per_class=4, max_new_tokens=10, max_words=8), "per_class 3 → 4"),
        (LlmSettings(model=str(tmp_path), per_class=3, max_new_tokens=10, max_words=8), "model 'tiny-random' → "),
        (LlmSettings(model="tiny-random", per_class=3, max_new_tokens=10, max_words=8, temperature=1.0),
         "temperature 0.8 → 1.0"),
    ]:
        with pytest.raises(ConfigError, match="was written with other prompt model settings") as info:
            write_llm_prompts(tmp_path, CLASSES, other, show_progress=False, writer=writer)
        assert needle in str(info.value) and "\n" not in str(info.value)


def test_absent_model_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="cannot load prompt model 'nobody/no-such-llm'") as info:
        PromptWriter(LlmSettings(model="nobody/no-such-llm"))
    assert "\n" not in str(info.value)
    with pytest.raises(ModelUnavailable, match="cannot load prompt model"):
        write_llm_prompts(tmp_path, CLASSES, LlmSettings(model=str(tmp_path / "empty")), show_progress=False)
    with pytest.raises(UserError, match="no class descriptions in"):
        read_llm_prompts(tmp_path / "nowhere")


def test_retry_then_fallback(tmp_path: Path) -> None:
    """An empty answer is retried with the next attempt; after ``retries`` the hypernym prompt is used."""
    seen: list[tuple[str, int, int]] = []

    class Scripted:
        def write(self, rows):
            seen.extend((c.id, j, a) for c, j, a in rows)
            # tench row 0 never answers; tench row 1 answers at its second attempt; the rest at once
            return [None if (c is TENCH and (j == 0 or (j == 1 and a == 0))) else f"{c.name} scene {j}"
                    for c, j, a in rows]

    settings = LlmSettings(model="scripted", per_class=2, retries=2)
    got = write_llm_prompts(tmp_path, [TENCH, OTTER], settings, show_progress=False, writer=Scripted())
    assert got[TENCH.id] == ("a photo of a tench, a kind of cyprinid", "tench scene 1")
    assert got[OTTER.id] == ("sea otter scene 0", "sea otter scene 1")
    assert [r for r in seen if r[0] == TENCH.id and r[1] == 0] == [(TENCH.id, 0, 0), (TENCH.id, 0, 1),
                                                                   (TENCH.id, 0, 2)]
    assert json.loads(llm_prompts_path(tmp_path).read_text())["fallbacks"] == {TENCH.id: 1}


@pytest.mark.parametrize("answer, expected", [
    ("A tench resting among pond weeds.", "A tench resting among pond weeds"),
    ('  "A chain saw on a stump."  \nSecond line', "A chain saw on a stump"),
    ("\n\n1. A sea otter floating on its back", "A sea otter floating on its back"),
    ("- Description: a tench in a net", "a tench in a net"),
    ("Sentence: “a saw on a bench”", "a saw on a bench"),
    ("one two three four five six seven eight nine ten", "one two three four five six seven eight"),
    ("  \n \t\n", None),
    ('"" .', None),
    ("\ufffd\ufffd\n\x07", None),
])
def test_clean_description(answer: str, expected: str | None) -> None:
    assert clean_description(answer, 8) == expected


def test_instruction_and_chat_template(writer: PromptWriter) -> None:
    text = instruction(TENCH, 30)
    assert "Object: tench" in text and "Kind of: cyprinid" in text and "Definition: freshwater" in text
    assert "at most 30 words" in text
    bare = instruction(OTTER, 30)
    assert "Kind of" not in bare and "Definition" not in bare and "sea otter" in bare
    rendered = writer.render(TENCH)
    assert rendered.startswith("<|im_start|>user\n") and rendered.endswith("<|im_start|>assistant\n")
    assert instruction(TENCH, TINY.max_words) in rendered


@pytest.mark.parametrize("kwargs, needle", [
    (dict(per_class=0), "'llm-per-class' must be positive"),
    (dict(temperature=0), "'llm-temperature' must be a positive number"),
    (dict(top_p=1.5), "'llm-top-p' must be in"),
    (dict(retries=-1), "'llm-retries' must be >= 0"),
    (dict(dtype="int4"), "'llm-dtype' must be one of"),
    (dict(model=""), "'prompt-model' must name a model"),
])
def test_bad_settings(kwargs, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        LlmSettings(**kwargs)
