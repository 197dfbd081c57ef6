"""The compact WordNet index behind the class-set lookups (:func:`lookup`), derived once from nltk.

nltk is the reader of record (:mod:`imagenet_plus.classes.wordnet`), but loading it costs about 10 s and
0.4 GB per process (``import nltk`` 2.5 s; the reader reads ``index.sense`` twice to map WordNet onto itself
for the multilingual functions, 4.7 s, and builds its lemma map from ``index.*``, 3.2 s). The class-set
lookups therefore go through a :class:`WordNetIndex`: an SQLite file in ``cache_dir("wordnet")`` holding,
for every synset, exactly what :func:`~imagenet_plus.classes.wordnet.synset_info` reads from nltk, plus the
hyponym links and nltk's lemma → sense map. It is written once by :func:`build_index` (through nltk),
atomically; its file name carries a hash of :func:`source_fingerprint` (the WordNet files nltk could read,
with sizes and mtimes, and nltk's own reader code) and of its own bytes, so an index made from other files,
by another nltk or of another format version is never opened, and a damaged one is never trusted (it is
rebuilt). ``IMAGENET_PLUS_WORDNET_INDEX=0`` reads everything through nltk instead
(:class:`~imagenet_plus.classes.wordnet.NltkWordNet`, same results).

Written by hand (SQLite from the standard library) because no maintained library ships WordNet 3.0 as a
queryable index read lazily; nltk remains the only reader of the WordNet files themselves.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sqlite3
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from imagenet_plus.classes import wordnet as reader
from imagenet_plus.io.cache import cache_dir
from imagenet_plus.pipeline.progress import progress_bar

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

    lines = [f"format {INDEX_FORMAT}", "lexnames " + hashlib.sha256(reader.lexnames_text().encode()).hexdigest()]
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
            lines += [_stat_line(folder / name) for name in (*reader.WORDNET_FILES, "lexnames")]
    for folder in reader.system_wordnet_dirs():
        lines.append(_stat_line(folder))
        if folder.is_dir():
            lines += [_stat_line(folder / name) for name in reader.WORDNET_FILES]
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
            wnid = reader.wnid_of(synset)
            lemma_names = [str(x) for x in synset.lemma_names()]
            if any("\t" in x for x in lemma_names):
                raise ValueError(f"tab in a lemma name of {synset.name()}")  # stored tab-separated
            synsets.append((wnid, str(synset.name()), str(synset.pos()), "\t".join(lemma_names),
                            str(synset.definition()), reader.lexname(synset)))
            block, at = data[wnid[0]], synset.offset()
            pointers = reader.line_pointers(block[at : block.index(b"\n", at)].decode("utf-8"))
            first = [("a" if p == "s" else p) + o for sym, o, p in pointers if sym == "@"]
            first = first or [("a" if p == "s" else p) + o for sym, o, p in pointers if sym == "@i"]
            parents.append(first[0] if first else "")
            links += [(wnid, reader.wnid_of(c), 0) for c in synset.hyponyms()]
            links += [(wnid, reader.wnid_of(c), 1) for c in synset.instance_hyponyms()]
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

    wn = reader.wordnet()
    ours = str(cache_dir("nltk_data"))
    if [p for p in nltk.data.path if p != ours] != nltk_search_path():
        return None
    source = f"{reader.ensure_wordnet_path()}\n{Path(nltk.__file__).parent}"
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
    def _info(row: tuple[Any, ...]) -> reader.SynsetInfo:
        wnid, name, pos, lemma_names, definition, lex, hypernym = row
        return reader.SynsetInfo(wnid, name, pos, tuple(lemma_names.split("\t")), definition, lex, hypernym)

    def by_wnid(self, wnid: str) -> reader.SynsetInfo:
        """See :func:`synset_of_wnid` (same errors)."""
        m = reader.WNID_PATTERN.match(wnid)
        if m is None:
            raise reader.malformed_wnid(wnid)
        key = ("a" if m.group(1) == "s" else m.group(1)) + m.group(2)
        row = self._con.execute(f"SELECT {_COLUMNS} FROM synset WHERE wnid = ?", (key,)).fetchone()
        if row is None:
            raise reader.unknown_wnid(wnid)
        return self._info(row)

    def by_name(self, name: str) -> reader.SynsetInfo:
        """See :func:`synset_by_name`: nltk's ``synset(name)`` rules (``lemma.pos.NN``, sense NN of the lemma)."""
        try:
            lemma, pos, number = name.lower().rsplit(".", 2)
            row = self._con.execute("SELECT offsets FROM sense WHERE lemma = ? AND pos = ?", (lemma, pos)).fetchone()
            offset = row[0].split()[int(number) - 1]
        except Exception:  # not three parts, not a number, no such lemma or sense
            raise reader.unknown_name(name) from None
        return self.by_wnid(("a" if pos in ("a", "s") else pos) + offset)

    def subtree(self, root: reader.SynsetInfo, instances: bool = False) -> list[reader.SynsetInfo]:
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
def lookup() -> reader.NltkWordNet | WordNetIndex:
    """The WordNet lookups of class sets: the index (made on first use), or nltk with ``IMAGENET_PLUS_WORDNET_INDEX=0``.

    Raises:
        UserError: WordNet is not installed, or is not version 3.0.
    """
    if os.environ.get(INDEX_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return reader.NltkWordNet()
    try:
        folder = cache_dir("wordnet")
    except OSError as exc:
        print(f"warning: no WordNet index ({exc}); reading WordNet through nltk", file=sys.stderr)
        return reader.NltkWordNet()
    index = open_index(folder)
    return reader.NltkWordNet() if index is None else index
