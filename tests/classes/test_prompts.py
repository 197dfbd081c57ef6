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
    DOMAINS,
    INPUT_STRATEGIES,
    LIGHTING,
    MAX_PROMPT_WORDS,
    SETTINGS,
    STRATEGIES,
    STYLES,
    TEXT_STRATEGIES,
    VIEWPOINTS,
    build_negative_prompt,
    build_prompt,
    choose_strategy,
    indefinite_article,
    places365_scenes,
    short_gloss,
)
from imagenet_plus.classes.sets import ClassInfo, resolve_classes
from imagenet_plus.errors import UserError

TENCH_GLOSS = "freshwater dace-like game fish of Europe and western Asia noted for ability to survive outside water"
TENCH = ClassInfo(0, "n01440764", "tench", ("tench", "Tinca tinca"), TENCH_GLOSS, "cyprinid", "noun.animal")
CUSTOM = ClassInfo(1, "sea-otter", "  sea   otter ", ("sea otter",), "", "", "")
#: The strategies that existed before ``context``, ``domain``, ``caption`` and ``llm``: their prompts must not change.
ORIGINAL_STRATEGIES = ("name", "gloss", "hypernym", "diverse")


@pytest.fixture(scope="module")
def imagenet() -> list[ClassInfo]:
    return resolve_classes("imagenet-1k")


