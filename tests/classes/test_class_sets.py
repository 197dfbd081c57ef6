"""Class sets: imagenet-1k, WordNet subtrees, custom CSV/JSON/YAML lists, classes.json, and CLI errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import cli_in_process

from imagenet_plus.classes import wordnet as wnmod
from imagenet_plus.classes import wordnet_index as wnindex
from imagenet_plus.classes.sets import ClassInfo, read_classes_json, resolve_classes, slugify, write_classes_json
from imagenet_plus.contract import make_key
from imagenet_plus.errors import UserError

run_main = cli_in_process  # (exit status, stdout, stderr)


@pytest.fixture(scope="module")
def imagenet() -> list[ClassInfo]:
    return resolve_classes("imagenet-1k")


# ---------------------------------------------------------------------------------------------------
# imagenet-1k


def test_imagenet_1k_order_and_content(imagenet: list[ClassInfo]) -> None:
    from timm.data import ImageNetInfo

    assert len(imagenet) == 1000
    assert [c.label for c in imagenet] == list(range(1000))
    assert imagenet[0].id == "n01440764" and imagenet[0].name == "tench"
    assert imagenet[0].lemmas == ("tench", "Tinca tinca")
    assert imagenet[0].definition.startswith("freshwater dace-like game fish")
    assert imagenet[0].hypernym == "cyprinid" and imagenet[0].group == "noun.animal"
    assert imagenet[999].id == "n15075141" and imagenet[999].name == "toilet tissue"
    ids = [c.id for c in imagenet]
    assert ids == sorted(ids) == list(ImageNetInfo("imagenet-1k").label_names())
    assert all(c.hypernym and c.group.startswith("noun.") and c.definition for c in imagenet)
    wn = wnmod.wordnet()
    for c in imagenet:  # every field agrees with nltk's reader and the raw data file (the index answered them)
        synset = wn.synset_from_pos_and_offset("n", int(c.id[1:]))
        assert c.lemmas == tuple(x.replace("_", " ") for x in synset.lemma_names())
        assert c.definition == synset.definition() and c.group == synset.lexname()
        assert c.hypernym == _raw_first_parent(wn, synset).replace("_", " ")


_DATA_NOUN: list[bytes] = []


def _raw_first_parent(wn, synset) -> str:  # type: ignore[no-untyped-def]
    """First lemma of the first '@' (else '@i') pointer of a noun's line in data.noun, found with a regex."""
    if not _DATA_NOUN:
        with wn.abspath("data.noun").open() as f:
            _DATA_NOUN.append(f.read())
    data, at = _DATA_NOUN[0], synset.offset()
    head = data[at : data.index(b"\n", at)].decode("utf-8").split("|")[0]
    found = re.findall(r" (@i?) (\d{8}) n [0-9a-f]{4}", head)
    parents = [o for sym, o in found if sym == "@"] or [o for sym, o in found if sym == "@i"]
    return wn.synset_from_pos_and_offset("n", int(parents[0])).lemma_names()[0] if parents else ""


def test_imagenet_1k_info_is_timms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    from types import SimpleNamespace

    from timm.data import ImageNetInfo

    from imagenet_plus.classes.sets import imagenet_1k_info

    info = ImageNetInfo("imagenet-1k")
    wnids, lemmas, definitions = imagenet_1k_info()
    assert wnids == list(info.label_names()) and len(wnids) == 1000
    assert {w: lemmas[w] for w in wnids} == info.label_descriptions(as_dict=True)
    assert {w: f"{lemmas[w]}: {definitions[w]}" for w in wnids} == info.label_descriptions(detailed=True, as_dict=True)
    # timm's files not found as plain files (a zipped install): read through ImageNetInfo, same result
    real = importlib.util.find_spec
    fake = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: fake if name == "timm" else real(name, *a))
    w2, l2, d2 = imagenet_1k_info()
    assert w2 == wnids and all(l2[w] == lemmas[w] and d2[w] == definitions[w] for w in wnids)


