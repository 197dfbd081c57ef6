"""Prompt strategies: the text prompt of each generated image (used by ``generate``; no folders of its own).

Every image has a seed; the strategy (when several are configured) and every random choice inside a
strategy come from ``random.Random`` seeded by that integer (or by a string derived from it, which
``random`` hashes with SHA-512 — never Python's salted ``hash()``), so the same seed gives the same
prompt on every machine, process and Python version ≥ 3.2.

Strategies (``{name}`` is the class name, ``{hypernym}`` its parent, ``{gloss}`` the first clause of
its definition):

- ``name``: ``a photo of a {name}``
- ``gloss``: ``a photo of a {name}, {gloss}``
- ``hypernym``: ``a photo of a {name}, a kind of {hypernym}``
- ``diverse``: ``a photo of a {name}, a kind of {hypernym}, {viewpoint}, {lighting}, {scene}, {style}``
  where each slot is drawn from a list of phrases (tens each). The scene is a background or a
  setting (one slot, so the two never contradict); settings are chosen from a list that suits the
  class's WordNet group (animals get habitats, foods get tables and plates, …).

Graceful degradation for classes without a definition or hypernym (custom classes): ``gloss``
without a definition is ``name``; ``hypernym`` without a hypernym is ``name``; ``diverse`` drops
the "a kind of" part. Prompts are whitespace-normalised and kept short: the gloss is cut to its
first clause and at most :data:`MAX_GLOSS_WORDS` words, and every prompt is at most
:data:`MAX_PROMPT_WORDS` words (CLIP's text encoder reads 77 tokens; an English word is about 1.3).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from imagenet_plus.errors import UserError

if TYPE_CHECKING:
    from imagenet_plus.classes.sets import ClassInfo

#: The known strategies.
STRATEGIES = ("name", "gloss", "hypernym", "diverse")
#: A negative prompt that suits photo-realistic class images (opt-in: ``--negative-prompt default``).
DEFAULT_NEGATIVE_PROMPT = (
    "blurry, low quality, jpeg artifacts, text, watermark, logo, cartoon, drawing, illustration, painting, "
    "3d render, deformed, disfigured, cropped, out of frame"
)
#: The longest gloss kept (words).
MAX_GLOSS_WORDS = 16
#: The longest prompt built (words); about 60 CLIP tokens.
MAX_PROMPT_WORDS = 45

VIEWPOINTS = (
    "close-up",
    "extreme close-up",
    "side view",
    "front view",
    "three-quarter view",
    "rear view",
    "seen from above",
    "seen from below",
    "top-down view",
    "low-angle shot",
    "high-angle shot",
    "eye-level shot",
    "wide shot",
    "medium shot",
    "full view",
    "centered in the frame",
    "off-center composition",
    "macro shot",
    "from a distance",
    "partially in view",
    "candid shot",
    "shallow depth of field",
    "deep depth of field",
    "telephoto shot",
    "wide-angle shot",
    "overhead shot",
    "profile view",
    "tilted angle",
)

LIGHTING = (
    "soft natural light",
    "bright daylight",
    "golden hour light",
    "overcast light",
    "harsh midday sun",
    "warm evening light",
    "cool morning light",
    "studio lighting",
    "soft window light",
    "dim indoor light",
    "backlit",
    "side lighting",
    "diffuse light",
    "dramatic lighting",
    "fluorescent light",
    "light from a lamp",
    "dappled sunlight",
    "twilight",
    "sunset light",
    "flash photography",
    "low light",
    "high-key lighting",
    "low-key lighting",
    "rim lighting",
    "hazy light",
    "light after rain",
)

BACKGROUNDS = (
    "on a plain white background",
    "on a plain gray background",
    "on a black background",
    "against a blurred background",
    "against a colorful background",
    "against a clear sky",
    "against a brick wall",
    "against a wooden wall",
    "against a concrete wall",
    "with a cluttered background",
    "with a bokeh background",
    "with a simple background",
    "against a dark background",
    "against a pastel background",
    "against a stone wall",
    "against green foliage",
    "against a wooden fence",
    "on a light blue background",
    "against a white wall",
    "with a softly lit background",
)

#: Settings by WordNet lexicographer group; classes of other groups use ``SETTINGS["default"]``.
SETTINGS: dict[str, tuple[str, ...]] = {
    "noun.animal": (
        "in its natural habitat",
        "in the wild",
        "in a forest",
        "in tall grass",
        "near water",
        "in a zoo enclosure",
        "on a rock",
        "on a branch",
        "in a field",
        "in the snow",
        "on sand",
        "in a backyard",
        "in shallow water",
        "among leaves",
        "in a meadow",
        "on a farm",
        "at the edge of a pond",
        "in a park",
        "under a tree",
        "on a dirt path",
    ),
    "noun.plant": (
        "in a garden",
        "in a forest",
        "in a greenhouse",
        "in a pot",
        "in a meadow",
        "by a roadside",
        "in a field",
        "on a hillside",
        "in a park",
        "near a stream",
        "in a vase",
        "among other plants",
        "on a windowsill",
        "in a flower bed",
        "at a market stall",
        "in a botanical garden",
        "on a mountain slope",
        "in a wetland",
        "in a desert",
        "in an orchard",
    ),
    "noun.food": (
        "on a plate",
        "on a wooden table",
        "on a kitchen counter",
        "in a bowl",
        "at a market stall",
        "on a cutting board",
        "in a restaurant",
        "on a picnic blanket",
        "in a bakery display",
        "on a tray",
        "in a lunch box",
        "on a dining table",
        "in a shop window",
        "on a marble countertop",
        "on a kitchen table",
        "in a glass jar",
        "on a buffet table",
        "in a basket",
        "at a street food stand",
        "on a napkin",
    ),
    "noun.artifact": (
        "on a table",
        "in a room",
        "on a shelf",
        "in a workshop",
        "in a store",
        "on a street",
        "in a garage",
        "outdoors",
        "in an office",
        "in a warehouse",
        "in a kitchen",
        "in a living room",
        "at a museum",
        "on a desk",
        "on the floor",
        "in a backyard",
        "in a city",
        "in a parking lot",
        "at a construction site",
        "in a factory",
        "on a sidewalk",
        "in a classroom",
    ),
    "default": (
        "outdoors",
        "indoors",
        "in a park",
        "on a street",
        "in a room",
        "in a field",
        "in a city",
        "in the countryside",
        "near the sea",
        "in the mountains",
        "in a village",
        "in a garden",
        "on a table",
        "at a market",
        "by a river",
        "in a town square",
        "in a forest clearing",
        "on a beach",
        "in a courtyard",
        "in a public building",
    ),
}

STYLES = (
    "photograph",
    "DSLR photo",
    "35mm film photo",
    "smartphone photo",
    "high resolution photo",
    "sharp focus",
    "documentary photo",
    "amateur snapshot",
    "professional photo",
    "stock photo",
    "natural colors",
    "realistic photo",
    "detailed photo",
    "candid photo",
    "editorial photo",
    "travel photo",
    "color photo",
    "4k photo",
    "everyday photo",
    "wildlife-style photo",
)


def check_strategies(strategies: Sequence[str]) -> None:
    """Raise ``UserError`` for an empty list or an unknown strategy (naming it)."""
    if not strategies:
        raise UserError(f"no prompt strategy given (choose from {', '.join(STRATEGIES)})")
    for s in strategies:
        if s not in STRATEGIES:
            raise UserError(f"unknown prompt strategy {s!r} (choose from {', '.join(STRATEGIES)})")


def choose_strategy(strategies: tuple[str, ...], seed: int) -> str:
    """Pick one strategy for an image, uniformly over ``strategies`` and deterministically per seed.

    Args:
        strategies: the configured strategies (a repeated one counts once per repeat).
        seed: the image's seed.

    Raises:
        UserError: empty list or unknown strategy.
    """
    check_strategies(strategies)
    if len(strategies) == 1:
        return strategies[0]
    return strategies[random.Random(f"strategy:{seed}").randrange(len(strategies))]


def clean(text: str) -> str:
    """Collapse whitespace and strip spaces and stray commas at the ends."""
    text = " ".join(str(text).split())
    text = re.sub(r"\s+([,;:.])", r"\1", text)
    return text.strip(" ,;")


def short_gloss(definition: str, max_words: int = MAX_GLOSS_WORDS) -> str:
    """The first clause of a definition, without parentheses, cut to ``max_words`` words.

    ``a soft thin (usually translucent) paper; used for wrapping`` → ``a soft thin paper``.
    When the clause is too long it is cut at the last comma within the limit, else at the word limit.
    """
    text = re.sub(r"\([^()]*\)", " ", definition or "")
    text = clean(re.split(r"[;:]", text, maxsplit=1)[0])
    words = text.split()
    if len(words) <= max_words:
        return clean(text)
    cut = " ".join(words[:max_words])
    if "," in cut and len(cut[: cut.rfind(",")].split()) >= max_words // 2:
        cut = cut[: cut.rfind(",")]
    return clean(cut)


def _limit_words(text: str, max_words: int = MAX_PROMPT_WORDS) -> str:
    words = text.split()
    return clean(" ".join(words[:max_words])) if len(words) > max_words else text


def build_prompt(cls: ClassInfo, strategy: str, seed: int) -> str:
    """The prompt for one image of ``cls``.

    Args:
        cls: the class (name, definition, hypernym and group are used).
        strategy: one of :data:`STRATEGIES`.
        seed: the image's seed (drives the ``diverse`` choices).

    Returns:
        A clean, whitespace-normalised prompt that contains the class name.

    Raises:
        UserError: unknown strategy.
    """
    check_strategies((strategy,))
    name = clean(cls.name)
    base = f"a photo of a {name}"
    hypernym = clean(cls.hypernym)
    if hypernym.lower() == name.lower():
        hypernym = ""
    if strategy == "name":
        parts = [base]
    elif strategy == "gloss":
        gloss = short_gloss(cls.definition)
        parts = [base, gloss] if gloss else [base]
    elif strategy == "hypernym":
        parts = [base, f"a kind of {hypernym}"] if hypernym else [base]
    else:  # diverse
        rng = random.Random(f"diverse:{seed}")
        settings = SETTINGS.get(cls.group, SETTINGS["default"])
        scene = rng.choice(BACKGROUNDS) if rng.random() < 0.35 else rng.choice(settings)
        parts = [base]
        if hypernym:
            parts.append(f"a kind of {hypernym}")
        parts += [rng.choice(VIEWPOINTS), rng.choice(LIGHTING), scene, rng.choice(STYLES)]
    return _limit_words(clean(", ".join(parts)))


def build_negative_prompt(text: str) -> str:
    """The negative prompt for every image: ``default`` means :data:`DEFAULT_NEGATIVE_PROMPT`, else ``text`` cleaned."""
    text = clean(text)
    return DEFAULT_NEGATIVE_PROMPT if text.lower() == "default" else text


# ------------------------------------------------------------------------------------------------------------
# zero-shot class texts (the texts the score stage embeds to classify images by CLIP)

#: Template of a zero-shot class text whose name no other class of the set shares.
CLASS_TEXT_TEMPLATE = "a photo of a {name}"


def shared_names(classes: Sequence[ClassInfo]) -> dict[str, list[int]]:
    """Class names (lower-cased, whitespace-normalised) that two or more classes of the set share → their labels.

    ImageNet-1k has three: ``crane`` (134, 517), ``cardigan`` (264, 474) and ``maillot`` (638, 639).
    """
    by_name: dict[str, list[int]] = {}
    for c in classes:
        by_name.setdefault(clean(c.name).lower(), []).append(c.label)
    return {name: labels for name, labels in by_name.items() if len(labels) > 1}


def class_texts(classes: Sequence[ClassInfo]) -> list[str]:
    """The zero-shot class texts, in the order of ``classes``, pairwise distinct.

    A class whose name no other class of the set shares gets ``a photo of a {name}``. Classes that share a
    name (case-insensitively) get what tells them apart, in this order, taking the first that makes every
    text of the group distinct: ``a photo of a {name}, a kind of {hypernym}``; ``a photo of a {name},
    {gloss}`` (the short gloss, see :func:`short_gloss`); both; and, as a last resort (custom classes with
    neither), the class id: ``a photo of a {name} ({id})``. Any text still equal to another after that (a
    name that equals another class's disambiguated text, in theory) gets its class id appended.

    Args:
        classes: the class set (``name``, ``hypernym``, ``definition`` and ``id`` are used).

    Returns:
        One text per class; no two equal (compared case-sensitively, as CLIP's tokenizer lower-cases anyway,
        texts are also distinct lower-cased).
    """
    texts = [CLASS_TEXT_TEMPLATE.format(name=clean(c.name)) for c in classes]
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        groups.setdefault(clean(c.name).lower(), []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        for build in (_with_hypernym, _with_gloss, _with_both, _with_id):
            candidate = [build(classes[i]) for i in members]
            if len({t.lower() for t in candidate}) == len(candidate):
                break
        for i, t in zip(members, candidate, strict=True):
            texts[i] = t
    seen: set[str] = set()
    for i, c in enumerate(classes):
        if texts[i].lower() in seen:
            texts[i] = clean(f"{texts[i]} ({c.id})")
        seen.add(texts[i].lower())
    return texts


def _hypernym_of(cls: ClassInfo) -> str:
    hypernym = clean(cls.hypernym)
    return "" if hypernym.lower() == clean(cls.name).lower() else hypernym


def _with_hypernym(cls: ClassInfo) -> str:
    base = CLASS_TEXT_TEMPLATE.format(name=clean(cls.name))
    hypernym = _hypernym_of(cls)
    return _limit_words(f"{base}, a kind of {hypernym}") if hypernym else base


def _with_gloss(cls: ClassInfo) -> str:
    base = CLASS_TEXT_TEMPLATE.format(name=clean(cls.name))
    gloss = short_gloss(cls.definition)
    return _limit_words(f"{base}, {gloss}") if gloss else base


def _with_both(cls: ClassInfo) -> str:
    gloss = short_gloss(cls.definition)
    with_hypernym = _with_hypernym(cls)
    return _limit_words(f"{with_hypernym}, {gloss}") if gloss else with_hypernym


def _with_id(cls: ClassInfo) -> str:
    return clean(f"{_with_both(cls)} ({cls.id})")
