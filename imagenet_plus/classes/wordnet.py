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

nltk is the reader of record, but loading it costs about 10 s and 0.4 GB per process (``import nltk``
2.5 s; the reader reads ``index.sense`` twice to map WordNet onto itself for the multilingual
functions, 4.7 s, and builds its lemma map from ``index.*``, 3.2 s). The class-set lookups
(:func:`lookup`) therefore go through a :class:`WordNetIndex`: an SQLite file in
``cache_dir("wordnet")`` holding, for every synset, exactly what :func:`synset_info` reads from nltk,
plus the hyponym links and nltk's lemma → sense map. It is written once by :func:`build_index`
(through nltk), atomically; its file name carries a hash of :func:`source_fingerprint` (the WordNet
files nltk could read, with sizes and mtimes, and nltk's own reader code) and of its own bytes, so an
index made from other files, by another nltk or of another format version is never opened, and a
damaged one is never trusted (it is rebuilt). ``IMAGENET_PLUS_WORDNET_INDEX=0`` reads everything
through nltk instead (:class:`NltkWordNet`, same results).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import sqlite3
import stat
import sys
import tempfile
import time
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
        raise _malformed_wnid(wnid)
    wn = wordnet()
    try:
        with warnings.catch_warnings():  # nltk warns, then returns None, for an offset with no synset
            warnings.simplefilter("ignore")
            synset = wn.synset_from_pos_and_offset(m.group(1), int(m.group(2)))
    except Exception:  # WordNetError, or a parse failure for an offset in the middle of a record
        synset = None
    if synset is None or wnid_of(synset) != ("a" if m.group(1) == "s" else m.group(1)) + m.group(2):
        raise _unknown_wnid(wnid)
    return synset


def _malformed_wnid(wnid: str) -> UserError:
    return UserError(f"malformed WordNet id {wnid!r} (expected a letter n/v/a/r and 8 digits, like n01440764)")


def _unknown_wnid(wnid: str) -> UserError:
    return UserError(f"unknown WordNet id {wnid!r}: no WordNet 3.0 synset has that offset")


def _unknown_name(name: str) -> UserError:
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
        raise _unknown_name(name) from None


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
    pointers = _line_pointers(f.readline())
    for symbol in ("@", "@i"):
        parents = [wn.synset_from_pos_and_offset(p_pos, int(p_off)) for sym, p_off, p_pos in pointers if sym == symbol]
        if parents:
            return parents
    return []


def _line_pointers(line: str) -> list[tuple[str, str, str]]:
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


#: Version of the index's layout and of what :func:`synset_info` stores in it: bump it on any change.
INDEX_FORMAT = 1
#: Environment switch: ``0`` makes :func:`lookup` read everything through nltk (no index).
INDEX_ENV = "IMAGENET_PLUS_WORDNET_INDEX"
#: Index file names: ``{INDEX_PREFIX}-{fingerprint hash}-{content hash}.sqlite``.
INDEX_PREFIX = f"wordnet-index-v{INDEX_FORMAT}"
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE synset (
    wnid TEXT PRIMARY KEY, name TEXT NOT NULL, pos TEXT NOT NULL, lemma_names TEXT NOT NULL,
    definition TEXT NOT NULL, lexname TEXT NOT NULL, hypernym TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE hyponym (
    parent TEXT NOT NULL, child TEXT NOT NULL, instance INTEGER NOT NULL, PRIMARY KEY (parent, child, instance)
) WITHOUT ROWID;
CREATE TABLE sense (lemma TEXT NOT NULL, pos TEXT NOT NULL, offsets TEXT NOT NULL, PRIMARY KEY (lemma, pos))
    WITHOUT ROWID;
"""
_COLUMNS = "wnid, name, pos, lemma_names, definition, lexname, hypernym"


def nltk_search_path() -> list[str]:
    """``nltk.data.path`` as nltk sets it when imported, computed without importing nltk (which takes 2.5 s).

    The steps of ``nltk/data.py`` (``$NLTK_DATA``, ``~/nltk_data``, then folders under ``sys.prefix`` and
    the system's). :func:`build_index` compares the result with the real ``nltk.data.path`` and writes no
    index when they differ, so a change in nltk can make the index unused, never wrongly trusted.
    """
    paths = [os.path.expanduser(d) for d in os.environ.get("NLTK_DATA", "").split(os.pathsep) if d]
    if "APPENGINE_RUNTIME" not in os.environ and os.path.expanduser("~/") != "~/":
        paths.append(os.path.expanduser("~/nltk_data"))
    prefixed = [os.path.join(sys.prefix, "nltk_data"), os.path.join(sys.prefix, "share", "nltk_data"),
                os.path.join(sys.prefix, "lib", "nltk_data")]
    if os.name == "nt":
        paths += prefixed + [os.path.join(os.environ.get("APPDATA", "C:\\"), "nltk_data"),
                             r"C:\nltk_data", r"D:\nltk_data", r"E:\nltk_data"]
    else:
        paths += prefixed + ["/usr/share/nltk_data", "/usr/local/share/nltk_data", "/usr/lib/nltk_data",
                             "/usr/local/lib/nltk_data"]
    return paths


def _stat_line(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return f"{path} -"
    if stat.S_ISDIR(st.st_mode):
        return f"{path} dir {st.st_mode:o} {st.st_uid}"
    return f"{path} {st.st_size} {st.st_mtime_ns} {st.st_mode:o} {st.st_uid}"


def source_fingerprint() -> str:
    """What the WordNet nltk reads depends on, as text; computed with ``stat`` only (no nltk import, < 1 ms).

    Lines: the index format and the lexnames table; size and mtime of nltk's WordNet reader and data-path
    code; for each folder of :func:`nltk_search_path`: ``corpora.zip``, ``corpora/wordnet.zip`` and
    ``corpora/wordnet`` (with each WordNet file's size and mtime); and each WordNet file of each
    :func:`system_wordnet_dirs` folder. Installing, removing, updating or re-permissioning any WordNet copy
    nltk could pick, or upgrading nltk, changes it (modes and owners count: nltk skips folders others may write).
    """
    import importlib.util

    lines = [f"format {INDEX_FORMAT}", "lexnames " + hashlib.sha256(lexnames_text().encode()).hexdigest()]
    spec = importlib.util.find_spec("nltk")
    if spec is None or not spec.submodule_search_locations:
        lines.append("nltk -")
    else:
        package = Path(spec.submodule_search_locations[0])
        lines += [_stat_line(package / name) for name in ("VERSION", "data.py", "corpus/reader/wordnet.py")]
    for root in map(Path, nltk_search_path()):
        lines += [_stat_line(root / rel) for rel in ("", "corpora.zip", "corpora/wordnet.zip", "corpora/wordnet")]
        folder = root / "corpora" / "wordnet"
        if folder.is_dir():
            lines += [_stat_line(folder / name) for name in (*WORDNET_FILES, "lexnames")]
    for folder in system_wordnet_dirs():
        lines.append(_stat_line(folder))
        if folder.is_dir():
            lines += [_stat_line(folder / name) for name in WORDNET_FILES]
    return "\n".join(lines) + "\n"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _connect(path: Path) -> sqlite3.Connection:
    """Open an index read-only (``immutable``: an index file is never written in place, only replaced)."""
    uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


def _meta(path: Path, key: str) -> str | None:
    con = _connect(path)
    try:
        row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    finally:
        con.close()
    return None if row is None else str(row[0])


def find_index(folder: Path, fingerprint: str) -> Path | None:
    """The intact index in ``folder`` made for ``fingerprint``, or None.

    A file is used only when the hash of its bytes matches the one in its name (a truncated or damaged file
    is never trusted) and it was made for the same fingerprint (the hash in its name, then the full text
    recorded inside): an index made from other WordNet files, by another nltk or format is never opened.
    """
    for path in sorted(folder.glob(f"{INDEX_PREFIX}-{_digest(fingerprint)}-*.sqlite")):
        try:
            if path.name.endswith(f"-{_file_digest(path)}.sqlite") and _meta(path, "fingerprint") == fingerprint:
                return path
        except (OSError, sqlite3.Error):  # vanished (replaced by another process) or not a database
            continue
    return None


def _index_rows(wn: Any) -> tuple[list[tuple[str, ...]], list[tuple[str, str, int]], list[tuple[str, str, str]]]:
    """Synset, hyponym-link and lemma-sense rows of the index, read through nltk's reader ``wn``.

    Each synset row holds what :func:`synset_info` returns, except that the hypernym is found from the
    data files' bytes (the pointers of the synset's line, as :func:`hypernyms_in_file_order` reads them)
    rather than through nltk's slow seekable stream, once per synset (about a fifth of the build time).
    """
    from imagenet_plus.pipeline.progress import progress_bar

    data = {}
    for pos, name in (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv")):
        with wn.abspath(f"data.{name}").open() as f:
            data[pos] = f.read()
    # every synset has at least one lemma in index.*, so this counts the synsets (117,659 in WordNet 3.0)
    total = len({("a" if p == "s" else p, o) for by_pos in wn._lemma_pos_offset_map.values()
                 for p, offsets in by_pos.items() for o in offsets})
    synsets, parents, links = [], [], []
    with progress_bar(total, "WordNet index (once)", unit="synset",
                      enabled=os.environ.get("RANK", "0") in ("", "0")) as bar:
        for synset in wn.all_synsets():
            wnid = wnid_of(synset)
            lemma_names = [str(x) for x in synset.lemma_names()]
            if any("\t" in x for x in lemma_names):
                raise ValueError(f"tab in a lemma name of {synset.name()}")  # stored tab-separated
            synsets.append((wnid, str(synset.name()), str(synset.pos()), "\t".join(lemma_names),
                            str(synset.definition()), lexname(synset)))
            block, at = data[wnid[0]], synset.offset()
            pointers = _line_pointers(block[at : block.index(b"\n", at)].decode("utf-8"))
            first = [("a" if p == "s" else p) + o for sym, o, p in pointers if sym == "@"]
            first = first or [("a" if p == "s" else p) + o for sym, o, p in pointers if sym == "@i"]
            parents.append(first[0] if first else "")
            links += [(wnid, wnid_of(c), 0) for c in synset.hyponyms()]
            links += [(wnid, wnid_of(c), 1) for c in synset.instance_hyponyms()]
            bar.update()
    first_lemma = {row[0]: row[3].split("\t")[0] for row in synsets}
    rows = [(*row, first_lemma[parent] if parent else "") for row, parent in zip(synsets, parents)]
    # nltk's own lemma -> part of speech -> offsets map (what wn.synset(name) reads), 's' lists included
    senses = [(lemma, pos, " ".join(f"{o:08d}" for o in offsets))
              for lemma, by_pos in wn._lemma_pos_offset_map.items() for pos, offsets in by_pos.items()]
    return rows, links, senses


def build_index(folder: Path, fingerprint: str) -> Path | None:
    """Write the index for ``fingerprint`` into ``folder``, reading every synset through nltk (once, ~30 s).

    Written to a temporary file, then renamed to a name holding its content hash, so no process ever sees
    half an index. Indexes it supersedes (same WordNet copy and nltk, other fingerprint) are removed.

    Returns:
        The index, or None when the real ``nltk.data.path`` is not :func:`nltk_search_path` (an index
        could not be matched to its source; the caller reads through nltk instead).

    Raises:
        UserError: WordNet is not installed, or is not version 3.0.
    """
    import nltk

    wn = wordnet()
    ours = str(cache_dir("nltk_data"))
    if [p for p in nltk.data.path if p != ours] != nltk_search_path():
        return None
    source = f"{ensure_wordnet_path()}\n{Path(nltk.__file__).parent}"
    synsets, links, senses = _index_rows(wn)
    folder.mkdir(parents=True, exist_ok=True)
    for left in folder.glob(".wordnet-index-*.tmp"):  # left by a build that was killed (a build takes < 1 day)
        try:
            if time.time() - left.stat().st_mtime > 86_400:
                left.unlink()
        except OSError:
            pass
    fd, name = tempfile.mkstemp(prefix=f".{INDEX_PREFIX}-", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache's index from the other users
    try:
        con = sqlite3.connect(tmp)
        try:
            con.executescript(_SCHEMA)
            with con:
                con.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("fingerprint", fingerprint), ("source", source), ("synsets", str(len(synsets))),
                    ("nltk", str(nltk.__version__)), ("wordnet", str(wn.get_version()))])
                con.executemany(f"INSERT INTO synset ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", synsets)
                con.executemany("INSERT INTO hyponym VALUES (?, ?, ?)", links)
                con.executemany("INSERT INTO sense VALUES (?, ?, ?)", senses)
        finally:
            con.close()
        final = folder / f"{INDEX_PREFIX}-{_digest(fingerprint)}-{_file_digest(tmp)}.sqlite"
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    for old in folder.glob("wordnet-index-v*.sqlite"):
        if old.name != final.name:
            try:
                superseded = _meta(old, "source") in (source, None)
            except sqlite3.Error:  # damaged
                superseded = True
            try:
                if superseded:
                    old.unlink()
            except OSError:  # gone already, or not ours to remove: it is never used anyway
                pass
    return final


class WordNetIndex:
    """The class-set lookups answered from the compact index (an SQLite file made by :func:`build_index`).

    Hand-written over the standard library's SQLite, because nltk, the reader of record, must load all of
    WordNet to answer one lookup (about 10 s and 0.4 GB in each process), while a class set needs a few
    rows: the index reads only those (1,000 ImageNet classes in milliseconds; a 29,581-synset hyponym
    closure with one recursive query). Every answer equals nltk's (``tests/test_wordnet.py`` compares them).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._con = _connect(path)

    @staticmethod
    def _info(row: tuple[Any, ...]) -> SynsetInfo:
        wnid, name, pos, lemma_names, definition, lex, hypernym = row
        return SynsetInfo(wnid, name, pos, tuple(lemma_names.split("\t")), definition, lex, hypernym)

    def by_wnid(self, wnid: str) -> SynsetInfo:
        """See :func:`synset_of_wnid` (same errors)."""
        m = WNID_PATTERN.match(wnid)
        if m is None:
            raise _malformed_wnid(wnid)
        key = ("a" if m.group(1) == "s" else m.group(1)) + m.group(2)
        row = self._con.execute(f"SELECT {_COLUMNS} FROM synset WHERE wnid = ?", (key,)).fetchone()
        if row is None:
            raise _unknown_wnid(wnid)
        return self._info(row)

    def by_name(self, name: str) -> SynsetInfo:
        """See :func:`synset_by_name`: nltk's ``synset(name)`` rules (``lemma.pos.NN``, sense NN of the lemma)."""
        try:
            lemma, pos, number = name.lower().rsplit(".", 2)
            row = self._con.execute("SELECT offsets FROM sense WHERE lemma = ? AND pos = ?", (lemma, pos)).fetchone()
            offset = row[0].split()[int(number) - 1]
        except Exception:  # not three parts, not a number, no such lemma or sense
            raise _unknown_name(name) from None
        return self.by_wnid(("a" if pos in ("a", "s") else pos) + offset)

    def subtree(self, root: SynsetInfo, instances: bool = False) -> list[SynsetInfo]:
        """``root`` and every synset below it along hyponym links, sorted by wnid (see :func:`hyponym_closure`)."""
        rows = self._con.execute(
            "WITH RECURSIVE below(wnid) AS (SELECT ? UNION "
            "SELECT h.child FROM hyponym AS h JOIN below ON h.parent = below.wnid WHERE h.instance <= ?) "
            f"SELECT {', '.join('s.' + c for c in _COLUMNS.split(', '))} FROM synset AS s JOIN below USING (wnid) "
            "ORDER BY s.wnid",
            (root.wnid, int(instances)),
        ).fetchall()
        return [self._info(row) for row in rows]


def open_index(folder: Path) -> WordNetIndex | None:
    """The index for the WordNet nltk would read now, built first if there is none (or only a stale or damaged one).

    Returns:
        The index, or None when it cannot be written (a read-only cache, a full disk; a one-line warning) or
        matched to its source (see :func:`build_index`).

    Raises:
        UserError: WordNet is not installed, or is not version 3.0.
    """
    fingerprint = source_fingerprint()
    path = find_index(folder, fingerprint)
    if path is None:
        try:
            path = build_index(folder, fingerprint)
        except (OSError, sqlite3.Error) as exc:
            print(f"warning: WordNet index not written in {folder} ({exc}); reading WordNet through nltk",
                  file=sys.stderr)
            return None
    return None if path is None else WordNetIndex(path)


@functools.cache
def lookup() -> NltkWordNet | WordNetIndex:
    """The WordNet lookups of class sets: the index (made on first use), or nltk with ``IMAGENET_PLUS_WORDNET_INDEX=0``.

    Raises:
        UserError: WordNet is not installed, or is not version 3.0.
    """
    if os.environ.get(INDEX_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return NltkWordNet()
    try:
        folder = cache_dir("wordnet")
    except OSError as exc:
        print(f"warning: no WordNet index ({exc}); reading WordNet through nltk", file=sys.stderr)
        return NltkWordNet()
    index = open_index(folder)
    return NltkWordNet() if index is None else index
