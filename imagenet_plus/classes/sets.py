"""Class sets: which classes a run generates, in label order (writes ``RUN/classes.json``).

A class set is named by a *spec*:

- ``imagenet-1k``: the 1000 ImageNet-1k classes in the standard label order (0 = ``n01440764``
  tench … 999 = ``n15075141`` toilet tissue), from the class info timm ships (wnids, lemmas,
  definitions; no network), with each class's hypernym and lexicographer group from WordNet 3.0.
- ``wordnet:SYNSET`` (``wordnet:dog.n.01`` or ``wordnet:n02084071``): the synset and every synset
  below it along hyponym links (instance hyponyms, i.e. named individuals, are not followed), sorted
  by wnid. Only noun synsets are accepted.
- a ``.csv`` / ``.json`` / ``.yaml`` / ``.yml`` file listing classes (``name`` required, ``id``,
  ``description`` and ``hypernym`` optional) in label order. An ``id`` that is a noun wnid
  (``n`` + 8 digits) is filled in from WordNet; other ids are sanitised to a slug, and a missing id
  becomes the slug of the name. A class id names files and folders (keys, image-folder exports, report
  sheets), so one longer than :data:`~imagenet_plus.contract.names.CLASS_ID_MAX` (233) characters is refused.

Input: the spec. Output: a list of :class:`ClassInfo`, written by the ``generate`` stage as
``RUN/classes.json`` (a JSON list of :meth:`ClassInfo.to_dict` objects, in label order).
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.classes import wordnet as wnmod
from imagenet_plus.classes import wordnet_index as wnindex
from imagenet_plus.classes.wordnet import SynsetInfo
from imagenet_plus.contract import KEY_PATTERN
from imagenet_plus.contract.names import CLASS_ID_MAX
from imagenet_plus.errors import UserError
from imagenet_plus.io.atomic import write_bytes_atomic
from imagenet_plus.io.storage import location

#: The spec of the ImageNet-1k class set.
IMAGENET_1K = "imagenet-1k"
#: Prefix of WordNet subtree specs.
WORDNET_PREFIX = "wordnet:"
#: File extensions of custom class lists.
FILE_EXTENSIONS = (".csv", ".json", ".yaml", ".yml")
#: Fields a custom class list may have.
FILE_FIELDS = ("name", "id", "description", "hypernym")
#: A noun wnid, the only kind of id filled in from WordNet.
NOUN_WNID = re.compile(r"^n\d{8}$")


def check_class_id(class_id: str, where: str, made_from: str = "") -> str:
    """A class id names folders and files (ImageFolder export, sample keys, report sheets): refuse one that could
    escape a folder or that makes a file name too long for the file system.

    Args:
        class_id: the id.
        where: names its source in errors (``classes.csv: row 3 (line 4)``).
        made_from: what the id was made from when it is not the user's own ``id`` (``its name``), for the message.

    Raises:
        UserError: the id holds a path separator or ``..``, a character outside letters, digits, ``_``, ``-``, or
            more than :data:`~imagenet_plus.contract.names.CLASS_ID_MAX` characters.
    """
    text = str(class_id)
    if "/" in text or "\\" in text or ".." in text:
        raise UserError(f"{where}: class id {text!r} contains a path separator or '..' (class ids name folders "
                        "and files: letters, digits, _ and - only)")
    if not KEY_PATTERN.match(text):
        raise UserError(f"{where}: class id {text!r} is not letters, digits, _ and - only")
    if len(text) > CLASS_ID_MAX:
        origin = f" (made from {made_from})" if made_from else ""
        raise UserError(f"{where}: class id {text[:24] + '...'!r}{origin} is {len(text)} characters long; class ids "
                        f"name files and folders, and at most {CLASS_ID_MAX} fit in a file name: give a shorter 'id'")
    return text


@dataclass(frozen=True)
class ClassInfo:
    """One class of a class set.

    Attributes:
        label: integer label (position in the class set).
        id: class id used in sample keys: a wnid for WordNet classes, a slug (letters, digits, ``-``) otherwise.
        name: human-readable name (the first lemma for WordNet classes).
        lemmas: all names of the class (WordNet lemmas, with spaces).
        definition: WordNet gloss or the user's description ("" if none).
        hypernym: first lemma of the parent synset ("" if none).
        group: WordNet lexicographer file such as ``noun.animal`` ("" for custom classes).
    """

    label: int
    id: str
    name: str
    lemmas: tuple[str, ...] = ()
    definition: str = ""
    hypernym: str = ""
    group: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``classes.json`` schema)."""
        return {
            "label": self.label,
            "id": self.id,
            "name": self.name,
            "lemmas": list(self.lemmas),
            "definition": self.definition,
            "hypernym": self.hypernym,
            "group": self.group,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "class") -> ClassInfo:
        """Build from a ``classes.json`` entry.

        Args:
            data: the entry.
            where: names the entry in errors (e.g. ``"RUN/classes.json: entry 3"``).

        Raises:
            UserError: not a mapping, a required key (label, id, name) missing, or a value of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise UserError(f"{where}: expected an object, got {type(data).__name__}")
        for key in ("label", "id", "name"):
            if key not in data:
                raise UserError(f"{where}: missing key '{key}'")
        label = data["label"]
        if isinstance(label, bool) or not isinstance(label, int):
            raise UserError(f"{where}: 'label' must be an integer, got {label!r}")
        for key in ("id", "name", "definition", "hypernym", "group"):
            if key in data and not isinstance(data[key], str):
                raise UserError(f"{where}: '{key}' must be a string, got {data[key]!r}")
        check_class_id(data["id"], where)
        lemmas = data.get("lemmas", [])
        if not isinstance(lemmas, (list, tuple)) or not all(isinstance(x, str) for x in lemmas):
            raise UserError(f"{where}: 'lemmas' must be a list of strings, got {lemmas!r}")
        return cls(
            label=label,
            id=data["id"],
            name=data["name"],
            lemmas=tuple(lemmas),
            definition=data.get("definition", ""),
            hypernym=data.get("hypernym", ""),
            group=data.get("group", ""),
        )


# ---------------------------------------------------------------------------------------------------
# Spec resolution


def resolve_classes(spec: str, class_limit: int | None = None) -> list[ClassInfo]:
    """Resolve a class-set spec into classes in label order.

    Args:
        spec: ``imagenet-1k``, ``wordnet:SYNSET`` (name like ``object.n.01`` or wnid like ``n00002684``),
            or the path of a ``.csv``/``.json``/``.yaml``/``.yml`` class list.
        class_limit: keep only the first N classes (labels 0..N-1).

    Returns:
        The classes, labels 0..n-1 in order.

    Raises:
        UserError: unknown spec or synset, missing or malformed file, a row without a name, duplicate
            or unknown ids, an empty class set, or a non-positive ``class_limit``.
    """
    if class_limit is not None and (isinstance(class_limit, bool) or class_limit <= 0):
        raise UserError(f"'class-limit' must be positive, got {class_limit}")
    text = str(spec).strip()
    if not text:
        raise UserError("empty class set spec (expected imagenet-1k, wordnet:SYNSET or a .csv/.json/.yaml file)")
    if text.lower() in (IMAGENET_1K, "imagenet1k"):
        classes = imagenet_1k_classes(class_limit)
    elif text.lower().startswith(WORDNET_PREFIX):
        classes = wordnet_classes(text[len(WORDNET_PREFIX) :].strip(), class_limit)
    else:
        classes = file_classes(Path(text), class_limit)
    return classes  # never empty: a WordNet subtree holds its root, an empty file is an error


def imagenet_1k_info() -> tuple[list[str], dict[str, str], dict[str, str]]:
    """The ImageNet-1k class info timm ships: wnids in label order, ``wnid → "lemma, lemma"``, ``wnid → definition``.

    Read from timm's package folder without importing timm, because ``import timm`` imports torch and
    torchvision (3.6 to 8 s and 1.1 GB of memory measured, most of what ``classes imagenet-1k`` cost). The
    files are the ones ``timm.data.ImageNetInfo`` reads, parsed as it parses them (one wnid a line;
    tab-separated ``wnid, text`` rows read with :mod:`csv`); ``tests/test_classes.py`` compares the result with
    ``ImageNetInfo``. A timm installed other than as plain files (zipped) is read through ``ImageNetInfo``.

    Raises:
        UserError: timm is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec("timm")
    if spec is None:
        raise UserError("imagenet-1k needs timm's ImageNet class info: pip install timm")
    folders = [Path(p) / "data" / "_info" for p in (spec.submodule_search_locations or [])]
    names = ("imagenet_synsets.txt", "imagenet_synset_to_lemma.txt", "imagenet_synset_to_definition.txt")
    for folder in folders:
        if all((folder / name).is_file() for name in names):
            synsets, lemmas, definitions = ((folder / name).read_bytes().decode("utf-8") for name in names)
            return (synsets.splitlines(), dict(csv.reader(lemmas.splitlines(), delimiter="\t")),
                    dict(csv.reader(definitions.splitlines(), delimiter="\t")))
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    wnids = list(info.label_names())
    return wnids, {w: info.label_name_to_description(w) for w in wnids}, {
        w: info.label_name_to_description(w, detailed=True)[len(info.label_name_to_description(w)) + 2 :]
        for w in wnids}


