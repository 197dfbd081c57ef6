"""Prompt strategies: determinism per seed, variety across seeds, content, length, degradation."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import pytest

from imagenet_plus.classes.prompts import (
    BACKGROUNDS,
    DEFAULT_NEGATIVE_PROMPT,
    LIGHTING,
    MAX_PROMPT_WORDS,
    SETTINGS,
    STRATEGIES,
    STYLES,
    VIEWPOINTS,
    build_negative_prompt,
    build_prompt,
    choose_strategy,
    short_gloss,
)
from imagenet_plus.classes.sets import ClassInfo, resolve_classes
from imagenet_plus.errors import UserError

TENCH_GLOSS = "freshwater dace-like game fish of Europe and western Asia noted for ability to survive outside water"
TENCH = ClassInfo(0, "n01440764", "tench", ("tench", "Tinca tinca"), TENCH_GLOSS, "cyprinid", "noun.animal")
CUSTOM = ClassInfo(1, "sea-otter", "  sea   otter ", ("sea otter",), "", "", "")


@pytest.fixture(scope="module")
def imagenet() -> list[ClassInfo]:
    return resolve_classes("imagenet-1k")


def test_choose_strategy_is_deterministic_and_uniform() -> None:
    both = ("name", "diverse")
    assert [choose_strategy(both, s) for s in range(50)] == [choose_strategy(both, s) for s in range(50)]
    counts = collections.Counter(choose_strategy(STRATEGIES, seed) for seed in range(4000))
    assert set(counts) == set(STRATEGIES)
    assert all(850 <= n <= 1150 for n in counts.values()), counts
    assert choose_strategy(("gloss",), 123) == "gloss"
    # a large seed (generate derives 63-bit seeds) works the same way
    assert choose_strategy(STRATEGIES, 2**62 + 5) == choose_strategy(STRATEGIES, 2**62 + 5)


@pytest.mark.parametrize("strategies, needle", [((), "no prompt strategy"), (("name", "fancy"), "'fancy'")])
def test_choose_strategy_errors(strategies: tuple[str, ...], needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        choose_strategy(strategies, 0)


def test_build_prompt_unknown_strategy() -> None:
    with pytest.raises(UserError, match="unknown prompt strategy 'fancy'"):
        build_prompt(TENCH, "fancy", 0)


def test_each_strategy_names_the_class() -> None:
    assert build_prompt(TENCH, "name", 0) == "a photo of a tench"
    assert build_prompt(TENCH, "gloss", 0) == (
        "a photo of a tench, freshwater dace-like game fish of Europe and western Asia noted for ability to survive "
        "outside water"
    )
    assert build_prompt(TENCH, "hypernym", 0) == "a photo of a tench, a kind of cyprinid"
    diverse = build_prompt(TENCH, "diverse", 0)
    assert diverse.startswith("a photo of a tench, a kind of cyprinid, ")
    parts = diverse.split(", ")[2:]
    assert len(parts) == 4
    assert parts[0] in VIEWPOINTS and parts[1] in LIGHTING and parts[3] in STYLES
    assert parts[2] in BACKGROUNDS + SETTINGS["noun.animal"]


def test_same_seed_same_prompt_other_seeds_vary() -> None:
    assert build_prompt(TENCH, "diverse", 42) == build_prompt(TENCH, "diverse", 42)
    prompts = {build_prompt(TENCH, "diverse", seed) for seed in range(100)}
    assert len(prompts) >= 95
    for i, pool in enumerate((VIEWPOINTS, LIGHTING)):  # every slot really varies
        used = {build_prompt(TENCH, "diverse", seed).split(", ")[2 + i] for seed in range(300)}
        assert len(used) >= 0.8 * len(pool)


def test_settings_follow_the_group() -> None:
    food = ClassInfo(0, "n07753592", "banana", ("banana",), "elongated crescent-shaped yellow fruit", "edible fruit",
                     "noun.food")
    scenes = {build_prompt(food, "diverse", seed).split(", ")[4] for seed in range(300)}
    assert scenes <= set(BACKGROUNDS + SETTINGS["noun.food"])
    assert scenes & set(SETTINGS["noun.food"]) and scenes & set(BACKGROUNDS)
    assert not scenes & (set(SETTINGS["noun.animal"]) - set(SETTINGS["noun.food"]))


def test_phrase_lists_have_tens_of_distinct_options() -> None:
    for pool in (VIEWPOINTS, LIGHTING, STYLES, BACKGROUNDS, *SETTINGS.values()):
        assert len(pool) >= 20 and len(set(pool)) == len(pool), pool


def test_prompts_are_the_same_in_another_process_with_another_hash_seed() -> None:
    ours = [build_prompt(TENCH, choose_strategy(STRATEGIES, s), s) for s in range(20)]
    code = (
        "import json; from imagenet_plus.classes import ClassInfo; "
        "from imagenet_plus.classes.prompts import STRATEGIES, build_prompt, choose_strategy; "
        f"c = ClassInfo.from_dict({TENCH.to_dict()!r}); "
        "print(json.dumps([build_prompt(c, choose_strategy(STRATEGIES, s), s) for s in range(20)]))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ours


def test_custom_classes_degrade_gracefully() -> None:
    assert build_prompt(CUSTOM, "name", 3) == "a photo of a sea otter"
    assert build_prompt(CUSTOM, "gloss", 3) == "a photo of a sea otter"
    assert build_prompt(CUSTOM, "hypernym", 3) == "a photo of a sea otter"
    diverse = build_prompt(CUSTOM, "diverse", 3)
    assert diverse.startswith("a photo of a sea otter, ") and "a kind of" not in diverse and "  " not in diverse
    scene = diverse.split(", ")[3]
    assert scene in BACKGROUNDS + SETTINGS["default"]
    # a hypernym equal to the name adds nothing
    same = ClassInfo(0, "x", "dog", ("dog",), "", "Dog", "")
    assert build_prompt(same, "hypernym", 0) == "a photo of a dog"


def test_short_gloss() -> None:
    assert short_gloss("a soft thin (usually translucent) paper; used for wrapping") == "a soft thin paper"
    assert short_gloss("") == ""
    long = "one two three four five six seven eight nine, ten eleven twelve thirteen fourteen fifteen sixteen seventeen"
    assert short_gloss(long) == "one two three four five six seven eight nine"
    no_comma = " ".join(f"w{i}" for i in range(30))
    assert short_gloss(no_comma).split() == [f"w{i}" for i in range(16)]


def test_imagenet_prompts_are_short_and_contain_the_name(imagenet: list[ClassInfo]) -> None:
    longest = 0
    for c in imagenet:
        for strategy in STRATEGIES:
            for seed in (0, 1):
                p = build_prompt(c, strategy, seed)
                assert p.startswith(f"a photo of a {c.name}") and "  " not in p and not p.endswith(",")
                longest = max(longest, len(p.split()))
    # CLIP reads 77 tokens; about 1.3 BPE tokens per English word leaves a wide margin
    assert longest <= 35 <= MAX_PROMPT_WORDS


def test_hypernym_strategy_separates_the_cranes(imagenet: list[ClassInfo]) -> None:
    bird, machine = imagenet[134], imagenet[517]
    assert build_prompt(bird, "name", 0) == build_prompt(machine, "name", 0)
    assert build_prompt(bird, "hypernym", 0) == "a photo of a crane, a kind of wading bird"
    assert build_prompt(machine, "hypernym", 0) == "a photo of a crane, a kind of lifting device"
    assert build_prompt(bird, "gloss", 0) != build_prompt(machine, "gloss", 0)


def test_negative_prompt() -> None:
    assert build_negative_prompt("") == ""
    assert build_negative_prompt(" Default ") == DEFAULT_NEGATIVE_PROMPT
    assert build_negative_prompt("  blurry,   text ") == "blurry, text"


# ------------------------------------------------------------------------------------------------------------
# zero-shot class texts


def test_imagenet_class_texts_are_distinct_and_tell_cranes_apart():
    from imagenet_plus.classes.prompts import class_texts, shared_names

    classes = resolve_classes("imagenet-1k")
    texts = class_texts(classes)
    assert len(texts) == 1000 and len(set(texts)) == 1000 and len({t.lower() for t in texts}) == 1000
    assert shared_names(classes) == {"crane": [134, 517], "cardigan": [264, 474], "maillot": [638, 639]}
    assert texts[134] != texts[517] and "wading bird" in texts[134] and "lifting device" in texts[517]
    assert texts[638] != texts[639]
    # classes with a name of their own keep the plain template
    assert texts[0] == "a photo of a tench" and texts[999] == "a photo of a toilet tissue"


def test_crane_text_embeddings_differ_in_the_tiny_clip():
    import torch

    from imagenet_plus.classes.prompts import class_texts
    from imagenet_plus.score.scorers.clip import ClipScorer

    classes = resolve_classes("imagenet-1k")
    texts = class_texts([classes[134], classes[517]])
    emb = ClipScorer("tiny-random").embed_texts(texts)
    assert emb.shape[0] == 2 and float(torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0)) < 0.9999
    same = ClipScorer("tiny-random").embed_texts(["a photo of a crane", "a photo of a crane"])
    assert torch.equal(same[0], same[1])  # the old texts: one embedding for both classes


def test_wordnet_subtree_class_texts_are_distinct():
    from imagenet_plus.classes.prompts import class_texts, shared_names

    classes = resolve_classes("wordnet:dog.n.01")
    texts = class_texts(classes)
    assert shared_names(classes)  # the subtree does repeat names
    assert len({t.lower() for t in texts}) == len(classes)


def test_class_texts_fall_back_to_gloss_and_id():
    from imagenet_plus.classes.prompts import class_texts

    same_hypernym = [ClassInfo(0, "a", "bat", definition="a club used in games", hypernym="thing"),
                     ClassInfo(1, "b", "bat", definition="a nocturnal flying mammal", hypernym="thing")]
    assert class_texts(same_hypernym) == ["a photo of a bat, a club used in games",
                                          "a photo of a bat, a nocturnal flying mammal"]
    bare = [ClassInfo(0, "bat-1", "bat"), ClassInfo(1, "bat-2", "Bat"), ClassInfo(2, "ball", "ball")]
    texts = class_texts(bare)
    assert texts == ["a photo of a bat (bat-1)", "a photo of a Bat (bat-2)", "a photo of a ball"]
