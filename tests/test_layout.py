"""tools/layout.py: the layout counts of issue 17, checked against the issue's goals, and the counters themselves
checked on small made-up packages."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import layout  # noqa: E402 (the script, imported for its counters)

#: Goal of each count (issue 17): the largest value that meets it.
GOALS = {"modules_over_600_lines": 0, "import_cycles": 0, "function_imports": 10, "repeated_blocks": 0,
         "key_spelling_files": 0, "key_records_missing": 0}


@pytest.fixture(scope="module")
def counts() -> dict[str, int]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "layout.py")], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(line.count("=") == 1 for line in lines) and lines[-1].startswith("layout_ok=")
    return {k: int(v) for k, v in (line.split("=") for line in lines)}


@pytest.mark.parametrize("name", list(GOALS))
def test_count_meets_the_issue_goal(counts: dict[str, int], name: str) -> None:
    assert counts[name] <= GOALS[name], f"{name}={counts[name]} (goal: at most {GOALS[name]}); see --verbose"


def test_layout_ok_is_every_goal(counts: dict[str, int]) -> None:
    assert counts["layout_ok"] == int(all(counts[k] <= v for k, v in GOALS.items()))


def _package(root: Path, files: dict[str, str]) -> dict[str, layout.Module]:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return layout.load_modules(root, "pkg")


def test_cycles_count_module_level_imports_only(tmp_path: Path) -> None:
    modules = _package(tmp_path, {
        "__init__.py": "from pkg import a\n",  # a package importing its submodule is no cycle with it
        "a.py": "from pkg.b import f\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
                "def f():\n    from pkg.a import x\n",
        "c.py": "from . import d\n",
        "d.py": "import pkg.c\n",
        "face/__init__.py": "from pkg.face.inner import y\n",
        "face/inner.py": "from pkg.face import z\n",
    })
    assert layout.cycles(layout.import_graph(modules)) == [["pkg.c", "pkg.d"], ["pkg.face", "pkg.face.inner"]]
    assert layout.function_imports(modules, "pkg") == ["pkg/b.py:5"]


def test_a_cycle_through_a_package_that_python_initialises_first(tmp_path: Path) -> None:
    """``import pkg.io.atomic`` first: atomic imports pkg.contract.names, which runs pkg/contract/__init__.py,
    which imports records, which imports the half-initialised atomic (the cycle imagenet_plus had)."""
    modules = _package(tmp_path, {
        "io/__init__.py": "",
        "io/atomic.py": "from pkg.contract.names import SUFFIX\ndef write(): ...\n",
        "contract/__init__.py": "from pkg.contract.names import SUFFIX\nfrom pkg.contract.records import Record\n",
        "contract/names.py": "SUFFIX = '.partial'\n",
        "contract/records.py": "from pkg.io.atomic import write\nclass Record: ...\n",
    })
    assert layout.cycles(layout.import_graph(modules)) == [["pkg.contract", "pkg.contract.records", "pkg.io.atomic"]]
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", "import pkg.io.atomic"], capture_output=True, text=True, env=env)
    assert "circular import" in proc.stderr  # the counted cycle is a real one


def test_repeated_blocks_ignore_imports_docstrings_and_comments(tmp_path: Path) -> None:
    block = "x = 1\ny = x + 1\nz = y * 2\nw = z - 3\nv = w / 4\nu = v ** 5\n"
    imports = "".join(f"import mod{i}\n" for i in range(8))
    doc = '"""' + "\n".join(f"line {i}" for i in range(8)) + '\n"""\n'
    modules = _package(tmp_path, {"a.py": doc + imports + "# one\n" + block, "b.py": doc + imports + block + "t = 0\n",
                                  "c.py": block[: block.rindex("u =")] + "u = 0\n"})
    assert layout.repeated_blocks(modules) == ["pkg/a.py:19-24", "pkg/b.py:18-23"]


def test_key_spellings_tell_shared_words_by_where_they_come_from(tmp_path: Path) -> None:
    modules = _package(tmp_path, {
        "reader.py": """
            import json
            def load(rel):
                info = json.loads((rel / INFO_NAME).read_text())
                for split in info["splits"].values():
                    print(split["name"])
                return info
            def classes(records):
                return [c["name"] for c in records]
        """,
        "other.py": """
            def shapes(x):
                return {"name": x["name"], "fid": 1}
        """,
        "contract/__init__.py": "KEYS = {'fid': 0, 'splits': 1}\n",
    })
    found = layout.key_spellings(modules, keys={"fid", "splits", "name"}, shared={"name"}, package="pkg")
    # reader: the split's 'name' comes from _info.json; other: 'fid' is specific, its 'name' is any record's
    assert found == {"pkg/reader.py": ["name", "splits"], "pkg/other.py": ["fid"]}