def test_class_sets_read_through_nltk_are_the_same(imagenet: list[ClassInfo], monkeypatch: pytest.MonkeyPatch) -> None:
    """IMAGENET_PLUS_WORDNET_INDEX=0 (the benchmark's "before") gives the classes the index gives."""
    dog = resolve_classes("wordnet:dog.n.01")
    monkeypatch.setenv(wnindex.INDEX_ENV, "0")
    wnindex.lookup.cache_clear()
    try:
        assert isinstance(wnindex.lookup(), wnmod.NltkWordNet)
        assert resolve_classes("imagenet-1k") == imagenet
        assert resolve_classes("wordnet:dog.n.01") == dog
    finally:
        wnindex.lookup.cache_clear()


def test_imagenet_1k_start_up_loads_neither_nltk_nor_timm(imagenet: list[ClassInfo]) -> None:
    """With the index made, resolving imagenet-1k imports neither nltk nor timm (nor torch through it)."""
    code = ("import sys, json; from imagenet_plus.classes import resolve_classes; c = resolve_classes('imagenet-1k'); "
            "heavy = sorted(m for m in ('nltk', 'timm', 'torch') if m in sys.modules); "
            "print(json.dumps([len(c), c[517].hypernym, heavy]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [1000, "lifting device", []]


def test_imagenet_cranes_differ_by_hypernym(imagenet: list[ClassInfo]) -> None:
    bird, machine = imagenet[134], imagenet[517]
    assert bird.name == machine.name == "crane"
    assert (bird.hypernym, bird.group) == ("wading bird", "noun.animal")
    assert (machine.hypernym, machine.group) == ("lifting device", "noun.artifact")


def test_class_limit_keeps_the_first(imagenet: list[ClassInfo]) -> None:
    assert resolve_classes("imagenet-1k", class_limit=3) == imagenet[:3]
    assert resolve_classes(" ImageNet-1k ", class_limit=1) == imagenet[:1]


# ---------------------------------------------------------------------------------------------------
# wordnet:SYNSET


def test_wordnet_subtree_dog() -> None:
    wn = wnmod.wordnet()
    dog = wn.synset("dog.n.01")
    expected = {wnmod.wnid_of(s) for s in dog.closure(lambda s: s.hyponyms())} | {"n02084071"}
    classes = resolve_classes("wordnet:dog.n.01")
    assert len(classes) == len(expected) == 190
    ids = [c.id for c in classes]
    assert set(ids) == expected and ids == sorted(ids)
    assert [c.label for c in classes] == list(range(190))
    root = classes[ids.index("n02084071")]
    assert (root.name, root.hypernym, root.group) == ("dog", "canine", "noun.animal")
    assert root.lemmas == ("dog", "domestic dog", "Canis familiaris")
    assert resolve_classes("wordnet:n02084071") == classes  # a wnid names the same subtree
    assert resolve_classes("wordnet:dog.n.01", class_limit=5) == classes[:5]
    for c in classes:
        make_key(c.id, 0)


def test_wordnet_leaf_is_one_class() -> None:
    classes = resolve_classes("wordnet:tench.n.01")
    assert [(c.id, c.name) for c in classes] == [("n01440764", "tench")]


@pytest.mark.slow
def test_wordnet_object_subtree_count() -> None:
    classes = resolve_classes("wordnet:object.n.01")
    assert len(classes) == 29_581  # 29,580 hyponyms + the root
    assert classes[0].id == "n00002684"  # object.n.01 has the smallest offset of its subtree
    assert len({c.id for c in classes}) == len(classes)
    wn = wnmod.wordnet()  # every class as nltk's reader and the raw data file give it
    obj = wn.synset("object.n.01")
    synsets = sorted(set(obj.closure(lambda s: s.hyponyms())) | {obj}, key=lambda s: s.offset())
    assert [c.id for c in classes] == [f"n{s.offset():08d}" for s in synsets]
    for c, s in zip(classes, synsets):
        assert c.lemmas == tuple(x.replace("_", " ") for x in s.lemma_names()) and c.name == c.lemmas[0]
        assert (c.definition, c.group) == (s.definition(), s.lexname())
        assert c.hypernym == _raw_first_parent(wn, s).replace("_", " ")


# ---------------------------------------------------------------------------------------------------
# custom files


def test_slugify() -> None:
    assert slugify("Red Fox!") == "red-fox"
    assert slugify("my_class.v2") == "my-class-v2"
    assert slugify("Crème brûlée") == "creme-brulee"
    assert slugify("日本") == ""


def test_csv_file_order_slugs_and_wnid_fill_in(tmp_path: Path) -> None:
    f = tmp_path / "classes.csv"
    f.write_text(
        "name,id,description\n"
        "Red Fox,,a small fox\n"
        ",n01440764,\n"
        "my crane,n02012849,a tall bird\n"
        "Widget,Widget_v2.0,\n"
        "\n"
    )
    classes = resolve_classes(str(f))
    assert [c.id for c in classes] == ["red-fox", "n01440764", "n02012849", "widget-v2-0"]
    assert [c.label for c in classes] == [0, 1, 2, 3]
    fox, tench, crane, widget = classes
    assert (fox.name, fox.definition, fox.hypernym, fox.group) == ("Red Fox", "a small fox", "", "")
    assert fox.lemmas == ("Red Fox",)
    assert tench.name == "tench" and tench.hypernym == "cyprinid" and tench.group == "noun.animal"
    assert tench.definition.startswith("freshwater dace-like")
    # a given name and description win; hypernym and group still come from WordNet
    assert (crane.name, crane.definition, crane.hypernym, crane.group) == ("my crane", "a tall bird", "wading bird",
                                                                           "noun.animal")
    assert crane.lemmas[0] == "my crane" and "crane" in crane.lemmas
    assert widget.name == "Widget"
    for c in classes:
        make_key(c.id, 0)


def test_json_list_and_mapping_forms(tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    a.write_text(json.dumps([{"name": "sea otter", "hypernym": "mammal"}, "kettle", {"id": "n01440764"}]))
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"classes": [{"name": "sea otter", "hypernym": "mammal"}, {"name": "kettle"},
                                         {"id": "n01440764"}]}))
    ca, cb = resolve_classes(str(a)), resolve_classes(str(b))
    assert ca == cb
    assert [(c.id, c.name, c.hypernym) for c in ca] == [("sea-otter", "sea otter", "mammal"), ("kettle", "kettle", ""),
                                                        ("n01440764", "tench", "cyprinid")]


