"""Stage ``generate``: class set + config → ``RUN/generated/NNNNN.{tar,json}`` (``RUN/run.yaml``, ``RUN/classes.json``).

``plan`` places every (class, index) in a shard with its seed; ``state`` checks the run folder against the
config, extends and records the plan and declares what the outputs are made from (``stage_inputs``); ``inputs``
resolves what a run reads besides its settings (real images, captions, class descriptions); ``images`` decides
what each image is made from (guidance, real image, prompt) and the batch order; ``stage`` runs the model over
the shards this process owns, ``writer`` encodes and writes them crash-safely; ``config`` is the run's frozen
settings; ``guidance`` (ranges drawn per image) and ``real`` (the real images index) are their building blocks.
"""

from typing import TYPE_CHECKING

from imagenet_plus.lazy import lazy_exports

if TYPE_CHECKING:
    from imagenet_plus.generate.config import GenerateConfig, load_generate_config
    from imagenet_plus.generate.stage import GenerateResult, run_generate, shard_stats
    from imagenet_plus.generate.state import planned_keys, stage_inputs

__getattr__, __dir__ = lazy_exports(__name__, {
    "GenerateConfig": "config",
    "load_generate_config": "config",
    "GenerateResult": "stage",
    "planned_keys": "state",
    "run_generate": "stage",
    "shard_stats": "stage",
    "stage_inputs": "state",
})
__all__ = ["GenerateConfig", "GenerateResult", "load_generate_config", "planned_keys", "run_generate", "shard_stats",
           "stage_inputs"]
