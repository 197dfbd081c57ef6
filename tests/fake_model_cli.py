"""``python tests/fake_model_cli.py ARGS``: the ``imagenet-plus`` command line with a fake diffusion model.

(In-process tests call :func:`install` with ``monkeypatch.setattr`` and then ``imagenet_plus.cli.main``.)

Used by the safety tests to run ``generate`` as a user types it (same arguments, same entry point
``imagenet_plus.cli.main``) without loading a diffusion pipeline: the model is replaced, in this process
only, by one whose image is noise drawn from the seed alone. ``FAKE_MODEL_SECONDS`` (seconds per image)
slows it down so that a test can interrupt, kill or race a run while it works.
"""

from __future__ import annotations

import os
import time

import numpy as np
from PIL import Image

from imagenet_plus import cli
from imagenet_plus.generate import stage


class FakePipelineSource:
    """Stands for :class:`~imagenet_plus.models.diffusion.DiffusersSource`: noise from the seed, never NSFW."""

    scheduler_name = "FakeScheduler"

    def __init__(self, pipe: object, width: int, **_: object) -> None:
        self.size = width
        self.seconds = float(os.environ.get("FAKE_MODEL_SECONDS", "0"))

    def check_arguments(self, model: str, negative_prompt: str) -> None:
        pass

    def __call__(self, prompts: list[str], negatives: list[str], seeds: list[int]) -> tuple[list, list]:
        time.sleep(self.seconds * len(seeds))
        rng = [np.random.default_rng(s % 2**63) for s in seeds]
        images = [Image.fromarray(r.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)) for r in rng]
        return images, [False] * len(seeds)


def _no_pipeline(*args: object, **kwargs: object) -> None:
    return None


def install(setattr_: object = setattr) -> None:
    """Replace the diffusion model of ``generate`` by the fake one (``setattr_``: ``monkeypatch.setattr`` in tests)."""
    setattr_(stage, "load_pipeline", _no_pipeline)  # type: ignore[operator]
    setattr_(stage, "DiffusersSource", FakePipelineSource)  # type: ignore[operator]


if __name__ == "__main__":
    install()
    cli.main()