def test_yaml_file(tmp_path: Path) -> None:
    f = tmp_path / "classes.yml"
    f.write_text("classes:\n  - name: zebra\n    description: striped horse\n  - name: 42\n  - id: n15075141\n")
    classes = resolve_classes(str(f), class_limit=2)
    assert [(c.id, c.name, c.definition) for c in classes] == [("zebra", "zebra", "striped horse"), ("42", "42", "")]
    g = tmp_path / "list.yaml"
    g.write_text("- name: zebra\n- name: okapi\n")
    assert [c.id for c in resolve_classes(str(g))] == ["zebra", "okapi"]


# ---------------------------------------------------------------------------------------------------
# classes.json


def test_classes_json_round_trip(tmp_path: Path, imagenet: list[ClassInfo]) -> None:
    path = tmp_path / "classes.json"
    write_classes_json(path, imagenet[:5])
    assert not list(tmp_path.glob("*.partial"))
    assert read_classes_json(path) == imagenet[:5]
    data = json.loads(path.read_text())
    assert set(data[0]) == {"label", "id", "name", "lemmas", "definition", "hypernym", "group"}
    assert ClassInfo.from_dict(imagenet[3].to_dict()) == imagenet[3]


def test_conftest_fake_classes_read_back(tmp_path: Path) -> None:
    from conftest import FAKE_CLASSES

    path = tmp_path / "classes.json"
    path.write_text(json.dumps(FAKE_CLASSES))
    assert [c.name for c in read_classes_json(path)] == ["tench", "English springer", "chain saw"]


