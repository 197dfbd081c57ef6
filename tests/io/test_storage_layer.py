"""One storage layer: outside ``imagenet_plus/io/`` no module renames, copies, walks or opens files with the
standard library's local-only calls (builtin ``open``, ``os.replace``/``os.rename``, ``shutil``, ``os.walk``,
``os.path``), which would break on a run or release at an fsspec URL (docs/storage.md). They go through
``io.storage`` / ``io.atomic`` / ``io.tar`` instead.

The few modules listed in ``LOCAL_ONLY`` work on folders that are always local (the cache folder, model files),
each with the reason; a new call elsewhere fails this test, naming the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "imagenet_plus"

#: Modules allowed local-only file calls, and why.
LOCAL_ONLY = {
    "pipeline/recipes.py": "names the recipe files of the local configs folder",
    "models/tiny.py": "builds tiny models in the local cache folder",
    "classes/wordnet.py": "copies the WordNet data into the local cache folder",
    "classes/wordnet_index.py": "reads and writes its index in the local cache folder",
    "generate/real.py": "reads the real images of --real (a local folder)",
    "generate/inputs.py": "fingerprints the real images of --real (a local folder)",
    "score/reference.py": "reads the real reference images (a local folder) and the local feature cache",
    "score/scorers/inception.py": "reads Inception weights from the local cache",
}
#: ``module.attribute`` calls that only work on local paths.
LOCAL_CALLS = {("os", "replace"), ("os", "rename"), ("os", "walk"), ("os", "remove"), ("os", "unlink"),
               ("os", "makedirs")}


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        what = None
        if isinstance(f, ast.Name) and f.id == "open":
            what = "open()"
        elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            if (f.value.id, f.attr) in LOCAL_CALLS or f.value.id == "shutil":
                what = f"{f.value.id}.{f.attr}()"
        elif (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Attribute)
              and isinstance(f.value.value, ast.Name) and f.value.value.id == "os" and f.value.attr == "path"
              and f.attr not in ("join", "basename")):
            what = f"os.path.{f.attr}()"
        if what:
            out.append(f"{path.relative_to(PACKAGE).as_posix()}:{node.lineno}: {what}")
    return out


def test_only_io_uses_local_only_file_calls() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("io/") or rel in LOCAL_ONLY:
            continue
        found += _offences(path)
    assert not found, "local-only file calls outside io/ (use io.storage / io.atomic):\n" + "\n".join(found)


def test_the_scan_finds_each_kind_of_call(tmp_path: Path) -> None:
    probe = PACKAGE / "_probe_storage_layer.py"
    probe.write_text("import os, shutil\nopen('x')\nos.replace('a', 'b')\nshutil.rmtree('d')\nos.path.isdir('d')\n"
                     "os.path.join('a', 'b')\n")
    try:
        assert [o.split(": ")[1] for o in _offences(probe)] == ["open()", "os.replace()", "shutil.rmtree()",
                                                               "os.path.isdir()"]
    finally:
        probe.unlink()