def imagenet_1k_classes(class_limit: int | None = None) -> list[ClassInfo]:
    """The ImageNet-1k classes in label order (timm's shipped info + WordNet hypernym and group)."""

    wnids, lemma_text, definitions = imagenet_1k_info()
    if class_limit is not None:
        wnids = wnids[:class_limit]
    wn = wnindex.lookup()
    out = []
    for label, wnid in enumerate(wnids):
        lemmas = tuple(x.strip() for x in lemma_text[wnid].split(", ") if x.strip())
        # as timm's detailed description "lemma, lemma: definition" is cut after the lemmas
        detailed = f"{lemma_text[wnid]}: {definitions[wnid]}"
        definition = detailed[len(lemma_text[wnid]) :].lstrip(":").strip()
        info = wn.by_wnid(wnid)
        out.append(
            ClassInfo(
                label=label,
                id=check_class_id(wnid, f"{IMAGENET_1K}: label {label}"),
                name=lemmas[0],
                lemmas=lemmas,
                definition=definition,
                hypernym=wnmod.readable(info.hypernym),
                group=info.lexname,
            )
        )
    return out


def wordnet_classes(target: str, class_limit: int | None = None) -> list[ClassInfo]:
    """The hyponym closure of a noun synset (root included, instance hyponyms not followed), sorted by wnid.

    Args:
        target: synset name (``dog.n.01``) or wnid (``n02084071``).
        class_limit: keep the first N (in wnid order).

    Raises:
        UserError: unknown synset, or not a noun.
    """

    if not target:
        raise UserError("'wordnet:' needs a synset, like wordnet:object.n.01 or wordnet:n00002684")
    wn = wnindex.lookup()
    root = wn.by_wnid(target) if wnmod.is_wnid(target) else wn.by_name(target)
    if root.pos != "n":
        raise UserError(f"wordnet:{target} is not a noun synset ({root.name}): image classes must be nouns")
    synsets = wn.subtree(root, instances=False)
    if class_limit is not None:
        synsets = synsets[:class_limit]
    return [synset_class(label, s, f"{WORDNET_PREFIX}{target}") for label, s in enumerate(synsets)]


