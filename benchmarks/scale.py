"""Bookkeeping at scale: seconds and peak memory of score's dataset pass, select, release and report.

Fabricates a run of N images over C classes in the real formats of :mod:`imagenet_plus.contract` (generated
tars of tiny JPEGs with their sample json and stats, scores parquets with random pass-1 scores, random
Inception pool3 / logits / CLIP features, class text embeddings; no model is loaded), then runs each
bookkeeping stage in its own process and measures its wall-clock seconds and peak resident memory
(``os.wait4``'s ``ru_maxrss`` of that process). It does this at N and at ``--factor``·N images (default 4)
and prints one table; the last line is ``scale_rss_ratio=X``, the largest RSS(4N)/RSS(N) over the stages
(bounded-memory stages stay near 1).

    python benchmarks/scale.py                                   # 100 classes, 5,000 → 20,000 images (minutes)
    python benchmarks/scale.py --classes 1000 --images 50000     # the issue's 50k → 200k at ImageNet's classes
    python benchmarks/scale.py --reference-per-class 50          # + a fabricated real reference, 50 rows per class
    python benchmarks/scale.py --classes 1000 --images 1280000 --factor 1   # ImageNet size, one size only

Stages (each one process): ``score`` = :func:`imagenet_plus.score.run_dataset_pass` (the dataset pass of
``imagenet-plus score``: IS/FID/KID/precision-recall, per-class FID, near-duplicates, write-back) followed by
writing ``summary.json``; ``select`` = :func:`imagenet_plus.select.run_select` (quota 80% of the images per
class, as ImageNet's ~1,300 of 1,600); ``release`` = :func:`imagenet_plus.release.run_release`; ``report``
= :func:`imagenet_plus.report.run_report`. Fabrication is timed apart and not part of the ratio.

Disk: about 10 KiB per image (features dominate: 2048 + 1008·2 + 768 values), so 1.28 M images need
~13 GiB under ``--work``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("score", "select", "release", "report")
#: Widths of the fabricated features (torch-fidelity pool3 and logits_unbiased; CLIP ViT-L/14 by default).
INCEPTION_DIM = 2048
LOGITS_DIM = 1008


# ------------------------------------------------------------------------------------------------------------
# fabrication


def _tiny_jpegs(n: int) -> list[bytes]:
    """``n`` distinct 16×16 JPEGs (one colour each), reused across samples."""
    import numpy as np
    from PIL import Image

    out = []
    rng = np.random.default_rng(0)
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=80)
        out.append(buf.getvalue())
    return out


def _score_columns(keys: list[str], labels: list[int], class_ids: list[str], rng) -> dict:  # type: ignore[no-untyped-def]
    """Pass-1 score columns (the dataset-pass columns null, as ``score`` leaves them before its dataset pass)."""
    n = len(keys)
    return {
        "key": keys, "label": labels, "class_id": class_ids,
        "clip_score": (20 + 10 * rng.random(n)).tolist(), "clip_class_score": (15 + 10 * rng.random(n)).tolist(),
        "clip_class_prob": rng.random(n).tolist(), "clip_class_rank": rng.integers(1, 5, n).tolist(),
        "isc_kl": [None] * n, "classifier_top1": [None] * n, "classifier_top5": [None] * n,
        "classifier_prob": [None] * n, "realism": [None] * n,
            "nsfw_score": [None] * n, "dup_of": [None] * n, "nsfw": [False] * n,
        "attempt": [0] * n, "strategy": ["name"] * n,
    }


def fabricate(root: Path, classes: int, images: int, shard_size: int, clip_dim: int, reference_per_class: int) -> Path:
    """Write a scored-but-not-dataset-passed run of ``images`` images over ``classes`` classes under ``root``."""
    import numpy as np
    import pyarrow.parquet as pq

    from imagenet_plus.contract import RunPaths, RunRecord, make_key, score_table, shard_name, write_run_yaml
    from imagenet_plus.generate.plan import initial_segment
    from imagenet_plus.io.atomic import atomic_file, write_json_atomic
    from imagenet_plus.io.tar import PartialTarWriter

    paths = RunPaths(root)
    paths.generated.mkdir(parents=True)
    paths.scores.mkdir()
    per_class = -(-images // classes)
    records = [{"label": i, "id": f"c{i:05d}", "name": f"class {i}", "lemmas": [f"class {i}"], "definition": "",
                "hypernym": "", "group": None} for i in range(classes)]
    paths.classes_json.write_text(json.dumps(records), encoding="utf-8")
    config = {"classes": "fabricated", "images_per_class": per_class, "model": "fabricated", "steps": 1,
              "guidance": 0.0, "resolution": 16, "seed": 0, "shard_size": shard_size, "image_format": "jpg"}
    # the plan generate would record (run.yaml's plan is checked on read): every class, per_class images each
    write_run_yaml(paths, RunRecord(config=config, config_hash="scale-benchmark", versions={}, num_classes=classes,
                                    num_images=classes * per_class, segments=(initial_segment(classes, per_class),)))
    rng = np.random.default_rng(0)
    jpegs = _tiny_jpegs(64)
    plan = [(c, i) for c in range(classes) for i in range(per_class)][:images]
    for s in range(0, len(plan), shard_size):
        chunk = plan[s:s + shard_size]
        stem = shard_name(s // shard_size)
        keys, labels, cids = [], [], []
        with PartialTarWriter(paths.generated / f"{stem}.tar") as w:
            for c, i in chunk:
                cid = records[c]["id"]
                key = make_key(cid, i)
                meta = {"class_id": cid, "class_name": records[c]["name"], "label": c,
                        "prompt": f"a photo of a {records[c]['name']}", "negative_prompt": "",
                        "seed": int(rng.integers(2**62)), "model": "fabricated", "scheduler": "none", "steps": 1,
                        "guidance": 0.0, "width": 16, "height": 16, "attempt": 0, "nsfw": False, "strategy": "name",
                        "index": i}
                w.write({"__key__": key, "jpg": jpegs[(c + i) % len(jpegs)], "cls": str(c).encode(),
                         "json": json.dumps(meta, sort_keys=True).encode()})
                keys.append(key)
                labels.append(c)
                cids.append(cid)
        write_json_atomic(paths.generated / f"{stem}.json", {"shard": stem, "count": len(chunk), "failures": 0,
                                                              "first_key": keys[0], "last_key": keys[-1],
                                                              "failed_keys": [], "images_per_second": None,
                                                              "regenerated": {"nsfw": 0, "black": 0}, "seconds": 0.0,
                                                              "rank": 0, "model": "fabricated"})
        files = paths.score_files(stem)
        n = len(chunk)
        np.save(files.inception, rng.standard_normal((n, INCEPTION_DIM), dtype=np.float32).astype(np.float16))
        np.save(files.logits, rng.standard_normal((n, LOGITS_DIM), dtype=np.float32))
        clip = rng.standard_normal((n, clip_dim), dtype=np.float32)
        np.save(files.clip, (clip / np.linalg.norm(clip, axis=1, keepdims=True)).astype(np.float16))
        with atomic_file(files.parquet) as f:
            pq.write_table(score_table(_score_columns(keys, labels, cids, rng)), f)
    text = rng.standard_normal((classes, clip_dim), dtype=np.float32)
    np.save(paths.class_text_embeddings, (text / np.linalg.norm(text, axis=1, keepdims=True)).astype(np.float16))
    if reference_per_class:
        feats = rng.standard_normal((classes * reference_per_class, INCEPTION_DIM), dtype=np.float32)
        ids = np.repeat(np.array([r["id"] for r in records]), reference_per_class)
        np.savez(root.parent / "reference.npz", features=feats, class_ids=ids)
    return root


# ------------------------------------------------------------------------------------------------------------
# one stage, in its own process


def run_stage(stage: str, run: Path) -> None:
    """Run one bookkeeping stage on the fabricated run ``run`` (called in a child process)."""
    if stage == "score":
        import numpy as np

        from imagenet_plus.contract import run_paths
        from imagenet_plus.io.atomic import write_json_atomic
        from imagenet_plus.score.stage import run_dataset_pass

        reference = None
        ref_file = run.parent / "reference.npz"
        if ref_file.is_file():
            from imagenet_plus.score.reference import Reference

            data = np.load(ref_file)
            reference = Reference(path=str(ref_file), kind="folder", content_hash="fabricated", weights_id=None,
                                  features=data["features"], class_ids=[str(c) for c in data["class_ids"]])
        paths = run_paths(run)
        summary = run_dataset_pass(run, reference).to_dict()
        summary.update(shards=[p.name[: -len(".parquet")] for p in paths.scored_parquets()], bad_shards=[],
                       models={"clip": "fabricated", "inception_weights": "fabricated", "classifier": "fabricated",
                               "nsfw_detector": "fabricated", "inception_weights_id": "fabricated"},
                       reference=None if reference is None else reference.describe(), reference_arg=None, config={},
                       versions={})
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
        run_release(run, run.parent / "release",
                    ReleaseConfig(val_per_class=max(1, per_class // 20), shard_size=1000, small_classes="train"))
    elif stage == "report":
        from imagenet_plus.report.stage import ReportConfig, run_report

        run_report(run, ReportConfig())
    else:
        raise SystemExit(f"unknown stage {stage!r}")


def measure(stage: str, run: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of ``stage`` run as a child process."""
    return _child(["--stage", stage, "--run", str(run)], stage)