def test_choose_strategy_is_deterministic_and_uniform() -> None:
    both = ("name", "diverse")
    assert [choose_strategy(both, s) for s in range(50)] == [choose_strategy(both, s) for s in range(50)]
    counts = collections.Counter(choose_strategy(ORIGINAL_STRATEGIES, seed) for seed in range(4000))
    assert set(counts) == set(ORIGINAL_STRATEGIES)
    assert all(850 <= n <= 1150 for n in counts.values()), counts
    counts = collections.Counter(choose_strategy(STRATEGIES, seed) for seed in range(8000))
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
    extra = dict(caption="a fish in a net", descriptions=["in a pond", "on ice"])
    ours = [build_prompt(TENCH, choose_strategy(STRATEGIES, s), s, **extra) for s in range(40)]
    assert {p.split(",")[0] for p in ours} > {"a photo of a tench"}  # the new strategies are drawn too
    code = (
        "import json; from imagenet_plus.classes import ClassInfo; "
        "from imagenet_plus.classes.prompts import STRATEGIES, build_prompt, choose_strategy; "
        f"c = ClassInfo.from_dict({TENCH.to_dict()!r}); "
        f"print(json.dumps([build_prompt(c, choose_strategy(STRATEGIES, s), s, **{extra!r}) for s in range(40)]))"
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
        for strategy in ORIGINAL_STRATEGIES + ("context",):
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


# ------------------------------------------------------------------------------------------------------------
# context, domain, caption and llm strategies

#: sha256 of the prompts of the four original strategies over ImageNet-1k, seeds 0, 7 and 2**62 + 5, computed
#: with the code before the ``context``/``domain``/``caption``/``llm`` strategies were added.
ORIGINAL_PROMPTS_SHA256 = "27aa838835c642e6fc9996a27a21c4947ee0d4d3488b603cc5f85718b19822b4"


def test_original_strategies_are_byte_identical(imagenet: list[ClassInfo]) -> None:
    import hashlib

    h = hashlib.sha256()
    for c in imagenet:
        for strategy in ORIGINAL_STRATEGIES:
            for seed in (0, 7, 2**62 + 5):
                h.update(build_prompt(c, strategy, seed).encode() + b"\n")
    assert h.hexdigest() == ORIGINAL_PROMPTS_SHA256


def test_strategy_lists() -> None:
    assert STRATEGIES[:4] == ORIGINAL_STRATEGIES
    assert set(INPUT_STRATEGIES) == {"caption", "llm"}
    assert TEXT_STRATEGIES == ("name", "gloss", "hypernym", "diverse", "context", "domain")


def test_places365_scenes_are_the_365_categories() -> None:
    scenes = places365_scenes()
    names = [name for name, _ in scenes]
    assert len(names) == 365 and len(set(names)) == 365
    assert all(n == n.strip() and "_" not in n and "/" not in n and "  " not in n for n in names)
    # label order of categories_places365.txt: 0 airfield ... 364 zen garden; sub-categories made readable
    assert names[:5] == ["airfield", "airplane cabin", "airport terminal", "alcove", "alley"]
    assert names[8] == "outdoor apartment building" and names[15] == "hockey arena" and names[-1] == "zen garden"
    indoor = {name for name, inside in scenes if inside}
    assert "bedroom" in indoor and "kitchen" in indoor and "beach" not in indoor and "glacier" not in indoor
    assert 150 <= len(indoor) <= 200  # IO_places365.txt: 161 indoor, 204 outdoor
    # the file is package data (pyproject ships it with the wheel)
    from pathlib import Path

    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8")
    package_data = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("[", 2)[1]
    assert '"classes/places365.txt"' in package_data


def test_context_places_the_class_in_a_scene(imagenet: list[ClassInfo]) -> None:
    scenes = dict(places365_scenes())
    seen = set()
    for seed in range(2000):
        p = build_prompt(TENCH, "context", seed)
        assert p == build_prompt(TENCH, "context", seed)
        head, _, tail = p.partition("a photo of a tench, a kind of cyprinid, ")
        assert head == "" and tail
        where, article, scene = tail.split(" ", 2)
        assert scene in scenes and where == ("inside" if scenes[scene] else "in")
        assert article == ("an" if scene[0].lower() in "aeio" or scene.startswith("urban") else "a")
        seen.add(scene)
    assert len(seen) >= 0.95 * len(scenes)  # 2000 draws cover nearly all 365 scenes
    custom = build_prompt(CUSTOM, "context", 3)
    assert custom.startswith("a photo of a sea otter, in") and "a kind of" not in custom


def test_domain_names_the_class_in_a_depiction() -> None:
    used = collections.Counter()
    for seed in range(1200):
        p = build_prompt(TENCH, "domain", seed)
        assert p == build_prompt(TENCH, "domain", seed) and p.endswith(" of a tench")
        article, domain = p.removesuffix(" of a tench").split(" ", 1)
        assert domain in DOMAINS and article == indefinite_article(domain)
        used[domain] += 1
    assert set(used) == set(DOMAINS) and min(used.values()) >= 60  # about 100 each
    assert {"photo", "painting", "sketch", "cartoon", "3D render", "watercolor", "pencil drawing",
            "oil painting", "infographic"} <= set(DOMAINS)
    assert build_prompt(CUSTOM, "domain", 0).endswith(" of a sea otter")


def test_indefinite_article() -> None:
    assert [indefinite_article(w) for w in ("oil painting", "infographic", "urban canal", "utility room",
                                            "3D render", "sketch", "airfield", "Asian temple")] == [
        "an", "an", "an", "a", "a", "a", "an", "an"]


def test_caption_strategy() -> None:
    assert build_prompt(TENCH, "caption", 5, caption=" a fish  lying on a  table ") == "tench, a fish lying on a table"
    long = " ".join(["word"] * 80)
    p = build_prompt(TENCH, "caption", 5, caption=long)
    assert p.startswith("tench, word") and len(p.split()) == MAX_PROMPT_WORDS
    for caption in (None, "", "   "):
        with pytest.raises(UserError, match="'caption' needs the caption of a real image.*'n01440764'") as info:
            build_prompt(TENCH, "caption", 5, caption=caption)
        assert "\n" not in str(info.value)


def test_llm_strategy_picks_a_description_per_seed() -> None:
    descriptions = ["a tench resting among pond weeds", "swimming in murky green water", "held by an angler"]
    prompts = [build_prompt(TENCH, "llm", seed, descriptions=descriptions) for seed in range(300)]
    assert prompts == [build_prompt(TENCH, "llm", seed, descriptions=descriptions) for seed in range(300)]
    counts = collections.Counter(prompts)
    # a description naming the class is kept as written; the others get the name in front
    assert set(counts) == {"a tench resting among pond weeds", "tench, swimming in murky green water",
                           "tench, held by an angler"}
    assert min(counts.values()) >= 70
    with pytest.raises(UserError, match="'llm' needs scene descriptions"):
        build_prompt(TENCH, "llm", 0, descriptions=[" ", ""])
    with pytest.raises(UserError, match="'llm' needs scene descriptions"):
        build_prompt(TENCH, "llm", 0)


def test_every_strategy_names_every_imagenet_class(imagenet: list[ClassInfo]) -> None:
    extra = dict(caption="a close-up of an animal on grass", descriptions=["seen in its usual place"])
    for c in imagenet:
        for strategy in STRATEGIES:
            p = build_prompt(c, strategy, c.label, **extra)
            assert c.name in p and "  " not in p and len(p.split()) <= MAX_PROMPT_WORDS, p


def test_domain_and_scene_lists_are_documented() -> None:
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "recipes.md").read_text(encoding="utf-8")
    listed = docs.split("with the domain one of 12:", 1)[1].split(". They combine", 1)[0]
    assert [d.strip() for d in " ".join(listed.split()).split(",")] == list(DOMAINS)
    assert "365 scene categories of Places365" in docs and "categories_places365.txt" in docs
    header = Path(__file__).parents[2] / "imagenet_plus" / "classes" / "places365.txt"
    assert "Zhou, Lapedriza, Khosla, Oliva and Torralba" in header.read_text(encoding="utf-8").split("\n\n")[0]
