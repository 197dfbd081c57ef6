"""Same config, two versions of the code: are the outputs byte-identical (apart from timestamps)?

Runs ``imagenet-plus run --config CONFIG`` with the code of ``--before`` (a git revision, checked out with
``git archive`` into a temporary folder) and with the code of ``--after`` (a revision, or ``.`` for the
working tree), each in its own run folder but with one shared cache (the tiny models are then the same
files), then compares every file of the two run folders (the release inside them included):

- tar files member by member (names and bytes);
- JSON and YAML files after dropping the keys that record *when* or *how fast* (``created``, ``finished``,
  ``seconds``, …) or that are random per run folder (``run_id``): :data:`VOLATILE_KEYS`;
- the report's HTML after removing those same values where the page prints them;
- everything else byte for byte.

Files that exist on one side only are listed as such (a new record such as ``RUN/state/`` is expected
after a change that adds it: ``--ignore state`` leaves a folder out). The last line is
``same_outputs_differences=N`` (0 when the two runs agree).

    python benchmarks/same_outputs.py --before 99bd8f3 --after . --ignore state --ignore pipeline.json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: JSON keys whose values record time or speed, not content (a fingerprint hashes input files' modification times),
#: or are random per run folder (run_id, in run.yaml and _info.json).
VOLATILE_KEYS = frozenset({"created", "finished", "seconds", "img_per_s", "images_per_second", "elapsed", "fingerprint",
                           "generated_at", "duration", "run_id"})


def checkout(rev: str, dest: Path) -> Path:
    """The tree of ``rev`` (``.`` = the working tree itself) as a folder to put on PYTHONPATH."""
    if rev == ".":
        return REPO
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def run_demo(tree: Path, config: Path, out: Path, cache: Path) -> None:
    """``imagenet-plus run`` with the code in ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "IMAGENET_PLUS_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "imagenet_plus", "run", "--config", str(config), "--out", str(out)],
                   check=True, env=env, cwd=tree, stdout=subprocess.DEVNULL)


def _strip(value: object) -> object:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]


#: JSON keys the ``after`` side may add (``--new-key``): a record that gained a field on purpose.
NEW_KEYS: set[str] = set()


