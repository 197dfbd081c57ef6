"""The layout counts of issue 17 ("one owner per concept"), measured from the package's source.

Run from the repository root: ``python tools/layout.py`` (``--verbose`` lists what each count found, on stderr).
It prints one ``name=value`` line per count and, last, ``layout_ok=1`` when every count meets its goal, else
``layout_ok=0``. Modules are parsed with :mod:`ast`; nothing of the package is imported except
``imagenet_plus.contract`` (light), whose record dataclasses give the key sets of the last count.

Counts and goals (the package is ``imagenet_plus/``; tests, benchmarks and tools are not counted):

``modules_over_600_lines`` (goal 0)
    Modules longer than 600 lines.

``import_cycles`` (goal 0)
    Groups of project modules that import each other in a cycle (strongly connected components of two or
    more modules, or a module importing itself), counting module-level imports only: an import inside a
    function is not run at import time, and imports under ``if TYPE_CHECKING:`` never run. Imports in a
    module's other top-level blocks (``if``, ``try``, class bodies) count. ``import a.b.c`` is an edge to
    ``a.b.c``; ``from a.b import c`` an edge to ``a.b.c`` when that is a module, else to ``a.b``; relative
    imports are resolved. Importing ``a.b.c`` also runs the packages ``a`` and ``a.b`` first: those are edges
    too, except the importing module's own ancestors (already being initialised, so a package whose
    ``__init__`` imports its submodules forms no cycle with them). A package face's imports count like any
    module's (``from imagenet_plus.contract.names import X`` from outside the contract is an edge to
    ``imagenet_plus/contract/__init__.py`` and everything it imports).

``function_imports`` (goal: at most 10)
    ``import`` statements of project modules inside a function body (at any depth), outside ``cli.py``.

``repeated_blocks`` (goal 0)
    Blocks of six or more code lines that appear in two or more modules. Lines are compared stripped;
    blank lines, comments, docstrings and import statements are left out (a shared import list is not
    duplicated logic). Each maximal run of such lines in a module counts once (a block in two modules
    counts twice).

``key_spelling_files`` (goal 0)
    Modules outside ``imagenet_plus/contract/`` that spell a key of ``RUN/scores/summary.json``,
    ``RUN/diagnosis.json`` / ``diagnosis.parquet`` or ``REL/_info.json``. The keys are the field names of
    the contract's records for those files (``ScoreSummary``, ``DiagnosisSummary``, ``ReleaseInfo``,
    ``SplitInfo``, and the dataclasses their fields hold) and the diagnosis column table
    (``DIAGNOSIS_COLUMNS``), those that exist (``key_records_missing`` names the others). Keys that are
    generic words are told apart honestly:

    - a key that is also a field of another dataclass of the package, or a column/field of another contract
      table, is *shared* (``name``, ``classes``, ``num_classes``, ``fingerprint``…): it counts only where it is
      read as a key (``x["k"]``, ``x.get("k")``/``pop``/``setdefault``) from a value that came from one of those
      files, as a local data flow finds it (:func:`file_reads`): ``info = json.loads(rel.info_json.read_text())``
      makes ``info["name"]`` count, ``cls["name"]`` of a class record does not. Writers are not traced (a dict
      literal ``{"name": …}`` may be any record): a writer is caught by the specific keys it spells, and the
      contract's writers build the record instead;
    - any other key is *specific* to those files (``fid``, ``verdict_counts``, ``shard_lengths``…): every
      string constant equal to it counts, in any module (docstrings aside).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import sys
import typing
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "imagenet_plus"
MAX_LINES = 600
MAX_FUNCTION_IMPORTS = 10
BLOCK_LINES = 6
#: The records whose fields are the keys of summary.json, diagnosis.json and _info.json, and the diagnosis table.
KEY_RECORDS = ("ScoreSummary", "DiagnosisSummary", "ReleaseInfo", "SplitInfo")
KEY_TABLES = ("DIAGNOSIS_COLUMNS",)
#: What a module names when it reads or writes one of those files.
FILE_MARKERS = frozenset({
    "SUMMARY_JSON", "summary_json", "DIAGNOSIS_JSON", "diagnosis_json", "DIAGNOSIS_PARQUET", "diagnosis_parquet",
    "INFO_NAME", "info_json", "summary.json", "diagnosis.json", "diagnosis.parquet", "_info.json", *KEY_RECORDS,
})
#: Other contract tables whose names make a key shared.
OTHER_TABLES = ("SAMPLE_FIELDS", "SCORE_COLUMNS", "SELECTION_COLUMNS", "RELEASE_SCORE_FIELDS")


@dataclasses.dataclass(frozen=True)
class Module:
    name: str
    relative: str
    is_package: bool
    tree: ast.Module
    lines: list[str]


def load_modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Module]:
    """Every module of ``root/package``, by dotted name."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        text = path.read_text(encoding="utf-8")
        name = ".".join(parts)
        out[name] = Module(name, path.relative_to(root).as_posix(), path.name == "__init__.py",
                           ast.parse(text, str(path)), text.splitlines())
    return out


