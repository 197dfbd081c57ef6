"""Helpers the Ray tests hand to Ray workers (a module, so that workers can import what the driver pickled)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: The file in which the first worker to make a shard writes its pid before it hangs (the test kills it).
HANG_FILE_ENV = "IMAGENET_PLUS_TEST_HANG_FILE"


class NoiseSource:
    """Image = noise from the seed alone (the same bytes in any process); with :data:`HANG_FILE_ENV` set, the first
    call in any process (the file not there yet) writes this process's pid to that file and hangs."""

    scheduler_name = "FakeScheduler"

    def __init__(self, size: int = 32) -> None:
        self.size = size

    def __call__(self, prompts: list[str], negatives: list[str], seeds: list[int], **extra: Any) -> Any:
        hang = os.environ.get(HANG_FILE_ENV)
        if hang and not Path(hang).exists():
            Path(hang).write_text(str(os.getpid()))
            time.sleep(600)
        images = [Image.fromarray(np.random.default_rng(s).integers(0, 256, (self.size, self.size, 3), dtype=np.uint8))
                  for s in seeds]
        return images, [False] * len(seeds)


def noise_factory(cfg: Any, device: Any) -> NoiseSource:
    """A ``source_factory`` for ``run_generate`` that Ray can pickle (a module-level function)."""
    return NoiseSource()
