"""WordNet offline: the nltk folder built from the system's WordNet 3.0, lookups, closures, errors, and the
compact index (compared with nltk's reader itself; damaged, stale and foreign indexes never used)."""

from __future__ import annotations

import gzip
import hashlib
import random
import re
import shutil
from pathlib import Path

import pytest

from imagenet_plus.classes import wordnet as wnmod
from imagenet_plus.classes import wordnet_index as wnindex
from imagenet_plus.errors import UserError


@pytest.fixture(scope="module")
def wn():  # type: ignore[no-untyped-def]
    return wnmod.wordnet()


def test_lexnames_table_is_the_45_line_file() -> None:
    lines = wnmod.lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3"
    assert lines[3] == "03\tnoun.Tops\t1"
    assert lines[-1] == "44\tadj.ppl\t3"
    for i, line in enumerate(lines):
        num, name, cat = line.split("\t")
        assert int(num) == i
        assert int(cat) == {"noun": 1, "verb": 2, "adj": 3, "adv": 4}[name.split(".")[0]]


def test_lexnames_table_matches_the_manual_page() -> None:
    man = Path("/usr/share/man/man5/lexnames.5WN.gz")
    if not man.is_file():
        pytest.skip("WordNet's lexnames(5WN) manual page is not installed")
    text = gzip.decompress(man.read_bytes()).decode("utf-8", "replace")
    table = re.findall(r"^(\d\d)\t(\S+)\s*\t", text, flags=re.M)
    assert [(int(n), name) for n, name in table] == [(n, name) for n, name, _ in wnmod.LEXNAMES]


