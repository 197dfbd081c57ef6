"""WordNet 3.0 offline, through nltk's reader, and a compact index derived from it (``classes`` stage).

ImageNet's class ids are WordNet 3.0 noun offsets (``n01440764`` = ``tench.n.01``). nltk's
``WordNetCorpusReader`` reads them once a ``corpora/wordnet/`` folder sits on ``nltk.data.path``:

1. If nltk already finds ``corpora/wordnet`` (``python -m nltk.downloader wordnet``, ``NLTK_DATA``),
   that copy is used.
2. Else the WordNet 3.0 database files of the system are used: ``$WNSEARCHDIR``, ``$WNHOME/dict``,
   ``/usr/share/wordnet`` (Debian/Ubuntu ``wordnet-base`` + ``wordnet-sense-index``) or
   ``/usr/local/WordNet-3.0/dict``. nltk also needs a ``lexnames`` file, which Debian does not ship:
   it is the fixed table of the 45 lexicographer files of WordNet's lexnames(5WN) manual page
   (:data:`LEXNAMES`). A folder ``cache_dir("nltk_data")/corpora/wordnet/`` holding copies of the
   system files (36 MB) plus that ``lexnames`` is built once (in a temporary folder renamed into
   place) and appended to ``nltk.data.path``. Links do not work: nltk 3.10 refuses to open a symlink
   whose target leaves the corpus folder and any file with more than one hard link.
3. Otherwise a :class:`~imagenet_plus.errors.UserError` says how to install WordNet.

nltk is the reader of record; the class-set lookups go through the compact index derived from it once
(:mod:`imagenet_plus.classes.wordnet_index`), because loading nltk costs about 10 s and 0.4 GB per process.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.errors import UserError
from imagenet_plus.io.cache import cache_dir

#: WordNet's 45 lexicographer files: (number, name, syntactic category 1=noun 2=verb 3=adj 4=adv),
#: from the lexnames(5WN) manual page of WordNet 3.0. Written to the ``lexnames`` file nltk reads.
LEXNAMES: tuple[tuple[int, str, int], ...] = (
    (0, "adj.all", 3),
    (1, "adj.pert", 3),
    (2, "adv.all", 4),
    (3, "noun.Tops", 1),
    (4, "noun.act", 1),
    (5, "noun.animal", 1),
    (6, "noun.artifact", 1),
    (7, "noun.attribute", 1),
    (8, "noun.body", 1),
    (9, "noun.cognition", 1),
    (10, "noun.communication", 1),
    (11, "noun.event", 1),
    (12, "noun.feeling", 1),
    (13, "noun.food", 1),
    (14, "noun.group", 1),
    (15, "noun.location", 1),
    (16, "noun.motive", 1),
    (17, "noun.object", 1),
    (18, "noun.person", 1),
    (19, "noun.phenomenon", 1),
    (20, "noun.plant", 1),
    (21, "noun.possession", 1),
    (22, "noun.process", 1),
    (23, "noun.quantity", 1),
    (24, "noun.relation", 1),
    (25, "noun.shape", 1),
    (26, "noun.state", 1),
    (27, "noun.substance", 1),
    (28, "noun.time", 1),
    (29, "verb.body", 2),
    (30, "verb.change", 2),
    (31, "verb.cognition", 2),
    (32, "verb.communication", 2),
    (33, "verb.competition", 2),
    (34, "verb.consumption", 2),
    (35, "verb.contact", 2),
    (36, "verb.creation", 2),
    (37, "verb.emotion", 2),
    (38, "verb.motion", 2),
    (39, "verb.perception", 2),
    (40, "verb.possession", 2),
    (41, "verb.social", 2),
    (42, "verb.stative", 2),
    (43, "verb.weather", 2),
    (44, "adj.ppl", 3),
)

#: The database files nltk's reader opens (``lexnames`` is written by us).
WORDNET_FILES = (
    "cntlist.rev",
    "index.sense",
    "index.adj",
    "index.adv",
    "index.noun",
    "index.verb",
    "data.adj",
    "data.adv",
    "data.noun",
    "data.verb",
    "adj.exc",
    "adv.exc",
    "noun.exc",
    "verb.exc",
)

#: A WordNet id: part of speech letter + 8-digit offset (``n01440764``).
WNID_PATTERN = re.compile(r"^([nvasr])(\d{8})$")

INSTALL_HINT = (
    "WordNet 3.0 not found: install it with 'apt-get install wordnet-base wordnet-sense-index' "
    "(Debian/Ubuntu) or 'python -m nltk.downloader wordnet', or point $WNSEARCHDIR at a WordNet 3.0 dict folder"
)


def lexnames_text() -> str:
    """The ``lexnames`` file: one ``NN<TAB>name<TAB>category`` line per lexicographer file."""
    return "".join(f"{num:02d}\t{name}\t{cat}\n" for num, name, cat in LEXNAMES)


def system_wordnet_dirs() -> list[Path]:
    """Folders that may hold the WordNet 3.0 database files, in the order they are tried."""
    dirs = []
    if os.environ.get("WNSEARCHDIR"):
        dirs.append(Path(os.environ["WNSEARCHDIR"]))
    if os.environ.get("WNHOME"):
        dirs.append(Path(os.environ["WNHOME"]) / "dict")
    dirs += [Path("/usr/share/wordnet"), Path("/usr/local/WordNet-3.0/dict")]
    return dirs


def _has_database(folder: Path) -> bool:
    return all((folder / name).is_file() for name in WORDNET_FILES)


def _source_stamp(source: Path) -> str:
    """Where the copies came from and the size and mtime of each file, to notice an updated source."""
    lines = [str(source.resolve())]
    for name in WORDNET_FILES:
        st = (source / name).stat()
        lines.append(f"{name} {st.st_size} {st.st_mtime_ns}")
    return "\n".join(lines) + "\n"


def _is_built(target: Path, stamp: str) -> bool:
    marker = target / ".imagenet-plus-source"
    return (
        marker.is_file()
        and marker.read_text(encoding="utf-8") == stamp
        and _has_database(target)
        and (target / "lexnames").is_file()
    )


def build_nltk_folder(source: Path, nltk_data: Path) -> Path:
    """Build ``nltk_data/corpora/wordnet/`` from a WordNet dict folder, once and atomically.

    The folder is built under a temporary name and renamed into place, so a process (or another rank
    of a multi-process run) never sees half of it; it is rebuilt when the source files change.

    Args:
        source: a folder holding the WordNet 3.0 database files (:data:`WORDNET_FILES`).
        nltk_data: the ``nltk_data`` root to build under.

    Returns:
        The ``corpora/wordnet`` folder (copies of ``source``'s files plus a ``lexnames`` file).
    """
    target = nltk_data / "corpora" / "wordnet"
    stamp = _source_stamp(source)
    if _is_built(target, stamp):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"wordnet.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in WORDNET_FILES:
        shutil.copyfile(source / name, tmp / name)
    (tmp / "lexnames").write_text(lexnames_text(), encoding="utf-8")
    (tmp / ".imagenet-plus-source").write_text(stamp, encoding="utf-8")
    if _is_built(target, stamp):  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        return target
    if target.exists():  # stale: built from another or an older source
        old = target.with_name(f"wordnet.old-{os.getpid()}")
        try:
            os.replace(target, old)
        except OSError:
            pass
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process renamed its complete folder first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_wordnet_path() -> str:
    """Make ``corpora/wordnet`` findable by nltk and return where it is.

    Raises:
        UserError: neither nltk's own copy nor a system WordNet 3.0 is present.
    """
    import nltk

    try:
        return str(nltk.data.find("corpora/wordnet"))
    except LookupError:
        pass
    for folder in system_wordnet_dirs():
        if _has_database(folder):
            root = cache_dir("nltk_data")
            build_nltk_folder(folder, root)
            if str(root) not in nltk.data.path:
                nltk.data.path.append(str(root))
            return str(nltk.data.find("corpora/wordnet"))
    raise UserError(INSTALL_HINT)


@functools.lru_cache(maxsize=1)
def wordnet() -> Any:
    """nltk's WordNet 3.0 reader (loaded once per process).

    Raises:
        UserError: WordNet is not installed, or the copy found is not version 3.0 (ImageNet's wnids
            are WordNet 3.0 offsets).
    """
    where = ensure_wordnet_path()
    from nltk.corpus import wordnet as wn

    wn.ensure_loaded()
    version = wn.get_version()
    if version != "3.0":
        raise UserError(f"the WordNet found at {where} is version {version}, but ImageNet ids need WordNet 3.0")
    return wn


def wnid_of(synset: Any) -> str:
    """``tench.n.01`` → ``n01440764`` (part of speech + 8-digit offset)."""
    pos = synset.pos()
    if pos == "s":  # adjective satellites share the adjective files
        pos = "a"
    return f"{pos}{synset.offset():08d}"


def is_wnid(text: str) -> bool:
    """Whether ``text`` looks like a WordNet id (``n01440764``)."""
    return WNID_PATTERN.match(text) is not None


def synset_of_wnid(wnid: str) -> Any:
    """``n01440764`` → the synset ``tench.n.01``.

    Raises:
        UserError: ``wnid`` is malformed or names no synset of WordNet 3.0.
    """
    m = WNID_PATTERN.match(wnid)
    if m is None:
        raise malformed_wnid(wnid)
    wn = wordnet()
    try:
        with warnings.catch_warnings():  # nltk warns, then returns None, for an offset with no synset
            warnings.simplefilter("ignore")
            synset = wn.synset_from_pos_and_offset(m.group(1), int(m.group(2)))
    except Exception:  # WordNetError, or a parse failure for an offset in the middle of a record
        synset = None
    if synset is None or wnid_of(synset) != ("a" if m.group(1) == "s" else m.group(1)) + m.group(2):
        raise unknown_wnid(wnid)
    return synset


def malformed_wnid(wnid: str) -> UserError:
    return UserError(f"malformed WordNet id {wnid!r} (expected a letter n/v/a/r and 8 digits, like n01440764)")


def unknown_wnid(wnid: str) -> UserError:
    return UserError(f"unknown WordNet id {wnid!r}: no WordNet 3.0 synset has that offset")


def unknown_name(name: str) -> UserError:
    return UserError(f"unknown WordNet synset {name!r} (expected a name like object.n.01 or an id like n00002684)")


def synset_by_name(name: str) -> Any:
    """``object.n.01`` → its synset.

    Raises:
        UserError: no such synset.
    """
    wn = wordnet()
    try:
        return wn.synset(name)
    except Exception:  # WordNetError or ValueError on malformed names
        raise unknown_name(name) from None


def lexname(synset: Any) -> str:
    """The lexicographer file of a synset, e.g. ``noun.animal`` (the class's coarse group)."""
    return str(synset.lexname())


def readable(lemma_name: str) -> str:
    """``Tinca_tinca`` → ``Tinca tinca``."""
    return lemma_name.replace("_", " ")


@functools.cache
def _data_stream(pos: str) -> Any:
    """An open stream on ``data.noun`` (or ``.verb``, ``.adj``, ``.adv``), kept for the process's lifetime."""
    return wordnet().open(f"data.{ {'n': 'noun', 'v': 'verb', 'a': 'adj', 'r': 'adv'}[pos] }")


def hypernyms_in_file_order(synset: Any) -> list[Any]:
    """The synset's hypernyms (instance hypernyms if it has none) in the order of its WordNet data line.

    nltk keeps a synset's pointers in a ``set``, so ``synset.hypernyms()`` comes in an order that
    changes with Python's string-hash seed from one process to the next (``dog.n.01`` gives canine
    or domestic animal first). The data file's order is fixed, and lexicographers list the main
    parent first, so "first hypernym" is read from there (the pointer list of the line, see wndb(5WN)).
    """
    wn = wordnet()
    f = _data_stream("a" if synset.pos() == "s" else synset.pos())
    f.seek(synset.offset())
    pointers = line_pointers(f.readline())
    for symbol in ("@", "@i"):
        parents = [wn.synset_from_pos_and_offset(p_pos, int(p_off)) for sym, p_off, p_pos in pointers if sym == symbol]
        if parents:
            return parents
    return []


def line_pointers(line: str) -> list[tuple[str, str, str]]:
    """``(symbol, offset, pos)`` of each pointer of a data-file line, in file order (wndb(5WN))."""
    tokens = line.split()
    word_count = int(tokens[3], 16)
    at = 4 + 2 * word_count
    pointer_count = int(tokens[at])
    return [(tokens[at + 1 + 4 * i], tokens[at + 2 + 4 * i], tokens[at + 3 + 4 * i]) for i in range(pointer_count)]


def first_hypernym_name(synset: Any) -> str:
    """The first lemma of the synset's first hypernym (instance hypernym if none), human readable; "" at a root.

    "First" is the data file's order (see :func:`hypernyms_in_file_order`), the same in every process.
    """
    parents = hypernyms_in_file_order(synset)
    if not parents:
        return ""
    return readable(parents[0].lemma_names()[0])


def hyponym_closure(synset: Any, include_root: bool = True, instances: bool = False) -> list[Any]:
    """Every synset below ``synset`` along hyponym links (each once), sorted by wnid.

    Args:
        synset: the root.
        include_root: put the root itself in the result.
        instances: also follow instance-hyponym links (named entities such as cities or people).

    Returns:
        Distinct synsets, sorted by wnid.
    """
    seen = {synset}
    stack = [synset]
    while stack:
        s = stack.pop()
        children = s.hyponyms() + (s.instance_hyponyms() if instances else [])
        for child in children:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    if not include_root:
        seen.discard(synset)
    return sorted(seen, key=wnid_of)


def noun_sense_count(lemma: str) -> int:
    """How many WordNet 3.0 noun synsets the lemma names (``crane`` → 5; spaces or ``_`` between words).

    A count above 1 means the name is polysemous: a text-to-image model may draw another sense of it.

    Raises:
        UserError: WordNet is not installed.
    """
    key = "_".join(str(lemma).strip().split())
    if not key:
        return 0
    return len(wordnet().synsets(key, pos="n"))


# ---------------------------------------------------------------------------------------------------
# What a class set needs of a synset: read through nltk, or from the compact index derived from it


@dataclass(frozen=True)
class SynsetInfo:
    """What a class set needs of one synset; the same whether read through nltk or from the index.

    Attributes:
        wnid: part-of-speech letter and 8-digit offset (``n01440764``; ``a`` for adjective satellites).
        name: nltk's synset name (``tench.n.01``).
        pos: nltk's part of speech: ``n``, ``v``, ``a``, ``s`` (adjective satellite) or ``r``.
        lemma_names: nltk's lemma names in file order, with ``_`` (``("tench", "Tinca_tinca")``).
        definition: nltk's definition (the gloss without its examples).
        lexname: the lexicographer file (``noun.animal``).
        hypernym: first lemma name of the first hypernym in data-file order (instance hypernym if it has
            none; see :func:`hypernyms_in_file_order`), ``""`` at a root.
    """

    wnid: str
    name: str
    pos: str
    lemma_names: tuple[str, ...]
    definition: str
    lexname: str
    hypernym: str


def synset_info(synset: Any) -> SynsetInfo:
    """Read a :class:`SynsetInfo` from an nltk synset (what the index stores for every synset)."""
    parents = hypernyms_in_file_order(synset)
    return SynsetInfo(
        wnid=wnid_of(synset),
        name=str(synset.name()),
        pos=str(synset.pos()),
        lemma_names=tuple(str(x) for x in synset.lemma_names()),
        definition=str(synset.definition()),
        lexname=lexname(synset),
        hypernym=str(parents[0].lemma_names()[0]) if parents else "",
    )


class NltkWordNet:
    """The class-set lookups read through nltk's reader (about 10 s and 0.4 GB to load in each process)."""

    def by_wnid(self, wnid: str) -> SynsetInfo:
        """See :func:`synset_of_wnid` (same errors)."""
        return synset_info(synset_of_wnid(wnid))

    def by_name(self, name: str) -> SynsetInfo:
        """See :func:`synset_by_name` (same errors)."""
        return synset_info(synset_by_name(name))

    def subtree(self, root: SynsetInfo, instances: bool = False) -> list[SynsetInfo]:
        """``root`` and every synset below it along hyponym links, sorted by wnid (see :func:`hyponym_closure`)."""
        synsets = hyponym_closure(synset_of_wnid(root.wnid), include_root=True, instances=instances)
        return [synset_info(s) for s in synsets]
