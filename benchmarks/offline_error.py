"""Seconds until a command without network says so: ``generate`` with a Hub model, ``publish --dry-run``.

"No network" is the Hub endpoint on a closed loopback port (``HF_ENDPOINT``; connections refused at once),
``HF_HUB_OFFLINE`` unset and an empty Hugging Face cache: what a newcomer on an offline machine has. Both
commands run as the console script in a subprocess, so the figure is the whole command, start-up included:

- ``generate --model stabilityai/sd-turbo`` on a two-class custom class file (no WordNet), which must end in
  one ``error: cannot reach the Hugging Face Hub … (offline?)`` line and leave no ``run.yaml``;
- ``publish REL --dry-run`` on a release made here from a fake run, which must list the release without the
  repo (``repo not listed``).

With ``--before REV`` the same commands also run with the code of git revision ``REV`` (``git archive``), in
the same session, alternating, and the ratio before/after is printed. The last line is
``offline_error_seconds=N`` (the slower of the two commands with this checkout, best of ``--repeat``).

    python benchmarks/offline_error.py --before 306bd91
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def checkout(rev: str, dest: Path) -> Path:
    """The package of revision ``rev`` in ``dest`` (``.`` = this checkout)."""
    if rev == ".":
        return REPO
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "imagenet_plus"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def timed(tree: Path, args: list[str], tmp: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(PYTHONPATH=str(tree), HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HOME=str(tmp / "hf_home"),
               IMAGENET_PLUS_CACHE=str(tmp / "cache"))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "imagenet_plus", *args], capture_output=True, text=True, env=env,
                          cwd=tmp, timeout=600)
    return time.perf_counter() - start, proc


def make_release(tmp: Path) -> Path:
    """A small valid release (fake run, real select and release of this checkout)."""
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO))
    from release_fixtures import make_release as make

    return make(tmp / "made", per_class=6, quota=4, val_per_class=1, shard_size=4, license="apache-2.0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="a git revision to compare with (e.g. the commit before the fix)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="offline-error-") as name:
        tmp = Path(name)
        trees = {"after": checkout(".", tmp)}
        if args.before:
            trees["before"] = checkout(args.before, tmp / "before")
        rel = make_release(tmp)
        classes = tmp / "classes.csv"
        classes.write_text("name,id\nred apple,red_apple\nbanana,banana\n")
        commands = {
            "generate": lambda run: ["generate", "--out", str(run), "--classes", str(classes), "--images-per-class",
                                     "1", "--model", "stabilityai/sd-turbo"],
            "publish --dry-run": lambda run: ["publish", str(rel), "--repo-id", "user/name", "--dry-run"],
        }
        best: dict[tuple[str, str], float] = {}
        for i in range(args.repeat):
            for label, build in commands.items():
                for which, tree in trees.items():
                    run = tmp / f"run-{which}-{i}"
                    seconds, proc = timed(tree, build(run), tmp)
                    last = (proc.stderr.strip().splitlines() or [""])[-1][:110]
                    left = f", run.yaml left: {(run / 'run.yaml').exists()}" if label == "generate" else ""
                    print(f"{label:18s} {which:6s} try {i + 1}: {seconds:6.1f} s, exit {proc.returncode}{left}; {last}")
                    best[label, which] = min(best.get((label, which), seconds), seconds)
        for label in commands:
            line = f"{label}: after {best[label, 'after']:.1f} s"
            if args.before:
                before = best[label, "before"]
                line += f", before {before:.1f} s, ratio {before / best[label, 'after']:.1f}x"
            print(line)
        print(f"offline_error_seconds={max(best[label, 'after'] for label in commands):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
