"""Stage ``select``: ``RUN/scores/`` + thresholds → ``RUN/selection.parquet`` and ``RUN/selection.json``."""

from imagenet_plus.select.stage import SelectConfig, Thresholds, run_select

__all__ = ["SelectConfig", "Thresholds", "run_select"]