@pytest.mark.parametrize(
    "content, needle",
    [
        ("[{\"label\": 1, \"id\": \"a\", \"name\": \"a\"}]", "entry 1 has label 1, expected 0"),
        ("[{\"label\": 0, \"name\": \"a\"}]", "entry 1: missing key 'id'"),
        ("[{\"label\": 0, \"id\": \"a\", \"name\": \"a\", \"lemmas\": \"a\"}]", "'lemmas' must be a list"),
        ("{\"label\": 0}", "expected a JSON list"),
        ("[", "unreadable"),
        ("[{\"label\": 0, \"id\": \"../x\", \"name\": \"a\"}]", "entry 1: class id '../x' contains a path separator"),
        ("[{\"label\": 0, \"id\": \"a\\\\b\", \"name\": \"a\"}]", "contains a path separator"),
        ("[{\"label\": 0, \"id\": \"a.b\", \"name\": \"a\"}]", "entry 1: class id 'a.b' is not letters, digits"),
    ],
)
def test_read_classes_json_errors(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "classes.json"
    path.write_text(content)
    with pytest.raises(UserError, match=needle):
        read_classes_json(path)


# ---------------------------------------------------------------------------------------------------
# CLI


def test_cli_json_output(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["classes", "imagenet-1k", "--class-limit", "2", "--json"], monkeypatch, capsys)
    assert code == 0, err
    data = json.loads(out)
    assert [d["id"] for d in data] == ["n01440764", "n01443537"]
    assert set(data[0]) == {"label", "id", "name", "definition", "hypernym", "lemmas", "group"}
    assert data[1]["name"] == "goldfish" and data[1]["hypernym"] == "cyprinid"


def test_cli_table_output(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    f = tmp_path / "c.csv"
    f.write_text("name,id\nsea otter,\n,n03612814\n")
    code, out, err = run_main(["classes", str(f)], monkeypatch, capsys)
    assert code == 0, err
    assert "2 classes" in out and "sea-otter" in out and "n03612814" in out and "kettle" in out and "pot" in out
    assert "definition" in out and "a metal pot for stewing or boiling" in out
    monkeypatch.setenv("COLUMNS", "50")  # too narrow for definitions: left out, ids still whole
    code, out, err = run_main(["classes", str(f)], monkeypatch, capsys)
    assert code == 0 and "n03612814" in out and "definition" not in out


BAD_FILES = {
    "malformed.json": ("[{\"name\": \"a\"},", "malformed JSON"),
    "malformed.yaml": ("classes: [a, b\n", "malformed YAML"),
    "malformed.csv": ("name,id\n\"a,b\n", "malformed CSV"),
    "noname.csv": ("id,description\nx,y\n", "no 'name' column"),
    "norow.csv": ("name,id\nfox,\n,\n , fox2\n", "row 3 (line 4) has no 'name'"),
    "norow.json": ("[{\"name\": \"fox\"}, {\"description\": \"no name\"}]", "row 2 has no 'name'"),
    "dup.csv": ("name,id\nRed Fox,\nkettle,\nred fox,\n",
                "duplicate class id 'red-fox' in row 1 (line 2) and row 3 (line 4)"),
    "dupwnid.yaml": ("- id: n01440764\n- id: n01443537\n- {name: tench again, id: n01440764}\n",
                     "duplicate class id 'n01440764' in row 1 and row 3"),
    "badwnid.csv": ("name,id\nfox,n01440765\n", "row 1 (line 2): unknown WordNet id 'n01440765'"),
    "empty.csv": ("name,id\n", "no classes in the file"),
    "empty.yaml": ("", "no classes in the file"),
    "extra.csv": ("name,colour\nfox,red\n", "unknown field 'colour'"),
    "extra.json": ("[{\"name\": \"fox\", \"nmae\": \"x\"}]", "row 1 has unknown field 'nmae'"),
    "badtype.yaml": ("- name: [a, b]\n", "row 1: 'name' must be text"),
    "toomany.csv": ("name,id\nfox,x,y\n", "row 1 (line 2) has more fields than the header row"),
    "unicode.json": ("[\"日本\"]", "name '日本' has no ASCII letters or digits"),
    "notalist.json": ("{\"kinds\": []}", "a mapping with a 'classes' list"),
    "classes.txt": ("fox\n", "unsupported class list extension '.txt'"),
    "escape.csv": ("name,id\nfox,../../evil\n", "row 1 (line 2): class id '../../evil' contains a path separator"),
    "escape.json": ("[{\"name\": \"fox\", \"id\": \"a/b\"}]", "row 1: class id 'a/b' contains a path separator"),
    "escape.yaml": ("- {name: fox, id: 'a\\\\b'}\n", "row 1: class id 'a\\\\\\\\b' contains a path separator"),
    "dotdot.csv": ("name,id\nfox,..\n", "class id '..' contains a path separator or '..'"),
}


@pytest.mark.parametrize("filename", sorted(BAD_FILES))
def test_cli_bad_files(filename: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    content, needle = BAD_FILES[filename]
    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")
    code, out, err = run_main(["classes", str(path)], monkeypatch, capsys)
    assert code == 2
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0] and filename in lines[0], lines[0]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["nonsense"], "unknown class set 'nonsense'"),
        ([" "], "empty class set spec"),
        (["somefolder"], "unsupported class list extension ''"),
        (["missing.csv"], "class list file not found: missing.csv"),
        (["wordnet:nosuch.n.01"], "unknown WordNet synset 'nosuch.n.01'"),
        (["wordnet:n01440765"], "unknown WordNet id 'n01440765'"),
        (["wordnet:"], "'wordnet:' needs a synset"),
        (["wordnet:run.v.01"], "wordnet:run.v.01 is not a noun synset"),
        (["imagenet-1k", "--class-limit", "0"], "'class-limit' must be positive, got 0"),
        (["imagenet-1k", "--class-limit", "-3"], "'class-limit' must be positive, got -3"),
    ],
)
def test_cli_bad_specs(args: list[str], needle: str, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "somefolder").mkdir()
    code, out, err = run_main(["classes", *args], monkeypatch, capsys)
    assert code == 2
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_cli_subprocess_error_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "dup.json"
    f.write_text(json.dumps([{"name": "a b"}, {"name": "A-B"}]))
    proc = subprocess.run([sys.executable, "-m", "imagenet_plus", "classes", str(f)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines() == [f"error: {f}: duplicate class id 'a-b' in row 1 and row 2"]


def test_missing_wordnet_via_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    import nltk

    def not_found(resource: str, paths=None):  # type: ignore[no-untyped-def]
        raise LookupError(resource)

    monkeypatch.setattr(nltk.data, "find", not_found)
    monkeypatch.setattr(wnmod, "system_wordnet_dirs", lambda: [tmp_path])
    wnmod.wordnet.cache_clear()
    wnindex.lookup.cache_clear()
    try:
        code, out, err = run_main(["classes", "wordnet:dog.n.01"], monkeypatch, capsys)
    finally:
        wnmod.wordnet.cache_clear()
        wnindex.lookup.cache_clear()
    assert code == 2 and "Traceback" not in out + err
    assert err.startswith("error: WordNet 3.0 not found") and "apt-get install wordnet-base wordnet-sense-index" in err


def test_escaping_class_id_stops_generate_before_anything_is_written(tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text("name,id\nfox,../../evil\n")
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "imagenet_plus", "generate", "--out", str(run), "--classes", str(f),
                           "--model", "tiny-random", "--images-per-class", "1"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {f}: row 1 (line 2): class id '../../evil'"), lines
    assert not run.exists() and not (tmp_path / "evil").exists()