def close(x: object, y: object, rtol: float) -> bool:
    """Equal, except that floats may differ by ``rtol`` (relative) — recursively through lists and dicts; ``y`` (the
    after side) may hold the :data:`NEW_KEYS` that ``x`` lacks."""
    if isinstance(x, float) and isinstance(y, float) and rtol > 0:
        return math.isclose(x, y, rel_tol=rtol, abs_tol=rtol * 1e-3) or (math.isnan(x) and math.isnan(y))
    if isinstance(x, dict) and isinstance(y, dict):
        y = {k: v for k, v in y.items() if k in x or k not in NEW_KEYS}
        return x.keys() == y.keys() and all(close(x[k], y[k], rtol) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(close(u, v, rtol) for u, v in zip(x, y))
    return x == y


def _same_members(a: Path, b: Path, rtol: float) -> bool:
    """Tars: the same member names in the same order, the same bytes (json members: equal up to ``rtol``)."""
    ma, mb = _tar_members(a), _tar_members(b)
    if [n for n, _ in ma] != [n for n, _ in mb]:
        return False
    return all(x == y or (name.endswith(".json") and close(json.loads(x), json.loads(y), rtol))
               for (name, x), (_, y) in zip(ma, mb))


def _same_table(a: Path, b: Path, rtol: float) -> bool:
    """Parquet files: the same schema and rows; float columns equal up to ``rtol``."""
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    if ta.schema != tb.schema or ta.num_rows != tb.num_rows:
        return False
    return all(close(ta.column(n).to_pylist(), tb.column(n).to_pylist(), rtol) for n in ta.column_names)


def _same_csv(a: Path, b: Path, root_a: Path, root_b: Path, rtol: float) -> bool:
    """CSV files: the same cells; cells that read as floats equal up to ``rtol``."""
    import csv

    def cells(path: Path, root: Path) -> list[list[object]]:
        def value(cell: str) -> object:
            try:
                return float(cell)
            except ValueError:
                return cell

        return [[value(c) for c in row] for row in csv.reader(io.StringIO(_text(path, root)))]

    return close(cells(a, root_a), cells(b, root_b), rtol)


def _text(path: Path, root: Path) -> str:
    """A text output with its own run folder's path replaced by ``RUN`` (the two runs live in two folders)."""
    return path.read_text(encoding="utf-8").replace(str(root), "RUN")


def same_file(a: Path, b: Path, root_a: Path, root_b: Path, rtol: float = 0.0) -> bool:
    """Whether two output files hold the same content (see the module docstring for what is ignored)."""
    if a.read_bytes() == b.read_bytes():
        return True
    if a.suffix == ".tar":
        return _same_members(a, b, rtol)
    if a.suffix == ".parquet" and rtol > 0:
        return _same_table(a, b, rtol)
    if a.suffix == ".npy" and rtol > 0:
        import numpy as np

        x, y = np.load(a), np.load(b)
        return x.shape == y.shape and x.dtype == y.dtype and bool(np.allclose(x, y, rtol=rtol, atol=0, equal_nan=True))
    if a.suffix == ".json":
        try:
            return close(_strip(json.loads(_text(a, root_a))), _strip(json.loads(_text(b, root_b))), rtol)
        except ValueError:
            pass
    if a.suffix == ".yaml":
        import yaml

        try:
            return _strip(yaml.safe_load(_text(a, root_a))) == _strip(yaml.safe_load(_text(b, root_b)))
        except yaml.YAMLError:
            pass
    if a.suffix == ".csv" and rtol > 0:
        return _same_csv(a, b, root_a, root_b, rtol)
    if a.suffix in (".html", ".md", ".csv", ".yaml"):
        volatile = re.compile(r"\d+(\.\d+)? ?s\b|\d{4}-\d\d-\d\d[T ][\d:]+Z?")
        return volatile.sub("", _text(a, root_a)) == volatile.sub("", _text(b, root_b))
    return a.read_bytes() == b.read_bytes()


def compare(before: Path, after: Path, ignore: tuple[str, ...] = (), rtol: float = 0.0) -> list[str]:
    """Differences between two run folders, one line each (empty: the same)."""

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                and not any(part in ignore for part in p.relative_to(root).parts)}

    a, b = files(before), files(after)
    out = [f"only before: {name}" for name in sorted(a - b)] + [f"only after: {name}" for name in sorted(b - a)]
    out += [f"differs: {name}" for name in sorted(a & b)
            if not same_file(before / name, after / name, before, after, rtol)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the old code")
    parser.add_argument("--after", default=".", help="git revision of the new code, or . (working tree)")
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--ignore", action="append", default=[], help="a file or folder name left out")
    parser.add_argument("--keep", help="run in this (new) folder and keep it, to look at the differences")
    parser.add_argument("--rtol", type=float, default=0.0,
                        help="floats (JSON, CSV, parquet, .npy, json tar members) may differ by this relative amount")
    parser.add_argument("--new-key", action="append", default=[],
                        help="a JSON key the new code adds to a record on purpose (compared only when both have it)")
    args = parser.parse_args(argv)
    NEW_KEYS.update(args.new_key)
    with tempfile.TemporaryDirectory(prefix="same-outputs-") as tmp:
        tmp_path = Path(args.keep) if args.keep else Path(tmp)
        runs = {}
        for side in ("before", "after"):
            tree = checkout(getattr(args, side), tmp_path / side / "code")
            runs[side] = tmp_path / side / "run"  # same folder name on both sides (the report's title shows it)
            run_demo(tree, Path(args.config).resolve(), runs[side], tmp_path / "cache")
            print(f"{side}: {getattr(args, side)} ran in {runs[side]}", file=sys.stderr)
        diffs = compare(runs["before"], runs["after"], tuple(args.ignore), args.rtol)
    for line in diffs:
        print(line)
    print(f"same_outputs_differences={len(diffs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
