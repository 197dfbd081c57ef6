"""Does the storage layer cost anything on local disk? And how long does the same work take against a bucket?

Fabricates a run of N images over C classes in the real formats (``benchmarks/scale.py --fabricate``: generated
tars, scores parquets, features; no model), then times the bookkeeping stages that read and write the run
folder the most: score's dataset pass (+ ``summary.json``), ``select``, ``release`` (tars written through the
shard writer) and ``report``, each in its own process, on a fresh copy of the run each time:

- **before**: the code of ``--base`` (a git revision, default the commit this branch started from; checked out
  with ``git archive`` into a temporary folder, as ``benchmarks/same_outputs.py`` does);
- **after**: the working tree.

Sides alternate, ``--repeats`` times (best of each kept). Then the same stages run with the working tree against
a real S3 API on loopback (moto's server mode, reached through s3fs with an endpoint URL; the fabricated run is
uploaded first, not timed): seconds, to show object storage is not pathological.

The last line is ``storage_overhead_ratio=<after seconds / before seconds>`` on local disk (goal ≤ 1.05).

    python benchmarks/storage_overhead.py                      # 20 classes × 1,000 images (about a minute or two)
    python benchmarks/storage_overhead.py --images 5000 --repeats 5
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The commit this change started from (the code before the storage layer).
DEFAULT_BASE = "de90b9166fa6d1c824587ced2d55d907b307d87e"
STAGES = ("score", "select", "release", "report")


def checkout(rev: str, dest: Path) -> Path:
    """The tree of ``rev`` in ``dest`` (``git archive``)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _plan_segment(run_yaml: Path) -> None:
    """Give the fabricated run.yaml the ``initial`` segment every run's plan starts with (``scale.py`` writes none,
    which the run record's checks refuse since plan segments were added)."""
    import yaml

    data = yaml.safe_load(run_yaml.read_text())
    if not data.get("segments"):
        ipc = int(data["config"]["images_per_class"])
        data["segments"] = [{"kind": "initial", "ranges": [[label, 0, ipc] for label in range(data["num_classes"])]}]
        run_yaml.write_text(yaml.safe_dump(data, sort_keys=False))


def run_stage(stage: str, run: str, rel: str) -> None:
    """One stage on ``run`` (a folder or a URL), in this process (the child)."""
    if stage == "score":
        from imagenet_plus.contract import run_paths
        from imagenet_plus.io.atomic import write_json_atomic
        from imagenet_plus.score.stage import run_dataset_pass

        paths = run_paths(run)
        summary = run_dataset_pass(run, None).to_dict()
        summary.update(shards=[p.name[: -len(".parquet")] for p in paths.scored_parquets()], bad_shards=[],
                       models={"clip": "fabricated", "inception_weights": "fabricated", "classifier": "fabricated",
                               "nsfw_detector": "fabricated", "inception_weights_id": "fabricated"},
                       reference=None, reference_arg=None, config={}, versions={})
        write_json_atomic(paths.summary_json, summary)
    elif stage == "select":
        from imagenet_plus.contract import read_run_yaml, run_paths
        from imagenet_plus.select import SelectConfig, run_select

        per_class = int(read_run_yaml(run_paths(run))["config"]["images_per_class"])
        run_select(run, SelectConfig(per_class=max(1, per_class * 4 // 5)))
    elif stage == "release":
        from imagenet_plus.contract import read_run_yaml, run_paths
        from imagenet_plus.release.stage import ReleaseConfig, run_release

        per_class = int(read_run_yaml(run_paths(run))["config"]["images_per_class"])
        run_release(run, rel, ReleaseConfig(val_per_class=max(1, per_class // 20), shard_size=1000,
                                            small_classes="train"))
    elif stage == "report":
        from imagenet_plus.report.stage import ReportConfig, run_report

        run_report(run, ReportConfig())
    else:
        raise SystemExit(f"unknown stage {stage!r}")


def _child(tree: Path, args: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds of ``python THIS_SCRIPT ARGS`` with ``tree``'s package first on the path."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(tree), "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *args], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{args} failed with the code in {tree}:\n" + "\n".join(proc.stderr.splitlines()[-15:]))
    return seconds


def time_stages(tree: Path, run: str, rel: str, env: dict[str, str] | None = None) -> dict[str, float]:
    """Seconds of each stage, in order, on ``run``."""
    return {s: _child(tree, ["--stage", s, "--run", run, "--rel", rel], env) for s in STAGES}


def moto_seconds(fabricated: Path, work: Path) -> dict[str, float]:
    """The stages against moto's S3 server on loopback (the run uploaded first, not timed)."""
    sys.path.insert(0, str(REPO / "tests"))
    from s3_server import s3_server

    with s3_server() as s3:
        s3.make_bucket("bench")
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=s3.endpoint)
        fs.put(str(fabricated) + "/", "bench/run/", recursive=True)
        env = {**s3.env, "IMAGENET_PLUS_SCRATCH": str(work / "scratch")}
        return time_stages(REPO, "s3://bench/run", "s3://bench/release", env)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--base", default=DEFAULT_BASE, help="git revision of the code before (default: this change's base)")
    p.add_argument("--no-moto", action="store_true", help="skip the figure against the S3 server")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--rel", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage:
        run_stage(args.stage, args.run, args.rel)
        return
    work = Path(tempfile.mkdtemp(prefix="imagenet-plus-storage-"))
    try:
        before_tree = checkout(args.base, work / "before")
        fabricated = work / "fabricated" / "run"
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "scale.py"), "--fabricate", str(fabricated),
                        "--classes", str(args.classes), "--images", str(args.images), "--shard-size",
                        str(args.shard_size), "--clip-dim", "64"], check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        _plan_segment(fabricated / "run.yaml")
        best: dict[str, dict[str, float]] = {}
        print(f"# {args.classes} classes × {args.images // args.classes} images, shard size {args.shard_size}, "
              f"{os.cpu_count()} CPUs; before = {args.base[:10]}, after = working tree", flush=True)
        for r in range(args.repeats):
            for side, tree in (("before", before_tree), ("after", REPO)) if r % 2 == 0 else \
                    (("after", REPO), ("before", before_tree)):
                copy = work / f"{side}-{r}"
                shutil.copytree(fabricated.parent, copy)
                seconds = time_stages(tree, str(copy / "run"), str(copy / "release"))
                shutil.rmtree(copy)
                print(f"#   {side:<6} repeat {r}: " + ", ".join(f"{s} {v:.2f} s" for s, v in seconds.items()),
                      flush=True)
                if side not in best or sum(seconds.values()) < sum(best[side].values()):
                    best[side] = seconds
        print("| stage | before (s) | after (s) |\n|---|---|---|")
        for s in STAGES:
            print(f"| {s} | {best['before'][s]:.2f} | {best['after'][s]:.2f} |")
        before, after = sum(best["before"].values()), sum(best["after"].values())
        print(f"| all | {before:.2f} | {after:.2f} |")
        if not args.no_moto:
            remote = moto_seconds(fabricated, work)
            print("# against moto's S3 server on loopback: " + ", ".join(f"{s} {v:.2f} s" for s, v in remote.items())
                  + f"; all {sum(remote.values()):.2f} s ({sum(remote.values()) / after:.2f}× local)")
            print(f"moto_seconds={sum(remote.values()):.2f}")
        print(f"storage_overhead_ratio={after / before:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
