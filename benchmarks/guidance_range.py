"""Does a guidance range cost throughput? img/s of ``generate`` with ``guidance: [1, 5]`` vs a fixed guidance.

A range gives each image its own guidance (one of 9 levels, from its seed). diffusers takes one guidance per call,
so a shard's images are batched per level: each level may add one partly filled batch (a 256-image shard at batch
16 runs in at most 24 calls instead of 16). This measures what that costs on a tiny random pipeline (``--model``),
in one run: the same images (classes, seeds, prompts), the same batch and shard sizes, the same loaded pipeline
(injected, so loading counts on neither side), once with ``--fixed`` guidance and once with the range; each is timed
``--repeats`` times, alternating, after a warm-up, and the best of each is kept. Time is the sum of the shards'
own seconds (``RUN/generated/*.json``), i.e. the generation loop with encoding and writing.

**Which clock.** On a GPU the ratio is of wall time. On a CPU it is of the process's CPU time with one torch
thread (``--threads 1``, ``--clock cpu``): on a machine shared with other jobs, wall time per call varied 10x
between repeats of the same batch, while the CPU time of a single-threaded run counts the work itself; both are
printed.

The fixed value defaults to 3.0, the range's middle, so both sides run classifier-free guidance on (almost) every
image (diffusers skips the unconditional pass at guidance <= 1 for SD: the range's 1.0 level is cheaper).

The last line is ``guidance_range_throughput_ratio=<range img/s / fixed img/s>`` (goal >= 0.9).

Usage: ``python benchmarks/guidance_range.py [--images 512] [--batch-size 16] [--shard-size 256] [--model M]``
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
from pathlib import Path

CLASSES = "name\ngoldfish\ntabby cat\nacoustic guitar\nespresso\n"


def cpu_seconds() -> float:
    """CPU seconds this process has used (user + system, every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_run(cfg, source, out: Path) -> tuple[float, float]:
    """(wall seconds of the shards, from their stats; CPU seconds of the process) of one fresh run with ``source``."""
    from imagenet_plus.generate.stage import run_generate, shard_stats

    shutil.rmtree(out, ignore_errors=True)
    start = cpu_seconds()
    result = run_generate(cfg, out, source_factory=lambda c, device: source)
    cpu = cpu_seconds() - start
    assert result.done
    return sum(s.seconds for s in shard_stats(out)), cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512, help="images per timed run (over 4 classes)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--fixed", type=float, default=3.0, help="the fixed guidance compared with the range")
    ap.add_argument("--range", default="1:5", dest="guidance_range", help="the guidance range, MIN:MAX")
    ap.add_argument("--model", default="tiny-random", help="tiny-random, tiny-random-flux or tiny-random-sd3")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when there is one")
    ap.add_argument("--repeats", type=int, default=3, help="alternating timed repeats; the best of each is kept")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: CPU time measures the work)")
    ap.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                    help="what the ratio uses: auto = wall on a GPU, CPU time on a CPU (see the module docstring)")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from imagenet_plus.generate.config import GenerateConfig
    from imagenet_plus.generate.guidance import max_batches
    from imagenet_plus.models.diffusion import DiffusersSource, load_pipeline

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    torch.set_num_threads(args.threads)
    clock = args.clock if args.clock != "auto" else ("wall" if cuda else "cpu")
    work = Path(tempfile.mkdtemp(prefix="bench-guidance-"))
    class_file = work / "classes.csv"
    class_file.write_text(CLASSES)
    per_class = max(1, args.images // 4)
    common = dict(classes=str(class_file), images_per_class=per_class, model=args.model, steps=args.steps,
                  resolution=args.resolution, batch_size=args.batch_size, shard_size=args.shard_size)
    configs = {"fixed": GenerateConfig(**common, guidance=args.fixed).resolved(),
               "range": GenerateConfig(**common, guidance=args.guidance_range).resolved()}
    cfg = configs["fixed"]
    pipe = load_pipeline(args.model, device)
    source = DiffusersSource(pipe, steps=cfg.steps, guidance=cfg.guidance, width=cfg.resolution,
                             height=cfg.resolution, family=cfg.family, max_sequence_length=cfg.max_sequence_length)
    n = 4 * per_class
    print(f"{args.model} on {device}: {n} images, {args.resolution} px, {args.steps} steps, batch {args.batch_size}, "
          f"shards of {args.shard_size}; fixed guidance {args.fixed} vs range {args.guidance_range}")
    for name, c in configs.items():
        print(f"  {name}: at most {max_batches(args.shard_size, args.batch_size, c.guidance_range)} calls per full "
              f"shard (fixed: {max_batches(args.shard_size, args.batch_size, args.fixed)})")
    timed_run(configs["fixed"], source, work / "warmup")
    best = {(name, c): float("inf") for name in configs for c in ("wall", "cpu")}
    for r in range(args.repeats):
        for name in ("fixed", "range") if r % 2 == 0 else ("range", "fixed"):
            wall, cpu = timed_run(configs[name], source, work / name)
            best[name, "wall"], best[name, "cpu"] = min(best[name, "wall"], wall), min(best[name, "cpu"], cpu)
            print(f"  repeat {r + 1} {name}: {n / wall:.1f} img/s wall ({wall:.2f} s), {n / cpu:.1f} img/s of CPU "
                  f"time ({cpu:.2f} s)")
    for c in ("wall", "cpu"):
        print(f"best ({c}): fixed {n / best['fixed', c]:.1f} img/s, range {n / best['range', c]:.1f} img/s, "
              f"ratio {best['fixed', c] / best['range', c]:.3f}")
    shutil.rmtree(work, ignore_errors=True)
    print(f"ratio from {clock} time ({device}, {args.threads} torch thread(s))")
    print(f"guidance_range_throughput_ratio={best['fixed', clock] / best['range', clock]:.3f}")


if __name__ == "__main__":
    main()