def synset_class(label: int, synset: SynsetInfo, where: str = "wordnet") -> ClassInfo:
    """A :class:`ClassInfo` for a WordNet synset (``where`` names the spec in errors)."""

    lemmas = tuple(wnmod.readable(x) for x in synset.lemma_names)
    return ClassInfo(
        label=label,
        id=check_class_id(synset.wnid, f"{where}: {synset.name}"),
        name=lemmas[0],
        lemmas=lemmas,
        definition=synset.definition,
        hypernym=wnmod.readable(synset.hypernym),
        group=synset.lexname,
    )


# ---------------------------------------------------------------------------------------------------
# Custom class lists


def slugify(text: str) -> str:
    """A key-safe id: ASCII letters and digits, words joined by ``-``, lower case (``Red Fox!`` → ``red-fox``)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return "-".join(re.findall(r"[a-z0-9]+", ascii_text.lower()))


def _rows_from_csv(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines(), strict=True)
    try:
        header = reader.fieldnames
    except csv.Error as exc:
        raise UserError(f"{path}: malformed CSV: {exc}") from None
    if not header:
        return []
    header = [(h or "").strip().lower() for h in header]
    if "name" not in header:
        raise UserError(f"{path}: no 'name' column in the header row (columns: {', '.join(header)})")
    _check_fields(path, "header row", header)
    reader.fieldnames = header
    rows: list[tuple[str, dict[str, Any]]] = []
    try:
        for i, row in enumerate(reader, start=1):
            if None in row:
                raise UserError(f"{path}: row {i} (line {reader.line_num}) has more fields than the header row")
            if all(v is None or not str(v).strip() for v in row.values()):
                continue  # blank line
            rows.append((f"row {i} (line {reader.line_num})", dict(row)))
    except csv.Error as exc:
        raise UserError(f"{path}: malformed CSV at line {reader.line_num}: {exc}") from None
    return rows


def _check_fields(path: Path, where: str, keys: Iterable[str]) -> None:
    for key in keys:
        if key not in FILE_FIELDS:
            raise UserError(f"{path}: {where} has unknown field {key!r} (known: {', '.join(FILE_FIELDS)})")


def _rows_from_data(path: Path, data: Any) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(data, Mapping):
        if "classes" not in data:
            raise UserError(f"{path}: expected a list of classes or a mapping with a 'classes' list")
        data = data["classes"]
    if data is None:
        return []
    if not isinstance(data, list):
        raise UserError(f"{path}: 'classes' must be a list, got {type(data).__name__}")
    rows = []
    for i, item in enumerate(data, start=1):
        where = f"row {i}"
        if isinstance(item, str):  # a bare name
            item = {"name": item}
        if not isinstance(item, Mapping):
            raise UserError(f"{path}: {where} must be an object with a 'name', got {item!r}")
        item = {str(k).strip().lower(): v for k, v in item.items()}
        _check_fields(path, where, item)
        rows.append((where, item))
    return rows


def read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Read a class list file into (row description, fields) pairs, in file order.

    Raises:
        UserError: missing file, unknown extension, malformed CSV/JSON/YAML, unknown fields.
    """
    suffix = path.suffix.lower()
    if suffix not in FILE_EXTENSIONS:
        raise UserError(f"{path}: unsupported class list extension {suffix!r} (use .csv, .json, .yaml or .yml)")
    if not path.is_file():
        raise UserError(f"class list file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    if suffix == ".csv":
        return _rows_from_csv(path, text)
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: malformed JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
        return _rows_from_data(path, data)
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise UserError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    return _rows_from_data(path, data)


def _text_field(path: Path, where: str, row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"{path}: {where}: '{key}' must be text, got {value!r}")
    return " ".join(str(value).split())


def file_classes(path: Path, class_limit: int | None = None) -> list[ClassInfo]:
    """Classes from a CSV/JSON/YAML class list, labels in file order.

    Raises:
        UserError: see :func:`read_rows`; a row without a name; an unknown wnid; an id that
            sanitises to nothing; duplicate ids (naming both rows).
    """
    if path.suffix.lower() not in FILE_EXTENSIONS and not path.exists():
        raise UserError(
            f"unknown class set {str(path)!r}: expected imagenet-1k, wordnet:SYNSET (e.g. wordnet:object.n.01) "
            "or an existing .csv/.json/.yaml file"
        )
    rows = read_rows(path)
    if not rows:
        raise UserError(f"{path}: no classes in the file")
    if class_limit is not None:
        rows = rows[:class_limit]
    out: list[ClassInfo] = []
    first_row: dict[str, str] = {}
    for label, (where, row) in enumerate(rows):
        name = _text_field(path, where, row, "name")
        raw_id = _text_field(path, where, row, "id")
        description = _text_field(path, where, row, "description")
        hypernym = _text_field(path, where, row, "hypernym")
        if "/" in raw_id or "\\" in raw_id or ".." in raw_id:
            check_class_id(raw_id, f"{path}: {where}")
        if NOUN_WNID.match(raw_id):

            try:
                synset = wnindex.lookup().by_wnid(raw_id)
            except UserError as exc:
                raise UserError(f"{path}: {where}: {exc.message}") from None
            base = synset_class(label, synset, f"{path}: {where}")
            lemmas = base.lemmas if not name or name in base.lemmas else (name, *base.lemmas)
            info = ClassInfo(
                label=label,
                id=raw_id,
                name=name or base.name,
                lemmas=lemmas,
                definition=description or base.definition,
                hypernym=hypernym or base.hypernym,
                group=base.group,
            )
        else:
            if not name:
                raise UserError(f"{path}: {where} has no 'name'")
            class_id = slugify(raw_id or name)
            if not class_id:
                culprit = f"id {raw_id!r}" if raw_id else f"name {name!r}"
                raise UserError(
                    f"{path}: {where}: {culprit} has no ASCII letters or digits to make a class id from; give an 'id'"
                )
            check_class_id(class_id, f"{path}: {where}", "" if class_id == raw_id else
                           f"its {'id' if raw_id else 'name'}")
            info = ClassInfo(
                label=label, id=class_id, name=name, lemmas=(name,), definition=description, hypernym=hypernym, group=""
            )
        if info.id in first_row:
            raise UserError(f"{path}: duplicate class id {info.id!r} in {first_row[info.id]} and {where}")
        first_row[info.id] = where
        out.append(info)
    return out


# ---------------------------------------------------------------------------------------------------
# classes.json and printing


def write_classes_json(path: str | Path, classes: Sequence[ClassInfo]) -> None:
    """Write a class set as a JSON list in label order (atomically: ``.partial`` then rename)."""

    text = json.dumps([c.to_dict() for c in classes], indent=2, ensure_ascii=False) + "\n"
    write_bytes_atomic(location(path), text.encode("utf-8"))


def read_classes_json(path: str | Path) -> list[ClassInfo]:
    """Read a ``classes.json`` written by :func:`write_classes_json`.

    Raises:
        UserError: missing or malformed file, an entry missing a key, or labels not 0..n-1 in order.
    """
    p = location(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"class file not found: {p}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"unreadable {p}: {exc}") from None
    if not isinstance(data, list):
        raise UserError(f"{p}: expected a JSON list of classes, got {type(data).__name__}")
    classes = [ClassInfo.from_dict(item, f"{p}: entry {i + 1}") for i, item in enumerate(data)]
    for i, c in enumerate(classes):
        if c.label != i:
            raise UserError(f"{p}: entry {i + 1} has label {c.label}, expected {i} (labels follow list order)")
    return classes


def print_classes(classes: Sequence[ClassInfo], as_json: bool = False) -> None:
    """Print a class set on stdout: a rich table, or a JSON list of objects.

    Args:
        classes: the classes.
        as_json: print JSON objects with label, id, name, definition, hypernym, lemmas, group.
    """
    import sys

    if as_json:
        rows = [
            {
                "label": c.label,
                "id": c.id,
                "name": c.name,
                "definition": c.definition,
                "hypernym": c.hypernym,
                "lemmas": list(c.lemmas),
                "group": c.group,
            }
            for c in classes
        ]
        sys.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout)
    table = Table(title=f"{len(classes)} classes")
    columns = ["label", "id", "name", "hypernym", "group", "definition"]
    rows = [[str(c.label), c.id, c.name, c.hypernym, c.group, c.definition] for c in classes]
    widths = [min(30, max([len(col)] + [len(r[i]) for r in rows])) for i, col in enumerate(columns[:-1])]
    # The definition gets the width left over (3 characters of border per column) and is cut to it,
    # so that each class takes one line; on a terminal too narrow for it, it is left out (see --json).
    room = console.width - sum(widths) - 3 * len(columns) - 1
    if room < 16:
        columns.pop()
        rows = [r[:-1] for r in rows]
    else:
        for r in rows:
            r[-1] = r[-1] if len(r[-1]) <= room else r[-1][: room - 1] + "…"
    for i, column in enumerate(columns):
        if i < 2:  # label and id are never cut nor wrapped
            table.add_column(column, no_wrap=True, min_width=widths[i], justify="right" if i == 0 else "left")
        else:
            table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(*r)
    console.print(table)
