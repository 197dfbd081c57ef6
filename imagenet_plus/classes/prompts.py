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
- ``context``: ``a photo of a {name}, a kind of {hypernym}, inside/in a {scene}`` where the scene is one of
  Places365's 365 scene categories (:func:`places365_scenes`, shipped as ``places365.txt``): ``inside``
  for an indoor scene, ``in`` for an outdoor one (Sariyildiz et al., CVPR 2023, place the class in a
  Places365 scene: "c, h_c inside b").
- ``domain``: ``a {domain} of a {name}`` with the domain drawn from :data:`DOMAINS` (photo, painting,
  sketch, cartoon, …: the multi-domain prompts of Shipard et al., "Diversity is Definitely Needed",
  CVPR Workshops 2023, and DomainNet's six domains).
- ``caption``: ``{name}, {caption}``: the caption of the real image the image is paired with (the
  caption-in-prompt recipe of "Image Captions are Natural Prompts" and Real-Fake); ``build_prompt`` needs
  ``caption=``.
- ``llm``: one of the class's scene descriptions written by a local language model
  (:mod:`imagenet_plus.classes.llm`), prefixed with ``{name}, `` unless it names the class already;
  ``build_prompt`` needs ``descriptions=``.

Graceful degradation for classes without a definition or hypernym (custom classes): ``gloss``
without a definition is ``name``; ``hypernym`` without a hypernym is ``name``; ``diverse`` and
``context`` drop the "a kind of" part. Prompts are whitespace-normalised and kept short: the gloss is cut to its
first clause and at most :data:`MAX_GLOSS_WORDS` words, and every prompt is at most
:data:`MAX_PROMPT_WORDS` words (CLIP's text encoder reads 77 tokens; an English word is about 1.3).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imagenet_plus.errors import UserError

if TYPE_CHECKING:
    from imagenet_plus.classes.sets import ClassInfo

#: The known strategies.
STRATEGIES = ("name", "gloss", "hypernym", "diverse", "context", "domain", "caption", "llm")
#: Strategies that need an input besides the class: strategy → the ``build_prompt`` argument it needs.
INPUT_STRATEGIES = {"caption": "caption", "llm": "descriptions"}
#: Strategies built from the class and the seed alone.
TEXT_STRATEGIES = tuple(s for s in STRATEGIES if s not in INPUT_STRATEGIES)
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

#: Depictions of the ``domain`` strategy: the "photo / painting / sketch of …" prompts of Shipard et al.
#: ("Diversity is Definitely Needed", CVPR Workshops 2023), DomainNet's six domains (Peng et al., "Moment
#: Matching for Multi-Source Domain Adaptation", ICCV 2019: clipart, infograph, painting, quickdraw, real,
#: sketch, spelled as a prompt would say them: clip art image, infographic, painting, doodle, photo, sketch) and
#: common art media (cartoon, 3D render, watercolor, pencil drawing, oil painting, drawing).
DOMAINS = (
    "photo",
    "painting",
    "sketch",
    "cartoon",
    "3D render",
    "watercolor",
    "pencil drawing",
    "oil painting",
    "clip art image",
    "infographic",
    "doodle",
    "drawing",
)

#: The scene file of the ``context`` strategy (package data): ``name<TAB>indoor|outdoor`` per line.
PLACES365_FILE = Path(__file__).with_name("places365.txt")


@functools.lru_cache(maxsize=1)
def places365_scenes() -> tuple[tuple[str, bool], ...]:
    """Places365's 365 scene categories in label order, as (readable name, indoor) pairs.

    Read from :data:`PLACES365_FILE` (its header says where the names come from and how they were made
    readable: ``/a/apartment_building/outdoor`` → ``outdoor apartment building``).
    """
    scenes = []
    for line in PLACES365_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, where = line.split("\t")
            scenes.append((name, where == "indoor"))
    return tuple(scenes)


def indefinite_article(phrase: str) -> str:
    """``a`` or ``an`` for ``phrase``: ``an`` before a vowel letter, except the "you"/"one" sounds (``a utility room``).

    A spelling rule, not a pronunciation dictionary: it is right for every scene and domain shipped here.
    """
    word = phrase.strip().lower()
    if word[:1] in ("a", "e", "i", "o", "u") and not word.startswith(("uni", "use", "usu", "uti", "eu", "one")):
        return "an"
    return "a"


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


def build_prompt(cls: ClassInfo, strategy: str, seed: int, caption: str | None = None,
                 descriptions: Sequence[str] | None = None) -> str:
    """The prompt for one image of ``cls``.

    Args:
        cls: the class (name, definition, hypernym and group are used).
        strategy: one of :data:`STRATEGIES`.
        seed: the image's seed (drives the ``diverse``, ``context``, ``domain`` and ``llm`` choices).
        caption: the caption of the real image this image is paired with (``caption`` strategy).
        descriptions: the class's scene descriptions written by a language model (``llm`` strategy).

    Returns:
        A clean, whitespace-normalised prompt that contains the class name.

    Raises:
        UserError: unknown strategy; ``caption`` without a caption, ``llm`` without descriptions.
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
    elif strategy == "context":
        scene, indoor = random.Random(f"context:{seed}").choice(places365_scenes())
        parts = [base, f"a kind of {hypernym}"] if hypernym else [base]
        parts.append(f"{'inside' if indoor else 'in'} {indefinite_article(scene)} {scene}")
    elif strategy == "domain":
        domain = random.Random(f"domain:{seed}").choice(DOMAINS)
        parts = [f"{indefinite_article(domain)} {domain} of a {name}"]
    elif strategy == "caption":
        text = clean(caption or "")
        if not text:
            raise UserError(f"prompt strategy 'caption' needs the caption of a real image, and class {cls.id!r} "
                            "has none here (give real images and a captioner)")
        parts = [name, text]
    elif strategy == "llm":
        texts = [clean(d) for d in descriptions or ()]
        texts = [t for t in texts if t]
        if not texts:
            raise UserError(f"prompt strategy 'llm' needs scene descriptions, and class {cls.id!r} has none here "
                            "(give a prompt model)")
        text = texts[random.Random(f"llm:{seed}").randrange(len(texts))]
        parts = [text] if name.lower() in _limit_words(text).lower() else [name, text]
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
