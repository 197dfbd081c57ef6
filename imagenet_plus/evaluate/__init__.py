"""Stage ``evaluate``: ``REL/`` (synthetic train set) + real test images → ``OUT/eval.json`` + plots."""

from typing import TYPE_CHECKING

from imagenet_plus.lazy import lazy_exports

if TYPE_CHECKING:
    from imagenet_plus.evaluate.config import EvaluateConfig
    from imagenet_plus.evaluate.stage import run_evaluate

__getattr__, __dir__ = lazy_exports(__name__, {
    "EvaluateConfig": "config",
    "run_evaluate": "stage",
})
__all__ = ["EvaluateConfig", "run_evaluate"]