# ------------------------------------------------------------------------------------------------------------
# imports


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements run when the module is imported (not in functions, not under TYPE_CHECKING)."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _with_parents(module: Module, name: str, known: set[str]) -> list[str]:
    """``name`` and the packages Python initialises first to import it: those ``module`` is not inside (its own
    ancestors are already being initialised, so importing a sibling does not run them again)."""
    parts = name.split(".")
    out = [name]
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        inside = module.name == parent or module.name.startswith(parent + ".")
        if parent in known and not inside:
            out.append(parent)
    return out


def imported_modules(module: Module, node: ast.Import | ast.ImportFrom, known: Iterable[str]) -> list[str]:
    """The project modules an import statement runs (see the module docstring)."""
    known = set(known)
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names if a.name in known]
    else:
        target = _absolute(module, node)
        targets = []
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            if sub in known:
                targets.append(sub)
            elif target in known:
                targets.append(target)
    return sorted({m for t in targets for m in _with_parents(module, t, known)})


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, module in modules.items():
        for node in module_level_imports(module.tree):
            graph[name].update(imported_modules(module, node, modules))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with a cycle (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1 or node in graph[node]:
                    found.append(sorted(group))
    return found


def function_imports(modules: dict[str, Module], package: str = PACKAGE) -> list[str]:
    """``path:line`` of project imports inside functions, outside cli.py."""
    out = []
    for module in modules.values():
        if module.name == f"{package}.cli":
            continue
        for func in ast.walk(module.tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [_absolute(module, node)] if node.level else [node.module or ""]
                else:
                    continue
                if any(n == package or n.startswith(package + ".") for n in names):
                    out.append(f"{module.relative}:{node.lineno}")
    return sorted(set(out))  # a nested function's import is found once per enclosing function


# ------------------------------------------------------------------------------------------------------------
# repeated blocks


def _skipped_lines(tree: ast.Module) -> set[int]:
    """Line numbers of docstrings and import statements."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skipped.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            skipped.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    return skipped


def code_lines(module: Module) -> list[tuple[int, str]]:
    skipped = _skipped_lines(module.tree)
    out = []
    for number, line in enumerate(module.lines, start=1):
        text = line.strip()
        if text and not text.startswith("#") and number not in skipped:
            out.append((number, text))
    return out


def repeated_blocks(modules: dict[str, Module]) -> list[str]:
    """``path:first-last`` of each maximal run of lines that belongs to a block also found in another module."""
    windows: dict[str, set[str]] = defaultdict(set)
    per_module = {}
    for name, module in modules.items():
        lines = code_lines(module)
        keys = [hashlib.sha1("\n".join(t for _, t in lines[i:i + BLOCK_LINES]).encode()).hexdigest()
                for i in range(len(lines) - BLOCK_LINES + 1)]
        per_module[name] = (lines, keys)
        for key in keys:
            windows[key].add(name)
    out = []
    for name, (lines, keys) in per_module.items():
        covered = [False] * len(lines)
        for i, key in enumerate(keys):
            if len(windows[key]) > 1:
                for j in range(i, i + BLOCK_LINES):
                    covered[j] = True
        i = 0
        while i < len(lines):
            if covered[i]:
                j = i
                while j + 1 < len(lines) and covered[j + 1]:
                    j += 1
                out.append(f"{modules[name].relative}:{lines[i][0]}-{lines[j][0]}")
                i = j + 1
            else:
                i += 1
    return out


# ------------------------------------------------------------------------------------------------------------
# keys of summary.json, diagnosis.json and _info.json spelled outside the contract


def _dataclass_fields(cls: type, seen: set[type]) -> set[str]:
    """Field names of a dataclass and of the dataclasses its fields hold (``dict[str, SplitInfo]``…)."""
    if cls in seen or not dataclasses.is_dataclass(cls):
        return set()
    seen.add(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 (an unresolvable annotation only hides nested records)
        hints = {}
    for hint in hints.values():
        for arg in [hint, *typing.get_args(hint)]:
            if isinstance(arg, type):
                names |= _dataclass_fields(arg, seen)
    return names


def contract_keys() -> tuple[set[str], set[str], list[str]]:
    """(keys of the three files, other contract names that make a key shared, the records/tables missing)."""
    sys.path.insert(0, str(ROOT))
    import imagenet_plus.contract as contract

    keys: set[str] = set()
    seen: set[type] = set()
    missing = []
    for name in KEY_RECORDS:
        cls = getattr(contract, name, None)
        if cls is None:
            missing.append(name)
        else:
            keys |= _dataclass_fields(cls, seen)
    for name in KEY_TABLES:
        table = getattr(contract, name, None)
        if table is None:
            missing.append(name)
        else:
            keys |= {c if isinstance(c, str) else c[0] for c in table}
    others: set[str] = set()
    for name in OTHER_TABLES:
        table = getattr(contract, name, ())
        others |= {c if isinstance(c, str) else c[0] for c in table}
    return keys, others, missing


def dataclass_field_names(modules: dict[str, Module], exclude: Iterable[str]) -> set[str]:
    """Field names of every dataclass of the package (by source), except the classes named in ``exclude``."""
    exclude = set(exclude)
    names: set[str] = set()
    for module in modules.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.ClassDef) and node.name not in exclude and any(
                    "dataclass" in ast.unparse(d) for d in node.decorator_list):
                names |= {s.target.id for s in node.body
                          if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    return names


def _docstring_nodes(tree: ast.Module) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant):
            out.add(id(body[0].value))
    return out


def _mentions(node: ast.AST, names: set[str], attrs: set[str], funcs: set[str]) -> bool:
    """Whether an expression names one of the files (or a value that came from one)."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and (sub.id in FILE_MARKERS or sub.id in names):
            return True
        if isinstance(sub, ast.Attribute) and (sub.attr in FILE_MARKERS or sub.attr in attrs):
            return True
        if isinstance(sub, ast.Constant) and sub.value in FILE_MARKERS:
            return True
        if isinstance(sub, ast.Call):
            func = sub.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if called in funcs:
                return True
    return False


def _bindings(scope: list[ast.stmt]) -> Iterator[tuple[list[ast.expr], ast.expr]]:
    """(targets, value) of the assignments, loops, comprehensions and ``with`` of a scope (not nested functions)."""
    stack: list[ast.AST] = list(scope)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Assign):
            yield node.targets, node.value
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value is not None:
            yield [node.target], node.value
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            yield [node.target], node.iter
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            yield [node.optional_vars], node.context_expr
        stack.extend(ast.iter_child_nodes(node))


def _scopes(tree: ast.Module) -> Iterator[list[ast.stmt]]:
    yield tree.body
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.body


def _target_names(targets: list[ast.expr]) -> tuple[set[str], set[str]]:
    names, attrs = set(), set()
    for target in targets:
        for sub in ast.walk(target):
            if isinstance(sub, ast.Name):
                names.add(sub.id)
            elif isinstance(sub, ast.Attribute):
                attrs.add(sub.attr)
    return names, attrs


def file_reads(tree: ast.Module) -> set[int]:
    """``id`` of string constants read as keys (``x["k"]``, ``x.get("k")``) from a value that came from one of
    the files: a local data flow, per function, from expressions that name the file (its constant, path
    attribute, record or file name) through assignments, loops and ``with``; module-wide through attributes set
    from such values (``Inputs(summary=read(paths.summary_json))`` makes ``.summary`` one) and functions that
    return them."""
    attrs: set[str] = set()
    funcs: set[str] = set()
    local: dict[int, set[str]] = defaultdict(set)
    changed = True
    while changed:
        changed = False
        for scope in _scopes(tree):
            names = local[id(scope)]
            for targets, value in _bindings(scope):
                if _mentions(value, names, attrs, funcs):
                    new_names, new_attrs = _target_names(targets)
                    if not (new_names <= names and new_attrs <= attrs):
                        names |= new_names
                        attrs |= new_attrs
                        changed = True
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg and kw.arg not in attrs and _mentions(kw.value, set(), attrs, funcs):
                        attrs.add(kw.arg)
                        changed = True
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in funcs:
                names = local[id(node.body)]
                if any(isinstance(r, ast.Return) and r.value is not None and _mentions(r.value, names, attrs, funcs)
                       for r in ast.walk(node)):
                    funcs.add(node.name)
                    changed = True
    out = set()
    for scope in _scopes(tree):
        names = local[id(scope)]
        stack: list[ast.AST] = list(scope)
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(node, ast.Subscript) and _mentions(node.value, names, attrs, funcs):
                out.add(id(node.slice))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args and \
                    node.func.attr in ("get", "pop", "setdefault") and _mentions(node.func.value, names, attrs, funcs):
                out.add(id(node.args[0]))
            stack.extend(ast.iter_child_nodes(node))
    return out


def key_spellings(modules: dict[str, Module], keys: set[str], shared: set[str],
                  package: str = PACKAGE) -> dict[str, list[str]]:
    """``{path: [keys it spells]}`` for modules outside the contract (rule in the module docstring)."""
    out: dict[str, list[str]] = {}
    for module in modules.values():
        if module.name.startswith(f"{package}.contract"):
            continue
        docstrings = _docstring_nodes(module.tree)
        reads = file_reads(module.tree)
        found = set()
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or node.value not in keys:
                continue
            if id(node) in docstrings:
                continue
            if node.value not in shared or id(node) in reads:
                found.add(node.value)
        if found:
            out[module.relative] = sorted(found)
    return out


# ------------------------------------------------------------------------------------------------------------


def measure(verbose: bool = False) -> dict[str, int]:
    modules = load_modules()
    long = [f"{m.relative} ({len(m.lines)})" for m in modules.values() if len(m.lines) > MAX_LINES]
    loops = cycles(import_graph(modules))
    inline = function_imports(modules)
    blocks = repeated_blocks(modules)
    keys, other_tables, missing = contract_keys()
    shared = keys & (dataclass_field_names(modules, KEY_RECORDS) | other_tables)
    spelled = key_spellings(modules, keys, shared)
    if verbose:
        for title, items in (("modules over 600 lines", long), ("import cycles", [" → ".join(c) for c in loops]),
                             ("project imports inside functions", inline), ("repeated blocks", blocks),
                             ("key spellings", [f"{p}: {', '.join(k)}" for p, k in spelled.items()])):
            print(f"# {title}: {len(items)}", file=sys.stderr)
            for item in items:
                print(f"  {item}", file=sys.stderr)
    counts = {
        "modules_over_600_lines": len(long),
        "import_cycles": len(loops),
        "function_imports": len(inline),
        "repeated_blocks": len(blocks),
        "key_spelling_files": len(spelled),
        "key_records_missing": len(missing),
    }
    counts["layout_ok"] = int(counts["modules_over_600_lines"] == 0 and counts["import_cycles"] == 0
                              and counts["function_imports"] <= MAX_FUNCTION_IMPORTS and counts["repeated_blocks"] == 0
                              and counts["key_spelling_files"] == 0 and counts["key_records_missing"] == 0)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="list what each count found (on stderr)")
    args = parser.parse_args(argv)
    for name, value in measure(args.verbose).items():
        print(f"{name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
