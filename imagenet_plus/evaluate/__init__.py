"""Stage ``evaluate``: ``REL/`` (synthetic train set) + real test images → ``OUT/eval.json`` + plots."""

from imagenet_plus.evaluate.stage import EvaluateConfig, run_evaluate

__all__ = ["EvaluateConfig", "run_evaluate"]
