"""What does ``--engine ray`` cost per shard, next to one plain process making the same shards?

In one run, the same plan (``--shards`` shards of ``--shard-size`` images, 64 px) is made by:

- plain: ``run_generate`` in this process;
- ray: ``run_generate(..., engine ray)`` on a local Ray cluster of ONE CPU (one worker, so no parallelism hides
  the overhead), the cluster started before the clock starts (a real cluster is up before a run).

The model is a stand-in that sleeps ``--model-ms`` per image (the GPU's share of a real run) and returns noise from
the seed, so what is measured is the engine: the driver's queue, the actor's start and model "load" (once), a Ray
call and a result per shard. Both runs must give the same tar bytes. The last line is
``ray_overhead_ratio=<ray seconds / plain seconds>`` (1.0 = free; goal ≤ 1.10 at 256-image shards).

Usage: ``python benchmarks/ray_overhead.py [--shards 8] [--shard-size 64] [--model-ms 20]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

CLASSES = "name\ngoldfish\ntabby cat\nacoustic guitar\nespresso\n"


class SleepySource:
    """Noise from the seed, after ``ms`` milliseconds per image (the model's time)."""

    scheduler_name = "FakeScheduler"

    def __init__(self, ms: float) -> None:
        self.ms = ms

    def __call__(self, prompts: list[str], negatives: list[str], seeds: list[int], **extra: Any) -> Any:
        import numpy as np
        from PIL import Image

        time.sleep(self.ms / 1000 * len(seeds))
        images = [Image.fromarray(np.random.default_rng(s).integers(0, 256, (64, 64, 3), dtype=np.uint8))
                  for s in seeds]
        return images, [False] * len(seeds)


def sleepy_factory(cfg: Any, device: Any) -> SleepySource:
    return SleepySource(float(os.environ.get("RAY_OVERHEAD_MODEL_MS", "20")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--model-ms", type=float, default=20.0)
    args = parser.parse_args()
    os.environ["RAY_OVERHEAD_MODEL_MS"] = str(args.model_ms)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")])

    import ray
    from ray_overhead import sleepy_factory as factory  # by module name, so that Ray workers import it too

    from imagenet_plus.generate import run_generate
    from imagenet_plus.generate.config import GenerateConfig
    from imagenet_plus.pipeline.engines import ExecutionConfig

    with tempfile.TemporaryDirectory() as tmp:
        classes = Path(tmp) / "classes.csv"
        classes.write_text(CLASSES)
        per_class = args.shards * args.shard_size // 4
        cfg = GenerateConfig(classes=str(classes), images_per_class=per_class, model="fake/model", steps=1,
                             guidance=0.0, resolution=64, batch_size=16, shard_size=args.shard_size,
                             prompt_strategy=("name",))
        start = time.perf_counter()
        run_generate(cfg, Path(tmp) / "plain", source_factory=factory)
        plain = time.perf_counter() - start
        ray.init(num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
        try:
            start = time.perf_counter()
            run_generate(cfg, Path(tmp) / "ray", source_factory=factory, execution=ExecutionConfig(engine="ray"))
            on_ray = time.perf_counter() - start
        finally:
            ray.shutdown()
        same = all(p.read_bytes() == (Path(tmp) / "ray" / "generated" / p.name).read_bytes()
                   for p in (Path(tmp) / "plain" / "generated").glob("*.tar"))
        images = args.shards * args.shard_size
        print(f"{args.shards} shards x {args.shard_size} images, model {args.model_ms:g} ms/image")
        print(f"plain  {plain:7.2f} s  ({images / plain:6.1f} img/s)")
        print(f"ray    {on_ray:7.2f} s  ({images / on_ray:6.1f} img/s), one worker; same tars: {same}")
        print(f"ray_overhead_ratio={on_ray / plain:.3f}")


if __name__ == "__main__":
    main()
