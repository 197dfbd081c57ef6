"""How much does ``generate`` add around the model? And does its memory stay flat as runs grow?

In one run, on the same batches (same prompts, seeds, sizes) of a tiny random pipeline (``--model``:
``tiny-random`` = SD, ``tiny-random-flux``, ``tiny-random-sd3``) making 256 px images (so JPEG encoding
costs what it will for real):

- bare: a loop calling the diffusers pipeline with one generator per image, nothing else;
- generate: ``run_generate`` end to end (plan, prompts, black check, encoding, tar writing, stats),
  with the same loaded pipeline injected so that loading is not counted on either side.

Each is timed ``--repeats`` times (after a warm-up run), alternating, and the best of each is kept.
Then the peak RSS of a fresh
``generate`` process is measured for N and 4N images. The last line is
``generate_overhead_ratio=<bare seconds / generate seconds>`` (goal ≥ 0.90).

Usage: ``python benchmarks/generate_overhead.py [--images 128] [--batch-size 4] [--resolution 256] [--model M]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = "name\ngoldfish\ntabby cat\nacoustic guitar\nespresso\n"


def bare_loop(pipe, batches, kwargs) -> float:
    import torch

    start = time.perf_counter()
    for prompts, seeds in batches:
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        with torch.inference_mode():
            pipe(prompt=prompts, generator=gens, **kwargs)
    return time.perf_counter() - start


def rss_of_run(images_per_class: int, args, class_file: Path, workdir: Path) -> float:
    """Peak RSS (MiB) of a fresh process that runs generate."""
    code = (
        "import resource, sys\n"
        "from imagenet_plus.generate import GenerateConfig, run_generate\n"
        f"cfg = GenerateConfig(classes={str(class_file)!r}, images_per_class={images_per_class}, model={args.model!r},"
        f" steps={args.steps}, guidance=2.0, resolution={args.resolution}, batch_size={args.batch_size},"
        f" shard_size={args.shard_size})\n"
        f"run_generate(cfg, {str(workdir / f'rss{images_per_class}')!r})\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128, help="images in the timed runs (N)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--model", default="tiny-random", help="tiny-random, tiny-random-flux or tiny-random-sd3")
    ap.add_argument("--repeats", type=int, default=3, help="alternating timed repeats; the best of each is kept")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from imagenet_plus.generate.config import GenerateConfig
    from imagenet_plus.generate.stage import run_generate
    from imagenet_plus.models.diffusion import DiffusersSource, load_pipeline, pipeline_kwargs

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    class_file = work / "classes.csv"
    class_file.write_text(CLASSES)
    per_class = max(1, args.images // 4)
    cfg = GenerateConfig(classes=str(class_file), images_per_class=per_class, model=args.model, steps=args.steps,
                         guidance=2.0, resolution=args.resolution, batch_size=args.batch_size,
                         shard_size=args.shard_size).resolved()
    pipe = load_pipeline(args.model, torch.device("cpu"), "float32")
    bare_kwargs = pipeline_kwargs(cfg.family, cfg.steps, cfg.guidance, cfg.resolution, cfg.resolution,
                                  cfg.max_sequence_length, [])
    batches: list[tuple[list[str], list[int]]] = []

    class Recording(DiffusersSource):
        def __call__(self, prompts, negatives, seeds):
            batches.append((list(prompts), list(seeds)))
            return super().__call__(prompts, negatives, seeds)

    def factory(c, device):
        return Recording(pipe, steps=c.steps, guidance=c.guidance, width=c.resolution, height=c.resolution,
                         family=c.family, max_sequence_length=c.max_sequence_length)

    # warm-up (first calls allocate and pick kernels), not timed
    run_generate(cfg, work / "warmup", source_factory=factory)
    gen_times, bare_times = [], []
    for rep in range(args.repeats):
        batches.clear()
        t = time.perf_counter()
        run_generate(cfg, work / f"run{rep}", source_factory=factory)
        gen_times.append(time.perf_counter() - t)
        bare_times.append(bare_loop(pipe, list(batches), bare_kwargs))
    n = per_class * 4
    gen_best, bare_best = min(gen_times), min(bare_times)
    print(f"model={args.model} images={n} batch_size={args.batch_size} resolution={args.resolution} steps={args.steps}")
    runs = [round(x, 2) for x in bare_times]
    print(f"bare pipeline loop: {bare_best:.2f}s ({n / bare_best:.2f} img/s)  runs: {runs}")
    print(f"generate end to end: {gen_best:.2f}s ({n / gen_best:.2f} img/s)  runs: {[round(x, 2) for x in gen_times]}")
    rss_n = rss_of_run(per_class, args, class_file, work)
    rss_4n = rss_of_run(4 * per_class, args, class_file, work)
    print(f"peak RSS: {n} images {rss_n:.0f} MiB, {4 * n} images {rss_4n:.0f} MiB, ratio {rss_4n / rss_n:.3f}")
    print(f"generate_overhead_ratio={bare_best / gen_best:.3f}")


if __name__ == "__main__":
    main()