def _child(args: list[str], stage: str) -> tuple[float, float]:
    """Run this script with ``args`` in a child process; (seconds, its peak RSS in MiB).

    The parent imports nothing heavy: Linux carries the parent's high-water RSS into a child across
    fork/exec, so a fat parent would inflate every child's ``ru_maxrss``.
    """
    env = dict(os.environ, TQDM_DISABLE="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read() if proc.stderr else b""  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-15:]
        raise SystemExit(f"stage {stage} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return seconds, usage.ru_maxrss / 1024.0  # Linux: KiB


# ------------------------------------------------------------------------------------------------------------
# the benchmark


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=100, help="classes C (default 100)")
    p.add_argument("--images", type=int, default=5000, help="images N at the small size (default 5000)")
    p.add_argument("--factor", type=int, default=4, help="the large size is factor·N (1: one size only)")
    p.add_argument("--reference-per-class", type=int, default=0, help="fabricated real reference rows per class")
    p.add_argument("--shard-size", type=int, default=1000, help="images per generated shard (default 1000)")
    p.add_argument("--clip-dim", type=int, default=768, help="CLIP embedding width (768: ViT-L/14)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to run, in pipeline order")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary folder, deleted)")
    p.add_argument("--keep", action="store_true", help="keep the fabricated runs")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--fabricate", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage:
        run_stage(args.stage, args.run)
        return
    if args.fabricate:
        fabricate(args.fabricate, args.classes, args.images, args.shard_size, args.clip_dim, args.reference_per_class)
        return
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        p.error(f"unknown stage(s) {', '.join(unknown)} (choose from {', '.join(STAGES)})")
    sizes = [args.images] if args.factor <= 1 else [args.images, args.images * args.factor]
    work = args.work or Path(tempfile.mkdtemp(prefix="imagenet-plus-scale-"))
    results: dict[int, dict[str, tuple[float, float]]] = {}
    print(f"# {args.classes} classes, sizes {sizes}, reference {args.reference_per_class or 'none'} per class, "
          f"shard size {args.shard_size}, CLIP width {args.clip_dim}, {os.cpu_count()} CPUs", flush=True)
    try:
        for n in sizes:
            root = work / f"n{n}"
            shutil.rmtree(root, ignore_errors=True)
            run = root / "run"
            seconds, _ = _child(["--fabricate", str(run), "--classes", str(args.classes), "--images", str(n),
                                 "--shard-size", str(args.shard_size), "--clip-dim", str(args.clip_dim),
                                 "--reference-per-class", str(args.reference_per_class)], "fabricate")
            print(f"# fabricated {n} images in {seconds:.1f} s", flush=True)
            results[n] = {}
            for stage in stages:
                seconds, rss = measure(stage, run)
                results[n][stage] = (seconds, rss)
                print(f"#   {n:>9} {stage:<8} {seconds:8.1f} s {rss:9.0f} MiB", flush=True)
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    _print_table(stages, sizes, results)


def _print_table(stages: list[str], sizes: list[int], results: dict[int, dict[str, tuple[float, float]]]) -> None:
    head = "| stage | " + " | ".join(f"{n:,} images: s / peak RSS MiB" for n in sizes)
    if len(sizes) == 2:
        head += " | RSS ratio | time ratio"
    print(head + " |")
    print("|---" * head.count("|") + "|")
    ratios = []
    for stage in stages:
        row = f"| {stage} | " + " | ".join(f"{results[n][stage][0]:.1f} / {results[n][stage][1]:.0f}" for n in sizes)
        if len(sizes) == 2:
            (t1, r1), (t2, r2) = results[sizes[0]][stage], results[sizes[1]][stage]
            ratios.append(r2 / r1)
            row += f" | {r2 / r1:.2f} | {t2 / t1:.2f}"
        print(row + " |")
    print(f"scale_rss_ratio={max(ratios):.3f}" if ratios else "scale_rss_ratio=n/a (one size)")


if __name__ == "__main__":
    main()