def _fake_dict(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in wnmod.WORDNET_FILES:
        (folder / name).write_text(f"{tag} {name}\n")
    return folder


def test_build_nltk_folder_copies_once_and_rebuilds_for_a_new_source(tmp_path: Path) -> None:
    src = _fake_dict(tmp_path / "dict", "one")
    target = wnmod.build_nltk_folder(src, tmp_path / "nltk_data")
    assert target == tmp_path / "nltk_data" / "corpora" / "wordnet"
    assert (target / "lexnames").read_text() == wnmod.lexnames_text()
    for name in wnmod.WORDNET_FILES:  # real files (nltk refuses symlinks leaving the folder and hard links)
        assert not (target / name).is_symlink()
        assert (target / name).stat().st_nlink == 1
        assert (target / name).read_text() == f"one {name}\n"
    stamp = (target / "data.noun").stat().st_mtime_ns
    assert wnmod.build_nltk_folder(src, tmp_path / "nltk_data") == target
    assert (target / "data.noun").stat().st_mtime_ns == stamp  # not rebuilt
    src2 = _fake_dict(tmp_path / "dict2", "two")
    wnmod.build_nltk_folder(src2, tmp_path / "nltk_data")
    assert (target / "data.noun").read_text() == "two data.noun\n"
    (src2 / "data.noun").write_text("updated data.noun\n")  # a package upgrade in place
    wnmod.build_nltk_folder(src2, tmp_path / "nltk_data")
    assert (target / "data.noun").read_text() == "updated data.noun\n"
    assert not list((tmp_path / "nltk_data" / "corpora").glob("wordnet.*"))  # no temp folders left


def test_missing_wordnet_is_a_user_error_with_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nltk

    def not_found(resource: str, paths=None):  # type: ignore[no-untyped-def]
        raise LookupError(resource)

    monkeypatch.setattr(nltk.data, "find", not_found)
    monkeypatch.setenv("WNSEARCHDIR", str(tmp_path / "nothing"))
    monkeypatch.setattr(wnmod, "system_wordnet_dirs", lambda: [tmp_path / "nothing"])
    with pytest.raises(UserError, match="apt-get install wordnet-base wordnet-sense-index") as err:
        wnmod.ensure_wordnet_path()
    assert "python -m nltk.downloader wordnet" in err.value.message


def test_system_dirs_honour_wordnet_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WNSEARCHDIR", str(tmp_path / "a"))
    monkeypatch.setenv("WNHOME", str(tmp_path / "b"))
    dirs = wnmod.system_wordnet_dirs()
    assert dirs[:2] == [tmp_path / "a", tmp_path / "b" / "dict"]
    assert Path("/usr/share/wordnet") in dirs


def test_reader_is_wordnet_30_and_cached(wn) -> None:  # type: ignore[no-untyped-def]
    assert wn.get_version() == "3.0"
    assert wnmod.wordnet() is wn


def test_wnid_lookups_round_trip(wn) -> None:  # type: ignore[no-untyped-def]
    tench = wnmod.synset_of_wnid("n01440764")
    assert tench == wn.synset("tench.n.01")
    assert wnmod.wnid_of(tench) == "n01440764"
    assert wnmod.lexname(tench) == "noun.animal"
    assert wnmod.first_hypernym_name(tench) == "cyprinid"
    toilet = wnmod.synset_of_wnid("n15075141")
    assert toilet.lemma_names()[0] == "toilet_tissue"
    assert wnmod.first_hypernym_name(wn.synset("entity.n.01")) == ""  # the root has none
    # instance-only synsets fall back to the instance hypernym
    assert wnmod.first_hypernym_name(wn.synset("paris.n.01")) == "national capital"
    assert wnmod.wnid_of(wn.synset("object.n.01")) == "n00002684"


@pytest.mark.parametrize(
    "wnid, needle",
    [("n01440765", "unknown WordNet id 'n01440765'"), ("n99999999", "unknown WordNet id"),
     ("n0144076", "malformed WordNet id"), ("x01440764", "malformed WordNet id")],
)
def test_bad_wnids(wn, wnid: str, needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError, match=needle):
        wnmod.synset_of_wnid(wnid)


def test_unknown_synset_name(wn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError, match="unknown WordNet synset 'nosuchthing.n.01'"):
        wnmod.synset_by_name("nosuchthing.n.01")
    with pytest.raises(UserError, match="unknown WordNet synset 'dog'"):
        wnmod.synset_by_name("dog")


def test_dog_closure_matches_nltk(wn) -> None:  # type: ignore[no-untyped-def]
    dog = wn.synset("dog.n.01")
    direct = set(dog.closure(lambda s: s.hyponyms()))
    assert len(direct) == 189
    ours = wnmod.hyponym_closure(dog)
    assert len(ours) == 190 and set(ours) == direct | {dog}
    assert [wnmod.wnid_of(s) for s in ours] == sorted(wnmod.wnid_of(s) for s in ours)
    assert wnmod.hyponym_closure(dog, include_root=False) == sorted(direct, key=wnmod.wnid_of)


@pytest.mark.slow
def test_object_closure_counts(wn) -> None:  # type: ignore[no-untyped-def]
    obj = wn.synset("object.n.01")
    plain = wnmod.hyponym_closure(obj, include_root=False)
    assert len(plain) == 29_580
    assert set(plain) == set(obj.closure(lambda s: s.hyponyms()))  # nltk's own closure agrees
    assert len(wnmod.hyponym_closure(obj)) == 29_581
    assert len(wnmod.hyponym_closure(obj, include_root=False, instances=True)) == 35_771


def test_first_hypernym_follows_the_data_file(wn) -> None:  # type: ignore[no-untyped-def]
    dog = wn.synset("dog.n.01")
    assert wnmod.hypernyms_in_file_order(dog) == [wn.synset("canine.n.02"), wn.synset("domestic_animal.n.01")]
    assert wnmod.first_hypernym_name(dog) == "canine"
    for name in ("tench.n.01", "crane.n.05", "paris.n.01", "entity.n.01", "good.a.01"):
        s = wn.synset(name)
        assert set(wnmod.hypernyms_in_file_order(s)) == set(s.hypernyms() or s.instance_hypernyms())


@pytest.mark.slow
def test_first_hypernym_does_not_depend_on_the_hash_seed() -> None:
    """nltk keeps pointers in a set: with PYTHONHASHSEED=0 its hypernyms() lists domestic animal first."""
    import os
    import subprocess
    import sys

    code = (
        "from imagenet_plus.classes import wordnet as w; d = w.wordnet().synset('dog.n.01'); "
        "print(d.hypernyms()[0].name(), w.first_hypernym_name(d), sep='|')"
    )
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    nltk_first, ours = proc.stdout.strip().split("|")
    assert ours == "canine"
    if nltk_first == "canine.n.02":  # the precondition that makes this test meaningful
        pytest.skip("nltk happened to list canine first under this hash seed")


def test_noun_sense_count_reads_the_index(wn) -> None:  # type: ignore[no-untyped-def]
    """Compared with the raw index.noun line: field 3 of 'crane n 5 ...' is the synset count."""
    index = Path(wnmod.ensure_wordnet_path()) / "index.noun"
    counts = {}
    with open(index, encoding="utf-8") as f:
        for line in f:
            if line.startswith(("crane ", "tench ", "toilet_tissue ", "maillot ")):
                parts = line.split()
                counts[parts[0]] = int(parts[2])
    assert wnmod.noun_sense_count("crane") == counts["crane"] == 5
    assert wnmod.noun_sense_count("tench") == counts["tench"] == 1
    assert wnmod.noun_sense_count("toilet tissue") == counts["toilet_tissue"]
    assert wnmod.noun_sense_count("maillot") == counts["maillot"] == 2
    assert wnmod.noun_sense_count("zorblax") == 0 and wnmod.noun_sense_count("  ") == 0


# ---------------------------------------------------------------------------------------------------
# The compact index, checked against nltk's reader and the raw data files


@pytest.fixture(scope="module")
def index() -> wnindex.WordNetIndex:
    built = wnindex.open_index(wnmod.cache_dir("wordnet"))  # the session's cache: built here or by an earlier test
    assert isinstance(built, wnindex.WordNetIndex)
    return built


_DATA: dict[str, bytes] = {}


def _raw_first_parent(wn, synset) -> str:  # type: ignore[no-untyped-def]
    """First lemma of the first '@' (else '@i') pointer of the synset's line, read with a regex from the file."""
    pos = "a" if synset.pos() == "s" else synset.pos()
    if pos not in _DATA:
        with wn.abspath(f"data.{ {'n': 'noun', 'v': 'verb', 'a': 'adj', 'r': 'adv'}[pos] }").open() as f:
            _DATA[pos] = f.read()
    data, at = _DATA[pos], synset.offset()
    head = data[at : data.index(b"\n", at)].decode("utf-8").split("|")[0]
    found = re.findall(r" (@i?) (\d{8}) ([nvasr]) [0-9a-f]{4}", head)
    parents = [(p, o) for sym, o, p in found if sym == "@"] or [(p, o) for sym, o, p in found if sym == "@i"]
    if not parents:
        return ""
    return wn.synset_from_pos_and_offset(parents[0][0], int(parents[0][1])).lemma_names()[0]


def _sample_synsets(wn, n: int) -> list:  # type: ignore[no-untyped-def,type-arg]
    """``n`` synsets drawn from the data files' lines (all parts of speech), plus hand-picked odd ones."""
    offsets = []
    for pos, name in (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv")):
        with wn.abspath(f"data.{name}").open() as f:
            offsets += [(pos, int(line[:8])) for line in f if not line.startswith(b" ")]
    assert len(offsets) == 117_659  # WordNet 3.0's synsets
    picked = [wn.synset_from_pos_and_offset(p, o) for p, o in random.Random(0).sample(offsets, n)]
    names = ("entity.n.01", "object.n.01", "dog.n.01", "tench.n.01", "crane.n.05", "paris.n.01", "good.a.01",
             "good.s.06", "run.v.01", "quickly.r.01", ".22-caliber.a.01", "toilet_tissue.n.01")
    return picked + [wn.synset(name) for name in names]


def test_index_answers_as_nltk_on_a_sample(wn, index) -> None:  # type: ignore[no-untyped-def]
    for synset in _sample_synsets(wn, 400):
        wnid = ("a" if synset.pos() == "s" else synset.pos()) + f"{synset.offset():08d}"
        info = index.by_wnid(wnid)
        assert (info.wnid, info.name, info.pos) == (wnid, synset.name(), synset.pos())
        assert info.lemma_names == tuple(synset.lemma_names())
        assert info.definition == synset.definition() and info.lexname == synset.lexname()
        assert info.hypernym == _raw_first_parent(wn, synset)
        assert index.by_name(synset.name()) == info
        if synset.pos() == "s":  # a satellite is also reached by its 's' wnid
            assert index.by_wnid("s" + wnid[1:]) == info
        below = {("a" if s.pos() == "s" else s.pos()) + f"{s.offset():08d}"
                 for s in synset.closure(lambda s: s.hyponyms())}
        assert [i.wnid for i in index.subtree(info)] == sorted(below | {wnid})


def test_index_resolves_names_as_nltk_does(wn, index) -> None:  # type: ignore[no-untyped-def]
    """nltk's synset(name) rules, odd ones included: case, sense 00 = the last one, 's' lists, unknown parts."""
    names = ["dog.n.01", "Dog.N.01", "dog.n.1", "dog.n.001", "dog.n.00", "dog.n.-1", "dog.n.7", "dog.n.8",
             "dog.n.99", "dog.n.0x", "dog.n", "dog", "", "dog.x.01", "nosuchthing.n.01", "physical_object.n.01",
             "good.a.01", "good.s.01", "good.s.00", "good.a.22", "able.s.01", "run.v.01", ".22-caliber.a.01",
             "dog..01", "..01"]
    for synset in _sample_synsets(wn, 60):
        for lemma in synset.lemma_names():
            n = len(wn.synsets(lemma, pos=synset.pos()))
            names += [f"{lemma}.{synset.pos()}.{k:02d}" for k in range(1, n + 2)]
    for name in names:
        try:
            synset = wn.synset(name)
            expected = ("a" if synset.pos() == "s" else synset.pos()) + f"{synset.offset():08d}"
        except Exception:
            expected = "error"
        try:
            got = index.by_name(name).wnid
        except UserError as exc:
            assert exc.message.startswith(f"unknown WordNet synset {name!r} (expected a name like object.n.01")
            got = "error"
        assert got == expected, name


@pytest.mark.parametrize("wnid", ["n01440765", "n99999999", "n00000000", "n0144076", "x01440764", "s00001740"])
def test_index_refuses_wnids_as_nltk_does(wn, index, wnid: str) -> None:  # type: ignore[no-untyped-def]
    def outcome(lookup):  # type: ignore[no-untyped-def]
        try:
            return lookup.by_wnid(wnid).wnid
        except UserError as exc:
            return exc.message

    assert outcome(index) == outcome(wnmod.NltkWordNet())


@pytest.mark.slow
def test_index_object_closure_matches_nltk(wn, index) -> None:  # type: ignore[no-untyped-def]
    obj = wn.synset("object.n.01")
    root = index.by_name("object.n.01")
    plain = {wnmod.wnid_of(s) for s in obj.closure(lambda s: s.hyponyms())} | {"n00002684"}
    assert [i.wnid for i in index.subtree(root)] == sorted(plain) and len(plain) == 29_581
    both = {wnmod.wnid_of(s) for s in obj.closure(lambda s: s.hyponyms() + s.instance_hyponyms())} | {"n00002684"}
    assert [i.wnid for i in index.subtree(root, instances=True)] == sorted(both) and len(both) == 35_772


def test_nltk_search_path_is_nltks(wn) -> None:  # type: ignore[no-untyped-def]
    import nltk

    ours = str(wnmod.cache_dir("nltk_data"))
    assert wnindex.nltk_search_path() == [p for p in nltk.data.path if p != ours]


def test_damaged_index_is_never_trusted(index, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fingerprint = wnindex.source_fingerprint()
    copy = tmp_path / index.path.name
    shutil.copyfile(index.path, copy)
    assert wnindex.find_index(tmp_path, fingerprint) == copy
    good = copy.read_bytes()
    middle = bytearray(good)
    middle[len(good) // 2] ^= 0x01  # one bit of a row: SQLite itself would not notice
    for damaged in (bytes(middle), good[: len(good) // 2], b"\0" * 100 + good[100:], b"", b"not a database"):
        copy.write_bytes(damaged)
        assert wnindex.find_index(tmp_path, fingerprint) is None


def test_index_of_other_wordnet_files_is_not_used(index, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fingerprint = wnindex.source_fingerprint()
    shutil.copyfile(index.path, tmp_path / index.path.name)
    assert wnindex.find_index(tmp_path, fingerprint) is not None
    # a WordNet copy appears where nltk looks first
    _fake_dict(tmp_path / "nltk_data" / "corpora" / "wordnet", "other")
    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "nltk_data"))
    assert wnindex.source_fingerprint() != fingerprint
    assert wnindex.find_index(tmp_path, wnindex.source_fingerprint()) is None
    monkeypatch.delenv("NLTK_DATA")
    assert wnindex.source_fingerprint() == fingerprint
    # a system WordNet file is updated in place
    src = _fake_dict(tmp_path / "dict", "one")
    monkeypatch.setenv("WNSEARCHDIR", str(src))
    before = wnindex.source_fingerprint()
    (src / "data.noun").write_text("an updated data.noun\n")
    after = wnindex.source_fingerprint()
    assert before != after and fingerprint not in (before, after)
    # even under the name an index for ``after`` would have, an index made for another fingerprint is refused
    content = hashlib.sha256(index.path.read_bytes()).hexdigest()[:16]
    key = hashlib.sha256(after.encode()).hexdigest()[:16]
    shutil.copyfile(index.path, tmp_path / f"{wnindex.INDEX_PREFIX}-{key}-{content}.sqlite")
    assert wnindex.find_index(tmp_path, after) is None


_TINY_ROWS = (
    [("n00000001", "thing.n.01", "n", "thing\tobject", "a thing", "noun.Tops", "")], [], [("thing", "n", "00000001")]
)


def test_build_is_atomic_and_replaces_what_it_supersedes(wn, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wnindex, "_index_rows", lambda reader: _TINY_ROWS)
    (tmp_path / "wordnet-index-v1-other-source.sqlite").write_bytes(b"")  # damaged: removed as well
    first = wnindex.build_index(tmp_path, "fingerprint one\n")
    assert first is not None and first.name.endswith(f"-{hashlib.sha256(first.read_bytes()).hexdigest()[:16]}.sqlite")
    assert wnindex.find_index(tmp_path, "fingerprint one\n") == first
    thing = wnindex.WordNetIndex(first).by_name("thing.n.01")
    assert (thing.wnid, thing.lemma_names, thing.definition) == ("n00000001", ("thing", "object"), "a thing")
    second = wnindex.build_index(tmp_path, "fingerprint two\n")  # same WordNet copy and nltk, newer fingerprint
    assert sorted(tmp_path.iterdir()) == [second]  # the superseded and the damaged index are gone, no temp file left


def test_damaged_or_stale_index_is_rebuilt(wn, tmp_path: Path,  # type: ignore[no-untyped-def]
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    builds = []

    def rows(reader):  # type: ignore[no-untyped-def]
        builds.append(1)
        return _TINY_ROWS

    monkeypatch.setattr(wnindex, "_index_rows", rows)
    folder = tmp_path / "cache"
    first = wnindex.open_index(folder)
    assert first is not None and len(builds) == 1
    assert wnindex.open_index(folder).path == first.path and len(builds) == 1  # type: ignore[union-attr]
    data = bytearray(first.path.read_bytes())
    data[-10] ^= 0xFF
    first.path.write_bytes(bytes(data))
    again = wnindex.open_index(folder)  # damaged: rebuilt
    assert again is not None and len(builds) == 2
    assert wnindex.find_index(folder, wnindex.source_fingerprint()) == again.path
    assert again.by_wnid("n00000001").name == "thing.n.01"
    monkeypatch.setenv("WNSEARCHDIR", str(_fake_dict(tmp_path / "dict", "new")))  # stale: a WordNet copy appeared
    third = wnindex.open_index(folder)
    assert third is not None and len(builds) == 3 and third.path != again.path
    assert list(folder.iterdir()) == [third.path]  # the stale one (same WordNet copy read by nltk) is gone


def test_switch_reads_through_nltk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(wnindex.INDEX_ENV, "0")
    wnindex.lookup.cache_clear()
    try:
        assert isinstance(wnindex.lookup(), wnmod.NltkWordNet)
    finally:
        wnindex.lookup.cache_clear()
