"""WordNet start-up: seconds and peak memory of class-set resolution through nltk ("before") and the index ("after").

Every WordNet-based command resolves its class set first (``classes``; ``generate`` before it loads a model).
Through nltk's reader that costs about 10 s and 0.4 GB in each process (``import nltk``, then ``index.sense``
read twice and the lemma map built from ``index.*``). Through the compact index of
:mod:`imagenet_plus.classes.wordnet` (made once, kept in the imagenet-plus cache) it reads only the rows it needs.

Workloads, each one fresh process, timed (wall-clock seconds, and in parentheses the CPU seconds the process
used, which a busy machine stretches less) with its peak resident memory (``os.wait4``'s ``ru_maxrss``):

- ``classes imagenet-1k``: the command line, table printed (N = 1,000);
- ``resolve imagenet-1k``: ``resolve_classes("imagenet-1k")`` alone, as ``generate``'s start-up does (N = 1,000);
- ``resolve wordnet:object.n.01``: the 29,581-class hyponym closure (N = 29,581).

"before" sets ``IMAGENET_PLUS_WORDNET_INDEX=0`` (every lookup through nltk's reader); "after" uses the index.
The index is made first if the cache has none (that one-time build is timed apart). Before and after alternate,
``--repeats`` times each (best seconds, largest RSS kept), and their outputs must be identical. The last line is
``wordnet_startup_speedup=X``, the smallest before/after ratio of seconds over the workloads.

    python benchmarks/wordnet_startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

#: Resolves a spec and prints the class count and a hash of the classes (so before and after can be compared).
RESOLVE = (
    "import hashlib, json, sys\n"
    "from imagenet_plus.classes import resolve_classes\n"
    "classes = resolve_classes(sys.argv[1])\n"
    "text = json.dumps([c.to_dict() for c in classes], ensure_ascii=False)\n"
    "print(len(classes), hashlib.sha256(text.encode()).hexdigest())\n"
)
WORKLOADS = (
    ("classes imagenet-1k", 1000, ["-m", "imagenet_plus", "classes", "imagenet-1k"]),
    ("resolve imagenet-1k", 1000, ["-c", RESOLVE, "imagenet-1k"]),
    ("resolve wordnet:object.n.01", 29_581, ["-c", RESOLVE, "wordnet:object.n.01"]),
)
#: The switch of :mod:`imagenet_plus.classes.wordnet` that reads WordNet through nltk
#: (not imported: the parent stays lean).
INDEX_ENV = "IMAGENET_PLUS_WORDNET_INDEX"


def run_child(args: list[str], index: bool) -> tuple[float, float, float, bytes]:
    """Run ``python args`` in a child process: (seconds, its CPU seconds, its peak RSS in MiB, its stdout).

    The parent imports nothing heavy: Linux carries the parent's high-water RSS into a child across
    fork/exec, so a fat parent would inflate every child's ``ru_maxrss``.
    """
    env = dict(os.environ, TQDM_DISABLE="1", COLUMNS="160")
    env[INDEX_ENV] = "1" if index else "0"
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], env=env, stdout=out, stderr=subprocess.PIPE)
        stderr = proc.stderr.read() if proc.stderr else b""  # type: ignore[union-attr]
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            tail = stderr.decode(errors="replace").strip().splitlines()[-15:]
            raise SystemExit(f"{' '.join(args[:3])} failed (exit {proc.returncode}):\n" + "\n".join(tail))
        out.seek(0)
        return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, out.read()  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each workload before and after (best kept)")
    args = parser.parse_args()

    seconds, _, _, _ = run_child(["-c", RESOLVE, "wordnet:tench.n.01"], index=True)  # makes the index if missing
    print(f"warm-up (makes the index once if the cache has none): {seconds:.1f} s")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    header = f"{'workload':<28} {'N':>6} {'before s (cpu)':>15} {'after s (cpu)':>14} {'speedup':>8} " \
             f"{'before MiB':>11} {'after MiB':>10} {'RSS ratio':>10}"
    print(header)
    print("-" * len(header))
    speedups = []
    for name, n, child in WORKLOADS:
        best = {True: float("inf"), False: float("inf")}
        cpu = {True: float("inf"), False: float("inf")}
        rss = {True: 0.0, False: 0.0}
        outputs: dict[bool, bytes] = {}
        for _ in range(args.repeats):
            for index in (False, True):
                s, c, mib, out = run_child(child, index)
                best[index], cpu[index], rss[index] = min(best[index], s), min(cpu[index], c), max(rss[index], mib)
                if outputs.setdefault(index, out) != out:
                    raise SystemExit(f"{name}: two runs printed different output")
        if outputs[False] != outputs[True]:
            raise SystemExit(f"{name}: the index and nltk's reader give different classes")
        speedups.append(best[False] / best[True])
        before, after = f"{best[False]:.2f} ({cpu[False]:.2f})", f"{best[True]:.2f} ({cpu[True]:.2f})"
        print(f"{name:<28} {n:>6,} {before:>15} {after:>14} {speedups[-1]:>7.1f}x {rss[False]:>11.0f} "
              f"{rss[True]:>10.0f} {rss[False] / rss[True]:>9.1f}x")
    print("outputs of before and after identical: yes")
    print(f"wordnet_startup_speedup={min(speedups):.1f}")


if __name__ == "__main__":
    main()
